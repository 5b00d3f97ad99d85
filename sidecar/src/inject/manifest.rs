//! Kubernetes YAML streams for `sidemount inject`: every object whose pod (or
//! pod template) asks for sidemount is injected; every other document is
//! written back byte for byte, so running it on its own output changes nothing.

use std::fmt;

use serde_json::Value;

use super::{inject, Config, InjectError, Outcome};
use crate::yaml::{self, YamlError};

/// The deepest nesting of a Kubernetes object: serde_yaml_ng's own recursion
/// limit, so no document it could read is refused. libyaml's cost grows with the
/// flow nesting, so bounding it before the parse keeps that cost linear: about
/// 1 µs a byte at this depth, against 28 s for 100 KB nested 50 000 deep.
pub const MAX_MANIFEST_DEPTH: usize = 128;
/// The most values one document may expand to, YAML aliases included: an object
/// the API server stores (at most 1.5 MiB in etcd) holds fewer.
pub const MAX_MANIFEST_VALUES: usize = 1 << 20;
/// What one document of a stream may cost. Its size is not bounded: the stream is
/// the user's own, and with the nesting bounded the parse is linear.
pub const MANIFEST_LIMITS: yaml::Limits = yaml::Limits {
    max_bytes: None,
    max_depth: MAX_MANIFEST_DEPTH,
    max_brackets: None,
    max_values: MAX_MANIFEST_VALUES,
    // As kubectl reads YAML: the last of a doubled key counts.
    unique_keys: false,
};

/// Where each kind keeps its pod: a JSON pointer to the object holding
/// `metadata` and `spec`.
fn template_of(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// The stream, injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub output: String,
    /// How many objects were injected.
    pub injected: usize,
    /// What was dropped on the way, each naming its object.
    pub warnings: Vec<String>,
}

/// Why a stream cannot be injected: one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {document} {source}")]
    Parse { document: usize, source: YamlError },
    /// Every object that cannot be injected, each with its reasons.
    #[error("{}", ObjectErrors(.0))]
    Invalid(Vec<ObjectError>),
    #[error("document {document} ({object}): cannot write it as YAML: {source}")]
    Write { document: usize, object: String, source: serde_yaml_ng::Error },
}

/// One object that cannot be injected.
#[derive(Debug, thiserror::Error)]
pub struct ObjectError {
    /// The document's number in the stream, from 1.
    pub document: usize,
    /// `Kind namespace/name`.
    pub object: String,
    pub source: InjectError,
}

impl fmt::Display for ObjectError {
    /// One line per problem, each naming the object: `Deployment shop/web: sidemount.io/volumes: volumes[0].type: …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.source.to_string().lines().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{} (document {}): {line}", self.object, self.document)?;
        }
        Ok(())
    }
}

struct ObjectErrors<'a>(&'a [ObjectError]);

impl fmt::Display for ObjectErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Injects every object of a YAML stream that asks for sidemount.
pub fn inject_stream(text: &str, config: &Config) -> Result<Injected, ManifestError> {
    let mut output = String::with_capacity(text.len() * 2);
    let mut injected = 0;
    let mut warnings = Vec::new();
    let mut invalid = Vec::new();
    // A byte order mark may open the stream; libyaml would take a `---` after it for text.
    let text = text.strip_prefix(yaml::BOM).unwrap_or(text);
    for (index, document) in split(text).into_iter().enumerate() {
        let number = index + 1;
        if !has_content(document.body) {
            output.push_str(document.separator);
            output.push_str(document.body);
            continue;
        }
        let object: Value = yaml::parse(document.body, &MANIFEST_LIMITS)
            .map_err(|source| ManifestError::Parse { document: number, source })?;
        match inject_object(&object, config) {
            Ok(None) => {
                output.push_str(document.separator);
                output.push_str(document.body);
            }
            Ok(Some((object, found))) => {
                let name = describe(&object);
                let yaml = serde_yaml_ng::to_string(&object).map_err(|source| ManifestError::Write {
                    document: number,
                    object: name.clone(),
                    source,
                })?;
                if !document.separator.is_empty() || !output.is_empty() {
                    output.push_str("---\n");
                }
                output.push_str(&yaml);
                injected += 1;
                warnings.extend(found.into_iter().map(|w| format!("{name} (document {number}): {w}")));
            }
            Err((object, source)) => invalid.push(ObjectError { document: number, object, source }),
        }
    }
    if !invalid.is_empty() {
        return Err(ManifestError::Invalid(invalid));
    }
    Ok(Injected { output, injected, warnings })
}

/// Injects one object (a `List`'s items one by one): `None` when nothing changed.
#[allow(clippy::type_complexity)]
pub(super) fn inject_object(
    object: &Value,
    config: &Config,
) -> Result<Option<(Value, Vec<String>)>, (String, InjectError)> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind == "List" {
        let Some(items) = object.get("items").and_then(Value::as_array) else { return Ok(None) };
        let mut changed = None;
        let mut warnings = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_changed =
                inject_object(item, config).map_err(|(name, e)| (format!("List item {i}, {name}"), e))?;
            if let Some((item, found)) = item_changed {
                changed.get_or_insert_with(|| object.clone())["items"][i] = item;
                warnings.extend(found);
            }
        }
        return Ok(changed.map(|object| (object, warnings)));
    }
    let Some(pointer) = template_of(kind) else { return Ok(None) };
    let Some(template) = object.pointer(pointer) else { return Ok(None) };
    match inject(template, config) {
        Ok(Outcome::Injected { pod, warnings }) => {
            let mut object = object.clone();
            *object.pointer_mut(pointer).expect("the template was found above") = pod;
            Ok(Some((object, warnings)))
        }
        Ok(Outcome::NotRequested | Outcome::AlreadyInjected) => Ok(None),
        Err(e) => Err((describe(object), e)),
    }
}

/// `Kind namespace/name`, as `kubectl` names objects.
pub(super) fn describe(object: &Value) -> String {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty());
    let kind = text("/kind").unwrap_or("object");
    let name = match (text("/metadata/name"), text("/metadata/generateName")) {
        (Some(name), _) => name.to_string(),
        (None, Some(prefix)) => format!("{prefix}*"),
        (None, None) => "(unnamed)".to_string(),
    };
    match text("/metadata/namespace") {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// One document of a stream: the `---` line that opened it (empty for a first
/// document without one), with the directives before it (`%YAML 1.2`), and its text.
#[derive(Debug, PartialEq, Eq)]
struct Document<'a> {
    separator: &'a str,
    body: &'a str,
}

/// Splits a stream at its `---` lines. A `---` at the start of a line always
/// opens a document: block scalars are indented, so it cannot be content. The
/// directive lines right before a `---` belong to the document it opens.
fn split(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut separator = "";
    let mut start = 0;
    let mut offset = 0;
    // Where the directives before the next `---` begin, if only comments and blank lines followed them.
    let mut directives: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        // A byte order mark may open each document of a stream.
        let rest = line.strip_prefix(yaml::BOM).unwrap_or(line).strip_prefix("---");
        if rest.is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace)) {
            let cut = directives.take().unwrap_or(offset);
            if cut > 0 || !separator.is_empty() {
                documents.push(Document { separator, body: &text[start..cut] });
            }
            separator = &text[cut..offset + line.len()];
            start = offset + line.len();
        } else if line.starts_with('%') {
            directives.get_or_insert(offset);
        } else if has_content(line) {
            directives = None;
        }
        offset += line.len();
    }
    if start < text.len() || !separator.is_empty() {
        documents.push(Document { separator, body: &text[start..] });
    }
    documents
}

/// Whether a document holds anything but blank lines and comments.
fn has_content(body: &str) -> bool {
    body.lines().any(|line| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with('#') && line != "..."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::for_tests()
    }

    #[test]
    fn splits_at_separator_lines_only() {
        let text = "# header\n---\na: 1\n--- # two\nb: |\n  ---\n  x\n---\n";
        let docs = split(text);
        assert_eq!(
            docs,
            [
                Document { separator: "", body: "# header\n" },
                Document { separator: "---\n", body: "a: 1\n" },
                Document { separator: "--- # two\n", body: "b: |\n  ---\n  x\n" },
                Document { separator: "---\n", body: "" },
            ]
        );
        let joined: String = docs.iter().map(|d| format!("{}{}", d.separator, d.body)).collect();
        assert_eq!(joined, text);
        assert_eq!(split("a: 1"), [Document { separator: "", body: "a: 1" }]);
        assert!(split("").is_empty());
        assert_eq!(split("----\n"), [Document { separator: "", body: "----\n" }]);
    }

    #[test]
    fn passes_other_documents_through_byte_for_byte() {
        let text =
            "---\n# a config map\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  x: 'on'   # quoted\n";
        let out = inject_stream(text, &config()).unwrap();
        assert_eq!(out.output, text);
        assert_eq!(out.injected, 0);
    }

    #[test]
    fn injects_every_workload_kind() {
        let annotations = "annotations:\n        sidemount.io/volumes: '- {name: d, type: zfs, dataset: p/d}'";
        let template = format!(
            "template:\n    metadata:\n      {annotations}\n    spec:\n      containers: [{{name: app, image: x}}]"
        );
        let mut text = String::new();
        for kind in ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"] {
            text.push_str(&format!("---\nkind: {kind}\nmetadata: {{name: w}}\nspec:\n  {template}\n"));
        }
        text.push_str(&format!(
            "---\nkind: CronJob\nmetadata: {{name: c}}\nspec:\n  jobTemplate:\n    spec:\n      {}\n",
            template.replace("\n", "\n    ")
        ));
        let out = inject_stream(&text, &config()).unwrap();
        assert_eq!(out.injected, 6);
        assert_eq!(out.output.matches("sidemount.io/injected").count(), 6);
        assert_eq!(inject_stream(&out.output, &config()).unwrap().output, out.output);
    }

    #[test]
    fn injects_list_items() {
        let text = r#"{"kind":"List","items":[{"kind":"ConfigMap"},{"kind":"Pod","metadata":{"name":"p","annotations":{"sidemount.io/volumes":"- {name: d, type: zfs, dataset: p/d}"}},"spec":{"containers":[]}}]}"#;
        let out = inject_stream(text, &config()).unwrap();
        let value: Value = serde_yaml_ng::from_str(&out.output).unwrap();
        assert_eq!(value["items"][1]["spec"]["initContainers"][0]["name"], "sidemount");
        assert_eq!(value["items"][0], serde_json::json!({ "kind": "ConfigMap" }));
    }

    #[test]
    fn reports_every_invalid_object() {
        let bad = |name: &str| {
            format!("---\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: ns\n  annotations:\n    sidemount.io/volumes: '- {{name: d, type: objectivefs}}'\nspec:\n  containers: []\n")
        };
        let err = inject_stream(&format!("{}{}", bad("a"), bad("b")), &config()).unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(
            lines[0].starts_with("Pod ns/a (document 1): sidemount.io/volumes: volumes[0].filesystem: required"),
            "{err}"
        );
        assert!(lines[1].starts_with("Pod ns/b (document 2): "), "{err}");
        assert!(matches!(inject_stream("a: [", &config()), Err(ManifestError::Parse { document: 1, .. })));
    }

    const POD: &str = "kind: Pod\nmetadata:\n  name: p\n  annotations:\n    sidemount.io/volumes: '- {name: d, type: zfs, dataset: p/d}'\nspec:\n  containers: [{name: app, image: x}]\n";

    #[test]
    fn reads_a_byte_order_mark_and_directives() {
        for text in [
            format!("\u{feff}{POD}"),
            format!("\u{feff}---\n{POD}"),
            format!("%YAML 1.2\n---\n{POD}"),
            format!("# made by a tool\n%YAML 1.2\n%TAG !k! tag:k8s.io,2024:\n# the pod\n---\n{POD}"),
            format!("{POD}---\n\u{feff}{POD}"),
            format!("{POD}...\n%YAML 1.2\n---\n{POD}"),
        ] {
            let out = inject_stream(&text, &config()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(out.injected, text.matches("kind: Pod").count(), "{text:?}");
            assert_eq!(inject_stream(&out.output, &config()).unwrap().output, out.output, "{text:?}");
        }
        // A document left alone keeps its directives.
        let text = "%YAML 1.2\n---\nkind: ConfigMap\n";
        assert_eq!(inject_stream(text, &config()).unwrap().output, text);
    }

    #[test]
    fn refuses_a_document_nested_past_the_limit_before_parsing_it() {
        let deep = format!("kind: ConfigMap\ndata: {}\n", "[".repeat(50_000));
        let started = crate::sys::ThreadCpuTime::now();
        let err = inject_stream(&deep, &config()).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(err.to_string().contains("more than 128 levels deep"), "{err}");
        let ok = format!("kind: ConfigMap\ndata: {{a: {}{}}}\n", "[".repeat(100), "]".repeat(100));
        inject_stream(&ok, &config()).unwrap();
    }
}
