//! The binary's settings and arguments at their edges: durations out of range
//! are refused at start (exit 78, naming the variable and the range) instead of
//! aborting later, a misspelled SIDEMOUNT_* variable is warned about, and
//! `probe --timeout` refuses what no socket can use. No privileges needed.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{free_port, run_with_timeout, sidemount_bin};

/// `sidemount ARGS` with exactly `env` for SIDEMOUNT_*: (exit code, stderr).
fn sidemount(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> (Option<i32>, String) {
    let mut cmd = Command::new(sidemount_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDEMOUNT_") {
            cmd.env_remove(k);
        }
    }
    let config = tempfile::tempdir().unwrap();
    cmd.args(args)
        .env("SIDEMOUNT_CONFIG", config.path().join("missing.yaml"))
        .env("SIDEMOUNT_LISTEN", format!("127.0.0.1:{}", free_port()))
        .envs(env.iter().copied());
    // Ten seconds: a supervisor that accepted the setting runs until killed.
    let out = run_with_timeout(&mut cmd, stdin, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A shutdown budget of u64::MAX seconds would overflow the deadline computed at
/// SIGTERM, and abort with the mounts left on the node.
#[test]
fn run_refuses_an_unbounded_shutdown_timeout() {
    let (code, err) = sidemount(&["run"], &[("SIDEMOUNT_SHUTDOWN_TIMEOUT", "18446744073709551615s")], None);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("SIDEMOUNT_SHUTDOWN_TIMEOUT=\"18446744073709551615s\""), "{err}");
    assert!(err.contains("1s to 1h"), "the error states the range: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn run_refuses_each_duration_out_of_range() {
    for (variable, value, range) in [
        ("SIDEMOUNT_CHECK_TIMEOUT", "0s", "100ms to 1m"),
        ("SIDEMOUNT_CHECK_INTERVAL", "100000h", "1s to 1h"),
        ("SIDEMOUNT_MOUNT_TIMEOUT", "18446744073709551615s", "1s to 1h"),
    ] {
        let (code, err) = sidemount(&["run"], &[(variable, value)], None);
        assert_eq!(code, Some(78), "{variable}={value}: {err}");
        assert!(err.contains(variable) && err.contains(range), "{err}");
    }
}

/// `inject` writes the shutdown budget into the pod's grace period: an unbounded
/// one is refused the same way, not an abort.
#[test]
fn inject_refuses_an_unbounded_shutdown_timeout() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: app, image: x}]}\n";
    let (code, err) =
        sidemount(&["inject"], &[("SIDEMOUNT_SHUTDOWN_TIMEOUT", "18446744073709551615s")], Some(pod.as_bytes()));
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("SIDEMOUNT_SHUTDOWN_TIMEOUT") && err.contains("1s to 1h"), "{err}");
}

#[test]
fn a_misspelled_variable_is_named_with_the_known_one() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: app, image: x}]}\n";
    let (code, err) = sidemount(&["inject"], &[("SIDEMOUNT_SHUTDOWN_TIMOUT", "5s")], Some(pod.as_bytes()));
    assert_eq!(code, Some(0), "a misspelling warns, it does not fail: {err}");
    assert!(
        err.contains("warning: SIDEMOUNT_SHUTDOWN_TIMOUT is not a sidemount setting")
            && err.contains("did you mean SIDEMOUNT_SHUTDOWN_TIMEOUT?"),
        "{err}"
    );
}

#[test]
fn probe_refuses_a_timeout_no_socket_can_use() {
    for timeout in ["0s", "0ms", "99ms", "18446744073709551615s", "soon"] {
        let (code, err) = sidemount(&["probe", "--timeout", timeout], &[], None);
        // clap's exit code for a bad argument; nothing was asked of the supervisor.
        assert_eq!(code, Some(2), "--timeout {timeout}: {err}");
        assert!(err.contains("--timeout"), "{err}");
        assert!(!err.contains("cannot set a 0 duration timeout"), "{err}");
        if timeout != "soon" {
            assert!(err.contains("from 100ms to 10m"), "--timeout {timeout}: {err}");
        }
    }
    // In range: it asks (nobody listens, so it says so).
    let (code, err) = sidemount(&["probe", "--timeout", "100ms"], &[], None);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not reachable"), "{err}");
}
