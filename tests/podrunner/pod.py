"""One pod on the Docker engine, driven as the kubelet drives it: a sandbox that
owns the network namespace (pkg/kubelet/kuberuntime/kuberuntime_sandbox.go), the
volumes on the node, the containers started in the kubelet's order with their
probes (pkg/kubelet/prober/worker.go), restarts with backoff, the Job's
completion, and deletion with the termination order and the volume teardown that
follows (pkg/kubelet/kuberuntime/kuberuntime_container.go killContainer,
kuberuntime_termination_order.go; pkg/kubelet/volumemanager)."""

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from . import UNFAITHFUL, containers, plan, volumes
from .env import command_and_args, container_env
from .docker import DockerError
from .node import mounts_under, read_mountinfo
from .objects import ManifestError

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Options:
    pause_image: str = "sidemount:dev"  # the sandbox: any local image that has `sleep`
    hosts: dict = field(default_factory=dict)  # name -> IP, in the pod's /etc/hosts (Services)
    backoff_initial: float = 10.0  # kubelet.go backOffPeriod
    backoff_cap: float = 300.0  # kubelet.go MaxContainerBackOff
    teardown_retry: float = 4.0  # how long a failing volume teardown is retried before "stuck Terminating"
    sync_retry: float = 5.0  # when the runtime refuses a container, the next attempt (the kubelet's next sync)
    log_dir: str = None  # each container instance's output is saved there when it exits
    run_label: str = "podrunner"


class PodError(Exception):
    pass


class StartError(Exception):
    """The runtime refused to create or start a container."""


class Instance:
    """One run of a container (the kubelet creates a new container per restart)."""

    def __init__(self, container, restart, docker_id):
        self.container = container
        self.restart = restart
        self.id = docker_id
        self.started_at = time.monotonic()
        self.exited = threading.Event()
        self.started = threading.Event()  # startupProbe passed (or none) and postStart done
        self.ready = False
        self.exit_code = None
        self.oom_killed = False
        self.finished_at = None
        self.killed_by = None  # why the runner stopped it


class Container:
    def __init__(self, spec, kind):
        self.spec = spec
        self.name = spec["name"]
        self.kind = kind  # init | sidecar | regular
        self.instances = []
        self.pending_restart = False
        self.done = threading.Event()  # will not run again (init succeeded, or no restart)
        self.started_once = threading.Event()

    @property
    def current(self):
        return self.instances[-1] if self.instances else None

    def running(self):
        inst = self.current
        return inst is not None and not inst.exited.is_set()


@dataclass
class DeleteReport:
    """What deleting the pod did, for a test to check."""

    grace: int
    force: bool
    stops: dict = field(default_factory=dict)  # container -> {"sigterm_at", "timeout", "exited_at", "exit_code"}
    teardowns: list = field(default_factory=list)  # volumes.Teardown, last attempt of each volume
    stuck: bool = False  # a volume teardown kept failing: the pod would stay Terminating
    mounts_left: list = field(default_factory=list)  # mounts under the pod's directory after it all
    took: float = 0.0

    def removed_inside_mounts(self):
        return [p for t in self.teardowns for p in t.inside_mounts]


class Pod:
    def __init__(self, manifest, store, node, docker, events, options=None):
        self.spec = manifest
        self.name = manifest["metadata"]["name"]
        self.namespace = manifest["metadata"]["namespace"]
        self.uid = manifest["metadata"]["uid"]
        self.store = store
        self.node = node
        self.docker = docker
        self.events = events
        self.options = options or Options()
        self.pod_dir = node.pod_dir(self.uid)
        self.lock = threading.RLock()
        self.terminating = threading.Event()
        self.completed = threading.Event()
        self.phase = "Pending"
        self.sandbox = None
        self.sandbox_ip = ""
        self.sandbox_pid = 0
        self.host_ip = ""
        self.volumes = {}
        self.containers = {}
        for c in manifest["spec"].get("initContainers") or []:
            self.containers[c["name"]] = Container(c, "sidecar" if plan.is_sidecar(c) else "init")
        for c in manifest["spec"]["containers"]:
            self.containers[c["name"]] = Container(c, "regular")
        self.backoff = plan.Backoff(self.options.backoff_initial, self.options.backoff_cap)
        self.worker = None
        self.completion_teardown = None
        self.error = None

    # ------------------------------------------------------------ reporting

    def emit(self, container, reason, message=""):
        self.events.emit(self.name, container, reason, message)

    def _labels(self, container=""):
        return {self.options.run_label: "1", "podrunner.pod": self.uid, "podrunner.container": container}

    # ------------------------------------------------------------ start

    def start(self):
        """Sandbox and volumes now (errors raise), containers on the pod's worker thread."""
        self.emit("", "Scheduled", f"uid {self.uid}, node directory {self.pod_dir}")
        for line in UNFAITHFUL:
            self.emit("", "NotFaithful", line)
        for c in self.containers.values():
            if not self.docker.image_exists(c.spec["image"]):
                raise PodError(f"container {c.name}: image {c.spec['image']!r} is not in the engine "
                               "(imagePullPolicy cannot be honoured: nothing can be pulled here)")
        if any((c.spec.get("securityContext") or {}).get("privileged") for c in self.containers.values()):
            self.docker.privileged_flags(self.options.pause_image)
            if self.docker.privileged_is_emulated():
                self.emit("", "NotFaithful", "this engine cannot start --privileged containers (its bounding set "
                          "lacks a capability): privileged is every other capability, unconfined, every device "
                          "allowed, with /dev/fuse and the loop devices")
        os.makedirs(self.pod_dir, exist_ok=True)
        self._run_sandbox()
        self.volumes = volumes.setup(self.spec, self.store, self.pod_dir)
        self.emit("", "VolumesReady", ", ".join(f"{v.name} ({v.kind})" for v in self.volumes.values()))
        self.worker = threading.Thread(target=self._sync, name=f"pod-{self.name}", daemon=True)
        self.worker.start()
        return self

    def _run_sandbox(self):
        # kuberuntime_sandbox.go createPodSandbox: one network namespace for the pod.
        args = ["run", "-d", "--name", f"pr-{self.uid[:8]}-{self.name[:30]}-sandbox", "--ipc", "shareable",
                "--hostname", self.name[:63]]
        for key, value in self._labels("POD").items():
            args += ["--label", f"{key}={value}"]
        for alias in self.spec["spec"].get("hostAliases") or []:
            for hostname in alias.get("hostnames") or []:
                args += ["--add-host", f"{hostname}:{alias['ip']}"]
        for hostname, ip in self.options.hosts.items():
            args += ["--add-host", f"{hostname}:{ip}"]
        args += ["--entrypoint", "sleep", self.options.pause_image, "infinity"]
        self.sandbox = self.docker.run(args).strip()
        info = self.docker.inspect(self.sandbox)
        self.sandbox_ip = info["NetworkSettings"].get("IPAddress", "")
        self.sandbox_pid = info["State"]["Pid"]
        self.host_ip = info["NetworkSettings"].get("Gateway", "")
        self.emit("", "SandboxReady", f"pod IP {self.sandbox_ip}")

    def _sync(self):
        """SyncPod: init containers one at a time, sidecars gating on their startup,
        then the regular containers."""
        try:
            for step in plan.start_plan(self.spec):
                if self.terminating.is_set():
                    return
                if step.kind == "init":
                    if not self._run_init(self.containers[step.containers[0]["name"]]):
                        return
                elif step.kind == "sidecar":
                    c = self.containers[step.containers[0]["name"]]
                    self._start_kept(c)
                    while not c.started_once.wait(0.2):
                        if self.terminating.is_set():
                            return
                else:
                    for spec in step.containers:
                        self._start_kept(self.containers[spec["name"]])
            self.phase = "Running"
            self.emit("", "Running", "")
        except Exception as err:  # noqa: BLE001 - reported, and the pod is Failed
            self.error = err
            self.phase = "Failed"
            self.emit("", "Failed", f"{type(err).__name__}: {err}")

    def _run_init(self, c):
        """A regular init container: must exit 0; retried by the pod's restartPolicy."""
        while True:
            inst = self._create(c)
            if inst is None:
                return False
            while not inst.exited.wait(0.2):
                if self.terminating.is_set():
                    return False
            if inst.exit_code == 0:
                c.done.set()
                return True
            if self.spec["spec"]["restartPolicy"] == "Never":
                self.phase = "Failed"
                self.emit(c.name, "Failed", f"init container exited {inst.exit_code}; restartPolicy Never: the pod failed")
                self.completed.set()
                return False
            if not self._wait_backoff(c, inst):
                return False

    def _start_kept(self, c):
        """Start a container and keep it per its restart rules on a thread of its own."""
        threading.Thread(target=self._keep, args=(c,), name=f"keep-{self.name}-{c.name}", daemon=True).start()

    def _keep(self, c):
        if self._create(c) is None:
            return
        while True:
            inst = c.current
            inst.exited.wait()
            if self.terminating.is_set():
                return
            if not plan.should_restart(self.spec, c.spec, inst.exit_code):
                c.done.set()
                self._check_completion()
                return
            if not self._wait_backoff(c, inst):
                return
            if self._create(c) is None:
                return

    def _create(self, c):
        """_start_instance, retried while the runtime refuses to create the container
        (the kubelet reports CreateContainerError and tries again on a later sync).
        None when the pod started terminating."""
        while True:
            try:
                return self._start_instance(c)
            except (StartError, ManifestError) as err:
                reason = "CreateContainerError" if isinstance(err, StartError) else "CreateContainerConfigError"
                self.emit(c.name, reason, str(err))
                if self.terminating.wait(self.options.sync_retry):
                    return None

    def _wait_backoff(self, c, inst):
        """doBackOff: wait out the backoff since the container finished; False if the
        pod started terminating meanwhile."""
        key = c.name
        delay = self.backoff.delay(key, inst.finished_at)
        c.pending_restart = True
        if delay > 0:
            self.emit(c.name, "BackOff", f"back-off {delay:.1f}s restarting failed container")
            if self.terminating.wait(delay):
                c.pending_restart = False
                return False
        self.backoff.next(key, inst.finished_at)
        return not self.terminating.is_set()

    def _start_instance(self, c):
        """CreateContainer + StartContainer, then postStart, probes and the exit watcher."""
        with self.lock:
            if self.terminating.is_set():
                c.pending_restart = False
                return None
            restart = len(c.instances)
            env = container_env(self.spec, c.spec, self.store, self.sandbox_ip, self._host_ip())
            command, args = command_and_args(c.spec, env)
            mounts = self._mounts(c, env)
            privileged = []
            if (c.spec.get("securityContext") or {}).get("privileged"):
                privileged = self.docker.privileged_flags(self.options.pause_image)
            name = f"pr-{self.uid[:8]}-{self.name[:30]}-{c.name}-{restart}"
            run, cli_env = containers.run_args(self.spec, c.spec, name, self.sandbox, env, mounts, privileged,
                                               self._labels(c.name), command, args)
            try:
                docker_id = self.docker.run(run, env=cli_env).strip()
            except DockerError as err:
                self.docker.remove(name)
                raise StartError(str(err).replace("\n\nRun 'docker run --help' for more information", "")) from err
            inst = Instance(c, restart, docker_id)
            c.instances.append(inst)
            c.pending_restart = False
        self.emit(c.name, "Started", f"restart {restart}, container {docker_id[:12]}")
        threading.Thread(target=self._watch, args=(inst,), daemon=True).start()
        post_start = ((c.spec.get("lifecycle") or {}).get("postStart") or {})
        if post_start and not self._hook(inst, post_start, "PostStart", None):
            self._kill_instance(inst, self._grace(None), "FailedPostStartHook")
            return inst
        startup = plan.probe(c.spec.get("startupProbe"))
        if startup is None:
            self._mark_started(inst)
        else:
            threading.Thread(target=self._probe_loop, args=(inst, "startup", startup), daemon=True).start()
        for kind in ("liveness", "readiness"):
            spec = plan.probe(c.spec.get(f"{kind}Probe"))
            if spec is not None:
                threading.Thread(target=self._probe_loop, args=(inst, kind, spec), daemon=True).start()
            elif kind == "readiness":
                inst.ready = True
        return inst

    def _mark_started(self, inst):
        inst.started.set()
        inst.container.started_once.set()

    def _host_ip(self):
        return self.host_ip

    def _mounts(self, c, env):
        """makeMounts (pkg/kubelet/kubelet_pods.go): each volumeMount as a bind of the
        volume's node directory (or its subPath bind), with its propagation."""
        privileged = bool((c.spec.get("securityContext") or {}).get("privileged"))
        out = []
        for index, mount in enumerate(c.spec.get("volumeMounts") or []):
            volume = self.volumes.get(mount["name"])
            if volume is None:
                raise ManifestError(f"container {c.name}: volumeMount {mount['name']!r} names no volume of the pod")
            source = volume.path
            if mount.get("subPath") or mount.get("subPathExpr"):
                source = volumes.subpath_source(self.pod_dir, volume, c.name, index, mount, env)
            propagation = plan.propagation(mount, privileged)
            out.append(plan.docker_mount(source, mount["mountPath"], propagation,
                                         bool(mount.get("readOnly")) or volume.read_only))
        return out

    def _watch(self, inst):
        code = self.docker.wait(inst.id)
        info = self.docker.inspect(inst.id) or {}
        state = info.get("State", {})
        inst.exit_code = state.get("ExitCode", code)
        inst.oom_killed = bool(state.get("OOMKilled"))
        inst.finished_at = time.monotonic()
        if self.options.log_dir:
            os.makedirs(self.options.log_dir, exist_ok=True)
            path = os.path.join(self.options.log_dir, f"{self.name}.{inst.container.name}.{inst.restart}.log")
            with open(path, "wb") as f:
                f.write(self.docker.logs(inst.id))
        reason = "OOMKilled" if inst.oom_killed else ("Completed" if inst.exit_code == 0 else "Error")
        why = f", {inst.killed_by}" if inst.killed_by else ""
        inst.exited.set()
        self.emit(inst.container.name, "Terminated", f"{reason}, exit code {inst.exit_code}, restart {inst.restart}{why}")

    # ------------------------------------------------------------ probes and hooks

    def _run_handler(self, inst, handler, timeout):
        """A probe or hook handler: (ok, detail)."""
        if "exec" in handler:
            code, out, err = self.docker.exec(inst.id, [str(a) for a in handler["exec"]["command"]], timeout=timeout)
            if code is None:
                return False, f"timed out after {timeout}s"
            return code == 0, (out + err).decode(errors="replace").strip()[-200:]
        if "httpGet" in handler or "tcpSocket" in handler:
            action = handler.get("httpGet") or handler.get("tcpSocket")
            port = self._port(inst.container, action["port"])
            host = action.get("host") or self.sandbox_ip
            if "httpGet" in handler:
                headers = [f"{h['name']}:{h['value']}" for h in action.get("httpHeaders") or []]
                argv = ["http", host, str(port), action.get("path", "/"), str(timeout), action.get("scheme", "HTTP"),
                        *headers]
            else:
                argv = ["tcp", host, str(port), str(timeout)]
            proc = subprocess.run(["nsenter", "-t", str(self.sandbox_pid), "-n", sys.executable, "-m",
                                   "podrunner.netprobe", *argv], capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=PACKAGE_PARENT), timeout=timeout + 10)
            return proc.returncode == 0, proc.stderr.strip()[-200:]
        if "sleep" in handler:
            time.sleep(min(float(handler["sleep"]["seconds"]), timeout))
            return True, ""
        return False, f"unsupported handler {sorted(handler)}"

    @staticmethod
    def _port(container, port):
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in container.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ManifestError(f"container {container.name}: no port named {port!r}")

    def _hook(self, inst, handler, what, timeout):
        started = time.monotonic()
        ok, detail = self._run_handler(inst, handler, timeout or 3600)
        took = time.monotonic() - started
        self.emit(inst.container.name, what, f"{'done' if ok else 'FAILED'} in {took:.1f}s {detail}".rstrip())
        return ok

    def _probe_loop(self, inst, kind, probe):
        """pkg/kubelet/prober/worker.go: run at once, then every period; startup
        gates liveness and readiness; thresholds count consecutive results."""
        c = inst.container
        if kind != "startup":
            while not inst.started.wait(0.2):
                if inst.exited.is_set() or self.terminating.is_set():
                    return
        successes = failures = 0
        while not inst.exited.is_set() and not self.terminating.is_set():
            if time.monotonic() - inst.started_at >= probe.initial_delay:
                ok, detail = self._run_handler(inst, {probe.kind: probe.action}, probe.timeout)
                if inst.exited.is_set() or self.terminating.is_set():
                    return
                if ok:
                    successes, failures = successes + 1, 0
                else:
                    successes, failures = 0, failures + 1
                    self.emit(c.name, "Unhealthy", f"{kind} probe failed ({failures}/{probe.failure_threshold}): {detail}")
                if kind == "startup" and successes >= probe.success_threshold:
                    self.emit(c.name, "StartupProbeSucceeded", "")
                    self._mark_started(inst)
                    return
                if kind == "readiness":
                    ready = successes >= probe.success_threshold or (inst.ready and failures < probe.failure_threshold)
                    if ready != inst.ready:
                        inst.ready = ready
                        self.emit(c.name, "Ready" if ready else "NotReady", "")
                if kind in ("startup", "liveness") and failures >= probe.failure_threshold:
                    grace = self._grace(c.spec.get(f"{kind}Probe", {}).get("terminationGracePeriodSeconds"))
                    self._kill_instance(inst, grace, f"{kind} probe failed, will be restarted")
                    return
            if inst.exited.wait(probe.period):
                return

    def _grace(self, override):
        return int(override) if override is not None else plan.grace_period(self.spec)

    def _kill_instance(self, inst, grace, why):
        """killContainer without ordering (a probe's or a hook's kill): preStop, then StopContainer."""
        inst.killed_by = why
        self.emit(inst.container.name, "Killing", f"{why}; grace {grace}s")
        prestop = (inst.container.spec.get("lifecycle") or {}).get("preStop")
        took = 0
        if prestop and grace > 0:
            started = time.monotonic()
            self._hook(inst, prestop, "PreStop", grace)
            took = time.monotonic() - started
        self.docker.stop(inst.id, plan.stop_timeout(grace, took, 0))

    # ------------------------------------------------------------ completion (Jobs)

    def _check_completion(self):
        """A pod whose regular containers are all done is terminal: Succeeded when
        they all exited 0. Its sidecars are then terminated (termination order), and
        its volumes torn down (SyncTerminatedPod waits for the unmount)."""
        with self.lock:
            regular = [c for c in self.containers.values() if c.kind == "regular"]
            if self.terminating.is_set() or not all(c.done.is_set() for c in regular):
                return
            self.phase = "Succeeded" if all(c.current.exit_code == 0 for c in regular) else "Failed"
            self.terminating.set()
        self.emit("", self.phase, "every regular container has exited; stopping the sidecars")
        report = DeleteReport(grace=plan.grace_period(self.spec), force=False)
        self._kill_all(report, None, False)
        self._stop_sandbox()
        self.completion_teardown = report
        self._teardown_volumes(report)
        self.completed.set()

    # ------------------------------------------------------------ deletion

    def delete(self, grace=None, force=False):
        """Delete the pod (`kubectl delete pod`, or with --force --grace-period=0):
        kill the containers in the kubelet's order, stop the sandbox, tear the
        volumes down, remove the pod's directory if nothing is left mounted."""
        started = time.monotonic()
        deletion_grace = 0 if force else grace
        report = DeleteReport(grace=plan.grace_period(self.spec, deletion_grace), force=force)
        self.emit("", "Killing", "force delete: every container gets SIGTERM now, SIGKILL after "
                                 f"{plan.FORCE_GRACE}s" if force else f"delete with grace {report.grace}s")
        with self.lock:
            already = self.terminating.is_set()
            self.terminating.set()
        if already and self.completion_teardown is not None:
            report.teardowns = self.completion_teardown.teardowns
            report.stuck = self.completion_teardown.stuck
        else:
            self._kill_all(report, deletion_grace, force)
            self._stop_sandbox()
            self._teardown_volumes(report)
        self._housekeeping(report)
        report.took = time.monotonic() - started
        if report.stuck:
            self.emit("", "StuckTerminating", "a volume teardown keeps failing: "
                      + "; ".join(f"{t.volume}: {t.error}" for t in report.teardowns if t.error))
        else:
            self.emit("", "Deleted", f"in {report.took:.1f}s")
        return report

    def _kill_all(self, report, deletion_grace, force):
        """killContainersWithSyncResult: every running container in its own thread."""
        with self.lock:
            running = [c.name for c in self.containers.values() if c.running()]
        kills = plan.termination_plan(self.spec, running, deletion_grace, force)
        terminated = {name: threading.Event() for name in self.containers}
        for name, event in terminated.items():
            if name not in running:
                event.set()
        threads = [threading.Thread(target=self._kill_ordered, args=(k, terminated, report), daemon=True)
                   for k in kills]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _kill_ordered(self, kill, terminated, report):
        c = self.containers[kill.name]
        inst = c.current
        grace = kill.grace
        start = time.monotonic()
        prestop_took = 0.0
        if kill.prestop:
            self._hook(inst, c.spec["lifecycle"]["preStop"], "PreStop", grace)
            prestop_took = time.monotonic() - start
            grace -= int(prestop_took)
        waited = 0.0
        if kill.waits_for and grace > 0:
            # waitForTurn: each prerequisite in turn, until the remaining grace runs out.
            wait_start = time.monotonic()
            deadline = wait_start + grace
            for name in kill.waits_for:
                if not terminated[name].wait(max(0.0, deadline - time.monotonic())):
                    break
            waited = time.monotonic() - wait_start
        timeout = plan.stop_timeout(grace, 0, waited)
        sigterm_at = time.monotonic()
        self.emit(c.name, "Killing", f"SIGTERM now, SIGKILL in {timeout}s (waited {waited:.1f}s for its turn)")
        inst.killed_by = "deleted" if not self.phase == "Succeeded" else "pod completed"
        self.docker.stop(inst.id, timeout)
        inst.exited.wait(30)
        terminated[kill.name].set()
        report.stops[c.name] = {"sigterm_at": sigterm_at - start, "timeout": timeout,
                                "exited_at": (inst.finished_at or time.monotonic()) - start,
                                "exit_code": inst.exit_code}

    def _stop_sandbox(self):
        if self.sandbox:
            self.docker.remove(self.sandbox)
            self.emit("", "SandboxStopped", "")

    def _teardown_volumes(self, report):
        """The volume manager's reconciler: every volume's TearDown, retried until
        it succeeds or the retry window ends (then the pod is stuck Terminating)."""
        pending = list(self.volumes.values())
        deadline = time.monotonic() + self.options.teardown_retry
        results = {}
        while pending:
            still = []
            for volume in pending:
                result = volumes.teardown(volume, self.pod_dir)
                previous = results.get(volume.name)
                if previous is not None:
                    result.removed = previous.removed + result.removed
                    result.inside_mounts = previous.inside_mounts + result.inside_mounts
                results[volume.name] = result
                if result.error:
                    still.append(volume)
                else:
                    self.emit("", "VolumeTornDown", f"{volume.name} ({volume.kind}): {', '.join(result.steps)}, "
                              f"{len(result.removed)} entries removed")
                if result.inside_mounts:
                    self.emit("", "RemovedInsideMount", f"{volume.name}: the recursive delete removed "
                              f"{len(result.inside_mounts)} entries from a filesystem mounted on it: "
                              + ", ".join(result.inside_mounts[:10]))
            pending = still
            if pending and time.monotonic() >= deadline:
                break
            if pending:
                time.sleep(0.5)
        for volume in pending:
            self.emit("", "FailedUnmount", f"{volume.name}: {results[volume.name].error}")
        report.teardowns = list(results.values())
        report.stuck = bool(pending)

    def _housekeeping(self, report):
        """cleanupOrphanedPodDirs (pkg/kubelet/kubelet_volumes.go): the pod's
        directory goes only when nothing is mounted in it any more."""
        report.mounts_left = [f"{m.target} {m.fstype}" for m in mounts_under(read_mountinfo(), self.pod_dir)]
        ids = [i.id for c in self.containers.values() for i in c.instances]
        self.docker.remove(*ids)
        if report.stuck or report.mounts_left:
            return
        if os.path.isdir(self.pod_dir):
            shutil.rmtree(self.pod_dir, ignore_errors=True)

    # ------------------------------------------------------------ for tests

    def resync(self):
        """What the kubelet's periodic sync does for Secret, ConfigMap, downwardAPI and
        projected volumes: write the current payload through the atomic writer (a
        changed payload swaps `..data`). Returns the names of the volumes that changed."""
        from . import atomic_writer  # noqa: PLC0415 - only this path needs it

        changed = []
        for volume in self.volumes.values():
            if volume.kind in ("secret", "configMap", "downwardAPI", "projected"):
                if atomic_writer.write(volume.path, volumes.payload(self.spec, self.store, volume)):
                    changed.append(volume.name)
        if changed:
            self.emit("", "VolumesResynced", ", ".join(changed))
        return changed

    def container(self, name):
        return self.containers[name]

    def volume_path(self, name):
        return self.volumes[name].path

    def wait_ready(self, timeout):
        """Every container started, the regular ones ready (the Ready condition)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.phase == "Failed":
                raise PodError(f"pod {self.name} failed: {self.error}")
            regular = [c for c in self.containers.values() if c.kind == "regular"]
            sidecars = [c for c in self.containers.values() if c.kind == "sidecar"]
            if all(c.running() and c.current.ready and c.current.started.is_set() for c in regular) \
                    and all(c.running() and c.current.started.is_set() for c in sidecars):
                return True
            time.sleep(0.2)
        return False

    def wait_completed(self, timeout):
        return self.completed.wait(timeout)

    def exec(self, container, command, timeout=60):
        inst = self.containers[container].current
        if inst is None or inst.exited.is_set():
            raise PodError(f"container {container} is not running")
        return self.docker.exec(inst.id, command, timeout=timeout)

    def sh(self, container, script, timeout=60):
        """`sh -c SCRIPT` in the container; its stdout, or PodError with its stderr."""
        code, out, err = self.exec(container, ["sh", "-c", script], timeout)
        if code != 0:
            raise PodError(f"{container}: `{script}` exited {code}: {(err or out).decode(errors='replace').strip()}")
        return out.decode(errors="replace")

    def kill(self, container, signal="KILL"):
        inst = self.containers[container].current
        self.emit(container, "Signal", f"{signal} sent by the test")
        self.docker.kill(inst.id, signal)

    def restarts(self, container):
        return max(0, len(self.containers[container].instances) - 1)
