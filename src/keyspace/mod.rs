//! Keyspace insight: what the keys in Redis look like, grouped by prefix.
//!
//! [`prefix`] groups keys into prefixes learned from their structure; the live insight
//! the proxy keeps, the audit of an existing Redis and the rule suggestions all group keys
//! the same way, through it. [`insight`] is the live insight the proxy keeps from the
//! commands it sees, in two [`topk`] summaries (prefixes, keys); [`report`] is its JSON
//! shape. Job libraries' key shapes, whose keys must never get a default TTL, are
//! [`crate::guard::library`]'s, where the TTL guard finds them too. [`audit`] reads an
//! existing Redis (`respguard audit`); [`suggest`] turns an audit or a live report into
//! proposed rules (`respguard suggest`).

pub mod audit;
pub mod insight;
pub mod prefix;
pub mod report;
pub mod suggest;
pub mod topk;
