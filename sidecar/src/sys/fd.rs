//! Descriptors the runtime's reactor watches: files a caller owns, and the
//! periodic check's kernel timer.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_ticker_expires_every_period() {
        let period = Duration::from_millis(50);
        // Taken before the timer is set: its expiries fall `period` apart from
        // a moment after this, so three of them cannot come sooner than this.
        let started = std::time::Instant::now();
        let ticker = Ticker::every(period).unwrap();
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(5), ticker.tick()).await.expect("ticked").unwrap();
        }
        let took = started.elapsed();
        assert!(took >= period * 3 && took < Duration::from_secs(2), "three ticks took {took:?}");
    }
}
