//! The queue guard: the depth of job queues, read from the replies Redis already sends, and
//! enqueues refused once a queue is past its configured depth.
//!
//! LPUSH, RPUSH, LPUSHX and RPUSHX answer with the list's new length. For a key matching a
//! queue rule, the guard lets the push through and watches its reply with a
//! [`ReplyWatch`] on the queue's [`TrackedQueue`]; the session carries it with the command's
//! place in the reply queue, and the reply's integer becomes the queue's depth: no extra
//! command, two relaxed atomic stores. Pushes inside MULTI are
//! not followed (their replies arrive inside EXEC's array). Each thread keeps the queue it
//! pushed to last, so a producer's pushes to one queue find its entry without the map.
//!
//! Job libraries keep more than lists: delayed, scheduled, retry, dead, completed and failed
//! jobs live in sorted sets, and some queues are streams. ZADD and XADD replies do not say
//! the new size, and a script (EVAL, EVALSHA, FCALL) that moves a job into a set says nothing
//! of it either, but the keys it declares are known: such a write marks the queue stale and
//! the monitor reads its size (`ZCARD`, `XLEN`, or `TYPE` first for a key only scripts have
//! written) at its next poll, so a set of finished jobs that grows forever shows in
//! `respguard_queue_depth`. ZADD and XADD past `max_depth` are refused like pushes; a script
//! never is, since the same script may be a worker's fetch or completion, and refusing it
//! would stop the workers that drain the queue.
//!
//! Workers drain queues with pops and blocking pops whose replies do not say the length, so
//! a depth is as of the last push. The memory monitor reads it again with `LLEN` for queues
//! at their limit (every poll, so a drained queue accepts enqueues again) and for queues not
//! pushed to for `guards.queue.refresh_after` (so a dashboard does not show a drained
//! backlog forever), and stops following queues that are empty and idle.
//!
//! Bounds: at most `guards.queue.max_tracked_queues` queues are followed; pushes to more
//! queues are counted in `respguard_queue_untracked_pushes_total` and not followed. One
//! entry holds its key twice (map key and entry) plus about 110 bytes: a 24-byte map slot,
//! the 72-byte shared entry (allocated as 80), and a copy of the rule's name.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use metrics::Counter;
use rustc_hash::FxBuildHasher;

use super::by_command::ByCommand;
use super::pattern::same_key;
use super::phase::Guard;
use super::rule::{first_rule, printable_key, Action, Mode, Rule, RuleKind, RuleSpec};
use super::verdict::{CommandView, Verdict};
use super::watch::{ReplyWatch, ReplyWatcher};
use crate::clock::Clock;
use crate::command::{CommandInfo, CommandTable};
use crate::config::RawQueueGuard;
use crate::identity::ClientIdentity;
use crate::scanner::reply::ReplyInfo;

/// How a followed queue is stored, hence how its depth is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum QueueKind {
    /// Only scripts have written it so far: `TYPE` tells.
    Unknown = 0,
    /// A list: push replies give its length; `LLEN`.
    List = 1,
    /// A sorted set: `ZCARD`.
    SortedSet = 2,
    /// A stream: `XLEN`.
    Stream = 3,
    /// Some other type (a hash, a string...): not a queue, no longer read.
    NotAQueue = 4,
}

impl QueueKind {
    fn from_u8(v: u8) -> QueueKind {
        match v {
            1 => QueueKind::List,
            2 => QueueKind::SortedSet,
            3 => QueueKind::Stream,
            4 => QueueKind::NotAQueue,
            _ => QueueKind::Unknown,
        }
    }

    /// The kind a `TYPE` reply's name says (`None` for `none`: the key does not exist).
    pub fn of_type_name(name: &[u8]) -> Option<QueueKind> {
        match name {
            b"none" => None,
            b"list" => Some(QueueKind::List),
            b"zset" => Some(QueueKind::SortedSet),
            b"stream" => Some(QueueKind::Stream),
            _ => Some(QueueKind::NotAQueue),
        }
    }

    /// The command the monitor sends for a queue of this kind: its size, or its type.
    pub fn refresh_command(self) -> &'static [u8] {
        match self {
            QueueKind::List => b"LLEN",
            QueueKind::SortedSet => b"ZCARD",
            QueueKind::Stream => b"XLEN",
            QueueKind::Unknown | QueueKind::NotAQueue => b"TYPE",
        }
    }
}

/// What a command the queue guard wants writes to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum QueueWrite {
    /// Not a queue write.
    #[default]
    None,
    /// LPUSH, RPUSH, LPUSHX, RPUSHX: the reply is the new length.
    Push,
    /// ZADD.
    SortedSetAdd,
    /// XADD.
    StreamAdd,
    /// EVAL, EVALSHA, FCALL: may write any key it declares.
    Script,
}

impl QueueWrite {
    fn of(info: &CommandInfo) -> QueueWrite {
        match &*info.name {
            "lpush" | "rpush" | "lpushx" | "rpushx" => QueueWrite::Push,
            "zadd" => QueueWrite::SortedSetAdd,
            "xadd" => QueueWrite::StreamAdd,
            "eval" | "evalsha" | "fcall" => QueueWrite::Script,
            _ => QueueWrite::None,
        }
    }

    /// The kind of key the write tells (a script's keys may be of any).
    fn kind(self) -> QueueKind {
        match self {
            QueueWrite::Push => QueueKind::List,
            QueueWrite::SortedSetAdd => QueueKind::SortedSet,
            QueueWrite::StreamAdd => QueueKind::Stream,
            QueueWrite::Script | QueueWrite::None => QueueKind::Unknown,
        }
    }
}

/// One queue being followed.
#[derive(Debug)]
pub struct TrackedQueue {
    /// The queue's key.
    pub key: Box<[u8]>,
    /// The rule it matched, as named in metrics.
    pub rule: Arc<str>,
    depth: AtomicU64,
    /// A push reply arrived since the monitor last looked (a store, not a clock read).
    pushed: AtomicBool,
    /// Milliseconds since the registry started when the monitor last saw a push or read the
    /// depth; written by the monitor only.
    seen_ms: AtomicU64,
    /// An enqueue was refused because of this queue's depth: refresh it every poll.
    at_limit: AtomicBool,
    /// No longer followed: removed from its registry (a push tracks the queue anew).
    forgotten: AtomicBool,
    /// A [`QueueKind`], as its `u8`.
    kind: AtomicU8,
    /// Written by a command whose reply does not tell the depth: the monitor reads it at
    /// its next poll.
    stale: AtomicBool,
}

impl TrackedQueue {
    /// The depth as of the last push reply or refresh.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Whether an enqueue was refused at this depth and the monitor refreshes it.
    pub fn is_at_limit(&self) -> bool {
        self.at_limit.load(Ordering::Relaxed)
    }

    /// How the queue is stored, as far as known.
    pub fn kind(&self) -> QueueKind {
        QueueKind::from_u8(self.kind.load(Ordering::Relaxed))
    }

    /// Learn the queue's kind from a write that tells it (a script's does not).
    #[inline]
    fn learn(&self, kind: QueueKind) {
        if kind != QueueKind::Unknown && self.kind() != kind {
            self.kind.store(kind as u8, Ordering::Relaxed);
        }
    }

    /// A write whose reply does not say the depth: the monitor reads it at its next poll.
    #[inline]
    fn written(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    /// Record the length a push reply reported: two relaxed stores.
    #[inline]
    fn record(&self, depth: i64) {
        self.depth.store(depth.max(0) as u64, Ordering::Relaxed);
        self.pushed.store(true, Ordering::Relaxed);
    }
}

/// A push's reply, watched: its integer is the queue's new depth.
impl ReplyWatcher for TrackedQueue {
    #[inline]
    fn on_reply(&self, reply: &ReplyInfo) {
        if let Some(depth) = reply.last_int {
            self.record(depth);
        }
    }
}

/// Every followed queue, shared by the sessions (which record depths) and the monitor (which
/// refreshes them and exports gauges).
pub struct QueueDepths {
    /// Tells this registry's entries in a thread's [`LAST_PUSHED`] from another's.
    id: u64,
    map: DashMap<Box<[u8]>, Arc<TrackedQueue>, FxBuildHasher>,
    max: usize,
    refresh_after: Duration,
    clock: Clock,
    untracked: Counter,
}

impl fmt::Debug for QueueDepths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueDepths")
            .field("tracked", &self.map.len())
            .field("max", &self.max)
            .finish()
    }
}

/// Registries made so far, for their ids.
static REGISTRIES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The queue this thread's sessions pushed to last, with its registry's id: the next push
    /// to it, the common case of a producer, finds it without hashing its key and locking a
    /// shard of the map. Never an entry its registry has forgotten.
    static LAST_PUSHED: RefCell<Option<(u64, Arc<TrackedQueue>)>> = const { RefCell::new(None) };
}

impl QueueDepths {
    /// An empty registry following at most `max` queues.
    pub fn new(max: usize, refresh_after: Duration) -> Self {
        QueueDepths {
            id: REGISTRIES.fetch_add(1, Ordering::Relaxed),
            map: DashMap::with_hasher(FxBuildHasher),
            max,
            refresh_after,
            clock: Clock::start(),
            untracked: metrics::counter!("respguard_queue_untracked_pushes_total"),
        }
    }

    /// From `[guards.queue]`.
    pub fn from_config(raw: &RawQueueGuard) -> Self {
        QueueDepths::new(raw.max_tracked_queues, raw.refresh_after.0)
    }

    fn now_ms(&self) -> u64 {
        self.clock.millis()
    }

    /// Queues followed now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no queue is followed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The queue's entry, if followed.
    pub fn get(&self, key: &[u8]) -> Option<Arc<TrackedQueue>> {
        self.map.get(key).map(|e| Arc::clone(e.value()))
    }

    /// The queue's entry, created if there is room (one allocation per new queue): the
    /// thread's last pushed queue if it is this one (found inline, in the check), else from
    /// the map (and then the thread's last pushed queue).
    #[inline(always)]
    fn get_or_track(&self, key: &[u8], rule: &str) -> Option<Arc<TrackedQueue>> {
        let last = LAST_PUSHED.with_borrow(|last| match last {
            Some((id, q))
                if *id == self.id
                    && same_key(&q.key, key)
                    && !q.forgotten.load(Ordering::Relaxed) =>
            {
                Some(Arc::clone(q))
            }
            _ => None,
        });
        if last.is_some() {
            return last;
        }
        self.track_last(key, rule)
    }

    /// The rest of [`QueueDepths::get_or_track`]: the entry from the map, remembered as the
    /// thread's last pushed queue.
    #[inline(never)]
    fn track_last(&self, key: &[u8], rule: &str) -> Option<Arc<TrackedQueue>> {
        let q = self.find_or_track(key, rule)?;
        LAST_PUSHED.set(Some((self.id, Arc::clone(&q))));
        Some(q)
    }

    /// The queue's entry from the map, created if there is room.
    fn find_or_track(&self, key: &[u8], rule: &str) -> Option<Arc<TrackedQueue>> {
        if let Some(e) = self.map.get(key) {
            return Some(Arc::clone(e.value()));
        }
        if self.map.len() >= self.max {
            self.untracked.increment(1);
            return None;
        }
        let entry = self
            .map
            .entry(key.into())
            .or_insert_with(|| {
                Arc::new(TrackedQueue {
                    key: key.into(),
                    rule: rule.into(),
                    depth: AtomicU64::new(0),
                    pushed: AtomicBool::new(false),
                    seen_ms: AtomicU64::new(self.now_ms()),
                    at_limit: AtomicBool::new(false),
                    forgotten: AtomicBool::new(false),
                    kind: AtomicU8::new(QueueKind::Unknown as u8),
                    stale: AtomicBool::new(false),
                })
            })
            .value()
            .clone();
        Some(entry)
    }

    /// Queues whose depth the monitor should read again now (at most `limit`): those at
    /// their limit or written without a depth in the reply, then those not updated for
    /// `refresh_after`.
    pub fn due_for_refresh(&self, limit: usize) -> Vec<Arc<TrackedQueue>> {
        let now = self.now_ms();
        let stale = self.refresh_after.as_millis() as u64;
        let mut at_limit = Vec::new();
        let mut idle = Vec::new();
        for e in self.map.iter() {
            let q = e.value();
            if q.pushed.swap(false, Ordering::Relaxed) {
                q.seen_ms.store(now, Ordering::Relaxed);
            }
            // A key found not to be a queue is only looked at again when idle, to forget it
            // once it is gone.
            let written =
                q.stale.swap(false, Ordering::Relaxed) && q.kind() != QueueKind::NotAQueue;
            if written {
                q.seen_ms.store(now, Ordering::Relaxed);
            }
            if q.is_at_limit() || written {
                at_limit.push(Arc::clone(q));
            } else if now.saturating_sub(q.seen_ms.load(Ordering::Relaxed)) >= stale {
                idle.push(Arc::clone(q));
            }
        }
        at_limit.extend(idle);
        at_limit.truncate(limit);
        at_limit
    }

    /// Record what `TYPE` said of a queue only scripts had written: its kind, read at the
    /// next poll; `None` (no such key) is a depth of 0.
    pub fn typed(&self, q: &Arc<TrackedQueue>, kind: Option<QueueKind>) {
        match kind {
            None => self.refreshed(q, 0),
            Some(kind) => {
                q.seen_ms.store(self.now_ms(), Ordering::Relaxed);
                q.kind.store(kind as u8, Ordering::Relaxed);
                if kind == QueueKind::NotAQueue {
                    q.depth.store(0, Ordering::Relaxed);
                } else {
                    q.stale.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Record a depth read with `LLEN`, `ZCARD` or `XLEN`. An idle queue found empty is no
    /// longer followed.
    pub fn refreshed(&self, q: &Arc<TrackedQueue>, depth: u64) {
        let now = self.now_ms();
        // A push reply since the refresh was sent is newer than this depth.
        if q.pushed.load(Ordering::Relaxed) {
            return;
        }
        let idle = now.saturating_sub(q.seen_ms.load(Ordering::Relaxed))
            >= self.refresh_after.as_millis() as u64;
        q.depth.store(depth, Ordering::Relaxed);
        q.seen_ms.store(now, Ordering::Relaxed);
        if depth == 0 && idle && !q.is_at_limit() {
            // Flagged as it leaves the map: a thread's last pushed queue is passed over from
            // then on. A push racing the removal records into the forgotten entry, as one
            // that found it in the map just before always could.
            self.map.remove_if(&q.key, |_, v| {
                let gone = Arc::ptr_eq(v, q);
                if gone {
                    q.forgotten.store(true, Ordering::Relaxed);
                }
                gone
            });
        }
    }

    /// The deepest followed queue of each rule, for the depth gauges.
    pub fn deepest_by_rule(&self) -> Vec<(Arc<str>, u64)> {
        let mut out: Vec<(Arc<str>, u64)> = Vec::new();
        for e in self.map.iter() {
            let q = e.value();
            match out.iter_mut().find(|(r, _)| *r == q.rule) {
                Some((_, d)) => *d = (*d).max(q.depth()),
                None => out.push((Arc::clone(&q.rule), q.depth())),
            }
        }
        out
    }
}

/// A queue rule's settings.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Enqueues to a queue this deep are refused.
    pub max_depth: Option<u64>,
}

/// The queue guard.
#[derive(Debug)]
pub struct QueueGuard {
    rules: Vec<Rule<QueueLimits>>,
    depths: Arc<QueueDepths>,
    /// By command id: how it writes to a queue.
    writes: ByCommand<QueueWrite>,
}

const ACTIONS: &[Action] = &[Action::Refuse];

impl QueueGuard {
    /// Build from `[guards.queue]`, recording depths in `depths` and knowing the queue
    /// writes of `table` by id.
    pub fn build(
        raw: &RawQueueGuard,
        default_mode: Mode,
        logs_per_second: u32,
        depths: Arc<QueueDepths>,
        table: &CommandTable,
    ) -> Self {
        let kind = RuleKind {
            guard: "queue",
            actions: ACTIONS,
            default_mode,
            logs_per_second,
        };
        let rules = raw
            .rules
            .iter()
            .map(|r| {
                let limits = QueueLimits {
                    max_depth: r.max_depth,
                };
                Rule::new(kind, RuleSpec::new(&r.pattern, &r.clients, r.mode), limits)
            })
            .collect();
        QueueGuard {
            rules,
            depths,
            writes: ByCommand::build(table, QueueWrite::of),
        }
    }

    /// A script's declared keys that match a queue rule are followed, never refused.
    fn follow_script_keys(&self, cmd: &CommandView<'_>, client: &ClientIdentity) {
        for &i in cmd.keys {
            let Some(key) = cmd.arg(i) else { continue };
            let Some(rule) = first_rule(&self.rules, key, client) else {
                continue;
            };
            if let Some(q) = self.depths.get_or_track(key, &rule.name) {
                if q.kind() != QueueKind::NotAQueue {
                    q.written();
                }
            }
        }
    }

    /// Follow a write that is let through: a push by its reply, anything else by the
    /// monitor's next read.
    fn follow(write: QueueWrite, q: Arc<TrackedQueue>, cmd: &CommandView<'_>) {
        if write == QueueWrite::Push {
            cmd.watch_reply(ReplyWatch::new(q));
        } else {
            q.written();
        }
    }
}

impl Guard for QueueGuard {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn wants(&self, info: &CommandInfo) -> bool {
        QueueWrite::of(info) != QueueWrite::None
    }

    fn check(&self, cmd: &CommandView<'_>, client: &ClientIdentity, _: &mut BytesMut) -> Verdict {
        let write = self.writes.get(cmd.info);
        if write == QueueWrite::Script {
            self.follow_script_keys(cmd, client);
            return Verdict::Forward;
        }
        let Some(key) = cmd.keys.first().and_then(|&i| cmd.arg(i)) else {
            return Verdict::Forward;
        };
        let Some(rule) = first_rule(&self.rules, key, client) else {
            return Verdict::Forward;
        };
        // Pushes inside MULTI are answered QUEUED: their lengths arrive inside EXEC's array.
        let Some(q) = self.depths.get_or_track(key, &rule.name) else {
            return Verdict::Forward;
        };
        q.learn(write.kind());
        let depth = q.depth();
        let Some(max) = rule.limits.max_depth.filter(|&max| depth >= max) else {
            if q.is_at_limit() {
                q.at_limit.store(false, Ordering::Relaxed);
            }
            Self::follow(write, q, cmd);
            return Verdict::Forward;
        };
        q.at_limit.store(true, Ordering::Relaxed);
        let message = format!(
            "ERR respguard: queue '{}' holds {depth} jobs, at the max_depth of {max} of queue rule '{}'; enqueue refused until workers drain it",
            printable_key(key),
            rule.name
        );
        let verdict = rule.refusal(
            Action::Refuse,
            client,
            &cmd.info.name,
            &message,
            Verdict::Forward,
        );
        if verdict == Verdict::Forward {
            // Observed, not enforced: the write goes through and its depth is followed.
            Self::follow(write, q, cmd);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_stops_at_its_bound() {
        let d = QueueDepths::new(3, Duration::from_secs(10));
        for i in 0..10 {
            let key = format!("q:{i}");
            let tracked = d.get_or_track(key.as_bytes(), "q:*");
            assert_eq!(tracked.is_some(), i < 3, "{key}");
        }
        assert_eq!(d.len(), 3);
        // A followed queue is still found when the registry is full.
        assert!(d.get_or_track(b"q:1", "q:*").is_some());
    }

    #[test]
    fn idle_empty_queues_are_forgotten_on_refresh() {
        let d = Arc::new(QueueDepths::new(10, Duration::ZERO));
        let q = d.get_or_track(b"q", "q*").unwrap();
        q.record(7);
        assert_eq!(d.deepest_by_rule(), vec![(Arc::from("q*"), 7)]);
        // The monitor notes the push, and (refresh_after being 0) finds the queue idle.
        assert_eq!(d.due_for_refresh(10).len(), 1);
        d.refreshed(&q, 0);
        assert!(d.is_empty());
        // This thread pushed to it last: the next push follows it anew, in the map.
        let again = d.get_or_track(b"q", "q*").unwrap();
        assert!(!Arc::ptr_eq(&q, &again));
        assert_eq!(d.len(), 1);
        assert!(Arc::ptr_eq(&again, &d.get_or_track(b"q", "q*").unwrap()));
    }

    #[test]
    fn keys_written_by_scripts_are_typed_then_read_and_non_queues_forgotten_when_gone() {
        let d = Arc::new(QueueDepths::new(10, Duration::ZERO));
        let set = d.get_or_track(b"done", "done").unwrap();
        let hash = d.get_or_track(b"meta", "meta").unwrap();
        set.written();
        hash.written();
        let due = d.due_for_refresh(10);
        assert_eq!(due.len(), 2);
        assert!(due.iter().all(|q| q.kind().refresh_command() == b"TYPE"));
        d.typed(&set, QueueKind::of_type_name(b"zset"));
        d.typed(&hash, QueueKind::of_type_name(b"hash"));
        assert_eq!(set.kind(), QueueKind::SortedSet);
        assert_eq!(set.kind().refresh_command(), b"ZCARD");
        // The set is read at the next poll; the hash, written again, is not a queue.
        hash.written();
        let due = d.due_for_refresh(10);
        assert!(due.iter().any(|q| Arc::ptr_eq(q, &set)));
        d.refreshed(&set, 12);
        assert_eq!(set.depth(), 12);
        // Idle (refresh_after is 0), the hash is typed again; gone, it is forgotten.
        d.typed(&hash, QueueKind::of_type_name(b"none"));
        assert!(d.get(b"meta").is_none());
        assert!(d.get(b"done").is_some());
    }

    #[test]
    fn a_thread_s_last_pushed_queue_is_of_its_own_registry_and_key() {
        let (a, b) = (
            QueueDepths::new(10, Duration::from_secs(10)),
            QueueDepths::new(10, Duration::from_secs(10)),
        );
        let qa = a.get_or_track(b"q", "q").unwrap();
        let qb = b.get_or_track(b"q", "q").unwrap();
        assert!(!Arc::ptr_eq(&qa, &qb));
        assert!(Arc::ptr_eq(&qa, &a.get_or_track(b"q", "q").unwrap()));
        let other = a.get_or_track(b"q2", "q").unwrap();
        assert!(!Arc::ptr_eq(&qa, &other));
        assert!(Arc::ptr_eq(&qa, &a.get_or_track(b"q", "q").unwrap()));
    }
}
