//! Connections of their own for multiplexed clients that use connection state: a bounded
//! number in use at once (`upstream.pinned_connections`), and a few kept open for reuse
//! (`upstream.pinned_idle`) once their clients hand them back clean.
//!
//! A client that asks for one while all are in use waits up to `upstream.connect_timeout`,
//! then gets [`PinnedError::Exhausted`]: never an unbounded wait, never more connections
//! than the limit. A kept connection is checked before it is handed out again (Redis may
//! have closed it while it was idle) and dropped if it is not quiet and open.
//!
//! The bound itself is a [`PinnedLimit`], which a cluster's multiplexed routers share too:
//! there a client on connections of its own to the nodes holds one [`PinnedPermit`]
//! however many nodes it uses (`crate::cluster::sharing`).

use std::sync::Mutex;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, Gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::transport::Stream;
use crate::upstream::{ConnectGate, UpstreamError, UpstreamSlot};

/// Why no connection of its own could be had.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    /// Every connection the limit allows is held by another client.
    #[error("all {limit} connections for clients using connection state are in use (upstream.pinned_connections), waited {waited:?}; try again")]
    Exhausted {
        /// `upstream.pinned_connections`.
        limit: usize,
        /// How long the client waited.
        waited: Duration,
    },
    /// The gate refused or the connection failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// A connection held by one client, with its place under both limits; handed back with
/// [`PinnedConnections::give_back`] or dropped (closing it).
#[derive(Debug)]
pub(crate) struct PinnedConnection {
    /// The socket to Redis.
    pub stream: Stream,
    slot: UpstreamSlot,
    held: PinnedPermit,
}

/// A place under `upstream.pinned_connections`, counted in the in-use gauge
/// (`respguard_pinned_connections`) while held; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct PinnedPermit {
    _permit: OwnedSemaphorePermit,
    in_use: Gauge,
}

impl Drop for PinnedPermit {
    fn drop(&mut self) {
        self.in_use.decrement(1.0);
    }
}

/// The bound on clients holding connections of their own (`upstream.pinned_connections`):
/// a client past it waits up to `upstream.connect_timeout` for a place, then gets
/// [`PinnedError::Exhausted`]. Proxy-wide, shared by every thread's pool.
#[derive(Debug)]
pub(crate) struct PinnedLimit {
    permits: Arc<Semaphore>,
    limit: usize,
    wait: Duration,
}

impl PinnedLimit {
    /// At most `limit` places held at once; a client waits at most `wait` for one.
    pub(crate) fn new(limit: usize, wait: Duration) -> Self {
        PinnedLimit {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            wait,
        }
    }

    /// A place now, if one is free (no wait, nothing counted as waiting).
    pub(crate) fn try_take(&self) -> Option<PinnedPermit> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(Self::held(permit))
    }

    /// A place, waiting up to the limit's wait for one (counted in
    /// `respguard_pinned_waiting_clients`); past it, [`PinnedError::Exhausted`], counted in
    /// `respguard_pinned_connections_exhausted_total`.
    pub(crate) async fn take(&self) -> Result<PinnedPermit, PinnedError> {
        let started = tokio::time::Instant::now();
        let waiting = &gauges().waiting;
        waiting.increment(1.0);
        let acquired =
            tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_owned()).await;
        waiting.decrement(1.0);
        let permit = acquired
            .map_err(|_| {
                counter!("respguard_pinned_connections_exhausted_total").increment(1);
                PinnedError::Exhausted {
                    limit: self.limit,
                    waited: started.elapsed(),
                }
            })?
            .expect("the semaphore is never closed");
        Ok(Self::held(permit))
    }

    fn held(permit: OwnedSemaphorePermit) -> PinnedPermit {
        let in_use = gauges().in_use.clone();
        in_use.increment(1.0);
        PinnedPermit {
            _permit: permit,
            in_use,
        }
    }
}

/// A connection waiting, idle, for its next client.
#[derive(Debug)]
struct Idle {
    stream: Stream,
    slot: UpstreamSlot,
}

/// The pool, proxy-wide.
#[derive(Debug)]
pub struct PinnedConnections {
    gate: Arc<ConnectGate>,
    limit: PinnedLimit,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
}

/// The pool's gauges: connections in use, kept idle, and clients waiting for one.
struct Gauges {
    in_use: Gauge,
    idle: Gauge,
    waiting: Gauge,
}

/// The pool's gauges, registered once.
fn gauges() -> &'static Gauges {
    static GAUGES: OnceLock<Gauges> = OnceLock::new();
    GAUGES.get_or_init(|| Gauges {
        in_use: gauge!("respguard_pinned_connections"),
        idle: gauge!("respguard_pinned_idle_connections"),
        waiting: gauge!("respguard_pinned_waiting_clients"),
    })
}

/// Connections of their own kept open for reuse (`respguard_pinned_idle_connections`),
/// which a cluster's kept node connections count too ([`crate::cluster::idle`]).
pub(crate) fn idle_gauge() -> &'static Gauge {
    &gauges().idle
}

impl PinnedConnections {
    /// At most `limit` connections in use at once, through `gate`; a client waits at most
    /// `wait` for one; at most `max_idle` kept open for reuse.
    pub fn new(gate: Arc<ConnectGate>, limit: usize, wait: Duration, max_idle: usize) -> Self {
        PinnedConnections {
            gate,
            limit: PinnedLimit::new(limit, wait),
            idle: Mutex::new(Vec::new()),
            // More could never all be in use again at once.
            max_idle: max_idle.min(limit),
        }
    }

    /// A connection for one client: a kept one if one is still good, else a new one.
    pub(crate) async fn take(&self) -> Result<PinnedConnection, PinnedError> {
        let held = self.limit.take().await?;
        let (stream, slot) = match self.kept() {
            Some(idle) => (idle.stream, idle.slot),
            None => self.gate.connect().await?,
        };
        Ok(PinnedConnection { stream, slot, held })
    }

    /// Keep `connection` for the next client, if there is room; its client must have left
    /// it as a new connection is (no state, nothing owed, nothing unread).
    pub(crate) fn give_back(&self, connection: PinnedConnection) {
        let mut idle = self.idle.lock().expect("pinned pool lock");
        if idle.len() >= self.max_idle || !connection.stream.is_quiet_and_open() {
            return;
        }
        let PinnedConnection { stream, slot, held } = connection;
        drop(held);
        idle.push(Idle { stream, slot });
        gauges().idle.set(idle.len() as f64);
    }

    /// The most recently kept connection that is still quiet and open; the others found
    /// on the way are closed.
    fn kept(&self) -> Option<Idle> {
        let mut idle = self.idle.lock().expect("pinned pool lock");
        let found = std::iter::from_fn(|| idle.pop()).find(|c| c.stream.is_quiet_and_open());
        gauges().idle.set(idle.len() as f64);
        found
    }
}
