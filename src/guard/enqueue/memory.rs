//! What the enqueue guard remembers, shared by every session: fingerprints counted in their
//! window, the scopes' token buckets, learned script digests and the ids of dropped RQ
//! jobs, each in a fixed-size [`BoundedTable`]; the keyed hasher every fingerprint and scope
//! goes through; and the one [`Clock`] all of it expires by.
//!
//! The decisions that only count are made here ([`EnqueueMemory::decide`]): whether an
//! enqueue is within its fingerprint's limit and its scope's bucket. It never reads a
//! command, logs or chooses what the client is answered.
//!
//! Every hash goes through one secret key per memory ([`FingerprintKey`]).

use metrics::{Counter, Gauge};

use super::decision::Decision;
use super::fingerprint::{ContextHasher, FingerprintKey, JobHasher};
use super::last_push;
use super::payload::JobPrint;
use super::rules::{EnqueueLimits, SCOPE_ADDRESS, SCOPE_NAME, SCOPE_USER};
use super::table::BoundedTable;
use crate::clock::{Clock, Now};
use crate::config::RawEnqueueGuard;
use crate::identity::ClientIdentity;

/// How long a dropped RQ job's id is remembered, so the push of that id is dropped too.
const DROPPED_ID_SECONDS: u32 = 10;

/// How long a learned script digest is kept without use.
const SCRIPT_SECONDS: u32 = 24 * 3600;

/// Dropped RQ job ids remembered at once.
const MAX_DROPPED_IDS: usize = 4096;

/// The enqueue guard's memory: fingerprints, token buckets, learned scripts and dropped job
/// ids, each a fixed-size table. One per proxy, kept when the guards are built again.
#[derive(Debug)]
pub struct EnqueueMemory {
    /// Fingerprint (within its rule and scope) → (first job id hash, enqueues counted),
    /// expiring with the window.
    fingerprints: BoundedTable,
    /// Rule and scope → (tokens, last refill in ms).
    buckets: BoundedTable,
    /// Digests of scripts known to enqueue.
    scripts: BoundedTable,
    /// Ids of RQ jobs dropped in the last seconds.
    dropped_ids: BoundedTable,
    hashes: FingerprintKey,
    clock: Clock,
    evictions: Counter,
    occupied: Gauge,
}

impl EnqueueMemory {
    /// Tables sized by `[guards.enqueue]`, on a clock starting now.
    pub fn new(raw: &RawEnqueueGuard) -> Self {
        let fingerprints = BoundedTable::new(raw.max_fingerprints);
        metrics::gauge!("respguard_enqueue_fingerprints_capacity")
            .set(fingerprints.capacity() as f64);
        EnqueueMemory {
            fingerprints,
            buckets: BoundedTable::new(raw.max_buckets),
            scripts: BoundedTable::new(raw.max_scripts),
            dropped_ids: BoundedTable::new(MAX_DROPPED_IDS),
            hashes: FingerprintKey::random(),
            clock: Clock::start(),
            evictions: metrics::counter!("respguard_enqueue_fingerprint_evictions_total"),
            occupied: metrics::gauge!("respguard_enqueue_fingerprints"),
        }
    }

    /// The keyed hasher of fingerprints (secret per proxy, so payloads cannot aim at a set).
    pub fn hasher(&self) -> &FingerprintKey {
        &self.hashes
    }

    /// One hash of `parts`, framed as a job's context is ([`ContextHasher`]), so parts
    /// cannot run into each other.
    pub fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut h = ContextHasher::new(&self.hashes);
        for p in parts {
            h.part(p);
        }
        h.finish().hash(b"")
    }

    /// Now, in the tables' whole seconds (never 0).
    pub fn now(&self) -> u32 {
        self.clock.secs() as u32 + 1
    }

    /// The hasher of the jobs `client` enqueues under the rule of `limits`, with `context`
    /// (the queue, and whatever else tells the rule's jobs apart) taken: the rule's index,
    /// the client's scope and `context`, each a framed part. A job's hash from it is its
    /// fingerprint within its scope, which keys the fingerprints table as it is: a keyed
    /// SipHash output of an injective encoding of rule, scope, context and payload, so
    /// hashing it again with the scope would add no resistance, only a second hash.
    #[inline(always)]
    pub fn job_hasher(
        &self,
        limits: &EnqueueLimits,
        client: &ClientIdentity,
        context: &[&[u8]],
    ) -> JobHasher {
        let mut h = ContextHasher::new(&self.hashes);
        scoped(&mut h, limits, client);
        for part in context {
            h.part(part);
        }
        h.finish()
    }

    /// [`EnqueueMemory::job_hasher`] of a context that is one queue: the thread's last
    /// push's hasher when it was made of the same inputs ([`last_push`]), so a producer's
    /// pushes to one queue frame and hash their context once.
    #[inline(always)]
    pub fn queue_hasher(
        &self,
        limits: &EnqueueLimits,
        client: &ClientIdentity,
        queue: &[u8],
    ) -> JobHasher {
        last_push::hasher_of(&self.hashes, limits, client, queue, || {
            self.job_hasher(limits, client, &[queue])
        })
    }

    /// The scope of `client` under the rule of `limits`, hashed (with the rule's index: the
    /// key of its token bucket).
    fn scope(&self, limits: &EnqueueLimits, client: &ClientIdentity) -> u64 {
        let mut h = ContextHasher::new(&self.hashes);
        scoped(&mut h, limits, client);
        h.finish().hash(b"")
    }

    /// Count one enqueue of `job` by `client` under the rule of `limits` at `at`, and decide
    /// whether it passes: its fingerprint's count in the window, then the scope's bucket. The job's
    /// fingerprint is from [`EnqueueMemory::job_hasher`], so already within the scope.
    pub fn decide(
        &self,
        limits: &EnqueueLimits,
        client: &ClientIdentity,
        job: &JobPrint,
        at: Now,
    ) -> Decision {
        let l = limits;
        let key = job.fingerprint;
        let table = &self.fingerprints;
        let now = self.clock.secs_at(at) as u32 + 1;
        let evictions = table.evictions();
        let occupied = table.occupied();
        let decision = table.with_entry(key, now, |e| {
            if e.fresh {
                *e.expires = now + l.window;
                *e.value = job.id.unwrap_or(0);
                *e.small = 1;
                l.first.increment(1);
                return Decision::Pass;
            }
            let repush = job.id.is_some_and(|id| id == *e.value);
            if repush {
                l.repush.increment(1);
                if !l.limit_repushes {
                    return Decision::Pass;
                }
            } else {
                l.duplicate.increment(1);
            }
            *e.small = e.small.saturating_add(1);
            if *e.small <= l.limit {
                Decision::Pass
            } else {
                Decision::Duplicate {
                    seen: *e.small,
                    repush,
                }
            }
        });
        if table.evictions() != evictions {
            self.evictions.increment(1);
        }
        // The gauge moves only when a slot is used for the first time.
        let now_occupied = table.occupied();
        if now_occupied != occupied {
            self.occupied.set(now_occupied as f64);
        }
        if decision != Decision::Pass {
            return decision;
        }
        match l.bucket {
            Some((rate, burst)) if !self.take_token(self.scope(l, client), rate, burst, at) => {
                Decision::Rate
            }
            _ => Decision::Pass,
        }
    }

    /// Take one token from the bucket of `scope` (hashed with its rule's index); false when
    /// it is empty.
    fn take_token(&self, scope: u64, rate: f64, burst: f64, at: Now) -> bool {
        let millis = self.clock.millis_at(at);
        // Refills need only differences of milliseconds, which wrap harmlessly in 32 bits.
        let now_ms = millis as u32;
        let now = (millis / 1000) as u32 + 1;
        // A bucket idle long enough to refill is as good as none.
        let refill_secs = (burst / rate).ceil() as u32 + 1;
        self.buckets.with_entry(scope, now, |e| {
            let mut tokens = if e.fresh {
                burst
            } else {
                let elapsed = now_ms.wrapping_sub(*e.small) as f64 / 1000.0;
                (f64::from_bits(*e.value) + elapsed * rate).min(burst)
            };
            let ok = tokens >= 1.0;
            if ok {
                tokens -= 1.0;
            }
            *e.value = tokens.to_bits();
            *e.small = now_ms;
            *e.expires = now + refill_secs;
            ok
        })
    }

    /// Remember a script digest (hex) as an enqueue script, for a day since its last use.
    pub fn remember_script(&self, sha_hex: &[u8]) {
        let key = self.script_key(sha_hex);
        let now = self.now();
        self.scripts
            .with_entry(key, now, |e| *e.expires = now + SCRIPT_SECONDS);
    }

    /// Whether a script digest (hex) is remembered as an enqueue script.
    pub fn script_known(&self, sha_hex: &[u8]) -> bool {
        self.scripts.contains(self.script_key(sha_hex), self.now())
    }

    /// A script digest's key in the scripts table: Redis takes hex digits in either case.
    fn script_key(&self, sha_hex: &[u8]) -> u64 {
        let mut lower = [0u8; 40];
        let Some(lower) = lower.get_mut(..sha_hex.len()) else {
            return self.hash(&[sha_hex]);
        };
        lower.copy_from_slice(sha_hex);
        lower.make_ascii_lowercase();
        self.hash(&[lower])
    }

    /// Remember a script `digest` as one generic rule `index` reads (its body was seen
    /// with the rule's text), for a day from its last use.
    pub fn remember_rule_script(&self, index: u8, digest: &[u8; 20]) {
        let key = self.hash(&[&[index], digest]);
        let now = self.now();
        self.scripts
            .with_entry(key, now, |e| *e.expires = now + SCRIPT_SECONDS);
    }

    /// Whether a script `digest` was learned for generic rule `index`.
    pub fn rule_script_known(&self, index: u8, digest: &[u8; 20]) -> bool {
        self.scripts
            .contains(self.hash(&[&[index], digest]), self.now())
    }

    /// Remember a dropped job's id for a few seconds, so pushes of it are dropped too.
    pub fn remember_dropped(&self, job_id: &[u8]) {
        let now = self.now();
        self.dropped_ids.with_entry(self.hash(&[job_id]), now, |e| {
            *e.expires = now + DROPPED_ID_SECONDS
        });
    }

    /// Whether `job_id` was dropped in the last seconds, as of `now` ([`EnqueueMemory::now`]).
    pub fn was_dropped(&self, job_id: &[u8], now: u32) -> bool {
        self.dropped_ids.contains(self.hash(&[job_id]), now)
    }
}

/// Frame into `h` the rule's index and the scope of `client` under it: each of
/// user, client name and address, when the scope has it, else an empty part. A user or
/// name the client has not set is an absent part, as is one set to `\0none` (which always
/// stood for the unset one).
#[inline(always)]
fn scoped(h: &mut ContextHasher, limits: &EnqueueLimits, client: &ClientIdentity) {
    let s = limits.scope;
    h.part(&[limits.index]);
    for (bit, v) in [
        (SCOPE_USER, client.user.as_deref()),
        (SCOPE_NAME, client.name.as_deref()),
    ] {
        match v {
            _ if s & bit == 0 => h.part(b""),
            Some(v) if v != b"\0none" => h.part(v),
            _ => h.absent(),
        };
    }
    if s & SCOPE_ADDRESS == 0 {
        h.part(b"");
    } else {
        match client.peer.ip() {
            std::net::IpAddr::V4(a) => h.part(&a.octets()),
            std::net::IpAddr::V6(a) => h.part(&a.octets()),
        };
    }
}

#[cfg(test)]
mod tests {
    //! The windows and buckets on paused time: `advance` moves the memory's clock.

    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::time::advance;

    use super::super::rules::build_rules;
    use super::*;
    use crate::guard::{Mode, Rule};

    /// A client of its own address (so of its own scope under the default scope).
    fn client(peer: &str) -> ClientIdentity {
        ClientIdentity::new(peer.parse::<SocketAddr>().expect("address"))
    }

    /// A memory and the rule written as `rule` (TOML), on the clock of the runtime now.
    fn memory_and_rule(rule: &str) -> (EnqueueMemory, Rule<EnqueueLimits>) {
        let text = format!("max_fingerprints = 4096\n[[rules]]\npreset = 'generic'\npattern = 'q:*'\nformat = 'raw'\n{rule}");
        let raw: RawEnqueueGuard = toml::from_str(&text).expect("rule parses");
        let mut rules = build_rules(&raw, Mode::Enforce, 0).expect("rule builds");
        (EnqueueMemory::new(&raw), rules.remove(0))
    }

    /// The job of `payload` pushed by `client` to `q:1` under the rule of `l`.
    fn pushed(
        m: &EnqueueMemory,
        l: &EnqueueLimits,
        client: &ClientIdentity,
        payload: &[u8],
        id: u64,
    ) -> JobPrint {
        JobPrint {
            fingerprint: m.job_hasher(l, client, &[b"q:1"]).hash(payload),
            id: Some(id),
            label: None,
        }
    }

    fn job(fingerprint: u64, id: u64) -> JobPrint {
        JobPrint {
            fingerprint,
            id: Some(id),
            label: None,
        }
    }

    fn seconds(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_duplicate_is_over_the_limit_until_the_window_from_its_first_enqueue_ends() {
        let (m, rule) = memory_and_rule("limit = 2\nwindow = '60s'");
        let l = &rule.limits;
        let (one, other) = (client("10.0.0.1:4000"), client("10.0.0.2:4000"));
        let job = |c: &ClientIdentity, id: u64| pushed(&m, l, c, b"work", id);
        assert_eq!(
            m.decide(l, &one, &job(&one, 1), Now::read()),
            Decision::Pass
        );
        assert_eq!(
            m.decide(l, &one, &job(&one, 2), Now::read()),
            Decision::Pass,
            "the limit is 2"
        );
        advance(seconds(59)).await;
        let over = Decision::Duplicate {
            seen: 3,
            repush: false,
        };
        assert_eq!(
            m.decide(l, &one, &job(&one, 3), Now::read()),
            over,
            "in the window"
        );
        assert_eq!(
            m.decide(l, &other, &job(&other, 4), Now::read()),
            Decision::Pass,
            "another scope counts on its own"
        );
        advance(seconds(1)).await;
        // Counted from the first enqueue: the refusal at 59 s did not extend the window.
        assert_eq!(
            m.decide(l, &one, &job(&one, 5), Now::read()),
            Decision::Pass,
            "a new window"
        );
        assert_eq!(
            m.decide(l, &one, &job(&one, 6), Now::read()),
            Decision::Pass
        );
        assert_eq!(m.decide(l, &one, &job(&one, 7), Now::read()), over);
    }

    #[tokio::test(start_paused = true)]
    async fn re_pushes_of_one_job_id_pass_unless_the_rule_counts_them() {
        let (m, rule) = memory_and_rule("limit = 1\nwindow = '10s'");
        for _ in 0..3 {
            assert_eq!(
                m.decide(
                    &rule.limits,
                    &client("10.0.0.1:4000"),
                    &job(1, 1),
                    Now::read()
                ),
                Decision::Pass
            );
        }
        let (m, rule) = memory_and_rule("limit = 1\nwindow = '10s'\nlimit_repushes = true");
        assert_eq!(
            m.decide(
                &rule.limits,
                &client("10.0.0.1:4000"),
                &job(1, 1),
                Now::read()
            ),
            Decision::Pass
        );
        let repush = Decision::Duplicate {
            seen: 2,
            repush: true,
        };
        assert_eq!(
            m.decide(
                &rule.limits,
                &client("10.0.0.1:4000"),
                &job(1, 1),
                Now::read()
            ),
            repush
        );
        advance(seconds(10)).await;
        assert_eq!(
            m.decide(
                &rule.limits,
                &client("10.0.0.1:4000"),
                &job(1, 1),
                Now::read()
            ),
            Decision::Pass
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_bucket_refills_at_its_rate_up_to_its_burst() {
        let (m, rule) = memory_and_rule("limit = 0\nrate = 2.0\nburst = 2");
        let mut next = 0;
        let mut enqueue = || {
            next += 1;
            m.decide(
                &rule.limits,
                &client("10.0.0.1:4000"),
                &job(next, next),
                Now::read(),
            )
        };
        assert_eq!(enqueue(), Decision::Pass);
        assert_eq!(enqueue(), Decision::Pass);
        assert_eq!(enqueue(), Decision::Rate, "the burst is spent");
        advance(Duration::from_millis(400)).await;
        assert_eq!(enqueue(), Decision::Rate, "0.8 tokens after 400 ms at 2/s");
        advance(Duration::from_millis(100)).await;
        assert_eq!(enqueue(), Decision::Pass, "one token after 500 ms");
        assert_eq!(enqueue(), Decision::Rate);
        advance(seconds(60)).await;
        assert_eq!(enqueue(), Decision::Pass);
        assert_eq!(enqueue(), Decision::Pass);
        assert_eq!(
            enqueue(),
            Decision::Rate,
            "an idle minute refills the burst, no more"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fingerprints_expire_with_their_window() {
        let (m, rule) = memory_and_rule("limit = 1\nwindow = '5s'");
        let me = client("10.0.0.1:4000");
        for n in 0..100u64 {
            let job = pushed(&m, &rule.limits, &me, &n.to_le_bytes(), n);
            m.decide(&rule.limits, &me, &job, Now::read());
        }
        assert_eq!(m.fingerprints.live(m.now()), 100);
        advance(Duration::from_millis(4_999)).await;
        assert_eq!(m.fingerprints.live(m.now()), 100);
        advance(Duration::from_millis(1)).await;
        assert_eq!(m.fingerprints.live(m.now()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_ids_are_remembered_for_ten_seconds() {
        let (m, _) = memory_and_rule("");
        m.remember_dropped(b"job-1");
        assert!(m.was_dropped(b"job-1", m.now()));
        assert!(!m.was_dropped(b"job-2", m.now()));
        advance(seconds(u64::from(DROPPED_ID_SECONDS) - 1)).await;
        assert!(m.was_dropped(b"job-1", m.now()));
        advance(seconds(1)).await;
        assert!(!m.was_dropped(b"job-1", m.now()));
    }

    #[tokio::test(start_paused = true)]
    async fn script_digests_are_known_in_either_case_for_a_day() {
        let (m, _) = memory_and_rule("");
        let digest = b"A94A8FE5CCB19BA61C4C0873D391E987982FBBD3";
        m.remember_script(digest);
        assert!(m.script_known(&digest.to_ascii_lowercase()));
        assert!(!m.script_known(&[b'0'; 40]));
        advance(seconds(u64::from(SCRIPT_SECONDS))).await;
        assert!(!m.script_known(digest));
    }

    #[test]
    fn learned_rule_scripts_stay_within_max_scripts() {
        let raw = RawEnqueueGuard {
            max_scripts: 64,
            ..RawEnqueueGuard::default()
        };
        let m = EnqueueMemory::new(&raw);
        let learned = 20_000;
        for i in 0u32..learned {
            let digest = sha1_smol::Sha1::from(i.to_le_bytes()).digest().bytes();
            m.remember_rule_script((i % 3) as u8, &digest);
        }
        let live = m.scripts.live(m.now());
        assert!(live > 0 && live <= m.scripts.capacity(), "{live}");
        // More were learned than the table holds: the oldest were forgotten.
        assert!(
            m.scripts.capacity() < learned as usize,
            "{}",
            m.scripts.capacity()
        );
    }

    #[tokio::test]
    async fn the_key_is_drawn_per_memory_so_two_proxies_hash_a_payload_apart() {
        let (a, _) = memory_and_rule("");
        let (b, _) = memory_and_rule("");
        let payload: &[u8] = b"{\"class\":\"Mailer\",\"args\":[42]}";
        assert_eq!(a.hash(&[b"q", payload]), a.hash(&[b"q", payload]));
        assert_ne!(a.hash(&[b"q", payload]), b.hash(&[b"q", payload]));
        let spec = super::super::payload::PayloadSpec::new(
            super::super::payload::Format::Raw,
            &[],
            &[],
            None,
            None,
        )
        .expect("raw spec");
        let (_, rule) = memory_and_rule("");
        let me = client("10.0.0.1:4000");
        let print = |m: &EnqueueMemory| {
            spec.print(
                payload,
                &m.job_hasher(&rule.limits, &me, &[b"q"]),
                m.hasher(),
            )
            .map(|j| j.fingerprint)
        };
        assert_eq!(print(&a), print(&a));
        assert_ne!(print(&a), print(&b));
    }

    #[tokio::test]
    async fn parts_cannot_run_into_each_other() {
        let (m, _) = memory_and_rule("");
        // With a separator byte after each part these two were one input.
        assert_ne!(m.hash(&[b"q\xffab", b"c"]), m.hash(&[b"q", b"ab\xffc"]));
        assert_ne!(m.hash(&[b"ab", b""]), m.hash(&[b"a", b"b"]));
        assert_ne!(m.hash(&[b""]), m.hash(&[b"", b""]));
    }

    #[test]
    fn the_key_never_prints() {
        assert_eq!(
            format!("{:?}", FingerprintKey::random()),
            "FingerprintKey(..)"
        );
    }

    #[tokio::test]
    async fn a_scope_by_address_ignores_the_port_and_the_user() {
        let (m, rule) = memory_and_rule("scope = ['address']");
        let client = |peer: &str, user: &'static [u8]| {
            let mut c = ClientIdentity::new(peer.parse::<SocketAddr>().expect("address"));
            c.user = Some(bytes::Bytes::from_static(user));
            c
        };
        let scope = |c: &ClientIdentity| m.scope(&rule.limits, c);
        let a = scope(&client("10.0.0.1:4000", b"a"));
        assert_eq!(a, scope(&client("10.0.0.1:5000", b"b")));
        assert_ne!(a, scope(&client("10.0.0.2:4000", b"a")));
        // The same for the fingerprints, which carry the scope.
        let print = |c: &ClientIdentity| m.job_hasher(&rule.limits, c, &[b"q"]).hash(b"job");
        let a = print(&client("10.0.0.1:4000", b"a"));
        assert_eq!(a, print(&client("10.0.0.1:5000", b"b")));
        assert_ne!(a, print(&client("10.0.0.2:4000", b"a")));
    }
}
