//! `sidemount inject` as a user runs it: Kubernetes YAML in, injected YAML out.
//! Every kind that holds a pod is injected where its pod template asks; every
//! other document comes out byte for byte; the output passes
//! `kubernetes-validate --strict`; running it on its own output changes nothing.

use std::path::{Path, PathBuf};
use std::process::Output;

use inject_support::run_inject;
use serde::Deserialize;
use serde_json::{json, Value};

mod common;
mod inject_support;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject").join(name)
}

/// Runs `sidemount inject ARGS` with `stdin`, with only the given `SIDEMOUNT_*` settings.
fn inject(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    run_inject(&std::env::var_os("PATH").unwrap_or_default(), env, args, stdin)
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "sidemount inject failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn pod_template(object: &Value) -> &Value {
    match object["kind"].as_str().unwrap() {
        "Pod" => object,
        "CronJob" => &object["spec"]["jobTemplate"]["spec"]["template"],
        _ => &object["spec"]["template"],
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array().map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect()).unwrap_or_default()
}

#[test]
fn injects_every_kind_that_holds_a_pod_and_passes_the_rest_through() {
    let input = std::fs::read_to_string(fixture("workloads.yaml")).unwrap();
    let output = ok(&inject(&["-f", fixture("workloads.yaml").to_str().unwrap()], &[], b""));
    let objects = documents(&output);
    let kinds: Vec<(&str, &str)> =
        objects.iter().map(|o| (o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap())).collect();
    assert_eq!(
        kinds,
        [
            ("Pod", "shell"),
            ("Deployment", "web"),
            ("StatefulSet", "db"),
            ("DaemonSet", "agent"),
            ("ReplicaSet", "worker"),
            ("Job", "reindex"),
            ("CronJob", "backup"),
            ("Deployment", "plain"),
            ("ConfigMap", "settings"),
            ("Service", "web"),
        ]
    );
    for object in &objects[..7] {
        let template = pod_template(object);
        let what = format!("{} {}", object["kind"], object["metadata"]["name"]);
        assert_eq!(template["metadata"]["annotations"]["sidemount.io/injected"], env!("CARGO_PKG_VERSION"), "{what}");
        let legacy = object["kind"] == "DaemonSet";
        let list = if legacy { "containers" } else { "initContainers" };
        let sidecar = &template["spec"][list][0];
        assert_eq!(sidecar["name"], "sidemount", "{what}");
        assert_eq!(sidecar["image"], concat!("ghcr.io/sidemount/sidemount:", env!("CARGO_PKG_VERSION")), "{what}");
        assert_eq!(sidecar.get("restartPolicy").is_some(), !legacy, "{what}");
        let app = &template["spec"]["containers"][if legacy { 1 } else { 0 }];
        assert_eq!(app["volumeMounts"][0]["mountPropagation"], "HostToContainer", "{what}");
        assert_eq!(app["volumeMounts"][0]["name"], "sidemount", "{what}");
        assert_eq!(sidecar["volumeMounts"][0]["mountPath"], "/sidemount", "{what}");
    }
    // The StatefulSet's 10 s grace period is raised and recorded; its memory limit is taken.
    let db = pod_template(&objects[2]);
    assert_eq!(db["spec"]["terminationGracePeriodSeconds"], 30);
    assert_eq!(db["metadata"]["annotations"]["sidemount.io/original-termination-grace-period"], "10");
    assert_eq!(db["spec"]["initContainers"][0]["resources"]["limits"], json!({ "memory": "512Mi" }));
    // The DaemonSet's own emptyDir gives way to the root volume; the app mounts its directory.
    let agent = pod_template(&objects[3]);
    assert_eq!(names(&agent["spec"]["volumes"]), ["sidemount"]);
    assert_eq!(agent["spec"]["containers"][1]["volumeMounts"][0]["subPath"], "disk");

    // Untouched documents come out as written, comments and flow style included.
    let untouched = &input[input.find("# Not asked for").unwrap()..];
    assert!(output.ends_with(untouched), "the tail of the stream changed:\n{output}");

    // Its own output: nothing changes.
    let again = ok(&inject(&[], &[], output.as_bytes()));
    assert_eq!(again, output, "injecting the output again changed it");

    validate(&output);
}

#[test]
fn flags_and_settings_choose_image_and_mode() {
    let pod = b"kind: Pod\nmetadata:\n  name: p\n  annotations:\n    sidemount.io/volumes: '- {name: d, type: zfs, dataset: p/d}'\nspec:\n  containers: [{name: app, image: x}]\n";
    let sidecar = |out: &str, list: &str| documents(out)[0]["spec"][list][0].clone();

    let out = ok(&inject(&["--image", "example.org/sm:1", "--mode", "legacy"], &[], pod));
    assert_eq!(sidecar(&out, "containers")["image"], "example.org/sm:1");

    let env =
        [("SIDEMOUNT_IMAGE", "example.org/sm:env"), ("SIDEMOUNT_MODE", "legacy"), ("SIDEMOUNT_SHUTDOWN_TIMEOUT", "1m")];
    let out = ok(&inject(&["-f", "-"], &env, pod));
    let s = sidecar(&out, "containers");
    assert_eq!(s["image"], "example.org/sm:env");
    assert_eq!(s["env"][1], json!({ "name": "SIDEMOUNT_SHUTDOWN_TIMEOUT", "value": "1m" }));
    assert_eq!(documents(&out)[0]["spec"]["terminationGracePeriodSeconds"], 70);

    // The flag wins over the setting; the pod's annotation wins over both.
    let out = ok(&inject(&["--mode", "native"], &env, pod));
    assert_eq!(sidecar(&out, "initContainers")["name"], "sidemount");
    let annotated =
        String::from_utf8_lossy(pod).replace("annotations:\n", "annotations:\n    sidemount.io/mode: legacy\n");
    let out = ok(&inject(&["--mode", "native"], &[], annotated.as_bytes()));
    assert_eq!(sidecar(&out, "containers")["name"], "sidemount");

    let bad = inject(&["--mode", "sidecar"], &[], pod);
    assert_eq!(bad.status.code(), Some(2), "clap refuses an unknown mode");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("native"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn invalid_annotations_name_each_object_and_field() {
    let input = r#"
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata:
      annotations:
        sidemount.io/volumes: "- {name: data, type: objectivefs, options: [mt]}"
    spec:
      containers: [{name: app, image: x}]
---
kind: ConfigMap
metadata: {name: fine}
---
kind: Pod
metadata:
  name: p
  annotations:
    sidemount.io/volumes: "- {name: d, type: zfs, dataset: p/d}"
    sidemount.io/cpu-request: lots
spec:
  containers: [{name: app, image: x}]
"#;
    let out = inject(&[], &[], input.as_bytes());
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty(), "nothing is written when an object is refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("sidemount inject: stdin: Deployment shop/web (document 1): sidemount.io/volumes: volumes[0].filesystem: required"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("sidemount inject: stdin: Pod p (document 3): sidemount.io/cpu-request: \"lots\" is not a Kubernetes quantity"),
        "{stderr}"
    );

    let flex = "kind: Pod\nmetadata:\n  name: f\n  annotations: {sidemount.io/convert-flexvolume: \"true\"}\nspec:\n  containers: []\n  volumes:\n  - name: v\n    flexVolume: {driver: altalang/ofs, options: {mountOptions: mt}}\n";
    let out = inject(&[], &[], flex.as_bytes());
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Pod f (document 1): spec.volumes[0].flexVolume: options.networkPath: required"),
        "{stderr}"
    );
}

#[test]
fn unreadable_input_is_its_own_error() {
    let out = inject(&[], &[], b"kind: Pod\nmetadata: [\n");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("document 1 is not valid YAML"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = inject(&["-f", "/nonexistent/pods.yaml"], &[], b"");
    assert_eq!(out.status.code(), Some(66));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/pods.yaml"));
}

#[test]
fn objectivefs_flexvolume_pods_move_over_with_one_annotation() {
    // The pod spec of the altalang/ofs driver's README, plus the annotation.
    let input = r#"apiVersion: v1
kind: Pod
metadata:
  name: busybox
  namespace: default
  annotations:
    sidemount.io/convert-flexvolume: "true"
spec:
  containers:
  - name: busybox
    image: busybox
    command:
      - sleep
      - "3600"
    imagePullPolicy: IfNotPresent
    volumeMounts:
    - name: test
      mountPath: /data
  volumes:
  - name: test
    flexVolume:
      driver: "altalang/ofs"
      secretRef:
        name: "ofs-secret"
      options:
        networkPath: "s3://my-bucket"
        mountOptions: "mt"
"#;
    let output = ok(&inject(&[], &[], input.as_bytes()));
    let pod = &documents(&output)[0];
    assert_eq!(pod["spec"]["volumes"][0], json!({ "name": "sidemount", "emptyDir": { "medium": "Memory" } }));
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"][0],
        json!({ "name": "sidemount", "mountPath": "/data", "subPath": "test", "mountPropagation": "HostToContainer" })
    );
    let sidecar = &pod["spec"]["initContainers"][0];
    let specs: Value = serde_json::from_str(sidecar["env"][0]["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        specs,
        json!([{ "name": "test", "type": "objectivefs", "options": ["mt"], "secretDir": "/etc/sidemount/secrets/test", "filesystem": "s3://my-bucket" }])
    );
    assert_eq!(pod["spec"]["volumes"][1]["secret"]["secretName"], "ofs-secret");
    validate(&output);
}

#[test]
fn a_workload_injected_with_the_earlier_layout_is_left_as_it_is() {
    // An emptyDir per volume, bound into the sidecar at /sidemount/<name>: what an
    // earlier release wrote. Its pods keep working as they are, so they are not
    // converted to the one root (which would also drop the volume its sidecar mounts).
    let earlier = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: earlier}\nspec:\n  template:\n    \
                   metadata:\n      annotations:\n        sidemount.io/injected: 0.0.9\n        \
                   sidemount.io/volumes: '- {name: data, type: zfs, dataset: p/d}'\n    spec:\n      \
                   initContainers:\n      - {name: sidemount, image: s, restartPolicy: Always, \
                   volumeMounts: [{name: data, mountPath: /sidemount/data, mountPropagation: Bidirectional}]}\n      \
                   containers:\n      - {name: app, image: x, \
                   volumeMounts: [{name: data, mountPath: /data, mountPropagation: HostToContainer}]}\n      \
                   volumes: [{name: data, emptyDir: {}}]\n";
    assert_eq!(ok(&inject(&[], &[], earlier.as_bytes())), earlier);
}

/// `kubernetes-validate --strict` for each of `common::KUBERNETES_VERSIONS`.
fn validate(yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("injected.yaml");
    std::fs::write(&file, yaml).unwrap();
    common::validate_strictly(&file, "sidemount inject's output");
}
