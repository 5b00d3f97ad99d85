"""The kubelet's decisions about a pod's containers, as pure functions: the start
order, the termination order and grace periods, the restart backoff, the probe
defaults and the mapping of volumeMounts to the runtime's mounts."""

import time
from dataclasses import dataclass

from .objects import ManifestError

# pkg/kubelet/kuberuntime/kuberuntime_container.go: minimumGracePeriodInSeconds.
MINIMUM_GRACE = 2
# A force delete (`kubectl delete --force --grace-period=0`): the kubelet still kills
# the containers, with a short override and no ordering wait (pod_workers.go).
FORCE_GRACE = 2


def is_sidecar(container):
    """pkg/kubelet/types: IsRestartableInitContainer (restartPolicy: Always)."""
    return container.get("restartPolicy") == "Always"


# ---------------------------------------------------------------- start


@dataclass
class Step:
    """One step of a pod's start: `init` runs to completion, `sidecar` starts and
    gates the next step on its startupProbe, `regular` starts every app container."""

    kind: str
    containers: list


def start_plan(pod):
    """pkg/kubelet/kuberuntime/kuberuntime_manager.go computePodActions: init
    containers one at a time in order (a sidecar's successor waits for its
    startupProbe), then every regular container at once."""
    steps = []
    for container in pod["spec"].get("initContainers") or []:
        steps.append(Step("sidecar" if is_sidecar(container) else "init", [container]))
    steps.append(Step("regular", list(pod["spec"]["containers"])))
    return steps


# ---------------------------------------------------------------- termination


def grace_period(pod, deletion_grace=None):
    """killContainer's grace: the deletion's grace period, else the pod's
    terminationGracePeriodSeconds (default 30), else the minimum (kuberuntime_container.go)."""
    if deletion_grace is not None:
        return int(deletion_grace)
    value = pod["spec"].get("terminationGracePeriodSeconds")
    return MINIMUM_GRACE if value is None else int(value)


def termination_prereqs(pod, running):
    """kuberuntime_termination_order.go newTerminationOrdering: for each sidecar,
    the containers it waits for before its SIGTERM: every regular container that is
    running, and the next later sidecar that is running. None when the pod has no
    sidecar (no ordering at all: every container is killed at once)."""
    init = pod["spec"].get("initContainers") or []
    if not any(is_sidecar(c) for c in init):
        return None
    running = set(running)
    regular = [c["name"] for c in pod["spec"]["containers"] if c["name"] in running]
    prereqs = {}
    later_sidecar = None
    for container in reversed(init):
        if is_sidecar(container):
            prereqs[container["name"]] = regular + ([later_sidecar] if later_sidecar and later_sidecar in running else [])
            later_sidecar = container["name"]
    return prereqs


def stop_timeout(grace, prestop_seconds, waited_seconds):
    """killContainer: the grace left for StopContainer after the preStop hook (whole
    seconds it took) and the wait for its turn (truncated to whole seconds), never
    under the minimum: "always give containers a minimal shutdown window"."""
    if grace > 0 and prestop_seconds:
        grace -= int(prestop_seconds)
    if grace > 0 and waited_seconds:
        grace -= int(waited_seconds)
    return max(grace, MINIMUM_GRACE)


@dataclass
class Kill:
    """How one container is killed: run `prestop` (bounded by `grace`), wait for
    `waits_for` (bounded by what is left), then SIGTERM with stop_timeout(...)."""

    name: str
    grace: int
    prestop: bool
    waits_for: list


def termination_plan(pod, running, deletion_grace=None, force=False):
    """Every running container's Kill, as killContainersWithSyncResult starts them
    (concurrently). A force delete: no preStop, no ordering, FORCE_GRACE each."""
    everything = {c["name"]: c for c in pod["spec"].get("initContainers") or []}
    everything.update({c["name"]: c for c in pod["spec"]["containers"]})
    if force:
        return [Kill(name, FORCE_GRACE, False, []) for name in running]
    grace = grace_period(pod, deletion_grace)
    prereqs = termination_prereqs(pod, running) or {}
    plan = []
    for name in running:
        lifecycle = everything[name].get("lifecycle") or {}
        plan.append(Kill(name, grace, bool(lifecycle.get("preStop")) and grace > 0, prereqs.get(name, [])))
    return plan


# ---------------------------------------------------------------- restarts


class Backoff:
    """k8s.io/client-go/util/flowcontrol Backoff as the kubelet uses it
    (pkg/kubelet/kubelet.go backOffPeriod 10 s, MaxContainerBackOff 300 s;
    kuberuntime_manager.go doBackOff): the first exit is restarted at once, each
    later one waits twice as long since the container finished, up to the cap; an
    entry idle for twice the cap starts over."""

    def __init__(self, initial=10.0, cap=300.0, clock=time.monotonic):
        self.initial = initial
        self.cap = cap
        self.clock = clock
        self.entries = {}  # key -> (backoff, last update)

    def in_backoff_since(self, key, finished_at):
        entry = self.entries.get(key)
        if entry is None or self._expired(entry, finished_at):
            return False
        return self.clock() - finished_at < entry[0]

    def delay(self, key, finished_at):
        """Seconds still to wait before the restart (0: restart now)."""
        if not self.in_backoff_since(key, finished_at):
            return 0.0
        return max(0.0, self.entries[key][0] - (self.clock() - finished_at))

    def next(self, key, finished_at):
        entry = self.entries.get(key)
        if entry is None or self._expired(entry, finished_at):
            backoff = self.initial
        else:
            backoff = min(entry[0] * 2, self.cap)
        self.entries[key] = (backoff, self.clock())

    def _expired(self, entry, event_time):
        # "consider stable if it's ok for twice the maxDuration"
        return event_time - entry[1] > 2 * self.cap


def should_restart(pod, container, exit_code):
    """A sidecar always; a regular container by the pod's restartPolicy."""
    if is_sidecar(container):
        return True
    policy = pod["spec"].get("restartPolicy", "Always")
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


# ---------------------------------------------------------------- probes


@dataclass
class Probe:
    kind: str  # exec | httpGet | tcpSocket | grpc
    action: dict
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int


def probe(spec):
    """A probe with the API defaults (pkg/apis/core/v1/defaults.go SetDefaults_Probe)."""
    if not spec:
        return None
    kinds = [k for k in ("exec", "httpGet", "tcpSocket", "grpc") if k in spec]
    if len(kinds) != 1:
        raise ManifestError(f"a probe needs exactly one handler, got {kinds}")
    return Probe(kinds[0], spec[kinds[0]], float(spec.get("initialDelaySeconds", 0)),
                 float(spec.get("periodSeconds", 10)), float(spec.get("timeoutSeconds", 1)),
                 int(spec.get("successThreshold", 1)), int(spec.get("failureThreshold", 3)))


# ---------------------------------------------------------------- mounts

PROPAGATION = {
    None: "rprivate",
    "None": "rprivate",
    "HostToContainer": "rslave",
    "Bidirectional": "rshared",
}


def propagation(mount, privileged):
    """pkg/kubelet/kubelet_pods.go translateMountPropagation."""
    mode = mount.get("mountPropagation")
    if mode not in PROPAGATION:
        raise ManifestError(f"volumeMount {mount.get('name')}: invalid mountPropagation {mode!r}")
    if mode == "Bidirectional" and not privileged:
        raise ManifestError(f"volumeMount {mount.get('name')}: Bidirectional mount propagation is "
                            "available only to privileged containers")
    return PROPAGATION[mode]


def docker_mount(source, target, bind_propagation, read_only):
    """The runtime's mount as docker's --mount takes it."""
    for value in (source, target):
        if "," in value or "=" in value:
            raise ManifestError(f"path {value!r}: ',' and '=' cannot be passed to docker --mount")
    spec = f"type=bind,src={source},dst={target},bind-propagation={bind_propagation}"
    return spec + (",readonly" if read_only else "")
