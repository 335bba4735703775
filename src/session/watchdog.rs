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
//! Polling a `Sleep` costs about 240 instructions (the task's budget, its waker stored
//! again), and a session polls its watchdog at every wait while replies are owed, about
//! twice per unpipelined command. The timer keeps the waker it was given, so once it holds
//! the session task's waker [`Watchdog::poll_fired`] only asks whether it fired.
//!
//! Never decides what excuses a wait (the session knows: a blocking command, WAIT,
//! subscribed mode or MONITOR, a command still streaming to Redis, a client too slow to
//! take its replies) and never closes anything.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// One timer for a session's owed replies.
#[derive(Debug, Default)]
pub(crate) struct Watchdog {
    /// Created the first time replies are owed.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// The waker the timer holds since its deadline was last set: polled by the same
    /// task, the timer need not be polled again to wake it.
    registered: Option<Waker>,
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
        self.armed
    }

    /// Stop the timer (the connection became a tunnel).
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Start the timer for `timeout` unless it runs: while replies keep coming it keeps
    /// its first deadline.
    pub fn arm(&mut self, timeout: Duration) {
        if self.armed {
            return;
        }
        let deadline = Instant::now() + timeout;
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.registered = None;
        self.armed = true;
    }

    /// Ready once the deadline passed (the event loop waits on it while armed); otherwise
    /// the task of `cx` is woken when it does. The timer is polled, and given the waker,
    /// only the first time after its deadline was set or when another task polls.
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(sleep) = &mut self.sleep else {
            return Poll::Pending;
        };
        let holds_this_waker = self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if holds_this_waker {
            return if sleep.is_elapsed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            };
        }
        let polled = sleep.as_mut().poll(cx);
        if polled.is_pending() {
            self.registered = Some(cx.waker().clone());
        }
        polled
    }

    /// The deadline passed. Returns true when Redis has timed out: nothing excuses the wait
    /// and it has been silent for `timeout`. Otherwise the timer re-arms for what is left.
    pub fn fired(&mut self, silence: Silence, timeout: Duration) -> bool {
        self.armed = false;
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
        let deadline = Instant::now() + left.max(Duration::from_millis(1));
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(deadline);
            self.registered = None;
            self.armed = true;
        }
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
        let left = dog.sleep.as_ref().unwrap().deadline() - Instant::now();
        assert!(left <= Duration::from_millis(700) && left > Duration::from_millis(600));
    }

    /// Waits on `dog` as the event loop does: ends only once the timer fires and wakes
    /// the task (or `within` passes, an error).
    async fn fired_within(dog: &mut Watchdog, within: Duration) -> bool {
        tokio::time::timeout(within, std::future::poll_fn(|cx| dog.poll_fired(cx)))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_polled_again_and_again_still_wakes_when_the_deadline_passes() {
        // One task throughout, as a session: the timer keeps its waker between waits.
        let session = tokio::spawn(async {
            let mut dog = Watchdog::default();
            dog.arm(SECOND);
            for _ in 0..3 {
                assert!(!fired_within(&mut dog, Duration::from_millis(300)).await);
            }
            // Nothing but the timer wakes this wait.
            std::future::poll_fn(|cx| dog.poll_fired(cx)).await;
            // Re-armed for what is left (800 ms): the old fire is not reported again, and
            // the timer wakes the task once more.
            assert!(!dog.fired(silence(1_000_000, 0, 800_000, false), SECOND));
            assert!(!fired_within(&mut dog, Duration::from_millis(700)).await);
            std::future::poll_fn(|cx| dog.poll_fired(cx)).await;
        });
        tokio::time::timeout(Duration::from_secs(10), session)
            .await
            .expect("the timer woke the waiting task each time")
            .expect("ran");
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
