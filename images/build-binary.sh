#!/bin/sh
# Builds the sidemount binary that the images carry and the release attaches, and
# prints its path: a release build, stripped, linked statically against glibc
# (static-pie). With no dynamic loader to run and no libraries to find, map and
# relocate, it starts in under half the time of the dynamically linked
# build, which every sidecar start and every `sidemount probe` pays; and it runs
# on any Linux of its architecture, whatever glibc that has. It calls nothing
# that glibc loads at run time (NSS, iconv): the link would warn of it.
#
#   images/build-binary.sh [cargo flags...]
#
# Run from anywhere; builds in the repository's target directory (or
# CARGO_TARGET_DIR), for the host's target.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
host=$(rustc -vV | sed -n 's/^host: //p')
# The target is named, so the flag reaches this build and not the build scripts
# and proc macros that run on the host.
(cd "$repo" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked -p sidemount --target "$host" "$@") >&2
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$repo/$target ;; esac
echo "$target/$host/release/sidemount"
