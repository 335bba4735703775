//! Fail-open cache keys: while Redis is unreachable, commands on keys of a
//! `[[guards.fail_open.rules]]` rule are answered as an empty cache would answer them, so an
//! application using Redis as a cache keeps serving (from its database) instead of failing.
//!
//! Off by default, and only for the commands below, each answered exactly as Redis answers
//! it for a key that does not exist:
//!
//! | commands | answer |
//! |---|---|
//! | GET, GETDEL, GETEX, HGET, LINDEX | nil (a miss) |
//! | MGET, HMGET | an array of nils |
//! | HGETALL, HKEYS, HVALS, SMEMBERS, LRANGE, ZRANGE | an empty array (RESP3: empty map or set) |
//! | EXISTS, DEL, UNLINK, HDEL, HEXISTS, SISMEMBER, EXPIRE, PEXPIRE | 0 |
//! | TTL, PTTL | -2 |
//! | SET, SETEX, PSETEX, MSET | OK (SET with GET: nil; with NX: OK; with XX: nil) |
//! | SETNX | 1 |
//! | HSET | the number of fields |
//!
//! Every key of the command must match a fail-open rule; any other command while Redis is
//! down gets the usual `upstream unreachable` error. Writes answered OK are not stored: the
//! cache is empty when Redis comes back, which is what a cache-aside application expects.
//!
//! Fail-open is a guard of the chain whose only phase is the one run while Redis is
//! unreachable ([`Guard::when_upstream_down`]): its normal check never runs.

use bytes::Bytes;

use super::by_command::ByCommand;
use super::phase::Guard;
use super::rule::{Action, Mode, Rule, RuleKind, RuleSpec};
use super::verdict::CommandView;
use crate::command::{CommandInfo, CommandTable};
use crate::config::RawFailOpen;
use crate::identity::ClientIdentity;

/// How a command is answered while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    Nil,
    /// One nil per argument from this index on (MGET keys, HMGET fields).
    NilsFrom(usize),
    EmptyArray,
    EmptyMap,
    EmptySet,
    Zero,
    MinusTwo,
    Ok,
    /// SET: OK, or nil with GET or XX.
    Set,
    One,
    /// HSET: the number of field-value pairs after the key.
    FieldCount,
}

/// The fail-open rules and the commands they answer.
#[derive(Debug)]
pub struct FailOpen {
    rules: Vec<Rule<()>>,
    answers: ByCommand<Option<Miss>>,
}

const ACTIONS: &[Action] = &[Action::Answer];

/// The commands answered, and how (see the module documentation).
const ANSWERS: &[(&[&str], Miss)] = &[
    (&["get", "getdel", "getex", "hget", "lindex"], Miss::Nil),
    (&["mget"], Miss::NilsFrom(1)),
    (&["hmget"], Miss::NilsFrom(2)),
    (&["hgetall"], Miss::EmptyMap),
    (&["smembers"], Miss::EmptySet),
    (&["hkeys", "hvals", "lrange", "zrange"], Miss::EmptyArray),
    (
        &[
            "exists",
            "del",
            "unlink",
            "hdel",
            "hexists",
            "sismember",
            "expire",
            "pexpire",
        ],
        Miss::Zero,
    ),
    (&["ttl", "pttl"], Miss::MinusTwo),
    (&["set"], Miss::Set),
    (&["setex", "psetex", "mset"], Miss::Ok),
    (&["setnx"], Miss::One),
    (&["hset"], Miss::FieldCount),
];

impl FailOpen {
    /// Build from `[guards.fail_open]`, for the commands of `table`; `None` without rules.
    pub fn build(raw: &RawFailOpen, table: &CommandTable, logs_per_second: u32) -> Option<Self> {
        if raw.rules.is_empty() {
            return None;
        }
        let kind = RuleKind {
            guard: "fail_open",
            actions: ACTIONS,
            default_mode: Mode::Enforce,
            logs_per_second,
        };
        let rules = raw
            .rules
            .iter()
            .map(|r| Rule::new(kind, RuleSpec::new(&r.pattern, &r.clients, None), ()))
            .collect();
        let answers = ByCommand::build(table, |info| {
            ANSWERS
                .iter()
                .find(|(names, _)| names.contains(&&*info.name))
                .map(|&(_, miss)| miss)
        });
        Some(FailOpen { rules, answers })
    }

    /// The reply an empty cache gives, when every key of the command is a fail-open key.
    fn answer(&self, cmd: &CommandView<'_>, client: &ClientIdentity, resp3: bool) -> Option<Bytes> {
        let miss = self.answers.get(cmd.info)?;
        if cmd.keys.is_empty() {
            return None;
        }
        let mut rule = None;
        for &i in cmd.keys {
            let key = cmd.arg(i)?;
            rule = Some(self.rules.iter().find(|r| r.applies(key, client))?);
        }
        rule?.count(Action::Answer);
        let nil: &[u8] = if resp3 { b"_\r\n" } else { b"$-1\r\n" };
        let reply = match miss {
            Miss::Nil => Bytes::copy_from_slice(nil),
            Miss::NilsFrom(from) => {
                let n = cmd.args.len().saturating_sub(from);
                let mut out = Vec::with_capacity(8 + n * nil.len());
                crate::resp::array_header(&mut out, n);
                for _ in 0..n {
                    out.extend_from_slice(nil);
                }
                Bytes::from(out)
            }
            Miss::EmptyArray => Bytes::from_static(b"*0\r\n"),
            Miss::EmptyMap if resp3 => Bytes::from_static(b"%0\r\n"),
            Miss::EmptySet if resp3 => Bytes::from_static(b"~0\r\n"),
            Miss::EmptyMap | Miss::EmptySet => Bytes::from_static(b"*0\r\n"),
            Miss::Zero => Bytes::from_static(b":0\r\n"),
            Miss::MinusTwo => Bytes::from_static(b":-2\r\n"),
            Miss::Ok => Bytes::from_static(b"+OK\r\n"),
            Miss::Set => {
                let nil_reply = (3..cmd.args.len()).any(|i| {
                    cmd.arg(i).is_some_and(|a| {
                        a.eq_ignore_ascii_case(b"get") || a.eq_ignore_ascii_case(b"xx")
                    })
                });
                if nil_reply {
                    Bytes::copy_from_slice(nil)
                } else {
                    Bytes::from_static(b"+OK\r\n")
                }
            }
            Miss::One => Bytes::from_static(b":1\r\n"),
            Miss::FieldCount => {
                let mut out = Vec::with_capacity(24);
                crate::resp::integer(&mut out, (cmd.args.len().saturating_sub(2) / 2) as i64);
                Bytes::from(out)
            }
        };
        Some(reply)
    }
}

impl Guard for FailOpen {
    fn name(&self) -> &'static str {
        "fail_open"
    }

    fn wants_when_down(&self, info: &CommandInfo) -> bool {
        self.answers.get(info).is_some()
    }

    fn when_upstream_down(
        &self,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        resp3: bool,
    ) -> Option<Bytes> {
        self.answer(cmd, client, resp3)
    }
}
