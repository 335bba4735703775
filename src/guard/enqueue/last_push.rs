//! The context of the push a thread judged last, known by what it was made of: a producer
//! pushes to one queue under one rule and one scope again and again, so its next push
//! usually has the same context, and the hasher that took it is reused without framing
//! the parts again.
//!
//! The hasher after a context is a function of the memory's key, the rule's index and
//! scope bits, the scope's inputs the bits select (user, client name, IP address) and the
//! queue ([`super::memory::EnqueueMemory::queue_hasher`] frames them); the remembered
//! entry holds exactly these, and a push reuses its hasher only when every one of them is
//! equal, byte for byte. So a client that sets another name or authenticates as another
//! user (when the scope reads it), another rule, or rules built again from a reloaded
//! configuration with another scope or order, never get a stale hasher: they are other
//! inputs. Inputs too long to hold (a user or name over [`NAME_BYTES`], a queue over
//! [`QUEUE_BYTES`]) are never remembered.
//!
//! It never frames nor hashes anything itself, and holds one entry per thread (a few
//! hundred bytes, no allocation).

use std::cell::RefCell;
use std::net::IpAddr;

use super::super::pattern::same_key;
use super::fingerprint::{FingerprintKey, JobHasher};
use super::rules::{EnqueueLimits, SCOPE_ADDRESS, SCOPE_NAME, SCOPE_USER};
use crate::identity::ClientIdentity;

/// The longest user or client name remembered.
const NAME_BYTES: usize = 32;

/// The longest queue name remembered.
const QUEUE_BYTES: usize = 64;

/// A short byte string held inline, or none.
#[derive(Clone, Copy)]
struct Held<const N: usize> {
    /// `None` for a value not set.
    len: Option<u8>,
    bytes: [u8; N],
}

impl<const N: usize> Held<N> {
    /// `value` held, or `None` when it is too long.
    #[inline]
    fn of(value: Option<&[u8]>) -> Option<Self> {
        let mut bytes = [0; N];
        match value {
            None => Some(Held { len: None, bytes }),
            Some(v) if v.len() <= N => {
                bytes[..v.len()].copy_from_slice(v);
                Some(Held {
                    len: Some(v.len() as u8),
                    bytes,
                })
            }
            Some(_) => None,
        }
    }

    /// Whether `value` is the one held.
    #[inline(always)]
    fn is(&self, value: Option<&[u8]>) -> bool {
        match (self.len, value) {
            (None, None) => true,
            (Some(n), Some(v)) => same_key(v, &self.bytes[..usize::from(n)]),
            _ => false,
        }
    }
}

/// What a push's context was made of, and the hasher that took it.
#[derive(Clone, Copy)]
struct LastPush {
    key: FingerprintKey,
    index: u8,
    scope: u8,
    /// Held only when the scope reads it; else what it was is of no matter.
    address: Option<IpAddr>,
    user: Held<NAME_BYTES>,
    name: Held<NAME_BYTES>,
    queue: Held<QUEUE_BYTES>,
    hasher: JobHasher,
}

impl LastPush {
    /// Whether a push of `client` to `queue` under the rule of `limits` (and `key`) has the
    /// context remembered. The scope's parts it does not read are not compared.
    #[inline(always)]
    fn is_for(
        &self,
        key: &FingerprintKey,
        limits: &EnqueueLimits,
        client: &ClientIdentity,
        queue: &[u8],
    ) -> bool {
        let s = limits.scope;
        self.index == limits.index
            && self.scope == s
            && self.queue.is(Some(queue))
            && (s & SCOPE_ADDRESS == 0 || self.address == Some(client.peer.ip()))
            && (s & SCOPE_USER == 0 || self.user.is(client.user.as_deref()))
            && (s & SCOPE_NAME == 0 || self.name.is(client.name.as_deref()))
            && self.key == *key
    }
}

thread_local! {
    static LAST_PUSH: RefCell<Option<LastPush>> = const { RefCell::new(None) };
}

/// The hasher after the context of a push of `client` to `queue` under the rule of
/// `limits`, hashed under `key`: the thread's last if made of the same inputs, else
/// `make()`'s, remembered when its inputs are short enough to hold.
#[inline(always)]
pub fn hasher_of(
    key: &FingerprintKey,
    limits: &EnqueueLimits,
    client: &ClientIdentity,
    queue: &[u8],
    make: impl FnOnce() -> JobHasher,
) -> JobHasher {
    let hit = LAST_PUSH.with_borrow(|last| match last {
        Some(l) if l.is_for(key, limits, client, queue) => Some(l.hasher),
        _ => None,
    });
    match hit {
        Some(hasher) => hasher,
        None => remember(key, limits, client, queue, make),
    }
}

/// The hasher `make` gives, remembered as the thread's last push context when its inputs
/// can be held. Apart from the check, which a hit leaves at its first test.
#[inline(never)]
fn remember(
    key: &FingerprintKey,
    limits: &EnqueueLimits,
    client: &ClientIdentity,
    queue: &[u8],
    make: impl FnOnce() -> JobHasher,
) -> JobHasher {
    let hasher = make();
    let s = limits.scope;
    let read = |bit: u8| s & bit != 0;
    let held = (
        Held::of(client.user.as_deref().filter(|_| read(SCOPE_USER))),
        Held::of(client.name.as_deref().filter(|_| read(SCOPE_NAME))),
        Held::of(Some(queue)),
    );
    let entry = match held {
        (Some(user), Some(name), Some(queue)) => Some(LastPush {
            key: *key,
            index: limits.index,
            scope: s,
            address: (s & SCOPE_ADDRESS != 0).then(|| client.peer.ip()),
            user,
            name,
            queue,
            hasher,
        }),
        _ => None,
    };
    LAST_PUSH.set(entry);
    hasher
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;

    use super::super::memory::EnqueueMemory;
    use super::super::rules::build_rules;
    use super::*;
    use crate::config::RawEnqueueGuard;
    use crate::guard::{Mode, Rule};

    /// The rules of `[guards.enqueue]` written as `rules` (TOML), as a reload builds them.
    fn rules(raw: &RawEnqueueGuard) -> Vec<Rule<EnqueueLimits>> {
        build_rules(raw, Mode::Enforce, 0).expect("rules build")
    }

    fn raw(rules: &str) -> RawEnqueueGuard {
        toml::from_str(&format!("max_fingerprints = 4096\n{rules}")).expect("rules parse")
    }

    /// A rule reading `q:*` with the scope `scope`.
    fn rule(scope: &str) -> String {
        format!("[[rules]]\npreset = 'generic'\npattern = 'q:*'\nformat = 'raw'\nscope = {scope}\n")
    }

    fn client(peer: &str, user: Option<&'static [u8]>, name: Option<&[u8]>) -> ClientIdentity {
        let mut c = ClientIdentity::new(peer.parse::<SocketAddr>().expect("address"));
        c.user = user.map(Bytes::from_static);
        c.name = name.map(Bytes::copy_from_slice);
        c
    }

    /// Each push asked below, in this order (after a push of the same inputs, and after
    /// one of the previous client, which differs in one input), hashes as its context
    /// framed anew does.
    #[test]
    fn a_push_reuses_the_last_context_only_when_made_of_the_same_inputs() {
        let config = raw(&[
            rule("['client_name', 'user']"),
            rule("['address']"),
            rule("['user', 'address', 'client_name']"),
        ]
        .concat());
        let memory = EnqueueMemory::new(&config);
        let rules = rules(&config);
        let long = [b'n'; NAME_BYTES + 1];
        let long_queue = [b'q'; QUEUE_BYTES + 1];
        let clients = [
            client("10.0.0.1:4000", None, None),
            client("10.0.0.1:4001", None, None),
            client("10.0.0.2:4000", None, None),
            client("10.0.0.1:4000", Some(b"app"), None),
            client("10.0.0.1:4000", Some(b"app"), Some(b"worker")),
            client("10.0.0.1:4000", Some(b"app"), Some(b"worker2")),
            client("10.0.0.1:4000", Some(b"app"), Some(&long)),
            client("10.0.0.1:4000", Some(b"app"), Some(&long[1..])),
            client("[::1]:4000", None, None),
        ];
        let queues: [&[u8]; 4] = [b"q:1", b"q:2", b"q:1x", &long_queue];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2 {
            for rule in &rules {
                for q in queues {
                    for c in &clients {
                        for _ in 0..2 {
                            let cached = memory.queue_hasher(&rule.limits, c, q).hash(b"job");
                            let framed = memory.job_hasher(&rule.limits, c, &[q]).hash(b"job");
                            assert_eq!(cached, framed);
                            seen.insert(cached);
                        }
                    }
                }
            }
        }
        // Scopes tell apart what they read: under the first rule (user and name) the
        // clients make 6 scopes (none, a user, and the user with each of four names, one
        // too long to hold and one its prefix), under the second 3 addresses, under the
        // third all but the port 8; each with its 4 queues.
        assert_eq!(seen.len(), (6 + 3 + 8) * queues.len());
    }

    /// Rules built again from a reloaded configuration, with another scope at the same
    /// index, never get the context the thread remembered under the old rules.
    #[test]
    fn a_reloaded_rule_with_another_scope_is_not_given_the_old_context() {
        let before = raw(&rule("['address']"));
        let after = raw(&rule("['client_name']"));
        let memory = EnqueueMemory::new(&before);
        let (old, new) = (rules(&before), rules(&after));
        assert_eq!(old[0].limits.index, new[0].limits.index);
        let c = client("10.0.0.1:4000", None, Some(b"worker"));
        let pushed = memory.queue_hasher(&old[0].limits, &c, b"q:1").hash(b"job");
        let reloaded = memory.queue_hasher(&new[0].limits, &c, b"q:1").hash(b"job");
        assert_ne!(pushed, reloaded);
        assert_eq!(
            reloaded,
            memory
                .job_hasher(&new[0].limits, &c, &[b"q:1"])
                .hash(b"job")
        );
    }

    /// Another memory (another key) on the same thread is never given the context
    /// hashed under the first one's key.
    #[test]
    fn another_memory_is_not_given_the_context_of_the_first() {
        let config = raw(&rule("['address']"));
        let (a, b) = (EnqueueMemory::new(&config), EnqueueMemory::new(&config));
        let rules = rules(&config);
        let c = client("10.0.0.1:4000", None, None);
        let from_a = a.queue_hasher(&rules[0].limits, &c, b"q:1").hash(b"job");
        let from_b = b.queue_hasher(&rules[0].limits, &c, b"q:1").hash(b"job");
        assert_ne!(from_a, from_b);
        assert_eq!(
            from_b,
            b.job_hasher(&rules[0].limits, &c, &[b"q:1"]).hash(b"job")
        );
    }
}
