//! The supervisor: `sidemount run`. Checks that the environment can work,
//! starts a task per volume, reconciles spec changes, reaps orphans, and on
//! SIGTERM takes every volume down inside the shutdown budget.
//!
//! It sleeps until something happens: the mount table is watched with `poll`
//! on `/proc/self/mountinfo`, the spec with inotify, children with SIGCHLD.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn};

use crate::daemon::Children;
use crate::endpoints::{self, Registry};
use crate::file_watch::{self, Broken, DirWatch};
use crate::mount_watch::MountWatch;
use crate::mounts::MountTable;
use crate::settings::Settings;
use crate::signals;
use crate::spec::{self, Reading, Source, Volume};
use crate::sys::{self, Sys};
mod plan;
mod preflight;

use plan::{by_name, load_specs, plan_reload, Loaded};
use preflight::check_environment;

use crate::volume::{Context, Deadlines, Handle, Phase, SharedStatus, Status};

/// Why `sidemount run` could not start; each names what to change.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    InvalidSpec(#[from] spec::Invalid),
    #[error("no CAP_SYS_ADMIN: mounting needs it; run the sidecar with `securityContext.privileged: true`")]
    NoCapSysAdmin,
    #[error("SIDEMOUNT_ROOT {root}: {source}; mount the pod volumes under it in the sidecar")]
    Root { root: PathBuf, source: std::io::Error },
    #[error("volume {volume}: its mountpoint {mountpoint} does not exist; mount the pod volume {volume} in the sidecar at {mountpoint} with `mountPropagation: Bidirectional`")]
    NoMountpoint { volume: String, mountpoint: PathBuf },
    #[error("volume {volume}: {mountpoint} is on a mount without shared propagation ({holder}); set `mountPropagation: Bidirectional` and `privileged: true` on the sidecar's volumeMount so the app sees the mount")]
    NotShared { volume: String, mountpoint: PathBuf, holder: String },
    #[error("volume {volume}: /dev/fuse is missing; run the sidecar with `securityContext.privileged: true` (it brings /dev/fuse)")]
    NoFuseDevice { volume: String },
    #[error("volume {volume}: {program:?} is not installed in this image (not found on PATH); use an image that has it{}", if *.from_command { ", or fix command[0]" } else { "" })]
    MissingProgram { volume: String, program: String, from_command: bool },
    #[error("volume {volume}: /dev/zfs is missing: the node has no zfs kernel module; load it on the node (modprobe zfs) or schedule the pod on nodes with ZFS")]
    NoZfsModule { volume: String },
    #[error("volume {volume}: device {} not found; attach it to the node, or fix `device`", device.display())]
    NoDevice { volume: String, device: PathBuf },
    #[error("volume {volume}: {message}")]
    Credentials { volume: String, message: String },
    #[error("volume {volume}: its secretName {secret:?} is not mounted at {}: add a Secret volume for {secret:?} and mount it read-only at that path in the sidemount container", dir.display())]
    SecretNotMounted { volume: String, secret: String, dir: PathBuf },
    #[error("cannot read the mount table: {0}")]
    MountTable(std::io::Error),
    #[error("cannot serve the probe endpoints on {addr}: {source}; set SIDEMOUNT_LISTEN to a free address")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot set up {what}: {source}")]
    Setup { what: &'static str, source: std::io::Error },
    #[error("shutdown cut short: {0} not taken down by the deadline; the log says what was still running")]
    CutShort(String),
    #[error("writes the app made were not all sent on before the daemons stopped: {0}")]
    Unflushed(String),
    #[error("shutdown left mounts of its own ({0}): the kubelet cannot remove the pod volume while they are there, and would empty a block or zfs one; the log says why each stayed")]
    LeftMounted(String),
}

impl RunError {
    /// Exit codes of the contract: 64 invalid specs, 78 an environment that can't work.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::InvalidSpec(_) => crate::exit::INVALID,
            RunError::CutShort(_) | RunError::Unflushed(_) | RunError::LeftMounted(_) => crate::exit::FAILURE,
            _ => crate::exit::ENVIRONMENT,
        }
    }
}

/// When someone mounted at a mountpoint during the shutdown: how long the
/// mountpoints must then stay clean before the shutdown calls itself clean.
const QUIET: Duration = Duration::from_millis(500);

/// Where in the stage the FUSE control filesystem is mounted.
const FUSE_CONTROL: &str = ".fusectl";

/// How long after a spec that could not be read (mid-write) it is read once
/// more, in case the write finished without a further event.
const REREAD_AFTER: Duration = Duration::from_secs(1);

/// A deadline `by` after `at`. The duration settings are bounded, so this never
/// overflows; were it to, the deadline would be `at`, not an abort.
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by).unwrap_or(at)
}

/// Runs the supervisor until SIGTERM or SIGINT.
pub async fn run(mut settings: Settings, sys: Arc<dyn Sys>) -> Result<(), RunError> {
    sys::prestart_bounded_calls();
    let config_seen = std::fs::metadata(&settings.config).is_ok();
    let volumes = match load_specs(&settings.config, settings.volumes.as_deref(), Reading::Start) {
        Loaded::Volumes(volumes) => volumes,
        Loaded::Unreadable(invalid) | Loaded::Invalid(invalid) => return Err(invalid.into()),
    };
    // Mount tables name real paths: a root reached through a symlink is resolved
    // whenever it exists (and when it appears, see `resolve_root`).
    let root_resolved = match std::fs::canonicalize(&settings.root) {
        Ok(root) => {
            settings.root = root;
            true
        }
        Err(source) if !volumes.is_empty() => return Err(RunError::Root { root: settings.root.clone(), source }),
        Err(_) => false,
    };
    // The watch's first read serves the preflight and the stage's setup too: one
    // read of the table before the first mount, not one per step.
    let table = MountWatch::start().map_err(RunError::MountTable)?;
    check_environment(&volumes, &settings.root, sys.as_ref(), settings.check_timeout, &table.latest()).await?;
    if let Err(err) = sys::become_subreaper() {
        warn!(%err, "cannot become the reaper of orphaned helpers");
    }
    match sys::raise_open_files_limit() {
        Ok((before, now)) if before != now => debug!(before, now, "raised the open-files limit"),
        Ok(_) => {}
        Err(err) => warn!(%err, "cannot raise the open-files limit"),
    }

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| RunError::Listen { addr: settings.listen, source })?;
    let registry = Registry::new(sys.clone(), settings.check_timeout);

    let (config_tx, mut config_rx) = mpsc::channel(1);
    let _config_watch = watch_config(&settings.config, config_tx)
        .inspect_err(|err| warn!(%err, config = %settings.config.display(), "spec changes will not be noticed"))
        .ok();

    let (hurry_tx, hurry_rx) = watch::channel(false);
    let ctx = Context {
        sys: sys.clone(),
        children: Children::new(),
        check_timeout: settings.check_timeout,
        mount_timeout: settings.mount_timeout,
        objectivefs_volumes: Default::default(),
        hurry: hurry_rx,
        stage: settings.stage.clone(),
        unflushed: Default::default(),
        stage_release: Default::default(),
        fuse_control: None,
    };
    let mut supervisor = Supervisor {
        settings,
        ctx,
        table,
        registry,
        volumes: BTreeMap::new(),
        next_seq: 0,
        stage_ready: false,
        wanted: BTreeMap::new(),
        refused: BTreeMap::new(),
        stopping: JoinSet::new(),
        stopping_status: BTreeMap::new(),
        root_resolved,
        config_seen,
        loading: None,
        load_again: false,
        reread_at: None,
    };
    // Before anything is mounted: a signal from here on starts the shutdown, and a
    // handler that cannot be set up leaves nothing mounted behind.
    let setup = |err: signals::SetupError| RunError::Setup { what: err.what, source: err.source };
    let mut shutdown = signals::shutdown().map_err(setup)?;
    let mut child_exits = signals::child_exits().map_err(setup)?;
    if volumes.iter().any(|v| !v.source.is_kernel_mount()) {
        supervisor.prepare_stage()?;
    }
    info!(volumes = volumes.len(), root = %supervisor.settings.root.display(), "starting");
    // Every volume passed preflight above.
    supervisor.apply(Loaded::Volumes(volumes), BTreeMap::new());
    // Served only once every volume is registered: an empty registry reads as ready.
    let limits = endpoints::Limits::default();
    let http_task = tokio::spawn(endpoints::serve(listener, supervisor.registry.clone(), limits));
    // Checks run beside the loop: a hung volume costs them up to twice the check
    // timeout, which must not hold up a signal or a reload.
    let checks = spawn_periodic_checks(supervisor.registry.clone(), supervisor.settings.check_interval);

    // Nothing in this loop waits for a volume, a read or a parse: the shutdown
    // budget starts at the first signal, whatever is going on.
    loop {
        let reread_at = supervisor.reread_at;
        tokio::select! {
            stop = shutdown.requested() => { info!("{stop}: unmounting every volume"); break; }
            _ = child_exits.recv() => {
                for pid in supervisor.ctx.children.reap_orphans() {
                    debug!(pid, "reaped an orphaned process");
                }
            }
            Some(()) = config_rx.recv() => supervisor.request_load(false),
            _ = sleep_until(reread_at.unwrap_or_else(Instant::now)), if reread_at.is_some() => {
                supervisor.reread_at = None;
                supervisor.request_load(true);
            }
            (result, reread) = finished(&mut supervisor.loading), if supervisor.loading.is_some() => {
                supervisor.on_loaded(result, reread);
            }
            Some(stopped) = supervisor.stopping.join_next(), if !supervisor.stopping.is_empty() => {
                supervisor.on_stopped(stopped);
            }
        }
    }
    checks.abort();

    let budget = supervisor.settings.shutdown_timeout;
    let drain = supervisor.shutdown(budget);
    tokio::pin!(drain);
    let result = tokio::select! {
        result = &mut drain => result,
        _ = shutdown.hurried() => {
            // A second signal shortens every deadline to now: busy mounts are detached
            // and daemons signalled at once.
            warn!("second signal: detaching what is busy and signalling the daemons now");
            let _ = hurry_tx.send(true);
            drain.await
        }
    };
    http_task.abort();
    result
}

/// Checks the volumes each `interval`, in its own task (see `volume::check_when_needed`),
/// on a kernel timer: one wakeup per check (see `sys::Ticker`).
fn spawn_periodic_checks(registry: Arc<Registry>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut kernel = sys::Ticker::every(interval)
            .inspect_err(|err| warn!(%err, "no kernel timer: the periodic check runs on the runtime's"))
            .ok();
        // Made only without the kernel timer: a tokio timer, once set, wakes the
        // runtime as it steps down its wheel.
        let mut fallback: Option<tokio::time::Interval> = None;
        loop {
            if let Some(timer) = &kernel {
                if let Err(err) = timer.tick().await {
                    warn!(%err, "the kernel timer failed: the periodic check runs on the runtime's");
                    kernel = None;
                }
            }
            if kernel.is_none() {
                let ticker = fallback.get_or_insert_with(|| {
                    let mut ticker = tokio::time::interval(interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticker.reset();
                    ticker
                });
                ticker.tick().await;
            }
            registry.check_idle().await;
        }
    })
}

/// A finished load: the specs, whether the config path exists, and why
/// preflight refused each of the volumes it would start that it refused.
struct Load {
    loaded: Loaded,
    config_exists: bool,
    refusals: BTreeMap<String, String>,
}

/// A load in flight; `true` when it is the re-read after an unreadable spec.
type Loading = (tokio::task::JoinHandle<Load>, bool);

/// The load in flight, once it is done.
async fn finished(loading: &mut Option<Loading>) -> (Result<Load, tokio::task::JoinError>, bool) {
    let Some((task, reread)) = loading.as_mut() else { return std::future::pending().await };
    let reread = *reread;
    let result = task.await;
    *loading = None;
    (result, reread)
}

struct Supervisor {
    settings: Settings,
    ctx: Context,
    table: MountWatch,
    registry: Arc<Registry>,
    /// Running volumes with the order they were started in.
    volumes: BTreeMap<String, (u64, Handle)>,
    next_seq: u64,
    /// The private tmpfs where daemons mount is in place.
    stage_ready: bool,
    /// The latest valid spec: the volumes that should run.
    wanted: BTreeMap<String, Volume>,
    /// Wanted volumes that preflight refused, shown as failed with the reason;
    /// tried again on the next spec change.
    refused: BTreeMap<String, SharedStatus>,
    /// Volumes being taken down after a spec change, named by their task's result;
    /// a changed one starts again when its old instance is down.
    stopping: JoinSet<String>,
    /// The volumes a spec change is taking down: what `/status` shows of them, and
    /// what of the mount table is theirs.
    stopping_status: BTreeMap<String, (SharedStatus, crate::volume::Owned)>,
    /// SIDEMOUNT_ROOT is resolved to its real path (it did not exist at start).
    root_resolved: bool,
    /// SIDEMOUNT_CONFIG has existed: from then on its absence is a write under way.
    config_seen: bool,
    loading: Option<Loading>,
    /// A change came in while a load was in flight: load again after it.
    load_again: bool,
    /// When an unreadable spec is read once more.
    reread_at: Option<Instant>,
}

impl Supervisor {
    /// Mounts a private tmpfs at SIDEMOUNT_STAGE for the daemons to mount in.
    fn prepare_stage(&mut self) -> Result<(), RunError> {
        if self.stage_ready {
            return Ok(());
        }
        let stage = &self.settings.stage;
        let setup = |source| RunError::Setup { what: "the staging directory (SIDEMOUNT_STAGE)", source };
        std::fs::create_dir_all(stage).map_err(setup)?;
        let stage = std::fs::canonicalize(stage).map_err(setup)?;
        // An earlier instance in this container left its stage, with the dead mounts of
        // its daemons: detach it whole, so the table holds only what this one mounts.
        // The table the watch read at start, when nothing of this instance was
        // mounted yet; after a detach, a read of its own.
        let mut table = self.table.latest();
        for _ in 0..16 {
            if !table.is_mount_point(&stage) {
                break;
            }
            match self.ctx.sys.unmount(&stage, crate::sys::Unmount::Detach) {
                Ok(()) => {}
                // Gone since the table was read: nothing to detach.
                Err(nix::errno::Errno::EINVAL) => break,
                Err(e) => return Err(setup(e.into())),
            }
            table = Arc::new(MountTable::read_self().map_err(RunError::MountTable)?);
        }
        self.ctx.sys.private_tmpfs(&stage).map_err(|e| setup(e.into()))?;
        debug!(stage = %stage.display(), "staging directory ready");
        // The FUSE connections, where the periodic check sees whether a daemon has
        // requests waiting; inside the private stage, it propagates nowhere. A dot
        // name is no volume's (volume names are DNS labels).
        let control = stage.join(FUSE_CONTROL);
        match std::fs::create_dir(&control)
            .map_err(|e| e.to_string())
            .and_then(|()| self.ctx.sys.fuse_control(&control).map_err(|e| e.to_string()))
        {
            Ok(()) => match std::fs::File::open(&control) {
                Ok(opened) => {
                    let opened = Arc::new(opened);
                    self.registry.set_fuse_connections(opened.clone());
                    self.ctx.fuse_control = Some(opened);
                }
                Err(err) => debug!(%err, "fusectl cannot be opened: the periodic check asks every daemon"),
            },
            Err(err) => debug!(%err, "no fusectl: the periodic check asks every daemon"),
        }
        self.ctx.stage = stage;
        self.stage_ready = true;
        Ok(())
    }

    /// Resolves SIDEMOUNT_ROOT once it exists, if it did not at start.
    fn resolve_root(&mut self) {
        if self.root_resolved {
            return;
        }
        if let Ok(root) = std::fs::canonicalize(&self.settings.root) {
            debug!(root = %root.display(), "SIDEMOUNT_ROOT is there now");
            self.settings.root = root;
            self.root_resolved = true;
        }
    }

    /// Reads and parses the specs on a blocking thread, then preflights the
    /// volumes that would start, in a task of its own; or, when a load is in
    /// flight already, does it once more after that one.
    fn request_load(&mut self, reread: bool) {
        if self.loading.is_some() {
            self.load_again = true;
            return;
        }
        self.resolve_root();
        let (config, inline) = (self.settings.config.clone(), self.settings.volumes.clone());
        let reading = if self.config_seen { Reading::Reload } else { Reading::Start };
        let (root, sys, check_timeout, mounts) =
            (self.settings.root.clone(), self.ctx.sys.clone(), self.settings.check_timeout, self.table.clone());
        // What runs now: only a volume that would start needs a preflight.
        let running: BTreeMap<String, Volume> =
            self.volumes.iter().map(|(name, (_, handle))| (name.clone(), handle.volume.clone())).collect();
        let task = tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || {
                let loaded = load_specs(&config, inline.as_deref(), reading);
                (loaded, std::fs::metadata(&config).is_ok())
            });
            let (loaded, config_exists) = read.await.unwrap_or_else(|err| {
                let problem = spec::Problem {
                    origin: "SIDEMOUNT_CONFIG".into(),
                    field: "volumes".into(),
                    message: format!("reading the spec failed: {err}"),
                };
                (Loaded::Unreadable(spec::Invalid(vec![problem])), false)
            });
            let mut refusals = BTreeMap::new();
            if let Loaded::Volumes(volumes) = &loaded {
                let starting: Vec<&Volume> = volumes.iter().filter(|v| running.get(&v.name) != Some(*v)).collect();
                // One read of the table for every volume that would start.
                let table = match starting.is_empty() {
                    true => Ok(Default::default()),
                    false => mounts.fresh().await,
                };
                for volume in starting {
                    let checked = match &table {
                        Ok(table) => {
                            let one = std::slice::from_ref(volume);
                            check_environment(one, &root, sys.as_ref(), check_timeout, table).await
                        }
                        Err(message) => Err(RunError::MountTable(std::io::Error::other(message.clone()))),
                    };
                    if let Err(err) = checked {
                        refusals.insert(volume.name.clone(), err.to_string());
                    }
                }
            }
            Load { loaded, config_exists, refusals }
        });
        self.loading = Some((task, reread));
    }

    /// Applies a finished load: a valid spec is reconciled; any other changes nothing.
    fn on_loaded(&mut self, result: Result<Load, tokio::task::JoinError>, reread: bool) {
        let (loaded, refusals) = match result {
            Ok(Load { loaded, config_exists, refusals }) => {
                if config_exists && matches!(loaded, Loaded::Volumes(_)) {
                    self.config_seen = true;
                }
                (loaded, refusals)
            }
            Err(err) => {
                let problem = spec::Problem {
                    origin: self.settings.config.display().to_string(),
                    field: "volumes".into(),
                    message: format!("reading the spec failed: {err}"),
                };
                (Loaded::Unreadable(spec::Invalid(vec![problem])), BTreeMap::new())
            }
        };
        match &loaded {
            Loaded::Volumes(volumes) => {
                let settled = self.refused.is_empty()
                    && self.wanted.iter().all(|(name, volume)| {
                        self.stopping_status.contains_key(name)
                            || self.volumes.get(name).is_some_and(|(_, h)| h.volume == *volume)
                    });
                self.reread_at = None;
                if settled && by_name(volumes) == self.wanted {
                    debug!("spec files changed, volumes did not");
                    self.registry.set_config_error(None);
                } else {
                    info!(volumes = volumes.len(), "spec changed: reconciling");
                    self.registry.reloads.fetch_add(1, Ordering::Relaxed);
                    self.apply(loaded, refusals);
                }
            }
            Loaded::Unreadable(invalid) | Loaded::Invalid(invalid) => {
                error!("spec change refused, the running volumes stay as they are: {invalid}");
                self.registry.reload_errors.fetch_add(1, Ordering::Relaxed);
                self.registry.set_config_error(Some(invalid.to_string()));
                if matches!(loaded, Loaded::Unreadable(_)) && !reread {
                    self.reread_at = Some(later(Instant::now(), REREAD_AFTER));
                }
                self.apply(loaded, refusals);
            }
        }
        if std::mem::take(&mut self.load_again) {
            self.request_load(false);
        }
    }

    /// Brings the running volumes in line with a finished load, given what
    /// preflight refused of the volumes it would start (a refused change leaves
    /// the old instance running). Stops are started here and awaited in the
    /// loop; nothing here waits.
    fn apply(&mut self, loaded: Loaded, mut refusals: BTreeMap<String, String>) {
        let running: BTreeMap<String, Volume> =
            self.volumes.iter().map(|(name, (_, handle))| (name.clone(), handle.volume.clone())).collect();
        if let Loaded::Volumes(volumes) = &loaded {
            let starting = volumes.iter().filter(|v| running.get(&v.name) != Some(*v));
            let daemons: Vec<&Volume> = starting.filter(|v| !v.source.is_kernel_mount()).collect();
            if !daemons.is_empty() {
                if let Err(err) = self.prepare_stage() {
                    daemons.iter().for_each(|v| drop(refusals.insert(v.name.clone(), err.to_string())));
                }
            }
            refusals.retain(|name, _| running.get(name) != volumes.iter().find(|v| &v.name == name));
            for (name, message) in &refusals {
                error!(volume = %name, "{message}");
            }
        }
        let plan = plan_reload(&running, &loaded, &refusals.keys().cloned().collect());
        for name in &plan.stop {
            if let Some((_, handle)) = self.volumes.remove(name) {
                let wanted = matches!(&loaded, Loaded::Volumes(v) if v.iter().any(|v| &v.name == name));
                info!(volume = %name, change = if wanted { "changed" } else { "removed" }, "taking the volume down");
                self.stopping_status.insert(name.clone(), (handle.status.clone(), handle.owned()));
                let name = name.clone();
                let deadlines = Deadlines::within(self.settings.shutdown_timeout);
                self.stopping.spawn(async move {
                    handle.stop(deadlines).await;
                    name
                });
            }
        }
        let Loaded::Volumes(volumes) = loaded else { return };
        self.wanted = by_name(&volumes);
        let objectivefs = volumes.iter().filter(|v| matches!(v.source, Source::ObjectiveFs { .. })).count();
        self.ctx.objectivefs_volumes.store(objectivefs, Ordering::Relaxed);
        self.refused = refusals
            .iter()
            .filter(|(name, _)| !self.volumes.contains_key(*name))
            .filter_map(|(name, message)| Some((name.clone(), self.failed_status(self.wanted.get(name)?, message))))
            .collect();
        for name in &plan.start {
            // A changed volume starts once its old instance is down (`on_stopped`).
            if !self.stopping_status.contains_key(name) {
                self.start(name);
            }
        }
        self.registry.set_config_error(
            (!refusals.is_empty()).then(|| refusals.values().cloned().collect::<Vec<_>>().join("; ")),
        );
        self.publish();
    }

    /// A volume that was requested and cannot run: not ready, and says why.
    fn failed_status(&self, volume: &Volume, message: &str) -> SharedStatus {
        let mut status = Status::new(volume, &self.settings.mountpoint(&volume.name));
        status.phase = Phase::Failed;
        status.errors = 1;
        status.last_error = Some(message.to_string());
        Arc::new(std::sync::Mutex::new(status))
    }

    fn start(&mut self, name: &str) {
        let Some(volume) = self.wanted.get(name).cloned() else { return };
        let mountpoint = self.settings.mountpoint(name);
        let handle = Handle::start(volume, mountpoint, self.ctx.clone(), self.table.clone());
        self.volumes.insert(name.to_string(), (self.next_seq, handle));
        self.next_seq += 1;
    }

    /// A volume taken down after a spec change is down: start its new version if
    /// it has one.
    fn on_stopped(&mut self, stopped: Result<String, tokio::task::JoinError>) {
        let name = match stopped {
            Ok(name) => name,
            Err(err) => {
                error!(%err, "a volume's stop failed");
                // Which one is unknown: forget those whose task is gone.
                let done: Vec<String> = self
                    .stopping_status
                    .iter()
                    .filter(|(_, (s, _))| s.lock().expect("status lock").phase == Phase::Stopped)
                    .map(|(n, _)| n.clone())
                    .collect();
                done.iter().for_each(|n| drop(self.stopping_status.remove(n)));
                return self.publish();
            }
        };
        self.stopping_status.remove(&name);
        // Its new version passed preflight when the spec was loaded.
        if self.wanted.contains_key(&name) && !self.volumes.contains_key(&name) && !self.refused.contains_key(&name) {
            self.start(&name);
        }
        self.publish();
    }

    /// Tells the endpoints about every wanted volume: running, refused, or
    /// waiting for its old instance to go down.
    fn publish(&self) {
        let statuses = self
            .wanted
            .keys()
            .filter_map(|name| {
                let running = self.volumes.get(name).map(|(_, h)| h.status.clone());
                running.or_else(|| {
                    self.refused.get(name).or_else(|| self.stopping_status.get(name).map(|(s, _)| s)).cloned()
                })
            })
            .collect();
        self.registry.set_volumes(statuses);
    }

    /// A task that ends as soon as the count of mounts at the volumes'
    /// mountpoints rises: someone is mounting there while they are taken down.
    fn watch_for_rebinds(&self, owned: &[crate::volume::Owned]) -> tokio::task::JoinHandle<()> {
        let (watch, paths) = (self.table.clone(), owned.iter().map(|o| o.mountpoint.clone()).collect::<Vec<_>>());
        tokio::spawn(async move {
            let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
            let mut changes = watch.subscribe(&refs);
            let count = |table: &MountTable| paths.iter().map(|p| table.at(p).count()).sum::<usize>();
            let mut before = count(&watch.latest());
            loop {
                changes.changed().await;
                let now = count(&watch.latest());
                if now > before {
                    return;
                }
                before = now;
            }
        })
    }

    /// Takes every volume down: kernel mounts first (a leftover one would be
    /// emptied by the kubelet's recursive delete of the emptyDir), then the
    /// rest, newest first; each under the same deadlines.
    async fn shutdown(mut self, budget: Duration) -> Result<(), RunError> {
        let deadlines = Deadlines::within(budget);
        let mut handles: Vec<(u64, Handle)> = std::mem::take(&mut self.volumes).into_values().collect();
        handles.sort_by_key(|(seq, h)| (!h.is_kernel_mount(), std::cmp::Reverse(*seq)));
        let mut names: Vec<String> = handles.iter().map(|(_, h)| h.volume.name.clone()).collect();
        let mut owned: Vec<_> = handles.iter().map(|(_, h)| h.owned()).collect();
        let mut statuses: Vec<_> = handles.iter().map(|(_, h)| h.status.clone()).collect();
        // Stops a spec change began go on under their own deadlines, which end
        // before these: they started before the signal, with the same budget.
        let mut changed = std::mem::take(&mut self.stopping);
        for (name, (status, mounts)) in std::mem::take(&mut self.stopping_status) {
            names.push(name);
            statuses.push(status);
            owned.push(mounts);
        }
        let rebound = self.watch_for_rebinds(&owned);
        // Rebinds the watch can miss (a bind and an unmount between two reads of the
        // table): the teardowns unmounting more layers than were there.
        let ours_at_start = match self.table.fresh().await {
            Ok(table) => owned.iter().map(|o| table.at(&o.mountpoint).filter(|m| o.matcher.matches(m)).count()).sum(),
            Err(_) => usize::MAX,
        };
        let unmounted = |statuses: &[SharedStatus]| -> u64 {
            statuses.iter().map(|s| s.lock().expect("status lock").unmounted).sum()
        };
        let unmounted_before = unmounted(&statuses);
        let until = later(deadlines.last, Duration::from_millis(500));
        let (kernel, fuse): (Vec<_>, Vec<_>) = handles.into_iter().partition(|(_, h)| h.is_kernel_mount());
        let shared = Deadlines { shutdown: true, ..deadlines };
        if self.stage_ready {
            self.ctx.stage_release.arm(fuse.iter().filter(|(_, h)| !h.is_kernel_mount()).count());
        }
        for group in [kernel, fuse] {
            let mut stopping = JoinSet::new();
            for (_, handle) in group {
                let deadlines = if handle.is_kernel_mount() { deadlines } else { shared };
                stopping.spawn(handle.stop(deadlines));
            }
            let all_done = async { while stopping.join_next().await.is_some() {} };
            if tokio::time::timeout_at(until, all_done).await.is_err() {
                break;
            }
        }
        let _ = tokio::time::timeout_at(until, async { while changed.join_next().await.is_some() {} }).await;
        let left: Vec<String> = names
            .iter()
            .zip(&statuses)
            .filter(|(_, s)| s.lock().expect("status lock").phase != crate::volume::Phase::Stopped)
            .map(|(n, _)| n.clone())
            .collect();
        if self.stage_ready {
            // Nothing is mounted under it any more; it goes with the container anyway.
            let (sys, stage) = (self.ctx.sys.clone(), self.ctx.stage.clone());
            let _ = sys::bounded(self.ctx.check_timeout, move || sys.unmount(&stage, sys::Unmount::Detach)).await;
        }
        // The last word is the mount table's, not the tasks': exit 0 only with
        // nothing of ours left at any mountpoint; and when someone mounted there
        // during the shutdown, only once nothing came back for a while.
        let paths: Vec<&Path> = owned.iter().map(|o| o.mountpoint.as_path()).collect();
        let mut changes = self.table.subscribe(&paths);
        let table = &self.table;
        let read = || async {
            match table.fresh().await {
                Ok(table) => crate::volume::leftovers(&table, &owned),
                Err(err) => vec![format!("unknown: the mount table cannot be read: {err}")],
            }
        };
        let mut mounted = read().await;
        let unmounted_now = unmounted(&statuses) - unmounted_before;
        let churned = rebound.is_finished() || unmounted_now > ours_at_start as u64;
        rebound.abort();
        if mounted.is_empty() && churned && tokio::time::timeout(QUIET, changes.changed()).await.is_ok() {
            mounted = read().await;
        }
        drop(changes);
        let unflushed = self.ctx.unflushed.take();
        if !unflushed.is_empty() {
            let also =
                if mounted.is_empty() { String::new() } else { format!("; still mounted: {}", mounted.join("; ")) };
            return Err(RunError::Unflushed(format!("{}{also}", unflushed.join("; "))));
        }
        if !mounted.is_empty() {
            Err(RunError::LeftMounted(mounted.join("; ")))
        } else if left.is_empty() {
            info!("every volume is down");
            Ok(())
        } else {
            Err(RunError::CutShort(left.join(", ")))
        }
    }
}

/// Sends a message when the spec file or directory changes. The directory is
/// watched, not the file: editors and Kubernetes ConfigMaps replace files by rename.
fn watch_config(config: &Path, tx: mpsc::Sender<()>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let is_dir = config.is_dir();
    let dir = watched_dir(config, is_dir);
    // A spec renamed away is missing for a moment; a spec directory may go whole.
    let watch = DirWatch::new(file_watch::Events { renamed_away: true, directory_gone: true, metadata: false })?;
    // A directory deleted takes its watch with it: its parent's tells when it is
    // made again, and the new one is watched after each change (see below).
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = watch.add(parent);
    }
    // A spec file that is a link is watched where it leads as well, so that the
    // file it names, edited in place in another directory, is noticed too.
    let config = config.to_path_buf();
    let watch_spec = move |watch: &DirWatch| match is_dir {
        true => watch.add(&dir),
        false => watch.add_dirs_of(&[&config]),
    };
    watch_spec(&watch)?;
    Ok(tokio::spawn(async move {
        loop {
            match watch.changed().await {
                Ok(()) => {}
                Err(Broken::Read(err)) => {
                    error!(%err, "the spec watch failed");
                    return;
                }
                Err(Broken::Runtime(_)) => return,
            }
            // Writers touch a file several times: settle, drain, then reload once.
            watch.settle().await;
            // The directory made again is another one, with no watch yet; a link
            // may lead somewhere else now.
            let _ = watch_spec(&watch);
            if tx.send(()).await.is_err() {
                return;
            }
        }
    }))
}

/// The directory whose entries hold the spec: the spec directory itself, or the
/// spec file's directory (`.` for a file named with none, `volumes.yaml`).
fn watched_dir(config: &Path, is_dir: bool) -> PathBuf {
    if is_dir {
        return config.to_path_buf();
    }
    config.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the watch sends a change within a few seconds.
    async fn next(rx: &mut mpsc::Receiver<()>) -> bool {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.is_ok()
    }

    #[tokio::test]
    async fn a_spec_file_that_is_a_link_is_watched_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let (etc, elsewhere) = (dir.path().join("etc"), dir.path().join("elsewhere"));
        std::fs::create_dir(&etc).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("volumes.yaml"), "volumes: []\n").unwrap();
        let config = etc.join("volumes.yaml");
        std::os::unix::fs::symlink(elsewhere.join("volumes.yaml"), &config).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let watching = watch_config(&config, tx).unwrap();
        // Edited in place where the link leads: no entry of `etc` changes.
        std::fs::write(elsewhere.join("volumes.yaml"), "volumes: []\n# edited\n").unwrap();
        assert!(next(&mut rx).await, "the file the link names, edited in place, is a change");
        // The link pointed somewhere else: that file's directory is watched from then on.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("volumes.yaml"), "volumes: []\n").unwrap();
        let swapped = etc.join("volumes.yaml.new");
        std::os::unix::fs::symlink(other.join("volumes.yaml"), &swapped).unwrap();
        std::fs::rename(&swapped, &config).unwrap();
        assert!(next(&mut rx).await, "the link replaced is a change");
        tokio::time::sleep(Duration::from_millis(300)).await;
        while rx.try_recv().is_ok() {}
        std::fs::write(other.join("volumes.yaml"), "volumes: []\n# edited\n").unwrap();
        assert!(next(&mut rx).await, "the new target, edited in place, is a change");
        watching.abort();
    }

    #[tokio::test]
    async fn a_spec_directory_deleted_and_made_again_later_is_watched_again() {
        let dir = tempfile::tempdir().unwrap();
        let specs = dir.path().join("specs");
        std::fs::create_dir(&specs).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let watching = watch_config(&specs, tx).unwrap();

        std::fs::remove_dir(&specs).unwrap();
        assert!(next(&mut rx).await, "the directory's removal is a change");
        // Made again after the reload that found it missing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while rx.try_recv().is_ok() {}
        std::fs::create_dir(&specs).unwrap();
        std::fs::write(specs.join("volumes.yaml"), "volumes: []\n").unwrap();
        assert!(next(&mut rx).await, "a spec written in the new directory is a change");
        tokio::time::sleep(Duration::from_millis(300)).await;
        while rx.try_recv().is_ok() {}
        std::fs::write(specs.join("volumes.yaml"), "volumes: []\n").unwrap();
        assert!(next(&mut rx).await, "and so is the next one");
        watching.abort();
    }

    #[test]
    fn the_spec_watch_watches_the_directory_that_holds_the_spec() {
        assert_eq!(watched_dir(Path::new("/etc/sidemount/volumes.yaml"), false), Path::new("/etc/sidemount"));
        assert_eq!(watched_dir(Path::new("/etc/sidemount/specs"), true), Path::new("/etc/sidemount/specs"));
        // A bare file name is in the working directory, not in a directory named "".
        assert_eq!(watched_dir(Path::new("volumes.yaml"), false), Path::new("."));
    }
}
