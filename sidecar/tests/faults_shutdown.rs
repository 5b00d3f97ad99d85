//! SIGTERM at every phase of a volume's life, and, separately, kill -9 of the sidecar
//! (the supervisor and every process of its container, as a crash does: its PID
//! namespace dies with its PID 1) then a restart then SIGTERM. The phases: a block
//! helper (blkid, mkfs, mount) running; `mount` done but not returned; a FUSE daemon
//! starting but not mounted; mounted and busy; a repair backoff; more than
//! MAX_LAYERS (64) layers at the mountpoint; a mount that keeps coming back.
//!
//! Each asserts what the kubelet and the user find afterwards: nothing of sidemount's
//! at the node's emptyDir, exit 0 exactly when nothing is left, the app's view and the
//! data (in the bindfs source, on the loop device) intact.
//!
//! Slow phases are held open by gates: test stand-ins in front of the real helpers,
//! first on the supervisor's PATH, that record that they are held and wait until the
//! test opens their gate.
//!
//! Run as root: `cargo test -p sidemount --test faults_shutdown`.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::disk::Loop;
use support::spec::{bindfs, spec, FuseVolume};
use support::{mnt_ns, pid_alive, pids_in_namespaces, poll_until, require_tool, signal, wait_for};
use support::{Ns, Pod, Supervisor};

const READY: Duration = Duration::from_secs(60);
/// SIDEMOUNT_SHUTDOWN_TIMEOUT of these tests: a busy daemon would get half of it.
const BUDGET: Duration = Duration::from_secs(12);
/// A stop that is heard: well inside the half of the budget a busy mount gets.
const PROMPT: Duration = Duration::from_secs(4);
/// The supervisor's bound on layers at one mountpoint (`volume::MAX_LAYERS`).
const MAX_LAYERS: usize = 64;

// ---------------------------------------------------------------------------------
// Gates.

/// Where a gated helper is held: before it runs the real tool, or after the tool did
/// its work and before the helper returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Before,
    After,
}

/// Stand-in fronts for helpers, in a directory put first on the supervisor's PATH.
struct Gates {
    dir: PathBuf,
}

impl Gates {
    fn new(pod: &Pod, tools: &[(&str, Hold)]) -> Gates {
        let dir = pod.work("gates");
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        for (tool, hold) in tools {
            let real = which::which(tool).unwrap_or_else(|e| panic!("{tool} is not on PATH: {e}"));
            let (g, real) = (dir.display(), real.display());
            let wait = format!("echo $$ >> '{g}/{tool}.held'\nwhile [ ! -e '{g}/{tool}.open' ]; do sleep 0.05; done\n");
            let body = match hold {
                Hold::Before => format!("{wait}exec '{real}' \"$@\"\n"),
                Hold::After => format!("'{real}' \"$@\" || exit $?\n{wait}exit 0\n"),
            };
            let script = bin.join(tool);
            fs::write(&script, format!("#!/bin/sh\n# Test stand-in in front of {tool}: held at its gate.\n{body}"))
                .unwrap();
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Gates { dir }
    }

    /// PATH for the supervisor: the fronts first.
    fn path(&self) -> String {
        format!("{}:{}", self.dir.join("bin").display(), std::env::var("PATH").unwrap_or_default())
    }

    /// The pid of the helper held at `tool`'s gate, once one is.
    fn held(&self, tool: &str, sup: &Supervisor) -> u32 {
        let marker = self.dir.join(format!("{tool}.held"));
        wait_for(READY, &format!("{tool} held at its gate\n{}", sup.log_tail(30)), || {
            fs::read_to_string(&marker).ok()?.lines().next()?.trim().parse().ok()
        })
    }

    fn open(&self, tool: &str) {
        fs::write(self.dir.join(format!("{tool}.open")), "").unwrap();
    }
}

// ---------------------------------------------------------------------------------
// What the kubelet and the user find.

/// Every mount at the node's emptyDir of `vol` (the emptyDir itself is a plain
/// directory on the node: whatever is mounted there is sidemount's).
fn node_mounts(pod: &Pod, vol: &str) -> Vec<support::Mount> {
    let dir = pod.empty_dir(vol);
    pod.mounts(Ns::Node).into_iter().filter(|m| m.mount_point == dir).collect()
}

fn assert_node_clean(pod: &Pod, vol: &str, sup: &Supervisor) {
    let left = node_mounts(pod, vol);
    assert!(left.is_empty(), "left at the node's emptyDir of {vol}: {left:#?}\n{}", sup.log_tail(40));
}

/// Processes in the sidecar's namespace, its holder aside.
fn sidecar_processes(pod: &Pod) -> Vec<u32> {
    let holder = pod.holder_pid(Ns::Sidecar);
    let ns = mnt_ns(holder).expect("sidecar namespace");
    pids_in_namespaces(&[ns]).into_iter().filter(|p| *p != holder).collect()
}

fn assert_no_sidecar_process(pod: &Pod) {
    let gone = poll_until(Duration::from_secs(5), || sidecar_processes(pod).is_empty());
    let left: Vec<String> = sidecar_processes(pod).iter().map(|p| format!("{p} {}", support::cmdline(*p))).collect();
    assert!(gone, "processes left in the sidecar: {left:?}");
}

/// SIGTERM, then: exit 0, nothing at the node's emptyDir, no process left in the
/// sidecar. Returns how long the shutdown took.
fn terminate_clean(sup: &mut Supervisor, pod: &Pod, vol: &str) -> Duration {
    let (code, took) = sup.terminate();
    assert_eq!(code, 0, "exit code after SIGTERM (took {took:?})\n{}", sup.log_tail(60));
    assert_node_clean(pod, vol, sup);
    assert_no_sidecar_process(pod);
    took
}

/// kill -9 of the supervisor and of every process of its container, as a crashed
/// sidecar's restart does. Mounts stay where they are.
fn crash_container(pod: &Pod, sup: &mut Supervisor) {
    sup.kill9();
    let ok = poll_until(Duration::from_secs(10), || {
        let left = sidecar_processes(pod);
        for p in &left {
            signal(*p, libc::SIGKILL);
        }
        left.is_empty()
    });
    assert!(ok, "processes of the sidecar survived SIGKILL: {:?}", sidecar_processes(pod));
}

// ---------------------------------------------------------------------------------
// Block volumes.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockPhase {
    /// blkid running.
    Probe,
    /// mkfs running (the device is empty, `format: true`).
    Format,
    /// mount running, before mount(2).
    Mount,
    /// mount(2) done, the helper not yet returned.
    Mounted,
}

impl BlockPhase {
    fn gate(self) -> (&'static str, Hold) {
        match self {
            BlockPhase::Probe => ("blkid", Hold::Before),
            BlockPhase::Format => ("mkfs.ext4", Hold::Before),
            BlockPhase::Mount => ("mount", Hold::Before),
            BlockPhase::Mounted => ("mount", Hold::After),
        }
    }
}

fn block_spec(device: &Path) -> String {
    format!("volumes:\n- name: disk\n  type: block\n  device: {}\n  fsType: ext4\n  format: true\n", device.display())
}

/// A scratch directory in the sidecar for mounting the device by hand.
fn scratch(pod: &Pod) -> String {
    pod.work("scratch").display().to_string()
}

/// An ext4 device holding `precious` = "kept\n".
fn disk_with_data(pod: &Pod) -> Loop {
    require_tool("mkfs.ext4", "e2fsprogs");
    let disk = Loop::new(64);
    let out = Command::new("mkfs.ext4").args(["-q", &disk.device]).output().unwrap();
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    let put = format!("mount {} {m} && echo kept > {m}/precious && umount {m}", disk.device, m = scratch(pod));
    pod.sh(Ns::Sidecar, &put).unwrap();
    disk
}

/// `precious` read from the device itself, through a read-only mount by hand.
fn precious_on(pod: &Pod, disk: &Loop) -> String {
    let get = format!("mount -o ro {} {m} && cat {m}/precious; umount {m}", disk.device, m = scratch(pod));
    pod.sh(Ns::Sidecar, &get).unwrap_or_else(|e| e)
}

/// SIGTERM while the phase's helper is held: the helper is killed at once, exit 0,
/// nothing mounted, and opening the gate afterwards mounts nothing either.
fn sigterm_during(phase: BlockPhase) {
    let pod = Pod::new(&["disk"]);
    let disk = if phase == BlockPhase::Format { Loop::new(64) } else { disk_with_data(&pod) };
    let (tool, hold) = phase.gate();
    let gates = Gates::new(&pod, &[(tool, hold)]);
    let mut sup =
        pod.supervisor().spec(&block_spec(disk.path())).env("PATH", &gates.path()).shutdown_timeout(BUDGET).start();
    let helper = gates.held(tool, &sup);
    if phase == BlockPhase::Mounted {
        assert_eq!(node_mounts(&pod, "disk").len(), 1, "mount(2) done while the helper is held");
    }

    let took = terminate_clean(&mut sup, &pod, "disk");
    assert!(took < PROMPT, "SIGTERM during {phase:?} took {took:?}\n{}", sup.log_tail(40));
    assert!(!pid_alive(helper), "the held {tool} ({helper}) outlived the supervisor");
    // Nothing the supervisor started may mount after it is gone.
    gates.open(tool);
    std::thread::sleep(Duration::from_secs(1));
    assert_node_clean(&pod, "disk", &sup);
    assert_no_sidecar_process(&pod);
    if phase == BlockPhase::Format {
        assert_eq!(disk.fs_type(), "", "formatted after SIGTERM");
    } else {
        assert_eq!(precious_on(&pod, &disk).trim(), "kept");
    }
}

/// The sidecar crashes while the phase's helper is held; a new one mounts the device,
/// the app reads the data, SIGTERM leaves nothing.
fn crash_during(phase: BlockPhase) {
    let pod = Pod::new(&["disk"]);
    let disk = if phase == BlockPhase::Format { Loop::new(64) } else { disk_with_data(&pod) };
    let (tool, hold) = phase.gate();
    let gates = Gates::new(&pod, &[(tool, hold)]);
    let yaml = block_spec(disk.path());
    let mut first = pod.supervisor().spec(&yaml).env("PATH", &gates.path()).shutdown_timeout(BUDGET).start();
    gates.held(tool, &first);
    crash_container(&pod, &mut first);
    gates.open(tool);

    let mut second = pod.supervisor().spec(&yaml).env("PATH", &gates.path()).shutdown_timeout(BUDGET).start();
    second.wait_ready(READY);
    if phase == BlockPhase::Format {
        pod.app_write("disk", "precious", "kept\n").unwrap();
    }
    assert_eq!(pod.app_read("disk", "precious").unwrap(), "kept\n");
    assert_eq!(node_mounts(&pod, "disk").len(), 1, "one mount of the device: {:#?}", node_mounts(&pod, "disk"));
    terminate_clean(&mut second, &pod, "disk");
    assert_eq!(precious_on(&pod, &disk).trim(), "kept");
}

#[test]
fn sigterm_while_blkid_runs() {
    sigterm_during(BlockPhase::Probe);
}

#[test]
fn sigterm_while_mkfs_runs() {
    sigterm_during(BlockPhase::Format);
}

#[test]
fn sigterm_while_mount_runs() {
    sigterm_during(BlockPhase::Mount);
}

#[test]
fn sigterm_after_mount_mounted_before_it_returned() {
    sigterm_during(BlockPhase::Mounted);
}

#[test]
fn crash_while_blkid_runs_then_restart_then_sigterm() {
    crash_during(BlockPhase::Probe);
}

#[test]
fn crash_while_mkfs_runs_then_restart_then_sigterm() {
    crash_during(BlockPhase::Format);
}

#[test]
fn crash_while_mount_runs_then_restart_then_sigterm() {
    crash_during(BlockPhase::Mount);
}

#[test]
fn crash_after_mount_mounted_then_restart_then_sigterm() {
    crash_during(BlockPhase::Mounted);
}

// ---------------------------------------------------------------------------------
// FUSE volumes.

/// A bindfs source directory holding `hello`.
fn source(pod: &Pod) -> PathBuf {
    require_tool("bindfs", "bindfs");
    let src = pod.work("src");
    fs::write(src.join("hello"), "hello\n").unwrap();
    src
}

/// A script in the pod's work directory.
fn script(pod: &Pod, name: &str, body: &str) -> String {
    let path = pod.work("bin").join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// bindfs of `src`, started only once the gate file `<gate>.open` exists: a daemon
/// that is starting and has not mounted.
fn gated_bindfs(pod: &Pod, src: &Path, gate: &Path) -> FuseVolume {
    let held = script(
        pod,
        "held",
        "# Test stand-in: holds the daemon back until its gate opens.\n\
         echo $$ > \"$1.held\"\nwhile [ ! -e \"$1.open\" ]; do sleep 0.05; done\nshift\nexec \"$@\"\n",
    );
    let (gate, src) = (gate.display().to_string(), src.display().to_string());
    FuseVolume::new("data", &[&held, &gate, "bindfs", "-f", &src, "{mountpoint}"])
}

#[test]
fn sigterm_while_the_daemon_starts() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod);
    let gate = pod.work("gate").join("daemon");
    let mut sup = pod.supervisor().spec(&spec(&[gated_bindfs(&pod, &src, &gate)])).shutdown_timeout(BUDGET).start();
    let daemon = wait_for(READY, "the daemon held", || {
        fs::read_to_string(gate.with_extension("held")).ok()?.trim().parse::<u32>().ok()
    });

    let took = terminate_clean(&mut sup, &pod, "data");
    // Not mounted yet, nothing to flush: the daemon is told to go at once.
    assert!(took < PROMPT, "SIGTERM while the daemon starts took {took:?} of {BUDGET:?}\n{}", sup.log_tail(40));
    assert!(!pid_alive(daemon), "the starting daemon outlived the supervisor");
    fs::write(gate.with_extension("open"), "").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(pod.fuse_mounts(Ns::Node).is_empty(), "mounted after SIGTERM: {:#?}", pod.fuse_mounts(Ns::Node));
    assert!(pod.fuse_mounts(Ns::Sidecar).is_empty(), "left in the sidecar: {:#?}", pod.fuse_mounts(Ns::Sidecar));
}

#[test]
fn crash_while_the_daemon_starts_then_restart_then_sigterm() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod);
    let gate = pod.work("gate").join("daemon");
    let yaml = spec(&[gated_bindfs(&pod, &src, &gate)]);
    let mut first = pod.supervisor().spec(&yaml).shutdown_timeout(BUDGET).start();
    wait_for(READY, "the daemon held", || fs::metadata(gate.with_extension("held")).ok());
    crash_container(&pod, &mut first);
    fs::write(gate.with_extension("open"), "").unwrap();

    let mut second = pod.supervisor().spec(&yaml).shutdown_timeout(BUDGET).start();
    second.wait_ready(READY);
    pod.wait_app_reads("data", "hello", "hello\n", READY);
    terminate_clean(&mut second, &pod, "data");
}

#[test]
fn sigterm_while_mounted_and_busy() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod);
    let mut sup = pod.supervisor().spec(&spec(&[bindfs("data", &src)])).shutdown_timeout(BUDGET).start();
    sup.wait_ready(READY);
    pod.app_write("data", "written", "acknowledged\n").unwrap();
    let app = pod.hold_open(Ns::App, &pod.app_dir("data").join("hello"));

    terminate_clean(&mut sup, &pod, "data");
    assert!(pid_alive(app), "the app's process was killed");
    assert_eq!(fs::read_to_string(src.join("written")).unwrap(), "acknowledged\n");
}

/// The kubelet binds an app's `subPath` of the volume on the node and keeps that
/// bind until the sidecar has exited, so the daemon's connection outlives every
/// mount of the sidecar's and the daemon never sees it end. It is told to stop as
/// soon as that is clear, not at half the budget.
#[test]
fn sigterm_while_the_node_holds_a_bind_of_the_volume() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod);
    let mut sup = pod.supervisor().spec(&spec(&[bindfs("data", &src)])).shutdown_timeout(BUDGET).start();
    sup.wait_ready(READY);
    pod.app_write("data", "written", "acknowledged\n").unwrap();
    let held = pod.work("volume-subpaths");
    fs::create_dir_all(&held).unwrap();
    let (volume, held) = (pod.empty_dir("data").display().to_string(), held.display().to_string());
    pod.run_in(Ns::Node, &["mount", "--bind", &volume, &held]).unwrap();

    let took = terminate_clean(&mut sup, &pod, "data");
    let _ = pod.run_in(Ns::Node, &["umount", "-l", &held]);
    assert!(took < PROMPT, "the held daemon was stopped only after {took:?}\n{}", sup.log_tail(40));
    assert!(sup.log().contains("connection outlives every mount of ours"), "{}", sup.log_tail(40));
    assert_eq!(fs::read_to_string(src.join("written")).unwrap(), "acknowledged\n");
}

#[test]
fn crash_while_mounted_and_busy_then_restart_then_sigterm() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod);
    let yaml = spec(&[bindfs("data", &src)]);
    let mut first = pod.supervisor().spec(&yaml).shutdown_timeout(BUDGET).start();
    first.wait_ready(READY);
    pod.app_write("data", "written", "acknowledged\n").unwrap();
    let app = pod.hold_open(Ns::App, &pod.app_dir("data").join("hello"));
    crash_container(&pod, &mut first);
    assert_eq!(node_mounts(&pod, "data").len(), 1, "the dead mount stays on the node");

    let mut second = pod.supervisor().spec(&yaml).shutdown_timeout(BUDGET).start();
    second.wait_ready(READY);
    pod.wait_app_reads("data", "written", "acknowledged\n", READY);
    // The app's file is open on the dead layer below: it is busy until the deadline.
    terminate_clean(&mut second, &pod, "data");
    assert!(pid_alive(app), "the app's process was killed");
    assert_eq!(fs::read_to_string(src.join("written")).unwrap(), "acknowledged\n");
}

/// bindfs that cannot start while `broken` exists.
fn breakable_bindfs(pod: &Pod, src: &Path, broken: &Path) -> FuseVolume {
    let wrapper = script(
        pod,
        "breakable",
        "# Test stand-in: a daemon that fails at once while its flag file exists.\n\
         if [ -e \"$1\" ]; then echo 'broken on purpose' >&2; exit 1; fi\nshift\nexec \"$@\"\n",
    );
    let (broken, src) = (broken.display().to_string(), src.display().to_string());
    FuseVolume::new("data", &[&wrapper, &broken, "bindfs", "-f", &src, "{mountpoint}"])
}

/// Breaks the daemon and waits until the volume sits in its repair backoff.
fn into_backoff(pod: &Pod, sup: &Supervisor, broken: &Path) {
    fs::write(broken, "").unwrap();
    let daemon = sup.daemon_pid("data");
    signal(daemon, libc::SIGKILL);
    wait_for(READY, "the volume waiting in its repair backoff", || {
        let v = sup.volume("data")?;
        (v["state"] == "failed" && v["restarts"].as_u64()? >= 3).then_some(())
    });
    assert_eq!(node_mounts(pod, "data").len(), 1, "the dead layer is there during the backoff");
}

#[test]
fn sigterm_during_a_repair_backoff() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod);
    let broken = pod.work("flags").join("broken");
    let mut sup =
        pod.supervisor().spec(&spec(&[breakable_bindfs(&pod, &src, &broken)])).shutdown_timeout(BUDGET).start();
    sup.wait_ready(READY);
    pod.app_write("data", "written", "acknowledged\n").unwrap();
    into_backoff(&pod, &sup, &broken);

    let took = terminate_clean(&mut sup, &pod, "data");
    assert!(took < PROMPT, "SIGTERM during the backoff took {took:?}");
    assert_eq!(fs::read_to_string(src.join("written")).unwrap(), "acknowledged\n");
}

#[test]
fn crash_during_a_repair_backoff_then_restart_then_sigterm() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod);
    let broken = pod.work("flags").join("broken");
    let yaml = spec(&[breakable_bindfs(&pod, &src, &broken)]);
    let mut first = pod.supervisor().spec(&yaml).shutdown_timeout(BUDGET).start();
    first.wait_ready(READY);
    pod.app_write("data", "written", "acknowledged\n").unwrap();
    into_backoff(&pod, &first, &broken);
    crash_container(&pod, &mut first);
    fs::remove_file(&broken).unwrap();

    let mut second = pod.supervisor().spec(&yaml).shutdown_timeout(BUDGET).start();
    second.wait_ready(READY);
    pod.wait_app_reads("data", "written", "acknowledged\n", READY);
    terminate_clean(&mut second, &pod, "data");
}

// ---------------------------------------------------------------------------------
// Layers.

/// `n` dead FUSE layers at the mountpoint, bound by hand in the sidecar: one bindfs
/// mounted in a private scratch directory, bound `n` times, then killed.
fn dead_layers(pod: &Pod, n: usize) {
    let src = pod.work("hand-src");
    let scratch = pod.work("hand-mount");
    let mp = pod.mountpoint("data");
    let script = format!(
        "bindfs -f {src} {x} & pid=$!\n\
         for _ in $(seq 100); do mountpoint -q {x} && break; sleep 0.05; done\n\
         for _ in $(seq {n}); do mount --bind {x} {mp}; done\n\
         kill -9 $pid; wait $pid || true\n",
        src = src.display(),
        x = scratch.display(),
        mp = mp.display(),
    );
    pod.sh(Ns::Sidecar, &script).unwrap();
    assert_eq!(node_mounts(pod, "data").len(), n, "{n} dead layers on the node");
}

#[test]
fn layers_past_the_bound_are_trimmed_and_every_one_goes_at_sigterm() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod);
    dead_layers(&pod, MAX_LAYERS + 6);
    let err = pod.app_read("data", "hello").expect_err("read through the dead layers");
    assert!(err.contains("not connected"), "{err}");

    let mut sup = pod.supervisor().spec(&spec(&[bindfs("data", &src)])).shutdown_timeout(BUDGET).start();
    sup.wait_ready(READY);
    pod.wait_app_reads("data", "hello", "hello\n", READY);
    let layers = node_mounts(&pod, "data").len();
    assert!(layers <= MAX_LAYERS, "{layers} layers at the node's emptyDir, more than {MAX_LAYERS}");
    assert!(sup.log().contains("too many layers at the mountpoint"), "{}", sup.log_tail(40));
    terminate_clean(&mut sup, &pod, "data");
}

#[test]
fn crash_with_layers_past_the_bound_then_restart_then_sigterm() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod);
    dead_layers(&pod, MAX_LAYERS + 6);
    let yaml = spec(&[bindfs("data", &src)]);
    let mut first = pod.supervisor().spec(&yaml).shutdown_timeout(BUDGET).start();
    first.wait_ready(READY);
    crash_container(&pod, &mut first);

    let mut second = pod.supervisor().spec(&yaml).shutdown_timeout(BUDGET).start();
    second.wait_ready(READY);
    pod.wait_app_reads("data", "hello", "hello\n", READY);
    let layers = node_mounts(&pod, "data").len();
    assert!(layers <= MAX_LAYERS, "{layers} layers at the node's emptyDir, more than {MAX_LAYERS}");
    terminate_clean(&mut second, &pod, "data");
}

/// More than MAX_LAYERS layers on top of the live mount when SIGTERM comes (bound by
/// hand while the supervisor is stopped): every one of them goes.
#[test]
fn sigterm_with_more_than_max_layers_removes_them_all() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod);
    let mut sup = pod.supervisor().spec(&spec(&[bindfs("data", &src)])).shutdown_timeout(BUDGET).start();
    sup.wait_ready(READY);
    sup.signal(libc::SIGSTOP);
    // Binds of the daemon's private mount at the stage, as the supervisor makes them (a
    // bind of the shared mountpoint onto itself would double at each step).
    let (stage, mp) =
        (pod.stage_dir().join("data").display().to_string(), pod.mountpoint("data").display().to_string());
    pod.sh(Ns::Sidecar, &format!("for _ in $(seq {}); do mount --bind {stage} {mp}; done", MAX_LAYERS + 6)).unwrap();
    assert_eq!(node_mounts(&pod, "data").len(), MAX_LAYERS + 7);
    sup.sigterm();
    sup.signal(libc::SIGCONT);
    let code = sup.expect_exit(BUDGET + Duration::from_secs(1));
    assert_eq!(code, 0, "{}", sup.log_tail(40));
    assert_node_clean(&pod, "data", &sup);
    assert_no_sidecar_process(&pod);
}

/// A FUSE mount bound at the mountpoint over and over by someone else while the
/// supervisor shuts down: it cannot win, and it must not say it did.
#[test]
fn a_mount_that_keeps_coming_back_is_not_a_clean_exit() {
    let pod = Pod::new(&["data"]);
    let src = source(&pod);
    let mut sup =
        pod.supervisor().spec(&spec(&[bindfs("data", &src)])).shutdown_timeout(Duration::from_secs(4)).start();
    sup.wait_ready(READY);
    let scratch = pod.work("hand-mount");
    pod.spawn_in(Ns::Sidecar, &["bindfs", "-f", &src.display().to_string(), &scratch.display().to_string()]);
    let x = scratch.display().to_string();
    wait_for(READY, "the hand-made bindfs mounted", || {
        pod.fuse_mounts(Ns::Sidecar).iter().any(|m| m.mount_point == scratch).then_some(())
    });
    let mp = pod.mountpoint("data").display().to_string();
    let rebinder = pod.spawn_in(Ns::Sidecar, &["sh", "-c", &format!("while :; do mount --bind {x} {mp}; done")]);
    wait_for(READY, "the re-binder at work", || (node_mounts(&pod, "data").len() > 3).then_some(()));

    let (code, _) = sup.terminate();
    signal(rebinder, libc::SIGKILL);
    assert_eq!(code, 1, "exit code with mounts of its own left\n{}", sup.log_tail(40));
    let out = sup.output();
    assert!(out.contains("shutdown left mounts of its own") && out.contains("data: "), "{out}");
}
