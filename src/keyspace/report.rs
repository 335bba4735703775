//! The live keyspace report: what the proxy saw written and read, per key prefix.
//!
//! Served as `/keyspace` (JSON) and `RESPGUARD KEYSPACE`, and read back by
//! `respguard suggest`. The figures are counts of commands the proxy observed (one in
//! `sample_rate` when sampling), over `window_seconds`; a prefix's counts may overstate the
//! truth by at most its `error_bound` (the top-K summary's guarantee), never understate it.

use serde::{Deserialize, Serialize};

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveReport {
    /// Seconds the counts cover (since the proxy started or the insight was reset).
    pub window_seconds: f64,
    /// One command in this many is observed (1: every command); counts are scaled back.
    pub sample_rate: u32,
    /// The most prefixes tracked at once.
    pub prefix_capacity: usize,
    /// Prefixes tracked now.
    pub tracked_prefixes: usize,
    /// Prefixes pushed out of the summary to make room for others, since the start.
    pub evicted_prefixes: u64,
    /// The prefixes, most operations first.
    pub prefixes: Vec<PrefixActivity>,
    /// The hottest keys, most operations first.
    pub hot_keys: Vec<HotKey>,
}

/// What was seen of one key prefix.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefixActivity {
    /// The prefix, as a key pattern (see [`crate::keyspace::prefix`]).
    pub prefix: String,
    /// Commands on keys of this prefix, reads and writes.
    pub operations: u64,
    /// Commands that write a value (the key-creating and key-growing writes).
    pub writes: u64,
    /// `writes` divided by the window.
    pub writes_per_second: f64,
    /// Bytes of values written.
    pub bytes_written: u64,
    /// Writes that left the key without an expiry (no TTL given and none added).
    pub writes_without_ttl: u64,
    /// Writes that gave the key an expiry themselves.
    pub writes_with_ttl: u64,
    /// Writes that the TTL guard gave a default expiry.
    pub ttl_added: u64,
    /// The largest single value written, in bytes.
    pub largest_value_bytes: u64,
    /// Elements pushed onto lists, sorted sets and streams.
    pub pushes: u64,
    /// Elements popped or removed from them.
    pub pops: u64,
    /// The most by which `operations` may overstate the truth.
    pub error_bound: u64,
    /// The job library whose key shape this prefix has, if any.
    pub library: Option<String>,
}

/// A key among the hottest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HotKey {
    /// The key, lossily decoded as UTF-8.
    pub key: String,
    /// Commands on it.
    pub operations: u64,
    /// The most by which `operations` may overstate the truth.
    pub error_bound: u64,
}
