"""python -m podrunner: run a pod manifest on the local Docker engine as a kubelet would.

  run POD.yaml [--secrets FILE ...] [--host NAME=IP ...] [--backoff S] [--node DIR]
      Starts the pod (a Pod, or the pod template of a Deployment/Job/...; Secrets and
      ConfigMaps from --secrets files and from POD.yaml itself) and reports its events
      until it is deleted. Ctrl-C deletes it with its own grace period.
  delete NAME [--grace-period N] [--force]
      Deletes a pod that `run` is running (from another shell) and prints the report.

Run as root: it mounts on the node directory and binds into containers."""

import argparse
import json
import os
import signal
import socket
import sys
import threading

from .docker import Docker
from .events import EventLog
from .node import Node
from .objects import Store, load_files, pod_from
from .pod import Options, Pod

CONTROL_DIR = "/run/podrunner"


def report_dict(report):
    return {
        "grace": report.grace, "force": report.force, "took": round(report.took, 2), "stuck": report.stuck,
        "stops": {name: {k: (round(v, 2) if isinstance(v, float) else v) for k, v in stop.items()}
                  for name, stop in report.stops.items()},
        "volumes": [{"volume": t.volume, "kind": t.kind, "steps": t.steps, "error": t.error,
                     "removed": len(t.removed), "removed_inside_mounts": t.inside_mounts} for t in report.teardowns],
        "mounts_left": report.mounts_left,
    }


def cmd_run(args):
    docs = load_files([args.manifest])
    runnable = [d for d in docs if d.get("kind") not in ("Secret", "ConfigMap", "Namespace", "Service")]
    if len(runnable) != 1:
        print(f"podrunner: {args.manifest} holds {len(runnable)} pods or workloads; give it one", file=sys.stderr)
        return 64
    store = Store(docs + load_files(args.secrets))
    hosts = dict(h.split("=", 1) for h in args.host)
    options = Options(pause_image=args.pause_image, hosts=hosts, backoff_initial=args.backoff,
                      log_dir=args.log_dir)
    node = Node(args.node)
    events = EventLog()
    pod = Pod(pod_from(runnable[0]), store, node, Docker(), events, options)
    os.makedirs(CONTROL_DIR, exist_ok=True)
    control = os.path.join(CONTROL_DIR, f"{pod.name}.sock")
    if os.path.exists(control):
        os.unlink(control)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(control)
    server.listen(1)
    done = threading.Event()
    result = {}

    def delete(grace, force):
        if not done.is_set():
            result["report"] = report_dict(pod.delete(grace, force))
            done.set()
        return result["report"]

    def serve():
        while not done.is_set():
            conn, _ = server.accept()
            with conn:
                request = json.loads(conn.makefile().readline() or "{}")
                conn.sendall((json.dumps(delete(request.get("grace"), request.get("force", False))) + "\n").encode())

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=delete, args=(None, False)).start())
    try:
        pod.start()
        threading.Thread(target=serve, daemon=True).start()
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        delete(None, False)
    finally:
        if not done.is_set() and pod.sandbox:
            delete(None, False)
        server.close()
        os.unlink(control)
        node.close() if args.node is None else None
    print(json.dumps(result.get("report", {}), indent=2))
    return 1 if result.get("report", {}).get("stuck") else 0


def cmd_delete(args):
    control = os.path.join(CONTROL_DIR, f"{args.name}.sock")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(control)
    except OSError as err:
        print(f"podrunner: no running pod {args.name!r} ({control}: {err.strerror})", file=sys.stderr)
        return 1
    grace = 0 if args.force and args.grace_period is None else args.grace_period
    client.sendall((json.dumps({"grace": grace, "force": args.force}) + "\n").encode())
    answer = client.makefile().readline()
    print(json.dumps(json.loads(answer), indent=2))
    return 1 if json.loads(answer).get("stuck") else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m podrunner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a pod manifest")
    run.add_argument("manifest")
    run.add_argument("--secrets", action="append", default=[], help="a YAML file of Secrets/ConfigMaps (repeatable)")
    run.add_argument("--host", action="append", default=[], help="NAME=IP in the pod's /etc/hosts (repeatable)")
    run.add_argument("--backoff", type=float, default=10.0, help="the restart backoff's first delay [10]")
    run.add_argument("--pause-image", default="sidemount:dev", help="the sandbox's image (it runs `sleep infinity`)")
    run.add_argument("--node", help="the node directory (default: a new tmpfs, removed at the end)")
    run.add_argument("--log-dir", help="save each container's output there")
    delete = sub.add_parser("delete", help="delete a pod that `run` is running")
    delete.add_argument("name")
    delete.add_argument("--grace-period", type=int, default=None)
    delete.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    return cmd_run(args) if args.command == "run" else cmd_delete(args)


if __name__ == "__main__":
    sys.exit(main())
