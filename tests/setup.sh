#!/usr/bin/env bash
# Installs what sidemount's tests need on a Debian or Ubuntu machine: the FUSE
# daemons and mount tools they drive (apt) and the Python tools (a venv at .venv).
# Idempotent; run as root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

[ "$(id -u)" = 0 ] || { echo "setup: run as root (sudo $0)" >&2; exit 1; }

packages=(bindfs s3fs fuse3 rclone util-linux mount procps e2fsprogs xfsprogs python3-venv
  shellcheck jq curl openssl debootstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -c "install ok installed" >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv=$here/.venv
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  python3 -m venv "$venv"
fi
stamp=$venv/.requirements
if ! cmp -s "$here/tests/requirements.txt" "$stamp"; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/tests/requirements.txt"
  cp "$here/tests/requirements.txt" "$stamp"
fi
