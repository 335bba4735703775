//! Configuration: the TOML file, the command-line and environment overrides, and their
//! validation.
//!
//! [`RawConfig`] is what the file says, with every default filled in and every unknown key
//! refused (serde's `deny_unknown_fields`; in rules, whose shared client filters are
//! flattened, by [`ClientMatch`]'s catch-all, so a typo names the key instead of being
//! ignored). Every enumerated value is an enum read here once ([`Mode`], [`Priority`],
//! [`EnqueueAction`], [`ScopePart`], [`PayloadFormat`], [`Preset`], [`DefaultTtl`]).
//! [`Config`] is the validated form the proxy runs on: the upstream URL parsed, sizes and
//! durations checked. `respguard check-config` prints the `RawConfig` back as TOML, which is
//! the effective configuration.
//!
//! This module only reads and checks shapes: it never builds guards, registers metrics or
//! reads any file but the configuration itself. The guards are built from these shapes
//! (`crate::guard`), and TLS from the PEM files they name (`crate::app`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scanner::request::Limits;

mod error;
mod guards;
mod keyspace;
mod server;
mod units;
mod upstream;
mod words;

use error::invalid;
pub use error::ConfigError;
pub use guards::*;
pub use keyspace::*;
pub use server::*;
pub use units::*;
pub use upstream::*;
pub use words::*;

/// The configuration file as written, defaults filled in.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// The client-facing listener and its limits.
    pub proxy: RawProxy,
    /// The Redis behind the proxy.
    pub upstream: RawUpstream,
    /// The HTTP listener for health and metrics.
    pub admin: RawAdmin,
    /// Logging.
    pub log: RawLog,
    /// Request parsing bounds.
    pub protocol: RawProtocol,
    /// Watching Redis memory.
    pub monitor: RawMonitor,
    /// The guards and their rules.
    pub guards: RawGuards,
    /// Client authentication to the proxy itself.
    pub auth: RawAuth,
    /// The live keyspace insight.
    pub keyspace: RawKeyspace,
}

/// `[auth]` users. A user without `upstream_user` runs as the `upstream.url` user: that is
/// refused when the URL holds a password, since those are the proxy's own credentials (it
/// needs INFO, and often more), and a client must not get them by authenticating.
fn validate_auth(auth: &RawAuth, upstream: &UpstreamTarget) -> Result<(), ConfigError> {
    let key = "auth.users";
    let mut names = std::collections::HashSet::new();
    for u in &auth.users {
        if u.name.is_empty() {
            return Err(invalid(key, "a user has no name"));
        }
        if !names.insert(u.name.as_str()) {
            return Err(invalid(key, format!("user `{}` is listed twice", u.name)));
        }
        match (u.password.is_empty(), u.password_sha256.is_empty()) {
            (false, false) | (true, true) => {
                return Err(invalid(
                    key,
                    format!(
                        "user `{}`: give exactly one of password and password_sha256",
                        u.name
                    ),
                ))
            }
            (true, false)
                if u.password_sha256.len() != 64
                    || !u.password_sha256.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                return Err(invalid(
                    key,
                    format!("user `{}`: password_sha256 must be 64 hex digits", u.name),
                ))
            }
            _ => {}
        }
        if !u.upstream_user.is_empty() && u.upstream_password.is_empty() {
            return Err(invalid(
                key,
                format!("user `{}`: upstream_user needs upstream_password", u.name),
            ));
        }
        if u.upstream_user.is_empty() && upstream.password.is_some() {
            return Err(invalid(
                key,
                format!(
                    "user `{}` has no upstream_user, so its commands would run with the upstream.url credentials, the proxy's own; give it an upstream_user (a Redis ACL user with only what it needs) and upstream_password",
                    u.name
                ),
            ));
        }
    }
    Ok(())
}

/// Most `[[upstream.read_from]]` rules (each command's keys are matched against them in
/// turn).
pub const MAX_READ_RULES: usize = 64;

/// `[[upstream.read_from]]`: a pattern each, at most [`MAX_READ_RULES`], and a rule reading
/// elsewhere than the primary only in front of a Redis Cluster or behind Sentinel (a
/// single Redis has no replicas the proxy knows of).
fn validate_read_from(rules: &[RawReadRule], upstream: &UpstreamTarget) -> Result<(), ConfigError> {
    let key = "upstream.read_from";
    if rules.len() > MAX_READ_RULES {
        return Err(invalid(
            key,
            format!("{} rules: at most {MAX_READ_RULES}", rules.len()),
        ));
    }
    for rule in rules {
        if rule.pattern.is_empty() {
            return Err(invalid(
                key,
                "a rule has an empty pattern, which names no key (\"*\" names every key)",
            ));
        }
        if rule.from != ReadFrom::Primary
            && upstream.cluster.is_none()
            && upstream.sentinel.is_none()
        {
            return Err(invalid(
                key,
                format!(
                    "rule `{}` reads from \"{}\": a single Redis has no replicas to read from; reading from replicas needs a redis-cluster:// or redis-sentinel:// upstream (docs/cluster.md, docs/sentinel.md)",
                    rule.pattern,
                    rule.from.word()
                ),
            ));
        }
    }
    Ok(())
}

/// The validated configuration the proxy runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file's contents as parsed, for printing and for what the rest reads directly.
    pub raw: RawConfig,
    /// Client listener address.
    pub listen: SocketAddr,
    /// Admin listener address, if enabled.
    pub admin_listen: Option<SocketAddr>,
    /// Where Redis is.
    pub upstream: UpstreamTarget,
    /// Request scanner bounds.
    pub limits: Limits,
    /// Whether to read the command table from the upstream.
    pub command_table_from_upstream: bool,
    /// Where the configuration came from, to read it again on reload (`None`: built in
    /// code, nothing to reload from).
    pub source: Option<ConfigSource>,
    /// Clients served at once: `proxy.max_clients`, unless the binary lowered it to what
    /// the process's open-file limit allows.
    pub max_clients: usize,
}

/// Values given on the command line or in the environment, applied over the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `proxy.listen`.
    pub listen: Option<String>,
    /// `upstream.url`.
    pub upstream: Option<String>,
    /// `admin.listen`.
    pub admin_listen: Option<String>,
    /// `log.level`.
    pub log_level: Option<String>,
    /// `log.format`.
    pub log_format: Option<String>,
}

impl Overrides {
    /// Apply every value given.
    pub fn apply(&self, raw: &mut RawConfig) {
        let set = |field: &mut String, value: &Option<String>| {
            if let Some(v) = value {
                field.clone_from(v);
            }
        };
        set(&mut raw.proxy.listen, &self.listen);
        set(&mut raw.upstream.url, &self.upstream);
        set(&mut raw.admin.listen, &self.admin_listen);
        set(&mut raw.log.level, &self.log_level);
        set(&mut raw.log.format, &self.log_format);
    }
}

/// A configuration file and the overrides applied to it: what a reload reads again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The TOML file.
    pub path: PathBuf,
    /// The command line's values, which keep winning over the file's.
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Read the file and apply the overrides (not validated yet).
    pub fn load(&self) -> Result<RawConfig, ConfigError> {
        let mut raw = RawConfig::from_file(&self.path)?;
        self.overrides.apply(&mut raw);
        Ok(raw)
    }
}

impl RawConfig {
    /// Read and parse a file (no validation yet).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parse TOML text (no validation yet).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Check every value and make the configuration the proxy runs on. Only shapes are
    /// checked here: what needs files (certificates) or the command table (guard rules) is
    /// checked where it is built, by [`crate::app::check`], which `check-config` runs too.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let listen = self
            .proxy
            .listen
            .parse()
            .map_err(|e| invalid("proxy.listen", format!("`{}`: {e}", self.proxy.listen)))?;
        let admin_listen =
            if self.admin.listen.is_empty() {
                None
            } else {
                Some(self.admin.listen.parse().map_err(|e| {
                    invalid("admin.listen", format!("`{}`: {e}", self.admin.listen))
                })?)
            };
        let upstream = UpstreamTarget::parse(&self.upstream.url)?;
        if upstream.sentinel.is_none() && !self.upstream.sentinel_password.is_empty() {
            return Err(invalid(
                "upstream.sentinel_password",
                "only with a redis-sentinel:// upstream.url",
            ));
        }
        validate_read_from(&self.upstream.read_from, &upstream)?;
        if self.proxy.max_clients == 0 {
            return Err(invalid("proxy.max_clients", "must be at least 1"));
        }
        if self.proxy.max_pending_commands == 0 {
            return Err(invalid("proxy.max_pending_commands", "must be at least 1"));
        }
        if self.proxy.output_buffer.0 < 4096 {
            return Err(invalid("proxy.output_buffer", "must be at least 4KiB"));
        }
        if self.proxy.output_buffer_hard.0 < self.proxy.output_buffer.0 {
            return Err(invalid(
                "proxy.output_buffer_hard",
                "must be at least proxy.output_buffer",
            ));
        }
        if self.upstream.max_connects_per_second == 0 {
            return Err(invalid(
                "upstream.max_connects_per_second",
                "must be at least 1",
            ));
        }
        if self.upstream.shared_connections == 0 || self.upstream.shared_connections > 64 {
            return Err(invalid(
                "upstream.shared_connections",
                "must be between 1 and 64",
            ));
        }
        if self.upstream.shared_identities == 0 || self.upstream.shared_identities > 256 {
            return Err(invalid(
                "upstream.shared_identities",
                "must be between 1 and 256",
            ));
        }
        if self.upstream.pinned_connections == 0 {
            return Err(invalid("upstream.pinned_connections", "must be at least 1"));
        }
        if self.upstream.backoff_min.0 > self.upstream.backoff_max.0 {
            return Err(invalid(
                "upstream.backoff_min",
                "must not be larger than upstream.backoff_max",
            ));
        }
        let command_table_from_upstream = match self.upstream.command_table.as_str() {
            "upstream" => true,
            "builtin" => false,
            other => {
                return Err(invalid(
                    "upstream.command_table",
                    format!("`{other}`: expected `upstream` or `builtin`"),
                ))
            }
        };
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid(
                "log.format",
                format!("`{}`: expected `text` or `json`", self.log.format),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", format!("`{}`: {e}", self.log.level)))?;
        let p = &self.protocol;
        if p.max_inline_len.0 < 1024 {
            return Err(invalid("protocol.max_inline_len", "must be at least 1KiB"));
        }
        if p.max_args == 0 || p.max_args > i32::MAX as u64 {
            return Err(invalid(
                "protocol.max_args",
                "must be between 1 and 2147483647",
            ));
        }
        if p.stream_threshold.0 < 1024 || p.stream_threshold.0 > p.max_buffered_command.0 {
            return Err(invalid(
                "protocol.stream_threshold",
                "must be at least 1KiB and at most protocol.max_buffered_command",
            ));
        }
        let m = &self.monitor;
        if m.interval.0 < Duration::from_millis(10) {
            return Err(invalid("monitor.interval", "must be at least 10ms"));
        }
        if m.growth_window.0 < m.interval.0 * 2 {
            return Err(invalid(
                "monitor.growth_window",
                "must be at least two monitor.interval",
            ));
        }
        if let Some(w) = m
            .warning_levels
            .iter()
            .find(|w| !(w.is_finite() && **w > 0.0 && **w <= 1.0))
        {
            return Err(invalid(
                "monitor.warning_levels",
                format!("{w}: each level is a ratio above 0 and at most 1"),
            ));
        }
        let shed = &self.guards.shed;
        for (key_enter, enter, key_exit, exit) in [
            (
                "guards.shed.soft_enter",
                shed.soft_enter,
                "guards.shed.soft_exit",
                shed.soft_exit,
            ),
            (
                "guards.shed.hard_enter",
                shed.hard_enter,
                "guards.shed.hard_exit",
                shed.hard_exit,
            ),
        ] {
            if !(0.0..=1.0).contains(&enter) {
                return Err(invalid(key_enter, "must be between 0 (off) and 1"));
            }
            if enter > 0.0 && !(exit > 0.0 && exit < enter) {
                return Err(invalid(
                    key_exit,
                    format!("must be above 0 and below the enter ratio ({enter}), so the level cannot flap"),
                ));
            }
        }
        if shed.soft_enter > 0.0 && shed.hard_enter > 0.0 && shed.soft_enter >= shed.hard_enter {
            return Err(invalid(
                "guards.shed.soft_enter",
                "must be below guards.shed.hard_enter",
            ));
        }
        if self.guards.queue.max_tracked_queues == 0 {
            return Err(invalid(
                "guards.queue.max_tracked_queues",
                "must be at least 1",
            ));
        }
        if self.proxy.max_tracked_addresses == 0 {
            return Err(invalid("proxy.max_tracked_addresses", "must be at least 1"));
        }
        validate_auth(&self.auth, &upstream)?;
        self.keyspace.validate()?;
        let t = &self.proxy.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty()
            || (t.cert_file.is_empty() && !t.client_ca_file.is_empty())
        {
            return Err(invalid(
                "proxy.tls",
                "cert_file and key_file are both needed (client_ca_file needs them too)",
            ));
        }
        if let Some(sha) = self
            .guards
            .shed
            .allowed_scripts
            .iter()
            .find(|sha| sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(
                "guards.shed.allowed_scripts",
                format!("`{sha}` is not a SHA1 digest (40 hex digits)"),
            ));
        }
        let limits = Limits {
            max_inline_len: p.max_inline_len.0 as usize,
            max_args: p.max_args,
            max_bulk_len: p.max_bulk_len.0,
            stream_threshold: p.stream_threshold.0,
            max_buffered_command: p.max_buffered_command.0 as usize,
        };
        Ok(Config {
            max_clients: self.proxy.max_clients,
            raw: self,
            listen,
            admin_listen,
            upstream,
            limits,
            command_table_from_upstream,
            source: None,
        })
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RawConfig always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = RawConfig::default().validate().unwrap();
        assert_eq!(c.upstream.address, "127.0.0.1:6379");
        assert_eq!(c.limits, Limits::default());
    }

    /// `upstream.shared_identities` takes 1 to 256 (the URL's identity counts): 0 would
    /// leave no lanes at all, and each identity costs `shared_connections` connections.
    #[test]
    fn shared_identities_is_bounded() {
        let with = |n: usize| {
            RawConfig::from_toml(&format!("[upstream]\nshared_identities = {n}\n"))
                .unwrap()
                .validate()
        };
        assert!(with(1).is_ok() && with(256).is_ok());
        for n in [0, 257] {
            let e = with(n).unwrap_err().to_string();
            assert!(e.contains("upstream.shared_identities"), "{n}: {e}");
        }
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c = RawConfig::from_toml(
            "[proxy]\ndrain_timeout = \"250ms\"\noutput_buffer = \"1MiB\"\n[protocol]\nmax_bulk_len = 1048576\n",
        )
        .unwrap();
        assert_eq!(c.proxy.drain_timeout.0, Duration::from_millis(250));
        assert_eq!(c.proxy.output_buffer.0, 1 << 20);
        assert_eq!(c.protocol.max_bulk_len, ByteSize(1 << 20));
        assert_eq!(ByteSize::parse("1.5KiB").unwrap(), ByteSize(1536));
        assert!(ByteSize::parse("12 parsecs").is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = RawConfig::from_toml("[proxy]\nmax_client = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_client"), "{e}");
        let e = RawConfig::from_toml("[proxy]\ndrain_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("drain_timeout") && e.contains("not a duration"),
            "{e}"
        );
        let e = RawConfig::from_toml("[proxy]\nmax_clients = 0\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.max_clients"), "{e}");
    }

    #[test]
    fn unknown_rule_keys_are_refused_through_the_shared_client_filters() {
        let e = RawConfig::from_toml("[[guards.size.rules]]\npattern = \"a:*\"\nmax_valu = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `max_valu`"), "{e}");
        // Fail-open rules have no mode.
        let e = RawConfig::from_toml(
            "[[guards.fail_open.rules]]\npattern = \"c:*\"\nmode = \"observe\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `mode`"), "{e}");
        let e = RawConfig::from_toml("[guards]\nmode = \"watch\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mode `watch`: expected `enforce` or `observe`"),
            "{e}"
        );
    }

    #[test]
    fn rules_with_filters_and_words_round_trip() {
        let raw = RawConfig::from_toml(concat!(
            "[[guards.shed.rules]]\npattern = \"a:*\"\nuser = \"app\"\n",
            "client_address = \"10.0.0.0/8\"\npriority = \"low\"\nmode = \"observe\"\n",
            "[[guards.ttl.rules]]\npattern = \"*\"\nttl = \"none\"\n",
            "[[guards.enqueue.rules]]\npreset = \"generic\"\npattern = \"q\"\nformat = \"raw\"\n",
            "scope = [\"client_name\"]\naction = \"drop\"\n",
        ))
        .unwrap();
        let shed = &raw.guards.shed.rules[0];
        assert_eq!(shed.priority, Priority::Low);
        assert_eq!(shed.clients.user.as_deref(), Some("app"));
        assert_eq!(raw.guards.ttl.rules[0].ttl, DefaultTtl::Exempt);
        assert_eq!(
            raw.guards.enqueue.rules[0].scope,
            vec![ScopePart::ClientName]
        );
        assert_eq!(RawConfig::from_toml(&raw.to_toml()).unwrap(), raw);
    }

    #[test]
    fn a_script_rule_round_trips_with_its_dropped_reply_typed() {
        let rule = |reply: &str| {
            RawConfig::from_toml(&format!(
                "[[guards.enqueue.rules]]\npreset = \"generic\"\npattern = \"myq:*\"\n\
                 script = {{ sha1 = \"{}\" }}\npayload_arg = 2\noperation_arg = 1\n\
                 operation = \"enqueue\"\nkey_index = 1\ndropped_reply = {reply}\n",
                "a".repeat(40)
            ))
        };
        let raw = rule("1").unwrap();
        let r = &raw.guards.enqueue.rules[0];
        assert_eq!(r.dropped_reply, Some(DroppedReply::Integer(1)));
        assert_eq!(
            r.script.as_ref().unwrap().sha1.as_deref(),
            Some(&*"a".repeat(40))
        );
        assert_eq!(
            (r.payload_arg, r.operation_arg, r.key_index),
            (Some(2), Some(1), Some(1))
        );
        assert_eq!(RawConfig::from_toml(&raw.to_toml()).unwrap(), raw);
        // Quoted digits are text: a bulk string, as a script returning tostring(id) gives.
        let raw = rule("\"1\"").unwrap();
        assert_eq!(
            raw.guards.enqueue.rules[0].dropped_reply,
            Some(DroppedReply::Text("1".into()))
        );
        assert_eq!(RawConfig::from_toml(&raw.to_toml()).unwrap(), raw);
        let e = RawConfig::from_toml(
            "[[guards.enqueue.rules]]\npreset = \"generic\"\nscript = { sha = \"x\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `sha`"), "{e}");
    }

    #[test]
    fn replication_is_tunnelled_unless_refused() {
        assert_eq!(RawConfig::default().proxy.replication, Replication::Tunnel);
        let c = RawConfig::from_toml("[proxy]\nreplication = \"refuse\"\n").unwrap();
        assert_eq!(c.proxy.replication, Replication::Refuse);
        let e = RawConfig::from_toml("[proxy]\nreplication = \"allow\"\n").unwrap_err();
        assert!(e.to_string().contains("tunnel"), "{e}");
    }

    #[test]
    fn shedding_levels_must_have_hysteresis_and_valid_rules() {
        // A wrong word (a priority) is refused as the file is read; the rest by `validate`.
        let err = |toml: &str| {
            RawConfig::from_toml(toml)
                .and_then(RawConfig::validate)
                .unwrap_err()
                .to_string()
        };
        let e = err("[guards.shed]\nsoft_enter = 0.5\nsoft_exit = 0.5\n");
        assert!(
            e.contains("guards.shed.soft_exit") && e.contains("flap"),
            "{e}"
        );
        let e = err("[guards.shed]\nsoft_enter = 0.95\nsoft_exit = 0.9\n");
        assert!(e.contains("guards.shed.soft_enter"), "{e}");
        let e = err("[guards.shed]\nhard_enter = 1.5\n");
        assert!(e.contains("guards.shed.hard_enter"), "{e}");
        let e = err("[[guards.shed.rules]]\npattern = \"a:*\"\npriority = \"urgent\"\n");
        assert!(e.contains("priority `urgent`"), "{e}");
        let e = err("[guards.shed]\nallowed_scripts = [\"abc\"]\n");
        assert!(e.contains("not a SHA1"), "{e}");
        let e = err("[monitor]\nwarning_levels = [0.5, 2.0]\n");
        assert!(e.contains("monitor.warning_levels"), "{e}");
        // Turning a level off needs no exit ratio.
        RawConfig::from_toml("[guards.shed]\nsoft_enter = 0.0\nsoft_exit = 0.0\n")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn auth_users_never_run_with_the_proxy_credentials() {
        // Guards against a client that authenticates to the proxy getting the Redis
        // password's rights (CONFIG GET requirepass and the like).
        let users = "[[auth.users]]\nname = \"app\"\npassword = \"p\"\n";
        let with_url = |url: &str| {
            RawConfig::from_toml(&format!("[upstream]\nurl = \"{url}\"\n{users}"))
                .unwrap()
                .validate()
        };
        let e = with_url("redis://:admin@127.0.0.1:6379")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auth.users") && e.contains("`app` has no upstream_user"),
            "{e}"
        );
        // A URL without a password gives no rights a client lacks.
        with_url("redis://127.0.0.1:6379").unwrap();
        let mapped = format!("{users}upstream_user = \"app\"\nupstream_password = \"q\"\n");
        RawConfig::from_toml(&format!(
            "[upstream]\nurl = \"redis://:admin@127.0.0.1:6379\"\n{mapped}"
        ))
        .unwrap()
        .validate()
        .unwrap();
    }

    #[test]
    fn upstream_urls() {
        let t = UpstreamTarget::parse("redis://app:s%40cret@redis.internal:6400/3").unwrap();
        assert_eq!(t.address, "redis.internal:6400");
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.db, 3);
        assert!(!format!("{t:?}").contains("s@cret"));
        let t = UpstreamTarget::parse("redis://:pw@[::1]").unwrap();
        assert_eq!(t.address, "[::1]:6379");
        assert_eq!(t.username, None);
        assert!(UpstreamTarget::parse("http://x").is_err());
        assert!(UpstreamTarget::parse("redis://h/x").is_err());
    }

    /// Read rules parse typed, round-trip, and are refused with the key named: a wrong
    /// `from`, an unknown key, an empty pattern, too many rules, and a replica rule in
    /// front of a single Redis (taken behind Sentinel).
    #[test]
    fn read_from_rules_parse_and_are_refused_when_invalid() {
        let cluster = "[upstream]\nurl = \"redis-cluster://127.0.0.1:7000\"\n";
        let rules = concat!(
            "[[upstream.read_from]]\npattern = \"cache:*\"\nfrom = \"replica\"\n",
            "[[upstream.read_from]]\npattern = \"feed:*\"\nfrom = \"prefer-replica\"\n",
            "[[upstream.read_from]]\npattern = \"*\"\nfrom = \"primary\"\n",
        );
        let raw = RawConfig::from_toml(&format!("{cluster}{rules}")).unwrap();
        let froms: Vec<ReadFrom> = raw.upstream.read_from.iter().map(|r| r.from).collect();
        assert_eq!(
            froms,
            [
                ReadFrom::Replica,
                ReadFrom::PreferReplica,
                ReadFrom::Primary
            ]
        );
        assert_eq!(raw.upstream.read_from[0].pattern, "cache:*");
        assert_eq!(RawConfig::from_toml(&raw.to_toml()).unwrap(), raw);
        raw.validate().unwrap();

        let err = |toml: &str| {
            RawConfig::from_toml(toml)
                .and_then(RawConfig::validate)
                .unwrap_err()
                .to_string()
        };
        let e = err(&format!(
            "{cluster}[[upstream.read_from]]\npattern = \"a:*\"\nfrom = \"replicas\"\n"
        ));
        assert!(
            e.contains("upstream.read_from.from `replicas`: expected `primary`, `replica` or `prefer-replica`"),
            "{e}"
        );
        let e = err(&format!(
            "{cluster}[[upstream.read_from]]\npattern = \"a:*\"\nform = \"replica\"\n"
        ));
        assert!(e.contains("unknown field `form`"), "{e}");
        let e = err(&format!(
            "{cluster}[[upstream.read_from]]\npattern = \"a:*\"\n"
        ));
        assert!(e.contains("missing field `from`"), "{e}");
        let e = err(&format!(
            "{cluster}[[upstream.read_from]]\npattern = \"\"\nfrom = \"replica\"\n"
        ));
        assert!(
            e.contains("upstream.read_from") && e.contains("empty pattern"),
            "{e}"
        );
        let many = "[[upstream.read_from]]\npattern = \"a\"\nfrom = \"replica\"\n"
            .repeat(MAX_READ_RULES + 1);
        let e = err(&format!("{cluster}{many}"));
        assert!(
            e.contains("upstream.read_from") && e.contains("at most 64"),
            "{e}"
        );
        // A single Redis: a replica rule is refused, a primary rule changes nothing;
        // behind Sentinel a replica rule is taken.
        let replica_rule = "[[upstream.read_from]]\npattern = \"r:*\"\nfrom = \"prefer-replica\"\n";
        let e = err(&format!(
            "[upstream]\nurl = \"redis://127.0.0.1:6379\"\n{replica_rule}"
        ));
        assert!(
            e.contains("upstream.read_from")
                && e.contains("rule `r:*`")
                && e.contains("a single Redis has no replicas to read from"),
            "{e}"
        );
        RawConfig::from_toml(&format!(
            "[upstream]\nurl = \"redis-sentinel://127.0.0.1:26379#m\"\n{replica_rule}"
        ))
        .unwrap()
        .validate()
        .unwrap();
        RawConfig::from_toml("[[upstream.read_from]]\npattern = \"r:*\"\nfrom = \"primary\"\n")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn effective_config_round_trips() {
        let raw = RawConfig::default();
        let again = RawConfig::from_toml(&raw.to_toml()).unwrap();
        assert_eq!(raw, again);
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config.example.toml");

    #[test]
    fn the_example_file_holds_exactly_the_defaults() {
        let parsed = RawConfig::from_toml(EXAMPLE).unwrap();
        assert_eq!(parsed, RawConfig::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn the_example_file_documents_every_key() {
        fn check(table: &toml::Table, path: &str) {
            for (key, value) in table {
                let full = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match value {
                    toml::Value::Table(t) => {
                        assert!(EXAMPLE.contains(&format!("[{full}]")), "[{full}] missing");
                        check(t, &full);
                    }
                    _ => assert!(
                        EXAMPLE.lines().any(|l| l.starts_with(&format!("{key} = "))),
                        "{full} is not in config.example.toml"
                    ),
                }
            }
        }
        let defaults = toml::Value::try_from(RawConfig::default()).unwrap();
        check(defaults.as_table().unwrap(), "");
    }

    #[test]
    fn every_rule_key_is_documented_in_the_example() {
        for key in [
            "pattern",
            "user",
            "client_name",
            "client_address",
            "mode",
            "max_value",
            "max_request",
            "max_elements",
            "ttl",
            "max_ttl",
            "commands",
            "priority",
            "max_depth",
        ] {
            assert!(
                EXAMPLE.contains(&format!("{key} = ")),
                "rule key {key} undocumented"
            );
        }
    }
}
