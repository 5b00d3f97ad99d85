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
                // RFC 6902 lets `add` replace a member; the webhook says which it does.
                if op["op"] == "replace" {
                    assert!(map.contains_key(&last), "{op}: replaces what is not there");
                } else {
                    assert!(!map.contains_key(&last), "{op}: adds what is there: a replace");
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

/// Reviews `pod` as a pod CREATE; checks the answer against injection of the
/// whole pod. Says whether the pod was injected.
fn check(what: &str, body: &[u8], pod: &Value, config: &Config) -> bool {
    let reviewed = admission::review(body, config).unwrap_or_else(|e| panic!("{what}: {e}"));
    let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
    let response = &answer["response"];
    match inject::inject(pod, config) {
        Ok(Outcome::Injected { pod: injected, warnings }) => {
            assert!(matches!(reviewed.verdict, Verdict::Injected { .. }), "{what}: {:?}", reviewed.verdict);
            let patch = base64::engine::general_purpose::STANDARD.decode(response["patch"].as_str().unwrap()).unwrap();
            let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
            let mut patched = pod.clone();
            apply(&mut patched, &patch);
            assert_eq!(patched, injected, "{what}: the patched pod is not the injected pod; the patch: {patch:?}");
            assert_eq!(response["warnings"], if warnings.is_empty() { Value::Null } else { json!(warnings) });
            true
        }
        Ok(_) => {
            assert!(matches!(reviewed.verdict, Verdict::Unchanged(_)), "{what}: {:?}", reviewed.verdict);
            assert_eq!(response["allowed"], true, "{what}");
            assert!(response.get("patch").is_none(), "{what}: {response}");
            false
        }
        Err(err) => {
            assert_eq!(reviewed.verdict, Verdict::Denied(err.to_string()), "{what}");
            false
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
        let _ = check(&path.display().to_string(), &body, &request["request"]["object"], &config(Mode::Native));
        checked += 1;
    }
    assert_eq!(checked, 9, "every admission fixture is checked (one added or removed: update the count)");
}

/// Reviews `pod` as a pod CREATE in a review of its own.
fn check_pod(what: &str, pod: &Value, config: &Config) -> bool {
    check(what, &review_of(pod), pod, config)
}

/// A pod CREATE review of `pod`.
fn review_of(pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": { "uid": "u", "kind": { "group": "", "version": "v1", "kind": "Pod" },
                     "operation": "CREATE", "namespace": "ns", "object": pod }
    }))
    .unwrap()
}

#[test]
fn the_patch_gives_the_injected_pod_whatever_the_pod_lacks_or_orders() {
    const FUSE: &str = "- {name: data, type: fuse, command: [bindfs, -f, /src, '{mountpoint}']}";
    let mounts = json!([{ "name": "data", "mountPath": "/d" }, { "name": "other", "mountPath": "/o" }]);
    let app = json!({ "name": "app", "image": "x", "volumeMounts": mounts });
    let proxy = json!({ "name": inject::ISTIO_PROXY, "image": "istio", "restartPolicy": "Always" });
    let flex = json!({ "name": "data", "flexVolume": { "driver": "altalang/ofs", "secretRef": { "name": "s" },
                                                          "options": { "networkPath": "s3://b" } } });
    let labelled = |annotations: Option<Value>| {
        let mut metadata = json!({ "name": "p", "labels": { inject::INJECT_LABEL: "true" } });
        if let Some(annotations) = annotations {
            metadata["annotations"] = annotations;
        }
        metadata
    };
    let annotated = json!({ "name": "p", "annotations": { inject::VOLUMES_ANNOTATION: FUSE } });
    let cases = [
        // No list of volumes, init containers or annotations; lists and maps that are null.
        ("no lists", json!({ "metadata": annotated, "spec": { "containers": [app] } })),
        (
            "null lists",
            json!({ "metadata": annotated, "spec": { "volumes": null, "initContainers": null, "containers": [app] } }),
        ),
        ("no annotations", json!({ "metadata": labelled(None), "spec": { "volumes": [flex], "containers": [app] } })),
        (
            "null annotations",
            json!({ "spec": { "containers": [app], "volumes": [flex] }, "metadata": labelled(Some(Value::Null)) }),
        ),
        (
            "empty annotations",
            json!({ "metadata": labelled(Some(json!({}))), "spec": { "volumes": [flex], "containers": [app] } }),
        ),
        // Keys in another order; the grace period raised, over an annotation of its own.
        (
            "odd order",
            json!({ "spec": { "terminationGracePeriodSeconds": 5, "containers": [app], "volumes": [{ "name": "other", "emptyDir": {} }, { "name": "data", "emptyDir": {} }] },
                    "metadata": { "annotations": { inject::ORIGINAL_GRACE_ANNOTATION: "7", inject::VOLUMES_ANNOTATION: FUSE }, "name": "p" },
                    "kind": "Pod" }),
        ),
        (
            "null grace",
            json!({ "metadata": annotated, "spec": { "containers": [app], "terminationGracePeriodSeconds": null } }),
        ),
        // The sidecar goes in before containers that mount the volume, whose index it moves.
        (
            "after istio-proxy",
            json!({ "metadata": annotated, "spec": {
                "initContainers": [proxy, app, { "name": "late", "image": "x", "volumeMounts": mounts }],
                "containers": [proxy, app, { "name": "b", "image": "x" }, app] } }),
        ),
        (
            "placeholders among volumes",
            json!({ "metadata": { "annotations": { inject::VOLUMES_ANNOTATION: format!("{FUSE}\n- {{name: logs, type: zfs, dataset: p/l}}") } },
                    "spec": { "volumes": [{ "name": "logs", "emptyDir": {} }, { "name": "other", "emptyDir": {} },
                                          { "name": "data", "emptyDir": {} }, { "name": "last", "emptyDir": {} }],
                              "containers": [app] } }),
        ),
        (
            "containers after istio-proxy",
            json!({ "metadata": annotated, "spec": { "containers": [proxy, app, { "name": "b", "image": "x" }, app] } }),
        ),
    ];
    // The grace period raised for every pod by a longer shutdown budget.
    let longer = Config { shutdown_timeout: Duration::from_secs(100), ..config(Mode::Native) };
    for (what, pod) in cases {
        for config in [config(Mode::Native), config(Mode::Legacy), longer.clone()] {
            let injected = check_pod(&format!("{what} ({config:?})"), &pod, &config);
            // Only legacy mode refuses an init container that mounts a served volume.
            assert!(injected || config.mode == Mode::Legacy, "{what}: not injected");
        }
    }
}

#[test]
fn a_denial_that_names_a_volume_is_the_same_from_the_reduced_pod() {
    // The webhook reads of a volume only what injection reads, and the names of its other keys.
    let pod = json!({ "metadata": { "annotations": { inject::VOLUMES_ANNOTATION: "- {name: data, type: zfs, dataset: p/d}" } },
                      "spec": { "volumes": [{ "name": "data", "hostPath": { "path": "/srv" } }], "containers": [] } });
    assert!(!check_pod("a hostPath in the way", &pod, &config(Mode::Native)));
    let reviewed = admission::review(&review_of(&pod), &config(Mode::Native)).unwrap();
    let Verdict::Denied(message) = reviewed.verdict else { panic!("{:?}", reviewed.verdict) };
    assert!(message.contains("is a hostPath volume"), "{message}");
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
            let _ = check(&format!("{} pod {i} ({mode:?})", path.display()), &body, pod, &config(mode));
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
    assert!(!check("spec as text", &body, &pod, &config(Mode::Native)));
    let reviewed = admission::review(&body, &config(Mode::Native)).unwrap();
    assert_eq!(reviewed.verdict, Verdict::Denied("spec: must be an object".into()));
}

mod any_pod {
    //! Pods assembled at random from the parts injection reads, each part in
    //! each of its shapes (missing, null, empty, populated) and the keys of each
    //! object in any order: the patch must still give the injected pod, and a
    //! denial the same message.

    use proptest::prelude::*;
    use serde_json::{json, Map, Value};
    use sidemount::inject;
    use sidemount::settings::Mode;

    const SPECS: [&str; 4] = [
        "- {name: data, type: fuse, command: [bindfs, -f, /src, '{mountpoint}']}",
        "- {name: data, type: fuse, command: [bindfs, -f, /src, '{mountpoint}']}\n- {name: logs, type: zfs, dataset: p/l}",
        "- {name: logs, type: zfs, dataset: p/l, secretName: s}",
        "- {name: data, type: fuse, command: [x]}",
    ];

    fn volumes() -> Vec<Value> {
        vec![
            json!({ "name": "data", "emptyDir": {} }),
            json!({ "name": "logs", "emptyDir": { "medium": "Memory" } }),
            json!({ "name": "other", "emptyDir": { "sizeLimit": "1Gi" } }),
            json!({ "name": "conf", "configMap": { "name": "c", "items": [{ "key": "k", "path": "p" }] } }),
            json!({ "name": "host", "hostPath": { "path": "/srv" } }),
            json!({ "name": "data", "flexVolume": { "driver": "altalang/ofs", "options": { "networkPath": "s3://b" } } }),
        ]
    }

    fn containers() -> Vec<Value> {
        let mount = |name: &str, path: &str| json!({ "name": name, "mountPath": path });
        vec![
            json!({ "name": "app", "image": "x", "volumeMounts": [mount("data", "/d"), mount("other", "/o")] }),
            json!({ "name": "reader", "image": "x", "ports": [{ "containerPort": 80 }],
                    "volumeMounts": [{ "name": "data", "mountPath": "/r", "readOnly": true }] }),
            json!({ "name": inject::ISTIO_PROXY, "image": "istio", "restartPolicy": "Always" }),
            json!({ "name": "plain", "image": "x", "env": [{ "name": "A", "value": "b" }] }),
            json!({ "name": "logger", "image": "x", "securityContext": { "runAsUser": 1000 },
                    "volumeMounts": [mount("logs", "/l")], "volumeDevices": [{ "name": "conf", "devicePath": "/dev/x" }] }),
            json!({ "name": "sub", "image": "x", "volumeMounts": [{ "name": "data", "mountPath": "/s", "subPath": "a" }] }),
        ]
    }

    /// A list drawn from `pool`: missing, null, or some of its items in any order.
    fn list_of(pool: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
        let len = pool.len();
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(Value::Null)),
            6 => proptest::sample::subsequence(pool, 0..=len).prop_shuffle().prop_map(|l| Some(Value::Array(l))),
        ]
    }

    /// An object of `entries` (None: left out) with its keys in the order `order` gives.
    fn object(mut entries: Vec<(&str, Option<Value>)>, order: &[usize]) -> Value {
        let mut map = Map::new();
        let n = entries.len();
        for &i in order.iter().filter(|&&i| i < n) {
            if let (key, Some(value)) = std::mem::take(&mut entries[i]) {
                map.insert(key.to_string(), value);
            }
        }
        Value::Object(map)
    }

    fn annotations() -> impl Strategy<Value = Option<Value>> {
        let map = (
            proptest::option::of(proptest::sample::select(SPECS.to_vec())),
            proptest::option::of(Just("9")),
            proptest::option::of(proptest::sample::select(vec!["native", "legacy"])),
            proptest::option::of(proptest::sample::select(vec!["true", "false"])),
            Just((0..4).collect::<Vec<usize>>()).prop_shuffle(),
        )
            .prop_map(|(spec, grace, mode, convert, order)| {
                let text = |v: Option<&str>| v.map(|v| json!(v));
                object(
                    vec![
                        (inject::VOLUMES_ANNOTATION, text(spec)),
                        (inject::ORIGINAL_GRACE_ANNOTATION, text(grace)),
                        (inject::MODE_ANNOTATION, text(mode)),
                        (inject::CONVERT_FLEXVOLUME_ANNOTATION, text(convert)),
                    ],
                    &order,
                )
            });
        prop_oneof![1 => Just(None), 1 => Just(Some(Value::Null)), 8 => map.prop_map(Some)]
    }

    fn pod() -> impl Strategy<Value = Value> {
        (
            annotations(),
            any::<bool>(),
            list_of(volumes()),
            list_of(containers()),
            list_of(containers()),
            prop_oneof![Just(None), Just(Some(Value::Null)), (0u64..100).prop_map(|s| Some(json!(s)))],
            Just((0..5).collect::<Vec<usize>>()).prop_shuffle(),
            any::<bool>(),
        )
            .prop_map(|(annotations, labelled, volumes, containers, init, grace, order, spec_first)| {
                let labels = labelled.then(|| json!({ inject::INJECT_LABEL: "true" }));
                let metadata = object(
                    vec![("name", Some(json!("p"))), ("labels", labels), ("annotations", annotations)],
                    &[0, 1, 2],
                );
                let spec = object(
                    vec![
                        ("volumes", volumes),
                        ("initContainers", init),
                        ("containers", containers.or(Some(json!([])))),
                        ("terminationGracePeriodSeconds", grace),
                        ("securityContext", Some(json!({ "fsGroup": 2000 }))),
                    ],
                    &order,
                );
                let order = if spec_first { [1, 0] } else { [0, 1] };
                object(vec![("metadata", Some(metadata)), ("spec", Some(spec))], &order)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn the_patch_gives_the_injected_pod_for_any_mix_of_its_parts(pod in pod()) {
            for mode in [Mode::Native, Mode::Legacy] {
                super::check_pod(&format!("{pod} ({mode:?})"), &pod, &super::config(mode));
            }
        }
    }
}
