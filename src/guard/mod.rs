//! The guard engine: every command a guard cares about passes through the guards, in a fixed
//! order, and comes out with a [`Verdict`].
//!
//! A guard is a value with one method, [`Guard::check`]. It sees the command (name, keys,
//! arguments, or the head of a command too large to hold), the client's identity, and a
//! scratch buffer to write into; it answers:
//! - [`Verdict::Forward`]: send the command as it is;
//! - [`Verdict::Rewrite`]: send what the guard wrote instead, possibly followed by extra
//!   commands whose replies the client never sees;
//! - [`Verdict::Answer`]: reply to the client without asking Redis;
//! - [`Verdict::Refuse`]: reply with an error that names the guard, the rule and the reason.
//!
//! The order is written once, in [`Guards::build`]: the size guard first (a refused command
//! is never rewritten), then the shed guard (memory pressure), the queue guard (queue
//! depth), the enqueue guard (duplicate jobs), and the TTL guard last. The first guard whose verdict is not `Forward`
//! decides. Guards never touch sockets and never block; the session carries their verdicts
//! out, so no guard special-cases the session.
//!
//! Rules are chosen by key pattern (first match wins), optionally narrowed to a user, a client
//! name or a client network. Each rule has a mode: `enforce`, or `observe`, where the guard
//! counts and logs what it would have done and the command is forwarded unchanged. Every
//! decision is counted through pre-registered metric handles labelled with guard, rule,
//! action and mode; refusals are logged at most `guards.refusal_logs_per_second` times per
//! rule.

pub mod enqueue;
pub mod fail_open;
pub mod pattern;
pub mod queue;
pub mod shed;
pub mod size;
pub mod ttl;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use metrics::Counter;

use crate::command::{CommandInfo, CommandTable};
use crate::config::{ClientMatch, ConfigError, RawGuards};
use crate::identity::ClientIdentity;
use crate::pressure::{MemoryPressure, Thresholds};
use crate::resp;
use pattern::KeyPattern;
use queue::{QueueDepths, QueueGuard, QueueHandle};

pub use crate::config::Mode;

/// What a guard did, as the `action` label of `respguard_guard_decisions_total`. Each rule
/// registers a counter for the actions its guard takes, indexed by this enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Size guard: a value, request or element count over a limit.
    Refused,
    /// Shed guard: a low-priority write at the `soft` level.
    RefuseSoft,
    /// Shed guard: a write at the `hard` level.
    RefuseHard,
    /// Queue guard: a push to a queue at its `max_depth`.
    Refuse,
    /// TTL guard: a key given the rule's TTL.
    TtlAdded,
    /// TTL guard: an expiry lowered to `max_ttl`.
    TtlClamped,
    /// TTL guard: a TTL not set because the client's Redis user may not (ACL).
    TtlSkipped,
    /// Fail-open: answered as an empty cache.
    Answer,
    /// Enqueue guard: a job answered as enqueued but not sent.
    Drop,
    /// Enqueue guard: a job refused with an error.
    Reject,
}

impl Action {
    const COUNT: usize = Action::Reject as usize + 1;

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Action::Refused => "refused",
            Action::RefuseSoft => "refuse_soft",
            Action::RefuseHard => "refuse_hard",
            Action::Refuse => "refuse",
            Action::TtlAdded => "ttl_added",
            Action::TtlClamped => "ttl_clamped",
            Action::TtlSkipped => "ttl_skipped",
            Action::Answer => "answer",
            Action::Drop => "drop",
            Action::Reject => "reject",
        }
    }

    /// How the log line says it in enforce mode (`refused: …`), or `None` when an enforced
    /// decision is not logged (it changes nothing the client sees).
    fn enforced(self) -> Option<&'static str> {
        match self {
            Action::Refused | Action::RefuseSoft | Action::RefuseHard | Action::Refuse => {
                Some("refused")
            }
            Action::TtlSkipped => Some("skipped"),
            Action::Drop => Some("dropped"),
            Action::Reject => Some("rejected"),
            Action::TtlAdded | Action::TtlClamped | Action::Answer => None,
        }
    }

    /// How the log line says it in observe mode (`observe: would refuse: …`).
    fn observed(self) -> &'static str {
        match self {
            Action::Refused | Action::RefuseSoft | Action::RefuseHard | Action::Refuse => "refuse",
            Action::TtlAdded => "add a TTL",
            Action::TtlClamped => "lower a TTL",
            Action::TtlSkipped => "skip",
            Action::Answer => "answer",
            Action::Drop | Action::Reject => "limit",
        }
    }
}

/// A value per command id, computed from the command table when the guards are built, so a
/// guard tells what kind of command it holds with one index instead of comparing names.
#[derive(Debug)]
pub struct ByCommand<T>(Box<[T]>);

impl<T: Copy + Default> ByCommand<T> {
    /// `kind(info)` for every command of `table`.
    pub fn build(table: &CommandTable, kind: impl Fn(&CommandInfo) -> T) -> Self {
        let mut values = Vec::new();
        for info in table.all() {
            let id = info.id as usize;
            if values.len() <= id {
                values.resize(id + 1, T::default());
            }
            values[id] = kind(info);
        }
        ByCommand(values.into_boxed_slice())
    }

    /// The value for `info` (the default for a command the table did not have).
    #[inline]
    pub fn get(&self, info: &CommandInfo) -> T {
        self.by_id(info.id)
    }

    /// The value for the command with id `id`.
    #[inline]
    pub fn by_id(&self, id: u16) -> T {
        self.0.get(id as usize).copied().unwrap_or_default()
    }
}

/// What a guard decided about one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send the command unchanged.
    Forward,
    /// Send what the guard wrote to the scratch buffer: its first `replacement` bytes (when
    /// `Some`) instead of the command, then `hidden` commands whose replies are hidden.
    Rewrite {
        replacement: Option<usize>,
        hidden: u32,
    },
    /// Answer the client with these bytes; Redis never sees the command.
    Answer(Bytes),
    /// Refuse the command with this error reply; Redis never sees the command.
    Refuse(Bytes),
    /// Forward unchanged (as far as this guard is concerned) and record the reply's length
    /// as this queue's depth. Only the queue guard says this; [`Guards::check`] turns it
    /// into its `tracked` output and goes on with the chain.
    Track(QueueHandle),
}

/// The command a guard looks at. Argument `i` is `src[args[i]]`.
#[derive(Debug)]
pub struct CommandView<'a> {
    /// The bytes the argument ranges index.
    pub src: &'a [u8],
    /// The arguments available (all of them, or those before a streamed one).
    pub args: &'a [Range<usize>],
    /// Indices of the arguments that are keys, ascending and without duplicates.
    pub keys: &'a [usize],
    /// What the command table says of the command.
    pub info: &'a CommandInfo,
    /// The declared argument count.
    pub argc: usize,
    /// For a command too large to hold: the declared length of argument `args.len()`, which
    /// is arriving now. `None` for a whole command.
    pub streaming: Option<u64>,
    /// What the client's Redis user may run for a guard that sends scripts or expiries.
    pub access: ScriptAccess,
    /// The command's size in bytes (for a streamed command, at least this many).
    pub size: u64,
    /// Where in `src` the arguments lie exactly as the client encoded them, after the
    /// `*N` line: for a whole multibulk command all of them (a guard appending arguments
    /// copies these bytes instead of encoding each argument again); for a streamed command
    /// its head, up to where the streamed rest begins. `None` for inline commands.
    pub wire: Option<Range<usize>>,
}

/// What the client's Redis user may run on the guards' behalf, as the session learnt it
/// from a probe ([`PROBE`]) after connecting and after each change of user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptAccess {
    /// EVAL and PEXPIRE (or not known yet: the session holds guarded writes back while a
    /// probe is in flight, so this means "not denied").
    Allowed,
    /// EVAL, but not PEXPIRE: no key can be given an expiry.
    NoExpire,
    /// Not EVAL (scripts are denied), so no write can be wrapped.
    NoScripts,
}

impl ScriptAccess {
    /// Read the probe's reply: an error (EVAL refused), `:1` (PEXPIRE refused), or else
    /// allowed (`:2`, or `:0` when the user's key patterns leave the answer open).
    pub fn from_probe_reply(is_error: bool, value: Option<i64>) -> Self {
        match (is_error, value) {
            (true, _) => ScriptAccess::NoScripts,
            (false, Some(1)) => ScriptAccess::NoExpire,
            _ => ScriptAccess::Allowed,
        }
    }
}

/// The probe a session sends (its reply hidden) to learn its user's [`ScriptAccess`]: EVAL
/// itself, then PEXPIRE against GET on a probe key, so a user whose key patterns exclude the
/// probe key is not mistaken for one denied PEXPIRE. Nothing is run or logged in ACL LOG.
pub const PROBE: &[u8] = b"*3\r\n$4\r\nEVAL\r\n$153\r\nlocal k = 'respguard:probe' if redis.acl_check_cmd('pexpire', k, '1', 'NX') then return 2 end if redis.acl_check_cmd('get', k) then return 1 end return 0\r\n$1\r\n0\r\n";

/// The arguments of a whole multibulk command `src[start..end]`, as encoded: everything
/// after the `*N` line (see [`CommandView::wire`]). Like Redis, the line ends at its `\r`
/// and the byte after it, whatever that byte is.
pub fn wire_args(src: &[u8], start: usize, end: usize) -> Option<Range<usize>> {
    let cr = memchr::memchr(b'\r', &src[start..end])?;
    let args = start + cr + 2;
    (args <= end).then_some(args..end)
}

/// The argument indices of a command's keys into `keys` (its capacity kept), sorted and
/// unique: several key specifications may list keys out of order or twice, and guards rely
/// on a sorted, unique list to tell keys from values in O(log n).
pub fn find_keys(
    info: &CommandInfo,
    src: &[u8],
    args: &[std::ops::Range<usize>],
    argc: usize,
    keys: &mut Vec<usize>,
) {
    keys.clear();
    info.key_positions_by(argc, |i| args.get(i).map(|r| &src[r.clone()]), keys);
    keys.sort_unstable();
    keys.dedup();
}

impl<'a> CommandView<'a> {
    /// Argument `i`, if available.
    pub fn arg(&self, i: usize) -> Option<&'a [u8]> {
        self.args.get(i).map(|r| &self.src[r.clone()])
    }

    /// True when argument `i` is a key.
    #[inline]
    pub fn is_key(&self, i: usize) -> bool {
        self.keys.binary_search(&i).is_ok()
    }

    /// True for a whole command (not streamed).
    pub fn is_whole(&self) -> bool {
        self.streaming.is_none()
    }
}

/// One guard.
pub trait Guard: Send + Sync {
    /// The guard's name, as in metrics and errors.
    fn name(&self) -> &'static str;
    /// Whether the guard ever acts on this command; asked once per command when the guards
    /// are built, so the hot path skips commands no guard wants with one lookup.
    fn wants(&self, info: &CommandInfo) -> bool;
    /// Decide about one command. Anything written to `out` is used only with a `Rewrite`.
    fn check(&self, cmd: &CommandView<'_>, client: &ClientIdentity, out: &mut BytesMut) -> Verdict;
}

/// The state guards share with the rest of the proxy: the memory monitor's readings and the
/// queue depths. Created once per proxy; guards built again keep using the same state.
#[derive(Debug, Clone)]
pub struct GuardContext {
    /// Redis memory pressure, written by the monitor.
    pub pressure: Arc<MemoryPressure>,
    /// Depths of followed queues.
    pub queues: Arc<QueueDepths>,
    /// What the enqueue guard remembers of recent jobs.
    pub enqueue: Arc<enqueue::EnqueueMemory>,
}

impl GuardContext {
    /// A context for `raw`'s settings.
    pub fn new(raw: &RawGuards) -> Self {
        let s = &raw.shed;
        GuardContext {
            pressure: Arc::new(MemoryPressure::new(Thresholds::new(
                s.soft_enter,
                s.soft_exit,
                s.hard_enter,
                s.hard_exit,
            ))),
            queues: Arc::new(QueueDepths::from_config(&raw.queue)),
            enqueue: Arc::new(enqueue::EnqueueMemory::new(&raw.enqueue)),
        }
    }
}

/// The guards, in order, and which commands each of them wants.
pub struct Guards {
    chain: Vec<Arc<dyn Guard>>,
    /// By command id: bit `i` is set when guard `i` wants the command (at most 8 guards).
    wanted: Vec<u8>,
    /// The shed guard's bit (0 without it): it acts only while memory is under pressure.
    shed_bit: u8,
    /// The TTL guard's bit (0 without it, or when all its rules observe): it may send
    /// scripts and expiries as the user.
    ttl_bit: u8,
    /// What the shed guard reads.
    pressure: Arc<MemoryPressure>,
    /// Answers for cache keys while Redis is down.
    fail_open: Option<fail_open::FailOpen>,
}

impl std::fmt::Debug for Guards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.chain.iter().map(|g| g.name()).collect();
        f.debug_struct("Guards").field("chain", &names).finish()
    }
}

impl Guards {
    /// Build the guards from their configuration, for the commands of `table`. This is the
    /// one place the order of guards is written.
    pub fn build(
        raw: &RawGuards,
        table: &CommandTable,
        context: &GuardContext,
    ) -> Result<Self, ConfigError> {
        let mode = raw.mode;
        let logs = raw.refusal_logs_per_second;
        let mut chain: Vec<Arc<dyn Guard>> = Vec::new();
        if !raw.size.rules.is_empty() {
            chain.push(Arc::new(size::SizeGuard::build(&raw.size, mode, logs)?));
        }
        // Built (and its counters registered) even when no level is on, as always.
        let pressure = Arc::clone(&context.pressure);
        let shed = shed::ShedGuard::build(&raw.shed, mode, logs, pressure, table);
        let mut shed_bit = 0;
        if raw.shed.soft_enter > 0.0 || raw.shed.hard_enter > 0.0 {
            shed_bit = 1 << chain.len();
            chain.push(Arc::new(shed));
        }
        if !raw.queue.rules.is_empty() {
            let depths = Arc::clone(&context.queues);
            chain.push(Arc::new(QueueGuard::build(&raw.queue, mode, logs, depths)));
        }
        if !raw.enqueue.rules.is_empty() {
            let memory = Arc::clone(&context.enqueue);
            let enqueue = enqueue::EnqueueGuard::build(&raw.enqueue, mode, logs, memory, table)?;
            chain.push(Arc::new(enqueue));
        }
        let mut ttl_bit = 0;
        if !raw.ttl.rules.is_empty() {
            let ttl = ttl::TtlGuard::build(&raw.ttl, mode, logs, table)?;
            // A TTL guard that only observes sends nothing as the user: no probe needed.
            if ttl.enforces() {
                ttl_bit = 1 << chain.len();
            }
            chain.push(Arc::new(ttl));
        }
        let fail_open = fail_open::FailOpen::build(&raw.fail_open, table, logs);
        debug_assert!(chain.len() <= 8, "the wanted bitmask holds eight guards");
        let wanted = table
            .all()
            .map(|info| {
                chain
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.wants(info))
                    .fold(0u8, |bits, (i, _)| bits | 1 << i)
            })
            .collect();
        Ok(Guards {
            chain,
            wanted,
            shed_bit,
            ttl_bit,
            pressure: Arc::clone(&context.pressure),
            fail_open,
        })
    }

    /// No guards at all.
    pub fn none() -> Self {
        Guards {
            chain: Vec::new(),
            wanted: Vec::new(),
            shed_bit: 0,
            ttl_bit: 0,
            pressure: Arc::new(MemoryPressure::new(Thresholds::new(0.0, 0.0, 0.0, 0.0))),
            fail_open: None,
        }
    }

    /// Whether any guard wants the command with this id.
    #[inline]
    pub fn wants(&self, command: u16) -> bool {
        self.wanted
            .get(command as usize)
            .is_some_and(|&bits| bits != 0)
    }

    /// Whether a guard that wants this command (of `size` bytes) may act on it now; when
    /// none may, the command is forwarded without finding its keys. Only the shed guard can
    /// say no (while memory is low), and a memory-growing write is counted towards the
    /// pressure estimate here, whatever the other guards decide.
    #[inline]
    pub fn engaged(&self, command: u16, size: u64) -> bool {
        let bits = self.wanted.get(command as usize).copied().unwrap_or(0);
        let shed = bits & self.shed_bit != 0 && self.pressure.engaged_for_write(size);
        shed || bits & !self.shed_bit != 0
    }

    /// Whether a guard may send scripts or expiries as the client's user for this command
    /// (the TTL guard wants it), so the session must know the user's [`ScriptAccess`].
    #[inline]
    pub fn needs_access(&self, command: u16) -> bool {
        self.wanted
            .get(command as usize)
            .is_some_and(|&bits| bits & self.ttl_bit != 0)
    }

    /// Whether any guard ever needs to know the user's [`ScriptAccess`].
    pub fn probes_access(&self) -> bool {
        self.ttl_bit != 0
    }

    /// The memory pressure the shed guard reads, for the session to mark it stale.
    pub fn pressure(&self) -> &MemoryPressure {
        &self.pressure
    }

    /// Fail-open answers, when rules are configured.
    pub fn fail_open(&self) -> Option<&fail_open::FailOpen> {
        self.fail_open.as_ref()
    }

    /// Run the guards in order; the first verdict that is neither `Forward` nor `Track`
    /// decides. A followed queue's handle is left in `tracked`.
    pub fn check(
        &self,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        out: &mut BytesMut,
        tracked: &mut Option<QueueHandle>,
    ) -> Verdict {
        let bits = self.wanted.get(cmd.info.id as usize).copied().unwrap_or(0);
        for (i, guard) in self.chain.iter().enumerate() {
            if bits & (1 << i) == 0 {
                continue;
            }
            out.clear();
            match guard.check(cmd, client, out) {
                Verdict::Forward => continue,
                Verdict::Track(q) => *tracked = Some(q),
                decided => return decided,
            }
        }
        Verdict::Forward
    }
}

/// Which clients and keys a rule applies to, its name and mode, its counters and its log
/// limiter. `L` is the guard's own settings.
///
/// Counting, logging and observe mode are done here, once, by [`Rule::decided`]: a guard
/// says what it would do and acts only when that returns true.
#[derive(Debug)]
pub struct Rule<L> {
    /// The rule's name in errors, logs and metrics: its pattern unless it has a name.
    pub name: String,
    guard: &'static str,
    pattern: KeyPattern,
    user: Option<Box<[u8]>>,
    client_name: Option<Box<[u8]>>,
    client_address: Option<ipnet::IpNet>,
    /// Enforce or observe.
    pub mode: Mode,
    /// The guard's settings for this rule.
    pub limits: L,
    /// By [`Action`]: the counter of each action the guard registered.
    counters: [Option<Counter>; Action::COUNT],
    log: LogLimiter,
}

/// What selects a rule's keys and clients, its name and mode, as the configuration gives
/// them.
pub struct RuleSpec<'a> {
    /// The rule's name; its pattern when `None`.
    pub name: Option<&'a str>,
    /// Key pattern.
    pub pattern: &'a str,
    /// Further patterns, any of which also selects a key (a library preset's other keys).
    pub also: &'a [&'a str],
    /// The client filters.
    pub clients: &'a ClientMatch,
    /// The rule's own mode; the `[guards]` mode when `None`.
    pub mode: Option<Mode>,
}

impl<'a> RuleSpec<'a> {
    /// A rule selected by `pattern` and `clients`, named by its pattern.
    pub fn new(pattern: &'a str, clients: &'a ClientMatch, mode: Option<Mode>) -> Self {
        RuleSpec {
            name: None,
            pattern,
            also: &[],
            clients,
            mode,
        }
    }
}

/// What every rule of one guard shares: the guard's name, the actions it counts, the
/// `[guards]` mode and the log limit.
#[derive(Debug, Clone, Copy)]
pub struct RuleKind {
    /// The guard's name, as in metrics and logs.
    pub guard: &'static str,
    /// The actions the guard's rules count (one counter each, registered at build).
    pub actions: &'static [Action],
    /// The mode of rules that set none.
    pub default_mode: Mode,
    /// Log lines per second per rule.
    pub logs_per_second: u32,
}

impl<L> Rule<L> {
    /// Build a rule of `kind`, registering one counter per action.
    pub fn new(kind: RuleKind, spec: RuleSpec<'_>, limits: L) -> Self {
        let pattern = if spec.also.is_empty() {
            KeyPattern::new(spec.pattern)
        } else {
            KeyPattern::any_of(&[&[spec.pattern][..], spec.also].concat())
        };
        let mode = spec.mode.unwrap_or(kind.default_mode);
        let name = spec.name.unwrap_or(spec.pattern);
        let mut counters: [Option<Counter>; Action::COUNT] = Default::default();
        for &action in kind.actions {
            counters[action as usize] = Some(metrics::counter!(
                "respguard_guard_decisions_total",
                "guard" => kind.guard,
                "rule" => name.to_string(),
                "action" => action.label(),
                "mode" => mode.label(),
            ));
        }
        let clients = spec.clients;
        Rule {
            name: name.to_string(),
            guard: kind.guard,
            pattern,
            user: clients.user.as_deref().map(|u| u.as_bytes().into()),
            client_name: clients.client_name.as_deref().map(|n| n.as_bytes().into()),
            client_address: clients.client_address,
            mode,
            limits,
            counters,
            log: LogLimiter::new(kind.logs_per_second),
        }
    }

    /// True when the rule applies to `key` written by `client`.
    #[inline]
    pub fn applies(&self, key: &[u8], client: &ClientIdentity) -> bool {
        self.pattern.matches(key) && self.applies_to_client(client)
    }

    /// The rule's key pattern as written (Redis glob).
    pub fn pattern_source(&self) -> &str {
        self.pattern.as_str()
    }

    /// True when the rule's client filters (user, client name, network) select `client`.
    #[inline]
    pub fn applies_to_client(&self, client: &ClientIdentity) -> bool {
        self.user
            .as_deref()
            .is_none_or(|u| client.user.as_deref() == Some(u))
            && self
                .client_name
                .as_deref()
                .is_none_or(|n| client.name.as_deref() == Some(n))
            && self
                .client_address
                .is_none_or(|net| net.contains(&client.peer.ip()))
    }

    /// Count one `action`, without a log line.
    #[inline]
    pub fn count(&self, action: Action) {
        if let Some(c) = &self.counters[action as usize] {
            c.increment(1);
        }
    }

    /// A decision to take `action` on `client`'s command: counted, logged within the rule's
    /// log limit (`refused: <message>`, or `observe: would refuse: <message>`), and true
    /// when the rule enforces it. The message is made only when the line is written, so a
    /// storm of decisions is counted without being formatted.
    pub fn decided<D: std::fmt::Display>(
        &self,
        action: Action,
        client: &ClientIdentity,
        message: impl FnOnce() -> D,
    ) -> bool {
        self.count(action);
        let enforce = self.mode == Mode::Enforce;
        let verb = match (enforce, action.enforced()) {
            (true, None) => return true,
            (true, Some(verb)) => verb,
            (false, _) => action.observed(),
        };
        let Some(suppressed) = self.log.allow() else {
            return enforce;
        };
        let (guard, rule) = (self.guard, &self.name);
        let message = message();
        if enforce {
            tracing::warn!(guard, rule = %rule, client = %client, suppressed, "{verb}: {message}");
        } else {
            tracing::warn!(guard, rule = %rule, client = %client, suppressed, "observe: would {verb}: {message}");
        }
        enforce
    }

    /// A refusal with the error `message` (prefix included), decided as by
    /// [`Rule::decided`]: `Refuse` when enforced, else `observed`.
    pub fn refusal(
        &self,
        action: Action,
        client: &ClientIdentity,
        message: &str,
        observed: Verdict,
    ) -> Verdict {
        if self.decided(action, client, || message) {
            Verdict::Refuse(crate::resp::error(message))
        } else {
            observed
        }
    }
}

/// The first rule of `rules` that applies to `key` for `client`.
#[inline]
pub fn first_rule<'r, L>(
    rules: &'r [Rule<L>],
    key: &[u8],
    client: &ClientIdentity,
) -> Option<&'r Rule<L>> {
    rules.iter().find(|r| r.applies(key, client))
}

/// At most `per_second` log lines per second; a storm of decisions is counted, not logged.
///
/// Lock-free, because every session of a storm asks at once: the current second (since the
/// limiter was made) and the lines written in it share one `AtomicU64` (second in the high
/// half, lines in the low half), and lines refused are added to a second atomic, reported
/// and reset with the next line written.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    epoch: Instant,
    window: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A limiter allowing `per_second` lines each second.
    pub fn new(per_second: u32) -> Self {
        LogLimiter {
            per_second,
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(self.epoch.elapsed().as_secs() as u32)
    }

    /// [`LogLimiter::allow`] in second `second` since the limiter was made.
    fn allow_at(&self, second: u32) -> Option<u64> {
        if self.per_second == 0 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (at, lines) = ((current >> 32) as u32, current as u32);
            let next = if at != second {
                u64::from(second) << 32 | 1
            } else if lines < self.per_second {
                current + 1
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(seen) => current = seen,
            }
        }
    }
}

/// A key made printable for an error message: lossy UTF-8, cut at 128 bytes.
pub fn printable_key(key: &[u8]) -> String {
    let cut = &key[..key.len().min(128)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if key.len() > 128 {
        s.push_str("...");
    }
    s
}

/// Write the command with argument `index` replaced by `with` (multibulk) into `out`.
pub fn encode_replacing(cmd: &CommandView<'_>, index: usize, with: &[u8], out: &mut BytesMut) {
    resp::array_header(out, cmd.args.len());
    for (i, r) in cmd.args.iter().enumerate() {
        let a = if i == index {
            with
        } else {
            &cmd.src[r.clone()]
        };
        resp::bulk(out, a);
    }
}

/// Write the command followed by `extra` arguments (multibulk) into `out`.
pub fn encode_appending(cmd: &CommandView<'_>, extra: &[&[u8]], out: &mut BytesMut) {
    resp::array_header(out, cmd.args.len() + extra.len());
    match &cmd.wire {
        // The client's own encoding, in one copy.
        Some(wire) => out.extend_from_slice(&cmd.src[wire.clone()]),
        None => {
            for r in cmd.args {
                resp::bulk(out, &cmd.src[r.clone()]);
            }
        }
    }
    for a in extra {
        resp::bulk(out, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limiter_allows_n_lines_a_second_and_counts_the_rest() {
        let l = LogLimiter::new(2);
        assert_eq!(l.allow_at(0), Some(0));
        assert_eq!(l.allow_at(0), Some(0));
        assert_eq!(l.allow_at(0), None);
        assert_eq!(l.allow_at(0), None);
        // A new second reports the two suppressed lines.
        assert_eq!(l.allow_at(1), Some(2));
        assert_eq!(l.allow_at(1), Some(0));
        assert_eq!(l.allow_at(1), None);
        assert_eq!(LogLimiter::new(0).allow_at(0), None);
    }

    #[test]
    fn the_log_limiter_holds_its_limit_across_threads() {
        let l = LogLimiter::new(5);
        let allowed = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if l.allow_at(7).is_some() {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.load(Ordering::Relaxed), 5);
        assert_eq!(l.allow_at(8), Some(8000 - 5));
    }

    #[test]
    fn appending_to_the_clients_own_encoding_equals_encoding_each_argument() {
        use crate::scanner::request::{Limits, RequestScanner, Step};
        let table = crate::command::CommandTable::builtin();
        let src = b"*3\r\n$3\r\nSET\r\n$5\r\nk:one\r\n$11\r\nhello world\r\n";
        let mut scanner = RequestScanner::new(Limits::default());
        let Step::Command { start, end, .. } = scanner.scan(src) else {
            panic!("a whole command");
        };
        let args = scanner.args();
        let mut view = CommandView {
            src,
            args,
            keys: &[1],
            info: table.lookup(&[b"SET"]),
            argc: 3,
            access: ScriptAccess::Allowed,
            streaming: None,
            size: src.len() as u64,
            wire: wire_args(src, start, end),
        };
        assert_eq!(view.wire, Some(4..src.len()));
        let mut copied = BytesMut::new();
        encode_appending(&view, &[b"PX", b"3600000"], &mut copied);
        view.wire = None;
        let mut encoded = BytesMut::new();
        encode_appending(&view, &[b"PX", b"3600000"], &mut encoded);
        assert_eq!(copied, encoded);
        assert_eq!(
            &copied[..],
            &b"*5\r\n$3\r\nSET\r\n$5\r\nk:one\r\n$11\r\nhello world\r\n$2\r\nPX\r\n$7\r\n3600000\r\n"[..]
        );
    }

    #[test]
    fn the_count_line_ends_where_redis_ends_it() {
        // Redis ends a line at `\r` and skips the next byte, whatever it is; a rewrite that
        // looked for `\n` copied the arguments from the middle of the next line
        // (found by the guard-pipeline fuzz target).
        let src = b"*2\rX$4\r\nINCR\r\n$1\r\nk\r\n";
        assert_eq!(wire_args(src, 0, src.len()), Some(4..src.len()));
        assert_eq!(wire_args(b"*1\r", 0, 3), None);
    }

    #[test]
    fn printable_keys_are_cut() {
        assert_eq!(printable_key(b"blob:1"), "blob:1");
        assert_eq!(printable_key(&[b'k'; 200]).len(), 131);
    }
}
