//! A bounded top-K summary: the heaviest items of a stream in fixed memory, by the
//! space-saving algorithm (Metwally, Agrawal, El Abbadi, 2005).
//!
//! The summary holds at most `capacity` items, each with a count and an error bound. An
//! item already held gets its weight added. A new item takes a free slot while there is
//! one; once the summary is full it replaces the item with the smallest count `m`, and
//! starts at `m` plus its weight with an error bound of `m`. Hence, for every item held:
//! `count - error <= true count <= count`, and every item whose true weight exceeds
//! `total / capacity` is held.
//!
//! Each item is kept in a fixed inline buffer of [`MAX_ITEM_LEN`] bytes (a longer item
//! keeps its first bytes and a hash of the whole, so two long items that share a beginning
//! stay apart), found through a fixed open-addressing index, and ranked in a binary
//! min-heap: an update is O(1) to find the item and O(log capacity) to restore the heap.
//! Nothing is allocated after [`TopK::new`]: an evicted item's slot is overwritten in place.
//! [`TopK::bytes`] states the whole footprint, fixed at construction.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// The most bytes of an item held inline; a prefix is never longer
/// ([`crate::keyspace::prefix::MAX_PREFIX_LEN`]), a key may be.
pub const MAX_ITEM_LEN: usize = 128;

/// Bytes of a long item's beginning kept beside the hash of the whole item.
const KEPT_OF_LONG: usize = MAX_ITEM_LEN - 8;

/// An item's bytes, held inline.
#[derive(Clone, Copy)]
pub struct Item {
    bytes: [u8; MAX_ITEM_LEN],
    len: u8,
    /// The item was longer than [`MAX_ITEM_LEN`]: `bytes` holds its first
    /// [`KEPT_OF_LONG`] bytes, then its 64-bit hash.
    long: bool,
}

impl Item {
    const EMPTY: Item = Item {
        bytes: [0; MAX_ITEM_LEN],
        len: 0,
        long: false,
    };

    /// Write `item` (whose hash is `hash`) into this buffer, replacing what it held.
    fn set(&mut self, item: &[u8], hash: u64) {
        if item.len() <= MAX_ITEM_LEN {
            self.bytes[..item.len()].copy_from_slice(item);
            self.len = item.len() as u8;
            self.long = false;
        } else {
            self.bytes[..KEPT_OF_LONG].copy_from_slice(&item[..KEPT_OF_LONG]);
            self.bytes[KEPT_OF_LONG..].copy_from_slice(&hash.to_le_bytes());
            self.len = MAX_ITEM_LEN as u8;
            self.long = true;
        }
    }

    /// Whether this buffer holds `item` (of hash `hash`).
    fn holds(&self, item: &[u8], hash: u64) -> bool {
        if item.len() <= MAX_ITEM_LEN {
            !self.long && &self.bytes[..self.len as usize] == item
        } else {
            self.long
                && self.bytes[..KEPT_OF_LONG] == item[..KEPT_OF_LONG]
                && self.bytes[KEPT_OF_LONG..] == hash.to_le_bytes()
        }
    }

    /// The item as text: lossy UTF-8, a long item's kept beginning followed by `…`.
    pub fn to_text(&self) -> String {
        if self.long {
            format!("{}…", String::from_utf8_lossy(&self.bytes[..KEPT_OF_LONG]))
        } else {
            String::from_utf8_lossy(&self.bytes[..self.len as usize]).into_owned()
        }
    }
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_text())
    }
}

/// One item held, with its count, error bound and the caller's figures `V`.
#[derive(Debug, Clone, Copy)]
pub struct Entry<V> {
    /// The item.
    pub item: Item,
    /// Its estimated weight: never below the truth, above it by at most `error`.
    pub count: u64,
    /// The most by which `count` may overstate the truth.
    pub error: u64,
    hash: u64,
    /// Where the entry sits in the heap.
    heap_at: u32,
    /// The caller's figures, reset when the slot changes hands.
    pub value: V,
}

/// A free index slot.
const FREE: u32 = u32::MAX;

/// The summary (see the module documentation).
pub struct TopK<V> {
    entries: Vec<Entry<V>>,
    /// Min-heap of entry indices by count.
    heap: Vec<u32>,
    /// Open-addressing index (linear probing) from hash to entry index; a power of two at
    /// least twice the capacity, so probes stay short.
    index: Box<[u32]>,
    capacity: usize,
    hasher_keys: (u64, u64),
    total: u64,
    evicted: u64,
}

impl<V: Default + Copy> TopK<V> {
    /// An empty summary of at most `capacity` items (at least 1), with every byte it will
    /// ever use allocated now.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize / 4);
        let slots = (capacity * 2).next_power_of_two();
        TopK {
            entries: Vec::with_capacity(capacity),
            heap: Vec::with_capacity(capacity),
            index: vec![FREE; slots].into_boxed_slice(),
            capacity,
            // Keyed per summary: keys chosen by clients cannot be made to collide.
            hasher_keys: (fastrand::u64(..), fastrand::u64(..)),
            total: 0,
            evicted: 0,
        }
    }

    /// The most items held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The weight of every update since the start or the last [`TopK::clear`].
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Items replaced to make room for others.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The bytes the summary occupies, fixed at construction whatever it is fed.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.entries.capacity() * std::mem::size_of::<Entry<V>>()
            + self.heap.capacity() * std::mem::size_of::<u32>()
            + self.index.len() * std::mem::size_of::<u32>()
    }

    /// Forget every item (the memory stays).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.heap.clear();
        self.index.fill(FREE);
        self.total = 0;
        self.evicted = 0;
    }

    /// The items held, in no order.
    pub fn entries(&self) -> &[Entry<V>] {
        &self.entries
    }

    /// Add `weight` to `item` and return its figures: those it had, or fresh ones for an
    /// item that just entered (replacing the smallest when full).
    pub fn add(&mut self, item: &[u8], weight: u64) -> &mut V {
        self.total += weight;
        let hash = self.hash(item);
        let at = match self.find(item, hash) {
            Ok(at) => {
                self.entries[at].count += weight;
                at
            }
            Err(slot) if self.entries.len() < self.capacity => {
                self.insert(item, hash, weight, slot)
            }
            Err(_) => self.replace_smallest(item, hash, weight),
        };
        let heap_at = self.entries[at].heap_at as usize;
        self.sift_down(heap_at);
        &mut self.entries[at].value
    }

    fn hash(&self, item: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.hasher_keys.0, self.hasher_keys.1);
        h.write(item);
        h.finish()
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.index.len() - 1)
    }

    /// The entry holding `item`, or the free index slot where it would go.
    fn find(&self, item: &[u8], hash: u64) -> Result<usize, usize> {
        let mask = self.index.len() - 1;
        let mut slot = self.home(hash);
        loop {
            let at = self.index[slot];
            if at == FREE {
                return Err(slot);
            }
            let e = &self.entries[at as usize];
            if e.hash == hash && e.item.holds(item, hash) {
                return Ok(at as usize);
            }
            slot = (slot + 1) & mask;
        }
    }

    fn insert(&mut self, item: &[u8], hash: u64, weight: u64, slot: usize) -> usize {
        let at = self.entries.len();
        let mut entry = Entry {
            item: Item::EMPTY,
            count: weight,
            error: 0,
            hash,
            heap_at: self.heap.len() as u32,
            value: V::default(),
        };
        entry.item.set(item, hash);
        self.entries.push(entry);
        self.heap.push(at as u32);
        self.index[slot] = at as u32;
        self.sift_up(self.heap.len() - 1);
        at
    }

    /// The smallest item gives its slot to `item`, which inherits its count as error.
    fn replace_smallest(&mut self, item: &[u8], hash: u64, weight: u64) -> usize {
        let at = self.heap[0] as usize;
        self.unindex(at);
        self.evicted += 1;
        let e = &mut self.entries[at];
        e.item.set(item, hash);
        e.hash = hash;
        e.error = e.count;
        e.count += weight;
        e.value = V::default();
        let Err(slot) = self.find(item, hash) else {
            unreachable!("a new item is not indexed yet")
        };
        self.index[slot] = at as u32;
        at
    }

    /// Remove entry `at` from the index, shifting later probes back so none is lost.
    fn unindex(&mut self, at: usize) {
        let mask = self.index.len() - 1;
        let mut hole = self.home(self.entries[at].hash);
        while self.index[hole] as usize != at {
            hole = (hole + 1) & mask;
        }
        let mut next = hole;
        loop {
            next = (next + 1) & mask;
            let moved = self.index[next];
            if moved == FREE {
                break;
            }
            let home = self.home(self.entries[moved as usize].hash);
            // An entry may fill the hole only if its home is not cyclically in (hole, next].
            let stays = if hole <= next {
                hole < home && home <= next
            } else {
                hole < home || home <= next
            };
            if !stays {
                self.index[hole] = moved;
                hole = next;
            }
        }
        self.index[hole] = FREE;
    }

    fn count_at(&self, heap_at: usize) -> u64 {
        self.entries[self.heap[heap_at] as usize].count
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.entries[self.heap[a] as usize].heap_at = a as u32;
        self.entries[self.heap[b] as usize].heap_at = b as u32;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.count_at(parent) <= self.count_at(i) {
                break;
            }
            self.swap(parent, i);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < n && self.count_at(l) < self.count_at(least) {
                least = l;
            }
            if r < n && self.count_at(r) < self.count_at(least) {
                least = r;
            }
            if least == i {
                break;
            }
            self.swap(i, least);
            i = least;
        }
    }

    /// The items held, largest count first (allocates: for reports, not the hot path).
    pub fn ranked(&self) -> Vec<&Entry<V>> {
        let mut all: Vec<_> = self.entries.iter().collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then(a.error.cmp(&b.error)));
        all
    }
}

impl<V> std::fmt::Debug for TopK<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopK")
            .field("capacity", &self.capacity)
            .field("len", &self.entries.len())
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn check_bounds(top: &TopK<()>, truth: &HashMap<Vec<u8>, u64>) {
        let total: u64 = truth.values().sum();
        assert_eq!(top.total(), total);
        for e in top.entries() {
            let key = truth
                .keys()
                .find(|k| e.item.holds(k, top.hash(k)))
                .expect("held items were seen");
            let real = truth[key];
            assert!(e.count >= real, "understated: {} < {real}", e.count);
            assert!(e.count - e.error <= real, "overstated past the error bound");
        }
        for (key, &real) in truth {
            if real * top.capacity() as u64 > total {
                assert!(top.find(key, top.hash(key)).is_ok(), "heavy item missing");
            }
        }
        // The index and the heap agree with the entries.
        let indexed = top.index.iter().filter(|&&i| i != FREE).count();
        assert_eq!(indexed, top.len());
        for (i, &at) in top.heap.iter().enumerate() {
            assert_eq!(top.entries[at as usize].heap_at as usize, i);
            if i > 0 {
                assert!(top.count_at((i - 1) / 2) <= top.count_at(i));
            }
        }
    }

    proptest! {
        #[test]
        fn counts_stay_within_their_error_bounds(
            capacity in 1usize..12,
            stream in prop::collection::vec((0u8..40, 1u64..4), 0..400),
        ) {
            let mut top = TopK::<()>::new(capacity);
            let mut truth: HashMap<Vec<u8>, u64> = HashMap::new();
            for (k, w) in stream {
                // Some items long enough to be held as beginning and hash.
                let key = if k % 7 == 0 { vec![b'x' + k % 3; 200 + k as usize] } else { vec![k] };
                top.add(&key, w);
                *truth.entry(key).or_default() += w;
            }
            check_bounds(&top, &truth);
        }
    }

    #[test]
    fn a_skewed_stream_keeps_its_heavy_items_exactly() {
        let mut top = TopK::<u64>::new(8);
        for i in 0..10_000u64 {
            *top.add(b"hot", 1) += 1;
            top.add(format!("cold:{i}").as_bytes(), 1);
        }
        let ranked = top.ranked();
        assert_eq!(ranked[0].item.to_text(), "hot");
        assert_eq!(ranked[0].count, 10_000);
        assert_eq!(ranked[0].error, 0);
        assert_eq!(ranked[0].value, 10_000);
        assert_eq!(top.evicted(), 10_000 - 7);
    }

    #[test]
    fn long_items_sharing_a_beginning_stay_apart() {
        let mut top = TopK::<()>::new(4);
        let a = [b"k".repeat(300), b"a".to_vec()].concat();
        let b = [b"k".repeat(300), b"b".to_vec()].concat();
        top.add(&a, 1);
        top.add(&b, 2);
        top.add(&a, 1);
        let ranked = top.ranked();
        assert_eq!(ranked.len(), 2);
        assert!(ranked.iter().all(|e| e.count == 2));
        assert!(ranked[0].item.to_text().ends_with('…'));
    }

    #[test]
    fn memory_is_fixed_at_construction() {
        let mut top = TopK::<[u64; 8]>::new(1024);
        let bytes = top.bytes();
        let (entries, heap) = (top.entries.as_ptr(), top.heap.as_ptr());
        for i in 0..200_000u64 {
            top.add(format!("item:{i}:{}", i % 977).as_bytes(), 1 + i % 3);
        }
        assert_eq!(top.len(), 1024);
        assert_eq!(top.bytes(), bytes);
        // No reallocation happened.
        assert_eq!((top.entries.as_ptr(), top.heap.as_ptr()), (entries, heap));
        assert!(bytes < 1024 * (std::mem::size_of::<Entry<[u64; 8]>>() + 12) + 256);
    }
}
