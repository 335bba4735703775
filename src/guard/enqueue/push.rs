//! Jobs carried whole in the values pushed (Sidekiq, Celery, generic rules): list pushes,
//! sorted-set members, a stream entry's field. Each payload of a push is judged on its
//! own; the over-limit ones are left out of the push (`drop`), or the push is refused
//! (`reject`).
//!
//! It never reads a payload's format itself ([`PayloadSpec`] does) nor keeps any state.

use bytes::BytesMut;

use super::super::rule::Rule;
use super::super::verdict::{CommandView, Verdict};
use super::decision::{over_limit, refusal};
use super::memory::EnqueueMemory;
use super::payload::PayloadSpec;
use super::rewrite::{drop_payloads, push_layout};
use super::rules::{Action, Cmd, EnqueueLimits};
use crate::clock::Now;
use crate::identity::ClientIdentity;

/// Judge each payload of a push `cmd` (a `kind` command) under `rule`, whose payloads
/// `spec` reads.
pub fn check_push(
    memory: &EnqueueMemory,
    rule: &Rule<EnqueueLimits>,
    spec: &PayloadSpec,
    cmd: &CommandView<'_>,
    kind: Cmd,
    client: &ClientIdentity,
    out: &mut BytesMut,
) -> Verdict {
    let key = cmd.arg(1).unwrap_or_default();
    let Some(layout) = push_layout(cmd, kind, rule.limits.field.as_deref()) else {
        return Verdict::Forward;
    };
    // Rule, scope and queue: hashed once for all the payloads of the push.
    let context = memory.queue_hasher(&rule.limits, client, key);
    // Argument indices of the payloads over the limit, ascending; allocated only on a drop.
    let mut gone = Vec::new();
    for i in layout.payloads.clone() {
        let value = match (kind, rule.limits.field.is_some()) {
            (Cmd::Xadd, false) => &cmd.src[cmd.args[i].start..cmd.args[cmd.argc - 1].end],
            _ => cmd.arg(i).unwrap_or_default(),
        };
        let Some(job) = spec.print(value, &context, memory.hasher()) else {
            rule.limits.unread.increment(1);
            continue;
        };
        let now = Now::read();
        let decision = memory.decide(&rule.limits, client, &job, now);
        match over_limit(rule, client, &cmd.info.name, key, &job, (decision, now)) {
            None => {}
            Some(Action::Reject) => return refusal(rule, decision),
            Some(Action::Drop) => gone.push(i),
        }
    }
    if gone.is_empty() {
        return Verdict::Forward;
    }
    drop_payloads(out, cmd, kind, &layout, &gone)
}
