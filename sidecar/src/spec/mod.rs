//! Volume specs: the one definition of what a sidemount volume is, shared by the
//! supervisor, `sidemount check`, the webhook and `sidemount inject`.
//!
//! Specs are read within stated limits (size, nesting, brackets and alias
//! expansion, checked before the work they bound: see `yaml`), into loose
//! structs field by field, then validated as a whole so that every problem is
//! reported at once, each naming its field (`volumes[2].fsType`), before
//! anything is mounted.
//!
//! `raw` parses text into [`RawVolume`]s, `validate` checks what every volume
//! shares and `types` holds one row and one validator per `type`; `names` are
//! the Kubernetes and zfs naming rules, `read` finds and reads the spec files,
//! `check` is `sidemount check`.
//! This file holds the values they pass and [`load`], which joins them.

mod check;
mod names;
mod raw;
mod read;
mod types;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use check::check;
pub use names::{check_dns_label, check_dns_subdomain};
pub use raw::{parse_raw, FIELDS, MAX_SPEC_BRACKETS, MAX_SPEC_BYTES, MAX_SPEC_DEPTH, MAX_SPEC_VALUES, SPEC_LIMITS};
pub use read::{read_file, read_sources, Reading};
pub use types::{BLOCK_FS_TYPES, GID_PLACEHOLDER, MOUNTPOINT_PLACEHOLDER, UID_PLACEHOLDER};
pub use validate::validate;

/// One volume as written by the user. Every field is optional here so that
/// validation, not the parser, reports what is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

#[cfg(test)]
impl Volume {
    /// A FUSE volume `name` with a placeholder command, for unit tests of what
    /// is done with volumes rather than of the spec.
    pub(crate) fn fuse_for_tests(name: &str) -> Volume {
        Volume {
            name: name.into(),
            source: Source::Fuse { command: vec!["x".into(), "{mountpoint}".into()] },
            options: vec![],
            env: Default::default(),
            secret_dir: None,
            secret_name: None,
            uid: None,
            gid: None,
        }
    }
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

#[cfg(test)]
mod tests;
