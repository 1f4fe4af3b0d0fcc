#!/usr/bin/env bash
# Runs inside the Debian stage of images/Containerfile (as root): copies out of
# that Debian system exactly the files the final images need, each set into its
# own directory under OUT, so the final stages start FROM scratch and COPY only
# what they use:
#
#   OUT/base        /etc/passwd, /etc/group (root and nonroot = 65532),
#                   /etc/nsswitch.conf, /tmp (1777), /run     -> every image
#   OUT/home        home/nonroot owned by 65532               -> tproxy, initializer
#   OUT/roots       /etc/ssl/certs/ca-certificates.crt        -> tproxy, initializer
#   OUT/netfilter   nft, iptables/ip6tables (nft and legacy variants, -restore and
#                   -save), the xtables extensions they load, the shared libraries
#                   of all of these (found with ldd), /etc/protocols, /etc/services
#                                                             -> podwatch, sidecar
#   OUT/cacerts     Debian's ca-certificates: /etc/ssl/certs and
#                   /usr/share/ca-certificates                -> sidecar
#
# With a base that lacks the packages (e.g. debian:bookworm-slim from a
# registry), they are installed first with apt-get (needs network during the
# build); the locally debootstrapped base of scripts/build-images.sh has them.
set -euo pipefail

out=${1:?usage: rootfs.sh OUTDIR}
pkgs="nftables iptables ca-certificates netbase"

missing=
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "rootfs.sh: installing$missing"
  apt-get update
  # shellcheck disable=SC2086 # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi

is_elf() {
  case $(od -An -tx1 -N4 "$1") in
  *"7f 45 4c 46"*) return 0 ;;
  esac
  return 1
}

# copy DEST PATH: PATH into DEST at its canonical directory (on merged /usr,
# /lib/x/libc.so.6 lands in /usr/lib/x), keeping mode and ownership. A symlink
# is copied as a symlink and its target followed hop by hop (so a chain through
# /etc/alternatives stays intact); an ELF file brings its shared libraries.
copy() {
  local dest p dir q t lib
  dest=$1
  p=$2
  [ -e "$p" ] || {
    echo "rootfs.sh: $p does not exist" >&2
    exit 1
  }
  dir=$(realpath -e "$(dirname "$p")")
  q=$dir/$(basename "$p")
  if [ -e "$dest$q" ] || [ -L "$dest$q" ]; then
    return 0
  fi
  mkdir -p "$dest$dir"
  cp -a "$q" "$dest$q"
  if [ -L "$q" ]; then
    t=$(readlink "$q")
    case $t in
    /*) ;;
    *) t=$dir/$t ;;
    esac
    copy "$dest" "$t"
  elif [ -f "$q" ] && is_elf "$q"; then
    # Static binaries and the loader itself make ldd fail: nothing to add.
    for lib in $(ldd "$q" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
      copy "$dest" "$lib"
    done
  fi
}

rm -rf "$out"
mkdir -p "$out"

# base: users, name service switch, scratch directories.
b=$out/base
mkdir -p "$b/etc" "$b/tmp" "$b/run"
chmod 1777 "$b/tmp"
cat >"$b/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$b/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
cat >"$b/etc/nsswitch.conf" <<'NSS'
passwd: files
group: files
hosts: files dns
protocols: files
services: files
NSS

mkdir -p "$out/home/home/nonroot"
chown 65532:65532 "$out/home/home/nonroot"
chmod 0755 "$out/home/home/nonroot"

# roots: the system CA bundle rustls-native-certs finds (and SSL_CERT_FILE names).
mkdir -p "$out/roots/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$out/roots/etc/ssl/certs/ca-certificates.crt"

# netfilter: the tools podwatch and the sidecar run (see podwatch/src/apply.rs,
# sidecar/src/backend.rs): nft, <family>-<variant>-<restore|save> and the plain
# <family>-<restore|save> (the sidecar asks it which variant it is), plus the
# plain commands for an operator's `kubectl exec … iptables -t nat -S`.
n=$out/netfilter
copy "$n" /usr/sbin/nft
for fam in iptables ip6tables; do
  for v in "" -nft -legacy; do
    for t in "" -restore -save; do
      copy "$n" "/usr/sbin/$fam$v$t"
    done
  done
done
# The extensions (-m multiport, -j REDIRECT, ...) are dlopen()ed: ldd cannot see them.
for so in $(dpkg -L iptables libxtables12 2>/dev/null | grep '/xtables/.*\.so$' | sort -u); do
  copy "$n" "$so"
done
if ! compgen -G "$n/usr/lib/*/xtables/libxt_REDIRECT.so" >/dev/null; then
  echo "rootfs.sh: no xtables extensions found (dpkg -L iptables): is iptables installed?" >&2
  exit 1
fi
for f in /etc/protocols /etc/services; do
  copy "$n" "$f"
done
# Merged /usr: ELF interpreters and scripts name /lib64/..., /sbin/...; keep the
# top-level symlinks so those paths resolve.
for l in bin sbin lib lib64; do
  if [ -L "/$l" ]; then
    ln -s "$(readlink "/$l")" "$n/$l"
  fi
done

# cacerts: Debian's ca-certificates as installed (bundle, hash links, the certificates).
c=$out/cacerts
mkdir -p "$c/etc/ssl" "$c/usr/share"
cp -a /etc/ssl/certs "$c/etc/ssl/certs"
cp -a /usr/share/ca-certificates "$c/usr/share/ca-certificates"

echo "rootfs.sh: done"
du -sh "$out"/* | sed 's/^/rootfs.sh: /'
