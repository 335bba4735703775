//! A Redis Cluster upstream (`redis-cluster://`): each client's commands routed by slot
//! over connections to the cluster's nodes, so that an application unaware of the cluster
//! sees one Redis.
//!
//! - [`slot`]: a key's hash slot (CRC16 and the hash-tag rule), as `CLUSTER KEYSLOT`;
//! - [`topology`]: the [`topology::SlotMap`], which shard serves each slot, read from a
//!   `CLUSTER SHARDS` or `CLUSTER SLOTS` reply ([`frame`] reads those replies, bounded);
//! - [`reader`]: one node asked for its topology through the [`crate::upstream::ConnectGate`];
//! - [`view`]: the map in force, shared, and the task keeping it current;
//! - [`route`]: where a command goes, from the command table's keys: keyless, one slot,
//!   or across slots; [`spread`]: commands split per slot or sent to every primary, and
//!   their replies merged; [`local`]: the `CLUSTER` questions the proxy answers itself;
//! - [`router`] and [`dispatch`]: one client's router, a task at the other end of the
//!   session's upstream socket ([`args`]: the commands it reads, in place), and [`node`]:
//!   its connection to one node; [`shared`] and [`sharing`]: multiplexed, the node
//!   connections routers share, and the moves of a client holding state off them and
//!   back; [`identity`]: multiplexed, the ACL user a client runs as after `AUTH`;
//!   [`silence`]: `upstream.reply_timeout` on a router's own node links; [`monitor`]:
//!   `MONITOR` on every node, its lines relayed ([`monitoring`]: its state);
//!   [`confirm`] and [`subscriptions`]: a client's subscriptions over the nodes, answered
//!   in its order and counted as one Redis counts;
//! - [`read_rules`] and [`replica`]: which reads go to a replica (`[[upstream.read_from]]`)
//!   and which replica.
//!
//! The session does not know it talks to a cluster: [`ClusterUpstream::connect`] gives it
//! a socket, and the router answers on it as one Redis would. Guide: `docs/cluster.md`.
//! Imports `command`, `upstream`, `scanner`, `transport`, `resp`, `config` (the read
//! rules' shape), `guard::pattern` (their key patterns) and `mux` (multiplexed: the order
//! router, the identities and their checked handshake, the shared connections' name);
//! never a session, a lane or a guard.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;

use crate::command::CommandTable;
use crate::mux::UnreadLimit;
use crate::transport::Stream;
use crate::upstream::{ConnectGate, UpstreamError, UpstreamSlot};

pub mod args;
pub mod confirm;
pub mod delivery;
pub mod dispatch;
pub mod event;
pub mod frame;
pub mod identity;
pub mod idle;
pub mod local;
pub mod monitor;
pub mod monitoring;
pub mod node;
pub mod read_rules;
pub mod reader;
pub mod replica;
pub mod route;
pub mod router;
pub mod shared;
pub mod sharing;
pub mod silence;
pub mod slot;
pub mod spread;
pub mod state;
pub mod subscriptions;
pub mod topology;
pub mod view;

/// The cluster as the sessions reach it: the shared view and what each router needs.
#[derive(Debug)]
pub struct ClusterUpstream {
    view: Arc<view::ClusterView>,
    table: Arc<CommandTable>,
    gate: Arc<ConnectGate>,
    /// The read rules in force, which a reload replaces ([`Self::read_rules`]).
    rules: Arc<read_rules::LiveReadRules>,
    /// No read on a replica: the proxy's own questions.
    primaries_only: Arc<read_rules::LiveReadRules>,
    /// Multiplexed: the shared node connections the clients' routers use.
    shared: Option<Arc<shared::SharedNodes>>,
    /// `upstream.reply_timeout`: longest silence of a node owing a router replies.
    reply_timeout: Option<Duration>,
    /// Routers started: each client's place, which spreads clients over a shard's
    /// replicas.
    clients: AtomicUsize,
    /// How much a monitoring client may leave unread (`proxy.output_buffer`…).
    output_limit: UnreadLimit,
}

impl ClusterUpstream {
    /// The upstream for `view`'s cluster, routing by `table`'s key positions, reading
    /// from replicas as `rules` say; with `shared` (multiplexed), clients share node
    /// connections; a node link silent for `reply_timeout` while it owes replies is lost.
    pub fn new(
        view: Arc<view::ClusterView>,
        table: Arc<CommandTable>,
        rules: read_rules::ReadRules,
        shared: Option<shared::SharedSettings>,
        reply_timeout: Option<Duration>,
    ) -> Self {
        let gate = Arc::clone(view.gate());
        let shared =
            shared.map(|settings| Arc::new(shared::SharedNodes::new(Arc::clone(&gate), settings)));
        ClusterUpstream {
            view,
            table,
            gate,
            rules: Arc::new(read_rules::LiveReadRules::new(rules)),
            primaries_only: Arc::default(),
            shared,
            reply_timeout,
            clients: AtomicUsize::new(0),
            output_limit: UnreadLimit::default(),
        }
    }

    /// The same upstream, a monitoring client let go past `limit` of unread lines.
    pub fn with_output_limit(mut self, limit: UnreadLimit) -> Self {
        self.output_limit = limit;
        self
    }

    /// The read rules in force, for a reload to replace.
    pub fn read_rules(&self) -> &Arc<read_rules::LiveReadRules> {
        &self.rules
    }

    /// The view of the cluster's topology.
    pub fn view(&self) -> &Arc<view::ClusterView> {
        &self.view
    }

    /// A connection for one client that reached the proxy at `proxy`: one end of a socket
    /// pair, a router task at the other. Refused while no node has described the cluster
    /// (the reason says why), or past `upstream.max_connections`.
    pub fn connect(&self, proxy: SocketAddr) -> Result<(Stream, UpstreamSlot), UpstreamError> {
        self.connect_with(proxy, Arc::clone(&self.rules), self.shared.clone())
    }

    /// [`Self::connect`] for the proxy's own questions (queue depths): every read on a
    /// primary, whatever `[[upstream.read_from]]` says, so a replica's lag never shows.
    pub fn connect_to_primaries(
        &self,
        proxy: SocketAddr,
    ) -> Result<(Stream, UpstreamSlot), UpstreamError> {
        self.connect_with(proxy, Arc::clone(&self.primaries_only), None)
    }

    fn connect_with(
        &self,
        proxy: SocketAddr,
        rules: Arc<read_rules::LiveReadRules>,
        shared: Option<Arc<shared::SharedNodes>>,
    ) -> Result<(Stream, UpstreamSlot), UpstreamError> {
        if self.view.map().is_none() {
            return Err(match self.view.is_sharded() {
                true => UpstreamError::Unreachable {
                    address: self.gate.address(),
                    reason: format!("no cluster node answered: {}", self.view.last_error()),
                },
                // Behind Sentinel: the sentinels' answer, as without replicas.
                false => UpstreamError::NoPrimary {
                    address: self.gate.address(),
                    reason: self.view.last_error(),
                },
            });
        }
        let slot = self.gate.admit()?;
        let (session_end, router_end) =
            UnixStream::pair().map_err(|e| UpstreamError::Unreachable {
                address: self.gate.address(),
                reason: e.to_string(),
            })?;
        let pick = self.clients.fetch_add(1, Ordering::Relaxed);
        let router = router::Router::new(
            Arc::clone(&self.view),
            Arc::clone(&self.table),
            proxy,
            rules,
            pick,
            shared,
            self.reply_timeout,
        )
        .with_output_limit(self.output_limit);
        tokio::spawn(router.run(router_end));
        Ok((Stream::Local(session_end), slot))
    }
}
