//! The guard engine: every command a guard cares about passes through the guards, in a fixed
//! order, and comes out with a [`Verdict`].
//!
//! A guard ([`Guard`]) is a value with phases, each with a default that lets the command
//! through: which commands it wants, whether it is engaged now, its check, the reply it
//! watches, its answer while Redis is unreachable. The trait's documentation gives their
//! order; [`Guards`] (in `chain.rs`) is the one place the order of guards is written.
//! Guards never touch sockets and never block; the session carries their verdicts out, so
//! no guard special-cases the session.
//!
//! Rules are chosen by key pattern (first match wins), optionally narrowed to a user, a client
//! name or a client network. Each rule has a mode: `enforce`, or `observe`, where the guard
//! counts and logs what it would have done and the command is forwarded unchanged. Every
//! decision is counted through pre-registered metric handles labelled with guard, rule,
//! action and mode; refusals are logged at most `guards.refusal_logs_per_second` times per
//! rule.
//!
//! # Layout
//! The engine's parts import no guard: `verdict` (what a guard sees and answers), `phase`
//! (the [`Guard`] trait), `rule` (rules, actions, counting and logging), `log_limit`,
//! `by_command`, `rewrite` (encoding a rewritten command), `watch` (reply watches),
//! `pattern` (key globs), `library` (job libraries' key shapes). The guards (`size`, `shed`, `queue`, `enqueue`, `ttl`,
//! `fail_open`) import those; `context` (the state guards share) and `chain` import the
//! guards. This file only declares the modules and names what the rest of the crate uses.

mod by_command;
mod chain;
mod context;
pub mod decisions;
pub mod enqueue;
pub mod fail_open;
pub mod job_work;
pub mod library;
mod log_limit;
pub mod pattern;
mod phase;
pub mod queue;
mod rewrite;
mod rule;
pub mod script_catalog;
pub mod shed;
pub mod size;
pub mod ttl;
mod verdict;
mod watch;

pub use by_command::ByCommand;
#[cfg(test)]
pub(crate) use chain::guards_of;
pub use chain::Guards;
pub use context::GuardContext;
pub use log_limit::LogLimiter;
pub use phase::Guard;
pub use rewrite::{encode_appending, encode_replacing, EncodedArgs};
pub use rule::{first_rule, printable_key, Action, Mode, Rule, RuleKind, RuleSpec};
pub use verdict::{find_keys, wire_args, CommandView, ScriptAccess, Verdict, PROBE};
pub use watch::{ReplyWatch, ReplyWatcher, WatchSlot};

#[cfg(test)]
pub use verdict::examined;
