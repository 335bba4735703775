//! The ground for a Redis Cluster upstream (not offered yet: the configuration accepts no
//! `redis-cluster://` URL until a router uses this). What is here:
//!
//! - [`slot`]: a key's hash slot (CRC16 and the hash-tag rule), as `CLUSTER KEYSLOT`;
//! - [`topology`]: the [`topology::SlotMap`], which shard serves each slot, read from a
//!   `CLUSTER SHARDS` or `CLUSTER SLOTS` reply ([`frame`] reads those replies, bounded);
//! - [`route`]: where a command goes, from the command table's keys: keyless, one slot,
//!   or across slots;
//! - [`reader`]: one node asked for its topology through the [`crate::upstream::ConnectGate`].
//!
//! The design of the whole upstream, built and planned, is `docs/cluster.md`. Imports only
//! `command`, `upstream` and `resp` (it may import `scanner` and `config`); never a
//! session, a lane or a guard, and nothing imports it yet.

pub mod frame;
pub mod reader;
pub mod route;
pub mod slot;
pub mod topology;
