//! Injection on any input: the first byte chooses the path. Odd: the rest is a
//! YAML stream for `sidemount inject` (`manifest::inject_stream`). Even: the rest
//! is the `sidemount.io/volumes` annotation of a pod, injected both as a value
//! (`inject::inject`, the webhook's path) and as a YAML stream.
//!
//! Asserted: no panic; within the time bound; what is injected, the supervisor
//! reads (its `SIDEMOUNT_VOLUMES` passes `spec::load`), and reads as the
//! annotation says (each volume's source, options and env); injecting twice
//! changes nothing; both paths agree.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sidemount::inject::{self, manifest, Config, Outcome};
use sidemount::settings::Mode;
use sidemount::spec::{self, SpecText};

const BOUND: Duration = Duration::from_secs(2);

fn config() -> Config {
    Config { image: "example.org/sidemount:fuzz".into(), mode: Mode::Native, shutdown_timeout: Duration::from_secs(20) }
}

/// The sidecar of an injected pod holds a spec the supervisor accepts; returns
/// its volumes.
fn check_injected(pod: &Value) -> Vec<spec::Volume> {
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == inject::CONTAINER_NAME))
        .expect("an injected pod has the sidecar");
    let specs = sidecar["env"][0]["value"].as_str().expect("SIDEMOUNT_VOLUMES");
    spec::load(&[SpecText { origin: "SIDEMOUNT_VOLUMES".into(), text: specs.into() }])
        .unwrap_or_else(|invalid| panic!("the supervisor refuses what injection wrote:\n{invalid}\n{specs}"))
}

fn stream(text: &str) {
    let config = config();
    if let Ok(once) = manifest::inject_stream(text, &config) {
        let twice = manifest::inject_stream(&once.output, &config).expect("the output of inject reads back");
        assert_eq!(twice.output, once.output, "injecting the output again changed it");
        assert_eq!(twice.injected, 0);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let started = Instant::now();
    if mode & 1 == 1 {
        stream(text);
    } else {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "p", "annotations": { inject::VOLUMES_ANNOTATION: text } },
            "spec": { "containers": [{ "name": "app", "image": "x", "volumeMounts": [{ "name": "data", "mountPath": "/data" }] }] },
        });
        let config = config();
        let direct = inject::inject(&pod, &config);
        match &direct {
            Ok(Outcome::Injected { pod: injected, .. }) => {
                let read = check_injected(injected);
                let annotated = spec::load(&[SpecText { origin: "annotation".into(), text: text.into() }])
                    .expect("an annotation injection took is a valid spec");
                for volume in &read {
                    let from =
                        annotated.iter().find(|a| a.name == volume.name).expect("an injected volume is annotated");
                    assert_eq!(
                        (&volume.source, &volume.options, &volume.env),
                        (&from.source, &from.options, &from.env),
                        "the supervisor would read volume {} otherwise than the annotation says",
                        volume.name
                    );
                }
                assert_eq!(inject::inject(injected, &config).unwrap(), Outcome::AlreadyInjected);
            }
            Ok(other) => panic!("a pod with the annotation was {other:?}"),
            Err(err) => assert!(!err.to_string().is_empty()),
        }
        let text = serde_json::to_string(&pod).unwrap();
        let streamed = manifest::inject_stream(&text, &config);
        assert_eq!(streamed.is_ok(), direct.is_ok(), "the webhook's path and inject's disagree");
        stream(&text);
    }
    let took = started.elapsed();
    assert!(took < BOUND, "injection took {took:?} on {} bytes", text.len());
});
