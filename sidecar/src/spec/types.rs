//! The volume types: one row each in [`TYPES`] (its name, the fields only it
//! uses, its own option rules) and one validator that turns those fields into
//! its [`Source`]. Adding a type: a `Source` variant, a validator and a row here.

use std::collections::BTreeMap;

use super::names::check_dataset;
use super::validate::Problems;
use super::{RawVolume, Source};

/// Filesystem types a `block` volume may carry.
pub const BLOCK_FS_TYPES: &[&str] = &["ext4", "xfs", "btrfs"];

/// The placeholder in a `fuse` command replaced with the volume's mountpoint.
pub const MOUNTPOINT_PLACEHOLDER: &str = "{mountpoint}";
/// The placeholders in a `fuse` command replaced with the volume's `uid` and
/// `gid`: the user and group the app runs as (0 when the spec gives none).
pub const UID_PLACEHOLDER: &str = "{uid}";
pub const GID_PLACEHOLDER: &str = "{gid}";

/// Whether a raw volume gives a field.
type Given = fn(&RawVolume) -> bool;

/// One volume type.
pub(super) struct VolumeType {
    /// Its `type:`.
    pub name: &'static str,
    /// The fields only this type uses, as written, and whether a volume gives
    /// each: on a volume of another type they are refused.
    pub fields: &'static [(&'static str, Given)],
    /// Problems of `options` peculiar to this type, by index.
    pub options: fn(&[String]) -> Vec<(usize, String)>,
    /// Its own fields into its source (`None` once a problem is found); `env`
    /// is the volume's environment.
    pub source: fn(&RawVolume, &BTreeMap<String, String>, &mut Problems) -> Option<Source>,
}

/// Every volume type, in the order they are named to the user.
pub(super) const TYPES: &[VolumeType] = &[
    VolumeType {
        name: "fuse",
        fields: &[("command", |raw| raw.command.is_some())],
        options: crate::volume::fuse::unbindable_options,
        source: fuse,
    },
    VolumeType {
        name: "objectivefs",
        fields: &[("filesystem", |raw| raw.filesystem.is_some())],
        options: no_option_rules,
        source: objectivefs,
    },
    VolumeType {
        name: "zfs",
        fields: &[("dataset", |raw| raw.dataset.is_some()), ("create", |raw| raw.create.is_some())],
        options: no_option_rules,
        source: zfs,
    },
    VolumeType {
        name: "block",
        fields: &[
            ("device", |raw| raw.device.is_some()),
            ("fsType", |raw| raw.fs_type.is_some()),
            ("format", |raw| raw.format.is_some()),
        ],
        options: no_option_rules,
        source: block,
    },
];

/// The row of type `name`.
pub(super) fn row(name: &str) -> Option<&'static VolumeType> {
    TYPES.iter().find(|t| t.name == name)
}

/// The type names as a list for messages: `fuse, objectivefs, zfs, block`.
pub(super) fn names() -> String {
    TYPES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

fn no_option_rules(_: &[String]) -> Vec<(usize, String)> {
    Vec::new()
}

fn fuse(raw: &RawVolume, env: &BTreeMap<String, String>, problems: &mut Problems) -> Option<Source> {
    match &raw.command {
        None => {
            problems.add(
                "command",
                "required for type fuse: the FOREGROUND daemon, e.g. [bindfs, -f, /src, \"{mountpoint}\"]".into(),
            );
            None
        }
        Some(cmd) if cmd.is_empty() || cmd[0].trim().is_empty() => {
            problems.add(
                "command",
                "must name the daemon to run, e.g. [rclone, mount, \":memory:\", \"{mountpoint}\"]".into(),
            );
            None
        }
        Some(cmd) if !cmd.iter().any(|a| a.contains(MOUNTPOINT_PLACEHOLDER)) => {
            problems
                .add("command", "must pass \"{mountpoint}\" to the daemon so it mounts where the pod sees it".into());
            None
        }
        Some(cmd) => {
            if let Some(refusal) = crate::volume::flush::own_remote_control_refusal(cmd, env) {
                problems.add("command", refusal);
            }
            Some(Source::Fuse { command: cmd.clone() })
        }
    }
}

fn objectivefs(raw: &RawVolume, _env: &BTreeMap<String, String>, problems: &mut Problems) -> Option<Source> {
    match raw.filesystem.as_deref().map(str::trim) {
        None | Some("") => {
            problems
                .add("filesystem", "required for type objectivefs: the filesystem name, e.g. s3://my-bucket".into());
            None
        }
        Some(fs) if fs.starts_with('-') || fs.chars().any(char::is_whitespace) => {
            problems.add("filesystem", format!("{fs:?} is not a filesystem name (e.g. s3://my-bucket)"));
            None
        }
        Some(fs) => Some(Source::ObjectiveFs { filesystem: fs.to_string() }),
    }
}

fn zfs(raw: &RawVolume, _env: &BTreeMap<String, String>, problems: &mut Problems) -> Option<Source> {
    let create = raw
        .create
        .as_ref()
        .map(|props| props.iter().map(|(k, v)| (k.clone(), v.to_string())).collect::<BTreeMap<_, _>>());
    if let Some(props) = &create {
        for (key, value) in props {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || ":._-".contains(c)) {
                problems.add(&format!("create.{key}"), "not a zfs property name".into());
            }
            if value.is_empty() || value.contains(',') || value.chars().any(char::is_control) {
                problems.add(&format!("create.{key}"), format!("{value:?} is not a valid property value"));
            }
        }
    }
    match raw.dataset.as_deref() {
        None | Some("") => {
            problems.add("dataset", "required for type zfs: the dataset to mount, e.g. tank/k8s/data".into());
            None
        }
        Some(ds) => match check_dataset(ds) {
            Err(why) => {
                problems.add("dataset", format!("{ds:?} is not a zfs dataset name: {why}"));
                None
            }
            Ok(()) => Some(Source::Zfs { dataset: ds.to_string(), create }),
        },
    }
}

fn block(raw: &RawVolume, _env: &BTreeMap<String, String>, problems: &mut Problems) -> Option<Source> {
    let device = match &raw.device {
        None => {
            problems.add("device", "required for type block: the device path, e.g. /dev/disk/by-id/...".into());
            None
        }
        Some(d) if !d.is_absolute() => {
            problems.add("device", format!("{} must be an absolute path", d.display()));
            None
        }
        Some(d) => Some(d.clone()),
    };
    let fs_type = match raw.fs_type.as_deref() {
        None => {
            problems.add("fsType", format!("required for type block: one of {}", BLOCK_FS_TYPES.join(", ")));
            None
        }
        Some(t) if !BLOCK_FS_TYPES.contains(&t) => {
            problems.add("fsType", format!("unsupported filesystem {t:?}: use one of {}", BLOCK_FS_TYPES.join(", ")));
            None
        }
        Some(t) => Some(t.to_string()),
    };
    match (device, fs_type) {
        (Some(device), Some(fs_type)) => Some(Source::Block { device, fs_type, format: raw.format.unwrap_or(false) }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse_raw, FIELDS};

    /// Each row's own fields are fields of a volume, belong to that row only, and
    /// its presence check sees exactly that field.
    #[test]
    fn the_table_names_each_field_once_and_sees_it() {
        let samples = [
            ("command", "[x]"),
            ("filesystem", "s3://b"),
            ("dataset", "p/a"),
            ("create", "{a: b}"),
            ("device", "/dev/x"),
            ("fsType", "ext4"),
            ("format", "true"),
        ];
        let mut seen = Vec::new();
        for row in TYPES {
            for (field, _) in row.fields {
                assert!(FIELDS.contains(field), "{}: {field} is not in FIELDS", row.name);
                assert!(!seen.contains(field), "{field} belongs to two types");
                seen.push(*field);
                let sample = samples.iter().find(|(f, _)| f == field).map(|(_, s)| *s);
                let sample = sample.unwrap_or_else(|| panic!("give {field} a sample value here"));
                let raw = parse_raw("t", &format!("- {{{field}: {sample}}}")).unwrap().remove(0);
                for other in TYPES {
                    for (other_field, given) in other.fields {
                        assert_eq!(given(&raw), other_field == field, "{field} given: {other_field} sees it");
                    }
                }
            }
        }
    }
}
