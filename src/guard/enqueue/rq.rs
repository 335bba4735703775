//! RQ's enqueue: in one MULTI, `HSET rq:job:<id> ... data <...> origin <queue> ...` writes
//! the job and `RPUSH rq:queue:<q> <id>` queues its id. The job is judged at its `HSET`
//! with `data`; a dropped job's id is remembered for a few seconds, so the push of that id
//! (to its queue or a registry) is dropped too ([`super::job_key::check_pushed_ids`]) and
//! no job hash is left behind.
//!
//! It never judges a push by itself: a push is dropped only for an id this module dropped.

use bytes::BytesMut;

use super::super::rule::Rule;
use super::super::verdict::{CommandView, Verdict};
use super::decision::{over_limit, refusal, Decision};
use super::memory::EnqueueMemory;
use super::payload::JobPrint;
use super::rewrite::rewritten;
use super::rules::{Action, EnqueueLimits};
use crate::clock::Now;
use crate::identity::ClientIdentity;
use crate::resp;

/// The `HSET` fields of a job hash that describe the job.
#[derive(Default)]
struct JobFields<'a> {
    data: Option<&'a [u8]>,
    origin: Option<&'a [u8]>,
    description: Option<&'a [u8]>,
}

impl<'a> JobFields<'a> {
    fn read(cmd: &CommandView<'a>) -> Self {
        let mut fields = JobFields::default();
        let mut i = 2;
        while i + 1 < cmd.argc {
            match cmd.arg(i).unwrap_or_default() {
                b"data" => fields.data = cmd.arg(i + 1),
                b"origin" => fields.origin = cmd.arg(i + 1),
                b"description" => fields.description = cmd.arg(i + 1),
                _ => {}
            }
            i += 2;
        }
        fields
    }
}

/// Judge `HSET rq:job:<id> ... data ...` under `rule`: the job is its function and
/// arguments (`data`) on its queue (`origin`); the hash's other writes pass.
pub fn check_job_hash(
    memory: &EnqueueMemory,
    rule: &Rule<EnqueueLimits>,
    cmd: &CommandView<'_>,
    client: &ClientIdentity,
    out: &mut BytesMut,
) -> Verdict {
    let key = cmd.arg(1).unwrap_or_default();
    let fields = JobFields::read(cmd);
    let Some(data) = fields.data else {
        // Status updates and other writes to the job hash.
        return Verdict::Forward;
    };
    let origin = fields.origin.unwrap_or_default();
    let job_id = rq_job_id(key);
    let job = JobPrint {
        fingerprint: memory
            .job_hasher(&rule.limits, client, &[origin])
            .hash(data),
        id: Some(memory.hash(&[job_id])),
        label: fields
            .description
            .map(|d| String::from_utf8_lossy(d).into_owned()),
    };
    let now = Now::read();
    let decision = memory.decide(&rule.limits, client, &job, now);
    match over_limit(rule, client, &cmd.info.name, origin, &job, (decision, now)) {
        None => Verdict::Forward,
        Some(Action::Reject) => refusal(rule, decision),
        Some(Action::Drop) => {
            if matches!(decision, Decision::Duplicate { repush: true, .. }) {
                // The job exists already: leave it alone.
                resp::command(out, &[b"EXISTS", key]);
            } else {
                // A new job's hash: remove what this transaction wrote of it so far.
                resp::command(out, &[b"DEL", key]);
                memory.remember_dropped(job_id);
            }
            rewritten(out)
        }
    }
}

/// RQ's job id: the key after `rq:job:` (the whole key for another prefix).
fn rq_job_id(key: &[u8]) -> &[u8] {
    key.strip_prefix(b"rq:job:").unwrap_or(key)
}
