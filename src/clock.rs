//! The monotonic clock the proxy's time-bounded memory reads: the enqueue guard's windows,
//! token buckets and expiring tables, and the queue guard's idle times.
//!
//! A [`Clock`] is the instant it was started; it tells the time elapsed since, in whole
//! milliseconds or seconds. It reads [`tokio::time::Instant`], which is the operating
//! system's monotonic clock (exactly `std::time::Instant`) unless tokio's `test-util`
//! feature is on. Tests turn it on, so `tokio::time::pause()` and `advance()` move every
//! clock started on a paused runtime: a test checks a one-minute window without waiting a
//! minute. Once some runtime of the process has paused its time, reading the clock costs a
//! thread-local lookup besides; never in a build without `test-util`.
//!
//! It never sleeps, schedules or reads wall-clock time (dates, such as a stream entry's id,
//! are not its concern).

use std::time::Duration;

use tokio::time::Instant;

/// Time since a fixed start, for memories that expire entries.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now (on a paused runtime: the runtime's paused now).
    pub fn start() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    /// Time since the clock started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whole milliseconds since the clock started.
    pub fn millis(&self) -> u64 {
        self.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_only_when_advanced() {
        let clock = Clock::start();
        assert_eq!(clock.millis(), 0);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.millis(), 1_500);
        assert_eq!(clock.elapsed().as_secs(), 1);
    }
}
