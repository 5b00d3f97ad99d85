//! A volume task on the fake kernel (`sys::fake`), reading the fake's mount
//! table through the mount-table watch as it reads the kernel's: the unit
//! tests' stand-in for a pod, run in paused time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{Context, Deadlines, Task};
use crate::daemon::{Children, Daemon, Launch};
use crate::mount_watch::MountWatch;
use crate::spec::{Source, Volume};
use crate::sys::fake::{Call, FakeSys};
use crate::sys::Unmount;

/// The volume's mountpoint and its daemon's staging directory.
pub const MOUNTPOINT: &str = "/sidemount/data";
pub const STAGE: &str = "/stage/data";

/// Mountinfo lines: the root, the pod volume's bind at the mountpoint, the
/// private stage, a FUSE daemon's mount at the stage and its bind onto the
/// mountpoint, and a block device's ext4 mounted at the mountpoint.
pub const ROOT: &str = "1 0 0:1 / / rw - ext4 /dev/sda1 rw";
pub const POD_BIND: &str = "20 1 0:20 / /sidemount/data rw shared:1 - tmpfs tmpfs rw";
pub const STAGE_TMPFS: &str = "30 1 0:30 / /stage rw - tmpfs sidemount-stage rw";
pub const DAEMON_AT_STAGE: &str = "31 30 0:31 / /stage/data rw - fuse.bindfs bindfs rw";
pub const BOUND: &str = "32 20 0:31 / /sidemount/data rw shared:2 - fuse.bindfs bindfs rw";
pub const DEVICE: &str = "/dev/disk/by-id/sidemount-test-disk";
pub const DISK: &str = "40 20 7:7 / /sidemount/data rw shared:3 - ext4 /dev/disk/by-id/sidemount-test-disk rw";

/// How long a bounded call may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A FUSE volume `data`.
pub fn fuse_volume() -> Volume {
    Volume::fuse_for_tests("data")
}

/// A block volume `data` on [`DEVICE`].
pub fn block_volume() -> Volume {
    let source = Source::Block { device: DEVICE.into(), fs_type: "ext4".into(), format: false };
    Volume { source, ..Volume::fuse_for_tests("data") }
}

pub struct Rig {
    pub task: Task,
    pub sys: Arc<FakeSys>,
    /// When the rig was made: the zero of the times the tests measure.
    pub started: Instant,
    pub hurry: watch::Sender<bool>,
    /// Asks the task to stop.
    pub stop: oneshot::Sender<Deadlines>,
    _reaper: Reaper,
}

/// Kills the daemons a failed test left running (unreaped, so their pids are theirs).
struct Reaper(Arc<Children>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for pid in self.0.pids() {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// `volume`'s task on `sys`, whose mount table it reads through a mount-table watch.
pub fn rig(volume: Volume, sys: FakeSys) -> Rig {
    rig_staged(volume, sys, Path::new("/stage"))
}

/// [`rig`], with its daemons staged under `stage`: a real directory for a task that
/// starts its daemon (it creates the stage directory).
pub fn rig_staged(volume: Volume, sys: FakeSys, stage: &Path) -> Rig {
    let sys = Arc::new(sys);
    let table = MountWatch::start_with(sys.clone()).expect("the fake keeps a mount table");
    let (hurry, hurry_rx) = watch::channel(false);
    let ctx = Context {
        sys: sys.clone(),
        children: Children::new(),
        check_timeout: CHECK_TIMEOUT,
        mount_timeout: Duration::from_secs(30),
        objectivefs_volumes: Default::default(),
        hurry: hurry_rx,
        stage: stage.to_path_buf(),
        unflushed: Default::default(),
        stage_release: Default::default(),
        fuse_control: None,
    };
    let (stop, stop_rx) = oneshot::channel();
    let reaper = Reaper(ctx.children.clone());
    let task = Task::new(volume, MOUNTPOINT.into(), ctx, table, stop_rx);
    Rig { task, sys, started: Instant::now(), hurry, stop, _reaper: reaper }
}

impl Rig {
    /// A daemon that runs until signalled, standing in for the FUSE daemon.
    pub fn daemon(&self) -> Daemon {
        let argv = ["sleep".to_string(), "3600".to_string()];
        Daemon::spawn(&self.task.ctx.children, Launch { argv: &argv, env: &Default::default(), secrets: &[] })
            .expect("sleep starts")
    }

    /// Time since the rig was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The unmounts of `path` made so far: how, and when (since the rig was made).
    pub fn unmounts_of(&self, path: &str) -> Vec<(Duration, Unmount)> {
        self.sys
            .calls_at()
            .into_iter()
            .filter_map(|(at, call)| match call {
                Call::Unmount(target, how) if target == Path::new(path) => Some((at - self.started, how)),
                _ => None,
            })
            .collect()
    }

    /// The binds made so far, and when.
    pub fn binds(&self) -> Vec<(Duration, Call)> {
        let binds = self.sys.calls_at().into_iter().filter(|(_, call)| matches!(call, Call::Bind(..)));
        binds.map(|(at, call)| (at - self.started, call)).collect()
    }

    /// The fs types mounted at `path` in the fake's table, bottom first.
    pub fn mounted_at(&self, path: &str) -> Vec<String> {
        self.sys.table().stack_at(Path::new(path)).iter().map(|m| m.fs_type.clone()).collect()
    }
}
