//! Reading from replicas (`[[upstream.read_from]]`): which reads may go to a replica of
//! their slot's shard ([`ReadRules`], [`may_read_from_replica`]), which replica a client
//! reads from, and the replica connections' `READONLY`.
//!
//! A read goes to a replica only when the command table flags it `readonly` (not
//! `blocking`: EVAL, EVALSHA and FCALL are not flagged so, their `_RO` forms are), every key
//! it names is in one slot (or, split across slots, in the part's slot) and matched by a
//! rule reading from replicas, and the client is in no transaction and watches no key.
//! Each client reads from one replica per shard, chosen by its router's place among the
//! clients (`pick`), so one client's reads see one replica's progress.
//!
//! A replica connection gets a hidden `READONLY` before its first read, and again after
//! anything that clears it (the client's own `READWRITE` or `RESET`, replayed on every
//! node). Under `prefer-replica`, a replica that cannot be reached, is lost with reads in
//! flight, or answers `-LOADING`/`-MASTERDOWN` is passed over for [`DOWN_FOR`], and those
//! reads are sent again to the primary (reads change nothing, so sending one again is
//! safe). A replica that answers `-MOVED` follows the ordinary redirection.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::args::Args;
use super::router::{Expect, Router};
use super::slot::key_slot;
use super::topology::Shard;
use crate::command::{CommandInfo, Flags};
use crate::config::{RawReadRule, ReadFrom};
use crate::guard::pattern::KeyPattern;
use crate::resp;

/// How long a replica found unreachable is passed over by `prefer-replica` reads before
/// it is tried again.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// The `[[upstream.read_from]]` rules, compiled: the first whose pattern matches a key says
/// where it is read.
#[derive(Debug, Default)]
pub struct ReadRules {
    rules: Vec<(KeyPattern, ReadFrom)>,
}

impl ReadRules {
    /// The rules of the configuration, in order. Rules that all read from primaries are
    /// kept as none: nothing then changes for any command.
    pub fn new(rules: &[RawReadRule]) -> Self {
        if rules.iter().all(|r| r.from == ReadFrom::Primary) {
            return ReadRules::default();
        }
        ReadRules {
            rules: rules
                .iter()
                .map(|r| (KeyPattern::new(&r.pattern), r.from))
                .collect(),
        }
    }

    /// True when every read goes to primaries.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Where `key` is read: its first matching rule's choice, else the primary.
    pub fn of(&self, key: &[u8]) -> ReadFrom {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(key))
            .map_or(ReadFrom::Primary, |&(_, from)| from)
    }

    /// Where a command naming `keys` is read: the choice closest to the primary among its
    /// keys' (a primary key keeps the whole command on the primary; `prefer-replica` with
    /// `replica` keeps the fallback). No key: the primary.
    pub fn of_keys<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> ReadFrom {
        let mut from = None;
        for key in keys {
            let this = self.of(key);
            if this == ReadFrom::Primary {
                return ReadFrom::Primary;
            }
            from = Some(match from {
                Some(ReadFrom::PreferReplica) => ReadFrom::PreferReplica,
                _ => this,
            });
        }
        from.unwrap_or(ReadFrom::Primary)
    }
}

/// Whether the command table lets `info` run on a replica: flagged `readonly`, and not
/// `blocking`.
pub fn may_read_from_replica(info: &CommandInfo) -> bool {
    info.flags.contains(Flags::READONLY) && !info.flags.contains(Flags::BLOCKING)
}

/// Whether a replica's reply says it cannot serve reads now: loading its data set, or cut
/// from its primary with `replica-serve-stale-data no`.
pub fn replica_unready(reply: &[u8]) -> bool {
    reply.starts_with(b"-LOADING") || reply.starts_with(b"-MASTERDOWN")
}

impl Router {
    /// Where this command (`args`, whose keys `route_of` left in `positions`) is read;
    /// with `slot`, only its keys of that slot count (a part of a split command).
    pub(super) fn read_choice(&self, args: Args<'_>, slot: Option<u16>) -> ReadFrom {
        if self.rules.is_empty() || self.watch_node.is_some() || self.transaction.is_some() {
            return ReadFrom::Primary;
        }
        let info = match args.get(0) {
            Some(name) => self.table.classify(name, || args.get(1)),
            None => return ReadFrom::Primary,
        };
        if !may_read_from_replica(info) {
            return ReadFrom::Primary;
        }
        let keys = self
            .positions
            .iter()
            .filter_map(|&i| args.get(i))
            .filter(|key| slot.is_none_or(|s| key_slot(key) == s));
        self.rules.of_keys(keys)
    }

    /// The replica of `shard` this client reads from under `from`, if one is known (under
    /// `prefer-replica`, one not found unreachable lately).
    pub(super) fn replica_for(&self, shard: &Shard, from: ReadFrom) -> Option<String> {
        let n = shard.replicas.len();
        (0..n)
            .map(|k| &shard.replicas[(self.pick + k) % n])
            .find(|address| from == ReadFrom::Replica || !self.is_down(address))
            .cloned()
    }

    /// Send `READONLY` (hidden) on node `index` unless its connection has it.
    pub(super) fn ensure_readonly(&mut self, index: usize) {
        if !self.readonly[index] {
            self.send(index, resp::simple_command(b"READONLY"), Expect::Hidden);
            self.readonly[index] = true;
        }
    }

    /// `READONLY` again (hidden) on every replica connection, after a command that cleared
    /// it there (the client's `READWRITE`, `RESET`).
    pub(super) fn restore_readonly(&mut self) {
        for index in 0..self.links.len() {
            if self.readonly[index] && self.links[index].is_some() {
                self.send(index, resp::simple_command(b"READONLY"), Expect::Hidden);
            }
        }
    }

    /// Note that the replica at `address` could not serve: `prefer-replica` reads pass it
    /// over for [`DOWN_FOR`].
    pub(super) fn mark_down(&mut self, address: &str) {
        self.down
            .retain(|(a, since)| a != address && since.elapsed() < DOWN_FOR);
        self.down.push((address.to_string(), Instant::now()));
    }

    fn is_down(&self, address: &str) -> bool {
        self.down
            .iter()
            .any(|(a, since)| a == address && since.elapsed() < DOWN_FOR)
    }

    /// Whether part `part` of `seq` is a `prefer-replica` read that went to a replica (and
    /// so may be sent to the primary instead).
    pub(super) fn may_fall_back(&mut self, seq: u64, part: u16) -> bool {
        self.entry_mut(seq).is_some_and(|e| {
            let p = &e.parts[usize::from(part)];
            p.on_replica && p.read == ReadFrom::PreferReplica
        })
    }

    /// A `prefer-replica` read its replica could not serve: sent again where the map says
    /// now (the primary, the replica being passed over), as a redirection is; its error
    /// once it has had its share of those.
    pub(super) fn fall_back(&mut self, seq: u64, part: u16, error: Bytes) {
        if self.redirect(seq, part) {
            self.resend(seq, part, None);
        } else {
            self.finish_part(seq, part, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CommandTable;

    fn rule(pattern: &str, from: ReadFrom) -> RawReadRule {
        RawReadRule {
            pattern: pattern.into(),
            from,
        }
    }

    #[test]
    fn the_first_matching_rule_wins_and_a_primary_key_keeps_the_command_on_the_primary() {
        let rules = ReadRules::new(&[
            rule("r:secret:*", ReadFrom::Primary),
            rule("r:*", ReadFrom::Replica),
            rule("p:*", ReadFrom::PreferReplica),
        ]);
        assert_eq!(rules.of(b"r:1"), ReadFrom::Replica);
        assert_eq!(rules.of(b"r:secret:1"), ReadFrom::Primary);
        assert_eq!(rules.of(b"other"), ReadFrom::Primary);
        let of = |keys: &[&[u8]]| rules.of_keys(keys.iter().copied());
        assert_eq!(of(&[b"r:1", b"r:2"]), ReadFrom::Replica);
        assert_eq!(of(&[b"r:1", b"p:2"]), ReadFrom::PreferReplica);
        assert_eq!(of(&[b"p:1", b"r:2"]), ReadFrom::PreferReplica);
        assert_eq!(of(&[b"r:1", b"other"]), ReadFrom::Primary);
        assert_eq!(of(&[]), ReadFrom::Primary);
        assert!(ReadRules::new(&[rule("*", ReadFrom::Primary)]).is_empty());
    }

    #[test]
    fn only_read_only_commands_that_do_not_block_may_go_to_a_replica() {
        let table = CommandTable::builtin();
        let may = |name: &str| may_read_from_replica(table.lookup(&[name]));
        for name in [
            "GET",
            "MGET",
            "HGETALL",
            "EVAL_RO",
            "EVALSHA_RO",
            "FCALL_RO",
        ] {
            assert!(may(name), "{name}");
        }
        for name in [
            "SET", "EVAL", "EVALSHA", "FCALL", "BLPOP", "XREAD", "NOSUCH",
        ] {
            assert!(!may(name), "{name}");
        }
    }
}
