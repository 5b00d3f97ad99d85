"""A container spec as `docker run` arguments, the way the kubelet turns it into a
CRI ContainerConfig (pkg/kubelet/kuberuntime/kuberuntime_container.go
generateContainerConfig, pkg/kubelet/kuberuntime/security_context.go,
pkg/kubelet/kuberuntime/kuberuntime_container_linux.go for resources). Pure."""

from .objects import quantity

# A docker CLI setting the container's environment must not also configure the CLI.
_CLI_VARIABLES = ("DOCKER_", "PATH", "HOME", "BUILDKIT_")


def security(pod, container, privileged_flags):
    """securityContext (container over pod) as docker flags."""
    pod_sc = pod["spec"].get("securityContext") or {}
    sc = container.get("securityContext") or {}
    flags = []
    if sc.get("privileged"):
        flags += list(privileged_flags)
    caps = sc.get("capabilities") or {}
    for cap in caps.get("add") or []:
        flags += ["--cap-add", cap]
    for cap in caps.get("drop") or []:
        flags += ["--cap-drop", cap]
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if user is not None:
        flags += ["--user", f"{user}:{group}" if group is not None else str(user)]
    elif group is not None:
        flags += ["--user", f"0:{group}"]
    for gid in pod_sc.get("supplementalGroups") or []:
        flags += ["--group-add", str(gid)]
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    return flags


def resources(container):
    """Limits as cgroup limits: memory (no swap, as the kubelet sets memory.memsw
    equal to the limit) and CPU quota; the CPU request as shares."""
    res = container.get("resources") or {}
    limits = res.get("limits") or {}
    requests = res.get("requests") or {}
    flags = []
    if "memory" in limits:
        memory = int(quantity(limits["memory"]))
        flags += ["--memory", str(memory), "--memory-swap", str(memory)]
    if "cpu" in limits:
        flags += ["--cpus", f"{quantity(limits['cpu']):.3f}"]
    cpu_request = requests.get("cpu", limits.get("cpu"))
    if cpu_request is not None:
        # kuberuntime_container_linux.go: MilliCPUToShares, minimum 2.
        flags += ["--cpu-shares", str(max(2, int(quantity(cpu_request) * 1024)))]
    return flags


def entrypoint(command, args):
    """command replaces the image's ENTRYPOINT (and drops its CMD), args its CMD.
    docker's --entrypoint takes one word: the rest of command goes before args."""
    if command:
        return ["--entrypoint", command[0]], list(command[1:]) + list(args)
    return [], list(args)


def env_flags(env):
    """`-e NAME` for each variable (the value comes from the CLI's environment, so no
    secret is in any argv); `-e NAME=VALUE` only for names the CLI itself reads."""
    flags, cli_env = [], {}
    for name, value in env.items():
        if name.startswith(_CLI_VARIABLES):
            flags += ["-e", f"{name}={value}"]
        else:
            flags += ["-e", name]
            cli_env[name] = value
    return flags, cli_env


def run_args(pod, container, name, sandbox, env, mounts, privileged_flags, labels, command, args):
    """(docker run arguments, environment for the CLI)."""
    flags = ["run", "-d", "--name", name, "--network", f"container:{sandbox}", "--ipc", f"container:{sandbox}"]
    if pod["spec"].get("shareProcessNamespace"):
        flags += ["--pid", f"container:{sandbox}"]
    for key, value in labels.items():
        flags += ["--label", f"{key}={value}"]
    if container.get("workingDir"):
        flags += ["-w", container["workingDir"]]
    if container.get("stdin"):
        flags.append("-i")
    if container.get("tty"):
        flags.append("-t")
    flags += security(pod, container, privileged_flags)
    flags += resources(container)
    for mount in mounts:
        flags += ["--mount", mount]
    env_args, cli_env = env_flags(env)
    flags += env_args
    entry, rest = entrypoint(command, args)
    flags += entry
    flags.append(container["image"])
    flags += rest
    return flags, cli_env
