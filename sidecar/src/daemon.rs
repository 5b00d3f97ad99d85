//! Child processes: FUSE daemons and mount helpers, spawned through tokio and
//! reaped through tokio, and the orphans the supervisor inherits as PID 1 (or
//! as a child subreaper) reaped by pid, so no child's exit status is stolen.

use std::collections::{BTreeMap, HashSet};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, RwLock};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tracing::Instrument;

/// The pids of children spawned through [`Children::spawn`] and not yet reaped
/// by tokio. Spawns hold `spawning` shared, so several threads can spawn at once,
/// and an orphan scan holds it exclusively: it never sees a fresh child before
/// the child is registered.
#[derive(Debug, Default)]
pub struct Children {
    spawning: RwLock<()>,
    known: Mutex<HashSet<i32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {program:?}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("cannot start {program:?}: its arguments and environment are too large for the kernel (Linux takes at most 128 KiB per variable); make the secret values and `env` smaller")]
    TooBig { program: String },
}

impl Children {
    pub fn new() -> Arc<Children> {
        Arc::new(Children::default())
    }

    /// Spawns `cmd` and registers its pid.
    pub fn spawn(&self, cmd: &mut Command, program: &str) -> Result<Child, SpawnError> {
        let _spawning = self.spawning.read().expect("children lock");
        let child = cmd.spawn().map_err(|source| match source.raw_os_error() {
            // execve's "Argument list too long" is about the environment just as well.
            Some(libc::E2BIG) => SpawnError::TooBig { program: program.to_string() },
            _ => SpawnError::Spawn { program: program.to_string(), source },
        })?;
        if let Some(pid) = child.id() {
            self.known.lock().expect("children lock").insert(pid as i32);
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
        let _no_spawns = self.spawning.write().expect("children lock");
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

    /// Holds every spawn back until the guard is dropped, as a spawn whose exec
    /// hangs in the kernel would be.
    #[cfg(test)]
    pub fn hold_spawns(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.spawning.write().expect("children lock")
    }

    /// The children not reaped yet.
    #[cfg(test)]
    pub fn pids(&self) -> Vec<i32> {
        self.known.lock().expect("children lock").iter().copied().collect()
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

/// The longest line of a daemon's or helper's output that is kept: the rest of a
/// longer line is dropped, with a marker, and the pipe is still drained to its end.
/// A daemon that prints without newlines costs at most this, plus the longest
/// secret value, per pipe.
pub const MAX_LINE: usize = 4096;
/// The longest secret value the output is searched for beyond a cut line (the
/// `secretDir` limit per value), so a value that straddles the cut is still found.
const MAX_LOOKAHEAD: usize = crate::secrets::MAX_VALUE_BYTES;
/// What a failure message quotes of a daemon's or helper's output: its last lines,
/// each cut at a length, about 1 KiB in all.
const TAIL_LINES: usize = 5;
const TAIL_LINE_BYTES: usize = 200;
/// How long a daemon's last output may take to be read after it exited (a process
/// it forked may hold the pipes open for good).
const OUTPUT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
/// What is kept of a helper's standard output (`blkid`, `zfs get`: a few lines).
const HELPER_STDOUT: usize = 64 * 1024;
/// Shortest line of a multi-line secret value that is blanked on its own (after
/// trimming): shorter ones ("", "}", "==") would blank innocent output.
const MIN_SECRET_FRAGMENT: usize = 8;

/// A running daemon: its own process group, its output logged line by line
/// with every secret value blanked out.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pid: i32,
    tail: Arc<Mutex<Tail>>,
    /// The tasks draining stdout and stderr; they end when the pipes close.
    forwarders: Vec<tokio::task::JoinHandle<()>>,
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
        // One pipe for stdout and stderr, as a terminal shows both: one descriptor
        // per daemon here, where every spawn copies them all and closes them in the child.
        let spawn_error = |source: std::io::Error| SpawnError::Spawn { program: program.clone(), source };
        let (output, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_error(e.into()))?;
        let stderr = writer.try_clone().map_err(spawn_error)?;
        let mut cmd = Command::new(program);
        cmd.args(&launch.argv[1..])
            .envs(launch.env)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(stderr)
            // Its own group: a wrapper script and what it starts are signalled together.
            .process_group(0)
            .kill_on_drop(false);
        // The supervisor's own settings are no business of the daemon's.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SIDEMOUNT_") {
                cmd.env_remove(key);
            }
        }
        let output = tokio::net::unix::pipe::Receiver::from_owned_fd(output).map_err(spawn_error)?;
        let child = children.spawn(&mut cmd, program)?;
        // The child's copies of the write end are all that keep the pipe open now.
        drop(cmd);
        let pid = child.id().map(|p| p as i32).unwrap_or(-1);
        let tail = Arc::new(Mutex::new(Tail::default()));
        let redactor = Arc::new(Redactor::new(launch.secrets));
        let span = tracing::info_span!("daemon", pid);
        let forward = forward(output, redactor, tail.clone());
        let forwarders = vec![tokio::spawn(forward.instrument(span))];
        Ok(Daemon { child, pid, tail, forwarders })
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

    /// The daemon's last lines of output, secrets blanked, joined with ` | `: the
    /// best hint at why it exited. After an exit, what it wrote last is still in
    /// the pipes: this waits (briefly) for the pipes to be drained.
    pub async fn last_output(&mut self) -> Option<String> {
        let _ = tokio::time::timeout(OUTPUT_GRACE, async {
            while let Some(forwarder) = self.forwarders.last_mut() {
                let _ = forwarder.await;
                self.forwarders.pop();
            }
        })
        .await;
        self.tail.lock().expect("tail lock").text()
    }
}

/// Logs a daemon's output (stdout and stderr, one pipe) line by line until the
/// pipe closes: lossily (invalid UTF-8 becomes U+FFFD), secrets blanked, long
/// lines cut. It never stops early: a pipe closed under a daemon kills it with
/// SIGPIPE at its next write.
async fn forward<R: tokio::io::AsyncRead + Unpin>(output: R, redactor: Arc<Redactor>, tail: Arc<Mutex<Tail>>) {
    drain_lines(output, &redactor, PIPE_READ, |line| {
        tracing::info!(target: "sidemount::daemon", "{line}");
        tail.lock().expect("tail lock").push(&line);
    })
    .await;
}

/// How much of a daemon's output is read at a time: its buffer is most of what
/// an idle daemon costs the supervisor.
const PIPE_READ: usize = 4096;

/// Reads `reader` to its end, `read_at_once` bytes at a time, and hands each
/// non-blank line to `on_line`, rendered by `redactor`. Memory stays bounded
/// whatever the input (see [`Lines`]).
async fn drain_lines<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    redactor: &Redactor,
    read_at_once: usize,
    mut on_line: impl FnMut(String),
) {
    let mut lines = Lines::new(redactor.lookahead());
    let mut buf = vec![0u8; read_at_once];
    let mut emit = |raw: &[u8]| {
        if let Some(line) = redactor.render_line(raw) {
            on_line(line);
        }
    };
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => lines.feed(&buf[..n], &mut emit),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                tracing::debug!(%err, "output pipe failed");
                break;
            }
        }
    }
    lines.finish(&mut emit);
}

/// Splits a byte stream into lines, keeping at most `window` bytes of any line:
/// [`MAX_LINE`] plus enough to see a secret that starts before the cut. The rest
/// of a longer line is skipped up to its newline.
#[derive(Debug)]
struct Lines {
    line: Vec<u8>,
    window: usize,
    /// In the dropped rest of a line that was already handed on.
    skipping: bool,
}

impl Lines {
    fn new(lookahead: usize) -> Lines {
        Lines { line: Vec::new(), window: MAX_LINE + lookahead + 1, skipping: false }
    }

    /// Takes the next bytes; calls `emit` with each line that ends or fills the
    /// window (without its newline). A line longer than [`MAX_LINE`] is cut by
    /// the renderer.
    fn feed(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let end = newline.unwrap_or(bytes.len());
            if !self.skipping {
                let room = self.window - self.line.len();
                self.line.extend_from_slice(&bytes[..end.min(room)]);
                if newline.is_some() || self.line.len() == self.window {
                    emit(&self.line);
                    self.line.clear();
                    self.skipping = newline.is_none();
                }
            } else if newline.is_some() {
                self.skipping = false;
            }
            bytes = &bytes[newline.map_or(end, |n| n + 1)..];
        }
    }

    /// The last line, when the stream ended without a newline.
    fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.line.is_empty() {
            emit(&self.line);
            self.line.clear();
        }
    }
}

/// Blanks secret values in text. A value is blanked wherever it appears, however
/// short. A value of several lines (a PEM key, a JSON credential) is blanked line
/// by line too, since a daemon may echo it that way: each of its lines that is at
/// least [`MIN_SECRET_FRAGMENT`] characters long after trimming.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so a whole value is blanked before its lines are looked for.
    needles: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: &[String]) -> Redactor {
        let mut needles = Vec::new();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            needles.push(secret.clone());
            if secret.contains('\n') {
                let lines = secret.lines().map(str::trim).filter(|l| l.chars().count() >= MIN_SECRET_FRAGMENT);
                needles.extend(lines.map(str::to_string));
            }
        }
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Redactor { needles }
    }

    /// How far past a cut the text must be seen for a value starting before the cut.
    fn lookahead(&self) -> usize {
        self.needles.first().map_or(0, |n| n.len().saturating_sub(1)).min(MAX_LOOKAHEAD)
    }

    /// `text` with every secret blanked.
    pub fn redact(&self, text: &str) -> String {
        self.redact_prefix(text, text.len())
    }

    /// The first `keep` bytes of `text` (a char boundary) with every secret
    /// blanked: one found anywhere in `text` that starts before `keep` is blanked
    /// whole, so a value cut in two leaves no part of itself behind.
    fn redact_prefix(&self, text: &str, keep: usize) -> String {
        let mut found: Vec<(usize, usize)> = Vec::new();
        for needle in &self.needles {
            found.extend(text.match_indices(needle.as_str()).map(|(at, _)| (at, at + needle.len())));
        }
        found.sort_unstable();
        let mut out = String::with_capacity(keep.min(text.len()));
        let mut at = 0;
        for (start, end) in found {
            if start >= keep {
                break;
            }
            if start >= at {
                out.push_str(&text[at..start]);
                out.push_str("[redacted]");
            }
            at = at.max(end);
        }
        if at < keep {
            out.push_str(&text[at..keep]);
        }
        out
    }

    /// One line of output as it is logged: invalid UTF-8 replaced, secrets
    /// blanked, cut at [`MAX_LINE`] with a marker; None when blank.
    fn render_line(&self, raw: &[u8]) -> Option<String> {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = String::from_utf8_lossy(raw);
        let cut = raw.len() > MAX_LINE;
        let keep = if cut { floor_char_boundary(&text, MAX_LINE) } else { text.len() };
        let mut line = self.redact_prefix(&text, keep);
        if line.trim().is_empty() {
            return None;
        }
        if cut {
            line.push_str(&format!(" [line cut at {MAX_LINE} bytes; the rest is dropped]"));
        }
        Some(line)
    }
}

/// The largest char boundary of `text` at or below `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The last lines of some output: at most [`TAIL_LINES`] lines, each cut at
/// [`TAIL_LINE_BYTES`] (it keeps its start, where messages say what went wrong).
#[derive(Debug, Default)]
struct Tail {
    lines: std::collections::VecDeque<String>,
}

impl Tail {
    fn push(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let line = match floor_char_boundary(line, TAIL_LINE_BYTES) {
            keep if keep < line.len() => format!("{}…", &line[..keep]),
            _ => line.to_string(),
        };
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    fn text(&self) -> Option<String> {
        (!self.lines.is_empty()).then(|| self.lines.iter().map(String::as_str).collect::<Vec<_>>().join(" | "))
    }
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

/// Runs a helper to completion under `limit` and returns its standard output
/// (the first [`HELPER_STDOUT`] bytes). A failure quotes the last lines of its
/// standard error. Both pipes are drained to their end whatever they hold, and
/// nothing of them reaches the log or an error unredacted: a helper's error
/// message may echo its environment. When `stop` resolves or `limit` passes, the
/// helper's process group (its own, with whatever it started) is killed and
/// awaited: no process of it is left to mount once this returns (one that left
/// the group with setsid is beyond reach).
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
    let redactor = Redactor::new(secrets);
    let mut child = children.spawn(&mut cmd, &argv[0])?;
    let pid = child.id().map(|p| p as i32);
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let ran = async {
        let mut tail = Tail::default();
        let errors = async {
            if let Some(pipe) = stderr.take() {
                drain_lines(pipe, &redactor, 16 * 1024, |line| tail.push(&line)).await;
            }
        };
        let (out, ()) = tokio::join!(read_head(stdout.take(), HELPER_STDOUT + redactor.lookahead()), errors);
        (children.wait(&mut child).await, out, tail)
    };
    let waited = tokio::select! {
        biased;
        _ = stop => Err(HelperError::Stopped { command: command.clone() }),
        done = tokio::time::timeout(limit, ran) => done.map_err(|_| HelperError::TimedOut { command: command.clone(), limit }),
    };
    let (status, out, tail) = match waited {
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
    let out = String::from_utf8_lossy(&out);
    let out = redactor.redact_prefix(&out, floor_char_boundary(&out, HELPER_STDOUT));
    match status {
        Ok(s) if s.success() => Ok(out),
        other => Err(HelperError::Failed {
            command,
            status: describe_exit(&other),
            code: other.as_ref().ok().and_then(|s| s.code()),
            stderr: tail.text(),
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

/// The first `keep` bytes of a pipe; the rest is read and dropped.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>, keep: usize) -> Vec<u8> {
    let mut head = Vec::new();
    let Some(mut pipe) = pipe else { return head };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let room = keep.saturating_sub(head.len());
                head.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    head
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

    fn lines_of(input: &[&[u8]], lookahead: usize) -> Vec<Vec<u8>> {
        let mut lines = Lines::new(lookahead);
        let mut out = Vec::new();
        for chunk in input {
            lines.feed(chunk, &mut |l: &[u8]| out.push(l.to_vec()));
        }
        lines.finish(&mut |l: &[u8]| out.push(l.to_vec()));
        out
    }

    #[test]
    fn redacts_every_secret() {
        let r = Redactor::new(&["s3cr3t".to_string(), "AKIAXYZ".to_string(), String::new()]);
        assert_eq!(r.redact("key=AKIAXYZ pass=s3cr3t s3cr3t"), "key=[redacted] pass=[redacted] [redacted]");
        assert_eq!(r.redact("nothing here"), "nothing here");
        // Overlapping values are blanked as one.
        let r = Redactor::new(&["abcdef".to_string(), "defghi".to_string()]);
        assert_eq!(r.redact("x abcdefghi y"), "x [redacted] y");
    }

    #[test]
    fn a_multiline_secret_is_blanked_line_by_line_but_not_its_short_lines() {
        let pem =
            "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n  AQEFAASCBKcwggSjAgEAAoIB  \n}\nZw==\n-----END KEY-----\n";
        let r = Redactor::new(&[pem.to_string()]);
        // Echoed line by line, each line of the value is blanked on its own ...
        assert_eq!(r.redact("got MIIEvQIBADANBgkqhkiG9w0B"), "got [redacted]");
        assert_eq!(r.redact("AQEFAASCBKcwggSjAgEAAoIB"), "[redacted]");
        assert_eq!(r.redact("-----END KEY-----"), "[redacted]");
        // ... but not the lines shorter than the minimum, which would blank innocent output.
        assert_eq!(r.redact("} Zw== done"), "} Zw== done");
        assert_eq!(r.redact(""), "");
        // The whole value, where it appears whole.
        assert_eq!(r.redact(&format!("<{pem}>")), "<[redacted]>");
    }

    #[test]
    fn invalid_utf8_is_kept_lossily_and_reading_goes_on() {
        let out = lines_of(&[b"bad \xff line\n", b"\xfe\xfd\nnext\r\n", b"tail without newline"], 0);
        let rendered: Vec<String> = out.iter().filter_map(|l| Redactor::default().render_line(l)).collect();
        assert_eq!(rendered, ["bad \u{FFFD} line", "\u{FFFD}\u{FFFD}", "next", "tail without newline"]);
    }

    #[test]
    fn a_line_without_end_is_cut_and_the_rest_skipped() {
        // 1 MB without a newline, in chunks, then a normal line.
        let chunk = vec![b'x'; 10_000];
        let mut input: Vec<&[u8]> = vec![&chunk; 100];
        input.push(b"\nafter\n");
        let out = lines_of(&input, 0);
        assert_eq!(out.len(), 2, "the long line once, then the next line");
        assert_eq!(out[0].len(), MAX_LINE + 1);
        assert_eq!(out[1], b"after");
        let line = Redactor::default().render_line(&out[0]).unwrap();
        assert!(line.starts_with(&"x".repeat(MAX_LINE)) && line.ends_with("the rest is dropped]"), "{line}");
        assert!(line.len() < MAX_LINE + 100);
        // Exactly MAX_LINE bytes is not cut.
        let exact = vec![b'y'; MAX_LINE];
        let out = lines_of(&[&exact, b"\n"], 0);
        assert_eq!(Redactor::default().render_line(&out[0]).unwrap(), "y".repeat(MAX_LINE));
    }

    #[test]
    fn a_secret_across_the_cut_leaves_no_part_behind() {
        let secret = "TOPSECRET-0123456789".to_string();
        let r = Redactor::new(std::slice::from_ref(&secret));
        // The value starts 5 bytes before the cut.
        let mut input = "a".repeat(MAX_LINE - 5);
        input.push_str(&secret);
        input.push_str(&"b".repeat(10_000));
        let out = lines_of(&[input.as_bytes()], r.lookahead());
        let line = r.render_line(&out[0]).unwrap();
        assert!(!line.contains("TOPSE"), "part of the secret is left: {}", &line[MAX_LINE - 20..]);
        assert!(line.contains("[redacted]"), "{}", &line[MAX_LINE - 20..]);
        // Whole earlier values shorten the text; a later one must not slide into view.
        let input = format!("{}{}", secret.repeat(400), "c".repeat(1000));
        let out = lines_of(&[input.as_bytes()], r.lookahead());
        let line = r.render_line(&out[0]).unwrap();
        assert!(!line.contains("TOP") && !line.contains("SECRET"), "{line}");
    }

    #[test]
    fn the_tail_keeps_the_last_lines_within_bounds() {
        let mut tail = Tail::default();
        assert_eq!(tail.text(), None);
        for i in 0..20 {
            tail.push(&format!("line {i}"));
        }
        tail.push("   ");
        assert_eq!(tail.text().unwrap(), "line 15 | line 16 | line 17 | line 18 | line 19");
        tail.push(&"é".repeat(5000));
        let text = tail.text().unwrap();
        assert!(text.ends_with(&format!(" | {}…", "é".repeat(TAIL_LINE_BYTES / 2))), "{text}");
        for _ in 0..10 {
            tail.push(&"w".repeat(5000));
        }
        assert_eq!(tail.text().unwrap(), vec![format!("{}…", "w".repeat(TAIL_LINE_BYTES)); TAIL_LINES].join(" | "));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_daemon_is_drained_to_its_end_and_reported_by_its_last_lines() {
        let children = Children::new();
        let argv: Vec<String> = ["sh", "-c", "printf 'one \\377\\n'; sleep 0.2; echo two >&2; sleep 0.2; echo 'the key is hunter22'; head -c 3000000 /dev/zero | tr '\\0' x; echo; echo three; exit 3"]
            .map(String::from)
            .to_vec();
        let secrets = ["hunter22".to_string()];
        let mut daemon =
            Daemon::spawn(&children, Launch { argv: &argv, env: &BTreeMap::new(), secrets: &secrets }).unwrap();
        let status = daemon.wait(&children).await.unwrap();
        // Killed by SIGPIPE if a pipe had been closed under it.
        assert_eq!(status.code(), Some(3), "{status:?}");
        let last = daemon.last_output().await.unwrap();
        let long = format!("{}…", "x".repeat(TAIL_LINE_BYTES));
        assert_eq!(last, format!("one \u{FFFD} | two | the key is [redacted] | {long} | three"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_helper_keeps_bounded_output_and_reports_its_last_lines() {
        let children = Children::new();
        let limit = std::time::Duration::from_secs(20);
        let argv: Vec<String> = ["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' o; echo 'mkfs: error one' >&2; head -c 5000000 /dev/zero | tr '\\0' e >&2; echo >&2; echo 'mkfs: bad pass s3cr3t' >&2; exit 1"]
            .map(String::from)
            .to_vec();
        let err =
            run_helper(&children, &argv, &BTreeMap::new(), &["s3cr3t".to_string()], limit, std::future::pending())
                .await
                .unwrap_err();
        let HelperError::Failed { code, stderr: Some(stderr), .. } = &err else { panic!("{err}") };
        assert_eq!(*code, Some(1));
        let long = format!("{}…", "e".repeat(TAIL_LINE_BYTES));
        assert_eq!(stderr, &format!("mkfs: error one | {long} | mkfs: bad pass [redacted]"));
        let argv: Vec<String> = ["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' o"].map(String::from).to_vec();
        let out = run_helper(&children, &argv, &BTreeMap::new(), &[], limit, std::future::pending()).await.unwrap();
        assert_eq!(out.len(), HELPER_STDOUT);
    }

    #[test]
    fn reads_the_parent_from_stat() {
        assert_eq!(parent_of("42 (sleep) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_of("43 (a (b) c) Z 1 43 43 0 -1"), Some(1));
        assert_eq!(parent_of("garbage"), None);
    }

    /// Being a subreaper lasts as long as the process: this test runs in a child
    /// test process, so the orphans of the other tests here are not adopted by
    /// this one.
    #[test]
    fn reaps_orphans_without_stealing_our_children() {
        let test = concat!(module_path!(), "::reaps_orphans_without_stealing_our_children");
        crate::alone::in_own_process(test, reaps_orphans_as_subreaper);
    }

    async fn reaps_orphans_as_subreaper() {
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
