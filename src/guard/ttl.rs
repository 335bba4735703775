//! The default-TTL guard: keys written without an expiry get one, chosen by key pattern,
//! and client-given expiries above a rule's `max_ttl` are lowered to it.
//!
//! The guard acts only where it must, and so that the client sees exactly the replies and
//! effects it would see without it: a write that changes nothing touches nothing (a WATCH on
//! the key stays clean), and no extra command can fail the client's transaction.
//! - `SET` with none of EX/PX/EXAT/PXAT/KEEPTTL gets `PX <ttl>` appended, and `GETSET k v`
//!   becomes `SET k v GET PX <ttl>`: Redis answers both exactly like the original.
//! - Every other guarded write is *wrapped*: sent as one `EVAL` of a fixed script
//!   (`ttl_script.lua`) that runs the client's command with `redis.pcall`, returns its reply
//!   unchanged (errors included, in the client's protocol), and only when that command
//!   succeeded, and for SETNX-like commands only when it changed something, gives the
//!   written keys their expiry with `PEXPIRE … NX` (the rule's TTL when the key has none) or
//!   `PEXPIRE … LT` (lower an expiry above `max_ttl`; a key without one counts as infinite).
//!   Redis runs the script atomically. A key the client's user may not `PEXPIRE` (ACL) is
//!   left as it is, so the reply never changes because of the guard.
//!   Clamping works the same way, so Redis itself validates the client's expiry (an invalid
//!   one is Redis's error and writes nothing) and `EXPIRE … GT` keeps Redis's answer.
//! - Only keys the command *writes* (key specifications flagged `OW`, or `RW` with
//!   `INSERT`/`UPDATE`, plus SORT's `STORE` destination) get a TTL: `COPY src dst` never
//!   gives `src` one.
//! - A command Redis would reject for its arity is never changed.
//! - A command that cannot be wrapped (blocking, not allowed in scripts, or with more
//!   arguments than a script can pass on, [`MAX_WRAPPED_ARGS`]) gets a hidden
//!   `PEXPIRE key <ttl> NX` per key after it instead; then a write that failed may still
//!   give a key without a TTL its TTL (documented in `docs/guards.md`).
//! - A command too large to hold (streamed) is wrapped all the same: only its head is
//!   rewritten, and the rest streams to Redis unchanged. For a SET whose options follow the
//!   streamed value, a second script (`ttl_set_script.lua`) reads the options, and from
//!   them and the reply whether the SET wrote (NX, XX, GET).
//!
//! A rule with `ttl = "none"` exempts its keys (and stops the search: first match wins).
//!
//! **Job libraries' keys.** A catch-all rule (its pattern begins with a wildcard: `*`,
//! `*:tmp`, `[a-z]*`, see [`KeyPattern::is_catch_all`]) does not cover keys with a job
//! library's shape ([`library_of`]: Sidekiq's `queue:*` and `schedule`, RQ's `rq:*`,
//! Huey's `huey.*`, ...): for them the search goes on to the next rule. Those keys are the
//! library's bookkeeping (a queue, a hash of every job's data, results it expires itself);
//! a TTL given to them, or a result expiry lowered to `max_ttl`, loses jobs. A rule that
//! names them, by a pattern beginning with literal text (`bull:*`, `rq:job:*`,
//! `huey.results.*`), covers them like any other key. The library check runs only for keys
//! a catch-all rule matches, so a configuration without one pays nothing for it.
//! [`library_notes`] says at start and in `check-config` which libraries a catch-all rule
//! leaves alone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use smallvec::SmallVec;

use super::by_command::ByCommand;
use super::library::{covered_by, library_of, LIBRARIES};
use super::pattern::KeyPattern;
use super::phase::Guard;
use super::rewrite::{appending, EncodedArgs};
use super::rule::{printable_key, Action, Mode, Rule, RuleKind, RuleSpec};
use super::verdict::{CommandView, ScriptAccess, Verdict};
use crate::command::{CommandInfo, CommandTable, Flags};
use crate::config::{ConfigError, RawTtlGuard};
use crate::identity::ClientIdentity;
use crate::resp::{self, Decimal};

/// The script every wrapped command runs in (see the module documentation), as documented
/// in `ttl_script.lua`.
const SCRIPT_SOURCE: &str = include_str!("ttl_script.lua");

/// The script as sent: without comments and indentation. It is sent whole with every
/// wrapped command (EVAL, not EVALSHA, so a SCRIPT FLUSH can never make a write fail), and
/// Redis hashes it each time, so every byte counts.
pub static SCRIPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| compact(SCRIPT_SOURCE));

/// `EVAL` and [`SCRIPT`] as the first two arguments of a wrapped command, encoded once.
static EVAL_SCRIPT: std::sync::LazyLock<EncodedArgs> =
    std::sync::LazyLock::new(|| EncodedArgs::new(&[b"EVAL", SCRIPT.as_bytes()]));

/// `EVAL`, [`SCRIPT`] and `1` (the number of keys), the first three arguments of a command
/// wrapped for one key (almost every wrapped command), encoded once.
static EVAL_SCRIPT_ONE_KEY: std::sync::LazyLock<EncodedArgs> =
    std::sync::LazyLock::new(|| EncodedArgs::new(&[b"EVAL", SCRIPT.as_bytes(), b"1"]));

/// The script of a SET whose value streams, so that its options are unseen: it reads them
/// (`ttl_set_script.lua`). Kept apart so that [`SCRIPT`], sent with every other wrapped
/// command, carries none of this.
const SET_SCRIPT_SOURCE: &str = include_str!("ttl_set_script.lua");

/// [`SET_SCRIPT_SOURCE`] as sent.
pub static SET_SCRIPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| compact(SET_SCRIPT_SOURCE));

/// `EVAL`, [`SET_SCRIPT`] and `1`, encoded once.
static EVAL_SET_SCRIPT: std::sync::LazyLock<EncodedArgs> =
    std::sync::LazyLock::new(|| EncodedArgs::new(&[b"EVAL", SET_SCRIPT.as_bytes(), b"1"]));

/// The script for an MSET or MSETNX too large for the proxy to list its keys (see
/// `ttl_pairs.lua`): it runs the command, in pieces inside the script when it has more
/// arguments than one Lua call can pass on, and matches each key against the rules itself
/// with a port of Redis's glob matcher.
const PAIRS_SOURCE: &str = include_str!("ttl_pairs.lua");

/// [`PAIRS_SOURCE`] as sent.
pub static PAIRS_SCRIPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| compact(PAIRS_SOURCE));

/// A script without its comments and indentation.
fn compact(source: &str) -> String {
    source
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The most arguments a wrapped command may have: the script passes the command on with
/// Lua's `unpack`, whose results must fit Lua's C stack (8,000 slots in Redis's Lua).
pub const MAX_WRAPPED_ARGS: usize = 4000;

/// One rule's TTL settings.
#[derive(Debug)]
pub struct TtlLimits {
    /// TTL for keys written without one; `None` exempts the keys.
    pub ttl: Option<Duration>,
    /// `ttl` in milliseconds as decimal text (`0` for none), written once at build instead
    /// of per command.
    pub ttl_millis: Box<[u8]>,
    /// `PX <ttl_millis>`, the arguments a SET without expiry gets, encoded once.
    pub px_ttl: EncodedArgs,
    /// By [`KeyMode`]: `NX <ttl_millis>` and `LT <max_millis>`, a wrapped command's
    /// arguments for one key of the rule, encoded once.
    wrap_args: [EncodedArgs; 2],
    /// By condition (`ok`, `changed`) and then [`KeyMode`]: the condition followed by
    /// `wrap_args`, the whole tail of the script's arguments when the rule's key is the only
    /// one wrapped (almost every wrapped write), written in one copy.
    wrap_tails: [[Box<[u8]>; 2]; 2],
    /// Largest TTL a client may set.
    pub max_ttl: Option<Duration>,
    /// `max_ttl` in milliseconds as decimal text (`0` for none).
    pub max_millis: Box<[u8]>,
    /// The rule's pattern begins with a wildcard: it does not cover job libraries' keys.
    pub catch_all: bool,
}

/// The default-TTL guard.
#[derive(Debug)]
pub struct TtlGuard {
    rules: Vec<Rule<TtlLimits>>,
    /// The first rule applies to every key of every client (`*`, the usual catch-all):
    /// it is the rule of every key without a job library's shape.
    first_takes_all: bool,
    /// By command id: what the guard does with the command.
    kinds: ByCommand<CommandKind>,
}

/// Added, lowered, or (the client's Redis user may not set it, ACL) skipped.
const ACTIONS: &[Action] = &[Action::TtlAdded, Action::TtlClamped, Action::TtlSkipped];

/// Commands that create keys and get a TTL by default.
const DEFAULT_CREATING: &[&str] = &[
    "set", "setnx", "getset", "mset", "msetnx", "hset", "hmset", "hsetnx",
];
/// Commands that carry (or remove) an expiry a rule's `max_ttl` may lower.
const CARRYING_TTL: &[&str] = &[
    "set",
    "setex",
    "psetex",
    "getex",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "persist",
];
/// Commands that always change their key when they succeed, even when they answer 0 (an
/// HSET that only updates fields, an INCRBY 0): for the rest, a reply of 0 or nil means
/// nothing was written, and the keys are left alone.
const WRITE_ON_SUCCESS: &[&str] = &[
    "set",
    "getset",
    "mset",
    "hset",
    "hmset",
    "setex",
    "psetex",
    "incr",
    "incrby",
    "incrbyfloat",
    "decr",
    "decrby",
    "hincrby",
    "hincrbyfloat",
    "zincrby",
    "zadd",
    "setbit",
    "lpush",
    "rpush",
    "append",
    "getex",
];

/// What the script does to one key after the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyMode {
    /// Add the rule's TTL if the key has none.
    Default,
    /// Lower an expiry above the rule's `max_ttl` (no expiry counts as infinite).
    Clamp,
    /// A SET whose options the proxy cannot see: [`SET_SCRIPT`] reads them.
    SetOptions,
}

/// What the guard does with a command, decided once per command id when it is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum TtlCommand {
    /// Nothing.
    #[default]
    Other,
    /// Creates keys, which get the rule's TTL when they have none (`pairs`: MSET, MSETNX,
    /// whose keys alternate with values).
    Creates { pairs: bool },
    /// SET: `PX` appended, or its expiry clamped.
    Set,
    /// GETSET: made a SET.
    GetSet,
    /// Carries an expiry in argument 2, clamped to `max_ttl`.
    Expiry(Expiry),
    /// PERSIST: given `max_ttl` back.
    Persist,
    /// GETEX: its expiry option clamped.
    GetEx,
}

/// A command's [`TtlCommand`] and whether it always changes its key when it succeeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CommandKind {
    command: TtlCommand,
    write_on_success: bool,
    /// Every key it names is written: its written keys are the view's keys, found already.
    writes_every_key: bool,
}

impl CommandKind {
    /// The kind of the command called `name`, given the rules' `extra` creating commands.
    fn of(info: &CommandInfo, extra: &[String]) -> Self {
        let name: &str = &info.name;
        let command = match name {
            "set" => TtlCommand::Set,
            "getset" => TtlCommand::GetSet,
            "setex" | "expire" => TtlCommand::Expiry(Expiry::Relative(1000)),
            "psetex" | "pexpire" => TtlCommand::Expiry(Expiry::Relative(1)),
            "expireat" => TtlCommand::Expiry(Expiry::Absolute(1000)),
            "pexpireat" => TtlCommand::Expiry(Expiry::Absolute(1)),
            "persist" => TtlCommand::Persist,
            "getex" => TtlCommand::GetEx,
            _ if DEFAULT_CREATING.contains(&name) || extra.iter().any(|c| c == name) => {
                TtlCommand::Creates {
                    pairs: matches!(name, "mset" | "msetnx"),
                }
            }
            _ => TtlCommand::Other,
        };
        debug_assert_eq!(
            command != TtlCommand::Other && !matches!(command, TtlCommand::Creates { .. }),
            CARRYING_TTL.contains(&name) || name == "getset"
        );
        CommandKind {
            command,
            write_on_success: WRITE_ON_SUCCESS.contains(&name),
            writes_every_key: info.writes_every_key(),
        }
    }
}

impl TtlGuard {
    /// Build the guard from `[guards.ttl]`, checking each rule's extra commands against the
    /// commands of `table`.
    pub fn build(
        raw: &RawTtlGuard,
        mode: Mode,
        logs: u32,
        table: &CommandTable,
    ) -> Result<Self, ConfigError> {
        let key = "guards.ttl.rules";
        let kind = RuleKind {
            guard: "ttl",
            actions: ACTIONS,
            default_mode: mode,
            logs_per_second: logs,
        };
        let mut rules = Vec::new();
        let mut extra: Vec<String> = Vec::new();
        for r in &raw.rules {
            let ttl = r.ttl.duration();
            if ttl.is_some_and(|t| t.as_millis() == 0) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("rule `{}`: ttl must be at least 1ms", r.pattern),
                });
            }
            let max_ttl = r.max_ttl.map(|d| d.0);
            if max_ttl.is_some_and(|t| t.as_millis() == 0) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("rule `{}`: max_ttl must be at least 1ms", r.pattern),
                });
            }
            for c in &r.commands {
                check_extra_command(c, &r.pattern, table)?;
                extra.push(c.to_ascii_lowercase());
            }
            let millis = |d: Option<Duration>| {
                d.map_or(0, |t| t.as_millis())
                    .to_string()
                    .into_bytes()
                    .into_boxed_slice()
            };
            let (ttl_millis, max_millis) = (millis(ttl), millis(max_ttl));
            let wrap_args = [
                EncodedArgs::new(&[b"NX", &ttl_millis]),
                EncodedArgs::new(&[b"LT", &max_millis]),
            ];
            let wrap_tails = CONDITIONS.map(|condition| {
                wrap_args
                    .each_ref()
                    .map(|args| [condition, args.bytes()].concat().into_boxed_slice())
            });
            let limits = TtlLimits {
                wrap_tails,
                px_ttl: EncodedArgs::new(&[b"PX", &ttl_millis]),
                wrap_args,
                ttl_millis,
                ttl,
                max_millis,
                max_ttl,
                catch_all: KeyPattern::new(&r.pattern).is_catch_all(),
            };
            let spec = RuleSpec::new(&r.pattern, &r.clients, r.mode);
            rules.push(Rule::new(kind, spec, limits));
        }
        let kinds = ByCommand::build(table, |info| CommandKind::of(info, &extra));
        let first_takes_all = rules.first().is_some_and(|r| r.applies_to_everything());
        Ok(TtlGuard {
            rules,
            first_takes_all,
            kinds,
        })
    }

    /// The rule for `key` written by `client`: the first that applies, a catch-all rule
    /// passed over for a key with a job library's shape (see the module documentation).
    #[inline(always)]
    fn rule_for(&self, key: &[u8], client: &ClientIdentity) -> Option<&Rule<TtlLimits>> {
        // `*` is a catch-all: the search goes on only for a job library's key.
        if self.first_takes_all && library_of(key).is_none() {
            return self.rules.first();
        }
        self.search_rules(key, client)
    }

    /// [`Self::rule_for`] by trying each rule in turn.
    #[inline(never)]
    fn search_rules(&self, key: &[u8], client: &ClientIdentity) -> Option<&Rule<TtlLimits>> {
        self.rules
            .iter()
            .find(|r| r.applies(key, client) && !(r.limits.catch_all && library_of(key).is_some()))
    }

    /// Whether any rule enforces: only then does the guard send anything as the user.
    pub fn enforces(&self) -> bool {
        self.rules.iter().any(|r| r.mode == Mode::Enforce)
    }

    /// Count a decision and, in observe mode, log it and forward the command unchanged.
    #[inline(always)]
    fn act(
        &self,
        rule: &Rule<TtlLimits>,
        action: Action,
        verdict: Verdict,
        client: &ClientIdentity,
        command: &str,
        key: &[u8],
    ) -> Verdict {
        if rule.decided(action, client, command, || on_key(key)) {
            verdict
        } else {
            Verdict::Forward
        }
    }
}

/// The log message of a decision about `key`.
fn on_key(key: &[u8]) -> String {
    format!("key '{}'", printable_key(key))
}

/// Whether the client's Redis user may run what the guard sends; when it may not, the
/// TTL is not set, and that is counted (`ttl_skipped`) and logged with the rule and why.
#[inline]
fn may_set_expiry(cmd: &CommandView<'_>, rule: &Rule<TtlLimits>, client: &ClientIdentity) -> bool {
    cmd.access == ScriptAccess::Allowed || expiry_denied(cmd, rule, client)
}

/// [`may_set_expiry`] for a user denied EVAL or PEXPIRE: counted and logged; false.
#[inline(never)]
fn expiry_denied(cmd: &CommandView<'_>, rule: &Rule<TtlLimits>, client: &ClientIdentity) -> bool {
    let why = match cmd.access {
        ScriptAccess::Allowed => return true,
        ScriptAccess::NoScripts => "the client's Redis user may not run EVAL (ACL)",
        ScriptAccess::NoExpire => "the client's Redis user may not run PEXPIRE (ACL)",
    };
    rule.decided(Action::TtlSkipped, client, &cmd.info.name, || {
        format!("no TTL set on a {} write: {why}", cmd.info.name)
    });
    false
}

/// A rule's extra command must exist and write keys: a TTL on a key that is only read (the
/// sources of COPY or SUNIONSTORE) would later delete data nobody wrote.
fn check_extra_command(name: &str, pattern: &str, table: &CommandTable) -> Result<(), ConfigError> {
    let info = table.lookup(&[name.as_bytes()]);
    let reason = if info.id == table.unknown().id {
        format!("rule `{pattern}`: `{name}` is not a command this Redis knows")
    } else if !info.is_write() {
        format!("rule `{pattern}`: `{name}` only reads keys; a TTL rule's commands must write keys")
    } else if info.flags.contains(Flags::MOVABLEKEYS) && &*info.name != "sort" {
        format!("rule `{pattern}`: `{name}` has keys only Redis can find; it cannot get a TTL")
    } else {
        return Ok(());
    };
    Err(ConfigError::Invalid {
        key: "guards.ttl.rules",
        reason,
    })
}

/// What the TTL rules of `raw` leave to the job libraries: for each catch-all rule that
/// gives keys a TTL or a `max_ttl`, the libraries whose key shapes its pattern matches and
/// those shapes, in one sentence. Logged as a warning at start and on reload, printed by
/// `check-config`: a user who wrote `pattern = "*"` learns that their queues are safe, and
/// how to give those keys a TTL if they mean to.
pub fn library_notes(raw: &RawTtlGuard) -> Vec<String> {
    raw.rules
        .iter()
        .filter(|r| r.ttl.duration().is_some() || r.max_ttl.is_some())
        .filter_map(|r| {
            let pattern = KeyPattern::new(&r.pattern);
            if !pattern.is_catch_all() {
                return None;
            }
            let covered = covered_by(&pattern);
            if covered.is_empty() {
                return None;
            }
            let libraries: Vec<String> = covered
                .iter()
                .map(|(name, shapes)| {
                    let shapes: Vec<String> = shapes
                        .iter()
                        .map(|s| s.as_bytes().escape_ascii().to_string())
                        .collect();
                    format!("{name} ({})", shapes.join(", "))
                })
                .collect();
            Some(format!(
                "ttl rule `{}` would cover job-library keys: {}; they are left alone (no TTL \
                 given, no expiry lowered); name them in a rule (a pattern beginning with \
                 their prefix, such as `bull:*`) to give them one",
                r.pattern,
                libraries.join(", ")
            ))
        })
        .collect()
}

impl Guard for TtlGuard {
    fn name(&self) -> &'static str {
        "ttl"
    }

    fn wants(&self, info: &CommandInfo) -> bool {
        self.kinds.get(info).command != TtlCommand::Other
    }

    /// Wrapped writes run as the user: only when a rule enforces (one that observes sends
    /// nothing, so no probe is needed).
    fn acts_as_user(&self) -> bool {
        self.enforces()
    }

    fn check(&self, cmd: &CommandView<'_>, client: &ClientIdentity, out: &mut BytesMut) -> Verdict {
        if !cmd.info.arity_accepts(cmd.argc) {
            return Verdict::Forward; // Redis answers with its own arity error.
        }
        let kind = self.kinds.get(cmd.info);
        let command = kind.command;
        match command {
            TtlCommand::Other => return Verdict::Forward,
            TtlCommand::Creates { pairs } => {
                return match cmd.keys {
                    [k] if !pairs && kind.writes_every_key => {
                        self.default_ttl_of_one(cmd, client, *k, kind, out)
                    }
                    _ => self.default_ttls(cmd, client, pairs, out),
                }
            }
            _ => {}
        }
        // The rest name one key, the first.
        let Some(key) = cmd.keys.first().and_then(|&k| cmd.arg(k)) else {
            return Verdict::Forward;
        };
        let Some(rule) = self.rule_for(key, client) else {
            return Verdict::Forward;
        };
        match command {
            TtlCommand::Set => self.check_set(cmd, rule, client, key, out),
            TtlCommand::GetSet => self.check_getset(cmd, rule, client, key, out),
            TtlCommand::Expiry(expiry) => self.clamp(cmd, rule, client, key, 2, expiry, out),
            TtlCommand::Persist => self.clamp_always(cmd, rule, client, key, out),
            TtlCommand::GetEx => match find_expiry_option(cmd, 2) {
                // GETEX … PERSIST: the key would live for ever.
                Some((_, Expiry::Keep)) => self.clamp_always(cmd, rule, client, key, out),
                Some((i, expiry)) => self.clamp(cmd, rule, client, key, i + 1, expiry, out),
                None => Verdict::Forward,
            },
            TtlCommand::Other | TtlCommand::Creates { .. } => Verdict::Forward,
        }
    }
}

/// Whether a write gives its key an expiry itself, as the TTL guard reads it: for the
/// keyspace insight, which counts writes with and without one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OwnExpiry {
    /// Never (HSET, LPUSH, a plain write).
    #[default]
    Never,
    /// Always: the expiry is an argument (SETEX, PSETEX, EXPIRE …).
    Always,
    /// When an EX, PX, EXAT or PXAT option is given (SET, GETEX); KEEPTTL gives none.
    ByOption,
}

impl OwnExpiry {
    /// What the command `info` does, decided once per command when the observer is built.
    pub fn of(info: &CommandInfo) -> Self {
        match CommandKind::of(info, &[]).command {
            TtlCommand::Set | TtlCommand::GetEx => OwnExpiry::ByOption,
            TtlCommand::Expiry(_) => OwnExpiry::Always,
            _ => OwnExpiry::Never,
        }
    }

    /// Whether `cmd` (a command of this kind) gives its key an expiry.
    pub fn given(self, cmd: &CommandView<'_>) -> bool {
        match self {
            OwnExpiry::Never => false,
            OwnExpiry::Always => true,
            OwnExpiry::ByOption => matches!(
                find_expiry_option(cmd, 2),
                Some((_, Expiry::Relative(_) | Expiry::Absolute(_)))
            ),
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

#[inline]
fn find_expiry_option(cmd: &CommandView<'_>, from: usize) -> Option<(usize, Expiry)> {
    if cmd.args.len() <= from {
        return None; // No options (a plain `SET k v`).
    }
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
    /// A SET: `PX <ttl>` appended to one without an expiry, its expiry clamped, or wrapped
    /// when its value streams. Inlined into the check, its only caller.
    #[inline(always)]
    fn check_set(
        &self,
        cmd: &CommandView<'_>,
        rule: &Rule<TtlLimits>,
        client: &ClientIdentity,
        key: &[u8],
        out: &mut BytesMut,
    ) -> Verdict {
        if !cmd.is_whole() {
            // The value is streaming; any options follow it, unseen: the script reads them.
            if rule.limits.ttl.is_none() && rule.limits.max_ttl.is_none() {
                return Verdict::Forward;
            }
            let mode = if cmd.argc == 3 {
                KeyMode::Default
            } else {
                KeyMode::SetOptions
            };
            return self.wrap_one(cmd, rule, client, key, mode, Action::TtlAdded, out);
        }
        match find_expiry_option(cmd, 3) {
            Some((_, Expiry::Keep)) => Verdict::Forward,
            Some((i, expiry)) => self.clamp(cmd, rule, client, key, i + 1, expiry, out),
            None => {
                if rule.limits.ttl.is_none() {
                    return Verdict::Forward;
                }
                let v = appending(cmd, &rule.limits.px_ttl, out);
                self.act(rule, Action::TtlAdded, v, client, &cmd.info.name, key)
            }
        }
    }

    /// `GETSET k v` as `SET k v GET PX <ttl>`; a streamed one is wrapped.
    fn check_getset(
        &self,
        cmd: &CommandView<'_>,
        rule: &Rule<TtlLimits>,
        client: &ClientIdentity,
        key: &[u8],
        out: &mut BytesMut,
    ) -> Verdict {
        if rule.limits.ttl.is_none() {
            return Verdict::Forward;
        }
        if !cmd.is_whole() {
            return self.wrap_one(
                cmd,
                rule,
                client,
                key,
                KeyMode::Default,
                Action::TtlAdded,
                out,
            );
        }
        resp::array_header(out, 6);
        resp::bulk(out, b"SET");
        resp::bulk(out, key);
        resp::bulk(out, cmd.arg(2).unwrap_or_default());
        resp::bulk(out, b"GET");
        resp::bulk(out, b"PX");
        resp::bulk(out, &rule.limits.ttl_millis);
        let v = Verdict::Rewrite {
            replacement: Some(out.len()),
            hidden: 0,
        };
        self.act(rule, Action::TtlAdded, v, client, &cmd.info.name, key)
    }

    /// [`Self::default_ttls`] of a command naming one key, which it writes (HSET, SETNX, ...:
    /// almost every creating write): the same decision and the same bytes, without the list
    /// of chosen keys or a second look-up of the command's kind.
    #[inline(always)]
    fn default_ttl_of_one(
        &self,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        at: usize,
        kind: CommandKind,
        out: &mut BytesMut,
    ) -> Verdict {
        let Some(key) = cmd.arg(at) else {
            return Verdict::Forward;
        };
        let Some(rule) = self.rule_for(key, client) else {
            return Verdict::Forward;
        };
        if rule.limits.ttl.is_none()
            || !may_set_expiry(cmd, rule, client)
            || !rule.decided(Action::TtlAdded, client, &cmd.info.name, || on_key(key))
        {
            return Verdict::Forward;
        }
        let chosen = [(key, rule, KeyMode::Default)];
        if wrappable(cmd.info, cmd.argc + 8) {
            return wrap(cmd, &chosen, kind.write_on_success, out);
        }
        expire_after(&chosen, out)
    }

    /// The rule's TTL for every key the command writes whose rule has one: the command
    /// wrapped, or (when it cannot be) followed by a hidden `PEXPIRE key ttl NX` per key.
    fn default_ttls(
        &self,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        pairs: bool,
        out: &mut BytesMut,
    ) -> Verdict {
        if pairs && (!cmd.is_whole() || cmd.argc + 4 + 2 * cmd.argc > MAX_WRAPPED_ARGS) {
            // Too large to list its keys: the script finds them, and their rules.
            return self.default_ttls_in_script(cmd, client, out);
        }
        // Most writes write every key they name: those are the view's keys, found already,
        // and the keys chosen fit on the stack, so a guarded write allocates nothing.
        let mut found = Vec::new();
        let written: &[usize] = if self.kinds.get(cmd.info).writes_every_key {
            cmd.keys
        } else {
            cmd.info
                .written_key_positions_by(cmd.argc, |i| cmd.arg(i), &mut found);
            &found
        };
        let mut chosen: SmallVec<[WrappedKey<'_>; 4]> = SmallVec::new();
        for &k in written {
            let Some(key) = cmd.arg(k) else { continue };
            let Some(rule) = self.rule_for(key, client) else {
                continue;
            };
            if rule.limits.ttl.is_none() || !may_set_expiry(cmd, rule, client) {
                continue;
            }
            if !rule.decided(Action::TtlAdded, client, &cmd.info.name, || on_key(key)) {
                continue;
            }
            chosen.push((key, rule, KeyMode::Default));
        }
        if chosen.is_empty() {
            return Verdict::Forward;
        }
        let wrappable = wrappable(cmd.info, cmd.argc + 4 + 4 * chosen.len());
        if wrappable {
            return wrap(cmd, &chosen, self.kinds.get(cmd.info).write_on_success, out);
        }
        expire_after(&chosen, out)
    }

    /// An MSET or MSETNX too large to list its keys, wrapped in the pairs script with the
    /// rules that apply to this client, in order (a rule without a TTL, or observing, as
    /// `0`: it exempts its keys). Counted once per command, for the first rule with a TTL.
    fn default_ttls_in_script(
        &self,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        out: &mut BytesMut,
    ) -> Verdict {
        let rules: Vec<&Rule<TtlLimits>> = self
            .rules
            .iter()
            .filter(|r| r.applies_to_client(client))
            .collect();
        let Some(counted) = rules.iter().find(|r| r.limits.ttl.is_some()) else {
            return Verdict::Forward;
        };
        if counted.mode == Mode::Observe || !may_set_expiry(cmd, counted, client) {
            counted.count(Action::TtlAdded);
            return Verdict::Forward;
        }
        counted.count(Action::TtlAdded);
        // The library shapes go along only when a catch-all rule needs them.
        let shapes = if rules.iter().any(|r| r.limits.catch_all) {
            LIBRARIES.iter().flat_map(|l| l.patterns.iter()).count()
        } else {
            0
        };
        resp::array_header(out, 5 + 3 * rules.len() + shapes + cmd.argc);
        resp::bulk(out, b"EVAL");
        resp::bulk(out, PAIRS_SCRIPT.as_bytes());
        resp::bulk(out, b"0");
        resp::bulk(out, Decimal::of(rules.len() as u64).as_bytes());
        for rule in &rules {
            resp::bulk(out, rule.pattern_source().as_bytes());
            let enforced = rule.mode == Mode::Enforce;
            resp::bulk(
                out,
                if enforced {
                    &rule.limits.ttl_millis
                } else {
                    b"0"
                },
            );
            resp::bulk(out, if rule.limits.catch_all { b"1" } else { b"0" });
        }
        resp::bulk(out, Decimal::of(shapes as u64).as_bytes());
        for shape in LIBRARIES
            .iter()
            .flat_map(|l| l.patterns.iter())
            .take(shapes)
        {
            resp::bulk(out, shape.as_bytes());
        }
        copy_command(cmd, out);
        Verdict::Rewrite {
            replacement: Some(out.len()),
            hidden: 0,
        }
    }

    /// Wrap a command of one key with the given mode.
    #[allow(clippy::too_many_arguments)]
    fn wrap_one(
        &self,
        cmd: &CommandView<'_>,
        rule: &Rule<TtlLimits>,
        client: &ClientIdentity,
        key: &[u8],
        mode: KeyMode,
        action: Action,
        out: &mut BytesMut,
    ) -> Verdict {
        let millis = match mode {
            KeyMode::Default => rule.limits.ttl,
            KeyMode::Clamp => rule.limits.max_ttl,
            KeyMode::SetOptions => rule.limits.ttl.or(rule.limits.max_ttl),
        };
        if millis.is_none()
            || !wrappable(cmd.info, cmd.argc + 8)
            || !may_set_expiry(cmd, rule, client)
        {
            return Verdict::Forward;
        }
        let v = if mode == KeyMode::SetOptions {
            wrap_set(cmd, key, rule, out);
            Verdict::Rewrite {
                replacement: Some(out.len()),
                hidden: 0,
            }
        } else {
            let write_on_success = self.kinds.get(cmd.info).write_on_success;
            wrap(cmd, &[(key, rule, mode)], write_on_success, out)
        };
        self.act(rule, action, v, client, &cmd.info.name, key)
    }

    /// Lower the expiry in argument `index` to the rule's `max_ttl` when it is above it: the
    /// command is wrapped so that Redis first runs it as the client sent it (and refuses an
    /// invalid expiry itself), then lowers the key's expiry with `PEXPIRE … LT`.
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
        let Some(max) = rule.limits.max_ttl else {
            return Verdict::Forward;
        };
        let Some(given) = cmd.arg(index).and_then(crate::scanner::request::parse_int) else {
            return Verdict::Forward; // Redis answers the syntax error itself.
        };
        let max_ms = max.as_millis() as u64;
        let limit = match expiry {
            Expiry::Relative(unit_ms) => max_ms / unit_ms,
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
        self.wrap_one(
            cmd,
            rule,
            client,
            key,
            KeyMode::Clamp,
            Action::TtlClamped,
            out,
        )
    }

    /// PERSIST and GETEX … PERSIST under a `max_ttl`: the key gets `max_ttl` back.
    fn clamp_always(
        &self,
        cmd: &CommandView<'_>,
        rule: &Rule<TtlLimits>,
        client: &ClientIdentity,
        key: &[u8],
        out: &mut BytesMut,
    ) -> Verdict {
        if rule.limits.max_ttl.is_none() {
            return Verdict::Forward;
        }
        self.wrap_one(
            cmd,
            rule,
            client,
            key,
            KeyMode::Clamp,
            Action::TtlClamped,
            out,
        )
    }
}

/// A key a wrapped command writes, the rule that gives it its expiry, and what the script
/// does to it.
type WrappedKey<'a> = (&'a [u8], &'a Rule<TtlLimits>, KeyMode);

/// The verdict that sends, after a command that cannot be wrapped, a hidden
/// `PEXPIRE key <ttl> NX` for each of `keys`.
fn expire_after(keys: &[WrappedKey<'_>], out: &mut BytesMut) -> Verdict {
    for &(key, rule, _) in keys {
        resp::array_header(out, 4);
        resp::bulk(out, b"PEXPIRE");
        resp::bulk(out, key);
        resp::bulk(out, &rule.limits.ttl_millis);
        resp::bulk(out, b"NX");
    }
    Verdict::Rewrite {
        replacement: None,
        hidden: keys.len() as u32,
    }
}

/// Whether a command can run inside the script with `total` arguments in all.
fn wrappable(info: &CommandInfo, total: usize) -> bool {
    !info.flags.contains(Flags::BLOCKING)
        && !info.flags.contains(Flags::NOSCRIPT)
        && total <= MAX_WRAPPED_ARGS
}

/// The verdict that sends `EVAL <script> <n> <keys…> <condition> <mode millis…>
/// <command…>`: the script's arguments, then the client's command as it encoded it (for a
/// streamed command, its head; the rest follows unchanged). No key's mode is
/// [`KeyMode::SetOptions`].
///
/// A whole multibulk command wrapped for one key (almost every wrapped write) is a
/// [`Verdict::Prepend`]: `out` gets the key and the rule's tail alone, and the session
/// copies the script, encoded once, and the client's arguments straight into what Redis is
/// sent; any other is written whole to `out` ([`Verdict::Rewrite`]).
fn wrap(
    cmd: &CommandView<'_>,
    keys: &[WrappedKey<'_>],
    write_on_success: bool,
    out: &mut BytesMut,
) -> Verdict {
    debug_assert!(
        keys.iter().all(|&(_, _, mode)| mode != KeyMode::SetOptions),
        "a SET's options have their own script"
    );
    // The condition, `ok` or `changed`, as a bulk string: by index into CONDITIONS.
    let condition = usize::from(!write_on_success);
    if let [(key, rule, mode)] = keys {
        if cmd.wire.is_some() && cmd.is_whole() {
            resp::bulk(out, key);
            out.extend_from_slice(&rule.limits.wrap_tails[condition][*mode as usize]);
            // EVAL, the script, 1, the key, the condition, the mode's millis.
            return Verdict::Prepend {
                args: 7,
                fixed: EVAL_SCRIPT_ONE_KEY.bytes(),
                len: out.len(),
            };
        }
    }
    let n = keys.len();
    resp::array_header(out, 3 + n + 1 + 2 * n + cmd.argc);
    if let [(key, rule, mode)] = keys {
        out.extend_from_slice(EVAL_SCRIPT_ONE_KEY.bytes());
        resp::bulk(out, key);
        out.extend_from_slice(&rule.limits.wrap_tails[condition][*mode as usize]);
    } else {
        out.extend_from_slice(EVAL_SCRIPT.bytes());
        resp::bulk(out, Decimal::of(n as u64).as_bytes());
        for (key, _, _) in keys {
            resp::bulk(out, key);
        }
        out.extend_from_slice(CONDITIONS[condition]);
        for (_, rule, mode) in keys {
            out.extend_from_slice(rule.limits.wrap_args[*mode as usize].bytes());
        }
    }
    copy_command(cmd, out);
    Verdict::Rewrite {
        replacement: Some(out.len()),
        hidden: 0,
    }
}

/// The script's condition for setting the keys' expiries, encoded: `ok` (the command
/// succeeded) for a command that always writes when it succeeds, else `changed` (its reply
/// says it changed something).
const CONDITIONS: [&[u8]; 2] = [b"$2\r\nok\r\n", b"$7\r\nchanged\r\n"];

/// Write `EVAL <set script> 1 <key> <ttl> <max_ttl> <SET…>` for a SET whose options follow
/// its streamed value (see `ttl_set_script.lua`).
fn wrap_set(cmd: &CommandView<'_>, key: &[u8], rule: &Rule<TtlLimits>, out: &mut BytesMut) {
    resp::array_header(out, 3 + 1 + 2 + cmd.argc);
    out.extend_from_slice(EVAL_SET_SCRIPT.bytes());
    resp::bulk(out, key);
    resp::bulk(out, &rule.limits.ttl_millis);
    resp::bulk(out, &rule.limits.max_millis);
    copy_command(cmd, out);
}

/// The client's command as it encoded it, after its `*N` line (for a streamed command, its
/// head: the rest follows unchanged).
#[inline(always)]
fn copy_command(cmd: &CommandView<'_>, out: &mut BytesMut) {
    match &cmd.wire {
        Some(wire) => out.extend_from_slice(&cmd.src[wire.clone()]),
        None => {
            for r in cmd.args {
                resp::bulk(out, &cmd.src[r.clone()]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;
    use crate::guard::verdict::with_scanned_view;

    fn guard(rules: &str) -> (TtlGuard, RawTtlGuard) {
        let raw = RawConfig::from_toml(rules).expect("parses").guards.ttl;
        let table = CommandTable::builtin();
        let guard = TtlGuard::build(&raw, Mode::Enforce, 0, &table).expect("builds");
        (guard, raw)
    }

    /// The pattern of the rule `key` gets, or `None`.
    fn rule_of(guard: &TtlGuard, key: &str) -> Option<String> {
        let client = ClientIdentity::new(([127, 0, 0, 1], 1).into());
        guard
            .rule_for(key.as_bytes(), &client)
            .map(|r| r.pattern_source().to_string())
    }

    /// A write wrapped for one key goes out as the script's arguments before the client's
    /// own encoding (`Verdict::Prepend`): put together as the session sends it, it is byte
    /// for byte the command the general rewrite writes whole, for a wrapped HSET (condition
    /// `changed`), a wrapped SETEX (`ok`) and a clamped EXPIRE and PERSIST (`LT`).
    #[test]
    fn a_wrap_prepended_to_the_clients_arguments_equals_the_whole_rewrite() {
        let (g, _) =
            guard("[[guards.ttl.rules]]\npattern = \"*\"\nttl = \"1h\"\nmax_ttl = \"1d\"\n");
        let client = ClientIdentity::new(([127, 0, 0, 1], 1).into());
        for src in [
            &b"*4\r\n$4\r\nHSET\r\n$3\r\nk:1\r\n$1\r\nf\r\n$5\r\nvalue\r\n"[..],
            b"*4\r\n$5\r\nSETEX\r\n$3\r\nk:2\r\n$7\r\n9999999\r\n$1\r\nv\r\n",
            b"*3\r\n$6\r\nEXPIRE\r\n$3\r\nk:3\r\n$7\r\n9999999\r\n",
            b"*2\r\n$7\r\nPERSIST\r\n$3\r\nk:4\r\n",
        ] {
            with_scanned_view(src, |view| {
                let info = view.info;
                let name = &info.name;
                let mut out = BytesMut::new();
                let Verdict::Prepend {
                    args: added,
                    fixed,
                    len,
                } = g.check(view, &client, &mut out)
                else {
                    panic!("{name} not prepended to");
                };
                let mut sent = Vec::new();
                resp::array_header(&mut sent, view.argc + added as usize);
                sent.extend_from_slice(fixed);
                sent.extend_from_slice(&out[..len]);
                sent.extend_from_slice(&src[view.wire.clone().expect("multibulk")]);
                // Without the client's encoding at hand, the guard writes the whole command.
                view.wire = None;
                let mut whole = BytesMut::new();
                let Verdict::Rewrite {
                    replacement: Some(n),
                    hidden: 0,
                } = g.check(view, &client, &mut whole)
                else {
                    panic!("{name} not rewritten whole");
                };
                assert_eq!(sent, &whole[..n], "{name}");
                assert!(sent.starts_with(b"*"), "{name}");
            });
        }
    }

    /// A creating write of one key takes the one-key path, which decides and writes exactly
    /// what the general path does: wrapped, its key left alone (a job library's, or a rule
    /// without a TTL), for a command that writes whatever it answers or only when it
    /// changes something, with the client's encoding at hand or not.
    #[test]
    fn a_write_of_one_key_is_judged_as_the_general_path_judges_it() {
        let (g, _) = guard(
            "[[guards.ttl.rules]]\npattern = \"keep:*\"\nttl = \"none\"\n\
             [[guards.ttl.rules]]\npattern = \"*\"\nttl = \"1h\"\n",
        );
        let client = ClientIdentity::new(([127, 0, 0, 1], 1).into());
        let mut wrapped = 0;
        for src in [
            &b"*4\r\n$4\r\nHSET\r\n$3\r\nk:1\r\n$1\r\nf\r\n$5\r\nvalue\r\n"[..],
            b"*4\r\n$6\r\nHSETNX\r\n$3\r\nk:2\r\n$1\r\nf\r\n$1\r\nv\r\n",
            b"*3\r\n$5\r\nSETNX\r\n$3\r\nk:3\r\n$1\r\nv\r\n",
            b"*6\r\n$5\r\nHMSET\r\n$3\r\nk:4\r\n$1\r\nf\r\n$1\r\nv\r\n$1\r\ng\r\n$1\r\nw\r\n",
            b"*4\r\n$4\r\nHSET\r\n$6\r\nkeep:1\r\n$1\r\nf\r\n$1\r\nv\r\n",
            b"*4\r\n$4\r\nHSET\r\n$13\r\nqueue:default\r\n$1\r\nf\r\n$1\r\nv\r\n",
        ] {
            with_scanned_view(src, |view| {
                let info = view.info;
                let name = &info.name;
                assert_eq!(view.keys.len(), 1, "{name}");
                for wire in [view.wire.clone(), None] {
                    view.wire = wire;
                    let (mut one, mut general) = (BytesMut::new(), BytesMut::new());
                    let verdict = g.check(view, &client, &mut one);
                    assert_eq!(
                        verdict,
                        g.default_ttls(view, &client, false, &mut general),
                        "{name}"
                    );
                    assert_eq!(one, general, "{name}");
                    wrapped += usize::from(verdict != Verdict::Forward);
                }
            });
        }
        assert_eq!(
            wrapped, 8,
            "four commands wrapped, each with and without its encoding"
        );
    }

    #[test]
    fn a_catch_all_rule_passes_over_job_library_keys() {
        let (g, _) = guard(
            "[[guards.ttl.rules]]\npattern = \"*\"\nttl = \"1h\"\n\
             [[guards.ttl.rules]]\npattern = \"bull:*\"\nttl = \"1d\"\n",
        );
        assert_eq!(rule_of(&g, "cache:1").as_deref(), Some("*"));
        assert_eq!(rule_of(&g, "").as_deref(), Some("*"));
        // Named by a later rule: that rule covers it.
        assert_eq!(rule_of(&g, "bull:emails:1").as_deref(), Some("bull:*"));
        for key in [
            "queue:default",
            "rq:job:1",
            "huey.results.x",
            "bq:q:jobs",
            "schedule",
        ] {
            assert_eq!(rule_of(&g, key), None, "{key}");
        }
    }

    #[test]
    fn a_rule_beginning_with_literal_text_covers_library_keys() {
        let (g, _) = guard(
            "[[guards.ttl.rules]]\npattern = \"rq:*\"\nttl = \"1h\"\n\
             [[guards.ttl.rules]]\npattern = \"schedule\"\nttl = \"1h\"\n\
             [[guards.ttl.rules]]\npattern = \"[a-z]*\"\nttl = \"1h\"\n",
        );
        assert_eq!(rule_of(&g, "rq:job:1").as_deref(), Some("rq:*"));
        assert_eq!(rule_of(&g, "schedule").as_deref(), Some("schedule"));
        // A class is a wildcard: `[a-z]*` is a catch-all.
        assert_eq!(rule_of(&g, "retry"), None);
        assert_eq!(rule_of(&g, "cache:1").as_deref(), Some("[a-z]*"));
    }

    #[test]
    fn notes_name_the_catch_all_rules_that_give_a_ttl_and_their_libraries() {
        let (_, raw) = guard(
            "[[guards.ttl.rules]]\npattern = \"cache:*\"\nttl = \"1h\"\n\
             [[guards.ttl.rules]]\npattern = \"*:tmp\"\nttl = \"1h\"\n\
             [[guards.ttl.rules]]\npattern = \"*x\"\nttl = \"none\"\n\
             [[guards.ttl.rules]]\npattern = \"b*\"\nttl = \"1h\"\n\
             [[guards.ttl.rules]]\npattern = \"?q:*\"\nttl = \"none\"\nmax_ttl = \"1d\"\n",
        );
        // `cache:*` and `b*` name their keys; `*:tmp` matches no library's shape; `*x`
        // gives no TTL; `?q:*` lowers expiries of RQ's and Bee-Queue's keys.
        let notes = library_notes(&raw);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with(
                "ttl rule `?q:*` would cover job-library keys: rq (rq:*), bee-queue (bq:*);"
            ),
            "{}",
            notes[0]
        );
    }
}
