//! The enqueue guard's counts, `respguard_enqueues_total{rule, kind}` (`kind` is `first`,
//! `duplicate`, `repush` or `unread`): one atomic addition on the push's path, rendered in
//! Prometheus's text format when the metrics are read, as the guards' decision counts are
//! ([`crate::guard::decisions`], whose registry holds these too and whose `render` writes
//! them).
//!
//! Why not the `metrics` recorder: every judged payload bumps one of these, and a
//! recorder's counter is a call through its handle and two atomic additions (the count and
//! its recency generation); a plain atomic is one addition. Every rule with the same name
//! shares its four counts, so a reload that rebuilds a rule goes on counting where the old
//! one stopped, as the recorder's registry did. The counts live for the process, one per
//! rule name and kind the configurations ever named.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::super::decisions::shared_count;

/// One rule's count of one kind of enqueue.
#[derive(Debug, Clone)]
pub struct EnqueueCount(Arc<AtomicU64>);

impl EnqueueCount {
    /// The count of `kind` for the rule named `rule`, shared with every rule so named.
    pub fn of(rule: &str, kind: &'static str) -> Self {
        EnqueueCount(shared_count(
            "respguard_enqueues_total",
            &[("rule", rule), ("kind", kind)],
        ))
    }

    /// Count `n` enqueues.
    #[inline]
    pub fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The enqueues counted so far (`/metrics` reads them all through
    /// [`super::super::decisions::render`]).
    #[cfg(test)]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
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
        crate::guard::decisions::render(&mut text);
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
