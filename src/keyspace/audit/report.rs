//! What an audit found: the typed report (`--json` prints it, `respguard suggest` reads it
//! back) and its table for people.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The whole audit of one Redis database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    /// The audited server and database (`host:port/db`), never the credentials.
    pub target: String,
    /// `DBSIZE` when the audit started.
    pub dbsize_at_start: u64,
    /// Keys SCAN returned and TYPE found (a key seen twice by SCAN counts twice).
    pub scanned_keys: u64,
    /// Keys SCAN returned that were gone by the time TYPE asked.
    pub vanished_keys: u64,
    /// Keys whose `MEMORY USAGE` was read.
    pub sampled_keys: u64,
    /// One key in this many (per prefix, its first included) had its memory read.
    pub memory_sample: u32,
    /// All prefixes' estimated bytes.
    pub estimated_bytes: u64,
    /// False when the audit stopped at `max_keys` before SCAN finished.
    pub complete: bool,
    /// Commands sent, the connection's AUTH and SELECT excluded.
    pub commands_sent: u64,
    /// Pipelined round trips.
    pub round_trips: u64,
    /// The slowest round trip, in milliseconds.
    pub slowest_round_trip_ms: f64,
    /// Times the audit paused because a round trip was slower than the threshold.
    pub pauses: u64,
    /// Seconds spent in those pauses.
    pub paused_seconds: f64,
    /// Seconds the audit took.
    pub duration_seconds: f64,
    /// The most prefixes tracked; keys of further prefixes are counted in `other`.
    pub max_prefixes: usize,
    /// The prefixes, most estimated bytes first.
    pub prefixes: Vec<PrefixAudit>,
    /// Keys of prefixes past `max_prefixes`, together (prefix `(other)`).
    pub other: Option<PrefixAudit>,
}

/// What the audit found under one key prefix.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefixAudit {
    /// The prefix, as a key pattern (see [`crate::keyspace::prefix`]).
    pub prefix: String,
    /// Keys found.
    pub keys: u64,
    /// Keys whose memory was read.
    pub sampled_keys: u64,
    /// Estimated bytes: the sampled keys' mean `MEMORY USAGE` times `keys`.
    pub bytes: u64,
    /// The largest `MEMORY USAGE` sampled.
    pub largest_bytes: u64,
    /// Keys without an expiry.
    pub keys_without_ttl: u64,
    /// `keys_without_ttl` over `keys`.
    pub share_without_ttl: f64,
    /// Keys by remaining time to live.
    pub ttl: TtlBuckets,
    /// The longest remaining TTL seen, in seconds (what the keys were given, at most).
    pub longest_ttl_seconds: Option<u64>,
    /// Keys by Redis type.
    pub types: TypeCounts,
    /// The largest sampled keys, largest first (at most five).
    pub biggest: Vec<BigKey>,
    /// The job library whose key shape the prefix's keys have, if any.
    pub library: Option<String>,
    /// Keys of the prefix with a job library's shape.
    pub library_keys: u64,
}

/// Keys by remaining TTL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlBuckets {
    /// No expiry.
    pub none: u64,
    /// Under a minute.
    pub under_1m: u64,
    /// A minute to an hour.
    pub under_1h: u64,
    /// An hour to a day.
    pub under_1d: u64,
    /// A day to a week.
    pub under_7d: u64,
    /// A week or more.
    pub over_7d: u64,
}

impl TtlBuckets {
    /// Count a key by its `PTTL` reply (`-1`: no expiry).
    pub fn add(&mut self, pttl_ms: i64) {
        const MINUTE: i64 = 60_000;
        let bucket = match pttl_ms {
            i64::MIN..=-1 => &mut self.none,
            t if t < MINUTE => &mut self.under_1m,
            t if t < 60 * MINUTE => &mut self.under_1h,
            t if t < 24 * 60 * MINUTE => &mut self.under_1d,
            t if t < 7 * 24 * 60 * MINUTE => &mut self.under_7d,
            _ => &mut self.over_7d,
        };
        *bucket += 1;
    }

    /// The counts in order, with their labels.
    pub fn labelled(&self) -> [(&'static str, u64); 6] {
        [
            ("none", self.none),
            ("<1m", self.under_1m),
            ("<1h", self.under_1h),
            ("<1d", self.under_1d),
            ("<7d", self.under_7d),
            (">=7d", self.over_7d),
        ]
    }
}

/// Keys by Redis type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCounts {
    pub string: u64,
    pub list: u64,
    pub set: u64,
    pub zset: u64,
    pub hash: u64,
    pub stream: u64,
    /// Module types and anything else.
    pub other: u64,
}

impl TypeCounts {
    /// Count a key by its `TYPE` reply.
    pub fn add(&mut self, name: &[u8]) {
        let slot = match name {
            b"string" => &mut self.string,
            b"list" => &mut self.list,
            b"set" => &mut self.set,
            b"zset" => &mut self.zset,
            b"hash" => &mut self.hash,
            b"stream" => &mut self.stream,
            _ => &mut self.other,
        };
        *slot += 1;
    }

    /// The types present, most keys first, as `string 90%, hash 10%`.
    pub fn summary(&self, total: u64) -> String {
        let mut v = [
            ("string", self.string),
            ("list", self.list),
            ("set", self.set),
            ("zset", self.zset),
            ("hash", self.hash),
            ("stream", self.stream),
            ("other", self.other),
        ];
        v.sort_by_key(|b| std::cmp::Reverse(b.1));
        let mut out = String::new();
        for (name, n) in v.iter().filter(|(_, n)| *n > 0).take(2) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            let _ = write!(out, "{name} {:.0}%", percent(*n, total));
        }
        out
    }
}

/// One of a prefix's largest keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BigKey {
    /// The key, lossily decoded as UTF-8 and cut to 200 bytes.
    pub key: String,
    /// Its `MEMORY USAGE`.
    pub bytes: u64,
    /// Its type.
    pub kind: String,
}

/// A byte count for people: `72 B`, `3.5 KiB`, `2.1 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

impl AuditReport {
    /// The report as a table for people: one line per prefix, then the totals.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<32} {:>10} {:>10} {:>7}  {:<34} {:<18} {:<9} biggest",
            "prefix",
            "keys",
            "bytes",
            "no TTL",
            "TTL none/<1m/<1h/<1d/<7d/>=7d",
            "types",
            "library"
        );
        for p in self.prefixes.iter().chain(self.other.iter()) {
            row(&mut out, p);
        }
        let _ = writeln!(
            out,
            "\n{} keys in {} prefixes{}, ~{} ({}); {}{} commands in {} round trips, {:.1} s, {} pauses",
            self.scanned_keys,
            self.prefixes.len(),
            match &self.other {
                Some(o) => format!(" plus {} keys past the {}-prefix limit", o.keys, self.max_prefixes),
                None => String::new(),
            },
            human_bytes(self.estimated_bytes),
            match self.memory_sample {
                0 => "memory not read".to_string(),
                n => format!("memory of {} keys read, one in {n}", self.sampled_keys),
            },
            if self.complete { "" } else { "INCOMPLETE (stopped at --max-keys); " },
            self.commands_sent,
            self.round_trips,
            self.duration_seconds,
            self.pauses,
        );
        out
    }
}

fn row(out: &mut String, p: &PrefixAudit) {
    let ttl = p
        .ttl
        .labelled()
        .iter()
        .map(|(_, n)| format!("{:.0}", percent(*n, p.keys)))
        .collect::<Vec<_>>()
        .join("/");
    let biggest = p
        .biggest
        .first()
        .map(|b| format!("{} ({})", b.key, human_bytes(b.bytes)))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{:<32} {:>10} {:>10} {:>6.0}%  {:<34} {:<18} {:<9} {}",
        p.prefix,
        p.keys,
        human_bytes(p.bytes),
        p.share_without_ttl * 100.0,
        format!("{ttl} %"),
        p.types.summary(p.keys),
        p.library.as_deref().unwrap_or("-"),
        biggest,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(72), "72 B");
        assert_eq!(human_bytes(3_584), "3.5 KiB");
        assert_eq!(human_bytes(2_254_857_830), "2.1 GiB");
    }

    #[test]
    fn ttls_fall_in_their_buckets() {
        let mut b = TtlBuckets::default();
        for t in [
            -1,
            0,
            59_999,
            60_000,
            3_599_999,
            3_600_000,
            86_400_000,
            604_800_000,
        ] {
            b.add(t);
        }
        assert_eq!(
            b,
            TtlBuckets {
                none: 1,
                under_1m: 2,
                under_1h: 2,
                under_1d: 1,
                under_7d: 1,
                over_7d: 1,
            }
        );
    }

    #[test]
    fn the_table_has_a_line_per_prefix_and_the_other_bucket() {
        let report = AuditReport {
            prefixes: vec![PrefixAudit {
                prefix: "cache:user:*".into(),
                keys: 10,
                ..Default::default()
            }],
            other: Some(PrefixAudit {
                prefix: "(other)".into(),
                keys: 3,
                ..Default::default()
            }),
            max_prefixes: 1,
            complete: true,
            ..Default::default()
        };
        let table = report.table();
        assert!(table.contains("cache:user:*"), "{table}");
        assert!(table.contains("(other)"), "{table}");
        assert!(table.contains("3 keys past the 1-prefix limit"), "{table}");
    }
}
