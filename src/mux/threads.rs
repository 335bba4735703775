//! Shared connections per serving thread.
//!
//! Under `proxy.runtime = "per-core"` each serving thread runs its own single-threaded
//! runtime and keeps the clients it accepted; giving each thread its own lanes keeps a
//! command, its lane's task and its reply on one thread (no wake-up of another thread per
//! command, no lock contended by the other thread's sessions). Under `multi-thread` tasks
//! move between the threads of one work-stealing runtime, so one set of lanes serves every
//! client. The connections of their own (`pinned_connections`) stay one pool proxy-wide in
//! both: their limit is the proxy's.

use std::cell::Cell;
use std::sync::Arc;

use tokio::sync::watch;

use super::pinned::PinnedConnections;
use super::{MuxSettings, SharedConnections};
use crate::upstream::ConnectGate;

thread_local! {
    /// The serving thread this is (`per-core`), set by [`serve_on_thread`].
    static SERVING_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// Mark the calling thread as serving thread `index` (of a `per-core` runtime): the
/// sessions it creates use that thread's lanes.
pub fn serve_on_thread(index: usize) {
    SERVING_THREAD.with(|t| t.set(index));
}

/// The lanes of each serving thread, sharing one pool of connections of their own.
#[derive(Debug)]
pub struct LanesPerThread {
    threads: Vec<Arc<SharedConnections>>,
}

impl LanesPerThread {
    /// `threads` sets of lanes (1 under `multi-thread`) as `settings` say, through
    /// `gate`, none connected until used.
    pub fn new(
        settings: MuxSettings,
        gate: Arc<ConnectGate>,
        shutdown: watch::Receiver<bool>,
        threads: usize,
    ) -> Self {
        let pinned = Arc::new(PinnedConnections::new(
            Arc::clone(&gate),
            settings.pinned,
            settings.pinned_wait,
            settings.pinned_idle,
        ));
        let threads = (0..threads.max(1))
            .map(|_| {
                let lanes = SharedConnections::new(
                    settings,
                    Arc::clone(&gate),
                    shutdown.clone(),
                    Arc::clone(&pinned),
                );
                Arc::new(lanes)
            })
            .collect();
        LanesPerThread { threads }
    }

    /// The lanes of the calling serving thread (the only set under `multi-thread`).
    pub fn here(&self) -> Arc<SharedConnections> {
        let index = SERVING_THREAD.with(Cell::get) % self.threads.len();
        Arc::clone(&self.threads[index])
    }

    /// How many sets of lanes there are: one per serving thread.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mux::UnreadLimit;

    #[test]
    fn each_serving_thread_gets_its_own_lanes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in_runtime = rt.enter();
        let gate = Arc::new(ConnectGate::unreachable());
        let (_tx, shutdown) = watch::channel(false);
        let settings = MuxSettings {
            shared: 2,
            identities: 4,
            pinned: 8,
            pinned_idle: 2,
            pinned_wait: Duration::from_secs(1),
            unread: UnreadLimit {
                soft: 1 << 20,
                hard: 1 << 20,
                soft_time: Duration::from_secs(1),
            },
            reply_timeout: None,
        };
        let lanes = Arc::new(LanesPerThread::new(settings, gate, shutdown, 2));
        let of_thread = |index| {
            let lanes = Arc::clone(&lanes);
            std::thread::spawn(move || {
                serve_on_thread(index);
                lanes.here()
            })
            .join()
            .unwrap()
        };
        let (first, second) = (of_thread(0), of_thread(1));
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&first, &of_thread(0)));
        assert!(Arc::ptr_eq(first.pinned(), second.pinned()));
    }
}
