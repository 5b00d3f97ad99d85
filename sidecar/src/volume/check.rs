//! Whether a mounted volume answers: bounded `statfs` calls, batched so a
//! periodic check of many volumes costs one wakeup, and skipped for a FUSE
//! daemon the kernel says has nothing waiting.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Phase, SharedStatus, Status, VolumeError};
use crate::sys::{bounded, Sys};

/// Checks one ready volume with a bounded `statfs`.
pub async fn check(status: &SharedStatus, sys: &Arc<dyn Sys>, timeout: Duration) -> bool {
    check_many(std::slice::from_ref(status), sys, timeout).await
}

/// Checks ready volumes with bounded `statfs` calls, one after another on one
/// thread, so a periodic check of many volumes costs one wakeup. When that
/// batch misses its deadline, the volume it is stuck on is marked not
/// answering and every volume it had not reached is checked at once, each on
/// a thread of its own: the whole check takes at most twice `timeout`, however
/// many volumes hang. A volume whose earlier check still waits on the kernel
/// is not checked again: a hung mount holds one thread, not one per probe.
/// True when every volume given is ready.
pub async fn check_many(statuses: &[SharedStatus], sys: &Arc<dyn Sys>, timeout: Duration) -> bool {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    type Item = (SharedStatus, PathBuf, u64);
    fn check_one(sys: &dyn Sys, (status, mountpoint, generation): &Item) {
        let result = sys.statfs(mountpoint);
        let mut s = status.lock().expect("status lock");
        if s.generation == *generation {
            s.check_started = None;
            record_check(&mut s, result.map_err(|source| VolumeError::CheckFailed { source }));
        }
    }
    fn not_answering((status, _, generation): &Item, timeout: Duration) {
        let mut s = status.lock().expect("status lock");
        // Still waiting on this check: it answered right at the deadline otherwise.
        if s.generation == *generation && s.check_started.is_some() {
            record_check(&mut s, Err(VolumeError::CheckHung { timeout }));
        }
    }

    let mut queue: Vec<Item> = Vec::new();
    for status in statuses {
        let mut s = status.lock().expect("status lock");
        if s.phase != Phase::Ready {
            continue;
        }
        match s.check_started {
            Some(started) => {
                if started.elapsed() >= timeout && s.responsive {
                    record_check(&mut s, Err(VolumeError::CheckHung { timeout }));
                }
            }
            None => {
                s.check_started = Some(Instant::now());
                queue.push((status.clone(), s.mountpoint.clone(), s.generation));
            }
        }
    }
    if !queue.is_empty() {
        let batch: Arc<[Item]> = queue.into();
        // The index of the next volume the batch thread takes; usize::MAX once the
        // batch is given up, so the thread takes no more after its stuck call.
        let next = Arc::new(AtomicUsize::new(0));
        let (worker_batch, worker_next, worker_sys) = (batch.clone(), next.clone(), sys.clone());
        let finished = bounded(timeout, move || {
            while let Ok(i) = worker_next.fetch_update(SeqCst, SeqCst, |i| (i != usize::MAX).then_some(i + 1)) {
                let Some(item) = worker_batch.get(i) else { return };
                check_one(worker_sys.as_ref(), item);
            }
        })
        .await;
        if finished.is_err() {
            let taken = next.swap(usize::MAX, SeqCst).min(batch.len());
            // The call the batch thread is in is waiting on the kernel.
            if let Some(stuck) = taken.checked_sub(1).and_then(|i| batch.get(i)) {
                not_answering(stuck, timeout);
            }
            let mut rest = tokio::task::JoinSet::new();
            for item in batch.iter().skip(taken) {
                let (sys, item, probe) = (sys.clone(), item.clone(), item.clone());
                rest.spawn(async move {
                    if bounded(timeout, move || check_one(sys.as_ref(), &probe)).await.is_err() {
                        not_answering(&item, timeout);
                    }
                });
            }
            while rest.join_next().await.is_some() {}
        }
    }
    statuses.iter().all(|s| s.lock().expect("status lock").is_ready())
}

/// The periodic check, which asks a daemon only when its answer can be in
/// doubt. The kernel counts the requests each FUSE connection has sent its
/// daemon and not had answered (fusectl's `waiting`, read without involving the
/// daemon): a volume that answered its last check and has none waiting is
/// ready, and its daemon is left asleep. Every other volume (requests waiting,
/// not answering before, not FUSE, no fusectl) is checked with bounded `statfs`
/// calls as [`check_many`] does. A hung daemon is found as soon as anything
/// waits on it; an idle supervisor with idle volumes wakes once per interval.
pub async fn check_when_needed(
    statuses: &[SharedStatus],
    sys: &Arc<dyn Sys>,
    timeout: Duration,
    connections: Option<&std::fs::File>,
) -> bool {
    let quiet = |s: &Status| {
        let (Some(control), Some(connection)) = (connections, s.connection) else { return false };
        s.is_ready() && s.check_started.is_none() && crate::sys::fuse_connection_waiting(control, connection) == Some(0)
    };
    let asked: Vec<SharedStatus> =
        statuses.iter().filter(|s| !quiet(&s.lock().expect("status lock"))).cloned().collect();
    if !asked.is_empty() {
        check_many(&asked, sys, timeout).await;
    }
    statuses.iter().all(|s| s.lock().expect("status lock").is_ready())
}

/// The name fusectl gives a connection: the kernel's device number of its
/// superblock (`major << 20 | minor`).
pub fn fuse_connection((major, minor): (u32, u32)) -> u64 {
    (u64::from(major) << 20) | u64::from(minor)
}

fn record_check(s: &mut Status, result: Result<(), VolumeError>) {
    match result {
        Ok(()) => {
            if !s.responsive {
                debug!(volume = %s.name, "mountpoint answers");
            }
            s.responsive = true;
        }
        Err(err) => {
            if s.responsive {
                warn!(volume = %s.name, message = %err, "mountpoint not answering");
            }
            s.responsive = false;
            s.last_error = Some(err.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use nix::errno::Errno;

    use super::*;
    use crate::spec::Volume;
    use crate::sys::fake::{Answer, Call, FakeSys, Method};

    /// A kernel whose statfs hangs (for a few seconds) on every mountpoint
    /// whose name starts with "hung".
    fn hung_sys() -> FakeSys {
        let hung = |target: &Path| target.file_name().is_some_and(|n| n.to_string_lossy().starts_with("hung"));
        FakeSys::new().answer_when(Method::Statfs, hung, Answer::HangFor(Duration::from_secs(3)))
    }

    fn ready(name: &str) -> SharedStatus {
        let volume = Volume::fuse_for_tests(name);
        let mut status = Status::new(&volume, &Path::new("/sidemount").join(name));
        status.phase = Phase::Ready;
        status.responsive = true;
        Arc::new(Mutex::new(status))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn many_hung_volumes_cost_at_most_two_timeouts() {
        let sys: Arc<dyn Sys> = Arc::new(hung_sys());
        let timeout = Duration::from_millis(300);
        // Healthy ones before, between and after the hung ones.
        let names = ["a", "hung1", "hung2", "b", "hung3", "hung4", "hung5", "hung6", "c"];
        let statuses: Vec<SharedStatus> = names.iter().map(|n| ready(n)).collect();
        let started = Instant::now();
        let ready_all = check_many(&statuses, &sys, timeout).await;
        let took = started.elapsed();
        assert!(!ready_all);
        // One after another this took six timeouts (1.8 s).
        assert!(took < timeout * 2 + Duration::from_millis(250), "the check took {took:?}");
        for (name, status) in names.iter().zip(&statuses) {
            let s = status.lock().unwrap();
            assert_eq!(s.responsive, !name.starts_with("hung"), "{name}: {s:?}");
        }
        // The hung ones still hold their one thread each: not checked again, and
        // the second check is quick.
        let started = Instant::now();
        check_many(&statuses, &sys, timeout).await;
        assert!(started.elapsed() < timeout + Duration::from_millis(250), "{:?}", started.elapsed());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_periodic_check_asks_only_daemons_with_requests_waiting() {
        let counting = Arc::new(hung_sys());
        let sys: Arc<dyn Sys> = counting.clone();
        let control = tempfile::tempdir().unwrap();
        for (connection, waiting) in [(41, "0\n"), (42, "3\n")] {
            std::fs::create_dir(control.path().join(connection.to_string())).unwrap();
            std::fs::write(control.path().join(connection.to_string()).join("waiting"), waiting).unwrap();
        }
        let (quiet, busy, unknown) = (ready("quiet"), ready("busy"), ready("unknown"));
        quiet.lock().unwrap().connection = Some(41);
        busy.lock().unwrap().connection = Some(42);
        let all = [quiet.clone(), busy.clone(), unknown.clone()];
        let timeout = Duration::from_secs(2);
        let control = std::fs::File::open(control.path()).unwrap();
        assert!(check_when_needed(&all, &sys, timeout, Some(&control)).await);
        // The busy one and the one without a known connection were asked; the quiet one not.
        assert_eq!(counting.count(Method::Statfs), 2);
        // Without fusectl every daemon is asked.
        assert!(check_when_needed(&all, &sys, timeout, None).await);
        assert_eq!(counting.count(Method::Statfs), 5);
        // One that did not answer last time is asked, waiting or not.
        quiet.lock().unwrap().responsive = false;
        assert!(check_when_needed(std::slice::from_ref(&quiet), &sys, timeout, Some(&control)).await);
        assert_eq!(counting.count(Method::Statfs), 6);
        assert_eq!(fuse_connection((0, 57)), 57);
        assert_eq!(fuse_connection((8, 1)), (8 << 20) | 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_hung_statfs_is_unready_at_the_deadline_and_ready_once_it_answers() {
        let fake = Arc::new(FakeSys::new().answer(Method::Statfs, Answer::HangUntilReleased));
        let sys: Arc<dyn Sys> = fake.clone();
        let timeout = Duration::from_millis(200);
        let status = ready("data");
        // The statfs never returns by itself: the check gives up at its deadline.
        let checked = tokio::time::timeout(Duration::from_secs(10), check(&status, &sys, timeout)).await;
        assert_eq!(checked, Ok(false));
        {
            let s = status.lock().unwrap();
            assert!(!s.responsive);
            assert!(s.last_error.as_deref().is_some_and(|e| e.contains("did not answer statfs")), "{s:?}");
        }
        // Checked again while the first call still waits: no second call.
        assert!(!check(&status, &sys, timeout).await);
        assert_eq!(fake.calls(), [Call::Statfs("/sidemount/data".into())]);
        // The kernel answers at last: the next check asks again, and it is ready.
        fake.release();
        for _ in 0..100 {
            if status.lock().unwrap().check_started.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(check(&status, &sys, timeout).await);
        assert_eq!(fake.count(Method::Statfs), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failing_statfs_is_unready_and_says_why() {
        let sys: Arc<dyn Sys> = Arc::new(FakeSys::new().answer(Method::Statfs, Answer::Err(Errno::EINVAL)));
        let status = ready("data");
        assert!(!check(&status, &sys, Duration::from_secs(5)).await);
        let s = status.lock().unwrap();
        assert!(!s.responsive);
        assert!(s.check_started.is_none());
        let error = s.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("statfs of the mountpoint failed") && error.contains("EINVAL"), "{error}");
    }
}
