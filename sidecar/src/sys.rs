//! The only place that calls mount(2), umount2(2), statfs(2), statvfs(2) and capget:
//! the system calls that change or probe the mount table.
//!
//! Every call that touches a mountpoint can block forever on a hung FUSE daemon
//! (the kernel waits for the daemon's answer), so callers go through
//! [`bounded`], which runs the call on its own thread and gives up at a
//! deadline. A stuck thread stays stuck until the kernel lets go, so the
//! supervisor keeps at most one outstanding check per volume.

use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// How hard to unmount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmount {
    /// A plain umount: fails with EBUSY while files are open on it.
    Clean,
    /// Lazy: detach from the tree now, let open files finish.
    Detach,
    /// Abort the FUSE connection (MNT_FORCE calls the filesystem's umount_begin,
    /// which for FUSE aborts the connection) and detach. Pending calls on the
    /// dead mount fail instead of hanging.
    Abort,
}

/// The system calls that change the mount table, behind one trait so tests can
/// swap them where a real kernel can't be had.
pub trait Sys: Send + Sync + 'static {
    fn unmount(&self, target: &Path, how: Unmount) -> Result<(), Errno>;
    fn statfs(&self, target: &Path) -> Result<(), Errno>;
    /// Binds the mount at `source` onto `target` (on top of whatever is there).
    fn bind(&self, source: &Path, target: &Path) -> Result<(), Errno>;
    /// Mounts a private tmpfs at `target`: mounts made under it propagate nowhere.
    fn private_tmpfs(&self, target: &Path) -> Result<(), Errno>;
    fn has_cap_sys_admin(&self) -> bool;
    /// The per-mount flags of the mount at `target` that a bind carries (`MS_RDONLY`,
    /// `MS_NOSUID`, `MS_NODEV`, `MS_NOEXEC`, `MS_NODIRATIME`, and one of `MS_NOATIME`,
    /// `MS_RELATIME`, `MS_STRICTATIME`). A fake kernel need not know them.
    fn bind_flags(&self, _target: &Path) -> Result<MsFlags, Errno> {
        Err(Errno::ENOSYS)
    }
    /// Sets the per-mount flags of the mount at `target` to exactly `flags` (the set
    /// [`Sys::bind_flags`] reads), leaving the filesystem alone. Binds made of it
    /// afterwards, and their propagated copies, carry the same flags; the flags of
    /// binds made before do not change.
    fn remount_bind(&self, _target: &Path, _flags: MsFlags) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

impl Sys for Kernel {
    fn unmount(&self, target: &Path, how: Unmount) -> Result<(), Errno> {
        // UMOUNT_NOFOLLOW: the mountpoint is ours, a symlink there is not.
        let flags = MntFlags::UMOUNT_NOFOLLOW
            | match how {
                Unmount::Clean => MntFlags::empty(),
                Unmount::Detach => MntFlags::MNT_DETACH,
                Unmount::Abort => MntFlags::MNT_FORCE | MntFlags::MNT_DETACH,
            };
        nix::mount::umount2(target, flags)
    }

    fn statfs(&self, target: &Path) -> Result<(), Errno> {
        nix::sys::statfs::statfs(target).map(|_| ())
    }

    fn bind(&self, source: &Path, target: &Path) -> Result<(), Errno> {
        nix::mount::mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
    }

    fn private_tmpfs(&self, target: &Path) -> Result<(), Errno> {
        nix::mount::mount(
            Some("sidemount-stage"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0700"),
        )?;
        nix::mount::mount(None::<&str>, target, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
    }

    fn has_cap_sys_admin(&self) -> bool {
        caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_ADMIN).unwrap_or(false)
    }

    fn bind_flags(&self, target: &Path) -> Result<MsFlags, Errno> {
        use nix::sys::statvfs::FsFlags;
        let found = nix::sys::statvfs::statvfs(target)?.flags();
        let pairs = [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ];
        let mut flags = pairs.iter().filter(|(st, _)| found.contains(*st)).fold(MsFlags::empty(), |f, (_, ms)| f | *ms);
        if !flags.intersects(MsFlags::MS_NOATIME | MsFlags::MS_RELATIME) {
            flags |= MsFlags::MS_STRICTATIME;
        }
        Ok(flags)
    }

    fn remount_bind(&self, target: &Path, flags: MsFlags) -> Result<(), Errno> {
        // MS_REMOUNT|MS_BIND changes only this mount's flags, not the superblock's.
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
            None::<&str>,
        )
    }
}

/// A call that did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer within {0:?}")]
pub struct TimedOut(pub Duration);

/// Runs `call` on a thread of its own and waits for it at most `deadline`.
/// The thread is left behind if the kernel never returns; it exits when it does.
pub async fn bounded<T, F>(deadline: Duration, call: F) -> Result<T, TimedOut>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("sidemount-fscall".into()).stack_size(64 * 1024).spawn(move || {
        let _ = tx.send(call());
    });
    if spawned.is_err() {
        return Err(TimedOut(Duration::ZERO));
    }
    match tokio::time::timeout(deadline, rx).await {
        Ok(Ok(value)) => Ok(value),
        _ => Err(TimedOut(deadline)),
    }
}

/// Makes this process the reaper of orphaned descendants, as PID 1 is, so a
/// mount helper that forks and exits is reaped here (see `daemon::reap_orphans`).
pub fn become_subreaper() -> Result<(), Errno> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers and only sets a flag
    // on the calling process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    Errno::result(rc).map(|_| ())
}

/// The most open files the supervisor asks for: enough for every volume and
/// repair, and not so many that a helper closing every descriptor up to the
/// limit (as some do before exec) loops over millions.
pub const OPEN_FILES_WANTED: u64 = 65536;

/// Raises the soft limit on open files towards the hard limit (at most
/// [`OPEN_FILES_WANTED`]), so a flood of connections or output pipes leaves
/// descriptors for repairs. Returns the soft limit before and after.
pub fn raise_open_files_limit() -> Result<(u64, u64), Errno> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let wanted = hard.min(OPEN_FILES_WANTED).max(soft);
    if wanted != soft {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard)?;
    }
    Ok((soft, wanted))
}

/// A descriptor that owns its file (a `File`, an `Inotify`) for as long as it lives.
pub trait OwnsFd: std::os::fd::AsRawFd {}
impl OwnsFd for std::fs::File {}

/// Registers `inner` with the runtime's reactor for `interest`.
pub fn watch_fd<T: OwnsFd>(inner: T, interest: tokio::io::Interest) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `OwnsFd` types own their descriptor: it stays open and refers to the same
    // file description until `inner` is dropped, which the AsyncFd does before closing it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(inner, interest) }.map_err(std::io::Error::from)
}

/// Context switches of the whole process, every thread it ever had included:
/// each one is a wakeup (or a preemption), the measure of what idling costs.
pub fn context_switches() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer it is given, which points
    // to zeroed memory of the right size and alignment.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: getrusage returned 0, so it filled the struct.
    let usage = unsafe { usage.assume_init() };
    (usage.ru_nvcsw + usage.ru_nivcsw) as u64
}
