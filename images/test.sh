#!/usr/bin/env bash
# Builds the four images from this repository with scripts/build-images.sh and
# checks each one for real, with podman: the binary runs (--version), the image
# holds what it should and nothing it should not, the proxy answers /healthz
# and proxies a request inside its container, podwatch applies its rules with
# nft, iptables-nft and iptables-legacy, the sidecar locks a namespace with
# each backend. Containers run in network namespaces this script creates
# (198.18.0.0/15 addresses, 127.0.0.1 inside). Everything it creates (images
# with its own tag, containers, namespaces, temp dirs, the local Debian base
# when it made it) is removed at exit.
#
# Ends with "N passed, M failed" (", K skipped" when not root outside CI).
# Env: IMAGE_TEST_PROFILE (cargo profile, default image-ci), IMAGE_TEST_KEEP=1
# keeps the images for inspection.
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
profile=${IMAGE_TEST_PROFILE:-image-ci}
tag=imagetest-$$
ns=tpi$$ # netns names: at most 15 characters
netns=()
passed=0
failed=0
work=
base_made=
images_listed=0
images_before=
containers=()
pids=()

if [ "$(id -u)" -ne 0 ]; then
  if [ -n "${CI:-}" ]; then
    echo "images/test.sh: needs root (podman, network namespaces) and CI is set: refusing to skip" >&2
    echo "0 passed, 1 failed"
    exit 1
  fi
  echo "images/test.sh: skipped: needs root (podman, network namespaces)"
  echo "0 passed, 0 failed, 1 skipped"
  exit 0
fi

pass() {
  passed=$((passed + 1))
  echo "ok   $*"
}
fail() {
  failed=$((failed + 1))
  echo "FAIL $*"
}
# check NAME CMD...: runs CMD, passes when it exits 0 (its output shown on failure).
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    pass "$name"
  else
    fail "$name"
    printf '%s\n' "$out" | tail -n 20 | sed 's/^/     | /'
  fi
}

# expect NAME WANT GOT: passes when GOT equals WANT.
expect() {
  if [ "$3" = "$2" ]; then
    pass "$1: $3"
  else
    fail "$1: want '$2', got '$3'"
  fi
}

cleanup() {
  local c
  for c in "${containers[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1; done
  for c in "${pids[@]}"; do kill "$c" 2>/dev/null; done
  if [ -z "${IMAGE_TEST_KEEP:-}" ]; then
    for c in tproxy tproxy-initializer tproxy-podwatch tproxy-sidecar; do
      podman rmi -f "localhost/$c:$tag" >/dev/null 2>&1
    done
    # The untagged intermediate images of this run's builds (the rootfs stage's
    # layers): those that did not exist before it. Children before parents.
    local id
    for _ in 1 2 3; do
      ((images_listed)) || break
      for id in $(comm -13 <(printf '%s\n' "$images_before") <(podman images -a -q --no-trunc | sort -u)); do
        [ "$(podman image inspect --format '{{len .RepoTags}}' "$id" 2>/dev/null)" = 0 ] &&
          podman rmi "$id" >/dev/null 2>&1
      done
    done
    [ -n "$base_made" ] && podman rmi "$base_made" >/dev/null 2>&1
  fi
  for c in "${netns[@]}"; do ip netns del "$c" 2>/dev/null; done
  [ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT

"$here/images/install-deps.sh" || {
  echo "0 passed, 1 failed"
  exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/tproxy-imagetest.XXXXXX")
chmod 755 "$work"
# shellcheck disable=SC1091
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
base=localhost/tproxy-build-base:$suite
podman image inspect "$base" >/dev/null 2>&1 || base_made=$base
images_before=$(podman images -a -q --no-trunc | sort -u) && images_listed=1

version=$(cd "$here" && cargo pkgid -p tproxy)
version=${version##*[#@]}

# --- build ---------------------------------------------------------------------
start=$(date +%s)
if "$here/scripts/build-images.sh" --profile "$profile" --tag "$tag" >"$work/build.log" 2>&1; then
  if [ -n "$base_made" ]; then how="made $base_made"; else how="reused $base"; fi
  pass "scripts/build-images.sh --profile $profile built the four images in $(($(date +%s) - start)) s ($how)"
  grep '^build-images: .* took ' "$work/build.log" | sed 's/^/     /'
else
  fail "scripts/build-images.sh --profile $profile"
  tail -n 40 "$work/build.log" | sed 's/^/     | /'
  echo "$passed passed, $failed failed"
  exit 1
fi
grep '^image ' "$work/build.log" | while read -r _ name size; do
  echo "     size $name $((size / 1024)) KiB"
done

img() { echo "localhost/$1:$tag"; }
# mkns NAME: a network namespace with lo up, deleted at exit.
mkns() {
  ip netns add "$1" && netns+=("$1") && ip -n "$1" link set lo up
}

# --- every binary runs in its image ----------------------------------------------
for c in tproxy tproxy-initializer tproxy-podwatch tproxy-sidecar; do
  expect "$c --version in its image" "$c $version" "$(podman run --rm --pull never --network none "$(img "$c")" --version 2>&1)"
done

# --- contents and users ----------------------------------------------------------
# files IMAGE: the image's file list (paths without the leading /).
files() {
  local id
  id=$(podman create --pull never "$1") || return 1
  podman export "$id" | tar -t | sed 's#^\./##; s#/$##'
  podman rm "$id" >/dev/null
}
# has LIST PATH...: every PATH is in LIST.
has() {
  local list=$1 p
  shift
  for p in "$@"; do
    grep -qxF "$p" <<<"$list" || {
      echo "missing $p"
      return 1
    }
  done
}
# lacks LIST PATH...: no PATH is in LIST.
lacks() {
  local list=$1 p
  shift
  for p in "$@"; do
    if grep -qxF "$p" <<<"$list"; then
      echo "unexpected $p"
      return 1
    fi
  done
}
no_distro=(bin/sh usr/bin/sh bin/bash usr/bin/bash usr/bin/dpkg usr/bin/apt usr/bin/perl usr/bin/env usr/bin/ls)
for c in tproxy tproxy-initializer; do
  list=$(files "$(img "$c")")
  check "$c image: binary, CA roots, passwd, nonroot home" has "$list" \
    "usr/local/bin/$c" etc/ssl/certs/ca-certificates.crt etc/passwd etc/group etc/nsswitch.conf home/nonroot tmp
  check "$c image: no shell, no package manager, no netfilter tools" lacks "$list" "${no_distro[@]}" usr/sbin/nft
  user=$(podman image inspect --format '{{.Config.User}}' "$(img "$c")")
  expect "$c image user" 65532:65532 "$user"
done
for c in tproxy-podwatch tproxy-sidecar; do
  list=$(files "$(img "$c")")
  check "$c image: binary, nft, iptables (nft and legacy), xtables extensions, loader" has "$list" \
    "usr/local/bin/$c" usr/sbin/nft usr/sbin/xtables-nft-multi usr/sbin/xtables-legacy-multi \
    usr/sbin/iptables-nft-restore usr/sbin/ip6tables-legacy-save usr/sbin/iptables-restore \
    lib64 etc/protocols tmp run
  check "$c image: REDIRECT and REJECT extensions" bash -c "grep -q 'xtables/libxt_REDIRECT.so\$' <<<'$list' && grep -q 'xtables/libipt_REJECT.so\$' <<<'$list'"
  check "$c image: no shell, no package manager" lacks "$list" "${no_distro[@]}"
  [ "$c" = tproxy-sidecar ] && check "$c image: Debian ca-certificates" has "$list" \
    etc/ssl/certs/ca-certificates.crt usr/share/ca-certificates/mozilla etc/ssl/certs/ISRG_Root_X1.pem
  [ "$c" = tproxy-podwatch ] && check "$c image: no CA certificates (it does not use them)" lacks "$list" etc/ssl/certs/ca-certificates.crt
done
# The bundle in the proxy image is Debian's, with the usual ~140 roots.
id=$(podman create --pull never "$(img tproxy)")
podman cp "$id:/etc/ssl/certs/ca-certificates.crt" "$work/roots.crt" >/dev/null 2>&1
podman rm "$id" >/dev/null
n=$(grep -c 'BEGIN CERTIFICATE' "$work/roots.crt" 2>/dev/null || echo 0)
if ((n > 100)); then pass "tproxy image CA roots: $n certificates"; else fail "tproxy image CA roots: $n certificates (want > 100)"; fi

# --- the proxy in its container --------------------------------------------------
mkns "$ns"
mkdir -p "$work/www" && echo "hello from the upstream" >"$work/www/index.txt"
ip netns exec "$ns" python3 -m http.server 18081 --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)
ip netns exec "$ns" python3 "$here/images/dns_stub.py" upstream.tproxy.test 127.0.0.1 &
pids+=($!)
name=tpimg-proxy-$$
containers+=("$name")
podman run -d --pull never --name "$name" --network "ns:/run/netns/$ns" --dns 127.0.0.1 "$(img tproxy)" \
  --mode regular@127.0.0.1:18080 --admin 127.0.0.1:19090 --workers 1 >/dev/null
healthy=0
# Bounded wait: the unoptimised image-ci build generates the RSA CA slowly.
for _ in $(seq 1 600); do
  if ip netns exec "$ns" curl -fsS -o "$work/healthz" http://127.0.0.1:19090/healthz 2>/dev/null; then
    healthy=1
    break
  fi
  [ "$(podman inspect --format '{{.State.Running}}' "$name" 2>/dev/null)" = true ] || break
  sleep 0.2
done
if ((healthy)); then
  pass "tproxy container answers /healthz ($(head -c 60 "$work/healthz"))"
else
  fail "tproxy container /healthz"
  podman logs "$name" 2>&1 | tail -n 20 | sed 's/^/     | /'
fi
check "tproxy container (uid 65532) created its CA in /home/nonroot/.tproxy and serves it on /ca.pem" \
  bash -c "ip netns exec '$ns' curl -fsS http://127.0.0.1:19090/ca.pem | openssl x509 -noout -subject"
# A request through the proxy: name resolution (/etc/hosts via the static
# glibc's NSS) and the upstream path work inside the scratch image.
out=$(ip netns exec "$ns" curl -sS -x http://127.0.0.1:18080 http://localhost:18081/index.txt 2>&1)
expect "request through the tproxy container to http://localhost:18081/ (/etc/hosts)" "hello from the upstream" "$out"
out=$(ip netns exec "$ns" curl -sS -x http://127.0.0.1:18080 http://upstream.tproxy.test:18081/index.txt 2>&1)
expect "request through the tproxy container to a name resolved by DNS (static glibc resolver in scratch)" "hello from the upstream" "$out"
check "tproxy container logged the flow on stdout" bash -c "podman logs '$name' 2>/dev/null | grep -q 'GET http://localhost:18081/index.txt'"
podman logs "$name" 2>&1 | grep -m1 -o 'driver=[a-z_]*' | sed 's/^/     proxy worker /'
podman stop -t 10 "$name" >/dev/null 2>&1
code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
expect "tproxy container exit code after SIGTERM" 0 "$code"

# --- the proxy as the chart runs it ------------------------------------------------
# Read-only root file system, the CA from a read-only mount holding only the two
# PEM files of the CA Secret (mode 0440, group 65532), an upstream CA file; an
# HTTPS request intercepted end to end (leaf minted by the mounted CA, upstream
# verified with --upstream-ca): rustls and ring in the static binary.
mkdir -p "$work/ca-init" "$work/ca" "$work/up" "$work/www"
chown 65532:65532 "$work/ca-init"
check "tproxy ca init in its image (uid 65532 writing a mounted directory)" \
  podman run --rm --pull never --network none -v "$work/ca-init:/ca" "$(img tproxy)" ca init --confdir /ca --key-type ecdsa
cp "$work/ca-init/mitmproxy-ca.pem" "$work/ca-init/mitmproxy-ca-cert.pem" "$work/ca/"
chgrp -R 65532 "$work/ca" && chmod 0440 "$work/ca"/*.pem && chmod 0750 "$work/ca"
(
  cd "$work/up" &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=imagetest-upstream-ca \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -keyout ca.key -out ca.pem &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -keyout leaf.key -out leaf.csr &&
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext &&
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out leaf.pem
) >/dev/null 2>&1 || fail "openssl: making the upstream certificates"
chmod 0644 "$work/up/ca.pem"
ip netns exec "$ns" python3 -c '
import http.server, ssl, sys, functools
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
srv = http.server.HTTPServer(("127.0.0.1", 18443), h)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
' "$work/www" "$work/up/leaf.pem" "$work/up/leaf.key" >/dev/null 2>&1 &
pids+=($!)
name=tpimg-proxyro-$$
containers+=("$name")
podman run -d --pull never --name "$name" --network "ns:/run/netns/$ns" --read-only --read-only-tmpfs=false \
  -v "$work/ca:/etc/tproxy/ca:ro" -v "$work/up/ca.pem:/etc/tproxy/upstream-ca.pem:ro" "$(img tproxy)" \
  --mode regular@127.0.0.1:18083 --admin 127.0.0.1:19093 --workers 1 \
  --confdir /etc/tproxy/ca --upstream-ca /etc/tproxy/upstream-ca.pem >/dev/null
healthy=0
for _ in $(seq 1 300); do
  if ip netns exec "$ns" curl -fsS -o /dev/null http://127.0.0.1:19093/healthz 2>/dev/null; then
    healthy=1
    break
  fi
  [ "$(podman inspect --format '{{.State.Running}}' "$name" 2>/dev/null)" = true ] || break
  sleep 0.2
done
if ((healthy)); then
  pass "tproxy container with a read-only root and a read-only CA mount answers /healthz"
else
  fail "tproxy container with a read-only root and a read-only CA mount"
  podman logs "$name" 2>&1 | tail -n 20 | sed 's/^/     | /'
fi
fp() { openssl x509 -noout -fingerprint -sha256; }
expect "tproxy container serves the mounted CA on /ca.pem" "$(fp <"$work/ca/mitmproxy-ca-cert.pem")" \
  "$(ip netns exec "$ns" curl -fsS http://127.0.0.1:19093/ca.pem | fp)"
# The upstream may need a moment to listen: bounded retries.
for _ in $(seq 1 50); do
  out=$(ip netns exec "$ns" curl -sS --cacert "$work/ca/mitmproxy-ca-cert.pem" -x http://127.0.0.1:18083 \
    https://localhost:18443/index.txt 2>&1) && break
  sleep 0.2
done
expect "HTTPS intercepted by the tproxy container (leaf from the mounted CA, upstream verified with --upstream-ca)" \
  "hello from the upstream" "$out"
check "the intercepted flow is in the container's flow log" \
  bash -c "podman logs '$name' 2>/dev/null | grep -q 'GET https://localhost:18443/index.txt'"

for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
pids=()

# --- podwatch: nft / iptables in its image ----------------------------------------
mkdir -p "$work/pw"
cp "$here/podwatch/tests/fixtures/pods.json" "$work/pw/pods.json"
pw() { # pw NETNS CAPS... -- ARGS...
  local n=$1 caps=()
  shift
  while [ "$1" != -- ]; do
    caps+=(--cap-add "$1")
    shift
  done
  shift
  podman run --rm --pull never --network "ns:/run/netns/$n" "${caps[@]}" -v "$work/pw:/work" "$(img tproxy-podwatch)" \
    --node-name node-a --proxy-port 15001 --pods-from-file /work/pods.json --pod-directory /work/pods-dir.json "$@"
}
mkns "${ns}b"
check "podwatch image: nft list ruleset in a container (NET_ADMIN)" \
  podman run --rm --pull never --network "ns:/run/netns/${ns}b" --cap-add NET_ADMIN --entrypoint nft "$(img tproxy-podwatch)" list ruleset
if out=$(pw "${ns}b" -- --backend nft 2>&1); then
  fail "podwatch without NET_ADMIN should fail"
elif grep -qi "not permitted" <<<"$out"; then
  pass "podwatch without NET_ADMIN fails naming the cause"
else
  fail "podwatch without NET_ADMIN: unexpected output: $out"
fi
check "podwatch --backend nft in its container" pw "${ns}b" NET_ADMIN NET_RAW -- --backend nft
check "podwatch nft rules visible from the host: opted-in pod redirected, plain pod not" \
  bash -c "r=\$(ip netns exec '${ns}b' nft list table inet tproxy_podwatch) && grep -q 198.18.1.2 <<<\"\$r\" && grep -q fd00:198:18:1::2 <<<\"\$r\" && ! grep -q 198.18.1.3 <<<\"\$r\" && grep -q 15001 <<<\"\$r\""
check "podwatch wrote the pod directory" grep -q web-7d9f8c6b5-x2x9q "$work/pw/pods-dir.json"
check "podwatch --cleanup (nft) in its container" pw "${ns}b" NET_ADMIN NET_RAW -- --backend nft --cleanup
check "podwatch nft table gone after --cleanup" bash -c "ip netns exec '${ns}b' nft list tables >/dev/null && ! ip netns exec '${ns}b' nft list table inet tproxy_podwatch"
for v in nft legacy; do
  n=${ns}c${v:0:1}
  mkns "$n"
  check "podwatch --backend iptables-$v in its container" pw "$n" NET_ADMIN NET_RAW -- --backend "iptables-$v"
  check "podwatch iptables-$v rules visible from the host" \
    bash -c "r=\$(ip netns exec '$n' iptables-$v-save -t nat) && grep -q 'TPROXY-REDIRECT' <<<\"\$r\" && grep -q 198.18.1.2 <<<\"\$r\""
  check "podwatch iptables-$v ip6tables rules" \
    bash -c "ip netns exec '$n' ip6tables-$v-save -t nat | grep -q fd00:198:18:1::2"
  ip netns del "$n"
done

# As the chart runs it: read-only root file system (no tmpfs on /run), the
# host's /run/xtables.lock mounted (iptables-legacy locks it), only NET_ADMIN
# and NET_RAW.
n=${ns}r
mkns "$n"
: >"$work/xtables.lock"
for b in nft iptables-legacy; do
  check "podwatch --backend $b with a read-only root (the chart's securityContext)" \
    podman run --rm --pull never --network "ns:/run/netns/$n" --read-only --read-only-tmpfs=false \
    --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW \
    -v "$work/pw:/work" -v "$work/xtables.lock:/run/xtables.lock" "$(img tproxy-podwatch)" \
    --node-name node-a --proxy-port 15001 --pods-from-file /work/pods.json --pod-directory /work/pods-dir.json --backend "$b"
done
ip netns del "$n"

# --- sidecar: locks a namespace from its image -------------------------------------
i=0
for b in nft iptables-nft iptables-legacy; do
  i=$((i + 1))
  n=${ns}d$i
  mkns "$n"
  check "sidecar --backend $b in its container (NET_ADMIN, NET_RAW)" \
    podman run --rm --pull never --network "ns:/run/netns/$n" --cap-add NET_ADMIN --cap-add NET_RAW \
    --add-host node-a:198.18.0.1 -e BLOCK_SVC_CIDR=198.18.240.0/20 -e ALLOW_DNS=198.18.240.10 -e NODE_NAME=node-a \
    "$(img tproxy-sidecar)" --backend "$b"
  case $b in
  nft) q="ip netns exec $n nft list ruleset" ;;
  iptables-nft) q="ip netns exec $n iptables-nft-save" ;;
  iptables-legacy) q="ip netns exec $n iptables-legacy-save" ;;
  esac
  check "sidecar $b rules visible from the host (service CIDR rejected, DNS server allowed, node-a resolved by /etc/hosts)" \
    bash -c "r=\$($q) && grep -q 198.18.240.0/20 <<<\"\$r\" && grep -q 198.18.240.10 <<<\"\$r\" && grep -q 198.18.0.1 <<<\"\$r\""
  ip netns del "$n"
done

echo "$passed passed, $failed failed"
((failed == 0))
