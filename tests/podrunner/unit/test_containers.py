"""A container spec as docker run arguments."""

from podrunner import containers


def test_command_replaces_the_entrypoint_and_args_the_cmd():
    assert containers.entrypoint(["sh", "-c"], ["echo hi"]) == (["--entrypoint", "sh"], ["-c", "echo hi"])
    assert containers.entrypoint([], ["run"]) == ([], ["run"])
    assert containers.entrypoint(["sleep"], []) == (["--entrypoint", "sleep"], [])


def test_env_values_stay_out_of_argv():
    flags, cli_env = containers.env_flags({"SECRET": "s3cr3t", "PATH": "/bin", "DOCKER_HOST": "x"})
    assert flags == ["-e", "SECRET", "-e", "PATH=/bin", "-e", "DOCKER_HOST=x"]
    assert cli_env == {"SECRET": "s3cr3t"}


def test_security_context_container_over_pod():
    pod = {"spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "supplementalGroups": [4]}}}
    c = {"securityContext": {"runAsUser": 0, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                             "capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]}}}
    assert containers.security(pod, c, ["--privileged"]) == [
        "--cap-add", "SYS_ADMIN", "--cap-drop", "ALL", "--user", "0:3000", "--group-add", "4", "--read-only",
        "--security-opt", "no-new-privileges"]
    assert containers.security({"spec": {}}, {"securityContext": {"privileged": True}}, ["--privileged"]) == ["--privileged"]


def test_limits_become_cgroup_limits():
    c = {"resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi", "cpu": "500m"}}}
    assert containers.resources(c) == ["--memory", "268435456", "--memory-swap", "268435456", "--cpus", "0.500",
                                       "--cpu-shares", "10"]
    assert containers.resources({}) == []


def test_run_args_join_the_sandbox():
    pod = {"spec": {}}
    c = {"name": "app", "image": "img", "workingDir": "/w"}
    args, env = containers.run_args(pod, c, "n", "sandbox-id", {"A": "1"}, ["type=bind,src=/s,dst=/d"], [],
                                    {"l": "v"}, ["sh", "-c"], ["true"])
    assert args == ["run", "-d", "--name", "n", "--network", "container:sandbox-id", "--ipc", "container:sandbox-id",
                    "--label", "l=v", "-w", "/w", "--mount", "type=bind,src=/s,dst=/d", "-e", "A",
                    "--entrypoint", "sh", "img", "-c", "true"]
    assert env == {"A": "1"}
