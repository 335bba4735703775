//! The guard chain: which guards run, in which order, and the bitmasks per command id that
//! let the hot path skip every phase a guard does not want.
//!
//! The order is written once, in [`Guards::build`]: the size guard first (a refused command
//! is never rewritten), then the shed guard (memory pressure), the queue guard (queue
//! depth), the enqueue guard (duplicate jobs), the TTL guard, and fail-open (which acts only
//! while Redis is unreachable). The first guard whose verdict is not `Forward` decides.
//! Never carries a verdict out: the session does.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::by_command::ByCommand;
use super::context::GuardContext;
use super::enqueue::EnqueueGuard;
use super::fail_open::FailOpen;
use super::phase::Guard;
use super::queue::QueueGuard;
use super::shed::ShedGuard;
use super::size::SizeGuard;
use super::ttl::TtlGuard;
use super::verdict::{CommandView, Verdict};
use crate::command::CommandTable;
use crate::config::{ConfigError, RawGuards};
use crate::identity::ClientIdentity;

/// The guards, in order, and which of their phases each command needs.
pub struct Guards {
    chain: Vec<Link>,
    /// By command id: bit `i` is set when guard `i` wants the command (at most 8 guards).
    wanted: ByCommand<u8>,
    /// Guards whose `engaged` phase may say no (the shed guard).
    gated: u8,
    /// By command id: gated guards engaged for it whatever `engaged` says.
    ungated: ByCommand<u8>,
    /// By command id: whether the one gated guard is the only guard that wants it, and may
    /// disengage for it ([`Guards::gated_only`]).
    gated_only: ByCommand<bool>,
    /// Guards that send scripts or expiries as the client's user (the TTL guard).
    as_user: u8,
    /// By command id: bit `i` is set when guard `i` may answer it while Redis is down.
    when_down: ByCommand<u8>,
    /// The TTL guard's bit, so an observer can tell a default expiry was added.
    ttl: u8,
}

impl std::fmt::Debug for Guards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.chain.iter().map(|g| g.guard().name()).collect();
        f.debug_struct("Guards").field("chain", &names).finish()
    }
}

impl Guards {
    /// Build the guards from their configuration, for the commands of `table`. This is the
    /// one place the order of guards is written.
    pub fn build(
        raw: &RawGuards,
        table: &CommandTable,
        context: &GuardContext,
    ) -> Result<Self, ConfigError> {
        let mode = raw.mode;
        let logs = raw.refusal_logs_per_second;
        let mut chain = Vec::new();
        if !raw.size.rules.is_empty() {
            chain.push(Link::Size(SizeGuard::build(&raw.size, mode, logs)?));
        }
        // Built (and its counters registered) even when no level is on, as always.
        let pressure = Arc::clone(&context.pressure);
        let catalog = Arc::clone(&context.scripts);
        let shed = ShedGuard::build(&raw.shed, mode, logs, pressure, catalog, table);
        if raw.shed.soft_enter > 0.0 || raw.shed.hard_enter > 0.0 {
            chain.push(Link::Shed(shed));
        }
        if !raw.queue.rules.is_empty() {
            let depths = Arc::clone(&context.queues);
            let queue = QueueGuard::build(&raw.queue, mode, logs, depths, table);
            chain.push(Link::Queue(queue));
        }
        if !raw.enqueue.rules.is_empty() {
            let memory = Arc::clone(&context.enqueue);
            let enqueue = EnqueueGuard::build(&raw.enqueue, mode, logs, memory, table)?;
            chain.push(Link::Enqueue(enqueue));
        }
        if !raw.ttl.rules.is_empty() {
            chain.push(Link::Ttl(TtlGuard::build(&raw.ttl, mode, logs, table)?));
        }
        if let Some(fail_open) = FailOpen::build(&raw.fail_open, table, logs) {
            chain.push(Link::FailOpen(fail_open));
        }
        Ok(Guards::of(chain, table))
    }

    /// The chain `chain`, in that order, with its bitmasks for the commands of `table`.
    fn of(chain: Vec<Link>, table: &CommandTable) -> Self {
        debug_assert!(chain.len() <= 8, "the bitmasks hold eight guards");
        let mask = |has: &dyn Fn(&dyn Guard) -> bool| {
            chain
                .iter()
                .enumerate()
                .filter(|(_, g)| has(g.guard()))
                .fold(0u8, |bits, (i, _)| bits | 1 << i)
        };
        let wanted = ByCommand::build(table, |info| mask(&|g| g.wants(info)));
        let gated = mask(&|g| g.may_disengage());
        let ungated = ByCommand::build(table, |info| mask(&|g| g.always_engaged(info)));
        let as_user = mask(&|g| g.acts_as_user());
        let gated_only = ByCommand::build(table, |info| {
            gated.count_ones() == 1
                && gated & as_user == 0
                && wanted.get(info) == gated
                && ungated.get(info) == 0
        });
        Guards {
            wanted,
            gated,
            ungated,
            gated_only,
            as_user,
            when_down: ByCommand::build(table, |info| mask(&|g| g.wants_when_down(info))),
            ttl: mask(&|g| g.name() == "ttl"),
            chain,
        }
    }

    /// No guards at all.
    pub fn none() -> Self {
        Guards {
            chain: Vec::new(),
            wanted: ByCommand::default(),
            gated: 0,
            ungated: ByCommand::default(),
            gated_only: ByCommand::default(),
            as_user: 0,
            when_down: ByCommand::default(),
            ttl: 0,
        }
    }

    /// Whether any guard wants the command with this id.
    #[inline]
    pub fn wants(&self, command: u16) -> bool {
        self.wanted.by_id(command) != 0
    }

    /// The guards (a bit each, in chain order) that want the command with this id: 0 when
    /// none does.
    #[inline]
    pub fn wanted(&self, command: u16) -> u8 {
        self.wanted.by_id(command)
    }

    /// Of the guards `wanted` ([`Self::wanted`] of this command, of `size` bytes), those
    /// that may act on it now: each that never disengages, and each that may
    /// ([`Guard::may_disengage`]) when engaged or always engaged for the command. 0 when
    /// none may: the command is forwarded without finding its keys. Every gated guard that
    /// wants the command is asked, whatever the others say: the shed guard counts a
    /// memory-growing write towards the pressure estimate there.
    #[inline]
    pub fn engaged(&self, command: u16, wanted: u8, size: u64) -> u8 {
        let mut gated = wanted & self.gated;
        let mut engaged = (wanted & !self.gated) | (gated & self.ungated.by_id(command));
        while gated != 0 {
            let at = gated.trailing_zeros();
            if self.chain[at as usize].engaged(size) {
                engaged |= 1 << at;
            }
            gated &= gated - 1;
        }
        engaged
    }

    /// Whether the command with this id is wanted by the one guard that may disengage (the
    /// shed guard: a memory-growing write) and no other, and that guard may say no for it
    /// ([`Self::engaged`]). Within [`Self::gated_headroom`] such a command is forwarded as
    /// sent, what judging it would do, its bytes counted ([`Self::count_gated`]).
    #[inline]
    pub fn gated_only(&self, command: u16) -> bool {
        self.gated_only.by_id(command)
    }

    /// Whether a guard may disengage ([`Self::gated_only`] is true for some command).
    #[inline]
    pub fn has_gated(&self) -> bool {
        self.gated != 0
    }

    /// How many bytes of [`Self::gated_only`] commands may pass before the gated guard
    /// engages ([`Guard::headroom`]); 0 with no gated guard.
    #[inline]
    pub fn gated_headroom(&self) -> u64 {
        self.gated_link().map_or(0, Link::headroom)
    }

    /// Count `bytes` of [`Self::gated_only`] commands forwarded within
    /// [`Self::gated_headroom`], as [`Self::engaged`] counts each ([`Guard::count_passed`]).
    #[inline]
    pub fn count_gated(&self, bytes: u64) {
        if let Some(link) = self.gated_link() {
            link.count_passed(bytes);
        }
    }

    /// The one guard that may disengage, if there is one.
    #[inline]
    fn gated_link(&self) -> Option<&Link> {
        (self.gated.count_ones() == 1).then(|| &self.chain[self.gated.trailing_zeros() as usize])
    }

    /// Whether a guard may send scripts or expiries as the client's user for this command,
    /// so the session must know the user's [`super::ScriptAccess`].
    #[inline]
    pub fn needs_access(&self, command: u16) -> bool {
        self.wanted.by_id(command) & self.as_user != 0
    }

    /// Whether any guard ever needs to know the user's [`super::ScriptAccess`].
    pub fn probes_access(&self) -> bool {
        self.as_user != 0
    }

    /// Run the checks of the `engaged` guards ([`Self::engaged`]), in order; the first
    /// verdict that is not `Forward` decides, and which guard gave it is returned too (its
    /// bit; 0 when every guard forwarded), for [`Self::ttl_decided`]. A guard asking to see
    /// the reply leaves its watch in the view.
    #[inline]
    pub fn check_deciding(
        &self,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        out: &mut BytesMut,
        engaged: u8,
    ) -> (Verdict, u8) {
        // Lowest bit (first in the chain) first.
        let mut bits = engaged;
        while bits != 0 {
            let at = bits.trailing_zeros();
            let guard = &self.chain[at as usize];
            bits &= bits - 1;
            out.clear();
            match guard.check(cmd, client, out) {
                Verdict::Forward => continue,
                decided => return (decided, 1 << at),
            }
        }
        (Verdict::Forward, 0)
    }

    /// Whether the guard whose bit [`Self::check_deciding`] returned is the TTL guard: a
    /// verdict of its other than a refusal gives a written key its default expiry (or
    /// lowers one above `max_ttl`).
    #[inline]
    pub fn ttl_decided(&self, by: u8) -> bool {
        by & self.ttl != 0
    }

    /// Whether a guard may answer the command with this id while Redis is unreachable.
    #[inline]
    pub fn answers_when_down(&self, command: u16) -> bool {
        self.when_down.by_id(command) != 0
    }

    /// While Redis is unreachable: the first answer a guard gives in its place, or `None`.
    pub fn when_upstream_down(
        &self,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        resp3: bool,
    ) -> Option<Bytes> {
        let mut bits = self.when_down.get(cmd.info);
        while bits != 0 {
            let guard = &self.chain[bits.trailing_zeros() as usize];
            if let Some(reply) = guard.guard().when_upstream_down(cmd, client, resp3) {
                return Some(reply);
            }
            bits &= bits - 1;
        }
        None
    }
}

/// One guard of the chain, held by its kind rather than behind a vtable, so the per-command
/// phases ([`Link::engaged`], [`Link::check`]) are direct calls the compiler may inline
/// into the chain's loop; everything asked once, at build or while Redis is down, goes
/// through the [`Guard`] trait ([`Link::guard`]). Unboxed: a chain holds at most six, built
/// once per configuration, and a box would put the enqueue guard's check behind one more
/// load.
#[allow(clippy::large_enum_variant)]
enum Link {
    Size(SizeGuard),
    Shed(ShedGuard),
    Queue(QueueGuard),
    Enqueue(EnqueueGuard),
    Ttl(TtlGuard),
    FailOpen(FailOpen),
}

impl Link {
    /// The guard, as the trait every phase is written against.
    fn guard(&self) -> &dyn Guard {
        match self {
            Link::Size(g) => g,
            Link::Shed(g) => g,
            Link::Queue(g) => g,
            Link::Enqueue(g) => g,
            Link::Ttl(g) => g,
            Link::FailOpen(g) => g,
        }
    }

    /// [`Guard::engaged`], called directly.
    #[inline(always)]
    fn engaged(&self, size: u64) -> bool {
        match self {
            Link::Size(g) => g.engaged(size),
            Link::Shed(g) => g.engaged(size),
            Link::Queue(g) => g.engaged(size),
            Link::Enqueue(g) => g.engaged(size),
            Link::Ttl(g) => g.engaged(size),
            Link::FailOpen(g) => g.engaged(size),
        }
    }

    /// [`Guard::headroom`], called directly.
    #[inline(always)]
    fn headroom(&self) -> u64 {
        match self {
            Link::Size(g) => g.headroom(),
            Link::Shed(g) => g.headroom(),
            Link::Queue(g) => g.headroom(),
            Link::Enqueue(g) => g.headroom(),
            Link::Ttl(g) => g.headroom(),
            Link::FailOpen(g) => g.headroom(),
        }
    }

    /// [`Guard::count_passed`], called directly.
    #[inline(always)]
    fn count_passed(&self, bytes: u64) {
        match self {
            Link::Size(g) => g.count_passed(bytes),
            Link::Shed(g) => g.count_passed(bytes),
            Link::Queue(g) => g.count_passed(bytes),
            Link::Enqueue(g) => g.count_passed(bytes),
            Link::Ttl(g) => g.count_passed(bytes),
            Link::FailOpen(g) => g.count_passed(bytes),
        }
    }

    /// [`Guard::check`], called directly.
    #[inline(always)]
    fn check(&self, cmd: &CommandView<'_>, client: &ClientIdentity, out: &mut BytesMut) -> Verdict {
        match self {
            Link::Size(g) => g.check(cmd, client, out),
            Link::Shed(g) => g.check(cmd, client, out),
            Link::Queue(g) => g.check(cmd, client, out),
            Link::Enqueue(g) => g.check(cmd, client, out),
            Link::Ttl(g) => g.check(cmd, client, out),
            Link::FailOpen(g) => g.check(cmd, client, out),
        }
    }
}

/// The guards a configuration file `toml` gives, over the built-in command table: for
/// the unit tests of the modules that judge with them.
#[cfg(test)]
pub(crate) fn guards_of(toml: &str) -> (Guards, CommandTable) {
    let raw = crate::config::RawConfig::from_toml(toml).unwrap();
    let table = CommandTable::builtin();
    let guards = Guards::build(&raw.guards, &table, &GuardContext::new(&raw.guards)).unwrap();
    (guards, table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gated_only(guards: &Guards, table: &CommandTable, name: &str) -> bool {
        guards.gated_only(table.lookup_name(name.as_bytes()).expect(name))
    }

    #[test]
    fn only_writes_the_shed_guard_alone_wants_are_gated_only() {
        // The defaults: shedding on, no other guard.
        let (defaults, table) = guards_of("");
        assert!(defaults.has_gated());
        // Memory-growing writes, and scripts (judged by their source under pressure only).
        for write in ["set", "lpush", "hset", "incr", "sadd", "eval"] {
            assert!(gated_only(&defaults, &table, write), "{write}");
        }
        // Not wanted at all, or wanted whatever the pressure (a loaded source is learned
        // at every level).
        for other in ["get", "del", "lpop", "script|load", "function|load"] {
            assert!(!gated_only(&defaults, &table, other), "{other}");
        }
        // A TTL rule makes SET and HSET the TTL guard's too; LPUSH stays the shed guard's.
        let ttl = "[[guards.ttl.rules]]\npattern = \"*\"\nttl = \"1h\"";
        let (with_ttl, table) = guards_of(ttl);
        assert!(!gated_only(&with_ttl, &table, "set"));
        assert!(!gated_only(&with_ttl, &table, "hset"));
        assert!(gated_only(&with_ttl, &table, "lpush"));
        // Shedding off: no guard may disengage.
        let off = "[guards.shed]\nsoft_enter = 0.0\nhard_enter = 0.0";
        let (none, table) = guards_of(off);
        assert!(!none.has_gated());
        assert!(!gated_only(&none, &table, "set"));
    }
}
