//! Rules: which clients and keys a guard's rule applies to, its name and mode, and the one
//! place a decision is counted, logged and (in observe mode) set aside.
//!
//! A guard says what it would do ([`Action`]) and acts only when [`Rule::decided`] returns
//! true; the counts (`respguard_guard_decisions_total`, labelled with guard, rule, action
//! and mode: [`super::decisions`]) are found when the rule is built, and log lines are
//! limited per rule by a [`LogLimiter`]. Never decides anything itself and never imports a
//! guard.

use super::decisions::DecisionCount;
use super::log_limit::LogLimiter;
use super::pattern::KeyPattern;
use super::verdict::Verdict;
use crate::clock::Now;
use crate::config::ClientMatch;
use crate::identity::ClientIdentity;

pub use crate::config::Mode;

/// What a guard did, as the `action` label of `respguard_guard_decisions_total`. Each rule
/// counts the actions its guard takes, indexed by this enum.
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
    /// No client filter is set: the rule applies to every client (decided at build, so the
    /// hot path skips the three filter tests).
    every_client: bool,
    /// Enforce or observe.
    pub mode: Mode,
    /// The guard's settings for this rule.
    pub limits: L,
    /// By [`Action`]: the count of each action the guard takes (one no one reads for the
    /// others).
    counters: [DecisionCount; Action::COUNT],
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
        let mut counters: [DecisionCount; Action::COUNT] =
            std::array::from_fn(|_| DecisionCount::unread());
        for &action in kind.actions {
            counters[action as usize] =
                DecisionCount::of(kind.guard, name, action.label(), mode.label());
        }
        let clients = spec.clients;
        Rule {
            name: name.to_string(),
            guard: kind.guard,
            pattern,
            user: clients.user.as_deref().map(|u| u.as_bytes().into()),
            client_name: clients.client_name.as_deref().map(|n| n.as_bytes().into()),
            client_address: clients.client_address,
            every_client: clients.user.is_none()
                && clients.client_name.is_none()
                && clients.client_address.is_none(),
            mode,
            limits,
            counters,
            log: LogLimiter::new(kind.logs_per_second),
        }
    }

    /// True when the rule applies to `key` written by `client`.
    #[inline]
    pub fn applies(&self, key: &[u8], client: &ClientIdentity) -> bool {
        self.pattern.matches(key) && (self.every_client || self.applies_to_client(client))
    }

    /// True when the rule applies to every key of every client (pattern `*`, no client
    /// filter): a guard whose first rule is such can skip the search for most keys.
    pub fn applies_to_everything(&self) -> bool {
        self.every_client && self.pattern.matches_every_key()
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
        self.counters[action as usize].increment();
    }

    /// A decision to take `action` on `client`'s `command` (its name, for the log line):
    /// counted, logged within the rule's
    /// log limit (`refused: <message>`, or `observe: would refuse: <message>`), and true
    /// when the rule enforces it. The message is made only when the line is written, so a
    /// storm of decisions is counted without being formatted. An enforced decision that is
    /// not logged (a TTL added) is decided inline, with one counter increment.
    #[inline(always)]
    pub fn decided<D: std::fmt::Display>(
        &self,
        action: Action,
        client: &ClientIdentity,
        command: &str,
        message: impl FnOnce() -> D,
    ) -> bool {
        self.decided_at(action, client, command, Now::read, message)
    }

    /// [`Rule::decided`], the time of the log limit asked of `now` (only when a line would
    /// be written): a guard that read the time for its own memory hands that instant.
    #[inline(always)]
    pub fn decided_at<D: std::fmt::Display>(
        &self,
        action: Action,
        client: &ClientIdentity,
        command: &str,
        now: impl FnOnce() -> Now,
        message: impl FnOnce() -> D,
    ) -> bool {
        self.count(action);
        let enforce = self.mode == Mode::Enforce;
        if enforce && action.enforced().is_none() {
            return true;
        }
        // Within the log limit, or (a storm of decisions) counted as suppressed: decided
        // here, so only a line actually written costs a call.
        match self.log.allow(now()) {
            None => enforce,
            Some(suppressed) => self.logged(action, client, command, suppressed, message),
        }
    }

    /// The rest of [`Rule::decided`], counted and within the log limit: the decision
    /// written to the log, `suppressed` lines after the last one; true when the rule
    /// enforces it.
    #[inline(never)]
    fn logged<D: std::fmt::Display>(
        &self,
        action: Action,
        client: &ClientIdentity,
        command: &str,
        suppressed: u64,
        message: impl FnOnce() -> D,
    ) -> bool {
        let enforce = self.mode == Mode::Enforce;
        let (guard, rule) = (self.guard, &self.name);
        let message = message();
        match action.enforced() {
            Some(verb) if enforce => {
                tracing::warn!(guard, rule = %rule, client = %client, command, suppressed, "{verb}: {message}");
            }
            _ => {
                let verb = action.observed();
                tracing::warn!(guard, rule = %rule, client = %client, command, suppressed, "observe: would {verb}: {message}");
            }
        }
        enforce
    }

    /// A refusal with the error `message` (prefix included), decided as by
    /// [`Rule::decided`]: `Refuse` when enforced, else `observed`.
    pub fn refusal(
        &self,
        action: Action,
        client: &ClientIdentity,
        command: &str,
        message: &str,
        observed: Verdict,
    ) -> Verdict {
        if self.decided(action, client, command, || message) {
            Verdict::Refuse(crate::resp::error(message))
        } else {
            observed
        }
    }
}

/// The first rule of `rules` that applies to `key` for `client`.
#[inline(always)]
pub fn first_rule<'r, L>(
    rules: &'r [Rule<L>],
    key: &[u8],
    client: &ClientIdentity,
) -> Option<&'r Rule<L>> {
    // A plain loop, inlined into the guard's check: `Iter::find` stayed a call of its own,
    // about 30 instructions for a guard of one rule.
    #[allow(clippy::manual_find)]
    for rule in rules {
        if rule.applies(key, client) {
            return Some(rule);
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_keys_are_cut() {
        assert_eq!(printable_key(b"blob:1"), "blob:1");
        assert_eq!(printable_key(&[b'k'; 200]).len(), 131);
    }
}
