//! Multiplexing (`upstream.connections = "multiplexed"`): clients share a few Redis
//! connections instead of one each.
//!
//! A session starts on one of the [`SharedConnections`]' lanes (chosen in turn) and sends
//! its stateless commands there; a command that needs state on the connection
//! ([`crate::command::Pinning`]) moves it to a connection of its own from the
//! [`pinned`] pool, once its commands on the lane have been answered (so Redis runs them in
//! the order the client sent them). State that ends (a transaction, a blocking command, a
//! subscription) gives the connection back when it does, and the client returns to a
//! lane; state kept for the connection's life (SELECT, AUTH, HELLO, CLIENT ...) keeps it.
//! Redis therefore sees `shared_connections` connections plus one per client holding
//! connection state (at most `pinned_connections`), plus the few kept for reuse.
//!
//! [`router`] is the pure part (which reply bytes belong to which client), [`lane`] the
//! connection and its task, [`pinned`] the connections of their own. The session's side is
//! `session::shared`.

pub(crate) mod lane;
pub(crate) mod pinned;
pub(crate) mod router;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::upstream::ConnectGate;
use lane::{Lane, LaneLink, LaneSettings};
use pinned::PinnedConnections;

pub use lane::{SlowReader, UnreadLimit, LANE_NAME};

/// How multiplexing is set up, from `[upstream]` and `[proxy]`.
#[derive(Debug, Clone, Copy)]
pub struct MuxSettings {
    /// `upstream.shared_connections`: how many lanes.
    pub shared: usize,
    /// `upstream.pinned_connections`: most connections of their own in use at once.
    pub pinned: usize,
    /// `upstream.pinned_idle`: most connections of their own kept open for reuse.
    pub pinned_idle: usize,
    /// How long a client waits for a connection of its own (`upstream.connect_timeout`).
    pub pinned_wait: Duration,
    /// How many bytes of replies a client may leave unread on a lane (`proxy.output_buffer`
    /// and its hard limit and soft time).
    pub unread: UnreadLimit,
    /// `upstream.reply_timeout`: longest silence of a lane that owes replies.
    pub reply_timeout: Option<Duration>,
}

/// The lanes clients share and the connections of their own, proxy-wide.
#[derive(Debug)]
pub struct SharedConnections {
    lanes: Vec<Arc<Lane>>,
    next: AtomicUsize,
    pinned: PinnedConnections,
}

impl SharedConnections {
    /// The lanes and the pool as `settings` say, through `gate`, none connected until used.
    pub fn new(
        settings: MuxSettings,
        gate: Arc<ConnectGate>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let lane_settings = LaneSettings {
            reply_timeout: settings.reply_timeout,
            unread: settings.unread,
        };
        let lanes = (0..settings.shared.max(1))
            .map(|_| {
                Arc::new(Lane::new(
                    Arc::clone(&gate),
                    lane_settings,
                    shutdown.clone(),
                ))
            })
            .collect();
        let pinned = PinnedConnections::new(
            gate,
            settings.pinned,
            settings.pinned_wait,
            settings.pinned_idle,
        );
        SharedConnections {
            lanes,
            next: AtomicUsize::new(0),
            pinned,
        }
    }

    /// The connections of their own, for clients using connection state.
    pub(crate) fn pinned(&self) -> &PinnedConnections {
        &self.pinned
    }

    /// A place for a new session on the next lane in turn.
    pub(crate) fn attach(&self) -> LaneLink {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[i].attach()
    }
}
