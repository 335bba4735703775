//! The run: the commands at the front of the client's input that are read in one step
//! (skimmed, looked up by name) and, when ordinary, forwarded with one reply-queue entry
//! each and nothing else, as the general path would forward them; the first other command
//! ends the run and is decided (`verdicts`). Also the same shortcut for one command the
//! general scan read (`forward_if_ordinary`).
//!
//! Never judges a command: a command a guard may act on leaves the run (a write only the
//! shed guard wants stays in it while that guard cannot engage: `GatedWrites`).

use super::state::ConnectionState;
use super::Session;
use crate::guard::Guards;
use crate::pipeline::{CommandFacts, Span};

impl Session {
    /// The common command, forwarded in a few steps: one of no
    /// [`Special`](crate::command::Special) kind that no guard wants and the proxy does not
    /// answer itself, on a connection where nothing is held back or answered locally. It
    /// goes to Redis as sent, with one reply-queue entry: what [`Self::decide`] would do
    /// with it. False, and nothing done, for any other.
    #[inline]
    pub(super) fn forward_if_ordinary(&mut self, info: CommandFacts, span: Span) -> bool {
        let ordinary = info.plain
            && !span.inline
            && !self.policy.guards.wants(info.id)
            && info.id != self.shared.table.unknown().id
            && self.forwards_unread();
        if !ordinary || !self.state.push_plain(info.id) {
            return false;
        }
        self.commands_in_batch += 1;
        self.requests.ready_upto(span.end);
        true
    }

    /// Whether the connection lets an ordinary command go to Redis unread: connected, the
    /// client authenticated (or no `[auth]`), no connection opened for its credentials.
    #[inline]
    pub(super) fn forwards_unread(&self) -> bool {
        !self.connect_for_auth
            && (self.authenticated || !self.policy.auth.required())
            && self.upstream.is_connected()
    }

    /// Take the commands at the front of the unscanned input that are read in one step:
    /// each is skimmed and looked up by its name
    /// ([`crate::command::CommandTable::by_own_name`]); the ordinary ones (no
    /// [`Special`](crate::command::Special) kind, wanted by no guard) are forwarded with
    /// one reply-queue entry each and nothing else, which is what
    /// [`Self::forward_if_ordinary`] would do with them, without recording their arguments.
    /// The first other command ends the run: it is taken whole and decided as
    /// [`Self::on_command`] would. The run stops before the command the keyspace insight
    /// observes next, and at anything not whole or not read in one step; the general scan
    /// reads those.
    ///
    /// A command of no special kind that a guard wants and that goes to Redis as the guards
    /// decided (as sent, or with arguments added) changes nothing the request loop tests
    /// before a run: the run goes on after it, without going back through the loop's
    /// tests, unless the reply queue is full.
    #[inline]
    pub(super) fn forward_run(&mut self) -> Run {
        if !self.forwards_unread() {
            return Run::Forwarded(0);
        }
        loop {
            match self.forward_part() {
                Part::Ended(run) => return run,
                Part::Passed if self.state.queue().is_full() => return Run::Decided,
                Part::Passed => {}
            }
        }
    }

    /// One part of [`Self::forward_run`]: the ordinary commands up to the first other one,
    /// and that one decided. With a guard that may disengage (the shed guard), the writes
    /// only it wants are ordinary too while it cannot engage ([`GatedWrites`]).
    #[inline]
    fn forward_part(&mut self) -> Part {
        let insight = self.policy.keyspace.as_deref();
        let mut limit = self.state.queue().room();
        if let Some(insight) = insight {
            limit = limit.min(insight.unobserved_ahead());
        }
        let table = &self.shared.table;
        let guards = &self.policy.guards;
        let (scanner, input) = self.requests.scan_parts();
        let (mut sent, mut end) = (0, 0);
        let mut other = None;
        let mut gated = GatedWrites::default();
        let last_name = &mut self.last_name;
        while sent < limit {
            let Some(skimmed) = scanner.skim(input) else {
                break;
            };
            let info = table.by_own_name_remembered(&input[skimmed.name.clone()], last_name);
            let Some(info) = info.filter(|i| i.plain && !guards.wants(i.id)) else {
                // A write only the shed guard wants goes on too while it cannot engage.
                let write = info.filter(|i| i.plain && guards.gated_only(i.id));
                let Some(info) = write else {
                    other = Some((skimmed, info.map(CommandFacts::of)));
                    break;
                };
                let Some(at) = scanner.skim_end(input, &skimmed) else {
                    break;
                };
                if !gated.pass(guards, &self.state, input.len()) || !self.state.push_plain(info.id)
                {
                    other = Some((skimmed, Some(CommandFacts::of(info))));
                    break;
                }
                gated.bytes += (at - skimmed.start) as u64;
                scanner.take_skimmed(at);
                (sent, end) = (sent + 1, at);
                continue;
            };
            let Some(at) = scanner.skim_end(input, &skimmed) else {
                break;
            };
            if !self.state.push_plain(info.id) {
                other = Some((skimmed, Some(CommandFacts::of(info))));
                break;
            }
            scanner.take_skimmed(at);
            (sent, end) = (sent + 1, at);
        }
        // Before the command that ends the run is judged (and counted, if it is a write).
        gated.count(guards, &self.state);
        let taken = other.and_then(|(skimmed, facts)| {
            let end = scanner.take_whole(input, &skimmed)?;
            Some((
                Span::whole(skimmed.start, end, false, scanner.args().len()),
                facts,
            ))
        });
        if sent > 0 {
            self.requests.ready_upto(end);
            self.commands_in_batch += sent as u64;
        }
        let decided = taken.is_some();
        if let Some(insight) = insight {
            insight.passed(sent + usize::from(decided));
        }
        let Some((span, facts)) = taken else {
            return Part::Ended(Run::Forwarded(sent));
        };
        match facts {
            // Of no special kind, on a connection the run found open to such commands (a
            // guard wants it, or it is inside MULTI or under CLIENT REPLY).
            Some(info) if info.plain && info.id != table.unknown().id => {
                if self.decide_plain(info, span) {
                    return Part::Passed;
                }
            }
            // Known by its name: the run stopped at it because it is not ordinary here.
            Some(info) => self.decide(info, span, false),
            // A container, known by its subcommand, or an unknown command.
            None => {
                let info = CommandFacts::of(self.current(span).classify(table));
                self.forward_or_decide(info, span, false);
            }
        }
        Part::Ended(Run::Decided)
    }
}

/// The writes of a run that only the shed guard wants ([`Guards::gated_only`]), forwarded as
/// sent while it cannot engage for any of them: while the bytes at hand are fewer than its
/// [`Guards::gated_headroom`], read once at the first such write. Their bytes are counted
/// towards the pressure estimate once, after the run, as judging each would count it
/// ([`Guards::count_gated`]); where guards may not act (RESP2 subscribed, MONITOR) they
/// pass uncounted, as judging them would.
#[derive(Default)]
struct GatedWrites {
    /// Whether they pass in this run, once asked.
    passes: Option<bool>,
    /// Their bytes, forwarded in this run.
    bytes: u64,
}

impl GatedWrites {
    /// Whether a write only the gated guard wants passes in this run, with `input` bytes at
    /// hand.
    #[inline(never)]
    fn pass(&mut self, guards: &Guards, state: &ConnectionState, input: usize) -> bool {
        *self.passes.get_or_insert_with(|| {
            !state.guards_may_act() || (input as u64) < guards.gated_headroom()
        })
    }

    /// Count the bytes that passed, where guards may act.
    #[inline]
    fn count(&self, guards: &Guards, state: &ConnectionState) {
        if self.bytes > 0 && state.guards_may_act() {
            guards.count_gated(self.bytes);
        }
    }
}

/// How a part of a run ended ([`Session::forward_part`]).
enum Part {
    /// The run ended so.
    Ended(Run),
    /// A command a guard wants went to Redis as decided: the run may go on.
    Passed,
}

/// How a run of commands read in one step ended ([`Session::forward_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Run {
    /// This many ordinary commands were forwarded; the next is left to the general scan.
    Forwarded(usize),
    /// Ordinary commands were forwarded and the command after them decided, which may have
    /// changed what the connection accepts next.
    Decided,
}
