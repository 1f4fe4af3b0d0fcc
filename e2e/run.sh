#!/usr/bin/env bash
# The end-to-end test (e2e/README.md): run as root after
# `cargo build --workspace --bins` and scripts/install-test-deps.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="${TPROXY_TEST_VENV:-$here/target/test-venv}"
py="$venv/bin/python"
[ -x "$py" ] || py=python3
exec "$py" "$here/e2e/run.py" "$@"
