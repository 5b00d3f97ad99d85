"""Start order, termination order and timings, restart backoff, probe defaults,
mount propagation: the kubelet's decisions, on a fixture pod."""

import pytest

from podrunner import plan
from podrunner.objects import ManifestError


def names(step):
    return [c["name"] for c in step.containers]


def test_start_plan_runs_init_containers_one_at_a_time_then_every_regular_container(ordering_pod):
    steps = plan.start_plan(ordering_pod)
    assert [(s.kind, names(s)) for s in steps] == [
        ("init", ["setup"]), ("sidecar", ["mounter"]), ("init", ["migrate"]), ("sidecar", ["proxy"]),
        ("regular", ["app", "worker"])]


def test_grace_period_comes_from_the_deletion_then_the_pod_then_the_minimum(ordering_pod):
    assert plan.grace_period(ordering_pod) == 20
    assert plan.grace_period(ordering_pod, 5) == 5
    assert plan.grace_period(ordering_pod, 0) == 0
    ordering_pod["spec"]["terminationGracePeriodSeconds"] = None
    assert plan.grace_period(ordering_pod) == plan.MINIMUM_GRACE


def test_sidecars_wait_for_every_regular_container_and_for_the_later_sidecar(ordering_pod):
    running = ["mounter", "proxy", "app", "worker"]
    assert plan.termination_prereqs(ordering_pod, running) == {
        "proxy": ["app", "worker"],
        "mounter": ["app", "worker", "proxy"],
    }


def test_containers_not_running_are_not_waited_for(ordering_pod):
    # The sidecar "proxy" was OOM-killed and not restarted yet; "worker" finished.
    assert plan.termination_prereqs(ordering_pod, ["mounter", "app"]) == {"proxy": ["app"], "mounter": ["app"]}


def test_a_pod_without_sidecars_has_no_ordering(ordering_pod):
    ordering_pod["spec"]["initContainers"] = [c for c in ordering_pod["spec"]["initContainers"] if not plan.is_sidecar(c)]
    assert plan.termination_prereqs(ordering_pod, ["app", "worker"]) is None


@pytest.mark.parametrize("grace,prestop,waited,expected", [
    (30, 0, 0, 30),
    (30, 5.9, 0, 25),          # preStop seconds truncated
    (30, 0, 27.8, 3),          # the wait truncated: 30 - 27
    (30, 0, 29.5, 2),          # the app used almost everything: the minimum
    (30, 10, 25, 2),           # preStop and wait together exceed the grace
    (0, 0, 0, 2),              # never below the minimum
    (1, 0, 0, 2),
])
def test_stop_timeout_is_what_remains_of_the_grace_but_never_under_two_seconds(grace, prestop, waited, expected):
    assert plan.stop_timeout(grace, prestop, waited) == expected


def test_termination_plan_runs_prestop_hooks_and_orders_the_sidecars(ordering_pod):
    kills = {k.name: k for k in plan.termination_plan(ordering_pod, ["mounter", "proxy", "app", "worker"])}
    assert kills["app"] == plan.Kill("app", 20, True, [])
    assert kills["worker"] == plan.Kill("worker", 20, False, [])
    # The sidecar's preStop runs at the start, concurrently with the app's.
    assert kills["mounter"] == plan.Kill("mounter", 20, True, ["app", "worker", "proxy"])
    assert kills["proxy"] == plan.Kill("proxy", 20, False, ["app", "worker"])


def test_a_delete_with_grace_zero_skips_hooks(ordering_pod):
    kills = {k.name: k for k in plan.termination_plan(ordering_pod, ["mounter", "app"], deletion_grace=0)}
    assert not kills["app"].prestop and not kills["mounter"].prestop
    assert plan.stop_timeout(kills["app"].grace, 0, 0) == 2


def test_force_delete_kills_everything_at_once_with_the_short_override(ordering_pod):
    kills = plan.termination_plan(ordering_pod, ["mounter", "proxy", "app"], force=True)
    assert kills == [plan.Kill(n, plan.FORCE_GRACE, False, []) for n in ["mounter", "proxy", "app"]]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_backoff_restarts_the_first_exit_at_once_then_doubles_up_to_the_cap():
    clock = FakeClock()
    backoff = plan.Backoff(10, 40, clock)
    delays = []
    for _ in range(5):
        finished = clock.now
        delay = backoff.delay("c", finished)
        delays.append(delay)
        clock.now += delay
        backoff.next("c", finished)
        clock.now += 1  # the container runs a second, then fails again
    assert delays == [0, 10, 20, 40, 40]


def test_backoff_starts_over_after_twice_the_cap_without_failures():
    clock = FakeClock()
    backoff = plan.Backoff(10, 40, clock)
    backoff.next("c", clock.now)
    backoff.next("c", clock.now)
    clock.now += 5
    assert backoff.delay("c", clock.now - 1) == 19  # in backoff: 20 s from when it finished
    backoff.next("c", clock.now)
    clock.now += 81
    assert backoff.delay("c", clock.now) == 0
    backoff.next("c", clock.now)
    assert backoff.entries["c"][0] == 10


def test_restart_rules_sidecars_always_regular_by_restart_policy(ordering_pod):
    sidecar = ordering_pod["spec"]["initContainers"][1]
    app = ordering_pod["spec"]["containers"][0]
    for policy, code, expected in [("Always", 0, True), ("OnFailure", 0, False), ("OnFailure", 1, True),
                                   ("Never", 1, False)]:
        ordering_pod["spec"]["restartPolicy"] = policy
        assert plan.should_restart(ordering_pod, app, code) is expected
        assert plan.should_restart(ordering_pod, sidecar, 0) is True


def test_probe_defaults():
    p = plan.probe({"exec": {"command": ["true"]}})
    assert (p.kind, p.initial_delay, p.period, p.timeout, p.success_threshold, p.failure_threshold) == \
        ("exec", 0, 10, 1, 1, 3)
    assert plan.probe(None) is None
    with pytest.raises(ManifestError):
        plan.probe({"exec": {}, "tcpSocket": {}})


@pytest.mark.parametrize("mode,privileged,expected", [
    (None, False, "rprivate"), ("None", False, "rprivate"), ("HostToContainer", False, "rslave"),
    ("Bidirectional", True, "rshared"),
])
def test_mount_propagation_maps_to_the_runtimes_bind_propagation(mode, privileged, expected):
    mount = {"name": "data", "mountPath": "/data"}
    if mode is not None:
        mount["mountPropagation"] = mode
    assert plan.propagation(mount, privileged) == expected


def test_bidirectional_is_refused_for_an_unprivileged_container():
    with pytest.raises(ManifestError, match="available only to privileged containers"):
        plan.propagation({"name": "data", "mountPropagation": "Bidirectional"}, False)
    with pytest.raises(ManifestError, match="invalid mountPropagation"):
        plan.propagation({"name": "data", "mountPropagation": "Sideways"}, True)


def test_docker_mount_spec():
    assert plan.docker_mount("/n/pods/u/volumes/x/data", "/data", "rslave", True) == \
        "type=bind,src=/n/pods/u/volumes/x/data,dst=/data,bind-propagation=rslave,readonly"
    with pytest.raises(ManifestError):
        plan.docker_mount("/a,b", "/data", "rslave", False)
