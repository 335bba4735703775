//! Finding a command's id by its name, in any letter case, on every command.
//!
//! Nearly every name Redis knows is at most 16 bytes, so a name of that length is folded to
//! lower case and packed into two words in registers, and looked up in an open-addressing
//! table of packed keys: no copy into a buffer, no hashing byte by byte, one comparison of
//! two words. The few longer names (and `container|subcommand` pairs over 16 bytes) go
//! through a hash map of lower-case byte strings. The table is built once per command
//! table and never grows.

use rustc_hash::FxHashMap;

/// The longest name packed into a [`Packed`] key.
const PACKED_MAX: usize = 16;

/// The longest name looked up at all; longer ones are unknown commands.
pub const MAX_NAME: usize = 64;

/// A name of at most [`PACKED_MAX`] bytes, lower-cased, as two words plus its length (so a
/// name with trailing zero bytes is not another name's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Packed {
    low: u64,
    high: u64,
    len: u64,
}

impl Packed {
    /// The key of `name`, lower-cased; `None` when it is longer than [`PACKED_MAX`] or empty.
    #[inline(always)]
    fn of(name: &[u8]) -> Option<Packed> {
        if name.is_empty() || name.len() > PACKED_MAX {
            return None;
        }
        let len = name.len() as u64;
        if name.len() <= 8 {
            let low = lower_ascii(word(name));
            return Some(Packed { low, high: 0, len });
        }
        let (low, high) = name.split_at(8);
        Some(Packed {
            low: lower_ascii(word(low)),
            high: lower_ascii(word(high)),
            len,
        })
    }

    /// Where the key's probe starts in a table of `mask + 1` slots.
    #[inline]
    fn slot(&self, mask: usize) -> usize {
        let mixed = (self.low ^ self.high.rotate_left(29) ^ self.len)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(32);
        mixed as usize & mask
    }
}

/// Up to 8 bytes as a little-endian word, zero-filled, read without a copy loop: two
/// overlapping loads cover any length from 4 to 8, three single bytes any below.
#[inline(always)]
fn word(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    debug_assert!(len <= 8);
    if len >= 4 {
        let head = u32::from_le_bytes(bytes[..4].try_into().expect("four bytes"));
        let tail = u32::from_le_bytes(bytes[len - 4..].try_into().expect("four bytes"));
        u64::from(head) | (u64::from(tail) << ((len - 4) * 8))
    } else if len > 0 {
        u64::from(bytes[0])
            | (u64::from(bytes[len / 2]) << (len / 2 * 8))
            | (u64::from(bytes[len - 1]) << ((len - 1) * 8))
    } else {
        0
    }
}

/// Every byte `A`..=`Z` of `w` made lower case, all others unchanged, eight at a time.
#[inline(always)]
fn lower_ascii(w: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let seven = w & !HIGH;
    // A byte's high bit is set in `from_a` when it is at least `A`, in `past_z` past `Z`.
    let from_a = seven + 0x3f3f_3f3f_3f3f_3f3f;
    let past_z = seven + 0x2525_2525_2525_2525;
    let upper = from_a & !past_z & !w & HIGH;
    w | (upper >> 2)
}

/// The last name [`NameIndex::get_remembered`] found: its bytes as sent (up to eight, in a
/// word) and its id. Nothing is remembered at first (a length of zero).
#[derive(Debug, Clone, Copy, Default)]
pub struct LastName {
    raw: u64,
    len: usize,
    id: u16,
}

/// Command names (lower case, subcommands as `container|sub`) to command ids.
#[derive(Debug)]
pub struct NameIndex {
    /// Open addressing, linear probing; a slot with `len == 0` is empty.
    slots: Box<[(Packed, u16)]>,
    mask: usize,
    /// Names longer than [`PACKED_MAX`].
    long: FxHashMap<Box<[u8]>, u16>,
}

impl NameIndex {
    /// The index of `names` (each lower case, with its id).
    pub fn build<'a>(names: impl ExactSizeIterator<Item = (&'a [u8], u16)>) -> Self {
        let slots = (names.len().max(16) * 4).next_power_of_two();
        let mut index = NameIndex {
            slots: vec![(Packed::default(), 0); slots].into_boxed_slice(),
            mask: slots - 1,
            long: FxHashMap::default(),
        };
        for (name, id) in names {
            index.insert(name, id);
        }
        index
    }

    /// Add `name` for `id`; a quarter of the slots at most are ever used, so a free one is
    /// always found.
    fn insert(&mut self, name: &[u8], id: u16) {
        let Some(key) = Packed::of(name) else {
            self.long.insert(name.into(), id);
            return;
        };
        let mut i = key.slot(self.mask);
        while self.slots[i].0.len != 0 && self.slots[i].0 != key {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = (key, id);
    }

    /// The id of `name`, in any letter case.
    #[inline]
    pub fn get(&self, name: &[u8]) -> Option<u16> {
        let Some(key) = Packed::of(name) else {
            return self.get_long(name);
        };
        let mut i = key.slot(self.mask);
        loop {
            let (slot, id) = &self.slots[i];
            if *slot == key {
                return Some(*id);
            }
            if slot.len == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// [`Self::get`], remembering in `last` the name found: a run of commands of one kind
    /// (a pipeline of SETs) looks each next name up by comparing its bytes with the last
    /// one's, without lower-casing or probing. Only names of up to eight bytes are
    /// remembered, by their bytes as sent.
    #[inline(always)]
    pub fn get_remembered(&self, name: &[u8], last: &mut LastName) -> Option<u16> {
        let len = name.len();
        if len == 0 || len > 8 {
            return self.get(name);
        }
        let raw = word(name);
        if raw == last.raw && len == last.len {
            return Some(last.id);
        }
        let id = self.get(name)?;
        *last = LastName { raw, len, id };
        Some(id)
    }

    /// The id of `container|sub`, in any letter case.
    pub fn get_pair(&self, container: &[u8], sub: &[u8]) -> Option<u16> {
        let len = container.len() + 1 + sub.len();
        if len > 2 * MAX_NAME + 1 {
            return None;
        }
        let mut pair = [0u8; 2 * MAX_NAME + 1];
        pair[..container.len()].copy_from_slice(container);
        pair[container.len()] = b'|';
        pair[container.len() + 1..len].copy_from_slice(sub);
        self.get(&pair[..len])
    }

    fn get_long(&self, name: &[u8]) -> Option<u16> {
        if name.is_empty() || name.len() > 2 * MAX_NAME + 1 {
            return None;
        }
        let mut lower = [0u8; 2 * MAX_NAME + 1];
        for (d, s) in lower.iter_mut().zip(name) {
            *d = s.to_ascii_lowercase();
        }
        self.long.get(&lower[..name.len()]).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_holds_the_bytes_in_order_then_zeros() {
        let bytes = *b"abcdefgh";
        for len in 0..=8 {
            let mut expected = [0u8; 8];
            expected[..len].copy_from_slice(&bytes[..len]);
            assert_eq!(word(&bytes[..len]), u64::from_le_bytes(expected), "{len}");
        }
    }

    #[test]
    fn lower_ascii_changes_only_capital_letters() {
        for b in 0..=255u8 {
            let w = u64::from_le_bytes([b; 8]);
            assert_eq!(
                lower_ascii(w),
                u64::from_le_bytes([b.to_ascii_lowercase(); 8]),
                "{b}"
            );
        }
    }

    #[test]
    fn names_are_found_in_any_case_and_lengths_tell_names_apart() {
        let names: [&[u8]; 6] = [
            b"get",
            b"get\0",
            b"client|setname",
            b"georadiusbymember_ro",
            b"exactly16bytes!!",
            b"x",
        ];
        let index = NameIndex::build(names.iter().enumerate().map(|(id, n)| (*n, id as u16)));
        for (id, name) in names.iter().enumerate() {
            assert_eq!(index.get(name), Some(id as u16));
            assert_eq!(index.get(&name.to_ascii_uppercase()), Some(id as u16));
        }
        assert_eq!(index.get_pair(b"CLIENT", b"SetName"), Some(2));
        for missing in [
            &b""[..],
            b"ge",
            b"gets",
            b"GET\0\0",
            b"exactly16bytes!?",
            b"x|",
        ] {
            assert_eq!(index.get(missing), None, "{missing:?}");
        }
        assert_eq!(index.get(&[b'a'; 200]), None);
    }

    /// A remembered name answers only for the same bytes: another name, another case of
    /// the same name, a longer or shorter one, or a name past eight bytes is looked up,
    /// and every answer is the one [`NameIndex::get`] gives.
    #[test]
    fn a_remembered_name_answers_only_for_the_same_bytes() {
        let names: [&[u8]; 4] = [b"get", b"set", b"getset", b"client|setname"];
        let index = NameIndex::build(names.iter().enumerate().map(|(id, n)| (*n, id as u16)));
        let mut last = LastName::default();
        let sequence: [&[u8]; 12] = [
            b"set",
            b"set",
            b"SET",
            b"get",
            b"getset",
            b"get",
            b"ge",
            b"get\0",
            b"",
            b"client|setname",
            b"sets",
            b"set",
        ];
        for name in sequence {
            assert_eq!(
                index.get_remembered(name, &mut last),
                index.get(name),
                "{name:?}"
            );
        }
        let mut fresh = LastName::default();
        assert_eq!(
            index.get_remembered(b"\0", &mut fresh),
            None,
            "nothing remembered yet"
        );
    }

    #[test]
    fn a_full_index_of_real_names_finds_every_one() {
        let table = crate::command::CommandTable::builtin();
        for info in table.all().filter(|i| i.id != table.unknown().id) {
            let found = table.lookup_name(info.name.as_bytes());
            assert_eq!(found, Some(info.id), "{}", info.name);
        }
    }
}
