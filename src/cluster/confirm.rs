//! Subscriptions kept in the client's order across nodes.
//!
//! A subscription command's answer is one confirmation per channel (or, refused, one
//! error reply): in RESP3 a push each, and the client goes on sending any command; in
//! RESP2 a reply each, taken as a push is while the node's connection is subscribed
//! (`cluster/subscriptions.rs`), and the client may send only subscription commands,
//! `PING`, `QUIT` and `RESET` (the others go to a subscribed node, which refuses them as
//! one Redis does). Over one Redis connection the confirmations come in order with the
//! replies to the commands around them. In front of a cluster the commands go to
//! different nodes, so the router gives such a command a place in its queue like any
//! command: its confirmations (or its error) are its reply ([`Expect::Confirmations`] on
//! its node), released once every command before it is answered. The pushes that node
//! sends after them (messages on the channels, later confirmations) wait behind them, so
//! a message never reaches the client before the confirmation of its subscription.
//!
//! An `UNSUBSCRIBE`, `PUNSUBSCRIBE` or `SUNSUBSCRIBE` naming no channel gets one
//! confirmation per subscription its node holds, a number only the node knows: a hidden
//! `PING` follows it on the same connection, and the pushes before that `PING`'s reply are
//! its answer ([`Expect::Unsubscriptions`]). `UNSUBSCRIBE` and `PUNSUBSCRIBE` go to the
//! pub/sub node, where every channel and pattern is; `SUNSUBSCRIBE` to every node the
//! client sent an `SSUBSCRIBE` since (the pub/sub node when none, for Redis's answer to
//! a client holding none), one entry each, released one after the other.
//! Pushes held past `MAX_OUTPUT` (behind a blocking command another node has not answered)
//! end the client's connection, as Redis ends a subscriber's that far behind.

use bytes::{Bytes, BytesMut};

use super::router::{Entry, Expect, HeldPushes, Kind, Parts, Router, MAX_OUTPUT};
use super::spread::Merge;
use super::subscriptions::{pubsub_frame, PubsubFrame};

impl Router {
    /// Send `raw`, a RESP3 subscription command naming `channels` channels, to node
    /// `index`, its confirmations expected as its reply.
    pub(super) fn send_confirmed(&mut self, index: usize, raw: Bytes, channels: u32) {
        let Some(link) = &self.links[index] else {
            return;
        };
        // A shared connection counts replies, not pushes: only a refusal is one.
        link.send(raw, 0);
        self.expect_pushes(index, |seq| Expect::Confirmations {
            seq,
            left: channels,
        });
    }

    /// Send `raw`, a RESP3 `UNSUBSCRIBE`, `PUNSUBSCRIBE` or `SUNSUBSCRIBE` naming no
    /// channel, to node `index`, then a hidden `PING`: its confirmations, however many,
    /// are its reply, ended by the `PING`'s.
    pub(super) fn send_unsubscribe_all(&mut self, index: usize, raw: Bytes) {
        let Some(link) = &self.links[index] else {
            return;
        };
        link.send(raw, 0);
        link.send(crate::resp::simple_command(b"PING"), 1);
        self.expect_pushes(index, |seq| Expect::Unsubscriptions { seq, seen: false });
    }

    /// A place in the queue for a command just sent to node `index` whose answer is
    /// pushes: what the node owes for it (`expect`, given the entry's number), and room
    /// for the pushes held behind it.
    fn expect_pushes(&mut self, index: usize, expect: impl FnOnce(u64) -> Expect) {
        let seq = self.push_entry(Entry {
            parts: Parts::new(),
            merge: Merge::One,
            kind: Kind::Plain,
            reply: None,
            silent: false,
        });
        if self.expects[index].is_empty() {
            self.node_progress(index);
        }
        self.expects[index].push_back(expect(seq));
        self.last_subscription = Some((seq, index));
        self.held_pushes.push_back(HeldPushes {
            node: index,
            seq,
            bytes: BytesMut::new(),
        });
    }

    /// A reply (not a push) from node `index` while it confirms the unsubscriptions of
    /// entry `seq`: with none confirmed yet, an error is the command's refusal (the
    /// hidden `PING`'s reply, still to come, is dropped); otherwise it is the `PING`'s, and
    /// the confirmations before it were all.
    pub(super) fn unsubscriptions_ended(
        &mut self,
        index: usize,
        seq: u64,
        seen: bool,
        reply: &[u8],
    ) {
        if !seen && reply.first() == Some(&b'-') {
            self.expects[index].push_front(Expect::Hidden);
            return self.refused_subscription(seq, reply);
        }
        self.confirmed(seq);
    }

    /// A push from node `index`: kept behind a subscription command of that node not yet
    /// given to the client (counted as one of its confirmations when it is one), else
    /// `false` (the caller sends it on).
    pub(super) fn hold_push(
        &mut self,
        index: usize,
        push: &[u8],
        kind: Option<PubsubFrame>,
    ) -> bool {
        let confirmation = matches!(kind, Some(PubsubFrame::Confirmation { .. }));
        // The node's earliest subscription still confirming takes what comes before its
        // confirmations end; after them, the node's latest one not yet given.
        let target = match self.expects[index].front_mut() {
            Some(Expect::Confirmations { seq, left }) => {
                if *left > 0 && confirmation {
                    *left -= 1;
                }
                Some((*seq, *left == 0))
            }
            Some(Expect::Unsubscriptions { seq, seen }) => {
                *seen |= confirmation;
                Some((*seq, false))
            }
            _ => None,
        };
        let held = match target {
            Some((seq, _)) => self.held_pushes.iter_mut().find(|h| h.seq == seq),
            None => self.held_pushes.iter_mut().rev().find(|h| h.node == index),
        };
        let Some(held) = held else {
            return false;
        };
        held.bytes.extend_from_slice(push);
        if held.bytes.len() > MAX_OUTPUT {
            // Messages behind a reply another node still owes (a blocking command before
            // the subscription): a subscriber that far behind is let go, as Redis lets a
            // slow subscriber go, and as a RESP2 subscriber's held messages are.
            self.broken = Some("subscription messages piled up behind replies owed".into());
        }
        if let Some((seq, true)) = target {
            self.expects[index].pop_front();
            self.confirmed(seq);
        }
        true
    }

    /// A reply (not a push) to a subscription command: Redis refused it, and sends no
    /// confirmation. The error is its answer, after anything the node pushed before it.
    pub(super) fn refused_subscription(&mut self, seq: u64, reply: &[u8]) {
        if let Some(held) = self.held_pushes.iter_mut().find(|h| h.seq == seq) {
            held.bytes.extend_from_slice(reply);
        }
        self.confirmed(seq);
    }

    /// Entry `seq` has its answer (in its held pushes): it goes to the client in its turn.
    fn confirmed(&mut self, seq: u64) {
        if let Some(entry) = self.entry_mut(seq) {
            entry.reply = Some(Bytes::new());
        }
        self.release();
    }

    /// The pushes held for entry `seq`, which is being given to the client (they follow
    /// its reply).
    pub(super) fn take_held(&mut self, seq: u64) -> Option<HeldPushes> {
        if self.held_pushes.front().is_some_and(|h| h.seq == seq) {
            return self.held_pushes.pop_front();
        }
        None
    }

    /// What a reply from node `index` is when it is a RESP2 subscribed connection's
    /// confirmation or message, to be taken as a RESP3 push is (`Some`): the node holds a
    /// subscription of the client's, or the reply is one to a subscription command. A
    /// client that never subscribed pays one comparison.
    pub(super) fn subscribed_reply(&self, index: usize, reply: &[u8]) -> Option<PubsubFrame> {
        let subscribing = matches!(
            self.expects[index].front(),
            Some(Expect::Confirmations { .. } | Expect::Unsubscriptions { .. })
        );
        if self.protocol >= 3 || !(subscribing || self.subscriptions.subscribed(index)) {
            return None;
        }
        pubsub_frame(reply)
    }

    /// The node of the last subscription command, while it is not given to the client.
    pub(super) fn subscribing_node(&self) -> Option<usize> {
        self.last_subscription
            .filter(|&(seq, _)| seq >= self.first_seq)
            .map(|(_, node)| node)
    }
}
