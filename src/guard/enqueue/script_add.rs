//! Enqueues made by a job library's Lua script (BullMQ, Bull, Bee-Queue, Dramatiq): the
//! call read as a script call ([`ScriptCall`]: where its keys and ARGV are), the add it
//! carries ([`ScriptAdd`]: queue, custom job id, job name, payload), and the one judgement
//! all of them share ([`judge`]): fingerprint, count, and on a drop the library's own
//! answer, written by the library's module.
//!
//! Each library's module recognises its own calls (by body or by shape) and reads its add;
//! this module never knows a library's format, nor decides which rule applies.

use bytes::BytesMut;

use super::super::rule::Rule;
use super::super::verdict::{CommandView, Verdict};
use super::decision::{over_limit, refusal};
use super::memory::EnqueueMemory;
use super::payload::{JobPrint, PayloadSpec};
use super::rewrite::rewritten;
use super::rules::{Action, Cmd, EnqueueLimits};
use crate::clock::Now;
use crate::identity::ClientIdentity;
use crate::resp;

/// An EVAL, EVALSHA or FCALL: where its keys and ARGV are.
#[derive(Debug)]
pub struct ScriptCall {
    /// EVAL, EVALSHA or FCALL.
    pub kind: Cmd,
    /// The number of keys.
    pub numkeys: usize,
    /// The index of ARGV[1] among the command's arguments.
    pub argv: usize,
}

impl ScriptCall {
    /// Read `cmd`, a `kind` command (EVAL or EVALSHA); `None` when it has no key or fewer
    /// than two ARGV.
    pub fn read(cmd: &CommandView<'_>, kind: Cmd) -> Option<Self> {
        Self::read_any(cmd, kind).filter(|call| call.has_add_shape(cmd))
    }

    /// Read `cmd`, a `kind` command (EVAL, EVALSHA, FCALL or FCALL_RO), whatever its
    /// numbers of keys and ARGV; `None` when its key count is not a number or exceeds its
    /// arguments (Redis refuses it).
    pub fn read_any(cmd: &CommandView<'_>, kind: Cmd) -> Option<Self> {
        let numkeys = std::str::from_utf8(cmd.arg(2)?)
            .ok()?
            .parse::<usize>()
            .ok()?;
        if cmd.argc < 3 + numkeys {
            return None;
        }
        Some(ScriptCall {
            kind,
            numkeys,
            argv: 3 + numkeys,
        })
    }

    /// Whether the call has at least one key and two ARGV, as every library add read here.
    pub fn has_add_shape(&self, cmd: &CommandView<'_>) -> bool {
        self.numkeys > 0 && self.argc(cmd) >= 2
    }

    /// The script's first key, which selects the rule.
    pub fn first_key<'a>(&self, cmd: &CommandView<'a>) -> &'a [u8] {
        self.key(cmd, 1)
    }

    /// KEYS[`i`] (from 1), empty past the keys.
    pub fn key<'a>(&self, cmd: &CommandView<'a>, i: usize) -> &'a [u8] {
        if i == 0 || i > self.numkeys {
            return b"";
        }
        cmd.arg(2 + i).unwrap_or_default()
    }

    /// ARGV[`i`] (from 1), empty past the end.
    pub fn arg<'a>(&self, cmd: &CommandView<'a>, i: usize) -> &'a [u8] {
        if i == 0 {
            return b"";
        }
        cmd.arg(self.argv + i - 1).unwrap_or_default()
    }

    /// The number of ARGV.
    pub fn argc(&self, cmd: &CommandView<'_>) -> usize {
        cmd.argc - self.argv
    }

    /// Whether the keys are `prefix` followed by each of `suffixes`, in order.
    pub fn keys_are(&self, cmd: &CommandView<'_>, prefix: &[u8], suffixes: &[&[u8]]) -> bool {
        self.numkeys == suffixes.len()
            && !prefix.is_empty()
            && suffixes.iter().enumerate().all(|(i, s)| {
                self.key(cmd, i + 1)
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest == *s)
            })
    }
}

/// The parts of a script add that identify the job.
#[derive(Debug, PartialEq, Eq)]
pub struct ScriptAdd<'a> {
    /// The queue (its key prefix or name).
    pub queue: &'a [u8],
    /// The custom job id, empty when the library makes one.
    pub job_id: &'a [u8],
    /// The job name (empty for a library without names).
    pub name: &'a [u8],
    /// The payload the library's spec reads (the job data, or the whole message).
    pub payload: &'a [u8],
}

/// The job id a dropped script add without a custom id is answered with (BullMQ, Bull,
/// Bee-Queue).
pub const DROPPED_JOB_ID: &[u8] = b"respguard-duplicate";

/// Judge an add whose dropped duplicate is answered as BullMQ's, Bull's and Bee-Queue's add
/// scripts answer one: with the job's id (its custom id, or [`DROPPED_JOB_ID`] for an
/// automatic one), sent as an `ECHO` so Redis itself writes the reply.
pub fn judge_answering_job_id(
    memory: &EnqueueMemory,
    rule: &Rule<EnqueueLimits>,
    spec: &PayloadSpec,
    add: &ScriptAdd<'_>,
    cmd: &CommandView<'_>,
    client: &ClientIdentity,
    out: &mut BytesMut,
) -> Verdict {
    let id = if add.job_id.is_empty() {
        DROPPED_JOB_ID
    } else {
        add.job_id
    };
    judge(memory, rule, spec, add, cmd, client, out, |out| {
        resp::command(out, &[b"ECHO", id]);
    })
}

/// Judge `add`, read from `cmd` under `rule` with `spec`: the job is `spec`'s fingerprint of
/// the payload on its queue under its name (a payload that is not JSON hashed as it is).
/// On a drop, `dropped` writes the command the library's own answer comes from.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    memory: &EnqueueMemory,
    rule: &Rule<EnqueueLimits>,
    spec: &PayloadSpec,
    add: &ScriptAdd<'_>,
    cmd: &CommandView<'_>,
    client: &ClientIdentity,
    out: &mut BytesMut,
    dropped: impl FnOnce(&mut BytesMut),
) -> Verdict {
    let job = print(memory, &rule.limits, spec, client, add);
    judge_print(memory, rule, &job, add.queue, cmd, client, out, dropped)
}

/// Judge `job`, enqueued to `queue` by `cmd` under `rule`: counted, and over the limit
/// refused, or on a drop replaced by the command `dropped` writes.
#[allow(clippy::too_many_arguments)]
pub fn judge_print(
    memory: &EnqueueMemory,
    rule: &Rule<EnqueueLimits>,
    job: &JobPrint,
    queue: &[u8],
    cmd: &CommandView<'_>,
    client: &ClientIdentity,
    out: &mut BytesMut,
    dropped: impl FnOnce(&mut BytesMut),
) -> Verdict {
    let now = Now::read();
    let decision = memory.decide(&rule.limits, client, job, now);
    match over_limit(rule, client, &cmd.info.name, queue, job, (decision, now)) {
        None => Verdict::Forward,
        Some(Action::Reject) => refusal(rule, decision),
        Some(Action::Drop) => {
            dropped(out);
            rewritten(out)
        }
    }
}

/// The job of `add` by `client` under the rule of `limits`. JSON's canonical text always
/// parses, so a payload hashed as it is never meets a parsed one.
fn print(
    memory: &EnqueueMemory,
    limits: &EnqueueLimits,
    spec: &PayloadSpec,
    client: &ClientIdentity,
    add: &ScriptAdd<'_>,
) -> JobPrint {
    let context = memory.job_hasher(limits, client, &[add.queue, add.name]);
    let mut job = spec
        .print(add.payload, &context, memory.hasher())
        .unwrap_or_else(|| JobPrint {
            fingerprint: context.hash(add.payload),
            id: None,
            label: None,
        });
    if !add.job_id.is_empty() {
        job.id = Some(memory.hash(&[add.job_id]));
    }
    if !add.name.is_empty() {
        job.label = Some(String::from_utf8_lossy(add.name).into_owned());
    }
    job
}
