#!/usr/bin/env bash
# Installs what building and testing the container images needs: podman (with
# buildah), runc and debootstrap from Debian, and a containers.conf that works on
# these machines (runc instead of crun, cgroupfs, file event log, explicit
# ulimits: crun and the default limits fail here). Idempotent: a second run only
# checks. Run as root; used by scripts/install-test-deps.sh and images/test.sh.
set -euo pipefail

pkgs=(podman buildah runc conmon containernetworking-plugins debootstrap)

need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "images/install-deps: missing Debian packages (${need[*]}); run as root or install them" >&2
    exit 1
  fi
  echo "images/install-deps: apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

conf=/etc/containers/containers.conf
want='# Written by tproxy images/install-deps.sh: crun and the default ulimits fail on
# these machines; runc with cgroupfs and explicit limits work.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"'
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "images/install-deps: $conf is missing or differs; run as root to write it" >&2
    exit 1
  fi
  if [ -e "$conf" ]; then
    cp "$conf" "$conf.bak.$(date +%s)"
    echo "images/install-deps: $conf differed; old copy kept as $conf.bak.*"
  fi
  mkdir -p /etc/containers
  printf '%s\n' "$want" >"$conf"
  echo "images/install-deps: wrote $conf"
fi
echo "images/install-deps: ok ($(podman --version))"
