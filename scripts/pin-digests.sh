#!/usr/bin/env bash
# The kustomize manifests of a release, pinned to the digests of the images it
# pushed: a copy of kustomize/ in which
#
#   - kustomize/webhook/base's `images:` name the webhook and sidecar images by
#     repository and digest (so do SIDEMOUNT_IMAGE, through image-fields.yaml);
#   - kustomize/components/sidecar-plain gets an `images:` pinning its sidecar;
#   - kustomize/components/sidecar/injector.yaml injects the sidecar by digest;
#
# rendered once more to check that every sidemount image in the output is pinned,
# and written out as OUT/sidemount-kustomize-VERSION.tar.gz, with the webhook
# rendered as OUT/sidemount-webhook-VERSION.yaml and
# OUT/sidemount-webhook-cert-manager-VERSION.yaml for `kubectl apply -f URL`.
#
# It talks to no registry: the digests are given. --dry-run makes them up (and
# takes the version from sidecar/Cargo.toml), which is how CI checks this script.
#
# Usage: scripts/pin-digests.sh --version V --sidecar REPO@sha256:D --webhook REPO@sha256:D --out DIR
#        scripts/pin-digests.sh --dry-run [--out DIR]
# Needs kubectl (its kustomize renders the manifests).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "pin-digests: $*" >&2; }
die() { say "$*"; exit 64; }

version='' sidecar='' webhook='' out='' dry_run=0
while [ $# -gt 0 ]; do
  case $1 in
    --version) version=${2:?--version needs a value}; shift ;;
    --sidecar) sidecar=${2:?--sidecar needs a value}; shift ;;
    --webhook) webhook=${2:?--webhook needs a value}; shift ;;
    --out) out=${2:?--out needs a value}; shift ;;
    --dry-run) dry_run=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/sidecar/Cargo.toml" | head -n 1)
if [ "$dry_run" = 1 ]; then
  version=${version:-$crate_version}
  fake() { printf 'sha256:%s' "$(printf '%s' "$1" | sha256sum | cut -d' ' -f1)"; }
  sidecar=${sidecar:-ghcr.io/sidemount/sidemount@$(fake sidecar)}
  webhook=${webhook:-ghcr.io/sidemount/sidemount-webhook@$(fake webhook)}
  if [ -z "$out" ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
  fi
fi
if [ -z "$version" ] || [ -z "$sidecar" ] || [ -z "$webhook" ] || [ -z "$out" ]; then
  die "give --version, --sidecar, --webhook and --out, or --dry-run"
fi
# The manifests name the images by the crate's version: a tag must be that version.
[ "$version" = "$crate_version" ] \
  || die "version $version is not the crate's ($crate_version in sidecar/Cargo.toml): tag v$crate_version, or bump the crate"
digest_re='^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$'
for image in "$sidecar" "$webhook"; do
  [[ $image =~ $digest_re ]] || die "$image is not REPOSITORY@sha256:<64 hex digits>"
done
command -v kubectl >/dev/null 2>&1 || die "needs kubectl (its kustomize renders the manifests)"

mkdir -p "$out"
pinned=$out/kustomize
rm -rf "$pinned"
cp -r "$repo/kustomize" "$pinned"

# `images:` entries are matched by the name the manifests use, and rewritten to
# the pushed repository and digest.
images_entry() { # NAME REPO@DIGEST
  printf -- '- name: %s\n  newName: %s\n  digest: %s\n' "$1" "${2%@*}" "${2#*@}"
}
base=$pinned/webhook/base/kustomization.yaml
grep -q '^images:$' "$base" || die "$base has no images: block to pin"
# Everything from `images:` to the end is this release's pins now.
sed -i '/^images:$/,$d' "$base"
{
  echo "images:"
  images_entry ghcr.io/sidemount/sidemount-webhook "$webhook"
  images_entry ghcr.io/sidemount/sidemount "$sidecar"
} >>"$base"

plain=$pinned/components/sidecar-plain/kustomization.yaml
! grep -q '^images:' "$plain" || die "$plain has an images: block already"
{
  echo "# Pinned by scripts/pin-digests.sh: the sidecar of release $version."
  echo "images:"
  images_entry ghcr.io/sidemount/sidemount "$sidecar"
} >>"$plain"

injector=$pinned/components/sidecar/injector.yaml
grep -q "^  image: ghcr.io/sidemount/sidemount:$version\$" "$injector" \
  || die "$injector does not name ghcr.io/sidemount/sidemount:$version"
sed -i "s|^  image: ghcr.io/sidemount/sidemount:$version\$|  image: $sidecar|" "$injector"

# Check on what kustomize renders: every sidemount image is the pushed digest.
render() { kubectl kustomize "$1"; }
check_pinned() { # FILE: no sidemount image left by tag
  local found
  found=$(grep -oE '[a-z0-9./-]*sidemount[a-z-]*(:[^ "@]+)?(@sha256:[0-9a-f]{64})?' "$1" | grep -E '^(ghcr\.io|[a-z0-9.-]+\.[a-z]+)/' | sort -u)
  [ -n "$found" ] || { say "$1 names no sidemount image"; return 1; }
  while read -r image; do
    [ "$image" = "$sidecar" ] || [ "$image" = "$webhook" ] || { say "$1: $image is not pinned to the release"; return 1; }
  done <<<"$found"
}
render "$pinned/webhook" >"$out/sidemount-webhook-$version.yaml"
render "$pinned/webhook/cert-manager" >"$out/sidemount-webhook-cert-manager-$version.yaml"
render "$pinned/examples/no-webhook" >"$out/.no-webhook.yaml"
check_pinned "$out/sidemount-webhook-$version.yaml"
check_pinned "$out/sidemount-webhook-cert-manager-$version.yaml"
check_pinned "$out/.no-webhook.yaml"
grep -q "value: $sidecar\$" "$out/sidemount-webhook-$version.yaml" || die "SIDEMOUNT_IMAGE is not $sidecar"
grep -q "image: $sidecar\$" "$injector" || die "the plugin component's injector is not pinned"
rm -f "$out/.no-webhook.yaml"

tar -C "$out" -czf "$out/sidemount-kustomize-$version.tar.gz" kustomize
say "release $version: sidecar $sidecar, webhook $webhook"
say "wrote $out/sidemount-kustomize-$version.tar.gz, $out/sidemount-webhook-$version.yaml, $out/sidemount-webhook-cert-manager-$version.yaml"
