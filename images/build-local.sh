#!/usr/bin/env bash
# Builds sidemount's sidecar and webhook images with images/Dockerfile on a machine
# whose Docker engine can pull nothing (no registry), as this repository's CI does.
# What it does differently from a normal `docker build -f images/Dockerfile .`:
#
#   1. The base image: when the engine has no $BASE_IMAGE (debian:bookworm-slim), it
#      makes one from Debian's packages: debootstrap (minbase) into a temporary
#      folder, slimmed as Debian's official -slim images are (no docs, man pages or
#      locales; apt keeps no caches), then `docker import` under that tag. Skipped
#      when the tag exists (--rebuild-base replaces it).
#   2. The binary: built on the host by images/build-binary.sh (release, stripped,
#      --locked, linked statically, so the host's glibc does not matter) and given
#      to the Dockerfile's `prebuilt` stage (SIDEMOUNT_BINARY=prebuilt), since no
#      Rust image can be pulled.
#      The build context is a staging folder holding only that binary,
#      images/objectivefs/ and images/sidecar-rootfs.sh.
#   3. BuildKit through whatever client can do it: the buildx plugin, or else a
#      Docker client older than 23 (Debian's docker.io), which has it built in.
#
# With --compile-in-docker, step 2 is replaced by the Dockerfile's own `build` stage
# (what users run elsewhere), given a Rust image made here from $BASE_IMAGE, gcc
# from apt and the host's Rust toolchain (rustc, cargo, the host target's std), and
# the repository as the build context (filtered by .dockerignore). cargo fetches the
# crates from crates.io inside the build, trusting the host's CA bundle
# (HOST_CA_BUNDLE, default /etc/ssl/certs/ca-certificates.crt). This local Rust
# image is a build tool only; nothing of it reaches the sidecar or webhook image.
#
# Everything else (the apt packages, ObjectiveFS, the webhook's rootfs, entrypoints)
# is the Dockerfile's own and runs as it would anywhere. The RUN steps fetch
# packages from the Debian mirror, so the engine needs to reach it.
#
# Usage: images/build-local.sh [--rebuild-base] [--sidecar-only] [--compile-in-docker]
#                              [-- extra docker build arguments]
# Settings (environment):
#   SIDECAR_IMAGE   tag of the sidecar image   [sidemount:dev]
#   WEBHOOK_IMAGE   tag of the webhook image   [sidemount-webhook:dev]
#   OBJECTIVEFS_DIR the folder whose *.deb are installed [images/objectivefs]
#   BASE_IMAGE      the Debian base tag        [debian:bookworm-slim]
#   DEBIAN_SUITE    suite for debootstrap      [bookworm]
#   DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR      [http://deb.debian.org/debian, ...-security]
#   http_proxy, https_proxy, no_proxy          passed to debootstrap and the build
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
SIDECAR_IMAGE=${SIDECAR_IMAGE:-sidemount:dev}
WEBHOOK_IMAGE=${WEBHOOK_IMAGE:-sidemount-webhook:dev}
BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

OBJECTIVEFS_DIR=${OBJECTIVEFS_DIR:-$repo/images/objectivefs}

rebuild_base=0
sidecar_only=0
compile_in_docker=0
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --rebuild-base) rebuild_base=1 ;;
    --sidecar-only) sidecar_only=1 ;;
    --compile-in-docker) compile_in_docker=1 ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-local: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

log() { echo "build-local: $*" >&2; }
die() { log "$*"; exit 1; }

scratch=$(mktemp -d "${TMPDIR:-/var/tmp}/sidemount-build.XXXXXX")
cleanup() {
  # debootstrap mounts /proc and /sys in the rootfs while it works and may leave
  # them behind when it fails: unmount before deleting, and never cross into one.
  local m
  if [ -d "$scratch" ]; then
    findmnt -rn -o TARGET | awk -v p="$scratch/" 'index($0, p) == 1' | sort -r | while read -r m; do
      umount -l "$m" || true
    done
    rm -rf --one-file-system "$scratch"
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- BuildKit client
builder=()
if docker buildx version >/dev/null 2>&1; then
  builder=(docker)
else
  for client in docker /usr/bin/docker; do
    command -v "$client" >/dev/null 2>&1 || continue
    version=$("$client" version -f '{{.Client.Version}}' 2>/dev/null || true)
    major=${version%%.*}
    if [[ $major =~ ^[0-9]+$ ]] && [ "$major" -lt 23 ]; then
      builder=("$client")
      break
    fi
  done
fi
[ ${#builder[@]} -gt 0 ] || die "needs BuildKit: install the docker buildx plugin, or Debian's docker.io (its client has BuildKit built in)"

proxy_args=()
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  [ -n "${!var:-}" ] && proxy_args+=(--build-arg "$var=${!var}")
done

# ---------------------------------------------------------------- the base image
make_base() {
  [ "$(id -u)" = 0 ] || die "making $BASE_IMAGE with debootstrap needs root"
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
  fi
  local rootfs=$scratch/rootfs
  log "debootstrap $DEBIAN_SUITE (minbase) from $DEBIAN_MIRROR"
  if ! debootstrap --variant=minbase --components=main "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$scratch/debootstrap.log" 2>&1; then
    tail -n 30 "$scratch/debootstrap.log" >&2
    die "debootstrap failed"
  fi

  # What Debian's -slim images do: dpkg leaves out docs, man pages and locales;
  # apt keeps no package caches and no translations.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'APT::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
  # The official images' sources: deb822, main only (the sidecar stage adds contrib).
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $DEBIAN_SUITE $DEBIAN_SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $DEBIAN_SECURITY_MIRROR
Suites: $DEBIAN_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/root/.bash_history
  : >"$rootfs/etc/machine-id"
  : >"$rootfs/etc/resolv.conf"
  echo localhost >"$rootfs/etc/hostname"

  log "importing the rootfs as $BASE_IMAGE"
  tar --numeric-owner --xattrs -C "$rootfs" -c . \
    | docker import \
      --change 'CMD ["bash"]' \
      --change "LABEL io.sidemount.base=debootstrap io.sidemount.base.suite=$DEBIAN_SUITE" \
      - "$BASE_IMAGE" >/dev/null
  rm -rf --one-file-system "$rootfs"
}

if [ "$rebuild_base" = 1 ] || ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  make_base
else
  log "base: $BASE_IMAGE is there ($(docker image inspect -f '{{index .Config.Labels "io.sidemount.base"}}' "$BASE_IMAGE" 2>/dev/null || true)), no debootstrap"
fi

# ---------------------------------------------------------------- the binary
if [ "$compile_in_docker" = 1 ]; then
  # A stand-in for the rust:*-bookworm image: the host's toolchain on $BASE_IMAGE.
  sysroot=$(rustc --print sysroot)
  host=$(rustc -vV | sed -n 's/^host: //p')
  rust_image=sidemount-local/rust:$(rustc -V | awk '{print $2}')
  if ! docker image inspect "$rust_image" >/dev/null 2>&1; then
    log "making $rust_image from the host's toolchain ($sysroot)"
    rctx=$scratch/rust
    mkdir -p "$rctx/toolchain/bin" "$rctx/toolchain/lib/rustlib"
    cp -a "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$rctx/toolchain/bin/"
    cp -a "$sysroot"/lib/*.so* "$rctx/toolchain/lib/"
    cp -a "$sysroot/lib/rustlib/$host" "$rctx/toolchain/lib/rustlib/"
    # cargo trusts the host's CA bundle: a host behind a TLS-inspecting proxy
    # reaches crates.io only through a CA that the base image does not know.
    cp "${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" "$rctx/host-ca-bundle.crt"
    cat >"$rctx/Dockerfile" <<'DOCKERFILE'
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
COPY host-ca-bundle.crt /usr/local/share/host-ca-bundle.crt
ENV CARGO_HOME=/usr/local/cargo CARGO_HTTP_CAINFO=/usr/local/share/host-ca-bundle.crt \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
DOCKERFILE
    DOCKER_BUILDKIT=1 "${builder[@]}" build --progress=plain --build-arg "BASE_IMAGE=$BASE_IMAGE" \
      ${proxy_args[@]+"${proxy_args[@]}"} -t "$rust_image" "$rctx" >"$scratch/rust-image.log" 2>&1 \
      || { tail -n 30 "$scratch/rust-image.log" >&2; die "making $rust_image failed"; }
    rm -rf "$rctx"
  fi
  [ "$OBJECTIVEFS_DIR" = "$repo/images/objectivefs" ] \
    || die "--compile-in-docker builds from the repository: OBJECTIVEFS_DIR cannot be changed"
  ctx=$repo
  binary_args=(--build-arg SIDEMOUNT_BINARY=build --build-arg "RUST_IMAGE=$rust_image")
else
  log "images/build-binary.sh (cargo build --release --locked -p sidemount, linked statically)"
  binary=$("$repo/images/build-binary.sh") || die "building the binary failed"
  [ -x "$binary" ] || die "no binary at $binary"

  ctx=$scratch/context
  mkdir -p "$ctx/target/release" "$ctx/images"
  cp "$binary" "$ctx/target/release/sidemount"
  cp -r "$OBJECTIVEFS_DIR" "$ctx/images/objectivefs"
  cp "$repo/images/sidecar-rootfs.sh" "$ctx/images/"
  binary_args=(--build-arg SIDEMOUNT_BINARY=prebuilt)
fi

# ---------------------------------------------------------------- the images
build() {
  local target=$1 tag=$2 previous
  previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  log "docker build --target $target -t $tag (${builder[*]}, BuildKit)"
  if ! DOCKER_BUILDKIT=1 "${builder[@]}" build --progress=plain \
    -f "$repo/images/Dockerfile" --target "$target" -t "$tag" \
    "${binary_args[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    ${proxy_args[@]+"${proxy_args[@]}"} ${extra[@]+"${extra[@]}"} \
    "$ctx" >"$scratch/build-$target.log" 2>&1; then
    tail -n 40 "$scratch/build-$target.log" >&2
    die "building $target failed"
  fi
  # The image the tag named before, now untagged, is not kept (unless in use).
  if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
  fi
}
size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1 / 1000000}'; }
build sidecar "$SIDECAR_IMAGE"
log "$SIDECAR_IMAGE: $(size "$SIDECAR_IMAGE") (base $BASE_IMAGE: $(size "$BASE_IMAGE"))"
if [ "$sidecar_only" = 0 ]; then
  build webhook "$WEBHOOK_IMAGE"
  log "$WEBHOOK_IMAGE: $(size "$WEBHOOK_IMAGE")"
fi
