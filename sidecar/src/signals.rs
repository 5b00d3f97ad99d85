//! The process signals sidemount acts on, for `sidemount run` and `sidemount
//! webhook` alike. SIGTERM (the kubelet stopping the pod) or SIGINT starts the
//! drain; a second one of either shortens its deadline to now, also when both
//! came before the supervisor looked (each delivery is counted). SIGCHLD tells the
//! supervisor that an orphan it adopted may have exited. Code that embeds the
//! webhook can drive the same sequence from a channel (`Shutdown::from_channel`).
//!
//! A handler installed here replaces the default action (death) for good, so
//! each command installs them only where it is ready to drain.

use std::fmt;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// A request to stop: SIGTERM, SIGINT, or one the embedding code sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop(&'static str);

impl Stop {
    pub const TERM: Stop = Stop("SIGTERM");
    pub const INT: Stop = Stop("SIGINT");
    /// What a channel's requests come as once every sender is gone.
    pub const CLOSED: Stop = Stop("stop");

    /// A request sent by code, named `name` in the log.
    pub const fn named(name: &'static str) -> Stop {
        Stop(name)
    }

    /// The name the logs use: `SIGTERM`, `SIGINT`, or the one given.
    pub fn name(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A handler that could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up {what}: {source}")]
pub struct SetupError {
    /// What could not be set up, e.g. "SIGTERM handling".
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

fn install(kind: SignalKind, what: &'static str) -> Result<tokio::signal::unix::Signal, SetupError> {
    signal(kind).map_err(|source| SetupError { what, source })
}

/// Installs the SIGTERM and SIGINT handlers (in that order) and returns the
/// shutdown sequence they drive. Must be called inside a tokio runtime.
pub fn shutdown() -> Result<Shutdown, SetupError> {
    let term = Counted::install(SignalKind::terminate(), "SIGTERM handling")?;
    let int = Counted::install(SignalKind::interrupt(), "SIGINT handling")?;
    Ok(Shutdown::new(Source::Kernel { term, int }))
}

/// Installs the SIGCHLD handler: each `recv` is one or more children gone.
pub fn child_exits() -> Result<tokio::signal::unix::Signal, SetupError> {
    install(SignalKind::child(), "SIGCHLD handling")
}

/// A signal whose every delivery is a request: tokio wakes its waiter once for
/// all the deliveries that came while it was not looking (two SIGTERMs sent
/// together, before the loop polls), so each is counted as well, and those
/// beyond the one woken for are owed to the next waits.
struct Counted {
    signal: tokio::signal::unix::Signal,
    delivered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Deliveries answered so far, owed ones included.
    seen: usize,
    /// Deliveries not answered yet.
    owed: usize,
}

impl Counted {
    fn install(kind: SignalKind, what: &'static str) -> Result<Counted, SetupError> {
        // The count first: a delivery is then counted before tokio's handler wakes the waiter.
        let delivered =
            crate::sys::count_deliveries(kind.as_raw_value()).map_err(|source| SetupError { what, source })?;
        Ok(Counted { signal: install(kind, what)?, delivered, seen: 0, owed: 0 })
    }

    /// Answers one owed delivery, if there is one.
    fn take_owed(&mut self) -> bool {
        let owed = self.owed > 0;
        self.owed -= usize::from(owed);
        owed
    }

    /// Waits for the next wakeup: one delivery now, and any more it stands for owed.
    async fn recv(&mut self) {
        self.signal.recv().await;
        let delivered = self.delivered.load(std::sync::atomic::Ordering::SeqCst);
        // This wakeup is one delivery; a count behind it (a handler not yet done) is not owed.
        self.owed = delivered.saturating_sub(self.seen + 1);
        self.seen = delivered.max(self.seen + 1);
    }
}

/// Where stop requests come from.
enum Source {
    Kernel {
        term: Counted,
        int: Counted,
    },
    /// Requests sent by the embedding code (and the tests) instead of the kernel.
    Channel(mpsc::Receiver<Stop>),
}

impl Source {
    /// The next request; `None` once a channel's senders are gone.
    async fn recv(&mut self) -> Option<Stop> {
        match self {
            Source::Kernel { term, int } => {
                if term.take_owed() {
                    return Some(Stop::TERM);
                }
                if int.take_owed() {
                    return Some(Stop::INT);
                }
                tokio::select! {
                    () = term.recv() => Some(Stop::TERM),
                    () = int.recv() => Some(Stop::INT),
                }
            }
            Source::Channel(rx) => rx.recv().await,
        }
    }
}

/// How far the shutdown has come: the state each request moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// No request yet: the work goes on.
    #[default]
    Running,
    /// The first request came: drain under the deadline.
    Draining { first: Stop },
    /// A further request came: every deadline is now.
    Hurried { first: Stop, again: Stop },
}

impl Phase {
    /// The phase after one more request.
    pub fn next(self, stop: Stop) -> Phase {
        match self {
            Phase::Running => Phase::Draining { first: stop },
            Phase::Draining { first } | Phase::Hurried { first, .. } => Phase::Hurried { first, again: stop },
        }
    }
}

/// The shutdown sequence: `requested` resolves at the first SIGTERM or SIGINT,
/// `hurried` at one after it. Both are cancel-safe, to be selected against the
/// work in a loop; a request that came while neither was polled is kept.
pub struct Shutdown {
    source: Source,
    phase: Phase,
}

impl Shutdown {
    fn new(source: Source) -> Shutdown {
        Shutdown { source, phase: Phase::Running }
    }

    /// A sequence driven by messages on `requests` instead of signals. Every
    /// sender dropped is a request to stop (`Stop::CLOSED`) before the first,
    /// and no hurry after it.
    pub fn from_channel(requests: mpsc::Receiver<Stop>) -> Shutdown {
        Shutdown::new(Source::Channel(requests))
    }

    /// Where the sequence is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The first request: start the drain. Once it came, resolves at once with it.
    pub async fn requested(&mut self) -> Stop {
        loop {
            match self.phase {
                Phase::Running => self.advance().await,
                Phase::Draining { first } | Phase::Hurried { first, .. } => return first,
            }
        }
    }

    /// A request after the first: cut the drain short. Waits for the first too
    /// when it has not come yet.
    pub async fn hurried(&mut self) -> Stop {
        loop {
            match self.phase {
                Phase::Running | Phase::Draining { .. } => self.advance().await,
                Phase::Hurried { again, .. } => return again,
            }
        }
    }

    async fn advance(&mut self) {
        let stop = match self.source.recv().await {
            Some(stop) => stop,
            None if self.phase == Phase::Running => Stop::CLOSED,
            None => std::future::pending().await,
        };
        self.phase = self.phase.next(stop);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `future` is still waiting after a moment.
    async fn waits<F: std::future::Future>(future: F) -> bool {
        tokio::time::timeout(Duration::from_millis(50), future).await.is_err()
    }

    #[test]
    fn the_first_request_drains_and_any_further_one_hurries() {
        let phase = Phase::default();
        assert_eq!(phase, Phase::Running);
        let phase = phase.next(Stop::TERM);
        assert_eq!(phase, Phase::Draining { first: Stop::TERM });
        let phase = phase.next(Stop::INT);
        assert_eq!(phase, Phase::Hurried { first: Stop::TERM, again: Stop::INT });
        assert_eq!(phase.next(Stop::TERM), Phase::Hurried { first: Stop::TERM, again: Stop::TERM });
    }

    #[test]
    fn names_the_signal_as_the_logs_do() {
        assert_eq!(Stop::TERM.to_string(), "SIGTERM");
        assert_eq!(format!("{}: draining", Stop::INT), "SIGINT: draining");
    }

    #[tokio::test]
    async fn requested_then_hurried() {
        let (tx, rx) = mpsc::channel(4);
        let mut shutdown = Shutdown::from_channel(rx);
        assert!(waits(shutdown.requested()).await, "requested with no request");
        tx.send(Stop::INT).await.unwrap();
        assert_eq!(shutdown.requested().await, Stop::INT);
        // The first request is no hurry, and asking again does not consume the next.
        assert!(waits(shutdown.hurried()).await, "hurried by the first request");
        assert_eq!(shutdown.requested().await, Stop::INT);
        tx.send(Stop::TERM).await.unwrap();
        assert_eq!(shutdown.hurried().await, Stop::TERM);
        assert_eq!(shutdown.requested().await, Stop::INT);
        assert_eq!(shutdown.phase(), Phase::Hurried { first: Stop::INT, again: Stop::TERM });
    }

    #[tokio::test]
    async fn hurried_alone_waits_for_two_requests_and_a_cancelled_wait_loses_neither() {
        let (tx, rx) = mpsc::channel(4);
        let mut shutdown = Shutdown::from_channel(rx);
        tx.send(Stop::TERM).await.unwrap();
        // Cancelled after it took the first request: that one is kept.
        assert!(waits(shutdown.hurried()).await, "hurried by one request");
        assert_eq!(shutdown.phase(), Phase::Draining { first: Stop::TERM });
        tx.send(Stop::INT).await.unwrap();
        assert_eq!(shutdown.hurried().await, Stop::INT);
        assert_eq!(shutdown.requested().await, Stop::TERM);

        // Both sent while nothing is polled.
        let (tx, rx) = mpsc::channel(4);
        let mut shutdown = Shutdown::from_channel(rx);
        tx.send(Stop::INT).await.unwrap();
        tx.send(Stop::TERM).await.unwrap();
        assert_eq!(shutdown.hurried().await, Stop::TERM);
        assert_eq!(shutdown.requested().await, Stop::INT);
    }

    #[tokio::test]
    async fn senders_gone_stop_before_the_first_request_and_never_hurry() {
        let (tx, rx) = mpsc::channel::<Stop>(1);
        let mut shutdown = Shutdown::from_channel(rx);
        assert!(waits(shutdown.requested()).await);
        drop(tx);
        assert_eq!(shutdown.requested().await, Stop::CLOSED);
        assert_eq!(Stop::CLOSED.name(), "stop");
        assert!(waits(shutdown.hurried()).await, "hurried by the senders going");

        let (tx, rx) = mpsc::channel(1);
        let mut shutdown = Shutdown::from_channel(rx);
        tx.send(Stop::named("done")).await.unwrap();
        assert_eq!(shutdown.requested().await, Stop::named("done"));
        drop(tx);
        assert!(waits(shutdown.hurried()).await, "hurried by the senders going");
        assert_eq!(shutdown.phase(), Phase::Draining { first: Stop::named("done") });
    }

    /// The real handlers, with signals sent to the process: in a child test
    /// process, so that this one's handlers and signals touch no other test.
    #[test]
    fn signals_drive_the_sequence() {
        let test = concat!(module_path!(), "::signals_drive_the_sequence");
        crate::alone::in_own_process(test, signals_drive_the_sequence_in_child);
    }

    /// Two SIGTERMs sent before anyone waits are two requests, not one.
    #[test]
    fn two_signals_sent_together_hurry() {
        let test = concat!(module_path!(), "::two_signals_sent_together_hurry");
        crate::alone::in_own_process(test, two_signals_sent_together_hurry_in_child);
    }

    async fn two_signals_sent_together_hurry_in_child() {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let mut shutdown = shutdown().unwrap();
        let Source::Kernel { term, int } = &shutdown.source else { unreachable!("the kernel's signals") };
        let (term, int) = (term.delivered.clone(), int.delivered.clone());
        // Each sent once the last was handled: a signal sent while one is still
        // pending in the kernel is merged there, before any handler runs.
        let send = |signal: Signal, delivered: &std::sync::atomic::AtomicUsize| {
            let before = delivered.load(std::sync::atomic::Ordering::SeqCst);
            kill(Pid::this(), signal).unwrap();
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while delivered.load(std::sync::atomic::Ordering::SeqCst) == before {
                assert!(std::time::Instant::now() < until, "{signal} not handled");
                std::thread::yield_now();
            }
        };
        send(Signal::SIGTERM, &term);
        send(Signal::SIGTERM, &term);
        let hurried = tokio::time::timeout(Duration::from_secs(5), shutdown.hurried()).await;
        assert_eq!(hurried, Ok(Stop::TERM), "the second SIGTERM was lost");
        assert_eq!(shutdown.phase(), Phase::Hurried { first: Stop::TERM, again: Stop::TERM });
        // Nothing more is owed: a third request is still waited for.
        assert!(waits(async { shutdown.source.recv().await }).await, "a request made up");
        send(Signal::SIGINT, &int);
        send(Signal::SIGTERM, &term);
        send(Signal::SIGTERM, &term);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(tokio::time::timeout(Duration::from_secs(5), shutdown.source.recv()).await.unwrap().unwrap());
        }
        got.sort_by_key(|stop| stop.name());
        assert_eq!(got, [Stop::INT, Stop::TERM, Stop::TERM]);
        assert!(waits(async { shutdown.source.recv().await }).await, "a request made up");
    }

    async fn signals_drive_the_sequence_in_child() {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let mut shutdown = shutdown().unwrap();
        let mut children = child_exits().unwrap();
        assert!(waits(shutdown.requested()).await);
        kill(Pid::this(), Signal::SIGTERM).unwrap();
        assert_eq!(shutdown.requested().await, Stop::TERM);
        assert!(waits(shutdown.hurried()).await, "hurried by the first SIGTERM");
        kill(Pid::this(), Signal::SIGINT).unwrap();
        assert_eq!(shutdown.hurried().await, Stop::INT);
        // Handled, not fatal: a third one leaves the process running.
        kill(Pid::this(), Signal::SIGTERM).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(shutdown.requested().await, Stop::TERM);
        kill(Pid::this(), Signal::SIGCHLD).unwrap();
        tokio::time::timeout(Duration::from_secs(5), children.recv()).await.expect("SIGCHLD seen");
    }
}
