//! Key prefixes: the group a key belongs to, learned from the key's own structure.
//!
//! Keys are named by convention, `cache:user:1234` or `session:6f1c…`: segments split by a
//! separator, with the variable parts (ids, numbers, hashes, uuids) somewhere in them. The
//! prefix of a key keeps its fixed segments, replaces each variable one with `*` and
//! stops after `max_depth` segments, so `cache:user:1234` and `cache:user:98` both belong
//! to `cache:user:*`. A prefix is written as a glob in the key-pattern syntax of the
//! guards' rules (literal `*`, `?`, `[`, `]` and `\` escaped), so a suggested rule can use
//! it as it is, and every key it was learned from matches it.
//!
//! Nothing here allocates per key: [`PrefixRules::prefix_of`] writes into a buffer the
//! caller keeps.

use serde::{Deserialize, Serialize};

/// How keys are grouped into prefixes: `[keyspace]` `separators` and `max_depth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixRules {
    /// The bytes that separate segments (default `:`; `:/.` would also split paths and
    /// dotted names).
    pub separators: String,
    /// The most segments a prefix keeps; a key with more ends in `*` after them.
    pub max_depth: usize,
}

impl Default for PrefixRules {
    fn default() -> Self {
        PrefixRules {
            separators: ":".to_string(),
            max_depth: 3,
        }
    }
}

/// A prefix is never longer than this, whatever the key: a prefix table's entry has a
/// bounded size.
pub const MAX_PREFIX_LEN: usize = 128;

/// The prefix of a key whose segments are all variable or which has none.
const ANY: &[u8] = b"*";

impl PrefixRules {
    /// Writes the prefix of `key` into `out` (cleared first).
    ///
    /// - A key with separators keeps each fixed segment and writes `*` for a variable one
    ///   (see [`is_variable`]); the last segment is the key's own name and becomes `*`;
    ///   past `max_depth` segments the prefix ends in `*`.
    /// - A key without separators keeps the letters before a trailing run of digits
    ///   (`user1234` → `user*`) and is `*` when it is all variable.
    pub fn prefix_of(&self, key: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let separators = self.separators.as_bytes();
        let Some(first) = find_separator(separators, key) else {
            return single_segment(key, out);
        };
        let mut start = 0;
        let mut end = first;
        let mut depth = 0;
        loop {
            let last = end == key.len();
            if last || depth == self.max_depth.max(1) {
                out.extend_from_slice(ANY);
                break;
            }
            let segment = &key[start..end];
            if is_variable(segment) {
                out.extend_from_slice(ANY);
            } else {
                push_escaped(segment, out);
            }
            out.push(key[end]);
            depth += 1;
            start = end + 1;
            end = find_separator(separators, &key[start..]).map_or(key.len(), |at| start + at);
        }
        truncate(out);
    }
}

/// Where the first separator in `bytes` is: one, two or three separators (almost every
/// configuration) are searched for with `memchr`, more byte by byte.
#[inline]
fn find_separator(separators: &[u8], bytes: &[u8]) -> Option<usize> {
    match *separators {
        [a] => memchr::memchr(a, bytes),
        [a, b] => memchr::memchr2(a, b, bytes),
        [a, b, c] => memchr::memchr3(a, b, c, bytes),
        _ => bytes.iter().position(|b| separators.contains(b)),
    }
}

/// The prefix of a key with no separator.
fn single_segment(key: &[u8], out: &mut Vec<u8>) {
    let fixed = key.len() - key.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if fixed == 0 || is_variable(key) {
        out.extend_from_slice(ANY);
    } else if fixed == key.len() {
        push_escaped(key, out);
    } else {
        push_escaped(&key[..fixed], out);
        out.extend_from_slice(ANY);
    }
    truncate(out);
}

/// Whether a segment names one thing rather than a group: a number, a uuid, a hex string
/// of 8 or more characters with a digit in it, or anything over 32 bytes.
pub fn is_variable(segment: &[u8]) -> bool {
    if segment.is_empty() {
        return false;
    }
    if segment.len() > 32 || segment.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let hex = segment.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-');
    hex && segment.len() >= 8 && segment.iter().any(u8::is_ascii_digit)
}

/// Appends a literal segment with the glob's special bytes escaped.
fn push_escaped(segment: &[u8], out: &mut Vec<u8>) {
    for &b in segment {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// Cuts a prefix that grew past [`MAX_PREFIX_LEN`] and ends it in `*`, so it still
/// matches every key it stands for.
fn truncate(out: &mut Vec<u8>) {
    if out.len() <= MAX_PREFIX_LEN {
        return;
    }
    out.truncate(MAX_PREFIX_LEN - 1);
    // Never leave a dangling escape.
    let escapes = out.iter().rev().take_while(|b| **b == b'\\').count();
    if escapes % 2 == 1 {
        out.pop();
    }
    out.push(b'*');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::pattern::KeyPattern;

    fn prefix(rules: &PrefixRules, key: &str) -> String {
        let mut out = Vec::new();
        rules.prefix_of(key.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn keys_of_one_kind_share_a_prefix() {
        let rules = PrefixRules::default();
        let cases = [
            ("cache:user:1234", "cache:user:*"),
            ("cache:user:98", "cache:user:*"),
            ("cache:user:1234:avatar", "cache:user:*:*"),
            ("session:6f1c2a9e-7d4b-4c1e-9a3f-0b8e2d5c7a61", "session:*"),
            ("order:42:items", "order:*:*"),
            ("a:b:c:d:e", "a:b:c:*"),
            ("user1234", "user*"),
            ("counter", "counter"),
            ("12345", "*"),
            ("deadbeef01", "*"),
            ("bull:emails:wait", "bull:emails:*"),
            ("weird*key:1", "weird\\*key:*"),
            ("trailing:", "trailing:*"),
            (":leading", ":*"),
        ];
        for (key, want) in cases {
            assert_eq!(prefix(&rules, key), want, "{key}");
        }
    }

    #[test]
    fn separators_and_depth_are_configurable() {
        let rules = PrefixRules {
            separators: ":/".into(),
            max_depth: 1,
        };
        assert_eq!(prefix(&rules, "img/2024/cat.png"), "img/*");
        assert_eq!(prefix(&rules, "cache:user:1"), "cache:*");
    }

    #[test]
    fn words_are_not_mistaken_for_ids() {
        for word in ["default", "feed", "cafe", "accepted", "deadbeef"] {
            assert!(!is_variable(word.as_bytes()), "{word}");
        }
        for id in ["123", "5f3a9c01", "6f1c2a9e-7d4b-4c1e-9a3f-0b8e2d5c7a61"] {
            assert!(is_variable(id.as_bytes()), "{id}");
        }
    }

    #[test]
    fn every_key_matches_its_own_prefix_as_a_pattern() {
        let rules = PrefixRules::default();
        let long = format!("big:{}:x", "y".repeat(30)) + &"z".repeat(300);
        let keys = [
            "cache:user:1234",
            "weird*key:[1]",
            "back\\slash:2",
            "user1234",
            "counter",
            long.as_str(),
        ];
        for key in keys {
            let mut out = Vec::new();
            rules.prefix_of(key.as_bytes(), &mut out);
            assert!(out.len() <= MAX_PREFIX_LEN);
            let pattern = KeyPattern::new(std::str::from_utf8(&out).unwrap());
            assert!(pattern.matches(key.as_bytes()), "{key} vs {out:?}");
        }
    }
}
