//! JSON Patch (RFC 6902): what the admission response carries, written from
//! the members of the pod that injection set ([`Changes`](crate::inject::Changes)), so that the
//! webhook and `sidemount inject` share one mutation and the pod is neither
//! copied nor compared.

use serde::Serialize;
use serde_json::Value;

use crate::inject::{Injection, Was};

/// One patch operation; its value is borrowed from the injected pod.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Operation<'a> {
    pub op: Op,
    pub path: String,
    pub value: &'a Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Add,
    Replace,
}

impl Op {
    /// `replace` for a member the pod had, `add` for a new one.
    fn setting(had: bool) -> Op {
        if had {
            Op::Replace
        } else {
            Op::Add
        }
    }
}

/// The operations that turn the pod injection was given into the injected pod,
/// in the order they apply: each member injection set is set whole, but for a
/// container list the sidecar joined (it is added at its index, after the
/// containers' `volumeMounts` are replaced at theirs) and for the annotations of
/// a pod that had some (each key is added).
pub fn of(injection: &Injection) -> Vec<Operation<'_>> {
    let Injection { pod, changes, .. } = injection;
    let spec = &pod["spec"];
    let mut ops = Vec::with_capacity(4 + changes.mounts.len());
    ops.push(Operation { op: Op::setting(changes.volumes_had), path: "/spec/volumes".into(), value: &spec["volumes"] });
    let placed = changes.sidecar;
    for &(list, i) in &changes.mounts {
        // Where the container is now: one further if the sidecar went in before it.
        let now = if list == placed.list && i >= placed.at { i + 1 } else { i };
        ops.push(Operation {
            op: Op::Replace,
            path: format!("/spec/{}/{i}/volumeMounts", list.key()),
            value: &spec[list.key()][now]["volumeMounts"],
        });
    }
    let key = placed.list.key();
    ops.push(match placed.list_was {
        Was::Extended => {
            Operation { op: Op::Add, path: format!("/spec/{key}/{}", placed.at), value: &spec[key][placed.at] }
        }
        was => Operation { op: Op::setting(was == Was::Other), path: format!("/spec/{key}"), value: &spec[key] },
    });
    if let Some(had) = changes.grace_had {
        ops.push(Operation {
            op: Op::setting(had),
            path: "/spec/terminationGracePeriodSeconds".into(),
            value: &spec["terminationGracePeriodSeconds"],
        });
    }
    let annotations = &pod["metadata"]["annotations"];
    match changes.annotations {
        Was::Extended => {
            for &(key, had) in &changes.annotation_keys {
                let mut path = String::from("/metadata/annotations");
                push_token(&mut path, key);
                ops.push(Operation { op: Op::setting(had), path, value: &annotations[key] });
            }
        }
        was => ops.push(Operation {
            op: Op::setting(was == Was::Other),
            path: "/metadata/annotations".into(),
            value: annotations,
        }),
    }
    ops
}

/// Appends one reference token, escaped as RFC 6901 says: `~` is `~0`, `/` is
/// `~1` (annotation keys such as `sidemount.io/injected` carry a slash).
fn push_token(path: &mut String, token: &str) {
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::{self, Config, Edit, INJECTED_ANNOTATION, ORIGINAL_GRACE_ANNOTATION, VOLUMES_ANNOTATION};
    use serde_json::json;

    const FUSE: &str = "- {name: data, type: fuse, command: [bindfs, -f, /src, '{mountpoint}']}";

    fn injection(pod: Value, mode: &str) -> Injection {
        let mut pod = pod;
        pod["metadata"]["annotations"]["sidemount.io/mode"] = json!(mode);
        match inject::edit(pod, &Config::for_tests()).unwrap() {
            Edit::Injected(injection) => injection,
            other => panic!("not injected: {other:?}"),
        }
    }

    /// Each operation as `op path`.
    fn shape(ops: &[Operation]) -> Vec<String> {
        ops.iter().map(|o| format!("{} {}", serde_json::to_value(o.op).unwrap().as_str().unwrap(), o.path)).collect()
    }

    #[test]
    fn sets_what_injection_set_and_adds_the_sidecar_at_its_index() {
        let mount = json!([{ "name": "data", "mountPath": "/d" }]);
        let pod = json!({
            "metadata": { "annotations": { VOLUMES_ANNOTATION: FUSE, ORIGINAL_GRACE_ANNOTATION: "old" } },
            "spec": {
                "containers": [
                    { "name": "istio-proxy", "image": "i" },
                    { "name": "a", "image": "x", "volumeMounts": mount },
                    { "name": "b", "image": "x" },
                ],
                "terminationGracePeriodSeconds": 5,
            },
        });
        let injected = injection(pod, "legacy");
        let ops = of(&injected);
        // Container a is replaced at its index before the sidecar goes in before it.
        assert_eq!(
            shape(&ops),
            [
                "add /spec/volumes",
                "replace /spec/containers/1/volumeMounts",
                "add /spec/containers/1",
                "replace /spec/terminationGracePeriodSeconds",
                "replace /metadata/annotations/sidemount.io~1original-termination-grace-period",
                "add /metadata/annotations/sidemount.io~1injected",
            ]
        );
        let spec = &injected.pod["spec"];
        assert_eq!(ops[1].value, &spec["containers"][2]["volumeMounts"]);
        assert_eq!(ops[2].value["name"], "sidemount");
        assert_eq!(ops[5].value, &json!(inject::VERSION));
    }

    #[test]
    fn sets_a_list_or_map_whole_where_the_pod_had_none() {
        let pod = json!({
            "metadata": { "annotations": { VOLUMES_ANNOTATION: FUSE } },
            "spec": { "volumes": null, "initContainers": null, "containers": [{ "name": "a", "image": "x" }] },
        });
        let injected = injection(pod, "native");
        let ops = of(&injected);
        assert_eq!(
            shape(&ops),
            [
                "replace /spec/volumes",
                "replace /spec/initContainers",
                "add /metadata/annotations/sidemount.io~1injected"
            ]
        );
        assert_eq!(ops[1].value.as_array().map(Vec::len), Some(1));

        let pod = json!({ "metadata": { "annotations": { VOLUMES_ANNOTATION: FUSE } }, "spec": { "containers": [] } });
        let injected = injection(pod, "native");
        let ops = of(&injected);
        assert_eq!(
            shape(&ops),
            ["add /spec/volumes", "add /spec/initContainers", "add /metadata/annotations/sidemount.io~1injected"]
        );
        assert_eq!(ops[2].value, &json!(inject::VERSION));
    }

    #[test]
    fn escapes_tokens() {
        let mut path = String::from("/a");
        push_token(&mut path, "b~c/d");
        assert_eq!(path, "/a/b~0c~1d");
        assert!(INJECTED_ANNOTATION.contains('/'));
    }
}
