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
//! `allowed_functions`). EVAL_RO and FCALL_RO are reads and pass.
//!
//! A command writing several keys takes the lowest priority among them. Refusals use
//! Redis's `OOM` prefix, so clients treat them exactly as Redis's own out-of-memory error;
//! inside MULTI the session makes EXEC fail with EXECABORT, as Redis does after an OOM at
//! queue time.

use std::sync::Arc;

use bytes::BytesMut;
use rustc_hash::FxHashSet;

use super::by_command::ByCommand;
use super::phase::Guard;
use super::rule::{Action, Mode, Rule, RuleKind, RuleSpec};
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
}

impl Script {
    fn of(info: &CommandInfo) -> Script {
        match &*info.name {
            "eval" => Script::Eval,
            "evalsha" => Script::EvalSha,
            "fcall" => Script::Fcall,
            _ => Script::None,
        }
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
}

impl ShedGuard {
    /// Build from `[guards.shed]` (already validated), reading levels from `pressure` and
    /// knowing the script commands of `table` by id.
    pub fn build(
        raw: &RawShedGuard,
        default_mode: Mode,
        logs_per_second: u32,
        pressure: Arc<MemoryPressure>,
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
        }
    }

    /// The rule deciding for this command: the one of lowest priority among its keys' rules
    /// (the catch-all for a command without keys).
    fn deciding_rule(&self, cmd: &CommandView<'_>, client: &ClientIdentity) -> &Rule<Priority> {
        let catch_all = self.rules.last().expect("the catch-all rule");
        let mut deciding = None::<&Rule<Priority>>;
        for &i in cmd.keys {
            let Some(key) = cmd.arg(i) else { continue };
            let rule = self
                .rules
                .iter()
                .find(|r| r.applies(key, client))
                .unwrap_or(catch_all);
            if deciding.is_none_or(|d| rule.limits < d.limits) {
                deciding = Some(rule);
                if rule.limits == Priority::Low {
                    break;
                }
            }
        }
        deciding.unwrap_or(catch_all)
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
            Script::None => false,
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
                "scripts not in guards.shed.allowed_scripts are refused".to_string(),
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

    /// Only while memory is under pressure; a memory-growing write is counted towards the
    /// pressure estimate here.
    fn may_disengage(&self) -> bool {
        true
    }

    #[inline]
    fn engaged(&self, size: u64) -> bool {
        self.pressure.engaged_for_write(size)
    }

    fn check(&self, cmd: &CommandView<'_>, client: &ClientIdentity, _: &mut BytesMut) -> Verdict {
        if self.pressure.is_normal() {
            return Verdict::Forward;
        }
        let reading = self.pressure.reading();
        if reading.level == Level::Normal {
            return Verdict::Forward;
        }
        let rule = self.deciding_rule(cmd, client);
        let script = self.scripts.get(cmd.info);
        let refused = match (reading.level, script) {
            (Level::Normal, _) => false,
            (Level::Soft, _) => rule.limits == Priority::Low,
            (Level::Hard, Script::None) => rule.limits != Priority::Critical,
            (Level::Hard, s) => !self.script_allowed(s, cmd),
        };
        if refused {
            self.refuse(
                rule,
                reading,
                script != Script::None,
                client,
                &cmd.info.name,
            )
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
