//! The file's `[guards]` and `[monitor]` sections: each guard's settings and rules, as
//! written, with their defaults. The guards read these shapes when they are built.

use super::units::{ByteSize, HumanDuration};
use super::words::{
    ClientMatch, DefaultTtl, EnqueueAction, Mode, PayloadFormat, Preset, Priority, ScopePart,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    /// A queue not pushed to for this long has its depth read again (`LLEN`, `ZCARD`,
    /// `XLEN`) by the monitor, so a drained queue does not keep showing its old depth.
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
    /// `sidekiq`, `celery`, `rq`, `bullmq`, `dramatiq`, `beequeue`, `bull`, `taskiq`, or `generic` (configured below).
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
    /// `generic`: `json` (the default), `msgpack`, `pickle` or `raw`.
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
    /// `generic`: the field holding the payload: with XADD, the stream field (all fields
    /// when absent); with `id_queues`, the job hash's field (the job key is then written by
    /// HSET, else by SET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `generic`: the payload is written as a job key (`pattern`, ending in `*`: the job's
    /// id is what the `*` matches) and the id then pushed onto a queue matching this
    /// pattern (LPUSH, RPUSH or a ZADD member), as in one MULTI; a dropped job's push is
    /// dropped with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_queues: Option<String>,
    /// `generic`: jobs enqueued by a Lua script or function (EVAL, EVALSHA, FCALL) this
    /// identifies, instead of pushed by LPUSH and the like.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<RawScriptMatch>,
    /// `script`: which of the script's keys (from 1, as `KEYS` in Lua) `pattern` is
    /// matched against; any of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_index: Option<u32>,
    /// `script`: the argument (from 1, as `ARGV` in Lua) holding the job's payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_arg: Option<u32>,
    /// `script`: the argument naming the operation, when one script serves several
    /// (enqueue, ack, ...); with `operation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_arg: Option<u32>,
    /// `script`: the value of `operation_arg` that enqueues; calls with another pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// `script` with `action = "drop"`: what a dropped call is answered, since the proxy
    /// cannot know what the script would have returned: `"nil"` (the default), `"ok"`, an
    /// integer, or any other text as a bulk string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_reply: Option<DroppedReply>,
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

/// A generic enqueue rule's `script`: exactly one of its keys, which says how its calls are
/// recognised.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawScriptMatch {
    /// The script's SHA1 digest (40 hex digits): EVALSHA of it, and EVAL of a body with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    /// Text in the script's body: EVAL of such a body, and EVALSHA of one seen in EVAL or
    /// SCRIPT LOAD through the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// A function's name: FCALL and FCALL_RO of it (in any case, as Redis finds it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

/// What a dropped scripted enqueue is answered (`dropped_reply`): an integer written as
/// one, or text: `nil`, `ok`, or a bulk string.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum DroppedReply {
    /// An integer reply.
    Integer(i64),
    /// `nil` (a null reply), `ok` (the status `+OK`), or any other text as a bulk string.
    Text(String),
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
