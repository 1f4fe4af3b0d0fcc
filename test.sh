#!/usr/bin/env bash
# Runs every test: installs what the tests need, then the workspace tests on the
# io_uring driver, then the proxy's tests again on the epoll (legacy) driver.
set -euo pipefail
cd "$(dirname "$0")"

./scripts/install-test-deps.sh
export TPROXY_TEST_VENV="${TPROXY_TEST_VENV:-$PWD/target/test-venv}"
export PATH="$TPROXY_TEST_VENV/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests (io_uring driver where available)"
cargo test --workspace --locked
echo "== proxy tests again on the epoll driver (MONOIO_FORCE_LEGACY_DRIVER=1)"
MONOIO_FORCE_LEGACY_DRIVER=1 cargo test -p tproxy --locked
echo "== chart tests (charts/tests: helm lint/template, schemas, rendered objects against the binaries)"
"$TPROXY_TEST_VENV/bin/python" -m pytest charts/tests
echo "== quick benchmark: checks the bench harness runs (numbers are not checked)"
cargo run -p tproxy-bench --locked -- --quick --tproxy target/debug/tproxy
echo "== end to end: the chart's components in network namespaces (e2e/README.md)"
e2e/run.sh
echo "== fuzz targets, bounded (FUZZ_SECONDS each)"
./scripts/fuzz-ci.sh
echo "== container images: the four images built from this tree and run (docs/images.md)"
images/test.sh
