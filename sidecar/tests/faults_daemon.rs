//! Fault injection on the daemon side: daemons that print what they like (invalid
//! UTF-8, endless lines, their secrets line by line), go to the background or stop
//! answering, and secretDirs that are missing, hung, oversized or set variables that
//! change what runs. Each test checks what a user would: the app's view, the node's
//! mount table, `/status`, the exit code; the log only where the log is the product.
//!
//! The daemons are small shell scripts that end in `exec bindfs -f SRC MOUNTPOINT`.
//! Run as root: `cargo test -p sidemount --test faults_daemon`.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::spec::{bindfs, spec, FuseVolume};
use support::{comm, pid_alive, poll_until, require_tool, signal, wait_for, Ns, Pod};

const READY: Duration = Duration::from_secs(30);
const SHUTDOWN: Duration = Duration::from_secs(5);

/// A bindfs source directory holding `hello` = `content`.
fn source(pod: &Pod, dir: &str, content: &str) -> PathBuf {
    require_tool("bindfs", "bindfs");
    let src = pod.work(dir);
    fs::write(src.join("hello"), content).unwrap();
    src
}

/// A daemon written as a shell script: `script` runs with `$1` = `src` and
/// `$2` = the mountpoint, and usually ends in `exec bindfs -f "$1" "$2"`.
fn scripted(name: &str, script: &str, src: &Path) -> FuseVolume {
    FuseVolume::new(name, &["sh", "-c", script, "sh", &src.display().to_string(), "{mountpoint}"])
}

/// Sends SIGCONT when dropped, so a test that fails midway leaves no stopped process.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

/// Peak resident memory of `pid` in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Processes in the pod running `program` (by comm).
fn running(pod: &Pod, program: &str) -> Vec<u32> {
    pod.processes().into_iter().filter(|p| comm(*p) == program).collect()
}

/// SIGTERM: exit 0 inside the budget, and nothing of the pod's left mounted on the
/// node or in the sidecar.
fn terminate_cleanly(sup: &mut support::Supervisor, pod: &Pod) {
    let (code, took) = sup.terminate();
    assert_eq!(code, 0, "exit code after SIGTERM (took {took:?})\n{}", sup.log_tail(40));
    assert!(pod.all_node_fuse_mounts().is_empty(), "left on the node: {:#?}", pod.all_node_fuse_mounts());
    let root = pod.root();
    let left: Vec<_> = pod.fuse_mounts(Ns::Sidecar).into_iter().filter(|m| m.mount_point.starts_with(&root)).collect();
    assert!(left.is_empty(), "left in the sidecar: {left:#?}");
}

/// A daemon that prints invalid UTF-8 on stdout and stderr, before mounting and
/// while it serves, is logged lossily and keeps running: its output is drained to
/// the end, so no write of its ever meets a closed pipe (SIGPIPE).
#[test]
fn invalid_utf8_on_stdout_and_stderr_is_logged_and_the_daemon_lives() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "still here\n");
    // `$$` stays the pid of the shell, which becomes bindfs: the ticker ends with it.
    let script = r#"printf 'bad-out \377\n'; printf 'bad-err \376\n' >&2
sleep 0.5
echo after-out; echo after-err >&2
( while kill -0 $$ 2>/dev/null; do printf 'tick \377\n'; printf 'tock \376\n' >&2; sleep 0.2; done ) &
exec bindfs -f "$1" "$2""#;
    let mut sup = pod.supervisor().spec(&spec(&[scripted("data", script, &src)])).shutdown_timeout(SHUTDOWN).start();
    sup.wait_ready(READY);
    pod.wait_app_reads("data", "hello", "still here\n", READY);
    let daemon = sup.daemon_pid("data");

    // Serving while it keeps printing invalid bytes on both pipes.
    std::thread::sleep(Duration::from_millis(1500));
    pod.wait_app_reads("data", "hello", "still here\n", Duration::from_secs(5));
    let v = sup.volume("data").unwrap();
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["restarts"], 0, "the daemon was restarted: {v}");
    assert_eq!(sup.daemon_pid("data"), daemon);
    assert!(pid_alive(daemon), "the daemon died");
    let log = sup.log();
    for expected in ["bad-out \u{FFFD}", "bad-err \u{FFFD}", "after-out", "after-err", "tick \u{FFFD}", "tock \u{FFFD}"]
    {
        assert!(log.contains(expected), "{expected:?} is not in the log:\n{}", sup.log_tail(40));
    }

    terminate_cleanly(&mut sup, &pod);
    assert!(poll_until(Duration::from_secs(3), || pod.processes().is_empty()), "left running: {:?}", pod.processes());
}

/// Output without newlines (300 MB on stdout and stderr) costs bounded memory: each
/// line is cut at the stated limit, the rest dropped with a marker, and draining goes
/// on, so the daemon mounts and its next lines are logged.
#[test]
fn an_output_flood_without_newlines_costs_bounded_memory() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "after the flood\n");
    let script = r#"head -c 200000000 /dev/zero | tr '\0' x; echo; echo flood-done-out
head -c 100000000 /dev/zero | tr '\0' y >&2; echo >&2; echo flood-done-err >&2
exec bindfs -f "$1" "$2""#;
    let mut sup = pod.supervisor().spec(&spec(&[scripted("data", script, &src)])).shutdown_timeout(SHUTDOWN).start();
    sup.wait_ready(Duration::from_secs(120));
    pod.wait_app_reads("data", "hello", "after the flood\n", READY);

    let peak = peak_rss_kib(sup.pid());
    eprintln!("supervisor peak RSS after 300 MB of unbroken output: {peak} KiB");
    assert!(peak < 64 * 1024, "the supervisor's peak RSS is {peak} KiB: the flood was buffered");
    let log = sup.log();
    assert!(log.len() < 1 << 20, "the log grew to {} bytes", log.len());
    for expected in ["flood-done-out", "flood-done-err", "line cut"] {
        assert!(log.contains(expected), "{expected:?} is not in the log:\n{}", sup.log_tail(20));
    }
    let v = sup.volume("data").unwrap();
    assert_eq!(v["restarts"], 0, "{v}");

    terminate_cleanly(&mut sup, &pod);
}

/// A daemon that forks into the background (bindfs without -f) is refused for good:
/// the volume fails with the fix in its message, is not restarted, leaves no mount
/// behind, and its background process goes with its mount.
#[test]
fn a_daemon_that_goes_to_the_background_is_refused_for_good() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "x\n");
    let background = FuseVolume::new("data", &["bindfs", &src.display().to_string(), "{mountpoint}"]);
    let mut sup = pod.supervisor().spec(&spec(&[background])).shutdown_timeout(SHUTDOWN).start();

    let v = sup.wait_state("data", "failed", READY);
    let error = v["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("background") && error.contains("bindfs -f"), "last_error: {error}");
    let restarts = v["restarts"].clone();
    // Longer than the first backoff steps (0, 0.5, 1, 2 s): a restart would show.
    std::thread::sleep(Duration::from_secs(5));
    let v = sup.volume("data").unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["restarts"], restarts, "restarted after the refusal: {v}");
    assert_eq!(v["repairs"], 0, "{v}");
    assert_eq!(sup.metric("sidemount_volume_failed", "data"), Some(1.0));
    assert_eq!(sup.readyz(), Some(503));
    assert!(pod.node_fuse_mounts("data").is_empty(), "mounted on the node: {:#?}", pod.node_fuse_mounts("data"));
    assert!(pod.app_read("data", "hello").is_err(), "the app reads through a refused volume");
    assert!(
        poll_until(Duration::from_secs(5), || running(&pod, "bindfs").is_empty()),
        "the background bindfs is still running: {:?}",
        running(&pod, "bindfs")
    );
    assert!(sup.log().contains("went to the background"), "{}", sup.log_tail(20));

    terminate_cleanly(&mut sup, &pod);
}

/// A daemon stopped by SIGSTOP while an app waits on it: the volume reports unready,
/// the endpoints answer, and SIGTERM still unmounts everything inside the budget; the
/// app's stuck read ends.
#[test]
fn a_sigstopped_daemon_is_unready_and_sigterm_still_unmounts_in_time() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "x\n");
    fs::write(src.join("never-read"), "y\n").unwrap();
    let mut sup = pod.supervisor().spec(&spec(&[bindfs("data", &src)])).shutdown_timeout(SHUTDOWN).start();
    sup.wait_ready(READY);
    pod.wait_app_reads("data", "hello", "x\n", READY);
    let daemon = sup.daemon_pid("data");
    signal(daemon, libc::SIGSTOP);
    let _resume = Resume(daemon);
    let stuck = pod.spawn_in(Ns::App, &["cat", &pod.app_dir("data").join("never-read").display().to_string()]);

    // /readyz checks at once, as the kubelet's probe would make it.
    wait_for(Duration::from_secs(15), "/readyz 503 with a stopped daemon", || {
        (sup.readyz() == Some(503)).then_some(())
    });
    let v = sup.volume("data").unwrap();
    assert_eq!(v["state"], "unready", "{v}");
    assert!(v["last_error"].as_str().is_some_and(|e| e.contains("statfs")), "{v}");
    assert_eq!(sup.healthz(), Some(200));
    assert!(pid_alive(stuck), "the app's read should be waiting on the stopped daemon");

    terminate_cleanly(&mut sup, &pod);
    assert!(poll_until(Duration::from_secs(3), || !pid_alive(daemon)), "the stopped daemon is still there");
    assert!(poll_until(Duration::from_secs(3), || !pid_alive(stuck)), "the app's read is still stuck");
}

/// A secretDir on a hung filesystem (a FUSE mount whose daemon is stopped) fails its
/// volume with a message naming it, within the check timeout; the endpoints keep
/// answering and SIGTERM keeps its budget. At start it is refused (exit 78) in
/// bounded time.
#[test]
fn a_hung_secret_dir_fails_its_volume_not_the_supervisor() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "x\n");
    let secrets = pod.work("secret-src");
    fs::write(secrets.join("TOKEN"), "hung-secret-value").unwrap();
    let secret_dir = pod.work("secret-mnt");
    let secret_daemon =
        pod.spawn_in(Ns::Sidecar, &["bindfs", "-f", &secrets.display().to_string(), &secret_dir.display().to_string()]);
    wait_for(Duration::from_secs(10), "the secretDir's FUSE mount", || {
        pod.mounts(Ns::Sidecar).iter().any(|m| m.is_fuse() && m.mount_point == secret_dir).then_some(())
    });
    let volumes = spec(&[bindfs("data", &src).secret_dir(&secret_dir)]);
    let mut sup = pod.supervisor().spec(&volumes).shutdown_timeout(SHUTDOWN).start();
    sup.wait_ready(READY);

    signal(secret_daemon, libc::SIGSTOP);
    let _resume = Resume(secret_daemon);
    // The repair reads the secretDir again.
    signal(sup.daemon_pid("data"), libc::SIGKILL);
    let started = Instant::now();
    let mut error = String::new();
    while started.elapsed() < Duration::from_secs(20) {
        let health = support::http::get(sup.addr(), "/healthz", Duration::from_secs(2));
        assert_eq!(health.as_ref().map(|r| r.status).ok(), Some(200), "/healthz with a hung secretDir: {health:?}");
        let v = sup.volume("data").unwrap();
        if v["state"] == "failed" {
            error = v["last_error"].as_str().unwrap_or_default().to_string();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(error.contains(&secret_dir.display().to_string()), "last_error does not name the secretDir: {error:?}");
    assert!(error.contains("did not answer"), "last_error: {error:?}");
    assert!(!sup.status_body().contains("hung-secret-value"));
    terminate_cleanly(&mut sup, &pod);

    // Starting with the secretDir still hung: refused in bounded time, naming it.
    let mut again = pod.supervisor().spec(&volumes).start();
    let code = again.expect_exit(Duration::from_secs(20));
    assert_eq!(code, 78, "{}", again.log_tail(20));
    let out = again.output();
    assert!(
        out.lines().any(|l| l.contains(&secret_dir.display().to_string()) && l.contains("did not answer")),
        "no line names the hung secretDir:\n{out}"
    );
    assert!(pod.all_node_fuse_mounts().is_empty());
}

/// A secretDir that does not exist is refused at start (exit 78, naming the fix) and,
/// for a volume added later, on reload: the running volumes stay.
#[test]
fn a_missing_secret_dir_is_refused_at_start_and_on_reload() {
    let pod = Pod::new(&["a", "b"]);
    let src = source(&pod, "src", "a\n");
    let missing = pod.path().join("no-such-secret");
    let broken = bindfs("b", &src).secret_dir(&missing);

    let mut sup = pod.supervisor().spec(&spec(&[bindfs("a", &src), broken.clone()])).start();
    let code = sup.expect_exit(Duration::from_secs(20));
    assert_eq!(code, 78, "{}", sup.log_tail(20));
    let out = sup.output();
    assert!(
        out.lines().any(|l| l.contains(&missing.display().to_string()) && l.contains("mount the Secret")),
        "no line names the missing secretDir and the fix:\n{out}"
    );
    assert!(pod.all_node_fuse_mounts().is_empty(), "mounted although refused");

    let mut sup = pod.supervisor().spec(&spec(&[bindfs("a", &src)])).start();
    sup.wait_ready(READY);
    let a = sup.daemon_pid("a");
    pod.write_spec(&spec(&[bindfs("a", &src), broken]));
    let error = wait_for(READY, "config_error after adding a volume with a missing secretDir", || {
        sup.status()["config_error"].as_str().map(str::to_string)
    });
    assert!(error.contains("mount the Secret") && error.contains("volume b"), "config_error: {error}");
    // Requested and not mounted: listed as failed with the reason, never started.
    let b = sup.volume("b").unwrap_or_else(|| panic!("the refused volume is not listed: {}", sup.status()));
    assert!(b["state"] == "failed" && b["pid"].is_null(), "the refused volume was started: {b}");
    assert_eq!(sup.readyz(), Some(503), "ready with a refused volume");
    assert!(pod.node_fuse_mounts("b").is_empty());
    assert_eq!(sup.daemon_pid("a"), a, "the running volume was restarted");
    pod.wait_app_reads("a", "hello", "a\n", Duration::from_secs(5));
    terminate_cleanly(&mut sup, &pod);
}

/// A Secret key that would change what runs (PATH, LD_PRELOAD) is refused: at start
/// (exit 78), and when it appears in a running volume's Secret, at the next start of
/// its daemon. The program it points at never runs.
#[test]
fn secret_names_that_change_what_runs_are_refused() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "x\n");
    let marker = pod.path().join("impostor-ran");
    let evil = pod.work("evil-bin");
    let impostor = format!("#!/bin/sh\ntouch '{}'\nexec bindfs \"$@\"\n", marker.display());
    fs::write(evil.join("bindfs"), impostor).unwrap();
    fs::set_permissions(evil.join("bindfs"), fs::Permissions::from_mode(0o755)).unwrap();
    let secrets = pod.work("secrets");
    fs::write(secrets.join("TOKEN"), "fine").unwrap();
    let volumes = spec(&[bindfs("data", &src).secret_dir(&secrets)]);

    let mut sup = pod.supervisor().spec(&volumes).shutdown_timeout(SHUTDOWN).start();
    sup.wait_ready(READY);
    // The Secret changes under a running volume; its daemon restarts.
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", evil.display());
    fs::write(secrets.join("PATH"), &path).unwrap();
    signal(sup.daemon_pid("data"), libc::SIGKILL);
    let v = sup.wait_state("data", "failed", READY);
    let error = v["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("PATH") && error.contains(&secrets.display().to_string()), "last_error: {error}");
    assert!(!marker.exists(), "the program named by the Secret's PATH ran");
    terminate_cleanly(&mut sup, &pod);

    fs::remove_file(secrets.join("PATH")).unwrap();
    fs::write(secrets.join("LD_PRELOAD"), "/nonexistent/evil.so").unwrap();
    let mut sup = pod.supervisor().spec(&volumes).start();
    assert_eq!(sup.expect_exit(Duration::from_secs(20)), 78, "{}", sup.log_tail(20));
    let out = sup.output();
    assert!(
        out.lines().any(|l| l.contains("LD_PRELOAD") && l.contains("remove")),
        "no line names LD_PRELOAD and the fix:\n{out}"
    );
    assert!(pod.all_node_fuse_mounts().is_empty());
    assert!(!marker.exists());
}

/// A secret file over the size limit is refused at start, naming the file and the
/// limit and never its content.
#[test]
fn an_oversized_secret_is_refused_naming_the_file_and_the_limit() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "x\n");
    let secrets = pod.work("secrets");
    let content = "big-secret-content-".repeat(200 * 1024 / 19 + 1);
    fs::write(secrets.join("BIG"), &content).unwrap();
    let mut sup = pod.supervisor().spec(&spec(&[bindfs("data", &src).secret_dir(&secrets)])).start();
    assert_eq!(sup.expect_exit(Duration::from_secs(20)), 78, "{}", sup.log_tail(20));
    let out = sup.output();
    let file = secrets.join("BIG").display().to_string();
    assert!(
        out.lines().any(|l| l.contains(&file) && l.contains("64 KiB")),
        "no line names the file and the limit:\n{out}"
    );
    assert!(!out.contains("big-secret-content"), "the secret's content is in the output");
    assert!(pod.all_node_fuse_mounts().is_empty());
}

/// A daemon that fails before mounting is reported with its last lines, not just its
/// last one; a multi-line secret it echoes line by line is blanked line by line.
#[test]
fn a_failed_daemon_is_reported_with_its_last_lines_and_multiline_secrets_blanked() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "x\n");
    let secrets = pod.work("secrets");
    let key =
        "-----BEGIN TEST KEY-----\nmultiline-secret-part-one\nmultiline-secret-part-two\n-----END TEST KEY-----\n";
    fs::write(secrets.join("CERT"), key).unwrap();
    let script = r#"printf '%s\n' "$CERT"
sleep 0.2; echo 'fatal: the real error: access denied' >&2
sleep 0.2; echo 'some later note'; echo 'final words'
exit 1"#;
    let mut sup = pod
        .supervisor()
        .spec(&spec(&[scripted("data", script, &src).secret_dir(&secrets)]))
        .shutdown_timeout(SHUTDOWN)
        .start();
    let v = sup.wait_state("data", "failed", READY);
    let error = v["last_error"].as_str().unwrap_or_default();
    for expected in ["exited with status 1", "before mounting", "the real error: access denied", "final words"] {
        assert!(error.contains(expected), "last_error lacks {expected:?}: {error}");
    }
    assert!(error.len() < 2048, "last_error is not bounded: {} bytes", error.len());
    for part in ["multiline-secret-part-one", "multiline-secret-part-two"] {
        assert!(!sup.output().contains(part), "{part} is in the log");
        assert!(!sup.status_body().contains(part), "{part} is in /status");
    }
    terminate_cleanly(&mut sup, &pod);
}
