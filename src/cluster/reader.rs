//! Asking one cluster node for the topology: a connection opened through the
//! [`ConnectGate`] (TCP, TLS and the proxy's AUTH, within the gate's connect timeout), then
//! `CLUSTER SHARDS`, or `CLUSTER SLOTS` when the node does not know that subcommand (Redis
//! before 7.0), read into a [`SlotMap`].
//!
//! Each reply must come within the gate's connect timeout and stay under
//! [`MAX_REPLY_BYTES`]. The connection is the reader's own and closed when it is done: it
//! never carries a client's command.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::topology::{SlotMap, TopologyError};
use crate::upstream::{host_of, read_replies_within, ConnectGate, UpstreamError};

/// The largest topology reply read: a `CLUSTER SLOTS` of 16,384 single-slot ranges, each
/// naming a primary and a few replicas, is a few megabytes.
pub const MAX_REPLY_BYTES: usize = 32 * 1024 * 1024;

/// Which reply a topology was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `CLUSTER SHARDS` (Redis 7.0 and later).
    Shards,
    /// `CLUSTER SLOTS` (every version; deprecated since 7.0).
    Slots,
}

impl Source {
    /// The subcommand of `CLUSTER` asked.
    fn subcommand(self) -> &'static [u8] {
        match self {
            Source::Shards => b"SHARDS",
            Source::Slots => b"SLOTS",
        }
    }
}

/// Why a node's topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    #[error("cluster node {node}: CLUSTER {subcommand}: {reason}")]
    Io {
        node: String,
        subcommand: &'static str,
        reason: std::io::Error,
    },
    #[error("cluster node {node}: no reply to CLUSTER {subcommand} within {timeout:?}")]
    Timeout {
        node: String,
        subcommand: &'static str,
        timeout: Duration,
    },
    #[error("cluster node {node} refused CLUSTER {subcommand}: {message}")]
    Refused {
        node: String,
        subcommand: &'static str,
        message: String,
    },
    #[error("cluster node {node}: {error}")]
    Topology { node: String, error: TopologyError },
}

/// The topology as `node` (`host:port`) sees it: from `CLUSTER SHARDS`, or from `CLUSTER
/// SLOTS` when the node does not know `SHARDS`. Says which reply it came from.
pub async fn read_topology(gate: &ConnectGate, node: &str) -> Result<(SlotMap, Source), ReadError> {
    let mut conn = NodeConn::open(gate, node).await?;
    match conn.read(Source::Shards).await {
        Err(ReadError::Refused { message, .. }) if is_unknown_subcommand(&message) => {
            Ok((conn.read(Source::Slots).await?, Source::Slots))
        }
        read => Ok((read?, Source::Shards)),
    }
}

/// The topology as `node` sees it, read from the reply `source` names.
pub async fn read_topology_from(
    gate: &ConnectGate,
    node: &str,
    source: Source,
) -> Result<SlotMap, ReadError> {
    NodeConn::open(gate, node).await?.read(source).await
}

/// Whether an error reply says the subcommand does not exist: Redis 7's `ERR unknown
/// subcommand 'shards'. Try CLUSTER HELP.` and 6.2's `ERR Unknown subcommand or wrong
/// number of arguments for 'SHARDS'. Try CLUSTER HELP.`
pub fn is_unknown_subcommand(message: &str) -> bool {
    message
        .to_ascii_lowercase()
        .starts_with("err unknown subcommand")
}

/// The reader's own connection to one node.
struct NodeConn<'g, S> {
    gate: &'g ConnectGate,
    node: &'g str,
    stream: S,
}

impl<'g> NodeConn<'g, ()> {
    async fn open(
        gate: &'g ConnectGate,
        node: &'g str,
    ) -> Result<NodeConn<'g, impl AsyncRead + AsyncWrite + Unpin>, ReadError> {
        let stream = gate.open_node(node).await?;
        Ok(NodeConn { gate, node, stream })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> NodeConn<'_, S> {
    /// Ask `CLUSTER <source>` and read the map from its reply.
    async fn read(&mut self, source: Source) -> Result<SlotMap, ReadError> {
        let subcommand = std::str::from_utf8(source.subcommand()).unwrap_or_default();
        let reply = self.ask(source, subcommand).await?;
        let map = match source {
            Source::Shards => SlotMap::from_shards_reply(&reply, self.gate.uses_tls()),
            Source::Slots => SlotMap::from_slots_reply(&reply, host_of(self.node)),
        };
        map.map_err(|error| ReadError::Topology {
            node: self.node.to_string(),
            error,
        })
    }

    /// Send `CLUSTER <source>` and read its reply's bytes, within the gate's timeout.
    async fn ask(
        &mut self,
        source: Source,
        subcommand: &'static str,
    ) -> Result<Vec<u8>, ReadError> {
        let timeout = self.gate.connect_timeout();
        let io = |reason| ReadError::Io {
            node: self.node.to_string(),
            subcommand,
            reason,
        };
        let mut out = BytesMut::new();
        crate::resp::command(&mut out, &[b"CLUSTER", source.subcommand()]);
        let exchange = async {
            self.stream.write_all(&out).await?;
            read_replies_within(&mut self.stream, 1, MAX_REPLY_BYTES).await
        };
        let replies = match tokio::time::timeout(timeout, exchange).await {
            Ok(replies) => replies.map_err(io)?,
            Err(_) => {
                return Err(ReadError::Timeout {
                    node: self.node.to_string(),
                    subcommand,
                    timeout,
                })
            }
        };
        match replies.into_iter().next() {
            Some(Ok(bytes)) => Ok(bytes),
            Some(Err(message)) => Err(ReadError::Refused {
                node: self.node.to_string(),
                subcommand,
                message,
            }),
            None => Err(io(std::io::ErrorKind::UnexpectedEof.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_wordings_of_an_unknown_subcommand_are_recognised() {
        assert!(is_unknown_subcommand(
            "ERR unknown subcommand 'shards'. Try CLUSTER HELP."
        ));
        assert!(is_unknown_subcommand(
            "ERR Unknown subcommand or wrong number of arguments for 'SHARDS'. Try CLUSTER HELP."
        ));
        assert!(!is_unknown_subcommand(
            "ERR This instance has cluster support disabled"
        ));
        assert!(!is_unknown_subcommand(
            "NOPERM this user has no permissions"
        ));
    }
}
