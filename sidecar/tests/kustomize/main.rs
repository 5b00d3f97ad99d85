//! The kustomize side (`kustomize/`), checked on what a real `kubectl kustomize`
//! renders, never by reading the YAML source:
//!
//! - every kustomization under `kustomize/` renders (each Component through a
//!   small overlay) and every rendered object passes `kubernetes-validate --strict`
//!   for each of `common::KUBERNETES_VERSIONS`; the cert-manager objects, which it
//!   has no schema for, are checked field by field (`renders`, `webhook`);
//! - the sidecar component's output is `sidemount inject`'s output for the same
//!   input, object for object (the golden test), through kustomize's exec-plugin
//!   protocol and through the KRM function protocol (`component`);
//! - the plain component, built with no plugin, adds the same sidecar (`plain`);
//! - the examples opt in and bring their Secrets (`examples`);
//! - the MutatingWebhookConfiguration selects only opted-in pods, fails closed,
//!   and points at a Service of the rendered output whose port reaches the
//!   webhook Deployment's container port, in the namespace rendered (`webhook`).
//!
//! `render` runs kustomize, `objects` reads what it renders. kubectl (with its
//! kustomize) and kubernetes-validate come from `tests/requirements.txt`
//! (`<repo>/.venv`); a missing tool fails the test, saying how to install it.

use std::path::{Path, PathBuf};

#[path = "../common/mod.rs"]
mod common;
#[path = "../inject_support/mod.rs"]
mod inject_support;

mod objects;
mod render;

mod component;
mod examples;
mod plain;
mod renders;
mod webhook;

const SIDECAR_IMAGE: &str = concat!("ghcr.io/sidemount/sidemount:", env!("CARGO_PKG_VERSION"));
const WEBHOOK_IMAGE: &str = concat!("ghcr.io/sidemount/sidemount-webhook:", env!("CARGO_PKG_VERSION"));
/// The examples a user applies with the webhook installed.
const EXAMPLES: [&str; 4] = ["objectivefs", "zfs", "block", "s3"];
/// Kustomizations that only render with the sidecar component's plugin.
const NEED_PLUGINS: [&str; 1] = ["examples/no-webhook-plugin"];
/// The plain component and its base of every kind it serves.
const PLAIN_COMPONENT: &str = "components/sidecar-plain";
const PLAIN_BASE: &str = "plain-all-kinds";

fn kustomize_dir() -> PathBuf {
    common::repo().join("kustomize")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kustomize").join(name)
}
