//! The keyed hash every enqueue fingerprint and scope goes through.
//!
//! The hash is SipHash-1-3 under a 128-bit key drawn at random when the guard's memory is made
//! ([`FingerprintKey`]): a pseudorandom function, so a client that writes payloads and
//! watches which of its own jobs are dropped learns nothing that lets it make a job of its
//! own collide with another client's (which would drop that job as a duplicate), nor aim
//! many jobs at one set of a table. The fast non-cryptographic hashes measured against it
//! (foldhash, aHash, rapidhash, gxhash) do not claim that against such an attacker; see
//! "Enqueue fingerprint hash" in docs/benchmarks.md.

use std::hash::{BuildHasher, Hasher, RandomState};

use siphasher::sip::SipHasher13;

/// The key of every hash the enqueue guard makes: SipHash-1-3's 128 bits, secret and drawn
/// once per [`EnqueueMemory`], so per process.
#[derive(Clone)]
pub struct FingerprintKey {
    k0: u64,
    k1: u64,
}

impl FingerprintKey {
    /// A key drawn from the operating system's randomness (through std's `RandomState`,
    /// whose own SipHash key is random per thread: its outputs are the new key's words).
    pub fn random() -> Self {
        let seed = RandomState::new();
        FingerprintKey {
            k0: seed.hash_one(0u64),
            k1: seed.hash_one(1u64),
        }
    }
}

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never in a log line.
        f.write_str("FingerprintKey(..)")
    }
}

impl BuildHasher for FingerprintKey {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

/// Feed one part of a hashed sequence to `h`: its length, then its bytes. Distinct
/// sequences of parts are distinct inputs whatever bytes the parts hold.
pub fn write_part(h: &mut impl Hasher, part: &[u8]) {
    h.write_u64(part.len() as u64);
    h.write(part);
}
