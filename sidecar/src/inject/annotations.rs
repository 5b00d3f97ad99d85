//! The `sidemount.io/*` annotations of a pod: read as text, and the volumes
//! annotation parsed (each text once, see [`parse_annotation`]) and checked
//! against the pod.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Map, Value};

use super::{
    flexvolume, lookup, malformed, member, name_of, InjectError, CONVERT_FLEXVOLUME_ANNOTATION, INJECT_LABEL,
    SECRETS_ROOT, VOLUMES_ANNOTATION,
};
use crate::spec::{self, Invalid, Problem, RawVolume};

/// `sidemount.io/inject: "true"` on the pod (template): the webhook's objectSelector.
pub(super) fn has_inject_label(template: &Value) -> bool {
    field(template, "metadata", "labels").and_then(|labels| member(labels, INJECT_LABEL)).and_then(Value::as_str)
        == Some("true")
}

/// A FlexVolume of the `altalang/ofs` driver among the pod's volumes.
pub(super) fn has_driver_flexvolume(template: &Value) -> bool {
    let volumes = field(template, "spec", "volumes").and_then(Value::as_array);
    volumes
        .into_iter()
        .flatten()
        .any(|v| field(v, "flexVolume", "driver").and_then(Value::as_str) == Some(flexvolume::DRIVER))
}

/// `value[outer][inner]`, for objects: what `Value::pointer` finds, without
/// the two strings it makes of each of its tokens.
pub(super) fn field<'a>(value: &'a Value, outer: &str, inner: &str) -> Option<&'a Value> {
    member(member(value, outer)?, inner)
}

/// The annotations of a pod template, read as text.
pub(super) struct Annotations<'a>(Option<&'a Map<String, Value>>);

impl<'a> Annotations<'a> {
    pub(super) fn of(template: &'a Value) -> Result<Annotations<'a>, InjectError> {
        match field(template, "metadata", "annotations") {
            None | Some(Value::Null) => Ok(Annotations(None)),
            Some(Value::Object(map)) => Ok(Annotations(Some(map))),
            Some(_) => Err(malformed("metadata.annotations", "a map of strings")),
        }
    }

    pub(super) fn get(&self, name: &str) -> Result<Option<&'a str>, InjectError> {
        match self.0.and_then(|map| lookup(map, name)) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(InjectError::AnnotationNotText { annotation: name.into() }),
        }
    }
}

/// The volumes of the annotation, validated by the one spec definition, plus
/// what injection adds: a served pod volume must be an emptyDir, and
/// `secretName` stands in for `secretDir`.
pub(super) fn annotation_volumes(
    text: &str,
    pod_volumes: &[Value],
    problems: &mut Vec<Problem>,
) -> Vec<(usize, RawVolume)> {
    let parsed = parse_annotation(text);
    let raws = match &*parsed {
        Ok(raws) => raws,
        Err(Invalid(found)) => {
            problems.extend(found.iter().cloned());
            return Vec::new();
        }
    };
    let mut accepted = Vec::with_capacity(raws.len());
    for (i, Checked { raw, valid }) in raws.iter().enumerate() {
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                origin: VOLUMES_ANNOTATION.into(),
                field: format!("volumes[{i}].{field}"),
                message,
            })
        };
        let name = match valid {
            Ok(name) => name,
            Err(found) => {
                found.iter().for_each(|(field, message)| problem(field, message.clone()));
                continue;
            }
        };
        if raw.secret_name.is_some() && raw.secret_dir.is_some() {
            problem(
                "secretDir",
                format!(
                    "give secretName or secretDir, not both: the Secret of secretName is mounted at {SECRETS_ROOT}/{}",
                    name
                ),
            );
            continue;
        }
        if let Some((j, existing)) = pod_volumes.iter().enumerate().find(|(_, v)| name_of(v) == Some(name.as_str())) {
            if member(existing, "emptyDir").is_none() {
                problem(
                    "name",
                    format!(
                        "the pod volume {:?} (spec.volumes[{j}]) is a {} volume, but sidemount serves it from a directory of \
                         its own emptyDir: make it `emptyDir: {{}}` or remove it (injection replaces it)",
                        name,
                        volume_source(existing)
                    ),
                );
                continue;
            }
        }
        accepted.push((i, raw.clone()));
    }
    accepted
}

/// The annotation texts parsed so far, and what they parsed to. Every pod of a
/// workload carries its template's annotation, so the webhook meets each text
/// again for each replica, and parsing the YAML is about a fifth of a review.
/// Each volume is kept checked (`spec::validate`), which depends on it alone:
/// a repeat is neither parsed nor checked again, and is shared, not copied.
/// Bounded by what it holds, not only by how many texts: at most 64 texts of up
/// to 1 KiB each, cleared when full; only texts whose every volume is valid, and
/// never a text with an alias (`*`). An alias repeats what its anchor holds, so
/// a text of 4 KiB can stand for 64 Ki values (the spec's limit): kept, 300 such
/// texts held 290 MiB, which anyone allowed to create a labelled pod could send,
/// denied or not. A denial's messages can be a hundred times its text (one per
/// option, each naming the fix). Without an alias a text holds at most a value
/// for every two bytes. A text not kept is parsed each time, as before.
pub(super) static PARSED: LazyLock<Mutex<HashMap<String, Arc<Parsed>>>> = LazyLock::new(Default::default);
pub(super) type Parsed = Result<Vec<Checked>, Invalid>;
pub(super) const PARSED_ENTRIES: usize = 64;
pub(super) const PARSED_TEXT_BYTES: usize = 1024;

/// A volume of the annotation, and its name once `spec::validate` found it
/// valid, or the problems it found, each as a field and a message.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Checked {
    pub(super) raw: RawVolume,
    pub(super) valid: Result<String, Vec<(String, String)>>,
}

pub(super) fn parse_annotation(text: &str) -> Arc<Parsed> {
    let cache = || PARSED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(parsed) = cache().get(text) {
        return Arc::clone(parsed);
    }
    let parsed = spec::parse_raw(VOLUMES_ANNOTATION, text).map(|raws| {
        raws.into_iter()
            .map(|raw| Checked { valid: spec::validate(&raw).map(|volume| volume.name), raw })
            .collect::<Vec<_>>()
    });
    let parsed = Arc::new(parsed);
    if kept(text, &parsed) {
        let mut cache = cache();
        if cache.len() >= PARSED_ENTRIES {
            cache.clear();
        }
        cache.insert(text.to_owned(), Arc::clone(&parsed));
    }
    parsed
}

/// Whether a text and what it parsed to are kept (see [`PARSED`]).
fn kept(text: &str, parsed: &Parsed) -> bool {
    let all_valid = parsed.as_ref().is_ok_and(|volumes| volumes.iter().all(|v| v.valid.is_ok()));
    text.len() <= PARSED_TEXT_BYTES && !text.contains('*') && all_valid
}

/// Volume names are unique across the annotation and the converted FlexVolumes.
pub(super) fn check_unique(
    requested: &[(usize, RawVolume)],
    converted: &[flexvolume::Converted],
    problems: &mut Vec<Problem>,
) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, raw) in requested {
        let name = raw.name.as_deref().unwrap_or_default();
        if let Some(first) = seen.insert(name, *i) {
            seen.insert(name, first);
            problems.push(Problem {
                origin: VOLUMES_ANNOTATION.into(),
                field: format!("volumes[{i}].name"),
                message: format!(
                    "duplicate volume name {name:?} (already at volumes[{first}]): give each volume its own name"
                ),
            });
        }
    }
    for c in converted {
        let name = c.raw.name.as_deref().unwrap_or_default();
        if let Some(i) = seen.get(name) {
            problems.push(Problem {
                origin: VOLUMES_ANNOTATION.into(),
                field: format!("volumes[{i}].name"),
                message: format!(
                    "{name:?} is also the FlexVolume spec.volumes[{}] that {CONVERT_FLEXVOLUME_ANNOTATION} converts: describe it in one place",
                    c.index
                ),
            });
        }
    }
}

/// What a pod volume is made of, for messages: `hostPath`, `persistentVolumeClaim`…
pub(super) fn volume_source(volume: &Value) -> &str {
    volume.as_object().and_then(|v| v.keys().find(|k| *k != "name")).map_or("source-less", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::tests::{app, config, injected, pod};
    use crate::inject::*;

    #[test]
    fn the_inject_label_alone_converts_flexvolumes() {
        let flex =
            json!({ "name": "v", "flexVolume": { "driver": "altalang/ofs", "options": { "networkPath": "s3://b" } } });
        let with = |labels: Value, annotations: Value| {
            json!({ "metadata": { "name": "p", "labels": labels, "annotations": annotations },
                    "spec": { "containers": [app(json!([{ "name": "v", "mountPath": "/v" }]))], "volumes": [flex.clone()] } })
        };
        let out = injected(inject(&with(json!({ INJECT_LABEL: "true" }), json!({})), &config()).unwrap());
        assert_eq!(out["spec"]["volumes"], json!([root_volume()]));
        assert_eq!(out["spec"]["containers"][0]["volumeMounts"][0]["subPath"], "v");
        // Without the label nothing asks for sidemount; "false" still says no.
        assert_eq!(inject(&with(json!({}), json!({})), &config()).unwrap(), Outcome::NotRequested);
        assert_eq!(
            inject(&with(json!({ INJECT_LABEL: "false" }), Value::Null), &config()).unwrap(),
            Outcome::NotRequested
        );
        let no = with(json!({ INJECT_LABEL: "true" }), json!({ CONVERT_FLEXVOLUME_ANNOTATION: "false" }));
        assert_eq!(inject(&no, &config()).unwrap(), Outcome::NotRequested);
        // A labelled pod with neither the driver's FlexVolume nor volumes asks for nothing, as before.
        let nothing =
            json!({ "metadata": { "name": "p", "labels": { INJECT_LABEL: "true" } }, "spec": { "containers": [] } });
        assert_eq!(inject(&nothing, &config()).unwrap(), Outcome::NotRequested);
        let other = json!({ "metadata": { "name": "p", "labels": { INJECT_LABEL: "true" } },
                            "spec": { "containers": [], "volumes": [{ "name": "n", "flexVolume": { "driver": "other/nfs" } }] } });
        assert_eq!(inject(&other, &config()).unwrap(), Outcome::NotRequested);
    }

    #[test]
    fn a_value_of_the_wrong_kind_in_the_annotation_names_its_field() {
        let bad = "- {name: 123, type: zfs, dataset: p/d, env: {DEBUG: 1}}";
        let err = inject(&pod(json!({ VOLUMES_ANNOTATION: bad }), json!({ "containers": [] })), &config()).unwrap_err();
        let lines: Vec<String> = err.to_string().lines().map(String::from).collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(
            lines[0]
                .starts_with("sidemount.io/volumes: volumes[0].name: must be a string, not the number 123: quote it"),
            "{err}"
        );
        assert!(lines[1].starts_with("sidemount.io/volumes: volumes[0].env.DEBUG: must be a string"), "{err}");
    }

    #[test]
    fn parsed_annotations_are_kept_within_bounds() {
        let text = "- {name: cached, type: fuse, command: [bindfs, /src, \"{mountpoint}\"]}";
        let first = parse_annotation(text);
        let raws = spec::parse_raw(VOLUMES_ANNOTATION, text).unwrap();
        let expected: Vec<Checked> = raws.into_iter().map(|raw| Checked { raw, valid: Ok("cached".into()) }).collect();
        assert_eq!(first.as_ref().as_ref().unwrap(), &expected);
        assert!(Arc::ptr_eq(PARSED.lock().unwrap().get(text).unwrap(), &first), "a parsed text is kept");
        assert!(Arc::ptr_eq(&parse_annotation(text), &first), "a repeat is shared, not parsed again");
        // A kept text is answered from the cache, not parsed again: plant an answer
        // that parsing would not give.
        let planted = "- {name: planted, type: fuse, command: [x]}";
        PARSED.lock().unwrap().insert(planted.to_owned(), Arc::clone(&first));
        assert_eq!(parse_annotation(planted), first);
        // An invalid text, or one whose volume is invalid, gives its error again,
        // and is not kept: its messages can be far larger than its text.
        let bad = "volumes: [oops";
        assert_eq!(*parse_annotation(bad), spec::parse_raw(VOLUMES_ANNOTATION, bad).map(|_| Vec::new()));
        assert_eq!(parse_annotation(bad), parse_annotation(bad));
        let invalid = "- {name: d, type: zfs}";
        let once = parse_annotation(invalid);
        let raw = spec::parse_raw(VOLUMES_ANNOTATION, invalid).unwrap().remove(0);
        assert_eq!(once.as_ref().as_ref().unwrap()[0].valid, Err(spec::validate(&raw).unwrap_err()));
        assert_eq!(parse_annotation(invalid), once);
        assert!(!kept(bad, &parse_annotation(bad)), "a text that is denied is not kept");
        assert!(!kept(invalid, &once), "a text with an invalid volume is not kept");

        for i in 0..PARSED_ENTRIES + 10 {
            parse_annotation(&format!("- {{name: v{i}, type: fuse, command: [x, \"{{mountpoint}}\"]}}"));
        }
        let last = format!("- {{name: v{}, type: fuse, command: [x, \"{{mountpoint}}\"]}}", PARSED_ENTRIES + 9);
        let cache = PARSED.lock().unwrap();
        assert!(cache.len() <= PARSED_ENTRIES && cache.contains_key(&last), "cleared when full, then kept again");
        drop(cache);
        let exact = format!("{:<PARSED_TEXT_BYTES$}", "- {name: exact, type: fuse, command: [x, \"{mountpoint}\"]}");
        parse_annotation(&exact).as_ref().as_ref().unwrap();
        assert!(PARSED.lock().unwrap().contains_key(&exact), "a text of {PARSED_TEXT_BYTES} bytes is kept");
        let long = format!(
            "- {{name: long, type: fuse, command: [x, {:?}, \"{{mountpoint}}\"]}}",
            "a".repeat(PARSED_TEXT_BYTES)
        );
        parse_annotation(&long).as_ref().as_ref().unwrap();
        assert!(!PARSED.lock().unwrap().contains_key(&long), "a text over {PARSED_TEXT_BYTES} bytes is not kept");
        // An alias may stand for far more than its text: never kept, yet read the same.
        let aliased = "- {name: a, type: fuse, command: &c [bindfs, /src, \"{mountpoint}\"]}\n- {name: b, type: fuse, command: *c}";
        let parsed = parse_annotation(aliased);
        assert_eq!(parsed.as_ref().as_ref().unwrap().len(), 2);
        assert_eq!(parsed.as_ref().as_ref().unwrap()[1].raw.command, parsed.as_ref().as_ref().unwrap()[0].raw.command);
        assert!(!kept(aliased, &parsed), "a text with an alias is not kept");

        // What the kept texts can hold at most: the costliest text that is kept
        // (a valid volume whose command is a flow list of one-letter arguments,
        // a value for every two bytes), in every entry.
        let head = "- {name: big, type: fuse, command: [";
        let mut text = head.to_string();
        while text.len() + "o,".len() + "\"{mountpoint}\"]}".len() <= PARSED_TEXT_BYTES {
            text.push_str("o,");
        }
        text.push_str("\"{mountpoint}\"]}");
        assert!(text.len() <= PARSED_TEXT_BYTES && !text.contains('*'));
        let parsed = parse_annotation(&text);
        assert!(kept(&text, &parsed), "the costliest kept text is kept");
        let values = parsed.as_ref().as_ref().unwrap()[0].raw.command.as_ref().map_or(0, Vec::len);
        assert!(values > 450, "{values} arguments");
        // A String of one byte is 24 bytes and an allocation of at most 32.
        let per_entry = values * (24 + 32) + text.len();
        assert!(PARSED_ENTRIES * per_entry < 4 << 20, "{PARSED_ENTRIES} entries of {per_entry} bytes");
    }
}
