#!/usr/bin/env bash
# Builds the static binaries and the four container images (tproxy,
# tproxy-initializer, tproxy-podwatch, tproxy-sidecar) from images/Containerfile.
# See README.md "Container images" and `scripts/build-images.sh --help`.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
all_components=(tproxy tproxy-initializer tproxy-podwatch tproxy-sidecar)

usage() {
  cat <<EOF
Usage: scripts/build-images.sh [OPTIONS] [COMPONENT...]

Builds static binaries (glibc static-pie: RUSTFLAGS='-C target-feature=+crt-static',
cargo --target <host triple>) and then the container images, tagged
[REGISTRY/]COMPONENT:TAG. COMPONENT is one or more of:
  ${all_components[*]}
(default: all four).

Options:
  --profile NAME    cargo profile of the binaries (default: release; CI uses the
                    cheaper image-ci profile of Cargo.toml)
  --tag TAG         image tag (default: the workspace version, which is also the
                    Helm chart's appVersion: $(workspace_version 2>/dev/null || echo '?'))
  --registry PREFIX name prefix, e.g. registry.example.com/tproxy gives
                    registry.example.com/tproxy/tproxy:TAG (default: none; podman
                    then names the images localhost/COMPONENT:TAG)
  --engine NAME     podman or docker (default: podman when installed, else docker)
  --base IMAGE      Debian image the build stage runs in (default:
                    localhost/tproxy-build-base:<suite>, made with debootstrap from
                    this machine's apt mirror when missing; needs root). Any Debian
                    bookworm-or-later image works, e.g. debian:bookworm-slim from a
                    registry (then the build stage installs packages with apt-get).
  --rebuild-base    make the local base again even if it exists
  --mirror URL      Debian mirror for debootstrap (default: the first deb entry for
                    --suite in /etc/apt/sources.list and sources.list.d)
  --suite NAME      Debian suite of the local base (default: this machine's
                    VERSION_CODENAME from /etc/os-release)
  --skip-cargo      do not run cargo: use the binaries already built for --profile
  -h, --help        print this help

Binaries are built in ${CARGO_TARGET_DIR:-target}/<triple>/<profile>/. Prints one line
per image: "image NAME SIZE_BYTES". Tools needed: cargo, podman or
docker, and debootstrap when the local base has to be made (images/install-deps.sh
installs podman, buildah, runc and debootstrap on Debian and configures podman).
EOF
}

die() {
  echo "build-images: $*" >&2
  exit 1
}

workspace_version() {
  # `cargo pkgid` prints path+file:///…/proxy#tproxy@0.1.0 (or …#0.1.0).
  local id
  id=$(cd "$here" && cargo pkgid -p tproxy 2>/dev/null) || return 1
  echo "${id##*[#@]}"
}

profile=release
tag=
registry=
engine=
base=
rebuild_base=0
mirror=
suite=
skip_cargo=0
components=()

while (($#)); do
  case $1 in
  --profile | --tag | --registry | --engine | --base | --mirror | --suite)
    (($# >= 2)) || die "$1 needs a value (see --help)"
    v=$2
    case $1 in
    --profile) profile=$v ;;
    --tag) tag=$v ;;
    --registry) registry=${v%/} ;;
    --engine) engine=$v ;;
    --base) base=$v ;;
    --mirror) mirror=$v ;;
    --suite) suite=$v ;;
    esac
    shift 2
    ;;
  --rebuild-base) rebuild_base=1 && shift ;;
  --skip-cargo) skip_cargo=1 && shift ;;
  -h | --help) usage && exit 0 ;;
  -*) die "unknown option $1 (see --help)" ;;
  *)
    ok=0
    for c in "${all_components[@]}"; do [ "$1" = "$c" ] && ok=1; done
    ((ok)) || die "unknown component $1: choose from ${all_components[*]}"
    components+=("$1")
    shift
    ;;
  esac
done
((${#components[@]})) || components=("${all_components[@]}")

if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then
    engine=podman
  elif command -v docker >/dev/null; then
    engine=docker
  else
    die "neither podman nor docker found: install one (Debian: images/install-deps.sh, as root) or pass --engine"
  fi
fi
case $engine in
podman | docker) command -v "$engine" >/dev/null || die "--engine $engine: $engine is not installed" ;;
*) die "--engine $engine: use podman or docker" ;;
esac

if [ -z "$tag" ]; then
  tag=$(workspace_version) || die "cannot read the workspace version (cargo pkgid -p tproxy failed); pass --tag"
fi
version=$(workspace_version 2>/dev/null || echo "$tag")

# --- the Debian base of the build stage -------------------------------------

# The first `deb` URI for SUITE in apt's sources (one-line .list and deb822 .sources).
apt_mirror() {
  local suite=$1 f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      function flush() {
        if (!found && uri != "" && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ")) {
          print uri; found = 1
        }
        types = ""; suites = ""; uri = ""
      }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]*#/ { next }
      tolower($1) == "types:" { $1 = ""; types = $0 }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      END { flush() }' "$f"
  done
}

make_base() {
  local image=$1 rootfs
  [ "$(id -u)" -eq 0 ] || die "making the local base $image needs root (debootstrap); run as root, or pass --base with an existing Debian image"
  command -v debootstrap >/dev/null || die "debootstrap not found: install it (Debian: images/install-deps.sh) or pass --base IMAGE"
  if [ -z "$mirror" ]; then
    mirror=$(apt_mirror "$suite" | head -n1)
    [ -n "$mirror" ] || die "no deb entry for suite $suite in /etc/apt/sources.list*: pass --mirror URL (and --suite)"
  fi
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/tproxy-base.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the trap must remove this directory
  trap "rm -rf '$rootfs'" EXIT
  echo "build-images: debootstrap --variant=minbase $suite from $mirror (about 2 minutes)"
  if ! debootstrap --variant=minbase --include=nftables,iptables,ca-certificates,netbase \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
    tail -n 20 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    die "debootstrap failed (log above); check --mirror/--suite, or pass --base IMAGE"
  fi
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -c . | "$engine" import \
    --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  echo "build-images: made base image $image"
}

if [ -z "$base" ]; then
  if [ -z "$suite" ]; then
    # shellcheck disable=SC1091
    suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    [ -n "$suite" ] || die "cannot tell this machine's Debian suite from /etc/os-release: pass --suite (e.g. bookworm) or --base IMAGE"
  fi
  base=localhost/tproxy-build-base:$suite
  if ((rebuild_base)) || ! "$engine" image inspect "$base" >/dev/null 2>&1; then
    t0=$SECONDS
    make_base "$base"
    echo "build-images: making the base took $((SECONDS - t0)) s"
  fi
fi

# --- static binaries ---------------------------------------------------------

triple=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$triple" ] || die "rustc -vV printed no host triple"
case $profile in
dev | test) profile_dir=debug ;;
bench) profile_dir=release ;;
*) profile_dir=$profile ;;
esac
target_dir=${CARGO_TARGET_DIR:-$here/target}
case $target_dir in /*) ;; *) target_dir=$here/$target_dir ;; esac
bindir=$target_dir/$triple/$profile_dir

if ((!skip_cargo)); then
  bins=()
  for c in "${components[@]}"; do bins+=(--bin "$c"); done
  echo "build-images: cargo build --profile $profile --target $triple ${bins[*]} (static)"
  t0=$SECONDS
  (cd "$here" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --locked --profile "$profile" --target "$triple" "${bins[@]}")
  echo "build-images: cargo build took $((SECONDS - t0)) s"
fi

mkdir -p "$target_dir"
ctx=$(mktemp -d "$target_dir/image-context.XXXXXX")
# shellcheck disable=SC2064 # expand now: the trap must remove this directory
trap "rm -rf '$ctx' '$ctx.log'" EXIT
mkdir "$ctx/bin"
cp "$here/images/Containerfile" "$here/images/rootfs.sh" "$ctx/"
for c in "${components[@]}"; do
  [ -x "$bindir/$c" ] || die "$bindir/$c is missing: build it (drop --skip-cargo) or check --profile"
  if command -v readelf >/dev/null && readelf -d "$bindir/$c" 2>/dev/null | grep -q '(NEEDED)'; then
    die "$bindir/$c is dynamically linked (it would not run FROM scratch): build it with RUSTFLAGS='-C target-feature=+crt-static' and --target $triple"
  fi
  cp "$bindir/$c" "$ctx/bin/$c"
done

# --- images ------------------------------------------------------------------

t0=$SECONDS
for c in "${components[@]}"; do
  name=${registry:+$registry/}$c:$tag
  echo "build-images: $engine build --target $c -t $name"
  if ! "$engine" build -f "$ctx/Containerfile" --target "$c" \
    --build-arg "BASE=$base" --build-arg "VERSION=$version" -t "$name" "$ctx" >"$ctx.log" 2>&1; then
    tail -n 30 "$ctx.log" >&2
    die "$engine build --target $c failed (last lines above)"
  fi
  size=$("$engine" image inspect --format '{{.Size}}' "$name")
  echo "image $name $size"
done
echo "build-images: $engine build of ${#components[@]} image(s) took $((SECONDS - t0)) s"
