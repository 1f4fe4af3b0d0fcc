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
echo "== quick benchmark: checks the bench harness runs (numbers are not checked)"
cargo run -p tproxy-bench --locked -- --quick --tproxy target/debug/tproxy
images/test.sh # the four container images: built from this tree and run (docs/images.md)
