//! Spec text into raw volumes: YAML read within the spec's limits, then each
//! field taken by name and kind, so that an unknown field or a value of the
//! wrong kind is named (`volumes[0].name`) before anything is validated.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::{Invalid, Problem, RawVolume, Scalar};
use crate::yaml;

/// The most bytes of spec text, from a file, `SIDEMOUNT_VOLUMES` or the pod
/// annotation. Kubernetes caps all the annotations of an object at 256 KiB
/// together; 64 KiB holds hundreds of volumes. The worst text within every
/// limit here (nested 30 deep in flow style, filled with `a,`) parses in about
/// 35 ms, best of five runs of a release build on a loaded 2-core VM, 55 ms at
/// worst; a debug build takes about ten times that
/// (`worst_case_parse_time_at_the_limits`).
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// The deepest nesting of lists and maps, block and flow together: a spec needs
/// four (the `volumes` map, the list, a volume, its `command`, `env` or
/// `create`). libyaml's cost grows with the flow nesting times the size.
pub const MAX_SPEC_DEPTH: usize = 32;
/// The most `[` and `{` characters in a spec, strings included: a second bound
/// on libyaml's cost that holds whatever the nesting scan concludes (64 KiB
/// nested 1024 deep parses in 0.2 to 0.45 s, against minutes unbounded). The
/// injected `SIDEMOUNT_VOLUMES` uses about five per volume.
pub const MAX_SPEC_BRACKETS: usize = 1024;
/// The most values (scalars, lists, maps, keys) a spec may expand to, YAML
/// aliases (`*name`) included: twice what 64 KiB can hold without aliases.
pub const MAX_SPEC_VALUES: usize = 64 * 1024;

/// What a spec may cost; checked before libyaml reads it.
pub const SPEC_LIMITS: yaml::Limits = yaml::Limits {
    max_bytes: Some(MAX_SPEC_BYTES),
    max_depth: MAX_SPEC_DEPTH,
    max_brackets: Some(MAX_SPEC_BRACKETS),
    max_values: MAX_SPEC_VALUES,
    unique_keys: true,
};

/// The fields of a volume, as written.
pub const FIELDS: &[&str] = &[
    "name",
    "type",
    "command",
    "options",
    "env",
    "secretDir",
    "secretName",
    "filesystem",
    "dataset",
    "create",
    "device",
    "fsType",
    "format",
    "uid",
    "gid",
];

/// Parses one document (`volumes: [...]`, a bare list, or nothing) into raw
/// volumes, or every problem of its shape: a field that is unknown, or of the
/// wrong kind (`name: 123`), each named (`volumes[0].name`).
pub fn parse_raw(origin: &str, text: &str) -> Result<Vec<RawVolume>, Invalid> {
    let mut shape = Shape { origin, problems: Vec::new() };
    let value = match yaml::parse(text, &SPEC_LIMITS) {
        Ok(value) => value,
        Err(err) => {
            shape.problem("volumes", format!("the spec {err}"));
            return Err(Invalid(shape.problems));
        }
    };
    let items = match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items,
        Value::Object(mut map) => {
            for key in map.keys().filter(|k| *k != "volumes").map(|k| shown(k)) {
                let hint = if key.eq_ignore_ascii_case("volumes") || near("volumes", &key) {
                    " (did you mean `volumes`?)"
                } else {
                    ""
                };
                shape.problem(
                    &key,
                    format!("unknown field `{key}`{hint}: a spec is `volumes: [...]`, or a bare list of volumes"),
                );
            }
            match map.remove("volumes") {
                // A misspelled `volumes` has been named above; saying it is missing adds nothing.
                None if !shape.problems.is_empty() => Vec::new(),
                None => {
                    shape.problem(
                        "volumes",
                        "required: `volumes: [...]` lists the volumes (`volumes: []` for none)".into(),
                    );
                    Vec::new()
                }
                Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items,
                Some(other) => {
                    shape.problem("volumes", format!("must be a list of volumes, not {}", kind_of(&other)));
                    Vec::new()
                }
            }
        }
        other => {
            shape.problem(
                "volumes",
                format!("a spec is `volumes: [...]` or a list of volumes, not {}", kind_of(&other)),
            );
            Vec::new()
        }
    };
    let volumes: Vec<RawVolume> =
        items.into_iter().enumerate().map(|(i, item)| shape.volume(&format!("volumes[{i}]"), item)).collect();
    if shape.problems.is_empty() {
        Ok(volumes)
    } else {
        Err(Invalid(shape.problems))
    }
}

/// Reads raw volumes out of parsed YAML, noting every field of the wrong shape.
struct Shape<'a> {
    origin: &'a str,
    problems: Vec<Problem>,
}

impl Shape<'_> {
    fn problem(&mut self, field: &str, message: String) {
        self.problems.push(Problem { origin: self.origin.to_string(), field: field.to_string(), message });
    }

    fn volume(&mut self, at: &str, item: Value) -> RawVolume {
        let mut raw = RawVolume::default();
        let fields = match item {
            Value::Object(fields) => fields,
            other => {
                self.problem(at, format!("must be a map of fields (name, type, ...), not {}", kind_of(&other)));
                return raw;
            }
        };
        for (key, value) in fields {
            let field = format!("{at}.{}", shown(&key));
            match key.as_str() {
                "name" => raw.name = self.text(&field, value),
                "type" => raw.kind = self.text(&field, value),
                "command" => raw.command = self.texts(&field, value),
                "options" => raw.options = self.texts(&field, value),
                "env" => raw.env = self.text_map(&field, value),
                "secretDir" => raw.secret_dir = self.text(&field, value).map(PathBuf::from),
                "secretName" => raw.secret_name = self.text(&field, value),
                "filesystem" => raw.filesystem = self.text(&field, value),
                "dataset" => raw.dataset = self.text(&field, value),
                "create" => raw.create = self.properties(&field, value),
                "device" => raw.device = self.text(&field, value).map(PathBuf::from),
                "fsType" => raw.fs_type = self.text(&field, value),
                "format" => raw.format = self.flag(&field, value),
                "uid" => raw.uid = self.id(&field, value),
                "gid" => raw.gid = self.id(&field, value),
                _ => {
                    let hint = match FIELDS.iter().find(|f| f.eq_ignore_ascii_case(&key) || near(f, &key)) {
                        Some(known) => format!(" (did you mean `{known}`?)"),
                        None => String::new(),
                    };
                    self.problem(
                        &field,
                        format!(
                            "unknown field `{}`{hint}: the fields of a volume are {}",
                            shown(&key),
                            FIELDS.join(", ")
                        ),
                    );
                }
            }
        }
        raw
    }

    /// A user or group id: a whole number that fits a uid_t (its range is checked
    /// in `validate`); `null` is the same as leaving the field out.
    fn id(&mut self, field: &str, value: Value) -> Option<u32> {
        match value {
            Value::Null => None,
            Value::Number(n) if n.as_u64().is_some_and(|n| u32::try_from(n).is_ok()) => {
                n.as_u64().and_then(|n| u32::try_from(n).ok())
            }
            other => {
                self.problem(field, format!("must be a whole number from 0 to 4294967294, not {}", kind_of(&other)));
                None
            }
        }
    }

    /// A string; `null` (or nothing after the colon) is the same as leaving the field out.
    fn text(&mut self, field: &str, value: Value) -> Option<String> {
        match value {
            Value::String(text) => Some(text),
            Value::Null => None,
            Value::Bool(_) | Value::Number(_) => {
                self.problem(field, format!("must be a string, not {}: quote it (\"{value}\")", kind_of(&value)));
                None
            }
            other => {
                self.problem(field, format!("must be a string, not {}", kind_of(&other)));
                None
            }
        }
    }

    fn texts(&mut self, field: &str, value: Value) -> Option<Vec<String>> {
        match value {
            Value::Array(items) => Some(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let at = format!("{field}[{i}]");
                        match item {
                            Value::Null => {
                                self.problem(&at, "is empty: give a string, or remove the item".into());
                                String::new()
                            }
                            item => self.text(&at, item).unwrap_or_default(),
                        }
                    })
                    .collect(),
            ),
            Value::Null => None,
            other => {
                self.problem(field, format!("must be a list of strings, e.g. [a, b], not {}", kind_of(&other)));
                None
            }
        }
    }

    fn text_map(&mut self, field: &str, value: Value) -> Option<BTreeMap<String, String>> {
        match value {
            Value::Object(map) => Some(
                map.into_iter()
                    .map(|(key, value)| {
                        let at = format!("{field}.{key}");
                        let text = match value {
                            Value::Null => {
                                self.problem(&at, "has no value: give a string (\"\" for empty)".into());
                                None
                            }
                            value => self.text(&at, value),
                        };
                        (key, text.unwrap_or_default())
                    })
                    .collect(),
            ),
            Value::Null => None,
            other => {
                self.problem(field, format!("must be a map of NAME: \"value\", not {}", kind_of(&other)));
                None
            }
        }
    }

    fn properties(&mut self, field: &str, value: Value) -> Option<BTreeMap<String, Scalar>> {
        match value {
            Value::Object(map) => Some(
                map.into_iter()
                    .filter_map(|(key, value)| {
                        let scalar = match value {
                            Value::Bool(b) => Scalar::Bool(b),
                            Value::String(text) => Scalar::Text(text),
                            Value::Number(n) if n.is_i64() => Scalar::Int(n.as_i64().unwrap_or_default()),
                            other => {
                                self.problem(
                                    &format!("{field}.{key}"),
                                    format!("must be a string, a whole number or true/false, not {}", kind_of(&other)),
                                );
                                return None;
                            }
                        };
                        Some((key, scalar))
                    })
                    .collect(),
            ),
            Value::Null => None,
            other => {
                self.problem(field, format!("must be a map of zfs properties, not {}", kind_of(&other)));
                None
            }
        }
    }

    fn flag(&mut self, field: &str, value: Value) -> Option<bool> {
        match value {
            Value::Bool(b) => Some(b),
            Value::Null => None,
            Value::String(text) if text == "true" || text == "false" => {
                self.problem(field, format!("must be true or false, not the string \"{text}\": remove the quotes"));
                None
            }
            other => {
                self.problem(field, format!("must be true or false, not {}", kind_of(&other)));
                None
            }
        }
    }
}

/// A key as a field name: an empty key (`: x`, `"": x`) would name nothing.
fn shown(key: &str) -> std::borrow::Cow<'_, str> {
    if key.is_empty() {
        "\"\"".into()
    } else {
        key.into()
    }
}

/// How a value is called in messages; short, so a hostile value is never echoed whole.
fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a map".into(),
    }
}

/// Whether `key` is one slip (a letter changed, missing, added or swapped) from `known`.
fn near(known: &str, key: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (known.to_lowercase().chars().collect(), key.to_lowercase().chars().collect());
    if a.len().abs_diff(b.len()) > 1 || b.len() > 32 {
        return false;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (ra, rb) = (a.len() - prefix - suffix, b.len() - prefix - suffix);
    let swapped = ra == 2 && rb == 2 && a[prefix] == b[prefix + 1] && a[prefix + 1] == b[prefix];
    (ra <= 1 && rb <= 1) || swapped
}
