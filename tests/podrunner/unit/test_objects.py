"""Manifests in: pods from workloads, defaults, Secrets and ConfigMaps, quantities, mountinfo."""

import pytest

from conftest import fixture_path
from podrunner.node import mounts_under, parse_mountinfo, top_mount_at
from podrunner.objects import ManifestError, load_documents, pod_from, quantity

JOB = """
apiVersion: batch/v1
kind: Job
metadata: {name: writer, namespace: ns}
spec:
  template:
    metadata: {labels: {app: writer}}
    spec:
      restartPolicy: Never
      containers: [{name: w, image: i}]
---
"""


def test_a_job_runs_its_pod_template():
    pod = pod_from(load_documents(JOB)[0])
    assert pod["kind"] == "Pod" and pod["metadata"]["name"].startswith("writer-")
    assert pod["metadata"]["namespace"] == "ns" and pod["metadata"]["labels"] == {"app": "writer", "job-name": "writer"}
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["terminationGracePeriodSeconds"] == 30


def test_defaults_and_refusals():
    pod = pod_from({"kind": "Pod", "metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": [{"name": "s", "secret": {"secretName": "x"}}]}})
    assert pod["metadata"]["namespace"] == "default" and pod["spec"]["restartPolicy"] == "Always"
    assert pod["spec"]["volumes"][0]["secret"]["defaultMode"] == 0o644
    with pytest.raises(ManifestError):
        pod_from({"kind": "Service", "metadata": {"name": "s"}})
    with pytest.raises(ManifestError):
        pod_from({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}})


def test_secret_string_data_and_data(store):
    assert store.secret("team", "creds") == {"password": b"secret-value", "user": b"alice", "bad name": b"skipped-by-envFrom"}
    assert store.secret("other", "creds") == {"user": b"mallory"}
    assert store.configmap("team", "settings")["LEVEL"] == b"debug"
    assert store.secret("team", "absent") is None


@pytest.mark.parametrize("text,value", [("256Mi", 256 * 2**20), ("500m", 0.5), ("1", 1), ("1.5G", 1.5e9),
                                        ("2Ki", 2048), ("1e3", 1000)])
def test_quantities(text, value):
    assert quantity(text) == value


def test_mountinfo_parsing():
    with open(fixture_path("mountinfo")) as f:
        mounts = parse_mountinfo(f.read())
    under = mounts_under(mounts, "/tmp/node/pods/u1")
    assert [m.mount_id for m in under] == [101, 102, 103, 104]
    assert top_mount_at(mounts, "/tmp/node/pods/u1/volumes/kubernetes.io~empty-dir/data").mount_id == 103
    assert under[-1].target.endswith("/with space") and under[-1].fstype == "ext4"
    assert [m.mount_id for m in mounts_under(mounts, "/tmp/node")] == [100, 101, 102, 103, 104]
