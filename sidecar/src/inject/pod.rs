//! The pod around the sidecar: its containers' mounts of served volumes made
//! directories of the root volume, the start order they need, and the grace period.

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::container::sidecar_position;
use super::{
    lookup, lookup_mut, malformed, member, member_mut, name_of, InjectError, DEFAULT_GRACE_SECONDS, GRACE_MARGIN,
    ISTIO_PROXY, MODE_ANNOTATION, ROOT_VOLUME,
};
use crate::settings::Mode;
use crate::spec::RawVolume;

/// The root volume: an emptyDir of medium `Memory`, a tmpfs of the kubelet's. Its
/// own files are only the volumes' empty mountpoints. The medium is what keeps a
/// filesystem left mounted under it out of the kubelet's reach: a tmpfs emptyDir is
/// torn down by unmounting it first (`pkg/volume/emptydir`,
/// `teardownTmpfsOrHugetlbfs`), which fails while anything is still mounted below,
/// so the recursive delete that follows never runs; a disk emptyDir goes straight
/// to that delete, which empties whatever is still mounted in it.
pub fn root_volume() -> Value {
    // Copied, not built: a copy of a map takes its hash table as it is.
    static ROOT: LazyLock<Value> = LazyLock::new(|| json!({ "name": ROOT_VOLUME, "emptyDir": { "medium": "Memory" } }));
    ROOT.clone()
}

/// A subPath inside a FUSE volume is not reached by a repair: the kubelet binds
/// the subdirectory of the mount there at the container's start, and a new mount
/// at the volume's root does not cover a bind whose root lies below it (README,
/// Limits). Say so at admission, where the pod's author reads it: the first
/// [`SUBPATH_WARNINGS`] mounts, then their count (the API server keeps a few KiB
/// of warnings, and a pod of many containers could otherwise bring megabytes).
pub(super) const SUBPATH_WARNINGS: usize = 8;

pub(super) fn subpath_warnings(served: &[RawVolume], groups: &[&[Value]]) -> Vec<String> {
    let fuse: Vec<&str> = served.iter().filter(|raw| is_fuse(raw)).filter_map(|raw| raw.name.as_deref()).collect();
    let mut warnings = Vec::new();
    let mut more = 0;
    for container in groups.iter().flat_map(|group| group.iter()) {
        let mounts = mounts_of(container);
        for mount in mounts {
            let Some(volume) = name_of(mount).filter(|name| fuse.contains(name)) else { continue };
            let sub = sub_path(mount);
            let Some(sub) = sub else { continue };
            if warnings.len() == SUBPATH_WARNINGS {
                more += 1;
                continue;
            }
            let container = name_of(container).unwrap_or("?");
            let at = member(mount, "mountPath").and_then(Value::as_str).unwrap_or("its mountPath");
            warnings.push(format!(
                "container {container} mounts volume {volume} with subPath {sub}: sidemount repairs a FUSE volume by \
                 mounting over its root, which does not reach a subPath bind; after the daemon restarts, {container} \
                 reads ENOTCONN at {at} until the pod is recreated. Mount the whole volume and use {sub} inside it instead"
            ));
        }
    }
    if more > 0 {
        warnings.push(format!("and {more} more mounts of a FUSE volume with a subPath, each with the same limit"));
    }
    warnings
}

/// An init container that runs to completion before the sidecar starts (before
/// `istio-proxy` in native mode; any, in legacy mode, where the sidecar is an app
/// container) would find a served volume an empty directory of the root tmpfs, and
/// what it wrote there would be hidden under the mount, then lost with the pod.
///
/// In legacy mode every app container starts alongside the sidecar, before the
/// volume is mounted, so a subPath of it is never the volume either.
pub(super) fn check_start_order(
    init_containers: &[Value],
    containers: &[Value],
    mode: Mode,
    served: &[&str],
) -> Result<(), InjectError> {
    if mode == Mode::Legacy {
        for (i, container) in containers.iter().enumerate() {
            let mounts = mounts_of(container);
            let found = mounts.iter().enumerate().find_map(|(j, m)| {
                let volume = name_of(m).filter(|n| served.contains(n))?;
                let sub = sub_path(m)?;
                Some((j, volume, sub))
            });
            let Some((j, volume, sub)) = found else { continue };
            return Err(InjectError::Mount {
                field: format!("spec.containers[{i}].volumeMounts[{j}]"),
                message: format!(
                    "in legacy mode container {} starts alongside the sidemount sidecar, so its subPath {sub} of \
                     volume {volume:?} is bound before the volume is mounted: it would see a directory of the root \
                     tmpfs, never the volume; mount the whole volume and use {sub} inside it, or use native mode \
                     ({MODE_ANNOTATION}: native, Kubernetes 1.29 and later)",
                    name_of(container).unwrap_or("?")
                ),
            });
        }
    }
    let before = match mode {
        Mode::Native => sidecar_position(init_containers),
        Mode::Legacy => init_containers.len(),
    };
    for (i, container) in init_containers[..before].iter().enumerate() {
        // A native sidecar of the user's keeps running and receives the mount
        // later, unless it mounts a subPath: bound below the volume's directory
        // before anything is mounted there, that never shows the volume.
        let restartable = member(container, "restartPolicy").and_then(Value::as_str) == Some("Always");
        let mounts = mounts_of(container);
        let found = mounts.iter().enumerate().find_map(|(j, m)| {
            let volume = name_of(m).filter(|n| served.contains(n))?;
            let sub = sub_path(m);
            (!restartable || sub.is_some()).then_some((j, volume, sub.unwrap_or_default()))
        });
        let Some((j, volume, sub)) = found else { continue };
        let name = name_of(container).unwrap_or("?");
        let message = match (restartable, mode) {
            (true, _) => format!(
                "native sidecar {name} starts before the sidemount sidecar, so its subPath {sub} of volume {volume:?} \
                 is bound before the volume is mounted: it would see a directory of the root tmpfs, never the volume; {}",
                if mode == Mode::Native {
                    format!("move it after {ISTIO_PROXY}, where the sidecar starts, or mount the whole volume")
                } else {
                    "mount the whole volume".to_string()
                }
            ),
            (false, Mode::Native) => format!(
                "init container {name} runs before the sidemount sidecar has mounted volume {volume:?}: it would see \
                 an empty directory, and what it wrote would be hidden under the mount; move it after {ISTIO_PROXY}, \
                 where the sidecar starts"
            ),
            (false, Mode::Legacy) => format!(
                "init container {name} runs before the sidemount sidecar has mounted volume {volume:?}: it would see \
                 an empty directory, and what it wrote would be hidden under the mount; in legacy mode the sidecar \
                 starts with the app containers, after every init container: use native mode ({MODE_ANNOTATION}: \
                 native, Kubernetes 1.29 and later) or do this work in an app container"
            ),
        };
        return Err(InjectError::Mount { field: format!("spec.initContainers[{i}].volumeMounts[{j}]"), message });
    }
    Ok(())
}

/// A container's mount of a served volume `X` becomes a mount of the root
/// volume's directory `X` (`subPath: X`, or `X/<its own subPath>`), at the same
/// `mountPath`, with the same `readOnly`. It must receive the mount the sidecar
/// makes on that directory: `HostToContainer` (rslave); `Bidirectional` receives
/// it too and is kept. Says whether the container mounted a served volume, its
/// `volumeMounts` then rewritten.
///
/// `field` names the container (`spec.containers[0]`) in an error; it is made
/// only then.
pub(super) fn mount_from_root(
    container: &mut Value,
    served: &[&str],
    field: impl Fn() -> String,
) -> Result<bool, InjectError> {
    let devices = member(container, "volumeDevices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if let Some((j, volume)) =
        devices.iter().enumerate().find_map(|(j, d)| name_of(d).filter(|name| served.contains(name)).map(|n| (j, n)))
    {
        return Err(InjectError::Mount {
            field: format!("{}.volumeDevices[{j}].name", field()),
            message: format!(
                "volume {volume:?} is a filesystem that sidemount mounts, not a block device: mount it with \
                 volumeMounts instead"
            ),
        });
    }
    let Some(mounts) = member_mut(container, "volumeMounts") else { return Ok(false) };
    let mounts = match mounts {
        Value::Null => return Ok(false),
        Value::Array(mounts) => mounts,
        _ => return Err(malformed(&format!("{}.volumeMounts", field()), "a list")),
    };
    let mut rewritten = false;
    for (j, mount) in mounts.iter_mut().enumerate() {
        if !name_of(mount).is_some_and(|name| served.contains(&name)) {
            continue;
        }
        let Some(fields) = mount.as_object_mut() else { continue };
        rewritten = true;
        // The usual mount, `name`, `mountPath` and `readOnly` in that order
        // and nothing else, is already in order: its name's place takes the
        // root volume, and its own name becomes the subPath that follows.
        let usual = ["name", "mountPath", "readOnly"];
        let mut order = usual.iter();
        if fields.keys().all(|key| order.any(|usual| key == usual)) {
            let Some(Value::String(volume)) = lookup_mut(fields, "name") else { unreachable!("a served volume") };
            let volume = std::mem::replace(volume, ROOT_VOLUME.into());
            fields.insert("subPath".into(), Value::String(volume));
            fields.insert("mountPropagation".into(), Value::String("HostToContainer".into()));
            continue;
        }
        // Rebuilt in the usual order of the fields; anything else the mount
        // carries follows, in its order. One pass over the old map, whose keys
        // and strings are moved into the new one: each removal from a map
        // shifts the rest. (On an error the pod is dropped, changed or not.)
        let (mut name, mut mount_path, mut read_only, mut propagation) = (None, None, None, None);
        let (mut sub, mut expr) = (None, None);
        let mut rest = Vec::new();
        for (key, value) in std::mem::take(fields) {
            match key.as_str() {
                "name" => name = Some((key, value)),
                "subPath" => sub = Some((key, value)),
                "subPathExpr" => expr = Some((key, value)),
                "mountPath" => mount_path = Some((key, value)),
                "readOnly" => read_only = Some((key, value)),
                "mountPropagation" => propagation = Some((key, value)),
                _ => rest.push((key, value)),
            }
        }
        let Some((name_key, Value::String(volume))) = name else { unreachable!("a mount of a served volume") };
        let at = || format!("{}.volumeMounts[{j}]", field());
        check_sub_paths(&volume, text(&sub), text(&expr), at)?;
        let rro = rest.iter().find(|(key, _)| key == "recursiveReadOnly").and_then(|(_, value)| value.as_str());
        if let Some(rro) = rro.filter(|r| *r != "Disabled") {
            return Err(InjectError::Mount {
                field: format!("{}.recursiveReadOnly", at()),
                message: format!(
                    "{rro} needs mountPropagation None, but volume {volume:?} reaches the container by \
                     HostToContainer, from the sidecar's mount: remove it (readOnly is kept)"
                ),
            });
        }
        let sub_path = match (text(&sub), text(&expr)) {
            (_, Some(expr)) => ("subPathExpr", format!("{volume}/{expr}")),
            (Some(sub), None) => ("subPath", format!("{volume}/{sub}")),
            (None, None) => ("subPath", volume),
        };
        let mut rebuilt =
            Map::with_capacity(4 + usize::from(mount_path.is_some()) + usize::from(read_only.is_some()) + rest.len());
        rebuilt.insert(name_key, Value::String(ROOT_VOLUME.into()));
        rebuilt.extend(mount_path);
        rebuilt.extend(read_only);
        let sub_path_key = match (sub, expr) {
            (Some((key, _)), _) | (_, Some((key, _))) if key == sub_path.0 => key,
            _ => sub_path.0.into(),
        };
        rebuilt.insert(sub_path_key, Value::String(sub_path.1));
        let propagation = match propagation {
            Some((key, Value::String(p))) if p == "Bidirectional" => (key, Value::String(p)),
            _ => ("mountPropagation".into(), Value::String("HostToContainer".into())),
        };
        rebuilt.extend([propagation]);
        rebuilt.extend(rest);
        *fields = rebuilt;
    }
    Ok(rewritten)
}

/// A mount's member, when it is a string and not empty.
fn text(member: &Option<(String, Value)>) -> Option<&str> {
    match member {
        Some((_, Value::String(text))) if !text.is_empty() => Some(text),
        _ => None,
    }
}

/// The `subPath` or `subPathExpr` of a mount of a served volume, which becomes a
/// path inside the volume's directory of the root: Kubernetes refuses an absolute
/// path, a `..` and both fields at once, but behind the volume's name an absolute
/// path would be accepted as a directory of the volume, and `..` would be reported
/// as a path the user never wrote. Refused here, as the user wrote them.
pub(super) fn check_sub_paths(
    volume: &str,
    sub: Option<&str>,
    expr: Option<&str>,
    at: impl Fn() -> String,
) -> Result<(), InjectError> {
    if sub.is_some() && expr.is_some() {
        return Err(InjectError::Mount {
            field: format!("{}.subPathExpr", at()),
            message: "subPath and subPathExpr are mutually exclusive: give one of them".into(),
        });
    }
    let (key, path) = match (sub, expr) {
        (Some(sub), _) => ("subPath", sub),
        (None, Some(expr)) => ("subPathExpr", expr),
        (None, None) => return Ok(()),
    };
    if path.starts_with('/') || path.split('/').any(|part| part == "..") {
        return Err(InjectError::Mount {
            field: format!("{}.{key}", at()),
            message: format!("{path:?} must be a relative path without `..`: it names a path inside volume {volume:?}"),
        });
    }
    Ok(())
}

/// Whether a served volume is a FUSE mount, repaired by mounting over its root.
pub(super) fn is_fuse(raw: &RawVolume) -> bool {
    matches!(raw.kind.as_deref(), Some("fuse" | "objectivefs"))
}

/// A container's volume mounts (none when it has no list).
pub(super) fn mounts_of(container: &Value) -> &[Value] {
    member(container, "volumeMounts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// A mount's `subPath`, else its `subPathExpr`, when not empty.
pub(super) fn sub_path(mount: &Value) -> Option<&str> {
    ["subPath", "subPathExpr"]
        .iter()
        .find_map(|key| member(mount, key).and_then(Value::as_str).filter(|sub| !sub.is_empty()))
}

/// Raises `terminationGracePeriodSeconds` to the supervisor's shutdown budget
/// plus a margin: a pod killed before its mounts are down leaves the kubelet a
/// dead FUSE mount (stuck Terminating) or a live kernel mount it would empty.
/// Returns the original value when it was raised.
pub(super) fn raise_grace_period(
    spec: &mut Map<String, Value>,
    shutdown_timeout: Duration,
) -> Result<Option<String>, InjectError> {
    let needed = (shutdown_timeout + GRACE_MARGIN).as_secs_f64().ceil() as u64;
    let current = match lookup(spec, "terminationGracePeriodSeconds") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .ok_or_else(|| malformed("spec.terminationGracePeriodSeconds", "a whole number of seconds"))?,
        ),
    };
    if current.unwrap_or(DEFAULT_GRACE_SECONDS) >= needed {
        return Ok(None);
    }
    spec.insert("terminationGracePeriodSeconds".into(), json!(needed));
    Ok(Some(current.map_or_else(|| "unset".to_string(), |s| s.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::tests::{app, config, injected, pod, FUSE};
    use crate::inject::*;

    #[test]
    fn a_subpath_inside_a_fuse_volume_is_warned_about() {
        let spec = "- {name: data, type: fuse, command: [bindfs, -f, /src, '{mountpoint}']}\n\
                    - {name: disk, type: block, device: /dev/x, fsType: ext4}";
        let input = pod(
            json!({ VOLUMES_ANNOTATION: spec }),
            json!({ "containers": [app(json!([
                { "name": "data", "mountPath": "/data" },
                { "name": "data", "mountPath": "/logs", "subPath": "logs" },
                { "name": "data", "mountPath": "/empty", "subPath": "" },
                { "name": "disk", "mountPath": "/disk", "subPath": "d" },
            ]))] }),
        );
        let Outcome::Injected { warnings, .. } = inject(&input, &config()).unwrap() else { panic!("not injected") };
        // One warning: the FUSE volume's subPath; not the whole mount, not an empty
        // subPath, not a kernel volume (a bind of a kernel mount is never dead).
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("container app mounts volume data with subPath logs:")
                && warnings[0].contains("ENOTCONN at /logs")
                && warnings[0].contains("Mount the whole volume"),
            "{warnings:?}"
        );
    }

    #[test]
    fn subpath_warnings_are_bounded() {
        let mounts: Vec<Value> =
            (0..50).map(|i| json!({ "name": "data", "mountPath": format!("/m{i}"), "subPath": "s" })).collect();
        let containers: Vec<Value> =
            (0..20).map(|i| json!({ "name": format!("c{i}"), "image": "x", "volumeMounts": mounts })).collect();
        let input = pod(json!({ VOLUMES_ANNOTATION: FUSE }), json!({ "containers": containers }));
        let Outcome::Injected { warnings, .. } = inject(&input, &config()).unwrap() else { panic!("not injected") };
        assert_eq!(warnings.len(), SUBPATH_WARNINGS + 1, "{}", warnings.len());
        assert!(warnings[0].starts_with("container c0 mounts volume data with subPath s:"), "{}", warnings[0]);
        assert_eq!(
            warnings[SUBPATH_WARNINGS],
            format!(
                "and {} more mounts of a FUSE volume with a subPath, each with the same limit",
                1000 - SUBPATH_WARNINGS
            )
        );
    }

    #[test]
    fn every_mount_of_a_served_volume_becomes_a_directory_of_the_root_volume() {
        let spec = "- {name: data, type: fuse, command: [bindfs, -f, /src, '{mountpoint}']}\n\
                    - {name: disk, type: block, device: /dev/x, fsType: ext4}";
        let input = pod(
            json!({ VOLUMES_ANNOTATION: spec }),
            json!({
                "initContainers": [{ "name": "migrate", "image": "x", "volumeMounts": [{ "name": "disk", "mountPath": "/disk" }] }],
                "containers": [app(json!([
                    { "name": "data", "mountPath": "/d", "mountPropagation": "Bidirectional" },
                    { "mountPath": "/ro", "name": "data", "readOnly": true, "mountPropagation": "None" },
                    { "name": "data", "mountPath": "/logs", "subPath": "logs" },
                    { "name": "disk", "mountPath": "/per-pod", "subPathExpr": "$(POD_NAME)", "subPath": "" },
                    { "name": "other", "mountPath": "/o" },
                ]))],
                "volumes": [
                    { "name": "data", "emptyDir": { "medium": "Memory" } },
                    { "name": "other", "emptyDir": {} },
                ],
            }),
        );
        let out = injected(inject(&input, &config()).unwrap());
        // The placeholder emptyDir is gone: nothing mounts it any more.
        assert_eq!(out["spec"]["volumes"], json!([{ "name": "other", "emptyDir": {} }, root_volume()]));
        assert_eq!(
            out["spec"]["containers"][0]["volumeMounts"],
            json!([
                { "name": "sidemount", "mountPath": "/d", "subPath": "data", "mountPropagation": "Bidirectional" },
                { "name": "sidemount", "mountPath": "/ro", "readOnly": true, "subPath": "data", "mountPropagation": "HostToContainer" },
                { "name": "sidemount", "mountPath": "/logs", "subPath": "data/logs", "mountPropagation": "HostToContainer" },
                { "name": "sidemount", "mountPath": "/per-pod", "subPathExpr": "disk/$(POD_NAME)", "mountPropagation": "HostToContainer" },
                { "name": "other", "mountPath": "/o" },
            ])
        );
        let migrate = &out["spec"]["initContainers"][1];
        assert_eq!(
            migrate["volumeMounts"],
            json!([{ "name": "sidemount", "mountPath": "/disk", "subPath": "disk", "mountPropagation": "HostToContainer" }])
        );
        // The sidecar mounts the root once, whatever the number of volumes.
        assert_eq!(
            out["spec"]["initContainers"][0]["volumeMounts"],
            json!([{ "name": "sidemount", "mountPath": "/sidemount", "mountPropagation": "Bidirectional" }])
        );
    }

    /// The error injecting one container with `mounts` (and `devices`) of volume `data`.
    fn mount_error(mounts: Value, devices: Value) -> String {
        let mut container = app(mounts);
        container["volumeDevices"] = devices;
        let input = pod(json!({ VOLUMES_ANNOTATION: FUSE }), json!({ "containers": [container] }));
        let err = inject(&input, &config()).unwrap_err();
        assert!(matches!(err, InjectError::Mount { .. }), "{err}");
        err.to_string()
    }

    #[test]
    fn a_sub_path_that_is_not_inside_the_volume_is_refused_as_written() {
        // Behind the volume's directory "/etc" would be a relative "data//etc", which
        // Kubernetes accepts: the pod it refused would run, with another meaning.
        let err = mount_error(json!([{ "name": "data", "mountPath": "/c", "subPath": "/etc" }]), Value::Null);
        assert!(
            err.starts_with("spec.containers[0].volumeMounts[0].subPath: \"/etc\" must be a relative path"),
            "{err}"
        );
        let err = mount_error(
            json!([{ "name": "data", "mountPath": "/a" }, { "name": "data", "mountPath": "/c", "subPathExpr": "$(X)/../up" }]),
            Value::Null,
        );
        assert!(err.starts_with("spec.containers[0].volumeMounts[1].subPathExpr: \"$(X)/../up\""), "{err}");
        let err = mount_error(
            json!([{ "name": "data", "mountPath": "/c", "subPath": "s", "subPathExpr": "e" }]),
            Value::Null,
        );
        assert!(err.starts_with("spec.containers[0].volumeMounts[0].subPathExpr: subPath and subPathExpr"), "{err}");
        // A relative path, a trailing slash, "..." as a name, and an empty one stay as they were.
        let input = pod(
            json!({ VOLUMES_ANNOTATION: FUSE }),
            json!({ "containers": [app(json!([
                { "name": "data", "mountPath": "/a", "subPath": "a/b/" },
                { "name": "data", "mountPath": "/b", "subPath": "...", "subPathExpr": "" },
                { "name": "data", "mountPath": "/c", "subPath": "" },
            ]))] }),
        );
        let out = injected(inject(&input, &config()).unwrap());
        let subs: Vec<&Value> = (0..3).map(|i| &out["spec"]["containers"][0]["volumeMounts"][i]["subPath"]).collect();
        assert_eq!(subs, [&json!("data/a/b/"), &json!("data/..."), &json!("data")]);
    }

    #[test]
    fn a_recursive_read_only_mount_is_refused() {
        // Kubernetes refuses recursiveReadOnly with any propagation but None, and the
        // mount of a served volume must receive the sidecar's mount.
        let rro =
            |value: &str| json!([{ "name": "data", "mountPath": "/r", "readOnly": true, "recursiveReadOnly": value }]);
        for value in ["Enabled", "IfPossible"] {
            let err = mount_error(rro(value), Value::Null);
            assert!(
                err.starts_with(&format!("spec.containers[0].volumeMounts[0].recursiveReadOnly: {value} needs")),
                "{err}"
            );
        }
        let input = pod(json!({ VOLUMES_ANNOTATION: FUSE }), json!({ "containers": [app(rro("Disabled"))] }));
        let out = injected(inject(&input, &config()).unwrap());
        assert_eq!(out["spec"]["containers"][0]["volumeMounts"][0]["recursiveReadOnly"], "Disabled");
    }

    #[test]
    fn a_served_volume_is_no_block_device() {
        let err = mount_error(json!([]), json!([{ "name": "data", "devicePath": "/dev/xvdb" }]));
        assert!(
            err.starts_with(
                "spec.containers[0].volumeDevices[0].name: volume \"data\" is a filesystem that sidemount mounts"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_init_container_that_runs_before_the_sidecar_may_not_mount_a_served_volume() {
        let early = json!({ "name": "early", "image": "x", "volumeMounts": [{ "name": "data", "mountPath": "/d" }] });
        let proxy = json!({ "name": ISTIO_PROXY, "image": "istio", "restartPolicy": "Always" });
        // Native mode: before istio-proxy, the sidecar's place, it runs on the empty directory.
        let input = pod(
            json!({ VOLUMES_ANNOTATION: FUSE }),
            json!({ "initContainers": [early.clone(), proxy.clone()], "containers": [app(json!([]))] }),
        );
        let err = inject(&input, &config()).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "spec.initContainers[0].volumeMounts[0]: init container early runs before the sidemount sidecar"
            ) && err.ends_with("move it after istio-proxy, where the sidecar starts"),
            "{err}"
        );
        // A native sidecar of the user's before it receives the mount later, but not through a subPath.
        let mut logs = early.clone();
        logs["restartPolicy"] = json!("Always");
        logs["volumeMounts"][0]["subPath"] = json!("logs");
        let input = pod(
            json!({ VOLUMES_ANNOTATION: FUSE }),
            json!({ "initContainers": [logs, proxy.clone()], "containers": [app(json!([]))] }),
        );
        let err = inject(&input, &config()).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.initContainers[0].volumeMounts[0]: native sidecar early starts before the sidemount")
                && err.contains("its subPath logs of volume \"data\""),
            "{err}"
        );
        // After it, or a native sidecar of the user's before it, is fine.
        let mut user_sidecar = early.clone();
        user_sidecar["restartPolicy"] = json!("Always");
        let input = pod(
            json!({ VOLUMES_ANNOTATION: FUSE }),
            json!({ "initContainers": [user_sidecar, proxy, early.clone()], "containers": [app(json!([]))] }),
        );
        let out = injected(inject(&input, &config()).unwrap());
        let order: Vec<&str> = out["spec"]["initContainers"].as_array().unwrap().iter().filter_map(name_of).collect();
        assert_eq!(order, ["early", ISTIO_PROXY, CONTAINER_NAME, "early"]);
        // Legacy mode: every init container runs before the sidecar.
        let input = pod(
            json!({ VOLUMES_ANNOTATION: FUSE, MODE_ANNOTATION: "legacy" }),
            json!({ "initContainers": [{ "name": "plain", "image": "x" }, early], "containers": [app(json!([]))] }),
        );
        let err = inject(&input, &config()).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.initContainers[1].volumeMounts[0]: init container early")
                && err.contains("use native mode"),
            "{err}"
        );
        // And its app containers start alongside the sidecar: a subPath is bound before the mount.
        let input = pod(
            json!({ VOLUMES_ANNOTATION: FUSE, MODE_ANNOTATION: "legacy" }),
            json!({ "containers": [app(json!([{ "name": "data", "mountPath": "/d" }, { "name": "data", "mountPath": "/l", "subPathExpr": "$(P)" }]))] }),
        );
        let err = inject(&input, &config()).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.containers[0].volumeMounts[1]: in legacy mode container app starts alongside")
                && err.contains("its subPath $(P) of volume \"data\""),
            "{err}"
        );
    }

    #[test]
    fn raises_the_grace_period_and_records_the_original() {
        let mut cfg = config();
        let input =
            pod(json!({ VOLUMES_ANNOTATION: FUSE }), json!({ "containers": [], "terminationGracePeriodSeconds": 5 }));
        let out = injected(inject(&input, &cfg).unwrap());
        assert_eq!(out["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(out["metadata"]["annotations"][ORIGINAL_GRACE_ANNOTATION], "5");

        // The default 30 s covers the default 20 s budget plus the margin.
        let input = pod(json!({ VOLUMES_ANNOTATION: FUSE }), json!({ "containers": [] }));
        let out = injected(inject(&input, &cfg).unwrap());
        assert!(out["spec"].get("terminationGracePeriodSeconds").is_none());
        assert!(out["metadata"]["annotations"].get(ORIGINAL_GRACE_ANNOTATION).is_none());

        cfg.shutdown_timeout = Duration::from_millis(60_500);
        let out = injected(inject(&input, &cfg).unwrap());
        assert_eq!(out["spec"]["terminationGracePeriodSeconds"], 71);
        assert_eq!(out["metadata"]["annotations"][ORIGINAL_GRACE_ANNOTATION], "unset");

        let input =
            pod(json!({ VOLUMES_ANNOTATION: FUSE }), json!({ "containers": [], "terminationGracePeriodSeconds": 120 }));
        assert_eq!(injected(inject(&input, &cfg).unwrap())["spec"]["terminationGracePeriodSeconds"], 120);
    }
}
