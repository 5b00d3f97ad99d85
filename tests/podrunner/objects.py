"""Kubernetes objects as the runner takes them: YAML documents, the pod a workload
would create (its pod template), the API server's defaults for a pod, the Secrets
and ConfigMaps a pod reads, and resource quantities."""

import base64
import copy
import re
import uuid

import yaml

# Kinds whose pod template is at spec.template (apps/v1, batch/v1).
TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job"}


class ManifestError(Exception):
    """A manifest the runner cannot run; the message names the object and the field."""


def load_documents(text):
    """Every non-empty document of a YAML stream; a `List` is flattened."""
    docs = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        if doc.get("kind") == "List":
            docs.extend(item for item in doc.get("items") or [] if item)
        else:
            docs.append(doc)
    return docs


def load_files(paths):
    docs = []
    for path in paths:
        with open(path) as f:
            docs.extend(load_documents(f.read()))
    return docs


def pod_from(doc, uid=None):
    """The pod that `doc` makes: a Pod as is, a workload's pod template as its
    controller would create it (name derived from the workload's, namespace kept),
    with the API server's defaults applied."""
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    if kind == "Pod":
        pod = copy.deepcopy(doc)
    elif kind in TEMPLATE_KINDS or kind == "CronJob":
        if kind == "CronJob":
            template = (((doc.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template")
        else:
            template = (doc.get("spec") or {}).get("template")
        if not template:
            raise ManifestError(f"{kind}/{meta.get('name')}: no pod template (spec.template)")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": copy.deepcopy(template.get("metadata") or {}),
               "spec": copy.deepcopy(template.get("spec") or {})}
        suffix = uuid.uuid4().hex[:5]
        pod["metadata"]["name"] = f"{meta.get('name', 'pod')}-{suffix}"
        if meta.get("namespace"):
            pod["metadata"]["namespace"] = meta["namespace"]
        if kind in ("Job", "CronJob"):
            pod["metadata"].setdefault("labels", {})["job-name"] = meta.get("name", "")
    else:
        raise ManifestError(f"{kind}/{meta.get('name')}: not a Pod or a workload with a pod template")
    return apply_defaults(pod, uid)


def apply_defaults(pod, uid=None):
    """What the API server fills in before a kubelet sees a pod (pkg/apis/core/v1/defaults.go)."""
    meta = pod.setdefault("metadata", {})
    if not meta.get("name"):
        raise ManifestError("Pod: metadata.name is required")
    meta.setdefault("namespace", "default")
    meta["uid"] = uid or meta.get("uid") or str(uuid.uuid4())
    meta.setdefault("labels", {})
    meta.setdefault("annotations", {})
    spec = pod.setdefault("spec", {})
    if not spec.get("containers"):
        raise ManifestError(f"Pod/{meta['name']}: spec.containers is empty")
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("nodeName", "podrunner-node")
    spec.setdefault("initContainers", [])
    spec.setdefault("volumes", [])
    for volume in spec["volumes"]:
        for kind, mode in (("secret", 0o644), ("configMap", 0o644), ("downwardAPI", 0o644)):
            if kind in volume and volume[kind] is not None:
                volume[kind].setdefault("defaultMode", mode)
            elif kind in volume:
                volume[kind] = {"defaultMode": mode}
    return pod


class Store:
    """The Secrets and ConfigMaps a pod may read, keyed by namespace and name."""

    def __init__(self, docs=()):
        self.secrets = {}
        self.configmaps = {}
        for doc in docs:
            self.add(doc)

    def add(self, doc):
        kind = doc.get("kind")
        meta = doc.get("metadata") or {}
        key = (meta.get("namespace", "default"), meta.get("name"))
        if kind == "Secret":
            # The API server folds stringData into data (pkg/apis/core/v1/conversion.go).
            data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
            data.update({k: str(v).encode() for k, v in (doc.get("stringData") or {}).items()})
            self.secrets[key] = data
        elif kind == "ConfigMap":
            data = {k: str(v).encode() for k, v in (doc.get("data") or {}).items()}
            data.update({k: base64.b64decode(v) for k, v in (doc.get("binaryData") or {}).items()})
            self.configmaps[key] = data

    def secret(self, namespace, name):
        return self.secrets.get((namespace, name))

    def configmap(self, namespace, name):
        return self.configmaps.get((namespace, name))


_SUFFIXES = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 0.001,
}


def quantity(text):
    """A resource quantity ("256Mi", "500m", "1.5G", "1e3") as a number."""
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?", str(text).strip())
    if not match:
        raise ManifestError(f"not a resource quantity: {text!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2) or ""]
