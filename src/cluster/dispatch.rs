//! Where each command of the session's goes: its slot's primary (or, for a read the
//! `[[upstream.read_from]]` rules send there, a replica: [`super::replica`]), split per
//! slot, every primary, or the default node; what the proxy answers itself (`CLUSTER
//! SLOTS`…, a cross-slot refusal). Names are compared upper-cased on the stack
//! ([`Args::upper`]): routing a command allocates nothing of its own. Connection state (transactions, subscriptions, AUTH and the like,
//! `CLIENT REPLY`) is [`super::state`]'s; sending, redirections and retries are
//! [`super::delivery`]'s; the queue and the links [`super::router`]'s.

use bytes::{Bytes, BytesMut};

use super::args::Args;
use super::local;
use super::route::{route, Route};
use super::router::{Entry, Kind, Part, Parts, ReplyMode, Router};
use super::slot::key_slot;
use super::spread::{self, Keyless, Merge};
use crate::resp;

/// Redis Cluster's own answer to keys in several slots.
pub(super) const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// Commands whose connection state every node must share, keyed so that a later one of
/// the same kind replaces the earlier (`attribute`: `CLIENT SETINFO`'s, upper-cased).
pub(super) fn state_key(name: &[u8], sub: &[u8], attribute: &[u8]) -> Option<Vec<u8>> {
    match name {
        b"AUTH" | b"HELLO" | b"SELECT" | b"READONLY" | b"READWRITE" => Some(name.to_vec()),
        b"CLIENT" if matches!(sub, b"SETNAME" | b"NO-EVICT" | b"NO-TOUCH" | b"TRACKING") => {
            Some([name, b" ", sub].concat())
        }
        b"CLIENT" if sub == b"SETINFO" => Some([name, b" ", sub, b" ", attribute].concat()),
        _ => None,
    }
}

impl Router {
    /// One whole command from the session.
    pub(super) fn on_command(&mut self, raw: Bytes, args: Args<'_>) {
        let name = args.upper(0);
        let sub = args.upper(1);
        if let Some(node) = self.subscribed_context(&name) {
            let info = self.table.classify(&name, || args.get(1));
            let full_name = info.name.clone();
            return self.while_subscribed(node, raw, &full_name);
        }
        if &*name == b"CLIENT" && &*sub == b"REPLY" {
            return self.client_reply(raw, args);
        }
        let silent = self.next_silent();
        if &*name == b"CLIENT" && self.name_kept_here(&raw, args, silent) {
            return;
        }
        if self.transaction.is_some() || matches!(&name[..], b"MULTI" | b"EXEC" | b"DISCARD") {
            return self.transaction_command(raw, args, &name, silent);
        }
        match &name[..] {
            // Behind Sentinel the primary answers as it would (no cluster support).
            b"CLUSTER" if self.view.is_sharded() => {
                match local::answer(&sub, self.proxy, self.protocol) {
                    Some(reply) => self.answer(reply, silent),
                    None => self.keyed(raw, args, Kind::Plain, silent),
                }
            }
            b"QUIT" if self.monitoring.is_active() => self.quit_monitoring(silent),
            // On shared connections Redis would close a connection other clients use: the
            // router answers, and the session closes once the replies before it are written.
            b"QUIT" if self.shared.is_some() => self.answer(resp::simple("OK"), silent),
            b"MONITOR" => self.monitor(raw, silent),
            b"RESET" if self.monitoring.is_active() => self.reset_monitoring(raw, silent),
            b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE"
            | b"SUNSUBSCRIBE" => self.subscribe(raw, args),
            b"PUBLISH" => match self.pubsub_index() {
                Some(node) => self.send_to_node(node, raw, Kind::Plain, silent),
                None => self.answer(self.no_node(), silent),
            },
            b"PUBSUB" if !sub.starts_with(b"SHARD") => match self.pubsub_index() {
                Some(node) => self.send_to_node(node, raw, Kind::Plain, silent),
                None => self.answer(self.no_node(), silent),
            },
            // Every subscription ends before `+RESET`, as on one connection.
            b"RESET" if self.subscriptions.first_subscribed().is_some() => {
                self.reset_every_node(raw, silent)
            }
            b"RESET" => {
                self.shard_nodes.clear();
                self.send_to_default(raw, Kind::Plain, silent);
                let except = self.default_node;
                self.reset_links(except);
            }
            b"WATCH" => self.keyed(raw, args, Kind::Watch, silent),
            b"UNWATCH" => {
                let node = self.watch_node.take();
                match node.filter(|&n| self.links[n].is_some()) {
                    Some(n) => self.send_to_node(n, raw, Kind::Plain, silent),
                    None => self.send_to_default(raw, Kind::Plain, silent),
                }
            }
            _ => match state_key(&name, &sub, &args.upper(2)) {
                Some(key) => self.state_command(raw, key, silent),
                None => self.keyed(raw, args, Kind::Plain, silent),
            },
        }
    }

    /// Whether the next command's reply is dropped (`CLIENT REPLY OFF|SKIP`), a SKIP used
    /// up by it.
    pub(super) fn next_silent(&mut self) -> bool {
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }

    /// A command routed by its keys: one slot, split per slot, or by [`spread::keyless`].
    /// A read goes where the read rules say, each part of a split by its own keys.
    pub(super) fn keyed(&mut self, raw: Bytes, args: Args<'_>, kind: Kind, silent: bool) {
        match self.route_of(args) {
            Route::Slot(slot) => {
                if kind == Kind::Watch && !self.watch_fits(slot) {
                    return self.answer(resp::error(CROSSSLOT), silent);
                }
                let mut part = Part::new(raw, Some(slot), None);
                if kind == Kind::Plain {
                    part.read = self.read_choice(args, None);
                }
                self.one_part(part, kind, silent);
            }
            Route::CrossSlot => {
                let name = args.upper(0);
                let all = args.to_vec();
                match spread::split(&name, &all, key_slot).filter(|_| kind == Kind::Plain) {
                    Some(split) => {
                        let parts = split
                            .parts
                            .into_iter()
                            .map(|(command, slot)| {
                                let mut part = Part::new(command, Some(slot), None);
                                part.read = self.read_choice(args, Some(slot));
                                part
                            })
                            .collect();
                        self.parts_entry(parts, split.merge, kind, silent);
                    }
                    None => self.answer(resp::error(CROSSSLOT), silent),
                }
            }
            Route::Keyless => self.keyless(raw, args, kind, silent),
        }
    }

    /// Whether WATCH on `slot` keeps every watched key on one node.
    pub(super) fn watch_fits(&self, slot: u16) -> bool {
        let Some(node) = self.watch_node else {
            return true;
        };
        let Some(map) = self.view.map() else {
            return true;
        };
        map.shard_of(slot)
            .is_some_and(|s| self.addresses.get(&s.primary) == Some(&node))
    }

    pub(super) fn keyless(&mut self, raw: Bytes, args: Args<'_>, kind: Kind, silent: bool) {
        if !self.view.is_sharded() {
            // One primary holds every key: it runs the command as it stands, ordered with
            // the client's keyed commands (one flight, see `route_of`).
            let mut part = Part::new(raw, Some(0), None);
            part.pinned = false;
            return self.one_part(part, kind, silent);
        }
        let (name, sub) = (args.upper(0), args.upper(1));
        match spread::keyless(&name, &sub) {
            Keyless::AnyNode => self.send_to_default(raw, kind, silent),
            Keyless::EveryPrimary(merge) => {
                let Some(map) = self.view.map() else {
                    return self.answer(self.no_node(), silent);
                };
                let mut parts = Parts::new();
                for shard in map.shards() {
                    match self.node_for(&shard.primary) {
                        Some(node) => parts.push(Part::new(raw.clone(), None, Some(node))),
                        None => return self.answer(self.no_node(), silent),
                    }
                }
                self.parts_entry(parts, merge, kind, silent);
            }
            Keyless::Scan => self.scan(raw, args, silent),
        }
    }

    /// `SCAN cursor …`: on the primary the proxy's cursor names, with Redis's cursor there.
    pub(super) fn scan(&mut self, raw: Bytes, args: Args<'_>, silent: bool) {
        let cursor = args
            .get(1)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u64>().ok());
        let (Some(cursor), Some(map)) = (cursor, self.view.map()) else {
            // Redis's own error for a cursor that is not one.
            return self.send_to_default(raw, Kind::Plain, silent);
        };
        let (node, redis_cursor) = spread::scan_position(cursor);
        let Some(shard) = map.shards().get(usize::from(node)) else {
            return self.answer(resp::error("ERR invalid cursor"), silent);
        };
        let Some(index) = self.node_for(&shard.primary) else {
            return self.answer(self.no_node(), silent);
        };
        let redis_cursor = redis_cursor.to_string();
        let mut rewritten: Vec<&[u8]> = args.to_vec();
        rewritten[1] = redis_cursor.as_bytes();
        let mut command = BytesMut::new();
        resp::command(&mut command, &rewritten);
        let merge = Merge::Scan {
            node,
            nodes: map.shards().len() as u16,
        };
        let part = Part::new(command.freeze(), None, Some(index));
        self.parts_entry(smallvec::smallvec![part], merge, Kind::Plain, silent);
    }

    /// The address of a primary chosen at random, for a command any node answers.
    pub(super) fn any_primary(&self) -> Option<String> {
        let map = self.view.map()?;
        let shards = map.shards();
        (!shards.is_empty()).then(|| shards[fastrand::usize(..shards.len())].primary.clone())
    }

    /// The node a command naming no key goes to: the last one used, else a primary; behind
    /// Sentinel, the primary in force (after a failover, the new one).
    pub(super) fn default_index(&mut self) -> Option<usize> {
        if !self.view.is_sharded() {
            let primary = self.view.map()?.shards().first()?.primary.clone();
            return self.node_for(&primary);
        }
        if let Some(i) = self.default_node {
            if self.links[i].is_some() {
                return Some(i);
            }
            // Its link was closed by a move off the shared connections: the same node.
            if let Some(index) = self.address_of(i).and_then(|a| self.node_for(&a)) {
                return Some(index);
            }
        }
        let address = self.any_primary()?;
        let index = self.node_for(&address)?;
        self.default_node = Some(index);
        Some(index)
    }

    /// The error for a command when no node can be named.
    pub(super) fn no_node(&self) -> Bytes {
        let what = match self.view.is_sharded() {
            true => "no cluster node is known",
            false => "no primary is known",
        };
        resp::error(&format!(
            "ERR respguard: {what} ({})",
            self.view.last_error()
        ))
    }

    /// A command for the default node (the last used, else a primary), which may go to
    /// another node should that one be lost.
    pub(super) fn send_to_default(&mut self, raw: Bytes, kind: Kind, silent: bool) {
        match self.default_index() {
            Some(node) => {
                let mut part = Part::new(raw, None, Some(node));
                part.pinned = false;
                self.one_part(part, kind, silent);
            }
            None => self.answer(self.no_node(), silent),
        }
    }

    /// A command for node `node` and no other.
    pub(super) fn send_to_node(&mut self, node: usize, raw: Bytes, kind: Kind, silent: bool) {
        self.one_part(Part::new(raw, None, Some(node)), kind, silent);
    }

    pub(super) fn one_part(&mut self, part: Part, kind: Kind, silent: bool) {
        self.parts_entry(smallvec::smallvec![part], Merge::One, kind, silent);
    }

    /// A command of these parts, each sent (or parked), their replies merged by `merge`.
    pub(super) fn parts_entry(&mut self, parts: Parts, merge: Merge, kind: Kind, silent: bool) {
        let count = parts.len() as u16;
        let seq = self.push_entry(Entry {
            parts,
            merge,
            kind,
            reply: None,
            silent,
        });
        for part in 0..count {
            self.send_first(seq, part);
        }
        self.release();
    }

    /// Where `args` go by their keys (left in `positions`). Behind Sentinel every key is
    /// in slot 0: one primary holds them all, nothing is split or refused across slots,
    /// and a read waits for the client's commands in flight on another node (the slot's
    /// flight) before it goes to a replica.
    pub(super) fn route_of(&mut self, args: Args<'_>) -> Route {
        let table = std::sync::Arc::clone(&self.table);
        let info = match args.get(0) {
            Some(name) => table.classify(name, || args.get(1)),
            None => table.unknown(),
        };
        let mut positions = std::mem::take(&mut self.positions);
        let routed = route(info, args.len(), |i| args.get(i), &mut positions);
        self.positions = positions;
        match routed {
            Route::Slot(_) | Route::CrossSlot if !self.view.is_sharded() => Route::Slot(0),
            routed => routed,
        }
    }

    /// The link to the primary serving `slot`, if one does.
    pub(super) fn primary_index(&mut self, slot: u16) -> Option<usize> {
        let address = self.view.map()?.shard_of(slot)?.primary.clone();
        self.node_for(&address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_commands_are_keyed_by_kind() {
        assert_eq!(
            state_key(b"CLIENT", b"SETINFO", b"LIB-NAME").unwrap(),
            b"CLIENT SETINFO LIB-NAME"
        );
        assert_eq!(state_key(b"AUTH", b"U", b"").unwrap(), b"AUTH");
        assert!(state_key(b"CLIENT", b"LIST", b"").is_none());
        assert!(state_key(b"GET", b"K", b"").is_none());
    }
}
