//! Keyspace insight: what the keys in Redis look like, grouped by prefix.
//!
//! [`prefix`] groups keys into prefixes learned from their structure; the live insight
//! the proxy keeps, the audit of an existing Redis and the rule suggestions all group keys
//! the same way, through it.

pub mod prefix;
pub mod report;
