//! The file's `[keyspace]` section: the live keyspace insight (what grows, per key prefix)
//! and how keys are grouped into prefixes, as written, with their defaults. The insight
//! (`crate::keyspace::insight`) reads this shape when it is built.

use serde::{Deserialize, Serialize};

use super::error::{invalid, ConfigError};

/// `[keyspace]`: the live keyspace insight.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawKeyspace {
    /// Whether the proxy keeps the insight at all.
    pub enabled: bool,
    /// One command in this many is observed, and its counts are multiplied by it (1: every
    /// command, exact figures).
    pub sample_rate: u32,
    /// The most key prefixes tracked at once (a top-K summary: the busiest stay).
    pub max_prefixes: usize,
    /// The hottest keys reported (four times as many are tracked, so the top ones are
    /// accurate).
    pub hot_keys: usize,
    /// The bytes that separate a key's segments.
    pub separators: String,
    /// The most segments a prefix keeps.
    pub max_depth: usize,
}

impl Default for RawKeyspace {
    fn default() -> Self {
        RawKeyspace {
            enabled: true,
            sample_rate: 128,
            max_prefixes: 1024,
            hot_keys: 32,
            separators: ":".to_string(),
            max_depth: 3,
        }
    }
}

/// The largest `max_prefixes`: each tracked prefix costs about 250 bytes.
pub const MAX_PREFIXES: usize = 65_536;
/// The largest `hot_keys`.
pub const MAX_HOT_KEYS: usize = 1024;

impl RawKeyspace {
    /// Check every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sample_rate == 0 {
            return Err(invalid("keyspace.sample_rate", "must be at least 1"));
        }
        if !(1..=MAX_PREFIXES).contains(&self.max_prefixes) {
            return Err(invalid(
                "keyspace.max_prefixes",
                format!("must be between 1 and {MAX_PREFIXES}"),
            ));
        }
        if !(1..=MAX_HOT_KEYS).contains(&self.hot_keys) {
            return Err(invalid(
                "keyspace.hot_keys",
                format!("must be between 1 and {MAX_HOT_KEYS}"),
            ));
        }
        if self.separators.is_empty() || !self.separators.is_ascii() {
            return Err(invalid(
                "keyspace.separators",
                "must hold at least one ASCII byte",
            ));
        }
        if self.max_depth == 0 {
            return Err(invalid("keyspace.max_depth", "must be at least 1"));
        }
        Ok(())
    }
}
