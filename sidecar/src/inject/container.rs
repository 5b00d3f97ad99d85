//! The sidecar container: its spec in `SIDEMOUNT_VOLUMES`, its mounts, probes
//! and resources, and its place among the pod's containers.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::resources::Resources;
use super::{
    name_of, secret_dir, Config, InjectError, SecretMount, CONTAINER_NAME, ISTIO_PROXY, MOUNT_ROOT,
    PROBE_TIMEOUT_SECONDS, ROOT_VOLUME, STARTUP_FAILURE_THRESHOLD, STARTUP_PERIOD_SECONDS,
};
use crate::settings::Mode;
use crate::spec::{self, RawVolume};

/// A sidecar built, with everything it was built from.
#[derive(Debug)]
pub(super) struct Built {
    served: Vec<RawVolume>,
    mode: Mode,
    resources: Resources,
    config: Config,
    sidecar: Value,
    /// The sidecar as JSON, as the webhook's patch carries it.
    json: Box<RawValue>,
}

/// The sidecar container, as built or as found among those kept: shared, not
/// copied, until it goes into a pod.
#[derive(Debug, Clone)]
pub struct Sidecar(Arc<Built>);

impl Sidecar {
    pub fn value(&self) -> &Value {
        &self.0.sidecar
    }

    /// The container as JSON, written once when it was built.
    pub fn json(&self) -> &RawValue {
        &self.0.json
    }
}

/// The sidecars built so far, by the hash of what they were built from. Every
/// replica of a workload gets the same sidecar, and building it and checking
/// its spec was a third of injection. Bounded: at most 256 sidecars whose spec
/// is up to 4 KiB each; cleared when full. Two inputs of one hash take turns.
/// Shared, so that a sidecar is copied for its pod after the lock is let go.
pub(super) static BUILT: LazyLock<Mutex<HashMap<u64, Arc<Built>>>> = LazyLock::new(Default::default);
pub(super) const BUILT_ENTRIES: usize = 256;
pub(super) const BUILT_SPEC_BYTES: usize = 4096;

/// The sidecar for the served volumes (their owners filled in), once its spec
/// is known to be within the supervisor's limits: the same spec `SIDEMOUNT_VOLUMES`
/// is read with, since JSON, the `secretDir` of each `secretName` and the owners
/// filled in can make it longer than the annotation.
pub(super) fn checked_sidecar(
    served: &[RawVolume],
    secret_mounts: &[SecretMount],
    mode: Mode,
    resources: Resources,
    config: &Config,
) -> Result<Sidecar, InjectError> {
    // The secret mounts are made from the served volumes: not part of the key.
    // FxHash: no defence against chosen collisions is needed, as a sidecar found is
    // compared whole with what it is asked for, so two inputs of one hash only take
    // turns in the cache. SipHash was half of finding a kept sidecar.
    let mut hasher = crate::fast_hash::FastHasher::default();
    (served, mode, &resources, &config.image, config.shutdown_timeout).hash(&mut hasher);
    let key = hasher.finish();
    let cache = || BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let found = cache().get(&key).cloned();
    if let Some(built) = found.filter(|built| {
        built.served == served && built.mode == mode && built.resources == resources && built.config == *config
    }) {
        return Ok(Sidecar(built));
    }
    let specs = sidecar_spec(served);
    crate::yaml::check(&specs, &spec::SPEC_LIMITS).map_err(InjectError::InjectedSpec)?;
    let keep = specs.len() <= BUILT_SPEC_BYTES;
    let sidecar = sidecar(specs, secret_mounts, mode, resources.to_value(), config);
    let json = serde_json::value::to_raw_value(&sidecar).expect("a container serializes");
    let built = Arc::new(Built { served: served.to_vec(), mode, resources, config: config.clone(), sidecar, json });
    if keep {
        let mut cache = cache();
        if cache.len() >= BUILT_ENTRIES {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&built));
    }
    Ok(Sidecar(built))
}

/// The sidecar's spec, for `SIDEMOUNT_VOLUMES`: the served volumes as JSON, with
/// `secretDir` where each Secret is mounted.
pub(super) fn sidecar_spec(served: &[RawVolume]) -> String {
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
    yaml_safe(serde_json::to_string(&specs).expect("volume specs have string keys only"))
}

/// JSON that the supervisor's YAML reader reads back unchanged. JSON escapes
/// only the controls below U+0020; YAML refuses DEL, the C1 controls and
/// U+FFFE/U+FFFF anywhere in a stream, quoted strings included, and reads
/// U+0085 in a quoted string as a line break, folded into a space (U+2028 and
/// U+2029, line breaks to YAML 1.1 too, are escaped as well). Each is written
/// as a `\uXXXX` escape, which both read as the character itself; they can
/// only be inside strings.
fn yaml_safe(json: String) -> String {
    let unsafe_in_yaml = |c: char| matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}');
    if !json.contains(unsafe_in_yaml) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 32);
    for c in json.chars() {
        match unsafe_in_yaml(c) {
            true => out.push_str(&format!("\\u{:04x}", c as u32)),
            false => out.push(c),
        }
    }
    out
}

/// The container that mounts the volumes, with their spec in `SIDEMOUNT_VOLUMES`.
pub(super) fn sidecar(
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

/// Where the sidecar goes in its list: first, or right after `istio-proxy`.
pub(super) fn sidecar_position(list: &[Value]) -> usize {
    list.iter().position(|c| name_of(c) == Some(ISTIO_PROXY)).map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::tests::{app, config, injected, pod, FUSE};
    use crate::inject::*;

    #[test]
    fn the_spec_injection_writes_reads_back_the_same_with_any_character() {
        // Found by fuzzing: a C1 control in a command was written raw, and the
        // supervisor's YAML reader refused the spec. A line break only YAML knows
        // was read back as a space.
        let odd = "a\u{7f}b\u{85}c\u{90}d\u{9f}e\u{2028}f\u{2029}g\u{fffe}h\u{ffff}i\u{a0}j\u{1}k\u{feff}l\u{1F600}";
        let escaped = r#""a\u007fb\u0085c\u0090d\u009fe\u2028f\u2029g\ufffeh\uffffi\u00a0j\u0001k\ufeffl\U0001F600""#;
        let annotation =
            format!("- name: data\n  type: fuse\n  command: [rclone, mount, {escaped}, \"{{mountpoint}}\"]\n");
        let served = spec::parse_raw("annotation", &annotation).expect("the annotation parses");
        let written = sidecar_spec(&served);
        let read = spec::load(&[spec::SpecText { origin: "SIDEMOUNT_VOLUMES".into(), text: written.clone() }])
            .unwrap_or_else(|invalid| panic!("{invalid}\n{written}"));
        match &read[0].source {
            spec::Source::Fuse { command } => assert_eq!(command[2], odd, "{written}"),
            other => panic!("{other:?}"),
        }
        // Plain text is left as it was written.
        assert_eq!(yaml_safe("[\"é\u{a0}\"]".into()), "[\"é\u{a0}\"]");
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
    fn a_sidecar_is_built_once_for_what_it_is_made_of() {
        let spec = "- {name: kept-sidecar, type: fuse, command: [x, '{mountpoint}']}";
        let input = |uid: u32, more: Value| {
            let mut annotations = json!({ VOLUMES_ANNOTATION: spec });
            annotations.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
            let mounts = json!([{ "name": "kept-sidecar", "mountPath": "/d" }]);
            let app =
                json!({ "name": "app", "image": "x", "securityContext": { "runAsUser": uid }, "volumeMounts": mounts });
            pod(annotations, json!({ "containers": [app] }))
        };
        let sidecar_of = |input: &Value, config: &Config| {
            let out = injected(inject(input, config).unwrap());
            let list = if out["spec"]["initContainers"].is_array() { "initContainers" } else { "containers" };
            out["spec"][list][0].clone()
        };
        let first = sidecar_of(&input(1, json!({})), &config());
        // The same input gets the kept sidecar: plant one that building would not give.
        let mut kept = BUILT.lock().unwrap();
        let built = kept.values_mut().find(|built| built.sidecar == first).expect("the sidecar is kept");
        Arc::get_mut(built).expect("not in use").sidecar["planted"] = json!(true);
        drop(kept);
        assert_eq!(sidecar_of(&input(1, json!({})), &config())["planted"], true);
        // Whatever it is made of, changed, makes another.
        let other_image = Config { image: "example.org/other:1".into(), ..config() };
        for (what, sidecar) in [
            ("the owner filled in", sidecar_of(&input(2, json!({})), &config())),
            ("the mode", sidecar_of(&input(1, json!({ MODE_ANNOTATION: "legacy" })), &config())),
            ("the resources", sidecar_of(&input(1, json!({ "sidemount.io/memory-limit": "1Gi" })), &config())),
            ("the image", sidecar_of(&input(1, json!({})), &other_image)),
        ] {
            assert!(sidecar.get("planted").is_none(), "{what}: {sidecar}");
            assert_ne!(sidecar, first, "{what}");
        }
        let specs = |sidecar: &Value| sidecar["env"][0]["value"].as_str().unwrap().to_string();
        assert!(specs(&sidecar_of(&input(2, json!({})), &config())).contains(r#""uid":2"#));

        // Bounded: cleared when full; a spec over the size kept is built every time.
        for i in 0..BUILT_ENTRIES + 10 {
            let spec = format!("- {{name: v{i}, type: fuse, command: [x, '{{mountpoint}}']}}");
            injected(
                inject(&pod(json!({ VOLUMES_ANNOTATION: spec }), json!({ "containers": [] })), &config()).unwrap(),
            );
        }
        assert!(BUILT.lock().unwrap().len() <= BUILT_ENTRIES);
        let long =
            format!("- {{name: long, type: fuse, command: [x, '{{mountpoint}}', {:?}]}}", "a".repeat(BUILT_SPEC_BYTES));
        let long = injected(
            inject(&pod(json!({ VOLUMES_ANNOTATION: long }), json!({ "containers": [] })), &config()).unwrap(),
        );
        let long = &long["spec"]["initContainers"][0];
        assert!(
            BUILT.lock().unwrap().values().all(|built| built.sidecar != *long),
            "a spec over {BUILT_SPEC_BYTES} bytes is not kept"
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
}
