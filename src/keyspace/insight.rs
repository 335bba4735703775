//! The live keyspace insight: per key prefix, what the proxy sees grow, and the hottest
//! keys, in fixed memory.
//!
//! [`crate::pipeline::judge`] hands the insight one command in `sample_rate`
//! ([`Insight::due`], a countdown per thread, so the fast path pays one thread-local
//! decrement), with the guards' verdict: the session and [`crate::offline::judge`] both go
//! through it. For each key of an observed command the insight counts, under the key's
//! prefix ([`PrefixRules::prefix_of`]), an operation, and for a write of a value (a
//! `denyoom` command writing the key) its bytes and largest value (the values the size
//! guard gives the key: [`crate::guard::size::values_by_key`]), whether the command gave
//! the key an expiry itself ([`OwnExpiry`], from the TTL guard), whether the TTL guard
//! gave it one (its verdict), or neither; for lists, sorted sets and streams (their ACL
//! categories in the command table) the elements pushed and those popped or removed (key
//! specifications flagged `DELETE`). Every key also counts in a second summary, of keys.
//!
//! Both summaries are [`TopK`]s: `max_prefixes` prefixes and four times `hot_keys` keys at
//! most, allocated when the insight is built. They sit behind one mutex, taken once per
//! observed command: with sampling, two cores and many sessions rarely meet there
//! (`docs/benchmarks.md`, "Keyspace insight cost").
//!
//! Counts are multiplied by `sample_rate`, so they estimate the traffic; with a rate of
//! 1 and fewer prefixes than the capacity they are exact. An operation count may overstate
//! by its `error_bound`; the other figures of a prefix count from when it last entered the
//! summary.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::command::{CommandInfo, CommandTable, Flags};
use crate::config::RawKeyspace;
use crate::guard::library::library_of;
use crate::guard::size::{values_by_key, KeyValues};
use crate::guard::ttl::OwnExpiry;
use crate::guard::{ByCommand, CommandView};
use crate::keyspace::prefix::{PrefixRules, MAX_PREFIX_LEN};
use crate::keyspace::report::{HotKey, LiveReport, PrefixActivity};
use crate::keyspace::topk::TopK;

/// Keys tracked per hot key reported: the top of a larger summary is accurate.
const KEYS_PER_HOT_KEY: usize = 4;

/// A prefix's figures besides its operation count (which is the summary's count).
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    writes: u64,
    bytes_written: u64,
    without_ttl: u64,
    with_ttl: u64,
    ttl_added: u64,
    largest: u64,
    pushes: u64,
    pops: u64,
}

/// The kind of collection a command works on, from its ACL category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Collection {
    #[default]
    None,
    List,
    SortedSet,
    Stream,
}

/// What the insight needs to know of a command, decided once per command id.
#[derive(Debug, Clone, Copy, Default)]
struct Kind {
    /// A write: its keys' values are measured.
    write: bool,
    /// A write that may grow memory (`denyoom`): its written keys count as writes.
    grows: bool,
    /// Every key it names is written.
    writes_every_key: bool,
    /// Whether it gives its key an expiry itself.
    expiry: OwnExpiry,
    collection: Collection,
    /// Some key specification removes elements.
    deletes: bool,
    /// Fixed arity: moves or inserts one element (LINSERT, LMOVE, RPOPLPUSH).
    fixed: bool,
    /// Pops one element from one of several keys, or takes a count only Redis reads
    /// (BLPOP, LMPOP).
    one_of_many: bool,
    /// `POP key [count]`: arity -2.
    counted_pop: bool,
}

impl Kind {
    fn of(info: &CommandInfo) -> Self {
        let f = info.flags;
        let collection = if f.contains(Flags::LIST) {
            Collection::List
        } else if f.contains(Flags::SORTEDSET) {
            Collection::SortedSet
        } else if f.contains(Flags::STREAM) {
            Collection::Stream
        } else {
            Collection::None
        };
        Kind {
            write: info.is_write(),
            grows: info.is_write() && f.contains(Flags::DENYOOM),
            writes_every_key: info.writes_every_key(),
            expiry: OwnExpiry::of(info),
            collection,
            deletes: info.deletes_elements(),
            fixed: info.arity > 0,
            one_of_many: f.contains(Flags::BLOCKING) || f.contains(Flags::MOVABLEKEYS),
            counted_pop: info.arity == -2,
        }
    }
}

/// What the guards did with an observed command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Refused or answered by the proxy: Redis never saw it, nothing was written.
    pub refused: bool,
    /// The TTL guard changed it to give its written keys their default expiry.
    pub ttl_added: bool,
}

thread_local! {
    /// Commands left before the next observed one, on this thread.
    static COUNTDOWN: Cell<u32> = const { Cell::new(0) };
}

/// The summaries and the buffers their updates use, behind the insight's mutex.
struct Tallies {
    prefixes: TopK<Figures>,
    keys: TopK<()>,
    /// The prefix being built (its capacity kept, and bounded: see [`Tallies::prefix`]).
    prefix: Vec<u8>,
    /// Written and emptied key positions of the command being observed.
    written: Vec<usize>,
    deleted: Vec<usize>,
    since: Instant,
}

/// The live keyspace insight (see the module documentation), shared by every session.
pub struct Insight {
    rules: PrefixRules,
    sample_rate: u32,
    hot_keys: usize,
    kinds: ByCommand<Kind>,
    tallies: Mutex<Tallies>,
}

impl std::fmt::Debug for Insight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Insight")
            .field("sample_rate", &self.sample_rate)
            .field("hot_keys", &self.hot_keys)
            .finish_non_exhaustive()
    }
}

impl Insight {
    /// The insight `[keyspace]` describes for the commands of `table`, or `None` when it
    /// is disabled. Every byte its summaries use is allocated here.
    pub fn build(raw: &RawKeyspace, table: &CommandTable) -> Option<Self> {
        if !raw.enabled {
            return None;
        }
        let rules = PrefixRules {
            separators: raw.separators.clone(),
            max_depth: raw.max_depth,
        };
        Some(Insight {
            rules,
            sample_rate: raw.sample_rate.max(1),
            hot_keys: raw.hot_keys,
            kinds: ByCommand::build(table, Kind::of),
            tallies: Mutex::new(Tallies {
                prefixes: TopK::new(raw.max_prefixes),
                keys: TopK::new(raw.hot_keys * KEYS_PER_HOT_KEY),
                prefix: Vec::with_capacity(2 * MAX_PREFIX_LEN),
                written: Vec::with_capacity(16),
                deleted: Vec::with_capacity(16),
                since: Instant::now(),
            }),
        })
    }

    /// Whether the next command is one to observe: one in `sample_rate`, counted down per
    /// thread (no shared counter to contend on).
    #[inline]
    pub fn due(&self) -> bool {
        COUNTDOWN.with(|left| match left.get() {
            0 => {
                left.set(self.sample_rate - 1);
                true
            }
            n => {
                left.set(n - 1);
                false
            }
        })
    }

    /// How many commands pass before the next observed one, on this thread: a run of
    /// commands that short is forwarded without asking [`Self::due`] for each, and
    /// [`Self::passed`] told how many went.
    #[inline]
    pub fn unobserved_ahead(&self) -> usize {
        COUNTDOWN.with(|left| left.get() as usize)
    }

    /// `n` commands passed unobserved (at most [`Self::unobserved_ahead`]), as `n` calls of
    /// [`Self::due`] answering false would have counted.
    #[inline]
    pub fn passed(&self, n: usize) {
        COUNTDOWN.with(|left| left.set(left.get().saturating_sub(n as u32)));
    }

    fn lock(&self) -> MutexGuard<'_, Tallies> {
        // The tallies stay consistent at every step: a panic elsewhere leaves them usable.
        self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count one observed command (`cmd`'s keys found) and what the guards did with it.
    pub fn observe(&self, cmd: &CommandView<'_>, outcome: Outcome) {
        if cmd.keys.is_empty() {
            return;
        }
        let kind = self.kinds.get(cmd.info);
        let weight = u64::from(self.sample_rate);
        let mut tallies = self.lock();
        let t = &mut *tallies;
        if !kind.write || outcome.refused {
            for &k in cmd.keys {
                if let Some(key) = cmd.arg(k) {
                    t.count(&self.rules, key, weight);
                }
            }
            return;
        }
        t.positions(cmd, kind);
        values_by_key(cmd, |n, values| {
            let k = cmd.keys[n];
            let Some(key) = cmd.arg(k) else { return };
            let written = kind.writes_every_key || t.written.contains(&k);
            let emptied = kind.deletes && t.deleted.contains(&k);
            let figures = t.count(&self.rules, key, weight);
            if kind.grows && written {
                let with_ttl = kind.expiry.given(cmd);
                record_write(figures, values, with_ttl, outcome.ttl_added, weight);
                if kind.collection != Collection::None {
                    figures.pushes += pushed(cmd, kind, k, values) * weight;
                }
            }
            if emptied {
                figures.pops += popped(cmd, kind, k, values) * weight;
            }
        });
    }

    /// The report: every prefix tracked, most operations first, and the hottest keys.
    pub fn report(&self) -> LiveReport {
        let t = self.lock();
        let window = t.since.elapsed().as_secs_f64();
        let per_second = |n: u64| if window > 0.0 { n as f64 / window } else { 0.0 };
        let prefixes = t
            .prefixes
            .ranked()
            .into_iter()
            .map(|e| {
                let f = e.value;
                let prefix = e.item.to_text();
                // A prefix is a pattern every key of its group matches; read as a key, it
                // has the shape of its library's keys.
                let library = library_of(prefix.as_bytes()).map(str::to_string);
                PrefixActivity {
                    prefix,
                    operations: e.count,
                    writes: f.writes,
                    writes_per_second: per_second(f.writes),
                    bytes_written: f.bytes_written,
                    writes_without_ttl: f.without_ttl,
                    writes_with_ttl: f.with_ttl,
                    ttl_added: f.ttl_added,
                    largest_value_bytes: f.largest,
                    pushes: f.pushes,
                    pops: f.pops,
                    error_bound: e.error,
                    library,
                }
            })
            .collect();
        let hot_keys = t
            .keys
            .ranked()
            .into_iter()
            .take(self.hot_keys)
            .map(|e| HotKey {
                key: e.item.to_text(),
                operations: e.count,
                error_bound: e.error,
            })
            .collect();
        LiveReport {
            window_seconds: window,
            sample_rate: self.sample_rate,
            prefix_capacity: t.prefixes.capacity(),
            tracked_prefixes: t.prefixes.len(),
            evicted_prefixes: t.prefixes.evicted(),
            prefixes,
            hot_keys,
        }
    }

    /// Forget everything counted; the window starts again.
    pub fn reset(&self) {
        let mut t = self.lock();
        t.prefixes.clear();
        t.keys.clear();
        t.since = Instant::now();
    }

    /// The bytes the insight holds, fixed when it is built whatever it observes.
    pub fn bytes(&self) -> usize {
        let t = self.lock();
        std::mem::size_of::<Self>()
            + t.prefixes.bytes()
            + t.keys.bytes()
            + t.prefix.capacity()
            + (t.written.capacity() + t.deleted.capacity()) * std::mem::size_of::<usize>()
    }
}

impl Tallies {
    /// Count one operation on `key`, under its prefix and as a key; its prefix's figures.
    fn count(&mut self, rules: &PrefixRules, key: &[u8], weight: u64) -> &mut Figures {
        self.keys.add(key, weight);
        rules.prefix_of(key, &mut self.prefix);
        let figures = self.prefixes.add(&self.prefix, weight);
        if self.prefix.capacity() > 8 * MAX_PREFIX_LEN {
            // A long key grew the buffer before its prefix was cut: give the memory back.
            self.prefix = Vec::with_capacity(2 * MAX_PREFIX_LEN);
        }
        figures
    }

    /// The positions of the keys `cmd` writes and of those it removes elements from.
    fn positions(&mut self, cmd: &CommandView<'_>, kind: Kind) {
        let arg = |i: usize| cmd.args.get(i).map(|r| &cmd.src[r.clone()]);
        self.written.clear();
        self.deleted.clear();
        if !kind.writes_every_key {
            cmd.info
                .written_key_positions_by(cmd.argc, arg, &mut self.written);
        }
        if kind.deletes {
            cmd.info
                .deleted_key_positions_by(cmd.argc, arg, &mut self.deleted);
        }
        for v in [&mut self.written, &mut self.deleted] {
            if v.capacity() > 1024 {
                // A command with thousands of keys: keep the buffers small afterwards.
                v.shrink_to(1024);
            }
        }
    }
}

/// Count a write of `values` in `figures`.
fn record_write(f: &mut Figures, values: KeyValues, with_ttl: bool, added: bool, weight: u64) {
    f.writes += weight;
    f.bytes_written += values.bytes * weight;
    f.largest = f.largest.max(values.largest);
    if with_ttl {
        f.with_ttl += weight;
    } else if added {
        f.ttl_added += weight;
    } else {
        f.without_ttl += weight;
    }
}

/// Elements a write adds to the collection at argument `k`: one for a fixed-arity command
/// (LINSERT, LMOVE's destination) or a stream entry; each value for a list push; each
/// score and member pair, after the options, for a sorted set.
fn pushed(cmd: &CommandView<'_>, kind: Kind, k: usize, values: KeyValues) -> u64 {
    match kind.collection {
        _ if kind.fixed => 1,
        Collection::Stream => 1,
        Collection::List => values.count,
        Collection::SortedSet => {
            let options = (k + 1..cmd.args.len())
                .take_while(|&i| cmd.arg(i).is_some_and(is_option_word))
                .count() as u64;
            values.count.saturating_sub(options) / 2
        }
        Collection::None => 0,
    }
}

/// Elements a command removes from the collection at argument `k`: its count for
/// `POP key [count]`, each value for a removal of members (ZREM, XDEL), one otherwise (a
/// blocking pop, a move, a trim or range removal, whose size only Redis knows).
fn popped(cmd: &CommandView<'_>, kind: Kind, k: usize, values: KeyValues) -> u64 {
    // DEL, UNLINK, GETDEL remove whole keys of any type, not elements of a collection.
    if kind.collection == Collection::None {
        return 0;
    }
    if kind.fixed || kind.one_of_many {
        return 1;
    }
    if kind.counted_pop {
        return cmd
            .arg(k + 1)
            .and_then(crate::scanner::request::parse_int)
            .map_or(1, |n| n.max(0) as u64);
    }
    match kind.collection {
        Collection::Stream if cmd.info.name.as_ref() != "xdel" => 1,
        _ => values.count.max(1),
    }
}

/// A ZADD option (NX, XX, GT, LT, CH, INCR): a word that is not a number.
fn is_option_word(arg: &[u8]) -> bool {
    !arg.is_empty() && arg.iter().all(u8::is_ascii_alphabetic) && !arg.eq_ignore_ascii_case(b"inf")
}

/// The top prefixes as Prometheus gauges, appended to `out` in the text format: at most
/// `limit` prefixes, and only grouped ones (ending in `*`), so a key name never becomes a
/// label and the label set stays bounded.
pub fn render_keyspace_metrics(report: &LiveReport, limit: usize, out: &mut String) {
    use std::fmt::Write;
    let shown: Vec<&PrefixActivity> = report
        .prefixes
        .iter()
        .filter(|p| p.prefix.ends_with('*'))
        .take(limit)
        .collect();
    type Field = fn(&PrefixActivity) -> f64;
    let families: [(&str, &str, Field); 7] = [
        (
            "operations",
            "Commands on keys of the prefix (estimated, scaled by the sample rate)",
            |p| p.operations as f64,
        ),
        ("writes", "Writes of values to keys of the prefix", |p| {
            p.writes as f64
        }),
        (
            "bytes_written",
            "Bytes of values written to keys of the prefix",
            |p| p.bytes_written as f64,
        ),
        (
            "writes_without_ttl",
            "Writes that left a key of the prefix without an expiry",
            |p| p.writes_without_ttl as f64,
        ),
        (
            "ttl_added",
            "Writes the TTL guard gave a default expiry",
            |p| p.ttl_added as f64,
        ),
        (
            "pushes",
            "Elements pushed onto lists, sorted sets and streams of the prefix",
            |p| p.pushes as f64,
        ),
        (
            "pops",
            "Elements popped or removed from lists, sorted sets and streams of the prefix",
            |p| p.pops as f64,
        ),
    ];
    for (name, help, field) in families {
        let _ = writeln!(out, "# HELP respguard_keyspace_{name} {help}.");
        let _ = writeln!(out, "# TYPE respguard_keyspace_{name} gauge");
        for p in &shown {
            let label = p
                .prefix
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(
                out,
                "respguard_keyspace_{name}{{prefix=\"{label}\"}} {}",
                field(p)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP respguard_keyspace_tracked_prefixes Key prefixes the insight tracks now."
    );
    let _ = writeln!(out, "# TYPE respguard_keyspace_tracked_prefixes gauge");
    let _ = writeln!(
        out,
        "respguard_keyspace_tracked_prefixes {}",
        report.tracked_prefixes
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;
    use crate::guard::{GuardContext, Guards};
    use crate::identity::ClientIdentity;
    use crate::scanner::request::Limits;

    fn setup(toml: &str) -> (Insight, Guards, CommandTable) {
        let raw = RawConfig::from_toml(toml).unwrap();
        let table = CommandTable::builtin();
        let guards = Guards::build(&raw.guards, &table, &GuardContext::new(&raw.guards)).unwrap();
        let insight = Insight::build(&raw.keyspace, &table).unwrap();
        (insight, guards, table)
    }

    fn run(insight: &Insight, guards: &Guards, table: &CommandTable, input: &[u8]) {
        let client = ClientIdentity::new("127.0.0.1:1".parse().unwrap());
        crate::offline::judge_observed(
            guards,
            table,
            Limits::default(),
            &client,
            input,
            Some(insight),
        )
        .unwrap();
    }

    fn prefix<'r>(report: &'r LiveReport, name: &str) -> &'r PrefixActivity {
        report
            .prefixes
            .iter()
            .find(|p| p.prefix == name)
            .unwrap_or_else(|| panic!("{name} not in {report:#?}"))
    }

    #[test]
    fn a_known_workload_gives_exact_figures() {
        let (insight, guards, table) = setup(
            r#"
            [keyspace]
            sample_rate = 1
            [[guards.ttl.rules]]
            pattern = "cache:*"
            ttl = "1h"
            [[guards.size.rules]]
            pattern = "blob:*"
            max_value = "4B"
            "#,
        );
        let input = b"SET cache:user:1 hello\r\n\
SET cache:user:2 abc EX 100\r\n\
SETEX cache:user:3 100 abcdefgh\r\n\
SET session:9f8e7d6c5b4a 0123456789\r\n\
HSET cache:user:1:profile name ann\r\n\
RPUSH queue:jobs a b c\r\n\
LPOP queue:jobs\r\n\
LPOP queue:jobs 2\r\n\
LMOVE queue:jobs queue:done LEFT RIGHT\r\n\
ZADD board NX 1 a 2 b\r\n\
ZREM board a\r\n\
XADD stream:events * f v\r\n\
SET blob:1 toolarge\r\n\
GET cache:user:1\r\nGET cache:user:1\r\nGET cache:user:1\r\n\
UNLINK old:2 7 old:3\r\nGETDEL old:4\r\n";
        run(&insight, &guards, &table, input);
        let r = insight.report();
        assert_eq!((r.sample_rate, r.evicted_prefixes), (1, 0));
        let cache = prefix(&r, "cache:user:*");
        assert_eq!(cache.operations, 6);
        assert_eq!(cache.writes, 3);
        assert_eq!(
            (
                cache.ttl_added,
                cache.writes_with_ttl,
                cache.writes_without_ttl
            ),
            (1, 2, 0)
        );
        // Values as the size guard counts them: options (EX 100) and the seconds of SETEX.
        assert_eq!(cache.bytes_written, 5 + (3 + 2 + 3) + (3 + 8));
        assert_eq!(cache.largest_value_bytes, 8);
        let profile = prefix(&r, "cache:user:*:*");
        assert_eq!(
            (profile.writes, profile.ttl_added, profile.bytes_written),
            (1, 1, 7)
        );
        let session = prefix(&r, "session:*");
        assert_eq!((session.writes, session.writes_without_ttl), (1, 1));
        let queue = prefix(&r, "queue:*");
        // RPUSH 3, LPOP, LPOP 2, LMOVE (pop from jobs, push onto done).
        assert_eq!(queue.operations, 5);
        assert_eq!((queue.pushes, queue.pops), (4, 4));
        let board = prefix(&r, "board");
        assert_eq!((board.pushes, board.pops), (2, 1));
        assert_eq!(prefix(&r, "stream:*").pushes, 1);
        // Deleting whole keys is not popping: `7`, a key here, is no count either.
        let old = prefix(&r, "old:*");
        assert_eq!((old.operations, old.pops), (3, 0));
        assert_eq!(prefix(&r, "*").pops, 0);
        // A refused write is an operation, not a write.
        let blob = prefix(&r, "blob:*");
        assert_eq!((blob.operations, blob.writes), (1, 0));
        assert_eq!(r.hot_keys[0].key, "cache:user:1");
        assert_eq!(
            (r.hot_keys[0].operations, r.hot_keys[0].error_bound),
            (4, 0)
        );
        insight.reset();
        let r = insight.report();
        assert!(r.prefixes.is_empty() && r.hot_keys.is_empty());
    }

    #[test]
    fn sampled_counts_are_scaled() {
        let (insight, guards, table) = setup("[keyspace]\nsample_rate = 4\n");
        COUNTDOWN.with(|c| c.set(0));
        let input = b"GET a:1\r\n".repeat(400);
        run(&insight, &guards, &table, &input);
        let r = insight.report();
        assert_eq!(prefix(&r, "a:*").operations, 400);
    }

    #[test]
    fn a_run_passed_at_once_counts_down_as_commands_asked_one_by_one() {
        let (insight, _, _) = setup("[keyspace]\nsample_rate = 5\n");
        let one_by_one = |n: usize| {
            COUNTDOWN.with(|c| c.set(0));
            (0..n).map(|_| insight.due()).collect::<Vec<_>>()
        };
        for run in 0..=4 {
            // Asked once (due), then `run` commands passed at once, then asked again.
            COUNTDOWN.with(|c| c.set(0));
            assert!(insight.due());
            assert_eq!(insight.unobserved_ahead(), 4);
            insight.passed(run);
            let next: Vec<bool> = (0..6).map(|_| insight.due()).collect();
            assert_eq!(next, one_by_one(1 + run + 6)[1 + run..], "run of {run}");
        }
    }

    #[test]
    fn a_million_keys_in_100000_prefixes_stay_within_the_bounds() {
        let (insight, guards, table) =
            setup("[keyspace]\nsample_rate = 1\nmax_prefixes = 1024\nhot_keys = 32\n");
        let bytes = insight.bytes();
        let mut input = Vec::new();
        for i in 0..1_000_000u32 {
            input.extend_from_slice(format!("SET p{}:x:{i} v\r\n", i % 100_000).as_bytes());
            if input.len() > 1 << 20 {
                run(&insight, &guards, &table, &input);
                input.clear();
            }
        }
        run(&insight, &guards, &table, &input);
        let r = insight.report();
        assert_eq!(r.tracked_prefixes, 1024);
        assert_eq!(r.prefixes.len(), 1024);
        assert_eq!(r.hot_keys.len(), 32);
        // The prefixes come round in turn, so each command after the first 1,024 evicts.
        assert_eq!(r.evicted_prefixes, 1_000_000 - 1024);
        assert_eq!(insight.bytes(), bytes);
        // About 250 bytes a prefix and 180 a key slot: well under 400 KiB in all.
        assert!(bytes < 400 * 1024, "{bytes}");
        // Space-saving's invariant: the counts add up to every operation seen.
        let total: u64 = r.prefixes.iter().map(|p| p.operations).sum();
        assert_eq!(total, 1_000_000);
    }

    #[test]
    fn metrics_name_grouped_prefixes_only_and_at_most_the_limit() {
        let (insight, guards, table) = setup("[keyspace]\nsample_rate = 1\n");
        let mut input = Vec::new();
        for i in 0..50 {
            input
                .extend_from_slice(format!("SET group{i}:1 v\r\nSET counter{i}x v\r\n").as_bytes());
        }
        run(&insight, &guards, &table, &input);
        let mut out = String::new();
        render_keyspace_metrics(&insight.report(), 20, &mut out);
        let labelled: Vec<_> = out
            .lines()
            .filter(|l| l.starts_with("respguard_keyspace_operations{"))
            .collect();
        assert_eq!(labelled.len(), 20);
        assert!(!out.contains("counter"), "a key name became a label");
        assert!(out.contains("respguard_keyspace_tracked_prefixes 100"));
    }
}
