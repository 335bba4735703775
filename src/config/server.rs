//! The file's sections about the proxy itself: `[proxy]`, `[auth]`, `[upstream]`, `[admin]`,
//! `[log]` and `[protocol]`, with their defaults.

use super::units::{ByteSize, HumanDuration};
use super::words::{ConnectionModel, ReadFrom, RuntimeModel};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scanner::request::Limits;

/// `[auth]`: clients authenticate to respguard with their own credentials; each user is
/// mapped to the Redis credentials its commands run with, so applications never hold the
/// Redis password. No users: clients are not asked to authenticate (Redis's own AUTH passes
/// through).
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// The users clients may authenticate as.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<RawProxyUser>,
}

/// `[[auth.users]]`: one client credential.
#[derive(Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxyUser {
    /// The name clients give to `AUTH name password`; `default` also serves `AUTH password`.
    pub name: String,
    /// The password, in clear.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// Or the password's SHA-256, in hex, so the file holds no password.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password_sha256: String,
    /// The Redis ACL user this client's commands run as; empty: Redis's `default` user,
    /// refused when `upstream.url` has a password (those are the proxy's own credentials).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub upstream_user: String,
    /// That user's Redis password.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub upstream_password: String,
}

impl fmt::Debug for RawProxyUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a password.
        f.debug_struct("RawProxyUser")
            .field("name", &self.name)
            .field("upstream_user", &self.upstream_user)
            .finish_non_exhaustive()
    }
}

/// `[proxy]`: the listener clients connect to.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    /// Address clients connect to.
    pub listen: String,
    /// Most client connections open at once.
    pub max_clients: usize,
    /// Most commands in flight (sent, reply not yet delivered) per connection.
    pub max_pending_commands: usize,
    /// Unwritten bytes per direction after which the proxy stops reading the other side;
    /// multiplexed, the soft limit of a client's unread replies.
    pub output_buffer: ByteSize,
    /// Multiplexed: most bytes of replies a client may leave unread (a shared connection
    /// cannot wait for it); past it the client is disconnected. The default, 512 MiB, is
    /// Redis's `proto-max-bulk-len`: any value Redis accepts reaches a client that reads it,
    /// however slowly (within the soft time).
    pub output_buffer_hard: ByteSize,
    /// Multiplexed: longest time a client's unread replies may stay above `output_buffer`.
    pub output_buffer_soft_time: HumanDuration,
    /// How long in-flight replies may take to finish on shutdown.
    pub drain_timeout: HumanDuration,
    /// Threads serving connections; 0 means one per CPU core.
    pub worker_threads: usize,
    /// How those threads share the clients: one work-stealing runtime, or one
    /// single-threaded runtime and listening socket per thread.
    pub runtime: RuntimeModel,
    /// TLS for clients: off unless a certificate is given.
    pub tls: RawListenerTls,
    /// New client connections accepted per second in all; 0 for no limit.
    pub max_connections_per_second: u32,
    /// New client connections accepted per second from one address; 0 for no limit.
    pub max_connections_per_second_per_address: u32,
    /// Most client addresses whose connection rate is followed at once.
    pub max_tracked_addresses: usize,
    /// What SYNC and PSYNC get: a byte tunnel to Redis, or a refusal.
    pub replication: Replication,
}

/// `proxy.replication`: what happens when a client (a replica, `redis-cli --rdb`) asks for
/// SYNC or PSYNC through the proxy.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// Forward it; once Redis starts the transfer, the connection carries bytes both ways
    /// unscanned and unguarded for the rest of its life.
    #[default]
    Tunnel,
    /// Answer `-ERR respguard: ...` naming the setting; Redis never sees it.
    Refuse,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            listen: "127.0.0.1:6380".into(),
            max_clients: 10_000,
            max_pending_commands: 4096,
            output_buffer: ByteSize(256 * 1024),
            output_buffer_hard: ByteSize(512 * 1024 * 1024),
            output_buffer_soft_time: HumanDuration(Duration::from_secs(60)),
            drain_timeout: HumanDuration(Duration::from_secs(5)),
            worker_threads: 0,
            runtime: RuntimeModel::MultiThread,
            tls: RawListenerTls::default(),
            max_connections_per_second: 5000,
            max_connections_per_second_per_address: 1000,
            max_tracked_addresses: 65_536,
            replication: Replication::Tunnel,
        }
    }
}

/// `[upstream]`: the Redis server and how to reach it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// How long one connection attempt may take.
    pub connect_timeout: HumanDuration,
    /// Longest wait for Redis to send anything while replies are owed (blocking commands,
    /// WAIT, subscriptions and MONITOR excepted); then the waiting commands get an error and
    /// the connection is closed. 0 turns the check off.
    pub reply_timeout: HumanDuration,
    /// First wait after a failed attempt; doubles per failure, with jitter.
    pub backoff_min: HumanDuration,
    /// Longest wait between attempts.
    pub backoff_max: HumanDuration,
    /// Connection attempts per second across all clients.
    pub max_connects_per_second: u32,
    /// Most connections open to Redis at once (the proxy's own included); 0 for no limit
    /// beyond `proxy.max_clients`.
    pub max_connections: usize,
    /// `upstream` to read the command table from Redis, or `builtin` for the shipped one.
    pub command_table: String,
    /// `per-client` (a Redis connection per client) or `multiplexed` (clients share
    /// `shared_connections`, and move to their own connection when they use connection state).
    pub connections: ConnectionModel,
    /// With `connections = "multiplexed"`: how many Redis connections the clients share
    /// (per serving thread with `proxy.runtime = "per-core"`).
    pub shared_connections: usize,
    /// With `connections = "multiplexed"`: most connections of their own in use at once, for
    /// clients holding connection state (a transaction, a blocking command, SELECT ...). A
    /// client that needs one while all are in use waits up to `connect_timeout`, then gets
    /// an error.
    pub pinned_connections: usize,
    /// With `connections = "multiplexed"`: connections of their own kept open, idle, for the
    /// next client that needs one (after a transaction or a blocking command ended).
    pub pinned_idle: usize,
    /// With `connections = "multiplexed"`: most distinct identities (ACL user, database,
    /// protocol version) with shared connections of their own, the URL's included (a
    /// client's AUTH, SELECT or HELLO 3 moves it to its identity's); at the bound unused
    /// ones close to make room, and a client needing one more keeps a connection of its
    /// own for good instead.
    pub shared_identities: usize,
    /// With a `redis-cluster://` URL: where read-only commands on matching keys go (the
    /// first rule whose pattern matches wins; a key no rule matches is read from its
    /// primary).
    pub read_from: Vec<RawReadRule>,
    /// TLS settings for a `rediss://` URL.
    pub tls: RawUpstreamTls,
    /// With a `redis-sentinel://` URL: the password the sentinels require (`requirepass`
    /// in sentinel.conf); empty: the sentinels are asked without AUTH. The URL's
    /// credentials are the data nodes'.
    pub sentinel_password: String,
}

/// One `[[upstream.read_from]]` rule: reads of the keys `pattern` matches go where `from`
/// says (`docs/cluster.md`, "Reading from replicas").
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawReadRule {
    /// Key pattern (Redis glob, as the guards' rules).
    pub pattern: String,
    /// `primary`, `replica` or `prefer-replica`.
    pub from: ReadFrom,
}

/// `[upstream.tls]`: how to reach a `rediss://` upstream.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTls {
    /// PEM file of the CA certificates to trust; empty: the system's.
    pub ca_file: String,
    /// PEM client certificate, for a Redis with `tls-auth-clients yes`.
    pub cert_file: String,
    /// The client certificate's PEM private key.
    pub key_file: String,
    /// The name the server's certificate must carry; empty: the URL's host.
    pub server_name: String,
}

/// `[proxy.tls]`: TLS for client connections.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawListenerTls {
    /// PEM certificate chain; empty: clients connect in plain text.
    pub cert_file: String,
    /// Its PEM private key.
    pub key_file: String,
    /// PEM CA certificates; when set, clients must present a certificate it signed.
    pub client_ca_file: String,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            url: "redis://127.0.0.1:6379".into(),
            connect_timeout: HumanDuration(Duration::from_secs(1)),
            reply_timeout: HumanDuration(Duration::from_secs(30)),
            backoff_min: HumanDuration(Duration::from_millis(50)),
            backoff_max: HumanDuration(Duration::from_secs(5)),
            max_connects_per_second: 500,
            max_connections: 0,
            command_table: "upstream".into(),
            connections: ConnectionModel::PerClient,
            shared_connections: 2,
            pinned_connections: 1024,
            pinned_idle: 16,
            shared_identities: 16,
            read_from: Vec::new(),
            tls: RawUpstreamTls::default(),
            sentinel_password: String::new(),
        }
    }
}

/// `[admin]`: health, status and metrics over HTTP, and the `RESPGUARD` command.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Address of the HTTP listener; empty to disable it.
    pub listen: String,
    /// Record metrics (`false` leaves `/metrics` empty and saves their cost).
    pub metrics: bool,
    /// Client networks allowed to send `RESPGUARD` commands; empty: nobody.
    pub command_networks: Vec<ipnet::IpNet>,
    /// If not empty, only connections authenticated as one of these users may send
    /// `RESPGUARD` commands (a Redis ACL user, or a respguard `[[auth.users]]` name).
    pub command_users: Vec<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9121".into(),
            metrics: true,
            command_networks: vec![
                "127.0.0.0/8".parse().expect("a network"),
                "::1/128".parse().expect("a network"),
            ],
            command_users: Vec::new(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// A `tracing` filter: `info`, `debug`, `respguard=debug,warn`...
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[protocol]`: bounds on what a client may send.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawProtocol {
    /// Longest inline command or length line (Redis: 64KiB).
    pub max_inline_len: ByteSize,
    /// Most arguments in one command (default 2147483647, Redis's own limit: memory is
    /// bounded by `max_buffered_command`, not by this count).
    pub max_args: u64,
    /// Largest argument (Redis's `proto-max-bulk-len`: 512MiB).
    pub max_bulk_len: ByteSize,
    /// Arguments larger than this are streamed through instead of buffered.
    pub stream_threshold: ByteSize,
    /// A command whose buffered part grows past this is streamed from there on.
    pub max_buffered_command: ByteSize,
}

impl Default for RawProtocol {
    fn default() -> Self {
        let l = Limits::default();
        RawProtocol {
            max_inline_len: ByteSize(l.max_inline_len as u64),
            max_args: l.max_args,
            max_bulk_len: ByteSize(l.max_bulk_len),
            stream_threshold: ByteSize(l.stream_threshold),
            max_buffered_command: ByteSize(l.max_buffered_command as u64),
        }
    }
}
