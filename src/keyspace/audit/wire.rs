//! The audit's connection to Redis: one pipelined batch out, its replies back, decoded.
//!
//! The connection is opened through [`ConnectGate`], the proxy's own way to Redis, so a
//! `rediss://` URL, its user, password and database work exactly as they do for the
//! proxy. Every command the audit can send is listed in [`READ_ONLY`]; [`Batch::push`]
//! refuses any other, so nothing that writes can reach Redis from here.

use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;

use crate::config::{UpstreamTarget, UpstreamTls};
use crate::scanner::tree::{self, Bounds};
use crate::transport::Stream;
use crate::upstream::{read_replies, ConnectGate, GateSettings, UpstreamSlot};

use super::error::AuditError;

/// The commands the audit sends (besides the connection's own AUTH and SELECT): all
/// read-only, none that scans the whole keyspace at once.
pub const READ_ONLY: &[&str] = &["SCAN", "TYPE", "PTTL", "MEMORY", "DBSIZE"];

/// Commands to send in one round trip.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: BytesMut,
    commands: usize,
}

impl Batch {
    /// Add a command. Panics on a command not in [`READ_ONLY`]: the audit never writes.
    pub fn push(&mut self, args: &[&[u8]]) {
        assert!(
            READ_ONLY
                .iter()
                .any(|c| c.as_bytes().eq_ignore_ascii_case(args[0])),
            "the audit sends read-only commands only"
        );
        crate::resp::command(&mut self.bytes, args);
        self.commands += 1;
    }

    /// Commands in the batch.
    pub fn len(&self) -> usize {
        self.commands
    }

    /// True when the batch holds no command.
    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }

    /// Empty the batch, keeping its buffer.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.commands = 0;
    }
}

/// A decoded reply: the value, or Redis's error text.
pub type Reply = Result<OwnedFrame, String>;

/// An open connection to the audited Redis.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    _slot: UpstreamSlot,
    address: String,
}

impl Connection {
    /// Connect (TLS, AUTH and SELECT as the URL says) within `timeout`.
    pub async fn open(
        target: &UpstreamTarget,
        tls: Option<UpstreamTls>,
        timeout: Duration,
    ) -> Result<Self, AuditError> {
        let gate = ConnectGate::new(
            target.clone(),
            GateSettings {
                connect_timeout: timeout,
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(1),
                max_connects_per_second: 1,
                max_connections: 1,
                tls,
            },
        );
        let (stream, slot) = gate.connect().await?;
        Ok(Connection {
            stream,
            _slot: slot,
            address: target.address.clone(),
        })
    }

    /// Send the batch and read one reply per command.
    pub async fn round_trip(&mut self, batch: &Batch) -> Result<Vec<Reply>, AuditError> {
        let lost = |e: std::io::Error| AuditError::Connection {
            address: self.address.clone(),
            reason: e.to_string(),
        };
        self.stream.write_all(&batch.bytes).await.map_err(lost)?;
        self.stream.flush().await.map_err(lost)?;
        let replies = read_replies(&mut self.stream, batch.len())
            .await
            .map_err(lost)?;
        replies
            .into_iter()
            .map(|r| match r {
                Err(text) => Ok(Err(text)),
                Ok(bytes) => decode(&bytes).map(Ok),
            })
            .collect()
    }
}

fn decode(bytes: &[u8]) -> Result<OwnedFrame, AuditError> {
    match tree::decode(bytes, &Bounds::SERVER_REPLY) {
        Ok(Some((frame, _))) => Ok(frame),
        Ok(None) => Err(AuditError::Reply("an incomplete reply".into())),
        Err(e) => Err(AuditError::Reply(e.to_string())),
    }
}

/// The integer of a reply, if it is one.
pub fn integer(reply: &Reply) -> Option<i64> {
    match reply {
        Ok(OwnedFrame::Integer(n)) => Some(*n),
        _ => None,
    }
}

/// The bytes of a simple or bulk string reply.
pub fn text(reply: &Reply) -> Option<&[u8]> {
    match reply {
        Ok(OwnedFrame::SimpleString(s)) | Ok(OwnedFrame::BulkString(s)) => Some(s),
        _ => None,
    }
}

/// A SCAN reply: the next cursor and the keys.
pub fn scan_page(reply: Reply) -> Result<(Vec<u8>, Vec<Vec<u8>>), AuditError> {
    let shape = || AuditError::Reply("SCAN answered something other than [cursor, keys]".into());
    let mut parts = match reply {
        Err(text) => return Err(AuditError::Refused(format!("SCAN: {text}"))),
        Ok(OwnedFrame::Array(parts)) if parts.len() == 2 => parts,
        Ok(_) => return Err(shape()),
    };
    let keys = match parts.pop() {
        Some(OwnedFrame::Array(keys)) => keys
            .into_iter()
            .map(|k| match k {
                OwnedFrame::BulkString(k) => Ok(k),
                _ => Err(shape()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(shape()),
    };
    match parts.pop() {
        Some(OwnedFrame::BulkString(cursor)) => Ok((cursor, keys)),
        _ => Err(shape()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "read-only")]
    fn a_writing_command_cannot_be_batched() {
        Batch::default().push(&[b"DEL", b"k"]);
    }

    #[test]
    fn read_only_commands_are_encoded() {
        let mut b = Batch::default();
        b.push(&[b"SCAN", b"0", b"COUNT", b"10"]);
        b.push(&[b"memory", b"USAGE", b"k"]);
        assert_eq!(b.len(), 2);
        assert!(b.bytes.starts_with(b"*4\r\n$4\r\nSCAN\r\n"));
    }

    #[test]
    fn scan_pages_decode() {
        let frame = decode(b"*2\r\n$2\r\n17\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n").unwrap();
        let (cursor, keys) = scan_page(Ok(frame)).unwrap();
        assert_eq!(cursor, b"17");
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
        assert!(scan_page(Err("NOPERM".into())).is_err());
    }
}
