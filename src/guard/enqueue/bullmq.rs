//! BullMQ's enqueue: one Lua script per add (`addStandardJob`, `addDelayedJob`,
//! `addPrioritizedJob`, `addParentJob`), run with EVALSHA (EVAL after NOSCRIPT). ARGV[1] is
//! a msgpack array `[key prefix, custom job id or "", job name, timestamp, ...]`, ARGV[2]
//! the job data as JSON, which is the job's fingerprint.
//!
//! An add script is recognised by its body, learned from EVAL and SCRIPT LOAD (its digest
//! kept in the memory), or, for a script loaded before the proxy started, by its shape:
//! keys under one prefix including `<prefix>id`, `<prefix>meta` and `<prefix>events`, and
//! an ARGV[1] starting with that prefix. A dropped add is answered as BullMQ's own
//! duplicate path answers: with the job's id.
//!
//! It never reads any other BullMQ script, nor decides which rule applies.

use bytes::BytesMut;

use super::super::rule::Rule;
use super::super::verdict::{CommandView, Verdict};
use super::memory::EnqueueMemory;
use super::payload::{Format, PayloadSpec};
use super::rules::{invalid, Cmd, EnqueueLimits};
use super::script_add::{judge_answering_job_id, ScriptAdd, ScriptCall};
use crate::config::ConfigError;
use crate::identity::ClientIdentity;

/// Text found in the body of every BullMQ add script (and no other of its scripts).
pub const BULLMQ_ADD_MARKER: &[u8] = b"- Increases the job counter if needed.";

/// Remember a script body's digest when it is a BullMQ add; true when it is one.
pub fn learn_script(memory: &EnqueueMemory, body: &[u8]) -> bool {
    if memchr::memmem::find(body, BULLMQ_ADD_MARKER).is_none() {
        return false;
    }
    let hex = sha1_smol::Sha1::from(body).digest().to_string();
    memory.remember_script(hex.as_bytes());
    true
}

/// Whether `cmd` is an add of a script not learned, by its keys' shape; a digest so
/// recognised is remembered.
fn fits_unknown(
    memory: &EnqueueMemory,
    call: &ScriptCall,
    cmd: &CommandView<'_>,
    prefix: &[u8],
) -> bool {
    let keys: Vec<&[u8]> = (1..=call.numkeys).map(|i| call.key(cmd, i)).collect();
    if !bullmq_keys_fit(prefix, &keys) {
        return false;
    }
    if call.kind == Cmd::EvalSha {
        memory.remember_script(cmd.arg(1).unwrap_or_default());
    }
    true
}

/// Judges BullMQ adds: the job data, a whole JSON document, is the fingerprint.
#[derive(Debug)]
pub struct BullmqAdds {
    whole_json: PayloadSpec,
}

impl BullmqAdds {
    /// The judge of adds.
    pub fn new() -> Result<Self, ConfigError> {
        Ok(BullmqAdds {
            whole_json: PayloadSpec::new(Format::Json, &[], &[], None, None).map_err(invalid)?,
        })
    }

    /// Judge `call` of `cmd` under `rule` when it is a BullMQ add (`learned`: an EVAL whose
    /// body was just learned as one); `None` when it is not.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        memory: &EnqueueMemory,
        rule: &Rule<EnqueueLimits>,
        call: &ScriptCall,
        learned: bool,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        out: &mut BytesMut,
    ) -> Option<Verdict> {
        let known = learned
            || (call.kind == Cmd::EvalSha && memory.script_known(cmd.arg(1).unwrap_or_default()));
        let add = bullmq_add(call.arg(cmd, 1), call.arg(cmd, 2))?;
        if !known && !fits_unknown(memory, call, cmd, add.prefix) {
            return None;
        }
        let job = ScriptAdd {
            queue: add.prefix,
            job_id: add.job_id,
            name: add.name,
            payload: add.data,
        };
        // BullMQ's own answer to a duplicate: the existing job's id.
        Some(judge_answering_job_id(
            memory,
            rule,
            &self.whole_json,
            &job,
            cmd,
            client,
            out,
        ))
    }
}

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

/// Read a BullMQ add's ARGV: `argv0` the msgpack arguments, `data` the job data. `None`
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

/// Whether `call` of `cmd` has the shape of a BullMQ add: its ARGV read as an add's, and
/// its keys fitting that add's prefix.
pub fn is_add_shape(call: &ScriptCall, cmd: &CommandView<'_>) -> bool {
    let Some(add) = bullmq_add(call.arg(cmd, 1), call.arg(cmd, 2)) else {
        return false;
    };
    let keys: Vec<&[u8]> = (1..=call.numkeys).map(|i| call.key(cmd, i)).collect();
    bullmq_keys_fit(add.prefix, &keys)
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
}
