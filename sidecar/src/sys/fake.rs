//! A kernel stand-in for unit tests: records every call made to it (which
//! method, which paths, which flags, and when) and answers each from a script
//! kept per method: success, an errno, or a hang (for a while, or until
//! released), as a hung FUSE daemon makes the kernel hang; a rule may give its
//! first calls other answers than the later ones. Given a mount table
//! ([`FakeSys::mounted`]), it keeps it as the kernel would: a bind that succeeds
//! adds a mount, an unmount that succeeds removes the top one (and fails with
//! EINVAL where nothing is mounted), and it is a [`MountSource`] for
//! `MountWatch::start_with`, which hears of every change by event.
//!
//! [`MountSource`]: crate::mount_watch::MountSource

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
        *self.mounts.lock().unwrap() = Some((table.mounts.iter().map(|m| Mount::clone(m)).collect(), next));
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
        let mut mount = Mount::clone(&MountTable::parse_bytes(line.as_bytes()).expect("a mountinfo line").mounts[0]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{bounded, TimedOut};

    #[tokio::test(flavor = "current_thread")]
    async fn the_fake_records_calls_and_answers_as_scripted() {
        use super::{Answer, Call, FakeSys, Method};
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
        use super::{Answer, Call, FakeSys, Method};
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
        use super::FakeSys;
        use crate::mount_watch::MountSource;
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
}
