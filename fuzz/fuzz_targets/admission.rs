//! `webhook::admission::review` on any body. A body that starts with `{` goes as
//! it is; any other is made the `sidemount.io/volumes` annotation of a pod in an
//! AdmissionReview, so the fuzzer reaches injection without having to invent
//! the envelope. Asserted: no panic; within the time bound; every answer is an
//! AdmissionReview for the request's uid, and a patch is base64 of a JSON list.

#![no_main]

use std::time::{Duration, Instant};

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sidemount::inject::{self, Config};
use sidemount::settings::Mode;
use sidemount::webhook::admission::{self, Verdict};

const BOUND: Duration = Duration::from_secs(2);

fuzz_target!(|data: &[u8]| {
    let config = Config {
        image: "example.org/sidemount:fuzz".into(),
        mode: Mode::Native,
        shutdown_timeout: Duration::from_secs(20),
    };
    let body = if data.first() == Some(&b'{') {
        data.to_vec()
    } else {
        let annotation = String::from_utf8_lossy(data);
        serde_json::to_vec(&json!({
            "apiVersion": admission::API_VERSION, "kind": admission::KIND,
            "request": {
                "uid": "fuzz", "kind": { "group": "", "version": "v1", "kind": "Pod" }, "operation": "CREATE",
                "namespace": "ns",
                "object": {
                    "metadata": { "generateName": "web-", "annotations": { inject::VOLUMES_ANNOTATION: annotation } },
                    "spec": { "containers": [{ "name": "app", "image": "x" }] },
                },
            },
        }))
        .unwrap()
    };
    let started = Instant::now();
    let reviewed = admission::review(&body, &config);
    let took = started.elapsed();
    assert!(took < BOUND, "the review took {took:?} on {} bytes", body.len());
    let Ok(reviewed) = reviewed else { return };
    let answer: Value = serde_json::from_slice(&reviewed.body).expect("the answer is JSON");
    assert_eq!(answer["apiVersion"], admission::API_VERSION);
    assert_eq!(answer["response"]["uid"], reviewed.uid.as_str());
    match &reviewed.verdict {
        Verdict::Injected { operations } => {
            let patch = answer["response"]["patch"].as_str().expect("a patch");
            let patch = base64::engine::general_purpose::STANDARD.decode(patch).expect("base64");
            let patch: Vec<Value> = serde_json::from_slice(&patch).expect("a JSON list");
            assert_eq!(patch.len(), *operations);
        }
        Verdict::Denied(message) => {
            assert_eq!(answer["response"]["allowed"], false);
            assert_eq!(answer["response"]["status"]["message"], message.as_str());
        }
        Verdict::Unchanged(_) => assert_eq!(answer["response"]["allowed"], true),
    }
});
