//! A call judged under a generic script rule ([`ScriptRule`]): whether it is the rule's
//! enqueue (its operation, its queue key, its script), then its payload fingerprinted and
//! decided like a pushed job's; a dropped call replaced by the rule's encoded reply command.
//!
//! It never reads another rule's calls, keeps no state of its own (digests learned from
//! bodies are in the [`EnqueueMemory`]'s bounded table), and allocates nothing per call.

use bytes::BytesMut;

use super::super::rule::Rule;
use super::super::script_catalog::parse_digest;
use super::super::verdict::{CommandView, Verdict};
use super::memory::EnqueueMemory;
use super::rules::{Cmd, EnqueueLimits};
use super::script_add::{judge_print, ScriptCall};
use super::script_rule::{ScriptMatch, ScriptRule};
use crate::identity::ClientIdentity;

/// A script call's digest, computed at most once per command whichever rules ask.
#[derive(Debug, Default)]
pub struct CallDigest(Option<Option<[u8; 20]>>);

impl CallDigest {
    /// The digest of the script `cmd` runs: EVALSHA's argument, EVAL's body hashed; `None`
    /// for FCALL or a malformed digest.
    pub(super) fn get(&mut self, cmd: &CommandView<'_>, kind: Cmd) -> Option<[u8; 20]> {
        *self.0.get_or_insert_with(|| {
            let first = cmd.arg(1)?;
            match kind {
                Cmd::EvalSha => parse_digest(first),
                Cmd::Eval => Some(sha1_smol::Sha1::from(first).digest().bytes()),
                _ => None,
            }
        })
    }
}

impl ScriptRule {
    /// Judge `call` of `cmd` under `rule`, if it is this rule's enqueue; `None` when it is
    /// not (another rule may read it).
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        memory: &EnqueueMemory,
        rule: &Rule<EnqueueLimits>,
        call: &ScriptCall,
        digest: &mut CallDigest,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        out: &mut BytesMut,
    ) -> Option<Verdict> {
        if let Some((i, op)) = &self.operation {
            if call.arg(cmd, *i) != &op[..] {
                return None;
            }
        }
        let queue = self.queue(rule, call, cmd, client)?;
        if !self.is_this_script(memory, rule.limits.index, call, digest, cmd) {
            return None;
        }
        if self.payload_arg > call.argc(cmd) {
            rule.limits.unread.increment(1);
            return Some(Verdict::Forward);
        }
        let context = memory.queue_hasher(&rule.limits, client, queue);
        let payload = call.arg(cmd, self.payload_arg);
        let Some(job) = self.spec.print(payload, &context, memory.hasher()) else {
            rule.limits.unread.increment(1);
            return Some(Verdict::Forward);
        };
        Some(judge_print(
            memory,
            rule,
            &job,
            queue,
            cmd,
            client,
            out,
            |out| out.extend_from_slice(&self.dropped),
        ))
    }

    /// The key the rule's pattern selects among the call's (the one at `key_index`, or the
    /// first that matches), if `client` is one the rule applies to.
    fn queue<'a>(
        &self,
        rule: &Rule<EnqueueLimits>,
        call: &ScriptCall,
        cmd: &CommandView<'a>,
        client: &ClientIdentity,
    ) -> Option<&'a [u8]> {
        match self.key_index {
            Some(i) if i <= call.numkeys => {
                Some(call.key(cmd, i)).filter(|k| rule.applies(k, client))
            }
            Some(_) => None,
            None => (1..=call.numkeys)
                .map(|i| call.key(cmd, i))
                .find(|k| rule.applies(k, client)),
        }
    }

    /// Whether `call` runs this rule's script.
    fn is_this_script(
        &self,
        memory: &EnqueueMemory,
        index: u8,
        call: &ScriptCall,
        digest: &mut CallDigest,
        cmd: &CommandView<'_>,
    ) -> bool {
        match (&self.script, call.kind) {
            (ScriptMatch::Function(name), Cmd::Fcall) => {
                // Redis finds a function by its name in any case.
                cmd.arg(1).is_some_and(|n| n.eq_ignore_ascii_case(name))
            }
            (ScriptMatch::Digest { hex, .. }, Cmd::EvalSha) => {
                cmd.arg(1).is_some_and(|a| a.eq_ignore_ascii_case(hex))
            }
            (ScriptMatch::Digest { bytes, .. }, Cmd::Eval) => {
                digest.get(cmd, call.kind).as_ref() == Some(bytes)
            }
            (ScriptMatch::BodyContains(text), Cmd::Eval) => {
                contains(cmd.arg(1).unwrap_or_default(), text)
            }
            (ScriptMatch::BodyContains(_), Cmd::EvalSha) => {
                let Some(d) = digest.get(cmd, call.kind) else {
                    return false;
                };
                let known = memory.rule_script_known(index, &d);
                if known {
                    // Kept a day from its last use, not from when it was learned.
                    memory.remember_rule_script(index, &d);
                }
                known
            }
            _ => false,
        }
    }

    /// Learn `body` (seen in EVAL or SCRIPT LOAD) as this rule's script when it contains
    /// the rule's text; true when it does.
    pub fn learn(&self, memory: &EnqueueMemory, index: u8, body: &[u8]) -> bool {
        let ScriptMatch::BodyContains(text) = &self.script else {
            return false;
        };
        if !contains(body, text) {
            return false;
        }
        let digest = sha1_smol::Sha1::from(body).digest().bytes();
        memory.remember_rule_script(index, &digest);
        true
    }
}

/// Whether `body` contains `text`.
fn contains(body: &[u8], text: &[u8]) -> bool {
    memchr::memmem::find(body, text).is_some()
}
