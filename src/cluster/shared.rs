//! Shared node connections (`upstream.connections = "multiplexed"` in front of a cluster):
//! the commands of many clients' routers to one node carried by a few connections to it.
//!
//! [`SharedNodes`] keeps, per node address and identity (a [`LaneIdentity`]: the ACL user,
//! the URL's or one a client authenticated as, and RESP2 or RESP3),
//! `upstream.shared_connections` [`NodeConn`]s, attached to in turn; at most
//! `upstream.shared_identities` identities at once ([`SharedNodes::admit`]). A router's link to a node is then a [`SharedLink`] on one of them instead of a
//! connection of its own ([`super::node::NodeLink`]). Each submission (whole commands and
//! how many replies they get) is written back to back, never interleaved with another
//! router's (`ASKING` and its command are one submission), and each whole reply handed to
//! its router by order ([`crate::mux::router::Router::route_each`]) as the same
//! [`NodeEvent`] a connection of its own sends, so the router cannot tell them apart.
//!
//! A connection is opened through [`ConnectGate::open_node`] (TCP, TLS, the URL's AUTH)
//! when there is something to write, named `respguard-shared`, and given its identity
//! (`AUTH user password` for another user, `HELLO 3` for RESP3), every reply checked
//! before it carries a command ([`give_identity`]): when Redis refuses the identity (a
//! wrong password), every command submitted gets Redis's refusal as its reply, so none
//! runs as another user. It is closed once no router is attached. Lost, every router with
//! replies owed on it gets one [`NodeEvent::Lost`] (its link is dead: what it sends
//! there is dropped, the router having failed it); the next submission opens a new
//! connection. A router never waits for one: its channel is the only thing a connection
//! waits on, and a router always reads it (a client past its reply limit is let go).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::event::NodeEvent;
use super::idle::IdleNodeConnections;
use crate::alarm::SilenceAlarm;
use crate::mux::identity::{
    count_identities_exhausted, give_identity, identities_gauge, IdentityFailure, LaneIdentity,
};
use crate::mux::pinned::PinnedLimit;
use crate::mux::router::{Owner as RunOwner, Router as OrderRouter};
use crate::mux::LANE_NAME;
use crate::resp;
use crate::transport::Stream;
use crate::upstream::ConnectGate;
use crate::wakeup::WakeUp;
use crate::write_batch::WriteBatch;

/// Node addresses and identities with shared connections at once (a cluster has far fewer
/// nodes; past it, pools no router uses are dropped, and a router gets a connection of its
/// own when none can be: `tests::pools_stay_within_the_bound_and_unused_ones_make_room`).
pub const MAX_POOLS: usize = 2048;

/// Bytes written to a node in one go.
const WRITE_BATCH: usize = 64 * 1024;
/// The most capacity the buffer a connection writes from keeps between batches (one batch
/// stops taking submissions past [`WRITE_BATCH`], plus the last one taken).
const KEPT_OUTPUT: usize = 4 * WRITE_BATCH;

/// How the shared node connections are set up, from `[upstream]` and `[proxy]`.
#[derive(Debug, Clone, Copy)]
pub struct SharedSettings {
    /// `upstream.shared_connections`: connections per node and identity.
    pub per_node: usize,
    /// `upstream.shared_identities`: most identities (ACL user and protocol) with shared
    /// connections at once, the URL's RESP2 one included.
    pub identities: usize,
    /// `proxy.output_buffer_hard`: most reply bytes a router on shared connections holds
    /// for a client that does not read them before the client is let go.
    pub unread_hard: usize,
    /// `upstream.connect_timeout`: longest wait for a new connection's `CLIENT SETNAME`
    /// and `HELLO`.
    pub handshake_timeout: Duration,
    /// `upstream.reply_timeout`: longest silence of a connection that owes replies (no
    /// blocking command ever takes a shared one), then it is closed as lost.
    pub reply_timeout: Option<Duration>,
    /// `upstream.pinned_connections`: most clients on connections of their own at once
    /// (each counted once, however many nodes it uses), waiting up to
    /// `handshake_timeout` (`upstream.connect_timeout`) for a place.
    pub pinned: usize,
    /// `upstream.pinned_idle`: most connections of clients' own kept open for reuse, over
    /// all nodes.
    pub pinned_idle: usize,
}

/// Every node's shared connections, proxy-wide.
#[derive(Debug)]
pub struct SharedNodes {
    gate: Arc<ConnectGate>,
    settings: SharedSettings,
    pools: Mutex<Pools>,
    /// Places for clients on connections of their own (`upstream.pinned_connections`).
    pinned: PinnedLimit,
    /// Connections of clients' own kept for reuse (`upstream.pinned_idle`).
    idle: Arc<IdleNodeConnections>,
}

/// The pools, by node address and identity, and the identities admitted (the URL's RESP2
/// one always first), under one lock.
#[derive(Debug, Default)]
struct Pools {
    by_node: HashMap<(String, LaneIdentity), Arc<Pool>>,
    identities: Vec<LaneIdentity>,
}

/// One node's connections for one identity.
#[derive(Debug)]
struct Pool {
    conns: Vec<Arc<NodeConn>>,
    next: AtomicUsize,
}

impl Pool {
    fn attached(&self) -> usize {
        self.conns
            .iter()
            .map(|c| c.attached.load(Ordering::Relaxed))
            .sum()
    }

    /// Redis refused the identity on one of its connections.
    fn is_refused(&self) -> bool {
        self.conns.iter().any(|c| c.refused.load(Ordering::Relaxed))
    }
}

impl SharedNodes {
    /// No connection open until a router needs one.
    pub fn new(gate: Arc<ConnectGate>, settings: SharedSettings) -> Self {
        identities_gauge().increment(1.0);
        SharedNodes {
            gate,
            settings,
            pools: Mutex::new(Pools {
                by_node: HashMap::new(),
                identities: vec![Self::home()],
            }),
            pinned: PinnedLimit::new(settings.pinned, settings.handshake_timeout),
            // More could never all be in use again at once.
            idle: Arc::new(IdleNodeConnections::new(
                settings.pinned_idle.min(settings.pinned),
            )),
        }
    }

    /// The identity every client starts with: the URL's user, RESP2.
    pub fn home() -> LaneIdentity {
        LaneIdentity {
            user: None,
            db: 0,
            protocol: 2,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &SharedSettings {
        &self.settings
    }

    /// The bound on clients holding connections of their own.
    pub(crate) fn pinned(&self) -> &PinnedLimit {
        &self.pinned
    }

    /// The connections of clients' own kept for reuse.
    pub fn idle(&self) -> &Arc<IdleNodeConnections> {
        &self.idle
    }

    /// Whether clients of `identity` may share connections: it has them already, or there
    /// is room for one more identity under `upstream.shared_identities` (made, at the bound,
    /// by dropping the identities no router is attached to, and those Redis refused). An
    /// identity admitted keeps its place while routers use its connections.
    pub fn admit(&self, identity: &LaneIdentity) -> bool {
        let mut pools = self.pools.lock().expect("pools lock");
        pools.admit(identity, self.settings.identities.max(1))
    }

    /// A place for a router's link `link` (whose events go to `events`) on the next
    /// connection in turn to `address` for `identity`; `None` past [`MAX_POOLS`] pools in
    /// use, or when `identity` can no longer be admitted.
    pub fn attach(
        &self,
        address: &str,
        identity: &LaneIdentity,
        link: u64,
        events: mpsc::Sender<NodeEvent>,
    ) -> Option<SharedLink> {
        let mut pools = self.pools.lock().expect("pools lock");
        if !pools.admit(identity, self.settings.identities.max(1)) {
            return None;
        }
        let key = (address.to_string(), identity.clone());
        if !pools.by_node.contains_key(&key) {
            if pools.by_node.len() >= MAX_POOLS {
                pools.by_node.retain(|_, pool| pool.attached() > 0);
            }
            if pools.by_node.len() >= MAX_POOLS {
                tracing::warn!(
                    node = address,
                    "{MAX_POOLS} shared node pools (node and identity) in use: this client \
                     gets a connection of its own to the node"
                );
                return None;
            }
            let conns = (0..self.settings.per_node.max(1))
                .map(|_| {
                    Arc::new(NodeConn {
                        address: address.to_string(),
                        identity: identity.clone(),
                        gate: Arc::clone(&self.gate),
                        handshake_timeout: self.settings.handshake_timeout,
                        reply_timeout: self.settings.reply_timeout,
                        queue: Mutex::new(VecDeque::new()),
                        work: WakeUp::new(),
                        attached: AtomicUsize::new(0),
                        running: AtomicBool::new(false),
                        refused: AtomicBool::new(false),
                    })
                })
                .collect();
            pools.by_node.insert(
                key.clone(),
                Arc::new(Pool {
                    conns,
                    next: AtomicUsize::new(0),
                }),
            );
        }
        let pool = &pools.by_node[&key];
        let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.conns.len();
        let conn = Arc::clone(&pool.conns[i]);
        drop(pools);
        conn.attached.fetch_add(1, Ordering::Relaxed);
        if !conn.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(&conn).run());
        }
        Some(SharedLink {
            conn,
            owner: Arc::new(Owner {
                link,
                events,
                dead: AtomicBool::new(false),
            }),
        })
    }
}

impl Pools {
    /// [`SharedNodes::admit`] under the lock, with at most `max` identities.
    fn admit(&mut self, identity: &LaneIdentity, max: usize) -> bool {
        if self.identities.contains(identity) {
            return true;
        }
        if self.identities.len() >= max {
            self.close_unused();
        }
        if self.identities.len() >= max {
            count_identities_exhausted();
            return false;
        }
        tracing::debug!(
            user = identity.user_name(),
            protocol = identity.protocol,
            "shared cluster node connections for a new identity"
        );
        self.identities.push(identity.clone());
        identities_gauge().increment(1.0);
        true
    }

    /// At the bound, make room: every identity but the URL's whose pools no router is
    /// attached to, or whose connection Redis refused (a wrong password), gives its place
    /// up, and its pools go (their connections close once no router uses them).
    fn close_unused(&mut self) {
        let home = SharedNodes::home();
        let in_use: Vec<LaneIdentity> = self
            .by_node
            .iter()
            .filter(|((_, identity), pool)| {
                *identity != home && pool.attached() > 0 && !pool.is_refused()
            })
            .map(|((_, identity), _)| identity.clone())
            .collect();
        let before = self.identities.len();
        self.identities
            .retain(|identity| *identity == home || in_use.contains(identity));
        self.by_node
            .retain(|(_, identity), _| *identity == home || in_use.contains(identity));
        identities_gauge().decrement((before - self.identities.len()) as f64);
    }
}

#[cfg(test)]
impl SharedNodes {
    /// The pools kept now.
    fn pool_count(&self) -> usize {
        self.pools.lock().expect("pools lock").by_node.len()
    }

    /// Whether a pool for `address` and `protocol` (the URL's user) is kept.
    fn has_pool(&self, address: &str, protocol: u8) -> bool {
        let identity = LaneIdentity {
            protocol,
            ..Self::home()
        };
        self.has_identity_pool(address, &identity)
    }

    /// Whether a pool for `address` and `identity` is kept.
    fn has_identity_pool(&self, address: &str, identity: &LaneIdentity) -> bool {
        let key = (address.to_string(), identity.clone());
        self.pools
            .lock()
            .expect("pools lock")
            .by_node
            .contains_key(&key)
    }
}

/// A router's link, as a shared connection knows it: where its replies go.
#[derive(Debug)]
struct Owner {
    link: u64,
    events: mpsc::Sender<NodeEvent>,
    /// The connection was lost with replies owed to it (it was told), or the router
    /// dropped the link: what it still sends is dropped, what comes for it too.
    dead: AtomicBool,
}

impl RunOwner for Arc<Owner> {
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

/// Commands submitted and not yet taken by the connection's task.
type Queue = VecDeque<(Arc<Owner>, Bytes, u32)>;

/// One shared connection to a node, owned by its task while it runs.
#[derive(Debug)]
struct NodeConn {
    address: String,
    identity: LaneIdentity,
    gate: Arc<ConnectGate>,
    handshake_timeout: Duration,
    reply_timeout: Option<Duration>,
    queue: Mutex<Queue>,
    /// Wakes the task: something submitted, or a router left.
    work: WakeUp,
    /// Router links attached.
    attached: AtomicUsize,
    running: AtomicBool,
    /// Redis refused the identity on the last connection.
    refused: AtomicBool,
}

/// A router's place on a shared node connection. Dropping it leaves the connection.
#[derive(Debug)]
pub struct SharedLink {
    conn: Arc<NodeConn>,
    owner: Arc<Owner>,
}

impl SharedLink {
    /// Queue `command` (whole commands, written together) expecting `replies` replies;
    /// false when the connection was lost with replies owed to this link (the router got,
    /// or will get, its [`NodeEvent::Lost`]).
    pub fn send(&self, command: Bytes, replies: u32) -> bool {
        let mut queue = self.conn.queue.lock().expect("queue lock");
        if self.owner.dead.load(Ordering::Acquire) {
            return false;
        }
        queue.push_back((Arc::clone(&self.owner), command, replies));
        drop(queue);
        self.conn.work.notify();
        true
    }
}

impl Drop for SharedLink {
    fn drop(&mut self) {
        // Its router no longer reads what comes for it: never waited for, never told.
        self.owner.dead.store(true, Ordering::Release);
        self.conn.attached.fetch_sub(1, Ordering::Relaxed);
        self.conn.work.notify();
    }
}

impl NodeConn {
    /// The task: connect when there is work, serve until the connection is lost (its
    /// routers told) or no router is attached; ends then.
    async fn run(self: Arc<Self>) {
        loop {
            if !self.wait_for_work().await {
                self.running.store(false, Ordering::Release);
                // A router that attached meanwhile found the task still running.
                if self.attached.load(Ordering::Relaxed) > 0
                    && !self.running.swap(true, Ordering::AcqRel)
                {
                    continue;
                }
                return;
            }
            let stream = match self.gate.open_node(&self.address).await {
                Ok(mut stream) => {
                    match give_identity(&mut stream, &self.handshake(), self.handshake_timeout)
                        .await
                    {
                        Ok(()) => Ok(stream),
                        Err(failure) => Err(failure),
                    }
                }
                Err(e) => Err(IdentityFailure::Lost(e.to_string())),
            };
            self.refused.store(
                matches!(stream, Err(IdentityFailure::Refused(_))),
                Ordering::Relaxed,
            );
            match stream {
                // Nothing was written: the routers retry (a node restarting, a failover).
                Err(IdentityFailure::Lost(reason)) => self.fail_queued(&reason).await,
                // Redis's refusal is each command's reply: none runs as another user.
                Err(IdentityFailure::Refused(reply)) => self.refuse_queued(reply).await,
                Ok(stream) => {
                    metrics::gauge!("respguard_cluster_shared_connections").increment(1.0);
                    let mut order = OrderRouter::new();
                    let reason = self.serve(stream, &mut order).await;
                    metrics::gauge!("respguard_cluster_shared_connections").decrement(1.0);
                    if let Some(reason) = reason {
                        self.lose(&mut order, &reason).await;
                    }
                }
            }
        }
    }

    /// `CLIENT SETNAME respguard-shared` (as the URL's user, which may name connections),
    /// then the identity's `AUTH user password` and `HELLO 3`.
    fn handshake(&self) -> (Bytes, u32) {
        let mut out = BytesMut::new();
        resp::command(&mut out, &[b"CLIENT", b"SETNAME", LANE_NAME.as_bytes()]);
        let (identity, replies) = self.identity.handshake_from(&SharedNodes::home());
        out.extend_from_slice(&identity);
        (out.freeze(), replies + 1)
    }

    /// True once something is queued; false when no router is attached.
    async fn wait_for_work(&self) -> bool {
        loop {
            if !self.queue.lock().expect("queue lock").is_empty() {
                return true;
            }
            if self.attached.load(Ordering::Relaxed) == 0 {
                return false;
            }
            self.work.wait().await;
        }
    }

    /// The connection could not be opened: every router with commands queued is told
    /// (`connected` false: nothing was sent, it may retry).
    async fn fail_queued(&self, reason: &str) {
        let queued: Queue = std::mem::take(&mut *self.queue.lock().expect("queue lock"));
        for (owner, _, _) in queued {
            tell_lost(&owner, reason, false).await;
        }
    }

    /// Redis refused the connection's identity (`reply`, e.g. `-WRONGPASS ...`): every
    /// command queued gets it as its reply, as Redis would answer it on a connection that
    /// failed to authenticate, and none is sent.
    async fn refuse_queued(&self, reply: Bytes) {
        tracing::debug!(
            node = %self.address,
            reply = %String::from_utf8_lossy(&reply).trim_end(),
            "shared cluster node connection's identity refused"
        );
        let queued: Queue = std::mem::take(&mut *self.queue.lock().expect("queue lock"));
        for (owner, _, replies) in queued {
            for _ in 0..replies.max(1) {
                if owner.dead.load(Ordering::Acquire) {
                    break;
                }
                let event = NodeEvent::Reply {
                    link: owner.link,
                    reply: reply.clone(),
                    push: false,
                };
                let _ = owner.events.send(event).await;
            }
        }
    }

    /// The connection was lost: every router with replies owed is told.
    async fn lose(&self, order: &mut OrderRouter<Arc<Owner>>, reason: &str) {
        let mut owners = Vec::new();
        order.lose_all(|owner, _, _| owners.push(Arc::clone(owner)));
        if !owners.is_empty() {
            tracing::info!(node = %self.address, reason, "shared cluster node connection lost");
            metrics::counter!("respguard_shared_connections_lost_total").increment(1);
        }
        for owner in owners {
            tell_lost(&owner, reason, true).await;
        }
    }

    /// Write what routers submit, hand each reply to its router; returns why the
    /// connection ended, or `None` once no router is attached and nothing is owed.
    async fn serve(
        &self,
        mut stream: Stream,
        order: &mut OrderRouter<Arc<Owner>>,
    ) -> Option<String> {
        let mut input = BytesMut::with_capacity(16 * 1024);
        let mut writing = WriteBatch::new(KEPT_OUTPUT);
        let mut replies: Vec<(Arc<Owner>, BytesMut, bool)> = Vec::new();
        let mut silence = SilenceAlarm::new(self.reply_timeout);
        loop {
            if writing.is_empty() {
                self.take_queued(order, writing.refill());
            }
            let owed = order.owed();
            silence.owing(owed > 0);
            if writing.is_empty() && owed == 0 && self.attached.load(Ordering::Relaxed) == 0 {
                return None;
            }
            let flush = stream.wants_flush();
            let (mut rx, mut tx) = stream.halves();
            tokio::select! {
                biased;
                r = rx.read_buf(&mut input) => {
                    match r {
                        Ok(0) => return Some("the node closed the connection".into()),
                        Err(e) => return Some(e.to_string()),
                        Ok(_) => {}
                    }
                    let routed = order.route_each(&mut input, |owner, reply, push| {
                        replies.push((Arc::clone(owner), reply, push));
                    });
                    for (owner, reply, push) in replies.drain(..) {
                        if owner.dead.load(Ordering::Acquire) {
                            continue;
                        }
                        let event = NodeEvent::Reply { link: owner.link, reply: reply.freeze(), push };
                        // A router always reads its events; one gone is skipped.
                        let _ = owner.events.send(event).await;
                    }
                    // Progress once every reply read is handed on (a router's full channel
                    // is the proxy's wait, not the node's).
                    silence.replied();
                    if let Err(e) = routed {
                        return Some(e.to_string());
                    }
                    if input.capacity() - input.len() < 4096 {
                        input.reserve(16 * 1024);
                    }
                }
                r = tx.send(writing.pending()), if !writing.is_empty() || flush => match r {
                    Ok(0) if !writing.is_empty() => return Some("the connection closed".into()),
                    Ok(n) => writing.wrote(n),
                    Err(e) => return Some(e.to_string()),
                },
                _ = self.work.wait(), if writing.is_empty() => {}
                timeout = std::future::poll_fn(|cx| silence.poll_silent_too_long(cx)),
                    if silence.watching() => {
                    metrics::counter!("respguard_upstream_reply_timeouts_total").increment(1);
                    tracing::warn!(
                        node = %self.address,
                        "cluster node sent nothing for {timeout:?} while replies were owed \
                         (upstream.reply_timeout); closing the shared connection"
                    );
                    return Some(format!("no reply within {timeout:?}, upstream.reply_timeout"));
                }
            }
        }
    }

    /// Move queued submissions to the bytes to write, their replies expected in order
    /// (a dead link's dropped: its router failed them).
    fn take_queued(&self, order: &mut OrderRouter<Arc<Owner>>, writing: &mut BytesMut) {
        let mut queue = self.queue.lock().expect("queue lock");
        while writing.len() < WRITE_BATCH {
            let Some((owner, command, replies)) = queue.pop_front() else {
                break;
            };
            if owner.dead.load(Ordering::Acquire) {
                continue;
            }
            order.expect(&owner, replies);
            writing.extend_from_slice(&command);
        }
    }
}

/// Tell a router its link on a shared connection is lost (once), and mark it dead.
async fn tell_lost(owner: &Arc<Owner>, reason: &str, connected: bool) {
    if owner.dead.swap(true, Ordering::AcqRel) {
        return;
    }
    let event = NodeEvent::Lost {
        link: owner.link,
        reason: reason.to_string(),
        connected,
    };
    let _ = owner.events.send(event).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> SharedNodes {
        let gate = Arc::new(ConnectGate::unreachable());
        SharedNodes::new(
            gate,
            SharedSettings {
                per_node: 1,
                identities: 2,
                unread_hard: 1 << 20,
                handshake_timeout: Duration::from_secs(1),
                reply_timeout: None,
                pinned: 1,
                pinned_idle: 0,
            },
        )
    }

    fn node(i: usize) -> String {
        format!("10.0.{}.{}:6379", i / 250, i % 250 + 1)
    }

    /// The URL's user speaking `protocol`.
    fn speaking(protocol: u8) -> LaneIdentity {
        LaneIdentity {
            protocol,
            ..SharedNodes::home()
        }
    }

    /// The ACL user `name`, in RESP2.
    fn user(name: &str) -> LaneIdentity {
        LaneIdentity {
            user: crate::mux::LaneUser::from_auth_args(&[name.as_bytes(), b"pw"]).map(Arc::new),
            ..SharedNodes::home()
        }
    }

    /// At most `upstream.shared_identities` identities (the URL's RESP2 one counted) have
    /// shared connections: one more is refused while every other is in use (its client
    /// then keeps connections of its own), and admitted once one is unused, whose pools go
    /// (an identity admitted that no router uses yet gives its place up too).
    #[tokio::test]
    async fn identities_stay_within_their_bound_and_unused_ones_make_room() {
        let nodes = nodes();
        let (events, _rx) = mpsc::channel(1);
        assert!(nodes.admit(&SharedNodes::home()));
        let alice = nodes.attach(&node(0), &user("alice"), 0, events.clone());
        assert!(alice.is_some());
        assert!(nodes.admit(&user("alice")), "admitted already");
        assert!(!nodes.admit(&user("bob")), "alice's is in use");
        assert!(!nodes.admit(&speaking(3)));
        assert!(nodes
            .attach(&node(1), &user("bob"), 1, events.clone())
            .is_none());
        // The URL's identity always has its place.
        assert!(nodes
            .attach(&node(1), &speaking(2), 2, events.clone())
            .is_some());
        drop(alice);
        assert!(nodes.admit(&user("bob")));
        assert!(!nodes.has_identity_pool(&node(0), &user("alice")));
        // Bob's place, unused, is given up in turn.
        assert!(nodes.admit(&user("alice")));
    }

    /// Pools are made only on a router's attach (no connection opens before there is work,
    /// so none is opened here). At the bound, with every pool in use, a new node gets no
    /// place (its router opens a connection of its own) and no pool in use is dropped;
    /// once a pool is unused, it gives its place.
    #[tokio::test]
    async fn pools_stay_within_the_bound_and_unused_ones_make_room() {
        let nodes = nodes();
        let (events, _rx) = mpsc::channel(1);
        let mut links: Vec<SharedLink> = (0..MAX_POOLS)
            .map(|i| {
                let protocol = if i % 2 == 0 { 2 } else { 3 };
                nodes
                    .attach(&node(i / 2), &speaking(protocol), i as u64, events.clone())
                    .expect("room below the bound")
            })
            .collect();
        assert_eq!(nodes.pool_count(), MAX_POOLS);
        let newcomer = "192.168.0.1:6379";
        assert!(nodes
            .attach(newcomer, &speaking(2), 0, events.clone())
            .is_none());
        assert_eq!(nodes.pool_count(), MAX_POOLS);
        assert!(!nodes.has_pool(newcomer, 2));
        // A pool kept still takes more routers.
        let another = nodes.attach(&node(0), &speaking(2), 1, events.clone());
        assert!(another.is_some());
        // Its last router gone, the pool of node 7 for RESP3 is unused: it makes room.
        let unused = links.remove(15);
        drop(unused);
        assert!(nodes
            .attach(newcomer, &speaking(2), 2, events.clone())
            .is_some());
        assert_eq!(nodes.pool_count(), MAX_POOLS);
        assert!(nodes.has_pool(newcomer, 2));
        assert!(!nodes.has_pool(&node(7), 3));
        assert!(nodes.has_pool(&node(7), 2), "a pool in use is kept");
    }
}
