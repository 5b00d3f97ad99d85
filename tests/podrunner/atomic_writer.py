"""The kubelet's atomic writer (pkg/volume/util/atomic_writer.go) and the payloads
of Secret, ConfigMap and downwardAPI volumes (pkg/volume/secret/secret.go
MakePayload, pkg/volume/configmap/configmap.go, pkg/volume/downwardapi/downwardapi.go
CollectData): files live in a timestamped hidden directory, `..data` points at it,
and every user-visible name is a symlink through `..data`, so an update swaps all
files at once with one rename."""

import datetime
import os
import random
import shutil

from .env import field_value, resource_value
from .objects import ManifestError

DATA_DIR = "..data"
DATA_TMP = "..data_tmp"


class PayloadError(ManifestError):
    """The volume cannot be set up (the kubelet retries; the pod stays ContainerCreating)."""


def secret_payload(source, data, what="Secret"):
    """{path: (bytes, mode)} for a Secret or ConfigMap volume; `data` is None when
    the object does not exist."""
    default_mode = source.get("defaultMode", 0o644)
    name = source.get("secretName") or source.get("name")
    if data is None:
        if source.get("optional"):
            return {}
        raise PayloadError(f"{what} {name!r} not found")
    items = source.get("items")
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    payload = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise PayloadError(f"{what} {name!r} has no key {item['key']!r} (items)")
        payload[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
    return payload


def downward_payload(source, pod):
    default_mode = source.get("defaultMode", 0o644)
    payload = {}
    for item in source.get("items") or []:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in item:
            value = resource_value(pod, item["resourceFieldRef"])
        else:
            raise PayloadError(f"downwardAPI item {item.get('path')!r}: no fieldRef or resourceFieldRef")
        payload[item["path"]] = (value.encode(), item.get("mode", default_mode))
    return payload


def validate_path(path):
    """atomic_writer.go validatePath: relative, no `..` element, not starting with `..`."""
    if not path or os.path.isabs(path) or len(path) > 4096:
        raise PayloadError(f"invalid path {path!r}: must be relative and non-empty")
    parts = path.split("/")
    if any(p == ".." for p in parts) or parts[0].startswith(".."):
        raise PayloadError(f"invalid path {path!r}: must not contain '..' or start with '..'")


def timestamp_dir_name(now=None):
    """`..2006_01_02_15_04_05.` plus os.MkdirTemp's random digits."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("..%Y_%m_%d_%H_%M_%S.") + str(random.randrange(10**8, 10**9))


def write(target, payload, now=None):
    """AtomicWriter.Write: returns False when the payload equals what is there."""
    for path in payload:
        validate_path(path)
    data_link = os.path.join(target, DATA_DIR)
    old_ts = os.readlink(data_link) if os.path.islink(data_link) else None
    if old_ts is not None and _same(os.path.join(target, old_ts), payload):
        return False
    ts_name = timestamp_dir_name(now)
    ts_dir = os.path.join(target, ts_name)
    os.mkdir(ts_dir, 0o755)
    for path, (content, mode) in payload.items():
        full = os.path.join(ts_dir, path)
        os.makedirs(os.path.dirname(full), 0o755, exist_ok=True)
        with open(full, "wb") as f:
            f.write(content)
        os.chmod(full, mode)
    # The user-visible names: one symlink per top-level path component.
    visible = {path.split("/")[0] for path in payload}
    for name in visible:
        link = os.path.join(target, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(DATA_DIR, name), link)
    tmp = os.path.join(target, DATA_TMP)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(ts_name, tmp)
    os.rename(tmp, data_link)
    # Names gone from the payload, then the old generation.
    if old_ts is not None:
        old_visible = {p.split("/")[0] for p in _files(os.path.join(target, old_ts))}
        for name in old_visible - visible:
            link = os.path.join(target, name)
            if os.path.islink(link):
                os.unlink(link)
        shutil.rmtree(os.path.join(target, old_ts), ignore_errors=True)
    return True


def _files(root):
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def _same(ts_dir, payload):
    if not os.path.isdir(ts_dir) or sorted(_files(ts_dir)) != sorted(payload):
        return False
    for path, (content, mode) in payload.items():
        full = os.path.join(ts_dir, path)
        if (os.stat(full).st_mode & 0o7777) != mode:
            return False
        with open(full, "rb") as f:
            if f.read() != content:
                return False
    return True
