//! `objectivefs` and `zfs` volumes, through STAND-INS for their tools: ObjectiveFS is a
//! licensed download and ZFS needs the host's kernel module, so neither can run here.
//! The stand-ins (tests/fixtures/standins, put first on the supervisor's PATH) check
//! that they are called as the real tools are, record the calls, and mount real
//! filesystems: bindfs for objectivefs (so crash repair is real), a tmpfs named after
//! the dataset for zfs.
//!
//! Run as root: `cargo test -p sidemount --test standins`.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{pid_alive, require_tool, signal, wait_for, Ns, Pod};

const READY: Duration = Duration::from_secs(30);

const ACCESS_KEY: &str = "AKIASTANDIN7Q2W";
const SECRET_KEY: &str = "standin-secret-key-k9x-do-not-log";
const LICENSE: &str = "standin-license-5t7u-do-not-log";
const PASSPHRASE: &str = "standin-passphrase-m3n8-do-not-log";

fn standins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/standins")
}

/// The supervisor's PATH: the stand-ins first.
fn path_with_standins() -> String {
    format!("{}:{}", standins().display(), std::env::var("PATH").unwrap_or_default())
}

/// A Secret laid out as the `altalang/ofs` FlexVolume driver's users have it.
fn flexvolume_secret(pod: &Pod, keys: &[(&str, &str)]) -> PathBuf {
    let dir = pod.work("secrets/ofs");
    for (k, v) in keys {
        fs::write(dir.join(k), format!("{v}\n")).unwrap();
    }
    dir
}

fn ofs_spec(pod: &Pod, secret_dir: &Path) -> (String, PathBuf, PathBuf) {
    let backing = pod.work("ofs-backing");
    let log = pod.work("ofs-standin").join("calls");
    let yaml = format!(
        "volumes:\n- name: ofs\n  type: objectivefs\n  filesystem: s3://my-bucket\n  options: [mt]\n  secretDir: {}\n  env: {{STANDIN_OFS_BACKING: {}, STANDIN_OFS_LOG: {}}}\n",
        secret_dir.display(),
        backing.display(),
        log.display()
    );
    (yaml, backing, log)
}

/// A memory cgroup with a limit, for the supervisor to run in (v1 or v2). Removed on drop.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let name = format!("sidemount-test-{}-{}", std::process::id(), limit);
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (parent, file) = if v2 {
            let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
            let parent = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
            let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory");
            (parent, "memory.max")
        } else {
            let path = own
                .lines()
                .find_map(|l| {
                    let mut f = l.splitn(3, ':');
                    let (_, c, p) = (f.next()?, f.next()?, f.next()?);
                    c.split(',').any(|c| c == "memory").then(|| p.to_string())
                })
                .expect("a memory cgroup (v1) in /proc/self/cgroup");
            (Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')), "memory.limit_in_bytes")
        };
        let dir = parent.join(name);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        fs::write(dir.join(file), limit.to_string()).unwrap_or_else(|e| panic!("limit {}: {e}", dir.display()));
        MemoryCgroup(dir)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes are gone once the pod is torn down; rmdir may lag a moment.
        for _ in 0..50 {
            if fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("cgroup {} could not be removed", self.0.display());
    }
}

fn assert_no_secret_anywhere(sup: &support::Supervisor) {
    let status = sup.status_body();
    let log = sup.output();
    for secret in [ACCESS_KEY, SECRET_KEY, LICENSE, PASSPHRASE] {
        assert!(!log.contains(secret), "a secret is in the log:\n{log}");
        assert!(!status.contains(secret), "a secret is in /status:\n{status}");
        for pid in support::all_pids() {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&cmdline).contains(secret), "a secret is in the argv of pid {pid}");
        }
    }
}

#[test]
fn objectivefs_mounts_from_a_flexvolume_secret_with_a_cache_sized_to_the_container() {
    require_tool("bindfs", "bindfs");
    let cgroup = MemoryCgroup::new(512 << 20);
    let pod = Pod::new(&["ofs"]);
    let secret = flexvolume_secret(
        &pod,
        &[("accesskey", ACCESS_KEY), ("secretkey", SECRET_KEY), ("license", LICENSE), ("passphrase", PASSPHRASE)],
    );
    let (yaml, backing, calls) = ofs_spec(&pod, &secret);
    let mut sup = pod.supervisor().spec(&yaml).env("PATH", &path_with_standins()).cgroup(&cgroup.0).start();
    sup.wait_ready(READY);

    // Called in the foreground form, with the options, and nothing secret on argv.
    // Daemons mount in the supervisor's private staging directory (SIDEMOUNT_STAGE),
    // from where the mount is bound onto the mountpoint.
    let record = fs::read_to_string(&calls).unwrap();
    let stage = pod.stage_dir().join("ofs");
    assert!(record.contains(&format!("argv=mount -o mt s3://my-bucket {}\n", stage.display())), "{record}");
    // 30% of the 512 MiB limit, for the one objectivefs volume: not the node's memory.
    assert!(record.contains("CACHESIZE=153M"), "{record}");
    assert!(sup.log().contains("sized from the container's memory limit"), "{}", sup.log());

    pod.app_write("ofs", "from-app", "written through objectivefs").unwrap();
    assert_eq!(fs::read_to_string(backing.join("from-app")).unwrap(), "written through objectivefs");

    // A crash is repaired like any FUSE daemon's.
    let pid = sup.daemon_pid("ofs");
    signal(pid, libc::SIGKILL);
    wait_for(READY, "a new daemon", || {
        let v = sup.volume("ofs")?;
        (v["state"] == "ready" && v["pid"].as_u64() != Some(pid as u64)).then_some(())
    });
    pod.wait_app_reads("ofs", "from-app", "written through objectivefs", READY);
    assert_eq!(sup.metric("sidemount_volume_repairs_total", "ofs"), Some(1.0));
    assert_no_secret_anywhere(&sup);

    let daemon = sup.daemon_pid("ofs");
    let (code, _) = sup.terminate();
    assert_eq!(code, 0, "{}", sup.log());
    assert!(pod.node_fuse_mounts("ofs").is_empty(), "a mount is left on the node");
    assert!(!pid_alive(daemon), "the daemon outlived the supervisor");
    // Declared first, `cgroup` is dropped last: after the pod and its processes.
}

#[test]
fn objectivefs_for_a_non_root_app_is_mounted_allow_other_with_its_ids() {
    require_tool("bindfs", "bindfs");
    let pod = Pod::new(&["ofs"]);
    let secret = flexvolume_secret(
        &pod,
        &[("accesskey", ACCESS_KEY), ("secretkey", SECRET_KEY), ("license", LICENSE), ("passphrase", PASSPHRASE)],
    );
    let (yaml, _, calls) = ofs_spec(&pod, &secret);
    // What injection writes for an app that runs as 1000 with fsGroup 2000.
    let yaml = format!("{yaml}  uid: 1000\n  gid: 2000\n");
    let mut sup = pod.supervisor().spec(&yaml).env("PATH", &path_with_standins()).start();
    sup.wait_ready(READY);
    let record = fs::read_to_string(&calls).unwrap();
    let stage = pod.stage_dir().join("ofs");
    let expected = format!("argv=mount -o mt,allow_other,uid=1000,gid=2000 s3://my-bucket {}\n", stage.display());
    assert!(record.contains(&expected), "{record}");
    let (code, _) = sup.terminate();
    assert_eq!(code, 0, "{}", sup.log());
    assert!(pod.node_fuse_mounts("ofs").is_empty(), "a mount is left on the node");
}

#[test]
fn objectivefs_without_a_passphrase_is_refused_before_any_mount() {
    let pod = Pod::new(&["ofs"]);
    let secret = flexvolume_secret(
        &pod,
        &[("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY), ("license", LICENSE)],
    );
    let (yaml, _, calls) = ofs_spec(&pod, &secret);
    let mut sup = pod.supervisor().spec(&yaml).env("PATH", &path_with_standins()).start();
    let code = sup.expect_exit(READY);
    assert_eq!(code, 78, "{}", sup.output());
    let out = sup.output();
    assert!(out.contains("OBJECTIVEFS_PASSPHRASE missing"), "{out}");
    assert!(out.contains("passphrase"), "{out}");
    assert!(!calls.exists(), "mount.objectivefs ran");
    assert!(pod.node_fuse_mounts("ofs").is_empty());
    assert!(!out.contains(LICENSE) && !out.contains(SECRET_KEY));
}

/// Hides the host's /dev in the sidecar's namespace behind one that has what the
/// supervisor and daemons use, plus `/dev/zfs` when `zfs_module` (the zfs kernel
/// module's device, which this machine has not).
fn sidecar_dev(pod: &Pod, zfs_module: bool) {
    let real = pod.work("real-dev");
    let zfs = if zfs_module { "touch /dev/zfs" } else { "true" };
    pod.sh(
        Ns::Sidecar,
        &format!(
            "mount --rbind /dev {real} && mount -t tmpfs -o mode=755 sidemount-test-dev /dev && \
             for n in null zero full random urandom tty fuse loop-control; do \
               if [ -e {real}/$n ]; then touch /dev/$n && mount --bind {real}/$n /dev/$n; fi; \
             done && ln -s /proc/self/fd /dev/fd && {zfs}",
            real = real.display()
        ),
    )
    .expect("a /dev for the sidecar");
}

/// The stand-in pool: `tank/k8s` exists.
fn pool(pod: &Pod) -> PathBuf {
    let root = pod.work("zfs");
    fs::create_dir_all(root.join("datasets/tank/k8s")).unwrap();
    fs::create_dir_all(root.join("props/tank/k8s")).unwrap();
    fs::write(root.join("calls"), "").unwrap();
    root
}

fn zfs_spec(dataset: &str, create: Option<&str>, root: &Path) -> String {
    let create = create.map(|c| format!("  create: {c}\n")).unwrap_or_default();
    format!(
        "volumes:\n- name: tank\n  type: zfs\n  dataset: {dataset}\n{create}  env: {{STANDIN_ZFS_ROOT: {}}}\n",
        root.display()
    )
}

/// The kernel mounts at the node's emptyDir of `vol` whose source is `source`.
fn node_mounts_of(pod: &Pod, vol: &str, source: &str) -> usize {
    let dir = pod.empty_dir(vol);
    pod.mounts(Ns::Node).iter().filter(|m| m.mount_point == dir && m.source == source).count()
}

#[test]
fn zfs_creates_a_missing_dataset_mounts_it_and_never_destroys_it() {
    let pod = Pod::new(&["tank"]);
    sidecar_dev(&pod, true);
    let root = pool(&pod);
    let yaml = zfs_spec("tank/k8s/data", Some("{refquota: 10G, refreservation: 10G}"), &root);
    // The stand-ins find their pool through the helpers' environment (the spec's env).
    let mut sup = pod.supervisor().spec(&yaml).env("PATH", &path_with_standins()).start();
    sup.wait_ready(READY);

    let calls = fs::read_to_string(root.join("calls")).unwrap();
    assert!(calls.contains("zfs create -o refquota=10G -o refreservation=10G tank/k8s/data"), "{calls}");
    let mp = pod.mountpoint("tank");
    assert!(calls.contains(&format!("mount.zfs -o zfsutil tank/k8s/data {}", mp.display())), "{calls}");
    assert_eq!(node_mounts_of(&pod, "tank", "tank/k8s/data"), 1, "the dataset is mounted on the node's emptyDir");
    pod.app_write("tank", "f", "on zfs").unwrap();
    assert_eq!(pod.app_read("tank", "f").unwrap(), "on zfs");

    // A kernel mount has no daemon: unmounted by someone else, it is mounted again.
    pod.sh(Ns::Sidecar, &format!("umount {}", mp.display())).unwrap();
    wait_for(READY, "mounted again", || {
        (sup.metric("sidemount_volume_repairs_total", "tank") == Some(1.0) && sup.volume("tank")?["state"] == "ready")
            .then_some(())
    });
    assert_eq!(node_mounts_of(&pod, "tank", "tank/k8s/data"), 1);

    let (code, _) = sup.terminate();
    assert_eq!(code, 0, "{}", sup.log());
    assert_eq!(node_mounts_of(&pod, "tank", "tank/k8s/data"), 0, "unmounted on SIGTERM");
    let calls = fs::read_to_string(root.join("calls")).unwrap();
    assert_eq!(calls.matches("zfs create").count(), 1, "created once, not again on the remount: {calls}");
    assert!(!calls.contains("destroy"), "{calls}");
    assert!(root.join("datasets/tank/k8s/data").is_dir(), "the dataset is still there");
}

#[test]
fn zfs_never_touches_an_existing_dataset_and_warns_on_a_version_mismatch() {
    let pod = Pod::new(&["tank"]);
    sidecar_dev(&pod, true);
    let root = pool(&pod);
    fs::create_dir_all(root.join("datasets/tank/k8s/old")).unwrap();
    fs::create_dir_all(root.join("props/tank/k8s/old")).unwrap();
    fs::write(root.join("props/tank/k8s/old/mountpoint"), "legacy\n").unwrap();
    let yaml = zfs_spec("tank/k8s/old", Some("{refquota: 1G}"), &root);
    let mut sup = pod
        .supervisor()
        .spec(&yaml)
        .env("PATH", &path_with_standins())
        .env("STANDIN_ZFS_ROOT", &root.display().to_string())
        .env("STANDIN_ZFS_KMOD", "2.0.0-1")
        .start();
    sup.wait_ready(READY);
    let calls = fs::read_to_string(root.join("calls")).unwrap();
    assert!(!calls.contains("zfs create"), "an existing dataset was created again: {calls}");
    let mp = pod.mountpoint("tank");
    assert!(calls.contains(&format!("mount.zfs tank/k8s/old {}", mp.display())), "legacy: no zfsutil: {calls}");
    assert!(sup.log().contains("differ"), "no version warning:\n{}", sup.log());
    assert_eq!(sup.terminate().0, 0);
}

#[test]
fn zfs_missing_dataset_without_create_is_reported_not_created() {
    let pod = Pod::new(&["tank"]);
    sidecar_dev(&pod, true);
    let root = pool(&pod);
    let mut sup =
        pod.supervisor().spec(&zfs_spec("tank/k8s/nope", None, &root)).env("PATH", &path_with_standins()).start();
    let v = sup.wait_state("tank", "failed", READY);
    let error = v["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("does not exist") && error.contains("create:"), "{error}");
    assert!(!fs::read_to_string(root.join("calls")).unwrap().contains("zfs create"));
    assert_eq!(sup.terminate().0, 0);
}

#[test]
fn zfs_without_the_kernel_module_exits_78() {
    let pod = Pod::new(&["tank"]);
    sidecar_dev(&pod, false);
    let root = pool(&pod);
    let mut sup =
        pod.supervisor().spec(&zfs_spec("tank/k8s/data", None, &root)).env("PATH", &path_with_standins()).start();
    assert_eq!(sup.expect_exit(READY), 78, "{}", sup.output());
    assert!(sup.output().contains("no zfs kernel module"), "{}", sup.output());
    assert_eq!(fs::read_to_string(root.join("calls")).unwrap(), "", "nothing was run");
}
