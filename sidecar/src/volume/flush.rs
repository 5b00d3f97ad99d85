//! Writes a FUSE daemon has acknowledged but not yet sent to its backend: which
//! daemons hold such writes, how to ask them, and the wait for them before a volume
//! is unmounted.
//!
//! rclone with a VFS cache (`--vfs-cache-mode minimal|writes|full`) answers a close
//! at once and uploads the file `--vfs-write-back` later (5 s by default); unmounted
//! or signalled meanwhile, it exits 0 with its queue dropped. So such a daemon is
//! started with a remote control (rc) of sidemount's own, and before its volume is
//! unmounted the supervisor asks it (`vfs/stats`) until its uploads are done, inside
//! the shutdown's deadlines. Daemons that upload on close (s3fs), pass writes
//! through (bindfs) or flush when unmounted (ObjectiveFS) need nothing here.
//!
//! The pod's containers share one network namespace and rclone 1.60 serves its rc
//! on TCP only, while the rc can read every remote with the daemon's credentials.
//! So it listens on 127.0.0.1 at a port the kernel picks, behind a random user and
//! password given by environment (never argv: `/proc/PID/cmdline` is world-readable),
//! and the supervisor finds the port among the sockets the daemon itself holds, so
//! no other listener can answer in its place.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use tokio::sync::watch;
use tokio::time::{sleep, Instant};
use tracing::{debug, error, info, warn};

use super::{Deadlines, Task};
use crate::spec::Source;

/// rclone subcommands that serve a VFS as a mount.
const MOUNT_COMMANDS: &[&str] = &["mount", "cmount", "mount2", "nfsmount"];
/// VFS cache modes that keep written files for a later upload (`off` writes through).
const CACHING_MODES: &[&str] = &["minimal", "writes", "full"];
/// Kept for unmounting and the daemon's exit after the wait.
const EXIT_RESERVE: Duration = Duration::from_secs(2);
/// Between two questions to the daemon.
const POLL: Duration = Duration::from_millis(250);
/// The longest one question may take; it gets at least `ASK_MIN` even at a deadline,
/// so a second signal still learns what it gives up.
const ASK_MAX: Duration = Duration::from_secs(2);
const ASK_MIN: Duration = Duration::from_millis(500);
/// vfs/stats answers about 1 KiB.
const MAX_BODY: usize = 64 * 1024;
/// The pending files named in the log, of at most `MAX_META_ENTRIES` looked at.
const MAX_NAMES: usize = 50;
const MAX_META_ENTRIES: usize = 100_000;
/// A cache entry's metadata is a few hundred bytes.
const MAX_META_FILE: u64 = 64 * 1024;
/// Listing the pending files: the cache is on local disk, but bounded all the same.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a daemon could not be given sidemount's remote control.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{0}")]
    OwnRemoteControl(String),
    #[error("cannot draw a password for rclone's remote control from /dev/urandom: {0}")]
    Random(std::io::Error),
}

/// Why one question to the daemon's remote control got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("cannot read the daemon's sockets in /proc/{pid}: {source}")]
    Sockets { pid: i32, source: std::io::Error },
    #[error("the daemon listens on no loopback port: its remote control is not up")]
    NoListener,
    #[error("cannot connect to the remote control at 127.0.0.1:{port}: {source}")]
    Connect { port: u16, source: std::io::Error },
    #[error("the remote control at 127.0.0.1:{port} did not answer within {limit:?}")]
    TimedOut { port: u16, limit: Duration },
    #[error("the exchange with the remote control at 127.0.0.1:{port} failed: {source}")]
    Http { port: u16, source: hyper::Error },
    #[error("vfs/stats at 127.0.0.1:{port} answered {status}: {body}")]
    Refused { port: u16, status: u16, body: String },
    #[error("vfs/stats at 127.0.0.1:{port} answered more than {MAX_BODY} bytes")]
    TooLarge { port: u16 },
    #[error("vfs/stats at 127.0.0.1:{port} answered what is not its JSON: {source}")]
    Unreadable { port: u16, source: StatsError },
    #[error("cannot read rclone's cache metadata: {source}")]
    Cache { source: std::io::Error },
}

/// Why a `vfs/stats` answer could not be read (see `parse_stats`).
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("diskCache.{key} is not a count: {value}")]
    NotACount { key: String, value: serde_json::Value },
}

/// The lines saying which volumes lost writes; the supervisor does not exit 0 when
/// there is one.
#[derive(Debug, Default)]
pub struct Unflushed(Mutex<Vec<String>>);

impl Unflushed {
    pub fn record(&self, line: String) {
        self.0.lock().expect("unflushed lock").push(line);
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("unflushed lock"))
    }
}

/// sidemount's remote control of one rclone daemon: how to ask it about its uploads.
#[derive(Clone, PartialEq, Eq)]
pub struct Writeback {
    user: String,
    password: String,
}

impl fmt::Debug for Writeback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writeback").field("user", &self.user).field("password", &"[redacted]").finish()
    }
}

impl Writeback {
    fn authorization(&self) -> String {
        let pair = format!("{}:{}", self.user, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }
}

// ---------------------------------------------------------------- what a daemon needs

/// Whether `command` runs an rclone mount.
fn is_rclone_mount(command: &[String]) -> bool {
    let program = command.first().map(|p| Path::new(p).file_name().and_then(|n| n.to_str()).unwrap_or(""));
    program == Some("rclone") && args(command).any(|a| MOUNT_COMMANDS.contains(&a))
}

/// The arguments after the program, up to a `--`.
fn args(command: &[String]) -> impl Iterator<Item = &str> {
    command.iter().skip(1).map(String::as_str).take_while(|a| *a != "--")
}

/// The value of `--name VALUE` or `--name=VALUE`; the last one wins, as in rclone.
fn flag_value(command: &[String], name: &str) -> Option<String> {
    let flag = format!("--{name}");
    let mut found = None;
    let mut args = args(command);
    while let Some(arg) = args.next() {
        if arg == flag {
            found = args.next().map(str::to_string);
        } else if let Some(value) = arg.strip_prefix(&flag).and_then(|rest| rest.strip_prefix('=')) {
            found = Some(value.to_string());
        }
    }
    found
}

/// The VFS cache mode of an rclone mount that keeps writes for later: from argv,
/// else from `RCLONE_VFS_CACHE_MODE` (argv wins in rclone). None for any other daemon.
pub fn caching_mode(command: &[String], env: impl Fn(&str) -> Option<String>) -> Option<String> {
    if !is_rclone_mount(command) {
        return None;
    }
    let mode = flag_value(command, "vfs-cache-mode").or_else(|| env("RCLONE_VFS_CACHE_MODE"))?;
    CACHING_MODES.contains(&mode.as_str()).then_some(mode)
}

/// The first sign that the spec configures rclone's remote control itself: an
/// `--rc…` flag, or an `RCLONE_RC…` variable among `env_names`.
fn own_remote_control<'a>(command: &'a [String], mut env_names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let is_rc_flag =
        |a: &&str| a.strip_prefix("--rc").is_some_and(|rest| rest.is_empty() || rest.starts_with(['=', '-', '_']));
    args(command).find(is_rc_flag).or_else(|| env_names.find(|k| *k == "RCLONE_RC" || k.starts_with("RCLONE_RC_")))
}

/// Why a spec that caches writes cannot have its own remote control: sidemount's would
/// not be started, and the queue not waited for at shutdown. None when it may.
pub fn own_remote_control_refusal(command: &[String], env: &BTreeMap<String, String>) -> Option<String> {
    let mode = caching_mode(command, |k| env.get(k).cloned())?;
    let own = own_remote_control(command, env.keys().map(String::as_str))?;
    Some(format!(
        "rclone caches writes here (--vfs-cache-mode {mode}) and the spec configures its remote control ({own}): \
         sidemount starts rclone's remote control itself, behind a password only it knows, to wait for the queued \
         uploads at shutdown; remove every --rc flag and RCLONE_RC variable"
    ))
}

/// Gives a daemon that queues writes a remote control of sidemount's own: the
/// variables are added to `env` (pinning every rc setting that could open it to the
/// pod), the password to `secrets`, the values kept out of the log. None when the
/// daemon needs nothing.
pub fn prepare(
    source: &Source,
    env: &mut BTreeMap<String, String>,
    secrets: &mut Vec<String>,
) -> Result<Option<Writeback>, PrepareError> {
    let Source::Fuse { command } = source else { return Ok(None) };
    // The container's own environment reaches the daemon too, below `env`.
    let Some(mode) = caching_mode(command, |k| env.get(k).cloned().or_else(|| std::env::var(k).ok())) else {
        return Ok(None);
    };
    // The spec's own is refused by validation; a Secret's is seen only here.
    if let Some(message) = own_remote_control_refusal(command, env) {
        return Err(PrepareError::OwnRemoteControl(message));
    }
    let writeback = Writeback { user: "sidemount".into(), password: random_hex(24).map_err(PrepareError::Random)? };
    let settings = [
        ("RCLONE_RC", "true"),
        // Port 0: the kernel picks a free one, nobody can take it first.
        ("RCLONE_RC_ADDR", "127.0.0.1:0"),
        ("RCLONE_RC_USER", &writeback.user),
        ("RCLONE_RC_PASS", &writeback.password),
        ("RCLONE_RC_NO_AUTH", "false"),
        ("RCLONE_RC_SERVE", "false"),
        ("RCLONE_RC_WEB_GUI", "false"),
        ("RCLONE_RC_FILES", ""),
        ("RCLONE_RC_HTPASSWD", ""),
        ("RCLONE_RC_BASEURL", ""),
        ("RCLONE_RC_CERT", ""),
        ("RCLONE_RC_KEY", ""),
    ];
    env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    secrets.push(writeback.password.clone());
    debug!(mode, "rclone caches writes: its remote control is started to wait for its uploads at shutdown");
    Ok(Some(writeback))
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

// ---------------------------------------------------------------- finding the rc

/// The inode of a socket, from its `/proc/PID/fd` link (`socket:[12345]`).
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// A listening socket in `/proc/PID/net/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listener {
    addr: Ipv4Addr,
    port: u16,
    inode: u64,
}

/// The listening sockets of a `/proc/PID/net/tcp` table (state `0A`). The kernel
/// prints an address's bytes (network order) as one host-order integer, a port as
/// its value; both in hex.
fn tcp_listeners(table: &str) -> Vec<Listener> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) != Some(&"0A") {
                return None;
            }
            let (addr, port) = cols.get(1)?.split_once(':')?;
            let addr = Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.to_ne_bytes());
            Some(Listener { addr, port: u16::from_str_radix(port, 16).ok()?, inode: cols.get(9)?.parse().ok()? })
        })
        .collect()
}

/// The loopback ports the daemon itself listens on: its remote control's.
fn own_ports(pid: i32) -> Result<Vec<u16>, AskError> {
    let sockets = |source| AskError::Sockets { pid, source };
    let mut inodes = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(sockets)?.flatten() {
        if let Some(inode) = std::fs::read_link(entry.path()).ok().and_then(|l| l.to_str().and_then(socket_inode)) {
            inodes.insert(inode);
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).map_err(sockets)?;
    let ports: Vec<u16> = tcp_listeners(&table)
        .into_iter()
        .filter(|l| l.addr == Ipv4Addr::LOCALHOST && inodes.contains(&l.inode))
        .map(|l| l.port)
        .collect();
    if ports.is_empty() {
        return Err(AskError::NoListener);
    }
    Ok(ports)
}

/// Whether the process is there and not a zombie (its parent, the supervisor, has not
/// reaped it yet when it exited).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(false)
}

// ---------------------------------------------------------------- asking

/// What rclone's disk cache still has to upload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queue {
    pub in_progress: u64,
    pub queued: u64,
    /// Files whose last upload failed (retried while queued).
    pub errored: u64,
    /// Files written but not queued yet: still open, or closed so recently that
    /// rclone has not had the kernel's release (which comes after close returns).
    pub unqueued: u64,
    /// The cache's data directory, and the one of its metadata (which says which file
    /// is dirty).
    pub data: Option<PathBuf>,
    pub meta: Option<PathBuf>,
}

impl Queue {
    pub fn pending(&self) -> u64 {
        self.in_progress.saturating_add(self.queued).saturating_add(self.unqueued)
    }
}

/// An empty upload queue is confirmed by the cache's metadata: a file rclone marks
/// dirty at its first write is queued only when the kernel releases it.
fn confirm_empty(mut queue: Queue, dirty: std::io::Result<Vec<PathBuf>>) -> Result<Queue, AskError> {
    match dirty {
        Ok(files) => queue.unqueued = files.len() as u64,
        // Nothing was ever cached.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(AskError::Cache { source }),
    }
    Ok(queue)
}

/// Reads rclone's `vfs/stats` answer. No `diskCache` means no cache: nothing queued.
fn parse_stats(body: &[u8]) -> Result<Queue, StatsError> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    if !value.is_object() {
        return Err(StatsError::NotAnObject);
    }
    let Some(cache) = value.get("diskCache") else { return Ok(Queue::default()) };
    let count = |key: &str| match cache.get(key) {
        None => Ok(0),
        Some(n) => n.as_u64().ok_or_else(|| StatsError::NotACount { key: key.into(), value: n.clone() }),
    };
    let path = |key: &str| cache.get(key).and_then(|p| p.as_str()).filter(|p| !p.is_empty()).map(PathBuf::from);
    Ok(Queue {
        in_progress: count("uploadsInProgress")?,
        queued: count("uploadsQueued")?,
        errored: count("erroredFiles")?,
        unqueued: 0,
        data: path("path"),
        meta: path("pathMeta"),
    })
}

/// The question asked while waiting; a trait so the wait is tested without rclone.
trait Ask {
    async fn stats(&self, limit: Duration) -> Result<Queue, AskError>;
    fn alive(&self) -> bool;
}

/// The real daemon: `vfs/stats` over HTTP at each port it listens on.
struct Daemon<'a> {
    pid: i32,
    writeback: &'a Writeback,
}

impl Ask for Daemon<'_> {
    async fn stats(&self, limit: Duration) -> Result<Queue, AskError> {
        let mut last = AskError::NoListener;
        for port in own_ports(self.pid)? {
            match vfs_stats(port, self.writeback, limit).await {
                Ok(queue) if queue.pending() > 0 => return Ok(queue),
                Ok(queue) => {
                    let Some(meta) = queue.meta.clone() else { return Ok(queue) };
                    return confirm_empty(queue, list_dirty(meta).await);
                }
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    fn alive(&self) -> bool {
        alive(self.pid)
    }
}

/// One `POST /vfs/stats` to 127.0.0.1:`port`, all of it within `limit`.
async fn vfs_stats(port: u16, writeback: &Writeback, limit: Duration) -> Result<Queue, AskError> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|source| AskError::Connect { port, source })?;
        let http = |source| AskError::Http { port, source };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(http)?;
        let request = hyper::Request::post("/vfs/stats")
            .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
            .header(hyper::header::AUTHORIZATION, writeback.authorization())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("a request built from constants");
        let answer = async move {
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status().as_u16();
            let body = match Limited::new(response.into_body(), MAX_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    return Err(match err.downcast::<hyper::Error>() {
                        Ok(source) => AskError::Http { port, source: *source },
                        Err(_) => AskError::TooLarge { port },
                    })
                }
            };
            Ok((status, body))
        };
        // The connection is driven beside the exchange; it ends when the sender is dropped.
        let (answer, _) = tokio::join!(answer, conn);
        let (status, body) = answer?;
        if status != 200 {
            let body = String::from_utf8_lossy(&body).lines().next().unwrap_or("").chars().take(200).collect();
            return Err(AskError::Refused { port, status, body });
        }
        parse_stats(&body).map_err(|source| AskError::Unreadable { port, source })
    };
    tokio::time::timeout(limit, exchange).await.unwrap_or(Err(AskError::TimedOut { port, limit }))
}

// ---------------------------------------------------------------- the wait

/// How the wait for a daemon's uploads ended.
#[derive(Debug)]
enum Outcome {
    /// Nothing left to upload.
    Flushed { waited: Duration, had: u64 },
    /// The daemon exited meanwhile: nothing to wait for any more.
    DaemonGone,
    /// The daemon had not mounted yet and does not answer: nobody wrote through it.
    NotMounted,
    /// Uploads still pending when the wait had to end (`hurried`: by a second signal).
    Pending { queue: Queue, hurried: bool },
    /// The daemon never answered.
    Unanswered { error: AskError, hurried: bool },
}

/// Until when the wait may last: the budget but a reserve for the unmount and the
/// daemon's exit after it.
fn wait_until(deadlines: Deadlines, now: Instant) -> Instant {
    let left = deadlines.last.saturating_duration_since(now);
    now + left - EXIT_RESERVE.min(left / 4)
}

/// Asks until nothing is left to upload, `until` comes, or a second signal says stop;
/// every question bounded.
/// `mounted`: the daemon's mount was made, so an app may have written; a daemon
/// stopped before that is waited for only if it answers (it may be re-queuing an
/// earlier instance's uploads from its cache), never for its silence.
async fn drain<A: Ask>(
    daemon: &A,
    mounted: bool,
    until: Instant,
    mut hurry: watch::Receiver<bool>,
    poll: Duration,
) -> Outcome {
    let started = Instant::now();
    let mut had = 0;
    let mut last: Option<Queue> = None;
    loop {
        if !daemon.alive() {
            return Outcome::DaemonGone;
        }
        let limit = ASK_MAX.min(until.saturating_duration_since(Instant::now())).max(ASK_MIN);
        let answer = daemon.stats(limit).await;
        let hurried = *hurry.borrow();
        match answer {
            Ok(queue) if queue.pending() == 0 => return Outcome::Flushed { waited: started.elapsed(), had },
            Ok(queue) => {
                if last.as_ref().map(Queue::pending) != Some(queue.pending()) {
                    info!(
                        in_progress = queue.in_progress,
                        queued = queue.queued,
                        not_yet_queued = queue.unqueued,
                        errored = queue.errored,
                        "waiting for rclone's queued uploads before unmounting"
                    );
                }
                had = had.max(queue.pending());
                last = Some(queue);
            }
            Err(err) => {
                if !daemon.alive() {
                    return Outcome::DaemonGone;
                }
                if !mounted && last.is_none() {
                    return Outcome::NotMounted;
                }
                debug!(%err, "the remote control did not answer; asking again");
                if hurried || Instant::now() >= until {
                    return match last {
                        Some(queue) => Outcome::Pending { queue, hurried },
                        None => Outcome::Unanswered { error: err, hurried },
                    };
                }
                sleep_or_hurry(poll.min(until.saturating_duration_since(Instant::now())), &mut hurry).await;
                continue;
            }
        }
        if hurried || Instant::now() >= until {
            return Outcome::Pending { queue: last.expect("a queue was just seen"), hurried };
        }
        sleep_or_hurry(poll.min(until.saturating_duration_since(Instant::now())), &mut hurry).await;
    }
}

async fn sleep_or_hurry(pause: Duration, hurry: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = sleep(pause) => {}
        // A closed channel is no signal: sleep on.
        _ = async { if hurry.wait_for(|h| *h).await.is_err() { std::future::pending::<()>().await } } => {}
    }
}

/// Before a volume is unmounted: waits for the uploads its daemon has queued, and
/// when some are still pending at the end, says so loudly, naming the files, and
/// records it so the supervisor does not exit 0.
pub(super) async fn before_unmount(task: &Task, pid: Option<i32>, deadlines: Deadlines) {
    let (Some(writeback), Some(pid)) = (task.writeback.as_ref(), pid) else { return };
    let (ctx, volume, stage) = (&task.ctx, &task.volume.name, task.stage_path());
    let mounted = task.fresh().await.map_or(true, |t| t.volume_at(&stage, |m| task.matcher.matches(m)).is_some());
    let until = wait_until(deadlines, Instant::now());
    let daemon = Daemon { pid, writeback };
    let cut = |hurried: bool| if hurried { "a second signal stopped the wait" } else { "the shutdown deadline came" };
    match drain(&daemon, mounted, until, ctx.hurry.clone(), POLL).await {
        Outcome::Flushed { had: 0, .. } => debug!("rclone had no upload queued"),
        Outcome::Flushed { waited, had } => info!(waited = ?waited, uploads = had, "rclone's queued uploads are done"),
        Outcome::DaemonGone => warn!(pid, "the daemon exited before its uploads could be confirmed"),
        Outcome::NotMounted => debug!("stopped before it mounted, and its remote control does not answer"),
        Outcome::Pending { queue, hurried } => {
            let files = match queue.meta.clone() {
                None => Err("rclone did not say where its cache is".to_string()),
                Some(meta) => list_dirty(meta).await.map_err(|e| format!("cannot list them: {e}")),
            };
            let named = match files {
                Ok(files) => describe_files(&files, queue.pending()),
                Err(why) => format!("which files: unknown, {why}"),
            };
            let kept = queue.data.as_ref().map(|d| format!("; their data is in rclone's cache at {}", d.display()));
            let line = format!(
                "{} upload(s) still pending when {} ({} in progress, {} queued, {} written but not queued yet): these \
                 files are not in the backend: {named}{}; raise SIDEMOUNT_SHUTDOWN_TIMEOUT (and the pod's \
                 terminationGracePeriodSeconds) above --vfs-write-back plus the upload time, or lower --vfs-write-back",
                queue.pending(),
                cut(hurried),
                queue.in_progress,
                queue.queued,
                queue.unqueued,
                kept.unwrap_or_default(),
            );
            error!("{line}");
            ctx.unflushed.record(format!("{volume}: {line}"));
        }
        Outcome::Unanswered { error: err, hurried } => {
            let line = format!(
                "rclone's remote control never answered before {} ({err}): whether files closed by the app are \
                 in the backend is unknown",
                cut(hurried)
            );
            error!("{line}");
            ctx.unflushed.record(format!("{volume}: {line}"));
        }
    }
}

// ---------------------------------------------------------------- naming the files

/// `dirty_files` off the runtime's thread (the walk reads files), bounded.
async fn list_dirty(meta: PathBuf) -> std::io::Result<Vec<PathBuf>> {
    match tokio::time::timeout(LIST_TIMEOUT, tokio::task::spawn_blocking(move || dirty_files(&meta))).await {
        Ok(Ok(listed)) => listed,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("took over {LIST_TIMEOUT:?}"))),
    }
}

/// Whether one of rclone's cache metadata files marks its file dirty (not uploaded).
fn is_dirty(meta: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(meta)
        .ok()
        .and_then(|v| v.get("Dirty").and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

/// The files rclone's cache marks dirty, as paths in the remote: its metadata
/// directory mirrors the remote's tree. Walked without following links, bounded in
/// entries and in the bytes read from each.
fn dirty_files(meta_root: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::io::Read;
    let mut dirty = Vec::new();
    let mut stack = vec![meta_root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if dir == meta_root => return Err(err),
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_META_ENTRIES {
                return Ok(dirty);
            }
            let Ok(kind) = entry.file_type() else { continue };
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let mut bytes = Vec::new();
                let read = std::fs::File::open(&path).and_then(|f| f.take(MAX_META_FILE).read_to_end(&mut bytes));
                if read.is_ok() && is_dirty(&bytes) {
                    dirty.push(path.strip_prefix(meta_root).unwrap_or(&path).to_path_buf());
                }
            }
        }
    }
    dirty.sort();
    Ok(dirty)
}

/// The files for the log, quoted (names may hold anything), at most `MAX_NAMES`.
fn describe_files(files: &[PathBuf], pending: u64) -> String {
    if files.is_empty() {
        return format!("none marked dirty in the cache, {pending} still counted by rclone");
    }
    let mut text: Vec<String> =
        files.iter().take(MAX_NAMES).map(|f| format!("{:?}", f.display().to_string())).collect();
    if files.len() > MAX_NAMES {
        text.push(format!("and {} more", files.len() - MAX_NAMES));
    }
    text.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    fn cmd(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn finds_the_caching_modes_of_rclone_mounts_only() {
        let mount = |extra: &[&str]| {
            let mut c = cmd(&["rclone", "mount", "remote:", "{mountpoint}"]);
            c.extend(extra.iter().map(|s| s.to_string()));
            c
        };
        assert_eq!(caching_mode(&mount(&["--vfs-cache-mode", "writes"]), no_env).as_deref(), Some("writes"));
        assert_eq!(caching_mode(&mount(&["--vfs-cache-mode=full"]), no_env).as_deref(), Some("full"));
        assert_eq!(caching_mode(&mount(&["--vfs-cache-mode", "minimal"]), no_env).as_deref(), Some("minimal"));
        assert_eq!(caching_mode(&mount(&["--vfs-cache-mode", "off"]), no_env), None);
        assert_eq!(caching_mode(&mount(&[]), no_env), None, "rclone's default is off");
        // rclone refuses these itself: no cache will ever run.
        assert_eq!(caching_mode(&mount(&["--vfs-cache-mode", "WRITES"]), no_env), None);
        assert_eq!(caching_mode(&mount(&["--vfs-cache-mode"]), no_env), None);
        // The last flag wins, as in rclone.
        assert_eq!(caching_mode(&mount(&["--vfs-cache-mode", "writes", "--vfs-cache-mode=off"]), no_env), None);
        assert_eq!(
            caching_mode(&mount(&["--vfs-cache-mode=off", "--vfs-cache-mode", "full"]), no_env).as_deref(),
            Some("full")
        );
        // The environment, below argv.
        let env = |k: &str| (k == "RCLONE_VFS_CACHE_MODE").then(|| "writes".to_string());
        assert_eq!(caching_mode(&mount(&[]), env).as_deref(), Some("writes"));
        assert_eq!(caching_mode(&mount(&["--vfs-cache-mode", "off"]), env), None);
        // Other programs and subcommands, a path to rclone, flags after `--`.
        let path = cmd(&["/usr/bin/rclone", "cmount", "r:", "{mountpoint}", "--vfs-cache-mode", "writes"]);
        assert_eq!(caching_mode(&path, no_env).as_deref(), Some("writes"));
        let wrapped = cmd(&["sh", "-c", "rclone mount r: /m --vfs-cache-mode writes", "{mountpoint}"]);
        assert_eq!(caching_mode(&wrapped, env), None);
        let bindfs = cmd(&["bindfs", "-f", "/src", "{mountpoint}", "--vfs-cache-mode", "writes"]);
        assert_eq!(caching_mode(&bindfs, env), None);
        let serve = cmd(&["rclone", "serve", "http", "r:", "--vfs-cache-mode", "writes"]);
        assert_eq!(caching_mode(&serve, no_env), None);
        let after_dashes = cmd(&["rclone", "mount", "r:", "{mountpoint}", "--", "--vfs-cache-mode", "writes"]);
        assert_eq!(caching_mode(&after_dashes, no_env), None);
        assert_eq!(caching_mode(&[], env), None);
    }

    #[test]
    fn refuses_an_own_remote_control_only_with_a_write_cache() {
        let caching = cmd(&["rclone", "mount", "r:", "{mountpoint}", "--vfs-cache-mode", "writes"]);
        let none = BTreeMap::new();
        assert_eq!(own_remote_control_refusal(&caching, &none), None);
        for flag in ["--rc", "--rc=true", "--rc-addr", "--rc-addr=:5572", "--rc-no-auth", "--rc_user"] {
            let mut c = caching.clone();
            c.push(flag.into());
            let message = own_remote_control_refusal(&c, &none).unwrap_or_else(|| panic!("{flag} not refused"));
            assert!(message.contains(flag) && message.contains("remove every --rc flag"), "{message}");
        }
        // Not rc flags.
        for flag in ["--rcfile", "--rclone"] {
            let mut c = caching.clone();
            c.push(flag.into());
            assert_eq!(own_remote_control_refusal(&c, &none), None, "{flag}");
        }
        let env = BTreeMap::from([("RCLONE_RC_ADDR".to_string(), ":5572".to_string())]);
        assert!(own_remote_control_refusal(&caching, &env).unwrap().contains("RCLONE_RC_ADDR"));
        let env = BTreeMap::from([("RCLONE_RCX".to_string(), "1".to_string())]);
        assert_eq!(own_remote_control_refusal(&caching, &env), None);
        // Without a write cache the user's rc is theirs to keep.
        let plain = cmd(&["rclone", "mount", "r:", "{mountpoint}", "--rc", "--rc-addr", ":5572"]);
        assert_eq!(own_remote_control_refusal(&plain, &none), None);
        let env = BTreeMap::from([("RCLONE_VFS_CACHE_MODE".to_string(), "full".to_string())]);
        let mut with_rc = plain.clone();
        with_rc.push("--rc".into());
        assert!(own_remote_control_refusal(&with_rc, &env).is_some(), "the cache mode from the spec's env");
    }

    #[test]
    fn validation_refuses_it_naming_the_command() {
        let raw = crate::spec::RawVolume {
            name: Some("data".into()),
            kind: Some("fuse".into()),
            command: Some(cmd(&["rclone", "mount", "r:", "{mountpoint}", "--vfs-cache-mode", "full", "--rc"])),
            ..Default::default()
        };
        let problems = crate::spec::validate(&raw).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "command");
        assert!(problems[0].1.contains("--rc"), "{problems:?}");
    }

    fn fuse(args: &[&str]) -> Source {
        Source::Fuse { command: cmd(args) }
    }

    #[test]
    fn prepares_a_private_remote_control_for_a_caching_rclone_only() {
        let source = fuse(&["rclone", "mount", "r:", "{mountpoint}", "--vfs-cache-mode", "writes"]);
        let mut env = BTreeMap::from([("RCLONE_VERBOSE".to_string(), "1".to_string())]);
        let mut secrets = vec!["s3cr3t".to_string()];
        let wb = prepare(&source, &mut env, &mut secrets).unwrap().expect("a write cache needs the rc");
        assert_eq!(env["RCLONE_RC"], "true");
        assert_eq!(env["RCLONE_RC_ADDR"], "127.0.0.1:0");
        assert_eq!(env["RCLONE_RC_USER"], wb.user);
        assert_eq!(env["RCLONE_RC_PASS"], wb.password);
        assert_eq!(env["RCLONE_RC_NO_AUTH"], "false");
        assert_eq!(env["RCLONE_RC_SERVE"], "false");
        assert_eq!(env["RCLONE_VERBOSE"], "1");
        assert_eq!(wb.password.len(), 48);
        assert!(wb.password.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(secrets, ["s3cr3t".to_string(), wb.password.clone()], "the password is kept out of the log");
        assert!(!format!("{wb:?}").contains(&wb.password), "Debug shows the password");
        let again = prepare(&source, &mut BTreeMap::new(), &mut Vec::new()).unwrap().unwrap();
        assert_ne!(again.password, wb.password, "each start draws its own password");

        for other in [
            fuse(&["bindfs", "-f", "/src", "{mountpoint}"]),
            fuse(&["s3fs", "bucket", "{mountpoint}", "-f"]),
            fuse(&["rclone", "mount", "r:", "{mountpoint}"]),
            fuse(&["rclone", "mount", "r:", "{mountpoint}", "--vfs-cache-mode", "off", "--rc"]),
            Source::ObjectiveFs { filesystem: "s3://b".into() },
            Source::Zfs { dataset: "tank/a".into(), create: None },
        ] {
            let mut env = BTreeMap::new();
            assert!(prepare(&other, &mut env, &mut Vec::new()).unwrap().is_none(), "{other:?}");
            assert!(env.is_empty(), "{other:?} got {env:?}");
        }
    }

    #[test]
    fn refuses_an_own_remote_control_from_a_secret() {
        let source = fuse(&["rclone", "mount", "r:", "{mountpoint}", "--vfs-cache-mode", "writes"]);
        let mut env = BTreeMap::from([("RCLONE_RC_PASS".to_string(), "theirs".to_string())]);
        let err = prepare(&source, &mut env, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("RCLONE_RC_PASS"), "{err}");
        assert!(!err.to_string().contains("theirs"), "the value is a secret: {err}");
    }

    #[test]
    fn reads_socket_links_and_listeners() {
        assert_eq!(socket_inode("socket:[123456]"), Some(123456));
        assert_eq!(socket_inode("pipe:[1]"), None);
        assert_eq!(socket_inode("socket:[12x]"), None);
        assert_eq!(socket_inode("/dev/fuse"), None);
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:AE8B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778899 1 0000000000000000 100 0 0 10 0
   1: 00000000:2652 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   2: 0100007F:AE8B 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
   3: garbage
   4: 0100007F:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3333
";
        let listeners = tcp_listeners(table);
        assert_eq!(
            listeners,
            [
                Listener { addr: Ipv4Addr::LOCALHOST, port: 0xAE8B, inode: 778899 },
                Listener { addr: Ipv4Addr::UNSPECIFIED, port: 0x2652, inode: 1111 },
            ]
        );
        assert!(tcp_listeners("").is_empty());
    }

    #[test]
    fn finds_its_own_listener_and_no_one_elses() {
        let mine = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = mine.local_addr().unwrap().port();
        let ports = own_ports(std::process::id() as i32).unwrap();
        assert!(ports.contains(&port), "{ports:?} lacks {port}");
        // A process with no listener: `sleep`, a child of ours.
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(Duration::from_millis(100));
        assert!(matches!(own_ports(pid), Err(AskError::NoListener)), "{:?}", own_ports(pid));
        assert!(alive(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(pid));
        assert!(!alive(i32::MAX));
    }

    #[test]
    fn parses_the_stats_of_rclone_1_60() {
        let body = include_bytes!("../../tests/fixtures/rclone/vfs-stats-1.60.1.json");
        let queue = parse_stats(body).unwrap();
        assert_eq!((queue.in_progress, queue.queued, queue.errored), (0, 3, 0));
        assert_eq!(queue.pending(), 3);
        assert_eq!(queue.meta.as_deref(), Some(Path::new("/root/.cache/rclone/vfsMeta/local/tmp/fwtest/bucket")));
        assert_eq!(queue.data.as_deref(), Some(Path::new("/root/.cache/rclone/vfs/local/tmp/fwtest/bucket")));
        // No cache at all: nothing is queued.
        assert_eq!(parse_stats(br#"{"fs": "r:", "inUse": 1}"#).unwrap(), Queue::default());
        // What is not its answer is not read as "nothing queued".
        for bad in [&b"not json"[..], b"[]", b"null", br#"{"diskCache": {"uploadsQueued": -1}}"#] {
            assert!(parse_stats(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let err = parse_stats(br#"{"diskCache": {"uploadsQueued": "3"}}"#).unwrap_err().to_string();
        assert!(err.contains("uploadsQueued"), "{err}");
        let huge = format!(r#"{{"diskCache": {{"uploadsQueued": {}, "uploadsInProgress": 5}}}}"#, u64::MAX);
        assert_eq!(parse_stats(huge.as_bytes()).unwrap().pending(), u64::MAX);
    }

    #[test]
    fn an_empty_queue_is_confirmed_by_the_cache_metadata() {
        use std::io::{Error, ErrorKind};
        let empty = Queue { meta: Some("/cache/vfsMeta/r".into()), ..Default::default() };
        assert_eq!(confirm_empty(empty.clone(), Ok(vec![])).unwrap().pending(), 0);
        // Written, closed, not yet released by the kernel: not queued, but dirty.
        let dirty = confirm_empty(empty.clone(), Ok(vec!["a".into(), "b".into()])).unwrap();
        assert_eq!((dirty.unqueued, dirty.pending()), (2, 2));
        let never = confirm_empty(empty.clone(), Err(Error::from(ErrorKind::NotFound))).unwrap();
        assert_eq!(never.pending(), 0, "no metadata directory: nothing was ever written");
        let unreadable = confirm_empty(empty, Err(Error::from(ErrorKind::PermissionDenied)));
        assert!(matches!(unreadable, Err(AskError::Cache { .. })), "{unreadable:?}");
    }

    #[test]
    fn the_wait_leaves_a_reserve_for_the_unmount() {
        let now = Instant::now();
        let d = Deadlines { busy: now + Duration::from_secs(10), last: now + Duration::from_secs(19), shutdown: false };
        assert_eq!(wait_until(d, now), now + Duration::from_secs(17));
        let d = Deadlines {
            busy: now + Duration::from_millis(1500),
            last: now + Duration::from_millis(2700),
            shutdown: false,
        };
        assert_eq!(wait_until(d, now), now + Duration::from_millis(2025));
        let d = Deadlines { busy: now, last: now, shutdown: false };
        assert_eq!(wait_until(d, now), now);
        let late = Deadlines { busy: now, last: now, shutdown: false };
        assert_eq!(wait_until(late, now + Duration::from_secs(1)), now + Duration::from_secs(1));
    }

    /// A daemon answering from a script; after the script, the last answer again.
    struct Scripted {
        answers: RefCell<VecDeque<Result<Queue, AskError>>>,
        alive: RefCell<VecDeque<bool>>,
        asked: RefCell<u32>,
    }

    fn queued(n: u64) -> Result<Queue, AskError> {
        Ok(Queue { queued: n, ..Default::default() })
    }

    impl Scripted {
        fn new(answers: Vec<Result<Queue, AskError>>) -> Scripted {
            Scripted { answers: RefCell::new(answers.into()), alive: RefCell::default(), asked: RefCell::new(0) }
        }
    }

    impl Ask for Scripted {
        async fn stats(&self, limit: Duration) -> Result<Queue, AskError> {
            assert!(limit >= ASK_MIN && limit <= ASK_MAX, "{limit:?}");
            *self.asked.borrow_mut() += 1;
            let mut answers = self.answers.borrow_mut();
            if answers.len() > 1 {
                return answers.pop_front().unwrap();
            }
            match answers.front().unwrap() {
                Ok(q) => Ok(q.clone()),
                Err(_) => Err(AskError::NoListener),
            }
        }

        fn alive(&self) -> bool {
            self.alive.borrow_mut().pop_front().unwrap_or(true)
        }
    }

    const FAST: Duration = Duration::from_millis(10);

    /// No second signal will come: the sender is gone, which must not read as one.
    fn calm() -> watch::Receiver<bool> {
        watch::channel(false).1
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waits_until_the_queue_is_empty() {
        let daemon = Scripted::new(vec![queued(3), queued(2), Err(AskError::NoListener), queued(1), queued(0)]);
        let until = Instant::now() + Duration::from_secs(10);
        match drain(&daemon, true, until, calm(), FAST).await {
            Outcome::Flushed { had, .. } => assert_eq!(had, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(*daemon.asked.borrow(), 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_queued_returns_at_once() {
        let daemon = Scripted::new(vec![queued(0)]);
        let until = Instant::now() + Duration::from_secs(10);
        assert!(matches!(drain(&daemon, true, until, calm(), FAST).await, Outcome::Flushed { had: 0, .. }));
        assert_eq!(*daemon.asked.borrow(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_deadline_ends_it_with_what_is_pending() {
        let daemon = Scripted::new(vec![queued(3)]);
        let started = Instant::now();
        let outcome = drain(&daemon, true, started + Duration::from_millis(300), calm(), FAST).await;
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        match outcome {
            Outcome::Pending { queue, hurried: false } => assert_eq!(queue.pending(), 3),
            other => panic!("{other:?}"),
        }
        // An error after a queue was seen still reports the queue.
        let daemon = Scripted::new(vec![queued(2), Err(AskError::NoListener)]);
        match drain(&daemon, true, Instant::now() + Duration::from_millis(200), calm(), FAST).await {
            Outcome::Pending { queue, .. } => assert_eq!(queue.pending(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_daemon_that_never_answers_is_reported_so() {
        let daemon = Scripted::new(vec![Err(AskError::NoListener)]);
        let started = Instant::now();
        let outcome = drain(&daemon, true, started + Duration::from_millis(300), calm(), FAST).await;
        assert!(matches!(outcome, Outcome::Unanswered { hurried: false, .. }), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // A deadline already past still asks once: the answer is what gets reported.
        let daemon = Scripted::new(vec![queued(0)]);
        assert!(matches!(drain(&daemon, true, Instant::now(), calm(), FAST).await, Outcome::Flushed { .. }));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_daemon_stopped_before_it_mounted_is_waited_for_only_if_it_answers() {
        let until = Instant::now() + Duration::from_secs(30);
        let silent = Scripted::new(vec![Err(AskError::NoListener)]);
        let started = Instant::now();
        assert!(matches!(drain(&silent, false, until, calm(), FAST).await, Outcome::NotMounted));
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        // Re-queued from the cache by a restarted daemon: waited for all the same.
        let requeued = Scripted::new(vec![queued(1), Err(AskError::NoListener), queued(0)]);
        assert!(matches!(drain(&requeued, false, until, calm(), FAST).await, Outcome::Flushed { had: 1, .. }));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_second_signal_stops_it_at_once() {
        let (tx, rx) = watch::channel(false);
        let daemon = Scripted::new(vec![queued(3)]);
        let started = Instant::now();
        let wait = drain(&daemon, true, started + Duration::from_secs(30), rx, Duration::from_secs(5));
        let hurry = async {
            sleep(Duration::from_millis(100)).await;
            tx.send(true).unwrap();
            std::future::pending::<()>().await
        };
        let outcome = tokio::select! { o = wait => o, _ = hurry => unreachable!() };
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(matches!(outcome, Outcome::Pending { hurried: true, .. }), "{outcome:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_daemon_that_exits_ends_the_wait() {
        let daemon = Scripted::new(vec![queued(3)]);
        daemon.alive.borrow_mut().extend([true, true, false]);
        let outcome = drain(&daemon, true, Instant::now() + Duration::from_secs(30), calm(), FAST).await;
        assert!(matches!(outcome, Outcome::DaemonGone), "{outcome:?}");
    }

    /// A one-connection HTTP server on 127.0.0.1 that answers `response` (or nothing),
    /// and hands back the request it read.
    async fn serve_once(response: Option<Vec<u8>>) -> (u16, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            match response {
                Some(bytes) => {
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.shutdown().await;
                }
                None => sleep(Duration::from_secs(30)).await,
            }
            String::from_utf8_lossy(&request).into_owned()
        });
        (port, task)
    }

    fn answer(status: &str, body: &[u8]) -> Vec<u8> {
        let mut r =
            format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len())
                .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn credentials() -> Writeback {
        Writeback { user: "sidemount".into(), password: "0123abcd".into() }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn asks_vfs_stats_with_its_credentials() {
        let body = include_bytes!("../../tests/fixtures/rclone/vfs-stats-1.60.1.json");
        let (port, request) = serve_once(Some(answer("200 OK", body))).await;
        let queue = vfs_stats(port, &credentials(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(queue.pending(), 3);
        let request = request.await.unwrap();
        assert!(request.starts_with("POST /vfs/stats HTTP/1.1\r\n"), "{request}");
        // base64("sidemount:0123abcd")
        assert!(request.contains("authorization: Basic c2lkZW1vdW50OjAxMjNhYmNk\r\n"), "{request}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bad_answers_are_errors_not_an_empty_queue() {
        let (port, _) = serve_once(Some(answer("401 Unauthorized", b"Unauthorized\n"))).await;
        let err = vfs_stats(port, &credentials(), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, AskError::Refused { status: 401, .. }), "{err}");

        let flood = vec![b'{'; MAX_BODY + 1];
        let (port, _) = serve_once(Some(answer("200 OK", &flood))).await;
        let err = vfs_stats(port, &credentials(), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, AskError::TooLarge { .. }), "{err}");

        let (port, _) = serve_once(Some(answer("200 OK", b"<html>"))).await;
        let err = vfs_stats(port, &credentials(), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, AskError::Unreadable { .. }), "{err}");

        let (port, _) = serve_once(Some(b"garbage\r\n\r\n".to_vec())).await;
        let err = vfs_stats(port, &credentials(), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, AskError::Http { .. }), "{err}");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = vfs_stats(port, &credentials(), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, AskError::Connect { .. }), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_server_costs_the_limit_only() {
        let (port, _) = serve_once(None).await;
        let started = Instant::now();
        let err = vfs_stats(port, &credentials(), Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, AskError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn names_the_dirty_files_of_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path();
        let write = |rel: &str, text: &str| {
            let path = meta.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("a.txt", r#"{"ModTime": "2026-01-01T00:00:00Z", "Size": 2, "Dirty": true}"#);
        write("sub/b c", "{\n\t\"Size\": 2,\n\t\"Dirty\": true\n}");
        write("sub/uploaded", r#"{"Dirty": false}"#);
        write("broken", "{\"Dirty\": tr");
        write("deep/[[[[", &"[".repeat(100_000));
        std::os::unix::fs::symlink("/", meta.join("link")).unwrap();
        let files = dirty_files(meta).unwrap();
        assert_eq!(files, [PathBuf::from("a.txt"), PathBuf::from("sub/b c")]);
        assert!(dirty_files(&meta.join("missing")).is_err());

        let text = describe_files(&files, 2);
        assert_eq!(text, r#""a.txt", "sub/b c""#);
        let many: Vec<PathBuf> = (0..MAX_NAMES + 3).map(|i| PathBuf::from(format!("f{i}"))).collect();
        assert!(describe_files(&many, 60).ends_with("and 3 more"));
        assert!(describe_files(&[PathBuf::from("new\nline")], 1).contains(r#""new\nline""#));
        assert!(describe_files(&[], 4).contains("4 still counted"));
    }
}
