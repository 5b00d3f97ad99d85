//! `sidemount inject` as a kustomize transformer: the configuration-function
//! protocols that let kustomize (and kpt) run the one injection.
//!
//! Two protocols carry it:
//!
//! - **KRM functions** (`kustomize build --enable-alpha-plugins --enable-exec`,
//!   `kpt fn eval --exec`): a `ResourceList` (`config.kubernetes.io/v1`) on
//!   stdin; its `items` are injected and the list is written back, with
//!   `results` naming each object that could not be injected and why, and a
//!   non-zero exit. Its `functionConfig` may set the image, mode and shutdown
//!   budget.
//! - **kustomize exec plugins**, the only kind `kubectl kustomize` runs (it has
//!   `--enable-alpha-plugins` but no `--enable-exec`): a plain YAML stream on
//!   stdin, injected by `manifest`, and the transformer's own config in a file
//!   named on the command line, read here by [`parse_function_config`].
//!
//! Either way a function config is a `SidemountInjector` (`sidemount.io/v1alpha1`)
//! with `spec: {image, mode, shutdownTimeout}`, or a `ConfigMap` with the same keys
//! in `data` (what `kpt fn eval -- image=...` builds). Unknown keys are refused,
//! so a typo does not silently inject the default.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::manifest::{describe, inject_object};
use super::Config;
use crate::settings::Mode;

/// The function config kustomize hands over: `kind: SidemountInjector`.
pub const FUNCTION_CONFIG_KIND: &str = "SidemountInjector";
pub const FUNCTION_CONFIG_API_VERSION: &str = "sidemount.io/v1alpha1";
/// `ResourceList` versions of the KRM functions specification: v1 is current,
/// v1alpha1 is what older kpt and kustomize releases send.
const RESOURCE_LIST_API_VERSIONS: [&str; 2] = ["config.kubernetes.io/v1", "config.kubernetes.io/v1alpha1"];
const RESOURCE_LIST_KIND: &str = "ResourceList";
/// Where kustomize and kpt record an item's file in its annotations (current, then older keys).
const PATH_ANNOTATIONS: [&str; 2] = ["internal.config.kubernetes.io/path", "config.kubernetes.io/path"];
const INDEX_ANNOTATIONS: [&str; 2] = ["internal.config.kubernetes.io/index", "config.kubernetes.io/index"];

/// What a function config or the command line may set; `None` leaves the
/// setting (from `SIDEMOUNT_*` or the default) as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub image: Option<String>,
    pub mode: Option<Mode>,
    pub shutdown_timeout: Option<Duration>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(image) = &self.image {
            config.image = image.clone();
        }
        if let Some(mode) = self.mode {
            config.mode = mode;
        }
        if let Some(timeout) = self.shutdown_timeout {
            config.shutdown_timeout = timeout;
        }
    }
}

/// Why a function config cannot be used: each message names the field.
#[derive(Debug, thiserror::Error)]
pub enum FunctionConfigError {
    #[error("the function config {0}")]
    Parse(#[source] crate::yaml::YamlError),
    #[error("kind: {found:?}: sidemount reads a {FUNCTION_CONFIG_KIND} (apiVersion {FUNCTION_CONFIG_API_VERSION}) with spec {{image, mode, shutdownTimeout}}, or a ConfigMap with those keys in data")]
    Kind { found: String },
    #[error("apiVersion: {found:?}: a {FUNCTION_CONFIG_KIND} is {FUNCTION_CONFIG_API_VERSION}")]
    ApiVersion { found: String },
    #[error("{field}: must be a map")]
    NotMap { field: String },
    #[error("{field}: unknown field: the known ones are image, mode and shutdownTimeout")]
    UnknownField { field: String },
    #[error("{field}: must be a non-empty string")]
    NotText { field: String },
    #[error("{field}: {value:?} is not a mode: use native (Kubernetes 1.29 and later) or legacy")]
    Mode { field: String, value: String },
    #[error("{field}: {value:?} is not a duration from {}: write e.g. 20s or 1m", crate::settings::SHUTDOWN_TIMEOUT)]
    Duration { field: String, value: String },
}

/// Reads a function config from its YAML text (the file kustomize names).
pub fn parse_function_config(text: &str) -> Result<Overrides, FunctionConfigError> {
    let value = crate::yaml::parse(text, &super::manifest::MANIFEST_LIMITS).map_err(FunctionConfigError::Parse)?;
    read_function_config(&value)
}

/// Reads a function config; an absent one (`null`) sets nothing.
pub fn read_function_config(value: &Value) -> Result<Overrides, FunctionConfigError> {
    if value.is_null() {
        return Ok(Overrides::default());
    }
    let text = |pointer: &str| value.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
    let (section, fields) = match text("/kind") {
        FUNCTION_CONFIG_KIND => {
            if text("/apiVersion") != FUNCTION_CONFIG_API_VERSION {
                return Err(FunctionConfigError::ApiVersion { found: text("/apiVersion").into() });
            }
            ("spec", value.get("spec"))
        }
        "ConfigMap" => ("data", value.get("data")),
        other => return Err(FunctionConfigError::Kind { found: other.into() }),
    };
    let fields = match fields {
        None | Some(Value::Null) => return Ok(Overrides::default()),
        Some(Value::Object(fields)) => fields,
        Some(_) => return Err(FunctionConfigError::NotMap { field: section.into() }),
    };
    let mut overrides = Overrides::default();
    for (key, value) in fields {
        let field = format!("{section}.{key}");
        let Some(text) = value.as_str().filter(|t| !t.trim().is_empty()) else {
            return Err(FunctionConfigError::NotText { field });
        };
        match key.as_str() {
            "image" => overrides.image = Some(text.trim().to_string()),
            "mode" => {
                overrides.mode = Some(match text {
                    "native" => Mode::Native,
                    "legacy" => Mode::Legacy,
                    _ => return Err(FunctionConfigError::Mode { field, value: text.into() }),
                })
            }
            "shutdownTimeout" => {
                let timeout = humantime::parse_duration(text)
                    .ok()
                    .filter(|t| crate::settings::SHUTDOWN_TIMEOUT.contains(*t))
                    .ok_or_else(|| FunctionConfigError::Duration { field, value: text.into() })?;
                overrides.shutdown_timeout = Some(timeout);
            }
            _ => return Err(FunctionConfigError::UnknownField { field }),
        }
    }
    Ok(overrides)
}

/// The `ResourceList` that `text` holds, if it is one: a KRM function's input.
pub fn resource_list(text: &str) -> Option<Value> {
    // Cheap test first: a plain stream (often many documents) is never parsed twice.
    if !text.contains(RESOURCE_LIST_KIND) {
        return None;
    }
    let value = crate::yaml::parse(text, &super::manifest::MANIFEST_LIMITS).ok()?;
    let api_version = value.get("apiVersion").and_then(Value::as_str)?;
    (value.get("kind").and_then(Value::as_str) == Some(RESOURCE_LIST_KIND)
        && RESOURCE_LIST_API_VERSIONS.contains(&api_version))
    .then_some(value)
}

/// A `ResourceList`, processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// The list to write back: injected items, and `results` when there is anything to say.
    pub output: String,
    /// How many items were injected.
    pub injected: usize,
    /// One line per problem, each naming its item; not empty means the function failed.
    pub errors: Vec<String>,
    /// What was dropped on the way, each naming its item.
    pub warnings: Vec<String>,
}

/// Injects every item of a `ResourceList` that asks for sidemount.
///
/// The settings are `base` (`SIDEMOUNT_*` and the defaults), then the list's
/// `functionConfig`, then `flags` (the command line). When anything is wrong —
/// the function config, any item — no item is changed: the list goes back as it
/// came, with a `results` entry of severity `error` for each problem, as the KRM
/// functions specification asks of a failing function.
pub fn process(mut list: Value, base: &Config, flags: &Overrides) -> Result<Processed, serde_yaml_ng::Error> {
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut config = base.clone();
    match read_function_config(list.get("functionConfig").unwrap_or(&Value::Null)) {
        Ok(overrides) => overrides.apply(&mut config),
        Err(err) => {
            let message = format!("functionConfig.{err}");
            results.push(json!({ "message": message, "severity": "error", "field": { "path": field_of(&err) } }));
            errors.push(message);
        }
    }
    flags.apply(&mut config);

    let items = match list.get("items") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => {
            let message = "items: must be a list of objects".to_string();
            results.push(json!({ "message": message, "severity": "error", "field": { "path": "items" } }));
            errors.push(message);
            Vec::new()
        }
    };
    let mut injected_items = Vec::with_capacity(items.len());
    let mut injected = 0;
    for (index, item) in items.iter().enumerate() {
        match inject_object(item, &config) {
            Ok(None) => injected_items.push(item.clone()),
            Ok(Some((object, found))) => {
                injected += 1;
                for warning in found {
                    warnings.push(format!("{} (item {index}): {warning}", describe(item)));
                    results.push(result(item, "warning", &warning));
                }
                injected_items.push(object);
            }
            Err((name, err)) => {
                for line in err.to_string().lines() {
                    errors.push(format!("{name} (item {index}): {line}"));
                    results.push(result(item, "error", line));
                }
                injected_items.push(item.clone());
            }
        }
    }

    let list_map = list.as_object_mut().expect("resource_list() returns a map");
    if errors.is_empty() {
        if list_map.contains_key("items") {
            list_map.insert("items".into(), Value::Array(injected_items));
        }
    } else {
        injected = 0;
    }
    // The results of this function only: an earlier function's were already reported.
    list_map.remove("results");
    if !results.is_empty() {
        list_map.insert("results".into(), Value::Array(results));
    }
    let output = serde_yaml_ng::to_string(&list)?;
    Ok(Processed { output, injected, errors, warnings })
}

/// A KRM `ResultItem` about one item: its `resourceRef` and, where the
/// orchestrator recorded it, the file it came from.
fn result(item: &Value, severity: &str, message: &str) -> Value {
    let mut reference = Map::new();
    for (key, pointer) in [
        ("apiVersion", "/apiVersion"),
        ("kind", "/kind"),
        ("name", "/metadata/name"),
        ("namespace", "/metadata/namespace"),
    ] {
        if let Some(text) = item.pointer(pointer).and_then(Value::as_str).filter(|t| !t.is_empty()) {
            reference.insert(key.into(), json!(text));
        }
    }
    let mut result = Map::new();
    result.insert("message".into(), json!(message));
    result.insert("severity".into(), json!(severity));
    result.insert("resourceRef".into(), Value::Object(reference));
    let annotation = |keys: &[&str]| {
        let annotations = item.pointer("/metadata/annotations")?;
        keys.iter().find_map(|key| annotations.get(*key).and_then(Value::as_str))
    };
    if let Some(path) = annotation(&PATH_ANNOTATIONS) {
        let mut file = Map::new();
        file.insert("path".into(), json!(path));
        if let Some(index) = annotation(&INDEX_ANNOTATIONS).and_then(|i| i.parse::<u64>().ok()) {
            file.insert("index".into(), json!(index));
        }
        result.insert("file".into(), Value::Object(file));
    }
    Value::Object(result)
}

/// The functionConfig field a problem is about, for the result's `field.path`.
fn field_of(err: &FunctionConfigError) -> String {
    let field = match err {
        FunctionConfigError::Parse(_) => "",
        FunctionConfigError::Kind { .. } => "kind",
        FunctionConfigError::ApiVersion { .. } => "apiVersion",
        FunctionConfigError::NotMap { field }
        | FunctionConfigError::UnknownField { field }
        | FunctionConfigError::NotText { field }
        | FunctionConfigError::Mode { field, .. }
        | FunctionConfigError::Duration { field, .. } => field,
    };
    if field.is_empty() {
        "functionConfig".into()
    } else {
        format!("functionConfig.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config {
            image: "example.org/sidemount:base".into(),
            mode: Mode::Native,
            shutdown_timeout: Duration::from_secs(20),
        }
    }

    const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"ns","annotations":{"sidemount.io/volumes":"- {name: d, type: zfs, dataset: p/d}","internal.config.kubernetes.io/path":"pods/p.yaml","internal.config.kubernetes.io/index":"0"}},"spec":{"containers":[{"name":"app","image":"x","volumeMounts":[{"name":"d","mountPath":"/d"}]}]}}"#;

    fn list(items: &str, function_config: &str) -> String {
        format!(
            "apiVersion: config.kubernetes.io/v1\nkind: ResourceList\nitems: [{items}]\nfunctionConfig: {function_config}\n"
        )
    }

    fn run(text: &str, flags: &Overrides) -> (Value, Processed) {
        let list = resource_list(text).expect("a ResourceList");
        let processed = process(list, &base(), flags).unwrap();
        let value: Value = serde_yaml_ng::from_str(&processed.output).unwrap();
        (value, processed)
    }

    #[test]
    fn recognises_only_resource_lists() {
        assert!(resource_list(&list("", "null")).is_some());
        assert!(resource_list(&list("", "null").replace("/v1", "/v1alpha1")).is_some());
        assert!(resource_list("apiVersion: v1\nkind: ResourceList\n").is_none(), "not the KRM group");
        assert!(resource_list("kind: ConfigMap\ndata: {a: ResourceList}\n").is_none());
        assert!(resource_list("kind: Pod\n---\nkind: ResourceList\n").is_none(), "a stream is a stream");
    }

    #[test]
    fn injects_items_and_keeps_the_rest_of_the_list() {
        let config = "{apiVersion: sidemount.io/v1alpha1, kind: SidemountInjector, metadata: {name: s}, spec: {image: example.org/sm:fc}}";
        let (out, processed) =
            run(&list(&format!("{POD}, {{kind: ConfigMap, metadata: {{name: c}}}}"), config), &Overrides::default());
        assert_eq!(processed.injected, 1);
        assert!(processed.errors.is_empty(), "{:?}", processed.errors);
        let pod = &out["items"][0];
        assert_eq!(pod["spec"]["initContainers"][0]["image"], "example.org/sm:fc", "functionConfig sets the image");
        assert_eq!(pod["spec"]["containers"][0]["volumeMounts"][0]["mountPropagation"], "HostToContainer");
        assert_eq!(pod["metadata"]["annotations"]["internal.config.kubernetes.io/path"], "pods/p.yaml");
        assert_eq!(out["items"][1], json!({ "kind": "ConfigMap", "metadata": { "name": "c" } }));
        assert_eq!(out["functionConfig"]["spec"]["image"], "example.org/sm:fc", "functionConfig is written back");
        assert!(out.get("results").is_none());
        assert_eq!(out["apiVersion"], "config.kubernetes.io/v1");

        // The very same pod as `sidemount inject` gives for a stream.
        let mut config = base();
        config.image = "example.org/sm:fc".into();
        let stream: Value = serde_json::from_str(POD).unwrap();
        let (expected, _) = inject_object(&stream, &config).unwrap().unwrap();
        assert_eq!(pod, &expected);

        // Its own output: nothing changes.
        let (again, processed) = run(&processed.output, &Overrides::default());
        assert_eq!(processed.injected, 0);
        assert_eq!(again, out);
    }

    #[test]
    fn settings_come_from_base_then_function_config_then_flags() {
        let config =
            "{apiVersion: v1, kind: ConfigMap, metadata: {name: c}, data: {mode: legacy, shutdownTimeout: 1m}}";
        let (out, _) = run(&list(POD, config), &Overrides::default());
        let pod = &out["items"][0];
        assert_eq!(pod["spec"]["containers"][0]["name"], "sidemount", "legacy from the ConfigMap");
        assert_eq!(pod["spec"]["containers"][0]["image"], "example.org/sidemount:base", "image from the base");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 70);

        let flags =
            Overrides { image: Some("example.org/sm:flag".into()), mode: Some(Mode::Native), ..Default::default() };
        let (out, _) = run(&list(POD, config), &flags);
        let sidecar = &out["items"][0]["spec"]["initContainers"][0];
        assert_eq!(sidecar["image"], "example.org/sm:flag");
        assert_eq!(sidecar["env"][1], json!({ "name": "SIDEMOUNT_SHUTDOWN_TIMEOUT", "value": "1m" }));
    }

    #[test]
    fn an_invalid_item_fails_the_function_with_results_naming_it() {
        let bad = POD.replace("dataset: p/d", "dataset: ''");
        let (out, processed) = run(&list(&format!("{POD}, {bad}"), "null"), &Overrides::default());
        assert_eq!(processed.injected, 0);
        assert_eq!(processed.errors.len(), 1, "{:?}", processed.errors);
        assert!(
            processed.errors[0].starts_with("Pod ns/p (item 1): sidemount.io/volumes: volumes[0].dataset"),
            "{:?}",
            processed.errors
        );
        // Nothing is changed when the function fails.
        assert_eq!(out["items"][0], serde_json::from_str::<Value>(POD).unwrap());
        let result = &out["results"][0];
        assert_eq!(result["severity"], "error");
        assert_eq!(result["resourceRef"], json!({ "apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": "ns" }));
        assert_eq!(result["file"], json!({ "path": "pods/p.yaml", "index": 0 }));
        assert!(result["message"].as_str().unwrap().contains("volumes[0].dataset"), "{result}");
    }

    #[test]
    fn an_invalid_function_config_names_the_field() {
        let cases = [
            (
                "{apiVersion: sidemount.io/v1alpha1, kind: SidemountInjector, spec: {imgae: x}}",
                "functionConfig.spec.imgae: unknown field",
            ),
            (
                "{apiVersion: sidemount.io/v1alpha1, kind: SidemountInjector, spec: {mode: sidecar}}",
                "functionConfig.spec.mode: \"sidecar\" is not a mode",
            ),
            (
                "{apiVersion: v1, kind: ConfigMap, data: {shutdownTimeout: 0s}}",
                "functionConfig.data.shutdownTimeout: \"0s\" is not a duration",
            ),
            (
                // Would overflow the grace period it sets (and abort) if it were taken.
                "{apiVersion: v1, kind: ConfigMap, data: {shutdownTimeout: 18446744073709551615s}}",
                "functionConfig.data.shutdownTimeout: \"18446744073709551615s\" is not a duration from 1s to 1h",
            ),
            (
                "{apiVersion: v1, kind: ConfigMap, data: {image: ''}}",
                "functionConfig.data.image: must be a non-empty string",
            ),
            ("{apiVersion: example.org/v1, kind: SidemountInjector}", "functionConfig.apiVersion: \"example.org/v1\""),
            ("{apiVersion: v1, kind: Secret}", "functionConfig.kind: \"Secret\""),
            (
                "{apiVersion: sidemount.io/v1alpha1, kind: SidemountInjector, spec: [image]}",
                "functionConfig.spec: must be a map",
            ),
        ];
        for (config, expected) in cases {
            let (out, processed) = run(&list(POD, config), &Overrides::default());
            assert_eq!(processed.errors.len(), 1, "{config}: {:?}", processed.errors);
            assert!(processed.errors[0].starts_with(expected), "{config}: {:?}", processed.errors);
            assert_eq!(out["results"][0]["severity"], "error");
            assert!(out["items"][0]["spec"].get("initContainers").is_none(), "{config}: nothing injected");
        }
    }

    #[test]
    fn reads_the_kustomize_plugin_config_file() {
        let text = "apiVersion: sidemount.io/v1alpha1\nkind: SidemountInjector\nmetadata:\n  name: sidemount\n  annotations:\n    config.kubernetes.io/local-config: \"true\"\nspec:\n  image: example.org/sm:1\n  mode: native\n";
        assert_eq!(
            parse_function_config(text).unwrap(),
            Overrides { image: Some("example.org/sm:1".into()), mode: Some(Mode::Native), shutdown_timeout: None }
        );
        assert_eq!(
            parse_function_config("apiVersion: sidemount.io/v1alpha1\nkind: SidemountInjector\n").unwrap(),
            Overrides::default()
        );
        assert!(matches!(parse_function_config("kind: [").unwrap_err(), FunctionConfigError::Parse(_)));
    }

    #[test]
    fn an_empty_list_is_fine() {
        let (out, processed) =
            run("apiVersion: config.kubernetes.io/v1\nkind: ResourceList\nitems: []\n", &Overrides::default());
        assert_eq!(processed.injected, 0);
        assert!(processed.errors.is_empty());
        assert_eq!(out["items"], json!([]));
        let (_, processed) =
            run("apiVersion: config.kubernetes.io/v1\nkind: ResourceList\nitems: {}\n", &Overrides::default());
        assert_eq!(processed.errors, ["items: must be a list of objects"]);
    }
}
