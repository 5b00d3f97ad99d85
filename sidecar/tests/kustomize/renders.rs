//! Every kustomization under `kustomize/` renders, and every rendered object
//! passes `kubernetes-validate --strict`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common;
use crate::objects::{documents, text};
use crate::render::{overlay, render, PLAIN, WITH_PLUGINS};
use crate::{fixture, kustomize_dir, EXAMPLES, NEED_PLUGINS, PLAIN_BASE, PLAIN_COMPONENT};

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
/// are allowed only for cert-manager's API group, checked field by field in `webhook`;
/// returns their `Kind apiVersion` pairs.
fn validate(yaml: &str, what: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut unknown = Vec::new();
    for (version, line) in common::validate_strictly(&file, what) {
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
