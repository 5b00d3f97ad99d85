"""A test tool: runs Kubernetes pod manifests on the local Docker engine with the
kubelet's semantics (sandbox, volumes, start order, probes, restarts, termination
order, volume teardown), so sidemount's end-to-end cases start from the manifest a
user would apply. Not part of the product.

Each emulated behaviour cites the kubelet source file (kubernetes/kubernetes) it
follows. What cannot be faithful here is listed in `UNFAITHFUL` and printed by the
runner when a pod starts.
"""

# What differs from a kubelet on a node, printed once per pod and listed in README.
UNFAITHFUL = (
    "images are never pulled: every image must already be in the engine",
    "no cluster DNS or Services: names resolve through /etc/hosts entries the caller gives",
    "no API server: status is this process's, a force delete removes nothing from anywhere",
    "cgroup limits are docker's (--memory, --cpus); no QoS classes, no eviction",
    "Secret/ConfigMap updates are written when Pod.resync() is called, not on the kubelet's sync period",
    "the sandbox is a sleeping container of a local image, not the pause image",
)
