//! The pod of an AdmissionReview, reduced to what injection reads and writes.
//!
//! Injection (`inject::inject`) looks at `metadata.annotations` and
//! `metadata.labels`, and at `spec.volumes`, `spec.containers`,
//! `spec.initContainers`, `spec.securityContext` and
//! `spec.terminationGracePeriodSeconds`; the review's log line names the pod by
//! `metadata.name`, `generateName` and `namespace`. Everything else in a pod
//! (its status, tolerations, affinity, managed fields…) is skipped while
//! parsing, not built into a tree: less is parsed, copied, compared and freed.
//!
//! A patch computed on the reduced pod applies to the whole pod: every path it
//! names lies within the kept fields, which are kept whole, and injection adds
//! no key outside them. `tests/webhook_patch.rs` checks this on every fixture.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Which keys of a JSON object to keep: a kept key's value is kept whole, or
/// is an object reduced in turn.
#[derive(Debug)]
enum Keep {
    Whole,
    Only(&'static [(&'static str, Keep)]),
}

const POD: Keep = Keep::Only(&[("metadata", METADATA), ("spec", SPEC)]);
const METADATA: Keep = Keep::Only(&[
    ("name", Keep::Whole),
    ("generateName", Keep::Whole),
    ("namespace", Keep::Whole),
    ("labels", Keep::Whole),
    ("annotations", Keep::Whole),
]);
const SPEC: Keep = Keep::Only(&[
    ("volumes", Keep::Whole),
    ("initContainers", Keep::Whole),
    ("containers", Keep::Whole),
    ("securityContext", Keep::Whole),
    ("terminationGracePeriodSeconds", Keep::Whole),
]);

/// A pod with only the fields injection reads and writes, in the order the
/// request gives them. A pod whose `metadata` or `spec` is not an object does
/// not parse as one: the caller then reads the whole pod.
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
            Keep::Only(_) => deserializer.deserialize_map(self),
        }
    }
}

impl<'de> Visitor<'de> for Filter {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Keep::Only(keys) = self.0 else { unreachable!("a whole value is not visited as a map") };
        let mut kept = Map::new();
        while let Some(found) = map.next_key_seed(Key(keys))? {
            match found {
                Some((key, keep)) => {
                    // A repeated key: the last one wins, as when parsing into a Value.
                    kept.insert((*key).to_string(), map.next_value_seed(Filter(keep))?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }
}

/// An object key, looked up among the kept ones without being copied.
struct Key(&'static [(&'static str, Keep)]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<&'static (&'static str, Keep)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Option<&'static (&'static str, Keep)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().find(|(kept, _)| *kept == key))
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
            "metadata": { "name": "p", "uid": "x", "managedFields": [{ "a": 1 }], "annotations": { "k": "v" }, "labels": {} },
            "spec": { "tolerations": [{ "key": "t" }], "containers": [{ "name": "a", "ports": [1] }], "volumes": null,
                      "securityContext": { "runAsUser": 1 }, "nodeName": "n" },
            "status": {},
        });
        let Reduced(reduced) = serde_json::from_value(pod).unwrap();
        assert_eq!(
            serde_json::to_string(&reduced).unwrap(),
            r#"{"metadata":{"name":"p","annotations":{"k":"v"},"labels":{}},"spec":{"containers":[{"name":"a","ports":[1]}],"volumes":null,"securityContext":{"runAsUser":1}}}"#
        );
        // An escaped key is still recognised; a repeated one keeps its last value.
        let Reduced(reduced) =
            serde_json::from_str(r#"{"sp\u0065c":{"containers":[1],"containers":[2]},"metadata":{}}"#).unwrap();
        assert_eq!(reduced, json!({ "spec": { "containers": [2] }, "metadata": {} }));
    }

    #[test]
    fn a_pod_of_the_wrong_shape_does_not_parse_as_reduced() {
        for pod in [json!({ "spec": "x" }), json!({ "metadata": null }), json!([1])] {
            assert!(serde_json::from_value::<Reduced>(pod.clone()).is_err(), "{pod}");
        }
    }
}
