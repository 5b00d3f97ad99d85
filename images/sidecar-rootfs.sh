#!/bin/sh
# Assembles the sidecar image's root filesystem in ROOT from the Debian packages
# installed in the Dockerfile's `helpers` stage: each mount helper, the shared
# libraries it links (the dynamic loader's own list), the data files it reads, and
# busybox for a shell and the usual commands. Nothing else of the packages comes
# along: not perl (s3fs -> mime-support -> mailcap -> perl), not python3's
# standard library beyond the minimal one (zfsutils-linux, xfsprogs), not apt,
# dpkg, docs, locales or gconv modules.
# The image therefore has no package manager: extend it by copying files in, or
# build your own from images/Dockerfile.
#
# Usage (in the helpers stage): sh sidecar-rootfs.sh ROOT
# Prints, last, what each helper costs: the bytes only it needs.
set -eu
root=${1:?usage: sidecar-rootfs.sh ROOT}
lists=$(mktemp -d)

# The helpers, by what they serve. A group's programs must all be there.
groups='
util-linux:mount umount blkid findmnt losetup
fuse:fusermount3 fusermount mount.fuse3
rclone:rclone
s3fs:s3fs
ext4:mkfs.ext4 mke2fs
xfs:mkfs.xfs
btrfs:mkfs.btrfs
zfs:zfs zpool mount.zfs
bash:bash
'''
# Whole packages: python3's interpreter and its minimal standard library. The
# sidecar does not run it; the end-to-end suites do (their data-safety app runs
# on this image), and so may a user's `kubectl exec`. 12 MB: see docs/image-and-e2e.md.
packages='python3-minimal python3.11-minimal libpython3.11-minimal'
# busybox applets: a shell and what `kubectl exec` and the tests reach for.
applets='sh ash cat ls cp mv rm mkdir rmdir ln echo printf sleep kill ps tr sed grep awk head tail wc sort
uniq cut dd sha256sum md5sum test [ true false env id stat df du find xargs chmod chown touch date uname
readlink dirname basename mountpoint sync which less vi hexdump timeout nproc free top'
# Data files the helpers read.
data='/etc/ssl/certs/ca-certificates.crt /etc/mime.types /etc/fuse.conf /etc/mke2fs.conf'

# Merged /usr, as Debian lays it out: /bin, /sbin, /lib* point into /usr.
mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib" "$root/etc" "$root/tmp" "$root/run" \
  "$root/sidemount" "$root/etc/sidemount" "$root/root"
for link in bin sbin lib lib64; do
  if [ -L "/$link" ]; then
    target=$(readlink "/$link")
    mkdir -p "$root/$target"
    ln -sfn "$target" "$root/$link"
  fi
done
chmod 1777 "$root/tmp"

# copy PATH LIST: PATH into ROOT with every symlink on the way (so mkfs.ext4 stays
# a link to mke2fs), its name appended to LIST.
copy() {
  p=$1
  while :; do
    [ -e "$root$p" ] || [ -L "$root$p" ] || cp -a --parents "$p" "$root"
    echo "$p" >>"$2"
    [ -L "$p" ] || break
    t=$(readlink "$p")
    case $t in /*) p=$t ;; *) p=$(dirname "$p")/$t ;; esac
  done
}
# libs PATH LIST: the shared libraries PATH links, as the dynamic loader finds them.
libs() {
  ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    copy "$lib" "$2"
  done
}
elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' \n')" = '177ELF' ]; }

echo "$groups" | while IFS=: read -r group programs; do
  [ -n "$group" ] || continue
  for program in $programs; do
    path=$(command -v "$program") || { echo "sidecar-rootfs: $program is not installed" >&2; exit 1; }
    copy "$path" "$lists/$group"
    real=$(readlink -f "$path")
    if elf "$real"; then libs "$real" "$lists/$group"; fi
  done
done

for package in $packages; do
  for f in $(dpkg -L "$package"); do
    case $f in /usr/share/doc/* | /usr/share/man/* | /usr/share/lintian/* | /usr/share/binfmts/*) continue ;; esac
    [ -d "$f" ] && [ ! -L "$f" ] && continue
    [ -e "$f" ] || [ -L "$f" ] || continue
    copy "$f" "$lists/python3"
    if [ -f "$f" ] && [ ! -L "$f" ] && elf "$f"; then libs "$f" "$lists/python3"; fi
  done
done

# ObjectiveFS, when the build installed it: the package's files, the programs of
# the packages it depends on, and the libraries they link.
if dpkg-query -W -f '${Status}' objectivefs 2>/dev/null | grep -q 'ok installed'; then
  deps=$(dpkg-query -W -f '${Depends}' objectivefs | tr ',' '\n' | sed 's/|.*//; s/(.*//; s/:.*//; s/ //g')
  for f in $(dpkg -L objectivefs); do
    [ -d "$f" ] && [ ! -L "$f" ] && continue
    copy "$f" "$lists/objectivefs"
    if [ -f "$f" ] && elf "$f"; then libs "$f" "$lists/objectivefs"; fi
  done
  for dep in $deps; do
    for f in $(dpkg -L "$dep" 2>/dev/null | grep -E '^/(usr/)?s?bin/' || true); do
      [ -d "$f" ] && continue
      copy "$f" "$lists/objectivefs"
      if [ -f "$f" ] && elf "$(readlink -f "$f")"; then libs "$(readlink -f "$f")" "$lists/objectivefs"; fi
    done
  done
fi

busybox=$(command -v busybox)
copy "$busybox" "$lists/busybox"
if elf "$busybox"; then libs "$busybox" "$lists/busybox"; fi
for applet in $applets; do
  if busybox --list | grep -qxF "$applet" && [ ! -e "$root/usr/bin/$applet" ]; then
    ln -s busybox "$root/usr/bin/$applet"
  fi
done
for f in $data; do
  mkdir -p "$root$(dirname "$f")"
  cp -L "$f" "$root$f"
  echo "$f" >>"$lists/data"
done
# Who is who for the helpers that ask (rclone, s3fs, busybox's id and ls).
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

# What the image holds, for SBOM and vulnerability scanners (syft, trivy): the
# Debian package of every file copied, one status file each, as distroless images
# record theirs (/var/lib/dpkg/status.d/). No dpkg reads them: there is none.
mkdir -p "$root/var/lib/dpkg/status.d"
{
  cat "$lists"/*
  cat "$lists"/* | while read -r f; do
    # Merged /usr: a package may own either spelling of the path.
    case $f in /usr/bin/* | /usr/sbin/* | /usr/lib/* | /usr/lib64/*) echo "${f#/usr}" ;; /bin/* | /sbin/* | /lib/* | /lib64/*) echo "/usr$f" ;; esac
  done
} | sort -u | xargs -r dpkg -S 2>/dev/null | sed 's/: .*//; s/, /\n/g' | tr ',' '\n' | sed 's/^ *//; s/:.*//' \
  | { cat; echo ca-certificates; echo busybox; } | sort -u | while read -r pkg; do
  [ -n "$pkg" ] && dpkg-query -s "$pkg" >"$root/var/lib/dpkg/status.d/$pkg"
done

# Every program loads with what is here: the loader finds each library in ROOT.
loader=$(ldd "$busybox" 2>/dev/null | awk '$1 ~ /^\// {print $1}')
[ -n "$loader" ] || loader=$(ldd "$(command -v mount)" | awk '$1 ~ /^\// {print $1}')
for list in "$lists"/*; do
  sort -u "$list" | while read -r f; do
    if [ ! -f "$root$f" ] || [ -L "$root$f" ] || ! elf "$root$f"; then continue; fi
    case $f in *.so | *.so.*) continue ;; esac
    if chroot "$root" "$loader" --list "$f" 2>&1 | grep -q 'not found'; then
      echo "sidecar-rootfs: $f is missing libraries in the image:" >&2
      chroot "$root" "$loader" --list "$f" >&2 || true
      exit 1
    fi
  done
done

# The cost of each part: the bytes of the files only it needs, and what all of it weighs.
echo "sidecar-rootfs: part, bytes only it needs, bytes it uses (shared libraries included)"
for list in "$lists"/*; do
  sort -u "$list" >"$list.sorted"
done
for list in "$lists"/*.sorted; do
  part=$(basename "$list" .sorted)
  others=$(mktemp)
  for other in "$lists"/*.sorted; do [ "$other" = "$list" ] || cat "$other"; done | sort -u >"$others"
  size() { while read -r f; do [ -L "$root$f" ] || stat -c %s "$root$f"; done | awk '{s += $1} END {print s + 0}'; }
  only=$(comm -23 "$list" "$others" | size)
  used=$(size <"$list")
  printf 'sidecar-rootfs: %-12s %10d %10d\n' "$part" "$only" "$used"
  rm -f "$others"
done
echo "sidecar-rootfs: in all $(du -sb "$root" | cut -f1) bytes"
rm -rf "$lists"
