//! The enqueue guard: the same job enqueued again and again by one client (a retry loop that
//! spawns a job per failure, a job scheduled from every web request) is limited before it
//! fills Redis.
//!
//! A rule says which commands enqueue to which keys and how to read the job (a library
//! [`preset`], or a generic payload description). Each job gets a fingerprint of what makes
//! it the same work ([`payload`]) and the client a scope (its user, client name and/or IP
//! address; never the port, since a pool spreads one application over many). At most
//! `limit` enqueues of one fingerprint per scope pass in a `window` counted from the first;
//! an optional token bucket limits all of a scope's enqueues. A re-push of the same job id
//! (a retry, a scheduled job moving to its queue) is told apart from a new id with the same
//! content: both are counted, and re-pushes count towards the limit only with
//! `limit_repushes`.
//!
//! A job over the limit is, by the rule's action:
//! - `drop`: not sent; the client gets the reply its library expects from an enqueue. The
//!   command is rewritten to a read with the same reply type (LPUSH → LLEN, ZADD → ZCARD,
//!   XADD → ECHO of the id, a BullMQ, Bull or Bee-Queue add → ECHO of the job id, as their
//!   own duplicate paths answer, a Dramatiq enqueue → an HGET answering nil, as its
//!   script does, a generic rule's script → the reply its rule configures, a generic
//!   rule's job key write → a script answering what the write would have), so pipelines
//!   and MULTI keep their reply counts. Of a push of several
//!   payloads only the over-limit ones are left out.
//! - `reject`: an `-ERR respguard: ...` naming the rule (never a prefix such as READONLY
//!   that makes clients reconnect and retry); inside MULTI, EXEC then answers EXECABORT.
//! - `observe`: counted and logged only.
//!
//! State lives in [`EnqueueMemory`], shared by all sessions and bounded by fixed-size
//! [`table`]s: it is lost on restart, and each proxy in front of one Redis limits its own
//! clients.
//!
//! # Layout
//!
//! This module is the guard: which commands it wants, and which rule and check a command
//! goes to. The rest, by concern:
//! - `rules.rs`: a rule's settings, built from the configuration ([`preset`]s or generic);
//! - `memory.rs`: [`EnqueueMemory`], its tables and clock, the counting decisions;
//! - `decision.rs`: a decision counted, logged, and the refusal answered;
//! - [`counts`]: `respguard_enqueues_total`, atomics rendered when the metrics are read;
//! - `push.rs`: jobs pushed whole (Sidekiq, Celery, generic), each payload judged;
//! - `rq.rs`: RQ, whose job hash and queue push are separate commands;
//! - `job_key.rs`: a generic rule's job key (SET or HSET of the payload, then a push of
//!   the id), and the pushes of dropped jobs' ids, for it and RQ;
//! - `script_add.rs`: enqueues made by a library's Lua script, read and judged; the
//!   libraries' own readers in `bullmq.rs`, `bull.rs`, `beequeue.rs` and `dramatiq.rs`;
//! - `script_rule.rs`: a generic rule's scripted enqueues (EVAL, EVALSHA, FCALL), the
//!   script known by its digest, text in its body or its function's name; `scripted.rs`
//!   judges a call under such a rule;
//! - `rewrite.rs`: where a push's payloads are, and the push without the dropped ones;
//! - [`payload`]: a job's fingerprint, of a JSON payload or of one `msgpack.rs` or
//!   `pickle.rs` reads into the same document (`document.rs`: what JSON has no word for);
//! - [`table`]: the bounded table.
//!
//! It never keeps per-session state, and never allocates a table entry per job.

pub mod counts;
pub mod payload;
pub mod preset;
pub mod table;

mod beequeue;
mod bull;
mod bullmq;
mod decision;
mod document;
mod dramatiq;
mod fingerprint;
mod job_key;
mod job_key_rule;
mod last_push;
mod memory;
mod msgpack;
mod pickle;
mod push;
mod rewrite;
mod rq;
mod rules;
mod script_add;
mod script_rule;
mod scripted;

use std::sync::Arc;

use bytes::BytesMut;

use super::by_command::ByCommand;
use super::pattern::KeyPattern;
use super::phase::Guard;
use super::rule::{Mode, Rule};
use super::verdict::{CommandView, Verdict};
use crate::command::{CommandInfo, CommandTable};
use crate::config::{ConfigError, RawEnqueueGuard};
use crate::identity::ClientIdentity;
use beequeue::BeeQueueAdds;
use bull::BullAdds;
use bullmq::BullmqAdds;
use dramatiq::DramatiqAdds;
use preset::Shape;
use rules::{Action, Cmd, EnqueueLimits};
use script_add::ScriptCall;
use scripted::CallDigest;

pub use memory::EnqueueMemory;
pub use script_add::DROPPED_JOB_ID;

/// Whether `cmd`, an EVAL or EVALSHA, has the shape of a job library's add script (BullMQ,
/// Bull, Bee-Queue) or is Dramatiq's enqueue: how the shed guard tells a library's enqueues
/// from its workers' scripts, with the shapes this guard reads.
pub fn is_script_add(cmd: &CommandView<'_>) -> bool {
    let Some(call) = ScriptCall::read(cmd, Cmd::EvalSha) else {
        return false;
    };
    bull::bull_add(&call, cmd).is_some()
        || beequeue::beequeue_add(&call, cmd).is_some()
        || dramatiq::dramatiq_enqueue(&call, cmd).is_some()
        || bullmq::is_add_shape(&call, cmd)
}

/// The queues onto which pushes of dropped jobs' ids are left out: RQ's keys for an RQ
/// rule that drops, a job key rule's `id_queues` when it drops; `None` when no rule drops
/// such jobs.
fn id_queues(rules: &[Rule<EnqueueLimits>]) -> Option<KeyPattern> {
    let patterns: Vec<&str> = rules
        .iter()
        .filter(|r| r.limits.action == Action::Drop && r.mode == Mode::Enforce)
        .filter_map(|r| match &r.limits.shape {
            Shape::RqJobHash => Some("rq:*"),
            Shape::JobKey(job_key) => Some(job_key.id_queues().as_str()),
            _ => None,
        })
        .collect();
    (!patterns.is_empty()).then(|| KeyPattern::any_of(&patterns))
}

/// The enqueue guard.
#[derive(Debug)]
pub struct EnqueueGuard {
    rules: Vec<Rule<EnqueueLimits>>,
    memory: Arc<EnqueueMemory>,
    /// The commands the rules read, as [`Cmd`] bits.
    commands: u16,
    /// Where the pushes of dropped jobs' ids are dropped too ([`id_queues`]).
    id_queues: Option<KeyPattern>,
    /// By command id: which of the commands a rule may read it is.
    kinds: ByCommand<Option<Cmd>>,
    /// The libraries whose enqueues are scripts: BullMQ's adds, judged by their job data...
    bullmq: BullmqAdds,
    /// ... Dramatiq's enqueues...
    dramatiq: DramatiqAdds,
    /// ... Bee-Queue's saves...
    beequeue: BeeQueueAdds,
    /// ... and Bull's adds.
    bull: BullAdds,
}

impl EnqueueGuard {
    /// Build from `[guards.enqueue]`, remembering in `memory`, for the commands of `table`.
    pub fn build(
        raw: &RawEnqueueGuard,
        default_mode: Mode,
        logs_per_second: u32,
        memory: Arc<EnqueueMemory>,
        table: &CommandTable,
    ) -> Result<Self, ConfigError> {
        let rules = rules::build_rules(raw, default_mode, logs_per_second)?;
        let commands = rules.iter().fold(0, |c, r| c | r.limits.commands);
        let id_queues = id_queues(&rules);
        Ok(EnqueueGuard {
            rules,
            memory,
            commands,
            id_queues,
            kinds: ByCommand::build(table, |info| Cmd::of(&info.name)),
            bullmq: BullmqAdds::new()?,
            dramatiq: DramatiqAdds::new()?,
            beequeue: BeeQueueAdds::new()?,
            bull: BullAdds::new()?,
        })
    }

    /// The first rule that reads `cmd` for `key` written by `client`.
    #[inline(always)]
    fn rule_for(
        &self,
        cmd: Cmd,
        key: &[u8],
        client: &ClientIdentity,
    ) -> Option<&Rule<EnqueueLimits>> {
        // A plain loop, inlined: `Iter::find` stayed a call of its own.
        #[allow(clippy::manual_find)]
        for rule in &self.rules {
            if rule.limits.commands & cmd.bit() != 0 && rule.applies(key, client) {
                return Some(rule);
            }
        }
        None
    }

    /// EVAL, EVALSHA or FCALL: a script add is judged by the first rule that recognises it
    /// (a library's, or a generic rule's script); the body of any BullMQ add, and of a
    /// generic rule's script known by its text, is learned.
    fn check_script(
        &self,
        cmd: &CommandView<'_>,
        kind: Cmd,
        client: &ClientIdentity,
        out: &mut BytesMut,
    ) -> Verdict {
        let Some(call) = ScriptCall::read_any(cmd, kind) else {
            return Verdict::Forward;
        };
        let library = call.has_add_shape(cmd);
        // An EVAL body is learned whatever its keys: its digest may come later with others.
        let learned = library
            && kind == Cmd::Eval
            && bullmq::learn_script(&self.memory, cmd.arg(1).unwrap_or_default());
        if kind == Cmd::Eval {
            self.learn_rule_scripts(cmd.arg(1).unwrap_or_default());
        }
        let key = call.first_key(cmd);
        let memory = &*self.memory;
        let mut digest = CallDigest::default();
        for rule in &self.rules {
            if rule.limits.commands & kind.bit() == 0 {
                continue;
            }
            if let Shape::Script(s) = &rule.limits.shape {
                match s.check(memory, rule, &call, &mut digest, cmd, client, out) {
                    Some(verdict) => return verdict,
                    None => continue,
                }
            }
            if !library || !rule.applies(key, client) {
                continue;
            }
            let verdict = match rule.limits.shape {
                Shape::BullmqScript => self
                    .bullmq
                    .check(memory, rule, &call, learned, cmd, client, out),
                Shape::DramatiqScript => self.dramatiq.check(memory, rule, &call, cmd, client, out),
                Shape::BeeQueueScript => self.beequeue.check(memory, rule, &call, cmd, client, out),
                Shape::BullScript => self.bull.check(memory, rule, &call, cmd, client, out),
                Shape::Payload(_) | Shape::RqJobHash | Shape::Script(_) | Shape::JobKey(_) => None,
            };
            if let Some(verdict) = verdict {
                return verdict;
            }
        }
        Verdict::Forward
    }

    /// Learn `body`, seen in EVAL or SCRIPT LOAD, for each generic rule whose script is
    /// known by text in its body.
    fn learn_rule_scripts(&self, body: &[u8]) {
        for rule in &self.rules {
            if let Shape::Script(s) = &rule.limits.shape {
                s.learn(&self.memory, rule.limits.index, body);
            }
        }
    }
}

impl Guard for EnqueueGuard {
    fn name(&self) -> &'static str {
        "enqueue"
    }

    fn wants(&self, info: &CommandInfo) -> bool {
        let Some(cmd) = self.kinds.get(info) else {
            return false;
        };
        let id_pushes = if self.id_queues.is_some() {
            Cmd::ListPush.bit() | Cmd::Zadd.bit()
        } else {
            0
        };
        // EVAL is read for learning whenever EVALSHA is wanted.
        let learn = if self.commands & Cmd::EvalSha.bit() != 0 {
            Cmd::ScriptLoad.bit() | Cmd::Eval.bit()
        } else {
            0
        };
        (self.commands | id_pushes | learn) & cmd.bit() != 0
    }

    fn check(&self, cmd: &CommandView<'_>, client: &ClientIdentity, out: &mut BytesMut) -> Verdict {
        let Some(kind) = self.kinds.get(cmd.info) else {
            return Verdict::Forward;
        };
        if !cmd.is_whole() {
            // A payload too large to hold is not read; the size guard is the one for it.
            if let Some(rule) = cmd.arg(1).and_then(|key| self.rule_for(kind, key, client)) {
                rule.limits.unread.increment(1);
            }
            return Verdict::Forward;
        }
        match kind {
            Cmd::ScriptLoad => {
                let body = cmd.arg(2).unwrap_or_default();
                bullmq::learn_script(&self.memory, body);
                self.learn_rule_scripts(body);
                return Verdict::Forward;
            }
            Cmd::Eval | Cmd::EvalSha | Cmd::Fcall => {
                return self.check_script(cmd, kind, client, out)
            }
            _ => {}
        }
        let key = cmd.arg(1).unwrap_or_default();
        let memory = &*self.memory;
        match self.rule_for(kind, key, client) {
            Some(rule) => match &rule.limits.shape {
                Shape::Payload(spec) => {
                    push::check_push(memory, rule, spec, cmd, kind, client, out)
                }
                Shape::RqJobHash => rq::check_job_hash(memory, rule, cmd, client, out),
                Shape::JobKey(job_key) => job_key.check(memory, rule, cmd, client, out),
                _ => Verdict::Forward,
            },
            None if matches!(kind, Cmd::ListPush | Cmd::Zadd)
                && self.id_queues.as_ref().is_some_and(|q| q.matches(key)) =>
            {
                job_key::check_pushed_ids(memory, cmd, kind, out)
            }
            None => Verdict::Forward,
        }
    }
}
