//! The sidecar component (`components/sidecar`) and its plugin: the same output
//! as `sidemount inject`, through kustomize's exec-plugin protocol and through the
//! KRM function protocol, and a build that fails loudly.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::objects::{by_id, documents, one, pod_template};
use crate::render::{
    component_overlay, kubectl_kustomize, ok, overlay, render, search_path, sidemount_inject, Render, PLAIN,
    WITH_PLUGINS,
};
use crate::{fixture, kustomize_dir, EXAMPLES, SIDECAR_IMAGE};

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
