//! Configuration: the TOML file, the command-line and environment overrides, and their
//! validation.
//!
//! [`RawConfig`] is what the file says, with every default filled in and every unknown key
//! refused (serde's `deny_unknown_fields`; in rules, whose shared client filters are
//! flattened, by [`ClientMatch`]'s catch-all, so a typo names the key instead of being
//! ignored). Every enumerated value is an enum read here once ([`Mode`], [`Priority`],
//! [`EnqueueAction`], [`ScopePart`], [`PayloadFormat`], [`Preset`], [`DefaultTtl`]).
//! [`Config`] is the validated form the proxy runs on: the upstream URL parsed, sizes and
//! durations checked. `respguard check-config` prints the `RawConfig` back as TOML, which is
//! the effective configuration.
//!
//! This module only reads and checks shapes: it never builds guards, registers metrics or
//! reads any file but the configuration itself. The guards are built from these shapes
//! (`crate::guard`), and TLS from the PEM files they name (`crate::app`).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::scanner::request::Limits;

/// A configuration that could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// A duration written like `250ms`, `5s` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a duration ({e}); write e.g. 250ms, 5s, 1h"
                ))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A size in bytes written like `1MiB`, `64KiB`, `512MB` or a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parse `123`, `64KiB`, `1.5MiB`, `10MB`, `2GiB` (binary and decimal units).
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. 1MiB, 64KiB, 1048576"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            other => return Err(format!("unknown size unit `{other}` in `{s}`")),
        };
        Ok(ByteSize((n * mult as f64).round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= size && n % size == 0 {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Int(u64),
            Str(String),
        }
        match Either::deserialize(d)? {
            Either::Int(n) => Ok(ByteSize(n)),
            Either::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// An enumerated setting written as one word. Each is parsed once, when the file is read,
/// and a wrong word is refused with the words the setting accepts.
macro_rules! word_enum {
    ($(#[$meta:meta])* pub enum $name:ident ($what:literal) {
        $($(#[$vmeta:meta])* $variant:ident = $word:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The word the file uses.
            pub fn word(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }

            /// Read the word `s`; the error names the setting and the words it accepts.
            pub fn from_word(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok($name::$variant),)+
                    other => Err(format!(
                        concat!($what, " `{}`: expected {}"),
                        other,
                        one_of(&[$($word),+])
                    )),
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::from_word(&s).map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.word())
            }
        }
    };
}

/// "`a`, `b` or `c`".
fn one_of(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

word_enum! {
    /// A rule's mode (`guards.mode`, a rule's `mode`).
    pub enum Mode ("mode") {
        /// Act on the verdict.
        Enforce = "enforce",
        /// Count and log the verdict, forward the command unchanged.
        Observe = "observe",
    }
}

impl Mode {
    /// The metric label.
    pub fn label(self) -> &'static str {
        self.word()
    }
}

word_enum! {
    /// How important a key's writes are when memory runs short (a shed rule's `priority`).
    /// Ordered: `Low < Normal < Critical`.
    pub enum Priority ("priority") {
        /// Shed first, at `soft`.
        Low = "low",
        /// Shed at `hard`.
        Normal = "normal",
        /// Never shed.
        Critical = "critical",
    }
}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

word_enum! {
    /// What an enqueue rule does with a job over its limit (`action`).
    pub enum EnqueueAction ("action") {
        /// Answer as if enqueued; send nothing.
        Drop = "drop",
        /// Answer an error naming the rule.
        Reject = "reject",
        /// Count and log only.
        Observe = "observe",
    }
}

word_enum! {
    /// One part of what identifies a client to an enqueue rule (`scope`).
    pub enum ScopePart ("scope") {
        /// The Redis (or proxy) user.
        User = "user",
        /// The CLIENT SETNAME name.
        ClientName = "client_name",
        /// The IP address, never the port.
        Address = "address",
    }
}

word_enum! {
    /// How a generic enqueue rule reads a payload (`format`).
    pub enum PayloadFormat ("format") {
        /// A JSON document.
        Json = "json",
        /// Opaque bytes.
        Raw = "raw",
    }
}

word_enum! {
    /// The job library an enqueue rule reads (`preset`).
    pub enum Preset ("preset") {
        /// Sidekiq.
        Sidekiq = "sidekiq",
        /// Celery.
        Celery = "celery",
        /// RQ.
        Rq = "rq",
        /// BullMQ.
        Bullmq = "bullmq",
        /// Described by the rule's own settings.
        Generic = "generic",
    }
}

/// A TTL rule's `ttl`: a duration, or `none` to exempt matching keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultTtl {
    /// `none`: keys of the rule get no TTL.
    Exempt,
    /// Keys written without an expiry get this one.
    After(Duration),
}

impl DefaultTtl {
    /// The TTL, if the rule gives one.
    pub fn duration(self) -> Option<Duration> {
        match self {
            DefaultTtl::Exempt => None,
            DefaultTtl::After(d) => Some(d),
        }
    }
}

impl<'de> Deserialize<'de> for DefaultTtl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "none" {
            return Ok(DefaultTtl::Exempt);
        }
        humantime::parse_duration(&s)
            .map(DefaultTtl::After)
            .map_err(|e| {
                serde::de::Error::custom(format!("ttl `{s}` is not a duration or `none` ({e})"))
            })
    }
}

impl Serialize for DefaultTtl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DefaultTtl::Exempt => s.serialize_str("none"),
            DefaultTtl::After(d) => HumanDuration(*d).serialize(s),
        }
    }
}

/// The client filters every rule may have, written in the rule's own table
/// (`#[serde(flatten)]`): a rule applies only to clients matching all that are given.
///
/// serde's `deny_unknown_fields` does not work through `flatten`, so the keys no field of
/// the rule takes end here, in [`NoOtherKeys`], which refuses them: a misspelt rule key is
/// an error, as everywhere else in the file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ClientMatch {
    /// Only for clients authenticated as this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only for clients with this CLIENT SETNAME name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// Only for clients from this address or network (`10.0.0.0/8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<ipnet::IpNet>,
    /// Refuses every key of the rule no field took.
    #[serde(flatten)]
    pub others: NoOtherKeys,
}

/// Stands for "no other keys": deserialising it from any key fails with `unknown field`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoOtherKeys;

impl<'de> Deserialize<'de> for NoOtherKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Refuse;
        impl<'de> serde::de::Visitor<'de> for Refuse {
            type Value = NoOtherKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("no further keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NoOtherKeys, A::Error> {
                match map.next_key::<String>()? {
                    Some(key) => Err(serde::de::Error::custom(format!("unknown field `{key}`"))),
                    None => Ok(NoOtherKeys),
                }
            }
        }
        d.deserialize_map(Refuse)
    }
}

impl Serialize for NoOtherKeys {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

/// The configuration file as written, defaults filled in.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// The client-facing listener and its limits.
    pub proxy: RawProxy,
    /// The Redis behind the proxy.
    pub upstream: RawUpstream,
    /// The HTTP listener for health and metrics.
    pub admin: RawAdmin,
    /// Logging.
    pub log: RawLog,
    /// Request parsing bounds.
    pub protocol: RawProtocol,
    /// Watching Redis memory.
    pub monitor: RawMonitor,
    /// The guards and their rules.
    pub guards: RawGuards,
    /// Client authentication to the proxy itself.
    pub auth: RawAuth,
}

/// `[auth]`: clients authenticate to respguard with their own credentials; each user is
/// mapped to the Redis credentials its commands run with, so applications never hold the
/// Redis password. No users: clients are not asked to authenticate (Redis's own AUTH passes
/// through).
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// The users clients may authenticate as.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<RawProxyUser>,
}

/// `[[auth.users]]`: one client credential.
#[derive(Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxyUser {
    /// The name clients give to `AUTH name password`; `default` also serves `AUTH password`.
    pub name: String,
    /// The password, in clear.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// Or the password's SHA-256, in hex, so the file holds no password.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password_sha256: String,
    /// The Redis ACL user this client's commands run as; empty: Redis's `default` user,
    /// refused when `upstream.url` has a password (those are the proxy's own credentials).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub upstream_user: String,
    /// That user's Redis password.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub upstream_password: String,
}

impl fmt::Debug for RawProxyUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a password.
        f.debug_struct("RawProxyUser")
            .field("name", &self.name)
            .field("upstream_user", &self.upstream_user)
            .finish_non_exhaustive()
    }
}

/// `[guards]`: rules for each guard; a command is checked by each guard in a fixed order.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawGuards {
    /// Mode of rules that do not set one: `enforce`, or `observe` (count and log only).
    pub mode: Mode,
    /// Refusal log lines per second per rule; the rest are counted, not logged.
    pub refusal_logs_per_second: u32,
    /// `[guards.size]`: oversized values and requests.
    pub size: RawSizeGuard,
    /// `[guards.ttl]`: default and maximum TTLs.
    pub ttl: RawTtlGuard,
    /// `[guards.shed]`: writes refused under memory pressure.
    pub shed: RawShedGuard,
    /// `[guards.queue]`: queue depths, and enqueues refused past a depth.
    pub queue: RawQueueGuard,
    /// `[guards.fail_open]`: cache keys answered as misses while Redis is down.
    pub fail_open: RawFailOpen,
    /// `[guards.enqueue]`: the same job enqueued again and again by one client.
    pub enqueue: RawEnqueueGuard,
}

impl Default for RawGuards {
    fn default() -> Self {
        RawGuards {
            mode: Mode::Enforce,
            refusal_logs_per_second: 5,
            size: RawSizeGuard::default(),
            ttl: RawTtlGuard::default(),
            shed: RawShedGuard::default(),
            queue: RawQueueGuard::default(),
            fail_open: RawFailOpen::default(),
            enqueue: RawEnqueueGuard::default(),
        }
    }
}

/// `[monitor]`: the connection that polls Redis's `INFO` for memory and clients.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawMonitor {
    /// How often to poll `INFO memory` and `INFO clients`.
    pub interval: HumanDuration,
    /// The memory limit to measure pressure against when Redis's `maxmemory` is 0.
    pub memory_budget: ByteSize,
    /// Pressure ratios whose crossing is logged (upwards as a warning, downwards as info).
    pub warning_levels: Vec<f64>,
    /// The span of samples the growth rate and the time until full are computed over.
    pub growth_window: HumanDuration,
}

impl Default for RawMonitor {
    fn default() -> Self {
        RawMonitor {
            interval: HumanDuration(Duration::from_millis(250)),
            memory_budget: ByteSize(0),
            warning_levels: vec![0.2, 0.5, 0.9],
            growth_window: HumanDuration(Duration::from_secs(15 * 60)),
        }
    }
}

/// `[guards.shed]`: shedding levels (ratios of used memory to the limit) and rules.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawShedGuard {
    /// Pressure at which `soft` shedding starts (writes to low-priority keys refused); 0
    /// turns the level off.
    pub soft_enter: f64,
    /// Pressure below which `soft` shedding stops.
    pub soft_exit: f64,
    /// Pressure at which `hard` shedding starts (every memory-growing write refused except
    /// to critical keys); 0 turns the level off.
    pub hard_enter: f64,
    /// Pressure below which `hard` shedding stops.
    pub hard_exit: f64,
    /// Shed even when Redis evicts keys at its limit (`maxmemory-policy allkeys-*`).
    pub with_eviction: bool,
    /// SHA1 digests (hex) of scripts that may still run at the `hard` level.
    pub allowed_scripts: Vec<String>,
    /// Functions (FCALL) that may still run at the `hard` level.
    pub allowed_functions: Vec<String>,
    /// Rules giving keys a priority, first match wins; other keys are `normal`.
    pub rules: Vec<RawShedRule>,
}

impl Default for RawShedGuard {
    fn default() -> Self {
        RawShedGuard {
            soft_enter: 0.80,
            soft_exit: 0.75,
            hard_enter: 0.90,
            hard_exit: 0.85,
            with_eviction: false,
            allowed_scripts: Vec::new(),
            allowed_functions: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// One `[[guards.shed.rules]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RawShedRule {
    /// Key pattern (Redis glob).
    pub pattern: String,
    /// Which clients the rule applies to.
    #[serde(flatten)]
    pub clients: ClientMatch,
    /// `enforce` or `observe`; the `[guards]` mode when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// `low` (shed first, at `soft`), `normal` (shed at `hard`) or `critical` (never shed).
    pub priority: Priority,
}

/// `[guards.queue]`: queues whose depth the proxy follows.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueueGuard {
    /// Most queues (keys) followed at once; pushes to further queues are not followed.
    pub max_tracked_queues: usize,
    /// A queue not pushed to for this long has its depth read again (`LLEN`) by the
    /// monitor, so a drained queue does not keep showing its old depth.
    pub refresh_after: HumanDuration,
    /// Rules, first match wins.
    pub rules: Vec<RawQueueRule>,
}

impl Default for RawQueueGuard {
    fn default() -> Self {
        RawQueueGuard {
            max_tracked_queues: 10_000,
            refresh_after: HumanDuration(Duration::from_secs(10)),
            rules: Vec::new(),
        }
    }
}

/// One `[[guards.queue.rules]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RawQueueRule {
    /// Key pattern (Redis glob) of the queue lists.
    pub pattern: String,
    /// Which clients the rule applies to.
    #[serde(flatten)]
    pub clients: ClientMatch,
    /// `enforce` or `observe`; the `[guards]` mode when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Enqueues (LPUSH, RPUSH, LPUSHX, RPUSHX) to a queue this deep are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u64>,
}

/// `[guards.enqueue]`: duplicate job enqueues, limited per client.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawEnqueueGuard {
    /// Most fingerprints remembered at once (24 bytes each); past it the entry expiring
    /// first in a set is forgotten.
    pub max_fingerprints: usize,
    /// Most per-client token buckets (for rules with `rate`) remembered at once.
    pub max_buckets: usize,
    /// Most enqueue script digests learned from EVAL and SCRIPT LOAD.
    pub max_scripts: usize,
    /// Rules, first match wins.
    pub rules: Vec<RawEnqueueRule>,
}

impl Default for RawEnqueueGuard {
    fn default() -> Self {
        RawEnqueueGuard {
            max_fingerprints: 1_000_000,
            max_buckets: 100_000,
            max_scripts: 1_024,
            rules: Vec::new(),
        }
    }
}

/// One `[[guards.enqueue.rules]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RawEnqueueRule {
    /// `sidekiq`, `celery`, `rq`, `bullmq`, or `generic` (configured below).
    pub preset: Preset,
    /// The rule's name in errors, logs and metrics; the preset's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Key pattern of the queues; the preset's when absent (required for `generic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `generic`: the enqueue commands, of LPUSH, RPUSH, LPUSHX, RPUSHX, ZADD and XADD (all but
    /// XADD when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<Vec<String>>,
    /// `generic`: `json` or `raw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<PayloadFormat>,
    /// `generic`: JSON pointers of the fields that identify a job (the whole payload when
    /// empty).
    #[serde(default)]
    pub include: Vec<String>,
    /// `generic`: JSON pointers of fields that change on every enqueue.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `generic`: JSON pointer of the job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// `generic`: JSON pointer of the job's class or task name, for logs and errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `generic` with XADD: the stream field holding the payload (all fields when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What identifies a client: any of `user`, `client_name`, `address` (the IP address,
    /// never the port).
    #[serde(default = "default_enqueue_scope")]
    pub scope: Vec<ScopePart>,
    /// At most this many enqueues of the same job per client per window.
    #[serde(default = "default_enqueue_limit")]
    pub limit: u32,
    /// The window, counted from a job's first enqueue.
    #[serde(default = "default_enqueue_window")]
    pub window: HumanDuration,
    /// Whether re-pushes of the same job id (retries, scheduled jobs moving to their queue)
    /// count towards `limit`; they are always counted in metrics.
    #[serde(default)]
    pub limit_repushes: bool,
    /// A token bucket on all of a client's enqueues under this rule: enqueues per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// The bucket's size; `rate` (at least 1) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `drop` (answer as if enqueued, send nothing), `reject` (an error naming the rule) or
    /// `observe` (count and log only).
    #[serde(default = "default_enqueue_action")]
    pub action: EnqueueAction,
    /// Which clients the rule applies to.
    #[serde(flatten)]
    pub clients: ClientMatch,
}

fn default_enqueue_scope() -> Vec<ScopePart> {
    vec![ScopePart::User, ScopePart::ClientName, ScopePart::Address]
}

fn default_enqueue_limit() -> u32 {
    1
}

fn default_enqueue_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

fn default_enqueue_action() -> EnqueueAction {
    EnqueueAction::Reject
}

/// `[guards.fail_open]`: while Redis is unreachable, commands on these keys are answered
/// as by an empty cache instead of failing.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawFailOpen {
    /// Rules, first match wins.
    pub rules: Vec<RawFailOpenRule>,
}

/// One `[[guards.fail_open.rules]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RawFailOpenRule {
    /// Key pattern (Redis glob) of cache keys.
    pub pattern: String,
    /// Which clients the rule applies to.
    #[serde(flatten)]
    pub clients: ClientMatch,
}

/// `[guards.size]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawSizeGuard {
    /// Rules, first match wins.
    pub rules: Vec<RawSizeRule>,
}

/// `[guards.ttl]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawTtlGuard {
    /// Rules, first match wins.
    pub rules: Vec<RawTtlRule>,
}

/// One `[[guards.size.rules]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RawSizeRule {
    /// Key pattern (Redis glob).
    pub pattern: String,
    /// Which clients the rule applies to.
    #[serde(flatten)]
    pub clients: ClientMatch,
    /// `enforce` or `observe`; the `[guards]` mode when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Largest value (any argument that is neither the command name nor a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value: Option<ByteSize>,
    /// Largest whole command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request: Option<ByteSize>,
    /// Most arguments other than the command name and keys (fields, members, elements).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_elements: Option<u64>,
}

/// One `[[guards.ttl.rules]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct RawTtlRule {
    /// Key pattern (Redis glob).
    pub pattern: String,
    /// Which clients the rule applies to.
    #[serde(flatten)]
    pub clients: ClientMatch,
    /// `enforce` or `observe`; the `[guards]` mode when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// TTL given to keys written without one, or `none` to exempt matching keys.
    pub ttl: DefaultTtl,
    /// Largest TTL a client may set; larger ones are lowered to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<HumanDuration>,
    /// Key-creating commands beyond the default set (SET, SETNX, GETSET, MSET, MSETNX,
    /// HSET, HMSET, HSETNX) that get the TTL too, e.g. `["LPUSH", "SADD", "INCR"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

/// `[proxy]`: the listener clients connect to.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    /// Address clients connect to.
    pub listen: String,
    /// Most client connections open at once.
    pub max_clients: usize,
    /// Most commands in flight (sent, reply not yet delivered) per connection.
    pub max_pending_commands: usize,
    /// Unwritten bytes per direction after which the proxy stops reading the other side.
    pub output_buffer: ByteSize,
    /// How long in-flight replies may take to finish on shutdown.
    pub drain_timeout: HumanDuration,
    /// Threads serving connections; 0 means one per CPU core.
    pub worker_threads: usize,
    /// TLS for clients: off unless a certificate is given.
    pub tls: RawListenerTls,
    /// New client connections accepted per second in all; 0 for no limit.
    pub max_connections_per_second: u32,
    /// New client connections accepted per second from one address; 0 for no limit.
    pub max_connections_per_second_per_address: u32,
    /// Most client addresses whose connection rate is followed at once.
    pub max_tracked_addresses: usize,
    /// What SYNC and PSYNC get: a byte tunnel to Redis, or a refusal.
    pub replication: Replication,
}

/// `proxy.replication`: what happens when a client (a replica, `redis-cli --rdb`) asks for
/// SYNC or PSYNC through the proxy.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// Forward it; once Redis starts the transfer, the connection carries bytes both ways
    /// unscanned and unguarded for the rest of its life.
    #[default]
    Tunnel,
    /// Answer `-ERR respguard: ...` naming the setting; Redis never sees it.
    Refuse,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            listen: "127.0.0.1:6380".into(),
            max_clients: 10_000,
            max_pending_commands: 4096,
            output_buffer: ByteSize(256 * 1024),
            drain_timeout: HumanDuration(Duration::from_secs(5)),
            worker_threads: 0,
            tls: RawListenerTls::default(),
            max_connections_per_second: 5000,
            max_connections_per_second_per_address: 1000,
            max_tracked_addresses: 65_536,
            replication: Replication::Tunnel,
        }
    }
}

/// `[upstream]`: the Redis server and how to reach it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// How long one connection attempt may take.
    pub connect_timeout: HumanDuration,
    /// Longest wait for Redis to send anything while replies are owed (blocking commands,
    /// WAIT, subscriptions and MONITOR excepted); then the waiting commands get an error and
    /// the connection is closed. 0 turns the check off.
    pub reply_timeout: HumanDuration,
    /// First wait after a failed attempt; doubles per failure, with jitter.
    pub backoff_min: HumanDuration,
    /// Longest wait between attempts.
    pub backoff_max: HumanDuration,
    /// Connection attempts per second across all clients.
    pub max_connects_per_second: u32,
    /// Most connections open to Redis at once (the proxy's own included); 0 for no limit
    /// beyond `proxy.max_clients`.
    pub max_connections: usize,
    /// `upstream` to read the command table from Redis, or `builtin` for the shipped one.
    pub command_table: String,
    /// TLS settings for a `rediss://` URL.
    pub tls: RawUpstreamTls,
}

/// `[upstream.tls]`: how to reach a `rediss://` upstream.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTls {
    /// PEM file of the CA certificates to trust; empty: the system's.
    pub ca_file: String,
    /// PEM client certificate, for a Redis with `tls-auth-clients yes`.
    pub cert_file: String,
    /// The client certificate's PEM private key.
    pub key_file: String,
    /// The name the server's certificate must carry; empty: the URL's host.
    pub server_name: String,
}

/// `[proxy.tls]`: TLS for client connections.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawListenerTls {
    /// PEM certificate chain; empty: clients connect in plain text.
    pub cert_file: String,
    /// Its PEM private key.
    pub key_file: String,
    /// PEM CA certificates; when set, clients must present a certificate it signed.
    pub client_ca_file: String,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            url: "redis://127.0.0.1:6379".into(),
            connect_timeout: HumanDuration(Duration::from_secs(1)),
            reply_timeout: HumanDuration(Duration::from_secs(30)),
            backoff_min: HumanDuration(Duration::from_millis(50)),
            backoff_max: HumanDuration(Duration::from_secs(5)),
            max_connects_per_second: 500,
            max_connections: 0,
            command_table: "upstream".into(),
            tls: RawUpstreamTls::default(),
        }
    }
}

/// `[admin]`: health, status and metrics over HTTP, and the `RESPGUARD` command.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Address of the HTTP listener; empty to disable it.
    pub listen: String,
    /// Record metrics (`false` leaves `/metrics` empty and saves their cost).
    pub metrics: bool,
    /// Client networks allowed to send `RESPGUARD` commands; empty: nobody.
    pub command_networks: Vec<ipnet::IpNet>,
    /// If not empty, only connections authenticated as one of these users may send
    /// `RESPGUARD` commands (a Redis ACL user, or a respguard `[[auth.users]]` name).
    pub command_users: Vec<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9121".into(),
            metrics: true,
            command_networks: vec![
                "127.0.0.0/8".parse().expect("a network"),
                "::1/128".parse().expect("a network"),
            ],
            command_users: Vec::new(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// A `tracing` filter: `info`, `debug`, `respguard=debug,warn`...
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[protocol]`: bounds on what a client may send.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawProtocol {
    /// Longest inline command or length line (Redis: 64KiB).
    pub max_inline_len: ByteSize,
    /// Most arguments in one command (default 2147483647, Redis's own limit: memory is
    /// bounded by `max_buffered_command`, not by this count).
    pub max_args: u64,
    /// Largest argument (Redis's `proto-max-bulk-len`: 512MiB).
    pub max_bulk_len: ByteSize,
    /// Arguments larger than this are streamed through instead of buffered.
    pub stream_threshold: ByteSize,
    /// A command whose buffered part grows past this is streamed from there on.
    pub max_buffered_command: ByteSize,
}

impl Default for RawProtocol {
    fn default() -> Self {
        let l = Limits::default();
        RawProtocol {
            max_inline_len: ByteSize(l.max_inline_len as u64),
            max_args: l.max_args,
            max_bulk_len: ByteSize(l.max_bulk_len),
            stream_threshold: ByteSize(l.stream_threshold),
            max_buffered_command: ByteSize(l.max_buffered_command as u64),
        }
    }
}

/// The upstream Redis address and credentials, from its URL.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// `host:port`.
    pub address: String,
    /// ACL user, if given.
    pub username: Option<String>,
    /// Password, if given.
    pub password: Option<String>,
    /// Database to SELECT after connecting.
    pub db: u32,
    /// The host, as the URL gives it (the TLS server name by default).
    pub host: String,
    /// `rediss://`: connect with TLS.
    pub tls: bool,
}

impl fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        f.debug_struct("UpstreamTarget")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish()
    }
}

impl UpstreamTarget {
    /// Parse `redis://[user:password@]host[:port][/db]`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let key = "upstream.url";
        let url = url::Url::parse(s).map_err(|e| invalid(key, format!("`{s}`: {e}")))?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(invalid(
                    key,
                    format!("scheme `{other}`: expected redis://host:port or rediss://host:port"),
                ))
            }
        };
        let host = url
            .host_str()
            .ok_or_else(|| invalid(key, "no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = url.port().unwrap_or(6379);
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let decode = |p: &str| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        };
        let username = (!url.username().is_empty()).then(|| decode(url.username()));
        let password = url.password().map(decode);
        let path = url.path().trim_start_matches('/');
        let db = if path.is_empty() {
            0
        } else {
            path.parse()
                .map_err(|_| invalid(key, format!("database `{path}` is not a number")))?
        };
        Ok(UpstreamTarget {
            address,
            username,
            password,
            db,
            host: host.to_string(),
            tls,
        })
    }
}

/// `[auth]` users. A user without `upstream_user` runs as the `upstream.url` user: that is
/// refused when the URL holds a password, since those are the proxy's own credentials (it
/// needs INFO, and often more), and a client must not get them by authenticating.
fn validate_auth(auth: &RawAuth, upstream: &UpstreamTarget) -> Result<(), ConfigError> {
    let key = "auth.users";
    let mut names = std::collections::HashSet::new();
    for u in &auth.users {
        if u.name.is_empty() {
            return Err(invalid(key, "a user has no name"));
        }
        if !names.insert(u.name.as_str()) {
            return Err(invalid(key, format!("user `{}` is listed twice", u.name)));
        }
        match (u.password.is_empty(), u.password_sha256.is_empty()) {
            (false, false) | (true, true) => {
                return Err(invalid(
                    key,
                    format!(
                        "user `{}`: give exactly one of password and password_sha256",
                        u.name
                    ),
                ))
            }
            (true, false)
                if u.password_sha256.len() != 64
                    || !u.password_sha256.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                return Err(invalid(
                    key,
                    format!("user `{}`: password_sha256 must be 64 hex digits", u.name),
                ))
            }
            _ => {}
        }
        if !u.upstream_user.is_empty() && u.upstream_password.is_empty() {
            return Err(invalid(
                key,
                format!("user `{}`: upstream_user needs upstream_password", u.name),
            ));
        }
        if u.upstream_user.is_empty() && upstream.password.is_some() {
            return Err(invalid(
                key,
                format!(
                    "user `{}` has no upstream_user, so its commands would run with the upstream.url credentials, the proxy's own; give it an upstream_user (a Redis ACL user with only what it needs) and upstream_password",
                    u.name
                ),
            ));
        }
    }
    Ok(())
}

/// The validated configuration the proxy runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file's contents as parsed, for printing and for what the rest reads directly.
    pub raw: RawConfig,
    /// Client listener address.
    pub listen: SocketAddr,
    /// Admin listener address, if enabled.
    pub admin_listen: Option<SocketAddr>,
    /// Where Redis is.
    pub upstream: UpstreamTarget,
    /// Request scanner bounds.
    pub limits: Limits,
    /// Whether to read the command table from the upstream.
    pub command_table_from_upstream: bool,
    /// Where the configuration came from, to read it again on reload (`None`: built in
    /// code, nothing to reload from).
    pub source: Option<ConfigSource>,
    /// Clients served at once: `proxy.max_clients`, unless the binary lowered it to what
    /// the process's open-file limit allows.
    pub max_clients: usize,
}

/// What a `rediss://` connection needs: the connector (trusted CAs, client certificate) and
/// the name to verify.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The TLS client.
    pub connector: tokio_rustls::TlsConnector,
    /// The name the server's certificate must carry.
    pub server_name: rustls_pki_types::ServerName<'static>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The client listener's TLS acceptor.
#[derive(Clone)]
pub struct ListenerTls(pub tokio_rustls::TlsAcceptor);

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ListenerTls")
    }
}

/// Values given on the command line or in the environment, applied over the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `proxy.listen`.
    pub listen: Option<String>,
    /// `upstream.url`.
    pub upstream: Option<String>,
    /// `admin.listen`.
    pub admin_listen: Option<String>,
    /// `log.level`.
    pub log_level: Option<String>,
    /// `log.format`.
    pub log_format: Option<String>,
}

impl Overrides {
    /// Apply every value given.
    pub fn apply(&self, raw: &mut RawConfig) {
        let set = |field: &mut String, value: &Option<String>| {
            if let Some(v) = value {
                field.clone_from(v);
            }
        };
        set(&mut raw.proxy.listen, &self.listen);
        set(&mut raw.upstream.url, &self.upstream);
        set(&mut raw.admin.listen, &self.admin_listen);
        set(&mut raw.log.level, &self.log_level);
        set(&mut raw.log.format, &self.log_format);
    }
}

/// A configuration file and the overrides applied to it: what a reload reads again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The TOML file.
    pub path: PathBuf,
    /// The command line's values, which keep winning over the file's.
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Read the file and apply the overrides (not validated yet).
    pub fn load(&self) -> Result<RawConfig, ConfigError> {
        let mut raw = RawConfig::from_file(&self.path)?;
        self.overrides.apply(&mut raw);
        Ok(raw)
    }
}

impl RawConfig {
    /// Read and parse a file (no validation yet).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parse TOML text (no validation yet).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Check every value and make the configuration the proxy runs on. Only shapes are
    /// checked here: what needs files (certificates) or the command table (guard rules) is
    /// checked where it is built, by [`crate::app::check`], which `check-config` runs too.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let listen = self
            .proxy
            .listen
            .parse()
            .map_err(|e| invalid("proxy.listen", format!("`{}`: {e}", self.proxy.listen)))?;
        let admin_listen =
            if self.admin.listen.is_empty() {
                None
            } else {
                Some(self.admin.listen.parse().map_err(|e| {
                    invalid("admin.listen", format!("`{}`: {e}", self.admin.listen))
                })?)
            };
        let upstream = UpstreamTarget::parse(&self.upstream.url)?;
        if self.proxy.max_clients == 0 {
            return Err(invalid("proxy.max_clients", "must be at least 1"));
        }
        if self.proxy.max_pending_commands == 0 {
            return Err(invalid("proxy.max_pending_commands", "must be at least 1"));
        }
        if self.proxy.output_buffer.0 < 4096 {
            return Err(invalid("proxy.output_buffer", "must be at least 4KiB"));
        }
        if self.upstream.max_connects_per_second == 0 {
            return Err(invalid(
                "upstream.max_connects_per_second",
                "must be at least 1",
            ));
        }
        if self.upstream.backoff_min.0 > self.upstream.backoff_max.0 {
            return Err(invalid(
                "upstream.backoff_min",
                "must not be larger than upstream.backoff_max",
            ));
        }
        let command_table_from_upstream = match self.upstream.command_table.as_str() {
            "upstream" => true,
            "builtin" => false,
            other => {
                return Err(invalid(
                    "upstream.command_table",
                    format!("`{other}`: expected `upstream` or `builtin`"),
                ))
            }
        };
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid(
                "log.format",
                format!("`{}`: expected `text` or `json`", self.log.format),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", format!("`{}`: {e}", self.log.level)))?;
        let p = &self.protocol;
        if p.max_inline_len.0 < 1024 {
            return Err(invalid("protocol.max_inline_len", "must be at least 1KiB"));
        }
        if p.max_args == 0 || p.max_args > i32::MAX as u64 {
            return Err(invalid(
                "protocol.max_args",
                "must be between 1 and 2147483647",
            ));
        }
        if p.stream_threshold.0 < 1024 || p.stream_threshold.0 > p.max_buffered_command.0 {
            return Err(invalid(
                "protocol.stream_threshold",
                "must be at least 1KiB and at most protocol.max_buffered_command",
            ));
        }
        let m = &self.monitor;
        if m.interval.0 < Duration::from_millis(10) {
            return Err(invalid("monitor.interval", "must be at least 10ms"));
        }
        if m.growth_window.0 < m.interval.0 * 2 {
            return Err(invalid(
                "monitor.growth_window",
                "must be at least two monitor.interval",
            ));
        }
        if let Some(w) = m
            .warning_levels
            .iter()
            .find(|w| !(w.is_finite() && **w > 0.0 && **w <= 1.0))
        {
            return Err(invalid(
                "monitor.warning_levels",
                format!("{w}: each level is a ratio above 0 and at most 1"),
            ));
        }
        let shed = &self.guards.shed;
        for (key_enter, enter, key_exit, exit) in [
            (
                "guards.shed.soft_enter",
                shed.soft_enter,
                "guards.shed.soft_exit",
                shed.soft_exit,
            ),
            (
                "guards.shed.hard_enter",
                shed.hard_enter,
                "guards.shed.hard_exit",
                shed.hard_exit,
            ),
        ] {
            if !(0.0..=1.0).contains(&enter) {
                return Err(invalid(key_enter, "must be between 0 (off) and 1"));
            }
            if enter > 0.0 && !(exit > 0.0 && exit < enter) {
                return Err(invalid(
                    key_exit,
                    format!("must be above 0 and below the enter ratio ({enter}), so the level cannot flap"),
                ));
            }
        }
        if shed.soft_enter > 0.0 && shed.hard_enter > 0.0 && shed.soft_enter >= shed.hard_enter {
            return Err(invalid(
                "guards.shed.soft_enter",
                "must be below guards.shed.hard_enter",
            ));
        }
        if self.guards.queue.max_tracked_queues == 0 {
            return Err(invalid(
                "guards.queue.max_tracked_queues",
                "must be at least 1",
            ));
        }
        if self.proxy.max_tracked_addresses == 0 {
            return Err(invalid("proxy.max_tracked_addresses", "must be at least 1"));
        }
        validate_auth(&self.auth, &upstream)?;
        let t = &self.proxy.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty()
            || (t.cert_file.is_empty() && !t.client_ca_file.is_empty())
        {
            return Err(invalid(
                "proxy.tls",
                "cert_file and key_file are both needed (client_ca_file needs them too)",
            ));
        }
        if let Some(sha) = self
            .guards
            .shed
            .allowed_scripts
            .iter()
            .find(|sha| sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(
                "guards.shed.allowed_scripts",
                format!("`{sha}` is not a SHA1 digest (40 hex digits)"),
            ));
        }
        let limits = Limits {
            max_inline_len: p.max_inline_len.0 as usize,
            max_args: p.max_args,
            max_bulk_len: p.max_bulk_len.0,
            stream_threshold: p.stream_threshold.0,
            max_buffered_command: p.max_buffered_command.0 as usize,
        };
        Ok(Config {
            max_clients: self.proxy.max_clients,
            raw: self,
            listen,
            admin_listen,
            upstream,
            limits,
            command_table_from_upstream,
            source: None,
        })
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RawConfig always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = RawConfig::default().validate().unwrap();
        assert_eq!(c.upstream.address, "127.0.0.1:6379");
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c = RawConfig::from_toml(
            "[proxy]\ndrain_timeout = \"250ms\"\noutput_buffer = \"1MiB\"\n[protocol]\nmax_bulk_len = 1048576\n",
        )
        .unwrap();
        assert_eq!(c.proxy.drain_timeout.0, Duration::from_millis(250));
        assert_eq!(c.proxy.output_buffer.0, 1 << 20);
        assert_eq!(c.protocol.max_bulk_len, ByteSize(1 << 20));
        assert_eq!(ByteSize::parse("1.5KiB").unwrap(), ByteSize(1536));
        assert!(ByteSize::parse("12 parsecs").is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = RawConfig::from_toml("[proxy]\nmax_client = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_client"), "{e}");
        let e = RawConfig::from_toml("[proxy]\ndrain_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("drain_timeout") && e.contains("not a duration"),
            "{e}"
        );
        let e = RawConfig::from_toml("[proxy]\nmax_clients = 0\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.max_clients"), "{e}");
    }

    #[test]
    fn unknown_rule_keys_are_refused_through_the_shared_client_filters() {
        let e = RawConfig::from_toml("[[guards.size.rules]]\npattern = \"a:*\"\nmax_valu = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `max_valu`"), "{e}");
        // Fail-open rules have no mode.
        let e = RawConfig::from_toml(
            "[[guards.fail_open.rules]]\npattern = \"c:*\"\nmode = \"observe\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `mode`"), "{e}");
        let e = RawConfig::from_toml("[guards]\nmode = \"watch\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mode `watch`: expected `enforce` or `observe`"),
            "{e}"
        );
    }

    #[test]
    fn rules_with_filters_and_words_round_trip() {
        let raw = RawConfig::from_toml(concat!(
            "[[guards.shed.rules]]\npattern = \"a:*\"\nuser = \"app\"\n",
            "client_address = \"10.0.0.0/8\"\npriority = \"low\"\nmode = \"observe\"\n",
            "[[guards.ttl.rules]]\npattern = \"*\"\nttl = \"none\"\n",
            "[[guards.enqueue.rules]]\npreset = \"generic\"\npattern = \"q\"\nformat = \"raw\"\n",
            "scope = [\"client_name\"]\naction = \"drop\"\n",
        ))
        .unwrap();
        let shed = &raw.guards.shed.rules[0];
        assert_eq!(shed.priority, Priority::Low);
        assert_eq!(shed.clients.user.as_deref(), Some("app"));
        assert_eq!(raw.guards.ttl.rules[0].ttl, DefaultTtl::Exempt);
        assert_eq!(
            raw.guards.enqueue.rules[0].scope,
            vec![ScopePart::ClientName]
        );
        assert_eq!(RawConfig::from_toml(&raw.to_toml()).unwrap(), raw);
    }

    #[test]
    fn replication_is_tunnelled_unless_refused() {
        assert_eq!(RawConfig::default().proxy.replication, Replication::Tunnel);
        let c = RawConfig::from_toml("[proxy]\nreplication = \"refuse\"\n").unwrap();
        assert_eq!(c.proxy.replication, Replication::Refuse);
        let e = RawConfig::from_toml("[proxy]\nreplication = \"allow\"\n").unwrap_err();
        assert!(e.to_string().contains("tunnel"), "{e}");
    }

    #[test]
    fn shedding_levels_must_have_hysteresis_and_valid_rules() {
        // A wrong word (a priority) is refused as the file is read; the rest by `validate`.
        let err = |toml: &str| {
            RawConfig::from_toml(toml)
                .and_then(RawConfig::validate)
                .unwrap_err()
                .to_string()
        };
        let e = err("[guards.shed]\nsoft_enter = 0.5\nsoft_exit = 0.5\n");
        assert!(
            e.contains("guards.shed.soft_exit") && e.contains("flap"),
            "{e}"
        );
        let e = err("[guards.shed]\nsoft_enter = 0.95\nsoft_exit = 0.9\n");
        assert!(e.contains("guards.shed.soft_enter"), "{e}");
        let e = err("[guards.shed]\nhard_enter = 1.5\n");
        assert!(e.contains("guards.shed.hard_enter"), "{e}");
        let e = err("[[guards.shed.rules]]\npattern = \"a:*\"\npriority = \"urgent\"\n");
        assert!(e.contains("priority `urgent`"), "{e}");
        let e = err("[guards.shed]\nallowed_scripts = [\"abc\"]\n");
        assert!(e.contains("not a SHA1"), "{e}");
        let e = err("[monitor]\nwarning_levels = [0.5, 2.0]\n");
        assert!(e.contains("monitor.warning_levels"), "{e}");
        // Turning a level off needs no exit ratio.
        RawConfig::from_toml("[guards.shed]\nsoft_enter = 0.0\nsoft_exit = 0.0\n")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn auth_users_never_run_with_the_proxy_credentials() {
        // Guards against a client that authenticates to the proxy getting the Redis
        // password's rights (CONFIG GET requirepass and the like).
        let users = "[[auth.users]]\nname = \"app\"\npassword = \"p\"\n";
        let with_url = |url: &str| {
            RawConfig::from_toml(&format!("[upstream]\nurl = \"{url}\"\n{users}"))
                .unwrap()
                .validate()
        };
        let e = with_url("redis://:admin@127.0.0.1:6379")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auth.users") && e.contains("`app` has no upstream_user"),
            "{e}"
        );
        // A URL without a password gives no rights a client lacks.
        with_url("redis://127.0.0.1:6379").unwrap();
        let mapped = format!("{users}upstream_user = \"app\"\nupstream_password = \"q\"\n");
        RawConfig::from_toml(&format!(
            "[upstream]\nurl = \"redis://:admin@127.0.0.1:6379\"\n{mapped}"
        ))
        .unwrap()
        .validate()
        .unwrap();
    }

    #[test]
    fn upstream_urls() {
        let t = UpstreamTarget::parse("redis://app:s%40cret@redis.internal:6400/3").unwrap();
        assert_eq!(t.address, "redis.internal:6400");
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.db, 3);
        assert!(!format!("{t:?}").contains("s@cret"));
        let t = UpstreamTarget::parse("redis://:pw@[::1]").unwrap();
        assert_eq!(t.address, "[::1]:6379");
        assert_eq!(t.username, None);
        assert!(UpstreamTarget::parse("http://x").is_err());
        assert!(UpstreamTarget::parse("redis://h/x").is_err());
    }

    #[test]
    fn effective_config_round_trips() {
        let raw = RawConfig::default();
        let again = RawConfig::from_toml(&raw.to_toml()).unwrap();
        assert_eq!(raw, again);
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config.example.toml");

    #[test]
    fn the_example_file_holds_exactly_the_defaults() {
        let parsed = RawConfig::from_toml(EXAMPLE).unwrap();
        assert_eq!(parsed, RawConfig::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn the_example_file_documents_every_key() {
        fn check(table: &toml::Table, path: &str) {
            for (key, value) in table {
                let full = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match value {
                    toml::Value::Table(t) => {
                        assert!(EXAMPLE.contains(&format!("[{full}]")), "[{full}] missing");
                        check(t, &full);
                    }
                    _ => assert!(
                        EXAMPLE.lines().any(|l| l.starts_with(&format!("{key} = "))),
                        "{full} is not in config.example.toml"
                    ),
                }
            }
        }
        let defaults = toml::Value::try_from(RawConfig::default()).unwrap();
        check(defaults.as_table().unwrap(), "");
    }

    #[test]
    fn every_rule_key_is_documented_in_the_example() {
        for key in [
            "pattern",
            "user",
            "client_name",
            "client_address",
            "mode",
            "max_value",
            "max_request",
            "max_elements",
            "ttl",
            "max_ttl",
            "commands",
            "priority",
            "max_depth",
        ] {
            assert!(
                EXAMPLE.contains(&format!("{key} = ")),
                "rule key {key} undocumented"
            );
        }
    }
}
