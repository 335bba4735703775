//! The `[[upstream.read_from]]` rules, compiled ([`ReadRules`]), the rules in force that a
//! reload replaces ([`LiveReadRules`]), and what the command table must say of a command
//! for it to be read from a replica ([`may_read_from_replica`]). The router
//! ([`super::replica`]) applies them.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::command::{CommandInfo, Flags};
use crate::config::{RawReadRule, ReadFrom};
use crate::guard::pattern::KeyPattern;

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

/// The read rules in force, shared by every client's router and replaced whole by a reload
/// (`RESPGUARD RELOAD`, SIGHUP): each command is routed wholly by the old rules or wholly
/// by the new ones, the next command of every client already by the new.
#[derive(Debug, Default)]
pub struct LiveReadRules {
    rules: ArcSwap<ReadRules>,
}

impl LiveReadRules {
    /// The rules of the configuration, in force until [`Self::replace`].
    pub fn new(rules: ReadRules) -> Self {
        LiveReadRules {
            rules: ArcSwap::from_pointee(rules),
        }
    }

    /// The rules in force now.
    pub fn current(&self) -> arc_swap::Guard<Arc<ReadRules>> {
        self.rules.load()
    }

    /// Put `rules` in force for every router's next command.
    pub fn replace(&self, rules: ReadRules) {
        self.rules.store(Arc::new(rules));
    }
}

/// Whether the command table lets `info` run on a replica: flagged `readonly`, and not
/// `blocking`. TOUCH is the exception: Redis flags it read-only, but its purpose is the
/// access time that eviction reads on the primary, which a replica's copy would not move.
pub fn may_read_from_replica(info: &CommandInfo) -> bool {
    info.flags.contains(Flags::READONLY)
        && !info.flags.contains(Flags::BLOCKING)
        && &*info.name != "touch"
}

/// Whether a replica's reply says it cannot serve reads now: loading its data set, or cut
/// from its primary with `replica-serve-stale-data no`.
pub fn replica_unready(reply: &[u8]) -> bool {
    reply.starts_with(b"-LOADING") || reply.starts_with(b"-MASTERDOWN")
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
            "SET", "EVAL", "EVALSHA", "FCALL", "BLPOP", "XREAD", "TOUCH", "NOSUCH",
        ] {
            assert!(!may(name), "{name}");
        }
    }
}
