"""Volumes on the node: set up as the kubelet's plugins do, and torn down the same
way, the emptyDir's recursive delete crossing into what is still mounted. Root only."""

import os
import subprocess

import pytest

from conftest import fixture_path
from podrunner import volumes
from podrunner.node import mounts_under, read_mountinfo, top_mount_at, unmount_all_under
from podrunner.objects import load_files, pod_from


@pytest.fixture
def pod_dir(tmp_path):
    assert os.geteuid() == 0, "run as root (tests/check.sh does): these tests mount"
    yield str(tmp_path / "pods" / "uid-1")
    unmount_all_under(str(tmp_path))


@pytest.fixture
def volumes_pod():
    return pod_from(load_files([fixture_path("pod-volumes.yaml")])[0], uid="uid-1")


def fstype(path):
    mount = top_mount_at(read_mountinfo(), path)
    return mount.fstype if mount else None


def test_setup_lays_out_each_plugin_directory(volumes_pod, store, pod_dir):
    vols = volumes.setup(volumes_pod, store, pod_dir)
    base = os.path.join(pod_dir, "volumes")
    assert vols["data"].path == os.path.join(base, "kubernetes.io~empty-dir", "data")
    assert os.stat(vols["data"].path).st_mode & 0o777 == 0o777 and fstype(vols["data"].path) is None
    assert fstype(vols["scratch"].path) == "tmpfs"
    assert fstype(vols["creds"].path) == "tmpfs" and vols["creds"].read_only
    assert vols["creds"].path == os.path.join(base, "kubernetes.io~secret", "creds")
    assert open(os.path.join(vols["creds"].path, "user")).read() == "alice"
    assert os.stat(os.path.join(vols["creds"].path, "user")).st_mode & 0o777 == 0o400
    assert fstype(vols["settings"].path) is None
    assert open(os.path.join(vols["settings"].path, "LEVEL")).read() == "debug"
    assert open(os.path.join(vols["info"].path, "annotations")).read() == 'a="1"'
    assert [n for n in os.listdir(vols["absent"].path) if not n.startswith("..")] == []


def test_teardown_unmounts_and_removes_everything(volumes_pod, store, pod_dir):
    vols = volumes.setup(volumes_pod, store, pod_dir)
    open(os.path.join(vols["data"].path, "f"), "w").close()
    results = [volumes.teardown(v, pod_dir) for v in vols.values()]
    assert [r.error for r in results] == [None] * len(results)
    assert all(not os.path.exists(v.path) for v in vols.values())
    assert mounts_under(read_mountinfo(), pod_dir) == []
    assert [r.steps for r in results if r.volume in ("creds", "scratch")] == [["unmount tmpfs", "os.RemoveAll"]] * 2
    assert all(r.inside_mounts == [] for r in results)


def test_subpath_is_bound_into_volume_subpaths_and_cleaned(volumes_pod, store, pod_dir):
    vols = volumes.setup(volumes_pod, store, pod_dir)
    source = volumes.subpath_source(pod_dir, vols["data"], "app", 3, {"name": "data", "subPath": "a/b"}, {})
    assert source == os.path.join(pod_dir, "volume-subpaths", "data", "app", "3")
    assert top_mount_at(read_mountinfo(), source) is not None
    open(os.path.join(source, "through-bind"), "w").close()
    assert os.path.exists(os.path.join(vols["data"].path, "a", "b", "through-bind"))
    with pytest.raises(volumes.ManifestError):
        volumes.subpath_source(pod_dir, vols["data"], "app", 4, {"name": "data", "subPath": "../x"}, {})
    assert volumes.teardown(vols["data"], pod_dir).error is None
    assert not os.path.exists(os.path.join(pod_dir, "volume-subpaths", "data"))


def test_an_ext4_mount_left_on_an_emptydir_is_emptied_by_the_teardown(volumes_pod, store, pod_dir, tmp_path):
    """The kubelet's own operation on a leftover kernel mount: the files are deleted."""
    vols = volumes.setup(volumes_pod, store, pod_dir)
    image = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["mount", loop, vols["data"].path], check=True)
        with open(os.path.join(vols["data"].path, "precious"), "w") as f:
            f.write("data")
        result = volumes.teardown(vols["data"], pod_dir)
        assert result.error is not None and "busy" in result.error.lower()
        assert sorted(os.path.basename(p) for p in result.inside_mounts) == ["lost+found", "precious"]
        assert os.listdir(vols["data"].path) == []
    finally:
        subprocess.run(["umount", "-l", vols["data"].path], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)
