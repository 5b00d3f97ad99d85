//! The examples under `kustomize/examples`: each opts in and brings its
//! Secrets; the one for clusters without the webhook is complete as written.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::objects::{documents, id, named, of_kind, pod_spec, pod_template, text};
use crate::plain::check_plain_sidecar;
use crate::render::{render, PLAIN};
use crate::{kustomize_dir, EXAMPLES};

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
