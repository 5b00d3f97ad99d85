//! Child processes: FUSE daemons and mount helpers, spawned through tokio and
//! reaped through tokio, and the orphans the supervisor inherits as PID 1 (or
//! as a child subreaper) reaped by pid, so no child's exit status is stolen.

use std::collections::{BTreeMap, HashSet};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tracing::Instrument;

/// The pids of children spawned through [`Children::spawn`] and not yet reaped
/// by tokio. Spawning and reaping orphans take the same lock, so an orphan scan
/// never sees a fresh child before it is registered.
#[derive(Debug, Default)]
pub struct Children {
    known: Mutex<HashSet<i32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {program:?}: {source}")]
    Spawn { program: String, source: std::io::Error },
}

impl Children {
    pub fn new() -> Arc<Children> {
        Arc::new(Children::default())
    }

    /// Spawns `cmd` and registers its pid.
    pub fn spawn(&self, cmd: &mut Command, program: &str) -> Result<Child, SpawnError> {
        let mut known = self.known.lock().expect("children lock");
        let child = cmd.spawn().map_err(|source| SpawnError::Spawn { program: program.to_string(), source })?;
        if let Some(pid) = child.id() {
            known.insert(pid as i32);
        }
        Ok(child)
    }

    /// Waits for a child spawned here, through tokio, and unregisters it.
    pub async fn wait(&self, child: &mut Child) -> std::io::Result<ExitStatus> {
        let pid = child.id();
        let status = child.wait().await;
        if let Some(pid) = pid {
            self.known.lock().expect("children lock").remove(&(pid as i32));
        }
        status
    }

    /// Reaps exited children that were not spawned here: orphans reparented to
    /// this process. Returns their pids.
    pub fn reap_orphans(&self) -> Vec<i32> {
        let known = self.known.lock().expect("children lock");
        let mut reaped = Vec::new();
        for pid in own_children() {
            if known.contains(&pid) {
                continue;
            }
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => {}
                Ok(_) => reaped.push(pid),
            }
        }
        reaped
    }

    pub fn count(&self) -> usize {
        self.known.lock().expect("children lock").len()
    }
}

/// Children of this process, from `/proc/self/task/*/children`; an orphan is
/// attached to whichever thread the kernel picked as its new parent. Kernels
/// built without CONFIG_PROC_CHILDREN lack those files: then every process's
/// parent is read from `/proc/PID/stat`.
fn own_children() -> Vec<i32> {
    let mut pids = Vec::new();
    let mut listed = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                listed = true;
                pids.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    if listed {
        return pids;
    }
    let me = std::process::id() as i32;
    let Ok(all) = std::fs::read_dir("/proc") else { return pids };
    for entry in all.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if parent_of(&stat) == Some(me) {
            pids.push(pid);
        }
    }
    pids
}

/// The parent pid in a `/proc/PID/stat` line: `pid (comm) state ppid ...`, where
/// comm may hold spaces and parentheses.
fn parent_of(stat: &str) -> Option<i32> {
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
}

/// A running daemon: its own process group, its output logged line by line
/// with every secret value blanked out.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pid: i32,
    last_line: Arc<Mutex<Option<String>>>,
}

/// What to run.
pub struct Launch<'a> {
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    /// Values that must never reach the log: blanked in the daemon's output.
    pub secrets: &'a [String],
}

impl Daemon {
    pub fn spawn(children: &Children, launch: Launch<'_>) -> Result<Daemon, SpawnError> {
        let program = &launch.argv[0];
        let mut cmd = Command::new(program);
        cmd.args(&launch.argv[1..])
            .envs(launch.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: a wrapper script and what it starts are signalled together.
            .process_group(0)
            .kill_on_drop(false);
        // The supervisor's own settings are no business of the daemon's.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SIDEMOUNT_") {
                cmd.env_remove(key);
            }
        }
        let mut child = children.spawn(&mut cmd, program)?;
        let pid = child.id().map(|p| p as i32).unwrap_or(-1);
        let last_line = Arc::new(Mutex::new(None));
        let secrets: Arc<[String]> = launch.secrets.iter().filter(|s| !s.is_empty()).cloned().collect();
        let span = tracing::info_span!("daemon", pid);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward(out, secrets.clone(), last_line.clone()).instrument(span.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward(err, secrets, last_line.clone()).instrument(span));
        }
        Ok(Daemon { child, pid, last_line })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the daemon to exit.
    pub async fn wait(&mut self, children: &Children) -> std::io::Result<ExitStatus> {
        children.wait(&mut self.child).await
    }

    /// Signals the daemon's process group. Only while the leader is unreaped,
    /// so the group id cannot have been reused.
    pub fn signal(&self, signal: Signal) {
        if let Err(err) = killpg(Pid::from_raw(self.pid), signal) {
            tracing::debug!(pid = self.pid, %signal, %err, "signal not delivered");
        }
    }

    /// The daemon's last line of output, secrets blanked: the best hint at why it exited.
    pub fn last_line(&self) -> Option<String> {
        self.last_line.lock().expect("last line lock").clone()
    }
}

async fn forward<R: tokio::io::AsyncRead + Unpin>(reader: R, secrets: Arc<[String]>, last: Arc<Mutex<Option<String>>>) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = redact(&line, &secrets);
        if line.trim().is_empty() {
            continue;
        }
        tracing::info!(target: "sidemount::daemon", "{line}");
        *last.lock().expect("last line lock") = Some(line);
    }
}

/// Blanks every occurrence of every secret value.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        if !secret.is_empty() && out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "[redacted]");
        }
    }
    out
}

/// A mount helper (`zfs`, `blkid`, `mkfs.*`, `mount.zfs`, `mount`) that failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("`{command}` did not finish within {limit:?}; it was killed")]
    TimedOut { command: String, limit: std::time::Duration },
    #[error("`{command}` was killed: the volume is being stopped")]
    Stopped { command: String },
    #[error("`{command}` {status}{}", stderr.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Failed { command: String, status: String, code: Option<i32>, stderr: Option<String> },
}

impl HelperError {
    /// The helper's exit code, when it ran and failed.
    pub fn code(&self) -> Option<i32> {
        match self {
            HelperError::Failed { code, .. } => *code,
            _ => None,
        }
    }
}

/// After this long, a killed helper's process group still there is worth a warning:
/// a process inside mount(2) dies only when the call returns.
const GROUP_EXIT_WARN: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a helper to completion under `limit` and returns its standard output.
/// Its output never reaches the log unredacted: a helper's error message may
/// echo its environment. When `stop` resolves or `limit` passes, the helper's
/// process group (its own, with whatever it started) is killed and awaited: no
/// process of it is left to mount once this returns (one that left the group with
/// setsid is beyond reach).
pub async fn run_helper(
    children: &Children,
    argv: &[String],
    env: &BTreeMap<String, String>,
    secrets: &[String],
    limit: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) -> Result<String, HelperError> {
    let command = argv.join(" ");
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = children.spawn(&mut cmd, &argv[0])?;
    let pid = child.id().map(|p| p as i32);
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let ran = async {
        let (out, err) = tokio::join!(read_all(stdout.take()), read_all(stderr.take()));
        (children.wait(&mut child).await, out, err)
    };
    let waited = tokio::select! {
        biased;
        _ = stop => Err(HelperError::Stopped { command: command.clone() }),
        done = tokio::time::timeout(limit, ran) => done.map_err(|_| HelperError::TimedOut { command: command.clone(), limit }),
    };
    let (status, out, err) = match waited {
        Ok(done) => done,
        Err(cut) => {
            if let Some(pid) = pid {
                if let Err(err) = killpg(Pid::from_raw(pid), Signal::SIGKILL) {
                    tracing::debug!(pid, %err, "helper group not signalled");
                }
            }
            let _ = children.wait(&mut child).await;
            if let Some(pid) = pid {
                await_group(children, pid).await;
            }
            return Err(cut);
        }
    };
    let out = redact(&String::from_utf8_lossy(&out), secrets);
    let err = redact(&String::from_utf8_lossy(&err), secrets);
    match status {
        Ok(s) if s.success() => Ok(out),
        other => Err(HelperError::Failed {
            command,
            status: describe_exit(&other),
            code: other.as_ref().ok().and_then(|s| s.code()),
            stderr: err.lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string()),
        }),
    }
}

/// Waits until no process of group `pgid` is left, reaping the orphans among them
/// (this process is their subreaper). Not bounded: a helper that could still mount
/// must hold its volume's stop up, so a shutdown that cannot wait for it ends cut
/// short (exit 1) rather than clean.
async fn await_group(children: &Children, pgid: i32) {
    let warn_at = tokio::time::Instant::now() + GROUP_EXIT_WARN;
    let mut warned = false;
    loop {
        children.reap_orphans();
        // Signal 0 only asks whether the group has a member; ESRCH: none.
        if killpg(Pid::from_raw(pgid), None::<Signal>) == Err(nix::errno::Errno::ESRCH) {
            return;
        }
        if !warned && tokio::time::Instant::now() >= warn_at {
            tracing::warn!(pgid, "a killed helper's process group is still there: it may still change the mount table");
            warned = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn read_all<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut buf).await;
    }
    buf
}

/// A short description of an exit status for logs and `/status`.
pub fn describe_exit(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => "exited".to_string(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_secret() {
        let secrets = vec!["s3cr3t".to_string(), "AKIAXYZ".to_string(), String::new()];
        assert_eq!(redact("key=AKIAXYZ pass=s3cr3t s3cr3t", &secrets), "key=[redacted] pass=[redacted] [redacted]");
        assert_eq!(redact("nothing here", &secrets), "nothing here");
    }

    #[test]
    fn reads_the_parent_from_stat() {
        assert_eq!(parent_of("42 (sleep) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_of("43 (a (b) c) Z 1 43 43 0 -1"), Some(1));
        assert_eq!(parent_of("garbage"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reaps_orphans_without_stealing_our_children() {
        crate::sys::become_subreaper().unwrap();
        let children = Children::new();
        // The shell forks a grandchild and exits: the grandchild becomes our orphan.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 0.2 & exit 7"]);
        let mut direct = children.spawn(&mut cmd, "sh").unwrap();
        let status = children.wait(&mut direct).await.unwrap();
        assert_eq!(status.code(), Some(7), "our own child's status is ours");
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        // A registered child that exits meanwhile must not be reaped by the scan.
        let mut cmd = Command::new("true");
        let mut mine = children.spawn(&mut cmd, "true").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let reaped = children.reap_orphans();
        assert_eq!(reaped.len(), 1, "the orphaned sleep is reaped: {reaped:?}");
        assert_eq!(children.wait(&mut mine).await.unwrap().code(), Some(0));
        assert_eq!(children.count(), 0);
    }
}
