//! The enqueue guard's counts, `respguard_enqueues_total{rule, kind}` (`kind` is `first`,
//! `duplicate`, `repush` or `unread`): one atomic addition on the push's path, rendered in
//! Prometheus's text format when the metrics are read, as the guards' decision counts are
//! ([`crate::guard::decisions`], whose `render` writes these too).
//!
//! Why not the `metrics` recorder: every judged payload bumps one of these, and a
//! recorder's counter is a call through its handle and two atomic additions (the count and
//! its recency generation); a plain atomic is one addition. Every rule with the same name
//! shares its four counts, so a reload that rebuilds a rule goes on counting where the old
//! one stopped, as the recorder's registry did. The counts live for the process, one per
//! rule name and kind the configurations ever named.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::super::decisions::escaped;

/// The metric's name.
const NAME: &str = "respguard_enqueues_total";

/// The counts by rule name and kind, in the order they are rendered.
type Counts = BTreeMap<(String, &'static str), Arc<AtomicU64>>;

/// Every count of the process.
fn registry() -> &'static Mutex<Counts> {
    static COUNTS: OnceLock<Mutex<Counts>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

/// One rule's count of one kind of enqueue.
#[derive(Debug, Clone)]
pub struct EnqueueCount(Arc<AtomicU64>);

impl EnqueueCount {
    /// The count of `kind` for the rule named `rule`, shared with every rule so named.
    pub fn of(rule: &str, kind: &'static str) -> Self {
        let mut counts = registry().lock().unwrap_or_else(|e| e.into_inner());
        EnqueueCount(Arc::clone(
            counts.entry((rule.to_string(), kind)).or_default(),
        ))
    }

    /// Count `n` enqueues.
    #[inline]
    pub fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The enqueues counted so far (`/metrics` reads them all through [`render`]).
    #[cfg(test)]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Append every count to `out` in Prometheus's text format, as the recorder wrote them: the
/// type line, then one series per rule and kind (`rule` escaped).
pub fn render(out: &mut String) {
    let counts = registry().lock().unwrap_or_else(|e| e.into_inner());
    if counts.is_empty() {
        return;
    }
    let _ = writeln!(out, "# TYPE {NAME} counter");
    for ((rule, kind), count) in counts.iter() {
        let _ = writeln!(
            out,
            "{NAME}{{rule=\"{}\",kind=\"{kind}\"}} {}",
            escaped(rule),
            count.load(Ordering::Relaxed)
        );
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_of_one_name_share_a_count_rendered_as_the_recorder_rendered_it() {
        let first = EnqueueCount::of("counts \"jobs\"", "duplicate");
        first.increment(2);
        // A reload rebuilds the rule: the new one goes on from the old one's count.
        let rebuilt = EnqueueCount::of("counts \"jobs\"", "duplicate");
        rebuilt.increment(1);
        assert_eq!((first.get(), rebuilt.get()), (3, 3));
        assert_eq!(EnqueueCount::of("counts \"jobs\"", "first").get(), 0);
        let mut text = String::new();
        render(&mut text);
        assert!(
            text.contains("# TYPE respguard_enqueues_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "respguard_enqueues_total{rule=\"counts \\\"jobs\\\"\",kind=\"duplicate\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "respguard_enqueues_total{rule=\"counts \\\"jobs\\\"\",kind=\"first\"} 0\n"
            ),
            "{text}"
        );
    }
}
