//! Bee-Queue's enqueue (2.x): its `addJob` script, run with EVALSHA, keys
//! `bq:<q>:id`, `bq:<q>:jobs`, `bq:<q>:waiting` and ARGV `[custom job id or "", job]`,
//! the job being the JSON `{"data":…,"options":{"timestamp":…,…},"status":"created",…}`;
//! `addDelayedJob` has `bq:<q>:delayed` and `bq:<q>:earlierDelayed` in place of
//! `waiting`, and the delay as a third ARGV (as captured from Bee-Queue 2.0's traffic).
//!
//! The scripts are recognised by those shapes (the keys under one prefix, in order), which
//! also covers scripts loaded before the proxy started. The job is its `data` on its queue;
//! the options (timestamp, retries, timeout) change per save. A dropped save is answered
//! with the job's id, as the script answers a new job.
//!
//! It never reads any other Bee-Queue script.

use bytes::BytesMut;

use super::super::rule::Rule;
use super::super::verdict::{CommandView, Verdict};
use super::memory::EnqueueMemory;
use super::payload::{Format, PayloadSpec};
use super::rules::{invalid, EnqueueLimits};
use super::script_add::{judge_answering_job_id, ScriptAdd, ScriptCall};
use crate::config::ConfigError;
use crate::identity::ClientIdentity;

/// The keys of `addJob`, after the queue's prefix.
const ADD_KEYS: &[&[u8]] = &[b"id", b"jobs", b"waiting"];

/// The keys of `addDelayedJob`, after the queue's prefix.
const ADD_DELAYED_KEYS: &[&[u8]] = &[b"id", b"jobs", b"delayed", b"earlierDelayed"];

/// Judges Bee-Queue saves: the job's data.
#[derive(Debug)]
pub struct BeeQueueAdds {
    data: PayloadSpec,
}

impl BeeQueueAdds {
    /// The judge of saves.
    pub fn new() -> Result<Self, ConfigError> {
        Ok(BeeQueueAdds {
            data: PayloadSpec::new(Format::Json, &["/data".into()], &[], None, None)
                .map_err(invalid)?,
        })
    }

    /// Judge `call` of `cmd` under `rule` when it is a Bee-Queue save; `None` when it is
    /// not.
    pub fn check(
        &self,
        memory: &EnqueueMemory,
        rule: &Rule<EnqueueLimits>,
        call: &ScriptCall,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        out: &mut BytesMut,
    ) -> Option<Verdict> {
        let add = beequeue_add(call, cmd)?;
        Some(judge_answering_job_id(
            memory, rule, &self.data, &add, cmd, client, out,
        ))
    }
}

/// The save `call` carries, if it has the shape of Bee-Queue's `addJob` or
/// `addDelayedJob`.
pub fn beequeue_add<'a>(call: &ScriptCall, cmd: &CommandView<'a>) -> Option<ScriptAdd<'a>> {
    let prefix = call.first_key(cmd).strip_suffix(b"id")?;
    let fits = call.keys_are(cmd, prefix, ADD_KEYS)
        || (call.keys_are(cmd, prefix, ADD_DELAYED_KEYS) && call.argc(cmd) >= 3);
    if !fits {
        return None;
    }
    Some(ScriptAdd {
        queue: prefix,
        job_id: call.arg(cmd, 1),
        name: b"",
        payload: call.arg(cmd, 2),
    })
}
