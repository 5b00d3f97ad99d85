//! sidemount: network and local filesystems in Kubernetes pods, mounted by a
//! privileged sidecar, with nothing installed on the node.

// Unsafe code and the raw mount calls live in `sys` alone (it allows both);
// clippy.toml names the calls.
#![deny(unsafe_code)]

#[cfg(test)]
mod alone;
pub mod daemon;
pub mod endpoints;
pub mod exit;
pub mod fast_hash;
pub mod file_watch;
pub mod inject;
pub mod logging;
pub mod mount_watch;
pub mod mounts;
pub mod secrets;
pub mod settings;
pub mod signals;
pub mod spec;
pub mod supervisor;
pub mod sys;
pub mod volume;
pub mod webhook;
pub mod yaml;
