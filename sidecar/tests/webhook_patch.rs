//! The webhook's JSON Patch, applied to the pod it was computed for, gives
//! exactly the pod injection gives: for every AdmissionReview fixture and for
//! the pod (template) of every workload in the inject fixtures. The webhook
//! reads only part of the pod; what it leaves out must come through untouched.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use sidemount::inject::{self, Config, Outcome};
use sidemount::settings::Mode;
use sidemount::webhook::admission::{self, Verdict};

fn config(mode: Mode) -> Config {
    Config { image: "registry.example.org/sidemount:test".into(), mode, shutdown_timeout: Duration::from_secs(20) }
}

/// RFC 6902 `add`, `remove` and `replace`: the operations the webhook writes.
fn apply(pod: &mut Value, patch: &[Value]) {
    for op in patch {
        let path = op["path"].as_str().unwrap_or_else(|| panic!("no path in {op}"));
        let (parent, last) = path.rsplit_once('/').unwrap_or_else(|| panic!("{op}: path {path:?} names no member"));
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = pod.pointer_mut(parent).unwrap_or_else(|| panic!("{op}: {parent:?} is not in the pod"));
        match (op["op"].as_str(), target) {
            (Some("add" | "replace"), Value::Object(map)) => {
                if op["op"] == "replace" {
                    assert!(map.contains_key(&last), "{op}: replaces what is not there");
                }
                map.insert(last, op["value"].clone());
            }
            (Some("remove"), Value::Object(map)) => {
                assert!(map.shift_remove(&last).is_some(), "{op}: removes what is not there");
            }
            (Some("add"), Value::Array(list)) => {
                let at = if last == "-" { list.len() } else { last.parse().unwrap() };
                list.insert(at, op["value"].clone());
            }
            (Some("replace"), Value::Array(list)) => list[last.parse::<usize>().unwrap()] = op["value"].clone(),
            (Some("remove"), Value::Array(list)) => {
                list.remove(last.parse().unwrap());
            }
            (_, target) => panic!("{op}: cannot apply to {target}"),
        }
    }
}

/// Reviews `pod` as a pod CREATE; checks the answer against injection of the whole pod.
fn check(what: &str, body: &[u8], pod: &Value, mode: Mode) {
    let config = config(mode);
    let reviewed = admission::review(body, &config).unwrap_or_else(|e| panic!("{what}: {e}"));
    let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
    let response = &answer["response"];
    match inject::inject(pod, &config) {
        Ok(Outcome::Injected { pod: injected, warnings }) => {
            assert!(matches!(reviewed.verdict, Verdict::Injected { .. }), "{what}: {:?}", reviewed.verdict);
            let patch = base64::engine::general_purpose::STANDARD.decode(response["patch"].as_str().unwrap()).unwrap();
            let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
            let mut patched = pod.clone();
            apply(&mut patched, &patch);
            assert_eq!(patched, injected, "{what}: the patched pod is not the injected pod; the patch: {patch:?}");
            assert_eq!(response["warnings"], if warnings.is_empty() { Value::Null } else { json!(warnings) });
        }
        Ok(_) => {
            assert!(matches!(reviewed.verdict, Verdict::Unchanged(_)), "{what}: {:?}", reviewed.verdict);
            assert_eq!(response["allowed"], true, "{what}");
            assert!(response.get("patch").is_none(), "{what}: {response}");
        }
        Err(err) => {
            assert_eq!(reviewed.verdict, Verdict::Denied(err.to_string()), "{what}");
        }
    }
}

#[test]
fn the_patch_gives_the_injected_pod_for_every_admission_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        let request: Value = serde_json::from_slice(&body).unwrap();
        check(&path.display().to_string(), &body, &request["request"]["object"], Mode::Native);
        checked += 1;
    }
    assert_eq!(checked, 9, "every admission fixture is checked (one added or removed: update the count)");
}

/// The pods of a manifest: each Pod, and the pod template of each workload.
fn pods_in(value: &Value, found: &mut Vec<Value>) {
    if value["spec"]["containers"].is_array() {
        found.push(value.clone());
    } else if let Value::Object(map) = value {
        map.values().for_each(|v| pods_in(v, found));
    }
}

#[test]
fn the_patch_gives_the_injected_pod_for_every_inject_fixture() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject/workloads.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut pods = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document).unwrap();
        pods_in(&value, &mut pods);
    }
    assert!(pods.len() >= 7, "{}: {} pods", path.display(), pods.len());
    for (i, pod) in pods.iter().enumerate() {
        for mode in [Mode::Native, Mode::Legacy] {
            let body = serde_json::to_vec(&json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": { "uid": "u", "kind": { "group": "", "version": "v1", "kind": "Pod" },
                             "operation": "CREATE", "namespace": "ns", "object": pod }
            }))
            .unwrap();
            check(&format!("{} pod {i} ({mode:?})", path.display()), &body, pod, mode);
        }
    }
}

#[test]
fn a_pod_of_an_odd_shape_is_reviewed_whole() {
    // Not reduced (`spec` is not an object): the whole pod is read, and denied as before.
    let pod = json!({ "metadata": { "name": "p", "annotations": { inject::VOLUMES_ANNOTATION: "- {name: d, type: zfs, dataset: p/d}" } },
                      "spec": "containers" });
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": { "uid": "u", "kind": { "group": "", "kind": "Pod" }, "operation": "CREATE", "object": pod }
    }))
    .unwrap();
    check("spec as text", &body, &pod, Mode::Native);
    let reviewed = admission::review(&body, &config(Mode::Native)).unwrap();
    assert_eq!(reviewed.verdict, Verdict::Denied("spec: must be an object".into()));
}
