//! How each job library enqueues, read from its source and checked against its traffic.
//!
//! - **Sidekiq** (6.x, 7.x): `LPUSH queue:<q> <json>` (several payloads for `push_bulk`),
//!   `ZADD schedule <at> <json>` for scheduled jobs. The JSON has `class`, `args`, `queue`,
//!   and per enqueue `jid`, `created_at`, `enqueued_at` (plus `retry_count`, `failed_at`,
//!   `error_*` on a retried job). ActiveJob wraps its own id and timestamps in `args[0]`.
//! - **Celery** (kombu's Redis transport): `LPUSH <queue> <json>`, the queue being `celery`
//!   or `celery\x06\x16<priority>`. The message has `headers.task`, `headers.id` (also the
//!   `correlation_id` and `root_id`), `headers.retries`, and `body`: the base64 of the
//!   JSON `[args, kwargs, embed]`. A retry re-sends the same id.
//! - **RQ**: in one MULTI, `HSET rq:job:<id> status queued`, `HSET rq:job:<id> data <zlib
//!   pickle of func, args, kwargs> origin <queue> ...` and `RPUSH rq:queue:<q> <id>`. The
//!   push carries only the id, so the job is judged at its `HSET` with `data`; a dropped
//!   job's id is remembered for a few seconds so its push is dropped too.
//! - **BullMQ** (5.x): one Lua script per add (`addStandardJob`, `addDelayedJob`,
//!   `addPrioritizedJob`, `addParentJob`), run with EVALSHA (EVAL after NOSCRIPT). ARGV[1]
//!   is a msgpack array `[key prefix, custom job id or "", job name, timestamp, ...]`,
//!   ARGV[2] the job data as JSON. The script is recognised by its body (learned from EVAL
//!   and SCRIPT LOAD) or, for a script loaded before the proxy started, by its shape: keys
//!   under one prefix including `<prefix>id`, `<prefix>meta` and `<prefix>events`, and an
//!   ARGV[1] starting with that prefix.
//! - **Dramatiq** (2.x): its `dispatch` script with `enqueue` (see `dramatiq.rs`).
//! - **Bee-Queue** (2.x): its `addJob`/`addDelayedJob` scripts under `bq:<q>:` (see
//!   `beequeue.rs`).
//! - **Bull** (4.x, and 3.x with the same `addJob`): its `addJob` script under `bull:<q>:`
//!   (see `bull.rs`).
//! - **taskiq** (taskiq-redis's `ListQueueBroker`): `LPUSH taskiq <json>`, the message
//!   `{"task_id","task_name","labels","labels_types","args","kwargs"}`; a retry re-sends
//!   the task id (taskiq-redis's stream and pub/sub brokers are not read).
//!
//! This module holds the presets (keys, commands, how to find the job); the checks of the
//! libraries whose jobs are not pushed whole are in `rq.rs`, `bullmq.rs`, `dramatiq.rs`,
//! `beequeue.rs` and `bull.rs`.

use super::job_key_rule::JobKeyRule;
use super::payload::{Format, PayloadSpec, Pointer};
use super::script_rule::ScriptRule;

/// The commands that push values onto lists.
pub const LIST_PUSHES: &[&str] = &["lpush", "rpush", "lpushx", "rpushx"];

/// How a rule finds jobs in commands.
#[derive(Debug, Clone)]
pub enum Shape {
    /// Each pushed value (list values, sorted-set members, a stream field) is a payload.
    Payload(Box<PayloadSpec>),
    /// RQ: the job hash's `HSET` carries the job, the queue push only its id.
    RqJobHash,
    /// BullMQ's add scripts.
    BullmqScript,
    /// Dramatiq's dispatch script, with `enqueue`.
    DramatiqScript,
    /// Bee-Queue's add scripts.
    BeeQueueScript,
    /// Bull's add script.
    BullScript,
    /// A generic rule's script or function, described by the rule.
    Script(Box<ScriptRule>),
    /// A generic rule's job key, written with the payload before its id is pushed.
    JobKey(Box<JobKeyRule>),
}

impl Shape {
    /// Whether jobs of this shape are enqueued by Lua scripts.
    pub fn is_script(&self) -> bool {
        matches!(
            self,
            Shape::BullmqScript
                | Shape::DramatiqScript
                | Shape::BeeQueueScript
                | Shape::BullScript
                | Shape::Script(_)
        )
    }
}

/// A library's defaults.
#[derive(Debug, Clone)]
pub struct Preset {
    /// The keys its jobs are written to (Redis glob)...
    pub pattern: &'static str,
    /// ... and these too.
    pub also: &'static [&'static str],
    /// The commands that enqueue.
    pub commands: &'static [&'static str],
    /// How to find the job.
    pub shape: Shape,
}

/// The names of the library presets.
pub const NAMES: &[&str] = &[
    "sidekiq", "celery", "rq", "bullmq", "dramatiq", "beequeue", "bull", "taskiq",
];

/// The commands of a library whose enqueues are scripts.
const SCRIPTS: &[&str] = &["eval", "evalsha", "script|load"];

/// The preset called `name`.
pub fn preset(name: &str) -> Option<Preset> {
    let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let p = |v: &[&str]| {
        v.iter()
            .map(|p| Pointer::parse(p).expect("preset pointers are valid"))
            .collect::<Vec<_>>()
    };
    let json = |include: &[&str], job_id: &str, label: &str| {
        PayloadSpec::new(Format::Json, &s(include), &[], Some(job_id), Some(label))
            .expect("preset pointers are valid")
    };
    match name {
        "sidekiq" => Some(Preset {
            pattern: "queue:*",
            also: &["schedule"],
            commands: &["lpush", "rpush", "zadd"],
            shape: Shape::Payload(Box::new(PayloadSpec {
                exclude_if: Some((
                    Pointer::parse("/wrapped").expect("valid"),
                    p(&[
                        "/args/0/job_id",
                        "/args/0/provider_job_id",
                        "/args/0/enqueued_at",
                        "/args/0/scheduled_at",
                        "/args/0/executions",
                        "/args/0/exception_executions",
                    ]),
                )),
                ..json(&["/class", "/queue", "/args", "/wrapped"], "/jid", "/class")
            })),
        }),
        "celery" => Some(Preset {
            pattern: "celery*",
            also: &[],
            commands: &["lpush", "rpush"],
            shape: Shape::Payload(Box::new(json(
                &["/headers/task", "/body"],
                "/headers/id",
                "/headers/task",
            ))),
        }),
        "rq" => Some(Preset {
            pattern: "rq:job:*",
            also: &[],
            commands: &["hset", "hmset"],
            shape: Shape::RqJobHash,
        }),
        "bullmq" => Some(Preset {
            pattern: "bull:*",
            also: &[],
            commands: SCRIPTS,
            shape: Shape::BullmqScript,
        }),
        "dramatiq" => Some(Preset {
            pattern: "dramatiq",
            also: &[],
            commands: SCRIPTS,
            shape: Shape::DramatiqScript,
        }),
        "beequeue" => Some(Preset {
            pattern: "bq:*",
            also: &[],
            commands: SCRIPTS,
            shape: Shape::BeeQueueScript,
        }),
        "bull" => Some(Preset {
            pattern: "bull:*",
            also: &[],
            commands: SCRIPTS,
            shape: Shape::BullScript,
        }),
        "taskiq" => Some(Preset {
            pattern: "taskiq*",
            also: &[],
            commands: &["lpush", "rpush"],
            shape: Shape::Payload(Box::new(json(
                &["/task_name", "/args", "/kwargs"],
                "/task_id",
                "/task_name",
            ))),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_known_by_name() {
        for n in NAMES {
            assert!(preset(n).is_some(), "{n}");
        }
        assert!(preset("generic").is_none());
    }
}
