//! Multiplexing (`upstream.connections = "multiplexed"`): clients share a few Redis
//! connections instead of one each.
//!
//! A session starts on one of the [`SharedConnections`]' lanes (chosen in turn) and sends
//! its stateless commands there; the first command that needs state on the connection
//! (a transaction, a blocking command, a subscription, SELECT, AUTH, HELLO, CLIENT ...,
//! [`crate::command::Pinning`]) moves it to a connection of its own for the rest of its
//! life, once its commands on the lane have been answered (so Redis runs them in the order
//! the client sent them). Redis therefore sees `shared_connections` connections plus one
//! per client that used connection state, whatever the number of clients.
//!
//! [`router`] is the pure part (which reply bytes belong to which client), [`lane`] the
//! connection and its task. The session's side is `session::shared`.

pub(crate) mod lane;
pub(crate) mod router;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::upstream::ConnectGate;
use lane::{Lane, LaneLink, LaneSettings};

pub use lane::LANE_NAME;

/// The lanes clients share, proxy-wide.
#[derive(Debug)]
pub struct SharedConnections {
    lanes: Vec<Arc<Lane>>,
    next: AtomicUsize,
}

impl SharedConnections {
    /// `count` lanes through `gate`, none connected until used. A slot holds at most
    /// `max_unread` bytes of replies its client has not taken; `reply_timeout` bounds a
    /// lane's silence while it owes replies.
    pub fn new(
        count: usize,
        gate: Arc<ConnectGate>,
        max_unread: usize,
        reply_timeout: Option<std::time::Duration>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let settings = LaneSettings {
            reply_timeout,
            max_unread,
        };
        let lanes = (0..count.max(1))
            .map(|_| Arc::new(Lane::new(Arc::clone(&gate), settings, shutdown.clone())))
            .collect();
        SharedConnections {
            lanes,
            next: AtomicUsize::new(0),
        }
    }

    /// A place for a new session on the next lane in turn.
    pub(crate) fn attach(&self) -> LaneLink {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[i].attach()
    }
}
