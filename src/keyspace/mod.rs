//! Keyspace insight: what the keys in Redis look like, grouped by prefix.
//!
//! [`prefix`] groups keys into prefixes learned from their structure; the live insight
//! the proxy keeps, the audit of an existing Redis and the rule suggestions all group keys
//! the same way, through it. [`insight`] is the live insight the proxy keeps from the
//! commands it sees, in two [`topk`] summaries (prefixes, keys); [`report`] is its JSON
//! shape.

pub mod insight;
pub mod prefix;
pub mod report;
pub mod topk;
