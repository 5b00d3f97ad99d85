//! Whose files a served volume holds: the user and group its app containers run
//! as (`securityContext.runAsUser`, `runAsGroup`, `fsGroup`), written into the
//! spec's `uid` and `gid`. A FUSE mount made by root is closed to a non-root app
//! unless the daemon is told so; with these the supervisor tells it (`{uid}` and
//! `{gid}` in a command, `allow_other,uid=,gid=` for objectivefs).
//!
//! The rules, for a volume whose annotation names no `uid` (one it names wins):
//! - only containers that mount the volume count, each with its own
//!   `securityContext` over the pod's;
//! - root (`runAsUser: 0`, or none given) reads everything and is left out;
//! - `uid` is the one user the others run as; two different users are refused,
//!   naming both containers: only one can own the files, say which in the annotation;
//! - `gid` (when the annotation names none) is the pod's `fsGroup`, which every
//!   container holds, else the one `runAsGroup` of those containers (two are refused).

use serde_json::Value;

use super::{lookup, malformed, member, name_of, InjectError, VOLUMES_ANNOTATION};
use crate::spec::RawVolume;

/// Two containers that mount one volume as different users (or groups).
#[derive(Debug, thiserror::Error)]
#[error("{VOLUMES_ANNOTATION}: volume {volume:?}: the containers {} ({setting} {}) and {} ({setting} {}) mount it as different {}: only one can own its files; set `{field}:` on the volume in {VOLUMES_ANNOTATION}", first.0, first.1, second.0, second.1, if *field == "uid" { "users" } else { "groups" })]
pub struct Conflict {
    pub volume: String,
    /// `uid` or `gid`: the spec field that settles it.
    pub field: &'static str,
    /// `runAsUser` or `runAsGroup`.
    pub setting: &'static str,
    pub first: (String, u32),
    pub second: (String, u32),
}

/// One container's effective user and group.
struct RunsAs<'a> {
    container: &'a str,
    uid: Option<u32>,
    gid: Option<u32>,
}

/// Fills `uid` and `gid` of each served volume from the containers that mount it.
pub fn fill(
    served: &mut [RawVolume],
    pod_context: Option<&Value>,
    containers: &[(&str, &[Value])],
) -> Result<(), InjectError> {
    let at = || "spec.securityContext".to_string();
    let pod_uid = id(pod_context, "runAsUser", &at)?;
    let pod_gid = id(pod_context, "runAsGroup", &at)?;
    let fs_group = id(pod_context, "fsGroup", &at)?;
    let mut all = Vec::new();
    for (field, list) in containers {
        for (i, container) in list.iter().enumerate() {
            // Named only in a refusal, and made only then.
            let at = || format!("{field}[{i}].securityContext");
            let context = member(container, "securityContext");
            all.push((
                container,
                RunsAs {
                    container: name_of(container).unwrap_or("?"),
                    uid: id(context, "runAsUser", &at)?.or(pod_uid),
                    gid: id(context, "runAsGroup", &at)?.or(pod_gid),
                },
            ));
        }
    }
    for raw in served.iter_mut() {
        let volume = raw.name.clone().unwrap_or_default();
        let users: Vec<&RunsAs> = all
            .iter()
            .filter(|(container, _)| mounts(container, &volume))
            .map(|(_, runs)| runs)
            .filter(|runs| runs.uid.is_some_and(|uid| uid != 0))
            .collect();
        if users.is_empty() {
            continue;
        }
        if raw.uid.is_none() {
            raw.uid = one(&volume, "uid", "runAsUser", users.iter().map(|r| (r.container, r.uid)))?;
        }
        if raw.gid.is_none() {
            raw.gid = match fs_group {
                Some(group) => Some(group),
                None => one(&volume, "gid", "runAsGroup", users.iter().map(|r| (r.container, r.gid)))?,
            };
        }
    }
    Ok(())
}

/// The one value the containers agree on, or a refusal naming two that differ.
fn one<'a>(
    volume: &str,
    field: &'static str,
    setting: &'static str,
    found: impl Iterator<Item = (&'a str, Option<u32>)>,
) -> Result<Option<u32>, InjectError> {
    let mut first: Option<(&str, u32)> = None;
    for (container, value) in found {
        let Some(value) = value else { continue };
        match first {
            None => first = Some((container, value)),
            Some((other, kept)) if kept != value => {
                return Err(InjectError::Owners(Box::new(Conflict {
                    volume: volume.into(),
                    field,
                    setting,
                    first: (other.into(), kept),
                    second: (container.into(), value),
                })))
            }
            Some(_) => {}
        }
    }
    Ok(first.map(|(_, value)| value))
}

fn mounts(container: &Value, volume: &str) -> bool {
    let mounts = member(container, "volumeMounts").and_then(Value::as_array);
    mounts.into_iter().flatten().any(|m| name_of(m) == Some(volume))
}

/// A user or group id of a securityContext: Kubernetes allows 0 to 2147483647.
fn id(context: Option<&Value>, key: &str, at: &dyn Fn() -> String) -> Result<Option<u32>, InjectError> {
    let Some(context) = context.filter(|c| !c.is_null()) else { return Ok(None) };
    let Some(context) = context.as_object() else { return Err(malformed(&at(), "an object")) };
    match lookup(context, key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|id| *id <= i32::MAX as u64)
            .map(|id| Some(id as u32))
            .ok_or_else(|| malformed(&format!("{}.{key}", at()), "a whole number from 0 to 2147483647")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn volume(name: &str) -> RawVolume {
        RawVolume { name: Some(name.into()), ..Default::default() }
    }

    fn container(name: &str, mounts: &[&str], context: Value) -> Value {
        let mounts: Vec<Value> = mounts.iter().map(|m| json!({ "name": m, "mountPath": format!("/{m}") })).collect();
        json!({ "name": name, "image": "x", "volumeMounts": mounts, "securityContext": context })
    }

    fn filled(pod: Value, containers: &[Value], init: &[Value]) -> Result<Vec<RawVolume>, InjectError> {
        let mut served = vec![volume("data"), volume("other")];
        fill(&mut served, Some(&pod), &[("spec.initContainers", init), ("spec.containers", containers)])?;
        Ok(served)
    }

    #[test]
    fn the_app_user_of_each_volume_and_the_pods_fs_group() {
        let app = container("app", &["data"], json!({ "runAsUser": 1000 }));
        let other = container("tool", &["other"], json!({ "runAsUser": 2000, "runAsGroup": 2001 }));
        let served = filled(json!({ "fsGroup": 3000 }), &[app.clone(), other.clone()], &[]).unwrap();
        assert_eq!((served[0].uid, served[0].gid), (Some(1000), Some(3000)));
        assert_eq!((served[1].uid, served[1].gid), (Some(2000), Some(3000)));
        // Without an fsGroup, the group the containers run as.
        let served = filled(json!({}), &[app, other], &[]).unwrap();
        assert_eq!((served[0].uid, served[0].gid), (Some(1000), None));
        assert_eq!((served[1].uid, served[1].gid), (Some(2000), Some(2001)));
    }

    #[test]
    fn the_containers_own_context_wins_over_the_pods() {
        let pod = json!({ "runAsUser": 1000, "runAsGroup": 1000 });
        let own = container("app", &["data"], json!({ "runAsUser": 1500 }));
        let inherits = container("side", &["other"], Value::Null);
        let served = filled(pod, &[own, inherits], &[]).unwrap();
        assert_eq!((served[0].uid, served[0].gid), (Some(1500), Some(1000)));
        assert_eq!((served[1].uid, served[1].gid), (Some(1000), Some(1000)));
    }

    #[test]
    fn root_and_containers_without_the_volume_do_not_count() {
        let root = container("root", &["data"], json!({ "runAsUser": 0, "runAsGroup": 5 }));
        let unset = container("unset", &["data"], json!({}));
        let elsewhere = container("elsewhere", &[], json!({ "runAsUser": 4000 }));
        let served = filled(json!({ "fsGroup": 9 }), &[root.clone(), unset, elsewhere], &[]).unwrap();
        assert_eq!((served[0].uid, served[0].gid), (None, None), "root reads everything: nothing to change");
        // A non-root init container that mounts it counts; root beside it does not conflict.
        let init = container("migrate", &["data"], json!({ "runAsUser": 1000 }));
        let served = filled(json!({}), &[root], &[init]).unwrap();
        assert_eq!(served[0].uid, Some(1000));
    }

    #[test]
    fn two_users_are_refused_naming_both_unless_the_annotation_says() {
        let a = container("web", &["data"], json!({ "runAsUser": 1000 }));
        let b = container("worker", &["data"], json!({ "runAsUser": 2000 }));
        let err = filled(json!({}), &[a.clone(), b.clone()], &[]).unwrap_err().to_string();
        assert!(err.contains("web (runAsUser 1000)") && err.contains("worker (runAsUser 2000)"), "{err}");
        assert!(err.contains("uid:"), "names the field to set: {err}");

        let mut served = vec![RawVolume { uid: Some(2000), ..volume("data") }];
        fill(&mut served, None, &[("spec.containers", &[a.clone(), b.clone()])]).unwrap();
        assert_eq!((served[0].uid, served[0].gid), (Some(2000), None));

        let g1 = container("web", &["data"], json!({ "runAsUser": 1000, "runAsGroup": 1 }));
        let g2 = container("worker", &["data"], json!({ "runAsUser": 1000, "runAsGroup": 2 }));
        let err = filled(json!({}), &[g1.clone(), g2.clone()], &[]).unwrap_err().to_string();
        assert!(err.contains("gid:") && err.contains("runAsGroup 2"), "{err}");
        // The pod's fsGroup is every container's group: no conflict.
        assert_eq!(filled(json!({ "fsGroup": 7 }), &[g1, g2], &[]).unwrap()[0].gid, Some(7));
    }

    #[test]
    fn refuses_ids_that_are_not_numbers() {
        let bad = container("app", &["data"], json!({ "runAsUser": "1000" }));
        let err = filled(json!({}), &[bad], &[]).unwrap_err().to_string();
        assert!(err.starts_with("spec.containers[0].securityContext.runAsUser: must be a whole number"), "{err}");
        let err = filled(json!({ "fsGroup": -1 }), &[], &[]).unwrap_err().to_string();
        assert!(err.contains("spec.securityContext.fsGroup"), "{err}");
        let huge = container("app", &["data"], json!({ "runAsUser": 4_294_967_296_u64 }));
        assert!(filled(json!({}), &[huge], &[]).is_err());
    }
}
