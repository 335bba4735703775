//! Getting each part of a command answered: sent to its node (or parked behind earlier
//! parts of its slot), `-MOVED` and `-ASK` followed, `-TRYAGAIN`, an unreachable node and
//! an uncovered slot retried within [`super::router::RETRY_WINDOW`], and the entry's reply
//! merged once every part has its answer.

use std::time::Instant;

use bytes::Bytes;

use super::read_rules::replica_unready;
use super::router::{
    Expect, Flight, Kind, Router, FIRST_RETRY_PAUSE, MAX_REDIRECTS, MAX_RETRY_PAUSE, RETRY_WINDOW,
};
use super::spread;
use crate::config::ReadFrom;
use crate::resp;

/// Redis Cluster's own answer for a slot nobody serves.
const CLUSTERDOWN: &str = "CLUSTERDOWN Hash slot not served";

/// Why a part has nowhere to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoTarget {
    /// Its slot is served by no primary now.
    Uncovered,
    /// No node is known, or too many are.
    NoNode,
}

/// A redirection a node answered instead of running the command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Redirect<'a> {
    Moved {
        slot: u16,
        address: &'a str,
    },
    Ask {
        slot: u16,
        address: &'a str,
    },
    TryAgain,
    ClusterDown,
    /// `-READONLY`, from a primary demoted behind Sentinel (a read-only replica refusing a
    /// write); not a redirection in a cluster, where a replica answers `-MOVED`.
    ReadOnly,
}

impl<'a> Redirect<'a> {
    /// The metric label: `moved`, `ask`, `tryagain` or `clusterdown`.
    fn kind(&self) -> &'static str {
        match self {
            Redirect::Moved { .. } => "moved",
            Redirect::Ask { .. } => "ask",
            Redirect::TryAgain => "tryagain",
            Redirect::ClusterDown => "clusterdown",
            Redirect::ReadOnly => "readonly",
        }
    }

    pub(super) fn parse(reply: &'a [u8]) -> Option<Self> {
        let line = std::str::from_utf8(reply.strip_prefix(b"-")?.strip_suffix(b"\r\n")?).ok()?;
        let mut words = line.split(' ');
        let word = words.next()?;
        let mut target = || -> Option<(u16, &'a str)> {
            let slot = words.next()?.parse().ok()?;
            Some((slot, words.next()?))
        };
        match word {
            "MOVED" => target().map(|(slot, address)| Redirect::Moved { slot, address }),
            "ASK" => target().map(|(slot, address)| Redirect::Ask { slot, address }),
            "TRYAGAIN" => Some(Redirect::TryAgain),
            "CLUSTERDOWN" => Some(Redirect::ClusterDown),
            "READONLY" => Some(Redirect::ReadOnly),
            _ => None,
        }
    }
}

impl Router {
    /// Where part `part` of `seq` goes now: its slot's primary (or, for a read the rules
    /// send to a replica, the client's replica of that shard when one is known), else its
    /// node (a keyless part whose node is gone goes to the default node). Why nowhere,
    /// else.
    pub(super) fn target_of(&mut self, seq: u64, part: u16) -> Result<usize, NoTarget> {
        let p = &self.entry_mut(seq).expect("entry").parts[usize::from(part)];
        let (slot, node, pinned, read) = (p.slot, p.node, p.pinned, p.read);
        match slot {
            Some(slot) => {
                let map = self.view.map().ok_or(NoTarget::NoNode)?;
                let shard = map.shard_of(slot).ok_or(NoTarget::Uncovered)?;
                let replica = match read {
                    ReadFrom::Primary => None,
                    _ => self.replica_for(shard, read),
                };
                let index = self
                    .node_for(replica.as_deref().unwrap_or(&shard.primary))
                    .ok_or(NoTarget::NoNode)?;
                if replica.is_some() {
                    self.ensure_readonly(index);
                }
                self.entry_mut(seq).expect("entry").parts[usize::from(part)].on_replica =
                    replica.is_some();
                Ok(index)
            }
            None => match node.filter(|&n| self.links[n].is_some()) {
                Some(n) => Ok(n),
                None if pinned => {
                    let address = node.and_then(|n| self.address_of(n));
                    address
                        .and_then(|a| self.node_for(&a))
                        .ok_or(NoTarget::NoNode)
                }
                None => self.default_index().ok_or(NoTarget::NoNode),
            },
        }
    }

    /// The address of node `index`.
    pub(super) fn address_of(&self, index: usize) -> Option<String> {
        self.node_addresses.get(index).cloned()
    }

    /// Send a part the first time: at once, unless earlier parts of its slot are being
    /// rerouted or are in flight elsewhere (then it waits its turn, parked).
    pub(super) fn send_first(&mut self, seq: u64, part: u16) {
        let slot = self.entry_mut(seq).expect("entry").parts[usize::from(part)].slot;
        let target = match self.target_of(seq, part) {
            Ok(t) => t,
            Err(why) => {
                // Counted in its slot's flight as if sent: retried (an uncovered slot may be
                // between a failed primary and its replica) or answered, it lands once.
                if let Some(slot) = slot {
                    self.flights.entry(slot).or_default().count += 1;
                }
                return self.no_target(seq, part, why);
            }
        };
        if let Some(slot) = slot {
            let f = self.flights.entry(slot).or_insert_with(|| Flight {
                node: target,
                ..Flight::default()
            });
            if f.count > 0 && (f.node != target || f.rerouted > 0 || f.parked > 0) {
                f.parked += 1;
                self.entry_mut(seq).expect("entry").parts[usize::from(part)].parked = true;
                self.parked.push_back((seq, part));
                return;
            }
            if f.count == 0 {
                f.node = target;
            }
            f.count += 1;
        }
        self.put(seq, part, target, false);
    }

    /// Write part `part` of `seq` on node `target` (after `ASKING` when `asking`).
    pub(super) fn put(&mut self, seq: u64, part: u16, target: usize, asking: bool) {
        let entry = self.entry_mut(seq).expect("entry");
        let kind = entry.kind.clone();
        let p = &mut entry.parts[usize::from(part)];
        p.node = Some(target);
        let command = p.command.clone();
        if asking {
            // One write: on a shared connection nothing of another client's may come
            // between ASKING (a one-command flag) and the command it is for.
            let mut both = bytes::BytesMut::from(&resp::simple_command(b"ASKING")[..]);
            both.extend_from_slice(&command);
            self.send_together(
                target,
                both.freeze(),
                &[Expect::Hidden, Expect::Part { seq, part }],
            );
        } else {
            self.send(target, command, Expect::Part { seq, part });
        }
        match kind {
            Kind::Watch => self.watch_node = Some(target),
            Kind::Plain if p_is_keyed(self, seq, part) => self.default_node = Some(target),
            _ => {}
        }
    }

    /// Send a part again: to `to` (a redirection's node, with `ASKING` for `-ASK`), or
    /// where the map now says.
    pub(super) fn resend(&mut self, seq: u64, part: u16, to: Option<(&str, bool)>) {
        let target = match to {
            Some((address, _)) => {
                // A redirection names the node serving the slot: a primary.
                self.entry_mut(seq).expect("entry").parts[usize::from(part)].on_replica = false;
                self.node_for(address).ok_or(NoTarget::NoNode)
            }
            None => self.target_of(seq, part),
        };
        match target {
            Ok(t) => self.put(seq, part, t, to.is_some_and(|(_, asking)| asking)),
            Err(why) => self.no_target(seq, part, why),
        }
    }

    /// A part that cannot be sent now: an uncovered slot waits for the topology to change
    /// (within the retry window), anything else is answered with the reason.
    pub(super) fn no_target(&mut self, seq: u64, part: u16, why: NoTarget) {
        if why == NoTarget::Uncovered {
            self.view.refresh_soon();
            if self.may_retry(seq, part) {
                return;
            }
        }
        let error = match why {
            NoTarget::Uncovered => resp::error(CLUSTERDOWN),
            NoTarget::NoNode => self.no_node(),
        };
        self.finish_part(seq, part, error);
        self.release();
    }

    /// A node's reply to part `part` of `seq`: a redirection followed, else the answer.
    pub(super) fn on_part_reply(&mut self, seq: u64, part: u16, reply: Bytes) {
        if let Some(refusal) = self.refusal_while_subscribed(seq, part, &reply) {
            self.finish_part(seq, part, refusal);
            return self.release();
        }
        let Some(entry) = self.entry_mut(seq) else {
            return;
        };
        if !entry.kind.is_transaction() {
            // `-READONLY` redirects only behind Sentinel (see `Redirect::ReadOnly`).
            let redirect = Redirect::parse(&reply)
                .filter(|r| *r != Redirect::ReadOnly || !self.view.is_sharded());
            if let Some(r) = &redirect {
                metrics::counter!("respguard_cluster_redirections_total", "kind" => r.kind())
                    .increment(1);
            }
            match redirect {
                Some(Redirect::Moved { slot, address }) => {
                    self.view.moved(slot, address);
                    if self.redirect(seq, part) {
                        return self.resend(seq, part, Some((address, false)));
                    }
                }
                Some(Redirect::Ask { address, .. }) if self.redirect(seq, part) => {
                    return self.resend(seq, part, Some((address, true)));
                }
                Some(Redirect::TryAgain) if self.may_retry(seq, part) => return,
                Some(Redirect::ClusterDown) => self.view.refresh_soon(),
                // Behind Sentinel, a primary demoted before the proxy heard of it: the
                // command did not run; sent again to the primary the sentinels name.
                Some(Redirect::ReadOnly) if self.may_retry(seq, part) => {
                    self.view.refresh_soon();
                    return;
                }
                None if replica_unready(&reply) && self.may_fall_back(seq, part) => {
                    let node = self.entry_mut(seq).expect("entry").parts[usize::from(part)].node;
                    if let Some(address) = node.and_then(|n| self.address_of(n)) {
                        self.mark_down(&address);
                    }
                    return self.fall_back(seq, part, reply);
                }
                None if reply.starts_with(b"-NOSCRIPT") && self.on_replica(seq, part) => {
                    // `SCRIPT LOAD` reaches primaries only (Redis does not replicate it):
                    // the read-only script runs on the primary, which has it.
                    return self.read_on_primary(seq, part, reply);
                }
                _ => {}
            }
        }
        self.finish_part(seq, part, reply);
        self.release();
    }

    /// Count one redirection of a part; false when it has had its share.
    pub(super) fn redirect(&mut self, seq: u64, part: u16) -> bool {
        let p = &mut self.entry_mut(seq).expect("entry").parts[usize::from(part)];
        if p.redirects >= MAX_REDIRECTS {
            return false;
        }
        p.redirects += 1;
        let first = !p.rerouted;
        p.rerouted = true;
        if let (true, Some(slot)) = (first, p.slot) {
            if let Some(f) = self.flights.get_mut(&slot) {
                f.rerouted += 1;
            }
        }
        true
    }

    /// Send the parked parts whose slot is clear now, in order.
    pub(super) fn unpark(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let mut blocked: Vec<u16> = Vec::new();
        let waiting = std::mem::take(&mut self.parked);
        for (seq, part) in waiting {
            let slot = self.entry_mut(seq).expect("entry").parts[usize::from(part)]
                .slot
                .expect("a parked part has a slot");
            if blocked.contains(&slot) {
                self.parked.push_back((seq, part));
                continue;
            }
            let target = match self.target_of(seq, part) {
                Ok(t) => t,
                Err(why) => {
                    self.unpark_one(slot, seq, part);
                    if let Some(f) = self.flights.get_mut(&slot) {
                        f.count += 1;
                    }
                    self.no_target(seq, part, why);
                    continue;
                }
            };
            let f = self.flights.get(&slot).expect("a parked part's flight");
            if f.count == 0 || (f.node == target && f.rerouted == 0) {
                self.unpark_one(slot, seq, part);
                let f = self.flights.get_mut(&slot).expect("flight");
                if f.count == 0 {
                    f.node = target;
                }
                f.count += 1;
                self.put(seq, part, target, false);
            } else {
                blocked.push(slot);
                self.parked.push_back((seq, part));
            }
        }
        self.release();
    }

    pub(super) fn unpark_one(&mut self, slot: u16, seq: u64, part: u16) {
        self.entry_mut(seq).expect("entry").parts[usize::from(part)].parked = false;
        if let Some(f) = self.flights.get_mut(&slot) {
            f.parked -= 1;
        }
    }

    /// Schedule part `part` of `seq` to be sent again after a pause, if it has retries
    /// left; false when it has not.
    pub(super) fn may_retry(&mut self, seq: u64, part: u16) -> bool {
        let Some(entry) = self.entry_mut(seq) else {
            return false;
        };
        if entry.kind.is_transaction() {
            return false;
        }
        let p = &mut entry.parts[usize::from(part)];
        let since = *p.retried_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= RETRY_WINDOW {
            return false;
        }
        p.retries = p.retries.saturating_add(1);
        let pause = FIRST_RETRY_PAUSE
            .saturating_mul(1 << (p.retries - 1).min(16))
            .min(MAX_RETRY_PAUSE);
        let first_reroute = !p.rerouted;
        p.rerouted = true;
        let slot = p.slot;
        if first_reroute {
            if let Some(f) = slot.and_then(|s| self.flights.get_mut(&s)) {
                f.rerouted += 1;
            }
        }
        let tx = self.retry_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            let _ = tx.send((seq, part));
        });
        true
    }

    /// A retry's pause ended: send the part again, where the map now says.
    pub(super) fn retry(&mut self, seq: u64, part: u16) {
        if self
            .entry_mut(seq)
            .is_some_and(|e| e.parts[usize::from(part)].reply.is_none())
        {
            self.resend(seq, part, None);
        }
        self.unpark();
    }

    /// Part `part` of `seq` is answered for good: record it, and the entry's reply when
    /// every part is.
    pub(super) fn finish_part(&mut self, seq: u64, part: u16, reply: Bytes) {
        let Some(entry) = self.entry_mut(seq) else {
            return;
        };
        let p = &mut entry.parts[usize::from(part)];
        let (slot, rerouted) = (p.slot, p.rerouted);
        p.reply = Some(reply);
        if let Some(slot) = slot {
            self.land(slot, rerouted);
        }
        let entry = self.entry_mut(seq).expect("entry");
        if entry.parts.iter().all(|p| p.reply.is_some()) {
            let replies: smallvec::SmallVec<[Bytes; 1]> = entry
                .parts
                .iter_mut()
                .map(|p| p.reply.take().expect("answered"))
                .collect();
            let reply = spread::merge(&entry.merge, &replies);
            let kind = entry.kind.clone();
            entry.reply = Some(reply.clone());
            self.after_reply(&kind, &reply);
        }
    }

    /// One part of `slot` landed: its flight counts one less.
    pub(super) fn land(&mut self, slot: u16, rerouted: bool) {
        if let Some(f) = self.flights.get_mut(&slot) {
            f.count = f.count.saturating_sub(1);
            if rerouted {
                f.rerouted = f.rerouted.saturating_sub(1);
            }
            if f.count == 0 && f.parked == 0 {
                self.flights.remove(&slot);
            }
        }
    }

    /// The node's link ended: its parts in flight get the error (or, when the link never
    /// connected, are retried once the topology is read again).
    pub(super) fn on_lost(&mut self, index: usize, reason: &str, connected: bool) {
        let address = self.links[index]
            .take()
            .map(|l| l.address.clone())
            .unwrap_or_default();
        self.view.refresh_soon();
        self.monitoring.forget_node(index);
        if self.default_node == Some(index) {
            self.default_node = None;
        }
        let holds_state = self.subscriptions.subscribed(index)
            || self.watch_node == Some(index)
            || self
                .transaction
                .as_ref()
                .is_some_and(|t| t.node == Some(index));
        self.subscriptions.forget_node(index);
        if holds_state && connected {
            self.broken = Some(format!(
                "the connection to cluster node {address}, which held the client's transaction or subscriptions, was lost: {reason}"
            ));
        }
        let error = resp::error(&format!(
            "ERR respguard: connection to cluster node {address} lost ({reason})"
        ));
        if self.readonly[index] {
            self.mark_down(&address);
        }
        let owed: Vec<Expect> = self.expects[index].drain(..).collect();
        for expect in owed {
            let (seq, part) = match expect {
                Expect::Part { seq, part } => (seq, part),
                Expect::Confirmations { seq, .. } | Expect::Unsubscriptions { seq, .. } => {
                    self.refused_subscription(seq, &error);
                    continue;
                }
                Expect::Hidden | Expect::HiddenAuth => continue,
            };
            if self.may_fall_back(seq, part) {
                self.fall_back(seq, part, error.clone());
                continue;
            }
            if !connected && self.may_retry(seq, part) {
                continue;
            }
            self.finish_part(seq, part, error.clone());
        }
        self.release();
    }
}

/// Whether a part is routed by a key to its primary (its node then becomes the default
/// node, so `WAIT` after a write asks the node that took it; a replica never does).
fn p_is_keyed(router: &mut Router, seq: u64, part: u16) -> bool {
    router.entry_mut(seq).is_some_and(|e| {
        let p = &e.parts[usize::from(part)];
        p.slot.is_some() && !p.on_replica
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_are_read_from_redis_s_words() {
        assert_eq!(
            Redirect::parse(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved {
                slot: 3999,
                address: "127.0.0.1:6381"
            })
        );
        assert_eq!(
            Redirect::parse(b"-ASK 3999 10.0.0.2:7000\r\n"),
            Some(Redirect::Ask {
                slot: 3999,
                address: "10.0.0.2:7000"
            })
        );
        assert_eq!(
            Redirect::parse(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(
            Redirect::parse(b"-CLUSTERDOWN The cluster is down\r\n"),
            Some(Redirect::ClusterDown)
        );
        assert_eq!(
            Redirect::parse(b"-READONLY You can't write against a read only replica.\r\n"),
            Some(Redirect::ReadOnly)
        );
        assert_eq!(Redirect::parse(b"-ERR MOVED 1 a:1\r\n"), None);
        assert_eq!(Redirect::parse(b"-MOVED x a:1\r\n"), None);
        assert_eq!(Redirect::parse(b"+MOVED 1 a:1\r\n"), None);
    }
}
