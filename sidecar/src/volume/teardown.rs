//! Taking a volume down under its deadlines: every layer at the mountpoint
//! unmounted, the daemon signalled and reaped, and at shutdown the whole stage
//! released in one unmount.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{flush, Context, Deadlines, Keeper, Phase, Progress, Task, UnmountError};
use crate::daemon::describe_exit;
use crate::sys::{bounded, Unmount};

/// How often a busy mount is tried again while shutting down.
const BUSY_RETRY: Duration = Duration::from_millis(100);
/// After a second signal, how long a signalled daemon gets to flush and exit.
const HURRY_GRACE: Duration = Duration::from_secs(1);

/// Takes the daemons' mounts at the stage away in one unmount at shutdown.
/// Unmounting is serialized in the kernel, so with a mount per daemon at the
/// stage, one per volume at the mountpoint, a shutdown of N volumes made 2N
/// unmounts one after another. Armed by the supervisor with the count of volumes
/// stopping; each volume's teardown arrives once its mountpoint is clean, and
/// the last to arrive detaches the whole stage, which ends every daemon's
/// connection at once. A teardown that is not part of it, or for which the
/// release failed, unmounts its own stage mount as before.
#[derive(Debug, Default)]
pub struct StageRelease {
    /// Volumes yet to arrive; zero when not armed.
    pending: std::sync::atomic::AtomicUsize,
    /// `Some(true)` once the stage was detached, `Some(false)` if that failed.
    done: watch::Sender<Option<bool>>,
}

impl StageRelease {
    /// Expects `volumes` teardowns to arrive.
    pub fn arm(&self, volumes: usize) {
        self.pending.store(volumes, std::sync::atomic::Ordering::SeqCst);
    }

    /// One teardown's mountpoint is clean. Returns whether the stage was
    /// released for it: false when not armed, when the release failed, or when
    /// the others did not arrive by `until`.
    async fn arrive(&self, ctx: &Context, until: Instant) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let Ok(before) = self.pending.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)) else { return false };
        if before == 1 {
            let (sys, stage) = (ctx.sys.clone(), ctx.stage.clone());
            let detached =
                matches!(bounded(ctx.check_timeout, move || sys.unmount(&stage, Unmount::Detach)).await, Ok(Ok(())));
            if detached {
                debug!("detached the stage with every daemon's mount in it");
            }
            self.done.send_replace(Some(detached));
            return detached;
        }
        let mut done = self.done.subscribe();
        let released = match tokio::time::timeout_at(until, done.wait_for(|d| d.is_some())).await {
            Ok(Ok(d)) => *d == Some(true),
            _ => false,
        };
        released
    }
}

impl Task {
    /// Takes the volume down by the deadlines: clean unmount, retried while busy;
    /// at `busy` detach it and signal the daemon; at `last` kill the daemon.
    /// A kernel mount is detached at once if busy: no daemon holds its data, and
    /// left mounted on the emptyDir the kubelet's recursive delete would empty it.
    pub(super) async fn teardown(&mut self, keeper: Keeper, deadlines: Deadlines) {
        self.set(|s| s.phase = Phase::Stopping);
        flush::before_unmount(self, keeper.pid(), deadlines).await;
        let busy = match keeper {
            Keeper::Kernel => Instant::now(),
            Keeper::Daemon(_) => deadlines.busy,
        };
        // Every layer: a repaired FUSE volume has the dead mounts it covered below its
        // own, and an earlier instance may have left any number. The loop ends when
        // none is left, when unmounting stops making progress, or at `last`.
        let mut layers = 0;
        let mut progress = Progress::default();
        loop {
            let table = match self.fresh().await {
                Ok(table) => table,
                Err(err) => {
                    error!(%err, "cannot read the mount table; the volume may stay mounted");
                    break;
                }
            };
            // Any layer of ours at the mountpoint, on top or not: unmount acts on the top.
            let ours = table.at(&self.mountpoint).filter(|m| self.matcher.matches(m)).count();
            if ours == 0 {
                debug!(layers, "no layer left at the mountpoint");
                break;
            }
            if progress.stalled(table.at(&self.mountpoint).count()) {
                error!(left = ours, "unmounting makes no progress: layers stay at the mountpoint");
                break;
            }
            if Instant::now() >= deadlines.last {
                error!(left = ours, "shutdown deadline reached: layers stay at the mountpoint");
                break;
            }
            match self.unmount(Unmount::Clean).await {
                Ok(()) => layers += 1,
                Err(UnmountError::Refused(Errno::EBUSY)) if Instant::now() < busy && !*self.ctx.hurry.borrow() => {
                    debug!("busy; trying again");
                    let retry = Instant::now() + BUSY_RETRY.min(busy.saturating_duration_since(Instant::now()));
                    self.until(retry, Duration::ZERO).await;
                    continue;
                }
                Err(UnmountError::Refused(Errno::EBUSY)) => match self.unmount(Unmount::Detach).await {
                    Ok(()) => {
                        layers += 1;
                        warn!("still busy at the deadline: detached; open files keep it alive until they close");
                    }
                    Err(err) => {
                        error!(%err, "the busy mount could not be detached");
                        break;
                    }
                },
                Err(UnmountError::Refused(errno @ (Errno::EINVAL | Errno::ENOENT))) => {
                    // Gone meanwhile, or not unmountable: the next turn reads the table again,
                    // and the progress guard ends a loop that keeps getting this.
                    debug!(%errno, "nothing unmounted");
                }
                Err(err) => {
                    warn!(%err, "clean unmount impossible: aborting and detaching");
                    if let Err(err) = self.unmount(Unmount::Abort).await {
                        error!(%err, "the mount could not be detached");
                        break;
                    }
                    layers += 1;
                }
            }
            progress.unmounted();
        }
        if layers > 0 {
            info!(layers, "unmounted");
            self.set(|s| s.unmounted += layers);
        }
        let released =
            self.has_daemon() && deadlines.shutdown && self.ctx.stage_release.arrive(&self.ctx, deadlines.busy).await;
        if self.has_daemon() && !released {
            // The daemon's own mount: with every bind of it gone, the daemon sees its
            // connection end, flushes and exits.
            if let Err(message) = self.release_stage(false).await {
                error!(%message, "the staged mount could not be removed");
            }
        }
        if let Keeper::Daemon(mut daemon) = keeper {
            let children = self.ctx.children.clone();
            let pid = daemon.pid();
            // With every mount of ours gone, a daemon whose connection the kernel still
            // keeps serves a mount held outside the sidecar (the kubelet's bind of a
            // `subPath` lasts until the sidecar has exited): it would wait for its
            // connection to end until `busy`, so it is told to stop now.
            let held = self.connection_held_elsewhere().await;
            let signal_at = if held { Instant::now() } else { deadlines.busy };
            let exited = tokio::select! {
                status = daemon.wait(&children) => Some(status),
                _ = self.until(signal_at, Duration::ZERO) => None,
            };
            let status = match exited {
                Some(status) => status,
                None => {
                    if held {
                        info!(pid, "the daemon's connection outlives every mount of ours (a bind held outside the sidecar): SIGTERM");
                    } else {
                        info!(pid, "daemon still running at the deadline: SIGTERM");
                    }
                    daemon.signal(Signal::SIGTERM);
                    tokio::select! {
                        status = daemon.wait(&children) => status,
                        _ = self.until(deadlines.last, HURRY_GRACE) => {
                            warn!(pid, "daemon ignored SIGTERM: SIGKILL; whatever it had not flushed is lost");
                            daemon.signal(Signal::SIGKILL);
                            daemon.wait(&children).await
                        }
                    }
                }
            };
            info!(pid, status = %describe_exit(&status), "daemon exited");
            // A daemon that was killed, or never bound, may have left its mount at the
            // stage: private, but it goes too.
            if let Err(message) = self.release_stage(true).await {
                error!(%message, "the staged mount could not be removed");
            }
        }
        self.set(|s| {
            s.phase = Phase::Stopped;
            s.pid = None;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use nix::errno::Errno;
    use nix::unistd::Pid;

    use super::super::rig::*;
    use super::super::{leftovers, Owned};
    use super::*;
    use crate::sys::fake::{Answer, Call, FakeSys, Method};

    /// The unmounts a clean unmount of the mountpoint alone answers with `answer`.
    fn clean_unmounts_answer(sys: FakeSys, answer: Answer) -> FakeSys {
        let clean = |c: &Call| matches!(c, Call::Unmount(p, Unmount::Clean) if p.as_path() == Path::new(MOUNTPOINT));
        sys.answers_to(clean, [], answer)
    }

    /// What the shutdown would report as left mounted by the volume.
    fn left(rig: &Rig) -> Vec<String> {
        let owned = Owned {
            name: rig.task.volume.name.clone(),
            mountpoint: MOUNTPOINT.into(),
            matcher: rig.task.matcher.clone(),
        };
        leftovers(&rig.sys.table(), &[owned])
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_fuse_mount_is_retried_until_the_busy_deadline_then_detached() {
        let sys = FakeSys::new().mounted(&[ROOT, POD_BIND, STAGE_TMPFS, DAEMON_AT_STAGE, BOUND]);
        let mut rig = rig(fuse_volume(), clean_unmounts_answer(sys, Answer::Err(Errno::EBUSY)));
        let daemon = rig.daemon();
        let pid = daemon.pid();
        let deadlines = Deadlines::within(Duration::from_secs(20));
        rig.task.teardown(Keeper::Daemon(Box::new(daemon)), deadlines).await;

        // Nothing of the volume is left, at the mountpoint or the stage, and the daemon is gone.
        assert_eq!(rig.mounted_at(MOUNTPOINT), ["tmpfs"]);
        assert_eq!(rig.mounted_at(STAGE), Vec::<String>::new());
        assert!(left(&rig).is_empty());
        assert_eq!(nix::sys::signal::kill(Pid::from_raw(pid), None), Err(Errno::ESRCH));
        assert_eq!(rig.task.status.lock().unwrap().phase, Phase::Stopped);
        // A clean unmount every BUSY_RETRY until `busy` (half the budget), then one
        // detach, at `busy`, and nothing forced.
        let unmounts = rig.unmounts_of(MOUNTPOINT);
        let busy = Duration::from_secs(10);
        let (detached_at, how) = *unmounts.last().unwrap();
        assert_eq!(how, Unmount::Detach);
        assert_eq!(detached_at, busy);
        let cleans: Vec<Duration> = unmounts[..unmounts.len() - 1]
            .iter()
            .map(|&(at, how)| {
                assert_eq!(how, Unmount::Clean);
                at
            })
            .collect();
        let every_retry: Vec<Duration> = (0..=100).map(|i| BUSY_RETRY * i).collect();
        assert_eq!(cleans, every_retry);
        // The daemon is signalled at `busy` and gone by `last`.
        assert!(rig.elapsed() <= Duration::from_secs(19), "took {:?}", rig.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_second_signal_a_busy_fuse_mount_is_detached_at_once() {
        let sys = FakeSys::new().mounted(&[ROOT, POD_BIND, STAGE_TMPFS, DAEMON_AT_STAGE, BOUND]);
        let mut rig = rig(fuse_volume(), clean_unmounts_answer(sys, Answer::Err(Errno::EBUSY)));
        let daemon = rig.daemon();
        let pid = daemon.pid();
        rig.hurry.send_replace(true);
        rig.task.teardown(Keeper::Daemon(Box::new(daemon)), Deadlines::within(Duration::from_secs(20))).await;

        assert_eq!(rig.mounted_at(MOUNTPOINT), ["tmpfs"]);
        assert_eq!(rig.unmounts_of(MOUNTPOINT), [(Duration::ZERO, Unmount::Clean), (Duration::ZERO, Unmount::Detach)]);
        // The daemon is signalled at once and given HURRY_GRACE at most.
        assert_eq!(nix::sys::signal::kill(Pid::from_raw(pid), None), Err(Errno::ESRCH));
        assert!(rig.elapsed() <= HURRY_GRACE, "took {:?}", rig.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_kernel_mount_is_detached_at_once() {
        let sys = FakeSys::new().mounted(&[ROOT, POD_BIND, DISK]);
        let mut rig = rig(block_volume(), clean_unmounts_answer(sys, Answer::Err(Errno::EBUSY)));
        rig.task.teardown(Keeper::Kernel, Deadlines::within(Duration::from_secs(20))).await;

        assert_eq!(rig.mounted_at(MOUNTPOINT), ["tmpfs"]);
        assert!(left(&rig).is_empty());
        // Left on the emptyDir, the kubelet's recursive delete would empty it: no wait.
        assert_eq!(rig.unmounts_of(MOUNTPOINT), [(Duration::ZERO, Unmount::Clean), (Duration::ZERO, Unmount::Detach)]);
        assert_eq!(rig.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn einval_is_not_retried_until_the_deadline_nor_forced() {
        // The kernel says there is nothing to unmount while the table still shows a mount.
        let sys = FakeSys::new().mounted(&[ROOT, POD_BIND, DISK]).answer(Method::Unmount, Answer::Err(Errno::EINVAL));
        let mut rig = rig(block_volume(), sys);
        rig.task.teardown(Keeper::Kernel, Deadlines::within(Duration::from_secs(20))).await;

        // A few clean tries (the progress guard's), none forced, and no wait for a deadline.
        let unmounts = rig.unmounts_of(MOUNTPOINT);
        assert_eq!(unmounts, [(Duration::ZERO, Unmount::Clean); 3]);
        assert_eq!(rig.elapsed(), Duration::ZERO);
        // What the shutdown then reports.
        assert_eq!(left(&rig), ["data: 1 ext4 mount at /sidemount/data"]);
        assert_eq!(rig.task.status.lock().unwrap().phase, Phase::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_unmount_gives_up_at_its_deadline_and_the_mount_is_aborted() {
        let sys = FakeSys::new().mounted(&[ROOT, POD_BIND, DISK]);
        let mut rig = rig(block_volume(), clean_unmounts_answer(sys, Answer::HangUntilReleased));
        rig.task.teardown(Keeper::Kernel, Deadlines::within(Duration::from_secs(20))).await;

        assert_eq!(rig.mounted_at(MOUNTPOINT), ["tmpfs"]);
        assert!(left(&rig).is_empty());
        assert_eq!(rig.unmounts_of(MOUNTPOINT), [(Duration::ZERO, Unmount::Clean), (CHECK_TIMEOUT, Unmount::Abort)]);
        assert_eq!(rig.elapsed(), CHECK_TIMEOUT);
        rig.sys.release();
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_unmount_hangs_the_teardown_ends_and_names_what_is_left() {
        let sys = FakeSys::new().mounted(&[ROOT, POD_BIND, DISK]).answer(Method::Unmount, Answer::HangUntilReleased);
        let mut rig = rig(block_volume(), sys);
        rig.task.teardown(Keeper::Kernel, Deadlines::within(Duration::from_secs(20))).await;

        // Each call bounded: the clean one, then the abort, then the teardown gives up.
        assert_eq!(rig.unmounts_of(MOUNTPOINT), [(Duration::ZERO, Unmount::Clean), (CHECK_TIMEOUT, Unmount::Abort)]);
        assert_eq!(rig.elapsed(), CHECK_TIMEOUT * 2);
        assert_eq!(rig.task.status.lock().unwrap().phase, Phase::Stopped);
        assert_eq!(left(&rig), ["data: 1 ext4 mount at /sidemount/data"]);
        rig.sys.release();
    }
}
