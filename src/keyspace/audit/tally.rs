//! The audit's running totals per key prefix, in a bounded map.
//!
//! At most `max_prefixes` prefixes are tracked; a key of any further prefix is counted in
//! one `(other)` tally, so a Redis with millions of distinct key shapes costs the audit a
//! bounded amount of memory. Each tally keeps at most [`BIGGEST_PER_PREFIX`] of its
//! largest keys, each cut to [`MAX_KEY_SHOWN`] bytes. Pure: no I/O.

use rustc_hash::FxHashMap;

use super::report::{AuditReport, BigKey, PrefixAudit, TtlBuckets, TypeCounts};
use crate::guard::library::library_of;

/// Largest keys remembered per prefix.
pub const BIGGEST_PER_PREFIX: usize = 5;

/// Bytes of a key kept to show it among the largest.
pub const MAX_KEY_SHOWN: usize = 200;

/// The name of the tally of keys past the prefix limit.
pub const OTHER: &str = "(other)";

/// One key as the audit saw it.
#[derive(Debug, Clone, Copy)]
pub struct KeyFacts<'a> {
    /// The key.
    pub key: &'a [u8],
    /// Its `TYPE` reply.
    pub kind: &'a [u8],
    /// Its `PTTL` reply.
    pub pttl_ms: i64,
    /// Its `MEMORY USAGE`, when sampled.
    pub bytes: Option<u64>,
}

/// Running totals of one prefix.
#[derive(Debug, Clone, Default)]
struct Tally {
    keys: u64,
    sampled: u64,
    sampled_bytes: u64,
    largest: u64,
    ttl: TtlBuckets,
    longest_ttl_ms: i64,
    types: TypeCounts,
    biggest: Vec<BigKey>,
    library: Option<&'static str>,
    library_keys: u64,
}

impl Tally {
    fn add(&mut self, k: &KeyFacts<'_>) {
        self.keys += 1;
        self.ttl.add(k.pttl_ms);
        self.longest_ttl_ms = self.longest_ttl_ms.max(k.pttl_ms);
        self.types.add(k.kind);
        if let Some(lib) = library_of(k.key) {
            self.library_keys += 1;
            self.library.get_or_insert(lib);
        }
        if let Some(bytes) = k.bytes {
            self.sampled += 1;
            self.sampled_bytes += bytes;
            self.largest = self.largest.max(bytes);
            self.remember_if_big(k, bytes);
        }
    }

    fn remember_if_big(&mut self, k: &KeyFacts<'_>, bytes: u64) {
        let full = self.biggest.len() == BIGGEST_PER_PREFIX;
        if full && self.biggest.last().is_some_and(|b| b.bytes >= bytes) {
            return;
        }
        if full {
            self.biggest.pop();
        }
        let shown = &k.key[..k.key.len().min(MAX_KEY_SHOWN)];
        let at = self.biggest.partition_point(|b| b.bytes >= bytes);
        self.biggest.insert(
            at,
            BigKey {
                key: String::from_utf8_lossy(shown).into_owned(),
                bytes,
                kind: String::from_utf8_lossy(k.kind).into_owned(),
            },
        );
    }

    fn estimated_bytes(&self) -> u64 {
        if self.sampled == 0 {
            return 0;
        }
        (self.sampled_bytes as f64 / self.sampled as f64 * self.keys as f64).round() as u64
    }

    fn report(&self, prefix: String) -> PrefixAudit {
        PrefixAudit {
            prefix,
            keys: self.keys,
            sampled_keys: self.sampled,
            bytes: self.estimated_bytes(),
            largest_bytes: self.largest,
            keys_without_ttl: self.ttl.none,
            share_without_ttl: if self.keys == 0 {
                0.0
            } else {
                self.ttl.none as f64 / self.keys as f64
            },
            ttl: self.ttl,
            longest_ttl_seconds: (self.longest_ttl_ms > 0)
                .then(|| (self.longest_ttl_ms as u64).div_ceil(1000)),
            types: self.types,
            biggest: self.biggest.clone(),
            library: self.library.map(str::to_string),
            library_keys: self.library_keys,
        }
    }
}

/// Totals per prefix, at most `max_prefixes` of them, plus `(other)`.
#[derive(Debug)]
pub struct PrefixTallies {
    max_prefixes: usize,
    by_prefix: FxHashMap<Box<[u8]>, Tally>,
    other: Tally,
}

impl PrefixTallies {
    /// Empty totals tracking at most `max_prefixes` prefixes.
    pub fn new(max_prefixes: usize) -> Self {
        PrefixTallies {
            max_prefixes,
            by_prefix: FxHashMap::default(),
            other: Tally::default(),
        }
    }

    /// Prefixes tracked now (never more than `max_prefixes`).
    pub fn len(&self) -> usize {
        self.by_prefix.len()
    }

    /// True when no prefix is tracked yet.
    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// Keys already counted under `prefix` (its tally, or `(other)` when it has none and
    /// the map is full): the audit samples a prefix's first key and every n-th after it.
    pub fn keys_under(&self, prefix: &[u8]) -> u64 {
        match self.by_prefix.get(prefix) {
            Some(t) => t.keys,
            None if self.by_prefix.len() >= self.max_prefixes => self.other.keys,
            None => 0,
        }
    }

    /// Count one key under its prefix.
    pub fn add(&mut self, prefix: &[u8], key: &KeyFacts<'_>) {
        if let Some(t) = self.by_prefix.get_mut(prefix) {
            return t.add(key);
        }
        if self.by_prefix.len() >= self.max_prefixes {
            return self.other.add(key);
        }
        let mut t = Tally::default();
        t.add(key);
        self.by_prefix.insert(prefix.into(), t);
    }

    /// Fill `report`'s prefixes (most bytes first, then most keys) and `(other)`.
    pub fn fill(&self, report: &mut AuditReport) {
        let mut prefixes: Vec<PrefixAudit> = self
            .by_prefix
            .iter()
            .map(|(p, t)| t.report(String::from_utf8_lossy(p).into_owned()))
            .collect();
        prefixes.sort_by(|a, b| (b.bytes, b.keys, &a.prefix).cmp(&(a.bytes, a.keys, &b.prefix)));
        report.other = (self.other.keys > 0).then(|| self.other.report(OTHER.to_string()));
        report.estimated_bytes = prefixes
            .iter()
            .chain(report.other.iter())
            .map(|p| p.bytes)
            .sum();
        report.max_prefixes = self.max_prefixes;
        report.prefixes = prefixes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(key: &'a [u8], pttl_ms: i64, bytes: Option<u64>) -> KeyFacts<'a> {
        KeyFacts {
            key,
            kind: b"string",
            pttl_ms,
            bytes,
        }
    }

    #[test]
    fn prefixes_past_the_bound_go_to_other() {
        let mut t = PrefixTallies::new(100);
        for i in 0..10_000u32 {
            let prefix = format!("p{i}:*");
            t.add(prefix.as_bytes(), &key(b"k", -1, None));
        }
        assert_eq!(t.len(), 100);
        let mut report = AuditReport::default();
        t.fill(&mut report);
        assert_eq!(report.prefixes.len(), 100);
        let other = report.other.expect("an other bucket");
        assert_eq!(other.prefix, OTHER);
        assert_eq!(other.keys, 9_900);
        // A tracked prefix still counts its keys when the map is full.
        t.add(b"p0:*", &key(b"k", -1, None));
        assert_eq!(t.keys_under(b"p0:*"), 2);
        assert_eq!(t.len(), 100);
    }

    #[test]
    fn only_the_five_largest_keys_are_kept_and_bytes_are_scaled_from_the_sample() {
        let mut t = PrefixTallies::new(10);
        let long = vec![b'x'; 10_000];
        for i in 0..1_000u64 {
            let bytes = (i % 10 == 0).then_some(i * 10);
            let k = if i == 990 { &long[..] } else { b"cache:1" };
            t.add(
                b"cache:*",
                &key(k, if i % 4 == 0 { 5_000 } else { -1 }, bytes),
            );
        }
        let mut report = AuditReport::default();
        t.fill(&mut report);
        let p = &report.prefixes[0];
        assert_eq!(p.keys, 1_000);
        assert_eq!(p.sampled_keys, 100);
        // Sampled sizes 0, 100, ..., 9900: mean 4950, times 1000 keys.
        assert_eq!(p.bytes, 4_950_000);
        assert_eq!(p.largest_bytes, 9_900);
        assert_eq!(
            p.biggest.iter().map(|b| b.bytes).collect::<Vec<_>>(),
            [9_900, 9_800, 9_700, 9_600, 9_500]
        );
        assert_eq!(p.biggest[0].key.len(), MAX_KEY_SHOWN);
        assert_eq!(p.keys_without_ttl, 750);
        assert!((p.share_without_ttl - 0.75).abs() < 1e-9);
        assert_eq!(p.ttl.under_1m, 250);
        assert_eq!(p.longest_ttl_seconds, Some(5));
    }

    #[test]
    fn a_prefix_knows_its_job_library() {
        let mut t = PrefixTallies::new(10);
        t.add(b"rq:job:*", &key(b"rq:job:1", -1, None));
        t.add(b"cache:*", &key(b"cache:1", -1, None));
        let mut report = AuditReport::default();
        t.fill(&mut report);
        let lib = |p: &str| {
            report
                .prefixes
                .iter()
                .find(|x| x.prefix == p)
                .and_then(|x| x.library.clone())
        };
        assert_eq!(lib("rq:job:*").as_deref(), Some("rq"));
        assert_eq!(lib("cache:*"), None);
    }
}
