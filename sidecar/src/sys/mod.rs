//! The only place that calls mount(2), umount2(2), statfs(2), statvfs(2) and capget:
//! the system calls that change or probe the mount table.
//!
//! Every call that touches a mountpoint can block forever on a hung FUSE daemon
//! (the kernel waits for the daemon's answer), so callers go through
//! [`bounded`], which runs the call on a thread of a small pool and gives up
//! at a deadline. A stuck thread stays stuck until the kernel lets go, so the
//! supervisor keeps at most one outstanding check per volume.

// The kernel seam: the one module allowed unsafe code and the raw mount calls.
#![allow(unsafe_code, clippy::disallowed_methods)]

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

mod bounded;
#[cfg(test)]
pub mod fake;
mod fd;
pub mod listmount;

pub use bounded::{bounded, prestart as prestart_bounded_calls, InFlight, TimedOut};
pub use fd::{watch_fd, OwnsFd, Ticker};

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
    /// Mounts the FUSE control filesystem (fusectl) at `target`: a directory per
    /// FUSE connection, named by its device number, whose `waiting` file counts
    /// the requests the daemon has not answered yet.
    fn fuse_control(&self, _target: &Path) -> Result<(), Errno> {
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

    fn fuse_control(&self, target: &Path) -> Result<(), Errno> {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        nix::mount::mount(Some("fusectl"), target, Some("fusectl"), flags, None::<&str>)
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

/// Caps glibc's malloc arenas. glibc gives each thread that allocates an arena
/// of its own (up to 8 per core), and keeps them: with a thread per bounded
/// call, the supervisor's memory grew with the calls made at once. Two arenas
/// serve one runtime thread and a few call threads.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; called before
    // other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Counts each delivery of `signal` in the handler itself. Signals that arrive
/// before their waiter looks are one wakeup to tokio; the count tells how many
/// they were. To be called before tokio's own handler for `signal` is set up,
/// so that a delivery is counted before tokio wakes its waiter.
pub fn count_deliveries(signal: i32) -> std::io::Result<std::sync::Arc<std::sync::atomic::AtomicUsize>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    // SAFETY: the action only adds to an atomic, which is async-signal-safe,
    // and never unregisters: `counter` lives as long as the process.
    unsafe {
        signal_hook_registry::register(signal, move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
    }?;
    Ok(count)
}

/// Bytes the allocator has handed out and not had back (glibc: every arena's
/// chunks in use and its mmapped blocks, from `mallinfo2`). What the process
/// holds live, as opposed to its resident set, which also counts free memory
/// the allocator keeps. None where the allocator cannot tell.
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes each arena's lock while it sums it and returns
        // a plain struct by value.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Makes this process the reaper of orphaned descendants, as PID 1 is, so a
/// mount helper that forks and exits is reaped here (see `daemon::reap_orphans`).
pub fn become_subreaper() -> Result<(), Errno> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// A moment of the CPU time the calling thread has used. Tests bound the cost of
/// a parse by it: other processes on a loaded machine stretch wall time many
/// times over, and this thread's own CPU time hardly at all.
#[cfg(test)]
pub struct ThreadCpuTime(std::time::Duration);

#[cfg(test)]
impl ThreadCpuTime {
    pub fn now() -> ThreadCpuTime {
        let used = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("a thread's CPU clock");
        ThreadCpuTime(used.into())
    }

    /// CPU time this thread has used since.
    pub fn elapsed(&self) -> std::time::Duration {
        ThreadCpuTime::now().0 - self.0
    }
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

/// Context switches of the whole process, every thread it ever had included:
/// each one is a wakeup (or a preemption), the measure of what idling costs.
pub fn context_switches() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF)
        .map_or(0, |usage| (usage.voluntary_context_switches() + usage.involuntary_context_switches()) as u64)
}

/// Whether the FUSE connection `connection` (fusectl's name for it, see
/// `volume::fuse_connection`) still exists, looked up in the fusectl directory
/// `control` without involving its daemon. None when fusectl cannot tell.
pub fn fuse_connection_exists(control: &std::fs::File, connection: u64) -> Option<bool> {
    match nix::sys::stat::fstatat(control, connection.to_string().as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(_) => Some(true),
        Err(Errno::ENOENT) => Some(false),
        Err(_) => None,
    }
}

/// How many requests FUSE connection `connection` has sent its daemon and not had
/// answered (fusectl's `waiting`), read in the fusectl directory `control`
/// without involving the daemon. None when fusectl cannot tell.
pub fn fuse_connection_waiting(control: &std::fs::File, connection: u64) -> Option<u64> {
    use std::io::Read;
    let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
    let path = format!("{connection}/waiting");
    let fd = nix::fcntl::openat(control, path.as_str(), flags, nix::sys::stat::Mode::empty()).ok()?;
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}
