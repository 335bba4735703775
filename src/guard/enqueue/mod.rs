//! The enqueue guard: the same job enqueued again and again by one client (a retry loop that
//! spawns a job per failure, a job scheduled from every web request) is limited before it
//! fills Redis.
//!
//! A rule says which commands enqueue to which keys and how to read the job (a library
//! [`preset`], or a generic payload description). Each job gets a fingerprint of what makes
//! it the same work ([`payload`]) and the client a scope (its user, client name and/or IP
//! address; never the port, since a pool spreads one application over many). At most
//! `limit` enqueues of one fingerprint per scope pass in a `window` counted from the first;
//! an optional token bucket limits all of a scope's enqueues. A re-push of the same job id
//! (a retry, a scheduled job moving to its queue) is told apart from a new id with the same
//! content: both are counted, and re-pushes count towards the limit only with
//! `limit_repushes`.
//!
//! A job over the limit is, by the rule's action:
//! - `drop`: not sent; the client gets the reply its library expects from an enqueue. The
//!   command is rewritten to a read with the same reply type (LPUSH → LLEN, ZADD → ZCARD,
//!   XADD → ECHO of the id, a BullMQ add → ECHO of the job id, as BullMQ's own duplicate
//!   path answers), so pipelines and MULTI keep their reply counts. Of a push of several
//!   payloads only the over-limit ones are left out.
//! - `reject`: an `-ERR respguard: ...` naming the rule (never a prefix such as READONLY
//!   that makes clients reconnect and retry); inside MULTI, EXEC then answers EXECABORT.
//! - `observe`: counted and logged only.
//!
//! State lives in [`EnqueueMemory`], shared by all sessions and bounded by fixed-size
//! [`table`]s: it is lost on restart, and each proxy in front of one Redis limits its own
//! clients.

pub mod payload;
pub mod preset;
pub mod table;

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use metrics::{Counter, Gauge};

use super::{encode_arg, encode_header, printable_key, ByCommand, CommandView, Guard};
use super::{Mode, Rule, RuleKind, RuleSpec, Verdict};
use crate::command::{CommandInfo, CommandTable};
use crate::config::{ConfigError, EnqueueAction, PayloadFormat, Preset, ScopePart};
use crate::config::{RawEnqueueGuard, RawEnqueueRule};
use crate::identity::ClientIdentity;
use payload::{Format, JobPrint, PayloadSpec};
use preset::{Shape, LIST_PUSHES};
use table::BoundedTable;

/// How long a dropped RQ job's id is remembered, so the push of that id is dropped too.
const DROPPED_ID_SECONDS: u32 = 10;

/// How long a learned script digest is kept without use.
const SCRIPT_SECONDS: u32 = 24 * 3600;

/// The job id a dropped BullMQ add without a custom id is answered with.
pub const BULLMQ_DROPPED_ID: &[u8] = b"respguard-duplicate";

/// The enqueue guard's memory: fingerprints, token buckets, learned scripts and dropped job
/// ids, each a fixed-size table. One per proxy, kept when the guards are built again.
#[derive(Debug)]
pub struct EnqueueMemory {
    /// Fingerprint → (first job id hash, enqueues counted), expiring with the window.
    pub fingerprints: BoundedTable,
    /// Rule and scope → (tokens, last refill in ms).
    buckets: BoundedTable,
    /// Digests of scripts known to enqueue.
    scripts: BoundedTable,
    /// Ids of RQ jobs dropped in the last seconds.
    dropped_ids: BoundedTable,
    hashes: RandomState,
    epoch: Instant,
    evictions: Counter,
    occupied: Gauge,
}

impl EnqueueMemory {
    /// Tables sized by `[guards.enqueue]`.
    pub fn new(raw: &RawEnqueueGuard) -> Self {
        let fingerprints = BoundedTable::new(raw.max_fingerprints);
        metrics::gauge!("respguard_enqueue_fingerprints_capacity")
            .set(fingerprints.capacity() as f64);
        EnqueueMemory {
            fingerprints,
            buckets: BoundedTable::new(raw.max_buckets),
            scripts: BoundedTable::new(raw.max_scripts),
            dropped_ids: BoundedTable::new(4096),
            hashes: RandomState::new(),
            epoch: Instant::now(),
            evictions: metrics::counter!("respguard_enqueue_fingerprint_evictions_total"),
            occupied: metrics::gauge!("respguard_enqueue_fingerprints"),
        }
    }

    fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut h = self.hashes.build_hasher();
        for p in parts {
            h.write(p);
            h.write_u8(0xff);
        }
        h.finish()
    }

    fn now_ms(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }
}

/// Which commands a rule reads, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    ListPush = 1,
    Zadd = 2,
    Xadd = 4,
    Hset = 8,
    Eval = 16,
    EvalSha = 32,
    ScriptLoad = 64,
}

impl Cmd {
    fn of(name: &str) -> Option<Cmd> {
        Some(match name {
            "lpush" | "rpush" | "lpushx" | "rpushx" => Cmd::ListPush,
            "zadd" => Cmd::Zadd,
            "xadd" => Cmd::Xadd,
            "hset" | "hmset" => Cmd::Hset,
            "eval" => Cmd::Eval,
            "evalsha" => Cmd::EvalSha,
            "script|load" => Cmd::ScriptLoad,
            _ => return None,
        })
    }
}

/// What a rule does with a job over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer as if enqueued; send nothing.
    Drop,
    /// Answer an error naming the rule.
    Reject,
}

impl Action {
    /// The decision counted and logged for it.
    fn counted(self) -> super::Action {
        match self {
            Action::Drop => super::Action::Drop,
            Action::Reject => super::Action::Reject,
        }
    }
}

/// What identifies a client, as bits.
const SCOPE_USER: u8 = 1;
const SCOPE_NAME: u8 = 2;
const SCOPE_ADDRESS: u8 = 4;

/// An enqueue rule's settings.
#[derive(Debug)]
pub struct EnqueueLimits {
    index: u8,
    shape: Shape,
    commands: u8,
    scope: u8,
    limit: u32,
    window: u32,
    limit_repushes: bool,
    /// Tokens per second and bucket size.
    bucket: Option<(f64, f64)>,
    action: Action,
    /// XADD: the field holding the payload.
    field: Option<Box<[u8]>>,
    first: Counter,
    duplicate: Counter,
    repush: Counter,
    unread: Counter,
}

/// Whether a job passes, and what kind of enqueue it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Pass,
    /// Over the per-fingerprint limit after this many enqueues in the window.
    Duplicate {
        seen: u32,
        repush: bool,
    },
    /// Over the scope's token bucket.
    Rate,
}

/// The enqueue guard.
#[derive(Debug)]
pub struct EnqueueGuard {
    rules: Vec<Rule<EnqueueLimits>>,
    memory: Arc<EnqueueMemory>,
    commands: u8,
    /// Whether an RQ rule drops jobs (then pushes of their ids are dropped too).
    rq_drops: bool,
    /// By command id: which of the commands a rule may read it is.
    kinds: ByCommand<Option<Cmd>>,
    /// A whole JSON document as the fingerprint (BullMQ's job data).
    whole_json: PayloadSpec,
}

const ACTIONS: &[super::Action] = &[super::Action::Drop, super::Action::Reject];

impl EnqueueGuard {
    /// Build from `[guards.enqueue]`, remembering in `memory`, for the commands of `table`.
    pub fn build(
        raw: &RawEnqueueGuard,
        default_mode: Mode,
        logs_per_second: u32,
        memory: Arc<EnqueueMemory>,
        table: &CommandTable,
    ) -> Result<Self, ConfigError> {
        let kind = RuleKind {
            guard: "enqueue",
            actions: ACTIONS,
            default_mode,
            logs_per_second,
        };
        if raw.rules.len() > 64 {
            return Err(invalid("at most 64 rules"));
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (index, r) in raw.rules.iter().enumerate() {
            let (pattern, also, commands, shape) = rule_shape(r)?;
            let name = r
                .name
                .clone()
                .unwrap_or_else(|| r.preset.word().to_string());
            let (action, mode) = match r.action {
                EnqueueAction::Drop => (Action::Drop, None),
                EnqueueAction::Reject => (Action::Reject, None),
                EnqueueAction::Observe => (Action::Reject, Some(Mode::Observe)),
            };
            let scope = r.scope.iter().fold(0, |bits, part| {
                bits | match part {
                    ScopePart::User => SCOPE_USER,
                    ScopePart::ClientName => SCOPE_NAME,
                    ScopePart::Address => SCOPE_ADDRESS,
                }
            });
            if r.limit == 0 && r.rate.is_none() {
                return Err(invalid(format!("rule `{name}`: limit must be at least 1")));
            }
            let window = r.window.0.as_secs_f64().ceil() as u32;
            if window == 0 {
                return Err(invalid(format!(
                    "rule `{name}`: window must be at least 1s"
                )));
            }
            let bucket = match r.rate {
                Some(rate) if rate.is_finite() && rate > 0.0 => {
                    let burst = r.burst.map_or(rate.max(1.0), f64::from);
                    Some((rate, burst.max(1.0)))
                }
                Some(_) => {
                    return Err(invalid(format!("rule `{name}`: rate must be above 0")));
                }
                None if r.burst.is_some() => {
                    return Err(invalid(format!("rule `{name}`: burst needs rate")));
                }
                None => None,
            };
            let kinds = |kind: &'static str| metrics::counter!("respguard_enqueues_total", "rule" => name.clone(), "kind" => kind);
            let limits = EnqueueLimits {
                index: index as u8,
                shape,
                commands,
                scope,
                limit: if r.limit == 0 { u32::MAX } else { r.limit },
                window,
                limit_repushes: r.limit_repushes,
                bucket,
                action,
                field: r.field.as_ref().map(|f| f.as_bytes().into()),
                first: kinds("first"),
                duplicate: kinds("duplicate"),
                repush: kinds("repush"),
                unread: kinds("unread"),
            };
            let spec = RuleSpec {
                name: Some(&name),
                pattern: &pattern,
                also,
                clients: &r.clients,
                mode,
            };
            rules.push(Rule::new(kind, spec, limits));
        }
        let commands = rules.iter().fold(0, |c, r| c | r.limits.commands);
        let rq_drops = rules.iter().any(|r| {
            matches!(r.limits.shape, Shape::RqJobHash)
                && r.limits.action == Action::Drop
                && r.mode == Mode::Enforce
        });
        Ok(EnqueueGuard {
            rules,
            memory,
            commands,
            rq_drops,
            kinds: ByCommand::build(table, |info| Cmd::of(&info.name)),
            whole_json: PayloadSpec::new(Format::Json, &[], &[], None, None).map_err(invalid)?,
        })
    }

    /// The scope of `client` under `rule`, hashed.
    fn scope(&self, rule: &Rule<EnqueueLimits>, client: &ClientIdentity) -> u64 {
        let s = rule.limits.scope;
        fn part(on: bool, v: Option<&[u8]>) -> &[u8] {
            match (on, v) {
                (false, _) => b"",
                (true, Some(v)) => v,
                (true, None) => b"\0none",
            }
        }
        let (v4, v6);
        let ip: &[u8] = match client.peer.ip() {
            std::net::IpAddr::V4(a) => {
                v4 = a.octets();
                &v4
            }
            std::net::IpAddr::V6(a) => {
                v6 = a.octets();
                &v6
            }
        };
        self.memory.hash(&[
            &[rule.limits.index],
            part(s & SCOPE_USER != 0, client.user.as_deref()),
            part(s & SCOPE_NAME != 0, client.name.as_deref()),
            part(s & SCOPE_ADDRESS != 0, Some(ip)),
        ])
    }

    /// Count one enqueue of `job` and decide whether it passes.
    fn decide(&self, rule: &Rule<EnqueueLimits>, scope: u64, job: &JobPrint) -> Decision {
        let l = &rule.limits;
        let m = &self.memory;
        let key = m.hash(&[&scope.to_le_bytes(), &job.fingerprint.to_le_bytes()]);
        let table = &m.fingerprints;
        let now = table.now();
        let evictions = table.evictions();
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
            m.evictions.increment(1);
        }
        m.occupied.set(table.occupied() as f64);
        if decision != Decision::Pass {
            return decision;
        }
        match l.bucket {
            Some((rate, burst)) if !self.take_token(l.index, scope, rate, burst) => Decision::Rate,
            _ => Decision::Pass,
        }
    }

    /// Take one token from the scope's bucket; false when it is empty.
    fn take_token(&self, index: u8, scope: u64, rate: f64, burst: f64) -> bool {
        let m = &self.memory;
        let key = m.hash(&[&[index], &scope.to_le_bytes()]);
        let now_ms = m.now_ms();
        let now = m.buckets.now();
        // A bucket idle long enough to refill is as good as none.
        let refill_secs = (burst / rate).ceil() as u32 + 1;
        m.buckets.with_entry(key, now, |e| {
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

    /// The first rule that reads `cmd` for `key` written by `client`.
    fn rule_for(
        &self,
        cmd: Cmd,
        key: &[u8],
        client: &ClientIdentity,
    ) -> Option<&Rule<EnqueueLimits>> {
        self.rules
            .iter()
            .find(|r| r.limits.commands & cmd as u8 != 0 && r.applies(key, client))
    }

    /// Remember a script body's digest when it is a BullMQ add.
    fn learn_script(&self, body: &[u8]) -> bool {
        if memchr::memmem::find(body, preset::BULLMQ_ADD_MARKER).is_none() {
            return false;
        }
        let hex = sha1_smol::Sha1::from(body).digest().to_string();
        self.remember_script(hex.as_bytes());
        true
    }

    /// A script digest's key in the scripts table: Redis takes hex digits in either case.
    fn script_key(&self, sha_hex: &[u8]) -> u64 {
        let mut lower = [0u8; 40];
        let Some(lower) = lower.get_mut(..sha_hex.len()) else {
            return self.memory.hash(&[sha_hex]);
        };
        lower.copy_from_slice(sha_hex);
        lower.make_ascii_lowercase();
        self.memory.hash(&[lower])
    }

    fn remember_script(&self, sha_hex: &[u8]) {
        let m = &self.memory;
        let key = self.script_key(sha_hex);
        let now = m.scripts.now();
        m.scripts
            .with_entry(key, now, |e| *e.expires = now + SCRIPT_SECONDS);
    }

    fn script_known(&self, sha_hex: &[u8]) -> bool {
        let m = &self.memory;
        m.scripts
            .contains(self.script_key(sha_hex), m.scripts.now())
    }

    /// Log and count a job over the limit; `None` when the rule only observes.
    fn over_limit(
        &self,
        rule: &Rule<EnqueueLimits>,
        client: &ClientIdentity,
        queue: &[u8],
        job: &JobPrint,
        decision: Decision,
    ) -> Option<Action> {
        let l = &rule.limits;
        if decision == Decision::Pass {
            return None;
        }
        let enforced = rule.decided(l.action.counted(), client, || {
            let what = match &job.label {
                Some(label) => format!("job '{label}'"),
                None => "job".to_string(),
            };
            match decision {
                Decision::Duplicate { seen, repush } => format!(
                    "{what} enqueued to '{}' {seen} times in {}s by this client{} (limit {})",
                    printable_key(queue),
                    l.window,
                    if repush {
                        ", re-pushes of one job id"
                    } else {
                        ""
                    },
                    l.limit,
                ),
                _ => {
                    let (rate, burst) = l.bucket.unwrap_or_default();
                    format!("this client enqueues more than {rate}/s (burst {burst})")
                }
            }
        });
        enforced.then_some(l.action)
    }

    fn refusal(rule: &Rule<EnqueueLimits>, decision: Decision) -> Verdict {
        let why = match decision {
            Decision::Rate => "enqueue rate over the limit",
            _ => "duplicate job",
        };
        Verdict::Refuse(crate::wire::error(&format!(
            "ERR respguard: {why}, refused by enqueue rule '{}' (see the proxy's log)",
            rule.name
        )))
    }

    /// Pushes whose values are job payloads (list pushes, ZADD members, an XADD field).
    fn check_payloads(
        &self,
        rule: &Rule<EnqueueLimits>,
        spec: &PayloadSpec,
        cmd: &CommandView<'_>,
        kind: Cmd,
        client: &ClientIdentity,
        out: &mut BytesMut,
    ) -> Verdict {
        let key = cmd.arg(1).unwrap_or_default();
        let layout = match push_layout(cmd, kind, rule.limits.field.as_deref()) {
            Some(p) => p,
            None => return Verdict::Forward,
        };
        let scope = self.scope(rule, client);
        let index = [rule.limits.index];
        // Argument indices of the payloads over the limit, ascending; allocated only on a drop.
        let mut gone = Vec::new();
        for &i in &layout.payloads {
            let value = match (kind, rule.limits.field.is_some()) {
                (Cmd::Xadd, false) => &cmd.src[cmd.args[i].start..cmd.args[cmd.argc - 1].end],
                _ => cmd.arg(i).unwrap_or_default(),
            };
            let Some(job) = spec.print(value, &[&index, key], &self.memory.hashes) else {
                rule.limits.unread.increment(1);
                continue;
            };
            let decision = self.decide(rule, scope, &job);
            match self.over_limit(rule, client, key, &job, decision) {
                None => {}
                Some(Action::Reject) => return Self::refusal(rule, decision),
                Some(Action::Drop) => gone.push(i),
            }
        }
        if gone.is_empty() {
            return Verdict::Forward;
        }
        drop_payloads(out, cmd, kind, &layout, &gone)
    }

    /// RQ: `HSET rq:job:<id> ... data <...> origin <queue> ...` is the enqueue.
    fn check_rq_job(
        &self,
        rule: &Rule<EnqueueLimits>,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        out: &mut BytesMut,
    ) -> Verdict {
        let key = cmd.arg(1).unwrap_or_default();
        let (mut data, mut origin, mut description) = (None, None, None);
        let mut i = 2;
        while i + 1 < cmd.argc {
            match cmd.arg(i).unwrap_or_default() {
                b"data" => data = cmd.arg(i + 1),
                b"origin" => origin = cmd.arg(i + 1),
                b"description" => description = cmd.arg(i + 1),
                _ => {}
            }
            i += 2;
        }
        let Some(data) = data else {
            // Status updates and other writes to the job hash.
            return Verdict::Forward;
        };
        let m = &self.memory;
        let origin = origin.unwrap_or_default();
        let job_id = rq_job_id(key);
        let job = JobPrint {
            fingerprint: m.hash(&[&[rule.limits.index], origin, data]),
            id: Some(m.hash(&[job_id])),
            label: description.map(|d| String::from_utf8_lossy(d).into_owned()),
        };
        let scope = self.scope(rule, client);
        let decision = self.decide(rule, scope, &job);
        match self.over_limit(rule, client, origin, &job, decision) {
            None => Verdict::Forward,
            Some(Action::Reject) => Self::refusal(rule, decision),
            Some(Action::Drop) => {
                let repush = matches!(decision, Decision::Duplicate { repush: true, .. });
                if repush {
                    // The job exists already: leave it alone.
                    encode(out, &[b"EXISTS", key]);
                } else {
                    // A new job's hash: remove what this transaction wrote of it so far.
                    encode(out, &[b"DEL", key]);
                    let now = m.dropped_ids.now();
                    m.dropped_ids.with_entry(m.hash(&[job_id]), now, |e| {
                        *e.expires = now + DROPPED_ID_SECONDS
                    });
                }
                rewritten(out)
            }
        }
    }

    /// A push of a dropped RQ job's id (to its queue or a registry) is dropped as well.
    fn check_dropped_ids(&self, cmd: &CommandView<'_>, kind: Cmd, out: &mut BytesMut) -> Verdict {
        let key = cmd.arg(1).unwrap_or_default();
        if !key.starts_with(b"rq:") {
            return Verdict::Forward;
        }
        let Some(layout) = push_layout(cmd, kind, None) else {
            return Verdict::Forward;
        };
        let m = &self.memory;
        let now = m.dropped_ids.now();
        let gone: Vec<usize> = layout
            .payloads
            .iter()
            .copied()
            .filter(|&i| {
                m.dropped_ids
                    .contains(m.hash(&[cmd.arg(i).unwrap_or_default()]), now)
            })
            .collect();
        if gone.is_empty() {
            return Verdict::Forward;
        }
        drop_payloads(out, cmd, kind, &layout, &gone)
    }

    /// BullMQ: EVAL or EVALSHA of an add script.
    fn check_script(
        &self,
        cmd: &CommandView<'_>,
        kind: Cmd,
        client: &ClientIdentity,
        out: &mut BytesMut,
    ) -> Verdict {
        let numkeys = cmd
            .arg(2)
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        if numkeys == 0 || cmd.argc < 3 + numkeys + 2 {
            return Verdict::Forward;
        }
        // An EVAL body is learned whatever its keys: its digest may come with other keys.
        let learned = kind == Cmd::Eval && self.learn_script(cmd.arg(1).unwrap_or_default());
        let first_key = cmd.arg(3).unwrap_or_default();
        let Some(rule) = self.rule_for(kind, first_key, client) else {
            return Verdict::Forward;
        };
        let known =
            learned || (kind == Cmd::EvalSha && self.script_known(cmd.arg(1).unwrap_or_default()));
        let argv = 3 + numkeys;
        let Some(add) = preset::bullmq_add(
            cmd.arg(argv).unwrap_or_default(),
            cmd.arg(argv + 1).unwrap_or_default(),
        ) else {
            return Verdict::Forward;
        };
        if !known {
            // A script loaded before the proxy started: recognised by its keys' shape.
            let keys: Vec<&[u8]> = (3..argv).filter_map(|i| cmd.arg(i)).collect();
            if !preset::bullmq_keys_fit(add.prefix, &keys) {
                return Verdict::Forward;
            }
            if kind == Cmd::EvalSha {
                self.remember_script(cmd.arg(1).unwrap_or_default());
            }
        }
        let m = &self.memory;
        let context: [&[u8]; 3] = [&[rule.limits.index], add.prefix, add.name];
        let fingerprint = self
            .whole_json
            .print(add.data, &context, &m.hashes)
            .map_or_else(
                || m.hash(&[&context[0..3].concat(), add.data]),
                |p| p.fingerprint,
            );
        let job = JobPrint {
            fingerprint,
            id: (!add.job_id.is_empty()).then(|| m.hash(&[add.job_id])),
            label: Some(String::from_utf8_lossy(add.name).into_owned()),
        };
        let scope = self.scope(rule, client);
        let decision = self.decide(rule, scope, &job);
        match self.over_limit(rule, client, add.prefix, &job, decision) {
            None => Verdict::Forward,
            Some(Action::Reject) => Self::refusal(rule, decision),
            Some(Action::Drop) => {
                // BullMQ's own answer to a duplicate: the existing job's id.
                let id = if add.job_id.is_empty() {
                    BULLMQ_DROPPED_ID
                } else {
                    add.job_id
                };
                encode(out, &[b"ECHO", id]);
                rewritten(out)
            }
        }
    }
}

impl Guard for EnqueueGuard {
    fn name(&self) -> &'static str {
        "enqueue"
    }

    fn wants(&self, info: &CommandInfo) -> bool {
        let Some(cmd) = self.kinds.get(info) else {
            return false;
        };
        let rq_pushes = if self.rq_drops {
            Cmd::ListPush as u8 | Cmd::Zadd as u8
        } else {
            0
        };
        // EVAL is read for learning whenever EVALSHA is wanted.
        let learn = if self.commands & Cmd::EvalSha as u8 != 0 {
            Cmd::ScriptLoad as u8 | Cmd::Eval as u8
        } else {
            0
        };
        (self.commands | rq_pushes | learn) & cmd as u8 != 0
    }

    fn check(&self, cmd: &CommandView<'_>, client: &ClientIdentity, out: &mut BytesMut) -> Verdict {
        let Some(kind) = self.kinds.get(cmd.info) else {
            return Verdict::Forward;
        };
        if !cmd.is_whole() {
            // A payload too large to hold is not read; the size guard is the one for it.
            if let Some(rule) = cmd.arg(1).and_then(|key| self.rule_for(kind, key, client)) {
                rule.limits.unread.increment(1);
            }
            return Verdict::Forward;
        }
        match kind {
            Cmd::ScriptLoad => {
                self.learn_script(cmd.arg(2).unwrap_or_default());
                return Verdict::Forward;
            }
            Cmd::Eval | Cmd::EvalSha => return self.check_script(cmd, kind, client, out),
            _ => {}
        }
        let key = cmd.arg(1).unwrap_or_default();
        match self.rule_for(kind, key, client) {
            Some(rule) => match &rule.limits.shape {
                Shape::Payload(spec) => self.check_payloads(rule, spec, cmd, kind, client, out),
                Shape::RqJobHash => self.check_rq_job(rule, cmd, client, out),
                Shape::BullmqScript => Verdict::Forward,
            },
            None if self.rq_drops && matches!(kind, Cmd::ListPush | Cmd::Zadd) => {
                self.check_dropped_ids(cmd, kind, out)
            }
            None => Verdict::Forward,
        }
    }
}

/// Where a push's payloads are.
struct PushLayout {
    /// Argument indices of the payloads (ZADD: the members).
    payloads: Vec<usize>,
    /// XADD: the index of the entry id.
    xadd_id: usize,
}

/// The payloads of a push. `None` for a form that does not enqueue (ZADD INCR) or that
/// does not parse (Redis will answer it with an error).
fn push_layout(cmd: &CommandView<'_>, kind: Cmd, field: Option<&[u8]>) -> Option<PushLayout> {
    let argc = cmd.argc;
    let word = |i: usize| {
        cmd.arg(i)
            .map(|a| a.to_ascii_lowercase())
            .unwrap_or_default()
    };
    match kind {
        Cmd::ListPush => Some(PushLayout {
            payloads: (2..argc).collect(),
            xadd_id: 0,
        }),
        Cmd::Zadd => {
            let mut i = 2;
            while i < argc {
                match word(i).as_slice() {
                    b"nx" | b"xx" | b"gt" | b"lt" | b"ch" => i += 1,
                    b"incr" => return None,
                    _ => break,
                }
            }
            if i >= argc || (argc - i) % 2 != 0 {
                return None;
            }
            Some(PushLayout {
                payloads: (i + 1..argc).step_by(2).collect(),
                xadd_id: 0,
            })
        }
        Cmd::Xadd => {
            let mut i = 2;
            while i < argc {
                match word(i).as_slice() {
                    b"nomkstream" => i += 1,
                    b"maxlen" | b"minid" => {
                        i += 1;
                        if matches!(cmd.arg(i), Some(b"=") | Some(b"~")) {
                            i += 1;
                        }
                        i += 1;
                    }
                    b"limit" => i += 2,
                    _ => break,
                }
            }
            let id = i;
            let first = id + 1;
            if first >= argc || (argc - first) % 2 != 0 {
                return None;
            }
            let payloads = match field {
                // The value of the named field.
                Some(f) => (first..argc)
                    .step_by(2)
                    .find(|&j| cmd.arg(j) == Some(f))
                    .map(|j| vec![j + 1])?,
                // All fields and values, from the first field on.
                None => vec![first],
            };
            Some(PushLayout {
                payloads,
                xadd_id: id,
            })
        }
        _ => None,
    }
}

/// RQ's job id: the key after `rq:job:` (the whole key for another prefix).
fn rq_job_id(key: &[u8]) -> &[u8] {
    key.strip_prefix(b"rq:job:").unwrap_or(key)
}

/// Leave the payloads at argument indices `gone` (ascending, a subset of the layout's) out
/// of a push: send the push without them, or, when none is left, a read with the same reply
/// type (LPUSH → LLEN, ZADD → ZCARD, XADD → ECHO of the entry id).
fn drop_payloads(
    out: &mut BytesMut,
    cmd: &CommandView<'_>,
    kind: Cmd,
    layout: &PushLayout,
    gone: &[usize],
) -> Verdict {
    let key = cmd.arg(1).unwrap_or_default();
    if gone.len() < layout.payloads.len() {
        encode_without(out, cmd, gone, kind == Cmd::Zadd);
        return rewritten(out);
    }
    match kind {
        Cmd::Zadd => encode(out, &[b"ZCARD", key]),
        Cmd::Xadd => {
            let id = cmd.arg(layout.xadd_id).unwrap_or(b"*");
            let made;
            let id = if id == b"*" {
                made = format!("{}-0", unix_ms());
                made.as_bytes()
            } else {
                id
            };
            encode(out, &[b"ECHO", id]);
        }
        _ => encode(out, &[b"LLEN", key]),
    }
    rewritten(out)
}

/// The verdict for a command replaced by what was written to `out`.
fn rewritten(out: &BytesMut) -> Verdict {
    Verdict::Rewrite {
        replacement: Some(out.len()),
        hidden: 0,
    }
}

/// Write `cmd` without the arguments at `gone` (and, with `scored`, the ZADD score before
/// each of them).
fn encode_without(out: &mut BytesMut, cmd: &CommandView<'_>, gone: &[usize], scored: bool) {
    let skip = |i: usize| {
        gone.binary_search(&i).is_ok() || (scored && gone.binary_search(&(i + 1)).is_ok())
    };
    let width = if scored { 2 } else { 1 };
    encode_header(out, cmd.argc - gone.len() * width);
    for (i, r) in cmd.args.iter().enumerate() {
        if !skip(i) {
            encode_arg(out, &cmd.src[r.clone()]);
        }
    }
}

fn encode(out: &mut BytesMut, args: &[&[u8]]) {
    encode_header(out, args.len());
    for a in args {
        encode_arg(out, a);
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn invalid(reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: "guards.enqueue.rules",
        reason: reason.into(),
    }
}

/// A rule's key pattern, commands (as bits) and job shape, from its preset or its generic
/// settings.
fn rule_shape(
    r: &RawEnqueueRule,
) -> Result<(String, &'static [&'static str], u8, Shape), ConfigError> {
    let generic_only = r.commands.is_some()
        || r.format.is_some()
        || !r.include.is_empty()
        || !r.exclude.is_empty()
        || r.job_id.is_some()
        || r.label.is_some()
        || r.field.is_some();
    let bits = |names: &[&str]| {
        names
            .iter()
            .filter_map(|n| Cmd::of(n))
            .fold(0, |b, c| b | c as u8)
    };
    if let Some(p) = preset::preset(r.preset.word()) {
        if generic_only {
            return Err(invalid(format!(
                "preset `{}` reads its library's own format: commands, format, include, exclude, job_id, label and field are for `generic`",
                r.preset.word()
            )));
        }
        // The preset's own keys, unless the rule names its keys itself.
        let (pattern, also) = match &r.pattern {
            Some(own) => (own.clone(), &[][..]),
            None => (p.pattern.to_string(), p.also),
        };
        return Ok((pattern, also, bits(p.commands), p.shape));
    }
    debug_assert_eq!(
        r.preset,
        Preset::Generic,
        "every other preset is in preset::NAMES"
    );
    let pattern = r
        .pattern
        .clone()
        .ok_or_else(|| invalid("a generic rule needs a pattern"))?;
    let default_commands = [LIST_PUSHES, &["zadd"]].concat();
    let names: Vec<String> = match &r.commands {
        Some(c) => c.iter().map(|n| n.to_ascii_lowercase()).collect(),
        None => default_commands.iter().map(|s| s.to_string()).collect(),
    };
    let mut commands = 0;
    for n in &names {
        match Cmd::of(n) {
            Some(c @ (Cmd::ListPush | Cmd::Zadd | Cmd::Xadd)) => commands |= c as u8,
            _ => {
                return Err(invalid(format!(
                    "command `{n}`: a generic rule reads LPUSH, RPUSH, LPUSHX, RPUSHX, ZADD or XADD"
                )))
            }
        }
    }
    let format = match r.format.unwrap_or(PayloadFormat::Json) {
        PayloadFormat::Json => Format::Json,
        PayloadFormat::Raw => Format::Raw,
    };
    if format == Format::Json && commands & Cmd::Xadd as u8 != 0 && r.field.is_none() {
        return Err(invalid(
            "a generic JSON rule reading XADD needs `field`, the stream field holding the payload",
        ));
    }
    let spec = PayloadSpec::new(
        format,
        &r.include,
        &r.exclude,
        r.job_id.as_deref(),
        r.label.as_deref(),
    )
    .map_err(invalid)?;
    Ok((pattern, &[], commands, Shape::Payload(Box::new(spec))))
}
