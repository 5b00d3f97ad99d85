"""The node: the kubelet's root directory (/var/lib/kubelet) as a tmpfs with shared
propagation, as a node's is (the kubelet makes its root rshared so Bidirectional
mounts reach it), and the mount table as the kubelet reads it."""

import os
import subprocess
import tempfile
from dataclasses import dataclass


@dataclass
class Mount:
    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str
    target: str
    fstype: str
    source: str
    optional: str  # shared:N master:N ...


def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text):
    """proc(5) mountinfo lines as Mounts, in table order (later mounts cover earlier ones)."""
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        fields = left.split()
        after = right.split()
        mounts.append(Mount(int(fields[0]), int(fields[1]), fields[2], _unescape(fields[3]), _unescape(fields[4]),
                            after[0] if after else "", _unescape(after[1]) if len(after) > 1 else "",
                            " ".join(fields[6:])))
    return mounts


def read_mountinfo():
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def mounts_under(mounts, path, include_self=True):
    """The mounts at or below `path`, in table order."""
    path = path.rstrip("/")
    return [m for m in mounts if m.target.startswith(path + "/") or (include_self and m.target == path)]


def top_mount_at(mounts, path):
    """The mount visible at exactly `path` (the last one mounted there), or None."""
    path = path.rstrip("/")
    found = [m for m in mounts if m.target == path]
    return found[-1] if found else None


def unmount_all_under(path):
    """Lazily unmount everything at or below `path`, innermost and newest first."""
    for m in sorted(mounts_under(read_mountinfo(), path), key=lambda m: (-m.target.count("/"), -m.mount_id)):
        subprocess.run(["umount", "-l", m.target], capture_output=True)


class Node:
    """The kubelet root of this run: `<root>/pods/<uid>/...`."""

    def __init__(self, root=None, size="1g"):
        self.root = root or tempfile.mkdtemp(prefix="podrunner-node.")
        os.makedirs(self.root, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "podrunner-node", self.root], check=True)
        subprocess.run(["mount", "--make-shared", self.root], check=True)

    def pod_dir(self, uid):
        return os.path.join(self.root, "pods", uid)

    def mounts_under(self, path):
        return mounts_under(read_mountinfo(), path)

    def close(self):
        unmount_all_under(self.root)
        if not mounts_under(read_mountinfo(), self.root):
            os.rmdir(self.root)
