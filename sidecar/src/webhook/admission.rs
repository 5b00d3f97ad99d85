//! AdmissionReview v1: reads a review, injects the pod, and writes the answer.
//! Pure, so the router is tested on fixture files without sockets.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::patch;
use super::pod::Reduced;
use crate::inject::{self, Config, Edit};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// The part of an AdmissionReview request the webhook reads. The object is
/// first read as a `Reduced` pod, and whole only when it is not shaped as one.
/// Its strings are borrowed from the body where they have no escapes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
struct Review<'a, O> {
    #[serde(borrow)]
    api_version: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    request: Option<Request<'a, O>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
struct Request<'a, O = Value> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow)]
    kind: GroupVersionKind<'a>,
    #[serde(default, borrow)]
    operation: Cow<'a, str>,
    #[serde(default, borrow)]
    namespace: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    object: Option<O>,
}

impl<'a> Review<'a, Reduced> {
    fn into_values(self) -> Review<'a, Value> {
        let request = self.request.map(|r| Request {
            uid: r.uid,
            kind: r.kind,
            operation: r.operation,
            namespace: r.namespace,
            name: r.name,
            object: r.object.map(|Reduced(pod)| pod),
        });
        Review { api_version: self.api_version, kind: self.kind, request }
    }
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind<'a> {
    #[serde(default, borrow)]
    group: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewResponse<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

/// The answer that allows unchanged or denies; one with a patch is written by
/// [`injected_answer`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
}

#[derive(Debug, Serialize)]
struct Status {
    code: u16,
    message: String,
}

/// What the webhook decided, for the log line of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed with a patch of this many operations.
    Injected { operations: usize },
    /// Allowed unchanged, and why.
    Unchanged(&'static str),
    /// Denied with this message.
    Denied(String),
}

/// A reviewed request: the response body and what was decided.
#[derive(Debug, Clone)]
pub struct Reviewed {
    pub uid: String,
    /// `namespace/name` of the pod, as far as the request says.
    pub object: String,
    pub verdict: Verdict,
    /// The AdmissionReview response, as JSON.
    pub body: Vec<u8>,
}

/// A request that is not an AdmissionReview v1 at all: answered with HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("expected apiVersion {API_VERSION} kind {KIND}, got {api_version} {kind}: set admissionReviewVersions: [v1] in the webhook configuration")]
    Version { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// Answers one AdmissionReview: allowed with a JSON Patch that injects the
/// pod, allowed unchanged (not a pod CREATE, no `sidemount.io/volumes`, already
/// injected), or denied with the message that names the field at fault.
pub fn review(body: &[u8], config: &Config) -> Result<Reviewed, ReviewError> {
    let review = match serde_json::from_slice::<Review<Reduced>>(body) {
        Ok(review) => review.into_values(),
        Err(_) => serde_json::from_slice::<Review<Value>>(body).map_err(ReviewError::Parse)?,
    };
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(ReviewError::Version { api_version: review.api_version.into(), kind: review.kind.into() });
    }
    let mut request = review.request.ok_or(ReviewError::NoRequest)?;
    let object = describe(&request);

    let mut response = Response { uid: &request.uid, allowed: true, status: None };
    let verdict = match (
        request.object.take(),
        request.kind.group.is_empty() && request.kind.kind == "Pod",
        request.operation.as_ref(),
    ) {
        (Some(pod), true, "CREATE") => match inject::edit(pod, config) {
            Ok(Edit::Injected(injection)) => {
                let operations = patch::of(&injection);
                // Sized once: the patch is mostly the pod's own lists, and the
                // request carries the whole pod.
                let mut json = Vec::with_capacity(body.len());
                patch::write(&operations, &mut json);
                let verdict = Verdict::Injected { operations: operations.len() };
                let body = injected_answer(&request.uid, &json, &injection.warnings);
                return Ok(Reviewed { uid: request.uid.into(), object, verdict, body });
            }
            Ok(Edit::NotRequested) => Verdict::Unchanged("no sidemount.io/volumes annotation"),
            Ok(Edit::AlreadyInjected) => Verdict::Unchanged("already injected"),
            Err(err) => {
                let message = err.to_string();
                response.allowed = false;
                response.status = Some(Status { code: 400, message: message.clone() });
                Verdict::Denied(message)
            }
        },
        (None, _, _) => Verdict::Unchanged("no object in the request"),
        _ => Verdict::Unchanged("not a pod CREATE"),
    };
    let size = 256 + response.status.as_ref().map_or(0, |status| status.message.len());
    let mut body = Vec::with_capacity(size);
    serde_json::to_writer(&mut body, &ReviewResponse { api_version: API_VERSION, kind: KIND, response })
        .expect("an AdmissionReview serializes");
    Ok(Reviewed { uid: request.uid.into(), object, verdict, body })
}

/// The answer that allows a pod with a JSON Patch: `response` holds `uid`,
/// `allowed`, `patchType`, `patch` and, if any, `warnings`, written as serde_json
/// writes them, with the patch's base64 encoded straight into the answer: it
/// needs no JSON escape, and checking its every byte for one was a tenth of an
/// injecting review.
fn injected_answer(uid: &str, patch: &[u8], warnings: &[String]) -> Vec<u8> {
    let encoded = patch.len().div_ceil(3) * 4;
    let warned = warnings.iter().map(|w| w.len() + 3).sum::<usize>();
    let mut body = Vec::with_capacity(256 + uid.len() + encoded + warned);
    body.extend_from_slice(br#"{"apiVersion":""#);
    body.extend_from_slice(API_VERSION.as_bytes());
    body.extend_from_slice(br#"","kind":""#);
    body.extend_from_slice(KIND.as_bytes());
    body.extend_from_slice(br#"","response":{"uid":"#);
    serde_json::to_writer(&mut body, uid).expect("a string serializes");
    body.extend_from_slice(br#","allowed":true,"patchType":"JSONPatch","patch":""#);
    encode_base64(patch, &mut body);
    body.push(b'"');
    if !warnings.is_empty() {
        body.extend_from_slice(br#","warnings":"#);
        serde_json::to_writer(&mut body, warnings).expect("strings serialize");
    }
    body.extend_from_slice(b"}}");
    body
}

/// The standard base64 alphabet (RFC 4648, section 4).
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Each 12 bits of input as their two characters, in the order they are
/// written (a little-endian `u16`): one lookup makes two characters.
static BASE64_PAIRS: [u16; 4096] = {
    let mut pairs = [0; 4096];
    let mut i = 0;
    while i < pairs.len() {
        pairs[i] = u16::from_le_bytes([BASE64[i >> 6], BASE64[i & 63]]);
        i += 1;
    }
    pairs
};

/// Appends `input` in standard base64, padded: six bytes read at once (as
/// eight, where there are eight), and eight characters written at once. The
/// base64 crate's encoder, a character at a time, was a fourteenth of an
/// injecting review.
fn encode_base64(input: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.resize(at + input.len().div_ceil(3) * 4, 0);
    let pair = |bits: u64| u64::from(BASE64_PAIRS[(bits & 0xfff) as usize]);
    let groups = input.len() / 6;
    let (written, rest) = out[at..].split_at_mut(groups * 8);
    for (i, eight) in written.chunks_exact_mut(8).enumerate() {
        let from = i * 6;
        let bits = match input.get(from..from + 8) {
            Some(word) => u64::from_be_bytes(word.try_into().expect("eight bytes")) >> 16,
            None => input[from..from + 6].iter().fold(0, |bits, &b| bits << 8 | u64::from(b)),
        };
        let chars = pair(bits >> 36) | pair(bits >> 24) << 16 | pair(bits >> 12) << 32 | pair(bits) << 48;
        eight.copy_from_slice(&chars.to_le_bytes());
    }
    // The last one to five bytes, three at a time, padded.
    for (three, four) in input[groups * 6..].chunks(3).zip(rest.chunks_exact_mut(4)) {
        let byte = |i: usize| three.get(i).copied().map_or(0, u32::from);
        let bits = byte(0) << 16 | byte(1) << 8 | byte(2);
        four.copy_from_slice(&[18, 12, 6, 0].map(|shift| BASE64[(bits >> shift & 63) as usize]));
        four[three.len() + 1..].fill(b'=');
    }
}

/// `namespace/name` of the pod under review; pods of workloads have only a
/// `generateName` at admission.
fn describe(request: &Request) -> String {
    let meta = |key: &str| {
        let metadata = request.object.as_ref().and_then(|o| inject::member(o, "metadata"));
        metadata.and_then(|m| inject::member(m, key)).and_then(Value::as_str)
    };
    let name: Cow<str> = request
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .or_else(|| meta("name"))
        .map(Cow::Borrowed)
        .or_else(|| meta("generateName").map(|prefix| format!("{prefix}*").into()))
        .unwrap_or(Cow::Borrowed("(unnamed)"));
    match request.namespace.as_deref().filter(|n| !n.is_empty()).or_else(|| meta("namespace")) {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    fn config() -> Config {
        Config::for_tests()
    }

    fn review_of(object: Value, kind: &str, operation: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "request": { "uid": "u-1", "kind": { "group": "", "version": "v1", "kind": kind },
                         "operation": operation, "namespace": "ns", "object": object }
        }))
        .unwrap()
    }

    fn response(reviewed: &Reviewed) -> Value {
        let body: Value = serde_json::from_slice(&reviewed.body).unwrap();
        assert_eq!(body["apiVersion"], API_VERSION);
        assert_eq!(body["kind"], KIND);
        assert_eq!(body["response"]["uid"], "u-1");
        body["response"].clone()
    }

    #[test]
    fn allows_with_a_patch_or_unchanged_or_denies() {
        let pod = json!({ "metadata": { "generateName": "web-", "annotations": { "sidemount.io/volumes": "- {name: d, type: zfs, dataset: p/d}" } },
                          "spec": { "containers": [{ "name": "app", "image": "x" }] } });
        let reviewed = review(&review_of(pod.clone(), "Pod", "CREATE"), &config()).unwrap();
        assert_eq!(reviewed.object, "ns/web-*");
        assert!(matches!(reviewed.verdict, Verdict::Injected { .. }));
        let r = response(&reviewed);
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD.decode(r["patch"].as_str().unwrap()).unwrap();
        let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
        assert!(patch.iter().any(|op| op["path"] == "/metadata/annotations/sidemount.io~1injected"), "{patch:?}");

        let r = response(&review(&review_of(pod.clone(), "Pod", "UPDATE"), &config()).unwrap());
        assert_eq!(r, json!({ "uid": "u-1", "allowed": true }));
        let r = response(&review(&review_of(pod, "Deployment", "CREATE"), &config()).unwrap());
        assert_eq!(r, json!({ "uid": "u-1", "allowed": true }));

        let bad = json!({ "metadata": { "annotations": { "sidemount.io/volumes": "- {name: d, type: zfs}" } }, "spec": { "containers": [] } });
        let reviewed = review(&review_of(bad, "Pod", "CREATE"), &config()).unwrap();
        let r = response(&reviewed);
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 400);
        assert!(
            r["status"]["message"].as_str().unwrap().starts_with("sidemount.io/volumes: volumes[0].dataset: required"),
            "{r}"
        );
    }

    #[test]
    fn a_denial_names_the_field_and_the_limit() {
        let deny = |annotation: &str| {
            let pod = json!({ "metadata": { "annotations": { "sidemount.io/volumes": annotation } }, "spec": { "containers": [] } });
            let reviewed = review(&review_of(pod, "Pod", "CREATE"), &config()).unwrap();
            let r = response(&reviewed);
            assert_eq!(r["allowed"], false, "{r}");
            r["status"]["message"].as_str().unwrap().to_string()
        };
        let message = deny("- {name: 123, type: zfs, dataset: p/d}");
        assert!(message.starts_with("sidemount.io/volumes: volumes[0].name: must be a string"), "{message}");
        let message = deny("volume:\n- {name: d, type: zfs, dataset: p/d}");
        assert!(message.starts_with("sidemount.io/volumes: volume: unknown field `volume`"), "{message}");
        // What took minutes to parse is refused before parsing.
        let started = crate::sys::ThreadCpuTime::now();
        let message = deny(&format!("volumes: {}", "[".repeat(254 * 1024)));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(message.contains("above the limit of 65536 bytes"), "{message}");
        let message = deny(&format!("volumes: {}", "[".repeat(60 * 1024)));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(message.contains("more than 32 levels deep"), "{message}");
    }

    #[test]
    fn base64_is_the_standard_padded_one() {
        let input: Vec<u8> = (0..=255).chain((0..=255).rev()).map(|b: u8| b.wrapping_mul(37)).collect();
        for len in 0..input.len() {
            let mut out = b"x".to_vec();
            encode_base64(&input[..len], &mut out);
            assert_eq!(out[1..], *base64::engine::general_purpose::STANDARD.encode(&input[..len]).as_bytes(), "{len}");
        }
    }

    #[test]
    fn the_injected_answer_is_what_serde_json_writes() {
        let patch = br#"[{"op":"add","path":"/a","value":"\u00e9\"x\""}]"#;
        for (uid, warnings) in
            [("u-1", vec![]), ("a \"quoted\" uid\\\u{1}", vec!["one".to_string(), "two \"quoted\"\n".to_string()])]
        {
            let mut response = json!({ "uid": uid, "allowed": true, "patchType": "JSONPatch",
                                       "patch": base64::engine::general_purpose::STANDARD.encode(patch) });
            if !warnings.is_empty() {
                response["warnings"] = json!(warnings);
            }
            let expected =
                serde_json::to_vec(&json!({ "apiVersion": API_VERSION, "kind": KIND, "response": response })).unwrap();
            assert_eq!(
                String::from_utf8(injected_answer(uid, patch, &warnings)).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn strings_with_escapes_are_read_as_well_as_borrowed_ones() {
        let body = String::from_utf8(review_of(json!({ "spec": { "containers": [] } }), "Pod", "CREATE")).unwrap();
        let escaped = body.replace(r#""uid":"u-1""#, r#""uid":"u\u002d1""#).replace(r#""CREATE""#, r#""CRE\u0041TE""#);
        assert_ne!(escaped, body);
        let reviewed = review(escaped.as_bytes(), &config()).unwrap();
        assert_eq!(reviewed.uid, "u-1");
        assert_eq!(reviewed.verdict, Verdict::Unchanged("no sidemount.io/volumes annotation"));
        assert_eq!(response(&reviewed), json!({ "uid": "u-1", "allowed": true }));
    }

    #[test]
    fn refuses_what_is_not_an_admission_review() {
        assert!(matches!(review(b"{", &config()), Err(ReviewError::Parse(_))));
        let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#;
        assert!(matches!(review(v1beta1, &config()), Err(ReviewError::Version { .. })));
        let empty = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert!(matches!(review(empty, &config()), Err(ReviewError::NoRequest)));
    }
}
