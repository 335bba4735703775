//! Reading from replicas (`[[upstream.read_from]]`): which reads go to a replica of their
//! slot's shard (by the rules of [`super::read_rules`]), which replica a client reads
//! from, and the replica connections' `READONLY`.
//!
//! A read goes to a replica only when the command table flags it `readonly` (not
//! `blocking`: EVAL, EVALSHA and FCALL are not flagged so, their `_RO` forms are) or it is
//! an EVAL whose shebang declares `no-writes`, every key
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
use super::read_rules::may_read_from_replica;
use super::router::{Expect, Router};
use super::slot::key_slot;
use super::topology::Shard;
use crate::command::shebang::declares_no_writes;
use crate::config::ReadFrom;
use crate::resp;

/// How long a replica found unreachable is passed over by `prefer-replica` reads before
/// it is tried again.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// Whether `args` is an `EVAL` of a script whose shebang declares `no-writes` (Redis runs
/// it on a read-only replica). `EVALSHA` and `FCALL` name a body the router has not read:
/// they stay on primaries (their `_RO` forms do not).
fn declared_no_writes(args: Args<'_>) -> bool {
    &*args.upper(0) == b"EVAL" && args.get(1).is_some_and(declares_no_writes)
}

impl Router {
    /// Where this command (`args`, whose keys `route_of` left in `positions`) is read;
    /// with `slot`, only its keys of that slot count (a part of a split command).
    pub(super) fn read_choice(&self, args: Args<'_>, slot: Option<u16>) -> ReadFrom {
        let rules = self.rules.current();
        if rules.is_empty() || self.watch_node.is_some() || self.transaction.is_some() {
            return ReadFrom::Primary;
        }
        let info = match args.get(0) {
            Some(name) => self.table.classify(name, || args.get(1)),
            None => return ReadFrom::Primary,
        };
        if !may_read_from_replica(info) && !declared_no_writes(args) {
            return ReadFrom::Primary;
        }
        let keys = self
            .positions
            .iter()
            .filter_map(|&i| args.get(i))
            .filter(|key| slot.is_none_or(|s| key_slot(key) == s));
        rules.of_keys(keys)
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

    /// Send `READONLY` (hidden) on node `index` unless its connection has it; behind
    /// Sentinel a replica serves reads without it (and refuses it: no cluster support),
    /// so the connection is only marked as one serving replica reads.
    pub(super) fn ensure_readonly(&mut self, index: usize) {
        if !self.readonly[index] {
            if self.view.is_sharded() {
                self.send(index, resp::simple_command(b"READONLY"), Expect::Hidden);
            }
            self.readonly[index] = true;
        }
    }

    /// `READONLY` again (hidden) on every replica connection, after a command that cleared
    /// it there (the client's `READWRITE`, `RESET`).
    pub(super) fn restore_readonly(&mut self) {
        if !self.view.is_sharded() {
            return;
        }
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

    /// Whether part `part` of `seq` was last sent to a replica.
    pub(super) fn on_replica(&mut self, seq: u64, part: u16) -> bool {
        self.entry_mut(seq)
            .is_some_and(|e| e.parts[usize::from(part)].on_replica)
    }

    /// A read its replica answered `-NOSCRIPT` (`EVALSHA_RO` of a script loaded through
    /// the proxy, which loads scripts on primaries): sent again to the primary, once.
    pub(super) fn read_on_primary(&mut self, seq: u64, part: u16, error: Bytes) {
        if let Some(entry) = self.entry_mut(seq) {
            entry.parts[usize::from(part)].read = ReadFrom::Primary;
        }
        self.fall_back(seq, part, error);
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
