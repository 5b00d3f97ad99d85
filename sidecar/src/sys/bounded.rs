//! Calls that can block forever on a hung FUSE daemon, run on a small pool of
//! reused threads and given up at a deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[cfg(test)]
use super::fake;

/// A call that did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer within {0:?}")]
pub struct TimedOut(pub Duration);

/// A bounded call under way, one given up at its deadline included, marked in
/// its caller's flag until the call is dropped: once it has returned, or when it
/// was never made (the pool could not start a thread for it). While the flag is
/// marked the caller makes no second call, so a call stuck in the kernel holds
/// one thread, not one more per retry.
pub struct InFlight(Arc<AtomicBool>);

impl InFlight {
    /// Marks the flag, unless a call is under way already.
    pub fn claim(flag: &Arc<AtomicBool>) -> Option<InFlight> {
        (!flag.swap(true, Ordering::SeqCst)).then(|| InFlight(flag.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

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

/// Starts a thread of the pool before the first call needs one: the supervisor
/// does so first thing, so the thread (and its malloc arena) is made while the
/// specs are read, not while the first daemon waits to be spawned. It waits
/// for a call like any idle thread, woken by nothing.
pub fn prestart() {
    // An empty call: done at once, then the thread waits in the pool.
    let _ = pool::run(Box::new(|| {}));
}

/// The threads of bounded calls. A thread that finished a call waits for the
/// next one instead of exiting, so a burst of calls (a start or a shutdown of
/// many volumes) reuses a few threads instead of creating one per call. At
/// most [`pool::MAX_IDLE`] wait for good, blocked on a channel with no timeout:
/// an idle supervisor's waiting threads are woken by nothing. A thread beyond
/// them waits [`pool::LINGER`] for another call and then exits: within a burst
/// it serves the next call instead of a new thread being made for it.
mod pool {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
    use std::sync::Mutex;
    use std::time::Duration;

    pub type Job = Box<dyn FnOnce() + Send>;

    /// Idle threads kept for good.
    pub const MAX_IDLE: usize = 4;
    /// How long a thread beyond them waits for another call.
    pub const LINGER: Duration = Duration::from_millis(200);

    /// The idle threads, by number: where to hand each a call.
    static IDLE: Mutex<Vec<(u64, Sender<Job>)>> = Mutex::new(Vec::new());
    static NEXT: AtomicU64 = AtomicU64::new(0);

    /// Runs `job` on an idle thread, or on a new one.
    pub fn run(job: Job) -> std::io::Result<()> {
        let worker = IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // A thread in the list waits on its channel until a call comes: the send
        // fails only if it died (a call that panicked), and the call runs anew.
        let job = match worker {
            Some((_, worker)) => match worker.send(job) {
                Ok(()) => return Ok(()),
                Err(returned) => returned.0,
            },
            None => job,
        };
        std::thread::Builder::new().name("sidemount-fscall".into()).stack_size(64 * 1024).spawn(move || serve(job))?;
        Ok(())
    }

    fn serve(mut job: Job) {
        let me = NEXT.fetch_add(1, Ordering::Relaxed);
        loop {
            job();
            let (tx, rx) = channel();
            let for_good = {
                let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
                let for_good = idle.len() < MAX_IDLE;
                idle.push((me, tx));
                for_good
            };
            let next = match for_good {
                true => rx.recv().ok(),
                false => match rx.recv_timeout(LINGER) {
                    Ok(next) => Some(next),
                    Err(RecvTimeoutError::Disconnected) => None,
                    Err(RecvTimeoutError::Timeout) => {
                        let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
                        match idle.iter().position(|(id, _)| *id == me) {
                            Some(at) => {
                                idle.swap_remove(at);
                                None
                            }
                            // Taken from the list as the wait ended: its call is on the way.
                            None => {
                                drop(idle);
                                rx.recv().ok()
                            }
                        }
                    }
                },
            };
            match next {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    #[cfg(test)]
    pub fn idle() -> usize {
        IDLE.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sys::Sys;

    #[test]
    fn a_call_under_way_is_one_until_it_is_dropped_run_or_not() {
        let flag = Arc::new(AtomicBool::new(false));
        let first = InFlight::claim(&flag).expect("nothing under way");
        assert!(InFlight::claim(&flag).is_none(), "a second call while the first is under way");
        // A call never made (its closure dropped unrun) lets the next one go too.
        let never_run = move || drop(first);
        drop(never_run);
        assert!(InFlight::claim(&flag).is_some());
        assert!(!flag.load(Ordering::SeqCst));
    }

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

    #[test]
    fn threads_beyond_the_kept_ones_wait_a_while_for_more_calls_and_then_go() {
        // Eight calls under way at once: eight threads.
        let barrier = Arc::new(std::sync::Barrier::new(9));
        for _ in 0..8 {
            let barrier = barrier.clone();
            pool::run(Box::new(move || {
                barrier.wait();
            }))
            .unwrap();
        }
        barrier.wait();
        let waiting = |enough: &dyn Fn(usize) -> bool, within: Duration| {
            let until = std::time::Instant::now() + within;
            while !enough(pool::idle()) && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            pool::idle()
        };
        // Done, all of them wait for the next call of the burst ...
        let idle = waiting(&|n| n >= 8, Duration::from_secs(2));
        assert!(idle >= 8, "{idle} threads waiting after a burst of 8");
        // ... and those beyond the kept ones go once no call came for a while.
        let idle = waiting(&|n| n <= pool::MAX_IDLE, pool::LINGER + Duration::from_secs(2));
        assert!(idle <= pool::MAX_IDLE, "{idle} threads still waiting");
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
