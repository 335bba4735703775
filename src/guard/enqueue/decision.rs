//! What becomes of a job the memory counted: [`Decision`] (within the limits, a duplicate
//! in its window, or over the scope's rate), the decision counted and logged through the
//! rule (rate-limited), and the refusal a `reject` rule answers.
//!
//! It never counts enqueues (the memory does) and never rewrites a command (each kind of
//! enqueue drops its own way).

use super::super::rule::{printable_key, Rule};
use super::super::verdict::Verdict;
use super::payload::JobPrint;
use super::rules::{Action, EnqueueLimits};
use crate::clock::Now;
use crate::identity::ClientIdentity;

/// Whether a job passes, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within the limits.
    Pass,
    /// Over the per-fingerprint limit after this many enqueues in the window.
    Duplicate {
        /// Enqueues of the fingerprint counted in the window, this one included.
        seen: u32,
        /// Whether this one re-pushes the job id first seen.
        repush: bool,
    },
    /// Over the scope's token bucket.
    Rate,
}

/// Count and log a job of `queue` over the limit, enqueued by `client` with `command`,
/// decided at `now`; the rule's action when it enforces, `None` when the job passes or the
/// rule only observes.
pub fn over_limit(
    rule: &Rule<EnqueueLimits>,
    client: &ClientIdentity,
    command: &str,
    queue: &[u8],
    job: &JobPrint,
    (decision, now): (Decision, Now),
) -> Option<Action> {
    let l = &rule.limits;
    if decision == Decision::Pass {
        return None;
    }
    let enforced = rule.decided_at(
        l.action.counted(),
        client,
        command,
        || now,
        || log_line(l, queue, job, decision),
    );
    enforced.then_some(l.action)
}

/// The log line of a decision: what was enqueued, how often, and the limit.
fn log_line(l: &EnqueueLimits, queue: &[u8], job: &JobPrint, decision: Decision) -> String {
    let what = match &job.label {
        Some(label) => format!("job '{label}'"),
        None => "job".to_string(),
    };
    match decision {
        Decision::Duplicate { seen, repush } => format!(
            "{what} enqueued to '{}' {seen} times in {}s by this client{} (limit {})",
            printable_key(queue),
            l.window,
            if repush {
                ", re-pushes of one job id"
            } else {
                ""
            },
            l.limit,
        ),
        _ => {
            let (rate, burst) = l.bucket.unwrap_or_default();
            format!("this client enqueues more than {rate}/s (burst {burst})")
        }
    }
}

/// The error a `reject` rule answers, naming the rule.
pub fn refusal(rule: &Rule<EnqueueLimits>, decision: Decision) -> Verdict {
    let why = match decision {
        Decision::Rate => "enqueue rate over the limit",
        _ => "duplicate job",
    };
    Verdict::Refuse(crate::resp::error(&format!(
        "ERR respguard: {why}, refused by enqueue rule '{}' (see the proxy's log)",
        rule.name
    )))
}
