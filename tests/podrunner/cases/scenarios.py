"""The end-to-end cases, each starting from a manifest of tests/e2e/kind/manifests
as a user would apply it, injected the way a cluster would inject it (the
webhook over TLS, `sidemount inject`, or the kustomize component), run by the pod
runner, and checked where a user would check: in the app, in the bucket, on the
block device, on the node after the deletion."""

import json
import os
import re
import subprocess
import tempfile
import time

from ..node import mounts_under, read_mountinfo, unmount_all_under
from ..objects import load_documents
from .harness import MANIFESTS, SECRET_KEY, fail, wait_for

BUCKET = "e2e-bucket"  # the kind suite's bucket: rclone and s3fs volumes use prefixes of it


# ---------------------------------------------------------------- helpers

def status(pod):
    """The supervisor's /status, read over its loopback listener from inside the pod."""
    code, out, err = pod.exec("sidemount", ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9810; "
                                            "printf 'GET /status HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3; cat <&3"],
                              timeout=10)
    if code != 0:
        fail(f"cannot read /status: {err.decode(errors='replace')}")
    return json.loads(out.decode().split("\r\n\r\n", 1)[1])


def node_mounts(pod):
    return [f"{m.target} {m.fstype}" for m in mounts_under(read_mountinfo(), pod.pod_dir)]


def ready(pod, within=180):
    if not pod.wait_ready(within):
        fail(f"{pod.name} not ready in {within}s (phase {pod.phase}, error {pod.error})")


def app_reads(pod, path, expected):
    return pod.sh("app", f"cat {path}").strip() == expected


def check_clean_delete(scenario, pod, report, within=45):
    if report.stuck:
        fail(f"the pod is stuck Terminating: {[(t.volume, t.error) for t in report.teardowns if t.error]}")
    if report.took >= within:
        fail(f"deleting the pod took {report.took:.0f}s")
    if report.mounts_left:
        fail(f"mounts left on the node: {report.mounts_left}")
    if report.removed_inside_mounts():
        fail(f"the kubelet's recursive delete removed files from a mounted filesystem: {report.removed_inside_mounts()}")
    if os.path.exists(pod.pod_dir):
        fail("the pod's directory was not removed")
    scenario.note(f"deleted in {report.took:.1f}s, nothing left on the node, nothing removed from a backend")


# ---------------------------------------------------------------- the kind suite's cases

def s3fs_through_the_webhook(scenario):
    """pod-s3fs.yaml through `sidemount webhook` over TLS: s3_read_write,
    app_starts_after_mount, repair_while_app_runs, delete_leaves_no_mount (one pod,
    as in the kind suite)."""
    world = scenario.world
    doc = load_documents(world.manifest("pod-s3fs.yaml"))[0]
    pod = None
    with scenario.case("s3_read_write"):
        allowed, patched, message = world.webhook.admit(doc)
        if not allowed:
            fail(f"the webhook refused the pod: {message}")
        if "sidemount.io/injected" not in patched["metadata"].get("annotations", {}):
            fail("the pod was not injected")
        pod = scenario.run_pod(patched)
        ready(pod)
        pod.sh("app", 'echo "written by the app" > /data/from-app.txt')
        if world.s3.get(BUCKET, "from-app.txt") != b"written by the app\n":
            fail(f"the bucket does not hold the app's bytes: {world.s3.get(BUCKET, 'from-app.txt')!r}")
        world.s3.put(BUCKET, "from-bucket.txt", b"put in the bucket\n")
        if not wait_for(30, lambda: app_reads(pod, "/data/from-bucket.txt", "put in the bucket")):
            fail("the app does not read an object put in the bucket")
        # The credentials came from the Secret volume (the atomic writer's layout):
        # they must be in no log and in no process's argv.
        secret = SECRET_KEY
        log = pod.docker.logs(pod.container("sidemount").current.id).decode(errors="replace")
        if not log.strip():
            fail("the sidecar logged nothing")
        if secret in log:
            fail("the secret key is in the sidecar's log")
        argv = pod.sh("sidemount", 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " <"$f" 2>/dev/null; echo; done')
        if "sidemount" not in argv or "s3fs" not in argv:
            fail(f"could not read the sidecar's argv: {argv}")
        if secret in argv:
            fail("the secret key is in a process's argv")
    with scenario.case("app_starts_after_mount"):
        if pod is None:
            fail("no pod (s3_read_write could not start it)")
        at_start = pod.sh("app", "cat /tmp/fstype-at-start").strip()
        if at_start != "fuse.s3fs":
            fail(f"when the app started, /data was {at_start!r}, not the s3fs mount")
        first = pod.spec["spec"]["initContainers"][0]
        if (first["name"], first.get("restartPolicy")) != ("sidemount", "Always"):
            fail("the sidecar is not the first init container with restartPolicy: Always")
        started = scenario.events.find(pod.name, "sidemount", "StartupProbeSucceeded")
        app_started = scenario.events.find(pod.name, "app", "Started")
        if not started or not app_started or app_started[0].at < started[0].at:
            fail("the app started before the sidecar's startupProbe passed")
        if pod.restarts("app") != 0:
            fail("the app restarted")
    with scenario.case("repair_while_app_runs"):
        if pod is None:
            fail("no pod")
        before = status(pod)["volumes"][0]["pid"]
        if not isinstance(before, int):
            fail(f"no daemon pid in /status: {status(pod)}")
        pod.sh("sidemount", f"kill -9 {before}")
        scenario.note(f"killed s3fs (pid {before})")
        if not wait_for(60, lambda: (lambda v: v["state"] == "ready" and v["repairs"] >= 1)(status(pod)["volumes"][0])):
            fail(f"not repaired in 60s: {status(pod)}")
        if status(pod)["volumes"][0]["pid"] == before:
            fail("the same daemon after the repair")
        if not wait_for(30, lambda: pod.sh("app", 'echo "after the repair" > /data/after-repair.txt') is not None):
            fail("the app cannot write /data after the repair")
        if world.s3.get(BUCKET, "after-repair.txt") != b"after the repair\n":
            fail("the bucket does not hold the write made after the repair")
        if pod.restarts("app") != 0:
            fail("the app was restarted: the repair must reach the running app")
    with scenario.case("delete_leaves_no_mount"):
        if pod is None:
            fail("no pod")
        if not node_mounts(pod):
            fail("no mount under the pod's directory on the node before the deletion")
        report = pod.delete()
        check_clean_delete(scenario, pod, report)


def invalid_annotation_refused(scenario):
    """pod-invalid.yaml: the webhook refuses it at admission, naming the field."""
    with scenario.case("invalid_annotation_refused"):
        doc = load_documents(scenario.world.manifest("pod-invalid.yaml"))[0]
        allowed, _, message = scenario.world.webhook.admit(doc)
        if allowed:
            fail("the webhook admitted the pod")
        if not re.search(r"sidemount\.io/volumes:.*volumes\[0\]\.filesystem", message):
            fail(f"the refusal does not name the annotation and the field: {message}")
        scenario.note(message)


def legacy_mode(scenario):
    """pod-legacy.yaml through `sidemount inject`: the sidecar as a classic container."""
    world = scenario.world
    with scenario.case("legacy_mode"):
        docs = world.inject(world.manifest("pod-legacy.yaml"))
        pod = scenario.run_pod(docs[0])
        if pod.spec["spec"]["containers"][0]["name"] != "sidemount":
            fail("legacy mode: the sidecar is not the first container")
        ready(pod)
        if not wait_for(60, lambda: pod.sh("app", 'grep -q " /data fuse" /proc/mounts') is not None):
            fail("the app never saw the mount")
        pod.sh("app", 'echo "legacy" > /data/legacy.txt')
        if not wait_for(60, lambda: world.s3.get(BUCKET, "legacy/legacy.txt") == b"legacy\n"):
            fail("the bucket does not hold legacy/legacy.txt")
        check_clean_delete(scenario, pod, pod.delete())


def job_completes(scenario):
    """job.yaml through `sidemount inject`: the Job's pod completes once its writer
    exits, the sidecar does not keep it alive, and the bytes are in the bucket."""
    world = scenario.world
    with scenario.case("job_completes"):
        docs = world.inject(world.manifest("job.yaml"))
        if docs[0]["kind"] != "Job":
            fail(f"sidemount inject returned a {docs[0]['kind']}")
        pod = scenario.run_pod(docs[0])
        if not pod.wait_completed(240):
            fail(f"the Job's pod did not complete in 240s (phase {pod.phase})")
        if pod.phase != "Succeeded":
            fail(f"the Job's pod ended {pod.phase}")
        stop = pod.completion_teardown.stops.get("sidemount") or fail("the sidecar was not stopped")
        scenario.note(f"the sidecar got SIGTERM {stop['sigterm_at']:.1f}s after the writer exited and exited "
                      f"{stop['exit_code']} {stop['exited_at'] - stop['sigterm_at']:.1f}s later")
        result = world.s3.get(BUCKET, "job/result.txt")
        if result != b"written by the job\n":
            fail(f"the bucket does not hold the Job's result (job/result.txt: {result!r})")
        check_clean_delete(scenario, pod, pod.delete())


def kustomize_component(scenario):
    """manifests/component rendered with the sidecar component (sidemount inject as
    kustomize's exec plugin): the Deployment's pod, no webhook."""
    world = scenario.world
    with scenario.case("kustomize_component"):
        docs = world.kustomize(os.path.join(MANIFESTS, "component"))
        deployment = next((d for d in docs if d["kind"] == "Deployment"), None)
        if deployment is None or "Bidirectional" not in json.dumps(deployment):
            fail("the component did not add the sidecar")
        # The component injects the release's image name, which the kind suite loads
        # under that name too: tag the image under test the same way.
        sidecar = next(c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "sidemount")
        world.tag(sidecar["image"])
        pod = scenario.run_pod(deployment)
        ready(pod)
        if pod.sh("app", 'grep " /data fuse" /proc/mounts || true').strip() == "":
            fail("/data is not a FUSE mount in the app")
        pod.sh("app", 'echo "via the component" > /data/component.txt')
        if not wait_for(60, lambda: world.s3.get(BUCKET, "component/component.txt") == b"via the component\n"):
            fail("the bucket does not hold component/component.txt")
        check_clean_delete(scenario, pod, pod.delete())


def kustomize_plain_component(scenario):
    """manifests/component-plain built as `kubectl apply -k` builds it (no flag, no
    plugin): kustomize/components/sidecar-plain's sidecar reads the pod's annotation
    through the downward API and mounts under one shared emptyDir; the app runs as
    1000 and uses the volume through a subPath."""
    world = scenario.world
    with scenario.case("kustomize_plain_component"):
        docs = world.kustomize(os.path.join(MANIFESTS, "component-plain"), plugins=False)
        deployment = next((d for d in docs if d["kind"] == "Deployment"), None)
        if deployment is None or "Bidirectional" not in json.dumps(deployment):
            fail("the plain component did not add the sidecar")
        sidecar = deployment["spec"]["template"]["spec"]["initContainers"][0]
        if sidecar["name"] != "sidemount":
            fail(f"the first init container is {sidecar['name']}, not the sidecar")
        world.tag(sidecar["image"])
        pod = scenario.run_pod(deployment)
        ready(pod)
        mounts = pod.sh("app", "cat /proc/mounts")
        if " /data fuse" not in mounts or " /sidemount/data fuse" not in mounts:
            fail(f"the volume is not a FUSE mount at /data and /sidemount/data in the app: {mounts}")
        if pod.sh("app", "id -u").strip() != "1000":
            fail("the app does not run as 1000")
        pod.sh("app", 'echo "via the plain component, as 1000" > /data/plain.txt')
        if not wait_for(60, lambda: world.s3.get(BUCKET, "plain/plain.txt") == b"via the plain component, as 1000\n"):
            fail("the bucket does not hold plain/plain.txt")
        # The subPath is the volume's own mountpoint (its directory in the shared
        # emptyDir), so a repair, bound on top of it, reaches the app's bind.
        before = status(pod)["volumes"][0]["pid"]
        pod.sh("sidemount", f"kill -9 {before}")
        if not wait_for(60, lambda: (lambda v: v["state"] == "ready" and v["repairs"] >= 1)(status(pod)["volumes"][0])):
            fail(f"not repaired in 60s: {status(pod)}")
        if not wait_for(30, lambda: pod.sh("app", 'echo "after the repair" > /data/after.txt') is not None):
            fail("the app cannot write /data (its subPath) after the repair")
        if not wait_for(60, lambda: world.s3.get(BUCKET, "plain/after.txt") == b"after the repair\n"):
            fail("the bucket does not hold the write made after the repair")
        scenario.note(f"rclone (pid {before}) killed and repaired: the app writes through its subPath again")
        check_clean_delete(scenario, pod, pod.delete())


# ---------------------------------------------------------------- data safety at pod deletion

ACK = re.compile(r"^ACK (f-(\d+)|held\.log line (\d+))$")


def acknowledged(pod):
    """The writes the app saw succeed (fsync returned), from every run's output."""
    files, lines = {}, set()
    for name in sorted(os.listdir(pod.options.log_dir)):
        if not name.startswith(f"{pod.name}.app."):
            continue
        with open(os.path.join(pod.options.log_dir, name), errors="replace") as f:
            for line in f:
                match = ACK.match(line.strip())
                if match and match.group(2):
                    files[f"f-{match.group(2)}"] = f"file {match.group(2)}\n".encode()
                elif match:
                    lines.add(int(match.group(3)))
    return files, lines


def lost_writes(files, lines, read):
    """Which acknowledged writes `read(name) -> bytes or None` does not give back."""
    lost = [name for name, content in sorted(files.items()) if read(name) != content]
    held = read("held.log") or b""
    present = set(held.decode(errors="replace").splitlines())
    lost += [f"held.log line {n}" for n in sorted(lines) if f"line {n}" not in present]
    return lost


def read_device(loop):
    """Mount the device in a private directory (replaying its journal) and read it."""
    target = tempfile.mkdtemp(prefix="podrunner-read.")
    proc = subprocess.run(["mount", "-t", "ext4", loop, target], capture_output=True, text=True)
    if proc.returncode != 0:
        os.rmdir(target)
        fail(f"cannot mount {loop} to read it back: {proc.stderr.strip()}")
    contents = {}
    try:
        for name in os.listdir(target):
            path = os.path.join(target, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    contents[name] = f.read()
    finally:
        subprocess.run(["umount", target], check=True)
        os.rmdir(target)
    return contents


def safety_pod(scenario, kind, bucket=None, loop=None, grace=10, linger=0, **options):
    world = scenario.world
    text = world.manifest(f"safety-{kind}.yaml")
    if bucket:
        text = text.replace("safety-bucket", bucket)
    if loop:
        text = text.replace("/dev/sidemount-e2e-disk", loop)
    docs = world.inject(text)
    doc = docs[0]
    doc["spec"]["terminationGracePeriodSeconds"] = grace
    app = next(c for c in doc["spec"]["containers"] if c["name"] == "app")
    next(e for e in app["env"] if e["name"] == "LINGER")["value"] = str(linger)
    pod = scenario.run_pod(doc, **options)
    ready(pod)
    return pod


def wait_acks(pod, count, within=30):
    """Until the app has acknowledged `count` new files."""
    if not wait_for(within, lambda: len(live_acks(pod)) >= count):
        fail(f"the app acknowledged fewer than {count} files in {within}s")


def live_acks(pod):
    """The files the running app acknowledged so far, in order."""
    inst = pod.container("app").current
    out = pod.docker.logs(inst.id).decode(errors="replace")
    return [line for line in out.splitlines() if line.startswith("ACK f-")]


def wait_for_restart(scenario, pod, since, within=40):
    """True when the killed sidecar was created again and passed its startupProbe."""
    return scenario.events.wait(within, pod.name, "sidemount", "StartupProbeSucceeded", after=since) is not None


def last_event(scenario, pod, reason):
    found = scenario.events.find(pod.name, "sidemount", reason)
    return found[-1].message if found else "(no event)"


def check_no_loss(scenario, pod, report, kind, bucket=None, loop=None):
    """Every acknowledged write is in the backend, and the kubelet's recursive delete
    removed nothing from a mounted filesystem."""
    files, lines = acknowledged(pod)
    stops = ", ".join(f"{name}: SIGTERM +{stop['sigterm_at']:.1f}s, timeout {stop['timeout']}s, exit {stop['exit_code']}"
                      for name, stop in report.stops.items())
    scenario.note(f"{len(files)} files and {len(lines)} appends acknowledged; deleted in {report.took:.1f}s; {stops}")
    if report.stuck:
        scenario.note("stuck Terminating: " + "; ".join(f"{t.volume}: {t.error}" for t in report.teardowns if t.error))
    if report.mounts_left:
        scenario.note(f"mounts left on the node: {report.mounts_left}")
    removed = report.removed_inside_mounts()
    if removed:
        scenario.note(f"the recursive delete removed {len(removed)} entries from a mounted filesystem: {removed[:8]}")
    if len(files) < 3:
        fail(f"only {len(files)} writes were acknowledged: the app did not get to work")
    # What a user would do next: the node's leftovers are cleaned up (by hand, or by
    # a reboot), then the data is read back from the backend itself.
    unmount_all_under(pod.pod_dir)
    if kind == "fuse":
        world = scenario.world
        lost = lost_writes(files, lines, lambda key: world.s3.get(bucket, key))
    else:
        contents = read_device(loop)
        lost = lost_writes(files, lines, contents.get)
    if lost or removed:
        fail(f"data lost: {len(lost)} acknowledged writes missing from the {kind} backend ({lost[:8]}); "
             f"{len(removed)} entries removed from a mounted filesystem by the kubelet's recursive delete")


def backend(scenario, kind, name):
    if kind == "fuse":
        bucket = f"safety-{name.replace('_', '-')}"
        scenario.world.s3.make_bucket(bucket)
        return {"bucket": bucket}
    return {"loop": scenario.world.loop_device()}


def safety(name, kind):
    """A scenario function for one (order, volume kind) pair."""

    def clean_delete(scenario):
        with scenario.case(f"clean_delete_{kind}"):
            where = backend(scenario, kind, f"clean-{kind}")
            pod = safety_pod(scenario, kind, **where)
            if kind == "block":
                if not any(m.endswith(" ext4") for m in node_mounts(pod)):
                    fail(f"the node does not see the ext4 mount: {node_mounts(pod)}")
                if pod.sh("app", "awk '$2 == \"/data\" {print $3}' /proc/mounts").split()[-1:] != ["ext4"]:
                    fail("the app's /data is not the ext4 filesystem")
            wait_acks(pod, 6)
            report = pod.delete()
            check_no_loss(scenario, pod, report, kind, **where)
            check_clean_delete(scenario, pod, report)

    def grace_almost_used(scenario):
        with scenario.case(f"grace_almost_used_{kind}"):
            where = backend(scenario, kind, f"grace-{kind}")
            # The app keeps writing for 8.5 of its 10 seconds: the sidecar's turn comes
            # with at most 10 - 8 = 2 whole seconds left (the kubelet truncates the wait),
            # so it gets the kubelet's 2 s minimum however late the app's exit lands.
            pod = safety_pod(scenario, kind, grace=10, linger=8.5, **where)
            wait_acks(pod, 4)
            report = pod.delete()
            stop = report.stops.get("sidemount") or fail("the sidecar was not stopped")
            if stop["timeout"] != 2 or stop["sigterm_at"] < 8.5:
                fail(f"the sidecar got SIGTERM at +{stop['sigterm_at']:.1f}s with {stop['timeout']}s, "
                     "not after the app with the 2 s minimum")
            check_no_loss(scenario, pod, report, kind, **where)

    def oom_then_delete(scenario):
        with scenario.case(f"oom_then_delete_{kind}"):
            where = backend(scenario, kind, f"oom-{kind}")
            # A long backoff: the kubelet restarts the first exit at once, the next
            # one only after the backoff; the pod is deleted inside it.
            pod = safety_pod(scenario, kind, backoff_initial=60, **where)
            wait_acks(pod, 4)
            since = time.monotonic()
            pod.kill("sidemount", "KILL")
            if not scenario.events.wait(20, pod.name, "sidemount", "Terminated", after=since):
                fail("the sidecar did not die of SIGKILL")
            came_back = wait_for_restart(scenario, pod, since)
            if came_back:
                wait_acks(pod, len(live_acks(pod)) + 2)
                since = time.monotonic()
                pod.kill("sidemount", "KILL")
                if not scenario.events.wait(20, pod.name, "sidemount", "Terminated", after=since):
                    fail("the sidecar did not die of its second SIGKILL")
                if not scenario.events.wait(10, pod.name, "sidemount", "BackOff", after=since):
                    fail("the sidecar is not in its restart backoff")
            else:
                scenario.note("the sidecar could not be created again: " + last_event(scenario, pod, "CreateContainerError"))
            report = pod.delete()
            check_no_loss(scenario, pod, report, kind, **where)

    def force_delete(scenario):
        with scenario.case(f"force_delete_{kind}"):
            where = backend(scenario, kind, f"force-{kind}")
            pod = safety_pod(scenario, kind, **where)
            wait_acks(pod, 6)
            report = pod.delete(force=True)
            check_no_loss(scenario, pod, report, kind, **where)

    def sidecar_restart(scenario):
        with scenario.case(f"sidecar_restart_{kind}"):
            where = backend(scenario, kind, f"restart-{kind}")
            pod = safety_pod(scenario, kind, **where)
            wait_acks(pod, 4)
            since = time.monotonic()
            pod.kill("sidemount", "KILL")
            came_back = wait_for_restart(scenario, pod, since)
            before = len(live_acks(pod))
            # The app keeps its held file open across the restart, and must be able to
            # write through the volume again.
            writes_again = wait_for(20, lambda: len(live_acks(pod)) >= before + 4)
            if not came_back:
                scenario.note("the sidecar could not be created again: " + last_event(scenario, pod, "CreateContainerError"))
            report = pod.delete()
            check_no_loss(scenario, pod, report, kind, **where)
            if not came_back:
                fail("the sidecar never came back after its SIGKILL (the runtime could not create it)")
            if not writes_again:
                fail("the app's writes do not succeed after the sidecar's restart")

    functions = {"clean_delete": clean_delete, "grace_almost_used": grace_almost_used,
                 "oom_then_delete": oom_then_delete, "force_delete": force_delete, "sidecar_restart": sidecar_restart}
    function = functions[name]
    function.__name__ = f"{name}_{kind}"
    return function


SAFETY_ORDERS = ("clean_delete", "grace_almost_used", "oom_then_delete", "force_delete", "sidecar_restart")

SCENARIOS = [s3fs_through_the_webhook, invalid_annotation_refused, legacy_mode, job_completes, kustomize_component,
             kustomize_plain_component] + \
    [safety(order, kind) for order in SAFETY_ORDERS for kind in ("fuse", "block")]

s3fs_through_the_webhook.cases = ("s3_read_write", "app_starts_after_mount", "repair_while_app_runs",
                                  "delete_leaves_no_mount")
