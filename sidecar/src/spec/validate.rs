//! One raw volume into a [`Volume`], or every problem with it: what every volume
//! shares (name, type, options, env, secrets, ids) is checked here; the fields
//! of each type by its row in [`TYPES`](super::types::TYPES).

use super::names::{check_dns_label, check_dns_subdomain, is_env_name};
use super::types::{self, TYPES};
use super::{RawVolume, Volume};

/// The problems found in one volume, each `(field, message)` with the field
/// relative to the volume.
#[derive(Default)]
pub(super) struct Problems(Vec<(String, String)>);

impl Problems {
    pub(super) fn add(&mut self, field: &str, message: String) {
        self.0.push((field.to_string(), message));
    }
}

/// Validates one raw volume; problems are `(field, message)` with the field
/// relative to the volume.
pub fn validate(raw: &RawVolume) -> Result<Volume, Vec<(String, String)>> {
    let mut problems = Problems::default();

    match raw.name.as_deref() {
        None => {
            problems.add("name", "required: the pod volume this spec serves (a DNS-1123 label such as `data`)".into())
        }
        Some(name) => {
            if let Err(why) = check_dns_label(name) {
                problems.add("name", format!("{name:?} is not a DNS-1123 label: {why}"));
            }
        }
    }

    let kind = raw.kind.as_deref();
    let known = types::names();
    let row = kind.and_then(types::row);
    match kind {
        None => problems.add("type", format!("required: one of {known}")),
        Some(k) if row.is_none() => problems.add("type", format!("unknown type {k:?}: use one of {known}")),
        _ => {}
    }

    // Fields that belong to other types are refused rather than ignored: a
    // `device:` on a fuse volume is a mistake the user wants to hear about.
    if let Some(row) = row {
        for other in TYPES.iter().filter(|other| other.name != row.name) {
            for (field, present) in other.fields {
                if present(raw) {
                    problems.add(
                        field,
                        format!("not used by type {} (it belongs to type {}); remove it", row.name, other.name),
                    );
                }
            }
        }
    }

    let options = raw.options.clone().unwrap_or_default();
    for (i, opt) in options.iter().enumerate() {
        if opt.is_empty() || opt.contains(',') || opt.chars().any(char::is_whitespace) {
            problems.add(
                &format!("options[{i}]"),
                format!("{opt:?} must be one non-empty option without commas or spaces; list each option separately"),
            );
        }
    }
    if let Some(row) = row {
        for (i, message) in (row.options)(&options) {
            problems.add(&format!("options[{i}]"), message);
        }
    }
    let env = raw.env.clone().unwrap_or_default();
    for key in env.keys() {
        if !is_env_name(key) {
            problems.add(
                &format!("env.{key}"),
                "not a valid environment variable name (letters, digits, `_`, not starting with a digit)".into(),
            );
        }
    }
    if let Some(dir) = &raw.secret_dir {
        if !dir.is_absolute() {
            problems.add("secretDir", format!("{} must be an absolute path", dir.display()));
        }
    }
    for (field, id) in [("uid", raw.uid), ("gid", raw.gid)] {
        // (uid_t)-1 means "unchanged" to the kernel, never a user.
        if id == Some(u32::MAX) {
            problems.add(field, format!("{} is not a {field}: give the number the app runs as, e.g. 1000", u32::MAX));
        }
    }
    if let Some(secret) = &raw.secret_name {
        if let Err(why) = check_dns_subdomain(secret) {
            problems.add("secretName", format!("{secret:?} is not a valid Secret name: {why}"));
        }
    }

    let source = row.and_then(|row| (row.source)(raw, &env, &mut problems));

    match (source, problems.0.is_empty()) {
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
        _ => Err(problems.0),
    }
}
