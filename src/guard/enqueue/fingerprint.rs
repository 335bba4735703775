//! The keyed hash every enqueue fingerprint and scope goes through.
//!
//! The hash is SipHash-1-3 under a 128-bit key drawn at random when the guard's memory is made
//! ([`FingerprintKey`]): a pseudorandom function, so a client that writes payloads and
//! watches which of its own jobs are dropped learns nothing that lets it make a job of its
//! own collide with another client's (which would drop that job as a duplicate), nor aim
//! many jobs at one set of a table. The fast non-cryptographic hashes measured against it
//! (foldhash, aHash, rapidhash, gxhash) do not claim that against such an attacker; see
//! "Enqueue fingerprint hash" and the ninth lean-hot-path round (the candidates measured in
//! the push's own path) in docs/benchmarks.md.
//!
//! A job is hashed once: [`ContextHasher`] takes the rule, the client's scope and the queue
//! as framed parts, and the [`JobHasher`] it finishes as hashes each payload after them. The
//! output keys the fingerprints table as it is: it is already a keyed PRF output of
//! everything that tells two counts apart, and hashing it again (with the scope, as the
//! table key once was) adds no resistance.

use std::hash::{BuildHasher, Hasher, RandomState};

use siphasher::sip::SipHasher13;

/// The key of every hash the enqueue guard makes: SipHash-1-3's 128 bits, secret and drawn
/// once per [`EnqueueMemory`], so per process.
#[derive(Clone, Copy, PartialEq, Eq)]
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

/// Bytes of context gathered on the stack before they go to the hasher in one write.
const CONTEXT_BUFFER: usize = 64;

/// The length byte of a part too long for one: a `u64` length follows.
const LONG_PART: u8 = 0xff;

/// The byte of a part that is absent (a scope's user or name the client has not set).
const ABSENT_PART: u8 = 0xfe;

/// The end of a context: a long part's frame of length 0, which no part is written as (a
/// part shorter than [`ABSENT_PART`] bytes gets a one-byte frame).
const CONTEXT_END: [u8; 9] = [LONG_PART, 0, 0, 0, 0, 0, 0, 0, 0];

/// The start of a job's hash: the key, then framed context parts (the rule, the client's
/// scope, the queue), gathered on the stack and written at once, then zeros up to a whole
/// SipHash block. Finished, it is a [`JobHasher`].
///
/// A part is framed by one length byte (below [`ABSENT_PART`]), or [`LONG_PART`] and its
/// length as a `u64`; an absent part is the single byte [`ABSENT_PART`]. The framing is
/// prefix-free, so the encoding stays injective: the number of parts is fixed by the rule
/// (whose index is the first part) and the code path, so where the parts end, and with it
/// how many padding zeros follow, is known from the parts; what comes after the padding is
/// the job's payload. Short frames keep a typical context (rule, scope, queue) within two
/// to four blocks.
pub struct ContextHasher {
    key: FingerprintKey,
    buf: [u8; CONTEXT_BUFFER],
    n: usize,
    /// The hasher and the bytes it took, once a part did not fit the buffer: such a
    /// context is hashed as it goes, and never remembered.
    spilled: Option<(SipHasher13, usize)>,
}

/// The context a thread hashed last, and the hasher that took it: a producer pushes to the
/// same queue under the same scope again and again, so its next context is usually this one,
/// and hashing it (about 150 instructions) is skipped. Compared byte for byte, and with the
/// key, so a hit gives exactly the hasher the context would have made. Only contexts that
/// fit the buffer are remembered; the bytes past their end are zeros.
#[derive(Clone, Copy)]
struct LastContext {
    key: FingerprintKey,
    len: usize,
    bytes: [u8; CONTEXT_BUFFER],
    hasher: SipHasher13,
}

thread_local! {
    static LAST_CONTEXT: std::cell::RefCell<Option<LastContext>> =
        const { std::cell::RefCell::new(None) };
}

/// `a == b`, a word at a time (a call to `memcmp` costs more than the comparison).
#[inline(always)]
fn same_bytes(a: &[u8; CONTEXT_BUFFER], b: &[u8; CONTEXT_BUFFER]) -> bool {
    let word = |s: &[u8; CONTEXT_BUFFER], i: usize| {
        u64::from_ne_bytes(s[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    };
    (0..CONTEXT_BUFFER / 8).fold(0, |diff, i| diff | (word(a, i) ^ word(b, i))) == 0
}

impl ContextHasher {
    /// Nothing hashed yet, under `key`.
    #[inline(always)]
    pub fn new(key: &FingerprintKey) -> Self {
        ContextHasher {
            key: *key,
            buf: [0; CONTEXT_BUFFER],
            n: 0,
            spilled: None,
        }
    }

    /// Add one part: its length, then its bytes.
    #[inline(always)]
    pub fn part(&mut self, part: &[u8]) -> &mut Self {
        let len = part.len();
        if len < usize::from(ABSENT_PART) && self.n + 1 + len <= CONTEXT_BUFFER {
            self.buf[self.n] = len as u8;
            self.buf[self.n + 1..self.n + 1 + len].copy_from_slice(part);
            self.n += 1 + len;
        } else {
            self.long_part(part);
        }
        self
    }

    /// A part that does not fit the buffer, or is too long for a length byte.
    #[cold]
    fn long_part(&mut self, part: &[u8]) {
        self.flush();
        let mut frame = [0u8; 9];
        let frame: &[u8] = if part.len() < usize::from(ABSENT_PART) {
            frame[0] = part.len() as u8;
            &frame[..1]
        } else {
            frame[0] = LONG_PART;
            frame[1..].copy_from_slice(&(part.len() as u64).to_le_bytes());
            &frame
        };
        let (h, written) = self.spilled.as_mut().expect("flushed");
        h.write(frame);
        h.write(part);
        *written += frame.len() + part.len();
    }

    /// Add a part that is absent (unlike any part present, the empty one included).
    #[inline(always)]
    pub fn absent(&mut self) -> &mut Self {
        if self.n == CONTEXT_BUFFER {
            self.flush();
        }
        self.buf[self.n] = ABSENT_PART;
        self.n += 1;
        self
    }

    /// Hash the buffered bytes and empty the buffer (zeroed again, so that a remembered
    /// context never holds stale bytes; but a spilled context is never remembered).
    fn flush(&mut self) {
        let key = self.key;
        let (h, written) = self.spilled.get_or_insert_with(|| (key.build_hasher(), 0));
        h.write(&self.buf[..self.n]);
        *written += self.n;
        self.n = 0;
    }

    /// The context hashed: the parts, an end mark, zeros to a whole block.
    #[inline(always)]
    pub fn finish(mut self) -> JobHasher {
        // Without the mark, zero padding would read as empty parts: `[""]` and `["", ""]`
        // would be one input.
        if self.n + CONTEXT_END.len() > CONTEXT_BUFFER {
            self.flush();
        }
        self.buf[self.n..self.n + CONTEXT_END.len()].copy_from_slice(&CONTEXT_END);
        self.n += CONTEXT_END.len();
        let written = self.spilled.as_ref().map_or(0, |s| s.1);
        let pad = (8 - (written + self.n) % 8) % 8;
        if self.n + pad > CONTEXT_BUFFER {
            self.flush();
        }
        self.buf[self.n..self.n + pad].fill(0);
        self.n += pad;
        if self.spilled.is_some() {
            self.flush();
            return JobHasher(self.spilled.expect("spilled").0);
        }
        self.remembered()
    }

    /// A context held whole in the buffer (zeros past its end): the thread's last hasher if
    /// it is that context under that key, else hashed and remembered.
    #[inline(always)]
    fn remembered(&self) -> JobHasher {
        LAST_CONTEXT.with_borrow_mut(|last| match last {
            Some(l) if l.len == self.n && l.key == self.key && same_bytes(&l.bytes, &self.buf) => {
                JobHasher(l.hasher)
            }
            _ => {
                let mut hasher = self.key.build_hasher();
                hasher.write(&self.buf[..self.n]);
                *last = Some(LastContext {
                    key: self.key,
                    len: self.n,
                    bytes: self.buf,
                    hasher,
                });
                JobHasher(hasher)
            }
        })
    }
}

/// A keyed hasher that has taken a job's context, at a block boundary: each payload of a
/// push is hashed from a copy of it. Its outputs are SipHash-1-3 outputs of the whole
/// input, so they are what the fingerprints table is keyed by, not hashed again.
#[derive(Debug, Clone, Copy)]
pub struct JobHasher(SipHasher13);

impl JobHasher {
    /// The hash of the context followed by `payload`, in one pass over whole words (the
    /// context ends at a block boundary, which is siphasher's fast path).
    #[inline]
    pub fn hash(&self, payload: &[u8]) -> u64 {
        self.0.hash(payload)
    }

    /// A hasher continuing after the context, for payloads written in pieces.
    #[inline]
    pub fn stream(&self) -> SipHasher13 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding the context hasher writes, byte by byte, for `parts` (`None`: absent).
    fn encoded(parts: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            match p {
                None => out.push(ABSENT_PART),
                Some(p) if p.len() < 0xfe => {
                    out.push(p.len() as u8);
                    out.extend_from_slice(p);
                }
                Some(p) => {
                    out.push(LONG_PART);
                    out.extend_from_slice(&(p.len() as u64).to_le_bytes());
                    out.extend_from_slice(p);
                }
            }
        }
        out.extend_from_slice(&CONTEXT_END);
        out.resize(out.len().div_ceil(8) * 8, 0);
        out
    }

    /// The context hasher's result is the hash of the framed parts, the end mark, padding,
    /// then the payload,
    /// whether the parts fit its buffer or not.
    #[test]
    fn the_context_is_the_framed_parts_padded_to_a_block() {
        let key = FingerprintKey::random();
        let long = vec![7u8; 300];
        for parts in [
            vec![Some(&b"q"[..])],
            vec![
                Some(&b"\x03"[..]),
                None,
                None,
                Some(b"\x7f\0\0\x01"),
                Some(b"mylist"),
            ],
            vec![Some(&b""[..]), Some(&long[..]), Some(b"abc"), None],
            vec![
                Some(&long[..60]),
                Some(b"x"),
                None,
                Some(&long[..253]),
                Some(&long[..254]),
            ],
            vec![Some(&long[..62]), None, Some(&long[..62]), None, Some(b"")],
            vec![],
        ] {
            let mut c = ContextHasher::new(&key);
            for p in &parts {
                match p {
                    Some(p) => c.part(p),
                    None => c.absent(),
                };
            }
            let job = c.finish();
            let mut plain = encoded(&parts);
            plain.extend_from_slice(b"payload");
            assert_eq!(job.hash(b"payload"), key.hash_one_bytes(&plain));
            let mut s = job.stream();
            s.write(b"pay");
            s.write(b"load");
            assert_eq!(s.finish(), job.hash(b"payload"));
        }
    }

    /// The thread's last context is reused only for the same bytes under the same key: each
    /// hash below, asked twice in a row or after another context, is the hash of its own
    /// encoding.
    #[test]
    fn a_remembered_context_gives_exactly_the_hash_of_the_context_asked() {
        let (key, other_key) = (FingerprintKey::random(), FingerprintKey::random());
        let hash = |key: &FingerprintKey, parts: &[&[u8]]| {
            let mut c = ContextHasher::new(key);
            for p in parts {
                c.part(p);
            }
            c.finish().hash(b"payload")
        };
        let expected = |key: &FingerprintKey, parts: &[&[u8]]| {
            let mut plain = encoded(&parts.iter().map(|p| Some(*p)).collect::<Vec<_>>());
            plain.extend_from_slice(b"payload");
            key.hash_one_bytes(&plain)
        };
        let asked: [(&FingerprintKey, &[&[u8]]); 6] = [
            (&key, &[b"\x01", b"mylist"]),
            (&key, &[b"\x01", b"mylist"]),
            (&other_key, &[b"\x01", b"mylist"]),
            (&key, &[b"\x01", b"mylist2"]),
            (&key, &[b"\x01", b"mylis"]),
            (&key, &[b"\x01", b"mylist"]),
        ];
        for (k, parts) in asked {
            assert_eq!(hash(k, parts), expected(k, parts));
        }
        assert_ne!(hash(&key, &[b"a"]), hash(&other_key, &[b"a"]));
    }

    #[test]
    fn an_absent_part_is_not_an_empty_one() {
        let key = FingerprintKey::random();
        let mut a = ContextHasher::new(&key);
        a.absent();
        let mut b = ContextHasher::new(&key);
        b.part(b"");
        assert_ne!(a.finish().hash(b"p"), b.finish().hash(b"p"));
    }

    impl FingerprintKey {
        fn hash_one_bytes(&self, bytes: &[u8]) -> u64 {
            let mut h = self.build_hasher();
            h.write(bytes);
            h.finish()
        }
    }
}
