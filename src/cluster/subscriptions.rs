//! A client's subscriptions spread over the nodes, counted as one Redis counts them.
//!
//! In front of a cluster a client's channels and patterns are on the pub/sub node and its
//! shard channels on their slots' nodes, while one Redis holds them all on one connection.
//! Every confirmation ends with a count: over one connection, how many channels and
//! patterns the connection holds (`subscribe`, `psubscribe` and their `un` forms) or how
//! many shard channels (`ssubscribe`, `sunsubscribe`); a node counts only its own. The
//! router keeps, per node, the last count of each kind it gave the client, and rewrites each
//! confirmation as it gives it to the sum over the nodes: the count one Redis would give.
//!
//! In RESP2 a subscribed connection's confirmations and messages are replies, not pushes.
//! While a node's connection is subscribed (the counts it last sent say so), the arrays it
//! sends naming a confirmation or a message are taken as RESP3 pushes are (see
//! `cluster/confirm.rs`).

use bytes::BytesMut;

use crate::scanner::reply::{ReplyInfo, ReplyKind, ReplyScanner, ReplyStep};

/// What a pub/sub array (`*` in RESP2, `>` in RESP3) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PubsubFrame {
    /// `message`, `pmessage` or `smessage`.
    Message,
    /// A subscription's confirmation: of a shard channel (`ssubscribe`, `sunsubscribe`) or
    /// of a channel or pattern, with the count it ends with.
    Confirmation { shard: bool, count: i64 },
}

/// What `frame`, one whole reply or push, is when it is a pub/sub array.
pub(super) fn pubsub_frame(frame: &[u8]) -> Option<PubsubFrame> {
    let mut scanner = ReplyScanner::new();
    if !matches!(scanner.scan(frame), Ok(ReplyStep::Done(_))) {
        return None;
    }
    pubsub_kind(scanner.info())
}

/// What a whole reply or push the scanner described as `info` is when it is a pub/sub
/// array.
fn pubsub_kind(info: &ReplyInfo) -> Option<PubsubFrame> {
    if !matches!(info.kind, ReplyKind::Array | ReplyKind::Push) {
        return None;
    }
    let shard = match info.first_str()? {
        b"message" | b"pmessage" | b"smessage" => return Some(PubsubFrame::Message),
        b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe" => false,
        b"ssubscribe" | b"sunsubscribe" => true,
        _ => return None,
    };
    let count = info.last_int?;
    Some(PubsubFrame::Confirmation { shard, count })
}

/// The counts one node's connection last gave: channels and patterns, shard channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    channels: i64,
    shards: i64,
}

impl Counts {
    fn set(&mut self, shard: bool, count: i64) {
        if shard {
            self.shards = count;
        } else {
            self.channels = count;
        }
    }

    fn get(&self, shard: bool) -> i64 {
        if shard {
            self.shards
        } else {
            self.channels
        }
    }
}

/// Per node, the client's subscriptions as the node said them and as the client was told.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    /// Indexed by node: the counts of the node's last confirmation, in the node's order.
    said: Vec<Counts>,
    /// Indexed by node: the counts of the node's last confirmation given to the client,
    /// in the client's order.
    given: Vec<Counts>,
}

impl Subscriptions {
    /// Note what a frame node `node` sent is: a confirmation's count is the node's from now
    /// on.
    pub(super) fn note_said(&mut self, node: usize, frame: Option<PubsubFrame>) {
        if let Some(PubsubFrame::Confirmation { shard, count }) = frame {
            grown(&mut self.said, node).set(shard, count);
        }
    }

    /// Whether node `node`'s connection holds a subscription of the client's (so that, in
    /// RESP2, what it sends is the subscribed connection's).
    pub(super) fn subscribed(&self, node: usize) -> bool {
        self.said
            .get(node)
            .is_some_and(|c| c.channels > 0 || c.shards > 0)
    }

    /// The first node holding a subscription of the client's, if any.
    pub(super) fn first_subscribed(&self) -> Option<usize> {
        (0..self.said.len()).find(|&node| self.subscribed(node))
    }

    /// Append `frames` (whole replies or pushes node `node` sent, in its order) to `out`
    /// for the client: each confirmation's count becomes the client's over every node.
    pub(super) fn give(&mut self, node: usize, frames: &[u8], out: &mut BytesMut) {
        let mut rest = frames;
        while !rest.is_empty() {
            let mut scanner = ReplyScanner::new();
            let Ok(ReplyStep::Done(end)) = scanner.scan(rest) else {
                // Not whole frames: nothing to count in them.
                out.extend_from_slice(rest);
                return;
            };
            let (frame, after) = rest.split_at(end);
            self.give_frame(node, frame, pubsub_kind(scanner.info()), out);
            rest = after;
        }
    }

    /// [`Self::give`] for one whole `frame`, known to be `kind`.
    pub(super) fn give_frame(
        &mut self,
        node: usize,
        frame: &[u8],
        kind: Option<PubsubFrame>,
        out: &mut BytesMut,
    ) {
        match kind {
            Some(PubsubFrame::Confirmation { shard, count }) => {
                grown(&mut self.given, node).set(shard, count);
                let total = self.given.iter().map(|c| c.get(shard)).sum();
                with_count(frame, total, out);
            }
            _ => out.extend_from_slice(frame),
        }
    }

    /// Node `node`'s connection holds no subscription any more (lost, or `RESET`).
    pub(super) fn forget_node(&mut self, node: usize) {
        for counts in [&mut self.said, &mut self.given] {
            if let Some(c) = counts.get_mut(node) {
                *c = Counts::default();
            }
        }
    }
}

/// The counts of node `node`, the vector grown to hold them.
fn grown(counts: &mut Vec<Counts>, node: usize) -> &mut Counts {
    if counts.len() <= node {
        counts.resize(node + 1, Counts::default());
    }
    &mut counts[node]
}

/// Append `confirmation` to `out` with `count` in place of the integer it ends with.
fn with_count(confirmation: &[u8], count: i64, out: &mut BytesMut) {
    let body = &confirmation[..confirmation.len().saturating_sub(2)];
    let last_line = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if confirmation.get(last_line) != Some(&b':') {
        out.extend_from_slice(confirmation);
        return;
    }
    out.extend_from_slice(&confirmation[..last_line]);
    out.extend_from_slice(format!(":{count}\r\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_frames_are_told_apart_in_both_protocols() {
        let confirmation = |frame: &[u8]| pubsub_frame(frame);
        assert_eq!(
            confirmation(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"),
            Some(PubsubFrame::Confirmation {
                shard: false,
                count: 1
            })
        );
        assert_eq!(
            confirmation(b">3\r\n$12\r\nsunsubscribe\r\n_\r\n:0\r\n"),
            Some(PubsubFrame::Confirmation {
                shard: true,
                count: 0
            })
        );
        assert_eq!(
            confirmation(b"*4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$1\r\nx\r\n"),
            Some(PubsubFrame::Message)
        );
        assert_eq!(confirmation(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"), None);
        assert_eq!(confirmation(b"+OK\r\n"), None);
        assert_eq!(
            confirmation(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"),
            None
        );
    }

    #[test]
    fn confirmations_given_count_every_nodes_subscriptions() {
        let mut subs = Subscriptions::default();
        let mut out = BytesMut::new();
        let shard = |ch: &str, n: i64| format!("*3\r\n$10\r\nssubscribe\r\n$1\r\n{ch}\r\n:{n}\r\n");
        // Node 2 holds `a`, node 0 holds `b` and `c`: one Redis would count 1, 2, 3.
        subs.give(2, shard("a", 1).as_bytes(), &mut out);
        let message = b"*3\r\n$8\r\nsmessage\r\n$1\r\na\r\n$1\r\nx\r\n";
        let mut from_zero = shard("b", 1).into_bytes();
        from_zero.extend_from_slice(message);
        from_zero.extend_from_slice(shard("c", 2).as_bytes());
        subs.give(0, &from_zero, &mut out);
        let channel = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n";
        subs.give(1, channel, &mut out);
        let mut expected = shard("a", 1);
        expected += &shard("b", 2);
        expected += std::str::from_utf8(message).unwrap();
        expected += &shard("c", 3);
        expected += std::str::from_utf8(channel).unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);

        // Node 0 unsubscribes both: 2, then 1 left (node 2's).
        out.clear();
        let un = |ch: &str, n: i64| format!("*3\r\n$12\r\nsunsubscribe\r\n$1\r\n{ch}\r\n:{n}\r\n");
        subs.give(
            0,
            format!("{}{}", un("b", 1), un("c", 0)).as_bytes(),
            &mut out,
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            format!("{}{}", un("b", 2), un("c", 1))
        );
    }

    #[test]
    fn a_node_is_subscribed_while_its_last_counts_say_so() {
        let mut subs = Subscriptions::default();
        assert!(!subs.subscribed(1));
        subs.note_said(
            1,
            pubsub_frame(b"*3\r\n$10\r\nssubscribe\r\n$1\r\na\r\n:1\r\n"),
        );
        subs.note_said(
            1,
            pubsub_frame(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"),
        );
        assert!(subs.subscribed(1), "a shard channel is still held");
        assert_eq!(subs.first_subscribed(), Some(1));
        subs.note_said(
            1,
            pubsub_frame(b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:0\r\n"),
        );
        assert!(!subs.subscribed(1));
        subs.note_said(
            0,
            pubsub_frame(b"*3\r\n$10\r\npsubscribe\r\n$2\r\na*\r\n:1\r\n"),
        );
        subs.forget_node(0);
        assert_eq!(subs.first_subscribed(), None);
    }
}
