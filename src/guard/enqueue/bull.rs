//! Bull's enqueue (3.x and 4.x, the generation before BullMQ): its `addJob` script, run with
//! EVALSHA (EVAL after NOSCRIPT), with six keys under the queue's prefix
//! (`<prefix>wait`, `paused`, `meta-paused`, `id`, `delayed`, `priority`) and ARGV
//! `[prefix, custom job id or "", job name, data (JSON), opts, timestamp, ...]`, as captured
//! from Bull 4.16's traffic.
//!
//! The script is recognised by that shape (the six keys in that order, ARGV[1] their
//! prefix), which also covers a script loaded before the proxy started. The job is its name
//! and data on its queue; opts and the timestamp change per add. A dropped add is answered
//! with the job's id, as the script answers an add of an existing custom id.
//!
//! It never reads any other Bull script.

use bytes::BytesMut;

use super::super::rule::Rule;
use super::super::verdict::{CommandView, Verdict};
use super::memory::EnqueueMemory;
use super::payload::{Format, PayloadSpec};
use super::rules::{invalid, EnqueueLimits};
use super::script_add::{judge_answering_job_id, ScriptAdd, ScriptCall};
use crate::config::ConfigError;
use crate::identity::ClientIdentity;

/// The keys of Bull's `addJob`, after the queue's prefix.
const ADD_KEYS: &[&[u8]] = &[
    b"wait",
    b"paused",
    b"meta-paused",
    b"id",
    b"delayed",
    b"priority",
];

/// Judges Bull adds: name and data.
#[derive(Debug)]
pub struct BullAdds {
    whole_json: PayloadSpec,
}

impl BullAdds {
    /// The judge of adds.
    pub fn new() -> Result<Self, ConfigError> {
        Ok(BullAdds {
            whole_json: PayloadSpec::new(Format::Json, &[], &[], None, None).map_err(invalid)?,
        })
    }

    /// Judge `call` of `cmd` under `rule` when it is a Bull add; `None` when it is not.
    pub fn check(
        &self,
        memory: &EnqueueMemory,
        rule: &Rule<EnqueueLimits>,
        call: &ScriptCall,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        out: &mut BytesMut,
    ) -> Option<Verdict> {
        let add = bull_add(call, cmd)?;
        Some(judge_answering_job_id(
            memory,
            rule,
            &self.whole_json,
            &add,
            cmd,
            client,
            out,
        ))
    }
}

/// The add `call` carries, if it has the shape of Bull's `addJob`.
pub fn bull_add<'a>(call: &ScriptCall, cmd: &CommandView<'a>) -> Option<ScriptAdd<'a>> {
    let prefix = call.arg(cmd, 1);
    if call.argc(cmd) < 4 || !call.keys_are(cmd, prefix, ADD_KEYS) {
        return None;
    }
    Some(ScriptAdd {
        queue: prefix,
        job_id: call.arg(cmd, 2),
        name: call.arg(cmd, 3),
        payload: call.arg(cmd, 4),
    })
}
