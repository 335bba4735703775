//! Dramatiq's enqueue (its Redis broker, 1.x and 2.x): one `dispatch` script serves every
//! operation, chosen by ARGV[1]. An enqueue is `EVALSHA <dispatch> 1 <namespace> enqueue
//! <timestamp> <queue> <broker id> <heartbeat timeout> <dead message ttl> <maintenance>
//! <max unpack size> <redis message id> <message>`, the message being the JSON
//! `{"queue_name","actor_name","args","kwargs","options","message_id","message_timestamp"}`
//! (as captured from Dramatiq 2.2's traffic). A delayed message goes to `<queue>.DQ`.
//!
//! The script is recognised by that shape (one key, `enqueue` and ten ARGV), which also
//! covers a script loaded before the proxy started. The job is its actor, args and kwargs
//! on its queue (`.DQ` folded into the queue it delays for); `message_id` is the job id (a
//! retry keeps it), while the redis message id, timestamps and options change per enqueue.
//! A dropped enqueue is answered as the script answers one, with a nil reply (from an
//! `HGET` of the fresh redis message id in the queue's message hash).
//!
//! It never reads Dramatiq's other operations (fetch, ack, nack, requeue: the shed guard's
//! `job_scripts` knows them).

use bytes::BytesMut;

use super::super::rule::Rule;
use super::super::verdict::{CommandView, Verdict};
use super::memory::EnqueueMemory;
use super::payload::{Format, PayloadSpec};
use super::rules::{invalid, EnqueueLimits};
use super::script_add::{judge, ScriptAdd, ScriptCall};
use crate::config::ConfigError;
use crate::identity::ClientIdentity;
use crate::resp;

/// The ARGV of a dispatch call: the command and its seven common arguments, then the
/// enqueue's redis message id and message.
const ENQUEUE_ARGC: usize = 10;

/// Judges Dramatiq enqueues: actor, args and kwargs.
#[derive(Debug)]
pub struct DramatiqAdds {
    message: PayloadSpec,
}

impl DramatiqAdds {
    /// The judge of enqueues.
    pub fn new() -> Result<Self, ConfigError> {
        let include = ["/actor_name".into(), "/args".into(), "/kwargs".into()];
        Ok(DramatiqAdds {
            message: PayloadSpec::new(
                Format::Json,
                &include,
                &[],
                Some("/message_id"),
                Some("/actor_name"),
            )
            .map_err(invalid)?,
        })
    }

    /// Judge `call` of `cmd` under `rule` when it is a Dramatiq enqueue; `None` when it is
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
        let add = dramatiq_enqueue(call, cmd)?;
        let namespace = call.first_key(cmd);
        let queue = call.arg(cmd, 3);
        let redis_id = call.arg(cmd, 9);
        Some(judge(
            memory,
            rule,
            &self.message,
            &add,
            cmd,
            client,
            out,
            |out| {
                let messages = [namespace, b":", queue, b".msgs"].concat();
                resp::command(out, &[b"HGET", &messages, redis_id]);
            },
        ))
    }
}

/// The enqueue `call` carries, if it is a Dramatiq dispatch of `enqueue`.
pub fn dramatiq_enqueue<'a>(call: &ScriptCall, cmd: &CommandView<'a>) -> Option<ScriptAdd<'a>> {
    if call.numkeys != 1 || call.argc(cmd) != ENQUEUE_ARGC || call.arg(cmd, 1) != b"enqueue" {
        return None;
    }
    let queue = call.arg(cmd, 3);
    Some(ScriptAdd {
        queue: queue.strip_suffix(b".DQ").unwrap_or(queue),
        job_id: b"",
        name: b"",
        payload: call.arg(cmd, 10),
    })
}
