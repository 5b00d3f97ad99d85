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

/// A call that did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer within {0:?}")]
pub struct TimedOut(pub Duration);

/// Runs `call` on a thread of the bounded-call pool and waits for it at most
/// `deadline`. A thread stuck in the kernel is left behind and stays out of the
/// pool; it finishes when the kernel returns.
pub async fn bounded<T, F>(deadline: Duration, call: F) -> Result<T, TimedOut>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: pool::Job = Box::new(move || drop(tx.send(call())));
    // In paused-time tests the clock waits for the answer (see `fake::clock`).
    #[cfg(test)]
    let job: pool::Job = {
        let hold = fake::clock::hold();
        Box::new(move || fake::clock::keep_while(hold, job))
    };
    if pool::run(job).is_err() {
        return Err(TimedOut(Duration::ZERO));
    }
    match tokio::time::timeout(deadline, rx).await {
        Ok(Ok(value)) => Ok(value),
        _ => Err(TimedOut(deadline)),
    }
}

/// The threads of bounded calls. A thread that finished a call waits for the
/// next one instead of exiting, so a burst of calls (a start or a shutdown of
/// many volumes) reuses a few threads instead of creating one per call. At
/// most [`pool::MAX_IDLE`] wait, blocked on a channel with no timeout: an idle
/// supervisor's waiting threads are woken by nothing, and a thread beyond them
/// exits as soon as its call is done, during the burst rather than later.
mod pool {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::Mutex;

    pub type Job = Box<dyn FnOnce() + Send>;

    /// Idle threads kept at most; one more exits when done.
    pub const MAX_IDLE: usize = 4;

    /// The idle threads: where to hand each a call.
    static IDLE: Mutex<Vec<Sender<Job>>> = Mutex::new(Vec::new());

    /// Runs `job` on an idle thread, or on a new one.
    pub fn run(job: Job) -> std::io::Result<()> {
        let worker = IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // A thread in the list waits on its channel until a call comes: the send
        // fails only if it died (a call that panicked), and the call runs anew.
        let job = match worker {
            Some(worker) => match worker.send(job) {
                Ok(()) => return Ok(()),
                Err(returned) => returned.0,
            },
            None => job,
        };
        std::thread::Builder::new().name("sidemount-fscall".into()).stack_size(64 * 1024).spawn(move || serve(job))?;
        Ok(())
    }

    fn serve(mut job: Job) {
        loop {
            job();
            let (tx, rx) = channel();
            {
                let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() >= MAX_IDLE {
                    return;
                }
                idle.push(tx);
            }
            job = match rx.recv() {
                Ok(next) => next,
                Err(_) => return,
            };
        }
    }

    #[cfg(test)]
    pub fn idle() -> usize {
        IDLE.lock().unwrap().len()
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

/// Makes this process the reaper of orphaned descendants, as PID 1 is, so a
/// mount helper that forks and exits is reaped here (see `daemon::reap_orphans`).
pub fn become_subreaper() -> Result<(), Errno> {
    nix::sys::prctl::set_child_subreaper(true)
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

/// A kernel timer (timerfd, CLOCK_MONOTONIC) that expires every `period`,
/// watched by the runtime's reactor: waiting for it costs one wakeup per
/// expiry. tokio's own timers sleep to the end of a coarse slot of their wheel
/// and step down from there: one 30 s away woke an idle supervisor three times.
pub struct Ticker(tokio::io::unix::AsyncFd<TimerFd>);

struct TimerFd(nix::sys::timerfd::TimerFd);

impl std::os::fd::AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl OwnsFd for TimerFd {}

impl Ticker {
    /// A timer whose first expiry is `period` from now.
    pub fn every(period: Duration) -> std::io::Result<Ticker> {
        use nix::sys::timerfd::{ClockId, Expiration, TimerFlags, TimerSetTimeFlags};
        let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
        let timer = nix::sys::timerfd::TimerFd::new(ClockId::CLOCK_MONOTONIC, flags)?;
        timer.set(Expiration::Interval(period.into()), TimerSetTimeFlags::empty())?;
        watch_fd(TimerFd(timer), tokio::io::Interest::READABLE).map(Ticker)
    }

    /// Waits for the next expiry; expiries missed meanwhile count as one.
    pub async fn tick(&self) -> std::io::Result<()> {
        loop {
            let mut guard = self.0.readable().await?;
            if let Ok(result) = guard.try_io(|inner| inner.get_ref().0.wait().map_err(std::io::Error::from)) {
                return result;
            }
        }
    }
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

/// A kernel stand-in for unit tests: records every call made to it (which
/// method, which paths, which flags, and when) and answers each from a script
/// kept per method: success, an errno, or a hang (for a while, or until
/// released), as a hung FUSE daemon makes the kernel hang; a rule may give its
/// first calls other answers than the later ones. Given a mount table
/// ([`FakeSys::mounted`]), it keeps it as the kernel would: a bind that succeeds
/// adds a mount, an unmount that succeeds removes the top one (and fails with
/// EINVAL where nothing is mounted), and it is a [`MountSource`] for
/// `MountWatch::start_with`, which hears of every change by event.
///
/// [`MountSource`]: crate::mount_watch::MountSource
#[cfg(test)]
pub mod fake {
    use std::collections::VecDeque;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use nix::errno::Errno;
    use nix::mount::MsFlags;
    use tokio::sync::Notify;
    use tokio::time::Instant;

    use super::{Sys, Unmount};
    use crate::mount_watch::MountSource;
    use crate::mounts::{Mount, MountTable};

    /// A method of [`Sys`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Method {
        Unmount,
        Statfs,
        Bind,
        PrivateTmpfs,
        HasCapSysAdmin,
        BindFlags,
        RemountBind,
        FuseControl,
    }

    /// One call made to the fake, with its arguments.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Unmount(PathBuf, Unmount),
        Statfs(PathBuf),
        Bind(PathBuf, PathBuf),
        PrivateTmpfs(PathBuf),
        HasCapSysAdmin,
        BindFlags(PathBuf),
        RemountBind(PathBuf, MsFlags),
        FuseControl(PathBuf),
    }

    impl Call {
        pub fn method(&self) -> Method {
            match self {
                Call::Unmount(..) => Method::Unmount,
                Call::Statfs(_) => Method::Statfs,
                Call::Bind(..) => Method::Bind,
                Call::PrivateTmpfs(_) => Method::PrivateTmpfs,
                Call::HasCapSysAdmin => Method::HasCapSysAdmin,
                Call::BindFlags(_) => Method::BindFlags,
                Call::RemountBind(..) => Method::RemountBind,
                Call::FuseControl(_) => Method::FuseControl,
            }
        }

        /// The mount the call is about (the target; none for the capability check).
        pub fn target(&self) -> Option<&Path> {
            match self {
                Call::Unmount(p, _)
                | Call::Statfs(p)
                | Call::Bind(_, p)
                | Call::PrivateTmpfs(p)
                | Call::BindFlags(p)
                | Call::RemountBind(p, _)
                | Call::FuseControl(p) => Some(p),
                Call::HasCapSysAdmin => None,
            }
        }
    }

    /// How the fake answers a call.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Answer {
        /// Success (`has_cap_sys_admin` says yes; `bind_flags` gives the fake's flags).
        Ok,
        /// Fails with this errno (`has_cap_sys_admin` says no).
        Err(Errno),
        /// Fails with this errno until [`FakeSys::release`], then succeeds.
        ErrUntilReleased(Errno),
        /// Sleeps this long, then succeeds.
        HangFor(Duration),
        /// Blocks until [`FakeSys::release`], then succeeds.
        HangUntilReleased,
    }

    type Matches = Box<dyn Fn(&Call) -> bool + Send + Sync>;
    type Act = Box<dyn Fn() + Send + Sync>;

    /// A line of the script: the calls it answers, its answers for the first of
    /// them (one each), and its answer for every call after those.
    struct Rule {
        matches: Matches,
        first: VecDeque<Answer>,
        then: Answer,
    }

    impl Rule {
        fn next(&mut self) -> Answer {
            self.first.pop_front().unwrap_or(self.then)
        }
    }

    /// The recording, scripted kernel. Unscripted calls succeed, except those a
    /// [`Sys`] need not know (`bind_flags`, `remount_bind`, `fuse_control`),
    /// which fail with ENOSYS as the trait's defaults do.
    pub struct FakeSys {
        /// Every call, with when it was made (paused time, in a paused test).
        calls: Mutex<Vec<(Instant, Call)>>,
        /// The answers; the last rule scripted for a call wins.
        script: Mutex<Vec<Rule>>,
        /// What happens elsewhere as a call is made (see [`FakeSys::on`]).
        hooks: Mutex<Vec<(Matches, Act)>>,
        flags: Mutex<Option<MsFlags>>,
        released: Mutex<bool>,
        release: Condvar,
        /// The mount table, when the fake keeps one, and the next mount id.
        mounts: Mutex<Option<(Vec<Mount>, i32)>>,
        /// Told of every change of the mount table.
        changed: Notify,
        /// The runtime whose clock the calls' times are read from.
        runtime: Option<tokio::runtime::Handle>,
    }

    impl Default for FakeSys {
        fn default() -> Self {
            FakeSys {
                calls: Mutex::default(),
                script: Mutex::default(),
                hooks: Mutex::default(),
                flags: Mutex::default(),
                released: Mutex::default(),
                release: Condvar::new(),
                mounts: Mutex::default(),
                changed: Notify::new(),
                runtime: tokio::runtime::Handle::try_current().ok().inspect(|_| clock::hold_for_fakes()),
            }
        }
    }

    impl FakeSys {
        pub fn new() -> Self {
            Self::default()
        }

        /// Answers every call of `method` with `answer`.
        pub fn answer(self, method: Method, answer: Answer) -> Self {
            self.answers(method, [], answer)
        }

        /// Answers calls of `method` whose target matches with `answer`.
        pub fn answer_when(
            self,
            method: Method,
            matches: impl Fn(&Path) -> bool + Send + Sync + 'static,
            answer: Answer,
        ) -> Self {
            self.answers_when(method, matches, [], answer)
        }

        /// Answers the first calls of `method` with `first`, one answer each, and
        /// every later one with `then`: EBUSY three times and then success is
        /// `answers(Method::Unmount, [Answer::Err(Errno::EBUSY); 3], Answer::Ok)`.
        pub fn answers(self, method: Method, first: impl IntoIterator<Item = Answer>, then: Answer) -> Self {
            self.answers_to(move |call| call.method() == method, first, then)
        }

        /// [`FakeSys::answers`] for the calls of `method` whose target matches.
        pub fn answers_when(
            self,
            method: Method,
            matches: impl Fn(&Path) -> bool + Send + Sync + 'static,
            first: impl IntoIterator<Item = Answer>,
            then: Answer,
        ) -> Self {
            self.answers_to(move |call| call.method() == method && call.target().is_some_and(&matches), first, then)
        }

        /// [`FakeSys::answers`] for the calls `matches` picks, by any of their
        /// arguments: `|c| matches!(c, Call::Unmount(_, Unmount::Clean))`.
        pub fn answers_to(
            self,
            matches: impl Fn(&Call) -> bool + Send + Sync + 'static,
            first: impl IntoIterator<Item = Answer>,
            then: Answer,
        ) -> Self {
            let (matches, first) = (Box::new(matches), first.into_iter().collect());
            self.script.lock().unwrap().push(Rule { matches, first, then });
            self
        }

        /// Runs `act` as each call `matches` picks is made, before it is answered, on
        /// the calling thread: what happens elsewhere at that moment (a daemon that
        /// dies as its mount is bound).
        pub fn on(
            self,
            matches: impl Fn(&Call) -> bool + Send + Sync + 'static,
            act: impl Fn() + Send + Sync + 'static,
        ) -> Self {
            self.hooks.lock().unwrap().push((Box::new(matches), Box::new(act)));
            self
        }

        /// Answers `bind_flags` with `flags`.
        pub fn with_bind_flags(self, flags: MsFlags) -> Self {
            *self.flags.lock().unwrap() = Some(flags);
            self.answer(Method::BindFlags, Answer::Ok)
        }

        /// Keeps a mount table, starting with these lines of mountinfo.
        pub fn mounted(self, lines: &[&str]) -> Self {
            let table = MountTable::parse_bytes(lines.join("\n").as_bytes()).expect("mountinfo lines");
            let next = table.mounts.iter().map(|m| m.id).max().unwrap_or(0) + 1;
            *self.mounts.lock().unwrap() = Some((table.mounts, next));
            self
        }

        /// Lets every call hanging until released (now and later) return, and
        /// every call failing until released succeed.
        pub fn release(&self) {
            *self.released.lock().unwrap() = true;
            self.release.notify_all();
        }

        /// Every call made so far, in order.
        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().iter().map(|(_, call)| call.clone()).collect()
        }

        /// Every call made so far, in order, with when it was made.
        pub fn calls_at(&self) -> Vec<(Instant, Call)> {
            self.calls.lock().unwrap().clone()
        }

        /// How many calls of `method` were made so far.
        pub fn count(&self, method: Method) -> usize {
            self.calls.lock().unwrap().iter().filter(|(_, c)| c.method() == method).count()
        }

        /// The fake's mount table as it is now (empty if it keeps none).
        pub fn table(&self) -> MountTable {
            let mounts = self.mounts.lock().unwrap();
            MountTable::from_mounts(mounts.as_ref().map(|(m, _)| m.clone()).unwrap_or_default())
        }

        /// Adds a mount, as someone else's mount(2) would: a line of mountinfo,
        /// whose id is replaced by a new one. Returns the id.
        pub fn mount(&self, line: &str) -> i32 {
            let mut mount = MountTable::parse_bytes(line.as_bytes()).expect("a mountinfo line").mounts.remove(0);
            let mut mounts = self.mounts.lock().unwrap();
            let (list, next) = mounts.get_or_insert_with(Default::default);
            let id = *next;
            mount.id = id;
            *next += 1;
            list.push(mount);
            drop(mounts);
            self.changed.notify_one();
            id
        }

        /// Removes the top mount at `path`, as someone else's umount(2) would.
        pub fn unmount_top(&self, path: &Path) -> Option<Mount> {
            let removed = self.mounts.lock().unwrap().as_mut().and_then(|(list, _)| take_top(list, path));
            if removed.is_some() {
                self.changed.notify_one();
            }
            removed
        }

        fn now(&self) -> Instant {
            let _in_runtime = self.runtime.as_ref().map(|r| r.enter());
            Instant::now()
        }

        /// Records `call`, then answers it as scripted (after any hang).
        fn call(&self, call: Call) -> Result<(), Errno> {
            self.calls.lock().unwrap().push((self.now(), call.clone()));
            for (_, act) in self.hooks.lock().unwrap().iter().filter(|(matches, _)| matches(&call)) {
                act();
            }
            let scripted = self.script.lock().unwrap().iter_mut().rev().find(|r| (r.matches)(&call)).map(Rule::next);
            let unknown = matches!(call.method(), Method::BindFlags | Method::RemountBind | Method::FuseControl);
            match scripted {
                None if unknown => Err(Errno::ENOSYS),
                None | Some(Answer::Ok) => self.apply(&call),
                Some(Answer::Err(errno)) => Err(errno),
                Some(Answer::ErrUntilReleased(errno)) => match *self.released.lock().unwrap() {
                    true => self.apply(&call),
                    false => Err(errno),
                },
                Some(Answer::HangFor(time)) => {
                    clock::let_go();
                    std::thread::sleep(time);
                    self.apply(&call)
                }
                Some(Answer::HangUntilReleased) => {
                    clock::let_go();
                    let released = self.released.lock().unwrap();
                    drop(self.release.wait_while(released, |released| !*released).unwrap());
                    self.apply(&call)
                }
            }
        }

        /// A call that succeeded, applied to the mount table if the fake keeps one.
        fn apply(&self, call: &Call) -> Result<(), Errno> {
            let mut mounts = self.mounts.lock().unwrap();
            let Some((list, next)) = mounts.as_mut() else { return Ok(()) };
            match call {
                Call::Unmount(target, _) => {
                    take_top(list, target).ok_or(Errno::EINVAL)?;
                }
                Call::Bind(source, target) => {
                    let table = MountTable::from_mounts(list.clone());
                    let of = table.stack_at(source).last().copied().or_else(|| table.holder_of(source));
                    let parent = table.stack_at(target).last().copied().or_else(|| table.holder_of(target));
                    let (Some(of), Some(parent)) = (of, parent) else { return Err(Errno::ENOENT) };
                    let bound = Mount { id: *next, parent_id: parent.id, mount_point: target.clone(), ..of.clone() };
                    *next += 1;
                    list.push(bound);
                }
                _ => return Ok(()),
            }
            drop(mounts);
            self.changed.notify_one();
            Ok(())
        }
    }

    /// Removes the mount made last at `path`.
    fn take_top(list: &mut Vec<Mount>, path: &Path) -> Option<Mount> {
        let at = list.iter().rposition(|m| m.mount_point == path)?;
        Some(list.remove(at))
    }

    impl Sys for FakeSys {
        fn unmount(&self, target: &Path, how: Unmount) -> Result<(), Errno> {
            self.call(Call::Unmount(target.into(), how))
        }
        fn statfs(&self, target: &Path) -> Result<(), Errno> {
            self.call(Call::Statfs(target.into()))
        }
        fn bind(&self, source: &Path, target: &Path) -> Result<(), Errno> {
            self.call(Call::Bind(source.into(), target.into()))
        }
        fn private_tmpfs(&self, target: &Path) -> Result<(), Errno> {
            self.call(Call::PrivateTmpfs(target.into()))
        }
        fn has_cap_sys_admin(&self) -> bool {
            self.call(Call::HasCapSysAdmin).is_ok()
        }
        fn bind_flags(&self, target: &Path) -> Result<MsFlags, Errno> {
            self.call(Call::BindFlags(target.into())).map(|()| self.flags.lock().unwrap().unwrap_or(MsFlags::empty()))
        }
        fn remount_bind(&self, target: &Path, flags: MsFlags) -> Result<(), Errno> {
            self.call(Call::RemountBind(target.into(), flags))
        }
        fn fuse_control(&self, target: &Path) -> Result<(), Errno> {
            self.call(Call::FuseControl(target.into()))
        }
    }

    /// The fake's mount table as the mount-table watch reads it: each change is
    /// an event, as POLLPRI on mountinfo is.
    impl MountSource for Arc<FakeSys> {
        fn read(&mut self) -> std::io::Result<MountTable> {
            match self.mounts.lock().unwrap().as_ref() {
                Some((list, _)) => Ok(MountTable::from_mounts(list.clone())),
                None => Err(std::io::Error::other("the fake kernel keeps no mount table")),
            }
        }

        async fn changed(&mut self) -> std::io::Result<()> {
            self.changed.notified().await;
            Ok(())
        }
    }

    /// Keeps tokio's paused clock still while the fake answers a bounded call.
    ///
    /// In a test with paused time, tokio moves the clock to the next timer as
    /// soon as the runtime has nothing to do, and a bounded call waiting for
    /// its thread looks like nothing to do: its deadline would pass before the
    /// fake answered. A blocking task holds the clock (tokio does not advance it
    /// while one runs); it ends when the call returns, after its answer was
    /// sent, or when the fake starts to hang, so that a hung call gives up at
    /// its deadline in paused time, as it would in real time. Only on the
    /// thread of a test that made a fake in its runtime.
    pub mod clock {
        use std::cell::{Cell, RefCell};
        use std::sync::mpsc::{channel, Sender};

        thread_local! {
            /// The hold of the call this thread runs.
            static HOLD: RefCell<Option<Hold>> = const { RefCell::new(None) };
            /// Bounded calls made on this thread hold the clock.
            static FOR_FAKES: Cell<bool> = const { Cell::new(false) };
        }

        /// Makes the bounded calls of this thread's runtime hold its clock.
        pub fn hold_for_fakes() {
            FOR_FAKES.with(|f| f.set(true));
        }

        /// Holds the clock until dropped.
        pub struct Hold(#[allow(dead_code)] Sender<()>);

        /// Holds the clock of the current runtime, if this thread made a fake in it
        /// and the runtime is one that can be paused.
        pub fn hold() -> Option<Hold> {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            if !FOR_FAKES.with(Cell::get) || runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
                return None;
            }
            let (tx, rx) = channel::<()>();
            drop(runtime.spawn_blocking(move || rx.recv()));
            Some(Hold(tx))
        }

        /// Runs `job` (a bounded call and the sending of its answer) holding the clock.
        pub fn keep_while(hold: Option<Hold>, job: impl FnOnce()) {
            HOLD.with(|h| *h.borrow_mut() = hold);
            job();
            let_go();
        }

        /// Lets the clock move on: the call on this thread hangs.
        pub fn let_go() {
            drop(HOLD.with(|h| h.borrow_mut().take()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The threads of the bounded-call pool (named `sidemount-fscall`, which the
    /// kernel cuts to 15 bytes).
    fn thread_count() -> usize {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
        let names = tasks.flatten().filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok());
        names.filter(|name| name.starts_with("sidemount-fscal")).count()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn calls_one_after_another_reuse_a_thread_and_a_stuck_one_holds_nobody() {
        let before = thread_count();
        for i in 0..50 {
            assert_eq!(bounded(Duration::from_secs(5), move || i * 2).await, Ok(i * 2));
        }
        // One thread served them all (other tests may run beside this one).
        assert!(thread_count() <= before + 4, "{} threads after 50 calls, {before} before", thread_count());
        // A thread that is done waits for the next call (a test beside this one
        // may be using it meanwhile).
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while pool::idle() == 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(pool::idle() >= 1);
        // A call that does not return in time gives up; the next one is served.
        let stuck = bounded(Duration::from_millis(50), || std::thread::sleep(Duration::from_millis(500))).await;
        assert_eq!(stuck, Err(TimedOut(Duration::from_millis(50))));
        assert_eq!(bounded(Duration::from_secs(5), || 7).await, Ok(7));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_ticker_expires_every_period() {
        let period = Duration::from_millis(50);
        let ticker = Ticker::every(period).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(5), ticker.tick()).await.expect("ticked").unwrap();
        }
        let took = started.elapsed();
        assert!(took >= period * 3 && took < Duration::from_secs(2), "three ticks took {took:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_fake_records_calls_and_answers_as_scripted() {
        use fake::{Answer, Call, FakeSys, Method};
        let sys = Arc::new(
            FakeSys::new()
                .answer(Method::Statfs, Answer::Err(Errno::EINVAL))
                .answer_when(Method::Statfs, |p| p.ends_with("hung"), Answer::HangUntilReleased)
                .answer(Method::HasCapSysAdmin, Answer::Err(Errno::EPERM))
                .with_bind_flags(MsFlags::MS_RDONLY),
        );
        // A bounded call that fails gives the error, in time.
        let (dead, called) = (Path::new("/m/dead"), sys.clone());
        assert_eq!(bounded(Duration::from_secs(5), move || called.statfs(dead)).await, Ok(Err(Errno::EINVAL)));
        // One that hangs gives up at its deadline, and returns once released.
        let (hung, called) = (Path::new("/m/hung"), sys.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let stuck = bounded(Duration::from_millis(100), move || tx.send(called.statfs(hung)).unwrap()).await;
        assert_eq!(stuck, Err(TimedOut(Duration::from_millis(100))));
        sys.release();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(Ok(())));
        // Unscripted calls succeed, except those a fake kernel need not know.
        assert_eq!(sys.unmount(Path::new("/m/a"), Unmount::Abort), Ok(()));
        assert!(!sys.has_cap_sys_admin());
        assert_eq!(sys.bind_flags(Path::new("/m/a")), Ok(MsFlags::MS_RDONLY));
        assert_eq!(sys.remount_bind(Path::new("/m/a"), MsFlags::MS_NOSUID), Err(Errno::ENOSYS));
        assert_eq!(
            sys.calls(),
            [
                Call::Statfs("/m/dead".into()),
                Call::Statfs("/m/hung".into()),
                Call::Unmount("/m/a".into(), Unmount::Abort),
                Call::HasCapSysAdmin,
                Call::BindFlags("/m/a".into()),
                Call::RemountBind("/m/a".into(), MsFlags::MS_NOSUID),
            ]
        );
        assert_eq!(sys.count(Method::Statfs), 2);
    }

    #[test]
    fn a_rule_gives_its_first_answers_then_the_later_one() {
        use fake::{Answer, Call, FakeSys, Method};
        let busy = Answer::Err(Errno::EBUSY);
        let sys = FakeSys::new()
            .answers(Method::Unmount, [busy; 3], Answer::Ok)
            .answers_to(|c| matches!(c, Call::Unmount(_, Unmount::Detach)), [], Answer::Err(Errno::EPERM))
            .answers_when(Method::Statfs, |p| p.ends_with("b"), [Answer::Ok], Answer::ErrUntilReleased(Errno::EIO));
        let a = Path::new("/m/a");
        let unmounts: Vec<_> = (0..5).map(|_| sys.unmount(a, Unmount::Clean)).collect();
        assert_eq!(unmounts, [Err(Errno::EBUSY), Err(Errno::EBUSY), Err(Errno::EBUSY), Ok(()), Ok(())]);
        // A rule that picks by the call's arguments; the last one scripted wins.
        assert_eq!(sys.unmount(a, Unmount::Detach), Err(Errno::EPERM));
        // Failing until released.
        let b = Path::new("/m/b");
        assert_eq!([sys.statfs(b), sys.statfs(b), sys.statfs(a)], [Ok(()), Err(Errno::EIO), Ok(())]);
        sys.release();
        assert_eq!(sys.statfs(b), Ok(()));
    }

    #[test]
    fn the_fake_keeps_its_mount_table_as_the_kernel_would() {
        use crate::mount_watch::MountSource;
        use fake::FakeSys;
        let mut sys = Arc::new(FakeSys::new().mounted(&[
            "1 0 0:1 / / rw - ext4 /dev/a rw",
            "30 1 0:30 / /stage rw - tmpfs stage rw",
            "31 30 0:31 / /stage/v rw - fuse.bindfs bindfs rw",
        ]));
        let (stage, mp) = (Path::new("/stage/v"), Path::new("/pod/v"));
        // A bind copies the mount at its source, on top of what holds the target.
        assert_eq!(sys.bind(stage, mp), Ok(()));
        let table = sys.read().unwrap();
        let bound = table.volume_at(mp, |m| m.is_fuse()).unwrap();
        assert_eq!((bound.dev, bound.parent_id, bound.fs_type.as_str()), ((0, 31), 1, "fuse.bindfs"));
        // An unmount takes the top mount away; where nothing is mounted it fails as the kernel does.
        assert_eq!(sys.unmount(mp, Unmount::Detach), Ok(()));
        assert_eq!(sys.unmount(mp, Unmount::Clean), Err(Errno::EINVAL));
        assert!(!sys.read().unwrap().is_mount_point(mp));
        // Someone else's mounts and unmounts.
        let id = sys.mount("9 1 0:40 / /pod/v rw - tmpfs tmpfs rw");
        assert_eq!(sys.table().volume_at(mp, |_| true).map(|m| m.id), Some(id));
        assert!(sys.unmount_top(mp).is_some());
        assert_eq!(sys.table(), sys.read().unwrap());
        // Without a table, an unmount succeeds as scripted, and there is nothing to read.
        let mut bare = Arc::new(FakeSys::new());
        assert_eq!(bare.unmount(mp, Unmount::Clean), Ok(()));
        assert!(bare.read().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn in_paused_time_a_bounded_call_to_the_fake_waits_for_its_answer_or_its_deadline() {
        use fake::{Answer, FakeSys, Method};
        let sys =
            Arc::new(FakeSys::new().answer_when(Method::Statfs, |p| p.ends_with("hung"), Answer::HangUntilReleased));
        let start = tokio::time::Instant::now();
        for _ in 0..20 {
            let called = sys.clone();
            assert_eq!(bounded(Duration::from_secs(5), move || called.statfs(Path::new("/m/a"))).await, Ok(Ok(())));
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        let called = sys.clone();
        let hung = bounded(Duration::from_secs(5), move || called.statfs(Path::new("/m/hung"))).await;
        assert_eq!(hung, Err(TimedOut(Duration::from_secs(5))));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        sys.release();
    }
}
