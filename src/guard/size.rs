//! The oversized-value guard: refuses writes whose values, whole request or element count
//! exceed a rule's limits, before any of it reaches Redis.
//!
//! A value is any argument of a write command that is neither the command name nor a key
//! (string values, hash field values, list/set/zset members, stream fields, APPEND and
//! SETRANGE payloads, RESTORE payloads, script bodies and arguments). For a command too large
//! to hold, the decision is made when the large argument's length line arrives: the proxy
//! then discards the rest of the command as it streams in, never holding it, answers the
//! error, and the connection stays usable. A value under the limit still streams through.
//!
//! What cannot be judged that early: a command whose first large argument is under the limit
//! has started streaming to Redis, so a later argument of the same command is no longer
//! checked (a multi-value write with two large values; `max_request` on the declared part
//! still applies).
//!
//! With several keys every key's rule is checked against that key's own values, and the
//! first violation found is reported. Where values sit between keys (MSET, MSETNX), a value
//! belongs to the key before it; values before the first key, and all values of a command
//! whose keys are adjacent (scripts, SMOVE, BITOP), belong to every key. So
//! `MSET blob:a 1 other:b <large>` is judged by blob:a's rule on `1` only.

use bytes::BytesMut;

use super::phase::Guard;
use super::rule::{first_rule, printable_key, Action, Mode, Rule, RuleKind, RuleSpec};
use super::verdict::{CommandView, Verdict};
use crate::command::CommandInfo;
use crate::config::{ConfigError, RawSizeGuard};
use crate::identity::ClientIdentity;

/// One rule's size limits.
#[derive(Debug)]
pub struct SizeLimits {
    /// Largest value.
    pub max_value: Option<u64>,
    /// Largest whole command.
    pub max_request: Option<u64>,
    /// Most arguments other than the name and keys belonging to one key.
    pub max_elements: Option<u64>,
}

/// The oversized-value guard.
#[derive(Debug)]
pub struct SizeGuard {
    rules: Vec<Rule<SizeLimits>>,
    /// The smallest `max_value` or `max_request` of any rule (`u64::MAX` when none sets
    /// one): a command no larger breaks neither limit for any key, since no value is longer
    /// than the command holding it.
    safe_size: u64,
    /// The smallest `max_elements` of any rule (`u64::MAX` when none sets one): a command
    /// with no more arguments after its name breaks no element limit.
    safe_elements: u64,
}

const ACTIONS: &[Action] = &[Action::Refused];

impl SizeGuard {
    /// Build the guard from `[guards.size]`.
    pub fn build(raw: &RawSizeGuard, mode: Mode, logs: u32) -> Result<Self, ConfigError> {
        let key = "guards.size.rules";
        let kind = RuleKind {
            guard: "size",
            actions: ACTIONS,
            default_mode: mode,
            logs_per_second: logs,
        };
        let mut rules = Vec::new();
        for r in &raw.rules {
            if r.max_value.is_none() && r.max_request.is_none() && r.max_elements.is_none() {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!(
                        "rule `{}` sets none of max_value, max_request, max_elements",
                        r.pattern
                    ),
                });
            }
            let limits = SizeLimits {
                max_value: r.max_value.map(|s| s.0),
                max_request: r.max_request.map(|s| s.0),
                max_elements: r.max_elements,
            };
            let spec = RuleSpec::new(&r.pattern, &r.clients, r.mode);
            rules.push(Rule::new(kind, spec, limits));
        }
        let smallest = |limit: fn(&SizeLimits) -> Option<u64>| {
            rules
                .iter()
                .filter_map(|r| limit(&r.limits))
                .min()
                .unwrap_or(u64::MAX)
        };
        let safe_size = smallest(|l| l.max_value).min(smallest(|l| l.max_request));
        let safe_elements = smallest(|l| l.max_elements);
        Ok(SizeGuard {
            rules,
            safe_size,
            safe_elements,
        })
    }

    /// True when `cmd` is within every rule's limits whatever its keys: it is no larger than
    /// the smallest value or request limit (a value, streamed or not, is part of the
    /// command's size) and has no more arguments after its name than the smallest element
    /// limit (a key's values are among them). Most writes are decided here, without finding
    /// any key's rule.
    #[inline]
    fn within_every_limit(&self, cmd: &CommandView<'_>) -> bool {
        cmd.size <= self.safe_size && (cmd.argc.saturating_sub(1) as u64) <= self.safe_elements
    }

    /// The first limit of `rule` that `cmd` breaks for `key`, as the reason for the error.
    /// `values` are the key's own values.
    fn violation(
        &self,
        cmd: &CommandView<'_>,
        rule: &Rule<SizeLimits>,
        key: &[u8],
        values: Values,
    ) -> Option<String> {
        let l = &rule.limits;
        // The key is made printable only for an error: this runs on every checked write.
        let k = || printable_key(key);
        let name = &rule.name;
        if let (Some(max), Some(n)) = (l.max_value, values.largest) {
            if n > max {
                return Some(format!(
                    "value of {n} bytes for key '{}' exceeds the {max}-byte limit of size rule '{name}'",
                    k()
                ));
            }
        }
        if let Some(max) = l.max_request {
            if cmd.size > max {
                let at_least = if cmd.is_whole() { "" } else { "at least " };
                return Some(format!(
                    "request of {at_least}{} bytes for key '{}' exceeds the {max}-byte limit of size rule '{name}'",
                    cmd.size,
                    k()
                ));
            }
        }
        if let Some(max) = l.max_elements {
            let elements = values.count;
            if elements > max {
                return Some(format!(
                    "{elements} elements for key '{}' exceed the limit of {max} of size rule '{name}'",
                    k()
                ));
            }
        }
        None
    }
}

/// The values one key is judged on: how many, and the largest (including one streaming in
/// now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Values {
    count: u64,
    largest: Option<u64>,
    /// Their bytes, the one streaming in counted at its declared length.
    bytes: u64,
}

impl Values {
    fn merge(self, other: Values) -> Values {
        Values {
            count: self.count + other.count,
            largest: self.largest.max(other.largest),
            bytes: self.bytes + other.bytes,
        }
    }
}

/// What one key of a write is given, as the size guard judges it: the arguments that are
/// neither the name nor a key and belong to the key (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyValues {
    /// How many values (options such as `EX 10` included).
    pub count: u64,
    /// The largest value's length in bytes.
    pub largest: u64,
    /// All the values' bytes.
    pub bytes: u64,
}

/// Call `each(n, values)` for every key `n` of `cmd.keys` with that key's own values: the
/// one description of whose values are whose, shared with the keyspace insight.
pub fn values_by_key(cmd: &CommandView<'_>, mut each: impl FnMut(usize, KeyValues)) {
    let ownership = Ownership::of(cmd);
    for n in 0..cmd.keys.len() {
        let v = ownership.values_of(cmd, n);
        each(
            n,
            KeyValues {
                count: v.count,
                largest: v.largest.unwrap_or(0),
                bytes: v.bytes,
            },
        );
    }
}

/// The values among arguments `from..to` (which hold no key): those buffered are measured,
/// the one streaming in counts with its declared length, later ones only by number.
fn values_in(cmd: &CommandView<'_>, from: usize, to: usize) -> Values {
    let to = to.min(cmd.argc).max(from);
    let buffered = from.min(cmd.args.len())..to.min(cmd.args.len());
    cmd.count_examined(buffered.len());
    let streamed = cmd
        .streaming
        .filter(|_| (from..to).contains(&cmd.args.len()));
    let lengths = buffered.map(|i| cmd.args[i].len() as u64).chain(streamed);
    let (largest, bytes) = lengths.fold((None, 0), |(max, sum), n| (max.max(Some(n)), sum + n));
    Values {
        count: (to - from) as u64,
        largest,
        bytes,
    }
}

/// Whose values are whose: values before the first key belong to every key; when keys are
/// adjacent (no value between two of them) every value belongs to every key; otherwise the
/// values after a key, up to the next key, are that key's own.
struct Ownership {
    shared: Values,
    interleaved: bool,
}

impl Ownership {
    fn of(cmd: &CommandView<'_>) -> Self {
        let (Some(&first), Some(&last)) = (cmd.keys.first(), cmd.keys.last()) else {
            return Ownership {
                shared: values_in(cmd, 1, cmd.argc),
                interleaved: false,
            };
        };
        // Keys are sorted and unique: adjacent exactly when they span their own number.
        let interleaved = last - first + 1 != cmd.keys.len();
        let before = values_in(cmd, 1, first);
        let shared = if interleaved {
            before
        } else {
            before.merge(values_in(cmd, last + 1, cmd.argc))
        };
        Ownership {
            shared,
            interleaved,
        }
    }

    /// The values of the key at position `n` of `cmd.keys`.
    fn values_of(&self, cmd: &CommandView<'_>, n: usize) -> Values {
        if !self.interleaved {
            return self.shared;
        }
        let next = cmd.keys.get(n + 1).copied().unwrap_or(cmd.argc);
        self.shared.merge(values_in(cmd, cmd.keys[n] + 1, next))
    }
}

impl Guard for SizeGuard {
    fn name(&self) -> &'static str {
        "size"
    }

    fn wants(&self, info: &CommandInfo) -> bool {
        info.is_write()
    }

    #[inline]
    fn check(
        &self,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        _out: &mut BytesMut,
    ) -> Verdict {
        if self.within_every_limit(cmd) {
            return Verdict::Forward;
        }
        self.check_each_key(cmd, client)
    }
}

impl SizeGuard {
    /// [`Guard::check`] for a command over some limit's size: the first key whose rule
    /// it breaks decides.
    #[inline(never)]
    fn check_each_key(&self, cmd: &CommandView<'_>, client: &ClientIdentity) -> Verdict {
        let ownership = Ownership::of(cmd);
        for (n, &k) in cmd.keys.iter().enumerate() {
            let Some(key) = cmd.arg(k) else { continue };
            let Some(rule) = first_rule(&self.rules, key, client) else {
                continue;
            };
            let values = ownership.values_of(cmd, n);
            let Some(reason) = self.violation(cmd, rule, key, values) else {
                continue;
            };
            if !rule.decided(Action::Refused, client, &cmd.info.name, || &reason) {
                return Verdict::Forward;
            }
            return Verdict::Refuse(crate::resp::error(&format!("ERR respguard: {reason}")));
        }
        Verdict::Forward
    }
}
