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

use super::payload::{Format, PayloadSpec, Pointer};

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
pub const NAMES: &[&str] = &["sidekiq", "celery", "rq", "bullmq"];

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
            commands: &["eval", "evalsha", "script|load"],
            shape: Shape::BullmqScript,
        }),
        _ => None,
    }
}

/// Text found in the body of every BullMQ add script (and no other of its scripts).
pub const BULLMQ_ADD_MARKER: &[u8] = b"- Increases the job counter if needed.";

/// The parts of a BullMQ add that identify the job.
#[derive(Debug, PartialEq, Eq)]
pub struct BullmqAdd<'a> {
    /// The queue's key prefix, `bull:<queue>:`.
    pub prefix: &'a [u8],
    /// The custom job id, empty for an automatic one.
    pub job_id: &'a [u8],
    /// The job name.
    pub name: &'a [u8],
    /// The job data (JSON).
    pub data: &'a [u8],
}

/// Read a BullMQ add's ARGV: `argv[0]` the msgpack arguments, `argv[1]` the data. `None`
/// when they do not have that shape.
pub fn bullmq_add<'a>(argv0: &'a [u8], data: &'a [u8]) -> Option<BullmqAdd<'a>> {
    let mut rd = argv0;
    let n = rmp::decode::read_array_len(&mut rd).ok()?;
    if n < 3 {
        return None;
    }
    let mut strings = [&b""[..]; 3];
    for s in &mut strings {
        let len = rmp::decode::read_str_len(&mut rd).ok()? as usize;
        if rd.len() < len {
            return None;
        }
        (*s, rd) = rd.split_at(len);
    }
    Some(BullmqAdd {
        prefix: strings[0],
        job_id: strings[1],
        name: strings[2],
        data,
    })
}

/// Whether `keys` look like a BullMQ add's: all under `prefix`, with its `id`, `meta` and
/// `events` keys among them.
pub fn bullmq_keys_fit(prefix: &[u8], keys: &[&[u8]]) -> bool {
    let has = |suffix: &[u8]| {
        keys.iter()
            .any(|k| k.strip_prefix(prefix).is_some_and(|rest| rest == suffix))
    };
    !prefix.is_empty()
        && keys.iter().all(|k| k.starts_with(prefix))
        && has(b"id")
        && has(b"meta")
        && has(b"events")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ARGV[1] of a BullMQ 5.67 add, as captured from its traffic.
    const ARGS: &[u8] =
        b"\x99\xacbull:emails:\xa5fixed\xa4send\xcbBz \"\x0e\xe1\xa0\x00\xc0\xc0\xc0\xc0\xc0";

    #[test]
    fn a_bullmq_add_is_read_from_its_arguments() {
        let add = bullmq_add(ARGS, br#"{"to":"a@b"}"#).unwrap();
        assert_eq!(add.prefix, b"bull:emails:");
        assert_eq!(add.job_id, b"fixed");
        assert_eq!(add.name, b"send");
        let auto = b"\x99\xacbull:emails:\xa0\xa4send\xcbBz \"\x0e\xe1\xa0\x00\xc0\xc0\xc0\xc0\xc0";
        assert_eq!(bullmq_add(auto, b"{}").unwrap().job_id, b"");
        assert!(bullmq_add(b"\x92\xa1a\xa1b", b"{}").is_none(), "too short");
        assert!(bullmq_add(b"\x93\xa1a\xa5ab", b"{}").is_none(), "truncated");
        assert!(bullmq_add(b"{\"json\":1}", b"{}").is_none());
    }

    #[test]
    fn bullmq_key_shapes() {
        let keys: Vec<&[u8]> = vec![
            b"bull:q:wait",
            b"bull:q:paused",
            b"bull:q:meta",
            b"bull:q:id",
            b"bull:q:completed",
            b"bull:q:delayed",
            b"bull:q:active",
            b"bull:q:events",
            b"bull:q:marker",
        ];
        assert!(bullmq_keys_fit(b"bull:q:", &keys));
        assert!(!bullmq_keys_fit(b"bull:r:", &keys));
        assert!(!bullmq_keys_fit(b"bull:q:", &keys[..3]), "no id or events");
    }

    #[test]
    fn every_preset_is_known_by_name() {
        for n in NAMES {
            assert!(preset(n).is_some(), "{n}");
        }
        assert!(preset("generic").is_none());
    }
}
