//! `respguard suggest`: guard rules proposed from what an audit or a running proxy saw.
//!
//! The input is an [`AuditReport`] (`respguard audit --json`) or a [`LiveReport`] (a
//! proxy's `/keyspace`, from a file or fetched over HTTP). Each prefix becomes an
//! [`Observation`]; [`propose`] turns observations into [`Proposal`]s and [`to_toml`]
//! writes them as configuration, each rule under a comment saying what was seen:
//!
//! - a **TTL** rule for a prefix whose keys (or writes) are mostly (80% or more) without
//!   an expiry, of at least [`MIN_COUNT`] keys (or writes): never for keys with a job library's shape, never for a pattern that
//!   matches every key. The TTL is the longest the prefix's other keys were seen with
//!   (rounded up to 1m, 5m, 15m, 1h, 6h, 1d, 7d or 30d); when none had one,
//!   [`DEFAULT_CACHE_TTL`] for a prefix named like a cache and [`DEFAULT_TTL`] otherwise;
//! - a **size** rule four times above the largest value seen (a power of two, 64 KiB at
//!   least, since a sample may miss the very largest), for prefixes of no job library;
//! - a **queue** rule for each job library's queues, at [`QUEUE_ALERT_DEPTH`] jobs;
//! - **shed** priorities: `low` for caches (rebuildable), `critical` for job queues.
//!
//! Every rule is written in `mode = "observe"`: once copied into a configuration it logs
//! and counts what it would do and changes nothing until the line is removed. respguard
//! never applies a suggestion by itself.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::audit::report::human_bytes;
use super::audit::AuditReport;
use super::report::LiveReport;
use crate::config::ByteSize;
use crate::guard::library::{library, library_of};

/// The TTL proposed for a cache-named prefix none of whose keys had one.
pub const DEFAULT_CACHE_TTL: &str = "1d";

/// The TTL proposed for any other prefix none of whose keys had one: long, so that data
/// read weekly survives, and still an end for keys nothing reads any more.
pub const DEFAULT_TTL: &str = "7d";

/// The share of keys (or writes) without an expiry from which a prefix gets a TTL rule.
pub const MOSTLY_WITHOUT_TTL: f64 = 0.8;

/// The fewest keys (or writes) of a prefix that get a TTL rule: a handful of keys is not
/// a prefix growing unseen.
pub const MIN_COUNT: u64 = 100;

/// The depth at which a job queue is reported (observe mode logs each push past it).
pub const QUEUE_ALERT_DEPTH: u64 = 100_000;

/// The smallest size limit proposed.
pub const MIN_SIZE_LIMIT: u64 = 64 << 10;

/// The most bytes read from a `/keyspace` response.
pub const MAX_RESPONSE: u64 = 32 << 20;

/// Why no suggestion could be made.
#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    /// The input file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    /// The input is not the report it should be.
    #[error("{what} is not a {expected}: {reason}")]
    Parse {
        what: String,
        expected: &'static str,
        reason: String,
    },
    /// The proxy's admin listener could not be asked.
    #[error("cannot fetch http://{address}{path}: {reason}")]
    Http {
        address: String,
        path: String,
        reason: String,
    },
}

/// What was seen of one prefix, from either report.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The prefix, a key pattern.
    pub prefix: String,
    /// The job library of its keys, if any.
    pub library: Option<String>,
    /// Keys (audit) or writes (live) seen.
    pub count: u64,
    /// The share of those without an expiry.
    pub share_without_ttl: f64,
    /// The longest TTL seen on its keys, in seconds.
    pub longest_ttl_seconds: Option<u64>,
    /// The largest value seen, in bytes (0: unknown).
    pub largest_bytes: u64,
    /// What was seen, for the rule's comment.
    pub summary: String,
}

/// One proposed rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Proposal {
    /// `[[guards.ttl.rules]]` with `ttl`.
    Ttl {
        pattern: String,
        ttl: String,
        why: String,
    },
    /// `[[guards.size.rules]]` with `max_value`.
    Size {
        pattern: String,
        max_value: u64,
        why: String,
    },
    /// `[[guards.queue.rules]]` with `max_depth`.
    Queue {
        pattern: String,
        max_depth: u64,
        why: String,
    },
    /// `[[guards.shed.rules]]` with `priority`.
    Shed {
        pattern: String,
        priority: &'static str,
        why: String,
    },
}

/// Read an audit report (`respguard audit --json`) from a file.
pub fn load_audit(path: &Path) -> Result<AuditReport, SuggestError> {
    let text = read(path)?;
    serde_json::from_str(&text).map_err(|e| SuggestError::Parse {
        what: path.display().to_string(),
        expected: "respguard audit --json report",
        reason: e.to_string(),
    })
}

/// Read a live report from a file, or, when `source` is no file, from the `/keyspace`
/// endpoint of the admin listener at `source` (`host:port`, optionally as
/// `http://host:port[/path]`).
pub fn load_live(source: &str) -> Result<LiveReport, SuggestError> {
    let path = Path::new(source);
    let (what, text) = if path.is_file() {
        (source.to_string(), read(path)?)
    } else {
        (format!("http://{source}"), fetch(source)?)
    };
    serde_json::from_str(&text).map_err(|e| SuggestError::Parse {
        what,
        expected: "live keyspace report",
        reason: e.to_string(),
    })
}

fn read(path: &Path) -> Result<String, SuggestError> {
    std::fs::read_to_string(path).map_err(|e| SuggestError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// GET the report over plain HTTP/1.1 (the admin listener answers one request per
/// connection, with a Content-Length, and closes).
fn fetch(source: &str) -> Result<String, SuggestError> {
    let rest = source.strip_prefix("http://").unwrap_or(source);
    let (address, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/keyspace"),
    };
    let fail = |reason: String| SuggestError::Http {
        address: address.to_string(),
        path: path.to_string(),
        reason,
    };
    let answer = crate::http_get::get(address, path, Duration::from_secs(5), MAX_RESPONSE)
        .map_err(|e| fail(e.to_string()))?;
    if !answer.is_ok() {
        return Err(fail(answer.status));
    }
    Ok(answer.body)
}

/// The observations of an audit, `(other)` left out.
pub fn observe_audit(report: &AuditReport) -> Vec<Observation> {
    report
        .prefixes
        .iter()
        .map(|p| Observation {
            prefix: p.prefix.clone(),
            library: p.library.clone(),
            count: p.keys,
            share_without_ttl: p.share_without_ttl,
            longest_ttl_seconds: p.longest_ttl_seconds,
            largest_bytes: p.largest_bytes,
            summary: format!(
                "{} keys, ~{}, {:.0}% without TTL{}{}",
                p.keys,
                human_bytes(p.bytes),
                p.share_without_ttl * 100.0,
                match p.longest_ttl_seconds {
                    Some(s) => format!(", longest TTL {s} s"),
                    None => String::new(),
                },
                match p.largest_bytes {
                    0 => String::new(),
                    b => format!(", largest key {}", human_bytes(b)),
                },
            ),
        })
        .collect()
}

/// The observations of a live report.
pub fn observe_live(report: &LiveReport) -> Vec<Observation> {
    report
        .prefixes
        .iter()
        .map(|p| {
            let writes = p.writes_without_ttl + p.writes_with_ttl + p.ttl_added;
            let share = if writes == 0 {
                0.0
            } else {
                p.writes_without_ttl as f64 / writes as f64
            };
            Observation {
                prefix: p.prefix.clone(),
                library: p.library.clone(),
                count: writes,
                share_without_ttl: share,
                longest_ttl_seconds: None,
                largest_bytes: p.largest_value_bytes,
                summary: format!(
                    "{} writes ({:.1}/s over {:.0} s), {:.0}% without TTL, {} written{}",
                    p.writes,
                    p.writes_per_second,
                    report.window_seconds,
                    share * 100.0,
                    human_bytes(p.bytes_written),
                    match p.largest_value_bytes {
                        0 => String::new(),
                        b => format!(", largest value {}", human_bytes(b)),
                    },
                ),
            }
        })
        .collect()
}

/// Whether a prefix's keys are a job library's (by the report, or by its own shape).
fn is_library(o: &Observation) -> bool {
    o.library.is_some() || library_of(o.prefix.as_bytes()).is_some()
}

/// Whether a pattern is all wildcards (`*`, `*:*`): a rule on it would cover every key.
fn matches_everything(pattern: &str) -> bool {
    pattern.bytes().all(|b| b == b'*' || b == b':') || pattern.starts_with('*')
}

fn is_cache(prefix: &str) -> bool {
    let p = prefix.to_ascii_lowercase();
    p.contains("cache") || p.starts_with("tmp") || p.starts_with("temp")
}

/// The rules the observations call for.
pub fn propose(observations: &[Observation]) -> Vec<Proposal> {
    let mut out = Vec::new();
    let mut libraries: Vec<&str> = Vec::new();
    for o in observations {
        if is_library(o) {
            let name = o
                .library
                .as_deref()
                .or_else(|| library_of(o.prefix.as_bytes()));
            if let Some(lib) = name.and_then(library) {
                if !libraries.contains(&lib.name) {
                    libraries.push(lib.name);
                }
            }
            continue;
        }
        if matches_everything(&o.prefix) {
            continue;
        }
        if o.count >= MIN_COUNT && o.share_without_ttl >= MOSTLY_WITHOUT_TTL {
            let (ttl, reason) = ttl_for(o);
            out.push(Proposal::Ttl {
                pattern: o.prefix.clone(),
                ttl,
                why: format!("{}: {}; {reason}", o.prefix, o.summary),
            });
        }
        if o.largest_bytes > 0 {
            let limit = o
                .largest_bytes
                .saturating_mul(4)
                .next_power_of_two()
                .max(MIN_SIZE_LIMIT);
            out.push(Proposal::Size {
                pattern: o.prefix.clone(),
                max_value: limit,
                why: format!(
                    "{}: largest seen {}, limit at least four times that",
                    o.prefix,
                    human_bytes(o.largest_bytes)
                ),
            });
        }
        if is_cache(&o.prefix) {
            out.push(Proposal::Shed {
                pattern: o.prefix.clone(),
                priority: "low",
                why: format!(
                    "{}: a cache, rebuilt on a miss: refused first under memory pressure",
                    o.prefix
                ),
            });
        }
    }
    for name in libraries {
        let lib = library(name).expect("a known library");
        for queue in lib.queues {
            out.push(Proposal::Queue {
                pattern: queue.to_string(),
                max_depth: QUEUE_ALERT_DEPTH,
                why: format!("{name} queues: logged when one holds {QUEUE_ALERT_DEPTH} jobs"),
            });
            out.push(Proposal::Shed {
                pattern: queue.to_string(),
                priority: "critical",
                why: format!(
                    "{name} queues: jobs are not rebuilt; enqueues pass even at hard pressure"
                ),
            });
        }
    }
    out
}

/// The TTL for a prefix, and why.
fn ttl_for(o: &Observation) -> (String, String) {
    const LADDER: &[(u64, &str)] = &[
        (60, "1m"),
        (300, "5m"),
        (900, "15m"),
        (3_600, "1h"),
        (21_600, "6h"),
        (86_400, "1d"),
        (604_800, "7d"),
        (2_592_000, "30d"),
    ];
    match o.longest_ttl_seconds {
        Some(seen) => {
            let ttl = LADDER
                .iter()
                .find(|(s, _)| *s >= seen)
                .map(|(_, t)| t.to_string())
                .unwrap_or_else(|| format!("{}d", seen.div_ceil(86_400)));
            (ttl, format!("its keys with a TTL had up to {seen} s"))
        }
        None if is_cache(&o.prefix) => (
            DEFAULT_CACHE_TTL.to_string(),
            "none had a TTL: the default for caches".to_string(),
        ),
        None => (
            DEFAULT_TTL.to_string(),
            "none had a TTL: the conservative default".to_string(),
        ),
    }
}

/// The proposals as configuration (TOML), one commented rule each, grouped by guard and,
/// within a guard, longer patterns first (the first matching rule applies, so a narrower
/// prefix must come before a wider one).
pub fn to_toml(proposals: &[Proposal], source: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Rules proposed by `respguard suggest` from {source}.\n\
         # respguard never applies them itself: review each, then copy it into the\n\
         # configuration. Every rule is in observe mode (it logs and counts what it would do,\n\
         # changing nothing); remove its `mode = \"observe\"` line to enforce it.\n"
    );
    if proposals.is_empty() {
        let _ = writeln!(out, "# Nothing to propose.");
        return out;
    }
    for guard in ["ttl", "size", "queue", "shed"] {
        let mut rules: Vec<&Proposal> = proposals.iter().filter(|p| p.guard() == guard).collect();
        rules.sort_by_key(|p| std::cmp::Reverse(p.pattern().len()));
        for p in rules {
            let (why, key, value) = p.setting();
            let _ = writeln!(
                out,
                "# {why}\n[[guards.{guard}.rules]]\npattern = {}\n{key} = {value}\nmode = \"observe\"\n",
                quote(p.pattern())
            );
        }
    }
    out
}

impl Proposal {
    fn guard(&self) -> &'static str {
        match self {
            Proposal::Ttl { .. } => "ttl",
            Proposal::Size { .. } => "size",
            Proposal::Queue { .. } => "queue",
            Proposal::Shed { .. } => "shed",
        }
    }

    /// The rule's key pattern.
    pub fn pattern(&self) -> &str {
        match self {
            Proposal::Ttl { pattern, .. }
            | Proposal::Size { pattern, .. }
            | Proposal::Queue { pattern, .. }
            | Proposal::Shed { pattern, .. } => pattern,
        }
    }

    /// The comment, the setting's key and its TOML value.
    fn setting(&self) -> (String, &'static str, String) {
        match self {
            Proposal::Ttl { ttl, why, .. } => (comment(why), "ttl", quote(ttl)),
            Proposal::Size { max_value, why, .. } => (
                comment(why),
                "max_value",
                quote(&ByteSize(*max_value).to_string()),
            ),
            Proposal::Queue { max_depth, why, .. } => {
                (comment(why), "max_depth", max_depth.to_string())
            }
            Proposal::Shed { priority, why, .. } => (comment(why), "priority", quote(priority)),
        }
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Text safe on one comment line (a key's control bytes shown escaped).
fn comment(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(prefix: &str, share: f64, longest: Option<u64>, largest: u64) -> Observation {
        Observation {
            prefix: prefix.into(),
            library: None,
            count: 1_000,
            share_without_ttl: share,
            longest_ttl_seconds: longest,
            largest_bytes: largest,
            summary: "seen".into(),
        }
    }

    fn ttls(proposals: &[Proposal]) -> Vec<(String, String)> {
        proposals
            .iter()
            .filter_map(|p| match p {
                Proposal::Ttl { pattern, ttl, .. } => Some((pattern.clone(), ttl.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ttls_go_to_prefixes_mostly_without_one_and_follow_what_was_seen() {
        let proposals = propose(&[
            seen("cache:user:*", 1.0, None, 0),
            seen("user:*:*", 0.95, Some(3_000), 0),
            seen("feed:*", 0.5, Some(30), 0),
            seen("huge:*", 0.9, Some(100 * 86_400), 0),
            seen("*", 1.0, None, 0),
            seen("*:*", 1.0, None, 0),
        ]);
        assert_eq!(
            ttls(&proposals),
            [
                ("cache:user:*".to_string(), DEFAULT_CACHE_TTL.to_string()),
                ("user:*:*".into(), "1h".into()),
                ("huge:*".into(), "100d".into()),
            ]
        );
    }

    #[test]
    fn job_library_keys_never_get_a_ttl_but_their_queues_get_alerts() {
        let mut rq = seen("rq:job:*", 1.0, None, 0);
        rq.library = Some("rq".into());
        // Known by its shape even when the report names no library.
        let sidekiq = seen("queue:*", 1.0, None, 5_000);
        let proposals = propose(&[rq, sidekiq]);
        assert!(ttls(&proposals).is_empty(), "{proposals:?}");
        let queues: Vec<_> = proposals
            .iter()
            .filter_map(|p| match p {
                Proposal::Queue { pattern, .. } => Some(pattern.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(queues, ["rq:queue:*", "queue:*"]);
        assert!(!proposals.iter().any(|p| matches!(p, Proposal::Size { .. })));
    }

    #[test]
    fn size_limits_leave_headroom_above_the_largest_value() {
        let proposals = propose(&[
            seen("blob:*", 0.0, Some(60), 300_000),
            seen("s:*", 0.0, None, 10),
        ]);
        let sizes: Vec<_> = proposals
            .iter()
            .filter_map(|p| match p {
                Proposal::Size { max_value, .. } => Some(*max_value),
                _ => None,
            })
            .collect();
        assert_eq!(sizes, [2 << 20, MIN_SIZE_LIMIT]);
        assert_eq!(MIN_SIZE_LIMIT, 65_536);
    }

    #[test]
    fn the_toml_parses_with_narrow_patterns_first_and_comments_on_one_line() {
        let proposals = propose(&[
            seen("cache:*", 1.0, None, 0),
            seen("cache:user:*", 1.0, None, 0),
            seen("odd\nkey:*", 1.0, None, 0),
        ]);
        let text = to_toml(&proposals, "a test");
        let value: toml::Value = toml::from_str(&text).expect("valid TOML");
        let rules = value["guards"]["ttl"]["rules"].as_array().unwrap();
        assert_eq!(rules[0]["pattern"].as_str(), Some("cache:user:*"));
        assert_eq!(rules[2]["pattern"].as_str(), Some("cache:*"));
        assert!(rules.iter().all(|r| r["mode"].as_str() == Some("observe")));
        assert!(text.contains("# odd\\nkey:*"), "{text}");
    }

    #[test]
    fn live_reports_become_observations() {
        let live = LiveReport {
            window_seconds: 60.0,
            prefixes: vec![crate::keyspace::report::PrefixActivity {
                prefix: "cache:*".into(),
                writes: 100,
                writes_per_second: 1.7,
                writes_without_ttl: 98,
                writes_with_ttl: 2,
                largest_value_bytes: 2_000,
                ..Default::default()
            }],
            ..Default::default()
        };
        let o = &observe_live(&live)[0];
        assert!((o.share_without_ttl - 0.98).abs() < 1e-9);
        assert!(o.summary.contains("98% without TTL"), "{}", o.summary);
        assert_eq!(o.largest_bytes, 2_000);
    }
}
