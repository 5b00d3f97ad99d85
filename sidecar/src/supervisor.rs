//! The supervisor: `sidemount run`. Checks that the environment can work,
//! starts a task per volume, reconciles spec changes, reaps orphans, and on
//! SIGTERM takes every volume down inside the shutdown budget.
//!
//! It sleeps until something happens: the mount table is watched with `poll`
//! on `/proc/self/mountinfo`, the spec with inotify, children with SIGCHLD.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::daemon::Children;
use crate::http::{self, Registry};
use crate::mounts::MountTable;
use crate::settings::Settings;
use crate::spec::{self, Source, Volume};
use crate::sys::{self, Sys};
use crate::volume::{block, objectivefs, zfs, Context, Deadlines, Handle};

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
    #[error("shutdown cut short: {0} still mounted at the deadline")]
    CutShort(String),
}

impl RunError {
    /// Exit codes of the contract: 64 invalid specs, 78 an environment that can't work.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::InvalidSpec(_) => 64,
            RunError::CutShort(_) => 1,
            _ => 78,
        }
    }
}

/// What the environment looks like to preflight: read once, decided purely.
pub struct Environment<'a> {
    pub table: &'a MountTable,
    pub has_cap_sys_admin: bool,
    pub fuse_device: bool,
    pub zfs_device: bool,
    /// For a mountpoint, or a block volume's device.
    pub path_exists: &'a dyn Fn(&Path) -> bool,
    pub find_program: &'a dyn Fn(&str) -> bool,
    /// Whether an objectivefs volume's credentials are all there.
    pub credentials: &'a dyn Fn(&Volume) -> Result<(), String>,
}

/// Checks that every volume can work here, before anything is mounted.
pub fn preflight(volumes: &[Volume], root: &Path, env: &Environment<'_>) -> Result<(), RunError> {
    if volumes.is_empty() {
        return Ok(());
    }
    if !env.has_cap_sys_admin {
        return Err(RunError::NoCapSysAdmin);
    }
    for volume in volumes {
        let mountpoint = root.join(&volume.name);
        if !env.table.is_mount_point(&mountpoint) && !(env.path_exists)(&mountpoint) {
            return Err(RunError::NoMountpoint { volume: volume.name.clone(), mountpoint });
        }
        match env.table.holder_of(&mountpoint) {
            Some(base) if base.shared.is_some() => {}
            base => {
                let holder = base
                    .map(|m| {
                        let how = if m.master.is_some() { "slave" } else { "private" };
                        format!("{} {} mount at {}", how, m.fs_type, m.mount_point.display())
                    })
                    .unwrap_or_else(|| "no mount found".into());
                return Err(RunError::NotShared { volume: volume.name.clone(), mountpoint, holder });
            }
        }
        if volume.source.needs_fuse() && !env.fuse_device {
            return Err(RunError::NoFuseDevice { volume: volume.name.clone() });
        }
        let programs: Vec<(String, bool)> = match &volume.source {
            Source::Fuse { command } => vec![(command[0].clone(), true)],
            Source::ObjectiveFs { .. } => vec![(objectivefs::PROGRAM.into(), false)],
            Source::Zfs { .. } => {
                if !env.zfs_device {
                    return Err(RunError::NoZfsModule { volume: volume.name.clone() });
                }
                vec![(zfs::PROGRAM.into(), false), (zfs::MOUNT_HELPER.into(), false)]
            }
            Source::Block { device, fs_type, format } => {
                if !(env.path_exists)(device) {
                    return Err(RunError::NoDevice { volume: volume.name.clone(), device: device.clone() });
                }
                let mut programs = vec![(block::PROBE.to_string(), false), (block::MOUNT.to_string(), false)];
                if *format {
                    programs.push((format!("mkfs.{fs_type}"), false));
                }
                programs
            }
        };
        for (program, from_command) in programs {
            if !(env.find_program)(&program) {
                return Err(RunError::MissingProgram { volume: volume.name.clone(), program, from_command });
            }
        }
        // A secretName the supervisor resolved itself: no injection mounted it.
        if let (Some(secret), Some(dir)) = (&volume.secret_name, &volume.secret_dir) {
            if !(env.path_exists)(dir) {
                let (volume, secret, dir) = (volume.name.clone(), secret.clone(), dir.clone());
                return Err(RunError::SecretNotMounted { volume, secret, dir });
            }
        }
        if let Source::ObjectiveFs { .. } = volume.source {
            (env.credentials)(volume)
                .map_err(|message| RunError::Credentials { volume: volume.name.clone(), message })?;
        }
    }
    Ok(())
}

/// Reads the specs named by the settings.
pub fn load_specs(settings: &Settings) -> Result<Vec<Volume>, spec::Invalid> {
    let sources = spec::read_sources(&settings.config, settings.volumes.as_deref())?;
    let mut volumes = spec::load(&sources)?;
    volumes.iter_mut().for_each(resolve_secret_name);
    Ok(volumes)
}

/// A spec read as the pod annotation is written (the kustomize component hands
/// the annotation over through the downward API, with no injection to turn
/// `secretName` into `secretDir`): the Secret of volume `X` is expected where
/// injection would mount it, `/etc/sidemount/secrets/X`. A `secretDir` wins.
pub fn resolve_secret_name(volume: &mut Volume) {
    if volume.secret_name.is_some() && volume.secret_dir.is_none() {
        volume.secret_dir = Some(crate::inject::secret_dir(&volume.name));
    }
}

/// The mountpoints to create: with one Bidirectional mount at the root (the
/// kustomize component's layout, one shared emptyDir), a volume's directory
/// under it does not exist until the supervisor makes it.
pub fn missing_mountpoints(
    volumes: &[Volume],
    root: &Path,
    table: &MountTable,
    exists: &dyn Fn(&Path) -> bool,
) -> Vec<PathBuf> {
    if !table.is_mount_point(root) || table.holder_of(root).and_then(|m| m.shared).is_none() {
        return Vec::new();
    }
    volumes.iter().map(|v| root.join(&v.name)).filter(|mp| !table.is_mount_point(mp) && !exists(mp)).collect()
}

fn check_environment(volumes: &[Volume], root: &Path, sys: &dyn Sys) -> Result<(), RunError> {
    let table = MountTable::read_self().map_err(RunError::MountTable)?;
    let exists = |p: &Path| p.exists();
    for mountpoint in missing_mountpoints(volumes, root, &table, &exists) {
        std::fs::create_dir(&mountpoint)
            .or_else(|e| if e.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
            .map_err(|source| RunError::Setup { what: "a mountpoint under the shared SIDEMOUNT_ROOT", source })?;
    }
    let find = |program: &str| which::which(program).is_ok();
    let credentials = |volume: &Volume| objectivefs::credentials(volume).map(|_| ());
    let env = Environment {
        table: &table,
        has_cap_sys_admin: sys.has_cap_sys_admin(),
        fuse_device: Path::new("/dev/fuse").exists(),
        zfs_device: Path::new(zfs::DEVICE).exists(),
        path_exists: &exists,
        find_program: &find,
        credentials: &credentials,
    };
    preflight(volumes, root, &env)
}

/// Runs the supervisor until SIGTERM or SIGINT.
pub async fn run(mut settings: Settings, sys: Arc<dyn Sys>) -> Result<(), RunError> {
    let volumes = load_specs(&settings)?;
    if !volumes.is_empty() {
        settings.root = std::fs::canonicalize(&settings.root)
            .map_err(|source| RunError::Root { root: settings.root.clone(), source })?;
    }
    check_environment(&volumes, &settings.root, sys.as_ref())?;
    if let Err(err) = sys::become_subreaper() {
        warn!(%err, "cannot become the reaper of orphaned helpers");
    }

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| RunError::Listen { addr: settings.listen, source })?;
    let registry = Registry::new(sys.clone(), settings.check_timeout);

    let table = watch_mount_table().map_err(|source| RunError::Setup { what: "the mount-table watch", source })?;
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
    };
    let mut supervisor =
        Supervisor { settings, ctx, table, registry, volumes: BTreeMap::new(), next_seq: 0, stage_ready: false };
    if volumes.iter().any(|v| !v.source.is_kernel_mount()) {
        supervisor.prepare_stage()?;
    }
    info!(volumes = volumes.len(), root = %supervisor.settings.root.display(), "starting");
    supervisor.apply(volumes).await;
    // Served only once every volume is registered: an empty registry reads as ready.
    let http_task = tokio::spawn(http::serve(listener, supervisor.registry.clone()));

    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|source| RunError::Setup { what: "SIGTERM handling", source })?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|source| RunError::Setup { what: "SIGINT handling", source })?;
    let mut sigchld =
        signal(SignalKind::child()).map_err(|source| RunError::Setup { what: "SIGCHLD handling", source })?;
    let mut ticker = tokio::time::interval(supervisor.settings.check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: unmounting every volume"); break; }
            _ = sigint.recv() => { info!("SIGINT: unmounting every volume"); break; }
            _ = sigchld.recv() => {
                for pid in supervisor.ctx.children.reap_orphans() {
                    debug!(pid, "reaped an orphaned process");
                }
            }
            Some(()) = config_rx.recv() => supervisor.reload().await,
            _ = ticker.tick() => { supervisor.registry.check_all().await; }
        }
    }

    let budget = supervisor.settings.shutdown_timeout;
    let shutdown = supervisor.shutdown(budget);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        result = &mut shutdown => result,
        _ = async { tokio::select! { _ = sigterm.recv() => {}, _ = sigint.recv() => {} } } => {
            // A second signal shortens every deadline to now: busy mounts are detached
            // and daemons signalled at once.
            warn!("second signal: detaching what is busy and signalling the daemons now");
            let _ = hurry_tx.send(true);
            shutdown.await
        }
    };
    http_task.abort();
    result
}

struct Supervisor {
    settings: Settings,
    ctx: Context,
    table: watch::Receiver<Arc<MountTable>>,
    registry: Arc<Registry>,
    /// Running volumes with the order they were started in.
    volumes: BTreeMap<String, (u64, Handle)>,
    next_seq: u64,
    /// The private tmpfs where daemons mount is in place.
    stage_ready: bool,
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
        for _ in 0..16 {
            let table = MountTable::read_self().map_err(RunError::MountTable)?;
            if !table.is_mount_point(&stage) {
                break;
            }
            self.ctx.sys.unmount(&stage, crate::sys::Unmount::Detach).map_err(|e| setup(e.into()))?;
        }
        self.ctx.sys.private_tmpfs(&stage).map_err(|e| setup(e.into()))?;
        debug!(stage = %stage.display(), "staging directory ready");
        self.ctx.stage = stage;
        self.stage_ready = true;
        Ok(())
    }

    /// Brings the running volumes in line with `wanted`.
    async fn apply(&mut self, wanted: Vec<Volume>) {
        let wanted: BTreeMap<String, Volume> = wanted.into_iter().map(|v| (v.name.clone(), v)).collect();
        let going: Vec<String> = self
            .volumes
            .iter()
            .filter(|(name, (_, handle))| wanted.get(*name) != Some(&handle.volume))
            .map(|(name, _)| name.clone())
            .collect();
        let mut stopping = JoinSet::new();
        for name in &going {
            if let Some((_, handle)) = self.volumes.remove(name) {
                let change = if wanted.contains_key(name) { "changed" } else { "removed" };
                info!(volume = %name, change, "taking the volume down");
                stopping.spawn(handle.stop(Deadlines::within(self.settings.shutdown_timeout)));
            }
        }
        while stopping.join_next().await.is_some() {}
        let objectivefs = wanted.values().filter(|v| matches!(v.source, Source::ObjectiveFs { .. })).count();
        self.ctx.objectivefs_volumes.store(objectivefs, Ordering::Relaxed);
        let mut refused = Vec::new();
        for (name, volume) in wanted {
            if self.volumes.contains_key(&name) {
                continue;
            }
            if let Err(err) =
                check_environment(std::slice::from_ref(&volume), &self.settings.root, self.ctx.sys.as_ref())
            {
                error!(volume = %name, "{err}");
                refused.push(err.to_string());
                continue;
            }
            let mountpoint = self.settings.mountpoint(&name);
            let handle = Handle::start(volume, mountpoint, self.ctx.clone(), self.table.clone());
            self.volumes.insert(name, (self.next_seq, handle));
            self.next_seq += 1;
        }
        self.registry.set_volumes(self.volumes.values().map(|(_, h)| h.status.clone()).collect());
        self.registry.set_config_error((!refused.is_empty()).then(|| refused.join("; ")));
    }

    /// Re-reads the spec; an invalid one changes nothing.
    async fn reload(&mut self) {
        match load_specs(&self.settings) {
            Ok(volumes) => {
                let current: Vec<&Volume> = self.volumes.values().map(|(_, h)| &h.volume).collect();
                let same = current.len() == volumes.len() && volumes.iter().all(|v| current.contains(&v));
                if same && self.registry.config_error().is_none() {
                    debug!("spec files changed, volumes did not");
                    return;
                }
                info!(volumes = volumes.len(), "spec changed: reconciling");
                self.registry.reloads.fetch_add(1, Ordering::Relaxed);
                self.apply(volumes).await;
            }
            Err(invalid) => {
                error!("spec change refused, the running volumes stay as they are: {invalid}");
                self.registry.reload_errors.fetch_add(1, Ordering::Relaxed);
                self.registry.set_config_error(Some(invalid.to_string()));
            }
        }
    }

    /// Takes every volume down: kernel mounts first (a leftover one would be
    /// emptied by the kubelet's recursive delete of the emptyDir), then the
    /// rest, newest first; each under the same deadlines.
    async fn shutdown(mut self, budget: Duration) -> Result<(), RunError> {
        let deadlines = Deadlines::within(budget);
        let mut handles: Vec<(u64, Handle)> = std::mem::take(&mut self.volumes).into_values().collect();
        handles.sort_by_key(|(seq, h)| (!h.is_kernel_mount(), std::cmp::Reverse(*seq)));
        let names: Vec<String> = handles.iter().map(|(_, h)| h.volume.name.clone()).collect();
        let statuses: Vec<_> = handles.iter().map(|(_, h)| h.status.clone()).collect();
        let (kernel, fuse): (Vec<_>, Vec<_>) = handles.into_iter().partition(|(_, h)| h.is_kernel_mount());
        for group in [kernel, fuse] {
            let mut stopping = JoinSet::new();
            for (_, handle) in group {
                stopping.spawn(handle.stop(deadlines));
            }
            let all_done = async { while stopping.join_next().await.is_some() {} };
            if tokio::time::timeout_at(deadlines.last + Duration::from_millis(500), all_done).await.is_err() {
                break;
            }
        }
        let left: Vec<String> = names
            .iter()
            .zip(&statuses)
            .filter(|(_, s)| s.lock().expect("status lock").phase != crate::volume::Phase::Stopped)
            .map(|(n, _)| n.clone())
            .collect();
        if self.stage_ready {
            // Nothing is mounted under it any more; it goes with the container anyway.
            let _ = self.ctx.sys.unmount(&self.ctx.stage, crate::sys::Unmount::Detach);
        }
        if left.is_empty() {
            info!("every volume is down");
            Ok(())
        } else {
            Err(RunError::CutShort(left.join(", ")))
        }
    }
}

/// Publishes the mount table each time the kernel says it changed (`poll`
/// on mountinfo reports POLLPRI after every mount or unmount in this namespace).
fn watch_mount_table() -> std::io::Result<watch::Receiver<Arc<MountTable>>> {
    let file = std::fs::File::open("/proc/self/mountinfo")?;
    let fd = sys::watch_fd(file, Interest::PRIORITY)?;
    let (tx, rx) = watch::channel(Arc::new(MountTable::read_self()?));
    tokio::spawn(async move {
        loop {
            match fd.ready(Interest::PRIORITY).await {
                Ok(mut guard) => guard.clear_ready(),
                Err(err) => {
                    error!(%err, "the mount-table watch failed");
                    return;
                }
            }
            match MountTable::read_self() {
                Ok(table) => {
                    tx.send_if_modified(|current| {
                        let changed = **current != table;
                        if changed {
                            *current = Arc::new(table);
                        }
                        changed
                    });
                }
                Err(err) => warn!(%err, "cannot read the mount table"),
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Sends a message when the spec file or directory changes. The directory is
/// watched, not the file: editors and Kubernetes ConfigMaps replace files by rename.
fn watch_config(config: &Path, tx: mpsc::Sender<()>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let dir = if config.is_dir() {
        config.to_path_buf()
    } else {
        config.parent().map(Path::to_path_buf).unwrap_or_else(|| ".".into())
    };
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(std::io::Error::from)?;
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF;
    inotify.add_watch(&dir, flags).map_err(std::io::Error::from)?;
    let fd = sys::watch_fd(InotifyFd(inotify), Interest::READABLE)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable().await else { return };
            let drained = guard.try_io(|inner| inner.get_ref().0.read_events().map_err(std::io::Error::from));
            match drained {
                Ok(Ok(_events)) => {}
                Ok(Err(err)) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(Err(err)) => {
                    error!(%err, "the spec watch failed");
                    return;
                }
                Err(_would_block) => continue,
            }
            // Writers touch a file several times: settle, drain, then reload once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = fd.get_ref().0.read_events();
            if tx.send(()).await.is_err() {
                return;
            }
        }
    }))
}

struct InotifyFd(Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0.as_fd())
    }
}

impl sys::OwnsFd for InotifyFd {}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> MountTable {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mountinfo").join(name);
        MountTable::parse(std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap()
    }

    fn fuse(name: &str) -> Volume {
        spec::validate(&spec::RawVolume {
            name: Some(name.into()),
            kind: Some("fuse".into()),
            command: Some(vec!["bindfs".into(), "-f".into(), "/src".into(), "{mountpoint}".into()]),
            ..Default::default()
        })
        .unwrap()
    }

    fn env<'a>(
        table: &'a MountTable,
        yes: &'a dyn Fn(&Path) -> bool,
        find: &'a dyn Fn(&str) -> bool,
    ) -> Environment<'a> {
        Environment {
            table,
            has_cap_sys_admin: true,
            fuse_device: true,
            zfs_device: true,
            path_exists: yes,
            find_program: find,
            credentials: &|_| Ok(()),
        }
    }

    #[test]
    fn accepts_a_volume_on_its_shared_bind() {
        let t = table("sidecar-with-volume");
        let (yes, found) = (|_: &Path| true, |_: &str| true);
        preflight(&[fuse("data")], Path::new("/sidemount"), &env(&t, &yes, &found)).unwrap();
    }

    #[test]
    fn refuses_a_private_mountpoint_naming_the_fix() {
        let t = table("sidecar-leftovers");
        let (yes, found) = (|_: &Path| true, |_: &str| true);
        let err = preflight(&[fuse("private")], Path::new("/sidemount"), &env(&t, &yes, &found)).unwrap_err();
        assert_eq!(err.exit_code(), 78);
        assert!(err.to_string().contains("mountPropagation: Bidirectional"), "{err}");
        // Not its own bind: it lives on the container's root, which is a slave.
        let err = preflight(&[fuse("other")], Path::new("/sidemount"), &env(&t, &yes, &found)).unwrap_err();
        assert!(err.to_string().contains("slave overlay mount at /"), "{err}");
    }

    #[test]
    fn one_shared_mount_at_the_root_serves_every_volume() {
        // The kustomize component's layout: one shared emptyDir at /sidemount.
        let t = table("sidecar-shared-root");
        let (yes, found) = (|_: &Path| true, |_: &str| true);
        preflight(&[fuse("data"), fuse("new")], Path::new("/sidemount"), &env(&t, &yes, &found)).unwrap();
        // A volume's directory is made when it is missing, and only under a shared root mount.
        let absent = |p: &Path| p != Path::new("/sidemount/new");
        let volumes = [fuse("data"), fuse("new")];
        assert_eq!(
            missing_mountpoints(&volumes, Path::new("/sidemount"), &t, &absent),
            [PathBuf::from("/sidemount/new")]
        );
        let nothing = |_: &Path| false;
        assert!(missing_mountpoints(&volumes, Path::new("/etc/sidemount/pod"), &t, &nothing).is_empty(), "not shared");
        let per_volume = table("sidecar-with-volume");
        assert!(missing_mountpoints(&volumes, Path::new("/sidemount"), &per_volume, &nothing).is_empty());
    }

    #[test]
    fn a_secret_name_resolves_to_where_injection_mounts_it() {
        let mut volume = spec::validate(&spec::RawVolume {
            name: Some("bucket".into()),
            kind: Some("fuse".into()),
            command: Some(vec!["s3fs".into(), "{mountpoint}".into()]),
            secret_name: Some("s3-credentials".into()),
            ..Default::default()
        })
        .unwrap();
        resolve_secret_name(&mut volume);
        assert_eq!(volume.secret_dir.as_deref(), Some(Path::new("/etc/sidemount/secrets/bucket")));
        let t = table("sidecar-shared-root");
        let found = |_: &str| true;
        let no_secret = |p: &Path| !p.starts_with("/etc/sidemount/secrets");
        let err = preflight(std::slice::from_ref(&volume), Path::new("/sidemount"), &env(&t, &no_secret, &found))
            .unwrap_err();
        assert_eq!(err.exit_code(), 78);
        let text = err.to_string();
        assert!(text.contains("\"s3-credentials\"") && text.contains("/etc/sidemount/secrets/bucket"), "{text}");
        let yes = |_: &Path| true;
        preflight(std::slice::from_ref(&volume), Path::new("/sidemount"), &env(&t, &yes, &found)).unwrap();

        // A secretDir given with it wins; a spec made by injection has no secretName left.
        let mut both = volume.clone();
        both.secret_dir = Some("/own".into());
        resolve_secret_name(&mut both);
        assert_eq!(both.secret_dir.as_deref(), Some(Path::new("/own")));
        let mut plain = fuse("data");
        resolve_secret_name(&mut plain);
        assert_eq!(plain.secret_dir, None);
        preflight(&[plain], Path::new("/sidemount"), &env(&t, &no_secret, &found)).unwrap();
    }

    #[test]
    fn refuses_what_is_missing() {
        let t = table("sidecar-with-volume");
        let (yes, no) = (|_: &Path| true, |_: &str| false);
        let err = preflight(&[fuse("data")], Path::new("/sidemount"), &env(&t, &yes, &no)).unwrap_err();
        assert!(matches!(err, RunError::MissingProgram { .. }), "{err}");
        let found = |_: &str| true;
        let mut e = env(&t, &yes, &found);
        e.fuse_device = false;
        assert!(matches!(preflight(&[fuse("data")], Path::new("/sidemount"), &e), Err(RunError::NoFuseDevice { .. })));
        e.fuse_device = true;
        e.has_cap_sys_admin = false;
        assert!(matches!(preflight(&[fuse("data")], Path::new("/sidemount"), &e), Err(RunError::NoCapSysAdmin)));
        let nothing = |_: &Path| false;
        let e = env(&t, &nothing, &found);
        assert!(matches!(preflight(&[fuse("gone")], Path::new("/sidemount"), &e), Err(RunError::NoMountpoint { .. })));
        // No volumes: nothing to check, even without privileges.
        let mut e = env(&t, &nothing, &found);
        e.has_cap_sys_admin = false;
        preflight(&[], Path::new("/sidemount"), &e).unwrap();
    }
}
