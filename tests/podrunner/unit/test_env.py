"""Environment and downward API values, resolved as the kubelet does."""

import pytest

from podrunner.env import EnvError, command_and_args, container_env, expand, field_value, format_map


def container(**fields):
    return dict({"name": "app", "image": "app"}, **fields)


def test_value_fieldref_secret_and_configmap_keys(ordering_pod, store):
    c = container(env=[
        {"name": "PLAIN", "value": "x"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
    ])
    env = container_env(ordering_pod, c, store, pod_ip="10.0.0.7")
    assert env == {"PLAIN": "x", "POD": "ordering", "NS": "team", "UID": "uid-1", "IP": "10.0.0.7",
                   "TIER": "backend", "PASSWORD": "secret-value", "LEVEL": "debug"}


def test_secrets_are_read_from_the_pods_namespace(ordering_pod, store):
    c = container(env=[{"name": "U", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}}])
    assert container_env(ordering_pod, c, store)["U"] == "alice"


def test_envfrom_comes_first_with_its_prefix_and_env_overrides_it(ordering_pod, store):
    c = container(envFrom=[{"secretRef": {"name": "creds"}, "prefix": "DB_"}, {"configMapRef": {"name": "settings"}}],
                  env=[{"name": "LEVEL", "value": "info"}])
    env = container_env(ordering_pod, c, store)
    assert env["DB_user"] == "alice" and env["DB_password"] == "secret-value"
    assert "DB_bad name" not in env  # not a valid variable name: skipped
    assert env["LEVEL"] == "info" and env["url"] == "http://example.invalid"


def test_missing_references_fail_unless_optional(ordering_pod, store):
    missing_key = container(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}])
    with pytest.raises(EnvError, match="has no key 'nope'"):
        container_env(ordering_pod, missing_key, store)
    missing_obj = container(envFrom=[{"configMapRef": {"name": "absent"}}])
    with pytest.raises(EnvError, match="ConfigMap team/absent not found"):
        container_env(ordering_pod, missing_obj, store)
    optional = container(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}}],
                         envFrom=[{"configMapRef": {"name": "absent", "optional": True}}])
    assert container_env(ordering_pod, optional, store) == {}


def test_dollar_paren_expansion():
    env = {"A": "one", "B": "two"}
    assert expand("$(A)-$(B)", env) == "one-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("cost $5 $(A", env) == "cost $5 $(A"


def test_values_expand_against_earlier_variables_only(ordering_pod, store):
    c = container(env=[{"name": "FIRST", "value": "$(SECOND)/x"}, {"name": "SECOND", "value": "s"},
                       {"name": "THIRD", "value": "$(SECOND)/y"}],
                  command=["echo", "$(THIRD)"], args=["$(FIRST)", "$$(THIRD)"])
    env = container_env(ordering_pod, c, store)
    assert env["FIRST"] == "$(SECOND)/x" and env["THIRD"] == "s/y"
    assert command_and_args(c, env) == (["echo", "s/y"], ["$(SECOND)/x", "$(THIRD)"])


def test_annotations_as_the_downward_api_formats_them(ordering_pod):
    text = field_value(ordering_pod, "metadata.annotations")
    assert text == 'note="says \\"hi\\""\nsidemount.io/volumes="- name: data\\n  type: fuse\\n"'
    assert field_value(ordering_pod, "metadata.annotations['note']") == 'says "hi"'
    assert format_map({}) == ""


def test_resource_field_ref(ordering_pod, store):
    c = ordering_pod["spec"]["containers"][0]
    c["resources"] = {"limits": {"memory": "256Mi", "cpu": "1500m"}}
    c["env"] = [{"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]
    env = container_env(ordering_pod, c, store)
    assert env == {"MEM": "256", "CPU": "2"}
