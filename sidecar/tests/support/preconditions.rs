//! Preconditions: a privileged test that cannot run must fail, never skip.

use std::path::{Path, PathBuf};

/// Root, /dev/fuse and util-linux; panics naming what is missing.
pub fn require_privileges() {
    // SAFETY: geteuid(2) has no failure mode and no side effects.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests need root (mount namespaces, FUSE); run `cargo test` as root");
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: load the fuse module (`modprobe fuse`) or give the test /dev/fuse"
    );
    for tool in ["unshare", "nsenter", "mount", "umount", "sleep", "sh"] {
        require_tool(tool, "util-linux/coreutils");
    }
}

/// Path of `name` on PATH; panics with the install hint.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    which::which(name).unwrap_or_else(|_| panic!("`{name}` is not on PATH: install it (apt-get install {package})"))
}
