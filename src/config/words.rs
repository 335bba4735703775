//! The enumerated settings, each read once as one word of a fixed set (mode, priority,
//! enqueue action, scope, payload format, preset, runtime model, a TTL of `none`), and the
//! client filters every rule shares ([`ClientMatch`]), with the catch-all that refuses a
//! misspelt rule key.

use super::units::HumanDuration;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An enumerated setting written as one word. Each is parsed once, when the file is read,
/// and a wrong word is refused with the words the setting accepts.
macro_rules! word_enum {
    ($(#[$meta:meta])* pub enum $name:ident ($what:literal) {
        $($(#[$vmeta:meta])* $variant:ident = $word:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The word the file uses.
            pub fn word(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }

            /// Read the word `s`; the error names the setting and the words it accepts.
            pub fn from_word(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok($name::$variant),)+
                    other => Err(format!(
                        concat!($what, " `{}`: expected {}"),
                        other,
                        one_of(&[$($word),+])
                    )),
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::from_word(&s).map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.word())
            }
        }
    };
}

/// "`a`, `b` or `c`".
fn one_of(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

word_enum! {
    /// A rule's mode (`guards.mode`, a rule's `mode`).
    pub enum Mode ("mode") {
        /// Act on the verdict.
        Enforce = "enforce",
        /// Count and log the verdict, forward the command unchanged.
        Observe = "observe",
    }
}

impl Mode {
    /// The metric label.
    pub fn label(self) -> &'static str {
        self.word()
    }
}

word_enum! {
    /// How important a key's writes are when memory runs short (a shed rule's `priority`).
    /// Ordered: `Low < Normal < Critical`.
    pub enum Priority ("priority") {
        /// Shed first, at `soft`.
        Low = "low",
        /// Shed at `hard`.
        Normal = "normal",
        /// Never shed.
        Critical = "critical",
    }
}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

word_enum! {
    /// What an enqueue rule does with a job over its limit (`action`).
    pub enum EnqueueAction ("action") {
        /// Answer as if enqueued; send nothing.
        Drop = "drop",
        /// Answer an error naming the rule.
        Reject = "reject",
        /// Count and log only.
        Observe = "observe",
    }
}

word_enum! {
    /// One part of what identifies a client to an enqueue rule (`scope`).
    pub enum ScopePart ("scope") {
        /// The Redis (or proxy) user.
        User = "user",
        /// The CLIENT SETNAME name.
        ClientName = "client_name",
        /// The IP address, never the port.
        Address = "address",
    }
}

word_enum! {
    /// How a generic enqueue rule reads a payload (`format`).
    pub enum PayloadFormat ("format") {
        /// A JSON document.
        Json = "json",
        /// Opaque bytes.
        Raw = "raw",
        /// A MessagePack value, read as JSON would be.
        Msgpack = "msgpack",
        /// A Python pickle (protocols 2 to 5), read without executing anything.
        Pickle = "pickle",
    }
}

word_enum! {
    /// The job library an enqueue rule reads (`preset`).
    pub enum Preset ("preset") {
        /// Sidekiq.
        Sidekiq = "sidekiq",
        /// Celery.
        Celery = "celery",
        /// RQ.
        Rq = "rq",
        /// BullMQ.
        Bullmq = "bullmq",
        /// Dramatiq (its Redis broker).
        Dramatiq = "dramatiq",
        /// Bee-Queue.
        Beequeue = "beequeue",
        /// Bull (3.x and 4.x, the generation before BullMQ).
        Bull = "bull",
        /// taskiq (taskiq-redis's list brokers).
        Taskiq = "taskiq",
        /// Described by the rule's own settings.
        Generic = "generic",
    }
}

word_enum! {
    /// How the proxy's threads serve clients (`proxy.runtime`).
    pub enum RuntimeModel ("runtime") {
        /// One work-stealing runtime of `proxy.worker_threads` threads and one listening
        /// socket: a session may move between threads.
        MultiThread = "multi-thread",
        /// `proxy.worker_threads` threads, each a single-threaded runtime with its own
        /// listening socket on the same address (`SO_REUSEPORT`): the kernel spreads new
        /// connections over them and a session stays on the thread that accepted it.
        PerCore = "per-core",
    }
}

word_enum! {
    /// How client commands reach Redis (`upstream.connections`).
    pub enum ConnectionModel ("connections") {
        /// Each client gets its own Redis connection: all connection state lives in Redis
        /// as if the client were connected directly.
        PerClient = "per-client",
        /// Clients share a few Redis connections (`upstream.shared_connections` per
        /// database in use, `upstream.shared_identities`); a client moves to a connection of
        /// its own while it uses connection state (transactions, blocking, subscriptions),
        /// for good after AUTH, HELLO, CLIENT ....
        Multiplexed = "multiplexed",
    }
}

word_enum! {
    /// Where a read of a key goes in front of a Redis Cluster (`upstream.read_from`'s
    /// `from`).
    pub enum ReadFrom ("upstream.read_from.from") {
        /// The slot's primary, as every command.
        Primary = "primary",
        /// A replica of the slot's shard; the primary only when the shard has no replica
        /// known.
        Replica = "replica",
        /// A replica of the slot's shard, or the primary when none is known or the
        /// replica cannot be reached.
        PreferReplica = "prefer-replica",
    }
}

/// A TTL rule's `ttl`: a duration, or `none` to exempt matching keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultTtl {
    /// `none`: keys of the rule get no TTL.
    Exempt,
    /// Keys written without an expiry get this one.
    After(Duration),
}

impl DefaultTtl {
    /// The TTL, if the rule gives one.
    pub fn duration(self) -> Option<Duration> {
        match self {
            DefaultTtl::Exempt => None,
            DefaultTtl::After(d) => Some(d),
        }
    }
}

impl<'de> Deserialize<'de> for DefaultTtl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "none" {
            return Ok(DefaultTtl::Exempt);
        }
        humantime::parse_duration(&s)
            .map(DefaultTtl::After)
            .map_err(|e| {
                serde::de::Error::custom(format!("ttl `{s}` is not a duration or `none` ({e})"))
            })
    }
}

impl Serialize for DefaultTtl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DefaultTtl::Exempt => s.serialize_str("none"),
            DefaultTtl::After(d) => HumanDuration(*d).serialize(s),
        }
    }
}

/// The client filters every rule may have, written in the rule's own table
/// (`#[serde(flatten)]`): a rule applies only to clients matching all that are given.
///
/// serde's `deny_unknown_fields` does not work through `flatten`, so the keys no field of
/// the rule takes end here, in [`NoOtherKeys`], which refuses them: a misspelt rule key is
/// an error, as everywhere else in the file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ClientMatch {
    /// Only for clients authenticated as this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only for clients with this CLIENT SETNAME name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// Only for clients from this address or network (`10.0.0.0/8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<ipnet::IpNet>,
    /// Refuses every key of the rule no field took.
    #[serde(flatten)]
    pub others: NoOtherKeys,
}

/// Stands for "no other keys": deserialising it from any key fails with `unknown field`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoOtherKeys;

impl<'de> Deserialize<'de> for NoOtherKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Refuse;
        impl<'de> serde::de::Visitor<'de> for Refuse {
            type Value = NoOtherKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("no further keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NoOtherKeys, A::Error> {
                match map.next_key::<String>()? {
                    Some(key) => Err(serde::de::Error::custom(format!("unknown field `{key}`"))),
                    None => Ok(NoOtherKeys),
                }
            }
        }
        d.deserialize_map(Refuse)
    }
}

impl Serialize for NoOtherKeys {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}
