//! A fixed-size table of expiring entries, shared by every session: the memory of the
//! enqueue guard (fingerprints seen, per-client token buckets, learned scripts, dropped
//! job ids).
//!
//! It is set-associative, like a CPU cache: a key's hash picks one set of [`WAYS`] slots,
//! and a new key takes an empty or expired slot of its set, or else evicts the slot of that
//! set that expires first. Nothing is allocated per key and the table never grows: its
//! memory is `capacity × size_of::<Slot<V>>()` (24 bytes for the fingerprint entries), in
//! shards allocated on first use. Under a flood of distinct keys it forgets old keys
//! instead of growing, which is the bound the guard needs; a forgotten fingerprint only
//! means one more duplicate can pass.
//!
//! A slot holds a 64-bit value and a 32-bit one besides its key and expiry, which is all
//! any of the guard's tables needs, so one slot type serves them all at 24 bytes.
//!
//! The table never reads the clock: callers pass `now`, in whole seconds counted from 1 on
//! their [`crate::clock::Clock`] (`expires == 0` marks an empty slot).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Slots per set: a key can live in any of them.
pub const WAYS: usize = 8;

/// Shards, each behind its own lock.
const SHARDS: usize = 256;

/// One slot: the key's hash, when it expires, and the caller's two values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slot {
    key: u64,
    value: u64,
    expires: u32,
    small: u32,
}

/// The entry a caller works on: fresh (just made, value reset) or found.
#[derive(Debug)]
pub struct Entry<'a> {
    /// True when the key was not in the table (or had expired): the values are 0.
    pub fresh: bool,
    /// When the entry expires, in the caller's seconds; the caller sets it for a fresh one.
    pub expires: &'a mut u32,
    /// The caller's 64-bit value.
    pub value: &'a mut u64,
    /// The caller's 32-bit value.
    pub small: &'a mut u32,
}

/// A bounded table of expiring entries keyed by 64-bit hashes.
#[derive(Debug)]
pub struct BoundedTable {
    shards: Box<[Mutex<Vec<Slot>>]>,
    sets_per_shard: usize,
    live_evictions: AtomicU64,
    occupied: AtomicU64,
}

impl BoundedTable {
    /// A table holding at most `capacity` entries (rounded up to a whole number of sets
    /// per shard).
    pub fn new(capacity: usize) -> Self {
        let sets = capacity.div_ceil(WAYS).max(SHARDS);
        let sets_per_shard = sets.div_ceil(SHARDS);
        BoundedTable {
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            sets_per_shard,
            live_evictions: AtomicU64::new(0),
            occupied: AtomicU64::new(0),
        }
    }

    /// The most entries the table holds.
    pub fn capacity(&self) -> usize {
        SHARDS * self.sets_per_shard * WAYS
    }

    /// Entries that were evicted before they expired, since the table was made.
    pub fn evictions(&self) -> u64 {
        self.live_evictions.load(Ordering::Relaxed)
    }

    /// Slots ever used: an upper bound of the live entries, never above the capacity.
    pub fn occupied(&self) -> u64 {
        self.occupied.load(Ordering::Relaxed)
    }

    /// Run `f` on the entry for `key` live at `now`, made if missing. A fresh entry that
    /// `f` leaves with `expires <= now` is not kept.
    pub fn with_entry<R>(&self, key: u64, now: u32, f: impl FnOnce(Entry<'_>) -> R) -> R {
        // The top bits pick the shard, the low bits the set: independent for a good hash.
        let shard = (key >> 56) as usize % SHARDS;
        let set = (key as usize) % self.sets_per_shard;
        let mut slots = self.shards[shard].lock().expect("table shard lock");
        if slots.is_empty() {
            *slots = vec![Slot::default(); self.sets_per_shard * WAYS];
        }
        let ways = &mut slots[set * WAYS..(set + 1) * WAYS];
        let key = key.max(1);
        if let Some(i) = ways.iter().position(|s| s.key == key && s.expires > now) {
            let s = &mut ways[i];
            return f(Entry {
                fresh: false,
                expires: &mut s.expires,
                value: &mut s.value,
                small: &mut s.small,
            });
        }
        // An empty or expired slot, else the one expiring first.
        let i = match ways.iter().position(|s| s.expires <= now) {
            Some(i) => i,
            None => {
                self.live_evictions.fetch_add(1, Ordering::Relaxed);
                (0..WAYS)
                    .min_by_key(|&i| ways[i].expires)
                    .expect("a set has slots")
            }
        };
        let s = &mut ways[i];
        if s.key == 0 {
            self.occupied.fetch_add(1, Ordering::Relaxed);
        }
        *s = Slot {
            key,
            ..Slot::default()
        };
        f(Entry {
            fresh: true,
            expires: &mut s.expires,
            value: &mut s.value,
            small: &mut s.small,
        })
    }

    /// Whether `key` is live at `now`, without making it.
    pub fn contains(&self, key: u64, now: u32) -> bool {
        let shard = (key >> 56) as usize % SHARDS;
        let set = (key as usize) % self.sets_per_shard;
        let slots = self.shards[shard].lock().expect("table shard lock");
        let key = key.max(1);
        !slots.is_empty()
            && slots[set * WAYS..(set + 1) * WAYS]
                .iter()
                .any(|s| s.key == key && s.expires > now)
    }

    /// Live entries at `now` (walks the whole table: for gauges and tests).
    pub fn live(&self, now: u32) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let slots = s.lock().expect("table shard lock");
                slots.iter().filter(|s| s.expires > now).count()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(t: &BoundedTable, key: u64, now: u32, ttl: u32) -> bool {
        t.with_entry(key, now, |e| {
            if e.fresh {
                *e.expires = now + ttl;
                *e.value = 7;
            }
            e.fresh
        })
    }

    #[test]
    fn a_slot_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    #[test]
    fn an_entry_is_found_until_it_expires() {
        let t = BoundedTable::new(1024);
        assert!(insert(&t, 42, 10, 5));
        assert!(!insert(&t, 42, 14, 5), "live at 14");
        assert!(t.contains(42, 14));
        assert!(!t.contains(42, 15), "expired at 15");
        assert!(insert(&t, 42, 15, 5), "made again once expired");
    }

    #[test]
    fn a_fresh_entry_left_without_expiry_is_not_kept() {
        let t = BoundedTable::new(1024);
        t.with_entry(9, 3, |e| assert!(e.fresh));
        assert!(!t.contains(9, 3));
        assert_eq!(t.live(3), 0);
    }

    #[test]
    fn a_flood_of_distinct_keys_never_exceeds_the_capacity() {
        let t = BoundedTable::new(10_000);
        let cap = t.capacity();
        assert!((10_000..10_000 + SHARDS * WAYS).contains(&cap));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..(cap * 5) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            insert(&t, x, 1, 60);
        }
        let live = t.live(1);
        assert!(live <= cap, "{live} live > capacity {cap}");
        assert!(t.occupied() as usize <= cap && t.occupied() as usize >= live);
        assert!(live > cap * 9 / 10, "the table is used: {live} of {cap}");
        assert!(t.evictions() >= (cap * 4) as u64);
    }

    #[test]
    fn eviction_takes_the_entry_expiring_first() {
        let t = BoundedTable::new(1);
        // One set per shard: keys with the same top byte share a set of WAYS slots.
        assert_eq!(t.sets_per_shard, 1);
        let keys: Vec<u64> = (1..=WAYS as u64 + 1).map(|i| i << 20).collect();
        for (i, &k) in keys[..WAYS].iter().enumerate() {
            insert(&t, k, 1, 100 + i as u32);
        }
        assert!(insert(&t, keys[WAYS], 1, 500));
        assert!(!t.contains(keys[0], 1), "the first to expire went");
        assert!(keys[1..].iter().all(|&k| t.contains(k, 1)));
    }
}
