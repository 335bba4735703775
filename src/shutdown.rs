//! The proxy's shutdown, as client sessions wait for it.
//!
//! A session's event loop waits on its sockets and on shutdown at once, and goes back to
//! waiting about twice per unpipelined command. A `watch` channel's `changed()` future,
//! polled at each of those waits, re-registers its waker under a lock every session shares
//! (tokio's `Notified`), about 270 instructions per command and a lock both serving
//! threads take ("Shutdown wait" in `docs/benchmarks.md`). Here a session registers once
//! ([`ShutdownSignal::subscribe`]) and gives its own [`AtomicWaker`] its task's waker once;
//! each later wait of the same task costs an atomic load, and [`ShutdownSignal::ring`]
//! wakes every subscriber.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use slab::Slab;

use crate::wakeup::GivenWaker;

/// Rung once when the proxy starts shutting down; every subscribed session is woken.
#[derive(Debug, Default)]
pub struct ShutdownSignal {
    rung: AtomicBool,
    /// Each subscriber's waker, by its key. Locked when a session starts or ends and by
    /// [`ShutdownSignal::ring`], never by a wait.
    waiting: Mutex<Slab<Arc<AtomicWaker>>>,
}

impl ShutdownSignal {
    /// A signal not rung yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Shutdown began: every subscriber's wait ends, now and from now on. Rung again, it
    /// changes nothing.
    pub fn ring(&self) {
        self.rung.store(true, Ordering::SeqCst);
        for (_, waker) in self.waiting.lock().expect("shutdown lock").iter() {
            waker.wake();
        }
    }

    /// Whether [`ShutdownSignal::ring`] was called.
    pub fn is_rung(&self) -> bool {
        self.rung.load(Ordering::SeqCst)
    }

    /// A session's way to wait for the signal; it unsubscribes when dropped.
    pub fn subscribe(self: &Arc<Self>) -> ShutdownWait {
        let waker = Arc::new(AtomicWaker::new());
        let key = self
            .waiting
            .lock()
            .expect("shutdown lock")
            .insert(Arc::clone(&waker));
        ShutdownWait {
            signal: Arc::clone(self),
            waker,
            key,
            registered: GivenWaker::default(),
        }
    }

    /// How many sessions are subscribed (for tests: none is left behind).
    #[cfg(test)]
    fn subscribers(&self) -> usize {
        self.waiting.lock().expect("shutdown lock").len()
    }
}

/// One session's subscription to a [`ShutdownSignal`].
#[derive(Debug)]
pub struct ShutdownWait {
    signal: Arc<ShutdownSignal>,
    waker: Arc<AtomicWaker>,
    key: usize,
    /// The waker last registered. Only the ring takes it out, and the ring is for good, so
    /// while the same task waits again the registration stands and a wait is one load.
    registered: GivenWaker,
}

impl ShutdownWait {
    /// Ready once the signal is rung; otherwise the task of `cx` is woken when it is.
    pub fn poll_rung(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_rung() {
            return Poll::Ready(());
        }
        if self.registered.holds(cx) {
            return Poll::Pending;
        }
        self.waker.register(cx.waker());
        self.registered.given(cx);
        // A ring between the first check and the registration woke nobody: look again.
        if self.signal.is_rung() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Completes once the signal is rung.
    pub async fn rung(&mut self) {
        std::future::poll_fn(|cx| self.poll_rung(cx)).await
    }
}

impl Drop for ShutdownWait {
    fn drop(&mut self) {
        self.signal
            .waiting
            .lock()
            .expect("shutdown lock")
            .remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_ring_wakes_every_waiting_subscriber_and_later_ones_see_it_at_once() {
        let signal = Arc::new(ShutdownSignal::new());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let mut wait = signal.subscribe();
                tokio::spawn(async move { wait.rung().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        signal.ring();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken by the ring")
                .expect("ran");
        }
        let mut late = signal.subscribe();
        tokio::time::timeout(Duration::from_millis(100), late.rung())
            .await
            .expect("a subscriber after the ring sees it at once");
    }

    #[test]
    fn a_wait_polled_many_times_stays_one_subscription_and_leaves_none_behind() {
        let signal = Arc::new(ShutdownSignal::new());
        let mut wait = signal.subscribe();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..100 {
            assert!(wait.poll_rung(&mut cx).is_pending(), "not rung yet");
        }
        assert_eq!(signal.subscribers(), 1);
        signal.ring();
        assert!(wait.poll_rung(&mut cx).is_ready());
        drop(wait);
        assert_eq!(signal.subscribers(), 0);
    }

    #[tokio::test]
    async fn a_wait_polled_again_and_again_by_one_task_is_still_woken_by_the_ring() {
        let signal = Arc::new(ShutdownSignal::new());
        let mut wait = signal.subscribe();
        let (polled_tx, mut polled_rx) = tokio::sync::mpsc::unbounded_channel();
        let session = tokio::spawn(async move {
            // Waits as a session does: the same task polls again and again, woken by other
            // events (here, by itself) in between.
            for _ in 0..50 {
                let pending = std::future::poll_fn(|cx| {
                    let pending = wait.poll_rung(cx).is_pending();
                    cx.waker().wake_by_ref();
                    Poll::Ready(pending)
                })
                .await;
                assert!(pending, "not rung yet");
                tokio::task::yield_now().await;
            }
            polled_tx.send(()).expect("test waits");
            wait.rung().await;
        });
        polled_rx.recv().await.expect("polled");
        tokio::task::yield_now().await;
        assert!(!session.is_finished(), "waits for the ring");
        signal.ring();
        tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .expect("the ring woke the task")
            .expect("ran");
    }
}
