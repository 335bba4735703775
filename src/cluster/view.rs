//! The proxy's view of a Redis Cluster: the [`SlotMap`] in force, shared by every router,
//! and the task that keeps it current.
//!
//! The map is published whole ([`ArcSwapOption`]): a router routes each command by one map.
//! It is read at start from the URL's seeds, in turn, until one answers; then again
//! periodically ([`REFRESH_EVERY`]), from a node of the current map (a different one each
//! time, so one node's stale view does not stick, the seeds last), and at once when a
//! router asks ([`ClusterView::refresh_soon`]: a node lost, `-CLUSTERDOWN`, a `-MOVED`).
//! Reads are coalesced: one at a time, at least [`MIN_REFRESH_GAP`] apart, so a reshard
//! answering thousands of `-MOVED` costs a few reads. A `-MOVED` is news in itself: the
//! slot is pointed at the named node at once ([`ClusterView::moved`]), before the read.
//!
//! Behind Sentinel with replicas to read from, the same view holds one shard (the primary
//! and its replicas, [`ClusterView::replicated`]): the Sentinel watcher publishes it
//! ([`ClusterView::publish_shard`]) and answers the routers' requests for a read
//! ([`ClusterView::refresh_wanted`]); nothing asks `CLUSTER SHARDS` then.
//!
//! Never carries a client's command: it only asks `CLUSTER SHARDS` (or `SLOTS`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};

use super::reader::read_topology;
use super::topology::{Shard, SlotMap};
use crate::upstream::ConnectGate;

/// How often the topology is read while nothing asks for it.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The shortest gap between two reads of the topology.
pub const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);

/// The slot map in force and what keeps it current.
#[derive(Debug)]
pub struct ClusterView {
    gate: Arc<ConnectGate>,
    seeds: Vec<String>,
    map: ArcSwapOption<SlotMap>,
    /// One more per map published (a read, or a `-MOVED` applied).
    generation: AtomicU64,
    /// Why the last read failed on every node asked (empty after a success).
    last_error: Mutex<String>,
    /// Routers asked for a read.
    wanted: Notify,
    /// Which node of the map the next periodic read asks first.
    turn: AtomicUsize,
    /// A Redis Cluster (slots over shards); false for one shard found through Sentinel.
    sharded: bool,
}

impl ClusterView {
    /// A view with no map yet; `seeds` are the URL's nodes.
    pub fn new(gate: Arc<ConnectGate>, seeds: Vec<String>) -> Self {
        ClusterView {
            gate,
            seeds,
            map: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            last_error: Mutex::new("the cluster has not been asked yet".into()),
            wanted: Notify::new(),
            turn: AtomicUsize::new(0),
            sharded: true,
        }
    }

    /// A view of one shard, a primary and its replicas that another part of the proxy
    /// finds (the Sentinel watcher) and publishes with [`Self::publish_shard`]; node
    /// connections go through `gate`.
    pub fn replicated(gate: Arc<ConnectGate>) -> Self {
        ClusterView {
            sharded: false,
            ..ClusterView::new(gate, Vec::new())
        }
    }

    /// Whether this is a Redis Cluster (slots over shards, cluster commands); false for
    /// one primary and its replicas (behind Sentinel), where every key is the primary's.
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// The primary and replicas of a replicated view are now `shard` (published only when
    /// it changed, so routers see a new generation only then).
    pub fn publish_shard(&self, shard: Shard) {
        let current = self.map.load();
        if current.as_ref().map(|m| m.shards()) != Some(std::slice::from_ref(&shard)) {
            self.publish(SlotMap::one_shard(shard));
        }
        self.last_error.lock().expect("view lock").clear();
    }

    /// Why the shard of a replicated view could not be found (the sentinels' answer, the
    /// clients' error while no map is known).
    pub fn failed(&self, reason: String) {
        *self.last_error.lock().expect("view lock") = reason;
    }

    /// Resolves when a router asked for a read ([`Self::refresh_soon`]): the Sentinel
    /// watcher of a replicated view waits on it.
    pub async fn refresh_wanted(&self) {
        self.wanted.notified().await;
    }

    /// The map in force, if any node has answered yet.
    pub fn map(&self) -> Option<Arc<SlotMap>> {
        self.map.load_full()
    }

    /// One more per map published.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Why no map is known, or the last read failed.
    pub fn last_error(&self) -> String {
        self.last_error.lock().expect("view lock").clone()
    }

    /// The gate node connections are opened through.
    pub fn gate(&self) -> &Arc<ConnectGate> {
        &self.gate
    }

    /// A node answered `-MOVED slot address`: point the slot there now, and read the whole
    /// topology soon (other slots have probably moved with it).
    pub fn moved(&self, slot: u16, address: &str) {
        if let Some(map) = self.map.load_full() {
            if map.shard_of(slot).is_none_or(|s| s.primary != address) {
                self.publish(map.with_slot_moved(slot, address));
            }
        }
        self.refresh_soon();
    }

    /// Ask for a read of the topology (coalesced with any other asked for).
    pub fn refresh_soon(&self) {
        self.wanted.notify_one();
    }

    fn publish(&self, map: SlotMap) {
        self.map.store(Some(Arc::new(map)));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Read the topology once: the nodes of the map in force from the next in turn, then
    /// the seeds; the first that answers gives the map. Returns whether one did.
    pub async fn read_once(&self) -> bool {
        let mut errors = Vec::new();
        for node in self.nodes_to_ask() {
            match read_topology(&self.gate, &node).await {
                Ok((map, _source)) if map.covered() > 0 => {
                    self.publish(map);
                    self.last_error.lock().expect("view lock").clear();
                    return true;
                }
                Ok(_) => errors.push(format!("{node}: no slot is served")),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let why = errors.join("; ");
        tracing::warn!(error = %why, "could not read the cluster's topology");
        metrics::counter!("respguard_cluster_topology_failures_total").increment(1);
        *self.last_error.lock().expect("view lock") = why;
        false
    }

    /// The nodes a read asks, in order, each once: the primaries of the map in force from
    /// the next in turn, then their replicas, then the seeds.
    fn nodes_to_ask(&self) -> Vec<String> {
        let mut nodes: Vec<String> = Vec::new();
        if let Some(map) = self.map.load_full() {
            let shards = map.shards();
            let start = self.turn.fetch_add(1, Ordering::Relaxed);
            for i in 0..shards.len() {
                nodes.push(shards[(start + i) % shards.len()].primary.clone());
            }
            nodes.extend(shards.iter().flat_map(|s| s.replicas.iter().cloned()));
        }
        for seed in &self.seeds {
            if !nodes.contains(seed) {
                nodes.push(seed.clone());
            }
        }
        nodes
    }

    /// Keep the map current until `shutdown` turns true: a read every [`REFRESH_EVERY`],
    /// and soon after a router asks, never two closer than [`MIN_REFRESH_GAP`].
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = self.wanted.notified() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            self.read_once().await;
            tokio::time::sleep(MIN_REFRESH_GAP).await;
        }
    }
}
