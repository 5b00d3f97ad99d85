//! Privileged fault tests of spec reloads: the spec file missing for a moment
//! (an editor's rename, a deletion, a ConfigMap's `..data` swap), truncated or
//! garbage, hostile (slow to parse), refused by preflight, reached through a
//! symlinked root, and SIGTERM while a reload takes a hung volume down. Each
//! asserts what a user checks: the app keeps reading and writing and loses no
//! write, the node's mount table, `/status`, `/metrics` and the exit code.
//!
//! Run as root: `cargo test -p sidemount --test faults_spec`.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::spec::{bindfs, spec, FuseVolume};
use support::{pid_alive, poll_until, require_tool, signal, wait_for, Ns, Pod, Supervisor};

const READY: Duration = Duration::from_secs(30);
/// How long the spec stays broken: longer than the watch's settling (100 ms) and
/// the one re-read after an unreadable spec (1 s), so both see it broken.
const GAP: Duration = Duration::from_millis(1500);

/// A bindfs source directory holding `hello` = `content`.
fn source(pod: &Pod, dir: &str, content: &str) -> PathBuf {
    require_tool("bindfs", "bindfs");
    let src = pod.work(dir);
    fs::write(src.join("hello"), content).unwrap();
    src
}

/// The value of an unlabelled metric.
fn plain_metric(sup: &Supervisor, name: &str) -> f64 {
    let text = sup.metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Waits until /status reports a config error containing `text`, and checks
/// the metric says so too.
fn wait_config_error(sup: &Supervisor, text: &str) -> String {
    let mut last = serde_json::Value::Null;
    let found = poll_until(Duration::from_secs(20), || {
        last = sup.status();
        last["config_error"].as_str().is_some_and(|e| e.contains(text))
    });
    assert!(found, "/status never reported a config error with {text:?}: {last}\n{}", sup.log_tail(40));
    assert_eq!(plain_metric(sup, "sidemount_config_error"), 1.0);
    last["config_error"].as_str().unwrap().to_string()
}

fn wait_config_error_cleared(sup: &Supervisor, within: Duration) {
    let mut last = serde_json::Value::Null;
    let cleared = poll_until(within, || {
        last = sup.status();
        last["config_error"].is_null()
    });
    assert!(cleared, "the config error stayed: {last}\n{}", sup.log_tail(40));
    assert_eq!(plain_metric(sup, "sidemount_config_error"), 0.0);
}

/// `vol` is still served by the same daemon: one mount on the node, ready,
/// never repaired, and the app reads it.
fn assert_untouched(pod: &Pod, sup: &Supervisor, vol: &str, daemon: u32, content: &str) {
    let mounts = pod.node_fuse_mounts(vol);
    assert_eq!(mounts.len(), 1, "the node's emptyDir of {vol} should hold its one mount: {mounts:#?}");
    let v = sup.volume(vol).unwrap_or_else(|| panic!("{vol} is gone from /status: {}", sup.status()));
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["pid"].as_u64(), Some(u64::from(daemon)), "{vol} was restarted: {v}");
    assert_eq!(v["repairs"], 0, "{v}");
    assert!(pid_alive(daemon), "the daemon of {vol} is gone");
    assert_eq!(pod.app_read(vol, "hello").as_deref(), Ok(content), "the app cannot read {vol}");
}

/// An app process that keeps a file of the volume open and appends a numbered
/// line every 50 ms, as a database or a log writer does.
struct Writer {
    target: PathBuf,
    failed: PathBuf,
    done: PathBuf,
    lines: usize,
}

impl Writer {
    fn start(pod: &Pod, vol: &str, src: &Path, name: &str, lines: usize) -> Writer {
        let scratch = pod.work(&format!("writer-{vol}-{name}"));
        let (failed, done) = (scratch.join("failed"), scratch.join("done"));
        let file = pod.app_dir(vol).join(name);
        let script = format!(
            "exec 3>>'{file}' || exit 1\n\
             i=0\n\
             while [ $i -lt {lines} ]; do\n\
               echo \"line $i\" >&3 || echo \"write $i failed\" >> '{failed}'\n\
               i=$((i+1)); sleep 0.05\n\
             done\n\
             echo done > '{done}'\n",
            file = file.display(),
            failed = failed.display(),
            done = done.display(),
        );
        pod.spawn_in(Ns::App, &["sh", "-c", &script]);
        wait_for(Duration::from_secs(10), "the app's first write", || {
            fs::read_to_string(src.join(name)).ok().filter(|t| !t.is_empty())
        });
        Writer { target: src.join(name), failed, done, lines }
    }

    /// Waits for the last write; every one of them reached the source.
    fn assert_nothing_lost(&self) {
        wait_for(Duration::from_secs(30), "the app's last write", || self.done.exists().then_some(()));
        let failed = fs::read_to_string(&self.failed).unwrap_or_default();
        assert!(failed.is_empty(), "the app's writes failed:\n{failed}");
        let written = fs::read_to_string(&self.target).unwrap();
        let expected: String = (0..self.lines).map(|i| format!("line {i}\n")).collect();
        assert_eq!(written, expected, "the source does not hold every line the app wrote");
    }
}

/// Every request to /healthz and /status answers within `each`, for `during`.
fn assert_endpoints_answer(sup: &Supervisor, during: Duration, each: Duration) {
    let until = Instant::now() + during;
    while Instant::now() < until {
        for path in ["/healthz", "/status"] {
            let asked = Instant::now();
            let answer = support::http::get(sup.addr(), path, each);
            let took = asked.elapsed();
            assert!(
                answer.as_ref().is_ok_and(|r| r.status == 200) && took < each,
                "{path} did not answer within {each:?} during a slow reload (took {took:?}): {answer:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn terminate_cleanly(pod: &Pod, sup: &mut Supervisor) {
    let (code, took) = sup.terminate();
    assert_eq!(code, 0, "exit code after SIGTERM (took {took:?})\n{}", sup.log_tail(40));
    assert!(pod.all_node_fuse_mounts().is_empty(), "left on the node: {:#?}", pod.all_node_fuse_mounts());
    assert!(pod.fuse_mounts(Ns::Sidecar).is_empty(), "left in the sidecar: {:#?}", pod.fuse_mounts(Ns::Sidecar));
}

/// An editor's save: the file is renamed away, then written anew. For that moment
/// there is no spec file, which is not a wish to remove every volume.
#[test]
fn spec_renamed_away_then_written_again_changes_nothing() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "kept\n");
    let yaml = spec(&[bindfs("data", &src)]);
    // A short budget: a volume taken down by mistake would lose the app's writes quickly.
    let mut sup = pod.supervisor().spec(&yaml).shutdown_timeout(Duration::from_secs(2)).start();
    sup.wait_ready(READY);
    let daemon = sup.daemon_pid("data");
    let writer = Writer::start(&pod, "data", &src, "journal", 80);

    fs::rename(pod.config_path(), pod.config_path().with_extension("yaml~")).unwrap();
    let error = wait_config_error(&sup, "SIDEMOUNT_CONFIG is missing");
    assert!(error.contains("volumes: []"), "the error names how to remove every volume: {error}");
    std::thread::sleep(GAP);
    assert_untouched(&pod, &sup, "data", daemon, "kept\n");
    assert!(plain_metric(&sup, "sidemount_config_reload_errors_total") >= 1.0);

    pod.write_spec(&yaml);
    wait_config_error_cleared(&sup, Duration::from_secs(10));
    writer.assert_nothing_lost();
    assert_untouched(&pod, &sup, "data", daemon, "kept\n");
    assert_eq!(sup.readyz(), Some(200));
    terminate_cleanly(&pod, &mut sup);
}

/// The spec file deleted, then written again in place (created, then filled), and
/// truncated to nothing and to garbage: none of it takes a volume down.
#[test]
fn spec_deleted_truncated_or_garbage_changes_nothing() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "kept\n");
    let yaml = spec(&[bindfs("data", &src)]);
    let mut sup = pod.supervisor().spec(&yaml).shutdown_timeout(Duration::from_secs(2)).start();
    sup.wait_ready(READY);
    let daemon = sup.daemon_pid("data");
    let writer = Writer::start(&pod, "data", &src, "journal", 160);

    fs::remove_file(pod.config_path()).unwrap();
    wait_config_error(&sup, "SIDEMOUNT_CONFIG is missing");
    std::thread::sleep(GAP);
    assert_untouched(&pod, &sup, "data", daemon, "kept\n");
    fs::write(pod.config_path(), &yaml).unwrap();
    wait_config_error_cleared(&sup, Duration::from_secs(10));

    // Truncated in place, as `>` in a shell does before the new text comes.
    fs::write(pod.config_path(), "").unwrap();
    wait_config_error(&sup, "empty");
    std::thread::sleep(GAP);
    assert_untouched(&pod, &sup, "data", daemon, "kept\n");

    fs::write(pod.config_path(), "volumes:\n- {name: data, type: fu\u{0}\u{7f}").unwrap();
    wait_config_error(&sup, "not valid YAML");
    std::thread::sleep(GAP);
    assert_untouched(&pod, &sup, "data", daemon, "kept\n");

    fs::write(pod.config_path(), &yaml).unwrap();
    wait_config_error_cleared(&sup, Duration::from_secs(10));
    writer.assert_nothing_lost();
    assert_untouched(&pod, &sup, "data", daemon, "kept\n");
    terminate_cleanly(&pod, &mut sup);
}

/// A ConfigMap volume: the visible names link into `..data`, which links to the
/// current version's directory. Swapped by hand without an atomic rename, the
/// names dangle for a moment; swapped the kubelet's way, they never do.
#[test]
fn configmap_data_symlink_swap_keeps_the_volumes() {
    let pod = Pod::new(&["data", "more"]);
    let src = source(&pod, "src", "kept\n");
    let more = source(&pod, "src-more", "more\n");
    let cm = pod.work("configmap");
    let version = |name: &str, volumes: &[FuseVolume]| {
        fs::create_dir(cm.join(name)).unwrap();
        fs::write(cm.join(name).join("volumes.yaml"), spec(volumes)).unwrap();
    };
    version("..v1", &[bindfs("data", &src)]);
    std::os::unix::fs::symlink("..v1", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/volumes.yaml", cm.join("volumes.yaml")).unwrap();
    let mut sup = pod.supervisor().config_path(&cm).shutdown_timeout(Duration::from_secs(2)).start();
    sup.wait_ready(READY);
    let daemon = sup.daemon_pid("data");
    let writer = Writer::start(&pod, "data", &src, "journal", 160);

    // By hand: the old `..data` removed, the new one linked a moment later.
    version("..v2", &[bindfs("data", &src), bindfs("more", &more)]);
    fs::remove_file(cm.join("..data")).unwrap();
    let error = wait_config_error(&sup, "cannot read the spec file");
    assert!(error.contains("volumes.yaml"), "{error}");
    std::thread::sleep(GAP);
    assert_untouched(&pod, &sup, "data", daemon, "kept\n");
    std::os::unix::fs::symlink("..v2", cm.join("..data")).unwrap();
    pod.wait_app_reads("more", "hello", "more\n", READY);
    wait_config_error_cleared(&sup, Duration::from_secs(10));
    sup.wait_ready(READY);

    // The kubelet's way: a new link renamed over `..data`, then the old version removed.
    version("..v3", &[bindfs("data", &src)]);
    std::os::unix::fs::symlink("..v3", cm.join("..data_tmp")).unwrap();
    fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    fs::remove_dir_all(cm.join("..v2")).unwrap();
    wait_for(READY, "more to be unmounted after the swap", || pod.node_fuse_mounts("more").is_empty().then_some(()));
    assert!(sup.volume("more").is_none(), "a removed volume is still listed: {}", sup.status());

    writer.assert_nothing_lost();
    assert_untouched(&pod, &sup, "data", daemon, "kept\n");
    assert!(sup.status()["config_error"].is_null(), "{}", sup.status());
    terminate_cleanly(&pod, &mut sup);
}

/// The spec file links outside the watched directory; its target vanishes and
/// comes back with no event in that directory. The one re-read after an
/// unreadable spec picks it up.
#[test]
fn an_unreadable_spec_is_read_again_without_a_further_event() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "kept\n");
    let real = pod.work("real").join("volumes.yaml");
    let yaml = spec(&[bindfs("data", &src)]);
    fs::write(&real, &yaml).unwrap();
    std::os::unix::fs::symlink(&real, pod.config_path()).unwrap();
    let mut sup = pod.supervisor().shutdown_timeout(Duration::from_secs(2)).start();
    sup.wait_ready(READY);
    let daemon = sup.daemon_pid("data");

    fs::remove_file(&real).unwrap();
    // Something else in the watched directory changes: the spec is read, and dangles.
    fs::write(pod.config_path().with_file_name("notes.txt"), "x").unwrap();
    wait_config_error(&sup, "SIDEMOUNT_CONFIG is missing");
    fs::write(&real, &yaml).unwrap();
    // No event: only the re-read can clear it, within a second or so.
    wait_config_error_cleared(&sup, Duration::from_secs(5));
    assert_untouched(&pod, &sup, "data", daemon, "kept\n");
    terminate_cleanly(&pod, &mut sup);
}

/// A spec that takes seconds to parse (an alias bomb, deep nesting) is parsed off
/// the supervisor's event loop: the endpoints keep answering within a second,
/// and SIGTERM during such a parse still shuts down inside the budget.
#[test]
fn a_slow_hostile_spec_on_reload_blocks_no_endpoint_and_no_signal() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "kept\n");
    let yaml = spec(&[bindfs("data", &src)]);
    let mut sup = pod.supervisor().spec(&yaml).shutdown_timeout(Duration::from_secs(4)).start();
    sup.wait_ready(READY);
    let daemon = sup.daemon_pid("data");

    // Ten levels of ten aliases each: 10^10 nodes if expanded, in 600 bytes.
    let mut bomb = format!("a: &a [{}]\n", vec!["x"; 100].join(","));
    let mut previous = "a".to_string();
    for level in 1..9 {
        bomb += &format!("b{level}: &b{level} [{}]\n", vec![format!("*{previous}"); 10].join(","));
        previous = format!("b{level}");
    }
    bomb += &format!("volumes: [*{previous}]\n");
    pod.write_spec(&bomb);
    assert_endpoints_answer(&sup, Duration::from_secs(3), Duration::from_secs(1));
    assert_eq!(pod.app_read("data", "hello").as_deref(), Ok("kept\n"));
    wait_for(Duration::from_secs(120), "the bomb to be refused", || {
        sup.status()["config_error"].as_str().map(str::to_string)
    });
    assert_untouched(&pod, &sup, "data", daemon, "kept\n");

    // 10,000 levels of nesting, then SIGTERM while it is being parsed.
    pod.write_spec(&format!("volumes: {}{}\n", "[".repeat(10_000), "]".repeat(10_000)));
    assert_endpoints_answer(&sup, Duration::from_secs(2), Duration::from_secs(1));
    pod.app_write("data", "during-parse", "written\n").unwrap();
    assert_eq!(fs::read_to_string(src.join("during-parse")).unwrap(), "written\n");
    terminate_cleanly(&pod, &mut sup);
}

/// SIGTERM while a reload is taking a hung volume down: the shutdown budget
/// starts at the signal, not when that stop is done; the other volume, busy with
/// an open file, goes down inside it as well, and nothing is left mounted.
#[test]
fn sigterm_during_a_reload_stopping_a_hung_volume_exits_within_the_budget() {
    let pod = Pod::new(&["hung", "busy"]);
    let src_hung = source(&pod, "src-hung", "hung\n");
    let src_busy = source(&pod, "src-busy", "busy\n");
    let budget = Duration::from_secs(6);
    let mut sup = pod
        .supervisor()
        .spec(&spec(&[bindfs("hung", &src_hung), bindfs("busy", &src_busy)]))
        .shutdown_timeout(budget)
        .start();
    sup.wait_ready(READY);
    let hung = sup.daemon_pid("hung");
    let busy = sup.daemon_pid("busy");
    let writer = Writer::start(&pod, "busy", &src_busy, "journal", 20);
    pod.hold_open(Ns::App, &pod.app_dir("busy").join("hello"));

    signal(hung, libc::SIGSTOP);
    struct Resume(u32);
    impl Drop for Resume {
        fn drop(&mut self) {
            signal(self.0, libc::SIGCONT);
        }
    }
    let _resume = Resume(hung);
    // A check now waits on the hung daemon, as the kubelet's probe would.
    wait_for(Duration::from_secs(10), "/readyz 503", || (sup.readyz() == Some(503)).then_some(()));

    pod.write_spec(&spec(&[bindfs("busy", &src_busy)]));
    wait_for(Duration::from_secs(10), "the reload to take hung down", || {
        sup.log().contains("taking the volume down").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    writer.assert_nothing_lost();
    assert_eq!(pod.app_read("busy", "hello").as_deref(), Ok("busy\n"));

    // `terminate` fails the test past the budget (plus 500 ms for the process to go).
    let (code, took) = sup.terminate();
    assert!(took <= budget + Duration::from_millis(500), "took {took:?} with a {budget:?} budget");
    assert_eq!(code, 0, "exit code (took {took:?})\n{}", sup.log_tail(60));
    assert!(pod.all_node_fuse_mounts().is_empty(), "left on the node: {:#?}", pod.all_node_fuse_mounts());
    assert!(pod.fuse_mounts(Ns::Sidecar).is_empty(), "left in the sidecar: {:#?}", pod.fuse_mounts(Ns::Sidecar));
    for daemon in [hung, busy] {
        assert!(poll_until(Duration::from_secs(2), || !pid_alive(daemon)), "daemon {daemon} outlived the supervisor");
    }
    let written = fs::read_to_string(src_busy.join("journal")).unwrap();
    assert_eq!(written.lines().count(), 20, "{written}");
}

/// A volume added on reload that preflight refuses (its program is not in the
/// image) is requested and not mounted: not ready, shown as failed with the
/// reason, and `probe` says no. Removing it makes the pod ready again.
#[test]
fn a_volume_refused_on_reload_is_failed_and_not_ready() {
    let pod = Pod::new(&["data", "extra"]);
    let src = source(&pod, "src", "kept\n");
    let mut sup = pod.supervisor().spec(&spec(&[bindfs("data", &src)])).start();
    sup.wait_ready(READY);
    let daemon = sup.daemon_pid("data");

    let missing = FuseVolume::new("extra", &["sidemount-test-no-such-daemon", "-f", "{mountpoint}"]);
    pod.write_spec(&spec(&[bindfs("data", &src), missing]));
    let error = wait_config_error(&sup, "sidemount-test-no-such-daemon");
    assert!(error.contains("extra"), "{error}");
    let v = sup.volume("extra").unwrap_or_else(|| panic!("the refused volume is not in /status: {}", sup.status()));
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["last_error"].as_str().is_some_and(|e| e.contains("not installed")), "{v}");
    assert_eq!(sup.status()["ready"], false);
    assert_eq!(sup.readyz(), Some(503));
    let body = sup.get("/readyz").unwrap().body;
    assert!(body.contains("extra: failed"), "{body}");
    assert_eq!(plain_metric(&sup, "sidemount_ready"), 0.0);
    assert_eq!(sup.metric("sidemount_volume_failed", "extra"), Some(1.0));
    let (code, out) = sup.exec(&["probe"]);
    assert_ne!(code, 0, "probe said ready with a refused volume: {out}");
    assert!(out.contains("extra"), "{out}");
    assert_untouched(&pod, &sup, "data", daemon, "kept\n");

    pod.write_spec(&spec(&[bindfs("data", &src)]));
    wait_config_error_cleared(&sup, Duration::from_secs(10));
    sup.wait_ready(READY);
    assert!(sup.volume("extra").is_none(), "{}", sup.status());
    assert_eq!(sup.exec(&["probe"]).0, 0);
    terminate_cleanly(&pod, &mut sup);
}

/// SIDEMOUNT_ROOT reached through a symlink, with no volume at start: a volume
/// added later mounts (the mount table names the real path).
#[test]
fn a_volume_added_under_a_symlinked_root_mounts() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod, "src", "through the link\n");
    let link = pod.work("links").join("root");
    std::os::unix::fs::symlink(pod.root(), &link).unwrap();
    let mut sup = pod.supervisor().env("SIDEMOUNT_ROOT", &link.display().to_string()).start();
    sup.wait_ready(READY);
    assert_eq!(sup.status()["volumes"].as_array().map(Vec::len), Some(0));

    pod.write_spec(&spec(&[bindfs("data", &src)]));
    pod.wait_app_reads("data", "hello", "through the link\n", READY);
    sup.wait_ready(READY);
    assert!(sup.status()["config_error"].is_null(), "{}", sup.status());
    assert_eq!(pod.node_fuse_mounts("data").len(), 1);
    terminate_cleanly(&pod, &mut sup);
}
