//! A generic rule's job keys (`id_queues`), as built from the configuration: the job key
//! whose write carries the payload, the queues its id goes onto, and what such a write
//! answers. `job_key.rs` judges a write under it.
//!
//! It never reads the enqueue memory or decides about a job.

use super::super::pattern::{is_meta, KeyPattern};
use super::super::verdict::CommandView;
use super::payload::PayloadSpec;
use crate::config::ConfigError;

/// A generic rule's job keys: where the payload is, where the id is pushed.
#[derive(Debug, Clone)]
pub struct JobKeyRule {
    /// Length of the pattern's text before its final `*`: the job's id follows it.
    pub(super) id_at: usize,
    /// The queues a dropped job's id is not pushed onto.
    pub(super) queues: KeyPattern,
    /// The job hash's field holding the payload; `None` for a key written by SET.
    pub(super) field: Option<Box<[u8]>>,
    /// How the payload is read.
    pub(super) spec: PayloadSpec,
}

impl JobKeyRule {
    /// The rule of job keys `pattern` (which must end in its only wildcard, `*`), whose ids
    /// go onto `queues`, the payload in the hash field `field` or the key's value.
    pub fn build(
        pattern: &str,
        queues: &str,
        field: Option<&str>,
        spec: PayloadSpec,
    ) -> Result<Self, ConfigError> {
        let prefix = pattern
            .strip_suffix('*')
            .filter(|p| !p.bytes().any(is_meta));
        let Some(prefix) = prefix else {
            return Err(ConfigError::enqueue_rule(format!(
                "id_queues: pattern `{pattern}` must end in `*`, its only wildcard (the job's id is what it matches)"
            )));
        };
        if queues.is_empty() {
            return Err(ConfigError::enqueue_rule("id_queues: an empty pattern"));
        }
        Ok(JobKeyRule {
            id_at: prefix.len(),
            queues: KeyPattern::new(queues),
            field: field.map(|f| f.as_bytes().into()),
            spec,
        })
    }

    /// The queues (a pattern) a dropped job's id is left out of pushes onto.
    pub fn id_queues(&self) -> &KeyPattern {
        &self.queues
    }

    /// The payload `cmd` writes and the reply it gets on a new key; `None` when it writes
    /// no payload (another field, or a SET that may not write: XX, GET).
    pub(super) fn read<'a>(&self, cmd: &CommandView<'a>) -> Option<KeyWrite<'a>> {
        let name: &str = &cmd.info.name;
        match (&self.field, name) {
            (None, "set") if !set_may_not_write(cmd) => Some(KeyWrite::new(cmd.arg(2)?, Reply::Ok)),
            (None, "setnx") => Some(KeyWrite::new(cmd.arg(2)?, Reply::Integer(1))),
            (None, "setex" | "psetex") => Some(KeyWrite::new(cmd.arg(3)?, Reply::Ok)),
            (Some(field), "hset" | "hmset" | "hsetnx") if cmd.argc >= 4 && cmd.argc % 2 == 0 => {
                let pairs = (2..cmd.argc.saturating_sub(1)).step_by(2);
                let count = pairs.len();
                let at = pairs.clone().find(|&i| cmd.arg(i) == Some(field))?;
                let reply = match name {
                    "hmset" => Reply::Ok,
                    _ => Reply::Integer(count),
                };
                Some(KeyWrite::new(cmd.arg(at + 1)?, reply))
            }
            _ => None,
        }
    }
}

/// What a job key's write answers when it creates the key.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reply {
    /// `+OK` (SET, SETEX, PSETEX, HMSET).
    Ok,
    /// The number of fields or keys written (HSET, HSETNX, SETNX).
    Integer(usize),
}

/// A job key's write: its payload, and its reply.
pub(super) struct KeyWrite<'a> {
    /// The payload written.
    pub(super) payload: &'a [u8],
    /// The write's reply on a new key.
    pub(super) reply: Reply,
}

impl<'a> KeyWrite<'a> {
    fn new(payload: &'a [u8], reply: Reply) -> Self {
        KeyWrite { payload, reply }
    }
}

/// Whether a SET has an option under which it may write nothing or answer other than
/// `+OK` (XX, GET): it is not read as an enqueue.
fn set_may_not_write(cmd: &CommandView<'_>) -> bool {
    (3..cmd.argc).any(|i| {
        cmd.arg(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"xx") || a.eq_ignore_ascii_case(b"get"))
    })
}
