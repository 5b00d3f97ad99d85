//! The harness shared by the privileged tests: the pod's mount namespaces
//! (`pod`), process and polling helpers (`process`), what a test needs before
//! it can run (`preconditions`), and the supervisor, disks, S3 server and
//! mount tables the tests drive.

#![allow(dead_code)]

#[path = "../common/mod.rs"]
pub mod common;
pub mod disk;
pub mod http;
pub mod moto;
pub mod mountinfo;
pub mod pod;
pub mod preconditions;
pub mod process;
pub mod spec;
pub mod supervisor;

use std::time::Duration;

pub use mountinfo::Mount;
#[allow(unused_imports)]
pub use pod::*;
#[allow(unused_imports)]
pub use preconditions::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use supervisor::{Supervisor, SupervisorBuilder};

/// How often every wait in the harness polls.
pub const POLL: Duration = Duration::from_millis(50);
/// Bound for one helper command (cat, mount …) run in a namespace.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// The `sidemount` binary under test: this build's, or the one BENCH_BIN names
/// (to measure another build with the same harness).
pub fn sidemount_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| std::env::var("BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sidemount").into()))
}
