//! The kubelet's mount layout, rebuilt for each test in throwaway mount namespaces.
//!
//! ```text
//! node     unshare -m --propagation private        tmpfs at TMP/node, --make-shared;
//!                                                  emptyDirs at TMP/node/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>
//! sidecar  (from node) unshare -m --propagation unchanged
//!                                                  emptyDir bound at TMP/sidecar/<name> (= SIDEMOUNT_ROOT/<name>),
//!                                                  --make-rshared (Bidirectional) or --make-private
//! app      (from node) unshare -m --propagation unchanged
//!                                                  emptyDir bound at TMP/app/<name>, --make-rslave (HostToContainer)
//! ```
//!
//! Each namespace is held open by a `sleep infinity` holder. Sidecar and app unmount
//! their copy of TMP/node (lazily, without propagation: its parent is private), so like
//! containers they see only their own binds. Commands run inside a namespace through
//! `nsenter -t <holder> -m --`: setns(CLONE_NEWNS) is refused to a multithreaded process
//! such as the test binary. Nothing is ever mounted in the host's namespace.
//!
//! Drop SIGKILLs every process found (by pid) in the pod's namespaces, then the holders;
//! the namespaces and all their mounts go with their last process. It then asserts
//! that nothing is left: no process in those namespaces, no host mount under TMP.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::preconditions::require_privileges;
use super::process::{
    cmdline, comm, mnt_ns, pids_in_namespaces, poll_until, run_with_timeout, signal, wait_child, wait_for,
};
use super::{mountinfo, Mount, SupervisorBuilder, CMD_TIMEOUT, POLL};

/// Which container's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    Node,
    Sidecar,
    App,
}

/// How the sidecar's volumeMount propagates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// `mountPropagation: Bidirectional`: the bind is rshared, a peer of the node's.
    Bidirectional,
    /// No propagation set (a non-privileged sidecar): the bind is private.
    Private,
}

/// A process that keeps one mount namespace alive.
struct Holder {
    child: Child,
    ns: String,
}

impl Holder {
    /// Spawn `argv` (which ends in a fresh `unshare -m ... sleep infinity`) and wait until
    /// it has exec'd `sleep` in a namespace other than `parent_ns`.
    fn spawn(argv: &[&str], parent_ns: &str, stderr_to: &Path) -> Holder {
        let err = fs::File::create(stderr_to).expect("holder log");
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        let mut h = Holder { child, ns: String::new() };
        let pid = h.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = h.child.try_wait() {
                panic!("{argv:?} exited ({st}): {}", fs::read_to_string(stderr_to).unwrap_or_default());
            }
            if comm(pid) == "sleep" {
                if let Some(ns) = mnt_ns(pid).filter(|ns| ns != parent_ns) {
                    h.ns = ns;
                    return h;
                }
            }
            assert!(Instant::now() < deadline, "{argv:?} did not reach `sleep` in a new mount namespace");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_child(&mut self.child, Duration::from_secs(10));
    }
}

/// One pod: node, sidecar and app namespaces around a set of emptyDir volumes.
pub struct Pod {
    tmp: Option<tempfile::TempDir>,
    path: PathBuf,
    uid: String,
    volumes: Vec<(String, Propagation)>,
    // Declared in this order so a half-built Pod drops app, sidecar, node.
    app: Holder,
    sidecar: Holder,
    node: Holder,
    background: Mutex<Vec<Child>>,
    next_log: AtomicUsize,
    /// The app's binds, made by `start_app` for a pod whose app starts late.
    late_app_script: Mutex<Option<String>>,
}

impl Pod {
    /// A pod whose sidecar mounts every volume Bidirectional.
    pub fn new(volumes: &[&str]) -> Pod {
        let v: Vec<(&str, Propagation)> = volumes.iter().map(|n| (*n, Propagation::Bidirectional)).collect();
        Pod::with_propagation(&v)
    }

    /// A pod whose app container starts only once the volumes are ready, as native
    /// sidecars make it: the runtime's bind of each emptyDir then captures the FUSE
    /// mount on top of it. Call `start_app` after the supervisor is ready.
    pub fn with_app_started_late(volumes: &[&str]) -> Pod {
        let v: Vec<(&str, Propagation)> = volumes.iter().map(|n| (*n, Propagation::Bidirectional)).collect();
        Pod::build(&v, true)
    }

    /// Makes the app's binds now (see `with_app_started_late`).
    pub fn start_app(&self) {
        let script = self.late_app_script.lock().unwrap().take().expect("the app was started already");
        run_script(&self.app.pid().to_string(), &script, "app setup");
    }

    pub fn with_propagation(volumes: &[(&str, Propagation)]) -> Pod {
        Pod::build(volumes, false)
    }

    fn build(volumes: &[(&str, Propagation)], late_app: bool) -> Pod {
        require_privileges();
        let tmp = tempfile::Builder::new().prefix("sidemount-pod-").tempdir().expect("tempdir");
        let path = tmp.path().to_path_buf();
        for d in ["node", "sidecar", "app", "logs", "config", "work"] {
            fs::create_dir_all(path.join(d)).unwrap();
        }
        let uid = format!("0000-test-{}", path.file_name().unwrap().to_string_lossy().replace(['.', '_'], "-"));
        let volumes: Vec<(String, Propagation)> = volumes.iter().map(|(n, p)| (n.to_string(), *p)).collect();
        for (name, _) in &volumes {
            fs::create_dir_all(path.join("sidecar").join(name)).unwrap();
            fs::create_dir_all(path.join("app").join(name)).unwrap();
        }
        let host_ns = mnt_ns(std::process::id()).expect("own mount namespace");
        let p = |s: &str| path.join(s).display().to_string();

        // Node: a private copy of the host's mounts, with a shared tmpfs for the kubelet dir.
        let node = Holder::spawn(
            &["unshare", "-m", "--propagation", "private", "--", "sleep", "infinity"],
            &host_ns,
            &path.join("logs/holder-node.log"),
        );
        let node_pid = node.pid().to_string();
        let mut script =
            format!("mount -t tmpfs -o mode=0755 tmpfs {node}\nmount --make-shared {node}\n", node = p("node"));
        for (name, _) in &volumes {
            script += &format!("mkdir -p {}\n", empty_dir_path(&path, &uid, name).display());
        }
        run_script(&node_pid, &script, "node setup");

        let from_node = |what: &str| {
            Holder::spawn(
                &[
                    "nsenter",
                    "-t",
                    &node_pid,
                    "-m",
                    "--",
                    "unshare",
                    "-m",
                    "--propagation",
                    "unchanged",
                    "--",
                    "sleep",
                    "infinity",
                ],
                &node.ns,
                &path.join(format!("logs/holder-{what}.log")),
            )
        };
        let sidecar = from_node("sidecar");
        let app = from_node("app");

        // Sidecar: each emptyDir bound at ROOT/<name>, as the runtime does for a volumeMount.
        let mut script = String::new();
        for (name, prop) in &volumes {
            let target = path.join("sidecar").join(name);
            script += &format!("mount --bind {} {}\n", empty_dir_path(&path, &uid, name).display(), target.display());
            script += match prop {
                Propagation::Bidirectional => "mount --make-rshared ",
                Propagation::Private => "mount --make-private ",
            };
            script += &format!("{}\n", target.display());
        }
        // Hide the node's kubelet dir, as a container's rootfs does; its parent is
        // private here, so the node keeps it.
        script += &format!("umount -l {}\n", p("node"));
        run_script(&sidecar.pid().to_string(), &script, "sidecar setup");

        // App: HostToContainer, i.e. rslave binds.
        let mut script = String::new();
        for (name, _) in &volumes {
            let target = path.join("app").join(name);
            script += &format!("mount --bind {} {}\n", empty_dir_path(&path, &uid, name).display(), target.display());
            script += &format!("mount --make-rslave {}\n", target.display());
        }
        let late_app_script = if late_app {
            // The app's bind is a slave of the node's FUSE mount it captured; hiding the
            // kubelet dir (unmounting that copy) here would cut the slave from its master
            // and with it every later propagation, which a container does not suffer:
            // its bind's master is the node's own mount. So the late app keeps it.
            Some(script)
        } else {
            script += &format!("umount -l {}\n", p("node"));
            run_script(&app.pid().to_string(), &script, "app setup");
            None
        };

        let pod = Pod {
            tmp: Some(tmp),
            path,
            uid,
            volumes,
            app,
            sidecar,
            node,
            background: Mutex::new(Vec::new()),
            next_log: AtomicUsize::new(0),
            late_app_script: Mutex::new(late_app_script),
        };
        pod.assert_layout();
        pod
    }

    /// The layout is what the kubelet would build; checked once per pod so a broken
    /// harness is told apart from a broken supervisor.
    fn assert_layout(&self) {
        let host = mountinfo::host();
        assert!(mountinfo::under(&host, &self.path).is_empty(), "harness mounted something in the host namespace");
        let node = self.mounts(Ns::Node);
        let tmpfs = node.iter().find(|m| m.mount_point == self.path.join("node")).expect("node tmpfs");
        assert!(tmpfs.is_shared(), "node tmpfs not shared: {tmpfs:?}");
        let sc = self.mounts(Ns::Sidecar);
        let app = self.mounts(Ns::App);
        for (name, prop) in &self.volumes {
            let m = sc.iter().rev().find(|m| m.mount_point == self.mountpoint(name)).expect("sidecar bind");
            assert_eq!(m.is_shared(), *prop == Propagation::Bidirectional, "sidecar bind of {name}: {m:?}");
            if self.late_app_script.lock().unwrap().is_some() {
                continue;
            }
            let m = app.iter().rev().find(|m| m.mount_point == self.app_dir(name)).expect("app bind");
            assert!(m.is_slave() && !m.is_shared(), "app bind of {name} is not rslave: {m:?}");
        }
    }

    // --- paths

    /// TMP: everything of this pod lives under it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SIDEMOUNT_ROOT.
    pub fn root(&self) -> PathBuf {
        self.path.join("sidecar")
    }

    /// Where the supervisor mounts volume `name` (sidecar's view).
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    /// Where the app sees volume `name`.
    pub fn app_dir(&self, name: &str) -> PathBuf {
        self.path.join("app").join(name)
    }

    /// The node's emptyDir directory for `name` (node's view).
    pub fn empty_dir(&self, name: &str) -> PathBuf {
        empty_dir_path(&self.path, &self.uid, name)
    }

    /// The spec file SIDEMOUNT_CONFIG points at by default.
    /// SIDEMOUNT_STAGE for the pod's supervisors.
    pub fn stage_dir(&self) -> PathBuf {
        self.path.join("stage")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config/volumes.yaml")
    }

    /// A scratch directory on the host fs (visible in every namespace), for sources,
    /// secrets, scripts.
    pub fn work(&self, sub: &str) -> PathBuf {
        let p = self.path.join("work").join(sub);
        fs::create_dir_all(&p).unwrap();
        p
    }

    pub(super) fn next_log(&self, stem: &str) -> PathBuf {
        let n = self.next_log.fetch_add(1, Ordering::SeqCst);
        self.path.join("logs").join(format!("{stem}-{n}"))
    }

    /// Write the spec file as an editor or a ConfigMap update does: a temp file in the
    /// same directory, renamed over the old one.
    pub fn write_spec(&self, yaml: &str) {
        let tmp = self.path.join("config/.volumes.yaml.tmp");
        fs::write(&tmp, yaml).unwrap();
        fs::rename(&tmp, self.config_path()).unwrap();
    }

    // --- namespaces

    pub fn holder_pid(&self, ns: Ns) -> u32 {
        match ns {
            Ns::Node => self.node.pid(),
            Ns::Sidecar => self.sidecar.pid(),
            Ns::App => self.app.pid(),
        }
    }

    pub fn namespaces(&self) -> Vec<String> {
        vec![self.node.ns.clone(), self.sidecar.ns.clone(), self.app.ns.clone()]
    }

    /// `nsenter -t <holder> -m -- program`.
    pub fn command_in(&self, ns: Ns, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder_pid(ns).to_string(), "-m", "--", program]);
        // cargo points it at the build's directories; a container has none, and
        // each program started would look for its libraries there first.
        c.env_remove("LD_LIBRARY_PATH");
        c
    }

    /// Run `argv` in `ns`, bounded by CMD_TIMEOUT.
    pub fn run_in(&self, ns: Ns, argv: &[&str]) -> Result<Output, String> {
        let mut c = self.command_in(ns, argv[0]);
        c.args(&argv[1..]);
        run_with_timeout(&mut c, None, CMD_TIMEOUT)
    }

    /// `sh -c script` in `ns`; Ok(stdout) if it exits 0, Err(description) otherwise.
    pub fn sh(&self, ns: Ns, script: &str) -> Result<String, String> {
        self.sh_stdin(ns, script, None)
    }

    pub fn sh_stdin(&self, ns: Ns, script: &str, stdin: Option<&[u8]>) -> Result<String, String> {
        let mut c = self.command_in(ns, "sh");
        c.args(["-c", script]);
        let out = run_with_timeout(&mut c, stdin, CMD_TIMEOUT)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("`{script}` in {ns:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Start `argv` in `ns` in the background; returns its pid (nsenter execs, so the
    /// pid is the program's). Reaped and killed by Drop.
    pub fn spawn_in(&self, ns: Ns, argv: &[&str]) -> u32 {
        let log = fs::File::create(self.next_log(&format!("bg-{}", argv[0].rsplit('/').next().unwrap()))).unwrap();
        let mut c = self.command_in(ns, argv[0]);
        c.args(&argv[1..]).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        let child = c.spawn().unwrap_or_else(|e| panic!("spawn {argv:?} in {ns:?}: {e}"));
        let pid = child.id();
        self.background.lock().unwrap().push(child);
        pid
    }

    /// A process in `ns` holding `file` open (fd 3), as an app using the volume does;
    /// returns once it does. Killed by Drop.
    pub fn hold_open(&self, ns: Ns, file: &Path) -> u32 {
        let holder = self.spawn_in(ns, &["sh", "-c", &format!("exec 3<'{}'; exec sleep 1000", file.display())]);
        wait_for(Duration::from_secs(10), &format!("{} held open", file.display()), || {
            let fd = fs::read_link(format!("/proc/{holder}/fd/3")).ok()?;
            (fd == file && comm(holder) == "sleep").then_some(())
        });
        holder
    }

    /// Mount table of the namespace.
    pub fn mounts(&self, ns: Ns) -> Vec<Mount> {
        mountinfo::of_pid(self.holder_pid(ns))
    }

    /// FUSE mounts at the node's emptyDir of `name`: what the kubelet would trip over.
    pub fn node_fuse_mounts(&self, name: &str) -> Vec<Mount> {
        let dir = self.empty_dir(name);
        self.mounts(Ns::Node).into_iter().filter(|m| m.is_fuse() && m.mount_point == dir).collect()
    }

    /// The FUSE mounts of the pod's tree in namespace `ns`. Each namespace began as a
    /// copy of the host's, FUSE mounts of other programs included.
    pub fn fuse_mounts(&self, ns: Ns) -> Vec<Mount> {
        self.mounts(ns).into_iter().filter(|m| m.is_fuse() && m.mount_point.starts_with(&self.path)).collect()
    }

    /// Every FUSE mount of the pod's in the node namespace.
    pub fn all_node_fuse_mounts(&self) -> Vec<Mount> {
        self.fuse_mounts(Ns::Node)
    }

    /// Pids in the pod's namespaces, holders excluded.
    pub fn processes(&self) -> Vec<u32> {
        let holders = [self.node.pid(), self.sidecar.pid(), self.app.pid()];
        pids_in_namespaces(&self.namespaces()).into_iter().filter(|p| !holders.contains(p)).collect()
    }

    // --- the app's view

    /// `cat` a file of volume `vol` in the app's namespace.
    pub fn app_read(&self, vol: &str, file: &str) -> Result<String, String> {
        let path = self.app_dir(vol).join(file);
        let out = self.run_in(Ns::App, &["cat", &path.display().to_string()])?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Write (and close) a file of volume `vol` from the app's namespace.
    pub fn app_write(&self, vol: &str, file: &str, content: &str) -> Result<(), String> {
        let path = self.app_dir(vol).join(file);
        self.sh_stdin(Ns::App, &format!("cat > '{}'", path.display()), Some(content.as_bytes())).map(|_| ())
    }

    /// Poll until the app reads `expected` from `vol/file`.
    pub fn wait_app_reads(&self, vol: &str, file: &str, expected: &str, timeout: Duration) {
        let mut last = Err(String::from("not tried"));
        let ok = poll_until(timeout, || {
            last = self.app_read(vol, file);
            last.as_deref() == Ok(expected)
        });
        assert!(ok, "app never read {expected:?} from {vol}/{file} in {timeout:?}; last: {last:?}");
    }

    /// Start a supervisor in the sidecar namespace.
    pub fn supervisor(&self) -> SupervisorBuilder<'_> {
        SupervisorBuilder::new(self)
    }

    // --- teardown

    /// Kill every process in the pod's namespaces (holders stay, so the namespace ids
    /// cannot be reused meanwhile); returns what survived `timeout`.
    fn kill_all_but_holders(&self, timeout: Duration) -> Vec<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.processes();
            if left.is_empty() {
                return left;
            }
            for &p in &left {
                // Resume first: a SIGSTOPped daemon dies of SIGKILL anyway, but its
                // stuck clients only once the connection aborts.
                signal(p, libc::SIGKILL);
                signal(p, libc::SIGCONT);
            }
            if Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let survivors = self.kill_all_but_holders(Duration::from_secs(15));
        let described: Vec<String> = survivors.iter().map(|p| format!("{p} {}", cmdline(*p))).collect();
        for mut c in self.background.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = wait_child(&mut c, Duration::from_secs(5));
        }
        for h in [&mut self.app, &mut self.sidecar, &mut self.node] {
            let _ = h.child.kill();
            let _ = wait_child(&mut h.child, Duration::from_secs(10));
        }
        let host = mountinfo::host();
        let host_leaks: Vec<String> = host
            .iter()
            .filter(|m| {
                // Only the pod's own tree: other programs on the machine (a container
                // engine's fuse-overlayfs, say) mount and unmount as they please.
                m.mount_point.starts_with(&self.path)
            })
            .map(|m| format!("{} {}", m.fstype, m.mount_point.display()))
            .collect();
        let mut problems = Vec::new();
        if !described.is_empty() {
            problems.push(format!("processes survived SIGKILL in the pod's namespaces: {described:?}"));
        }
        if !host_leaks.is_empty() {
            problems.push(format!("mounts leaked into the host namespace: {host_leaks:?}"));
            // Never remove_dir_all through a mount: keep the directory.
            if let Some(t) = self.tmp.take() {
                let kept = t.keep();
                problems.push(format!("kept {} (not removed)", kept.display()));
            }
        }
        if problems.is_empty() {
            return;
        }
        let msg = problems.join("; ");
        if panicking {
            eprintln!("pod teardown: {msg}");
        } else {
            panic!("pod teardown: {msg}");
        }
    }
}

fn empty_dir_path(tmp: &Path, uid: &str, name: &str) -> PathBuf {
    tmp.join("node/pods").join(uid).join("volumes/kubernetes.io~empty-dir").join(name)
}

fn run_script(pid: &str, script: &str, what: &str) {
    let mut c = Command::new("nsenter");
    c.args(["-t", pid, "-m", "--", "sh", "-ec", script]);
    let out = run_with_timeout(&mut c, None, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{script}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
