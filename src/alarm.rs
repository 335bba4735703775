//! A deadline kept in one timer, cheap to wait on again and again.
//!
//! An event loop that waits on `tokio::time::sleep_until(deadline)` builds a new timer at
//! each turn: the timer is entered in tokio's timer wheel when first polled and taken out
//! again when the turn's `select!` drops it, a few hundred instructions and the wheel's
//! lock at every wait. An [`Alarm`] keeps one `Sleep` for as long as its owner lives: the
//! timer is reset only when the deadline moves, and polled (handing it the task's waker)
//! only the first time after that; a later wait of the same task asks whether it rang.
//!
//! [`SilenceAlarm`] builds on it the rule a connection that many clients share applies for
//! `upstream.reply_timeout`: once it owes replies, it may stay silent that long.
//!
//! It decides nothing about what a ring means: its owner looks at the time and decides.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::wakeup::GivenWaker;

/// One timer with a deadline that moves rarely.
#[derive(Debug, Default)]
pub(crate) struct Alarm {
    /// Created at the first deadline, then reset.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The deadline set, `None` when cleared.
    deadline: Option<Instant>,
    /// The waker the timer holds since its deadline was last set: polled by the same
    /// task, the timer need not be polled again to wake it.
    registered: GivenWaker,
}

impl Alarm {
    /// The deadline set, if any.
    #[inline]
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Ring at `deadline` (the timer is touched only when it moves).
    pub fn set(&mut self, deadline: Instant) {
        if self.deadline == Some(deadline) {
            return;
        }
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.deadline = Some(deadline);
        self.registered.forget();
    }

    /// Ring no more until set again. The timer is left as it is: a wait on a cleared alarm
    /// never ends, and setting it again resets the timer.
    pub fn clear(&mut self) {
        self.deadline = None;
    }

    /// Ready once the deadline set has passed; otherwise the task of `cx` is woken when it
    /// does. Pending for ever while cleared. The timer is polled, and given the waker, only
    /// the first time after its deadline was set or when another task polls.
    pub fn poll_rung(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(sleep) = &mut self.sleep else {
            return Poll::Pending;
        };
        if self.deadline.is_none() {
            return Poll::Pending;
        }
        if self.registered.holds(cx) {
            return if sleep.is_elapsed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            };
        }
        let polled = sleep.as_mut().poll(cx);
        if polled.is_pending() {
            self.registered.given(cx);
        }
        polled
    }
}

/// `upstream.reply_timeout` on a connection many clients share (a lane, a cluster node's
/// shared connection): once it owes replies, Redis may stay silent for the timeout and no
/// longer. Silence counts from the later of when replies began to be owed and when reply
/// bytes last arrived. The alarm is set once per timeout, not once per reply: when it
/// rings early (replies came meanwhile) it is set again for what is left.
#[derive(Debug)]
pub(crate) struct SilenceAlarm {
    timeout: Option<Duration>,
    alarm: Alarm,
    /// When Redis last showed progress: replies began to be owed, or reply bytes arrived.
    progress: Instant,
    owing: bool,
}

impl SilenceAlarm {
    /// A watch for `timeout` (`None`: never times out).
    pub fn new(timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            alarm: Alarm::default(),
            progress: Instant::now(),
            owing: false,
        }
    }

    /// Say, before each wait, whether replies are owed now.
    pub fn owing(&mut self, owed: bool) {
        let Some(timeout) = self.timeout else {
            return;
        };
        if owed && !self.owing {
            self.progress = Instant::now();
        }
        self.owing = owed;
        if owed && self.alarm.deadline().is_none() {
            self.alarm.set(self.progress + timeout);
        }
    }

    /// Reply bytes arrived (call only once a read returned some).
    #[inline]
    pub fn replied(&mut self) {
        if self.timeout.is_some() {
            self.progress = Instant::now();
        }
    }

    /// Whether a wait should watch [`Self::poll_silent_too_long`]: replies are owed and a
    /// timeout is configured.
    #[inline]
    pub fn watching(&self) -> bool {
        self.owing && self.timeout.is_some()
    }

    /// Ready once Redis has been silent for the timeout while owing replies; otherwise the
    /// task of `cx` is woken when it may have been.
    pub fn poll_silent_too_long(&mut self, cx: &mut Context<'_>) -> Poll<Duration> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        loop {
            if self.alarm.poll_rung(cx).is_pending() {
                return Poll::Pending;
            }
            let due = self.progress + timeout;
            if Instant::now() >= due {
                self.alarm.clear();
                return Poll::Ready(timeout);
            }
            // Replies came since the alarm was set: ring again at what is left.
            self.alarm.set(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Waits on `alarm` as an event loop does: true once it rang within `within`.
    async fn rung_within(alarm: &mut Alarm, within: Duration) -> bool {
        tokio::time::timeout(within, std::future::poll_fn(|cx| alarm.poll_rung(cx)))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_polled_again_and_again_still_wakes_when_the_deadline_passes() {
        // One task throughout, as an event loop: the timer keeps its waker between waits.
        let task = tokio::spawn(async {
            let mut alarm = Alarm::default();
            alarm.set(Instant::now() + SECOND);
            for _ in 0..3 {
                assert!(!rung_within(&mut alarm, Duration::from_millis(300)).await);
            }
            // Nothing but the timer wakes this wait.
            std::future::poll_fn(|cx| alarm.poll_rung(cx)).await;
            // Set again: the old ring is not reported again, and the timer wakes the task
            // once more.
            alarm.set(Instant::now() + Duration::from_millis(800));
            assert!(!rung_within(&mut alarm, Duration::from_millis(700)).await);
            std::future::poll_fn(|cx| alarm.poll_rung(cx)).await;
        });
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the timer woke the waiting task each time")
            .expect("ran");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cleared_alarm_never_rings() {
        let mut alarm = Alarm::default();
        alarm.set(Instant::now() + SECOND);
        alarm.clear();
        assert!(!rung_within(&mut alarm, 3 * SECOND).await);
        alarm.set(Instant::now() + SECOND);
        assert!(rung_within(&mut alarm, 2 * SECOND).await);
    }

    /// Waits on `silence` as a shared connection's loop does: true once it timed out
    /// within `within`.
    async fn silent_within(silence: &mut SilenceAlarm, within: Duration) -> bool {
        tokio::time::timeout(
            within,
            std::future::poll_fn(|cx| silence.poll_silent_too_long(cx)),
        )
        .await
        .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn replies_that_keep_coming_hold_the_timeout_off_until_they_stop() {
        let mut silence = SilenceAlarm::new(Some(SECOND));
        silence.owing(true);
        assert!(silence.watching());
        for _ in 0..5 {
            assert!(!silent_within(&mut silence, Duration::from_millis(600)).await);
            silence.replied();
            silence.owing(true);
        }
        // Three seconds of replies every 600 ms; now silence for one second.
        let started = Instant::now();
        assert!(silent_within(&mut silence, 2 * SECOND).await);
        assert_eq!(Instant::now() - started, SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn owing_again_after_a_pause_counts_from_the_new_start() {
        let mut silence = SilenceAlarm::new(Some(SECOND));
        silence.owing(true);
        silence.replied();
        silence.owing(false);
        assert!(!silence.watching());
        // Idle long past the first alarm, then owing again: a full second from now.
        tokio::time::advance(5 * SECOND).await;
        silence.owing(true);
        let started = Instant::now();
        assert!(silent_within(&mut silence, 2 * SECOND).await);
        assert_eq!(Instant::now() - started, SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_nothing_is_watched() {
        let mut silence = SilenceAlarm::new(None);
        silence.owing(true);
        assert!(!silence.watching());
        assert!(!silent_within(&mut silence, 10 * SECOND).await);
    }
}
