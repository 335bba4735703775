//! `respguard audit`: what is in an existing Redis, per key prefix, read safely.
//!
//! The audit walks the keyspace with `SCAN … COUNT n` and asks, for every key of a page,
//! `TYPE` and `PTTL`, and for a sample of them (the first key of each prefix and one in
//! `memory_sample` after it) `MEMORY USAGE`. A page's questions and the next `SCAN` go in
//! one pipelined round trip. It sends nothing but the read-only commands of
//! [`wire::READ_ONLY`] (never `KEYS`, never a write), keeps under a ceiling of commands per
//! second, and pauses whenever a round trip is slow ([`pace`]). Its memory is bounded:
//! at most `max_prefixes` prefixes ([`tally`]), five largest keys each, one page of keys
//! at a time.
//!
//! Keys are grouped by [`crate::keyspace::prefix`], the grouping the live insight and the
//! rule suggestions use, and each prefix is marked with the job library whose key shape
//! it has ([`crate::guard::library`]). The result is an [`AuditReport`].

pub mod error;
pub mod pace;
pub mod report;
pub mod tally;
pub mod wire;

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

pub use error::AuditError;
pub use pace::PaceSettings;
pub use report::{AuditReport, BigKey, PrefixAudit, TtlBuckets, TypeCounts};

use crate::config::{UpstreamTarget, UpstreamTls};
use crate::keyspace::prefix::PrefixRules;
use pace::Pace;
use tally::{KeyFacts, PrefixTallies};
use wire::{Batch, Connection, Reply};

/// How to audit.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// The Redis to audit (address, credentials, database).
    pub target: UpstreamTarget,
    /// TLS, for a `rediss://` target.
    pub tls: Option<UpstreamTls>,
    /// Longest time the connection (TCP, TLS, AUTH, SELECT) may take.
    pub connect_timeout: Duration,
    /// The `COUNT` of each `SCAN`.
    pub scan_count: u32,
    /// `MEMORY USAGE` for one key in this many per prefix (1: every key; 0: none).
    pub memory_sample: u32,
    /// Speed limits and back-off.
    pub pace: PaceSettings,
    /// Most prefixes tracked; further prefixes' keys are counted as `(other)`.
    pub max_prefixes: usize,
    /// Stop after this many keys (0: scan everything).
    pub max_keys: u64,
    /// How keys are grouped.
    pub prefixes: PrefixRules,
}

impl AuditOptions {
    /// The defaults for `target`: `SCAN … COUNT 500`, memory of one key in 10, at most
    /// 20,000 commands per second, a 100 ms pause (up to 5 s) after a round trip over
    /// 50 ms, 10,000 prefixes.
    pub fn new(target: UpstreamTarget) -> Self {
        AuditOptions {
            target,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            scan_count: 500,
            memory_sample: 10,
            pace: PaceSettings {
                max_commands_per_second: 20_000,
                slow_round_trip: Duration::from_millis(50),
                pause: Duration::from_millis(100),
                max_pause: Duration::from_secs(5),
            },
            max_prefixes: 10_000,
            max_keys: 0,
            prefixes: PrefixRules::default(),
        }
    }
}

/// Where an audit is, for a progress line.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Keys seen so far.
    pub keys: u64,
    /// `DBSIZE` at the start.
    pub dbsize: u64,
    /// Prefixes tracked so far.
    pub prefixes: usize,
    /// Time since the start.
    pub elapsed: Duration,
    /// Pauses taken for slow round trips.
    pub pauses: u64,
}

/// Audit the Redis `options` names. `progress` is called after every round trip.
pub async fn run(
    options: &AuditOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<AuditReport, AuditError> {
    let started = Instant::now();
    let mut conn = Connection::open(
        &options.target,
        options.tls.clone(),
        options.connect_timeout,
    )
    .await?;
    let mut audit = Audit {
        options,
        tallies: PrefixTallies::new(options.max_prefixes),
        pace: Pace::new(options.pace),
        report: AuditReport {
            target: format!("{}/{}", options.target.address, options.target.db),
            memory_sample: options.memory_sample,
            complete: true,
            ..AuditReport::default()
        },
        prefix: Vec::with_capacity(crate::keyspace::prefix::MAX_PREFIX_LEN),
        in_page: FxHashMap::default(),
    };
    let mut batch = Batch::default();
    batch.push(&[b"DBSIZE"]);
    push_scan(&mut batch, b"0", options.scan_count);
    let mut replies = audit.round_trip(&mut conn, &batch, started).await?;
    audit.report.dbsize_at_start = wire::integer(&replies[0]).unwrap_or(0).max(0) as u64;
    let (mut cursor, mut keys) = wire::scan_page(replies.pop().expect("two replies"))?;
    loop {
        let last = cursor == b"0" || audit.reached_max_keys(keys.len());
        if cursor != b"0" && last {
            audit.report.complete = false;
        }
        batch.clear();
        let sampled = audit.ask_about(&keys, &mut batch);
        if !last {
            push_scan(&mut batch, &cursor, options.scan_count);
        }
        if batch.is_empty() {
            break;
        }
        let mut replies = audit.round_trip(&mut conn, &batch, started).await?;
        let next = match last {
            true => None,
            false => Some(wire::scan_page(replies.pop().expect("a SCAN reply"))?),
        };
        audit.count(&keys, &sampled, &replies)?;
        progress(&Progress {
            keys: audit.report.scanned_keys,
            dbsize: audit.report.dbsize_at_start,
            prefixes: audit.tallies.len(),
            elapsed: started.elapsed(),
            pauses: audit.pace.pauses,
        });
        match next {
            Some((c, k)) => (cursor, keys) = (c, k),
            None => break,
        }
    }
    audit.tallies.fill(&mut audit.report);
    audit.report.pauses = audit.pace.pauses;
    audit.report.paused_seconds = audit.pace.paused.as_secs_f64();
    audit.report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(audit.report)
}

fn push_scan(batch: &mut Batch, cursor: &[u8], count: u32) {
    batch.push(&[
        b"SCAN",
        cursor,
        b"COUNT",
        count.max(1).to_string().as_bytes(),
    ]);
}

/// One audit in progress.
struct Audit<'a> {
    options: &'a AuditOptions,
    tallies: PrefixTallies,
    pace: Pace,
    report: AuditReport,
    /// The prefix of the key at hand.
    prefix: Vec<u8>,
    /// Keys of the current page per prefix, for the memory sample (one page's worth).
    in_page: FxHashMap<Vec<u8>, u64>,
}

impl Audit<'_> {
    fn reached_max_keys(&self, page: usize) -> bool {
        self.options.max_keys > 0 && self.report.scanned_keys + page as u64 >= self.options.max_keys
    }

    /// Send a batch, time it and wait as the pace says.
    async fn round_trip(
        &mut self,
        conn: &mut Connection,
        batch: &Batch,
        started: Instant,
    ) -> Result<Vec<Reply>, AuditError> {
        let sent = Instant::now();
        let replies = conn.round_trip(batch).await?;
        let took = sent.elapsed();
        self.report.commands_sent += batch.len() as u64;
        self.report.round_trips += 1;
        self.report.slowest_round_trip_ms = self
            .report
            .slowest_round_trip_ms
            .max(took.as_secs_f64() * 1e3);
        let wait = self.pace.after(batch.len() as u64, took, started.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(replies)
    }

    /// Add TYPE and PTTL for every key, MEMORY USAGE for the sampled ones; returns which
    /// keys are sampled.
    fn ask_about(&mut self, keys: &[Vec<u8>], batch: &mut Batch) -> Vec<bool> {
        self.in_page.clear();
        let every = u64::from(self.options.memory_sample);
        keys.iter()
            .map(|key| {
                batch.push(&[b"TYPE", key]);
                batch.push(&[b"PTTL", key]);
                if every == 0 {
                    return false;
                }
                self.options.prefixes.prefix_of(key, &mut self.prefix);
                let before = self.tallies.keys_under(&self.prefix);
                let in_page = self.in_page.entry(self.prefix.clone()).or_default();
                let sampled = (before + *in_page) % every == 0;
                *in_page += 1;
                if sampled {
                    batch.push(&[b"MEMORY", b"USAGE", key]);
                }
                sampled
            })
            .collect()
    }

    /// Count a page's keys from their replies (in the order `ask_about` asked).
    fn count(
        &mut self,
        keys: &[Vec<u8>],
        sampled: &[bool],
        replies: &[Reply],
    ) -> Result<(), AuditError> {
        let mut at = 0;
        for (key, &sampled) in keys.iter().zip(sampled) {
            let kind = &replies[at];
            let pttl = &replies[at + 1];
            let bytes = sampled.then(|| wire::integer(&replies[at + 2]));
            at += 2 + usize::from(sampled);
            if let Err(text) = kind {
                return Err(AuditError::Refused(format!("TYPE: {text}")));
            }
            let kind = wire::text(kind).unwrap_or(b"none");
            let pttl = wire::integer(pttl).unwrap_or(-1);
            if kind == b"none" || pttl == -2 {
                self.report.vanished_keys += 1;
                continue;
            }
            self.report.scanned_keys += 1;
            let bytes = bytes.flatten().map(|b| b.max(0) as u64);
            self.report.sampled_keys += u64::from(bytes.is_some());
            self.options.prefixes.prefix_of(key, &mut self.prefix);
            let facts = KeyFacts {
                key,
                kind,
                pttl_ms: pttl,
                bytes,
            };
            self.tallies.add(&self.prefix, &facts);
        }
        Ok(())
    }
}
