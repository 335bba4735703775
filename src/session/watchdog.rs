//! The reply watchdog: notices a Redis that owes replies and sends nothing for
//! `upstream.reply_timeout`.
//!
//! A `tokio::time::timeout` around each read, or a timer reset per command, would cost a
//! timer-wheel update per command. The [`Watchdog`] instead keeps one `Sleep`, armed when
//! replies become owed and left alone while they keep coming; when it fires, the silence
//! is measured from the oldest waiting command's read time, the last reply bytes and the
//! last excused wait ([`Watchdog::fired`]), and it re-arms for what is left. A busy
//! session touches the timer once per timeout.
//!
//! A session waits on its watchdog at every turn while replies are owed, about twice per
//! unpipelined command: the timer is an [`Alarm`], polled once per deadline (a `Sleep`
//! polled at each wait cost about 240 instructions).
//!
//! Never decides what excuses a wait (the session knows: a blocking command, WAIT,
//! subscribed mode or MONITOR, a command still streaming to Redis, a client too slow to
//! take its replies) and never closes anything.

use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::alarm::Alarm;

/// One timer for a session's owed replies.
#[derive(Debug, Default)]
pub(crate) struct Watchdog {
    /// Set while armed.
    alarm: Alarm,
    /// When a wait was last excused, in microseconds of the session's clock: silence
    /// before it does not count.
    excused_us: u64,
}

/// What the session knows when the watchdog fires, in microseconds of its clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Silence {
    /// Now.
    pub now_us: u64,
    /// When the oldest command still waiting for its reply was read.
    pub oldest_command_us: u64,
    /// When reply bytes last arrived.
    pub last_reply_us: u64,
    /// Something excuses the wait now.
    pub excused: bool,
}

impl Watchdog {
    /// Whether the timer runs.
    #[inline]
    pub fn is_armed(&self) -> bool {
        self.alarm.deadline().is_some()
    }

    /// Stop the timer (the connection became a tunnel).
    pub fn disarm(&mut self) {
        self.alarm.clear();
    }

    /// Start the timer for `timeout` unless it runs: while replies keep coming it keeps
    /// its first deadline.
    pub fn arm(&mut self, timeout: Duration) {
        if !self.is_armed() {
            self.alarm.set(Instant::now() + timeout);
        }
    }

    /// Ready once the deadline passed (the event loop waits on it while armed); otherwise
    /// the task of `cx` is woken when it does.
    #[inline]
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.alarm.poll_rung(cx)
    }

    /// The deadline passed. Returns true when Redis has timed out: nothing excuses the wait
    /// and it has been silent for `timeout`. Otherwise the timer re-arms for what is left.
    pub fn fired(&mut self, silence: Silence, timeout: Duration) -> bool {
        self.alarm.clear();
        if silence.excused {
            self.excused_us = silence.now_us;
        }
        let silent_since = silence
            .oldest_command_us
            .max(silence.last_reply_us)
            .max(self.excused_us);
        let timeout_us = timeout.as_micros() as u64;
        let silent_for = silence.now_us.saturating_sub(silent_since);
        if !silence.excused && silent_for >= timeout_us {
            return true;
        }
        let left = Duration::from_micros(timeout_us - silent_for.min(timeout_us));
        self.alarm
            .set(Instant::now() + left.max(Duration::from_millis(1)));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn silence(now_us: u64, oldest_command_us: u64, last_reply_us: u64, excused: bool) -> Silence {
        Silence {
            now_us,
            oldest_command_us,
            last_reply_us,
            excused,
        }
    }

    #[tokio::test]
    async fn silence_since_the_oldest_command_times_out() {
        let mut dog = Watchdog::default();
        dog.arm(SECOND);
        assert!(dog.is_armed());
        assert!(dog.fired(silence(1_500_000, 400_000, 0, false), SECOND));
        assert!(!dog.is_armed());
    }

    #[tokio::test]
    async fn recent_replies_re_arm_for_what_is_left() {
        let mut dog = Watchdog::default();
        dog.arm(SECOND);
        assert!(!dog.fired(silence(1_000_000, 0, 700_000, false), SECOND));
        assert!(dog.is_armed());
        let left = dog.alarm.deadline().unwrap() - Instant::now();
        assert!(left <= Duration::from_millis(700) && left > Duration::from_millis(600));
    }

    #[tokio::test]
    async fn an_excused_wait_restarts_the_count() {
        let mut dog = Watchdog::default();
        dog.arm(SECOND);
        assert!(!dog.fired(silence(5_000_000, 0, 0, true), SECOND));
        // No longer excused, but silent only since the excuse.
        assert!(!dog.fired(silence(5_500_000, 0, 0, false), SECOND));
        assert!(dog.fired(silence(6_000_000, 0, 0, false), SECOND));
    }
}
