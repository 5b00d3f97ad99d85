//! The pod of an AdmissionReview, reduced to what injection reads and writes.
//!
//! Injection (`inject::edit`) looks at `metadata.annotations` and the
//! `sidemount.io/inject` label of `metadata.labels`, and at `spec.volumes`, `spec.containers`,
//! `spec.initContainers`, `spec.securityContext` and
//! `spec.terminationGracePeriodSeconds`; of each container at its `name`,
//! `volumeMounts`, `volumeDevices`, `restartPolicy` and `securityContext`; of
//! each volume at its `name`, `emptyDir` and `flexVolume`, and at which kind of
//! volume it is (a denial names it), so its other keys are kept with a `null`
//! value. The review's log line names the pod by `metadata.name`,
//! `generateName` and `namespace`. Everything else in a pod (its status,
//! tolerations, affinity, managed fields, each container's image, ports,
//! probes, what a projected or Secret volume holds…) is skipped while parsing,
//! not built into a tree: less is parsed and freed.
//!
//! A patch computed on the reduced pod applies to the whole pod: every path it
//! names lies within the kept fields, which are kept whole (a container or
//! volume list keeps every item, at its index), it writes no reduced value
//! back (the volumes a pod had are only removed), and injection adds no key
//! outside them. `tests/webhook_patch.rs` checks this on every fixture.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::inject::INJECT_LABEL;

/// Which keys of a JSON object to keep: a kept key's value is kept whole, or
/// is an object reduced in turn.
#[derive(Debug)]
enum Keep {
    Whole,
    Only(&'static [(&'static str, Keep)]),
    /// An object whose keys are kept so, and any other key by its name alone,
    /// with a `null` value.
    Named(&'static [(&'static str, Keep)]),
    /// A list (or `null`) whose every item is kept so.
    Each(&'static Keep),
}

const POD: Keep = Keep::Only(&[("metadata", METADATA), ("spec", SPEC)]);
const METADATA: Keep = Keep::Only(&[
    ("name", Keep::Whole),
    ("generateName", Keep::Whole),
    ("namespace", Keep::Whole),
    // Of the labels, injection reads its own alone.
    ("labels", Keep::Only(&[(INJECT_LABEL, Keep::Whole)])),
    ("annotations", Keep::Whole),
]);
const SPEC: Keep = Keep::Only(&[
    ("volumes", Keep::Each(&VOLUME)),
    ("initContainers", Keep::Each(&CONTAINER)),
    ("containers", Keep::Each(&CONTAINER)),
    ("securityContext", Keep::Whole),
    ("terminationGracePeriodSeconds", Keep::Whole),
]);
const VOLUME: Keep = Keep::Named(&[("name", Keep::Whole), ("emptyDir", Keep::Whole), ("flexVolume", Keep::Whole)]);
const CONTAINER: Keep = Keep::Only(&[
    ("name", Keep::Whole),
    ("volumeMounts", Keep::Whole),
    ("volumeDevices", Keep::Whole),
    ("restartPolicy", Keep::Whole),
    ("securityContext", Keep::Whole),
]);

/// A pod with only the fields injection reads and writes, in the order the
/// request gives them. A pod whose `metadata` or `spec` is not an object, or
/// whose container or volume lists are not lists of objects, does not parse as
/// one: the caller then reads the whole pod.
#[derive(Debug)]
pub struct Reduced(pub Value);

impl<'de> Deserialize<'de> for Reduced {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Reduced, D::Error> {
        Filter(&POD).deserialize(deserializer).map(Reduced)
    }
}

struct Filter(&'static Keep);

impl<'de> DeserializeSeed<'de> for Filter {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self.0 {
            Keep::Whole => Value::deserialize(deserializer),
            Keep::Only(_) | Keep::Named(_) => deserializer.deserialize_map(self),
            Keep::Each(_) => deserializer.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Filter {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(if matches!(self.0, Keep::Each(_)) { "a list of objects" } else { "an object" })
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        match self.0 {
            Keep::Each(_) => Ok(Value::Null),
            _ => Err(E::invalid_type(Unexpected::Unit, &self)),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let Keep::Each(each) = self.0 else { return Err(de::Error::invalid_type(Unexpected::Seq, &self)) };
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Filter(each))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let (keys, named) = match self.0 {
            Keep::Only(keys) => (keys, false),
            Keep::Named(keys) => (keys, true),
            _ => return Err(de::Error::invalid_type(Unexpected::Map, &self)),
        };
        // Sized once for the keys kept by name: most objects have them all.
        let mut kept = Map::with_capacity(keys.len());
        // A repeated key: the last one wins, as when parsing into a Value.
        while let Some(found) = map.next_key_seed(Key { keys, named })? {
            match found {
                Found::Kept((key, keep)) => {
                    kept.insert((*key).to_string(), map.next_value_seed(Filter(keep))?);
                }
                Found::Named(key) => {
                    map.next_value::<IgnoredAny>()?;
                    kept.insert(key, Value::Null);
                }
                Found::Skipped => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }
}

/// An object key, looked up among the kept ones without being copied.
struct Key {
    keys: &'static [(&'static str, Keep)],
    /// Whether a key not among them is kept by its name.
    named: bool,
}

enum Found {
    Kept(&'static (&'static str, Keep)),
    Named(String),
    Skipped,
}

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Found;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Found, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Found, E> {
        Ok(match self.keys.iter().find(|(kept, _)| *kept == key) {
            Some(kept) => Found::Kept(kept),
            None if self.named => Found::Named(key.to_string()),
            None => Found::Skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_what_injection_reads_in_order_and_skips_the_rest() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "p", "uid": "x", "managedFields": [{ "a": 1 }], "annotations": { "k": "v" },
                          "labels": { "app": "a", "sidemount.io/inject": "true" } },
            "spec": { "tolerations": [{ "key": "t" }], "containers": [{ "name": "a", "ports": [1], "volumeMounts": [{ "x": 1 }] }], "volumes": null,
                      "securityContext": { "runAsUser": 1 }, "nodeName": "n" },
            "status": {},
        });
        let Reduced(reduced) = serde_json::from_value(pod).unwrap();
        assert_eq!(
            serde_json::to_string(&reduced).unwrap(),
            r#"{"metadata":{"name":"p","annotations":{"k":"v"},"labels":{"sidemount.io/inject":"true"}},"spec":{"containers":[{"name":"a","volumeMounts":[{"x":1}]}],"volumes":null,"securityContext":{"runAsUser":1}}}"#
        );
        // An escaped key is still recognised; a repeated one keeps its last value.
        let Reduced(reduced) =
            serde_json::from_str(r#"{"sp\u0065c":{"containers":[{"name":"a"}],"containers":[{}]},"metadata":{}}"#)
                .unwrap();
        assert_eq!(reduced, json!({ "spec": { "containers": [{}] }, "metadata": {} }));
        let Reduced(reduced) =
            serde_json::from_str(r#"{"sp\u0065c":{"containers":[{"image":"x"}],"containers":[{"na\u006de":"b"}]}}"#)
                .unwrap();
        assert_eq!(reduced, json!({ "spec": { "containers": [{ "name": "b" }] } }));
    }

    #[test]
    fn keeps_what_injection_reads_of_each_container_at_its_index() {
        let container = json!({ "name": "a", "image": "x", "ports": [{ "containerPort": 80 }], "volumeMounts": [{ "name": "d" }],
                                "volumeDevices": [], "restartPolicy": "Always", "securityContext": { "runAsUser": 1 }, "env": [] });
        let pod = json!({ "spec": { "initContainers": null, "containers": [container, { "image": "y" }] } });
        let Reduced(reduced) = serde_json::from_value(pod).unwrap();
        assert_eq!(
            reduced,
            json!({ "spec": { "initContainers": null, "containers": [
                { "name": "a", "volumeMounts": [{ "name": "d" }], "volumeDevices": [], "restartPolicy": "Always",
                  "securityContext": { "runAsUser": 1 } },
                {},
            ] } })
        );
    }

    #[test]
    fn keeps_of_each_volume_what_injection_reads_and_the_names_of_the_rest() {
        let volumes = json!([
            { "name": "a", "emptyDir": { "medium": "Memory" } },
            { "projected": { "sources": [{ "configMap": { "name": "c" } }] }, "name": "token" },
            { "name": "f", "flexVolume": { "driver": "altalang/ofs", "options": { "networkPath": "s3://b" } } },
            { "name": "h", "hostPath": { "path": "/x" }, "hostPath": { "path": "/y" } },
        ]);
        let Reduced(reduced) = serde_json::from_value(json!({ "spec": { "volumes": volumes } })).unwrap();
        assert_eq!(
            serde_json::to_string(&reduced["spec"]["volumes"]).unwrap(),
            r#"[{"name":"a","emptyDir":{"medium":"Memory"}},{"projected":null,"name":"token"},{"name":"f","flexVolume":{"driver":"altalang/ofs","options":{"networkPath":"s3://b"}}},{"name":"h","hostPath":null}]"#
        );
    }

    #[test]
    fn a_pod_of_the_wrong_shape_does_not_parse_as_reduced() {
        for pod in [
            json!({ "spec": "x" }),
            json!({ "metadata": null }),
            json!([1]),
            json!({ "spec": { "containers": [1] } }),
            json!({ "spec": { "containers": [null] } }),
            json!({ "spec": { "initContainers": { "name": "a" } } }),
            json!({ "spec": { "containers": "a" } }),
            json!({ "spec": { "volumes": [{ "name": "a" }, "b"] } }),
        ] {
            assert!(serde_json::from_value::<Reduced>(pod.clone()).is_err(), "{pod}");
        }
    }
}
