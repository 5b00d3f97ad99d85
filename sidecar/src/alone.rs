//! Unit tests that change what a process holds once for all its threads (signal
//! handlers, being a subreaper) run in a test process of their own, so no other
//! test sees the change.

use std::future::Future;

/// Set in the child to the one test it runs.
const ALONE: &str = "SIDEMOUNT_TEST_ALONE";

/// Runs `body` on a runtime of its own in a child test process that runs the
/// test `path` alone (`module_path!()` and the test's name), and fails if the
/// child fails or ran anything else.
pub fn in_own_process<F: Future<Output = ()>>(path: &str, body: impl FnOnce() -> F) {
    let name = path.split_once("::").map_or(path, |(_crate, path)| path);
    if std::env::var(ALONE).is_ok_and(|running| running == name) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        return runtime.block_on(body());
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ALONE, name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    // A filter that matched nothing would pass too: the child ran exactly this test.
    assert!(stdout.contains("1 passed"), "{stdout}{stderr}");
}
