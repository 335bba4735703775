//! The connection's state across nodes, so that the client sees one connection: commands
//! changing it (AUTH, HELLO, CLIENT SETNAME…) answered by one node and replayed on every
//! other, RESET, `CLIENT REPLY` (answered by the router), subscriptions (one node's
//! connection carried as it is) and transactions (MULTI…EXEC on the node of their first
//! key, or of WATCH).

use bytes::Bytes;

use super::args::Args;
use super::delivery::Redirect;
use super::dispatch::state_key;
use super::dispatch::CROSSSLOT;
use super::identity::user_in;
use super::route::Route;
use super::router::{Expect, Kind, Part, Parts, QueuedState, ReplyMode, Router, Transaction};
use super::spread::{self, Merge};
use crate::resp;
use crate::scanner::reply::{ReplyScanner, ReplyStep};

impl Router {
    /// What an entry's reply changes: a state command refused is not replayed (the one
    /// it was to replace is, as Redis keeps it); a HELLO answered sets the protocol; an
    /// AUTH accepted, under multiplexing, the client's user.
    pub(super) fn after_reply(&mut self, kind: &Kind, reply: &Bytes) {
        if let Kind::Exec { node, state } = kind {
            return self.after_exec(*node, state, reply);
        }
        let Kind::State { key, raw, previous } = kind else {
            return;
        };
        let refused = spread::is_error(reply);
        self.note_identity_reply(key, raw, refused);
        if refused {
            // Unless a later command of its kind replaced it meanwhile.
            if self.state.iter().any(|(k, r)| k == key && r == raw) {
                self.state.retain(|(k, _)| k != key);
                if let Some(previous) = previous {
                    self.record_state(key.clone(), previous.clone());
                }
            }
        } else if key == b"HELLO" {
            self.protocol = if reply.starts_with(b"%") { 3 } else { 2 };
        }
    }

    /// EXEC on `node` answered `reply`: each state command of the transaction (`state`)
    /// that ran without an error is in force from now on, as one sent outside a
    /// transaction would be: sent hidden to every other node open, replayed on every node
    /// opened later, its reply noted (a `HELLO`'s protocol, an `AUTH`'s user). Nothing
    /// when the transaction did not run (`EXECABORT`, a watched key changed).
    fn after_exec(&mut self, node: usize, state: &[QueuedState], reply: &Bytes) {
        let Some(replies) = exec_replies(reply) else {
            return;
        };
        for queued in state {
            let Some(&own) = replies.get(queued.at) else {
                continue;
            };
            if spread::is_error(own) {
                continue;
            }
            self.send_to_other_own_links(node, &queued.key, &queued.raw);
            let previous = self.record_state(queued.key.clone(), queued.raw.clone());
            let kind = Kind::State {
                key: queued.key.clone(),
                raw: queued.raw.clone(),
                previous,
            };
            self.after_reply(&kind, &reply.slice_ref(own));
        }
    }

    /// A command changing connection state: answered by the default node, sent hidden to
    /// every other node open, and replayed on every node opened later.
    pub(super) fn state_command(&mut self, raw: Bytes, key: Vec<u8>, silent: bool) {
        let Some(target) = self.default_index() else {
            return self.answer(self.no_node(), silent);
        };
        self.send_to_other_own_links(target, &key, &raw);
        let previous = self.record_state(key.clone(), raw.clone());
        self.verify_if_auth(&key, &raw);
        let readwrite = key == b"READWRITE";
        let kind = Kind::State {
            key,
            raw: raw.clone(),
            previous,
        };
        self.send_to_node(target, raw, kind, silent);
        if readwrite {
            // The client's READWRITE is its own; the replica connections keep reading.
            self.restore_readonly();
        }
    }

    /// The state command `raw` (of kind `key`), answered on node `except`, sent hidden to
    /// every other node open on a connection of the client's own (an `AUTH`'s reply
    /// checked there: `Expect::HiddenAuth`). A shared connection keeps no client's
    /// state: there it is only recorded, for the client's connections of its own should it
    /// move to them.
    fn send_to_other_own_links(&mut self, except: usize, key: &[u8], raw: &Bytes) {
        let expect = if user_in(key, raw).is_some() {
            Expect::HiddenAuth
        } else {
            Expect::Hidden
        };
        for node in 0..self.links.len() {
            if node != except && self.links[node].as_ref().is_some_and(|l| !l.is_shared()) {
                self.send(node, raw.clone(), expect);
            }
        }
    }

    /// Keep `raw` as the state command of kind `key` in force (replacing an earlier one of
    /// its kind, returned; at most 32 kept), replayed on each connection of the client's
    /// own.
    pub(super) fn record_state(&mut self, key: Vec<u8>, raw: Bytes) -> Option<Bytes> {
        let previous = self
            .state
            .iter()
            .position(|(k, _)| *k == key)
            .map(|at| self.state.remove(at).1);
        if self.state.len() >= 32 {
            self.state.remove(0);
        }
        self.state.push((key, raw));
        previous
    }

    /// RESET on every open node but `except` (hidden), and the connection's state
    /// forgotten, as RESET does to one Redis connection.
    pub(super) fn reset_links(&mut self, except: Option<usize>) {
        for node in 0..self.links.len() {
            if Some(node) != except && self.links[node].is_some() {
                self.send(node, resp::simple_command(b"RESET"), Expect::Hidden);
            }
        }
        self.forget_state();
    }

    /// The refusal a RESP2 subscriber's command sent by [`Self::while_subscribed`] gets
    /// when the subscribed node redirected it (`reply`) instead of refusing it: it passed
    /// every check Redis makes before the slot's, so one Redis would refuse it for the
    /// context. `None` otherwise, and when that node's subscription was refused: the
    /// command then runs where it belongs.
    pub(super) fn refusal_while_subscribed(
        &mut self,
        seq: u64,
        part: u16,
        reply: &[u8],
    ) -> Option<Bytes> {
        let entry = self.entry_mut(seq)?;
        let Kind::WhileSubscribed { refusal } = &entry.kind else {
            return None;
        };
        let (refusal, node) = (refusal.clone(), entry.parts[usize::from(part)].node?);
        let redirected = Redirect::parse(reply).is_some_and(|r| {
            matches!(
                r,
                Redirect::Moved { .. } | Redirect::Ask { .. } | Redirect::TryAgain
            )
        });
        (redirected && self.subscriptions.subscribed(node)).then_some(refusal)
    }

    /// `RESET` sent to every open node, answered once each node's `+RESET` came (no
    /// monitor line or message of the client's old state follows it).
    pub(super) fn reset_every_node(&mut self, raw: Bytes, silent: bool) {
        let mut parts = Parts::new();
        for index in 0..self.links.len() {
            if self.links[index].is_some() {
                parts.push(Part::new(raw.clone(), None, Some(index)));
            }
        }
        self.shard_nodes.clear();
        self.forget_state();
        if parts.is_empty() {
            return self.answer(resp::simple("RESET"), silent);
        }
        self.parts_entry(parts, Merge::Same, Kind::Plain, silent);
    }

    /// RESP2: the node a command must go to because the client is subscribed (see
    /// [`Self::while_subscribed`]), unless it is one Redis allows there (`name`, upper
    /// case): a node holding a subscription of the client's, or owing a subscription's
    /// confirmations.
    pub(super) fn subscribed_context(&self, name: &[u8]) -> Option<usize> {
        if self.protocol >= 3
            || matches!(
                name,
                b"SUBSCRIBE"
                    | b"PSUBSCRIBE"
                    | b"SSUBSCRIBE"
                    | b"UNSUBSCRIBE"
                    | b"PUNSUBSCRIBE"
                    | b"SUNSUBSCRIBE"
                    | b"QUIT"
                    | b"RESET"
            )
        {
            return None;
        }
        self.subscriptions
            .first_subscribed()
            .or_else(|| self.subscribing_node())
    }

    /// The connection's state forgotten, as RESET does to one Redis connection (the
    /// nodes sent RESET by the caller).
    pub(super) fn forget_state(&mut self) {
        self.state.clear();
        self.forget_user();
        self.protocol = 2;
        self.reply_mode = ReplyMode::On;
        self.transaction = None;
        self.watch_node = None;
        self.restore_readonly();
    }

    /// `CLIENT REPLY ON|OFF|SKIP`, answered by the router (nodes always reply to it).
    pub(super) fn client_reply(&mut self, raw: Bytes, args: Args<'_>) {
        let mode = args.upper(2);
        match (&mode[..], args.len()) {
            (b"ON", 3) => {
                self.reply_mode = ReplyMode::On;
                self.answer(resp::simple("OK"), false);
            }
            (b"OFF", 3) => {
                self.reply_mode = ReplyMode::Off;
                self.answer(resp::simple("OK"), true);
            }
            (b"SKIP", 3) => {
                if self.reply_mode == ReplyMode::On {
                    self.reply_mode = ReplyMode::SkipNext;
                }
                self.answer(resp::simple("OK"), true);
            }
            // Redis's own error for anything else.
            _ => self.send_to_default(raw, Kind::Plain, self.reply_mode != ReplyMode::On),
        }
    }

    /// SUBSCRIBE, PSUBSCRIBE (one node: the cluster bus spreads messages) or SSUBSCRIBE
    /// (its channels' slot), and their `UN` forms: answered in the client's turn by their
    /// confirmations (see `cluster/confirm.rs`), counted over every node
    /// (`cluster/subscriptions.rs`).
    pub(super) fn subscribe(&mut self, raw: Bytes, args: Args<'_>) {
        let node = match self.route_of(args) {
            Route::Slot(slot) => self.primary_index(slot),
            Route::CrossSlot => return self.answer(resp::error(CROSSSLOT), false),
            Route::Keyless => self.pubsub_index(),
        };
        let Some(node) = node else {
            return self.answer(self.no_node(), false);
        };
        let channels = args.len().saturating_sub(1);
        if channels == 0 {
            return self.unsubscribe_all(node, raw, args);
        }
        if &*args.upper(0) == b"SSUBSCRIBE" && !self.shard_nodes.contains(&node) {
            self.shard_nodes.push(node);
        }
        self.send_confirmed(node, raw, channels as u32);
    }

    /// RESP2, subscribed: a command other than a subscription one, `QUIT` or `RESET` goes
    /// to a node holding a subscription of the client's, which answers as one Redis does
    /// (`PING` with a `pong` array, anything else refused for the context). A node serving
    /// another slot than the command's key says so first (`-MOVED`): the command would be
    /// refused all the same, and gets that refusal.
    pub(super) fn while_subscribed(&mut self, node: usize, raw: Bytes, name: &str) {
        let refusal = resp::error(&format!(
            "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
        ));
        let silent = self.next_silent();
        self.send_to_node(node, raw, Kind::WhileSubscribed { refusal }, silent);
    }

    /// `UNSUBSCRIBE`, `PUNSUBSCRIBE` or `SUNSUBSCRIBE` naming no channel (`raw`):
    /// to the pub/sub node `pubsub`, where channels and patterns are, or, for
    /// `SUNSUBSCRIBE`, to every node that took an `SSUBSCRIBE` of the client since (see
    /// `cluster/confirm.rs`).
    fn unsubscribe_all(&mut self, pubsub: usize, raw: Bytes, args: Args<'_>) {
        let mut nodes = Vec::new();
        if &*args.upper(0) == b"SUNSUBSCRIBE" {
            nodes = std::mem::take(&mut self.shard_nodes);
            // A node whose connection was lost holds none of the client's subscriptions.
            nodes.retain(|&node| self.links[node].is_some());
        }
        if nodes.is_empty() {
            nodes.push(pubsub);
        }
        for node in nodes {
            self.send_unsubscribe_all(node, raw.clone());
        }
    }

    /// The node every client's `SUBSCRIBE`, `PSUBSCRIBE`, `PUBLISH` and `PUBSUB` go to: the
    /// primary of the first shard, so that `PUBLISH` counts every subscriber through the
    /// proxy, as one Redis does (a node counts only its own).
    pub(super) fn pubsub_index(&mut self) -> Option<usize> {
        let address = self.view.map()?.shards().first()?.primary.clone();
        self.node_for(&address)
    }

    /// MULTI, EXEC, DISCARD, and every command between: on one node, chosen by the
    /// transaction's first command (or the node of WATCH).
    pub(super) fn transaction_command(
        &mut self,
        raw: Bytes,
        args: Args<'_>,
        name: &[u8],
        silent: bool,
    ) {
        match (name, self.transaction.take()) {
            (b"MULTI", None) => {
                let node = self.watch_node.filter(|&n| self.links[n].is_some());
                self.transaction = Some(Transaction {
                    node,
                    multi_sent: node.is_some(),
                    queued: 0,
                    state: Vec::new(),
                });
                match node {
                    Some(n) => self.send_to_node(n, raw, Kind::Transaction, silent),
                    None => self.answer(resp::simple("OK"), silent),
                }
            }
            (b"EXEC" | b"DISCARD", None) => self.send_to_default(raw, Kind::Plain, silent),
            (b"EXEC" | b"DISCARD", Some(t)) => {
                let watched = self.watch_node.take().filter(|&n| self.links[n].is_some());
                match (t.node.filter(|_| t.multi_sent), watched) {
                    (Some(n), _) if name == b"EXEC" && !t.state.is_empty() => {
                        let kind = Kind::Exec {
                            node: n,
                            state: t.state,
                        };
                        self.exec_changes_state = true;
                        self.send_to_node(n, raw, kind, silent)
                    }
                    (Some(n), _) => self.send_to_node(n, raw, Kind::Transaction, silent),
                    (None, Some(w)) => {
                        self.send(w, resp::simple_command(b"MULTI"), Expect::Hidden);
                        self.send_to_node(w, raw, Kind::Transaction, silent);
                    }
                    (None, None) if name == b"EXEC" => {
                        self.answer(Bytes::from_static(b"*0\r\n"), silent)
                    }
                    (None, None) => self.answer(resp::simple("OK"), silent),
                }
            }
            (_, Some(mut t)) => {
                let node = match t.node.filter(|&n| self.links[n].is_some()) {
                    Some(n) => Some(n),
                    None => self.transaction_node(args),
                };
                let Some(node) = node else {
                    self.transaction = Some(t);
                    return self.answer(self.no_node(), silent);
                };
                if !t.multi_sent {
                    self.send(node, resp::simple_command(b"MULTI"), Expect::Hidden);
                    t.multi_sent = true;
                }
                t.node = Some(node);
                t.note_queued(name, args, &raw);
                self.transaction = Some(t);
                self.send_to_node(node, raw, Kind::Transaction, silent);
            }
            (_, None) => {
                unreachable!("only MULTI, EXEC and DISCARD come here outside a transaction")
            }
        }
    }

    /// The node a transaction runs on, from its first command: its slot's primary, else
    /// the default node.
    pub(super) fn transaction_node(&mut self, args: Args<'_>) -> Option<usize> {
        match self.route_of(args) {
            Route::Slot(slot) => self.primary_index(slot).or_else(|| self.default_index()),
            _ => self.default_index(),
        }
    }
}

impl Transaction {
    /// Most state commands a transaction keeps for after its EXEC (the earliest dropped).
    const MAX_STATE: usize = 32;

    /// The command `name` (`args`, `raw`) was sent inside the transaction: counted if Redis
    /// queues it (`MULTI` and `WATCH` it refuses there without aborting), kept if it
    /// changes connection state.
    fn note_queued(&mut self, name: &[u8], args: Args<'_>, raw: &Bytes) {
        if matches!(name, b"MULTI" | b"WATCH") {
            return;
        }
        if let Some(key) = state_key(name, &args.upper(1), &args.upper(2)) {
            if self.state.len() >= Self::MAX_STATE {
                self.state.remove(0);
            }
            self.state.push(QueuedState {
                at: self.queued,
                key,
                raw: raw.clone(),
            });
        }
        self.queued += 1;
    }
}

/// The replies of a transaction's commands in EXEC's reply (an array of them), each
/// whole; `None` when the transaction did not run (an error, a null) or the reply cannot
/// be read.
fn exec_replies(reply: &[u8]) -> Option<Vec<&[u8]>> {
    let header = reply.strip_prefix(b"*")?;
    let end = header.iter().position(|&b| b == b'\r')?;
    let count: usize = std::str::from_utf8(&header[..end]).ok()?.parse().ok()?;
    let mut at = 1 + end + 2;
    let mut replies = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let rest = reply.get(at..)?;
        let Ok(ReplyStep::Done(len)) = ReplyScanner::new().scan(rest) else {
            return None;
        };
        replies.push(&rest[..len]);
        at += len;
    }
    Some(replies)
}

#[cfg(test)]
mod tests {
    use super::super::args::read_stored;
    use super::*;

    /// EXEC's reply read as its commands' replies, each whole (nested, errors included);
    /// a transaction that did not run has none.
    /// A transaction keeps at most `MAX_STATE` state commands for after its EXEC (the
    /// latest), each at its place among the commands Redis queues (MULTI and WATCH inside
    /// are not queued).
    #[test]
    fn a_transaction_keeps_a_bounded_number_of_state_commands() {
        let mut t = Transaction {
            node: None,
            multi_sent: true,
            queued: 0,
            state: Vec::new(),
        };
        let note = |t: &mut Transaction, args: &[&str]| {
            let mut raw = bytes::BytesMut::new();
            let words: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            resp::command(&mut raw, &words);
            let raw = raw.freeze();
            read_stored(&raw, |a| {
                let name = a.upper(0);
                t.note_queued(&name, a, &raw)
            });
        };
        note(&mut t, &["WATCH", "k"]);
        note(&mut t, &["SET", "k", "v"]);
        for i in 0..100 {
            note(&mut t, &["CLIENT", "SETNAME", &format!("n{i}")]);
        }
        assert_eq!(t.queued, 101, "WATCH is not queued");
        assert_eq!(t.state.len(), Transaction::MAX_STATE);
        assert_eq!(t.state[0].at, 101 - Transaction::MAX_STATE);
        assert_eq!(t.state.last().unwrap().at, 100);
        assert_eq!(t.state[0].key, b"CLIENT SETNAME");
    }

    #[test]
    fn exec_replies_are_each_commands_reply() {
        let reply = b"*3\r\n+OK\r\n-ERR no\r\n*2\r\n$1\r\na\r\n:1\r\n";
        assert_eq!(
            exec_replies(reply).unwrap(),
            [&b"+OK\r\n"[..], b"-ERR no\r\n", b"*2\r\n$1\r\na\r\n:1\r\n"]
        );
        assert_eq!(exec_replies(b"*0\r\n").unwrap().len(), 0);
        assert!(exec_replies(b"*-1\r\n").is_none());
        assert!(exec_replies(b"_\r\n").is_none());
        assert!(exec_replies(b"-EXECABORT Transaction discarded\r\n").is_none());
        assert!(exec_replies(b"*2\r\n+OK\r\n").is_none(), "cut short");
    }
}
