//! FlexVolume migration: an `altalang/ofs` FlexVolume (the ObjectiveFS driver
//! that had to be installed on every node) becomes an emptyDir served by a
//! sidemount `objectivefs` volume with the same filesystem, options and Secret.
//!
//! The driver took `options.networkPath` (the filesystem, e.g. `s3://bucket`),
//! `options.mountOptions` (comma-separated `mount.objectivefs -o` options) and
//! a `secretRef` whose keys `accesskey`, `secretkey`, `license` and
//! `passphrase` the supervisor accepts as they are, so the Secret is reused.

use serde_json::{json, Value};

use crate::spec::{self, Problem, RawVolume};

/// The FlexVolume driver converted.
pub const DRIVER: &str = "altalang/ofs";

/// One converted FlexVolume.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// Its index in `spec.volumes`.
    pub index: usize,
    /// The sidemount volume that replaces it.
    pub raw: RawVolume,
}

/// What converting a pod's volumes found.
#[derive(Debug, Default)]
pub struct Conversion {
    pub volumes: Vec<Converted>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
}

/// Replaces every `altalang/ofs` FlexVolume in `volumes` with an emptyDir of
/// the same name, and returns the sidemount volumes that serve them. Other
/// volumes, FlexVolumes of other drivers included, are left as they are.
pub fn convert(volumes: &mut [Value]) -> Conversion {
    let mut found = Conversion::default();
    for (index, volume) in volumes.iter_mut().enumerate() {
        let Some(flex) = volume.get("flexVolume") else { continue };
        if flex.get("driver").and_then(Value::as_str) != Some(DRIVER) {
            continue;
        }
        let origin = format!("spec.volumes[{index}].flexVolume");
        let before = found.problems.len();
        let name = volume.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let mut problem = |field: &str, message: String| {
            found.problems.push(Problem { origin: origin.clone(), field: field.into(), message })
        };

        let text_option = |key: &str| flex.pointer(&format!("/options/{key}")).map(|v| v.as_str().ok_or(v));
        let filesystem = match text_option("networkPath") {
            None => {
                problem(
                    "options.networkPath",
                    "required: the ObjectiveFS filesystem to mount, e.g. s3://my-bucket".into(),
                );
                None
            }
            Some(Err(_)) => {
                problem("options.networkPath", "must be a string".into());
                None
            }
            Some(Ok(path)) => Some(path.trim().to_string()),
        };
        let mut options: Vec<String> = match text_option("mountOptions") {
            None => Vec::new(),
            Some(Err(_)) => {
                problem(
                    "options.mountOptions",
                    "must be a string of comma-separated options, e.g. \"mt,noatime\"".into(),
                );
                Vec::new()
            }
            Some(Ok(list)) => list.split(',').map(str::trim).filter(|o| !o.is_empty()).map(String::from).collect(),
        };
        // readOnly wins over an `rw` in mountOptions, as the kubelet's read-only mount would.
        if flex.get("readOnly").and_then(Value::as_bool) == Some(true) {
            options.retain(|o| o != "rw");
            if !options.iter().any(|o| o == "ro") {
                options.push("ro".into());
            }
        }
        // A secretRef the driver would not have read must not leave the pod without credentials.
        let secret_name = match flex.get("secretRef") {
            None | Some(Value::Null) => None,
            Some(Value::Object(reference)) => match reference.get("name") {
                Some(Value::String(name)) => Some(name.clone()),
                None | Some(Value::Null) => {
                    problem(
                        "secretRef.name",
                        "required: the Secret with accesskey, secretkey, license and passphrase (or remove secretRef)"
                            .into(),
                    );
                    None
                }
                Some(_) => {
                    problem("secretRef.name", "must be a string: the name of a Secret in the pod's namespace".into());
                    None
                }
            },
            Some(_) => {
                problem(
                    "secretRef",
                    "must be a map naming the Secret, `secretRef: {name: ofs-secret}`, not a string or a list".into(),
                );
                None
            }
        };
        if let Some(extra) = flex.get("options").and_then(Value::as_object) {
            for key in extra.keys().filter(|k| !matches!(k.as_str(), "networkPath" | "mountOptions")) {
                found.warnings.push(format!(
                    "{origin}.options.{key}: not an option of the {DRIVER} driver; dropped (sidemount mounts with networkPath and mountOptions only)"
                ));
            }
        }

        let raw = RawVolume {
            name: Some(name.clone()),
            kind: Some("objectivefs".into()),
            filesystem,
            options: (!options.is_empty()).then_some(options),
            secret_name,
            ..RawVolume::default()
        };
        if let Err(problems) = spec::validate(&raw) {
            for (field, message) in problems {
                // Name the FlexVolume's own fields, which the user wrote.
                let field = match field.as_str() {
                    "filesystem" => "options.networkPath".to_string(),
                    "secretName" => "secretRef.name".to_string(),
                    f if f.starts_with("options[") => "options.mountOptions".to_string(),
                    "name" => format!("name ({name:?})"),
                    other => other.to_string(),
                };
                if !found.problems.iter().skip(before).any(|p| p.field == field) {
                    found.problems.push(Problem { origin: origin.clone(), field, message });
                }
            }
        }
        if found.problems.len() == before {
            *volume = json!({ "name": name, "emptyDir": {} });
            found.volumes.push(Converted { index, raw });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_the_objectivefs_driver_only() {
        let mut volumes = vec![
            json!({ "name": "data", "flexVolume": {
                "driver": "altalang/ofs", "secretRef": { "name": "ofs-secret" },
                "options": { "networkPath": "s3://my-bucket", "mountOptions": "mt, noatime,,ro" } } }),
            json!({ "name": "cifs", "flexVolume": { "driver": "fstab/cifs", "options": { "networkPath": "//nas/share" } } }),
            json!({ "name": "tmp", "emptyDir": {} }),
        ];
        let found = convert(&mut volumes);
        assert!(found.problems.is_empty(), "{:?}", found.problems);
        assert_eq!(volumes[0], json!({ "name": "data", "emptyDir": {} }));
        assert_eq!(volumes[1]["flexVolume"]["driver"], "fstab/cifs");
        assert_eq!(found.volumes.len(), 1);
        let raw = &found.volumes[0].raw;
        assert_eq!(raw.kind.as_deref(), Some("objectivefs"));
        assert_eq!(raw.filesystem.as_deref(), Some("s3://my-bucket"));
        assert_eq!(raw.options.as_deref(), Some(&["mt".to_string(), "noatime".into(), "ro".into()][..]));
        assert_eq!(raw.secret_name.as_deref(), Some("ofs-secret"));
    }

    #[test]
    fn read_only_adds_ro_and_unknown_options_warn() {
        let mut volumes = vec![json!({ "name": "d", "flexVolume": { "driver": "altalang/ofs", "readOnly": true,
            "options": { "networkPath": "s3://b", "cache": "big" } } })];
        let found = convert(&mut volumes);
        assert_eq!(found.volumes[0].raw.options.as_deref(), Some(&["ro".to_string()][..]));
        assert_eq!(found.warnings.len(), 1);
        assert!(found.warnings[0].contains("options.cache"), "{:?}", found.warnings);
        // An rw in mountOptions does not contradict readOnly in the spec.
        let mut volumes = vec![json!({ "name": "d", "flexVolume": { "driver": "altalang/ofs", "readOnly": true,
            "options": { "networkPath": "s3://b", "mountOptions": "rw,mt" } } })];
        let found = convert(&mut volumes);
        assert_eq!(found.volumes[0].raw.options.as_deref(), Some(&["mt".to_string(), "ro".to_string()][..]));
    }

    #[test]
    fn names_the_flexvolume_field_at_fault() {
        let mut volumes = vec![
            json!({ "name": "a", "flexVolume": { "driver": "altalang/ofs", "options": {} } }),
            json!({ "name": "b", "flexVolume": { "driver": "altalang/ofs", "options": { "networkPath": "-o x" } } }),
            json!({ "name": "c", "flexVolume": { "driver": "altalang/ofs", "secretRef": { "name": "Bad_Secret" },
                "options": { "networkPath": "s3://c" } } }),
        ];
        let found = convert(&mut volumes);
        let fields: Vec<String> = found.problems.iter().map(|p| format!("{}: {}", p.origin, p.field)).collect();
        assert_eq!(
            fields,
            [
                "spec.volumes[0].flexVolume: options.networkPath",
                "spec.volumes[1].flexVolume: options.networkPath",
                "spec.volumes[2].flexVolume: secretRef.name"
            ]
        );
        assert!(found.volumes.is_empty());
        assert!(volumes.iter().all(|v| v.get("flexVolume").is_some()));
    }

    #[test]
    fn a_secret_ref_that_names_no_secret_is_refused_not_dropped() {
        let flex = |secret_ref: Value| {
            json!({ "name": "d", "flexVolume": { "driver": "altalang/ofs", "secretRef": secret_ref,
                "options": { "networkPath": "s3://b" } } })
        };
        let mut volumes =
            vec![flex(json!("ofs-secret")), flex(json!({})), flex(json!({ "name": 5 })), flex(json!(["ofs-secret"]))];
        let found = convert(&mut volumes);
        let fields: Vec<String> = found.problems.iter().map(|p| format!("{}: {}", p.origin, p.field)).collect();
        assert_eq!(
            fields,
            [
                "spec.volumes[0].flexVolume: secretRef",
                "spec.volumes[1].flexVolume: secretRef.name",
                "spec.volumes[2].flexVolume: secretRef.name",
                "spec.volumes[3].flexVolume: secretRef",
            ]
        );
        assert!(found.problems[0].message.contains("{name: ofs-secret}"), "{}", found.problems[0]);
        assert!(found.volumes.is_empty(), "a volume was converted without its credentials");
        // No secretRef at all is still a volume without a Secret, as the driver had it.
        let mut volumes = vec![
            json!({ "name": "d", "flexVolume": { "driver": "altalang/ofs", "options": { "networkPath": "s3://b" } } }),
        ];
        assert_eq!(convert(&mut volumes).volumes.len(), 1);
    }
}
