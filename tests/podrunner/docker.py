"""The container runtime: the `docker` CLI, one call per CRI operation the kubelet
makes (RunPodSandbox, CreateContainer+StartContainer, StopContainer, ExecSync,
ContainerStatus, RemoveContainer)."""

import json
import os
import shutil
import subprocess

# Every capability, by bit number, to drop those an engine cannot grant.
CAPABILITIES = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
                "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
                "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
                "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
                "PERFMON BPF CHECKPOINT_RESTORE").split()


class DockerError(Exception):
    pass


class Docker:
    def __init__(self, binary=None):
        self.binary = binary or shutil.which("docker")
        if not self.binary:
            raise DockerError("no docker CLI on PATH")
        self._privileged = None

    def run(self, args, env=None, timeout=120, check=True, input=None):
        """`docker ARGS`; returns stdout. `env`: extra variables for the CLI itself
        (how `-e NAME` passes a value without putting it in any argv)."""
        full_env = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, env=full_env,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise DockerError(f"docker {' '.join(args[:2])}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def inspect(self, ref):
        out = self.run(["inspect", ref], check=False)
        try:
            return json.loads(out)[0]
        except (ValueError, IndexError):
            return None

    def image_exists(self, image):
        return subprocess.run([self.binary, "image", "inspect", image], capture_output=True).returncode == 0

    def pid(self, ref):
        info = self.inspect(ref)
        return info["State"]["Pid"] if info else 0

    def exec(self, ref, command, timeout=None, env=None, user=None):
        """ExecSync: (exit code, stdout, stderr); exit code None on timeout."""
        args = [self.binary, "exec"]
        for name in env or {}:
            args += ["-e", name]
        if user:
            args += ["-u", user]
        full_env = dict(os.environ, **(env or {}))
        try:
            proc = subprocess.run([*args, ref, *command], capture_output=True, timeout=timeout, env=full_env)
        except subprocess.TimeoutExpired:
            return None, b"", b"timed out"
        return proc.returncode, proc.stdout, proc.stderr

    def wait(self, ref):
        """Blocks until the container exits; its exit code (None if it is gone)."""
        proc = subprocess.run([self.binary, "wait", ref], capture_output=True, text=True)
        try:
            return int(proc.stdout.strip())
        except ValueError:
            return None

    def stop(self, ref, timeout):
        """StopContainer: the image's STOPSIGNAL, SIGKILL after `timeout` seconds."""
        self.run(["stop", "-t", str(int(timeout)), ref], check=False, timeout=timeout + 60)

    def kill(self, ref, signal="KILL"):
        self.run(["kill", "-s", signal, ref], check=False)

    def remove(self, *refs):
        if refs:
            self.run(["rm", "-f", "-v", *refs], check=False)

    def logs(self, ref):
        proc = subprocess.run([self.binary, "logs", ref], capture_output=True)
        return proc.stdout + proc.stderr

    def privileged_flags(self, probe_image):
        """What `privileged: true` becomes here. An engine whose own bounding set
        lacks a capability cannot start any --privileged container (runc: "unable to
        apply caps"); there a privileged container gets every other capability, no
        seccomp or AppArmor profile, unmasked /proc and /sys, access to every device,
        and the device nodes a privileged container would see that matter here
        (/dev/fuse, the loop devices present when it starts)."""
        if self._privileged is None:
            ok = subprocess.run([self.binary, "run", "--rm", "--privileged", "--entrypoint", "true", probe_image],
                                capture_output=True).returncode == 0
            if ok:
                self._privileged = ["--privileged"]
            else:
                flags = ["--cap-add", "ALL", "--security-opt", "seccomp=unconfined", "--security-opt",
                         "apparmor=unconfined", "--security-opt", "systempaths=unconfined",
                         "--device-cgroup-rule", "b *:* rmw", "--device-cgroup-rule", "c *:* rmw"]
                with open(f"/proc/{self._engine_pid()}/status") as f:
                    bounding = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
                for bit, name in enumerate(CAPABILITIES):
                    if not (bounding >> bit) & 1:
                        flags += ["--cap-drop", name]
                self._privileged = flags
        if self._privileged == ["--privileged"]:
            return self._privileged
        devices = ["/dev/fuse"] + sorted(f"/dev/{n}" for n in os.listdir("/dev")
                                         if n.startswith("loop") and n[4:].isdigit())
        return self._privileged + [arg for d in devices if os.path.exists(d) for arg in ("--device", d)]

    def privileged_is_emulated(self):
        return self._privileged is not None and self._privileged != ["--privileged"]

    @staticmethod
    def _engine_pid():
        try:
            with open("/var/run/docker.pid") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return "self"
