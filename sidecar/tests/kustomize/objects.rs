//! Reading what kustomize renders: documents, identities, pod templates.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

pub fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// `Kind namespace/name`: one rendered object's identity.
pub fn id(object: &Value) -> String {
    format!(
        "{} {} {}/{}",
        text(object, "/apiVersion"),
        text(object, "/kind"),
        text(object, "/metadata/namespace"),
        text(object, "/metadata/name")
    )
}

pub fn by_id(objects: &[Value]) -> BTreeMap<String, Value> {
    let map: BTreeMap<String, Value> = objects.iter().map(|o| (id(o), o.clone())).collect();
    assert_eq!(map.len(), objects.len(), "two rendered objects share an identity");
    map
}

pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

pub fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(objects, kind);
    assert_eq!(found.len(), 1, "expected exactly one {kind}, found {}", found.len());
    found[0]
}

pub fn pod_template(object: &Value) -> Option<&Value> {
    match text(object, "/kind") {
        "Pod" => Some(object),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => object.pointer("/spec/template"),
        "CronJob" => object.pointer("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// The pod spec of a rendered workload.
pub fn pod_spec(object: &Value) -> &Value {
    &pod_template(object).unwrap_or_else(|| panic!("{} has no pod template", id(object)))["spec"]
}

pub fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array().into_iter().flatten().find(|item| item["name"] == name)
}
