//! One client's way into a Redis Cluster: a task that looks like one Redis connection to
//! the session (the other end of a socket pair) and spreads its commands over connections
//! to the cluster's nodes.
//!
//! Each command read from the session becomes an [`Entry`] in one ordered queue, with one
//! [`Part`] per node it goes to (one, unless it is split or fanned out). Each node link
//! answers in its own order; a part's reply is matched through that node's queue of
//! [`Expect`]s, and an entry's reply goes to the session when it and every entry before it
//! are answered: the session sees replies in command order, as from one Redis.
//!
//! Redirections never reach the client: `-MOVED` points the slot at the named node (and a
//! topology read follows) and the part is sent there; `-ASK` sends `ASKING` and the part to
//! the named node once; `-TRYAGAIN`, and a node that cannot be reached, retry after a
//! pause, doubling, a bounded number of times. While a slot has parts redirected, or in
//! flight at another node than the map now names, new parts for that slot wait
//! ([`Flight`]), so two commands on one key never swap places.
//!
//! The command handling is in [`super::dispatch`]; this file is the queue, the links and
//! the event loop. Never judges a command: the session's guards did.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::args::Args;
use super::monitoring::{self, Monitoring};
use super::node::{NodeEvent, NodeLink};
use super::read_rules::LiveReadRules;
use super::shared::SharedNodes;
use super::spread::Merge;
use super::subscriptions::{pubsub_frame, Subscriptions};
use super::view::ClusterView;
use crate::alarm::Alarm;
use crate::command::CommandTable;
use crate::config::ReadFrom;
use crate::mux::pinned::PinnedPermit;
use crate::mux::LaneIdentity;
use crate::resp;
use crate::scanner::request::{Limits, RequestScanner, Step};

/// Most redirections (`-MOVED`, `-ASK`) one part follows before its error is the reply.
pub const MAX_REDIRECTS: u8 = 5;

/// How long one part may be retried after `-TRYAGAIN`, a node that cannot be reached, or
/// a slot no primary serves (a failover in progress), counted from its first retry.
pub const RETRY_WINDOW: Duration = Duration::from_secs(5);

/// The first pause before a retry; doubled each time, at most [`MAX_RETRY_PAUSE`].
pub(super) const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(10);
pub(super) const MAX_RETRY_PAUSE: Duration = Duration::from_millis(400);

/// Commands in flight before the router stops reading the session (the session's own
/// `max_pending_commands` normally stops it first).
pub(super) const MAX_ENTRIES: usize = 65_536;

/// Replies waiting for the session before the router stops reading it.
pub(super) const MAX_OUTPUT: usize = 4 * 1024 * 1024;

/// Node replies read ahead of the router, in all its links.
pub(super) const EVENTS: usize = 1024;

/// Distinct nodes one router may connect to.
const MAX_NODES: usize = 1024;

/// Where a reply read from a node belongs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Expect {
    /// Part `part` of the entry numbered `seq`.
    Part { seq: u64, part: u16 },
    /// A reply the client never sees (`ASKING`, a state command replayed, a hidden MULTI).
    Hidden,
    /// The reply to the client's `AUTH` (or `HELLO … AUTH`) sent, unseen, to a node other
    /// than the one answering the client: a refusal means the nodes disagree on the user
    /// (see `Router::on_hidden_auth_reply`).
    HiddenAuth,
    /// The confirmations of the subscription command of entry `seq`, `left` more to come,
    /// or one error reply instead (see `cluster/confirm.rs`).
    Confirmations { seq: u64, left: u32 },
    /// The confirmations of the `UNSUBSCRIBE`, `PUNSUBSCRIBE` or `SUNSUBSCRIBE` naming no
    /// channel of entry `seq` (one per subscription the node holds), ended by the reply to
    /// the hidden `PING` sent after it; `seen` once one came (before any, an error reply is
    /// the command's refusal).
    Unsubscriptions { seq: u64, seen: bool },
}

/// What kind of command an entry is, for what its reply changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    /// Redirections followed.
    Plain,
    /// Inside MULTI (or MULTI, EXEC, DISCARD themselves): sent as is, replies as they come.
    Transaction,
    /// An EXEC on node `node` whose transaction queued state commands (`state`): each one
    /// EXEC's reply says ran is then in force on every node, as outside a transaction.
    Exec {
        node: usize,
        state: Vec<QueuedState>,
    },
    /// A command changing connection state (`raw`), replayed on every node (`key` names
    /// it), in force instead of `previous` unless refused.
    State {
        key: Vec<u8>,
        raw: Bytes,
        previous: Option<Bytes>,
    },
    /// WATCH: the transaction that follows runs on its node.
    Watch,
    /// RESP2, subscribed: a command sent to a subscribed node to be refused there as one
    /// Redis refuses it (see `Router::while_subscribed`); a redirection gets `refusal`.
    WhileSubscribed { refusal: Bytes },
}

impl Kind {
    /// Whether the entry is part of a transaction (sent as is, never redirected or retried).
    pub(super) fn is_transaction(&self) -> bool {
        matches!(self, Kind::Transaction | Kind::Exec { .. })
    }
}

/// A state command (`AUTH`, `HELLO`, `CLIENT SETNAME`…) queued in a transaction: the
/// `at`-th command after MULTI, of kind `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct QueuedState {
    pub at: usize,
    pub key: Vec<u8>,
    pub raw: Bytes,
}

/// One part of an entry: a command for one node.
#[derive(Debug)]
pub(super) struct Part {
    pub command: Bytes,
    /// The slot it is routed by; `None` for a part sent to a chosen node.
    pub slot: Option<u16>,
    /// The node it was last sent to.
    pub node: Option<usize>,
    pub reply: Option<Bytes>,
    pub redirects: u8,
    pub retries: u8,
    /// When it was first retried.
    pub retried_since: Option<Instant>,
    /// It was redirected or is waiting for a retry (its slot's [`Flight`] counts it).
    pub rerouted: bool,
    /// It waits in the parked queue.
    pub parked: bool,
    /// It must run on its node (a primary of a fan-out, a transaction's node): a lost
    /// link is reopened to the same address rather than another node chosen.
    pub pinned: bool,
    /// Where it is read (`[[upstream.read_from]]`); a write's is `Primary`.
    pub read: ReadFrom,
    /// It was last sent to a replica.
    pub on_replica: bool,
}

impl Part {
    pub fn new(command: Bytes, slot: Option<u16>, node: Option<usize>) -> Self {
        Part {
            command,
            slot,
            node,
            reply: None,
            redirects: 0,
            retries: 0,
            retried_since: None,
            rerouted: false,
            parked: false,
            pinned: node.is_some(),
            read: ReadFrom::Primary,
            on_replica: false,
        }
    }
}

/// An entry's parts: inline for the usual one, so a command in one slot costs no
/// allocation of its own.
pub(super) type Parts = smallvec::SmallVec<[Part; 1]>;

/// One command of the session's, in order.
#[derive(Debug)]
pub(super) struct Entry {
    pub parts: Parts,
    pub merge: Merge,
    pub kind: Kind,
    /// The client's reply, once whole.
    pub reply: Option<Bytes>,
    /// Under `CLIENT REPLY OFF/SKIP`: the reply is dropped.
    pub silent: bool,
}

/// Pushes from one node (in RESP2, its subscribed connection's replies) held behind a
/// subscription command's place in the queue until it is given to the client (see
/// `cluster/confirm.rs`).
#[derive(Debug)]
pub(super) struct HeldPushes {
    /// The node they come from.
    pub node: usize,
    /// The subscription command's entry.
    pub seq: u64,
    /// Its confirmations (or error), then what the node pushed after them.
    pub bytes: BytesMut,
}

/// The parts of one slot not answered yet: where they went, how many were rerouted, how
/// many wait to be sent.
#[derive(Debug, Default)]
pub(super) struct Flight {
    pub node: usize,
    pub count: u32,
    pub rerouted: u32,
    pub parked: u32,
}

/// A transaction in progress.
#[derive(Debug)]
pub(super) struct Transaction {
    /// The node it runs on, once chosen.
    pub node: Option<usize>,
    /// MULTI was sent to that node.
    pub multi_sent: bool,
    /// Commands sent after MULTI so far.
    pub queued: usize,
    /// The state commands among them.
    pub state: Vec<QueuedState>,
}

/// The wait for a place under `upstream.pinned_connections` (`upstream.connect_timeout`
/// at most).
pub(super) type PlaceWait = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<PinnedPermit, crate::mux::pinned::PinnedError>>
            + Send,
    >,
>;

/// Where a command takes a client on shared connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sharing {
    /// It runs on the shared connections the client uses.
    Stay,
    /// To the shared connections of this identity: another protocol (`HELLO 2|3`), another
    /// ACL user (`AUTH`, `HELLO v AUTH user password`: once Redis accepts it).
    Identity(LaneIdentity),
    /// To connections of its own while the state it sets lasts (a transaction, WATCH, a
    /// blocking command, subscriptions), then back.
    WhileInUse,
    /// To connections of its own for the rest of its life (state that stays on the
    /// connection: RESET, AUTH, READONLY, CLIENT ID…).
    ForLife,
}

/// An `AUTH` (or `HELLO … AUTH`) in flight under multiplexing, whose reply decides the
/// client's user (`cluster/identity.rs`).
#[derive(Debug)]
pub(super) struct Verification {
    /// The identity the client had before it: back to it unless Redis accepts the `AUTH`.
    pub previous: LaneIdentity,
    /// Redis accepted it.
    pub confirmed: bool,
    /// The client's node connections were closed to take another identity's shared ones
    /// (closed again to go back should Redis refuse).
    pub moved: bool,
}

/// `CLIENT REPLY`, followed by the router (which answers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplyMode {
    On,
    Off,
    SkipNext,
}

/// One client's router; see the module documentation.
pub struct Router {
    pub(super) view: Arc<ClusterView>,
    pub(super) table: Arc<CommandTable>,
    /// The address the client reached the proxy at (the one node a cluster-aware client
    /// sees).
    pub(super) proxy: SocketAddr,
    pub(super) links: Vec<Option<NodeLink>>,
    pub(super) expects: Vec<VecDeque<Expect>>,
    pub(super) addresses: HashMap<String, usize>,
    /// Each node's address, by index.
    pub(super) node_addresses: Vec<String>,
    /// Each node's connection has had `READONLY` (it serves this client's replica reads).
    pub(super) readonly: Vec<bool>,
    /// Where reads go (`[[upstream.read_from]]`, as the last reload left them).
    pub(super) rules: Arc<LiveReadRules>,
    /// This client's place among the clients: which replica of a shard it reads from.
    pub(super) pick: usize,
    /// Replicas that could not serve lately, and since when (passed over by
    /// `prefer-replica`).
    pub(super) down: Vec<(String, Instant)>,
    pub(super) link_nodes: HashMap<u64, usize>,
    next_link: u64,
    pub(super) events_tx: mpsc::Sender<NodeEvent>,
    pub(super) retry_tx: mpsc::UnboundedSender<(u64, u16)>,
    pub(super) entries: VecDeque<Entry>,
    pub(super) first_seq: u64,
    pub(super) out: BytesMut,
    pub(super) positions: Vec<usize>,
    pub(super) flights: HashMap<u16, Flight>,
    pub(super) parked: VecDeque<(u64, u16)>,
    /// The node of the last command sent: where a command naming no key goes.
    pub(super) default_node: Option<usize>,
    pub(super) transaction: Option<Transaction>,
    pub(super) watch_node: Option<usize>,
    /// The client's subscriptions on each node, and the counts it was given (see
    /// `cluster/subscriptions.rs`).
    pub(super) subscriptions: Subscriptions,
    /// The entry number and node of the last subscription command sent.
    pub(super) last_subscription: Option<(u64, usize)>,
    /// Pushes (and, in RESP2, a subscribed connection's replies) held behind subscription
    /// commands not yet given to the client, in the queue's order (see `cluster/confirm.rs`).
    pub(super) held_pushes: VecDeque<HeldPushes>,
    /// The nodes sent an `SSUBSCRIBE` since the last `SUNSUBSCRIBE` naming no channel (or
    /// `RESET`), which such a `SUNSUBSCRIBE` goes to.
    pub(super) shard_nodes: Vec<usize>,
    /// State commands in force (AUTH, HELLO, CLIENT SETNAME…), replayed on new links.
    pub(super) state: Vec<(Vec<u8>, Bytes)>,
    pub(super) protocol: u8,
    pub(super) reply_mode: ReplyMode,
    /// A node holding the connection's state (a transaction, WATCH, subscriptions) was
    /// lost: the router ends, so the session sees its connection lost, as with one Redis.
    pub(super) broken: Option<String>,
    /// Multiplexed: the shared node connections, while the client uses them (`None` once
    /// it moved to connections of its own, and without multiplexing).
    pub(super) shared: Option<Arc<SharedNodes>>,
    /// Multiplexed: the node connections of every client, whether or not this one uses
    /// them now (`None` without multiplexing).
    pub(super) pools: Option<Arc<SharedNodes>>,
    /// The client's identity (ACL user, protocol): multiplexed, that of the shared
    /// connections it uses or goes back to; in both modes its user is the one its
    /// connections of its own are given.
    pub(super) identity: LaneIdentity,
    /// An `AUTH` (or `HELLO … AUTH`) was sent (multiplexed, moving the client to another
    /// user's shared connections): the session is not read until every node it went to
    /// answered it.
    pub(super) verifying: Option<Verification>,
    /// A node refused the client's `AUTH` another node is answering (why), until the
    /// answer comes (see `Router::on_hidden_auth_reply`).
    pub(super) auth_refusal: Option<String>,
    /// An EXEC whose transaction changes connection state is unanswered: the client's
    /// next commands wait, unread, so they run with that state on every node.
    pub(super) exec_changes_state: bool,
    /// Multiplexed, on connections of its own while its state lasts: the shared
    /// connections it goes back to once the state ended and every command is answered
    /// (`None` on shared connections, and for good after a command whose state lasts for
    /// the connection's life).
    pub(super) home: Option<Arc<SharedNodes>>,
    /// A command that moves the client off its shared connections, held (with where it
    /// moves) until every earlier command is answered.
    pub(super) held: Option<(Bytes, Sharing)>,
    /// The client let more replies wait than a router on shared connections holds.
    pub(super) slow: bool,
    /// `upstream.reply_timeout`, applied to the router's own node links ([`super::silence`]).
    pub(super) reply_timeout: Option<Duration>,
    /// Each node's last progress (a reply, or the first reply owed), by index.
    pub(super) progress: Vec<tokio::time::Instant>,
    /// When the links' silence is next checked, while set.
    pub(super) silence_check: Alarm,
    /// Multiplexed, on connections of its own: the client's one place under
    /// `upstream.pinned_connections`, however many nodes it uses.
    pub(super) place: Option<PinnedPermit>,
    /// No place came within `upstream.connect_timeout`: the commands already read get
    /// this error, as the held one did.
    pub(super) refusing: Option<Bytes>,
    /// The client's MONITOR, across the nodes ([`super::monitor`]).
    pub(super) monitoring: Monitoring,
}

impl Router {
    /// A router for a client that reached the proxy at `proxy`, reading by `rules` from
    /// the replica its place `pick` among the clients chooses; on `shared` node
    /// connections when multiplexed; a node silent for `reply_timeout` while it owes
    /// replies is lost.
    pub fn new(
        view: Arc<ClusterView>,
        table: Arc<CommandTable>,
        proxy: SocketAddr,
        rules: Arc<LiveReadRules>,
        pick: usize,
        shared: Option<Arc<SharedNodes>>,
        reply_timeout: Option<Duration>,
    ) -> Self {
        let (events_tx, _) = mpsc::channel(EVENTS);
        let (retry_tx, _) = mpsc::unbounded_channel();
        Router {
            view,
            table,
            proxy,
            links: Vec::new(),
            expects: Vec::new(),
            addresses: HashMap::new(),
            node_addresses: Vec::new(),
            readonly: Vec::new(),
            rules,
            pick,
            down: Vec::new(),
            link_nodes: HashMap::new(),
            next_link: 0,
            events_tx,
            retry_tx,
            entries: VecDeque::new(),
            first_seq: 0,
            out: BytesMut::new(),
            positions: Vec::new(),
            flights: HashMap::new(),
            parked: VecDeque::new(),
            default_node: None,
            transaction: None,
            watch_node: None,
            subscriptions: Subscriptions::default(),
            last_subscription: None,
            held_pushes: VecDeque::new(),
            shard_nodes: Vec::new(),
            state: Vec::new(),
            protocol: 2,
            reply_mode: ReplyMode::On,
            broken: None,
            pools: shared.clone(),
            shared,
            identity: SharedNodes::home(),
            verifying: None,
            auth_refusal: None,
            exec_changes_state: false,
            home: None,
            held: None,
            slow: false,
            reply_timeout,
            progress: Vec::new(),
            silence_check: Alarm::default(),
            place: None,
            refusing: None,
            monitoring: Monitoring::default(),
        }
    }

    /// Serve the session at the other end of `client` until it closes (or a node holding
    /// the connection's state is lost).
    pub async fn run(mut self, client: UnixStream) {
        let (events_tx, mut events) = mpsc::channel(EVENTS);
        let (retry_tx, mut retries) = mpsc::unbounded_channel();
        self.events_tx = events_tx;
        self.retry_tx = retry_tx;
        let (mut reader, writer) = client.into_split();
        let mut scanner = RequestScanner::new(Limits {
            stream_threshold: u64::MAX,
            max_buffered_command: usize::MAX,
            ..Limits::default()
        });
        let mut input = BytesMut::with_capacity(16 * 1024);
        // Multiplexed: the wait for a place under `upstream.pinned_connections`.
        let mut waiting: Option<PlaceWait> = None;
        let mut monitor_check = monitoring::check_interval();
        loop {
            let may_read = self.entries.len() < MAX_ENTRIES
                && self.out.len() < MAX_OUTPUT
                && self.held.is_none()
                && self.verifying.is_none()
                && !self.exec_changes_state;
            // While the session owes reading MAX_OUTPUT bytes, node replies wait; not on
            // shared connections, which other clients use (a client too far behind is
            // let go instead), nor while monitoring (`super::monitor` bounds the lines).
            let monitoring = self.monitoring.is_active();
            let may_take = self.out.len() < MAX_OUTPUT || self.shared.is_some() || monitoring;
            let check = self.arm_silence_check(may_take);
            let silence_check = &mut self.silence_check;
            tokio::select! {
                Some(event) = events.recv(), if may_take => self.on_event(event),
                _ = std::future::poll_fn(|cx| silence_check.poll_rung(cx)), if check => {
                    self.on_silence(&mut events)
                }
                Some((seq, part)) = retries.recv() => self.retry(seq, part),
                _ = monitor_check.tick(), if monitoring => self.follow_monitored_nodes(),
                read = reader.read_buf(&mut input), if may_read => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                    if !self.on_input(&mut scanner, &mut input) {
                        return;
                    }
                }
                ready = writer.writable(), if !self.out.is_empty() => {
                    if ready.is_err() || !self.write_some(&writer) {
                        return;
                    }
                }
                placed = async { waiting.as_mut().expect("armed").await }, if waiting.is_some() => {
                    waiting = None;
                    self.on_place(placed);
                    if !self.on_input(&mut scanner, &mut input) {
                        return;
                    }
                }
            }
            if self.held.is_some() && self.entries.is_empty() && waiting.is_none() {
                match self.place_for_held() {
                    Some(wait) => waiting = Some(wait),
                    None => {
                        self.resume_held();
                        if !self.on_input(&mut scanner, &mut input) {
                            return;
                        }
                    }
                }
            }
            if self.verifying.is_some() && self.entries.is_empty() && !self.owes_hidden_auth() {
                // Redis answered the AUTH: the client's next commands run as it left it.
                self.settle_identity();
                if !self.on_input(&mut scanner, &mut input) {
                    return;
                }
            }
            if self.exec_changes_state && self.entries.is_empty() {
                // EXEC answered: its state is on every node.
                self.exec_changes_state = false;
                if !self.on_input(&mut scanner, &mut input) {
                    return;
                }
            }
            if self.ready_to_return() {
                self.return_to_shared();
            }
            self.check_slow();
            self.check_slow_monitor();
            if let Some(why) = &self.broken {
                tracing::info!(reason = %why, "cluster connection ended");
                // Shared connections never wait for this router again.
                drop(events);
                self.links.clear();
                if self.slow {
                    return;
                }
                // Replies already whole are still given before the end.
                while !self.out.is_empty() {
                    if writer.writable().await.is_err() || !self.write_some(&writer) {
                        return;
                    }
                }
                return;
            }
        }
    }

    /// Write what the session's socket takes now of the replies waiting; false when it
    /// has gone.
    fn write_some(&mut self, writer: &tokio::net::unix::OwnedWriteHalf) -> bool {
        match writer.try_write(&self.out) {
            Ok(n) => {
                let _ = self.out.split_to(n);
                true
            }
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }

    /// Every whole command read; false when the session sent what cannot be read (it
    /// never does: its own scanner checked every command).
    fn on_input(&mut self, scanner: &mut RequestScanner, input: &mut BytesMut) -> bool {
        loop {
            if self.verifying.is_some() || self.exec_changes_state {
                // Read again once Redis answered the AUTH moving the client, or the EXEC
                // changing its state.
                return true;
            }
            match scanner.scan(input) {
                Step::Incomplete => {
                    self.refusing = None;
                    if input.capacity() - input.len() < 4096 {
                        input.reserve(16 * 1024);
                    }
                    return true;
                }
                Step::Empty { end } => {
                    let _ = input.split_to(end);
                    scanner.rebase(end);
                }
                Step::Command { end, inline, .. } => {
                    // The scanner's positions index the command's bytes (or, inline, its
                    // own copy) until `rebase`: read in place, nothing copied.
                    let raw = input.split_to(end).freeze();
                    let source: &[u8] = if inline { scanner.inline_bytes() } else { &raw };
                    let args = Args::new(source, scanner.args());
                    let raw = if inline {
                        let mut out = BytesMut::new();
                        resp::command(&mut out, &args.to_vec());
                        out.freeze()
                    } else {
                        raw.clone()
                    };
                    if let Some(error) = self.refusing.clone() {
                        // Read while the client waited for a place that never came.
                        let silent = self.next_silent();
                        self.answer(error, silent);
                        scanner.rebase(end);
                        continue;
                    }
                    if self.hold_to_move(&raw, args) {
                        // Read again once every earlier command is answered.
                        scanner.rebase(end);
                        return true;
                    }
                    self.on_command(raw, args);
                    scanner.rebase(end);
                }
                Step::Streaming { .. } | Step::Error(_) => return false,
            }
        }
    }

    /// The link index for `address`, opening a link (with the connection's state
    /// replayed) when none is open; `None` past [`MAX_NODES`].
    pub(super) fn node_for(&mut self, address: &str) -> Option<usize> {
        let index = match self.addresses.get(address) {
            Some(&i) => i,
            None if self.links.len() >= MAX_NODES => return None,
            None => {
                self.links.push(None);
                self.progress.push(tokio::time::Instant::now());
                self.expects.push(VecDeque::new());
                self.readonly.push(false);
                self.node_addresses.push(address.to_string());
                self.addresses
                    .insert(address.to_string(), self.links.len() - 1);
                self.links.len() - 1
            }
        };
        if self.links[index].is_none() {
            let id = self.next_link;
            self.next_link += 1;
            let link = match self.shared_link(id, address) {
                Some(link) => link,
                // A shared connection has the identity of its pool, and no other state.
                None => self.own_link(id, index, address),
            };
            self.link_nodes.insert(id, index);
            self.readonly[index] = false;
            self.links[index] = Some(link);
        }
        Some(index)
    }

    /// Send `command` on node `index`'s link, its reply expected as `expect`.
    pub(super) fn send(&mut self, index: usize, command: Bytes, expect: Expect) {
        if let Some(link) = &self.links[index] {
            link.send(command, 1);
            if self.expects[index].is_empty() {
                self.node_progress(index);
            }
            self.expects[index].push_back(expect);
        }
    }

    /// Send `commands` on node `index`'s link in one write (nothing of another client's
    /// between them on a shared connection), their replies expected as `expects`.
    pub(super) fn send_together(&mut self, index: usize, commands: Bytes, expects: &[Expect]) {
        if let Some(link) = &self.links[index] {
            link.send(commands, expects.len() as u32);
            if self.expects[index].is_empty() {
                self.node_progress(index);
            }
            self.expects[index].extend(expects.iter().copied());
        }
    }

    /// Append an entry; returns its number.
    pub(super) fn push_entry(&mut self, entry: Entry) -> u64 {
        self.entries.push_back(entry);
        self.first_seq + self.entries.len() as u64 - 1
    }

    /// An entry answered at once by the proxy.
    pub(super) fn answer(&mut self, reply: Bytes, silent: bool) {
        self.push_entry(Entry {
            parts: Parts::new(),
            merge: Merge::One,
            kind: Kind::Plain,
            reply: Some(reply),
            silent,
        });
        self.release();
    }

    pub(super) fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = seq.checked_sub(self.first_seq)?;
        self.entries.get_mut(usize::try_from(i).ok()?)
    }

    /// Give the session every entry answered at the front of the queue, in order.
    pub(super) fn release(&mut self) {
        while self.entries.front().is_some_and(|e| e.reply.is_some()) {
            let entry = self.entries.pop_front().expect("front");
            let seq = self.first_seq;
            self.first_seq += 1;
            if !entry.silent {
                self.out
                    .extend_from_slice(entry.reply.as_ref().expect("answered"));
            }
            self.on_released(seq, entry.reply.as_ref());
            if let Some(held) = self.take_held(seq) {
                self.subscriptions
                    .give(held.node, &held.bytes, &mut self.out);
            }
        }
    }

    pub(super) fn on_event(&mut self, event: NodeEvent) {
        match event {
            NodeEvent::Reply { link, reply, push } => {
                let Some(&index) = self.link_nodes.get(&link) else {
                    return;
                };
                self.node_progress(index);
                self.on_reply(index, reply, push);
            }
            NodeEvent::Lost {
                link,
                reason,
                connected,
            } => {
                if let Some(index) = self.link_nodes.remove(&link) {
                    self.on_lost(index, &reason, connected);
                }
            }
        }
        self.unpark();
    }

    fn on_reply(&mut self, index: usize, reply: Bytes, push: bool) {
        if self.on_monitor_reply(index, &reply) {
            return;
        }
        if reply.as_ref() == b"+RESET\r\n" {
            self.subscriptions.forget_node(index);
        }
        let pubsub = self.subscribed_reply(index, &reply);
        if push || pubsub.is_some() {
            // Out of band (RESP3, or a RESP2 subscribed connection's confirmation or
            // message): between two whole replies, never inside one; behind a
            // subscription of the node's not given to the client yet.
            let kind = if push { pubsub_frame(&reply) } else { pubsub };
            self.subscriptions.note_said(index, kind);
            if !self.hold_push(index, &reply, kind) {
                self.subscriptions
                    .give_frame(index, &reply, kind, &mut self.out);
            }
            return;
        }
        match self.expects[index].pop_front() {
            Some(Expect::Hidden) => {}
            Some(Expect::HiddenAuth) => self.on_hidden_auth_reply(index, &reply),
            Some(Expect::Part { seq, part }) => self.on_part_reply(seq, part, reply),
            Some(Expect::Confirmations { seq, .. }) => self.refused_subscription(seq, &reply),
            Some(Expect::Unsubscriptions { seq, seen }) => {
                self.unsubscriptions_ended(index, seq, seen, &reply);
            }
            // A reply to a command sent while subscribed, after the subscriptions ended.
            None => self.out.extend_from_slice(&reply),
        }
    }
}
