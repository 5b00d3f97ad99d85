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

mod annotations;
mod container;
pub mod flexvolume;
pub mod krm;
pub mod manifest;
pub mod owner;
mod pod;
mod read_only;
pub mod resources;
pub mod stream;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::settings::{Mode, Settings};
use crate::spec::{Invalid, RawVolume};
use annotations::{annotation_volumes, check_unique, has_driver_flexvolume, has_inject_label, Annotations};
pub use container::Sidecar;
use container::{checked_sidecar, sidecar_position};
pub use pod::root_volume;
use pod::{check_start_order, mount_from_root, raise_grace_period, subpath_warnings};

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

/// What injection did with a pod given to it to edit ([`edit`]).
// Returned once and matched at once: a box would be one more allocation per review.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Edit {
    /// The pod, injected in place, with what changed in it.
    Injected(Injection),
    /// The pod does not ask for sidemount.
    NotRequested,
    /// The pod carries `sidemount.io/injected` already.
    AlreadyInjected,
}

/// A pod injected in place, and the members of it that injection set: the
/// webhook's JSON Patch is written from these, `sidemount inject` writes the pod
/// ([`Injection::into_pod`]).
#[derive(Debug)]
pub struct Injection {
    /// The pod, injected but for the sidecar, whose place is `changes.sidecar`.
    pod: Value,
    sidecar: Sidecar,
    /// What was dropped on the way.
    pub warnings: Vec<String>,
    pub changes: Changes,
}

impl Injection {
    /// The pod as injected, but for the sidecar: at `changes.sidecar`, the
    /// lists hold the containers that were there.
    pub fn pod_but_sidecar(&self) -> &Value {
        &self.pod
    }

    pub fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }

    /// The injected pod, its sidecar in its place.
    pub fn into_pod(self) -> Value {
        let Injection { mut pod, sidecar, changes, .. } = self;
        let Placed { list, at, .. } = changes.sidecar;
        let spec = pod.get_mut("spec").and_then(Value::as_object_mut).expect("injection found a spec map");
        let sidecar = sidecar.value().clone();
        if let Some(Value::Array(items)) = spec.get_mut(list.key()) {
            items.insert(at, sidecar);
        } else if list == List::InitContainers && !spec.contains_key(list.key()) && spec.contains_key("containers") {
            // A new list goes before `containers`, where a reader of the YAML looks for it.
            let mut init_containers = Some(json!([sidecar]));
            for (key, value) in std::mem::take(spec) {
                if key == "containers" {
                    spec.insert(list.key().into(), init_containers.take().expect("one `containers` key"));
                }
                spec.insert(key, value);
            }
        } else {
            spec.insert(list.key().into(), json!([sidecar]));
        }
        pod
    }
}

/// The members of a pod that injection set, each whole; nothing else in the pod
/// changed. A `bool` `had` says whether the pod had the member before, as any
/// value (`null` included): it was then replaced, else added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// `spec.volumes`: when it was a list, `volumes_removed` (their indices in
    /// it) were taken out and the last `volumes_added` of the list now
    /// appended; else it was set whole.
    pub volumes: Was,
    pub volumes_removed: Vec<usize>,
    pub volumes_added: usize,
    /// The containers whose `volumeMounts` list was rewritten, by list and by
    /// their index before the sidecar goes in.
    pub mounts: Vec<(List, usize)>,
    /// Where the sidecar goes.
    pub sidecar: Placed,
    /// `spec.terminationGracePeriodSeconds`, when it was raised.
    pub grace_had: Option<bool>,
    /// `metadata.annotations`: extended with `annotation_keys` when it was a
    /// map, else set whole.
    pub annotations: Was,
    /// The annotations set, each with whether the pod had it.
    pub annotation_keys: Vec<(&'static str, bool)>,
}

/// A container list of the pod spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    InitContainers,
    Containers,
}

impl List {
    pub fn key(self) -> &'static str {
        match self {
            List::InitContainers => "initContainers",
            List::Containers => "containers",
        }
    }
}

/// Where the sidecar goes: its list, its index there (the containers from
/// that index on move one further), and what the list was before: when it was
/// no list, it is set whole, to `[sidecar]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub list: List,
    pub at: usize,
    pub list_was: Was,
}

/// What a member of the pod was before injection set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Was {
    Absent,
    /// There, as a value of another shape than the one injection extends (`null`, say).
    Other,
    /// There, and extended in place.
    Extended,
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
    match asked(template, config)? {
        Asked::Nothing => Ok(Outcome::NotRequested),
        Asked::AlreadyInjected => Ok(Outcome::AlreadyInjected),
        Asked::Inject(request) => {
            let mut injection = apply(request, template.clone(), config)?;
            let warnings = std::mem::take(&mut injection.warnings);
            Ok(Outcome::Injected { pod: injection.into_pod(), warnings })
        }
    }
}

/// Injects the sidecar into `pod` itself, as [`inject`] does into its copy, and
/// says which members of the pod it set: the webhook's patch is those members.
pub fn edit(pod: Value, config: &Config) -> Result<Edit, InjectError> {
    match asked(&pod, config)? {
        Asked::Nothing => Ok(Edit::NotRequested),
        Asked::AlreadyInjected => Ok(Edit::AlreadyInjected),
        Asked::Inject(request) => apply(request, pod, config).map(Edit::Injected),
    }
}

/// What a pod's `sidemount.io/*` annotations (and labels) ask for.
enum Asked {
    Nothing,
    AlreadyInjected,
    Inject(Request),
}

/// A pod's request for injection, read from its annotations.
struct Request {
    volumes_text: Option<String>,
    convert: bool,
    mode: Mode,
    resources: resources::Resources,
}

fn asked(template: &Value, config: &Config) -> Result<Asked, InjectError> {
    let annotations = Annotations::of(template)?;
    if annotations.get(INJECTED_ANNOTATION)?.is_some() {
        return Ok(Asked::AlreadyInjected);
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
        return Ok(Asked::Nothing);
    }
    let mode = match annotations.get(MODE_ANNOTATION)? {
        None => config.mode,
        Some("native") => Mode::Native,
        Some("legacy") => Mode::Legacy,
        Some(other) => return Err(InjectError::Mode { value: other.into() }),
    };
    let resources = resources::chosen(|name| annotations.get(name))?;
    Ok(Asked::Inject(Request { volumes_text: volumes_text.map(String::from), convert, mode, resources }))
}

/// The one mutation: injects `pod` as `request` asks, in place.
fn apply(request: Request, mut pod: Value, config: &Config) -> Result<Injection, InjectError> {
    let Request { volumes_text, convert, mode, resources } = request;
    let volumes_text = volumes_text.as_deref();
    let spec =
        member_mut(&mut pod, "spec").and_then(Value::as_object_mut).ok_or_else(|| malformed("spec", "an object"))?;
    let volumes = was(lookup(spec, "volumes"), Value::is_array);
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
    owner::fill(&mut served, lookup(spec, "securityContext"), &containers_by_field)?;
    // A volume every container mounts read-only is mounted `ro`, so a repair keeps it so.
    warnings.extend(read_only::fill(&mut served, &[&init_containers[..], &containers[..]]));
    // The supervisor reads its spec within the same limits as the annotation.
    let sidecar = checked_sidecar(&served, &secret_mounts, mode, resources, config)?;

    // The pod's volumes: the emptyDir each served volume had as a placeholder
    // gives way to the one root volume (every mount of it becomes a directory of
    // the root below); each Secret is one more volume.
    let replaced = |v: &Value| name_of(v).is_some_and(|name| names.contains(&name));
    let volumes_removed: Vec<usize> = (0..pod_volumes.len()).filter(|&j| replaced(&pod_volumes[j])).collect();
    pod_volumes.retain(|v| !replaced(v));
    let kept = pod_volumes.len();
    pod_volumes.push(root_volume());
    for mount in &secret_mounts {
        let secret = json!({ "secretName": mount.secret, "defaultMode": SECRET_FILE_MODE });
        pod_volumes.push(json!({ "name": mount.pod_volume, "secret": secret }));
    }
    let volumes_added = pod_volumes.len() - kept;

    warnings.extend(subpath_warnings(&served, &[&init_containers[..], &containers[..]]));
    check_start_order(&init_containers, &containers, mode, &names)?;
    let mut mounts = Vec::new();
    for (list, containers) in [(List::InitContainers, &mut init_containers), (List::Containers, &mut containers)] {
        for (i, container) in containers.iter_mut().enumerate() {
            if mount_from_root(container, &names, || format!("spec.{}[{i}]", list.key()))? {
                mounts.push((list, i));
            }
        }
    }

    // The sidecar's place; it goes in when the pod is written whole (`into_pod`).
    let list = match mode {
        Mode::Native => List::InitContainers,
        Mode::Legacy => List::Containers,
    };
    let at = sidecar_position(if list == List::InitContainers { &init_containers } else { &containers });
    let placed = Placed { list, at, list_was: was(lookup(spec, list.key()), Value::is_array) };

    set_list(spec, "volumes", pod_volumes);
    set_list(spec, "containers", containers);
    set_list(spec, "initContainers", init_containers);

    let grace_had = lookup(spec, "terminationGracePeriodSeconds").is_some();
    let original_grace = raise_grace_period(spec, config.shutdown_timeout)?;
    let grace_had = original_grace.is_some().then_some(grace_had);
    // A pod converted for its label alone may have no annotations yet.
    let metadata = member_mut(&mut pod, "metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| malformed("metadata", "an object"))?;
    let annotations_were = was(lookup(metadata, "annotations"), Value::is_object);
    if annotations_were != Was::Extended {
        metadata.insert("annotations".into(), Value::Object(Map::new()));
    }
    let annotations = lookup_mut(metadata, "annotations").and_then(Value::as_object_mut).expect("made a map above");
    let mut annotation_keys = Vec::with_capacity(2);
    if let Some(original) = original_grace {
        let had = annotations.insert(ORIGINAL_GRACE_ANNOTATION.into(), Value::String(original)).is_some();
        annotation_keys.push((ORIGINAL_GRACE_ANNOTATION, had));
    }
    let had = annotations.insert(INJECTED_ANNOTATION.into(), Value::String(VERSION.into())).is_some();
    annotation_keys.push((INJECTED_ANNOTATION, had));
    let changes = Changes {
        volumes,
        volumes_removed,
        volumes_added,
        mounts,
        sidecar: placed,
        grace_had,
        annotations: annotations_were,
        annotation_keys,
    };
    Ok(Injection { pod, sidecar, warnings, changes })
}

/// What a member was before injection set it: absent, of the shape injection
/// extends in place (`extends`), or another value (`null`, say) that it replaces.
fn was(member: Option<&Value>, extends: impl Fn(&Value) -> bool) -> Was {
    match member {
        None => Was::Absent,
        Some(value) if extends(value) => Was::Extended,
        Some(_) => Was::Other,
    }
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

/// Where the Secret of a volume is mounted in the sidecar: its `secretDir`.
pub fn secret_dir(volume: &str) -> PathBuf {
    PathBuf::from(SECRETS_ROOT).join(volume)
}

/// The pod volume that carries the Secret of `volume`: `sidemount-secret-<volume>`,
/// shortened with a stable hash when that is longer than a DNS label may be.
pub fn secret_volume_name(volume: &str) -> String {
    if SECRET_VOLUME_PREFIX.len() + volume.len() <= 63 {
        // Not `format!`: its machinery costs more than the two copies.
        let mut name = String::with_capacity(SECRET_VOLUME_PREFIX.len() + volume.len());
        name.push_str(SECRET_VOLUME_PREFIX);
        name.push_str(volume);
        return name;
    }
    // FNV-1a: stable across builds and Rust versions, unlike DefaultHasher.
    let hash = volume.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let keep = 63 - SECRET_VOLUME_PREFIX.len() - 9;
    format!("{SECRET_VOLUME_PREFIX}{}-{:08x}", volume[..keep].trim_end_matches('-'), hash as u32)
}

fn name_of(item: &Value) -> Option<&str> {
    member(item, "name").and_then(Value::as_str)
}

/// `value[key]` of an object, found by comparing its keys in turn when it has
/// few: a lookup by hash costs a SipHash of the key, more than the comparisons
/// in the small objects of a pod (a volume, a mount, a container reduced).
pub(crate) fn member<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    lookup(value.as_object()?, key)
}

/// `value[key]` of an object, as [`member`] finds it, to change it.
fn member_mut<'a>(value: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    lookup_mut(value.as_object_mut()?, key)
}

/// `object[key]`, as [`member`] finds it, to change it.
fn lookup_mut<'a>(object: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Value> {
    if object.len() > 8 {
        return object.get_mut(key);
    }
    object.iter_mut().find_map(|(k, v)| (k == key).then_some(v))
}

/// `object[key]`, as [`member`] finds it.
fn lookup<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if object.len() > 8 {
        return object.get(key);
    }
    object.iter().find_map(|(k, v)| (k == key).then_some(v))
}

/// Takes a list out of the (copied) spec to edit it; `set_list` puts it back.
fn list(spec: &mut Map<String, Value>, at: &str, key: &str) -> Result<Vec<Value>, InjectError> {
    match lookup_mut(spec, key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(std::mem::take(items)),
        Some(_) => Err(malformed(&format!("{at}.{key}"), "a list")),
    }
}

/// Writes a list back in its place; an empty list the pod did not have stays absent.
fn set_list(spec: &mut Map<String, Value>, key: &str, items: Vec<Value>) {
    match lookup_mut(spec, key) {
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

    pub(super) fn config() -> Config {
        Config::for_tests()
    }

    pub(super) fn pod(annotations: Value, spec: Value) -> Value {
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p", "annotations": annotations }, "spec": spec })
    }

    pub(super) fn app(mounts: Value) -> Value {
        json!({ "name": "app", "image": "busybox", "volumeMounts": mounts })
    }

    pub(super) fn injected(outcome: Outcome) -> Value {
        match outcome {
            Outcome::Injected { pod, .. } => pod,
            other => panic!("not injected: {other:?}"),
        }
    }

    pub(super) const FUSE: &str = "- {name: data, type: fuse, command: [bindfs, -f, /src, '{mountpoint}']}";

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
}
