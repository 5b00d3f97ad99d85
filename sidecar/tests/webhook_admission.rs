//! The webhook's answers to the AdmissionReview fixtures in
//! `tests/fixtures/admission/`, reviewed without sockets. Each returned JSON
//! Patch is applied by an independent implementation (python-jsonpatch), must
//! give exactly what `sidemount inject` writes for the same pod, and must pass
//! `kubernetes-validate --strict` for each of `common::KUBERNETES_VERSIONS`.
//!
//! The Python tools come from `tests/requirements.txt`, installed into
//! `<repo>/.venv` by `tests/setup.sh`; without them these tests fail, saying so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};
use sidemount::inject::{self, Config};
use sidemount::settings::Mode;
use sidemount::spec::{self, Source, SpecText};
use sidemount::webhook::admission::{self, Verdict};

mod common;

use common::venv_bin;

const IMAGE: &str = "registry.example.org/platform/sidemount:test";

fn config() -> Config {
    Config { image: IMAGE.into(), mode: Mode::Native, shutdown_timeout: Duration::from_secs(20) }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission").join(format!("{name}.json"))
}

/// The venv's python if it has jsonpatch and PyYAML, else `python3` on PATH if it has.
fn python() -> PathBuf {
    let candidates = [venv_bin("python3"), PathBuf::from("python3")];
    for python in &candidates {
        let ok = Command::new(python).args(["-c", "import jsonpatch, yaml"]).output().is_ok_and(|o| o.status.success());
        if ok {
            return python.clone();
        }
    }
    panic!(
        "no python with jsonpatch and PyYAML (tried {} and python3 on PATH): run `bash tests/setup.sh` as root, \
         or `python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt` in the repo root",
        candidates[0].display()
    );
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    output
}

/// `sidemount inject` on one pod, with no `SIDEMOUNT_*` setting from the environment.
fn inject_cli(pod_file: &Path) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_sidemount"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["inject", "--image", IMAGE, "--mode", "native", "-f"])
        .arg(pod_file))
}

struct Checked {
    reviewed: admission::Reviewed,
    response: Value,
    /// The pod with the patch applied (the pod itself when there is none).
    patched: Option<Value>,
}

/// Reviews a fixture; for an allowed pod, checks the patch against
/// `sidemount inject` and the Kubernetes schemas.
fn check(name: &str) -> Checked {
    let path = fixture(name);
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let request: Value = serde_json::from_slice(&body).unwrap();
    let reviewed = admission::review(&body, &config()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let answer: Value = serde_json::from_slice(&reviewed.body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = answer["response"].clone();
    assert_eq!(response["uid"], request["request"]["uid"], "{name}: the uid must be echoed");
    if response["allowed"] != true {
        return Checked { reviewed, response, patched: None };
    }

    let dir = tempfile::tempdir().unwrap();
    let pod_file = dir.path().join("pod.json");
    std::fs::write(&pod_file, serde_json::to_vec_pretty(&request["request"]["object"]).unwrap()).unwrap();
    let injected = inject_cli(&pod_file);
    assert!(
        injected.status.success(),
        "{name}: sidemount inject failed: {}",
        String::from_utf8_lossy(&injected.stderr)
    );
    let inject_file = dir.path().join("inject.yaml");
    std::fs::write(&inject_file, &injected.stdout).unwrap();
    let response_file = dir.path().join("response.json");
    std::fs::write(&response_file, &reviewed.body).unwrap();
    let patched_file = dir.path().join("patched.json");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/apply_patch.py");
    let applied =
        run(Command::new(python()).arg(&script).arg(&path).arg(&response_file).arg(&inject_file).arg(&patched_file));
    assert!(
        applied.status.success(),
        "{name}: the webhook's patch, applied by python-jsonpatch, is not `sidemount inject`'s output:\n{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    common::validate_strictly(&patched_file, &format!("{name}: the patched pod"));
    let patched = serde_json::from_slice(&std::fs::read(&patched_file).unwrap()).unwrap();
    Checked { reviewed, response, patched: Some(patched) }
}

fn injected(name: &str) -> Value {
    let checked = check(name);
    assert!(matches!(checked.reviewed.verdict, Verdict::Injected { .. }), "{name}: {:?}", checked.reviewed.verdict);
    assert_eq!(checked.response["patchType"], "JSONPatch");
    let pod = checked.patched.expect("allowed");
    assert_eq!(pod["metadata"]["annotations"][inject::INJECTED_ANNOTATION], inject::VERSION);
    pod
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array().map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect()).unwrap_or_default()
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} {name}"))
}

fn mount<'a>(container: &'a Value, volume: &str) -> &'a Value {
    container["volumeMounts"]
        .as_array()
        .and_then(|l| l.iter().find(|m| m["name"] == volume))
        .unwrap_or_else(|| panic!("no mount of {volume}"))
}

/// A container's mount of the served volume `volume`: the root volume's directory of that name.
fn served<'a>(container: &'a Value, volume: &str) -> &'a Value {
    container["volumeMounts"]
        .as_array()
        .and_then(|l| l.iter().find(|m| m["name"] == inject::ROOT_VOLUME && m["subPath"] == volume))
        .unwrap_or_else(|| panic!("no mount of the root volume's {volume}"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["name"] == name))
        .and_then(|e| e["value"].as_str())
        .unwrap()
}

/// The specs the sidecar will run, read by the supervisor's own loader.
fn sidecar_volumes(sidecar: &Value) -> Vec<spec::Volume> {
    let text = env(sidecar, "SIDEMOUNT_VOLUMES");
    spec::load(&[SpecText { origin: "SIDEMOUNT_VOLUMES".into(), text: text.into() }]).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn plain_pod_gets_a_native_sidecar() {
    let pod = injected("plain-pod");
    assert_eq!(names(&pod["spec"]["initContainers"]), ["sidemount"]);
    let sidecar = container(&pod, "initContainers", "sidemount");
    assert_eq!(sidecar["image"], IMAGE);
    assert_eq!(sidecar["args"], json!(["run"]));
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["securityContext"]["privileged"], true);
    assert_eq!(sidecar["startupProbe"]["exec"]["command"], json!(["sidemount", "probe"]));
    assert!(
        sidecar["startupProbe"]["failureThreshold"].as_u64().unwrap()
            * sidecar["startupProbe"]["periodSeconds"].as_u64().unwrap()
            >= 300
    );
    assert_eq!(sidecar["livenessProbe"]["exec"]["command"], json!(["sidemount", "probe", "--live"]));
    assert_eq!(
        sidecar["resources"],
        json!({ "requests": { "cpu": "50m", "memory": "32Mi" }, "limits": { "memory": "1Gi" } })
    );
    assert_eq!(env(sidecar, "SIDEMOUNT_SHUTDOWN_TIMEOUT"), "20s");
    // One mount of the root volume serves both volumes.
    assert_eq!(mount(sidecar, "sidemount")["mountPath"], "/sidemount");
    assert_eq!(mount(sidecar, "sidemount")["mountPropagation"], "Bidirectional");
    assert_eq!(names(&sidecar["volumeMounts"]), ["sidemount", "sidemount-secret-data"]);
    let secret = mount(sidecar, "sidemount-secret-data");
    assert_eq!(secret["mountPath"], "/etc/sidemount/secrets/data");
    assert_eq!(secret["readOnly"], true);

    let app = container(&pod, "containers", "app");
    assert_eq!(served(app, "data")["mountPropagation"], "HostToContainer");
    assert_eq!(served(app, "data")["readOnly"], true);
    assert_eq!(served(app, "cache")["mountPropagation"], "HostToContainer");
    assert!(mount(app, "kube-api-access-x7k2p").get("mountPropagation").is_none());

    let volumes = &pod["spec"]["volumes"];
    // The pod's placeholder emptyDir `cache` gives way to the root volume.
    assert_eq!(names(volumes), ["kube-api-access-x7k2p", "sidemount", "sidemount-secret-data"]);
    assert_eq!(volumes[1], json!({ "name": "sidemount", "emptyDir": { "medium": "Memory" } }));
    assert_eq!(volumes[2]["secret"]["secretName"], "ofs-secret");

    let specs = sidecar_volumes(sidecar);
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].source, Source::ObjectiveFs { filesystem: "s3://shop-assets".into() });
    assert_eq!(specs[0].secret_dir.as_deref(), Some(Path::new("/etc/sidemount/secrets/data")));
    // The app mounts it only readOnly: mounted `ro`, so a repair keeps it read-only.
    assert_eq!(specs[0].options, ["mt", "noatime", "ro"]);
    assert!(matches!(&specs[1].source, Source::Fuse { command } if command[0] == "rclone"));
    // The default 30 s grace covers the default 20 s budget plus the margin: untouched.
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
    assert!(pod["metadata"]["annotations"].get(inject::ORIGINAL_GRACE_ANNOTATION).is_none());
}

#[test]
fn workload_template_pod_propagates_to_init_containers_too() {
    let pod = injected("workload-template");
    assert_eq!(names(&pod["spec"]["initContainers"]), ["sidemount", "migrate"]);
    assert_eq!(served(container(&pod, "initContainers", "migrate"), "data")["mountPropagation"], "HostToContainer");
    assert_eq!(served(container(&pod, "containers", "app"), "data")["mountPropagation"], "HostToContainer");
    // The pod's own emptyDir gives way to the root volume.
    assert_eq!(names(&pod["spec"]["volumes"]), ["kube-api-access-x7k2p", "sidemount", "sidemount-secret-data"]);
    assert_eq!(pod["metadata"]["generateName"], "api-5f7c9d6b8-");
}

#[test]
fn sidecar_starts_after_istio_proxy() {
    let pod = injected("istio-proxy");
    assert_eq!(names(&pod["spec"]["initContainers"]), ["istio-init", "istio-proxy", "sidemount"]);
    assert_eq!(container(&pod, "initContainers", "istio-proxy")["restartPolicy"], "Always");
}

#[test]
fn already_injected_pod_is_allowed_unchanged() {
    let checked = check("already-injected");
    assert_eq!(checked.reviewed.verdict, Verdict::Unchanged("already injected"));
    assert_eq!(checked.response["allowed"], true);
    assert!(checked.response.get("patch").is_none(), "{}", checked.response);
}

#[test]
fn pod_without_the_annotation_is_allowed_unchanged() {
    let checked = check("no-annotation");
    assert_eq!(checked.reviewed.verdict, Verdict::Unchanged("no sidemount.io/volumes annotation"));
    assert!(checked.response.get("patch").is_none(), "{}", checked.response);
}

#[test]
fn invalid_annotation_is_denied_naming_the_field() {
    let checked = check("invalid-annotation");
    assert_eq!(checked.response["allowed"], false);
    assert!(checked.response.get("patch").is_none());
    let message = checked.response["status"]["message"].as_str().unwrap();
    assert!(message.starts_with("sidemount.io/volumes: volumes[0].filesystem: required"), "{message}");

    // `sidemount inject` refuses the same pod, naming the object and the field.
    let dir = tempfile::tempdir().unwrap();
    let request: Value = serde_json::from_slice(&std::fs::read(fixture("invalid-annotation")).unwrap()).unwrap();
    let pod_file = dir.path().join("pod.json");
    std::fs::write(&pod_file, serde_json::to_vec(&request["request"]["object"]).unwrap()).unwrap();
    let out = inject_cli(&pod_file);
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Pod shop/broken (document 1): sidemount.io/volumes: volumes[0].filesystem: required"),
        "{stderr}"
    );
}

#[test]
fn legacy_mode_puts_the_sidecar_in_containers_and_raises_the_grace_period() {
    let pod = injected("legacy-mode");
    assert_eq!(names(&pod["spec"]["containers"]), ["sidemount", "app"]);
    assert!(pod["spec"].get("initContainers").is_none());
    let sidecar = container(&pod, "containers", "sidemount");
    assert!(sidecar.get("restartPolicy").is_none());
    assert_eq!(mount(sidecar, "sidemount")["mountPropagation"], "Bidirectional");
    // The volume was not in the pod: the root volume is added.
    assert_eq!(pod["spec"]["volumes"][1], json!({ "name": "sidemount", "emptyDir": { "medium": "Memory" } }));
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["metadata"]["annotations"][inject::ORIGINAL_GRACE_ANNOTATION], "5");
}

#[test]
fn objectivefs_flexvolume_becomes_a_sidemount_volume() {
    let pod = injected("flexvolume");
    assert_eq!(names(&pod["spec"]["volumes"]), ["kube-api-access-x7k2p", "sidemount", "sidemount-secret-test"]);
    assert_eq!(
        pod["spec"]["volumes"][2],
        json!({ "name": "sidemount-secret-test", "secret": { "secretName": "ofs-secret", "defaultMode": 256 } })
    );
    let sidecar = container(&pod, "initContainers", "sidemount");
    let specs = sidecar_volumes(sidecar);
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].name, "test");
    assert_eq!(specs[0].source, Source::ObjectiveFs { filesystem: "s3://my-bucket".into() });
    assert_eq!(specs[0].options, ["mt", "noatime"]);
    assert_eq!(specs[0].secret_dir.as_deref(), Some(Path::new("/etc/sidemount/secrets/test")));
    assert_eq!(served(container(&pod, "containers", "app"), "test")["mountPropagation"], "HostToContainer");
}

#[test]
fn a_labelled_flexvolume_pod_without_annotations_is_converted() {
    let pod = injected("flexvolume-label-only");
    assert_eq!(names(&pod["spec"]["volumes"]), ["kube-api-access-x7k2p", "sidemount", "sidemount-secret-test"]);
    assert_eq!(served(container(&pod, "containers", "app"), "test")["mountPath"], "/data");
}

#[test]
fn every_fixture_has_a_test() {
    let tested = [
        "already-injected",
        "flexvolume",
        "flexvolume-label-only",
        "invalid-annotation",
        "istio-proxy",
        "legacy-mode",
        "no-annotation",
        "plain-pod",
        "workload-template",
    ];
    let mut found: Vec<String> = std::fs::read_dir(fixture("x").parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(String::from))
        .collect();
    found.sort();
    assert_eq!(found, tested);
}
