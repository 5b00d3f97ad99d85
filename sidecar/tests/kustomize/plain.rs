//! The plain component (`components/sidecar-plain`): built with no plugin and
//! no flag, it adds the sidecar `sidemount inject` would, but for how the sidecar
//! gets its spec.

use serde_json::{json, Value};

use crate::objects::{by_id, documents, id, named, pod_spec, pod_template, text};
use crate::render::{ok, overlay, render, sidemount_inject, PLAIN};
use crate::{fixture, kustomize_dir, PLAIN_BASE, PLAIN_COMPONENT, SIDECAR_IMAGE};

/// What the plain component must have made of one labelled workload.
pub fn check_plain_sidecar(object: &Value) {
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
