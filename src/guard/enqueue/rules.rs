//! An enqueue rule: which commands it reads, how it finds the job ([`Shape`]), whom it
//! counts together (the scope), its limits and its action, built from the typed
//! `[[guards.enqueue.rules]]` of the configuration (a library preset or a generic rule).
//!
//! It never reads a command or decides about a job: it only says what the other parts of
//! the guard apply.

use super::super::rule::{Action as Counted, Mode, Rule, RuleKind, RuleSpec};
use super::counts::EnqueueCount;
use super::job_key_rule::JobKeyRule;
use super::payload::{Format, PayloadSpec};
use super::preset::{self, Shape, LIST_PUSHES};
use super::script_rule::ScriptRule;
use crate::config::{ConfigError, EnqueueAction, PayloadFormat, Preset, ScopePart};
use crate::config::{RawEnqueueGuard, RawEnqueueRule};

/// The most rules `[guards.enqueue]` takes (a rule's index is a byte of its hashes).
const MAX_RULES: usize = 64;

/// The commands a rule may read, each a bit of a rule's command set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// LPUSH, RPUSH, LPUSHX, RPUSHX.
    ListPush = 1,
    /// ZADD.
    Zadd = 2,
    /// XADD.
    Xadd = 4,
    /// HSET, HMSET (RQ's job hash).
    Hset = 8,
    /// EVAL (BullMQ's add scripts, and learning them).
    Eval = 16,
    /// EVALSHA (BullMQ's add scripts).
    EvalSha = 32,
    /// SCRIPT LOAD (learning BullMQ's add scripts).
    ScriptLoad = 64,
    /// FCALL, FCALL_RO (a generic rule's function).
    Fcall = 128,
    /// SET, SETEX, PSETEX, SETNX (a generic rule's job key).
    KeySet = 256,
}

impl Cmd {
    /// The command called `name` (lower case; a subcommand as `container|sub`).
    pub fn of(name: &str) -> Option<Cmd> {
        Some(match name {
            "lpush" | "rpush" | "lpushx" | "rpushx" => Cmd::ListPush,
            "zadd" => Cmd::Zadd,
            "xadd" => Cmd::Xadd,
            "hset" | "hmset" | "hsetnx" => Cmd::Hset,
            "eval" => Cmd::Eval,
            "evalsha" => Cmd::EvalSha,
            "script|load" => Cmd::ScriptLoad,
            "fcall" | "fcall_ro" => Cmd::Fcall,
            "set" | "setex" | "psetex" | "setnx" => Cmd::KeySet,
            _ => return None,
        })
    }

    /// The command as a bit of a command set.
    pub fn bit(self) -> u16 {
        self as u16
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
    pub fn counted(self) -> Counted {
        match self {
            Action::Drop => Counted::Drop,
            Action::Reject => Counted::Reject,
        }
    }
}

/// The decisions an enqueue rule counts.
const ACTIONS: &[Counted] = &[Counted::Drop, Counted::Reject];

/// Scope bit: the client's Redis user.
pub const SCOPE_USER: u8 = 1;
/// Scope bit: the client's name (`CLIENT SETNAME`).
pub const SCOPE_NAME: u8 = 2;
/// Scope bit: the client's IP address (never its port).
pub const SCOPE_ADDRESS: u8 = 4;

/// An enqueue rule's settings, as the guard applies them.
#[derive(Debug)]
pub struct EnqueueLimits {
    /// The rule's place among the rules: part of every hash it makes.
    pub index: u8,
    /// How the rule finds jobs in commands.
    pub shape: Shape,
    /// The commands it reads, as [`Cmd`] bits.
    pub commands: u16,
    /// What identifies a client, as `SCOPE_*` bits.
    pub scope: u8,
    /// Enqueues of one fingerprint per scope passing in a window (`u32::MAX`: no limit).
    pub limit: u32,
    /// The window, in whole seconds from the first enqueue.
    pub window: u32,
    /// Whether re-pushes of one job id count towards the limit.
    pub limit_repushes: bool,
    /// Tokens per second and bucket size.
    pub bucket: Option<(f64, f64)>,
    /// What happens to a job over the limit.
    pub action: Action,
    /// XADD: the field holding the payload (a job key rule keeps its own).
    pub field: Option<Box<[u8]>>,
    /// `respguard_enqueues_total{kind="first"}`: a fingerprint's first enqueue.
    pub first: EnqueueCount,
    /// `kind="duplicate"`: the same work under another job id.
    pub duplicate: EnqueueCount,
    /// `kind="repush"`: the same job id pushed again.
    pub repush: EnqueueCount,
    /// `kind="unread"`: a payload the rule could not read (passed).
    pub unread: EnqueueCount,
}

/// Build the rules of `[guards.enqueue]`; `default_mode` and `logs_per_second` are the
/// `[guards]` settings.
pub fn build_rules(
    raw: &RawEnqueueGuard,
    default_mode: Mode,
    logs_per_second: u32,
) -> Result<Vec<Rule<EnqueueLimits>>, ConfigError> {
    if raw.rules.len() > MAX_RULES {
        return Err(invalid(format!("at most {MAX_RULES} rules")));
    }
    let kind = RuleKind {
        guard: "enqueue",
        actions: ACTIONS,
        default_mode,
        logs_per_second,
    };
    raw.rules
        .iter()
        .enumerate()
        .map(|(index, r)| build_rule(index as u8, r, kind))
        .collect()
}

/// One rule, the `index`th.
fn build_rule(
    index: u8,
    r: &RawEnqueueRule,
    kind: RuleKind,
) -> Result<Rule<EnqueueLimits>, ConfigError> {
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
    if r.limit == 0 && r.rate.is_none() {
        return Err(invalid(format!("rule `{name}`: limit must be at least 1")));
    }
    let window = r.window.0.as_secs_f64().ceil() as u32;
    if window == 0 {
        return Err(invalid(format!(
            "rule `{name}`: window must be at least 1s"
        )));
    }
    let counter = |kind: &'static str| EnqueueCount::of(&name, kind);
    let limits = EnqueueLimits {
        index,
        shape,
        commands,
        scope: scope_bits(&r.scope),
        limit: if r.limit == 0 { u32::MAX } else { r.limit },
        window,
        limit_repushes: r.limit_repushes,
        bucket: bucket(r, &name)?,
        action,
        field: r.field.as_ref().map(|f| f.as_bytes().into()),
        first: counter("first"),
        duplicate: counter("duplicate"),
        repush: counter("repush"),
        unread: counter("unread"),
    };
    let spec = RuleSpec {
        name: Some(&name),
        pattern: &pattern,
        also,
        clients: &r.clients,
        mode,
    };
    Ok(Rule::new(kind, spec, limits))
}

/// The scope's parts as `SCOPE_*` bits.
fn scope_bits(parts: &[ScopePart]) -> u8 {
    parts.iter().fold(0, |bits, part| {
        bits | match part {
            ScopePart::User => SCOPE_USER,
            ScopePart::ClientName => SCOPE_NAME,
            ScopePart::Address => SCOPE_ADDRESS,
        }
    })
}

/// The token bucket (rate, burst) of rule `name`, if it has a rate.
fn bucket(r: &RawEnqueueRule, name: &str) -> Result<Option<(f64, f64)>, ConfigError> {
    match r.rate {
        Some(rate) if rate.is_finite() && rate > 0.0 => {
            let burst = r.burst.map_or(rate.max(1.0), f64::from);
            Ok(Some((rate, burst.max(1.0))))
        }
        Some(_) => Err(invalid(format!("rule `{name}`: rate must be above 0"))),
        None if r.burst.is_some() => Err(invalid(format!("rule `{name}`: burst needs rate"))),
        None => Ok(None),
    }
}

/// A configuration error of `guards.enqueue.rules`.
pub fn invalid(reason: impl Into<String>) -> ConfigError {
    ConfigError::enqueue_rule(reason)
}

/// A rule's key pattern, other patterns, commands (as bits) and job shape.
type RuleShape = (String, &'static [&'static str], u16, Shape);

/// A rule's key pattern, commands and job shape, from its preset or its generic settings.
fn rule_shape(r: &RawEnqueueRule) -> Result<RuleShape, ConfigError> {
    let Some(p) = preset::preset(r.preset.word()) else {
        debug_assert_eq!(
            r.preset,
            Preset::Generic,
            "every other preset is in preset::NAMES"
        );
        return generic_shape(r);
    };
    let generic_only = r.commands.is_some()
        || r.format.is_some()
        || !r.include.is_empty()
        || !r.exclude.is_empty()
        || r.job_id.is_some()
        || r.label.is_some()
        || r.field.is_some()
        || r.script.is_some()
        || r.id_queues.is_some()
        || script_fields(r);
    if generic_only {
        return Err(invalid(format!(
            "preset `{}` reads its library's own format: commands, format, include, exclude, job_id, label, field, id_queues and script (with its settings) are for `generic`",
            r.preset.word()
        )));
    }
    // The preset's own keys, unless the rule names its keys itself.
    let (pattern, also) = match &r.pattern {
        Some(own) => (own.clone(), &[][..]),
        None => (p.pattern.to_string(), p.also),
    };
    let commands = p
        .commands
        .iter()
        .filter_map(|n| Cmd::of(n))
        .fold(0, |bits, c| bits | c.bit());
    Ok((pattern, also, commands, p.shape))
}

/// A generic rule's pattern, commands and payload description.
fn generic_shape(r: &RawEnqueueRule) -> Result<RuleShape, ConfigError> {
    let pattern = r
        .pattern
        .clone()
        .ok_or_else(|| invalid("a generic rule needs a pattern"))?;
    let commands = match (&r.script, &r.id_queues) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "a rule reads a script's calls (`script`) or job keys (`id_queues`), not both",
            ))
        }
        (Some(_), None) if r.commands.is_some() || r.field.is_some() => {
            return Err(invalid(
                "a script rule reads the script's calls: commands and field are for pushes",
            ))
        }
        (Some(_), None) => 0,
        (None, _) if script_fields(r) => {
            return Err(invalid(
                "key_index, payload_arg, operation_arg, operation and dropped_reply need `script`",
            ))
        }
        (None, Some(_)) if r.commands.is_some() => return Err(invalid(
            "a job key rule reads SET, SETEX, PSETEX and SETNX (with `field`: HSET, HMSET and HSETNX): commands are for pushes",
        )),
        (None, Some(_)) if r.field.is_some() => Cmd::Hset.bit(),
        (None, Some(_)) => Cmd::KeySet.bit(),
        (None, None) => generic_commands(r.commands.as_deref())?,
    };
    let format = match r.format.unwrap_or(PayloadFormat::Json) {
        PayloadFormat::Json => Format::Json,
        PayloadFormat::Raw => Format::Raw,
        PayloadFormat::Msgpack => Format::Msgpack,
        PayloadFormat::Pickle => Format::Pickle,
    };
    if format != Format::Raw && commands & Cmd::Xadd.bit() != 0 && r.field.is_none() {
        return Err(invalid(format!(
            "a generic {} rule reading XADD needs `field`, the stream field holding the payload",
            r.format.unwrap_or(PayloadFormat::Json).word()
        )));
    }
    let spec = PayloadSpec::new(
        format,
        &r.include,
        &r.exclude,
        r.job_id.as_deref(),
        r.label.as_deref(),
    )
    .map_err(invalid)?;
    if let Some(script) = &r.script {
        let rule = ScriptRule::build(r, script, spec)?;
        let commands = if rule.reads_functions() {
            Cmd::Fcall.bit()
        } else {
            Cmd::Eval.bit() | Cmd::EvalSha.bit()
        };
        return Ok((pattern, &[], commands, Shape::Script(Box::new(rule))));
    }
    if let Some(queues) = &r.id_queues {
        let rule = JobKeyRule::build(&pattern, queues, r.field.as_deref(), spec)?;
        return Ok((pattern, &[], commands, Shape::JobKey(Box::new(rule))));
    }
    Ok((pattern, &[], commands, Shape::Payload(Box::new(spec))))
}

/// Whether `r` sets any of a script rule's own settings.
fn script_fields(r: &RawEnqueueRule) -> bool {
    r.key_index.is_some()
        || r.payload_arg.is_some()
        || r.operation_arg.is_some()
        || r.operation.is_some()
        || r.dropped_reply.is_some()
}

/// A generic rule's commands as bits: the pushes named, or the list pushes and ZADD.
fn generic_commands(named: Option<&[String]>) -> Result<u16, ConfigError> {
    let default_commands = [LIST_PUSHES, &["zadd"]].concat();
    let names: Vec<String> = match named {
        Some(c) => c.iter().map(|n| n.to_ascii_lowercase()).collect(),
        None => default_commands.iter().map(|s| s.to_string()).collect(),
    };
    let mut commands = 0;
    for n in &names {
        match Cmd::of(n) {
            Some(c @ (Cmd::ListPush | Cmd::Zadd | Cmd::Xadd)) => commands |= c.bit(),
            _ => {
                return Err(invalid(format!(
                    "command `{n}`: a generic rule reads LPUSH, RPUSH, LPUSHX, RPUSHX, ZADD or XADD"
                )))
            }
        }
    }
    Ok(commands)
}
