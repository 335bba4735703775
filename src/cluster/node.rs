//! One router's connection to one cluster node, run by its own task: opened through the
//! gate (TCP, TLS, the URL's AUTH, within the connect timeout), given the client's ACL
//! user when multiplexing follows it ([`Handshake`], every reply checked: refused, each
//! command gets Redis's refusal as its reply and none is sent, so none runs as another
//! user), the router's commands written in the order sent, and each whole reply handed
//! back as it ends, tagged with the link that read it. A lost or unreachable connection is
//! one [`NodeEvent::Lost`], after which the task ends; the router opens a new link if it
//! needs the node again.
//!
//! Under multiplexing a link is a place on a shared connection instead
//! ([`super::shared`]), which tells its router the same events.
//!
//! Never decides anything about a command or a reply: the router does.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use super::event::NodeEvent;
use super::shared::SharedLink;
use crate::mux::identity::{give_identity, IdentityFailure};
use crate::scanner::reply::{ReplyKind, ReplyScanner, ReplyStep};
use crate::upstream::ConnectGate;

/// What a connection of a client's own is sent first, every reply checked (an `AUTH` as
/// the client's user, from [`crate::mux::LaneIdentity::handshake_from`]), and how long
/// it may take; none without multiplexing, where the client's own `AUTH` is replayed.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// The commands and their number of replies.
    pub commands: (Bytes, u32),
    /// `upstream.connect_timeout`.
    pub timeout: Duration,
}

/// Commands a link carries, with the number of replies each submission gets.
type Commands = mpsc::UnboundedReceiver<(Bytes, u32)>;

/// A connection to one node, as its router holds it: its own, or a place on a shared one
/// ([`super::shared`]). Dropping it ends its own connection, or leaves the shared one.
#[derive(Debug)]
pub struct NodeLink {
    /// The node's `host:port`.
    pub address: String,
    /// This link's number, unique within its router.
    pub id: u64,
    carrier: Carrier,
}

/// What carries a link's commands.
#[derive(Debug)]
enum Carrier {
    Own {
        commands: mpsc::UnboundedSender<(Bytes, u32)>,
        task: JoinHandle<()>,
    },
    Shared(SharedLink),
}

impl Drop for NodeLink {
    fn drop(&mut self) {
        if let Carrier::Own { task, .. } = &self.carrier {
            task.abort();
        }
    }
}

impl NodeLink {
    /// Start a link to `address`, given `handshake` once connected: it connects in the
    /// background; `send` may be called at once (commands wait for the connection).
    pub fn open(
        id: u64,
        address: String,
        gate: Arc<ConnectGate>,
        events: mpsc::Sender<NodeEvent>,
        handshake: Handshake,
    ) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(id, address.clone(), gate, rx, events, handshake));
        NodeLink {
            address,
            id,
            carrier: Carrier::Own { commands, task },
        }
    }

    /// A link on a shared connection to `address` (see [`super::shared::SharedNodes::attach`]).
    pub fn shared(id: u64, address: String, link: SharedLink) -> Self {
        NodeLink {
            address,
            id,
            carrier: Carrier::Shared(link),
        }
    }

    /// Whether the link is a place on a shared connection.
    pub fn is_shared(&self) -> bool {
        matches!(self.carrier, Carrier::Shared(_))
    }

    /// Queue `command` (whole commands, written together, in order) that get `replies`
    /// replies; false when the link has ended.
    pub fn send(&self, command: Bytes, replies: u32) -> bool {
        match &self.carrier {
            Carrier::Own { commands, .. } => commands.send((command, replies)).is_ok(),
            Carrier::Shared(link) => link.send(command, replies),
        }
    }
}

async fn run(
    id: u64,
    address: String,
    gate: Arc<ConnectGate>,
    mut commands: Commands,
    events: mpsc::Sender<NodeEvent>,
    handshake: Handshake,
) {
    let (reason, connected) = match gate.open_node(&address).await {
        Ok(mut stream) => {
            match give_identity(&mut stream, &handshake.commands, handshake.timeout).await {
                Ok(()) => (carry(id, &mut stream, &mut commands, &events).await, true),
                Err(IdentityFailure::Refused(reply)) => {
                    return refuse(id, reply, &mut commands, &events).await
                }
                Err(IdentityFailure::Lost(reason)) => (reason, false),
            }
        }
        Err(e) => (e.to_string(), false),
    };
    let _ = events
        .send(NodeEvent::Lost {
            link: id,
            reason,
            connected,
        })
        .await;
}

/// Redis refused the client's user on this connection (`reply`, e.g. `-WRONGPASS ...`):
/// every command the router sends gets it as each of its replies (one for a command sent
/// expecting none, a subscription's), none is sent, until the router drops the link.
async fn refuse(id: u64, reply: Bytes, commands: &mut Commands, events: &mpsc::Sender<NodeEvent>) {
    tracing::debug!(
        reply = %String::from_utf8_lossy(&reply).trim_end(),
        "cluster node refused the client's user on its own connection"
    );
    while let Some((_, replies)) = commands.recv().await {
        for _ in 0..replies.max(1) {
            let event = NodeEvent::Reply {
                link: id,
                reply: reply.clone(),
                push: false,
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// Write commands and read replies until the connection fails or the router drops the
/// link; returns why it ended.
async fn carry(
    id: u64,
    stream: &mut crate::transport::Stream,
    commands: &mut Commands,
    events: &mpsc::Sender<NodeEvent>,
) -> String {
    let (mut reader, mut writer) = stream.halves();
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut scanner = ReplyScanner::new();
    let mut batch = BytesMut::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some((command, _)) = command else { return "closed by the proxy".into() };
                batch.clear();
                batch.extend_from_slice(&command);
                while batch.len() < 64 * 1024 {
                    match commands.try_recv() {
                        Ok((more, _)) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                let mut written = 0;
                while written < batch.len() {
                    match writer.send(&batch[written..]).await {
                        Ok(0) => return "the connection closed".into(),
                        Ok(n) => written += n,
                        Err(e) => return e.to_string(),
                    }
                }
                if let Err(e) = writer.send(&[]).await {
                    return e.to_string();
                }
            }
            read = reader.read_buf(&mut input) => {
                match read {
                    Ok(0) => return "the node closed the connection".into(),
                    Err(e) => return e.to_string(),
                    Ok(_) => {}
                }
                loop {
                    match scanner.scan(&input) {
                        Ok(ReplyStep::Done(end)) => {
                            let push = scanner.info().kind == ReplyKind::Push;
                            scanner.rebase(end);
                            let reply = input.split_to(end).freeze();
                            // Waits while the router holds back (its client is not
                            // reading): this node's replies then wait in Redis, whose
                            // own output limits apply, not in the proxy.
                            if events.send(NodeEvent::Reply { link: id, reply, push }).await.is_err() {
                                return "closed by the proxy".into();
                            }
                        }
                        Ok(_) => break,
                        Err(e) => return format!("unreadable reply: {e}"),
                    }
                }
                if input.capacity() - input.len() < 4096 {
                    input.reserve(16 * 1024);
                }
            }
        }
    }
}
