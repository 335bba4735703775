//! The guards' decision counts, `respguard_guard_decisions_total{guard, rule, action, mode}`:
//! counted on the hot path with one atomic addition, rendered in Prometheus's text format
//! when the metrics are read, beside the recorder's own output (as the per-command latency
//! histograms are, [`crate::telemetry::CommandLatency`]).
//!
//! Why not the `metrics` recorder: a recorder's counter is a call through its handle and two
//! atomic additions (the count and the recency generation), about 19 instructions, once per
//! guarded write that a rule decides (every SET given its TTL); a plain atomic is one
//! addition. Every rule with the same four labels shares one count, so a reload that
//! rebuilds a rule goes on counting where the old one stopped, as the recorder's registry
//! did. The counts live for the process (a counter never goes back); there is one per set of
//! labels the configuration ever named, so they are bounded by the configurations loaded.
//!
//! [`render`] also writes the enqueue guard's counts of the same kind
//! (`respguard_enqueues_total`, `guard/enqueue/counts.rs`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The metric's name.
const NAME: &str = "respguard_guard_decisions_total";

/// The labels of one count: guard, rule, action and mode.
type Labels = (&'static str, String, &'static str, &'static str);

/// Every count by its labels, in the order they are rendered.
fn registry() -> &'static Mutex<BTreeMap<Labels, Arc<AtomicU64>>> {
    static COUNTS: OnceLock<Mutex<BTreeMap<Labels, Arc<AtomicU64>>>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

/// One rule's count of one action.
#[derive(Debug, Clone, Default)]
pub struct DecisionCount(Arc<AtomicU64>);

impl DecisionCount {
    /// The count with these labels, shared with every rule that has them.
    pub fn of(guard: &'static str, rule: &str, action: &'static str, mode: &'static str) -> Self {
        let mut counts = registry().lock().unwrap_or_else(|e| e.into_inner());
        let count = counts
            .entry((guard, rule.to_string(), action, mode))
            .or_default();
        DecisionCount(Arc::clone(count))
    }

    /// A count no one reads, for the actions a guard never takes.
    pub fn unread() -> Self {
        DecisionCount::default()
    }

    /// Count one decision.
    #[inline]
    pub fn increment(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The decisions counted so far (`/metrics` reads them all through [`render`]).
    #[cfg(test)]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Append every count to `out` in Prometheus's text format, as the recorder writes a
/// counter: its type line, then one series per set of labels (values escaped).
pub fn render(out: &mut String) {
    super::enqueue::counts::render(out);
    let counts = registry().lock().unwrap_or_else(|e| e.into_inner());
    if counts.is_empty() {
        return;
    }
    let _ = writeln!(out, "# TYPE {NAME} counter");
    for ((guard, rule, action, mode), count) in counts.iter() {
        let _ = writeln!(
            out,
            "{NAME}{{guard=\"{guard}\",rule=\"{}\",action=\"{action}\",mode=\"{mode}\"}} {}",
            escaped(rule),
            count.load(Ordering::Relaxed)
        );
    }
    out.push('\n');
}

/// A label value as Prometheus's text format writes it: `\`, `"` and new lines escaped.
pub(super) fn escaped(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> String {
        let mut out = String::new();
        render(&mut out);
        out
    }

    #[test]
    fn rules_with_the_same_labels_share_one_count() {
        let first = DecisionCount::of("ttl", "shared:*", "ttl_added", "enforce");
        first.increment();
        // A reload rebuilds the rule: the new one goes on from the old one's count.
        let rebuilt = DecisionCount::of("ttl", "shared:*", "ttl_added", "enforce");
        rebuilt.increment();
        assert_eq!((first.get(), rebuilt.get()), (2, 2));
        let other_mode = DecisionCount::of("ttl", "shared:*", "ttl_added", "observe");
        assert_eq!(other_mode.get(), 0);
    }

    #[test]
    fn counts_are_rendered_as_the_recorder_renders_a_counter() {
        let count = DecisionCount::of("size", "big\"one\\", "refused", "enforce");
        count.increment();
        count.increment();
        let text = rendered();
        assert!(text.contains("# TYPE respguard_guard_decisions_total counter\n"));
        assert!(
            text.contains(
                "respguard_guard_decisions_total{guard=\"size\",rule=\"big\\\"one\\\\\",action=\"refused\",mode=\"enforce\"} 2\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_unread_count_is_not_rendered() {
        let count = DecisionCount::unread();
        count.increment();
        assert_eq!(count.get(), 1);
        assert!(!rendered().contains("rule=\"\""));
    }
}
