//! The shed guard: memory-growing writes refused while Redis memory is under pressure, the
//! least important first, so reads, deletes and critical writes keep working.
//!
//! The level comes from [`MemoryPressure`] (the monitor's polls plus the estimate of what
//! was written since):
//! - `soft`: memory-growing writes to keys of rules with `priority = "low"` are refused;
//! - `hard`: every memory-growing write is refused except to keys of `critical` rules.
//!
//! "Memory-growing" is Redis's own `denyoom` flag from the command table (SET, LPUSH, HSET,
//! XADD, ... but not DEL, UNLINK, EXPIRE, LPOP, ZREM or XTRIM, which always pass), plus
//! scripts and functions (EVAL, EVALSHA, FCALL), which Redis does not flag but which may
//! write anything: at `soft` they are refused when a key they declare is low priority, at
//! `hard` unless their SHA1 is in `allowed_scripts` (or the function in
//! `allowed_functions`). EVAL_RO and FCALL_RO are reads and pass. A script or function the
//! proxy has seen the source of (in EVAL, SCRIPT LOAD, FUNCTION LOAD: see
//! [`super::script_catalog`]) and found unable to grow memory, or flagged `no-writes` or
//! `allow-oom`, passes at every level: a worker's read-only script keeps working, as it would
//! against Redis at its own limit. SCRIPT LOAD and FUNCTION LOAD are read at every level,
//! not only under pressure, so the catalog knows the scripts an application loads at start.
//! SCRIPT LOAD itself always passes, as Redis (which does not flag it `denyoom`) runs it past
//! maxmemory; FUNCTION LOAD is `denyoom` and judged like a write.
//!
//! Job libraries' workers drain their queues at every level ([`super::job_work`]): Dramatiq's
//! fetch, ack, nack and requeue, the scripts and plain writes of BullMQ, Bull and Bee-Queue
//! under one queue's prefix other than their add scripts, RQ's writes under `rq:` other than
//! its enqueues, arq's under `arq:` other than its job keys and queue ZADDs, kombu's
//! (Celery's) acknowledgement bookkeeping, and Sidekiq's statistics, heartbeat and retry and
//! dead sets pass; those libraries' enqueues are judged as writes to their queue (refused
//! at `soft` for a low-priority queue, at `hard` unless the queue is critical or the script
//! is in `allowed_scripts`).
//!
//! A command writing several keys takes the lowest priority among them. Refusals use
//! Redis's `OOM` prefix, so clients treat them exactly as Redis's own out-of-memory error;
//! inside MULTI the session makes EXEC fail with EXECABORT, as Redis does after an OOM at
//! queue time.

use std::sync::Arc;

use bytes::BytesMut;
use rustc_hash::FxHashSet;

use super::by_command::ByCommand;
use super::job_work::{self, JobWork};
use super::phase::Guard;
use super::rule::{Action, Mode, Rule, RuleKind, RuleSpec};
use super::script_catalog::{CommandGrowth, ScriptCatalog, ScriptNature};
use super::verdict::{CommandView, Verdict};
use crate::command::{CommandInfo, CommandTable, Flags};
use crate::config::{ClientMatch, Priority, RawShedGuard};
use crate::identity::ClientIdentity;
use crate::pressure::{Level, MemoryPressure, Reading};

/// What kind of script command, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Script {
    /// Not a script command.
    #[default]
    None,
    Eval,
    EvalSha,
    Fcall,
    /// SCRIPT LOAD: a source to learn, at any level.
    Load,
    /// FUNCTION LOAD: a library to learn, at any level.
    LoadLibrary,
}

impl Script {
    fn of(info: &CommandInfo) -> Script {
        match &*info.name {
            "eval" => Script::Eval,
            "evalsha" => Script::EvalSha,
            "fcall" => Script::Fcall,
            "script|load" => Script::Load,
            "function|load" => Script::LoadLibrary,
            _ => Script::None,
        }
    }

    /// A command that runs a script or function (not one that loads one).
    fn runs(self) -> bool {
        matches!(self, Script::Eval | Script::EvalSha | Script::Fcall)
    }
}

const ACTIONS: &[Action] = &[Action::RefuseSoft, Action::RefuseHard];

/// The shed guard.
#[derive(Debug)]
pub struct ShedGuard {
    pressure: Arc<MemoryPressure>,
    /// The configured rules, then a catch-all `normal` rule for every other key.
    rules: Vec<Rule<Priority>>,
    /// Lower-case hex SHA1 digests of scripts allowed at `hard`.
    allowed_scripts: FxHashSet<Box<[u8]>>,
    /// Functions allowed at `hard`.
    allowed_functions: FxHashSet<Box<[u8]>>,
    /// By command id: which script command it is.
    scripts: ByCommand<Script>,
    /// The scripts and functions seen, shared across reloads.
    catalog: Arc<ScriptCatalog>,
    /// Which commands a script may call without growing memory.
    growth: CommandGrowth,
}

impl ShedGuard {
    /// Build from `[guards.shed]` (already validated), reading levels from `pressure`,
    /// knowing the script commands of `table` by id and the scripts seen from `catalog`.
    pub fn build(
        raw: &RawShedGuard,
        default_mode: Mode,
        logs_per_second: u32,
        pressure: Arc<MemoryPressure>,
        catalog: Arc<ScriptCatalog>,
        table: &CommandTable,
    ) -> Self {
        let kind = RuleKind {
            guard: "shed",
            actions: ACTIONS,
            default_mode,
            logs_per_second,
        };
        let mut rules: Vec<_> = raw
            .rules
            .iter()
            .map(|r| {
                Rule::new(
                    kind,
                    RuleSpec::new(&r.pattern, &r.clients, r.mode),
                    r.priority,
                )
            })
            .collect();
        let everyone = ClientMatch::default();
        rules.push(Rule::new(
            kind,
            RuleSpec::new("*", &everyone, None),
            Priority::Normal,
        ));
        let allowed_scripts = raw
            .allowed_scripts
            .iter()
            .map(|sha| sha.to_ascii_lowercase().into_bytes().into_boxed_slice())
            .collect();
        let allowed_functions = raw
            .allowed_functions
            .iter()
            .map(|f| f.as_bytes().into())
            .collect();
        ShedGuard {
            pressure,
            rules,
            allowed_scripts,
            allowed_functions,
            scripts: ByCommand::build(table, Script::of),
            catalog,
            growth: CommandGrowth::of(table),
        }
    }

    /// Remember the source a SCRIPT LOAD or FUNCTION LOAD carries (its last argument).
    fn learn(&self, script: Script, cmd: &CommandView<'_>) {
        let Some(body) = cmd.argc.checked_sub(1).and_then(|last| cmd.arg(last)) else {
            return;
        };
        if script == Script::Load {
            self.catalog.learn_script(body, &self.growth);
        } else {
            self.catalog.learn_library(body, &self.growth);
        }
    }

    /// Whether the script or function run by `cmd` is known unable to grow memory or
    /// flagged to run under pressure.
    fn known_harmless(&self, script: Script, cmd: &CommandView<'_>) -> bool {
        let Some(arg) = cmd.arg(1) else { return false };
        let nature = match script {
            Script::Eval => Some(ScriptNature::of_script(arg, &self.growth)),
            Script::EvalSha => self.catalog.script(arg),
            Script::Fcall => self.catalog.function(arg),
            _ => None,
        };
        nature.is_some_and(ScriptNature::passes_hard)
    }

    /// The rule deciding for this command: the one of lowest priority among its keys' rules
    /// (the catch-all for a command without keys).
    fn deciding_rule(&self, cmd: &CommandView<'_>, client: &ClientIdentity) -> &Rule<Priority> {
        let catch_all = self.rules.last().expect("the catch-all rule");
        let mut deciding = None::<&Rule<Priority>>;
        for &i in cmd.keys {
            let Some(key) = cmd.arg(i) else { continue };
            let rule = self.rule_for_key(key, client);
            if deciding.is_none_or(|d| rule.limits < d.limits) {
                deciding = Some(rule);
                if rule.limits == Priority::Low {
                    break;
                }
            }
        }
        deciding.unwrap_or(catch_all)
    }

    /// The rule of `key`'s priority (the catch-all when no rule matches it).
    fn rule_for_key(&self, key: &[u8], client: &ClientIdentity) -> &Rule<Priority> {
        let catch_all = self.rules.last().expect("the catch-all rule");
        self.rules
            .iter()
            .find(|r| r.applies(key, client))
            .unwrap_or(catch_all)
    }

    fn script_allowed(&self, script: Script, cmd: &CommandView<'_>) -> bool {
        let Some(arg) = cmd.arg(1) else { return false };
        match script {
            Script::Eval => {
                let hex = sha1_smol::Sha1::from(arg).digest().to_string();
                self.allowed_scripts.contains(hex.as_bytes())
            }
            Script::EvalSha => {
                let lower = arg.to_ascii_lowercase();
                self.allowed_scripts.contains(lower.as_slice())
            }
            Script::Fcall => self.allowed_functions.contains(arg),
            _ => false,
        }
    }

    fn refuse(
        &self,
        rule: &Rule<Priority>,
        reading: Reading,
        script: bool,
        client: &ClientIdentity,
        command: &str,
    ) -> Verdict {
        let (action, why) = match reading.level {
            Level::Soft => (
                Action::RefuseSoft,
                format!("for low-priority keys, shed rule '{}'", rule.name),
            ),
            _ if script => (
                Action::RefuseHard,
                "scripts that may grow memory and are not in guards.shed.allowed_scripts are refused".to_string(),
            ),
            _ => (Action::RefuseHard, String::new()),
        };
        let above = self
            .pressure
            .thresholds()
            .enter_ratio(reading.level)
            .unwrap_or(0.0);
        let message = format!(
            "OOM respguard: {} refused, Redis memory at {}% of {} ({} shedding above {}%{}{})",
            if script { "script" } else { "write" },
            (reading.pressure * 100.0).floor() as u64,
            reading.source.name(),
            reading.level.name(),
            percent(above),
            if why.is_empty() { "" } else { ": " },
            why,
        );
        rule.refusal(action, client, command, &message, Verdict::Forward)
    }
}

/// A ratio as a percentage, without trailing zeros: 0.9 → "90", 0.725 → "72.5".
fn percent(ratio: f64) -> String {
    let p = (ratio * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{}", p as u64)
    } else {
        format!("{p}")
    }
}

impl Guard for ShedGuard {
    fn name(&self) -> &'static str {
        "shed"
    }

    fn wants(&self, info: &CommandInfo) -> bool {
        info.flags.contains(Flags::DENYOOM) || Script::of(info) != Script::None
    }

    /// Script sources are learned at every level.
    fn always_engaged(&self, info: &CommandInfo) -> bool {
        matches!(Script::of(info), Script::Load | Script::LoadLibrary)
    }

    /// Only while memory is under pressure; a memory-growing write is counted towards the
    /// pressure estimate here.
    fn may_disengage(&self) -> bool {
        true
    }

    #[inline]
    fn engaged(&self, size: u64) -> bool {
        self.pressure.engaged_for_write(size)
    }

    #[inline]
    fn headroom(&self) -> u64 {
        self.pressure.write_headroom()
    }

    #[inline]
    fn count_passed(&self, bytes: u64) {
        self.pressure.count_written(bytes);
    }

    #[inline]
    fn check(&self, cmd: &CommandView<'_>, client: &ClientIdentity, _: &mut BytesMut) -> Verdict {
        let script = self.scripts.get(cmd.info);
        // The common case, a plain write while no level is in force, decided here: the
        // chain asks this guard only when it is engaged, but the level may have fallen
        // back since.
        if script == Script::None && self.pressure.is_normal() {
            return Verdict::Forward;
        }
        self.check_pressed(script, cmd, client)
    }
}

impl ShedGuard {
    /// [`Guard::check`] for a script command, or any write while a level may be in force.
    #[inline(never)]
    fn check_pressed(
        &self,
        script: Script,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
    ) -> Verdict {
        let verdict = self.judge(script, cmd, client);
        // A source is remembered only when Redis gets to load it (FUNCTION LOAD grows
        // memory and may be refused).
        if matches!(script, Script::Load | Script::LoadLibrary) && verdict == Verdict::Forward {
            self.learn(script, cmd);
        }
        verdict
    }

    /// In front of a Redis Cluster, the highest level of the shards holding `cmd`'s keys;
    /// `None` for one Redis, or a command naming no key (judged at the fullest shard's).
    fn shard_level(&self, cmd: &CommandView<'_>) -> Option<Level> {
        cmd.keys
            .iter()
            .filter_map(|&i| cmd.arg(i))
            .filter_map(|key| self.pressure.level_of_key(key))
            .max()
    }

    /// The verdict on `cmd` at the current level.
    fn judge(&self, script: Script, cmd: &CommandView<'_>, client: &ClientIdentity) -> Verdict {
        // Redis does not flag SCRIPT LOAD `denyoom` and runs it past maxmemory: a client whose
        // EVALSHA found no script loads it and retries, and must not be left unable to run a
        // worker's or a read-only script. Only running a script is judged.
        if self.pressure.is_normal() || script == Script::Load {
            return Verdict::Forward;
        }
        let mut reading = self.pressure.reading();
        if let Some(level) = self.shard_level(cmd) {
            // In front of a Redis Cluster: the level of the shards holding the keys.
            reading.level = reading.level.min(level);
        }
        if reading.level == Level::Normal {
            return Verdict::Forward;
        }
        let work = match script {
            Script::Eval | Script::EvalSha => job_work::of_script(cmd),
            Script::None if job_work::is_worker_write(cmd) => Some(JobWork::Worker),
            _ => None,
        };
        let mut buf = [0u8; 256];
        let (rule, script_judged) = match work {
            Some(JobWork::Worker) => return Verdict::Forward,
            // An enqueue is a write to its queue, whatever its body.
            Some(JobWork::Enqueue) => (self.deciding_rule(cmd, client), false),
            Some(JobWork::DramatiqEnqueue) => {
                let rule = match job_work::dramatiq_queue_key(cmd, &mut buf) {
                    Some(queue) => self.rule_for_key(queue, client),
                    None => self.deciding_rule(cmd, client),
                };
                (rule, false)
            }
            None => (self.deciding_rule(cmd, client), script.runs()),
        };
        if work.is_some() && self.script_allowed(script, cmd) {
            return Verdict::Forward;
        }
        let refused = match (reading.level, script_judged) {
            (Level::Normal, _) => false,
            (Level::Soft, false) => rule.limits == Priority::Low,
            (Level::Soft, true) => {
                rule.limits == Priority::Low && !self.known_harmless(script, cmd)
            }
            (Level::Hard, false) => rule.limits != Priority::Critical,
            (Level::Hard, true) => {
                !self.script_allowed(script, cmd) && !self.known_harmless(script, cmd)
            }
        };
        if refused {
            self.refuse(rule, reading, script_judged, client, &cmd.info.name)
        } else {
            Verdict::Forward
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_short() {
        assert_eq!(percent(0.9), "90");
        assert_eq!(percent(0.725), "72.5");
    }
}
