"""A container's environment and the downward API's field values, as the kubelet
computes them (pkg/kubelet/kubelet_pods.go makeEnvironmentVariables,
podFieldSelectorRuntimeValue; pkg/fieldpath/fieldpath.go; $(VAR) expansion from
third_party/forked/golang/expansion/expand.go). Pure: a pod, a Store, values."""

import json
import math
import re

from .objects import ManifestError, quantity


class EnvError(ManifestError):
    """CreateContainerConfigError: a referenced Secret/ConfigMap or key is missing."""


def format_map(values):
    """pkg/fieldpath/fieldpath.go FormatMap: sorted `key="value"` lines (Go's %q)."""
    return "\n".join(f"{key}={json.dumps(values[key], ensure_ascii=False)}" for key in sorted(values))


_SUBSCRIPT = re.compile(r"^(metadata\.(?:labels|annotations))\['(.+)'\]$")


def field_value(pod, path, pod_ip="", host_ip=""):
    """The value of a fieldRef.fieldPath for `pod` (pkg/fieldpath/fieldpath.go
    ExtractFieldPathAsString, and the kubelet's status fields)."""
    meta = pod["metadata"]
    spec = pod["spec"]
    match = _SUBSCRIPT.match(path)
    if match:
        source = meta.get("labels" if match.group(1).endswith("labels") else "annotations") or {}
        return source.get(match.group(2), "")
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    if path == "metadata.labels":
        return format_map(meta.get("labels") or {})
    if path == "metadata.annotations":
        return format_map(meta.get("annotations") or {})
    raise ManifestError(f"unsupported fieldPath {path!r}")


def resource_value(pod, ref, default_container=None, node_cpus=1, node_memory=2**30):
    """resourceFieldRef (pkg/api/v1/resource/helpers.go ExtractContainerResourceValue):
    the limit (else the request, else the node's allocatable for limits), divided by the
    divisor and rounded up."""
    name = ref.get("containerName") or default_container
    container = next((c for c in all_containers(pod) if c["name"] == name), None)
    if container is None:
        raise ManifestError(f"resourceFieldRef: no container {name!r}")
    field = ref["resource"]
    kind, _, resource = field.partition(".")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(resource)
    if raw is None and kind == "limits":
        value = node_cpus if resource == "cpu" else node_memory
    elif raw is None:
        value = 0
    else:
        value = quantity(raw)
    divisor = quantity(ref.get("divisor", "1"))
    return str(int(math.ceil(value / divisor)))


def all_containers(pod):
    return list(pod["spec"].get("initContainers") or []) + list(pod["spec"]["containers"])


def expand(text, env):
    """$(VAR) expansion (third_party/forked/golang/expansion): a defined VAR is
    replaced, an undefined one is left as `$(VAR)`, `$$` is an escaped `$`."""
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end == -1:
                    out.append(text[i:])
                    break
                name = text[i + 2:end]
                out.append(env[name] if name in env else text[i:end + 1])
                i = end + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def container_env(pod, container, store, pod_ip="", host_ip="", node_cpus=1, node_memory=2**30):
    """The container's environment as an ordered dict: envFrom first (prefixed, invalid
    names skipped), then env in order, each value expanded against what came before."""
    namespace = pod["metadata"]["namespace"]
    env = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        ref = source.get("secretRef") or source.get("configMapRef")
        kind = "Secret" if "secretRef" in source else "ConfigMap"
        data = (store.secret if kind == "Secret" else store.configmap)(namespace, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise EnvError(f"{kind} {namespace}/{ref['name']} not found (envFrom of {container['name']})")
        for key in sorted(data):
            name = prefix + key
            if _ENV_NAME.match(name):
                env[name] = data[key].decode(errors="replace")
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in source:
            env[name] = resource_value(pod, source["resourceFieldRef"], container["name"], node_cpus, node_memory)
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
            ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
            data = (store.secret if kind == "Secret" else store.configmap)(namespace, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                what = "not found" if data is None else f"has no key {ref['key']!r}"
                raise EnvError(f"{kind} {namespace}/{ref['name']} {what} (env {name} of {container['name']})")
            env[name] = data[ref["key"]].decode(errors="replace")
        else:
            raise ManifestError(f"env {name} of {container['name']}: unsupported valueFrom {sorted(source)}")
    return env


def command_and_args(container, env):
    """command and args with $(VAR) expanded (pkg/kubelet/container/helpers.go
    ExpandContainerCommandAndArgs)."""
    command = [expand(str(a), env) for a in container.get("command") or []]
    args = [expand(str(a), env) for a in container.get("args") or []]
    return command, args
