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
//! ([`super::shared`]), which tells its router the same events; and a connection of the
//! client's own may be one kept from an earlier client ([`Reuse`], [`super::idle`]), and
//! is handed back there when its router is done with it clean ([`NodeLink::hand_back`]).
//!
//! Never decides anything about a command or a reply: the router does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use super::event::NodeEvent;
use super::idle::IdleNodeConnections;
use super::shared::SharedLink;
use crate::mux::identity::{give_identity, IdentityFailure};
use crate::mux::LaneIdentity;
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

/// Where a connection of a client's own may come from and go back to (multiplexed only):
/// the kept connections, and what this one is for them (its node is the link's).
#[derive(Debug, Clone)]
pub struct Reuse {
    /// The connections kept for reuse (`upstream.pinned_idle`).
    pub pool: Arc<IdleNodeConnections>,
    /// The ACL user and protocol of the client when the link opens: a kept connection of
    /// that identity is taken first.
    pub identity: LaneIdentity,
}

/// The identity a connection was handed back with, shared by a link and its task.
type HandedBack = Arc<Mutex<Option<LaneIdentity>>>;

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
        /// Set by [`NodeLink::hand_back`] to the connection's identity: the task gives the
        /// connection to the kept ones once it has read everything, rather than being
        /// stopped.
        handed_back: HandedBack,
    },
    Shared(SharedLink),
}

impl Drop for NodeLink {
    fn drop(&mut self) {
        if let Carrier::Own {
            task, handed_back, ..
        } = &self.carrier
        {
            if handed_back.lock().expect("hand-back lock").is_none() {
                task.abort();
            }
        }
    }
}

impl NodeLink {
    /// Start a link to `address`: a connection kept for `reuse` if one is, else a new one
    /// given `handshake` once connected. It connects in the background; `send` may be
    /// called at once (commands wait for the connection).
    pub fn open(
        id: u64,
        address: String,
        gate: Arc<ConnectGate>,
        events: mpsc::Sender<NodeEvent>,
        handshake: Handshake,
        reuse: Option<Reuse>,
    ) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let handed_back = HandedBack::default();
        let own = OwnConnection {
            id,
            address: address.clone(),
            gate,
            events,
            handshake,
            reuse,
            handed_back: Arc::clone(&handed_back),
        };
        let task = tokio::spawn(own.run(rx));
        NodeLink {
            address,
            id,
            carrier: Carrier::Own {
                commands,
                task,
                handed_back,
            },
        }
    }

    /// The router is done with this connection of the client's own and left it as a new
    /// one of `identity` is (nothing owed, no state but its user and protocol): it goes to
    /// the kept connections once every byte the node sent is read (and closes if any was
    /// left half read, or there is no room). A shared link just leaves its connection.
    pub fn hand_back(self, identity: LaneIdentity) {
        if let Carrier::Own { handed_back, .. } = &self.carrier {
            *handed_back.lock().expect("hand-back lock") = Some(identity);
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

/// A connection of a client's own, as its task runs it.
struct OwnConnection {
    id: u64,
    address: String,
    gate: Arc<ConnectGate>,
    events: mpsc::Sender<NodeEvent>,
    handshake: Handshake,
    reuse: Option<Reuse>,
    handed_back: HandedBack,
}

impl OwnConnection {
    /// Connect (or take a kept connection), carry the router's commands, and tell it when
    /// the connection is lost; or, handed back, give it to the kept connections.
    async fn run(self, mut commands: Commands) {
        let kept = self
            .reuse
            .as_ref()
            .and_then(|r| r.pool.take(&self.address, &r.identity));
        let mut stream = match kept {
            Some(stream) => stream,
            None => match self.connect().await {
                Ok(stream) => stream,
                Err(IdentityFailure::Refused(reply)) => {
                    return refuse(self.id, reply, &mut commands, &self.events).await
                }
                Err(IdentityFailure::Lost(reason)) => return self.lost(reason, false).await,
            },
        };
        match carry(self.id, &mut stream, &mut commands, &self.events).await {
            Ended::Closed { clean } => {
                let identity = self.handed_back.lock().expect("hand-back lock").take();
                if let (Some(reuse), Some(identity), true) = (self.reuse, identity, clean) {
                    reuse.pool.give_back(self.address, identity, stream);
                }
            }
            Ended::Lost(reason) => self.lost(reason, true).await,
        }
    }

    /// A new connection through the gate, given the handshake.
    async fn connect(&self) -> Result<crate::transport::Stream, IdentityFailure> {
        let mut stream = self
            .gate
            .open_node(&self.address)
            .await
            .map_err(|e| IdentityFailure::Lost(e.to_string()))?;
        give_identity(
            &mut stream,
            &self.handshake.commands,
            self.handshake.timeout,
        )
        .await?;
        Ok(stream)
    }

    /// Tell the router the link is lost.
    async fn lost(&self, reason: String, connected: bool) {
        let event = NodeEvent::Lost {
            link: self.id,
            reason,
            connected,
        };
        let _ = self.events.send(event).await;
    }
}

/// How carrying a connection's commands ended.
enum Ended {
    /// The router dropped the link; `clean` when no reply was left half read.
    Closed { clean: bool },
    /// The connection failed (why).
    Lost(String),
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
/// link; returns how it ended.
async fn carry(
    id: u64,
    stream: &mut crate::transport::Stream,
    commands: &mut Commands,
    events: &mpsc::Sender<NodeEvent>,
) -> Ended {
    let (mut reader, mut writer) = stream.halves();
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut scanner = ReplyScanner::new();
    let mut batch = BytesMut::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some((command, _)) = command else {
                    return Ended::Closed { clean: input.is_empty() };
                };
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
                        Ok(0) => return Ended::Lost("the connection closed".into()),
                        Ok(n) => written += n,
                        Err(e) => return Ended::Lost(e.to_string()),
                    }
                }
                if let Err(e) = writer.send(&[]).await {
                    return Ended::Lost(e.to_string());
                }
            }
            read = reader.read_buf(&mut input) => {
                match read {
                    Ok(0) => return Ended::Lost("the node closed the connection".into()),
                    Err(e) => return Ended::Lost(e.to_string()),
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
                                return Ended::Closed { clean: false };
                            }
                        }
                        Ok(_) => break,
                        Err(e) => return Ended::Lost(format!("unreadable reply: {e}")),
                    }
                }
                if input.capacity() - input.len() < 4096 {
                    input.reserve(16 * 1024);
                }
            }
        }
    }
}
