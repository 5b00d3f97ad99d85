//! `sidemount run` inside a pod's sidecar namespace, and the user's ways of looking at
//! it: its HTTP endpoints, its log (stderr, kept in a file), its exit code.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, http, pid_alive, sidemount_bin, signal, Ns, Pod, POLL};

/// Per-request bound: an endpoint that takes longer is as good as down.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SupervisorBuilder<'p> {
    pod: &'p Pod,
    spec: Option<String>,
    config: Option<PathBuf>,
    inline: Option<String>,
    shutdown_timeout: Option<Duration>,
    env: Vec<(String, String)>,
    cgroup: Option<PathBuf>,
    nofile: Option<(u64, u64)>,
}

impl<'p> SupervisorBuilder<'p> {
    pub(super) fn new(pod: &'p Pod) -> Self {
        SupervisorBuilder {
            pod,
            spec: None,
            config: None,
            inline: None,
            shutdown_timeout: None,
            env: Vec::new(),
            cgroup: None,
            nofile: None,
        }
    }

    /// Start it with this soft and hard RLIMIT_NOFILE, as a container runtime might.
    pub fn nofile(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }

    /// Start the supervisor inside this cgroup directory (it joins before it execs).
    pub fn cgroup(mut self, dir: &Path) -> Self {
        self.cgroup = Some(dir.to_path_buf());
        self
    }

    /// Write `yaml` to the pod's spec file (SIDEMOUNT_CONFIG) before starting.
    pub fn spec(mut self, yaml: &str) -> Self {
        self.spec = Some(yaml.to_string());
        self
    }

    /// Point SIDEMOUNT_CONFIG somewhere else (a fixture, a directory).
    pub fn config_path(mut self, path: &Path) -> Self {
        self.config = Some(path.to_path_buf());
        self
    }

    /// SIDEMOUNT_VOLUMES.
    pub fn inline(mut self, yaml: &str) -> Self {
        self.inline = Some(yaml.to_string());
        self
    }

    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = Some(d);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn start(self) -> Supervisor<'p> {
        let pod = self.pod;
        if let Some(yaml) = &self.spec {
            pod.write_spec(yaml);
        }
        let config = self.config.unwrap_or_else(|| pod.config_path());
        let port = free_port();
        let stem = pod.next_log("sidemount");
        let log = stem.with_extension("stderr");
        let out = stem.with_extension("stdout");
        let shutdown_timeout = self.shutdown_timeout.unwrap_or(Duration::from_secs(20));
        // The container's environment, as the injected sidecar would have it.
        let mut env: Vec<(String, String)> = vec![
            ("SIDEMOUNT_ROOT".into(), pod.root().display().to_string()),
            ("SIDEMOUNT_CONFIG".into(), config.display().to_string()),
            ("SIDEMOUNT_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("SIDEMOUNT_LOG".into(), "debug".into()),
            // The daemons' staging tmpfs, inside the pod's tree so nothing is left on the host.
            ("SIDEMOUNT_STAGE".into(), pod.stage_dir().display().to_string()),
            ("SIDEMOUNT_SHUTDOWN_TIMEOUT".into(), format!("{}ms", shutdown_timeout.as_millis())),
            ("RUST_BACKTRACE".into(), "1".into()),
        ];
        if let Some(inline) = &self.inline {
            env.push(("SIDEMOUNT_VOLUMES".into(), inline.clone()));
        }
        env.extend(self.env);
        let mut cmd = sidecar_command(pod, &env, self.cgroup.as_deref());
        cmd.arg("run");
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec the closure only calls setrlimit, which is
            // async-signal-safe, on a struct on its own stack.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.stdin(Stdio::null()).stdout(fs::File::create(&out).unwrap()).stderr(fs::File::create(&log).unwrap());
        let spawned = std::time::SystemTime::now();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn sidemount run: {e}"));
        Supervisor {
            pod,
            pid: child.id(),
            child,
            spawned,
            addr: ([127, 0, 0, 1], port).into(),
            log,
            out,
            exit: None,
            shutdown_timeout,
            env,
        }
    }
}

/// `sidemount` in the sidecar's namespace with exactly `env` for SIDEMOUNT_*: the
/// test's own SIDEMOUNT_* (if any) must not leak in.
fn sidecar_command(pod: &Pod, env: &[(String, String)], cgroup: Option<&Path>) -> std::process::Command {
    let mut cmd = match cgroup {
        None => pod.command_in(Ns::Sidecar, sidemount_bin()),
        // sh joins the cgroup and execs nsenter, which execs sidemount: one pid throughout.
        Some(dir) => {
            let mut c = std::process::Command::new("sh");
            let script = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", dir.display());
            let holder = pod.holder_pid(Ns::Sidecar).to_string();
            c.args(["-c", &script, "sh", "nsenter", "-t", &holder, "-m", "--", sidemount_bin()]);
            c
        }
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDEMOUNT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// A running (or exited) `sidemount run`. nsenter execs it, so `pid` is the supervisor.
pub struct Supervisor<'p> {
    pod: &'p Pod,
    child: Child,
    pid: u32,
    /// Just before the spawn of `nsenter`, which execs sidemount.
    spawned: std::time::SystemTime,
    addr: SocketAddr,
    log: PathBuf,
    out: PathBuf,
    exit: Option<ExitStatus>,
    shutdown_timeout: Duration,
    env: Vec<(String, String)>,
}

impl<'p> Supervisor<'p> {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// `sidemount ARGS` in the sidecar container with the supervisor's environment,
    /// as an exec probe or `kubectl exec` runs it: (exit code, stdout + stderr).
    pub fn exec(&self, args: &[&str]) -> (i32, String) {
        let mut cmd = sidecar_command(self.pod, &self.env, None);
        cmd.args(args);
        let out = super::run_with_timeout(&mut cmd, None, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("sidemount {args:?}: {e}"));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    // --- HTTP

    pub fn get(&self, path: &str) -> Result<http::Response, String> {
        http::get(self.addr, path, HTTP_TIMEOUT)
    }

    /// When the process that execs sidemount was spawned: after the spec, the log
    /// files and the port were made ready.
    pub fn spawned_at(&self) -> std::time::SystemTime {
        self.spawned
    }

    /// Status code of /readyz, None if it does not answer.
    pub fn readyz(&self) -> Option<u16> {
        self.get("/readyz").ok().map(|r| r.status)
    }

    pub fn healthz(&self) -> Option<u16> {
        self.get("/healthz").ok().map(|r| r.status)
    }

    pub fn metrics(&self) -> String {
        let r = self.get("/metrics").unwrap_or_else(|e| panic!("/metrics: {e}\n{}", self.log_tail(40)));
        assert_eq!(r.status, 200, "/metrics: {}", r.body);
        r.body
    }

    /// The raw /status body.
    pub fn status_body(&self) -> String {
        let r = self.get("/status").unwrap_or_else(|e| panic!("/status: {e}\n{}", self.log_tail(40)));
        r.body
    }

    pub fn status(&self) -> Value {
        let body = self.status_body();
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
    }

    /// The /status entry of volume `name`, if listed.
    pub fn volume(&self, name: &str) -> Option<Value> {
        self.status()["volumes"].as_array()?.iter().find(|v| v["name"] == name).cloned()
    }

    /// The daemon pid /status reports for `name` (panics if none).
    pub fn daemon_pid(&self, name: &str) -> u32 {
        let v = self.volume(name).unwrap_or_else(|| panic!("volume {name} not in /status"));
        v["pid"].as_u64().unwrap_or_else(|| panic!("no daemon pid for {name} in /status: {v}")) as u32
    }

    /// `metric{volume="vol"}` from /metrics.
    pub fn metric(&self, metric: &str, vol: &str) -> Option<f64> {
        metric_value(&self.metrics(), metric, vol)
    }

    /// Poll /readyz until 200; fails early if the supervisor exits.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.readyz() == Some(200) {
                return;
            }
            if let Some(st) = self.try_exit() {
                panic!("sidemount exited ({st}) before it was ready:\n{}", self.log_tail(60));
            }
            if Instant::now() >= deadline {
                let status = self.get("/status").map(|r| r.body).unwrap_or_else(|e| e);
                panic!("sidemount not ready after {timeout:?}; /status: {status}\n{}", self.log_tail(60));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Poll until volume `name`'s /status state is `state`.
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        let mut last = None;
        let ok = super::poll_until(timeout, || {
            last = self.get("/status").ok().and_then(|r| serde_json::from_str::<Value>(&r.body).ok());
            last.as_ref()
                .and_then(|s| s["volumes"].as_array().and_then(|vs| vs.iter().find(|v| v["name"] == name).cloned()))
                .is_some_and(|v| v["state"] == state)
        });
        assert!(
            ok,
            "volume {name} never reached state {state} in {timeout:?}; /status: {last:?}\n{}",
            self.log_tail(40)
        );
        self.volume(name).unwrap()
    }

    // --- process

    pub fn signal(&self, sig: i32) {
        if self.exit.is_none() {
            signal(self.pid, sig);
        }
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Exit status if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Wait up to `timeout` for the exit; None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Exit code, panicking (with the log) if it does not exit within `timeout`.
    pub fn expect_exit(&mut self, timeout: Duration) -> i32 {
        match self.wait_exit(timeout) {
            Some(st) => {
                st.code().unwrap_or_else(|| panic!("sidemount killed by a signal: {st}\n{}", self.log_tail(60)))
            }
            None => panic!("sidemount still running after {timeout:?}\n{}", self.log_tail(60)),
        }
    }

    /// SIGTERM and measure: (exit code, time to exit). Panics if it outlives
    /// SIDEMOUNT_SHUTDOWN_TIMEOUT plus 500 ms of process-teardown slack.
    pub fn terminate(&mut self) -> (i32, Duration) {
        let budget = self.shutdown_timeout + Duration::from_millis(500);
        let t0 = Instant::now();
        self.sigterm();
        let st = self.wait_exit(budget);
        let took = t0.elapsed();
        eprintln!("sidemount {} exited {st:?} {took:?} after SIGTERM", self.pid);
        match st {
            Some(st) => match st.code() {
                Some(code) => (code, took),
                None => panic!("sidemount died of a signal on SIGTERM: {st}\n{}", self.log_tail(60)),
            },
            None => panic!(
                "sidemount still running {budget:?} after SIGTERM (SIDEMOUNT_SHUTDOWN_TIMEOUT={:?})\n{}",
                self.shutdown_timeout,
                self.log_tail(60)
            ),
        }
    }

    /// SIGKILL, as the kubelet's grace period would; reaped.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        assert!(self.wait_exit(Duration::from_secs(10)).is_some(), "sidemount survived SIGKILL");
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none() && pid_alive(self.pid)
    }

    // --- log

    /// Everything it wrote to stderr (the log).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// stdout and stderr together.
    pub fn output(&self) -> String {
        format!("{}{}", fs::read_to_string(&self.out).unwrap_or_default(), self.log())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(n);
        format!(
            "--- sidemount log ({}), last {} lines:\n{}",
            self.log.display(),
            lines.len() - start,
            lines[start..].join("\n")
        )
    }

    pub fn pod(&self) -> &'p Pod {
        self.pod
    }
}

impl Drop for Supervisor<'_> {
    fn drop(&mut self) {
        // On failure the log tail goes with the panic message; SIDEMOUNT_TEST_LOGS=1
        // prints every supervisor's whole log (with --nocapture) for a passing test too.
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(80));
        } else if std::env::var_os("SIDEMOUNT_TEST_LOGS").is_some() {
            eprintln!("{}", self.log_tail(usize::MAX));
        }
        if self.exit.is_none() {
            signal(self.pid, libc::SIGKILL);
            let _ = self.wait_exit(Duration::from_secs(10));
        }
    }
}

/// Value of `metric{...volume="vol"...}` in Prometheus text.
pub fn metric_value(text: &str, metric: &str, vol: &str) -> Option<f64> {
    let label = format!("volume=\"{vol}\"");
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, rest) = l.split_once('{')?;
        let (labels, value) = rest.split_once('}')?;
        if name.trim() != metric || !labels.split(',').any(|kv| kv.trim() == label) {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}
