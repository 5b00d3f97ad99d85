//! The webhook's manifests (`kustomize/webhook`): the MutatingWebhookConfiguration
//! selects only opted-in pods, fails closed, and reaches the webhook Deployment
//! through a Service of the output; its certificate comes from a Job or from
//! cert-manager.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::objects::{documents, id, of_kind, one, text};
use crate::render::{overlay, render, PLAIN};
use crate::{kustomize_dir, SIDECAR_IMAGE, WEBHOOK_IMAGE};

/// The webhook's objects, as rendered, and the checks both certificate variants share.
fn check_webhook(dir: &str) -> Vec<Value> {
    let objects = documents(&render(&kustomize_dir().join(dir), PLAIN));
    let what = format!("kustomize/{dir}");

    let config = one(&objects, "MutatingWebhookConfiguration");
    let webhooks = config["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 1, "{what}");
    let webhook = &webhooks[0];
    assert_eq!(
        webhook["objectSelector"],
        json!({ "matchLabels": { "sidemount.io/inject": "true" } }),
        "{what}: objectSelector"
    );
    assert_eq!(webhook["failurePolicy"], "Fail", "{what}");
    assert_eq!(webhook["reinvocationPolicy"], "IfNeeded", "{what}");
    assert_eq!(webhook["sideEffects"], "None", "{what}");
    assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]), "{what}");
    let timeout = webhook["timeoutSeconds"].as_u64().expect("timeoutSeconds");
    assert!((1..=10).contains(&timeout), "{what}: timeoutSeconds {timeout}");
    assert_eq!(
        webhook["rules"],
        json!([{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced" }]),
        "{what}: only pod creations"
    );

    // clientConfig.service names a Service of this output, in its namespace...
    let reference = &webhook["clientConfig"]["service"];
    assert!(webhook["clientConfig"].get("url").is_none(), "{what}");
    let namespace = text(reference, "/namespace");
    assert_eq!(text(reference, "/path"), "/mutate", "{what}");
    let services: Vec<&Value> = of_kind(&objects, "Service")
        .into_iter()
        .filter(|s| s["metadata"]["name"] == reference["name"] && s["metadata"]["namespace"] == namespace)
        .collect();
    assert_eq!(services.len(), 1, "{what}: no Service {namespace}/{} in the output", reference["name"]);
    let service = services[0];
    assert!(
        of_kind(&objects, "Namespace").iter().any(|n| n["metadata"]["name"] == namespace),
        "{what}: no Namespace {namespace}"
    );

    // ...whose port (443 unless given) maps to the webhook container's port...
    let port = reference["port"].as_u64().unwrap_or(443);
    let service_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"].as_u64() == Some(port))
        .unwrap_or_else(|| panic!("{what}: Service {} has no port {port}", service["metadata"]["name"]));
    let target = service_port.get("targetPort").cloned().unwrap_or_else(|| json!(port));
    let selector = service["spec"]["selector"].as_object().expect("the Service selects pods");
    let deployments: Vec<&Value> = of_kind(&objects, "Deployment")
        .into_iter()
        .filter(|d| {
            d["metadata"]["namespace"] == namespace
                && selector.iter().all(|(k, v)| d["spec"]["template"]["metadata"]["labels"][k] == *v)
        })
        .collect();
    assert_eq!(deployments.len(), 1, "{what}: the Service selects no Deployment of the output (or several)");
    let deployment = deployments[0];
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    let (container, container_port) = containers
        .iter()
        .find_map(|c| {
            let ports = c["ports"].as_array()?;
            let found = ports.iter().find(|p| match &target {
                Value::String(name) => p["name"] == *name,
                number => p["containerPort"] == *number,
            })?;
            Some((c, found["containerPort"].as_u64().unwrap()))
        })
        .unwrap_or_else(|| panic!("{what}: targetPort {target} is no container port of {}", id(deployment)));
    // ...where the webhook listens, with TLS.
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_string())
    };
    let listen = env("SIDEMOUNT_WEBHOOK_LISTEN").unwrap_or_else(|| "0.0.0.0:8443".into());
    assert!(
        listen.ends_with(&format!(":{container_port}")),
        "{what}: the webhook listens on {listen}, the Service sends to {container_port}"
    );
    assert_eq!(container["args"], json!(["webhook"]), "{what}");
    assert_eq!(container["image"], WEBHOOK_IMAGE, "{what}");
    assert_eq!(env("SIDEMOUNT_IMAGE").as_deref(), Some(SIDECAR_IMAGE), "{what}: the sidecar image injected");
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{what}: {probe}");
        assert_eq!(get["scheme"], "HTTPS", "{what}: {probe}");
        assert!(
            get["port"] == container_port || get["port"] == service_port["targetPort"],
            "{what}: {probe} port {}",
            get["port"]
        );
    }

    // Fail closed, but never on the webhook's own pods.
    let excluded = &webhook["namespaceSelector"]["matchExpressions"];
    assert!(
        excluded.as_array().unwrap().iter().any(|e| e["key"] == "kubernetes.io/metadata.name"
            && e["operator"] == "NotIn"
            && e["values"].as_array().unwrap().iter().any(|v| v == namespace)),
        "{what}: the webhook's namespace {namespace} is not excluded: {excluded}"
    );
    assert_ne!(deployment["spec"]["template"]["metadata"]["labels"]["sidemount.io/inject"], "true", "{what}");

    // Available through a node drain, unprivileged, certificate mounted where the webhook reads it.
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2, "{what}");
    let keys: Vec<&str> = pod["topologySpreadConstraints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["topologyKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["kubernetes.io/hostname", "topology.kubernetes.io/zone"], "{what}");
    let pdb = one(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1, "{what}");
    assert_eq!(pdb["metadata"]["namespace"], namespace, "{what}");
    let pdb_selector = pdb["spec"]["selector"]["matchLabels"].as_object().unwrap();
    assert!(
        pdb_selector.iter().all(|(k, v)| deployment["spec"]["template"]["metadata"]["labels"][k] == *v),
        "{what}: the PDB does not select the webhook's pods"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(pod["securityContext"]["runAsUser"], 65532, "{what}");
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{what}");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]), "{what}");
    assert!(
        container["resources"]["requests"].is_object() && container["resources"]["limits"]["memory"].is_string(),
        "{what}"
    );
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/sidemount/tls")
        .expect("TLS mount");
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert_eq!(volume["secret"]["secretName"], tls_secret(&objects), "{what}");
    let account = text(pod, "/serviceAccountName");
    assert!(
        of_kind(&objects, "ServiceAccount")
            .iter()
            .any(|a| a["metadata"]["name"] == account && a["metadata"]["namespace"] == namespace),
        "{what}: no ServiceAccount {account}"
    );
    objects
}

fn tls_secret(objects: &[Value]) -> String {
    let deployment =
        of_kind(objects, "Deployment").into_iter().find(|d| d["metadata"]["name"] == "sidemount-webhook").unwrap();
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    text(volumes.iter().find(|v| v["name"] == "tls").unwrap(), "/secret/secretName").to_string()
}

fn job_args<'a>(job: &'a Value, container: &str) -> BTreeMap<&'a str, &'a str> {
    let spec = &job["spec"]["template"]["spec"];
    let all = spec["initContainers"].as_array().into_iter().flatten().chain(spec["containers"].as_array().unwrap());
    let found = all.into_iter().find(|c| c["name"] == container).unwrap_or_else(|| panic!("no container {container}"));
    found["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .map(|a| a.split_once('=').unwrap_or((a, "")))
        .collect()
}

#[test]
fn the_default_webhook_makes_its_certificate_with_a_job() {
    let objects = check_webhook("webhook");
    let config = one(&objects, "MutatingWebhookConfiguration");
    let service = one(&objects, "Service");
    let namespace = text(service, "/metadata/namespace");
    let secret = tls_secret(&objects);
    assert!(config["metadata"]["annotations"].get("cert-manager.io/inject-ca-from").is_none());
    assert!(of_kind(&objects, "Certificate").is_empty());

    let job = one(&objects, "Job");
    assert_eq!(job["metadata"]["namespace"], namespace);
    // Its init container makes the Secret the webhook mounts, for the Service's names...
    let create = job_args(job, "create");
    assert!(create.contains_key("create"));
    assert_eq!(create["--secret-name"], secret);
    assert_eq!((create["--cert-name"], create["--key-name"]), ("tls.crt", "tls.key"));
    assert_eq!(create["--namespace"], "$(POD_NAMESPACE)");
    let hosts: Vec<&str> = create["--host"].split(',').collect();
    let name = text(service, "/metadata/name");
    assert!(hosts.contains(&format!("{name}.$(POD_NAMESPACE).svc").as_str()), "{hosts:?}");
    // ...then its container writes the CA into this configuration, the mutating one only.
    let patch = job_args(job, "patch");
    assert!(patch.contains_key("patch"));
    assert_eq!(patch["--webhook-name"], text(config, "/metadata/name"));
    assert_eq!(patch["--secret-name"], secret);
    assert_eq!((patch["--patch-mutating"], patch["--patch-validating"]), ("true", "false"));
    assert_eq!(job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true);

    // Least privilege: the one Secret, the one webhook configuration.
    let account = text(job, "/spec/template/spec/serviceAccountName");
    let bound = |binding_kind: &str| -> Vec<Value> {
        of_kind(&objects, binding_kind)
            .into_iter()
            .filter(|b| {
                b["subjects"].as_array().unwrap().iter().any(|s| s["name"] == account && s["namespace"] == namespace)
            })
            .map(|b| {
                let role_kind = text(b, "/roleRef/kind");
                let role = of_kind(&objects, role_kind)
                    .into_iter()
                    .find(|r| r["metadata"]["name"] == b["roleRef"]["name"])
                    .unwrap();
                role["rules"].clone()
            })
            .collect()
    };
    let role_rules = bound("RoleBinding");
    assert_eq!(
        role_rules,
        [json!([
            { "apiGroups": [""], "resources": ["secrets"], "verbs": ["create"] },
            { "apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get"] },
        ])]
    );
    let cluster_rules = bound("ClusterRoleBinding");
    assert_eq!(
        cluster_rules,
        [
            json!([{ "apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"], "resourceNames": [text(config, "/metadata/name")], "verbs": ["get", "update"] }])
        ]
    );
}

#[test]
fn the_cert_manager_variant_gets_its_certificate_from_cert_manager() {
    let objects = check_webhook("webhook/cert-manager");
    assert!(of_kind(&objects, "Job").is_empty(), "no certificate Job with cert-manager");
    assert!(of_kind(&objects, "ClusterRole").is_empty() && of_kind(&objects, "Role").is_empty());
    let service = one(&objects, "Service");
    let namespace = text(service, "/metadata/namespace");
    let secret = tls_secret(&objects);

    // kubernetes-validate has no schema for cert-manager's kinds: their fields are checked here.
    let certificates = of_kind(&objects, "Certificate");
    let issuer_of = |certificate: &Value| -> Value {
        let reference = &certificate["spec"]["issuerRef"];
        assert_eq!(reference["kind"], "Issuer");
        assert_eq!(reference["group"], "cert-manager.io");
        let found = of_kind(&objects, "Issuer").into_iter().find(|i| {
            i["metadata"]["name"] == reference["name"]
                && i["metadata"]["namespace"] == certificate["metadata"]["namespace"]
        });
        found.unwrap_or_else(|| panic!("no Issuer {} beside {}", reference["name"], id(certificate))).clone()
    };
    for object in certificates.iter().chain(&of_kind(&objects, "Issuer")) {
        assert_eq!(object["apiVersion"], "cert-manager.io/v1");
        assert_eq!(object["metadata"]["namespace"], namespace, "{}", id(object));
    }
    // The serving certificate: the Secret the webhook mounts, the Service's DNS names.
    let serving = certificates
        .iter()
        .find(|c| c["spec"]["secretName"] == secret.as_str())
        .expect("a Certificate for the TLS Secret");
    let dns: Vec<&str> = serving["spec"]["dnsNames"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(dns.contains(&format!("{}.{namespace}.svc", text(service, "/metadata/name")).as_str()), "{dns:?}");
    assert!(serving["spec"]["usages"].as_array().unwrap().contains(&json!("server auth")));
    // Signed by a CA Issuer whose CA is a self-signed Certificate.
    let ca_issuer = issuer_of(serving);
    let ca_secret = text(&ca_issuer, "/spec/ca/secretName");
    let ca = certificates.iter().find(|c| c["spec"]["secretName"] == ca_secret).expect("the CA Certificate");
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(issuer_of(ca)["spec"]["selfSigned"], json!({}));
    // And cert-manager's CA injector fills this configuration's caBundle from it.
    let config = one(&objects, "MutatingWebhookConfiguration");
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{namespace}/{}", text(serving, "/metadata/name"))
    );
}

#[test]
fn images_overrides_the_webhook_and_the_sidecar_it_injects() {
    let over = overlay(
        &[kustomize_dir().join("webhook")],
        &[],
        "images:\n- name: ghcr.io/sidemount/sidemount\n  newName: registry.example.org/mirror/sidemount\n  newTag: \"9.9.9\"\n\
         - name: ghcr.io/sidemount/sidemount-webhook\n  newName: registry.example.org/mirror/sidemount-webhook\n  newTag: \"9.9.9\"\n",
    );
    let objects = documents(&render(over.path(), PLAIN));
    let deployment = one(&objects, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example.org/mirror/sidemount-webhook:9.9.9");
    let env = container["env"].as_array().unwrap();
    let image = env.iter().find(|e| e["name"] == "SIDEMOUNT_IMAGE").unwrap();
    assert_eq!(image["value"], "registry.example.org/mirror/sidemount:9.9.9");
    // Other values are not images and stay as they are.
    assert_eq!(env.iter().find(|e| e["name"] == "SIDEMOUNT_MODE").unwrap()["value"], "native");
}
