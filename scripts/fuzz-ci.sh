#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (FUZZ_SECONDS each, default
# 15) starting from the committed seeds, so CI catches parser panics and
# broken invariants. Needs the nightly toolchain (libFuzzer's instrumentation);
# installs cargo-fuzz when missing. A crash fails the run and leaves the input
# in fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run <target> <file>).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${FUZZ_SECONDS:-15}"
if ! cargo +nightly --version >/dev/null 2>&1; then
  if [ -n "${CI:-}" ]; then
    echo "fuzz-ci: no nightly toolchain (needed by cargo-fuzz)" >&2
    exit 1
  fi
  echo "fuzz-ci: SKIP: no nightly toolchain (rustup toolchain install nightly)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-ci: cargo install cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz
fi

# Release build with debug assertions (cargo-fuzz's default) but no
# sanitizer: the targets are safe Rust, where ASan finds nothing the
# panics do not, and skipping it halves the build.
build=(cargo +nightly fuzz build --sanitizer none)
"${build[@]}"

passed=0
failed=0
for target in $(cargo +nightly fuzz list); do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  if [ -d "fuzz/seeds/$target" ]; then
    cp -n fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  fi
  if [ "$target" = clienthello ]; then
    cp -n proxy/tests/fixtures/clienthello/* "$corpus"/ 2>/dev/null || true
  fi
  log="fuzz/target/$target.log"
  mkdir -p fuzz/target
  if cargo +nightly fuzz run --sanitizer none "$target" "$corpus" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 >"$log" 2>&1; then
    echo "fuzz $target: ok ($(grep -o 'Done [0-9]* runs' "$log" | tail -1 || echo '? runs') in ${secs}s)"
    passed=$((passed + 1))
  else
    echo "fuzz $target: FAILED — last lines of $log:"
    tail -30 "$log"
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
