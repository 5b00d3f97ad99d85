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
