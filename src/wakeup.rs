//! A wake-up for one waiting task, cheap to wait on again and again.
//!
//! A multiplexed session waits for its lane's replies at about every other turn of its
//! event loop, and the lane task waits for submitted commands. tokio's `Notify` serves any
//! number of waiters: each wait links a node into a list under a lock and unlinks it when
//! the wait is dropped, and each `notify_one` takes that lock again, about 640 instructions
//! per unpipelined command and a lock the lane and the sessions of both threads share
//! ("Waits without a lock" in `docs/benchmarks.md`). Each of these waits has exactly one
//! waiter, so a [`WakeUp`] keeps a flag and that waiter's [`AtomicWaker`]: a wait costs a
//! load and, when it must sleep, an update of the waker; a notify, a store and a wake.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;

/// Notified from any thread, waited on by one task at a time.
///
/// A notify with nobody waiting is kept for the next wait (as `Notify::notify_one`'s
/// permit), and several notifies before a wait are one. A wait may end with nothing new
/// (a notify the waiter already acted on): the waiter looks at what it waits for and waits
/// again.
#[derive(Debug, Default)]
pub struct WakeUp {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl WakeUp {
    /// A wake-up with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// End the current or the next wait. Whatever the waiter should find must be in place
    /// (under its own lock, or stored) before this is called.
    pub fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once notified since the last wait ended; otherwise the task of `cx` is woken
    /// by the next [`WakeUp::notify`]. One task only may poll a given wake-up.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take_pending() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A notify between the first look and the registration woke nobody: look again.
        if self.take_pending() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Completes once notified (see [`WakeUp::poll_wait`]).
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_wait(cx))
    }

    /// Consume a pending notify. Loads first: a wait mostly finds none, and a load costs
    /// less than the swap.
    #[inline]
    fn take_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire) && self.pending.swap(false, Ordering::AcqRel)
    }
}

/// The waker a registration (a timer's, an [`AtomicWaker`]'s) holds while nothing has
/// taken it out: a later wait of the same task need not register again, which is most of
/// what such a wait costs. Its owner forgets it whenever the registration may have been
/// taken out or replaced.
#[derive(Debug, Default)]
pub(crate) struct GivenWaker(Option<Waker>);

impl GivenWaker {
    /// Whether the registration holds the waker of `cx`'s task.
    #[inline]
    pub fn holds(&self, cx: &Context<'_>) -> bool {
        self.0
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
    }

    /// The registration was just given `cx`'s waker.
    pub fn given(&mut self, cx: &Context<'_>) {
        self.0 = Some(cx.waker().clone());
    }

    /// The registration may no longer hold it.
    #[inline]
    pub fn forget(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_notify_before_the_wait_is_kept_and_several_are_one() {
        let wake = WakeUp::new();
        wake.notify();
        wake.notify();
        tokio::time::timeout(Duration::from_millis(100), wake.wait())
            .await
            .expect("the kept notify ends the wait at once");
        let waited = tokio::time::timeout(Duration::from_millis(50), wake.wait()).await;
        assert!(
            waited.is_err(),
            "two notifies before a wait end one wait only"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_task_is_woken_by_a_notify_from_another_thread() {
        let wake = Arc::new(WakeUp::new());
        for _ in 0..1000 {
            let waiter = {
                let wake = Arc::clone(&wake);
                tokio::spawn(async move { wake.wait().await })
            };
            let notifier = {
                let wake = Arc::clone(&wake);
                std::thread::spawn(move || wake.notify())
            };
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("woken, never left waiting")
                .expect("ran");
            notifier.join().expect("notified");
        }
    }
}
