//! Job libraries' key shapes: which keys in a Redis belong to Sidekiq, Celery, RQ, BullMQ,
//! Dramatiq, Bee-Queue, Huey, taskiq or arq.
//!
//! A job library's keys are its own bookkeeping: queues, schedules, retry and dead sets,
//! job hashes, statistics. They must never be given a default TTL (a queue that expires
//! loses its jobs), so the audit marks them, the rule suggestions leave them alone, and the
//! TTL guard's catch-all rules do not cover them (`guard/ttl.rs`).
//! The names below are the libraries' defaults, read from their sources:
//!
//! - **Sidekiq**: `queues` (set of queue names), `queue:<name>` (lists), `schedule`,
//!   `retry`, `dead` (sorted sets), `processes` (set of process identities), `stat:*`
//!   counters (`stat:processed`, `stat:failed`, per day `stat:processed:<date>`), and the
//!   7.x metrics hashes `j|<date>|<hour>:<minute>`.
//! - **Celery** (kombu's Redis transport and result backend): the default queue `celery`
//!   and its priority lists `celery\x06\x16<n>`, everything under `_kombu.` (the
//!   `_kombu.binding.<exchange>` and `_kombu.binding_permanent.<exchange>` sets, the
//!   `_kombu.binding_deadlines` sorted set), the
//!   `unacked`, `unacked_index` and `unacked_mutex` keys, results in
//!   `celery-task-meta-<id>` and `celery-taskset-meta-<id>`.
//! - **RQ**: everything under `rq:` (`rq:queue:<q>`, `rq:job:<id>`, `rq:wip:<q>`,
//!   `rq:finished:<q>`, `rq:workers`, ...).
//! - **BullMQ** and **Bull**: everything under the default prefix `bull:`
//!   (`bull:<q>:wait`, `bull:<q>:<id>`, `bull:<q>:meta`, ...).
//! - **Dramatiq**: the namespace `dramatiq:` (`dramatiq:<q>`, `dramatiq:<q>.msgs`,
//!   `dramatiq:<q>.DQ`, `dramatiq:<q>.XQ`, `dramatiq:__heartbeats__`,
//!   `dramatiq:__acks__.<worker>.<q>`).
//! - **Bee-Queue**: the default prefix `bq:` (`bq:<q>:waiting`, `bq:<q>:jobs`, ...).
//! - **Huey**: `huey.redis.<name>` (queue), `huey.schedule.<name>`, `huey.results.<name>`,
//!   `huey.errors.<name>`.
//! - **taskiq** (taskiq-redis): the default queue `taskiq` (list or stream) and the stream
//!   broker's `autoclaim:taskiq:<stream>` locks.
//! - **arq**: everything under `arq:` (`arq:queue`, `arq:job:<id>`, `arq:in-progress:<id>`,
//!   `arq:retry:<id>`, `arq:result:<id>`, `arq:abort`).
//!
//! A library configured with another prefix or namespace is not recognised; its keys look
//! like an application's.

use std::sync::OnceLock;

use super::pattern::KeyPattern;

/// One job library's keys.
#[derive(Debug, Clone, Copy)]
pub struct Library {
    /// The library's name, lower case, as the reports print it.
    pub name: &'static str,
    /// The key patterns of everything it writes (Redis globs).
    pub patterns: &'static [&'static str],
    /// The lists it pushes jobs onto with LPUSH/RPUSH, which the queue guard can follow
    /// (empty for libraries that enqueue through scripts).
    pub queues: &'static [&'static str],
}

/// The libraries recognised, in the order they are tried.
pub const LIBRARIES: &[Library] = &[
    Library {
        name: "sidekiq",
        patterns: &[
            "queue:*",
            "queues",
            "schedule",
            "retry",
            "dead",
            "processes",
            "stat:*",
            "j|*",
        ],
        queues: &["queue:*"],
    },
    Library {
        name: "celery",
        patterns: &[
            "celery",
            "celery\x06\x16*",
            "celery-task-meta-*",
            "celery-taskset-meta-*",
            "_kombu.*",
            "unacked*",
        ],
        queues: &["celery", "celery\x06\x16*"],
    },
    Library {
        name: "rq",
        patterns: &["rq:*"],
        queues: &["rq:queue:*"],
    },
    Library {
        name: "bullmq",
        patterns: &["bull:*"],
        queues: &[],
    },
    Library {
        name: "dramatiq",
        patterns: &["dramatiq:*"],
        queues: &[],
    },
    Library {
        name: "bee-queue",
        patterns: &["bq:*"],
        queues: &[],
    },
    Library {
        name: "huey",
        patterns: &["huey.*"],
        queues: &["huey.redis.*"],
    },
    Library {
        name: "taskiq",
        patterns: &["taskiq", "autoclaim:taskiq:*"],
        queues: &["taskiq"],
    },
    Library {
        name: "arq",
        patterns: &["arq:*"],
        queues: &[],
    },
];

/// Every library pattern, grouped by its first byte: a key is tried only against the
/// patterns that can match its first byte (for `cache:…`, Celery's four), so the TTL guard
/// can ask on every write to a catch-all rule's keys. Every library pattern begins with a
/// literal byte (a test holds this).
struct Matcher {
    by_first_byte: Vec<Box<[(KeyPattern, &'static str)]>>,
}

/// The [`Matcher`], built on first use.
fn matcher() -> &'static Matcher {
    static MATCHER: OnceLock<Matcher> = OnceLock::new();
    MATCHER.get_or_init(|| {
        let mut by_first_byte: Vec<Vec<(KeyPattern, &'static str)>> = vec![Vec::new(); 256];
        for lib in LIBRARIES {
            for p in lib.patterns {
                if let Some(&first) = p.as_bytes().first() {
                    by_first_byte[usize::from(first)].push((KeyPattern::new(p), lib.name));
                }
            }
        }
        Matcher {
            by_first_byte: by_first_byte
                .into_iter()
                .map(Vec::into_boxed_slice)
                .collect(),
        }
    })
}

/// By byte: whether some library pattern begins with it. Computed at compile time, so
/// most keys (no library's first byte) are answered with one table look-up.
const FIRST_BYTES: [bool; 256] = first_bytes();

const fn first_bytes() -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < LIBRARIES.len() {
        let patterns = LIBRARIES[i].patterns;
        let mut j = 0;
        while j < patterns.len() {
            let p = patterns[j].as_bytes();
            if !p.is_empty() {
                table[p[0] as usize] = true;
            }
            j += 1;
        }
        i += 1;
    }
    table
}

/// The job library whose key shape `key` has, if any.
#[inline(always)]
pub fn library_of(key: &[u8]) -> Option<&'static str> {
    match key.first() {
        Some(&b) if FIRST_BYTES[usize::from(b)] => library_by_patterns(key),
        _ => None,
    }
}

/// [`library_of`] for a key whose first byte begins some library pattern.
#[inline(never)]
fn library_by_patterns(key: &[u8]) -> Option<&'static str> {
    let first = usize::from(*key.first()?);
    matcher().by_first_byte[first]
        .iter()
        .find(|(pattern, _)| pattern.matches(key))
        .map(|(_, name)| *name)
}

/// The library called `name`.
pub fn library(name: &str) -> Option<&'static Library> {
    LIBRARIES.iter().find(|l| l.name == name)
}

/// The libraries some of whose key shapes `pattern` (a rule's) matches, each with those
/// shapes: for the report of what a catch-all TTL rule leaves alone. A library pattern is
/// tried as text (`queue:*` as the key `queue:*`), so `*` covers every library and
/// `*:lock` none.
pub fn covered_by(pattern: &KeyPattern) -> Vec<(&'static str, Vec<&'static str>)> {
    LIBRARIES
        .iter()
        .filter_map(|lib| {
            let shapes: Vec<&'static str> = lib
                .patterns
                .iter()
                .copied()
                .filter(|p| pattern.matches(p.as_bytes()))
                .collect();
            (!shapes.is_empty()).then_some((lib.name, shapes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_library_s_keys_are_recognised() {
        let cases: &[(&[u8], &str)] = &[
            (b"queue:default", "sidekiq"),
            (b"queues", "sidekiq"),
            (b"schedule", "sidekiq"),
            (b"retry", "sidekiq"),
            (b"dead", "sidekiq"),
            (b"processes", "sidekiq"),
            (b"stat:processed", "sidekiq"),
            (b"stat:failed:2024-05-01", "sidekiq"),
            (b"j|20240501|12:5", "sidekiq"),
            (b"celery", "celery"),
            (b"celery\x06\x163", "celery"),
            (
                b"celery-task-meta-6f1c2a9e-7d4b-4c1e-9a3f-0b8e2d5c7a61",
                "celery",
            ),
            (b"_kombu.binding.celery", "celery"),
            (b"_kombu.binding_permanent.celery", "celery"),
            (b"_kombu.binding_deadlines", "celery"),
            (b"unacked", "celery"),
            (b"unacked_index", "celery"),
            (b"unacked_mutex", "celery"),
            (b"rq:job:6f1c2a9e", "rq"),
            (b"rq:queue:default", "rq"),
            (b"rq:wip:default", "rq"),
            (b"bull:emails:wait", "bullmq"),
            (b"bull:emails:42", "bullmq"),
            (b"dramatiq:default.msgs", "dramatiq"),
            (b"dramatiq:__heartbeats__", "dramatiq"),
            (b"bq:emails:waiting", "bee-queue"),
            (b"huey.redis.tasks", "huey"),
            (b"huey.schedule.tasks", "huey"),
            (b"taskiq", "taskiq"),
            (b"autoclaim:taskiq:taskiq", "taskiq"),
            (b"arq:queue", "arq"),
            (b"arq:job:6f1e", "arq"),
        ];
        for (key, want) in cases {
            assert_eq!(
                library_of(key),
                Some(*want),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn application_keys_belong_to_no_library() {
        for key in [
            &b"cache:user:1"[..],
            b"session:abc",
            b"queued",
            b"scheduler:lock",
            b"retry_count:1",
            b"celeryx",
            b"rqx:1",
            b"bullet:1",
            b"taskiq:results:1",
            b"arqueue",
            b"",
        ] {
            // `celeryx` starts like Celery's priority queues only with \x06\x16.
            assert_eq!(library_of(key), None, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn every_library_pattern_begins_with_a_literal_byte() {
        // The matcher dispatches on a key's first byte.
        for lib in LIBRARIES {
            for p in lib.patterns {
                let first = p.as_bytes().first().copied();
                assert!(
                    first.is_some_and(|b| !matches!(b, b'*' | b'?' | b'[' | b'\\')),
                    "{p}"
                );
            }
        }
    }

    #[test]
    fn a_catch_all_covers_every_library_and_a_narrow_glob_only_what_it_matches() {
        let all = covered_by(&KeyPattern::new("*"));
        let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
        let every: Vec<&str> = LIBRARIES.iter().map(|l| l.name).collect();
        assert_eq!(names, every);
        assert_eq!(all[0].1, LIBRARIES[0].patterns);
        assert!(covered_by(&KeyPattern::new("*:lock")).is_empty());
        let q = covered_by(&KeyPattern::new("b?:*"));
        assert_eq!(q, [("bee-queue", vec!["bq:*"])]);
    }

    #[test]
    fn a_library_s_queues_are_among_its_own_keys() {
        for lib in LIBRARIES {
            for queue in lib.queues {
                assert_eq!(library_of(queue.as_bytes()), Some(lib.name), "{queue}");
            }
            assert_eq!(library(lib.name).map(|l| l.name), Some(lib.name));
        }
    }
}
