//! JSON Patch (RFC 6902): what the admission response carries, written from
//! the members of the pod that injection set ([`Changes`](crate::inject::Changes)), so that the
//! webhook and `sidemount inject` share one mutation and the pod is neither
//! copied nor compared.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::inject::{member, Injection, Was};

/// One patch operation; its value is borrowed from the injected pod, or is the
/// sidecar as the JSON it was written to when it was built.
#[derive(Debug, Clone, Serialize)]
pub struct Operation<'a> {
    pub op: Op,
    pub path: Cow<'static, str>,
    /// None for a `remove`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Member<'a>>,
}

/// What an operation sets.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Member<'a> {
    Pod(&'a Value),
    Sidecar(&'a RawValue),
    /// A list of the sidecar alone.
    SidecarList([&'a RawValue; 1]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Add,
    Remove,
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
/// in the order they apply. A member injection set is set whole, but for three
/// that it extends: the volumes of a pod that had a list of them (each
/// placeholder is removed, each new volume appended), the container list the
/// sidecar joins (it is added at its index, after the containers' `volumeMounts`
/// are replaced at theirs) and the annotations of a pod that had some (each
/// key is added).
pub fn of(injection: &Injection) -> Vec<Operation<'_>> {
    let (pod, changes) = (injection.pod_but_sidecar(), &injection.changes);
    let spec = at(pod, "spec");
    let set = |had: bool, path: Cow<'static, str>, value| Operation {
        op: Op::setting(had),
        path,
        value: Some(Member::Pod(value)),
    };
    let mut ops = Vec::with_capacity(8 + changes.mounts.len());
    match changes.volumes {
        // The volumes it had stay, as they were, but for the placeholders taken
        // out (last first, so that each index is still the one it was).
        Was::Extended => {
            for j in changes.volumes_removed.iter().rev() {
                ops.push(Operation { op: Op::Remove, path: format!("/spec/volumes/{j}").into(), value: None });
            }
            let volumes = at(spec, "volumes").as_array().map(Vec::as_slice).unwrap_or_default();
            for volume in &volumes[volumes.len() - changes.volumes_added..] {
                ops.push(Operation { op: Op::Add, path: "/spec/volumes/-".into(), value: Some(Member::Pod(volume)) });
            }
        }
        was => ops.push(set(was == Was::Other, "/spec/volumes".into(), at(spec, "volumes"))),
    }
    // At the indices the containers have before the sidecar goes in.
    for &(list, i) in &changes.mounts {
        let mounts = at(at(spec, list.key()).get(i).unwrap_or(&Value::Null), "volumeMounts");
        ops.push(set(true, format!("/spec/{}/{i}/volumeMounts", list.key()).into(), mounts));
    }
    let placed = changes.sidecar;
    let (key, sidecar) = (placed.list.key(), injection.sidecar().json());
    ops.push(match placed.list_was {
        Was::Extended => Operation {
            op: Op::Add,
            path: format!("/spec/{key}/{}", placed.at).into(),
            value: Some(Member::Sidecar(sidecar)),
        },
        was => Operation {
            op: Op::setting(was == Was::Other),
            path: format!("/spec/{key}").into(),
            value: Some(Member::SidecarList([sidecar])),
        },
    });
    if let Some(had) = changes.grace_had {
        ops.push(set(had, "/spec/terminationGracePeriodSeconds".into(), at(spec, "terminationGracePeriodSeconds")));
    }
    let annotations = at(at(pod, "metadata"), "annotations");
    match changes.annotations {
        Was::Extended => {
            for &(key, had) in &changes.annotation_keys {
                let mut path = String::from("/metadata/annotations");
                push_token(&mut path, key);
                ops.push(set(had, path.into(), at(annotations, key)));
            }
        }
        was => ops.push(set(was == Was::Other, "/metadata/annotations".into(), annotations)),
    }
    ops
}

/// Writes the patch as `serde_json::to_writer` writes it, byte for byte, but
/// without its escaping of every string: a string with nothing to escape (all
/// of a pod's names, paths and keys) is copied as it is. Escaping was most of
/// what writing the patch cost.
pub fn write(ops: &[Operation], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(match op.op {
            Op::Add => br#"{"op":"add","path":"#,
            Op::Remove => br#"{"op":"remove","path":"#,
            Op::Replace => br#"{"op":"replace","path":"#,
        });
        write_str(&op.path, out);
        match &op.value {
            None => {}
            Some(member) => {
                out.extend_from_slice(br#","value":"#);
                match member {
                    Member::Pod(value) => write_value(value, out),
                    Member::Sidecar(sidecar) => out.extend_from_slice(sidecar.get().as_bytes()),
                    Member::SidecarList([sidecar]) => {
                        out.push(b'[');
                        out.extend_from_slice(sidecar.get().as_bytes());
                        out.push(b']');
                    }
                }
            }
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// A value as serde_json writes it, compact.
fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => serde_json::to_writer(&mut *out, number).expect("a number serializes"),
        Value::String(text) => write_str(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, value)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(key, out);
                out.push(b':');
                write_value(value, out);
            }
            out.push(b'}');
        }
    }
}

/// A string as serde_json writes it: copied when nothing in it is escaped
/// (a control character, `"` or `\\`), else by serde_json itself.
fn write_str(text: &str, out: &mut Vec<u8>) {
    // Folded without an early exit, so that it is checked many bytes at a time.
    let escaped = text.bytes().fold(false, |escaped, b| escaped | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !escaped {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, text).expect("a string serializes");
    }
}

/// `value[key]`, found as injection finds it (`null` when it is not there).
fn at<'a>(value: &'a Value, key: &str) -> &'a Value {
    member(value, key).unwrap_or(&Value::Null)
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
                "volumes": [{ "name": "data", "emptyDir": {} }, { "name": "o", "emptyDir": {} }, { "name": "data" }],
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
                "remove /spec/volumes/2",
                "remove /spec/volumes/0",
                "add /spec/volumes/-",
                "replace /spec/containers/1/volumeMounts",
                "add /spec/containers/1",
                "replace /spec/terminationGracePeriodSeconds",
                "replace /metadata/annotations/sidemount.io~1original-termination-grace-period",
                "add /metadata/annotations/sidemount.io~1injected",
            ]
        );
        let values: Vec<Value> = ops.iter().map(|op| serde_json::to_value(&op.value).unwrap()).collect();
        drop(ops);
        let pod = injected.into_pod();
        assert_eq!(values[0], Value::Null);
        assert_eq!(values[2], inject::root_volume());
        assert_eq!(pod["spec"]["volumes"], json!([{ "name": "o", "emptyDir": {} }, inject::root_volume()]));
        assert_eq!(values[3], pod["spec"]["containers"][2]["volumeMounts"]);
        assert_eq!(values[4], pod["spec"]["containers"][1]);
        assert_eq!(values[4]["name"], "sidemount");
        assert_eq!(values[7], json!(inject::VERSION));
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
        let list = serde_json::to_value(&ops[1].value).unwrap();
        assert_eq!(list, json!([injected.sidecar().value()]));

        let pod = json!({ "metadata": { "annotations": { VOLUMES_ANNOTATION: FUSE } }, "spec": { "containers": [] } });
        let injected = injection(pod, "native");
        let ops = of(&injected);
        assert_eq!(
            shape(&ops),
            ["add /spec/volumes", "add /spec/initContainers", "add /metadata/annotations/sidemount.io~1injected"]
        );
        assert_eq!(serde_json::to_value(&ops[2].value).unwrap(), json!(inject::VERSION));
    }

    /// What `write` writes is what serde_json writes.
    fn written(ops: &[Operation]) -> String {
        let mut out = Vec::new();
        write(ops, &mut out);
        assert_eq!(
            String::from_utf8(serde_json::to_vec(ops).unwrap()).unwrap(),
            String::from_utf8(out.clone()).unwrap()
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_as_serde_json_does() {
        let tricky = json!({ "a\"b": ["\u{1}\n\t\\", "é€😀", "\u{7f}", 1, -2, 3.5, 1e300, u64::MAX, null, true, false, [], {}],
                             "": { "x/y~z": "" } });
        for value in [tricky.clone(), json!(null), json!("plain"), json!([]), json!({})] {
            let ops = [
                Operation { op: Op::Add, path: "/a/b~1c".into(), value: Some(Member::Pod(&value)) },
                Operation { op: Op::Remove, path: format!("/x/{}", 3).into(), value: None },
                Operation { op: Op::Replace, path: "/q\"\\".into(), value: Some(Member::Pod(&value)) },
            ];
            written(&ops);
        }
        let pod = json!({ "metadata": { "annotations": { VOLUMES_ANNOTATION: FUSE } },
                          "spec": { "volumes": [{ "name": "data", "emptyDir": {} }], "containers": [{ "name": "a", "image": "x",
                                    "volumeMounts": [{ "name": "data", "mountPath": "/d", "readOnly": true }] }] } });
        for mode in ["native", "legacy"] {
            let injected = injection(pod.clone(), mode);
            assert!(written(&of(&injected)).contains(r#""name":"sidemount""#));
        }
    }

    #[test]
    fn escapes_tokens() {
        let mut path = String::from("/a");
        push_token(&mut path, "b~c/d");
        assert_eq!(path, "/a/b~0c~1d");
        assert!(INJECTED_ANNOTATION.contains('/'));
    }
}
