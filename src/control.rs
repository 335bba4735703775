//! The proxy's control plane: the policy in force (guards, client authentication, who may
//! send `RESPGUARD`) and its hot reload, the status report behind `/status` and
//! `RESPGUARD STATUS`, and the `RESPGUARD` command itself.
//!
//! A reload (SIGHUP or `RESPGUARD RELOAD`) reads the file again, validates it, builds a new
//! [`Policy`] and swaps it in with one atomic store. Sessions pick the new policy up at their
//! next read from the client, so a command is judged wholly by the old rules or wholly by
//! the new ones, and no connection or command is touched by the swap. An invalid file
//! changes nothing and says why. Settings a running proxy cannot change (listen addresses,
//! the upstream, buffer and table sizes) keep their running values and are reported as
//! needing a restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use metrics::{counter, gauge, Counter, Gauge};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::auth::ProxyAuth;
use crate::cluster::read_rules::{LiveReadRules, ReadRules};
use crate::command::CommandTable;
use crate::config::{ConfigError, ConfigSource, RawConfig};
use crate::guard::{GuardContext, Guards};
use crate::health::UpstreamHealth;
use crate::identity::ClientIdentity;
use crate::keyspace::insight::{render_keyspace_metrics, Insight};
use crate::keyspace::report::LiveReport;
use crate::refusals::RefusalTally;
use crate::resp::{self, bulk_reply as bulk, simple};
use crate::telemetry::CommandLatency;
use crate::upstream::ConnectGate;

/// Settings a reload applies, as dotted paths into the configuration: the one description
/// of what a reload may change ([`reloadable_part`] takes these from the new file,
/// [`restart_needed`] reports every other change). Every other changed setting needs a
/// restart.
const RELOADABLE: &[&str] = &[
    "guards.mode",
    "guards.refusal_logs_per_second",
    "guards.size",
    "guards.ttl",
    "guards.fail_open",
    "guards.shed.rules",
    "guards.queue.rules",
    "guards.enqueue.rules",
    "auth",
    "admin.command_networks",
    "admin.command_users",
    "upstream.read_from",
];

/// Everything a reload can change, swapped as one.
#[derive(Debug)]
pub struct Policy {
    /// The guards, in order.
    pub guards: Guards,
    /// Client authentication to the proxy.
    pub auth: ProxyAuth,
    /// Who may send `RESPGUARD`.
    pub admin: AdminAccess,
    /// The live keyspace insight (`[keyspace]`), the same one across reloads; `None` when
    /// disabled (and in a policy built only to check a configuration).
    pub keyspace: Option<Arc<Insight>>,
}

/// Who may send `RESPGUARD` commands (`admin.command_networks`, `admin.command_users`).
#[derive(Debug, Clone)]
pub struct AdminAccess {
    networks: Vec<ipnet::IpNet>,
    users: Vec<Bytes>,
}

impl AdminAccess {
    /// True when `client` may send `RESPGUARD` commands.
    pub fn allows(&self, client: &ClientIdentity) -> bool {
        self.networks.iter().any(|n| n.contains(&client.peer.ip()))
            && (self.users.is_empty()
                || client
                    .user
                    .as_ref()
                    .is_some_and(|u| self.users.iter().any(|a| a == u)))
    }
}

impl Policy {
    /// The one place a configuration becomes a policy: at start, by `check-config` (through
    /// [`crate::app::check`]) and on reload. Guard rules are checked against `table`, and
    /// the guards keep their shared state in `context`. What a rule leaves alone that its
    /// author may not expect (a catch-all TTL rule over job-library keys) is logged as a
    /// warning.
    pub fn build(
        raw: &RawConfig,
        table: &CommandTable,
        context: &GuardContext,
    ) -> Result<Self, ConfigError> {
        let guards = Guards::build(&raw.guards, table, context)?;
        for note in crate::guard::ttl::library_notes(&raw.guards.ttl) {
            tracing::warn!("{note}");
        }
        Ok(Policy {
            guards,
            auth: ProxyAuth::build(&raw.auth),
            admin: AdminAccess {
                networks: raw.admin.command_networks.clone(),
                users: raw
                    .admin
                    .command_users
                    .iter()
                    .map(|u| Bytes::copy_from_slice(u.as_bytes()))
                    .collect(),
            },
            keyspace: None,
        })
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadReport {
    /// The policy generation now in force.
    pub generation: u64,
    /// Changed settings that keep their running value until a restart.
    pub restart_needed: Vec<String>,
}

/// The outcome of the last reload, for the status report.
#[derive(Debug, Clone)]
struct LastReload {
    at_unix: u64,
    trigger: String,
    error: Option<String>,
    restart_needed: Vec<String>,
}

/// The configuration in force and what the last reload said.
#[derive(Debug)]
struct Running {
    raw: RawConfig,
    hash: String,
    last_reload: Option<LastReload>,
}

/// Where the status report reads the proxy's state.
pub struct StatusSources {
    /// The upstream gate (address, open connections).
    pub gate: Arc<ConnectGate>,
    /// Whether Redis answers.
    pub health: Arc<UpstreamHealth>,
    /// The client slots ([`crate::config::Config::max_clients`] permits).
    pub client_slots: Arc<Semaphore>,
    /// How many clients are served at once.
    pub max_clients: usize,
    /// Per-command latency and calls.
    pub latency: Option<Arc<CommandLatency>>,
}

/// The control plane: one per proxy, shared by sessions and the admin listener.
pub struct Control {
    source: Option<ConfigSource>,
    running: Mutex<Running>,
    policy: ArcSwap<Policy>,
    generation: AtomicU64,
    table: Arc<CommandTable>,
    context: GuardContext,
    /// The keyspace insight, built once at start (`[keyspace]` changes need a restart).
    keyspace: Option<Arc<Insight>>,
    started: Instant,
    /// Refusals by client, for the status report's top list.
    pub refusals: RefusalTally,
    sources: StatusSources,
    /// With a Redis Cluster upstream, the read rules its routers follow.
    read_rules: Option<Arc<LiveReadRules>>,
    reloads_applied: Counter,
    reloads_refused: Counter,
    generation_gauge: Gauge,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Upstream connections open now.
    pub fn upstream_connections(&self) -> usize {
        self.sources.gate.open_connections()
    }

    /// The control plane for a proxy started with `raw`, whose policy is `policy`.
    pub fn new(
        raw: RawConfig,
        source: Option<ConfigSource>,
        table: Arc<CommandTable>,
        context: GuardContext,
        sources: StatusSources,
    ) -> Result<Self, ConfigError> {
        let keyspace = Insight::build(&raw.keyspace, &table).map(Arc::new);
        let policy = Policy {
            keyspace: keyspace.clone(),
            ..Policy::build(&raw, &table, &context)?
        };
        let hash = config_hash(&raw);
        let generation_gauge = gauge!("respguard_config_generation");
        generation_gauge.set(1.0);
        Ok(Control {
            source,
            running: Mutex::new(Running {
                raw,
                hash,
                last_reload: None,
            }),
            policy: ArcSwap::from_pointee(policy),
            generation: AtomicU64::new(1),
            table,
            context,
            keyspace,
            started: Instant::now(),
            refusals: RefusalTally::new(1024),
            sources,
            read_rules: None,
            reloads_applied: counter!("respguard_config_reloads_total", "result" => "applied"),
            reloads_refused: counter!("respguard_config_reloads_total", "result" => "refused"),
            generation_gauge,
        })
    }

    /// Let reloads replace the read rules of a Redis Cluster upstream's routers too
    /// (`[[upstream.read_from]]`).
    pub fn with_read_rules(mut self, rules: Arc<LiveReadRules>) -> Self {
        self.read_rules = Some(rules);
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The policy generation: 1 at start, one more per applied reload. Sessions compare it
    /// (one atomic load per read) to know when to pick up the new policy.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The guard state shared with the monitor.
    pub fn context(&self) -> &GuardContext {
        &self.context
    }

    /// Read the configuration file again and apply what can change while running. On any
    /// error the policy in force stays, and the error says why.
    pub fn reload(&self, trigger: &str) -> Result<ReloadReport, String> {
        let mut running = self.running.lock().expect("control lock");
        let result = self.try_reload(&running.raw);
        let at_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match result {
            Ok((effective, report)) => {
                running.hash = config_hash(&effective);
                running.raw = effective;
                running.last_reload = Some(LastReload {
                    at_unix,
                    trigger: trigger.to_string(),
                    error: None,
                    restart_needed: report.restart_needed.clone(),
                });
                self.reloads_applied.increment(1);
                self.generation_gauge.set(report.generation as f64);
                if report.restart_needed.is_empty() {
                    tracing::info!(trigger, generation = report.generation, hash = %running.hash, "configuration reloaded");
                } else {
                    tracing::warn!(
                        trigger,
                        generation = report.generation,
                        restart_needed = %report.restart_needed.join(", "),
                        "configuration reloaded; changed settings that keep their running value until a restart"
                    );
                }
                Ok(report)
            }
            Err(reason) => {
                running.last_reload = Some(LastReload {
                    at_unix,
                    trigger: trigger.to_string(),
                    error: Some(reason.clone()),
                    restart_needed: Vec::new(),
                });
                self.reloads_refused.increment(1);
                tracing::error!(trigger, %reason, "configuration reload refused; the rules in force are unchanged");
                Err(reason)
            }
        }
    }

    fn try_reload(&self, old: &RawConfig) -> Result<(RawConfig, ReloadReport), String> {
        let source = self.source.as_ref().ok_or(
            "the proxy was started without a configuration file (--config): nothing to reload",
        )?;
        let new = source.load().map_err(|e| e.to_string())?;
        let effective = reloadable_part(old, &new)?;
        // Everything validated as at start, then built against this proxy's command table.
        let checked = effective.clone().validate().map_err(|e| e.to_string())?;
        let policy = Policy {
            keyspace: self.keyspace.clone(),
            ..Policy::build(&checked.raw, &self.table, &self.context).map_err(|e| e.to_string())?
        };
        let read_rules = ReadRules::new(&checked.raw.upstream.read_from);
        if self.read_rules.is_none() && !read_rules.is_empty() {
            // Behind Sentinel, clients are routed through replicas only when the proxy
            // starts with a rule reading from them.
            return Err("upstream.read_from: the proxy started without a rule reading from replicas; behind Sentinel, reading from replicas begins with a restart".into());
        }
        let restart_needed = restart_needed(old, &new);
        self.policy.store(Arc::new(policy));
        if let Some(live) = &self.read_rules {
            live.replace(read_rules);
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        Ok((
            effective,
            ReloadReport {
                generation,
                restart_needed,
            },
        ))
    }

    /// The live keyspace report (`/keyspace`, `RESPGUARD KEYSPACE`), or `None` when the
    /// insight is disabled.
    pub fn keyspace(&self) -> Option<LiveReport> {
        self.keyspace.as_ref().map(|k| k.report())
    }

    /// Whether the keyspace insight runs (`keyspace.enabled`).
    pub fn keyspace_enabled(&self) -> bool {
        self.keyspace.is_some()
    }

    /// Forget what the keyspace insight counted (`RESPGUARD KEYSPACE RESET`); false when
    /// it is disabled.
    pub fn reset_keyspace(&self) -> bool {
        self.keyspace.as_ref().map(|k| k.reset()).is_some()
    }

    /// The keyspace gauges of the 20 busiest prefixes, in the Prometheus text format,
    /// appended to `out` at scrape time (nothing when the insight is disabled).
    pub fn render_keyspace_metrics(&self, out: &mut String) {
        if let Some(report) = self.keyspace() {
            render_keyspace_metrics(&report, METRIC_PREFIXES, out);
        }
    }

    /// The guards' configuration in force, as TOML (for `RESPGUARD RULES`).
    pub fn rules_toml(&self) -> String {
        let running = self.running.lock().expect("control lock");
        #[derive(serde::Serialize)]
        struct Rules<'a> {
            guards: &'a crate::config::RawGuards,
        }
        toml::to_string_pretty(&Rules {
            guards: &running.raw.guards,
        })
        .unwrap_or_default()
    }

    /// The status report: version, configuration, upstream, memory pressure, clients and
    /// the clients most refused. Served as `/status` and by `RESPGUARD STATUS`.
    pub fn status(&self) -> Value {
        let running = self.running.lock().expect("control lock");
        let s = &self.sources;
        let max_clients = s.max_clients;
        let pressure = self.context.pressure.reading();
        let (used, limit) = self.context.pressure.last_poll();
        let last_reload = running.last_reload.as_ref().map(|r| {
            json!({
                "at_unix": r.at_unix,
                "trigger": r.trigger,
                "applied": r.error.is_none(),
                "error": r.error,
                "restart_needed": r.restart_needed,
            })
        });
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "config": {
                "path": self.source.as_ref().map(|s| s.path.display().to_string()),
                "hash": running.hash,
                "generation": self.generation(),
                "last_reload": last_reload,
            },
            "upstream": {
                "address": s.gate.address(),
                "up": s.health.is_up(),
                "connections": s.gate.open_connections(),
            },
            "memory": {
                "used_bytes": used,
                "limit_bytes": limit,
                "pressure": pressure.pressure,
                "limit_source": pressure.source.name(),
                "shedding_level": pressure.level.name(),
            },
            "clients": {
                "connected": max_clients.saturating_sub(s.client_slots.available_permits()),
                "max": max_clients,
            },
            "queues": self.context.queues.deepest_by_rule().iter()
                .map(|(rule, depth)| json!({"rule": &**rule, "deepest": depth}))
                .collect::<Vec<_>>(),
            "commands_answered": s.latency.as_ref().map(|l| l.total_calls()),
            "top_refused_clients": self.refusals.top(10).into_iter()
                .map(|(client, refusals)| json!({"client": client, "refusals": refusals}))
                .collect::<Vec<_>>(),
            "process": {
                "resident_memory_bytes": resident_memory_bytes(),
            },
        })
    }

    /// Answer a `RESPGUARD` command (its arguments after the name) from `client`.
    pub fn command(&self, args: &[&[u8]], client: &ClientIdentity) -> Bytes {
        if args.is_empty() {
            // Redis checks a container command's arity before its subcommand and access.
            return resp::error("ERR wrong number of arguments for 'respguard' command");
        }
        if !self.policy.load().admin.allows(client) {
            return resp::error(
                "NOPERM respguard: this connection may not send RESPGUARD commands (admin.command_networks, admin.command_users)",
            );
        }
        let sub = args
            .first()
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_default();
        match (&sub[..], args.len()) {
            (b"STATUS", 1) => bulk(
                serde_json::to_string_pretty(&self.status())
                    .unwrap_or_default()
                    .as_bytes(),
            ),
            (b"RULES", 1) => bulk(self.rules_toml().as_bytes()),
            (b"KEYSPACE", 1) => match self.keyspace() {
                Some(report) => bulk(
                    serde_json::to_string_pretty(&report)
                        .unwrap_or_default()
                        .as_bytes(),
                ),
                None => resp::error(KEYSPACE_DISABLED),
            },
            (b"KEYSPACE", 2) if args[1].eq_ignore_ascii_case(b"RESET") => {
                if self.reset_keyspace() {
                    simple("OK")
                } else {
                    resp::error(KEYSPACE_DISABLED)
                }
            }
            (b"RELOAD", 1) => match self.reload("RESPGUARD RELOAD") {
                Ok(r) if r.restart_needed.is_empty() => {
                    simple(&format!("OK generation {}", r.generation))
                }
                Ok(r) => simple(&format!(
                    "OK generation {}; needs a restart to apply: {}",
                    r.generation,
                    r.restart_needed.join(", ")
                )),
                Err(reason) => resp::error(&format!(
                    "ERR respguard: reload refused, the rules in force are unchanged: {}",
                    reason.replace(['\r', '\n'], " ")
                )),
            },
            (b"HELP", 1) => {
                let lines: [&[u8]; 6] = [
                    b"RESPGUARD STATUS -- the proxy's status, as JSON.",
                    b"RESPGUARD RULES -- the guards' rules in force, as TOML.",
                    b"RESPGUARD KEYSPACE -- what grows, per key prefix, and the hottest keys, as JSON.",
                    b"RESPGUARD KEYSPACE RESET -- forget what the keyspace insight counted.",
                    b"RESPGUARD RELOAD -- read the configuration file again and apply it.",
                    b"RESPGUARD HELP -- this text.",
                ];
                let mut out = BytesMut::new();
                resp::array_header(&mut out, lines.len());
                for l in lines {
                    resp::bulk(&mut out, l);
                }
                out.freeze()
            }
            (b"STATUS" | b"RULES" | b"RELOAD" | b"HELP" | b"KEYSPACE", _) => resp::error(&format!(
                "ERR wrong number of arguments for 'respguard|{}' command",
                String::from_utf8_lossy(&sub).to_lowercase()
            )),
            _ => resp::error(&format!(
                "ERR unknown subcommand '{}'. Try RESPGUARD HELP.",
                String::from_utf8_lossy(args.first().copied().unwrap_or_default())
                    .replace(['\r', '\n'], " ")
            )),
        }
    }
}

/// Prefixes exported as metric labels at most.
const METRIC_PREFIXES: usize = 20;

/// The answer to `RESPGUARD KEYSPACE` when the insight is off.
const KEYSPACE_DISABLED: &str =
    "ERR respguard: the keyspace insight is disabled (keyspace.enabled = false)";

/// `old` with every [`RELOADABLE`] setting taken from `new`.
fn reloadable_part(old: &RawConfig, new: &RawConfig) -> Result<RawConfig, String> {
    let as_json = |raw: &RawConfig| serde_json::to_value(raw).map_err(|e| e.to_string());
    let (mut effective, new) = (as_json(old)?, as_json(new)?);
    for path in RELOADABLE {
        let (parent, leaf) = path.rsplit_once('.').unwrap_or(("", path));
        let pointer = |p: &str| format!("/{}", p.replace('.', "/"));
        let taken = new.pointer(&pointer(path)).cloned();
        let parent_pointer = if parent.is_empty() {
            String::new()
        } else {
            pointer(parent)
        };
        let Some(Value::Object(into)) = effective.pointer_mut(&parent_pointer) else {
            continue;
        };
        match taken {
            Some(value) => into.insert(leaf.to_string(), value),
            None => into.remove(leaf),
        };
    }
    serde_json::from_value(effective).map_err(|e| e.to_string())
}

/// The settings that differ between `old` and `new` and that a reload does not apply.
fn restart_needed(old: &RawConfig, new: &RawConfig) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return Vec::new();
    };
    let mut changed = Vec::new();
    changed_paths(&a, &b, String::new(), &mut changed);
    changed.retain(|path| {
        !RELOADABLE
            .iter()
            .any(|r| path == r || path.starts_with(&format!("{r}.")))
    });
    changed
}

/// Dotted paths of the leaves (or arrays) that differ between two JSON trees.
fn changed_paths(a: &Value, b: &Value, at: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => changed_paths(p, q, path, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(at),
        _ => {}
    }
}

/// A short, stable digest of a configuration (SHA-1 of its effective TOML, 12 hex digits).
fn config_hash(raw: &RawConfig) -> String {
    let digest = sha1_smol::Sha1::from(raw.to_toml()).digest().to_string();
    digest[..12].to_string()
}

/// The process's resident memory, from `/proc/self/status` (0 where there is none).
pub fn resident_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    #[test]
    fn only_settings_outside_the_reloadable_ones_need_a_restart() {
        let old = RawConfig::default();
        let mut new = old.clone();
        new.guards.shed.soft_enter = 0.5;
        new.guards.mode = Mode::Observe;
        new.proxy.listen = "127.0.0.1:7000".into();
        new.admin.command_users = vec!["ops".into()];
        new.keyspace.sample_rate = 1;
        assert_eq!(
            restart_needed(&old, &new),
            vec![
                "guards.shed.soft_enter".to_string(),
                "keyspace.sample_rate".to_string(),
                "proxy.listen".to_string()
            ]
        );
        let effective = reloadable_part(&old, &new).unwrap();
        assert_eq!(effective.guards.mode, Mode::Observe);
        assert_eq!(effective.guards.shed.soft_enter, old.guards.shed.soft_enter);
        assert_eq!(effective.proxy.listen, old.proxy.listen);
        // The insight is built once: a reload keeps the running one.
        assert_eq!(effective.keyspace, old.keyspace);
        assert_eq!(effective.admin.command_users, vec!["ops".to_string()]);
    }
}
