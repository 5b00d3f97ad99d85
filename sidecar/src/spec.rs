//! Volume specs: the one definition of what a sidemount volume is, shared by the
//! supervisor, `sidemount check`, the webhook and `sidemount inject`.
//!
//! Specs are read within stated limits (size, nesting, brackets and alias
//! expansion, checked before the work they bound: see `yaml`), into loose
//! structs field by field, then validated as a whole so that every problem is
//! reported at once, each naming its field (`volumes[2].fsType`), before
//! anything is mounted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::yaml;

/// Filesystem types a `block` volume may carry.
pub const BLOCK_FS_TYPES: &[&str] = &["ext4", "xfs", "btrfs"];

/// The placeholder in a `fuse` command replaced with the volume's mountpoint.
pub const MOUNTPOINT_PLACEHOLDER: &str = "{mountpoint}";
/// The placeholders in a `fuse` command replaced with the volume's `uid` and
/// `gid`: the user and group the app runs as (0 when the spec gives none).
pub const UID_PLACEHOLDER: &str = "{uid}";
pub const GID_PLACEHOLDER: &str = "{gid}";

/// One volume as written by the user. Every field is optional here so that
/// validation, not the parser, reports what is missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawVolume {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_dir: Option<PathBuf>,
    /// Injection only: a Secret in the pod's namespace mounted as `secretDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<BTreeMap<String, Scalar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<bool>,
    /// The user the app containers run as, so a non-root app can use the mount:
    /// `{uid}` in a command; objectivefs gets `allow_other,uid=`. Injection fills
    /// it from the containers' `runAsUser`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Their group (`{gid}`; objectivefs gets `gid=`): `fsGroup`, else `runAsGroup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// A property value in `create:`; YAML may give `10G`, `1024` or `true`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{}", if *b { "on" } else { "off" }),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Text(s) => f.write_str(s),
        }
    }
}

/// A validated volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub source: Source,
    pub options: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub secret_dir: Option<PathBuf>,
    pub secret_name: Option<String>,
    /// The app's user and group, when the spec names them.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// What a volume is made of; one variant per `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Fuse { command: Vec<String> },
    ObjectiveFs { filesystem: String },
    Zfs { dataset: String, create: Option<BTreeMap<String, String>> },
    Block { device: PathBuf, fs_type: String, format: bool },
}

impl Source {
    pub fn type_name(&self) -> &'static str {
        match self {
            Source::Fuse { .. } => "fuse",
            Source::ObjectiveFs { .. } => "objectivefs",
            Source::Zfs { .. } => "zfs",
            Source::Block { .. } => "block",
        }
    }

    /// A kernel mount has no daemon: if it is left behind, the kubelet's
    /// recursive delete of the emptyDir would empty it (design promise 8).
    pub fn is_kernel_mount(&self) -> bool {
        matches!(self, Source::Zfs { .. } | Source::Block { .. })
    }

    /// FUSE-backed types need /dev/fuse.
    pub fn needs_fuse(&self) -> bool {
        matches!(self, Source::Fuse { .. } | Source::ObjectiveFs { .. })
    }
}

/// One problem found in a spec: where it is and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the spec came from, or `SIDEMOUNT_VOLUMES`.
    pub origin: String,
    /// The field, e.g. `volumes[0].command`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.field, self.message)
    }
}

/// Every problem found in a set of specs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<Problem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Spec text with where it came from.
#[derive(Debug, Clone)]
pub struct SpecText {
    pub origin: String,
    pub text: String,
}

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

/// Parses and validates every source together; names must be unique across all.
pub fn load(sources: &[SpecText]) -> Result<Vec<Volume>, Invalid> {
    let mut problems = Vec::new();
    let mut raws = Vec::new();
    for source in sources {
        match parse_raw(&source.origin, &source.text) {
            Ok(list) => raws.extend(list.into_iter().enumerate().map(|(i, v)| (source.origin.clone(), i, v))),
            Err(Invalid(found)) => problems.extend(found),
        }
    }
    let mut volumes = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (origin, index, raw) in &raws {
        let field = |name: &str| format!("volumes[{index}].{name}");
        match validate(raw) {
            Ok(volume) => {
                if let Some(first) = seen.get(&volume.name) {
                    problems.push(Problem {
                        origin: origin.clone(),
                        field: field("name"),
                        message: format!(
                            "duplicate volume name {:?} (already defined in {first}); give each volume its own name",
                            volume.name
                        ),
                    });
                } else {
                    seen.insert(volume.name.clone(), origin.clone());
                    volumes.push(volume);
                }
            }
            Err(found) => problems.extend(found.into_iter().map(|(f, message)| Problem {
                origin: origin.clone(),
                field: field(&f),
                message,
            })),
        }
    }
    if problems.is_empty() {
        Ok(volumes)
    } else {
        Err(Invalid(problems))
    }
}

/// Validates one raw volume; problems are `(field, message)` with the field
/// relative to the volume.
pub fn validate(raw: &RawVolume) -> Result<Volume, Vec<(String, String)>> {
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut problem = |field: &str, message: String| problems.push((field.to_string(), message));

    match raw.name.as_deref() {
        None => problem("name", "required: the pod volume this spec serves (a DNS-1123 label such as `data`)".into()),
        Some(name) => {
            if let Err(why) = check_dns_label(name) {
                problem("name", format!("{name:?} is not a DNS-1123 label: {why}"));
            }
        }
    }

    let kind = raw.kind.as_deref();
    let known = ["fuse", "objectivefs", "zfs", "block"];
    match kind {
        None => problem("type", "required: one of fuse, objectivefs, zfs, block".into()),
        Some(k) if !known.contains(&k) => {
            problem("type", format!("unknown type {k:?}: use one of fuse, objectivefs, zfs, block"))
        }
        _ => {}
    }

    // Fields that belong to other types are refused rather than ignored: a
    // `device:` on a fuse volume is a mistake the user wants to hear about.
    let owners: [(&str, bool, &[&str]); 7] = [
        ("command", raw.command.is_some(), &["fuse"]),
        ("filesystem", raw.filesystem.is_some(), &["objectivefs"]),
        ("dataset", raw.dataset.is_some(), &["zfs"]),
        ("create", raw.create.is_some(), &["zfs"]),
        ("device", raw.device.is_some(), &["block"]),
        ("fsType", raw.fs_type.is_some(), &["block"]),
        ("format", raw.format.is_some(), &["block"]),
    ];
    if let Some(k) = kind.filter(|k| known.contains(k)) {
        for (field, present, types) in owners {
            if present && !types.contains(&k) {
                problem(field, format!("not used by type {k} (it belongs to type {}); remove it", types.join(", ")));
            }
        }
    }

    let options = raw.options.clone().unwrap_or_default();
    for (i, opt) in options.iter().enumerate() {
        if opt.is_empty() || opt.contains(',') || opt.chars().any(char::is_whitespace) {
            problem(
                &format!("options[{i}]"),
                format!("{opt:?} must be one non-empty option without commas or spaces; list each option separately"),
            );
        }
    }
    if kind == Some("fuse") {
        for (i, message) in crate::volume::fuse::unbindable_options(&options) {
            problem(&format!("options[{i}]"), message);
        }
    }
    let env = raw.env.clone().unwrap_or_default();
    for key in env.keys() {
        if !is_env_name(key) {
            problem(
                &format!("env.{key}"),
                "not a valid environment variable name (letters, digits, `_`, not starting with a digit)".into(),
            );
        }
    }
    if let Some(dir) = &raw.secret_dir {
        if !dir.is_absolute() {
            problem("secretDir", format!("{} must be an absolute path", dir.display()));
        }
    }
    for (field, id) in [("uid", raw.uid), ("gid", raw.gid)] {
        // (uid_t)-1 means "unchanged" to the kernel, never a user.
        if id == Some(u32::MAX) {
            problem(field, format!("{} is not a {field}: give the number the app runs as, e.g. 1000", u32::MAX));
        }
    }
    if let Some(secret) = &raw.secret_name {
        if let Err(why) = check_dns_subdomain(secret) {
            problem("secretName", format!("{secret:?} is not a valid Secret name: {why}"));
        }
    }

    let source = match kind {
        Some("fuse") => match &raw.command {
            None => {
                problem(
                    "command",
                    "required for type fuse: the FOREGROUND daemon, e.g. [bindfs, -f, /src, \"{mountpoint}\"]".into(),
                );
                None
            }
            Some(cmd) if cmd.is_empty() || cmd[0].trim().is_empty() => {
                problem(
                    "command",
                    "must name the daemon to run, e.g. [rclone, mount, \":memory:\", \"{mountpoint}\"]".into(),
                );
                None
            }
            Some(cmd) if !cmd.iter().any(|a| a.contains(MOUNTPOINT_PLACEHOLDER)) => {
                problem(
                    "command",
                    "must pass \"{mountpoint}\" to the daemon so it mounts where the pod sees it".into(),
                );
                None
            }
            Some(cmd) => {
                if let Some(refusal) = crate::volume::flush::own_remote_control_refusal(cmd, &env) {
                    problem("command", refusal);
                }
                Some(Source::Fuse { command: cmd.clone() })
            }
        },
        Some("objectivefs") => match raw.filesystem.as_deref().map(str::trim) {
            None | Some("") => {
                problem("filesystem", "required for type objectivefs: the filesystem name, e.g. s3://my-bucket".into());
                None
            }
            Some(fs) if fs.starts_with('-') || fs.chars().any(char::is_whitespace) => {
                problem("filesystem", format!("{fs:?} is not a filesystem name (e.g. s3://my-bucket)"));
                None
            }
            Some(fs) => Some(Source::ObjectiveFs { filesystem: fs.to_string() }),
        },
        Some("zfs") => {
            let create = raw
                .create
                .as_ref()
                .map(|props| props.iter().map(|(k, v)| (k.clone(), v.to_string())).collect::<BTreeMap<_, _>>());
            if let Some(props) = &create {
                for (key, value) in props {
                    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || ":._-".contains(c)) {
                        problem(&format!("create.{key}"), "not a zfs property name".into());
                    }
                    if value.is_empty() || value.contains(',') || value.chars().any(char::is_control) {
                        problem(&format!("create.{key}"), format!("{value:?} is not a valid property value"));
                    }
                }
            }
            match raw.dataset.as_deref() {
                None | Some("") => {
                    problem("dataset", "required for type zfs: the dataset to mount, e.g. tank/k8s/data".into());
                    None
                }
                Some(ds) => match check_dataset(ds) {
                    Err(why) => {
                        problem("dataset", format!("{ds:?} is not a zfs dataset name: {why}"));
                        None
                    }
                    Ok(()) => Some(Source::Zfs { dataset: ds.to_string(), create }),
                },
            }
        }
        Some("block") => {
            let device = match &raw.device {
                None => {
                    problem("device", "required for type block: the device path, e.g. /dev/disk/by-id/...".into());
                    None
                }
                Some(d) if !d.is_absolute() => {
                    problem("device", format!("{} must be an absolute path", d.display()));
                    None
                }
                Some(d) => Some(d.clone()),
            };
            let fs_type = match raw.fs_type.as_deref() {
                None => {
                    problem("fsType", format!("required for type block: one of {}", BLOCK_FS_TYPES.join(", ")));
                    None
                }
                Some(t) if !BLOCK_FS_TYPES.contains(&t) => {
                    problem(
                        "fsType",
                        format!("unsupported filesystem {t:?}: use one of {}", BLOCK_FS_TYPES.join(", ")),
                    );
                    None
                }
                Some(t) => Some(t.to_string()),
            };
            match (device, fs_type) {
                (Some(device), Some(fs_type)) => {
                    Some(Source::Block { device, fs_type, format: raw.format.unwrap_or(false) })
                }
                _ => None,
            }
        }
        _ => None,
    };

    match (source, problems.is_empty()) {
        (Some(source), true) => Ok(Volume {
            name: raw.name.clone().unwrap_or_default(),
            source,
            options,
            env,
            secret_dir: raw.secret_dir.clone(),
            secret_name: raw.secret_name.clone(),
            uid: raw.uid,
            gid: raw.gid,
        }),
        _ => Err(problems),
    }
}

/// DNS-1123 label: what Kubernetes accepts as a volume name.
pub fn check_dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 63 {
        return Err("it is longer than 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("use only lowercase letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("it must start and end with a letter or digit");
    }
    Ok(())
}

/// DNS-1123 subdomain: what Kubernetes accepts as a Secret name.
pub fn check_dns_subdomain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("it must be 1 to 253 characters");
    }
    for part in name.split('.') {
        check_dns_label(part)?;
    }
    Ok(())
}

fn check_dataset(ds: &str) -> Result<(), &'static str> {
    if ds.starts_with('/') || ds.ends_with('/') || ds.contains("//") {
        return Err("write it as pool/path/name, with no leading or trailing '/'");
    }
    if ds.contains('@') || ds.contains('#') {
        return Err("snapshots and bookmarks cannot be mounted read-write; name a filesystem");
    }
    if !ds.chars().all(|c| c.is_ascii_alphanumeric() || "/_-.:".contains(c)) {
        return Err("use only letters, digits and _ - . : /");
    }
    Ok(())
}

fn is_env_name(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What a missing or empty spec file means to [`read_sources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// At start, and while `SIDEMOUNT_CONFIG` has never existed: a missing
    /// config path or an empty file is no spec at all (zero volumes).
    Start,
    /// Once the spec was there: a config path that is missing, a file that is
    /// empty, is a write caught half-way (an editor's rename-and-write, a
    /// ConfigMap's `..data` swap), not a wish to remove every volume.
    Reload,
}

/// Reads the spec sources named by the settings: the config file, or every
/// `*.yaml`/`*.yml`/`*.json` in the config directory (sorted), then the inline
/// spec. A spec file named there that cannot be read (a dangling link) is a
/// problem; a missing config path or an empty file is one only on [`Reading::Reload`].
pub fn read_sources(config: &Path, inline: Option<&str>, reading: Reading) -> Result<Vec<SpecText>, Invalid> {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    let problem =
        |path: &Path, message: String| Problem { origin: path.display().to_string(), field: "volumes".into(), message };
    let read = |path: &Path, problems: &mut Vec<Problem>| match read_file(path) {
        Ok(source) if reading == Reading::Reload && source.text.trim().is_empty() => {
            problems.push(problem(
                path,
                "the spec file is empty (a write may be under way); the running volumes stay; \
                 write `volumes: []` to remove them all"
                    .into(),
            ));
            None
        }
        Ok(source) => Some(source),
        Err(found) => {
            problems.push(found);
            None
        }
    };
    match std::fs::metadata(config) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && reading == Reading::Start => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => problems.push(problem(
            config,
            "SIDEMOUNT_CONFIG is missing (a write may be under way); the running volumes stay; \
             write `volumes: []` to it to remove them all"
                .into(),
        )),
        Err(e) => problems.push(problem(config, format!("cannot read SIDEMOUNT_CONFIG: {e}"))),
        Ok(meta) if meta.is_dir() => {
            let mut files: BTreeSet<PathBuf> = BTreeSet::new();
            match std::fs::read_dir(config) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let path = entry.path();
                        let name = entry.file_name();
                        let name = name.to_string_lossy();
                        // Kubernetes ConfigMap volumes keep their data in `..data/` and
                        // link the visible names to it; hidden names are its bookkeeping.
                        if name.starts_with('.') {
                            continue;
                        }
                        let spec_ext =
                            matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
                        // A dangling link is a spec file whose target is away (mid-swap):
                        // read, it fails and says so; skipped, its volumes would go.
                        if spec_ext && std::fs::metadata(&path).map_or(true, |m| m.is_file()) {
                            files.insert(path);
                        }
                    }
                }
                Err(e) => problems.push(problem(config, format!("cannot list the spec directory: {e}"))),
            }
            sources.extend(files.iter().filter_map(|p| read(p, &mut problems)));
        }
        Ok(_) => sources.extend(read(config, &mut problems)),
    }
    if let Some(text) = inline {
        sources.push(SpecText { origin: "SIDEMOUNT_VOLUMES".into(), text: text.to_string() });
    }
    if problems.is_empty() {
        Ok(sources)
    } else {
        Err(Invalid(problems))
    }
}

/// Reads one spec file: at most [`MAX_SPEC_BYTES`] of UTF-8 text. A larger
/// file is refused without reading it all, and text that is not UTF-8 is named
/// by the offset of its first bad byte.
pub fn read_file(path: &Path) -> Result<SpecText, Problem> {
    use std::io::Read;
    let origin = path.display().to_string();
    let problem = |message: String| Problem { origin: origin.clone(), field: "volumes".into(), message };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_SPEC_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| problem(format!("cannot read the spec file: {e}")))?;
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(problem(format!(
            "the spec file is larger than the limit of {MAX_SPEC_BYTES} bytes: split it into several files in a directory"
        )));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SpecText { origin, text }),
        Err(e) => Err(problem(format!(
            "the spec file is not UTF-8 text: the byte at offset {} is not UTF-8; save it as UTF-8",
            e.utf8_error().valid_up_to()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_one(text: &str) -> Result<Vec<Volume>, Invalid> {
        load(&[SpecText { origin: "spec.yaml".into(), text: text.into() }])
    }

    fn fields(text: &str) -> Vec<String> {
        load_one(text).unwrap_err().0.into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn parses_every_type_of_the_design() {
        let vols = load_one(
            r#"
volumes:
- name: data
  type: fuse
  command: [rclone, mount, ":memory:", "{mountpoint}"]
  options: [ro, noatime]
  env: {RCLONE_VERBOSE: "1"}
  secretDir: /etc/sidemount/secrets/data
- name: ofs
  type: objectivefs
  filesystem: s3://my-bucket
  options: [mt]
- name: tank
  type: zfs
  dataset: tank/k8s/tank
  create: {refquota: 10G, refreservation: 10G, atime: false, recordsize: 131072}
- name: disk
  type: block
  device: /dev/disk/by-id/xyz
  fsType: ext4
  format: true
"#,
        )
        .unwrap();
        assert_eq!(vols.len(), 4);
        assert_eq!(
            vols[0].source,
            Source::Fuse { command: vec!["rclone".into(), "mount".into(), ":memory:".into(), "{mountpoint}".into()] }
        );
        assert_eq!(vols[0].options, vec!["ro", "noatime"]);
        assert_eq!(vols[1].source, Source::ObjectiveFs { filesystem: "s3://my-bucket".into() });
        let Source::Zfs { create: Some(props), .. } = &vols[2].source else { panic!() };
        assert_eq!(props["refquota"], "10G");
        assert_eq!(props["atime"], "off");
        assert_eq!(props["recordsize"], "131072");
        assert_eq!(
            vols[3].source,
            Source::Block { device: "/dev/disk/by-id/xyz".into(), fs_type: "ext4".into(), format: true }
        );
    }

    #[test]
    fn accepts_a_bare_list_and_json() {
        assert_eq!(load_one("- {name: a, type: zfs, dataset: p/a}").unwrap().len(), 1);
        assert_eq!(load_one(r#"{"volumes":[{"name":"a","type":"zfs","dataset":"p/a"}]}"#).unwrap().len(), 1);
        assert!(load_one("").unwrap().is_empty());
        assert!(load_one("volumes: []").unwrap().is_empty());
    }

    #[test]
    fn names_each_missing_required_field() {
        assert_eq!(fields("- {name: a, type: fuse}"), ["volumes[0].command"]);
        assert_eq!(fields("- {name: a, type: objectivefs}"), ["volumes[0].filesystem"]);
        assert_eq!(fields("- {name: a, type: zfs}"), ["volumes[0].dataset"]);
        assert_eq!(fields("- {name: a, type: block}"), ["volumes[0].device", "volumes[0].fsType"]);
        assert_eq!(fields("- {type: zfs, dataset: p/a}"), ["volumes[0].name"]);
        assert_eq!(fields("- {name: a}"), ["volumes[0].type"]);
    }

    #[test]
    fn refuses_bad_values_naming_the_field() {
        assert_eq!(fields("- {name: Data, type: zfs, dataset: p/a}"), ["volumes[0].name"]);
        assert_eq!(fields("- {name: a-, type: zfs, dataset: p/a}"), ["volumes[0].name"]);
        assert_eq!(fields("- {name: a, type: nfs}"), ["volumes[0].type"]);
        assert_eq!(fields("- {name: a, type: fuse, command: [bindfs, /src, /dst]}"), ["volumes[0].command"]);
        assert_eq!(fields("- {name: a, type: fuse, command: []}"), ["volumes[0].command"]);
        assert_eq!(fields("- {name: a, type: block, device: /dev/x, fsType: ntfs}"), ["volumes[0].fsType"]);
        assert_eq!(fields("- {name: a, type: block, device: dev/x, fsType: xfs}"), ["volumes[0].device"]);
        assert_eq!(fields("- {name: a, type: zfs, dataset: /tank/a}"), ["volumes[0].dataset"]);
        assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, device: /dev/x}"), ["volumes[0].device"]);
        assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, options: ['a,b']}"), ["volumes[0].options[0]"]);
        assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, env: {1X: y}}"), ["volumes[0].env.1X"]);
        assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, secretDir: rel}"), ["volumes[0].secretDir"]);
        assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, secretName: Bad_Name}"), ["volumes[0].secretName"]);
    }

    #[test]
    fn reads_the_apps_uid_and_gid() {
        let vols =
            load_one("- {name: a, type: fuse, command: [x, '{mountpoint}', '{uid}'], uid: 1000, gid: 2000}").unwrap();
        assert_eq!((vols[0].uid, vols[0].gid), (Some(1000), Some(2000)));
        assert_eq!((load_one("- {name: a, type: zfs, dataset: p/a}").unwrap()[0].uid), None);
        assert_eq!(fields("- {name: a, type: zfs, dataset: p/a, uid: 4294967295}"), ["volumes[0].uid"]);
        assert!(load_one("- {name: a, type: zfs, dataset: p/a, gid: -1}").is_err());
        assert!(load_one("- {name: a, type: zfs, dataset: p/a, uid: '1000'}").is_err());
    }

    #[test]
    fn refuses_duplicates_across_sources() {
        let err = load(&[
            SpecText { origin: "a.yaml".into(), text: "- {name: x, type: zfs, dataset: p/a}".into() },
            SpecText { origin: "SIDEMOUNT_VOLUMES".into(), text: "- {name: x, type: zfs, dataset: p/b}".into() },
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].origin, "SIDEMOUNT_VOLUMES");
        assert_eq!(err.0[0].field, "volumes[0].name");
        assert!(err.0[0].message.contains("a.yaml"));
    }

    #[test]
    fn reports_parse_errors_and_unknown_fields() {
        let err = load_one("volumes:\n- name: a\n  type: block\n  fstype: ext4\n").unwrap_err();
        assert_eq!(err.0[0].field, "volumes[0].fstype", "{err}");
        assert!(err.0[0].message.contains("did you mean `fsType`"), "{err}");
        assert!(load_one("volumes: [").is_err());
    }

    /// One problem line per text: (field, message).
    fn problem(text: &str) -> (String, String) {
        let err = load_one(text).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        (err.0[0].field.clone(), err.0[0].message.clone())
    }

    #[test]
    fn unknown_keys_are_refused_at_every_level() {
        for (text, field) in [
            ("volume:\n- {name: a, type: zfs, dataset: p/a}\n", "volume"),
            ("Volumes:\n- {name: a, type: zfs, dataset: p/a}\n", "Volumes"),
            ("volumes: []\nextra: 1\n", "extra"),
            ("{}", "volumes"),
            ("- {name: a, type: zfs, dataset: p/a, Dataset: p/b}", "volumes[0].Dataset"),
            ("- {name: a, type: fuse, command: [x, '{mountpoint}'], comand: [y]}", "volumes[0].comand"),
        ] {
            let (got, message) = problem(text);
            assert_eq!(got, field, "{text:?}: {message}");
        }
        assert!(problem("volume: []").1.contains("did you mean `volumes`"));
        assert!(problem("{}").1.contains("`volumes: []` for none"));
        assert!(problem("- {name: a, type: fuse, comand: [y]}").1.contains("did you mean `command`"));
        // An empty key is named too (found by fuzzing: `&olumes:` anchors an empty key).
        assert_eq!(problem("&olumes:\n- name: data\n").0, "\"\"");
        assert_eq!(problem("- {name: a, type: zfs, dataset: p/a, '': x}").0, "volumes[0].\"\"");
        // A document with nothing in it is still no volume at all.
        assert!(load_one("# no volumes yet\n").unwrap().is_empty());
        assert!(load_one("volumes:\n").unwrap().is_empty());
    }

    #[test]
    fn a_value_of_the_wrong_kind_names_its_field_and_what_it_must_be() {
        for (text, field, says) in [
            (
                "- {name: 123, type: zfs, dataset: p/a}",
                "volumes[0].name",
                "must be a string, not the number 123: quote it (\"123\")",
            ),
            (
                "- {name: a, type: zfs, dataset: p/a, env: {DEBUG: 1}}",
                "volumes[0].env.DEBUG",
                "must be a string, not the number 1: quote it",
            ),
            (
                "- {name: a, type: zfs, dataset: p/a, env: {DEBUG: true}}",
                "volumes[0].env.DEBUG",
                "not the boolean true",
            ),
            ("- {name: a, type: fuse, command: [x, 1, '{mountpoint}']}", "volumes[0].command[1]", "must be a string"),
            ("- {name: a, type: fuse, command: 'x {mountpoint}'}", "volumes[0].command", "must be a list of strings"),
            ("- {name: a, type: zfs, dataset: p/a, options: ro}", "volumes[0].options", "must be a list of strings"),
            (
                "- {name: a, type: block, device: /dev/x, fsType: ext4, format: 'true'}",
                "volumes[0].format",
                "remove the quotes",
            ),
            (
                "- {name: a, type: zfs, dataset: p/a, create: {refquota: 1.5}}",
                "volumes[0].create.refquota",
                "whole number",
            ),
            ("- {name: a, type: zfs, dataset: p/a, env: [A]}", "volumes[0].env", "must be a map"),
            ("- data", "volumes[0]", "must be a map of fields"),
            ("volumes: {name: a}", "volumes", "must be a list of volumes"),
            ("just text", "volumes", "not a string"),
        ] {
            let (got, message) = problem(text);
            assert_eq!(got, field, "{text:?}: {message}");
            assert!(message.contains(says), "{text:?}: {message}");
        }
        // Every problem of the shape at once.
        let err = load_one("- {name: 1, type: 2}\n- {name: b, type: zfs, dataset: 3}").unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["volumes[0].name", "volumes[0].type", "volumes[1].dataset"], "{err}");
        // Quoted, the same values are fine.
        assert_eq!(load_one("- {name: '123', type: zfs, dataset: p/a, env: {DEBUG: '1'}}").unwrap()[0].name, "123");
    }

    #[test]
    fn refuses_a_text_past_the_limits_naming_them() {
        let too_big = format!("volumes: []\n#{}\n", "x".repeat(MAX_SPEC_BYTES));
        let (field, message) = problem(&too_big);
        assert_eq!(field, "volumes");
        assert!(message.contains(&format!("above the limit of {MAX_SPEC_BYTES} bytes")), "{message}");

        let deep = format!("volumes: {}{}", "[".repeat(MAX_SPEC_DEPTH), "]".repeat(MAX_SPEC_DEPTH));
        let message = problem(&deep).1;
        assert!(message.contains(&format!("more than {MAX_SPEC_DEPTH} levels deep")), "{message}");
        let block: String = (0..=MAX_SPEC_DEPTH).map(|i| format!("{}-\n", " ".repeat(i))).collect();
        assert!(problem(&block).1.contains("levels deep"));

        let brackets =
            format!("- {{name: a, type: zfs, dataset: p/a, env: {{A: '{}'}}}}", "[".repeat(MAX_SPEC_BRACKETS));
        assert!(problem(&brackets).1.contains(&format!("more than {MAX_SPEC_BRACKETS} `[` and `{{`")));

        // Right at the limits, a spec is read.
        let mut at_limit = String::from("volumes:\n");
        let mut i = 0;
        while at_limit.len() < MAX_SPEC_BYTES - 200 {
            at_limit.push_str(&format!("- name: v{i}\n  type: zfs\n  dataset: pool/v{i}\n"));
            i += 1;
        }
        assert!(at_limit.len() <= MAX_SPEC_BYTES);
        assert_eq!(load_one(&at_limit).unwrap().len(), i);
    }

    #[test]
    fn an_alias_bomb_is_refused_quickly_and_says_so() {
        let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..9 {
            bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(", ")));
        }
        bomb.push_str("volumes: *a8\n");
        let started = std::time::Instant::now();
        let (field, message) = problem(&bomb);
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(field, "volumes");
        assert!(
            message.contains(&format!("aliases (*name) that expand to more than {MAX_SPEC_VALUES} values")),
            "{message}"
        );
        // One list aliased thousands of times expands past the budget without many jumps.
        let wide = format!(
            "- {{name: a, type: fuse, command: &c [{}, '{{mountpoint}}']}}\n{}",
            vec!["x"; 2000].join(","),
            (0..1200).map(|i| format!("- name: v{i}\n  type: fuse\n  command: *c\n")).collect::<String>()
        );
        assert!(wide.len() < MAX_SPEC_BYTES);
        let started = std::time::Instant::now();
        let message = problem(&wide).1;
        assert!(message.contains("aliases"), "{message}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        // An alias or two in a real spec is read.
        let shared =
            "- {name: a, type: zfs, dataset: p/a, env: &env {A: b}}\n- {name: b, type: zfs, dataset: p/b, env: *env}";
        assert_eq!(load_one(shared).unwrap()[1].env["A"], "b");
    }

    #[test]
    fn worst_case_parse_time_at_the_limits() {
        // The costliest texts within the limits: nested as deep as allowed, every
        // bracket used, filled with the tokens libyaml pays for at each level.
        let fill = |head: String, unit: &str, tail: &str| {
            let mut text = head;
            while text.len() + unit.len() + tail.len() <= MAX_SPEC_BYTES {
                text.push_str(unit);
            }
            text + tail
        };
        let depth = MAX_SPEC_DEPTH - 2;
        let cases = [
            fill(format!("volumes: {}", "[".repeat(depth)), "a,", &"]".repeat(depth)),
            fill(format!("volumes: {}", "[".repeat(depth)), "a, ", ""),
            fill(format!("volumes: {}", "{a: ".repeat(depth)), "a: b, ", &"}".repeat(depth)),
            fill(format!("volumes: {}", "[".repeat(depth)), "[a], ", &"]".repeat(depth)),
            fill(format!("volumes:\n- {{name: a, env: &e {{{}", ""), "a: b, ", "}}\n"),
        ];
        for text in cases {
            assert!(text.len() <= MAX_SPEC_BYTES);
            let started = std::time::Instant::now();
            let _ = load_one(&text);
            // A debug build is about ten times slower than a release build.
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}: {}", started.elapsed(), &text[..40]);
        }
    }

    #[test]
    fn reads_a_spec_file_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("latin1.yaml");
        std::fs::write(&bad, b"- {name: caf\xe9, type: zfs, dataset: p/a}").unwrap();
        let problem = read_file(&bad).unwrap_err();
        assert_eq!(problem.origin, bad.display().to_string());
        assert!(problem.message.contains("not UTF-8") && problem.message.contains("offset 12"), "{problem}");
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_SPEC_BYTES + 1]).unwrap();
        assert!(read_file(&big).unwrap_err().message.contains("larger than the limit"));
        // A directory with a bad file reports it and reads nothing from it.
        let err = read_sources(dir.path(), None, Reading::Start).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }

    #[test]
    fn reads_a_directory_of_specs_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yml"), "- {name: b, type: zfs, dataset: p/b}").unwrap();
        std::fs::write(dir.path().join("a.yaml"), "- {name: a, type: zfs, dataset: p/a}").unwrap();
        std::fs::write(dir.path().join("c.json"), r#"[{"name":"c","type":"zfs","dataset":"p/c"}]"#).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a spec").unwrap();
        let sources = read_sources(dir.path(), Some("- {name: d, type: zfs, dataset: p/d}"), Reading::Start).unwrap();
        let names: Vec<_> = load(&sources).unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert!(read_sources(&dir.path().join("missing.yaml"), None, Reading::Start).unwrap().is_empty());
    }

    #[test]
    fn a_spec_missing_for_a_moment_on_reload_is_refused_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("volumes.yaml");
        // At start: the contract's "zero volumes, ready at once".
        assert!(read_sources(&missing, None, Reading::Start).unwrap().is_empty());
        let err = read_sources(&missing, Some("[]"), Reading::Reload).unwrap_err();
        assert!(err.to_string().contains("SIDEMOUNT_CONFIG is missing"), "{err}");
        assert!(err.to_string().contains("volumes: []"), "names the way to remove every volume: {err}");

        // Empty: truncated, not yet written.
        std::fs::write(&missing, "  \n").unwrap();
        assert!(read_sources(&missing, None, Reading::Start).unwrap().iter().all(|s| s.text.trim().is_empty()));
        let err = read_sources(&missing, None, Reading::Reload).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        std::fs::write(&missing, "volumes: []\n").unwrap();
        assert_eq!(read_sources(&missing, None, Reading::Reload).unwrap().len(), 1);

        // A ConfigMap directory mid-swap: the visible name links into `..data`, which is away.
        let cm = dir.path().join("cm");
        std::fs::create_dir(&cm).unwrap();
        std::os::unix::fs::symlink("..data/volumes.yaml", cm.join("volumes.yaml")).unwrap();
        for reading in [Reading::Start, Reading::Reload] {
            let err = read_sources(&cm, None, reading).unwrap_err();
            assert!(err.0[0].origin.ends_with("cm/volumes.yaml"), "{err}");
            assert!(err.to_string().contains("cannot read the spec file"), "{err}");
        }
        std::fs::create_dir(cm.join("..v1")).unwrap();
        std::fs::write(cm.join("..v1/volumes.yaml"), "- {name: a, type: zfs, dataset: p/a}").unwrap();
        std::os::unix::fs::symlink("..v1", cm.join("..data")).unwrap();
        let sources = read_sources(&cm, None, Reading::Reload).unwrap();
        assert_eq!(load(&sources).unwrap()[0].name, "a");
        // A directory with a spec's name is still no spec.
        std::fs::create_dir(cm.join("sub.yaml")).unwrap();
        assert_eq!(read_sources(&cm, None, Reading::Reload).unwrap().len(), 1);
        // The directory itself gone.
        std::fs::remove_file(cm.join("..data")).unwrap();
        assert!(read_sources(&dir.path().join("gone"), None, Reading::Reload).is_err());
    }
}
