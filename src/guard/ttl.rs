//! The default-TTL guard: keys written without an expiry get one, chosen by key pattern,
//! and client-given expiries above a rule's `max_ttl` are lowered to it.
//!
//! How each command gets its TTL, so the client sees exactly the replies it would without
//! the guard:
//! - `SET` with none of EX/PX/EXAT/PXAT/KEEPTTL gets `PX <ttl>` appended (NX, XX and GET
//!   keep working as they are). A SET whose value is too large to hold is streamed, so its
//!   options are not known when it is sent: it gets a hidden `PEXPIRE key <ttl> NX` after it.
//! - `GETSET k v` becomes `SET k v GET PX <ttl>` (same reply).
//! - `SETNX`, `MSET`, `MSETNX`, `HSET`, `HMSET`, `HSETNX`, and the commands a rule adds
//!   (`LPUSH`, `SADD`, `INCR`, ...), are followed by a hidden `PEXPIRE key <ttl> NX` per key.
//!   `NX` leaves a TTL the key already has alone. The PEXPIRE runs whatever the write's
//!   outcome, so a key matching a TTL rule that had no TTL gets one even when the write
//!   failed (for example HSET on an existing string key): a key under a TTL rule is meant to
//!   expire.
//! - SETEX, PSETEX, SET ... EX/PX/EXAT/PXAT, GETEX, EXPIRE, PEXPIRE, EXPIREAT and PEXPIREAT
//!   are left alone unless their expiry is beyond the rule's `max_ttl`, which then replaces
//!   it (absolute times are compared with the proxy's clock). SET ... KEEPTTL, PERSIST and
//!   RESTORE are left alone.
//!
//! A rule with `ttl = "none"` exempts its keys (and stops the search: first match wins).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

use super::{decimal, encode_appending, encode_arg, encode_header, encode_replacing, first_rule};
use super::{CommandView, Guard, Mode, Rule, RuleSpec, Verdict};
use crate::command::CommandInfo;
use crate::config::{ConfigError, RawTtlGuard};
use crate::identity::ClientIdentity;

/// One rule's TTL settings.
#[derive(Debug)]
pub struct TtlLimits {
    /// TTL for keys written without one; `None` exempts the keys.
    pub ttl: Option<Duration>,
    /// `ttl` in milliseconds as decimal text, written once at build instead of per command.
    pub ttl_millis: Box<[u8]>,
    /// Largest TTL a client may set.
    pub max_ttl: Option<Duration>,
    /// Extra key-creating commands (lower-case names).
    pub commands: Vec<String>,
}

/// The default-TTL guard.
#[derive(Debug)]
pub struct TtlGuard {
    rules: Vec<Rule<TtlLimits>>,
}

const ADDED: &str = "ttl_added";
const CLAMPED: &str = "ttl_clamped";

/// Commands that create keys and get a TTL by default.
const DEFAULT_CREATING: &[&str] = &[
    "set", "setnx", "getset", "mset", "msetnx", "hset", "hmset", "hsetnx",
];
/// Commands that carry an expiry a rule's `max_ttl` may lower.
const CARRYING_TTL: &[&str] = &[
    "set",
    "setex",
    "psetex",
    "getex",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
];

impl TtlGuard {
    /// Build the guard from `[guards.ttl]`.
    pub fn build(raw: &RawTtlGuard, mode: Mode, logs: u32) -> Result<Self, ConfigError> {
        let key = "guards.ttl.rules";
        let mut rules = Vec::new();
        for r in &raw.rules {
            let ttl = match r.ttl.as_str() {
                "none" => None,
                s => Some(
                    humantime::parse_duration(s).map_err(|e| ConfigError::Invalid {
                        key,
                        reason: format!(
                            "rule `{}`: ttl `{s}` is not a duration or `none` ({e})",
                            r.pattern
                        ),
                    })?,
                ),
            };
            if ttl.is_some_and(|t| t.as_millis() == 0) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("rule `{}`: ttl must be at least 1ms", r.pattern),
                });
            }
            let limits = TtlLimits {
                ttl_millis: ttl
                    .map(|t| t.as_millis().to_string().into_bytes().into_boxed_slice())
                    .unwrap_or_default(),
                ttl,
                max_ttl: r.max_ttl.map(|d| d.0),
                commands: r.commands.iter().map(|c| c.to_ascii_lowercase()).collect(),
            };
            let spec = RuleSpec {
                name: None,
                pattern: &r.pattern,
                user: r.user.as_deref(),
                client_name: r.client_name.as_deref(),
                client_address: r.client_address,
                mode: r.mode.as_deref(),
            };
            rules.push(Rule::new(
                "ttl",
                spec,
                mode,
                &[ADDED, CLAMPED],
                logs,
                limits,
                key,
            )?);
        }
        Ok(TtlGuard { rules })
    }

    fn creates(&self, name: &str) -> bool {
        DEFAULT_CREATING.contains(&name)
            || self
                .rules
                .iter()
                .any(|r| r.limits.commands.iter().any(|c| c == name))
    }

    fn act(
        &self,
        rule: &Rule<TtlLimits>,
        action: &'static str,
        verdict: Verdict,
        client: &ClientIdentity,
        key: &[u8],
    ) -> Verdict {
        rule.count(action);
        if rule.mode == Mode::Observe {
            if let Some(suppressed) = rule.may_log() {
                tracing::info!(guard = "ttl", rule = %rule.name, action, client = %client,
                    key = %super::printable_key(key), suppressed, "observe: would change the command");
            }
            return Verdict::Forward;
        }
        verdict
    }
}

impl Guard for TtlGuard {
    fn name(&self) -> &'static str {
        "ttl"
    }

    fn wants(&self, info: &CommandInfo) -> bool {
        let name: &str = &info.name;
        self.creates(name) || CARRYING_TTL.contains(&name)
    }

    fn check(&self, cmd: &CommandView<'_>, client: &ClientIdentity, out: &mut BytesMut) -> Verdict {
        let name: &str = &cmd.info.name;
        // Writes of several keys (MSET, ...) judge each key by its own rule.
        if !CARRYING_TTL.contains(&name) && name != "getset" {
            return if self.creates(name) {
                self.hidden_expires(cmd, client, out)
            } else {
                Verdict::Forward
            };
        }
        // The rest name one key, the first.
        let Some(key) = cmd.keys.first().and_then(|&k| cmd.arg(k)) else {
            return Verdict::Forward;
        };
        let Some(rule) = first_rule(&self.rules, key, client) else {
            return Verdict::Forward;
        };
        match name {
            "set" => self.check_set(cmd, rule, client, key, out),
            "getset" if cmd.is_whole() && cmd.args.len() == 3 => {
                if rule.limits.ttl.is_none() {
                    return Verdict::Forward;
                }
                let ms: &[u8] = &rule.limits.ttl_millis;
                encode_header(out, 6);
                encode_arg(out, b"SET");
                encode_arg(out, key);
                encode_arg(out, cmd.arg(2).unwrap_or_default());
                encode_arg(out, b"GET");
                encode_arg(out, b"PX");
                encode_arg(out, ms);
                let v = Verdict::Rewrite {
                    replacement: Some(out.len()),
                    hidden: 0,
                };
                self.act(rule, ADDED, v, client, key)
            }
            "setex" | "expire" => {
                self.clamp(cmd, rule, client, key, 2, Expiry::Relative(1000), out)
            }
            "psetex" | "pexpire" => self.clamp(cmd, rule, client, key, 2, Expiry::Relative(1), out),
            "expireat" => self.clamp(cmd, rule, client, key, 2, Expiry::Absolute(1000), out),
            "pexpireat" => self.clamp(cmd, rule, client, key, 2, Expiry::Absolute(1), out),
            "getex" => match find_expiry_option(cmd, 2) {
                Some((i, expiry)) => self.clamp(cmd, rule, client, key, i + 1, expiry, out),
                None => Verdict::Forward,
            },
            _ => Verdict::Forward,
        }
    }
}

/// Which kind of expiry option an argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// EX or PX, with the unit in milliseconds.
    Relative(u64),
    /// EXAT or PXAT, with the unit in milliseconds.
    Absolute(u64),
    /// KEEPTTL or PERSIST: the client chose.
    Keep,
}

fn find_expiry_option(cmd: &CommandView<'_>, from: usize) -> Option<(usize, Expiry)> {
    (from..cmd.args.len()).find_map(|i| {
        let a = cmd.arg(i)?;
        let kind = if a.eq_ignore_ascii_case(b"ex") {
            Expiry::Relative(1000)
        } else if a.eq_ignore_ascii_case(b"px") {
            Expiry::Relative(1)
        } else if a.eq_ignore_ascii_case(b"exat") {
            Expiry::Absolute(1000)
        } else if a.eq_ignore_ascii_case(b"pxat") {
            Expiry::Absolute(1)
        } else if a.eq_ignore_ascii_case(b"keepttl") || a.eq_ignore_ascii_case(b"persist") {
            Expiry::Keep
        } else {
            return None;
        };
        Some((i, kind))
    })
}

impl TtlGuard {
    fn check_set(
        &self,
        cmd: &CommandView<'_>,
        rule: &Rule<TtlLimits>,
        client: &ClientIdentity,
        key: &[u8],
        out: &mut BytesMut,
    ) -> Verdict {
        if !cmd.is_whole() {
            // The options follow the value, which is streaming: add the TTL afterwards, NX so
            // an expiry the SET itself sets is kept.
            return self.hidden_expires(cmd, client, out);
        }
        match find_expiry_option(cmd, 3) {
            Some((i, expiry)) => self.clamp(cmd, rule, client, key, i + 1, expiry, out),
            None => {
                if rule.limits.ttl.is_none() {
                    return Verdict::Forward;
                }
                let ms: &[u8] = &rule.limits.ttl_millis;
                encode_appending(cmd, &[b"PX", ms], out);
                let v = Verdict::Rewrite {
                    replacement: Some(out.len()),
                    hidden: 0,
                };
                self.act(rule, ADDED, v, client, key)
            }
        }
    }

    /// A hidden `PEXPIRE key ttl NX` after the command for each key whose rule has a TTL.
    fn hidden_expires(
        &self,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        out: &mut BytesMut,
    ) -> Verdict {
        let mut hidden = 0;
        let mut decided: Option<(&Rule<TtlLimits>, &[u8])> = None;
        for &k in cmd.keys {
            let Some(key) = cmd.arg(k) else { continue };
            let Some(rule) = first_rule(&self.rules, key, client) else {
                continue;
            };
            if rule.limits.ttl.is_none() {
                continue;
            }
            rule.count(ADDED);
            if rule.mode == Mode::Observe {
                if let Some(suppressed) = rule.may_log() {
                    tracing::info!(guard = "ttl", rule = %rule.name, action = ADDED, client = %client,
                        key = %super::printable_key(key), suppressed, "observe: would add a TTL");
                }
                continue;
            }
            let ms: &[u8] = &rule.limits.ttl_millis;
            encode_header(out, 4);
            encode_arg(out, b"PEXPIRE");
            encode_arg(out, key);
            encode_arg(out, ms);
            encode_arg(out, b"NX");
            hidden += 1;
            decided = Some((rule, key));
        }
        match decided {
            Some(_) => Verdict::Rewrite {
                replacement: None,
                hidden,
            },
            None => Verdict::Forward,
        }
    }

    /// Lower the expiry in argument `index` to the rule's `max_ttl`: a relative one (EX,
    /// PX, SETEX, EXPIRE, ...) to `max_ttl` itself, an absolute one (EXAT, PXAT, EXPIREAT,
    /// ...) to now + `max_ttl`, in the argument's own unit.
    #[allow(clippy::too_many_arguments)]
    fn clamp(
        &self,
        cmd: &CommandView<'_>,
        rule: &Rule<TtlLimits>,
        client: &ClientIdentity,
        key: &[u8],
        index: usize,
        expiry: Expiry,
        out: &mut BytesMut,
    ) -> Verdict {
        let (Some(max), true) = (rule.limits.max_ttl, cmd.is_whole()) else {
            return Verdict::Forward;
        };
        let Some(given) = cmd.arg(index).and_then(crate::scanner::request::parse_int) else {
            return Verdict::Forward; // Redis answers the syntax error itself.
        };
        let max_ms = max.as_millis() as u64;
        let limit = match expiry {
            Expiry::Relative(unit_ms) => (max_ms / unit_ms).max(1),
            Expiry::Absolute(unit_ms) => {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                (now_ms + max_ms) / unit_ms
            }
            Expiry::Keep => return Verdict::Forward,
        };
        if given <= 0 || (given as u64) <= limit {
            return Verdict::Forward;
        }
        let mut digits = [0u8; 20];
        encode_replacing(cmd, index, decimal(limit, &mut digits), out);
        let v = Verdict::Rewrite {
            replacement: Some(out.len()),
            hidden: 0,
        };
        self.act(rule, CLAMPED, v, client, key)
    }
}
