//! `MONITOR` through a cluster: the client's router sends `MONITOR` on its own connection
//! to every node it routes commands to (every primary; each shard's replicas too while
//! `[[upstream.read_from]]` rules send reads to replicas), answers the client once every
//! node has (the first node's `+OK`, or the first error), then relays each node's lines as
//! they arrive: each line whole (a node's replies reach the router whole), in each node's
//! order, lines of different nodes in the order the router reads them.
//!
//! While monitoring, the client's other commands go where they always go, so each node
//! answers as one Redis answers a monitoring connection (`PING` runs and shows in the
//! stream; a command on keys gets Redis's `-ERR Replica can't interact with the
//! keyspace`); a second `MONITOR` gets no reply, as from Redis. `RESET` goes to every node
//! and its `+RESET` reaches the client once every node's monitoring ended, so no line
//! follows it; `QUIT` is answered `+OK` by the router, and no line follows it either.
//!
//! A primary a later slot map adds, or one whose connection was lost, is monitored again
//! at the next check ([`CHECK_EVERY`]); meanwhile the other nodes' lines keep flowing. A
//! node the map no longer has the router monitor (a demoted primary) is closed. A
//! replica's stream leaves out the lines of its replication link (their client is its
//! primary's address), so each write shows once, from its primary.
//!
//! Lines are never held without a bound: the router keeps taking them (a node's monitor
//! output would otherwise grow in Redis without a limit, monitors being normal clients),
//! and a client that lets more than `proxy.output_buffer` wait for longer than
//! `proxy.output_buffer_soft_time`, or more than `proxy.output_buffer_hard` at once, is
//! disconnected with the reason logged and counted
//! (`respguard_slow_readers_disconnected_total`); the limit is checked as lines arrive and
//! at each [`CHECK_EVERY`].
//!
//! [`CHECK_EVERY`]: super::monitoring::CHECK_EVERY

use bytes::Bytes;
use tokio::time::Instant;

use super::monitoring::{is_line, line_client, Monitoring};
use super::router::{Expect, Kind, Part, Parts, Router};
use super::spread::Merge;
use crate::mux::{SlowReader, UnreadLimit};
use crate::resp;

impl Router {
    /// The same router, a monitoring client let go past `limit` of unread lines.
    pub fn with_output_limit(mut self, limit: UnreadLimit) -> Self {
        self.monitoring = Monitoring::new(limit);
        self
    }

    /// The client's `MONITOR`: sent to every node to monitor as one entry, answered with
    /// the first node's reply once all have answered (the first error, if any). Ignored
    /// while monitoring, as Redis ignores it.
    pub(super) fn monitor(&mut self, raw: Bytes, silent: bool) {
        if self.monitoring.active {
            return;
        }
        let Some(nodes) = self.nodes_to_monitor() else {
            return self.answer(self.no_node(), silent);
        };
        let mut parts = Parts::new();
        for (index, _) in &nodes {
            parts.push(Part::new(raw.clone(), None, Some(*index)));
        }
        self.monitoring.active = true;
        self.monitoring.quitting = false;
        for (index, primary) in nodes {
            self.stream_from(index, primary);
        }
        let seq = self.first_seq + self.entries.len() as u64;
        self.monitoring.confirming = Some(seq);
        self.parts_entry(parts, Merge::Same, Kind::Plain, silent);
    }

    /// Every node to monitor, opened: each primary, and while read rules send reads to
    /// replicas each replica (with its primary's address); `None` when no node is known.
    fn nodes_to_monitor(&mut self) -> Option<Vec<(usize, Option<String>)>> {
        let map = self.view.map()?;
        let replicas = !self.rules.current().is_empty();
        let mut nodes = Vec::new();
        for shard in map.shards() {
            nodes.push((self.node_for(&shard.primary)?, None));
            if replicas {
                for replica in &shard.replicas {
                    nodes.push((self.node_for(replica)?, Some(shard.primary.clone())));
                }
            }
        }
        Some(nodes)
    }

    /// Note that node `index`'s link carries lines from now (a replica's, without its
    /// `primary`'s).
    fn stream_from(&mut self, index: usize, primary: Option<String>) {
        if !self.monitoring.streaming.contains(&index) {
            self.monitoring.streaming.push(index);
        }
        self.monitoring.replicas.retain(|(i, _)| *i != index);
        if let Some(primary) = primary {
            self.monitoring.replicas.push((index, primary));
        }
    }

    /// Whether `reply` from node `index` is a MONITOR line (then relayed, held or dropped
    /// here). A node's `+RESET` ends its lines.
    pub(super) fn on_monitor_reply(&mut self, index: usize, reply: &Bytes) -> bool {
        if !self.monitoring.streaming.contains(&index) {
            return false;
        }
        if !is_line(reply) {
            // Unless a MONITOR sent after the RESET follows it on the link.
            if &reply[..] == b"+RESET\r\n" && !self.monitoring.active {
                self.monitoring.forget_node(index);
            }
            return false;
        }
        if self.monitoring.quitting || self.is_replication_line(index, reply) {
            return true;
        }
        if self.monitoring.confirming.is_some() {
            self.monitoring.held.extend_from_slice(reply);
        } else {
            self.out.extend_from_slice(reply);
        }
        true
    }

    /// Whether a line of replica `index` is its replication link's (its client is the
    /// primary's address).
    fn is_replication_line(&self, index: usize, line: &[u8]) -> bool {
        let Some((_, primary)) = self.monitoring.replicas.iter().find(|(i, _)| *i == index) else {
            return false;
        };
        line_client(line) == Some(primary.as_bytes())
    }

    /// The entry numbered `seq` reached the client with `reply`: after the MONITOR's, its
    /// held lines follow; after its error, monitoring ends (the nodes that accepted it are
    /// closed, so no line reaches a client told MONITOR failed).
    pub(super) fn on_released(&mut self, seq: u64, reply: Option<&Bytes>) {
        if self.monitoring.confirming != Some(seq) {
            return;
        }
        self.monitoring.confirming = None;
        let held = self.monitoring.held.split();
        if reply.is_some_and(|r| r.first() == Some(&b'-')) {
            self.monitoring.active = false;
            for index in std::mem::take(&mut self.monitoring.streaming) {
                self.close_link(index, "MONITOR was refused by another node");
            }
            self.monitoring.replicas.clear();
            return;
        }
        self.out.extend_from_slice(&held);
    }

    /// `RESET` while monitoring: sent to every node the client uses as one entry, so its
    /// `+RESET` reaches the client after every node's last line.
    pub(super) fn reset_monitoring(&mut self, raw: Bytes, silent: bool) {
        self.monitoring.active = false;
        self.reset_every_node(raw, silent);
    }

    /// `QUIT` while monitoring: answered `+OK` in its turn; no line follows it.
    pub(super) fn quit_monitoring(&mut self, silent: bool) {
        self.monitoring.active = false;
        self.monitoring.quitting = true;
        self.answer(resp::simple("OK"), silent);
    }

    /// While monitoring: every node that should be monitored is (a primary a newer slot
    /// map added, one whose link was lost), its `+OK` hidden.
    pub(super) fn follow_monitored_nodes(&mut self) {
        if !self.monitoring.active || self.monitoring.confirming.is_some() {
            return;
        }
        let Some(nodes) = self.nodes_to_monitor() else {
            return;
        };
        for (index, primary) in &nodes {
            if !self.monitoring.streaming.contains(index) {
                tracing::debug!(node = %self.node_addresses[*index], "monitoring another cluster node");
                self.send(*index, resp::simple_command(b"MONITOR"), Expect::Hidden);
            }
            // A replica's primary may have changed (a failover): its filter follows.
            self.stream_from(*index, primary.clone());
        }
        // A node monitored no more (a primary demoted by a failover) would show its new
        // primary's writes a second time: its connection closes once it owes nothing.
        let gone: Vec<usize> = (self.monitoring.streaming.iter())
            .filter(|i| !nodes.iter().any(|(n, _)| n == *i))
            .copied()
            .collect();
        for index in gone {
            if self.expects[index].is_empty() {
                tracing::debug!(node = %self.node_addresses[index], "no longer monitoring a cluster node");
                self.close_link(index, "no longer monitored");
            }
        }
    }

    /// While monitoring, a client that leaves its lines unread past the output limit is
    /// let go (the reason logged when the router ends).
    pub(super) fn check_slow_monitor(&mut self) {
        if !self.monitoring.is_active() || self.broken.is_some() {
            return;
        }
        let limit = self.monitoring.limit;
        let unread = self.out.len() + self.monitoring.held.len();
        if unread <= limit.soft {
            self.monitoring.above_since = None;
            return;
        }
        let now = Instant::now();
        let since = *self.monitoring.above_since.get_or_insert(now);
        let why = limit.judge(unread, since, now).map(|slow| match slow {
            SlowReader::Hard => format!(
                "the monitoring client let more than {} bytes wait (proxy.output_buffer_hard)",
                limit.hard
            ),
            SlowReader::SoftTime => format!(
                "the monitoring client let more than {} bytes wait for {:?} (proxy.output_buffer, output_buffer_soft_time)",
                limit.soft, limit.soft_time
            ),
        });
        if let Some(why) = why {
            metrics::counter!("respguard_slow_readers_disconnected_total").increment(1);
            tracing::info!(reason = %why, "monitoring client disconnected");
            self.slow = true;
            self.broken = Some(why);
        }
    }

    /// Close node `index`'s link as lost: what it owed is answered with the error.
    fn close_link(&mut self, index: usize, reason: &str) {
        self.link_nodes.retain(|_, &mut i| i != index);
        if self.links[index].is_some() {
            self.on_lost(index, reason, true);
        }
    }
}
