//! respguard: a Redis-protocol proxy that guards Redis against the failures that keep
//! taking it down, while behaving, for the application, exactly like Redis.
//!
//! # Layout
//!
//! The modules follow one command's path through the proxy:
//!
//! - [`listener`] (one, or one per thread, as [`runtime`] says) accepts a client connection (within `proxy.max_clients`) and starts a
//!   [`session`], which holds the client's own upstream connection, opened through the
//!   shared [`upstream::ConnectGate`] (rate limit, circuit breaker, AUTH/SELECT handshake).
//! - The session reads client bytes into its request pipe; the
//!   [`scanner::request::RequestScanner`] finds each command without copying it;
//!   [`pipeline`] classifies it with the [`command::CommandTable`] and, for a command a
//!   guard wants, runs the [`guard::Guards`] chain (size, shed, queue, enqueue, TTL), which
//!   returns a verdict: forward, rewrite (with hidden extra commands), answer or refuse.
//! - The session's connection state records in the [`reply_queue::ReplyQueue`] what to do
//!   with the command's replies; the bytes go upstream, unchanged unless a guard rewrote them.
//! - Replies come back through the [`scanner::reply::ReplyScanner`], are matched with the
//!   queue's head, and go to the client (or are hidden, or replaced).
//!
//! Around that path: [`config`] (the TOML file and overrides), [`control`] (the policy in
//! force, hot reload, status, the `RESPGUARD` command), [`auth`] (clients authenticating to
//! the proxy), [`transport`] (plain TCP or TLS), [`monitor`] and [`pressure`] (Redis
//! memory), [`health`] (is Redis answering), [`admin`] (HTTP health, status, metrics and the live console),
//! [`telemetry`] (metric handles and latency histograms), [`refusals`] (who is refused
//! most), [`keyspace`] (what grows, per key prefix, seen from the commands [`pipeline`]
//! judges), [`app`] (wiring it all together), [`identity`] (who a client is), [`resp`]
//! (everything the proxy itself writes in RESP), [`clock`] (time for the guards' windows),
//! [`offline`] (the guards over a byte stream, for fuzzing), [`shutdown`], [`wakeup`] and
//! [`alarm`] (the cheap waits and timers of the sessions' and shared connections' event
//! loops), [`write_batch`] (what a shared connection is writing), [`cluster`] (slots, the slot
//! map and command routing for a Redis Cluster upstream still to come).
//!
//! See `ARCHITECTURE.md` for the invariants.

pub mod admin;
pub mod admission;
pub mod alarm;
pub mod app;
pub mod auth;
pub mod buffer;
pub mod clock;
pub mod cluster;
pub mod command;
pub mod config;
pub mod control;
pub mod guard;
pub mod health;
pub mod http_get;
pub mod identity;
pub mod keyspace;
pub mod listener;
pub mod monitor;
pub mod mux;
pub mod offline;
pub mod pipeline;
pub mod pressure;
pub mod refusals;
pub mod reply_queue;
pub mod resp;
pub mod runtime;
pub mod scanner;
pub mod sentinel;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod transport;
pub mod upstream;
pub mod wakeup;
pub mod write_batch;
