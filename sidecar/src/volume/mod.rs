//! One volume's life: clear what an earlier instance left at its mountpoint,
//! start it, notice by event when it is mounted, check it with bounded calls,
//! repair it when its daemon exits or its mount disappears, and take it down
//! under a deadline. Each volume runs as its own task, so fifty volumes mount
//! side by side, and a hung one holds up nobody else.

pub mod block;
mod check;
mod error;
pub mod flush;
pub mod fuse;
pub mod objectivefs;
mod policy;
#[cfg(test)]
mod rig;
mod stage;
mod status;
mod teardown;
pub mod zfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, error, info, warn, Instrument};

use crate::daemon::{describe_exit, run_helper, Children, Daemon, HelperError, Launch};
use crate::mount_watch::{MountWatch, Subscription};
use crate::mounts::{Mount, MountTable};
use crate::secrets::Secrets;
use crate::spec::{Source, Volume};
use crate::sys::{bounded, Sys, Unmount};

pub use check::{check, check_many, check_when_needed, fuse_connection};
pub use error::{UnmountError, VolumeError};
pub use policy::{backoff, leftovers, Deadlines, Matcher, Owned};
pub use status::{Phase, SharedStatus, Status};
pub use teardown::StageRelease;

use policy::{Progress, STABLE_AFTER};

/// How long a FUSE connection must outlive the sidecar's last mount of it to be
/// taken as held elsewhere, and how often it is looked at meanwhile.
const CONNECTION_SETTLE: Duration = Duration::from_millis(300);
const CONNECTION_RECHECK: Duration = Duration::from_millis(50);
/// Daemons spawned at once (see `Task::spawn_daemon`): a few, to overlap the
/// children's execs on every core without a thread per volume. A spawn returns
/// once the child has exec'd, and the start of many volumes is paced by it: on
/// two cores 200 bindfs volumes were ready in 530–560 ms spawned one at a time,
/// 330–410 ms four at a time, and 295–355 ms eight at a time (more gave no more).
const SPAWNS_AT_ONCE: usize = 8;
/// A spawn that has not exec'd after this is taken as hung (a program on a
/// filesystem that no longer answers): it gives its turn to the next volume
/// and goes on waiting for its own deadline. Execs take milliseconds.
const SLOW_SPAWN: Duration = Duration::from_secs(1);
/// How long a daemon whose mount is gone gets to exit on its own.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// What every volume task shares.
#[derive(Clone)]
pub struct Context {
    pub sys: Arc<dyn Sys>,
    pub children: Arc<Children>,
    pub check_timeout: Duration,
    pub mount_timeout: Duration,
    /// How many objectivefs volumes share the container's memory for their caches.
    pub objectivefs_volumes: Arc<std::sync::atomic::AtomicUsize>,
    /// Turns true on a second SIGTERM: every deadline of a teardown is now.
    pub hurry: watch::Receiver<bool>,
    /// The private staging area where daemons mount (see `Task::attach`).
    pub stage: PathBuf,
    /// Volumes whose daemon still had writes to send when they were taken down.
    pub unflushed: Arc<flush::Unflushed>,
    /// At shutdown: the stage's mounts go in one unmount (see [`StageRelease`]).
    pub stage_release: Arc<StageRelease>,
    /// The FUSE control filesystem (fusectl), held open: it still answers once the
    /// stage it is mounted in has been detached at shutdown.
    pub fuse_control: Option<Arc<std::fs::File>>,
}

/// A running volume task.
pub struct Handle {
    pub volume: Volume,
    pub status: SharedStatus,
    stop: Option<oneshot::Sender<Deadlines>>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Starts the volume's task.
    pub fn start(volume: Volume, mountpoint: PathBuf, ctx: Context, table: MountWatch) -> Handle {
        let (stop_tx, stop_rx) = oneshot::channel();
        let span = tracing::info_span!("volume", volume = %volume.name, mountpoint = %mountpoint.display());
        let task = Task::new(volume.clone(), mountpoint, ctx, table, stop_rx);
        let status = task.status.clone();
        let task = tokio::spawn(task.run().instrument(span));
        Handle { volume, status, stop: Some(stop_tx), task }
    }

    /// Asks the task to take the volume down by `deadlines` and waits for it.
    pub async fn stop(mut self, deadlines: Deadlines) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(deadlines);
        }
        if let Err(err) = self.task.await {
            error!(volume = %self.volume.name, %err, "volume task failed");
        }
    }

    pub fn is_kernel_mount(&self) -> bool {
        self.volume.source.is_kernel_mount()
    }

    /// Where the volume mounts, and which mounts there are its own: what the
    /// shutdown checks is gone once the task has stopped.
    pub fn owned(&self) -> Owned {
        let mountpoint = self.status.lock().expect("status lock").mountpoint.clone();
        Owned { name: self.volume.name.clone(), mountpoint, matcher: Matcher::for_volume(&self.volume.source) }
    }
}

/// How waiting for a mount or on a mounted volume ended.
enum Event {
    Stop(Deadlines),
    Exited(std::io::Result<std::process::ExitStatus>),
    Mounted(i32),
    Gone,
    TimedOut,
    /// Mounted at the stage, but the bind onto the mountpoint failed.
    Unattached(VolumeError),
}

struct Task {
    volume: Volume,
    mountpoint: PathBuf,
    matcher: Matcher,
    ctx: Context,
    status: SharedStatus,
    table: MountWatch,
    /// Changes at the mountpoint or the stage.
    changes: Subscription,
    stop: Stop,
    /// A read of the secretDir is under way (or stuck on a hung filesystem).
    secret_read: Arc<std::sync::atomic::AtomicBool>,
    /// True while a spawn of the daemon is under way, one given up included: a
    /// start whose exec hangs holds its thread, and the next start fails at once
    /// rather than leave one more thread behind on each retry.
    spawning: Arc<std::sync::atomic::AtomicBool>,
    /// How to ask the running daemon about the writes it has yet to send.
    writeback: Option<flush::Writeback>,
}

/// The request to take the volume down: received once, then remembered, so every
/// step (a mount helper, a wait, a backoff) can see it.
struct Stop {
    rx: Option<oneshot::Receiver<Deadlines>>,
    got: Option<Deadlines>,
}

impl Stop {
    fn new(rx: oneshot::Receiver<Deadlines>) -> Stop {
        Stop { rx: Some(rx), got: None }
    }

    /// Resolves once a stop is requested (at once if it was already). Cancel-safe.
    async fn recv(&mut self) -> Deadlines {
        if let Some(deadlines) = self.got {
            return deadlines;
        }
        let deadlines = match self.rx.as_mut() {
            Some(rx) => rx.await.unwrap_or_else(|_| supervisor_gone()),
            None => std::future::pending().await,
        };
        self.rx = None;
        self.got = Some(deadlines);
        deadlines
    }

    /// The stop, if one was requested by now.
    fn requested(&mut self) -> Option<Deadlines> {
        if self.got.is_none() {
            if let Some(rx) = self.rx.as_mut() {
                match rx.try_recv() {
                    Ok(deadlines) => self.got = Some(deadlines),
                    Err(oneshot::error::TryRecvError::Closed) => self.got = Some(supervisor_gone()),
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
                if self.got.is_some() {
                    self.rx = None;
                }
            }
        }
        self.got
    }
}

/// How one start of the volume ended.
enum Served {
    Stopped,
    /// It can never work as specified: no more starts until the spec changes.
    Refused,
    /// It failed or needs repair; `stable` when it had been ready long enough
    /// to start the backoff over.
    Failed {
        stable: bool,
    },
}

/// What an exited daemon left at its staging directory.
enum Left {
    Nothing,
    /// Its mount, dead with it.
    DeadMount,
    /// Its mount, still served: by a process it forked.
    LiveMount,
}

/// What keeps a mounted volume alive: its daemon, or the kernel alone.
enum Keeper {
    Daemon(Box<Daemon>),
    Kernel,
}

impl Keeper {
    fn pid(&self) -> Option<i32> {
        match self {
            Keeper::Daemon(d) => Some(d.pid()),
            Keeper::Kernel => None,
        }
    }

    /// The daemon's last lines of output, once it has exited.
    async fn last_output(&mut self) -> Option<String> {
        match self {
            Keeper::Daemon(d) => d.last_output().await,
            Keeper::Kernel => None,
        }
    }

    /// Resolves when the daemon exits; never for a kernel mount.
    async fn exited(&mut self, children: &Children) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Keeper::Daemon(d) => d.wait(children).await,
            Keeper::Kernel => std::future::pending().await,
        }
    }
}

impl Task {
    /// The volume's task, reading the mount table through `table` and stopped
    /// through `stop`.
    fn new(
        volume: Volume,
        mountpoint: PathBuf,
        ctx: Context,
        table: MountWatch,
        stop: oneshot::Receiver<Deadlines>,
    ) -> Task {
        let status = Arc::new(Mutex::new(Status::new(&volume, &mountpoint)));
        let matcher = Matcher::for_volume(&volume.source);
        // Woken only by changes at its own paths: the mountpoint and its stage.
        let changes = table.subscribe(&[&mountpoint, &ctx.stage.join(&volume.name)]);
        Task {
            volume,
            mountpoint,
            matcher,
            ctx,
            status,
            table,
            changes,
            stop: Stop::new(stop),
            secret_read: Default::default(),
            spawning: Default::default(),
            writeback: None,
        }
    }

    fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().expect("status lock"));
    }

    fn fail(&self, message: String) {
        error!("{message}");
        self.set(|s| {
            s.phase = Phase::Failed;
            s.errors += 1;
            s.last_error = Some(message);
            s.pid = None;
        });
    }

    fn has_daemon(&self) -> bool {
        !self.volume.source.is_kernel_mount()
    }

    /// The newest mount table, marked seen.
    fn latest(&mut self) -> Arc<MountTable> {
        self.changes.mark_seen();
        self.table.latest()
    }

    /// The mount table as read after this call (see [`MountWatch::fresh`]).
    async fn fresh(&self) -> Result<Arc<MountTable>, VolumeError> {
        self.table.fresh().await.map_err(VolumeError::MountTable)
    }

    fn mounted_id(&self, table: &MountTable) -> Option<i32> {
        table.volume_at(&self.mountpoint, |m| self.matcher.matches(m)).map(|m| m.id)
    }

    async fn run(mut self) {
        if let Source::Zfs { .. } = self.volume.source {
            self.warn_on_zfs_version_mismatch().await;
        }
        let mut failures: u32 = 0;
        let mut starts: u64 = 0;
        loop {
            match self.clear_mountpoint().await {
                Err(err) => self.fail(err.to_string()),
                Ok(()) => {
                    starts += 1;
                    match self.serve(starts).await {
                        Served::Stopped => return,
                        Served::Refused => {
                            let deadlines = self.stop.recv().await;
                            return self.teardown(Keeper::Kernel, deadlines).await;
                        }
                        Served::Failed { stable: true } => failures = 0,
                        Served::Failed { stable: false } => {}
                    }
                }
            }
            failures += 1;
            let delay = backoff(failures);
            if !delay.is_zero() {
                info!(delay = ?delay, failures, "waiting before the next start");
            }
            tokio::select! {
                biased;
                deadlines = self.stop.recv() => return self.teardown(Keeper::Kernel, deadlines).await,
                _ = sleep(delay) => {}
            }
        }
    }

    /// The daemon's or mount helpers' environment: the spec's `env`, the Secret's
    /// values and, for a daemon that queues writes, a remote control to ask it
    /// about them (see `flush`); and the values to keep out of the log.
    async fn environment(&mut self) -> Result<(BTreeMap<String, String>, Vec<String>), VolumeError> {
        let secrets = secrets_of(&self.volume, self.ctx.check_timeout, &self.secret_read).await?;
        let mut env = fuse::env(&self.volume.env, &secrets);
        if let Source::ObjectiveFs { .. } = self.volume.source {
            objectivefs::size_cache(&mut env, self.ctx.objectivefs_volumes.load(std::sync::atomic::Ordering::Relaxed));
        }
        let mut secrets = secrets.values();
        self.writeback = flush::prepare(&self.volume.source, &mut env, &mut secrets)?;
        Ok((env, secrets))
    }

    /// Starts the volume once and stays with it until it fails or is stopped.
    async fn serve(&mut self, starts: u64) -> Served {
        let (env, secrets) = match self.environment().await {
            Ok(found) => found,
            Err(err) => {
                self.fail(err.to_string());
                return Served::Failed { stable: false };
            }
        };
        self.set(|s| {
            s.phase = Phase::Mounting;
            s.restarts = starts - 1;
        });
        let mut keeper = match self.start(&env, &secrets).await {
            Ok(keeper) => keeper,
            Err(err) => {
                if let Some(deadlines) = self.stop.requested() {
                    // Its helpers are killed and gone; whatever one of them mounted
                    // before it died is taken down like any other mount.
                    info!(message = %err, "stopped while mounting");
                    self.teardown(Keeper::Kernel, deadlines).await;
                    return Served::Stopped;
                }
                self.fail(err.to_string());
                return Served::Failed { stable: false };
            }
        };
        let pid = keeper.pid();
        self.set(|s| s.pid = pid);

        let mount_id = match self.await_mount(&mut keeper).await {
            Event::Mounted(id) => id,
            Event::Stop(deadlines) => {
                // Not bound to the mountpoint yet: no app wrote through it, nothing
                // to flush, so the daemon is told to go now rather than at `busy`.
                if let Keeper::Daemon(daemon) = &keeper {
                    daemon.signal(Signal::SIGTERM);
                }
                self.teardown(keeper, deadlines).await;
                return Served::Stopped;
            }
            Event::Exited(status) => {
                let when = match self.left_at_stage().await {
                    Left::LiveMount => return self.refuse_background(&status).await,
                    Left::DeadMount => " right after mounting",
                    Left::Nothing => " before mounting",
                };
                let last = keeper.last_output().await.map(|l| format!(": {l}")).unwrap_or_default();
                self.fail(format!("daemon {}{when}{last}", describe_exit(&status)));
                return Served::Failed { stable: false };
            }
            Event::TimedOut | Event::Gone => {
                self.fail(format!(
                    "not mounted within {:?} (SIDEMOUNT_MOUNT_TIMEOUT); starting again",
                    self.ctx.mount_timeout
                ));
                if let Keeper::Daemon(daemon) = keeper {
                    self.end_daemon(*daemon, Signal::SIGTERM).await;
                }
                return Served::Failed { stable: false };
            }
            Event::Unattached(err) => {
                self.fail(err.to_string());
                if let Keeper::Daemon(daemon) = keeper {
                    self.end_daemon(*daemon, Signal::SIGTERM).await;
                }
                return Served::Failed { stable: false };
            }
        };

        let connection = match self.has_daemon() {
            true => self.table.latest().at(&self.mountpoint).find(|m| m.id == mount_id).map(|m| fuse_connection(m.dev)),
            false => None,
        };
        self.set(|s| {
            s.phase = Phase::Ready;
            s.responsive = false;
            s.check_started = None;
            s.generation += 1;
            s.connection = connection;
        });
        let answering = check(&self.status, &self.ctx.sys, self.ctx.check_timeout).await;
        info!(pid, answering, "mounted");
        let ready_since = Instant::now();

        let event = self.watch_mounted(&mut keeper, mount_id).await;
        let stable = ready_since.elapsed() >= STABLE_AFTER;
        let reason = match event {
            Event::Stop(deadlines) => {
                self.teardown(keeper, deadlines).await;
                return Served::Stopped;
            }
            Event::Exited(status) => {
                if self.has_daemon() && matches!(self.left_at_stage().await, Left::LiveMount) {
                    return self.refuse_background(&status).await;
                }
                let last = keeper.last_output().await.map(|l| format!(" (last output: {l})")).unwrap_or_default();
                format!("daemon {}{last}", describe_exit(&status))
            }
            Event::Gone | Event::TimedOut | Event::Mounted(_) | Event::Unattached(_) => {
                // Unmounted by someone else, and it could not be bound again. A daemon usually exits by itself once its
                // connection is gone. It is killed, not terminated, if it does not: on
                // SIGTERM libfuse unmounts whatever is now at the mountpoint path.
                if let Keeper::Daemon(daemon) = keeper {
                    self.end_daemon(*daemon, Signal::SIGKILL).await;
                }
                "the mount disappeared (unmounted by someone else)".to_string()
            }
        };
        warn!(%reason, "repairing");
        self.set(|s| {
            s.phase = Phase::Repairing;
            s.repairs += 1;
            s.pid = None;
            s.last_error = Some(reason);
        });
        Served::Failed { stable }
    }

    /// What an exited daemon left at the stage. A mount that still answers is
    /// served by a process the daemon forked: it went to the background. (When a
    /// daemon itself dies, the kernel aborts its connection with its last
    /// /dev/fuse descriptor, before its exit can be seen.)
    async fn left_at_stage(&self) -> Left {
        let stage = self.stage_path();
        match self.fresh().await {
            Ok(table) if table.volume_at(&stage, |m| self.matcher.matches(m)).is_some() => {}
            _ => return Left::Nothing,
        }
        let sys = self.ctx.sys.clone();
        match bounded(self.ctx.check_timeout, move || sys.statfs(&stage)).await {
            Ok(Ok(())) => Left::LiveMount,
            _ => Left::DeadMount,
        }
    }

    /// A daemon that went to the background is out of reach: its exit is never
    /// seen, so it could be neither repaired nor taken down cleanly, and starting
    /// it again would only fork another. Its mount is taken down (the process it
    /// forked then exits) and the volume stays failed until its spec changes.
    async fn refuse_background(&mut self, status: &std::io::Result<std::process::ExitStatus>) -> Served {
        let message = format!(
            "daemon {} after mounting: it went to the background, where it cannot be supervised; run it in the foreground (e.g. bindfs -f, s3fs -f); not restarted until the spec changes",
            describe_exit(status)
        );
        self.teardown(Keeper::Kernel, Deadlines::within(EXIT_GRACE * 2)).await;
        self.fail(message);
        Served::Refused
    }

    /// Starts the daemon, or runs the helpers that mount a kernel filesystem.
    async fn start(&mut self, env: &BTreeMap<String, String>, secrets: &[String]) -> Result<Keeper, VolumeError> {
        let argv = match &self.volume.source {
            Source::Fuse { command } => {
                fuse::argv(command, &self.prepare_stage().await?, self.volume.uid, self.volume.gid)
            }
            Source::ObjectiveFs { filesystem } => objectivefs::argv(
                filesystem,
                &self.volume.options,
                &self.prepare_stage().await?,
                self.volume.uid,
                self.volume.gid,
            ),
            Source::Zfs { dataset, create } => {
                let (dataset, create) = (dataset.clone(), create.clone());
                return self.mount_zfs(&dataset, create.as_ref(), env, secrets).await.map(|()| Keeper::Kernel);
            }
            Source::Block { device, fs_type, format } => {
                let (device, fs_type, format) = (device.clone(), fs_type.clone(), *format);
                return self.mount_block(&device, &fs_type, format, env, secrets).await.map(|()| Keeper::Kernel);
            }
        };
        // A stop does not wait for a spawn that hangs, or for its turn: a daemon
        // spawned after all is killed (see `Unclaimed`).
        let spawn = Task::spawn_daemon(&self.ctx, &self.spawning, argv.clone(), env.clone(), secrets.to_vec());
        let stop = &mut self.stop;
        let daemon = tokio::select! {
            biased;
            _ = stop.recv() => return Err(VolumeError::SpawnStopped),
            spawned = spawn => spawned?,
        };
        info!(pid = daemon.pid(), program = %argv[0], "daemon started");
        Ok(Keeper::Daemon(Box::new(daemon)))
    }

    /// Spawns the daemon on a thread of the bounded-call pool, [`SPAWNS_AT_ONCE`]
    /// volumes at a time. A spawn holds its thread until the child has exec'd (the
    /// child runs on the parent's memory until then), about a millisecond: spawned
    /// one after another on the runtime's one thread, a start of many volumes
    /// waited for each exec in turn. A spawn slower than [`SLOW_SPAWN`] no longer
    /// counts against the others.
    async fn spawn_daemon(
        ctx: &Context,
        in_flight: &Arc<std::sync::atomic::AtomicBool>,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        secrets: Vec<String>,
    ) -> Result<Daemon, VolumeError> {
        static SPAWNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SPAWNS_AT_ONCE);
        let under_way = crate::sys::InFlight::claim(in_flight)
            .ok_or_else(|| VolumeError::SpawnStillHung { program: argv[0].clone() })?;
        let (children, runtime, span) =
            (ctx.children.clone(), tokio::runtime::Handle::current(), tracing::Span::current());
        let spawn = bounded(ctx.mount_timeout, move || {
            // The daemon's pipes register with the runtime, and its output is logged
            // in the volume's span.
            let entered = (runtime.enter(), span.enter());
            let daemon = Daemon::spawn(&children, Launch { argv: &argv, env: &env, secrets: &secrets })?;
            drop((entered, under_way));
            Ok::<_, crate::daemon::SpawnError>(Unclaimed { daemon: Some(daemon), children, runtime, span })
        });
        let spawned = in_turn(&SPAWNING, SLOW_SPAWN, spawn).await;
        match spawned {
            Ok(result) => Ok(result?.claim()),
            Err(_) => Err(VolumeError::SpawnHung { timeout: ctx.mount_timeout }),
        }
    }

    /// Runs a mount helper; a stop kills it (see `run_helper`), and once a stop is
    /// requested no helper starts.
    async fn helper(
        &mut self,
        argv: Vec<String>,
        env: &BTreeMap<String, String>,
        secrets: &[String],
    ) -> Result<String, HelperError> {
        if self.stop.requested().is_some() {
            return Err(HelperError::Stopped { command: argv.join(" ") });
        }
        debug!(command = %argv.join(" "), "running");
        let children = self.ctx.children.clone();
        let stop = &mut self.stop;
        run_helper(&children, &argv, env, secrets, self.ctx.mount_timeout, async move {
            stop.recv().await;
        })
        .await
    }

    /// Waits until this volume's mount is on top at the mountpoint.
    async fn await_mount(&mut self, keeper: &mut Keeper) -> Event {
        let deadline = sleep(self.ctx.mount_timeout);
        tokio::pin!(deadline);
        let children = self.ctx.children.clone();
        let watched = if self.has_daemon() { self.stage_path() } else { self.mountpoint.clone() };
        loop {
            let seen = self.latest();
            let mounted = seen.volume_at(&watched, |m| self.matcher.matches(m)).is_some();
            // A daemon's stage was seen empty in a table read after it was cleared
            // (`release_stage`), and the reader publishes its reads in order: a later
            // table with a mount there shows the new daemon's. A kernel mount's table
            // may still be one from before the mountpoint was cleared: what it shows
            // is confirmed with the kernel before it is acted on.
            let confirmed = match (mounted, self.has_daemon()) {
                (false, _) => None,
                (true, true) => Some(seen),
                (true, false) => self.fresh().await.ok(),
            };
            let found = confirmed.and_then(|table| {
                let id = table.volume_at(&watched, |m| self.matcher.matches(m))?.id;
                Some((id, table))
            });
            if let Some((id, table)) = found {
                if !self.has_daemon() {
                    return Event::Mounted(id);
                }
                if let Some(deadlines) = self.stop.requested() {
                    return Event::Stop(deadlines);
                }
                return match self.attach(table).await {
                    Ok(id) => Event::Mounted(id),
                    Err(err) => Event::Unattached(err),
                };
            }
            // A kernel mount is done when its helper returns: the event is on its way.
            tokio::select! {
                biased;
                deadlines = self.stop.recv() => return Event::Stop(deadlines),
                status = keeper.exited(&children) => {
                    self.changes.mark_seen();
                    return Event::Exited(status);
                }
                _ = self.changes.changed() => {}
                _ = &mut deadline => return Event::TimedOut,
            }
        }
    }

    /// Stays with a mounted volume until its daemon exits, its mount goes or it is
    /// stopped. A daemon's mount that someone unmounted is bound again from the stage.
    async fn watch_mounted(&mut self, keeper: &mut Keeper, mount_id: i32) -> Event {
        let children = self.ctx.children.clone();
        let mut mount_id = mount_id;
        loop {
            tokio::select! {
                biased;
                deadlines = self.stop.recv() => return Event::Stop(deadlines),
                status = keeper.exited(&children) => return Event::Exited(status),
                _ = self.changes.changed() => {
                    let table = self.latest();
                    if self.mounted_id(&table) == Some(mount_id) {
                        continue;
                    }
                    // The watch may deliver a table read before our own last bind: ask the
                    // kernel again before calling the mount gone.
                    let now = match self.fresh().await {
                        Ok(now) if self.mounted_id(&now) == Some(mount_id) => continue,
                        Ok(now) => now,
                        Err(message) => {
                            warn!(%message, "cannot bind the mount again");
                            return Event::Gone;
                        }
                    };
                    if !self.has_daemon() {
                        return Event::Gone;
                    }
                    // The daemon still serves its mount at the stage. Apps that captured
                    // the old bind keep it, alive; the rest see the new one.
                    match self.attach(now).await {
                        Ok(id) => {
                            let reason = "the mount disappeared (unmounted by someone else)";
                            warn!(%reason, "bound again from the stage");
                            mount_id = id;
                            self.set(|s| {
                                s.repairs += 1;
                                s.last_error = Some(reason.into());
                            });
                        }
                        Err(err) => {
                            warn!(message = %err, "cannot bind the mount again");
                            return Event::Gone;
                        }
                    }
                }
            }
        }
    }

    /// Deals with what sits at the mountpoint before a start. A kernel mount left
    /// by an earlier instance is removed: aborted if dead or hung, only detached if
    /// live, so files open on it keep working. FUSE mounts are covered (see below).
    async fn clear_mountpoint(&mut self) -> Result<(), VolumeError> {
        self.matcher = Matcher::for_volume(&self.volume.source);
        let fresh = self.fresh().await?;
        if self.has_daemon() {
            // A FUSE mount at the mountpoint may have been bound by the container
            // runtime into an app that started after it (the native-sidecar order): that
            // app's mount receives only mounts made on top of it. So dead FUSE mounts
            // (their daemon gone, their connection aborted with it) are covered by the
            // new mount, not detached; teardown unmounts every layer.
            let layers = fresh.above_base(&self.mountpoint, |m| self.matcher.matches(m)).len();
            if layers > 0 {
                info!(layers, "covering the FUSE mount(s) left at the mountpoint with the new mount");
            }
            return Ok(());
        }
        let stale: Vec<Mount> =
            fresh.above_base(&self.mountpoint, |m| self.matcher.matches(m)).into_iter().cloned().collect();
        for mount in &stale {
            let live = self.statfs().await.is_ok();
            let how = if live { Unmount::Detach } else { Unmount::Abort };
            self.unmount(how)
                .await
                .map_err(|source| VolumeError::ClearMountpoint { fs_type: mount.fs_type.clone(), source })?;
            info!(fs_type = %mount.fs_type, source = %mount.source, live, "cleared a leftover mount at the mountpoint");
        }
        if !stale.is_empty() {
            // Let the mount-table watch catch up, so the old entry is not taken for the new mount.
            let (mountpoint, matcher) = (self.mountpoint.clone(), self.matcher.clone());
            let gone = move |t: &MountTable| t.volume_at(&mountpoint, |m| matcher.matches(m)).is_none();
            if !self.wait_table(gone, Duration::from_secs(2)).await {
                return Err(VolumeError::MountpointNotCleared);
            }
        }
        Ok(())
    }

    async fn wait_table(&mut self, done: impl Fn(&MountTable) -> bool, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            if done(&self.latest()) {
                return true;
            }
            if tokio::time::timeout_at(until, self.changes.changed()).await.is_err() {
                return false;
            }
        }
    }

    /// Binds the daemon's mount from the stage onto the mountpoint, on top of
    /// whatever is there: the pod volume's bind, or dead mounts of earlier daemons
    /// that apps may hold (their copies receive mounts made on top of them).
    /// `table` is one read since the daemon's mount appeared at the stage (or since
    /// the mount at the mountpoint went). Returns the new mount's id.
    async fn attach(&mut self, table: Arc<MountTable>) -> Result<i32, VolumeError> {
        let (sys, stage, mp) = (self.ctx.sys.clone(), self.stage_path(), self.mountpoint.clone());
        // Never bind the bare staging directory: only the daemon's mount there.
        if table.volume_at(&stage, |m| self.matcher.matches(m)).is_none() {
            return Err(VolumeError::NotStaged);
        }
        let before = self.trim_layers(table).await?;
        if let Source::Fuse { .. } = self.volume.source {
            self.apply_options(&stage).await?;
        }
        // Changes from here on wake this task: the bind's among them.
        self.changes.mark_seen();
        match bounded(self.ctx.check_timeout, move || sys.bind(&stage, &mp)).await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(VolumeError::Bind { source }),
            Err(_) => return Err(VolumeError::BindHung),
        }
        if let Some(id) = self.bound_id(&before).await {
            return Ok(id);
        }
        let table = self.fresh().await?;
        self.mounted_id(&table).ok_or_else(|| VolumeError::NotOnTop {
            mounts: table.at(&self.mountpoint).map(|m| format!("{} on {} {}", m.id, m.parent_id, m.fs_type)).collect(),
        })
    }

    /// The id of the mount a bind just put on top at the mountpoint, as the shared
    /// reader's next tables show it: the bind is a change at the mountpoint, which
    /// wakes this task, and binds made together are confirmed by one read instead
    /// of one each. None when no table shows it within the check timeout.
    async fn bound_id(&mut self, before: &MountTable) -> Option<i32> {
        let old: Vec<i32> = before.at(&self.mountpoint).map(|m| m.id).collect();
        let until = Instant::now() + self.ctx.check_timeout;
        loop {
            let table = self.latest();
            if let Some(id) = self.mounted_id(&table).filter(|id| !old.contains(id)) {
                return Some(id);
            }
            tokio::time::timeout_at(until, self.changes.changed()).await.ok()?;
        }
    }

    async fn statfs(&self) -> Result<(), VolumeError> {
        let (sys, mp) = (self.ctx.sys.clone(), self.mountpoint.clone());
        match bounded(self.ctx.check_timeout, move || sys.statfs(&mp)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(VolumeError::Statfs(e)),
            Err(t) => Err(VolumeError::StatfsHung(t)),
        }
    }

    async fn unmount(&self, how: Unmount) -> Result<(), UnmountError> {
        self.unmount_at(&self.mountpoint, how).await
    }

    async fn unmount_at(&self, path: &Path, how: Unmount) -> Result<(), UnmountError> {
        let (sys, mp) = (self.ctx.sys.clone(), path.to_path_buf());
        match bounded(self.ctx.check_timeout, move || sys.unmount(&mp, how)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(errno)) => Err(UnmountError::Refused(errno)),
            Err(_) => Err(UnmountError::Hung),
        }
    }

    /// Ends a daemon whose mount is gone or never came: a grace period to exit
    /// by itself, then `first` to its group, then SIGKILL.
    async fn end_daemon(&mut self, mut daemon: Daemon, first: Signal) {
        let children = self.ctx.children.clone();
        if tokio::time::timeout(EXIT_GRACE, daemon.wait(&children)).await.is_ok() {
            return;
        }
        daemon.signal(first);
        if first != Signal::SIGKILL && tokio::time::timeout(EXIT_GRACE, daemon.wait(&children)).await.is_ok() {
            return;
        }
        daemon.signal(Signal::SIGKILL);
        let status = daemon.wait(&children).await;
        debug!(status = %describe_exit(&status), "daemon ended");
    }

    /// Whether the kernel keeps this volume's FUSE connection although every mount
    /// of it in the sidecar is gone: it ends a connection when its last mount goes,
    /// so one that is still there after [`CONNECTION_SETTLE`] is held by a mount in
    /// another namespace. False when it cannot tell (no fusectl, not FUSE).
    async fn connection_held_elsewhere(&self) -> bool {
        let connection = self.status.lock().expect("status lock").connection;
        let (Some(control), Some(connection)) = (self.ctx.fuse_control.as_deref(), connection) else {
            return false;
        };
        let settled = Instant::now() + CONNECTION_SETTLE;
        loop {
            if crate::sys::fuse_connection_exists(control, connection) != Some(true) {
                return false;
            }
            if Instant::now() >= settled {
                return true;
            }
            self.until(settled.min(Instant::now() + CONNECTION_RECHECK), Duration::ZERO).await;
        }
    }

    /// Sleeps until `at`, or, once a second signal says not to wait any more,
    /// for `grace` at most.
    async fn until(&self, at: Instant, grace: Duration) {
        let mut hurry = self.ctx.hurry.clone();
        tokio::select! {
            _ = sleep_until(at) => {}
            _ = async {
                let _ = hurry.wait_for(|h| *h).await;
                sleep(grace).await;
            } => {}
        }
    }
}

/// A volume's secrets: its secretDir read under `timeout` (see
/// [`Secrets::read_dir_bounded`]), and for objectivefs the credentials it needs.
pub async fn secrets_of(
    volume: &Volume,
    timeout: Duration,
    in_flight: &Arc<std::sync::atomic::AtomicBool>,
) -> Result<Secrets, VolumeError> {
    let secrets = match &volume.secret_dir {
        Some(dir) => Secrets::read_dir_bounded(dir, timeout, in_flight).await?,
        None => Secrets::default(),
    };
    match volume.source {
        Source::ObjectiveFs { .. } => objectivefs::credentials(volume, secrets),
        _ => Ok(secrets),
    }
}

/// Runs `work` in one of `turns`, given back when `work` is done or once it has
/// taken `slow`, whichever comes first: a few hung spawns must not hold back
/// every volume after them until their deadline.
async fn in_turn<F: std::future::Future>(turns: &tokio::sync::Semaphore, slow: Duration, work: F) -> F::Output {
    let turn = turns.acquire().await.expect("the turns are never closed");
    tokio::pin!(work);
    tokio::select! {
        biased;
        done = &mut work => done,
        () = sleep(slow) => {
            drop(turn);
            work.await
        }
    }
}

/// A dropped handle means the supervisor is gone: take the volume down quickly.
fn supervisor_gone() -> Deadlines {
    Deadlines::within(Duration::from_secs(5))
}

/// A daemon spawned on the bounded-call pool, until its volume task takes it. A
/// spawn given up at its deadline may still finish (the exec it waited for
/// returns at last): nobody would supervise that daemon, or take down what it
/// mounts, so it is killed and reaped as soon as it is dropped unclaimed.
struct Unclaimed {
    daemon: Option<Daemon>,
    children: Arc<Children>,
    runtime: tokio::runtime::Handle,
    span: tracing::Span,
}

impl Unclaimed {
    fn claim(mut self) -> Daemon {
        self.daemon.take().expect("claimed once")
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        let Some(mut daemon) = self.daemon.take() else { return };
        let _span = self.span.enter();
        warn!(pid = daemon.pid(), "daemon started after its start was given up: killed");
        daemon.signal(Signal::SIGKILL);
        let children = self.children.clone();
        self.runtime.spawn(
            async move {
                let _ = daemon.wait(&children).await;
            }
            .instrument(self.span.clone()),
        );
    }
}

#[cfg(test)]
mod tests {
    use nix::errno::Errno;

    use super::rig::*;
    use super::*;
    use crate::sys::fake::{Answer, Call, FakeSys, Method};

    /// `Task::attach` as the task calls it: with a table read since the daemon's
    /// mount appeared at the stage.
    async fn attach(rig: &mut Rig) -> Result<i32, VolumeError> {
        let table = rig.task.fresh().await.expect("the fake's table");
        rig.task.attach(table).await
    }

    /// The volume's mount on top at the mountpoint in the fake's table: its id and
    /// the device it is of.
    fn on_top(rig: &Rig) -> Option<(i32, (u32, u32))> {
        let table = rig.sys.table();
        table.volume_at(Path::new(MOUNTPOINT), |m| m.is_fuse()).map(|m| (m.id, m.dev))
    }

    #[tokio::test(start_paused = true)]
    async fn attach_binds_the_daemons_mount_and_confirms_it_from_the_table() {
        let sys = FakeSys::new().mounted(&[ROOT, POD_BIND, STAGE_TMPFS, DAEMON_AT_STAGE]);
        let mut rig = rig(fuse_volume(), sys);
        let id = attach(&mut rig).await.expect("bound");

        // The daemon's mount (its device) is on top at the mountpoint, and the id
        // given is the one the table shows there.
        assert_eq!(on_top(&rig), Some((id, (0, 31))));
        assert_eq!(rig.mounted_at(MOUNTPOINT), ["tmpfs", "fuse.bindfs"]);
        assert_eq!(rig.binds(), [(Duration::ZERO, Call::Bind(STAGE.into(), MOUNTPOINT.into()))]);
        assert_eq!(rig.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn attach_names_a_failed_bind_and_leaves_nothing_mounted() {
        let sys = FakeSys::new()
            .mounted(&[ROOT, POD_BIND, STAGE_TMPFS, DAEMON_AT_STAGE])
            .answer(Method::Bind, Answer::Err(Errno::EACCES));
        let mut rig = rig(fuse_volume(), sys);
        let error = attach(&mut rig).await.expect_err("the bind fails");

        assert_eq!(error.to_string(), "cannot bind the daemon's mount onto the mountpoint: EACCES: Permission denied");
        assert_eq!(rig.mounted_at(MOUNTPOINT), ["tmpfs"]);
        assert_eq!(rig.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn attach_gives_up_on_a_hung_bind_at_its_deadline() {
        let sys = FakeSys::new()
            .mounted(&[ROOT, POD_BIND, STAGE_TMPFS, DAEMON_AT_STAGE])
            .answer(Method::Bind, Answer::HangUntilReleased);
        let mut rig = rig(fuse_volume(), sys);
        let error = attach(&mut rig).await.expect_err("the bind hangs");

        assert_eq!(error.to_string(), "binding the daemon's mount onto the mountpoint did not return");
        assert_eq!(rig.elapsed(), CHECK_TIMEOUT);
        rig.sys.release();
    }

    #[tokio::test(start_paused = true)]
    async fn attach_never_binds_the_bare_staging_directory() {
        let sys = FakeSys::new().mounted(&[ROOT, POD_BIND, STAGE_TMPFS]);
        let mut rig = rig(fuse_volume(), sys);
        let error = attach(&mut rig).await.expect_err("no daemon's mount");

        assert_eq!(error.to_string(), "the daemon's mount is no longer at the staging directory");
        assert!(rig.binds().is_empty());
        assert_eq!(rig.mounted_at(MOUNTPOINT), ["tmpfs"]);
    }

    /// Kills the daemon `status` names and waits until it has exited (a zombie, or reaped).
    fn kill_daemon(status: &SharedStatus) {
        let pid = status.lock().unwrap().pid.expect("a daemon runs");
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let stat = format!("/proc/{pid}/stat");
        let exited = || {
            std::fs::read_to_string(&stat)
                .map_or(true, |s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        };
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !exited() {
            assert!(std::time::Instant::now() < until, "daemon {pid} did not exit");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The state letter of `pid` in `/proc/PID/stat`, or None once it is reaped.
    fn state_of(pid: i32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_spawn_gives_its_turn_away_after_a_while() {
        let turns = tokio::sync::Semaphore::new(2);
        let slow = Duration::from_secs(1);
        let started = Instant::now();
        let hung = || in_turn(&turns, slow, std::future::pending::<()>());
        let quick = async {
            // Asks once the two hung ones hold both turns.
            tokio::task::yield_now().await;
            in_turn(&turns, slow, async { Instant::now() }).await
        };
        let ran = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::select! {
                () = hung() => unreachable!("never done"),
                () = hung() => unreachable!("never done"),
                ran = quick => ran,
            }
        })
        .await
        .expect("the quick one got a turn");
        // It waited for a turn until the hung ones gave theirs up, and no longer.
        assert_eq!(ran - started, slow);
        // A quick one keeps its turn until it is done: nobody else got in meanwhile.
        let turns = tokio::sync::Semaphore::new(1);
        let first = in_turn(&turns, slow, async {
            sleep(slow / 2).await;
            turns.available_permits()
        });
        assert_eq!(first.await, 0);
        assert_eq!(turns.available_permits(), 1);
    }

    // Real time: the spawn runs on a thread of the pool, held back by the test,
    // which holds the spawn lock across the wait on purpose.
    #[tokio::test]
    #[allow(clippy::await_holding_lock)]
    async fn a_daemon_spawned_after_its_spawn_was_given_up_is_killed_and_reaped() {
        let mut rig = rig(fuse_volume(), FakeSys::new().mounted(&[ROOT, POD_BIND]));
        rig.task.ctx.mount_timeout = Duration::from_millis(200);
        let children = rig.task.ctx.children.clone();
        let held = children.hold_spawns();
        let argv = vec!["sleep".to_string(), "3600".to_string()];
        let spawning = Arc::default();
        let spawn = || Task::spawn_daemon(&rig.task.ctx, &spawning, argv.clone(), BTreeMap::new(), vec![]);
        let error = spawn().await.expect_err("the spawn is held");
        assert!(matches!(error, VolumeError::SpawnHung { .. }), "{error}");
        // The next start does not leave one more thread behind the hung one.
        let asked = std::time::Instant::now();
        let error = spawn().await.expect_err("the last spawn is still held");
        assert!(matches!(error, VolumeError::SpawnStillHung { .. }), "{error}");
        assert!(asked.elapsed() < Duration::from_millis(100), "waited {:?}", asked.elapsed());
        assert!(error.to_string().starts_with("the last start of sleep has not returned yet"), "{error}");
        // The exec returns at last: the daemon nobody waits for must not run on.
        drop(held);
        spawned_then_gone(&children).await;
        // And the volume may start again.
        let mut daemon = spawn().await.expect("spawned once the hung one returned");
        daemon.signal(Signal::SIGKILL);
        daemon.wait(&children).await.unwrap();
    }

    /// Waits for the spawn let go to finish, then for its daemon to be killed and
    /// reaped. A spawn slower than a second is not seen: the test passes then.
    async fn spawned_then_gone(children: &Children) {
        let spawned = std::time::Instant::now() + Duration::from_secs(1);
        while children.pids().is_empty() && std::time::Instant::now() < spawned {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let pids = children.pids();
            if pids.is_empty() {
                break;
            }
            let running: Vec<_> = pids.iter().filter(|&&pid| state_of(pid).is_some_and(|s| s != 'Z')).collect();
            assert!(std::time::Instant::now() < until, "left running and registered: {running:?} of {pids:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // Real time, as above.
    #[tokio::test]
    #[allow(clippy::await_holding_lock)]
    async fn a_stop_does_not_wait_for_a_hung_spawn() {
        let dir = tempfile::tempdir().unwrap();
        let stages = dir.path().join("stage");
        let stage_tmpfs = format!("30 1 0:30 / {} rw - tmpfs sidemount-stage rw", stages.display());
        let sys = FakeSys::new().mounted(&[ROOT, POD_BIND, &stage_tmpfs]);
        let mut volume = fuse_volume();
        volume.source = Source::Fuse { command: vec!["sleep".into(), "3600".into()] };
        let rig = rig_staged(volume, sys, &stages);
        let (children, status) = (rig.task.ctx.children.clone(), rig.task.status.clone());
        let held = children.hold_spawns();
        let running = tokio::spawn(rig.task.run());
        while status.lock().unwrap().phase != Phase::Mounting {
            sleep(Duration::from_millis(10)).await;
        }
        sleep(Duration::from_millis(100)).await;

        // The stop is served within its budget, not after the spawn's 30 s.
        let asked = std::time::Instant::now();
        rig.stop.send(Deadlines::within(Duration::from_secs(2))).unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(10), running).await;
        assert!(stopped.is_ok(), "still spawning {:?} after the stop", asked.elapsed());
        assert!(asked.elapsed() < Duration::from_secs(2), "stopped after {:?}", asked.elapsed());
        // The spawn returns at last: its daemon is not left running.
        drop(held);
        spawned_then_gone(&children).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_bind_is_reported_and_the_volume_started_again_after_the_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let (stages, stage) = (dir.path().join("stage"), dir.path().join("stage/data"));
        let stage_tmpfs = format!("30 1 0:30 / {} rw - tmpfs sidemount-stage rw", stages.display());
        let daemon_at_stage = format!("31 30 0:31 / {} rw - fuse.bindfs bindfs rw", stage.display());
        let status = Arc::new(std::sync::OnceLock::<SharedStatus>::new());
        let (binds, dying) = (Arc::new(std::sync::atomic::AtomicUsize::new(0)), status.clone());
        let staged = stage.clone();
        let sys = FakeSys::new()
            .mounted(&[ROOT, POD_BIND, &stage_tmpfs, &daemon_at_stage])
            // Each daemon's mount at the stage: the one line, which no unmount of the stage removes.
            .answers_when(Method::Unmount, move |p| p == staged, [], Answer::Err(Errno::EINVAL))
            // The first two binds fail, and their daemons die as they do (its connection
            // lost with the bind, as a daemon can): each start ends there.
            .answers(Method::Bind, [Answer::Err(Errno::EIO); 2], Answer::Ok)
            .on(
                |c| matches!(c, Call::Bind(..)),
                move || {
                    if binds.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                        kill_daemon(dying.get().unwrap());
                    }
                },
            );
        let mut volume = fuse_volume();
        volume.source = Source::Fuse { command: vec!["sleep".into(), "3600".into()] };
        let rig = rig_staged(volume, sys, &stages);
        status.set(rig.task.status.clone()).unwrap();
        let (sys, children) = (rig.sys.clone(), rig.task.ctx.children.clone());
        let status = rig.task.status.clone();
        let running = tokio::spawn(rig.task.run());
        let ready = async {
            while status.lock().unwrap().phase != Phase::Ready {
                sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ready).await.expect("ready in the end");

        // Each failure said why; the first start again at once, the next after the
        // backoff's 500 ms; the third bind is the volume's mount, on top at the mountpoint.
        let started = rig.started;
        let bound_at: Vec<Duration> = sys
            .calls_at()
            .into_iter()
            .filter(|(_, c)| matches!(c, Call::Bind(..)))
            .map(|(at, _)| at - started)
            .collect();
        assert_eq!(bound_at, [Duration::ZERO, Duration::ZERO, backoff(2)]);
        assert_eq!(backoff(2), Duration::from_millis(500));
        {
            let s = status.lock().unwrap();
            assert_eq!((s.errors, s.restarts), (2, 2));
            assert_eq!(
                s.last_error.as_deref(),
                Some("cannot bind the daemon's mount onto the mountpoint: EIO: I/O error")
            );
        }
        let on_top = sys.table().volume_at(Path::new(MOUNTPOINT), |m| m.is_fuse()).map(|m| m.dev);
        assert_eq!(on_top, Some((0, 31)));

        // Stopped: the bind is gone, and so are the daemons.
        rig.stop.send(Deadlines::within(Duration::from_secs(2))).unwrap();
        running.await.unwrap();
        assert_eq!(sys.table().stack_at(Path::new(MOUNTPOINT)).len(), 1);
        assert_eq!(children.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_mount_unmounted_by_someone_else_is_bound_again_until_a_bind_fails() {
        let sys = FakeSys::new().mounted(&[ROOT, POD_BIND, STAGE_TMPFS, DAEMON_AT_STAGE, BOUND]).answers(
            Method::Bind,
            [Answer::Ok],
            Answer::Err(Errno::EIO),
        );
        let mut rig = rig(fuse_volume(), sys);
        let (sys, status) = (rig.sys.clone(), rig.task.status.clone());
        let mut keeper = Keeper::Kernel;
        let watching = rig.task.watch_mounted(&mut keeper, 32);
        tokio::pin!(watching);

        // Unmounted by someone else: bound again from the stage at once, and counted.
        sys.unmount_top(Path::new(MOUNTPOINT));
        tokio::select! {
            _ = &mut watching => panic!("the watch ended after a repair that worked"),
            _ = sleep(Duration::from_secs(1)) => {}
        }
        let again = sys.table().volume_at(Path::new(MOUNTPOINT), |m| m.is_fuse()).map(|m| (m.id, m.dev));
        assert!(matches!(again, Some((id, (0, 31))) if id != 32), "{again:?}");
        assert_eq!(status.lock().unwrap().repairs, 1);
        // Unmounted again, and the bind fails: the volume is gone (and is started again).
        sys.unmount_top(Path::new(MOUNTPOINT));
        let event = tokio::time::timeout(Duration::from_secs(1), &mut watching).await.expect("the watch ends");
        assert!(matches!(event, Event::Gone));
        assert_eq!(sys.count(Method::Bind), 2);
        assert_eq!(status.lock().unwrap().repairs, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stop_is_seen_by_every_later_step() {
        let (tx, rx) = oneshot::channel();
        let mut stop = Stop::new(rx);
        assert!(stop.requested().is_none());
        let deadlines = Deadlines::within(Duration::from_secs(4));
        tx.send(deadlines).unwrap();
        assert_eq!(stop.requested().map(|d| d.last), Some(deadlines.last));
        // Received once, it stays: awaiting again returns at once instead of panicking.
        assert_eq!(stop.recv().await.last, deadlines.last);
        assert_eq!(stop.recv().await.last, deadlines.last);
        // A supervisor that is gone is a stop too.
        let (tx, rx) = oneshot::channel::<Deadlines>();
        drop(tx);
        assert!(Stop::new(rx).requested().is_some());
    }
}
