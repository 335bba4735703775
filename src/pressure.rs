//! Redis memory pressure: what the monitor last read, the shedding level it implies, and
//! the estimate the shed guard uses between two polls.
//!
//! Pressure is `used_memory / maxmemory` (or over `monitor.memory_budget` when Redis has no
//! `maxmemory`). Levels have hysteresis: a level is entered at one ratio and left only below a
//! lower one, so pressure hovering around a threshold cannot make it flap.
//!
//! A poll every 250 ms is too slow on its own for a client writing hundreds of megabytes a
//! second: between two polls, every memory-growing write the proxy forwards adds its size to
//! an estimate, and a level whose threshold the estimate crosses applies at once. Only the
//! next poll lowers a level again. The estimate counts a write's command size: an overwrite
//! counts as growth (shedding early), a new small key less than Redis spends on it (a
//! 144-byte SET of a 100-byte value grows Redis by about 202 bytes), so the `hard` level must
//! sit below the limit by more than clients write in one poll interval.
//!
//! A reading can also go stale at once: `CONFIG SET maxmemory`, `FLUSHALL` or a failover
//! passing through the proxy changes what Redis would say. The session then marks the
//! reading stale ([`MemoryPressure::mark_stale`], when the command is sent and again when
//! Redis has answered it); until a poll that began after the last mark is recorded, no level
//! applies (Redis itself still answers `OOM` if it is full) until the next regular poll.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::cluster::slot::{key_slot, SLOTS};

/// How hard the proxy sheds writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Every write passes.
    Normal = 0,
    /// Memory-growing writes to low-priority keys are refused.
    Soft = 1,
    /// Memory-growing writes are refused except to critical keys.
    Hard = 2,
}

impl Level {
    fn from_u8(v: u8) -> Level {
        match v {
            1 => Level::Soft,
            2 => Level::Hard,
            _ => Level::Normal,
        }
    }

    /// The level's name, as in logs, errors and `/status`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Soft => "soft",
            Level::Hard => "hard",
        }
    }
}

/// Enter and exit ratios of the two levels; `None` turns a level off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `(enter, exit)` of `soft`.
    pub soft: Option<(f64, f64)>,
    /// `(enter, exit)` of `hard`.
    pub hard: Option<(f64, f64)>,
}

impl Thresholds {
    /// From `[guards.shed]`: an enter ratio of 0 turns the level off.
    pub fn new(soft_enter: f64, soft_exit: f64, hard_enter: f64, hard_exit: f64) -> Self {
        Thresholds {
            soft: (soft_enter > 0.0).then_some((soft_enter, soft_exit)),
            hard: (hard_enter > 0.0).then_some((hard_enter, hard_exit)),
        }
    }

    /// The level after observing `pressure` at level `current`: a level is kept down to its
    /// exit ratio and entered from below only at its enter ratio.
    pub fn next(&self, current: Level, pressure: f64) -> Level {
        let holds = |t: Option<(f64, f64)>, level: Level| match t {
            Some((enter, exit)) => pressure >= if current >= level { exit } else { enter },
            None => false,
        };
        if holds(self.hard, Level::Hard) {
            Level::Hard
        } else if holds(self.soft, Level::Soft) {
            Level::Soft
        } else {
            Level::Normal
        }
    }

    /// The highest level whose enter ratio `pressure` reaches (no hysteresis: for the
    /// estimate between polls, which only ever raises the level).
    pub fn entered(&self, pressure: f64) -> Level {
        self.next(Level::Normal, pressure)
    }

    /// The enter ratio of `level`, if it is on.
    pub fn enter_ratio(&self, level: Level) -> Option<f64> {
        match level {
            Level::Normal => None,
            Level::Soft => self.soft.map(|t| t.0),
            Level::Hard => self.hard.map(|t| t.0),
        }
    }

    /// The lowest enter ratio of any level, or `None` when both are off.
    fn lowest_enter(&self) -> Option<f64> {
        match (self.soft, self.hard) {
            (Some(s), _) => Some(s.0),
            (None, Some(h)) => Some(h.0),
            (None, None) => None,
        }
    }
}

/// What the limit is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// Redis's `maxmemory`.
    MaxMemory,
    /// `monitor.memory_budget`, as Redis has no `maxmemory`.
    Budget,
}

impl LimitSource {
    /// How errors and logs name the limit.
    pub fn name(self) -> &'static str {
        match self {
            LimitSource::MaxMemory => "maxmemory",
            LimitSource::Budget => "memory_budget",
        }
    }
}

/// One level decision for a write: the level and the pressure it was decided at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The level in force.
    pub level: Level,
    /// Used memory (estimated for the writes since the last poll) over the limit.
    pub pressure: f64,
    /// What the limit is.
    pub source: LimitSource,
}

/// The shared memory-pressure state: written by the monitor, read by the shed guard.
#[derive(Debug)]
pub struct MemoryPressure {
    thresholds: Thresholds,
    /// The level the last poll decided.
    level: AtomicU8,
    /// Shedding applies: the limit is known and Redis does not evict at it (or
    /// `with_eviction` is set).
    enabled: AtomicBool,
    limit_is_budget: AtomicBool,
    used: AtomicU64,
    limit: AtomicU64,
    /// Bytes of memory-growing writes forwarded since the last poll.
    written: AtomicU64,
    /// Estimated bytes at which the estimate first reaches a level; `u64::MAX` when off.
    watch_from: AtomicU64,
    polls: AtomicU64,
    transitions: AtomicU64,
    /// The number of polls so far, for whoever waits for the next one (status, tests).
    poll_events: tokio::sync::watch::Sender<u64>,
    /// How many times the reading was marked stale.
    marks: AtomicU64,
    /// The marks the last recorded poll covers (it began after them): the reading is stale
    /// while `marks` is ahead.
    covered: AtomicU64,
    /// In front of a Redis Cluster: each slot's shard's polled level (the reading above is
    /// the fullest shard's), so a write is judged by the shard that holds its keys. Made at
    /// the first shard poll; absent for one Redis.
    slot_levels: OnceLock<Box<[AtomicU8]>>,
}

impl MemoryPressure {
    /// A state with no reading yet: level `normal`, shedding off until the first poll.
    pub fn new(thresholds: Thresholds) -> Self {
        MemoryPressure {
            thresholds,
            level: AtomicU8::new(Level::Normal as u8),
            enabled: AtomicBool::new(false),
            limit_is_budget: AtomicBool::new(false),
            used: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            written: AtomicU64::new(0),
            watch_from: AtomicU64::new(u64::MAX),
            polls: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            poll_events: tokio::sync::watch::channel(0).0,
            marks: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            slot_levels: OnceLock::new(),
        }
    }

    /// Say that Redis's memory or limit may have changed (the proxy forwarded or saw the
    /// answer to `CONFIG SET`, `FLUSHALL`, a failover, ...): no level applies until a poll
    /// that begins after this call. The regular poll brings it: a stale reading refuses
    /// nothing, and polling at once would put the monitor's own INFO where a client looks
    /// right after its CONFIG SET or RESETSTAT (SLOWLOG, LATENCY HISTOGRAM).
    pub fn mark_stale(&self) {
        self.marks.fetch_add(1, Ordering::Relaxed);
    }

    /// The marks so far; the monitor reads this before it polls and hands it to
    /// [`Self::record_poll`], so a mark made during a poll keeps the reading stale.
    pub fn marks(&self) -> u64 {
        self.marks.load(Ordering::Relaxed)
    }

    /// True while a mark is newer than the last recorded poll.
    fn is_stale(&self) -> bool {
        self.marks.load(Ordering::Relaxed) > self.covered.load(Ordering::Relaxed)
    }

    /// True when a poll of `used` of `limit` bytes would raise the level and shows at least
    /// ten times the pressure of the last poll: a change that large (a limit lowered and
    /// perhaps raised again, another server after a failover) is read again before writes
    /// are refused on it.
    pub fn needs_confirmation(&self, used: u64, limit: u64, enabled: bool) -> bool {
        if !enabled || limit == 0 {
            return false;
        }
        let pressure = used as f64 / limit as f64;
        let current = self.polled_level();
        if self.thresholds.next(current, pressure) <= current {
            return false;
        }
        let (last_used, last_limit) = self.last_poll();
        let last = if self.enabled.load(Ordering::Relaxed) && last_limit > 0 {
            last_used as f64 / last_limit as f64
        } else {
            0.0
        };
        pressure >= 10.0 * last
    }

    /// A receiver that changes after every poll (its value: polls so far).
    pub fn subscribe_polls(&self) -> tokio::sync::watch::Receiver<u64> {
        self.poll_events.subscribe()
    }

    /// The levels' ratios.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// Account for a memory-growing write of `bytes` about to be forwarded, and say whether
    /// any shedding level is in force (from the last poll, or reached by the estimate).
    /// This is the only call on the hot path while memory is low: a few atomic operations.
    #[inline]
    pub fn engaged_for_write(&self, bytes: u64) -> bool {
        if !self.enabled.load(Ordering::Relaxed) {
            return false;
        }
        // Counted at every level: at `soft`, the estimate is what reaches `hard` in time.
        let written = self.written.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if self.level.load(Ordering::Relaxed) != Level::Normal as u8 {
            return true;
        }
        let estimate = self.used.load(Ordering::Relaxed).saturating_add(written);
        estimate >= self.watch_from.load(Ordering::Relaxed)
    }

    /// How many bytes of memory-growing writes [`Self::engaged_for_write`] lets pass before
    /// it says yes: no limit while shedding is off, none while a level is in force, else
    /// what is left below the estimate that engages the shed guard.
    #[inline]
    pub fn write_headroom(&self) -> u64 {
        if !self.enabled.load(Ordering::Relaxed) {
            return u64::MAX;
        }
        if self.level.load(Ordering::Relaxed) != Level::Normal as u8 {
            return 0;
        }
        let estimate = (self.used.load(Ordering::Relaxed))
            .saturating_add(self.written.load(Ordering::Relaxed));
        self.watch_from
            .load(Ordering::Relaxed)
            .saturating_sub(estimate)
    }

    /// Account for memory-growing writes of `bytes` in all, forwarded within
    /// [`Self::write_headroom`] without [`Self::engaged_for_write`]: counted as it counts.
    #[inline]
    pub fn count_written(&self, bytes: u64) {
        if self.enabled.load(Ordering::Relaxed) {
            self.written.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// True when no level is in force now (the cheap check before [`Self::reading`]), or
    /// the reading is stale.
    #[inline]
    pub fn is_normal(&self) -> bool {
        !self.enabled.load(Ordering::Relaxed)
            || (self.level.load(Ordering::Relaxed) == Level::Normal as u8
                && self
                    .used
                    .load(Ordering::Relaxed)
                    .saturating_add(self.written.load(Ordering::Relaxed))
                    < self.watch_from.load(Ordering::Relaxed))
            || self.is_stale()
    }

    /// In front of a Redis Cluster: the shard serving `slots` is at `level` now.
    pub fn set_slot_levels(&self, slots: &[RangeInclusive<u16>], level: Level) {
        let levels = self.slot_levels.get_or_init(|| {
            (0..SLOTS)
                .map(|_| AtomicU8::new(Level::Normal as u8))
                .collect()
        });
        for range in slots {
            for slot in range.clone() {
                levels[usize::from(slot)].store(level as u8, Ordering::Relaxed);
            }
        }
    }

    /// In front of a Redis Cluster, the level of the shard holding `key` (`None` for one
    /// Redis, where [`Self::reading`] is the level of every key).
    pub fn level_of_key(&self, key: &[u8]) -> Option<Level> {
        let levels = self.slot_levels.get()?;
        let level = levels[usize::from(key_slot(key))].load(Ordering::Relaxed);
        Some(Level::from_u8(level))
    }

    /// The level in force now and the pressure behind it (`normal` while the reading is
    /// stale).
    pub fn reading(&self) -> Reading {
        let source = if self.limit_is_budget.load(Ordering::Relaxed) {
            LimitSource::Budget
        } else {
            LimitSource::MaxMemory
        };
        let limit = self.limit.load(Ordering::Relaxed);
        if !self.enabled.load(Ordering::Relaxed) || limit == 0 || self.is_stale() {
            return Reading {
                level: Level::Normal,
                pressure: 0.0,
                source,
            };
        }
        let used = self.used.load(Ordering::Relaxed);
        let estimate = used.saturating_add(self.written.load(Ordering::Relaxed));
        let pressure = estimate as f64 / limit as f64;
        let polled = Level::from_u8(self.level.load(Ordering::Relaxed));
        Reading {
            level: polled.max(self.thresholds.entered(pressure)),
            pressure,
            source,
        }
    }

    /// Record a poll: `used` of `limit` bytes (`limit` 0 when unknown), whether shedding
    /// applies, and the [`Self::marks`] read before the poll began. Returns the level before
    /// and after.
    pub fn record_poll(
        &self,
        used: u64,
        limit: u64,
        source: LimitSource,
        enabled: bool,
        covers: u64,
    ) -> (Level, Level) {
        let before = Level::from_u8(self.level.load(Ordering::Relaxed));
        let enabled = enabled && limit > 0;
        let after = if enabled {
            self.thresholds.next(before, used as f64 / limit as f64)
        } else {
            Level::Normal
        };
        self.used.store(used, Ordering::Relaxed);
        self.limit.store(limit, Ordering::Relaxed);
        self.limit_is_budget
            .store(source == LimitSource::Budget, Ordering::Relaxed);
        let watch = match self.thresholds.lowest_enter() {
            Some(r) if enabled => (r * limit as f64) as u64,
            _ => u64::MAX,
        };
        self.watch_from.store(watch, Ordering::Relaxed);
        self.written.store(0, Ordering::Relaxed);
        self.level.store(after as u8, Ordering::Relaxed);
        self.enabled.store(enabled, Ordering::Relaxed);
        self.covered.fetch_max(covers, Ordering::Relaxed);
        if before != after {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
        let polls = self.polls.fetch_add(1, Ordering::Relaxed) + 1;
        self.poll_events.send_replace(polls);
        (before, after)
    }

    /// Polls recorded so far.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Level changes decided by polls so far.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// The level the last poll decided (without the estimate).
    pub fn polled_level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Relaxed))
    }

    /// Used memory and limit at the last poll.
    pub fn last_poll(&self) -> (u64, u64) {
        (
            self.used.load(Ordering::Relaxed),
            self.limit.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Thresholds {
        Thresholds::new(0.5, 0.4, 0.8, 0.7)
    }

    #[test]
    fn levels_are_entered_at_one_ratio_and_left_at_a_lower_one() {
        let t = t();
        assert_eq!(t.next(Level::Normal, 0.49), Level::Normal);
        assert_eq!(t.next(Level::Normal, 0.5), Level::Soft);
        assert_eq!(t.next(Level::Soft, 0.45), Level::Soft);
        assert_eq!(t.next(Level::Soft, 0.39), Level::Normal);
        assert_eq!(t.next(Level::Soft, 0.79), Level::Soft);
        assert_eq!(t.next(Level::Soft, 0.8), Level::Hard);
        assert_eq!(t.next(Level::Hard, 0.71), Level::Hard);
        // Leaving hard above soft's exit ratio lands in soft, not normal.
        assert_eq!(t.next(Level::Hard, 0.69), Level::Soft);
        assert_eq!(t.next(Level::Hard, 0.3), Level::Normal);
        assert_eq!(t.next(Level::Normal, 0.95), Level::Hard);
    }

    #[test]
    fn a_level_turned_off_is_never_entered() {
        let only_hard = Thresholds::new(0.0, 0.0, 0.9, 0.8);
        assert_eq!(only_hard.next(Level::Normal, 0.85), Level::Normal);
        assert_eq!(only_hard.next(Level::Normal, 0.9), Level::Hard);
        assert_eq!(only_hard.next(Level::Hard, 0.79), Level::Normal);
    }

    #[test]
    fn writes_between_polls_raise_the_level_at_once() {
        let p = MemoryPressure::new(t());
        p.record_poll(40, 100, LimitSource::MaxMemory, true, 0);
        assert!(!p.engaged_for_write(5));
        assert_eq!(p.reading().level, Level::Normal);
        // 40 + 5 + 5 reaches soft's 50%.
        assert!(p.engaged_for_write(5));
        assert_eq!(p.reading().level, Level::Soft);
        assert!(p.engaged_for_write(30));
        assert_eq!(p.reading().level, Level::Hard);
        // The next poll replaces the estimate with what Redis says.
        assert_eq!(
            p.record_poll(45, 100, LimitSource::MaxMemory, true, 0),
            (Level::Normal, Level::Normal)
        );
        assert_eq!(p.reading().level, Level::Normal);
    }

    #[test]
    fn the_headroom_is_what_writes_may_add_before_the_guard_engages() {
        let p = MemoryPressure::new(t());
        p.record_poll(40, 100, LimitSource::MaxMemory, true, 0);
        assert_eq!(p.write_headroom(), 10);
        // Writes counted together within it leave the guard disengaged, as one by one.
        p.count_written(9);
        assert_eq!(p.write_headroom(), 1);
        assert!(!p.engaged_for_write(0), "40 + 9 is below soft's 50%");
        assert!(p.engaged_for_write(1), "40 + 9 + 1 reaches soft's 50%");
        assert_eq!(p.write_headroom(), 0);
        // No limit: no shedding, and nothing counted.
        p.record_poll(99, 0, LimitSource::MaxMemory, true, 0);
        p.count_written(1 << 40);
        assert!(!p.engaged_for_write(1 << 30));
        assert!(p.write_headroom() > 1 << 40);
    }

    #[test]
    fn no_limit_or_eviction_means_no_shedding() {
        let p = MemoryPressure::new(t());
        p.record_poll(99, 0, LimitSource::MaxMemory, true, 0);
        assert!(!p.engaged_for_write(1 << 30));
        p.record_poll(99, 100, LimitSource::MaxMemory, false, 0);
        assert!(!p.engaged_for_write(1));
        assert_eq!(p.reading().level, Level::Normal);
    }

    #[test]
    fn a_stale_reading_refuses_nothing_until_a_later_poll() {
        let p = MemoryPressure::new(t());
        p.record_poll(95, 100, LimitSource::MaxMemory, true, p.marks());
        assert_eq!(p.reading().level, Level::Hard);
        p.mark_stale();
        assert!(p.is_normal());
        assert_eq!(p.reading().level, Level::Normal);
        // A poll that began before the mark does not make the reading fresh.
        p.record_poll(95, 100, LimitSource::MaxMemory, true, 0);
        assert_eq!(p.reading().level, Level::Normal);
        p.record_poll(95, 100, LimitSource::MaxMemory, true, p.marks());
        assert_eq!(p.reading().level, Level::Hard);
    }

    #[test]
    fn a_jump_by_an_order_of_magnitude_is_read_again() {
        let p = MemoryPressure::new(t());
        // First reading over a level: nothing to compare with, so it is confirmed.
        assert!(p.needs_confirmation(90, 100, true));
        p.record_poll(45, 100, LimitSource::MaxMemory, true, 0);
        // 45% to 85%: a real rise, not a jump.
        assert!(!p.needs_confirmation(85, 100, true));
        // 45% to 1,000,000%: a limit of 100 bytes, read again first.
        assert!(p.needs_confirmation(1_000_000, 100, true));
        // Below every level, or shedding off: nothing to confirm.
        assert!(!p.needs_confirmation(1, 100, true));
        assert!(!p.needs_confirmation(1_000_000, 100, false));
    }
}
