//! The session's side of Redis: whether it holds a connection, and which.
//!
//! Today a session holds at most one connection of its own ([`Upstream::Dedicated`]),
//! opened through the shared [`ConnectGate`], together with its [`UpstreamSlot`] (its place
//! under `upstream.max_connections`, given back when dropped). Without one
//! ([`Upstream::Missing`]: not opened yet, refused by the gate, or lost) the session
//! still serves the client, answering each command with the reason.
//!
//! The bytes going either way stay in the session's pipes, not here: they outlive a
//! connection (an AUTH waits in the request pipe for the connection it opens; the errors
//! for commands in flight go to the client after Redis has gone).
//!
//! Never reads or writes: the session's event loop does, through [`Upstream::stream`].

use crate::identity::ClientIdentity;
use crate::transport::Stream;
use crate::upstream::{ConnectGate, UpstreamSlot};

/// An open connection to Redis and its slot.
#[derive(Debug)]
pub(crate) struct UpstreamLink {
    stream: Stream,
    /// Held for as long as the connection is: dropping it frees the slot.
    _slot: UpstreamSlot,
}

/// The session's connection to Redis, if any.
#[derive(Debug)]
pub(crate) enum Upstream {
    /// No connection: `error` is the reply each command gets meanwhile (empty before the
    /// first attempt, and after a connection was lost).
    Missing {
        /// Why there is none, as a Redis error line without its `-`.
        error: String,
    },
    /// A connection the session alone uses.
    Dedicated(UpstreamLink),
}

impl Upstream {
    /// No connection yet.
    pub fn none() -> Self {
        Upstream::Missing {
            error: String::new(),
        }
    }

    /// Open a connection through `gate`; on failure, remember why.
    pub async fn connect(gate: &ConnectGate, client: &ClientIdentity) -> Self {
        match gate.connect().await {
            Ok((stream, slot)) => Upstream::Dedicated(UpstreamLink {
                stream,
                _slot: slot,
            }),
            Err(e) => {
                tracing::debug!(%client, error = %e, "no upstream connection");
                Upstream::Missing {
                    error: format!("ERR respguard: {e}"),
                }
            }
        }
    }

    /// Whether a connection is open.
    #[inline]
    pub fn is_connected(&self) -> bool {
        matches!(self, Upstream::Dedicated(_))
    }

    /// The open connection's socket.
    #[inline]
    pub fn stream(&self) -> Option<&Stream> {
        match self {
            Upstream::Dedicated(link) => Some(&link.stream),
            Upstream::Missing { .. } => None,
        }
    }

    /// The open connection's socket, to read and write.
    #[inline]
    pub fn stream_mut(&mut self) -> Option<&mut Stream> {
        match self {
            Upstream::Dedicated(link) => Some(&mut link.stream),
            Upstream::Missing { .. } => None,
        }
    }

    /// Why there is no connection (empty while there is one).
    pub fn error(&self) -> &str {
        match self {
            Upstream::Missing { error } => error,
            Upstream::Dedicated(_) => "",
        }
    }
}
