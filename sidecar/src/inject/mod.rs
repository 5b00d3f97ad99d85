//! Injection: the one mutation of a pod (template) that adds the `sidemount`
//! sidecar, shared by the admission webhook and `sidemount inject`.
//!
//! It is a pure function over the pod's JSON: the volumes named in the
//! `sidemount.io/volumes` annotation (and, on request, the ObjectiveFS
//! FlexVolumes) become directories of one emptyDir, `sidemount` (a tmpfs, see
//! [`root_volume`]), that a privileged sidecar mounts at `/sidemount` with
//! `Bidirectional` propagation, mounting volume `X` on `/sidemount/X`; every
//! other container that mounted `X` gets that directory instead (`subPath: X` of
//! `sidemount`, at the same `mountPath`) with `HostToContainer`, so the mount the
//! sidecar makes reaches it.
//!
//! One volume for all, rather than an emptyDir per volume, is what makes a
//! restarted sidecar safe: its bind source is the root volume itself, never a
//! mount the dead instance left (a dead FUSE mount there fails the runtime's
//! `stat`), and the runtime's recursive bind copies the mounts left under it as
//! peers of the node's, so the new supervisor's clearing of a leftover kernel
//! mount takes it off the node.

pub mod flexvolume;
pub mod krm;
pub mod manifest;
pub mod owner;
pub mod resources;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::settings::{Mode, Settings};
use crate::spec::{self, Invalid, Problem, RawVolume};

/// Names the pod volumes sidemount serves, in the volume spec format plus `secretName`.
pub const VOLUMES_ANNOTATION: &str = "sidemount.io/volumes";
/// Marks an injected pod; its value is the version of sidemount that injected it.
pub const INJECTED_ANNOTATION: &str = "sidemount.io/injected";
/// `native` or `legacy`: where the sidecar goes for this pod.
pub const MODE_ANNOTATION: &str = "sidemount.io/mode";
/// The label the webhook selects pods by (its objectSelector): `"true"` opts in.
pub const INJECT_LABEL: &str = "sidemount.io/inject";
/// `"true"`: turn `altalang/ofs` FlexVolumes into sidemount `objectivefs` volumes
/// (the default on a pod labelled `sidemount.io/inject: "true"`).
pub const CONVERT_FLEXVOLUME_ANNOTATION: &str = "sidemount.io/convert-flexvolume";
/// The pod's `terminationGracePeriodSeconds` before injection raised it (`unset` if it had none).
pub const ORIGINAL_GRACE_ANNOTATION: &str = "sidemount.io/original-termination-grace-period";

/// The injected container's name.
pub const CONTAINER_NAME: &str = "sidemount";
/// Istio's sidecar: sidemount starts after it, because a network filesystem's
/// traffic is redirected to the proxy as soon as istio-init has run.
pub const ISTIO_PROXY: &str = "istio-proxy";
/// Where the sidecar mounts the root volume, each volume in a directory of it
/// (the supervisor's default `SIDEMOUNT_ROOT`).
pub const MOUNT_ROOT: &str = "/sidemount";
/// The pod volume whose directory `X` is volume `X`: an emptyDir of medium
/// `Memory` (see [`root_volume`]).
pub const ROOT_VOLUME: &str = "sidemount";
/// Where the Secret of volume `X` is mounted: `/etc/sidemount/secrets/X`, its `secretDir`.
pub const SECRETS_ROOT: &str = "/etc/sidemount/secrets";
/// The pod volume that carries the Secret of volume `X` is `sidemount-secret-X`.
pub const SECRET_VOLUME_PREFIX: &str = "sidemount-secret-";

/// The version written into `sidemount.io/injected`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The sidecar image injected when neither `--image` nor `SIDEMOUNT_IMAGE` names one:
/// the image of this very release.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/sidemount/sidemount:", env!("CARGO_PKG_VERSION"));

/// Time the kubelet must leave after the supervisor's own shutdown budget:
/// the sidecar is signalled only after the app has exited (native mode), and
/// the kubelet kills at the end of the grace period whatever is still running.
pub const GRACE_MARGIN: Duration = Duration::from_secs(10);
/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: u64 = 30;
/// Startup probe: once a second for up to five minutes, for slow first mounts
/// (an ObjectiveFS filesystem with a cold cache, a zfs import).
pub const STARTUP_PERIOD_SECONDS: u32 = 1;
pub const STARTUP_FAILURE_THRESHOLD: u32 = 300;
/// Above the 5 s that `sidemount probe` itself waits for an answer.
pub const PROBE_TIMEOUT_SECONDS: u32 = 10;
/// Secrets are read by the supervisor (root) only.
const SECRET_FILE_MODE: u32 = 0o400;

/// What every injection needs besides the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The sidecar image.
    pub image: String,
    /// Where the sidecar goes when the pod does not say (`sidemount.io/mode`).
    pub mode: Mode,
    /// The supervisor's SIGTERM budget (`SIDEMOUNT_SHUTDOWN_TIMEOUT` in the sidecar).
    pub shutdown_timeout: Duration,
}

impl Config {
    /// `SIDEMOUNT_IMAGE`, `SIDEMOUNT_MODE` and `SIDEMOUNT_SHUTDOWN_TIMEOUT`, with their defaults.
    pub fn from_settings(settings: &Settings) -> Config {
        Config {
            image: settings.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
            mode: settings.mode.unwrap_or(Mode::Native),
            shutdown_timeout: settings.shutdown_timeout,
        }
    }
}

/// What injection did with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The pod, injected; warnings name what was dropped on the way.
    Injected { pod: Value, warnings: Vec<String> },
    /// The pod does not ask for sidemount.
    NotRequested,
    /// The pod carries `sidemount.io/injected` already.
    AlreadyInjected,
}

/// Why a pod cannot be injected: one variant per step, each message naming the
/// annotation or field to change.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("metadata.annotations.{annotation}: must be a string (quote the value, e.g. \"true\")")]
    AnnotationNotText { annotation: String },
    #[error("{MODE_ANNOTATION}: {value:?} is not a mode: use native (Kubernetes 1.29 and later) or legacy")]
    Mode { value: String },
    #[error("{annotation}: {value:?} must be \"true\" or \"false\"")]
    Flag { annotation: &'static str, value: String },
    #[error("{annotation}: {value:?} is not a Kubernetes quantity ({why}): write e.g. 100m, 0.5, 64Mi or 1Gi, or \"\" for none")]
    Quantity { annotation: &'static str, value: String, why: &'static str },
    #[error("{request_annotation}: the request {request} is above the limit {limit} ({limit_annotation}): lower the request or raise the limit")]
    RequestAboveLimit {
        request_annotation: &'static str,
        request: String,
        limit_annotation: &'static str,
        limit: String,
    },
    /// The volume specs: every problem found, each naming its field.
    #[error("{0}")]
    Volumes(Invalid),
    #[error("{VOLUMES_ANNOTATION}: lists no volume: name at least one, or remove the annotation")]
    NoVolumes,
    #[error("{CONVERT_FLEXVOLUME_ANNOTATION}: \"true\", but the pod has no {} FlexVolume to convert: remove the annotation, or describe the volumes in {VOLUMES_ANNOTATION}", flexvolume::DRIVER)]
    NoFlexVolume,
    #[error("{VOLUMES_ANNOTATION}: the spec injected into the sidecar (SIDEMOUNT_VOLUMES) {0}")]
    InjectedSpec(crate::yaml::YamlError),
    #[error("the pod already has a {what} named {name:?} but no {INJECTED_ANNOTATION} annotation: rename it, sidemount injects its own")]
    NameTaken { what: &'static str, name: String },
    #[error("{field}: must be {expected}")]
    Malformed { field: String, expected: &'static str },
    /// Two containers that mount one volume run as different users or groups.
    #[error("{0}")]
    Owners(Box<owner::Conflict>),
    /// A container's use of a served volume that its directory of the root cannot give.
    #[error("{field}: {message}")]
    Mount { field: String, message: String },
}

/// Injects the sidecar into a pod, or a workload's pod template: `template`
/// holds `metadata` and `spec`. The input is not changed; an injected copy is returned.
pub fn inject(template: &Value, config: &Config) -> Result<Outcome, InjectError> {
    let annotations = Annotations::of(template)?;
    if annotations.get(INJECTED_ANNOTATION)?.is_some() {
        return Ok(Outcome::AlreadyInjected);
    }
    let volumes_text = annotations.get(VOLUMES_ANNOTATION)?;
    let convert = match annotations.get(CONVERT_FLEXVOLUME_ANNOTATION)? {
        // A pod with the driver's FlexVolumes that opted in with the webhook's label
        // needs nothing more: the label is what brings it to the webhook, and an
        // annotation alone never does.
        None => has_inject_label(template) && has_driver_flexvolume(template),
        Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(InjectError::Flag { annotation: CONVERT_FLEXVOLUME_ANNOTATION, value: other.into() })
        }
    };
    if volumes_text.is_none() && !convert {
        return Ok(Outcome::NotRequested);
    }
    let mode = match annotations.get(MODE_ANNOTATION)? {
        None => config.mode,
        Some("native") => Mode::Native,
        Some("legacy") => Mode::Legacy,
        Some(other) => return Err(InjectError::Mode { value: other.into() }),
    };
    let resources = resources::from_annotations(|name| annotations.get(name))?;

    let mut pod = template.clone();
    let spec = pod.get_mut("spec").and_then(Value::as_object_mut).ok_or_else(|| malformed("spec", "an object"))?;
    let mut pod_volumes = list(spec, "spec", "volumes")?;

    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    // Converted first: the annotation's checks then see the emptyDir that replaced each FlexVolume.
    let converted = if convert {
        let found = flexvolume::convert(&mut pod_volumes);
        problems.extend(found.problems);
        warnings.extend(found.warnings);
        found.volumes
    } else {
        Vec::new()
    };
    let requested = match volumes_text {
        Some(text) => annotation_volumes(text, &pod_volumes, &mut problems),
        None => Vec::new(),
    };
    check_unique(&requested, &converted, &mut problems);
    if !problems.is_empty() {
        return Err(InjectError::Volumes(Invalid(problems)));
    }
    let mut served: Vec<RawVolume> =
        requested.into_iter().map(|(_, raw)| raw).chain(converted.into_iter().map(|c| c.raw)).collect();
    if served.is_empty() {
        return Err(if volumes_text.is_some() { InjectError::NoVolumes } else { InjectError::NoFlexVolume });
    }
    let secret_mounts: Vec<SecretMount> = served
        .iter()
        .filter_map(|raw| {
            let volume = raw.name.clone().unwrap_or_default();
            raw.secret_name.clone().map(|secret| SecretMount {
                pod_volume: secret_volume_name(&volume),
                volume,
                secret,
            })
        })
        .collect();
    let mut containers = list(spec, "spec", "containers")?;
    let mut init_containers = list(spec, "spec", "initContainers")?;
    if containers.iter().chain(&init_containers).any(|c| name_of(c) == Some(CONTAINER_NAME)) {
        return Err(InjectError::NameTaken { what: "container", name: CONTAINER_NAME.into() });
    }
    if let Some(taken) = secret_mounts.iter().find(|m| pod_volumes.iter().any(|v| name_of(v) == Some(&m.pod_volume))) {
        return Err(InjectError::NameTaken { what: "volume", name: taken.pod_volume.clone() });
    }
    let names: Vec<String> = served.iter().filter_map(|raw| raw.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // The root volume's name is taken by a volume sidemount does not serve.
    if !names.contains(&ROOT_VOLUME) && pod_volumes.iter().any(|v| name_of(v) == Some(ROOT_VOLUME)) {
        return Err(InjectError::NameTaken { what: "volume", name: ROOT_VOLUME.into() });
    }
    // Each volume serves the user and group of the containers that mount it.
    let containers_by_field = [("spec.initContainers", &init_containers[..]), ("spec.containers", &containers[..])];
    owner::fill(&mut served, spec.get("securityContext"), &containers_by_field)?;
    // The supervisor reads its spec within the same limits as the annotation; JSON,
    // the secretDir of each secretName and the owners filled in can make it longer.
    let specs = sidecar_spec(&served);
    crate::yaml::check(&specs, &spec::SPEC_LIMITS).map_err(InjectError::InjectedSpec)?;

    // The pod's volumes: the emptyDir each served volume had as a placeholder
    // gives way to the one root volume (every mount of it becomes a directory of
    // the root below); each Secret is one more volume.
    pod_volumes.retain(|v| !name_of(v).is_some_and(|name| names.contains(&name)));
    pod_volumes.push(root_volume());
    for mount in &secret_mounts {
        let secret = json!({ "secretName": mount.secret, "defaultMode": SECRET_FILE_MODE });
        pod_volumes.push(json!({ "name": mount.pod_volume, "secret": secret }));
    }

    warnings.extend(subpath_warnings(&served, &[&init_containers[..], &containers[..]]));
    check_start_order(&init_containers, &containers, mode, &names)?;
    for (field, containers) in [("spec.initContainers", &mut init_containers), ("spec.containers", &mut containers)] {
        for (i, container) in containers.iter_mut().enumerate() {
            mount_from_root(container, &names, &format!("{field}[{i}]"))?;
        }
    }

    let sidecar = sidecar(specs, &secret_mounts, mode, resources, config);
    let into = match mode {
        Mode::Native => &mut init_containers,
        Mode::Legacy => &mut containers,
    };
    let at = sidecar_position(into);
    into.insert(at, sidecar);

    set_list(spec, "volumes", pod_volumes);
    set_list(spec, "containers", containers);
    if !init_containers.is_empty() && !spec.contains_key("initContainers") && spec.contains_key("containers") {
        // A new list goes before `containers`, where a reader of the YAML looks for it.
        let mut init_containers = Some(Value::Array(init_containers));
        for (key, value) in std::mem::take(spec) {
            if key == "containers" {
                spec.insert("initContainers".into(), init_containers.take().expect("one `containers` key"));
            }
            spec.insert(key, value);
        }
    } else {
        set_list(spec, "initContainers", init_containers);
    }

    let original_grace = raise_grace_period(spec, config.shutdown_timeout)?;
    // A pod converted for its label alone may have no annotations yet.
    let metadata = &mut pod["metadata"];
    if !metadata["annotations"].is_object() {
        metadata["annotations"] = json!({});
    }
    let annotations = metadata["annotations"].as_object_mut().expect("made a map above");
    if let Some(original) = original_grace {
        annotations.insert(ORIGINAL_GRACE_ANNOTATION.into(), Value::String(original));
    }
    annotations.insert(INJECTED_ANNOTATION.into(), Value::String(VERSION.into()));
    Ok(Outcome::Injected { pod, warnings })
}

/// The root volume: an emptyDir of medium `Memory`, a tmpfs of the kubelet's. Its
/// own files are only the volumes' empty mountpoints. The medium is what keeps a
/// filesystem left mounted under it out of the kubelet's reach: a tmpfs emptyDir is
/// torn down by unmounting it first (`pkg/volume/emptydir`,
/// `teardownTmpfsOrHugetlbfs`), which fails while anything is still mounted below,
/// so the recursive delete that follows never runs; a disk emptyDir goes straight
/// to that delete, which empties whatever is still mounted in it.
pub fn root_volume() -> Value {
    json!({ "name": ROOT_VOLUME, "emptyDir": { "medium": "Memory" } })
}

/// A volume's Secret, mounted into the sidecar as its `secretDir`.
struct SecretMount {
    /// The pod volume that carries it: `sidemount-secret-<volume>`.
    pod_volume: String,
    /// The sidemount volume it belongs to.
    volume: String,
    /// The Secret's name.
    secret: String,
}

/// `sidemount.io/inject: "true"` on the pod (template): the webhook's objectSelector.
fn has_inject_label(template: &Value) -> bool {
    template.pointer("/metadata/labels").and_then(|labels| labels.get(INJECT_LABEL)).and_then(Value::as_str)
        == Some("true")
}

/// A FlexVolume of the `altalang/ofs` driver among the pod's volumes.
fn has_driver_flexvolume(template: &Value) -> bool {
    let volumes = template.pointer("/spec/volumes").and_then(Value::as_array);
    volumes
        .into_iter()
        .flatten()
        .any(|v| v.pointer("/flexVolume/driver").and_then(Value::as_str) == Some(flexvolume::DRIVER))
}

/// The annotations of a pod template, read as text.
struct Annotations<'a>(Option<&'a Map<String, Value>>);

impl<'a> Annotations<'a> {
    fn of(template: &'a Value) -> Result<Annotations<'a>, InjectError> {
        match template.pointer("/metadata/annotations") {
            None | Some(Value::Null) => Ok(Annotations(None)),
            Some(Value::Object(map)) => Ok(Annotations(Some(map))),
            Some(_) => Err(malformed("metadata.annotations", "a map of strings")),
        }
    }

    fn get(&self, name: &str) -> Result<Option<&'a str>, InjectError> {
        match self.0.and_then(|map| map.get(name)) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(InjectError::AnnotationNotText { annotation: name.into() }),
        }
    }
}

/// The volumes of the annotation, validated by the one spec definition, plus
/// what injection adds: a served pod volume must be an emptyDir, and
/// `secretName` stands in for `secretDir`.
fn annotation_volumes(text: &str, pod_volumes: &[Value], problems: &mut Vec<Problem>) -> Vec<(usize, RawVolume)> {
    let raws = match parse_annotation(text) {
        Ok(raws) => raws,
        Err(Invalid(found)) => {
            problems.extend(found);
            return Vec::new();
        }
    };
    let mut accepted = Vec::new();
    for (i, raw) in raws.into_iter().enumerate() {
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                origin: VOLUMES_ANNOTATION.into(),
                field: format!("volumes[{i}].{field}"),
                message,
            })
        };
        let volume = match spec::validate(&raw) {
            Ok(volume) => volume,
            Err(found) => {
                found.into_iter().for_each(|(field, message)| problem(&field, message));
                continue;
            }
        };
        if raw.secret_name.is_some() && raw.secret_dir.is_some() {
            problem(
                "secretDir",
                format!(
                    "give secretName or secretDir, not both: the Secret of secretName is mounted at {SECRETS_ROOT}/{}",
                    volume.name
                ),
            );
            continue;
        }
        if let Some((j, existing)) = pod_volumes.iter().enumerate().find(|(_, v)| name_of(v) == Some(&volume.name)) {
            if existing.get("emptyDir").is_none() {
                problem(
                    "name",
                    format!(
                        "the pod volume {:?} (spec.volumes[{j}]) is a {} volume, but sidemount serves it from a directory of \
                         its own emptyDir: make it `emptyDir: {{}}` or remove it (injection replaces it)",
                        volume.name,
                        volume_source(existing)
                    ),
                );
                continue;
            }
        }
        accepted.push((i, raw));
    }
    accepted
}

/// The annotation texts parsed so far, and what they parsed to. Every pod of a
/// workload carries its template's annotation, so the webhook meets each text
/// again for each replica, and parsing the YAML is about a fifth of a review.
/// Bounded: at most 256 texts of up to 4 KiB each (1 MiB of text, and their
/// parsed volumes beside it); cleared when full.
static PARSED: LazyLock<Mutex<HashMap<String, Parsed>>> = LazyLock::new(Default::default);
type Parsed = Result<Vec<RawVolume>, Invalid>;
const PARSED_ENTRIES: usize = 256;
const PARSED_TEXT_BYTES: usize = 4096;

fn parse_annotation(text: &str) -> Parsed {
    let cache = || PARSED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(parsed) = cache().get(text) {
        return parsed.clone();
    }
    let parsed = spec::parse_raw(VOLUMES_ANNOTATION, text);
    if text.len() <= PARSED_TEXT_BYTES {
        let mut cache = cache();
        if cache.len() >= PARSED_ENTRIES {
            cache.clear();
        }
        cache.insert(text.to_owned(), parsed.clone());
    }
    parsed
}

/// Volume names are unique across the annotation and the converted FlexVolumes.
fn check_unique(requested: &[(usize, RawVolume)], converted: &[flexvolume::Converted], problems: &mut Vec<Problem>) {
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

/// The sidecar's spec, for `SIDEMOUNT_VOLUMES`: the served volumes as JSON, with
/// `secretDir` where each Secret is mounted.
fn sidecar_spec(served: &[RawVolume]) -> String {
    let specs: Vec<RawVolume> = served
        .iter()
        .cloned()
        .map(|mut raw| {
            if raw.secret_name.take().is_some() {
                raw.secret_dir = Some(secret_dir(raw.name.as_deref().unwrap_or_default()));
            }
            raw
        })
        .collect();
    serde_json::to_string(&specs).expect("volume specs have string keys only")
}

/// The container that mounts the volumes, with their spec in `SIDEMOUNT_VOLUMES`.
fn sidecar(
    specs: String,
    secret_mounts: &[SecretMount],
    mode: Mode,
    resources: Option<Value>,
    config: &Config,
) -> Value {
    let mut mounts = vec![json!({ "name": ROOT_VOLUME, "mountPath": MOUNT_ROOT, "mountPropagation": "Bidirectional" })];
    mounts.extend(
        secret_mounts
            .iter()
            .map(|m| json!({ "name": m.pod_volume, "mountPath": secret_dir(&m.volume), "readOnly": true })),
    );

    let mut container = Map::new();
    container.insert("name".into(), json!(CONTAINER_NAME));
    container.insert("image".into(), json!(config.image));
    container.insert("args".into(), json!(["run"]));
    container.insert(
        "env".into(),
        json!([
            { "name": "SIDEMOUNT_VOLUMES", "value": specs },
            { "name": "SIDEMOUNT_SHUTDOWN_TIMEOUT", "value": humantime::format_duration(config.shutdown_timeout).to_string() },
        ]),
    );
    if mode == Mode::Native {
        // A restartable init container: a native sidecar (Kubernetes 1.29+). It
        // must be started (startupProbe) before the next container starts, and
        // it is stopped only after the app containers have exited.
        container.insert("restartPolicy".into(), json!("Always"));
    }
    if let Some(resources) = resources {
        container.insert("resources".into(), resources);
    }
    // mount(2), FUSE and Bidirectional propagation all need a privileged container.
    container.insert("securityContext".into(), json!({ "privileged": true }));
    container.insert(
        "startupProbe".into(),
        json!({
            "exec": { "command": ["sidemount", "probe"] },
            "periodSeconds": STARTUP_PERIOD_SECONDS,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": STARTUP_FAILURE_THRESHOLD,
        }),
    );
    container.insert(
        "livenessProbe".into(),
        json!({
            "exec": { "command": ["sidemount", "probe", "--live"] },
            "periodSeconds": 10,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": 3,
        }),
    );
    container.insert("volumeMounts".into(), Value::Array(mounts));
    Value::Object(container)
}

/// A subPath inside a FUSE volume is not reached by a repair: the kubelet binds
/// the subdirectory of the mount there at the container's start, and a new mount
/// at the volume's root does not cover a bind whose root lies below it (README,
/// Limits). Say so at admission, where the pod's author reads it: the first
/// [`SUBPATH_WARNINGS`] mounts, then their count (the API server keeps a few KiB
/// of warnings, and a pod of many containers could otherwise bring megabytes).
const SUBPATH_WARNINGS: usize = 8;

fn subpath_warnings(served: &[RawVolume], groups: &[&[Value]]) -> Vec<String> {
    let fuse: Vec<&str> = served
        .iter()
        .filter(|raw| matches!(raw.kind.as_deref(), Some("fuse" | "objectivefs")))
        .filter_map(|raw| raw.name.as_deref())
        .collect();
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
            let at = mount.get("mountPath").and_then(Value::as_str).unwrap_or("its mountPath");
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

/// Where the sidecar goes in its list: first, or right after `istio-proxy`.
fn sidecar_position(list: &[Value]) -> usize {
    list.iter().position(|c| name_of(c) == Some(ISTIO_PROXY)).map_or(0, |i| i + 1)
}

/// An init container that runs to completion before the sidecar starts (before
/// `istio-proxy` in native mode; any, in legacy mode, where the sidecar is an app
/// container) would find a served volume an empty directory of the root tmpfs, and
/// what it wrote there would be hidden under the mount, then lost with the pod.
///
/// In legacy mode every app container starts alongside the sidecar, before the
/// volume is mounted, so a subPath of it is never the volume either.
fn check_start_order(
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
        let restartable = container.get("restartPolicy").and_then(Value::as_str) == Some("Always");
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
/// it too and is kept.
fn mount_from_root(container: &mut Value, served: &[&str], field: &str) -> Result<(), InjectError> {
    let devices = container.get("volumeDevices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if let Some((j, volume)) =
        devices.iter().enumerate().find_map(|(j, d)| name_of(d).filter(|name| served.contains(name)).map(|n| (j, n)))
    {
        return Err(InjectError::Mount {
            field: format!("{field}.volumeDevices[{j}].name"),
            message: format!(
                "volume {volume:?} is a filesystem that sidemount mounts, not a block device: mount it with \
                 volumeMounts instead"
            ),
        });
    }
    let Some(mounts) = container.get_mut("volumeMounts") else { return Ok(()) };
    let mounts = match mounts {
        Value::Null => return Ok(()),
        Value::Array(mounts) => mounts,
        _ => return Err(malformed(&format!("{field}.volumeMounts"), "a list")),
    };
    for (j, mount) in mounts.iter_mut().enumerate() {
        let Some(volume) = name_of(mount).filter(|name| served.contains(name)).map(str::to_owned) else { continue };
        let Some(mount) = mount.as_object_mut() else { continue };
        let text = |key: &str| mount.get(key).and_then(Value::as_str).filter(|sub| !sub.is_empty()).map(str::to_owned);
        let (sub, expr) = (text("subPath"), text("subPathExpr"));
        check_sub_paths(&volume, sub.as_deref(), expr.as_deref(), &format!("{field}.volumeMounts[{j}]"))?;
        if let Some(rro) = mount.get("recursiveReadOnly").and_then(Value::as_str).filter(|r| *r != "Disabled") {
            return Err(InjectError::Mount {
                field: format!("{field}.volumeMounts[{j}].recursiveReadOnly"),
                message: format!(
                    "{rro} needs mountPropagation None, but volume {volume:?} reaches the container by \
                     HostToContainer, from the sidecar's mount: remove it (readOnly is kept)"
                ),
            });
        }
        // Rebuilt in the usual order of the fields; anything else the mount carries follows.
        let mut rebuilt = Map::new();
        rebuilt.insert("name".into(), json!(ROOT_VOLUME));
        for key in ["mountPath", "readOnly"] {
            if let Some(value) = mount.remove(key) {
                rebuilt.insert(key.into(), value);
            }
        }
        mount.remove("name");
        mount.remove("subPath");
        mount.remove("subPathExpr");
        match (sub, expr) {
            (_, Some(expr)) => rebuilt.insert("subPathExpr".into(), json!(format!("{volume}/{expr}"))),
            (Some(sub), None) => rebuilt.insert("subPath".into(), json!(format!("{volume}/{sub}"))),
            (None, None) => rebuilt.insert("subPath".into(), json!(volume)),
        };
        let propagation = match mount.remove("mountPropagation") {
            Some(Value::String(p)) if p == "Bidirectional" => p,
            _ => "HostToContainer".into(),
        };
        rebuilt.insert("mountPropagation".into(), json!(propagation));
        rebuilt.extend(std::mem::take(mount));
        *mount = rebuilt;
    }
    Ok(())
}

/// The `subPath` or `subPathExpr` of a mount of a served volume, which becomes a
/// path inside the volume's directory of the root: Kubernetes refuses an absolute
/// path, a `..` and both fields at once, but behind the volume's name an absolute
/// path would be accepted as a directory of the volume, and `..` would be reported
/// as a path the user never wrote. Refused here, as the user wrote them.
fn check_sub_paths(volume: &str, sub: Option<&str>, expr: Option<&str>, at: &str) -> Result<(), InjectError> {
    if sub.is_some() && expr.is_some() {
        return Err(InjectError::Mount {
            field: format!("{at}.subPathExpr"),
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
            field: format!("{at}.{key}"),
            message: format!("{path:?} must be a relative path without `..`: it names a path inside volume {volume:?}"),
        });
    }
    Ok(())
}

/// A container's volume mounts (none when it has no list).
fn mounts_of(container: &Value) -> &[Value] {
    container.get("volumeMounts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// A mount's `subPath`, else its `subPathExpr`, when not empty.
fn sub_path(mount: &Value) -> Option<&str> {
    ["subPath", "subPathExpr"]
        .iter()
        .find_map(|key| mount.get(*key).and_then(Value::as_str).filter(|sub| !sub.is_empty()))
}

/// Raises `terminationGracePeriodSeconds` to the supervisor's shutdown budget
/// plus a margin: a pod killed before its mounts are down leaves the kubelet a
/// dead FUSE mount (stuck Terminating) or a live kernel mount it would empty.
/// Returns the original value when it was raised.
fn raise_grace_period(
    spec: &mut Map<String, Value>,
    shutdown_timeout: Duration,
) -> Result<Option<String>, InjectError> {
    let needed = (shutdown_timeout + GRACE_MARGIN).as_secs_f64().ceil() as u64;
    let current = match spec.get("terminationGracePeriodSeconds") {
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

/// Where the Secret of a volume is mounted in the sidecar: its `secretDir`.
pub fn secret_dir(volume: &str) -> PathBuf {
    PathBuf::from(SECRETS_ROOT).join(volume)
}

/// The pod volume that carries the Secret of `volume`: `sidemount-secret-<volume>`,
/// shortened with a stable hash when that is longer than a DNS label may be.
pub fn secret_volume_name(volume: &str) -> String {
    let name = format!("{SECRET_VOLUME_PREFIX}{volume}");
    if name.len() <= 63 {
        return name;
    }
    // FNV-1a: stable across builds and Rust versions, unlike DefaultHasher.
    let hash = volume.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let keep = 63 - SECRET_VOLUME_PREFIX.len() - 9;
    format!("{SECRET_VOLUME_PREFIX}{}-{:08x}", volume[..keep].trim_end_matches('-'), hash as u32)
}

fn name_of(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

/// What a pod volume is made of, for messages: `hostPath`, `persistentVolumeClaim`…
fn volume_source(volume: &Value) -> &str {
    volume.as_object().and_then(|v| v.keys().find(|k| *k != "name")).map_or("source-less", String::as_str)
}

/// Takes a list out of the (copied) spec to edit it; `set_list` puts it back.
fn list(spec: &mut Map<String, Value>, at: &str, key: &str) -> Result<Vec<Value>, InjectError> {
    match spec.get_mut(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(std::mem::take(items)),
        Some(_) => Err(malformed(&format!("{at}.{key}"), "a list")),
    }
}

/// Writes a list back in its place; an empty list the pod did not have stays absent.
fn set_list(spec: &mut Map<String, Value>, key: &str, items: Vec<Value>) {
    match spec.get_mut(key) {
        Some(Value::Array(slot)) => *slot = items,
        Some(Value::Null) | None if items.is_empty() => {}
        _ => {
            spec.insert(key.into(), Value::Array(items));
        }
    }
}

#[cfg(test)]
impl Config {
    /// The configuration the unit tests of injection, manifests and admission share.
    pub(crate) fn for_tests() -> Config {
        Config {
            image: "example.org/sidemount:test".into(),
            mode: crate::settings::Mode::Native,
            shutdown_timeout: std::time::Duration::from_secs(20),
        }
    }
}

fn malformed(field: &str, expected: &'static str) -> InjectError {
    InjectError::Malformed { field: field.into(), expected }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::for_tests()
    }

    fn pod(annotations: Value, spec: Value) -> Value {
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p", "annotations": annotations }, "spec": spec })
    }

    fn app(mounts: Value) -> Value {
        json!({ "name": "app", "image": "busybox", "volumeMounts": mounts })
    }

    fn injected(outcome: Outcome) -> Value {
        match outcome {
            Outcome::Injected { pod, .. } => pod,
            other => panic!("not injected: {other:?}"),
        }
    }

    const FUSE: &str = "- {name: data, type: fuse, command: [bindfs, -f, /src, '{mountpoint}']}";

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
    fn native_sidecar_is_the_first_init_container() {
        let input = pod(
            json!({ VOLUMES_ANNOTATION: FUSE }),
            json!({ "initContainers": [{ "name": "migrate", "image": "x" }], "containers": [app(json!([{ "name": "data", "mountPath": "/data" }]))] }),
        );
        let out = injected(inject(&input, &config()).unwrap());
        let init = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init[0]["name"], "sidemount");
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert_eq!(init[0]["image"], "example.org/sidemount:test");
        assert_eq!(init[0]["args"], json!(["run"]));
        assert_eq!(init[0]["securityContext"], json!({ "privileged": true }));
        assert_eq!(
            init[0]["volumeMounts"],
            json!([{ "name": "sidemount", "mountPath": "/sidemount", "mountPropagation": "Bidirectional" }])
        );
        assert_eq!(init[0]["startupProbe"]["exec"]["command"], json!(["sidemount", "probe"]));
        assert_eq!(init[0]["livenessProbe"]["exec"]["command"], json!(["sidemount", "probe", "--live"]));
        assert_eq!(init[1]["name"], "migrate");
        // The app's volume is the root volume's directory, at its own path.
        assert_eq!(
            out["spec"]["containers"][0]["volumeMounts"],
            json!([{ "name": "sidemount", "mountPath": "/data", "subPath": "data", "mountPropagation": "HostToContainer" }])
        );
        assert_eq!(out["spec"]["volumes"], json!([{ "name": "sidemount", "emptyDir": { "medium": "Memory" } }]));
        assert_eq!(out["metadata"]["annotations"][INJECTED_ANNOTATION], VERSION);
        let env = &init[0]["env"];
        assert_eq!(env[1], json!({ "name": "SIDEMOUNT_SHUTDOWN_TIMEOUT", "value": "20s" }));
        let specs: Vec<RawVolume> = serde_json::from_str(env[0]["value"].as_str().unwrap()).unwrap();
        assert_eq!(specs[0].name.as_deref(), Some("data"));
    }

    #[test]
    fn legacy_sidecar_is_the_first_container_after_istio() {
        let input = pod(
            json!({ VOLUMES_ANNOTATION: FUSE, MODE_ANNOTATION: "legacy" }),
            json!({ "containers": [{ "name": "istio-proxy", "image": "istio" }, app(json!([]))] }),
        );
        let out = injected(inject(&input, &config()).unwrap());
        let names: Vec<&str> =
            out["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["istio-proxy", "sidemount", "app"]);
        assert!(out["spec"]["containers"][1].get("restartPolicy").is_none());
        assert!(out["spec"].get("initContainers").is_none());
    }

    #[test]
    fn native_sidecar_follows_a_native_istio_proxy() {
        let input = pod(
            json!({ VOLUMES_ANNOTATION: FUSE }),
            json!({ "initContainers": [{ "name": "istio-init", "image": "i" }, { "name": "istio-proxy", "image": "i", "restartPolicy": "Always" }], "containers": [app(json!([]))] }),
        );
        let out = injected(inject(&input, &config()).unwrap());
        let names: Vec<&str> =
            out["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["istio-init", "istio-proxy", "sidemount"]);
    }

    #[test]
    fn secret_name_becomes_a_read_only_secret_dir() {
        let spec = "- {name: ofs, type: objectivefs, filesystem: s3://b, secretName: ofs-secret}";
        let out = injected(
            inject(&pod(json!({ VOLUMES_ANNOTATION: spec }), json!({ "containers": [app(json!([]))] })), &config())
                .unwrap(),
        );
        let sidecar = &out["spec"]["initContainers"][0];
        assert_eq!(
            sidecar["volumeMounts"][1],
            json!({ "name": "sidemount-secret-ofs", "mountPath": "/etc/sidemount/secrets/ofs", "readOnly": true })
        );
        assert_eq!(
            out["spec"]["volumes"][1],
            json!({ "name": "sidemount-secret-ofs", "secret": { "secretName": "ofs-secret", "defaultMode": 0o400 } })
        );
        let specs: Vec<RawVolume> = serde_json::from_str(sidecar["env"][0]["value"].as_str().unwrap()).unwrap();
        assert_eq!(specs[0].secret_dir.as_deref(), Some(std::path::Path::new("/etc/sidemount/secrets/ofs")));
        assert_eq!(specs[0].secret_name, None);
    }

    #[test]
    fn a_non_root_app_gives_its_volume_its_user_and_group() {
        let spec = "- {name: data, type: objectivefs, filesystem: s3://b}\n- {name: logs, type: fuse, command: [x, '{mountpoint}'], uid: 7}";
        let input = pod(
            json!({ VOLUMES_ANNOTATION: spec }),
            json!({
                "securityContext": { "runAsUser": 1000, "fsGroup": 2000 },
                "containers": [app(json!([{ "name": "data", "mountPath": "/data" }, { "name": "logs", "mountPath": "/logs" }]))],
            }),
        );
        let out = injected(inject(&input, &config()).unwrap());
        let env = &out["spec"]["initContainers"][0]["env"][0]["value"];
        let specs: Vec<RawVolume> = serde_json::from_str(env.as_str().unwrap()).unwrap();
        assert_eq!((specs[0].uid, specs[0].gid), (Some(1000), Some(2000)));
        assert_eq!((specs[1].uid, specs[1].gid), (Some(7), Some(2000)), "the annotation's own uid wins");
        // The sidecar itself stays root: it mounts.
        assert!(out["spec"]["initContainers"][0]["securityContext"].get("runAsUser").is_none());

        let two = pod(
            json!({ VOLUMES_ANNOTATION: FUSE }),
            json!({ "containers": [
                { "name": "a", "image": "x", "securityContext": { "runAsUser": 1 }, "volumeMounts": [{ "name": "data", "mountPath": "/d" }] },
                { "name": "b", "image": "x", "securityContext": { "runAsUser": 2 }, "volumeMounts": [{ "name": "data", "mountPath": "/d" }] },
            ] }),
        );
        let err = inject(&two, &config()).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "sidemount.io/volumes: volume \"data\": the containers a (runAsUser 1) and b (runAsUser 2)"
            ),
            "{err}"
        );
    }

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
    fn a_pod_with_the_label_and_no_annotations_is_converted() {
        let flex =
            json!({ "name": "v", "flexVolume": { "driver": "altalang/ofs", "options": { "networkPath": "s3://b" } } });
        let spec = json!({ "containers": [app(json!([{ "name": "v", "mountPath": "/v" }]))], "volumes": [flex] });
        for metadata in [
            json!({ "name": "p", "labels": { INJECT_LABEL: "true" } }),
            json!({ "name": "p", "labels": { INJECT_LABEL: "true" }, "annotations": null }),
        ] {
            let out = injected(inject(&json!({ "metadata": metadata, "spec": spec }), &config()).unwrap());
            assert_eq!(out["metadata"]["annotations"], json!({ INJECTED_ANNOTATION: VERSION }));
            assert_eq!(out["spec"]["volumes"], json!([root_volume()]));
        }
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let input = pod(json!({ VOLUMES_ANNOTATION: FUSE }), json!({ "containers": [app(json!([]))] }));
        let once = injected(inject(&input, &config()).unwrap());
        assert_eq!(inject(&once, &config()).unwrap(), Outcome::AlreadyInjected);
        assert_eq!(inject(&pod(json!({}), json!({ "containers": [] })), &config()).unwrap(), Outcome::NotRequested);
    }

    #[test]
    fn refuses_naming_the_field() {
        let bad = "- {name: data, type: objectivefs}";
        let err = inject(&pod(json!({ VOLUMES_ANNOTATION: bad }), json!({ "containers": [] })), &config()).unwrap_err();
        assert!(err.to_string().starts_with("sidemount.io/volumes: volumes[0].filesystem: required"), "{err}");

        let host = pod(
            json!({ VOLUMES_ANNOTATION: FUSE }),
            json!({ "containers": [], "volumes": [{ "name": "data", "hostPath": { "path": "/x" } }] }),
        );
        let err = inject(&host, &config()).unwrap_err().to_string();
        assert!(err.contains("volumes[0].name") && err.contains("hostPath") && err.contains("emptyDir"), "{err}");

        let both = "- {name: data, type: zfs, dataset: p/d, secretName: s, secretDir: /s}";
        let err =
            inject(&pod(json!({ VOLUMES_ANNOTATION: both }), json!({ "containers": [] })), &config()).unwrap_err();
        assert!(err.to_string().contains("volumes[0].secretDir"), "{err}");

        let dup = "- {name: a, type: zfs, dataset: p/a}\n- {name: a, type: zfs, dataset: p/b}";
        let err = inject(&pod(json!({ VOLUMES_ANNOTATION: dup }), json!({ "containers": [] })), &config()).unwrap_err();
        assert!(err.to_string().contains("volumes[1].name: duplicate"), "{err}");

        let err =
            inject(&pod(json!({ VOLUMES_ANNOTATION: "[]" }), json!({ "containers": [] })), &config()).unwrap_err();
        assert!(matches!(err, InjectError::NoVolumes));

        let err = inject(
            &pod(json!({ VOLUMES_ANNOTATION: FUSE, MODE_ANNOTATION: "sidecar" }), json!({ "containers": [] })),
            &config(),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("sidemount.io/mode: \"sidecar\""), "{err}");

        let taken =
            pod(json!({ VOLUMES_ANNOTATION: FUSE }), json!({ "containers": [{ "name": "sidemount", "image": "x" }] }));
        assert!(matches!(inject(&taken, &config()).unwrap_err(), InjectError::NameTaken { what: "container", .. }));
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
    fn the_root_volume_name_is_sidemounts_own() {
        // Taken by a volume sidemount does not serve: refused, naming it.
        let taken = pod(
            json!({ VOLUMES_ANNOTATION: FUSE }),
            json!({ "containers": [], "volumes": [{ "name": "sidemount", "emptyDir": {} }] }),
        );
        let err = inject(&taken, &config()).unwrap_err();
        assert!(matches!(&err, InjectError::NameTaken { what: "volume", name } if name == "sidemount"), "{err}");
        // A served volume of that name is one more directory of the root.
        let spec = "- {name: sidemount, type: fuse, command: [x, '{mountpoint}']}";
        let input = pod(
            json!({ VOLUMES_ANNOTATION: spec }),
            json!({ "containers": [app(json!([{ "name": "sidemount", "mountPath": "/s" }]))],
                    "volumes": [{ "name": "sidemount", "emptyDir": {} }] }),
        );
        let out = injected(inject(&input, &config()).unwrap());
        assert_eq!(out["spec"]["volumes"], json!([root_volume()]));
        assert_eq!(out["spec"]["containers"][0]["volumeMounts"][0]["subPath"], "sidemount");
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

    #[test]
    fn secret_volume_names_stay_dns_labels() {
        assert_eq!(secret_volume_name("data"), "sidemount-secret-data");
        let long = "a".repeat(63);
        let name = secret_volume_name(&long);
        assert!(name.len() <= 63, "{name}");
        assert!(crate::spec::check_dns_label(&name).is_ok(), "{name}");
        assert_ne!(secret_volume_name(&format!("{}b", "a".repeat(62))), name);
        assert_eq!(secret_volume_name(&long), name);
    }

    #[test]
    fn converting_without_a_flexvolume_names_the_convert_annotation() {
        let input = pod(json!({ CONVERT_FLEXVOLUME_ANNOTATION: "true" }), json!({ "containers": [app(json!([]))] }));
        let err = inject(&input, &config()).unwrap_err();
        assert!(matches!(err, InjectError::NoFlexVolume), "{err}");
        assert!(
            err.to_string()
                .starts_with("sidemount.io/convert-flexvolume: \"true\", but the pod has no altalang/ofs FlexVolume"),
            "{err}"
        );
    }

    #[test]
    fn the_injected_spec_must_fit_the_supervisors_limits() {
        // A secretName becomes a longer secretDir, and JSON quotes every string: an
        // annotation within the limit can make a SIDEMOUNT_VOLUMES past it.
        let annotation: String =
            (0..1000).map(|i| format!("- name: v{i}\n  type: zfs\n  dataset: p/v{i}\n  secretName: s\n")).collect();
        assert!(annotation.len() < spec::MAX_SPEC_BYTES);
        let input = pod(json!({ VOLUMES_ANNOTATION: annotation }), json!({ "containers": [] }));
        let err = inject(&input, &config()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("sidemount.io/volumes: the spec injected into the sidecar (SIDEMOUNT_VOLUMES) is")
                && err.to_string().contains(&format!("above the limit of {} bytes", spec::MAX_SPEC_BYTES)),
            "{err}"
        );
        // What is injected, the supervisor reads.
        let input = pod(json!({ VOLUMES_ANNOTATION: FUSE }), json!({ "containers": [] }));
        let out = injected(inject(&input, &config()).unwrap());
        let specs = out["spec"]["initContainers"][0]["env"][0]["value"].as_str().unwrap();
        spec::load(&[spec::SpecText { origin: "SIDEMOUNT_VOLUMES".into(), text: specs.into() }]).unwrap();
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
        let first = parse_annotation(text).unwrap();
        assert_eq!(first, spec::parse_raw(VOLUMES_ANNOTATION, text).unwrap());
        assert_eq!(PARSED.lock().unwrap().get(text), Some(&Ok(first.clone())), "a parsed text is kept");
        // A kept text is answered from the cache, not parsed again: plant an answer
        // that parsing would not give.
        let planted = "- {name: planted, type: fuse, command: [x]}";
        PARSED.lock().unwrap().insert(planted.to_owned(), Ok(first.clone()));
        assert_eq!(parse_annotation(planted).unwrap(), first);
        // An invalid text gives its error again, from the cache too.
        let bad = "volumes: [oops";
        assert_eq!(parse_annotation(bad), spec::parse_raw(VOLUMES_ANNOTATION, bad));
        assert_eq!(parse_annotation(bad), spec::parse_raw(VOLUMES_ANNOTATION, bad));

        for i in 0..PARSED_ENTRIES + 10 {
            parse_annotation(&format!("- {{name: v{i}, type: fuse, command: [x]}}")).unwrap();
        }
        let last = format!("- {{name: v{}, type: fuse, command: [x]}}", PARSED_ENTRIES + 9);
        let kept = PARSED.lock().unwrap();
        assert!(kept.len() <= PARSED_ENTRIES && kept.contains_key(&last), "cleared when full, then kept again");
        drop(kept);
        let exact = format!("{:<PARSED_TEXT_BYTES$}", "- {name: exact, type: fuse, command: [x]}");
        parse_annotation(&exact).unwrap();
        assert!(PARSED.lock().unwrap().contains_key(&exact), "a text of {PARSED_TEXT_BYTES} bytes is kept");
        let long = format!("- {{name: long, type: fuse, command: [x, {:?}]}}", "a".repeat(PARSED_TEXT_BYTES));
        parse_annotation(&long).unwrap();
        assert!(!PARSED.lock().unwrap().contains_key(&long), "a text over {PARSED_TEXT_BYTES} bytes is not kept");
    }
}
