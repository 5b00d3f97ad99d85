"""A pod's volumes on the node, set up and torn down as the kubelet's volume
plugins do: emptyDir (pkg/volume/emptydir/empty_dir.go), Secret
(pkg/volume/secret/secret.go), ConfigMap (pkg/volume/configmap/configmap.go),
downwardAPI (pkg/volume/downwardapi/downwardapi.go), projected
(pkg/volume/projected/projected.go), hostPath, and subPath binds
(pkg/volume/util/subpath/subpath_linux.go)."""

import errno
import os
import subprocess
from dataclasses import dataclass, field

from . import atomic_writer
from .env import expand
from .node import mounts_under, read_mountinfo, top_mount_at
from .objects import ManifestError, quantity
from .removeall import remove_all

PLUGIN_DIRS = {
    "emptyDir": "kubernetes.io~empty-dir",
    "secret": "kubernetes.io~secret",
    "configMap": "kubernetes.io~configmap",
    "downwardAPI": "kubernetes.io~downward-api",
    "projected": "kubernetes.io~projected",
}
# mount-utils IsCorruptedMnt: errors that mean "a mount is there but dead".
CORRUPTED = {errno.ENOTCONN, errno.ESTALE, errno.EIO, errno.EACCES, errno.EHOSTDOWN, errno.EWOULDBLOCK}


@dataclass
class Volume:
    name: str
    kind: str
    path: str
    memory: bool = False  # a tmpfs of the kubelet's own (Memory emptyDir, Secret, downwardAPI, projected)
    read_only: bool = False  # the plugin forces read-only mounts (Secret, ConfigMap, downwardAPI, projected)
    source: dict = None


@dataclass
class Teardown:
    """What tearing one volume down did: `error` None when it succeeded."""

    volume: str
    kind: str
    path: str
    steps: list = field(default_factory=list)
    removed: list = field(default_factory=list)  # removeall.Removed entries
    inside_mounts: list = field(default_factory=list)  # removed paths that were on another filesystem
    error: str = None


def _mount_tmpfs(path, size=None):
    options = "mode=0777" + (f",size={int(size)}" if size else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True, capture_output=True)


def setup(pod, store, pod_dir):
    """Every volume of the pod under `pod_dir`, in spec order. Raises
    atomic_writer.PayloadError / ManifestError as the kubelet's SetUp fails."""
    volumes = {}
    for spec in pod["spec"].get("volumes") or []:
        name = spec["name"]
        kinds = [k for k in spec if k != "name"]
        if len(kinds) != 1:
            raise ManifestError(f"volume {name}: exactly one volume source expected, got {kinds}")
        kind = kinds[0]
        source = spec[kind] or {}
        if kind == "hostPath":
            path = source["path"]
            if source.get("type") in ("DirectoryOrCreate",) and not os.path.exists(path):
                os.makedirs(path, 0o755)
            volumes[name] = Volume(name, kind, path, source=source)
            continue
        if kind not in PLUGIN_DIRS:
            raise ManifestError(f"volume {name}: {kind} volumes are not supported by the pod runner")
        path = os.path.join(pod_dir, "volumes", PLUGIN_DIRS[kind], name)
        os.makedirs(path, exist_ok=True)
        if kind == "emptyDir":
            # empty_dir.go setupDir: mode 0777 whatever the umask.
            os.chmod(path, 0o777)
            memory = source.get("medium") == "Memory"
            if memory:
                limit = source.get("sizeLimit")
                _mount_tmpfs(path, quantity(limit) if limit else None)
            volumes[name] = Volume(name, kind, path, memory=memory, source=source)
            continue
        # Secret, downwardAPI and projected wrap a Memory emptyDir; ConfigMap a plain one.
        memory = kind != "configMap"
        if memory:
            _mount_tmpfs(path)
        volume = Volume(name, kind, path, memory=memory, read_only=True, source=source)
        atomic_writer.write(path, payload(pod, store, volume))
        volumes[name] = volume
    return volumes


def payload(pod, store, volume):
    namespace = pod["metadata"]["namespace"]
    source = volume.source
    if volume.kind == "secret":
        return atomic_writer.secret_payload(source, store.secret(namespace, source["secretName"]))
    if volume.kind == "configMap":
        return atomic_writer.secret_payload(source, store.configmap(namespace, source["name"]), "ConfigMap")
    if volume.kind == "downwardAPI":
        return atomic_writer.downward_payload(source, pod)
    if volume.kind == "projected":
        out = {}
        default_mode = source.get("defaultMode", 0o644)
        for projection in source.get("sources") or []:
            if "secret" in projection:
                sub = dict(projection["secret"], defaultMode=default_mode)
                out.update(atomic_writer.secret_payload(sub, store.secret(namespace, sub["name"])))
            elif "configMap" in projection:
                sub = dict(projection["configMap"], defaultMode=default_mode)
                out.update(atomic_writer.secret_payload(sub, store.configmap(namespace, sub["name"]), "ConfigMap"))
            elif "downwardAPI" in projection:
                out.update(atomic_writer.downward_payload(dict(projection["downwardAPI"], defaultMode=default_mode), pod))
            else:
                raise ManifestError(f"volume {volume.name}: projected source {sorted(projection)} is not supported")
        return out
    raise ManifestError(f"volume {volume.name}: no payload for {volume.kind}")


def subpath_source(pod_dir, volume, container_name, index, mount, env):
    """PrepareSafeSubpath: the subdirectory (created if missing), bind-mounted at
    volume-subpaths/<volume>/<container>/<index>, which becomes the mount's source."""
    sub = mount.get("subPath") or expand(mount.get("subPathExpr", ""), env)
    if os.path.isabs(sub) or ".." in sub.split("/"):
        raise ManifestError(f"volumeMount {mount['name']}: subPath {sub!r} must be a relative path without '..'")
    real_volume = os.path.realpath(volume.path)
    target_in_volume = os.path.realpath(os.path.join(volume.path, sub))
    if target_in_volume != real_volume and not target_in_volume.startswith(real_volume + "/"):
        raise ManifestError(f"volumeMount {mount['name']}: subPath {sub!r} resolves outside the volume")
    if not os.path.lexists(target_in_volume):
        os.makedirs(target_in_volume, 0o755, exist_ok=True)
    bind = os.path.join(pod_dir, "volume-subpaths", volume.name, container_name, str(index))
    if os.path.isdir(target_in_volume):
        os.makedirs(bind, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(bind), exist_ok=True)
        open(bind, "a").close()
    if top_mount_at(read_mountinfo(), bind) is None:
        subprocess.run(["mount", "--bind", target_in_volume, bind], check=True, capture_output=True)
    return bind


def clean_subpaths(pod_dir, volume_name):
    """subpath_linux.go CleanSubPaths: unmount and remove each subpath bind of the volume."""
    root = os.path.join(pod_dir, "volume-subpaths", volume_name)
    if not os.path.isdir(root):
        return None
    for m in sorted(mounts_under(read_mountinfo(), root), key=lambda m: -m.mount_id):
        proc = subprocess.run(["umount", m.target], capture_output=True, text=True)
        if proc.returncode != 0:
            return f"unmount subpath {m.target}: {proc.stderr.strip()}"
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.unlink(os.path.join(dirpath, name))
        os.rmdir(dirpath)
    return None


def _unmount(path):
    proc = subprocess.run(["umount", path], capture_output=True, text=True)
    return None if proc.returncode == 0 else proc.stderr.strip() or f"umount {path} failed"


def teardown(volume, pod_dir):
    """The volume plugin's TearDownAt, after its subpaths are cleaned."""
    result = Teardown(volume.name, volume.kind, volume.path)
    if volume.kind == "hostPath":
        return result
    err = clean_subpaths(pod_dir, volume.name)
    if err:
        result.error = err
        return result
    # empty_dir.go TearDownAt: PathExists first. A dead mount answers ENOTCONN and
    # fails the teardown there, before anything is removed.
    try:
        os.stat(volume.path)
    except FileNotFoundError:
        result.steps.append("gone already")
        return result
    except OSError as err:
        what = "a corrupted mount" if err.errno in CORRUPTED else "an error"
        result.error = f"error checking if path exists ({what}): {err.strerror}"
        return result
    # GetMountMedium: a tmpfs mounted at the directory is torn down as Memory
    # (unmount, then remove); anything else as the default medium: RemoveAll.
    top = top_mount_at(read_mountinfo(), volume.path)
    if top is not None and top.fstype == "tmpfs":
        result.steps.append(f"unmount {top.fstype}")
        err = _unmount(volume.path)
        if err:
            result.error = err
            return result
    result.steps.append("os.RemoveAll")
    outcome = remove_all(volume.path)
    result.removed = outcome.removed
    result.inside_mounts = outcome.inside_mounts()
    if outcome.error is not None:
        result.error = f"unlinkat {outcome.error.filename}: {outcome.error.strerror}"
    return result
