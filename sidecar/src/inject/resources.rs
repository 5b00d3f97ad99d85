//! The sidecar's resources, from the pod's annotations
//! `sidemount.io/{cpu,memory}-{request,limit}`, with defaults sized for a
//! supervisor and a few FUSE daemons. A value of `""` removes the default.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::InjectError;

pub const CPU_REQUEST_ANNOTATION: &str = "sidemount.io/cpu-request";
pub const CPU_LIMIT_ANNOTATION: &str = "sidemount.io/cpu-limit";
pub const MEMORY_REQUEST_ANNOTATION: &str = "sidemount.io/memory-request";
pub const MEMORY_LIMIT_ANNOTATION: &str = "sidemount.io/memory-limit";

pub const DEFAULT_CPU_REQUEST: &str = "10m";
/// No CPU limit: throttling a FUSE daemon stalls every reader of the volume.
pub const DEFAULT_CPU_LIMIT: Option<&str> = None;
pub const DEFAULT_MEMORY_REQUEST: &str = "32Mi";
pub const DEFAULT_MEMORY_LIMIT: &str = "256Mi";

struct Resource {
    name: &'static str,
    request: (&'static str, Option<&'static str>),
    limit: (&'static str, Option<&'static str>),
}

const RESOURCES: [Resource; 2] = [
    Resource {
        name: "cpu",
        request: (CPU_REQUEST_ANNOTATION, Some(DEFAULT_CPU_REQUEST)),
        limit: (CPU_LIMIT_ANNOTATION, DEFAULT_CPU_LIMIT),
    },
    Resource {
        name: "memory",
        request: (MEMORY_REQUEST_ANNOTATION, Some(DEFAULT_MEMORY_REQUEST)),
        limit: (MEMORY_LIMIT_ANNOTATION, Some(DEFAULT_MEMORY_LIMIT)),
    },
];

/// The texts chosen for the container's `resources`: of each resource (cpu,
/// memory) its request and its limit, when there is one. Kept as text until a
/// sidecar is built: a kept sidecar is found by them, and building the maps
/// of `resources` for every pod was a tenth of injection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Resources([[Option<Cow<'static, str>>; 2]; 2]);

impl Resources {
    /// The container's `resources`, or `None` when every value was removed.
    pub fn to_value(&self) -> Option<Value> {
        let mut requests = Map::new();
        let mut limits = Map::new();
        for (resource, [request, limit]) in RESOURCES.iter().zip(&self.0) {
            if let Some(text) = request {
                requests.insert(resource.name.into(), Value::String(text.as_ref().into()));
            }
            if let Some(text) = limit {
                limits.insert(resource.name.into(), Value::String(text.as_ref().into()));
            }
        }
        let mut resources = Map::new();
        if !requests.is_empty() {
            resources.insert("requests".into(), Value::Object(requests));
        }
        if !limits.is_empty() {
            resources.insert("limits".into(), Value::Object(limits));
        }
        (!resources.is_empty()).then_some(Value::Object(resources))
    }
}

/// The texts of the container's `resources` ([`Resources::to_value`] makes
/// them its maps). `annotation` reads one annotation of the pod.
pub fn chosen<'a>(annotation: impl Fn(&str) -> Result<Option<&'a str>, InjectError>) -> Result<Resources, InjectError> {
    let mut chosen = Resources::default();
    for (resource, slot) in RESOURCES.iter().zip(&mut chosen.0) {
        let read = |(name, default): (&'static str, Option<&'static str>)| -> Result<Option<(Cow<'static, str>, f64, bool)>, InjectError> {
            let (value, given) = match annotation(name)? {
                Some(value) => (Cow::Owned(value.to_string()), true),
                None => match default {
                    Some(value) => (Cow::Borrowed(value), false),
                    None => return Ok(None),
                },
            };
            if value.is_empty() {
                return Ok(None);
            }
            let amount = parse_quantity(&value).map_err(|why| InjectError::Quantity { annotation: name, value: value.to_string(), why })?;
            Ok(Some((value, amount, given)))
        };
        let mut request = read(resource.request)?;
        let limit = read(resource.limit)?;
        if let (Some((text, amount, given)), Some((limit_text, limit_amount, _))) = (&request, &limit) {
            if amount > limit_amount {
                if *given {
                    return Err(InjectError::RequestAboveLimit {
                        request_annotation: resource.request.0,
                        request: text.to_string(),
                        limit_annotation: resource.limit.0,
                        limit: limit_text.to_string(),
                    });
                }
                // A default request above the limit the user chose: request the limit,
                // as Kubernetes does for a container that gives only a limit.
                request = Some((limit_text.clone(), *limit_amount, false));
            }
        }
        *slot = [request.map(|(text, _, _)| text), limit.map(|(text, _, _)| text)];
    }
    Ok(chosen)
}

/// Parses a Kubernetes quantity (`100m`, `0.5`, `64Mi`, `1e3`) into its value in
/// base units; negative quantities are refused, as they are for resources.
pub fn parse_quantity(text: &str) -> Result<f64, &'static str> {
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    if unsigned.starts_with('-') {
        return Err("it is negative");
    }
    let end = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(end);
    if !number.bytes().any(|b| b.is_ascii_digit()) || number.matches('.').count() > 1 {
        return Err("it does not start with a number");
    }
    let number: f64 = number.parse().map_err(|_| "it does not start with a number")?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let digits = &exponent[1..];
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err("the exponent is not a whole number");
            }
            10f64.powi(digits.parse::<i32>().map_err(|_| "the exponent is out of range")?)
        }
        _ => return Err("unknown suffix: use one of n u m k M G T P E Ki Mi Gi Ti Pi Ei, or an exponent like e3"),
    };
    Ok(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resources(pairs: &[(&str, &str)]) -> Result<Option<Value>, InjectError> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let leaked: &'static [(String, String)] = Box::leak(pairs.into_boxed_slice());
        chosen(move |name| Ok(leaked.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())))
            .map(|chosen| chosen.to_value())
    }

    #[test]
    fn parses_quantities_as_kubernetes_does() {
        assert_eq!(parse_quantity("100m").unwrap(), 0.1);
        assert_eq!(parse_quantity("2").unwrap(), 2.0);
        assert_eq!(parse_quantity("0.5").unwrap(), 0.5);
        assert_eq!(parse_quantity("64Mi").unwrap(), 64.0 * 1024.0 * 1024.0);
        assert_eq!(parse_quantity("1G").unwrap(), 1e9);
        assert_eq!(parse_quantity("1e3").unwrap(), 1000.0);
        assert_eq!(parse_quantity("1E").unwrap(), 1e18);
        assert_eq!(parse_quantity("+1k").unwrap(), 1000.0);
        for bad in ["", "-1", "ten", "1mb", "1.2.3", "Mi", "1 Mi", "1e", "1e+"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(
            resources(&[]).unwrap(),
            Some(json!({ "requests": { "cpu": "10m", "memory": "32Mi" }, "limits": { "memory": "256Mi" } }))
        );
        assert_eq!(
            resources(&[
                (CPU_LIMIT_ANNOTATION, "1"),
                (MEMORY_LIMIT_ANNOTATION, ""),
                (MEMORY_REQUEST_ANNOTATION, "1Gi")
            ])
            .unwrap(),
            Some(json!({ "requests": { "cpu": "10m", "memory": "1Gi" }, "limits": { "cpu": "1" } }))
        );
        let none = [(CPU_REQUEST_ANNOTATION, ""), (MEMORY_REQUEST_ANNOTATION, ""), (MEMORY_LIMIT_ANNOTATION, "")];
        assert_eq!(resources(&none).unwrap(), None);
        // A limit under the default request lowers the request with it.
        assert_eq!(
            resources(&[(MEMORY_LIMIT_ANNOTATION, "16Mi")]).unwrap(),
            Some(json!({ "requests": { "cpu": "10m", "memory": "16Mi" }, "limits": { "memory": "16Mi" } }))
        );
    }

    #[test]
    fn refuses_naming_the_annotation() {
        let err = resources(&[(CPU_REQUEST_ANNOTATION, "lots")]).unwrap_err().to_string();
        assert!(err.starts_with("sidemount.io/cpu-request: \"lots\" is not a Kubernetes quantity"), "{err}");
        let err = resources(&[(MEMORY_REQUEST_ANNOTATION, "1Gi"), (MEMORY_LIMIT_ANNOTATION, "512Mi")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sidemount.io/memory-request: the request 1Gi is above the limit 512Mi"), "{err}");
    }
}
