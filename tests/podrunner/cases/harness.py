"""What the end-to-end cases share: the node, the S3 server standing in for the
kind suite's MinIO (moto, in a network namespace of its own, under the Service's
DNS names), the three ways a pod gets its sidecar (`sidemount inject`, the webhook
over TLS, the kustomize component), loop devices, and the cases' bookkeeping."""

import base64
import contextlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid

import jsonpatch

from ..docker import Docker
from ..events import EventLog
from ..node import Node, mounts_under, read_mountinfo, unmount_all_under
from ..objects import Store, load_documents, load_files, pod_from
from ..pod import Options, Pod

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MANIFESTS = os.path.join(REPO, "tests", "e2e", "kind", "manifests")
NAMESPACE = "sidemount-e2e"
# The kind suite's MinIO credentials (manifests/s3.yaml); moto takes any.
ACCESS_KEY = "e2e-access-key"
SECRET_KEY = "e2e-secret-key-0123456789"
S3_SERVICE_NAMES = ("minio", f"minio.{NAMESPACE}", f"minio.{NAMESPACE}.svc", f"minio.{NAMESPACE}.svc.cluster.local")


class CaseFailed(Exception):
    pass


def fail(message):
    raise CaseFailed(message)


def wait_for(seconds, predicate, every=0.2):
    """Retry `predicate` until it returns a truthy value (returned) or `seconds` pass (None)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - retried until the deadline
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(every)


class S3:
    """moto in the network namespace of a placeholder container, port 9000, as the
    kind suite's MinIO Service; pods resolve the Service's names to it."""

    def __init__(self, docker, image, label, log_path):
        self.docker = docker
        self.container = docker.run(["run", "-d", "--label", f"{label}=s3", "--entrypoint", "sleep", image,
                                     "infinity"]).strip()
        info = docker.inspect(self.container)
        self.ip = info["NetworkSettings"]["IPAddress"]
        moto = os.path.join(REPO, ".venv", "bin", "moto_server")
        if not os.path.exists(moto):
            moto = shutil.which("moto_server") or fail("no moto_server: run tests/setup.sh")
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(["nsenter", "-t", str(info["State"]["Pid"]), "-n", moto, "-H", "0.0.0.0",
                                         "-p", "9000"], stdout=self.log, stderr=subprocess.STDOUT)
        self.endpoint = f"http://{self.ip}:9000"
        if not wait_for(30, lambda: urllib.request.urlopen(self.endpoint, timeout=2)):
            fail(f"moto did not answer at {self.endpoint} (log: {log_path})")
        import boto3  # noqa: PLC0415 - only the cases need it

        self.client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                                   aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def hosts(self):
        return {name: self.ip for name in S3_SERVICE_NAMES}

    def make_bucket(self, name):
        self.client.create_bucket(Bucket=name)

    def get(self, bucket, key):
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def put(self, bucket, key, body):
        self.client.put_object(Bucket=bucket, Key=key, Body=body)

    def keys(self, bucket, prefix=""):
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        self.docker.remove(self.container)


class Webhook:
    """`sidemount webhook` on loopback with a certificate from a CA made here; the
    API server's side: an AdmissionReview over TLS that trusts that CA only, and the
    JSON Patch of the answer applied with python-jsonpatch."""

    def __init__(self, sidemount, image, work):
        tls = os.path.join(work, "tls")
        os.makedirs(tls, exist_ok=True)
        self.ca = os.path.join(tls, "ca.crt")

        def openssl(*args):
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=sidemount-e2e-ca",
                "-keyout", os.path.join(tls, "ca.key"), "-out", self.ca)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=sidemount-webhook",
                "-keyout", os.path.join(tls, "tls.key"), "-out", os.path.join(tls, "tls.csr"))
        ext = os.path.join(tls, "san.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("x509", "-req", "-in", os.path.join(tls, "tls.csr"), "-CA", self.ca, "-CAkey", os.path.join(tls, "ca.key"),
                "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", os.path.join(tls, "tls.crt"))
        env = {"PATH": os.environ.get("PATH", ""), "SIDEMOUNT_WEBHOOK_LISTEN": "127.0.0.1:0",
               "SIDEMOUNT_TLS_CERT": os.path.join(tls, "tls.crt"), "SIDEMOUNT_TLS_KEY": os.path.join(tls, "tls.key"),
               "SIDEMOUNT_IMAGE": image, "SIDEMOUNT_LOG": "info"}
        self.process = subprocess.Popen([sidemount, "webhook"], env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        found = threading.Event()

        def drain():
            for line in self.process.stderr:
                self.log.append(line.rstrip())
                if "webhook listening on https://" in line:
                    self.address = line.split("webhook listening on https://")[1].split("/")[0].strip()
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(20):
            self.close()
            fail("the webhook did not say where it listens: " + "\n".join(self.log[-10:]))
        self.context = ssl.create_default_context(cafile=self.ca)

    def admit(self, pod):
        """(allowed, the pod after the patch, the refusal message)."""
        meta = pod.get("metadata") or {}
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "request": {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                              "resource": {"group": "", "version": "v1", "resource": "pods"},
                              "name": meta.get("name"), "namespace": meta.get("namespace", "default"),
                              "operation": "CREATE", "userInfo": {"username": "podrunner"}, "object": pod}}
        host, port = self.address.rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), context=self.context, timeout=10)
        try:
            conn.request("POST", "/mutate", body=json.dumps(review), headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            body = answer.read()
        finally:
            conn.close()
        if answer.status != 200:
            fail(f"the webhook answered HTTP {answer.status}: {body[:300]!r}")
        response = json.loads(body)["response"]
        if response.get("uid") != review["request"]["uid"]:
            fail(f"the webhook answered for another request: {response.get('uid')}")
        if not response.get("allowed"):
            return False, None, (response.get("status") or {}).get("message", "")
        patched = pod
        if "patch" in response:
            if response.get("patchType") != "JSONPatch":
                fail(f"patchType {response.get('patchType')!r}")
            patched = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"]))).apply(pod)
        return True, patched, ""

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class World:
    """Everything the cases share, set up once."""

    def __init__(self, work, image, sidemount, concurrency):
        self.work = work
        self.image = image
        self.sidemount = sidemount
        self.concurrency = concurrency
        self.label = f"podrunner-e2e-{os.getpid()}"
        self.docker = Docker()
        self.node = None
        self.s3 = None
        self.webhook = None
        self.loops = []
        self.tags = []
        self.lock = threading.Lock()
        self.store = Store(load_files([os.path.join(MANIFESTS, "s3.yaml")]))

    def start(self):
        if not self.docker.image_exists(self.image):
            fail(f"no image {self.image}: build it with images/build-local.sh")
        # The manifests name the image as the kind suite loads it (sidemount:e2e).
        self.tag("sidemount:e2e")
        self.node = Node(os.path.join(self.work, "node"))
        self.s3 = S3(self.docker, self.image, self.label, os.path.join(self.work, "moto.log"))
        # The kind suite's bucket (run.sh makes it with `rclone mkdir`).
        self.s3.make_bucket("e2e-bucket")
        self.webhook = Webhook(self.sidemount, self.image, self.work)

    def tag(self, name):
        """The image under test, also under `name` (what `kind load` does in the kind suite)."""
        with self.lock:
            if name != self.image and name not in self.tags:
                self.docker.run(["tag", self.image, name])
                self.tags.append(name)

    def close(self):
        for tag in self.tags:
            self.docker.run(["rmi", "--no-prune", tag], check=False)
        for closer in (self.webhook, self.s3):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        ids = self.docker.run(["ps", "-aq", "--filter", f"label={self.label}"], check=False).split()
        ids += self.docker.run(["ps", "-aq", "--filter", f"label={self.label}-pod"], check=False).split()
        self.docker.remove(*ids)
        if self.node is not None:
            self.node.close()
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True)

    # ------------------------------------------------------------ manifests

    def manifest(self, name):
        with open(os.path.join(MANIFESTS, name)) as f:
            return f.read()

    def inject(self, text):
        """`sidemount inject` on the manifest text, as a user runs it before `kubectl apply`."""
        proc = subprocess.run([self.sidemount, "inject", "--image", self.image], input=text, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            fail(f"sidemount inject exited {proc.returncode}: {proc.stderr.strip()}")
        return load_documents(proc.stdout)

    def kustomize(self, directory, plugins=True):
        """`kubectl kustomize --enable-alpha-plugins` with the sidecar component's exec
        plugin (sidemount inject) found on PATH; with plugins=False, plain `kubectl
        kustomize` with no flag and no sidemount on PATH, as `kubectl apply -k` builds."""
        path = os.environ.get("PATH", "")
        env = dict(os.environ, PATH=f"{os.path.dirname(self.sidemount)}:{path}",
                   KUSTOMIZE_PLUGIN_HOME=os.path.join(REPO, "kustomize", "plugin"), TMPDIR=self.work)
        if not plugins:
            env = dict(os.environ, TMPDIR=self.work,
                       PATH=":".join(d for d in path.split(":") if not os.path.exists(os.path.join(d, "sidemount"))))
            env.pop("KUSTOMIZE_PLUGIN_HOME", None)
        kubectl = os.path.join(REPO, ".venv", "bin", "kubectl")
        kubectl = kubectl if os.path.exists(kubectl) else "kubectl"
        flags = ["--enable-alpha-plugins"] if plugins else []
        proc = subprocess.run([kubectl, "kustomize", *flags, directory], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            fail(f"kubectl kustomize {directory}: {proc.stderr.strip()}")
        return load_documents(proc.stdout)

    def loop_device(self, size_mb=64):
        image = tempfile.mktemp(prefix="disk.", suffix=".img", dir=self.work)
        subprocess.run(["truncate", "-s", f"{size_mb}M", image], check=True)
        loop = subprocess.run(["losetup", "-f", "--show", image], check=True, capture_output=True,
                              text=True).stdout.strip()
        with self.lock:
            self.loops.append(loop)
        return loop


class Result:
    def __init__(self, name, scenario):
        self.name = name
        self.scenario = scenario
        self.error = None
        self.took = 0.0
        self.notes = []


class Scenario:
    """Pods and the cases checked on them. Each `with scenario.case(name)` block is
    one case: it fails on the first exception, the next block still runs. The
    events of every pod go to the scenario's log."""

    def __init__(self, name, world, logs):
        self.name = name
        self.world = world
        self.log_path = os.path.join(logs, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.events = EventLog(self.log)
        self.pods = []
        self.results = []
        self.current = None

    def note(self, text):
        if self.current is not None:
            self.current.notes.append(text)
        print(f"-- {text}", file=self.log, flush=True)

    @contextlib.contextmanager
    def case(self, name):
        result = Result(name, self)
        self.results.append(result)
        self.current = result
        print(f"== case {name}", file=self.log, flush=True)
        started = time.monotonic()
        try:
            yield result
        except Exception as err:  # noqa: BLE001 - every failure is the case's
            result.error = err if isinstance(err, CaseFailed) else CaseFailed(
                f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
            print(f"FAILED: {result.error}", file=self.log, flush=True)
        finally:
            result.took = time.monotonic() - started
            self.current = None

    def run_pod(self, doc, **options):
        """Run the pod `doc` makes (a Pod or a workload); its events go to this log."""
        world = self.world
        opts = Options(pause_image=world.image, hosts=world.s3.hosts(), run_label=f"{world.label}-pod",
                       log_dir=os.path.join(world.work, "logs", self.name), **options)
        pod = Pod(pod_from(doc), world.store, world.node, world.docker, self.events, opts)
        self.pods.append(pod)
        pod.start()
        return pod

    def cleanup(self):
        """Whatever the scenario left: pods deleted by force, then anything still
        mounted under their directories unmounted (a pod stuck Terminating leaves some)."""
        for pod in self.pods:
            if not pod.terminating.is_set():
                with contextlib.suppress(Exception):
                    pod.delete(force=True)
            if mounts_under(read_mountinfo(), pod.pod_dir):
                unmount_all_under(pod.pod_dir)
            shutil.rmtree(pod.pod_dir, ignore_errors=True)
        self.log.close()


def run_scenario(world, function, logs):
    """Run one scenario function(scenario); returns its Results."""
    scenario = Scenario(function.__name__, world, logs)
    try:
        function(scenario)
    except Exception as err:  # noqa: BLE001 - a failure outside any case
        with scenario.case(function.__name__):
            raise CaseFailed(f"outside any case: {type(err).__name__}: {err}\n{traceback.format_exc()}") from err
    finally:
        with contextlib.suppress(Exception):
            scenario.cleanup()
    return scenario.results
