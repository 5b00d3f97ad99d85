"""Go's os.RemoveAll as the kubelet runs it on an emptyDir: it descends into
mounts. Root only: the tests mount a tmpfs and a FUSE filesystem (bindfs)."""

import errno
import os
import signal
import subprocess
import time

import pytest

from podrunner.node import read_mountinfo, top_mount_at
from podrunner.removeall import remove_all


@pytest.fixture(autouse=True)
def root():
    assert os.geteuid() == 0, "run as root (tests/check.sh does): these tests mount"


def tree(root):
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "f").write_text("x")
    (root / "top").write_text("y")
    os.symlink("/etc", root / "link-out")


def test_removes_a_tree_without_following_symlinks(tmp_path):
    target = tmp_path / "vol"
    target.mkdir()
    tree(target)
    result = remove_all(str(target))
    assert result.error is None and not target.exists()
    assert os.path.isdir("/etc") and os.listdir("/etc")
    assert sorted(os.path.relpath(r.path, tmp_path) for r in result.removed) == \
        ["vol", "vol/dir", "vol/dir/sub", "vol/dir/sub/f", "vol/link-out", "vol/top"]
    assert result.inside_mounts() == []


def test_a_missing_path_is_success(tmp_path):
    assert remove_all(str(tmp_path / "absent")).error is None


@pytest.fixture
def mounted(tmp_path):
    """A directory with a tmpfs mounted on it (a kernel filesystem left on an emptyDir)."""
    target = tmp_path / "vol"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
    yield target
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_descends_into_a_live_mount_and_empties_it(mounted):
    tree(mounted)
    result = remove_all(str(mounted))
    # Everything inside is gone; the mountpoint itself cannot go (EBUSY).
    assert result.error is not None and result.error.errno == errno.EBUSY
    assert os.listdir(mounted) == []
    inside = sorted(os.path.relpath(p, mounted) for p in result.inside_mounts())
    assert inside == ["dir", "dir/sub", "dir/sub/f", "link-out", "top"]


def test_a_dead_fuse_mount_fails_with_enotconn_and_loses_nothing(tmp_path):
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "precious").write_text("data")
    target = tmp_path / "vol"
    target.mkdir()
    daemon = subprocess.Popen(["bindfs", "-f", str(backing), str(target)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while top_mount_at(read_mountinfo(), str(target)) is None:
            assert time.monotonic() < deadline, "bindfs did not mount"
            time.sleep(0.05)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        result = remove_all(str(target))
        assert result.error is not None and result.error.errno == errno.ENOTCONN
        assert result.removed == []
        assert (backing / "precious").read_text() == "data"
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
