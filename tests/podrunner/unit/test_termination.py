"""The termination executor (Pod.delete's kill phase) against a scripted runtime:
who gets SIGTERM when, with how long before SIGKILL. No Docker: each container
'exits' a scripted time after its stop signal, or at the SIGKILL."""

import time

import pytest

from podrunner.events import EventLog
from podrunner.pod import DeleteReport, Instance, Pod


class ScriptedRuntime:
    def __init__(self, exit_after):
        self.exit_after = exit_after  # container name -> seconds from SIGTERM to exit (None: ignores SIGTERM)
        self.instances = {}
        self.stops = {}
        self.t0 = time.monotonic()

    def stop(self, ref, timeout):
        inst = self.instances[ref]
        name = inst.container.name
        self.stops[name] = (round(time.monotonic() - self.t0, 1), timeout)
        delay = self.exit_after[name]
        killed = delay is None or delay > timeout
        time.sleep(timeout if killed else delay)
        inst.exit_code = 137 if killed else 0
        inst.finished_at = time.monotonic()
        inst.exited.set()

    def exec(self, ref, command, timeout=None):
        time.sleep(float(command[-1]))  # preStop: ["sleep", N]
        return 0, b"", b""


class FakeNode:
    def pod_dir(self, uid):
        return f"/nonexistent/{uid}"


def pod_with(manifest, runtime):
    pod = Pod(manifest, None, FakeNode(), runtime, EventLog(None))
    for c in pod.containers.values():
        inst = Instance(c, 0, f"id-{c.name}")
        c.instances.append(inst)
        runtime.instances[inst.id] = inst
    return pod


def manifest(grace, prestop_app=None):
    app = {"name": "app", "image": "i"}
    if prestop_app:
        app["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(prestop_app)]}}}
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"terminationGracePeriodSeconds": grace, "restartPolicy": "Always",
                     "initContainers": [{"name": "first", "image": "i", "restartPolicy": "Always"},
                                        {"name": "second", "image": "i", "restartPolicy": "Always"}],
                     "containers": [app]}}


def kill(pod, grace=None, force=False):
    report = DeleteReport(grace=0, force=force)
    pod._kill_all(report, grace, force)  # noqa: SLF001 - the executor under test
    return report


def test_sidecars_stop_after_the_app_in_reverse_order_with_what_remains():
    runtime = ScriptedRuntime({"app": 1.2, "second": 0.3, "first": 0.3})
    kill(pod_with(manifest(4), runtime))
    assert runtime.stops["app"] == (0.0, 4)
    # "second" waited 1.2 s for the app: 4 - int(1.2) = 3.
    assert runtime.stops["second"][0] == pytest.approx(1.2, abs=0.2) and runtime.stops["second"][1] == 3
    # "first" waited for the app and then for "second": 4 - int(1.5) = 3.
    assert runtime.stops["first"][0] == pytest.approx(1.5, abs=0.2) and runtime.stops["first"][1] == 3


def test_an_app_that_uses_the_grace_leaves_the_sidecars_the_minimum():
    runtime = ScriptedRuntime({"app": 2.6, "second": 0.1, "first": 0.1})
    kill(pod_with(manifest(3), runtime))
    assert runtime.stops["second"][1] == 2 and runtime.stops["first"][1] == 2


def test_a_prestop_hook_is_taken_from_the_apps_grace():
    runtime = ScriptedRuntime({"app": 0.1, "second": 0.1, "first": 0.1})
    kill(pod_with(manifest(5, prestop_app=1.1), runtime))
    assert runtime.stops["app"][0] == pytest.approx(1.1, abs=0.2) and runtime.stops["app"][1] == 4


def test_force_delete_stops_everything_at_once_with_two_seconds():
    runtime = ScriptedRuntime({"app": None, "second": 0.1, "first": 0.1})
    kill(pod_with(manifest(30, prestop_app=5), runtime), force=True)
    assert {name: stop for name, stop in runtime.stops.items()} == {
        "app": (0.0, 2), "second": (0.0, 2), "first": (0.0, 2)}


def test_a_sidecar_that_is_not_running_is_not_waited_for():
    runtime = ScriptedRuntime({"app": 0.5, "second": 0.1, "first": 0.1})
    pod = pod_with(manifest(4), runtime)
    second = pod.containers["second"].current
    second.exited.set()  # OOM-killed, not restarted yet
    kill(pod)
    assert "second" not in runtime.stops
    assert runtime.stops["first"][0] == pytest.approx(0.5, abs=0.2)
