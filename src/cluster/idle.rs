//! Connections of clients' own to cluster nodes, kept open for the next client that needs
//! one (`upstream.pinned_idle`, multiplexed only), as a single Redis's multiplexing keeps
//! its pinned connections ([`crate::mux::pinned`]).
//!
//! A client on connections of its own (a transaction, a blocking command, a subscription)
//! hands each back when it returns to the shared connections, if the connection is as a
//! new one would be for its node and identity (ACL user and protocol): nothing owed,
//! nothing unread, no name, library or READONLY given ([`super::router::Router`] decides,
//! [`super::node`] hands the socket over once its task has read everything). A kept
//! connection is checked again before reuse (the node may have closed it meanwhile); one
//! found closed is dropped. At most `pinned_idle` are kept over all nodes: past that, a
//! connection handed back closes.

use std::sync::Mutex;

use crate::mux::pinned::idle_gauge;
use crate::mux::LaneIdentity;
use crate::transport::Stream;

/// The kept connections, proxy-wide (one per [`super::shared::SharedNodes`]).
#[derive(Debug)]
pub struct IdleNodeConnections {
    kept: Mutex<Vec<Kept>>,
    max: usize,
}

/// One idle connection, with what it is: its node and identity.
#[derive(Debug)]
struct Kept {
    address: String,
    identity: LaneIdentity,
    stream: Stream,
}

impl IdleNodeConnections {
    /// At most `max` connections kept.
    pub fn new(max: usize) -> Self {
        IdleNodeConnections {
            kept: Mutex::new(Vec::new()),
            max,
        }
    }

    /// The most recently kept connection to `address` with `identity` that is still quiet
    /// and open; closed ones found on the way are dropped.
    pub fn take(&self, address: &str, identity: &LaneIdentity) -> Option<Stream> {
        let mut kept = self.kept.lock().expect("idle node connections lock");
        kept.retain(|k| k.stream.is_quiet_and_open());
        let found = kept
            .iter()
            .rposition(|k| k.address == address && k.identity == *identity)
            .map(|at| kept.remove(at).stream);
        idle_gauge().set(kept.len() as f64);
        found
    }

    /// Keep `stream` (to `address`, with `identity`, as a new connection would be) for
    /// the next client, if there is room and it is quiet and open; else it closes.
    pub fn give_back(&self, address: String, identity: LaneIdentity, stream: Stream) {
        let mut kept = self.kept.lock().expect("idle node connections lock");
        if kept.len() >= self.max || !stream.is_quiet_and_open() {
            return;
        }
        kept.push(Kept {
            address,
            identity,
            stream,
        });
        idle_gauge().set(kept.len() as f64);
    }

    /// How many are kept now.
    pub fn len(&self) -> usize {
        self.kept.lock().expect("idle node connections lock").len()
    }

    /// True when none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the proxy's end as a [`Stream`], and the peer's end.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(address), listener.accept());
        (Stream::Tcp(ours.unwrap()), theirs.unwrap().0)
    }

    fn identity(protocol: u8) -> LaneIdentity {
        LaneIdentity {
            user: None,
            db: 0,
            protocol,
        }
    }

    /// A connection is reused only for its node and identity, at most `max` are kept, and
    /// one the node sent something on, or closed, is never kept.
    #[tokio::test]
    async fn kept_connections_go_only_to_their_node_and_identity_while_quiet() {
        let pool = IdleNodeConnections::new(2);
        let (a, _peer_a) = pair().await;
        let (b, _peer_b) = pair().await;
        let (c, _peer_c) = pair().await;
        pool.give_back("n1:1".into(), identity(2), a);
        pool.give_back("n1:1".into(), identity(3), b);
        pool.give_back("n2:1".into(), identity(2), c);
        assert_eq!(pool.len(), 2, "past max, a connection handed back closes");
        assert!(pool.take("n2:1", &identity(2)).is_none());
        assert!(pool.take("n1:1", &identity(2)).is_some());
        assert!(pool.take("n1:1", &identity(2)).is_none(), "taken once");
        assert!(pool.take("n1:1", &identity(3)).is_some());

        let (late, mut peer) = pair().await;
        peer.write_all(b"+late\r\n").await.unwrap();
        readable(&late).await;
        pool.give_back("n1:1".into(), identity(2), late);
        let (closed, peer) = pair().await;
        drop(peer);
        readable(&closed).await;
        pool.give_back("n1:1".into(), identity(2), closed);
        assert!(pool.is_empty(), "unread bytes or a closed peer: not kept");
    }

    /// Wait until the peer's bytes (or its close) reached `stream`.
    async fn readable(stream: &Stream) {
        let Stream::Tcp(tcp) = stream else {
            unreachable!("a TCP pair")
        };
        tcp.readable().await.unwrap();
    }
}
