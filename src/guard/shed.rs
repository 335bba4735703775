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

use super::{CommandView, Guard, Mode, Rule, RuleSpec, Verdict};
use crate::command::{CommandInfo, Flags};
use crate::config::{ConfigError, RawShedGuard};
use crate::identity::ClientIdentity;
use crate::pressure::{Level, MemoryPressure, Reading};

/// How important a key's writes are when memory runs short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Shed first, at `soft`.
    Low,
    /// Shed at `hard`.
    Normal,
    /// Never shed.
    Critical,
}

impl Priority {
    fn parse(s: &str) -> Result<Priority, ConfigError> {
        match s {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "critical" => Ok(Priority::Critical),
            other => Err(ConfigError::Invalid {
                key: "guards.shed.rules",
                reason: format!("priority `{other}`: expected `low`, `normal` or `critical`"),
            }),
        }
    }
}

/// What kind of script command, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Eval,
    EvalSha,
    Fcall,
}

impl Script {
    fn of(info: &CommandInfo) -> Option<Script> {
        match &*info.name {
            "eval" => Some(Script::Eval),
            "evalsha" => Some(Script::EvalSha),
            "fcall" => Some(Script::Fcall),
            _ => None,
        }
    }
}

const ACTIONS: &[&str] = &["refuse_soft", "refuse_hard"];

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
}

impl ShedGuard {
    /// Build from `[guards.shed]`, reading levels from `pressure`.
    pub fn build(
        raw: &RawShedGuard,
        default_mode: Mode,
        logs_per_second: u32,
        pressure: Arc<MemoryPressure>,
    ) -> Result<Self, ConfigError> {
        let mut rules = raw
            .rules
            .iter()
            .map(|r| {
                Rule::new(
                    "shed",
                    RuleSpec {
                        name: None,
                        pattern: &r.pattern,
                        also: &[],
                        user: r.user.as_deref(),
                        client_name: r.client_name.as_deref(),
                        client_address: r.client_address,
                        mode: r.mode.as_deref(),
                    },
                    default_mode,
                    ACTIONS,
                    logs_per_second,
                    Priority::parse(&r.priority)?,
                    "guards.shed.rules",
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.push(Rule::new(
            "shed",
            RuleSpec {
                name: None,
                pattern: "*",
                also: &[],
                user: None,
                client_name: None,
                client_address: None,
                mode: None,
            },
            default_mode,
            ACTIONS,
            logs_per_second,
            Priority::Normal,
            "guards.shed.rules",
        )?);
        let mut allowed_scripts = FxHashSet::default();
        for sha in &raw.allowed_scripts {
            if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid {
                    key: "guards.shed.allowed_scripts",
                    reason: format!("`{sha}` is not a SHA1 digest (40 hex digits)"),
                });
            }
            allowed_scripts.insert(sha.to_ascii_lowercase().into_bytes().into_boxed_slice());
        }
        let allowed_functions = raw
            .allowed_functions
            .iter()
            .map(|f| f.as_bytes().into())
            .collect();
        Ok(ShedGuard {
            pressure,
            rules,
            allowed_scripts,
            allowed_functions,
        })
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
        }
    }

    fn refuse(
        &self,
        rule: &Rule<Priority>,
        reading: Reading,
        script: bool,
        client: &ClientIdentity,
    ) -> Verdict {
        let (action, why) = match reading.level {
            Level::Soft => (
                "refuse_soft",
                format!("for low-priority keys, shed rule '{}'", rule.name),
            ),
            _ if script => (
                "refuse_hard",
                "scripts not in guards.shed.allowed_scripts are refused".to_string(),
            ),
            _ => ("refuse_hard", String::new()),
        };
        rule.count(action);
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
        rule.refusal("shed", client, &message, Verdict::Forward)
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
        info.flags.contains(Flags::DENYOOM) || Script::of(info).is_some()
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
        let script = Script::of(cmd.info);
        let refused = match (reading.level, script) {
            (Level::Normal, _) => false,
            (Level::Soft, _) => rule.limits == Priority::Low,
            (Level::Hard, Some(s)) => !self.script_allowed(s, cmd),
            (Level::Hard, None) => rule.limits != Priority::Critical,
        };
        if refused {
            self.refuse(rule, reading, script.is_some(), client)
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
