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
//! The registry is the guards' for every count of this kind: the enqueue guard's
//! `respguard_enqueues_total{rule, kind}` is kept and rendered here too
//! ([`shared_count`], `guard/enqueue/counts.rs`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The metric's name.
const NAME: &str = "respguard_guard_decisions_total";

/// One series: its counter's name, then its labels' names and values, in the order written.
type Series = (&'static str, Vec<(&'static str, String)>);

/// Every count by its series, in the order they are rendered (a counter's series together).
fn registry() -> &'static Mutex<BTreeMap<Series, Arc<AtomicU64>>> {
    static COUNTS: OnceLock<Mutex<BTreeMap<Series, Arc<AtomicU64>>>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

/// The count of the counter `name` with `labels` (names and values, in the order they are
/// written), shared with everyone who asks for the same series; [`render`] writes it.
pub fn shared_count(name: &'static str, labels: &[(&'static str, &str)]) -> Arc<AtomicU64> {
    let labels = labels.iter().map(|&(l, v)| (l, v.to_string())).collect();
    let mut counts = registry().lock().unwrap_or_else(|e| e.into_inner());
    Arc::clone(counts.entry((name, labels)).or_default())
}

/// One rule's count of one action.
#[derive(Debug, Clone, Default)]
pub struct DecisionCount(Arc<AtomicU64>);

impl DecisionCount {
    /// The count with these labels, shared with every rule that has them.
    pub fn of(guard: &'static str, rule: &str, action: &'static str, mode: &'static str) -> Self {
        DecisionCount(shared_count(
            NAME,
            &[
                ("guard", guard),
                ("rule", rule),
                ("action", action),
                ("mode", mode),
            ],
        ))
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
/// counter: for each counter its type line, then one series per set of labels (values
/// escaped).
pub fn render(out: &mut String) {
    let counts = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut current = None;
    for ((name, labels), count) in counts.iter() {
        if current != Some(*name) {
            if current.is_some() {
                out.push('\n');
            }
            let _ = writeln!(out, "# TYPE {name} counter");
            current = Some(*name);
        }
        out.push_str(name);
        for (i, (label, value)) in labels.iter().enumerate() {
            let open = if i == 0 { '{' } else { ',' };
            let _ = write!(out, "{open}{label}=\"{}\"", escaped(value));
        }
        if !labels.is_empty() {
            out.push('}');
        }
        let _ = writeln!(out, " {}", count.load(Ordering::Relaxed));
    }
    if current.is_some() {
        out.push('\n');
    }
}

/// A label value as Prometheus's text format writes it: `\`, `"` and new lines escaped.
fn escaped(value: &str) -> String {
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
