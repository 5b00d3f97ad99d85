"""The atomic writer's `..data` layout for Secret, ConfigMap and downwardAPI volumes."""

import datetime
import os

import pytest

from podrunner import atomic_writer
from podrunner.atomic_writer import PayloadError, downward_payload, secret_payload, write

NOW = datetime.datetime(2026, 11, 30, 10, 11, 12, tzinfo=datetime.timezone.utc)


def layout(root):
    out = {}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        out[name] = ("-> " + os.readlink(path)) if os.path.islink(path) else ("dir" if os.path.isdir(path) else "file")
    return out


def test_files_are_links_through_data_to_a_timestamped_directory(tmp_path):
    assert write(str(tmp_path), {"user": (b"alice", 0o644), "conf/app.ini": (b"x=1", 0o400)}, NOW)
    entries = layout(tmp_path)
    ts = entries["..data"][3:]
    assert ts.startswith("..2026_11_30_10_11_12.") and entries[ts] == "dir"
    assert entries["user"] == "-> ..data/user" and entries["conf"] == "-> ..data/conf"
    assert set(entries) == {"..data", ts, "user", "conf"}
    assert (tmp_path / "user").read_bytes() == b"alice"
    assert (tmp_path / "conf" / "app.ini").read_bytes() == b"x=1"
    assert os.stat(tmp_path / "conf" / "app.ini").st_mode & 0o777 == 0o400
    assert os.stat(tmp_path / "user").st_mode & 0o777 == 0o644


def test_an_update_swaps_data_and_removes_the_old_generation_and_vanished_names(tmp_path):
    write(str(tmp_path), {"a": (b"1", 0o644), "b": (b"2", 0o644)}, NOW)
    first = os.readlink(tmp_path / "..data")
    assert not write(str(tmp_path), {"a": (b"1", 0o644), "b": (b"2", 0o644)}, NOW)  # unchanged: nothing written
    assert write(str(tmp_path), {"a": (b"new", 0o644)}, NOW + datetime.timedelta(seconds=1))
    second = os.readlink(tmp_path / "..data")
    assert second != first and not (tmp_path / first).exists()
    assert (tmp_path / "a").read_bytes() == b"new" and not os.path.lexists(tmp_path / "b")
    assert not os.path.lexists(tmp_path / atomic_writer.DATA_TMP)


@pytest.mark.parametrize("path", ["../escape", "/abs", "a/../../b", "..hidden", ""])
def test_paths_that_escape_or_hide_are_refused(tmp_path, path):
    with pytest.raises(PayloadError):
        write(str(tmp_path), {path: (b"x", 0o644)}, NOW)


def test_secret_payload_default_mode_items_and_optional():
    data = {"user": b"alice", "password": b"pw"}
    assert secret_payload({"secretName": "s", "defaultMode": 0o400}, data) == \
        {"user": (b"alice", 0o400), "password": (b"pw", 0o400)}
    items = {"secretName": "s", "defaultMode": 0o644, "items": [{"key": "user", "path": "id/user", "mode": 0o600}]}
    assert secret_payload(items, data) == {"id/user": (b"alice", 0o600)}
    with pytest.raises(PayloadError, match="not found"):
        secret_payload({"secretName": "s"}, None)
    assert secret_payload({"secretName": "s", "optional": True}, None) == {}
    missing = {"secretName": "s", "items": [{"key": "nope", "path": "x"}]}
    with pytest.raises(PayloadError, match="no key 'nope'"):
        secret_payload(missing, data)
    assert secret_payload(dict(missing, optional=True), data) == {}


def test_downward_api_files(ordering_pod):
    source = {"defaultMode": 0o644, "items": [
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o400}]}
    payload = downward_payload(source, ordering_pod)
    assert payload["name"] == (b"ordering", 0o400)
    assert payload["annotations"][0].startswith(b'note="says \\"hi\\""\n')
