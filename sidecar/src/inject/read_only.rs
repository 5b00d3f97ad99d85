//! Read-only app mounts of a FUSE volume, kept read-only across a repair.
//!
//! The kubelet makes a `readOnly: true` mount read-only on its own bind of the
//! volume. When a FUSE daemon dies, the supervisor mounts the new daemon's mount
//! over the volume's root, and that mount reaches the app by propagation: the
//! kernel copies it with the flags of the sidecar's mount, not of the app's bind,
//! so the app's `readOnly` mount would be writable from then on. A mount the
//! sidecar makes read-only (`options: [ro]`, applied before the bind) stays
//! read-only in every copy.
//!
//! The rules, for a FUSE volume (`fuse`, `objectivefs`) whose annotation names
//! neither `ro` nor `rw` in `options` (one it names wins):
//! - every mount of it, in every container, is `readOnly: true`: `ro` is added;
//! - some are and some are not: one warning per volume naming a read-only one and
//!   a writable one, since no flag serves both once a repair has happened.

use serde_json::Value;

use super::pod::{is_fuse, mounts_of, SUBPATH_WARNINGS};
use super::{member, name_of};
use crate::spec::RawVolume;

/// Adds `ro` to each FUSE volume that every container mounts read-only, and
/// returns the warnings for volumes that some mount read-only and some read-write.
pub(super) fn fill(served: &mut [RawVolume], groups: &[&[Value]]) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut more = 0;
    for raw in served.iter_mut() {
        if !is_fuse(raw) {
            continue;
        }
        if raw.options.iter().flatten().any(|o| o == "ro" || o == "rw") {
            continue;
        }
        let Some(volume) = raw.name.as_deref() else { continue };
        let mut read_only: Option<(&str, &str)> = None;
        let mut writable: Option<(&str, &str)> = None;
        for container in groups.iter().flat_map(|group| group.iter()) {
            let name = name_of(container).unwrap_or("?");
            for mount in mounts_of(container) {
                if name_of(mount) != Some(volume) {
                    continue;
                }
                let at = member(mount, "mountPath").and_then(Value::as_str).unwrap_or("its mountPath");
                if member(mount, "readOnly").and_then(Value::as_bool) == Some(true) {
                    read_only.get_or_insert((name, at));
                } else {
                    writable.get_or_insert((name, at));
                }
            }
        }
        match (read_only, writable) {
            (Some(_), None) => raw.options.get_or_insert_with(Vec::new).push("ro".into()),
            (Some((ro_container, ro_at)), Some((rw_container, rw_at))) => {
                if warnings.len() == SUBPATH_WARNINGS {
                    more += 1;
                } else {
                    warnings.push(format!(
                        "volume {volume} is mounted read-only by container {ro_container} at {ro_at} and \
                         read-write by container {rw_container} at {rw_at}: after sidemount repairs the volume \
                         (its daemon died), {ro_container} can write at {ro_at} too, because the repaired mount \
                         reaches every container with the sidecar's flags. Mount it readOnly everywhere (sidemount \
                         then mounts it `ro`), or serve {ro_container} a volume of its own"
                    ));
                }
            }
            _ => {}
        }
    }
    if more > 0 {
        warnings
            .push(format!("and {more} more volumes mounted both read-only and read-write, each with the same limit"));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn volume(kind: &str, options: Option<&[&str]>) -> RawVolume {
        RawVolume {
            name: Some("data".into()),
            kind: Some(kind.into()),
            options: options.map(|o| o.iter().map(|s| s.to_string()).collect()),
            ..RawVolume::default()
        }
    }

    fn container(name: &str, mounts: Value) -> Value {
        json!({ "name": name, "image": "x", "volumeMounts": mounts })
    }

    fn options_after(raw: RawVolume, containers: &[Value]) -> (Option<Vec<String>>, Vec<String>) {
        let mut served = [raw];
        let warnings = fill(&mut served, &[containers]);
        let [raw] = served;
        (raw.options, warnings)
    }

    #[test]
    fn a_volume_every_container_mounts_read_only_is_mounted_ro() {
        let apps = [
            container("a", json!([{ "name": "data", "mountPath": "/d", "readOnly": true }])),
            container(
                "b",
                json!([{ "name": "data", "mountPath": "/e", "readOnly": true }, { "name": "other", "mountPath": "/o" }]),
            ),
        ];
        for kind in ["fuse", "objectivefs"] {
            assert_eq!(options_after(volume(kind, None), &apps), (Some(vec!["ro".into()]), vec![]), "{kind}");
            let (options, _) = options_after(volume(kind, Some(&["noatime"])), &apps);
            assert_eq!(options, Some(vec!["noatime".into(), "ro".into()]), "{kind}: the spec's options are kept");
        }
    }

    #[test]
    fn the_annotation_decides_when_it_names_ro_or_rw() {
        let apps = [container("a", json!([{ "name": "data", "mountPath": "/d", "readOnly": true }]))];
        assert_eq!(options_after(volume("fuse", Some(&["rw"])), &apps), (Some(vec!["rw".into()]), vec![]));
        assert_eq!(options_after(volume("fuse", Some(&["ro"])), &apps), (Some(vec!["ro".into()]), vec![]));
    }

    #[test]
    fn kernel_volumes_and_unmounted_or_writable_volumes_are_left_alone() {
        let read_only = [container("a", json!([{ "name": "data", "mountPath": "/d", "readOnly": true }]))];
        // A kernel mount is not repaired by mounting over it: nothing to keep.
        for kind in ["block", "zfs"] {
            assert_eq!(options_after(volume(kind, None), &read_only), (None, vec![]), "{kind}");
        }
        let writable = [container("a", json!([{ "name": "data", "mountPath": "/d", "readOnly": false }]))];
        assert_eq!(options_after(volume("fuse", None), &writable), (None, vec![]));
        let elsewhere = [container("a", json!([{ "name": "other", "mountPath": "/d", "readOnly": true }]))];
        assert_eq!(options_after(volume("fuse", None), &elsewhere), (None, vec![]), "no container mounts it");
    }

    #[test]
    fn read_only_and_writable_mounts_of_one_volume_are_warned_of() {
        // Two mounts in one container count as two.
        let apps = [container(
            "app",
            json!([{ "name": "data", "mountPath": "/ro", "readOnly": true }, { "name": "data", "mountPath": "/rw" }]),
        )];
        let (options, warnings) = options_after(volume("fuse", None), &apps);
        assert_eq!(options, None, "a flag for one would be wrong for the other");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with(
                "volume data is mounted read-only by container app at /ro and read-write by container app at /rw: \
                 after sidemount repairs the volume"
            ),
            "{}",
            warnings[0]
        );
        assert!(warnings[0].contains("Mount it readOnly everywhere"), "{}", warnings[0]);
    }

    #[test]
    fn the_warnings_are_bounded() {
        let mut served: Vec<RawVolume> =
            (0..20).map(|i| RawVolume { name: Some(format!("v{i}")), ..volume("fuse", None) }).collect();
        let mounts: Vec<Value> = (0..20)
            .flat_map(|i| {
                [
                    json!({ "name": format!("v{i}"), "mountPath": format!("/r{i}"), "readOnly": true }),
                    json!({ "name": format!("v{i}"), "mountPath": format!("/w{i}") }),
                ]
            })
            .collect();
        let apps = [container("app", Value::Array(mounts))];
        let warnings = fill(&mut served, &[&apps]);
        assert_eq!(warnings.len(), SUBPATH_WARNINGS + 1);
        assert_eq!(
            warnings[SUBPATH_WARNINGS],
            format!(
                "and {} more volumes mounted both read-only and read-write, each with the same limit",
                20 - SUBPATH_WARNINGS
            )
        );
    }
}
