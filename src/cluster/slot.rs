//! A key's hash slot, as Redis Cluster computes it: CRC16 (the XMODEM variant of Redis's
//! `crc16.c`) of the key, or of its hash tag, modulo 16,384.
//!
//! The hash tag is what lies between the first `{` and the first `}` after it, when that is
//! not empty: `{user:1}:profile` and `{user:1}:cart` share a slot. Otherwise the whole key
//! is hashed (`{}x`, `x{`, `}{a}`'s `{a}` is a tag but `{}{a}` has none).
//!
//! Pure and allocation-free: a table of 256 entries built at compile time.

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: usize = 16_384;

/// CRC16-XMODEM (polynomial 0x1021, initial value 0, no reflection), one entry per byte
/// value: the table Redis's `crc16.c` writes out, computed here at compile time.
const CRC16_TABLE: [u16; 256] = crc16_table();

const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
}

/// CRC16-XMODEM of `bytes`, as Redis's `crc16()`.
pub fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// The part of `key` Redis hashes: its hash tag (between the first `{` and the first `}`
/// after it, when not empty), or the whole key.
pub fn hashed_part(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let after = &key[open + 1..];
    match after.iter().position(|&b| b == b'}') {
        Some(close) if close > 0 => &after[..close],
        _ => key,
    }
}

/// The hash slot of `key` (0 to 16,383), as `CLUSTER KEYSLOT` answers.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hashed_part(key)) & (SLOTS as u16 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_reference_vector_of_redis_crc16_c() {
        // Redis's crc16.c: "Output for "123456789" : 31C3".
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn slots_match_the_values_the_cluster_specification_gives() {
        // The key "123456789" hashes to 0x31C3 = 12739.
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn the_hash_tag_is_the_first_nonempty_brace_pair() {
        let same = |a: &[u8], b: &[u8]| assert_eq!(key_slot(a), key_slot(b), "{a:?} vs {b:?}");
        same(b"{user1000}.following", b"user1000");
        same(b"{user1000}.followers", b"user1000");
        // An empty tag: the whole key is hashed.
        assert_eq!(hashed_part(b"{}"), b"{}");
        assert_eq!(hashed_part(b"foo{}{bar}"), b"foo{}{bar}");
        // The first `}` after the first `{` closes the tag.
        assert_eq!(hashed_part(b"{{a}}"), b"{a");
        assert_eq!(hashed_part(b"foo{{bar}}zap"), b"{bar");
        // Only the first tag counts.
        assert_eq!(hashed_part(b"a{b}c{d}"), b"b");
        assert_eq!(hashed_part(b"foo{bar}{zap}"), b"bar");
        // No closing brace, or a `}` only before the `{`.
        assert_eq!(hashed_part(b"{"), b"{");
        assert_eq!(hashed_part(b"a{b"), b"a{b");
        assert_eq!(hashed_part(b"}{a}"), b"a");
        assert_eq!(hashed_part(b"}"), b"}");
    }

    #[test]
    fn every_slot_is_below_16384() {
        let mut key = [0u8; 4];
        for n in 0..100_000u32 {
            key.copy_from_slice(&n.to_le_bytes());
            assert!(usize::from(key_slot(&key)) < SLOTS);
        }
    }
}
