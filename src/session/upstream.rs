//! The session's side of Redis: whether it holds a connection, and which.
//!
//! A session holds a connection of its own ([`Upstream::Dedicated`]), opened through the
//! shared [`ConnectGate`], together with its [`UpstreamSlot`] (its place under
//! `upstream.max_connections`, given back when dropped), or, under multiplexing, a place on
//! a shared connection ([`Upstream::Shared`], a [`LaneLink`]) or, while it holds connection
//! state, a connection from the pinned pool ([`Upstream::Pinned`]). Without any
//! ([`Upstream::Missing`]: not opened yet, refused by the gate, or lost) the session still
//! serves the client, answering each command with the reason.
//!
//! The bytes going either way stay in the session's pipes, not here: they outlive a
//! connection (an AUTH waits in the request pipe for the connection it opens; the errors
//! for commands in flight go to the client after Redis has gone).
//!
//! Never reads or writes: the session's event loop does, through [`Upstream::stream`].

use crate::cluster::ClusterUpstream;
use crate::identity::ClientIdentity;
use crate::mux::identity::{give_identity, IdentityFailure};
use crate::mux::lane::LaneLink;
use crate::mux::pinned::PinnedConnection;
use crate::mux::{LaneIdentity, SharedConnections};
use crate::transport::Stream;
use crate::upstream::{ConnectGate, UpstreamError, UpstreamSlot};
use bytes::Bytes;

/// A move to another identity's lane in flight (`session::switch`): the SELECT or HELLO
/// was (or is about to be) sent on the new lane, and the old one is kept until Redis
/// answers.
#[derive(Debug)]
pub(super) struct LaneSwitch {
    /// The lane the client came from, and its identity.
    pub previous: LaneLink,
    pub previous_identity: LaneIdentity,
    /// The identity asked for.
    pub target: LaneIdentity,
    /// The command went to Redis (a guard or a lane that is down may answer it instead).
    pub sent: bool,
}

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
    /// A place on a connection shared with other sessions (multiplexing).
    Shared(LaneLink),
    /// Under multiplexing, a connection of its own from the pinned pool, while the client
    /// holds connection state.
    Pinned(PinnedConnection),
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
        Self::opened(gate.connect().await, client)
    }

    /// Open a way into a Redis Cluster through `cluster` (a router for this client, which
    /// reached the proxy at `proxy`); on failure, remember why.
    pub fn connect_cluster(
        cluster: &ClusterUpstream,
        proxy: std::net::SocketAddr,
        client: &ClientIdentity,
    ) -> Self {
        Self::opened(cluster.connect(proxy), client)
    }

    /// A connection of its own, or why there is none.
    fn opened(
        result: Result<(Stream, UpstreamSlot), UpstreamError>,
        client: &ClientIdentity,
    ) -> Self {
        match result {
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

    /// Take a connection from the pinned pool of `lanes` and give it the client's identity
    /// (`handshake`, from [`LaneIdentity::handshake_from`], every reply checked); on failure
    /// (all in use, the gate's refusal, Redis refusing the identity), remember why: a
    /// connection Redis refused is closed, never used as the URL's user.
    pub async fn pinned(
        lanes: &SharedConnections,
        client: &ClientIdentity,
        handshake: &(Bytes, u32),
    ) -> Self {
        let failure = match lanes.pinned().take().await {
            Ok(mut connection) => {
                let timeout = lanes.handshake_timeout();
                match give_identity(&mut connection.stream, handshake, timeout).await {
                    Ok(()) => return Upstream::Pinned(connection),
                    Err(IdentityFailure::Refused(reply)) => {
                        String::from_utf8_lossy(&reply[1..]).trim_end().to_string()
                    }
                    Err(IdentityFailure::Lost(reason)) => format!(
                        "ERR respguard: upstream {} connection lost before the reply ({reason})",
                        lanes.address()
                    ),
                }
            }
            Err(e) => format!("ERR respguard: {e}"),
        };
        tracing::info!(%client, error = %failure, "no connection of its own for the client");
        Upstream::Missing { error: failure }
    }

    /// Whether commands can go to Redis: a connection of its own, or a shared one.
    #[inline]
    pub fn is_connected(&self) -> bool {
        match self {
            Upstream::Dedicated(_) | Upstream::Pinned(_) => true,
            Upstream::Shared(link) => link.is_up(),
            Upstream::Missing { .. } => false,
        }
    }

    /// The socket of a connection of its own.
    #[inline]
    pub fn stream(&self) -> Option<&Stream> {
        match self {
            Upstream::Dedicated(link) => Some(&link.stream),
            Upstream::Pinned(connection) => Some(&connection.stream),
            Upstream::Missing { .. } | Upstream::Shared(_) => None,
        }
    }

    /// The socket of a connection of its own, to read and write, or the shared
    /// connection's link.
    #[inline]
    pub fn parts(&mut self) -> (Option<&mut Stream>, Option<&LaneLink>) {
        match self {
            Upstream::Dedicated(link) => (Some(&mut link.stream), None),
            Upstream::Pinned(connection) => (Some(&mut connection.stream), None),
            Upstream::Shared(link) => (None, Some(link)),
            Upstream::Missing { .. } => (None, None),
        }
    }

    /// The shared connection's link, when on one.
    #[inline]
    pub fn lane(&self) -> Option<&LaneLink> {
        match self {
            Upstream::Shared(link) => Some(link),
            _ => None,
        }
    }

    /// Why there is no connection (empty while there is one).
    pub fn error(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Upstream::Missing { error } => error.into(),
            Upstream::Shared(link) if !link.is_up() => link.down_error().into(),
            Upstream::Dedicated(_) | Upstream::Shared(_) | Upstream::Pinned(_) => "".into(),
        }
    }
}
