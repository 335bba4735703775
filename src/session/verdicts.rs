//! Carrying out what is decided about a command: classify it, let the proxy's own
//! commands and authentication intercept it, judge it with the guards
//! ([`crate::pipeline::judge`]), and do what the verdict says: forward it, rewrite it (a
//! replacement and hidden extra commands, positions remembered inside MULTI), answer it
//! locally (aborting a transaction it was refused in), carry a guard's watch on its reply
//! to the reply queue. While Redis is unreachable, the guards answer in Redis's place where
//! they can ([`crate::guard::Guards::when_upstream_down`]; fail-open keys).
//!
//! This is the one place guard verdicts turn into bytes and reply-queue entries. Never
//! decides policy: guards do.

use bytes::Bytes;

use super::intercept::Intercept;
use super::state::LocalAnswer;
use super::{Session, StreamTo};
use crate::command::{CommandInfo, Special};
use crate::guard::{ReplyWatch, Verdict};
use crate::pipeline::{self, CommandFacts, Judge, Scanned, Span};
use crate::resp;

impl Session {
    /// A whole command was scanned at `span`.
    #[inline]
    pub(super) fn on_command(&mut self, span: Span) {
        let info = CommandFacts::of(self.current(span).classify(&self.shared.table));
        let observe = self.observe_next();
        self.forward_or_decide(info, span, observe);
    }

    /// The classified command at `span`, forwarded in a few steps if it is ordinary and not
    /// `observe`d by the keyspace insight, else decided.
    #[inline]
    pub(super) fn forward_or_decide(&mut self, info: CommandFacts, span: Span, observe: bool) {
        if observe || !self.forward_if_ordinary(info, span) {
            self.decide(info, span, observe);
        }
    }

    /// Whether the keyspace insight observes the next command (one in its sample rate):
    /// such a command takes the judged path, where the insight sees it.
    #[inline]
    fn observe_next(&self) -> bool {
        self.policy.keyspace.as_ref().is_some_and(|k| k.due())
    }

    /// Decide about the command at `span` and carry the decision out (`observe`: the
    /// keyspace insight sees it).
    pub(super) fn decide(&mut self, info: CommandFacts, span: Span, observe: bool) {
        if !observe && self.is_plain_here(info) {
            self.decide_plain(info, span);
            return;
        }
        if self.hold_for_probe(info.id, span.start)
            || self.quit_on_lane(info, span)
            || self.name_kept_here(info, span)
            || self.hold_for_pin(info, span)
        {
            return;
        }
        self.commands_in_batch += 1;
        let intercept = match self.intercept(&info, span) {
            Intercept::Pass if matches!(info.special, Special::Sync) => self.on_sync(),
            other => other,
        };
        if !self.upstream.is_connected()
            && !self.connect_for_auth
            && !matches!(intercept, Intercept::Answer(_))
        {
            let reply = self
                .answer_when_down(info.id, span)
                .unwrap_or_else(|| self.unavailable_reply());
            self.answer_locally(info.id, reply, span);
            return;
        }
        let mut watch = None;
        let verdict = match intercept {
            Intercept::Answer(reply) => Verdict::Answer(reply),
            Intercept::Replace => Verdict::Rewrite {
                replacement: Some(self.scratch.len()),
                hidden: 0,
            },
            // Most commands no guard wants: decided by one lookup, before building a view.
            Intercept::Pass if !observe && !self.policy.guards.wants(info.id) => Verdict::Forward,
            Intercept::Pass => self.judge(info.id, span, &mut watch, observe, None),
        };
        let is_reset = matches!(info.special, Special::Reset);
        let changes_user = match info.special {
            Special::Auth => true,
            Special::Hello => self.current(span).any_arg_is(b"auth"),
            _ => false,
        };
        if !self.carry_out(info, span, verdict, watch) {
            return;
        }
        if is_reset {
            self.send_handshake();
        }
        if is_reset || changes_user {
            // What Redis lets the guards do may have changed with the user (AUTH, HELLO …
            // AUTH, RESET; a HELLO that only picks the protocol changes nothing).
            self.probe_access();
        }
    }

    /// Whether the command is one [`Self::decide_plain`] decides: of no [`Special`] kind and
    /// no pinning, known to the table, on a connection that lets ordinary commands go to
    /// Redis unread (connected, the client authenticated).
    #[inline]
    fn is_plain_here(&self, info: CommandFacts) -> bool {
        info.plain && info.id != self.shared.table.unknown().id && self.forwards_unread()
    }

    /// [`Self::decide`] for a command [`Self::is_plain_here`] accepts (most often one a guard
    /// wants), not observed: the proxy's own commands, authentication, a lane's local
    /// answers and pins have nothing to do with it, so what is left is the hold while the
    /// access probe is in flight, the guards and carrying their verdict out. True when the
    /// command went to Redis (not held, answered or refused).
    pub(super) fn decide_plain(&mut self, info: CommandFacts, span: Span) -> bool {
        if self.hold_for_probe(info.id, span.start) {
            return false;
        }
        self.commands_in_batch += 1;
        let state = &self.state;
        let engaged = pipeline::engaged_now(&self.policy.guards, info.id, span.size, || {
            state.guards_may_act()
        });
        if engaged == 0 {
            // No guard acts on it now (a write only the shed guard wants, while no level is
            // in force): sent as the client sent it, what judging it would decide, without
            // finding its keys.
            self.record(info, span, None);
            self.send_command(span, Outgoing::AsSent);
            return true;
        }
        let mut watch = None;
        let verdict = self.judge(info.id, span, &mut watch, false, Some(engaged));
        self.carry_out(info, span, verdict, watch)
    }

    /// Do what `verdict` says with the command at `span`: answer it locally (false), or
    /// record its replies' fate (with the guard's `watch`) and send it, and any hidden
    /// commands after it, to Redis (true).
    #[inline]
    fn carry_out(
        &mut self,
        info: CommandFacts,
        span: Span,
        verdict: Verdict,
        watch: Option<ReplyWatch>,
    ) -> bool {
        let (outgoing, hidden) = match verdict {
            Verdict::Forward => (Outgoing::AsSent, 0),
            Verdict::Rewrite {
                replacement: Some(len),
                hidden,
            } => (Outgoing::Replaced(len), hidden),
            Verdict::Rewrite {
                replacement: None,
                hidden,
            } => (Outgoing::AsSent, hidden),
            Verdict::Append { args, len } => (Outgoing::Appended { args, len }, 0),
            Verdict::Prepend { args, fixed, len } => (Outgoing::Prepended { args, fixed, len }, 0),
            Verdict::Answer(reply) | Verdict::Refuse(reply) => {
                self.refuse(info.id, reply, span);
                return false;
            }
        };
        self.record(info, span, watch);
        self.note_pinning(info);
        let used = self.send_command(span, outgoing);
        if hidden > 0 {
            self.requests.send(&self.scratch[used..]);
            self.state.expect_hidden(hidden);
        }
        true
    }

    /// Send the whole command at `span` to Redis as decided; how many bytes of the scratch
    /// buffer that used (any after them are hidden commands). Inlined in both callers: the
    /// fast path of `decide_plain` and `carry_out`.
    #[inline(always)]
    fn send_command(&mut self, span: Span, outgoing: Outgoing) -> usize {
        match outgoing {
            Outgoing::AsSent if span.inline => {
                // Redis would parse the inline form the same way; send the exact arguments.
                self.requests.discard(span.end - span.start);
                self.requests.send_from_scanner(|s| s.inline_bytes());
                0
            }
            Outgoing::AsSent => {
                self.requests.ready_upto(span.end);
                0
            }
            Outgoing::Replaced(len) => {
                self.requests
                    .replace_with(span.end - span.start, &self.scratch[..len]);
                len
            }
            Outgoing::Appended { args, len } => {
                debug_assert!(!span.inline, "a multibulk command");
                let argc = span.argc + args as usize;
                let size = span.end - span.start;
                self.requests
                    .replace_with_appended(span.argc, argc, size, &self.scratch[..len]);
                len
            }
            Outgoing::Prepended { args, fixed, len } => {
                debug_assert!(!span.inline, "a multibulk command");
                let argc = span.argc + args as usize;
                let size = span.end - span.start;
                let added = (fixed, &self.scratch[..len]);
                self.requests
                    .replace_with_prepended(span.argc, argc, size, added);
                len
            }
        }
    }

    /// The head of a command too large to hold: decide now, then stream or discard the rest.
    pub(super) fn on_streamed_head(&mut self, span: Span) {
        let info = CommandFacts::of(self.current(span).classify(&self.shared.table));
        if self.hold_for_probe(info.id, span.start) || self.hold_streamed_for_pin(span.start) {
            return;
        }
        self.commands_in_batch += 1;
        if !self.upstream.is_connected() && self.authenticated {
            self.answer_locally(info.id, self.unavailable_reply(), span);
            self.streaming = Some(StreamTo::Discard);
            return;
        }
        let mut watch = None;
        let verdict = if self.policy.auth.required()
            && matches!(info.special, Special::Auth | Special::Hello)
        {
            // Credentials too large to hold match no `[auth]` user; never sent to Redis.
            Verdict::Refuse(resp::error(crate::auth::WRONGPASS))
        } else if !self.authenticated {
            // Too large to hold, so never one the proxy answers itself: refused unread.
            Verdict::Refuse(resp::error(crate::auth::NOAUTH))
        } else {
            let observe = self.observe_next();
            self.judge(info.id, span, &mut watch, observe, None)
        };
        let (new_head, extra) = match verdict {
            Verdict::Answer(reply) | Verdict::Refuse(reply) => {
                self.refuse(info.id, reply, span);
                self.streaming = Some(StreamTo::Discard);
                return;
            }
            // A guard adds arguments only to a whole command (`rewrite::appending`,
            // the TTL guard's `wrap`).
            Verdict::Forward | Verdict::Append { .. } | Verdict::Prepend { .. } => (None, None),
            Verdict::Rewrite {
                replacement,
                hidden,
            } => (replacement, Some(hidden)),
        };
        if let Some(hidden) = extra {
            // A replacement is a new head for the rest, which streams unchanged; extra
            // commands follow once the command has passed.
            let from = new_head.unwrap_or(0);
            self.after_stream.clear();
            self.after_stream.extend_from_slice(&self.scratch[from..]);
            self.after_stream_hidden = hidden;
        }
        self.record(info, span, watch);
        self.note_pinning(info);
        match new_head {
            Some(len) => {
                self.requests.discard(span.end - span.start);
                self.requests.send(&self.scratch[..len]);
            }
            None => self.requests.ready_upto(span.end),
        }
        self.streaming = Some(StreamTo::Upstream);
    }

    /// The command at `span`, as the request scanner found it.
    #[inline]
    pub(super) fn current(&self, span: Span) -> Scanned<'_> {
        Scanned::new(self.requests.scanner(), self.requests.input(), span)
    }

    /// Run the guards on the command at `span`. Not while the connection is in RESP2
    /// subscribed mode or MONITOR, where Redis refuses writes and reply counts are Redis's;
    /// nor when no guard that wants it may act now (the shed guard while memory is low).
    /// With `observe`, the keyspace insight sees the command and the verdict. `engaged`:
    /// the guards engaged for it, if the caller already asked (`decide_plain` does:
    /// [`pipeline::engaged_now`] counts a write, so it is asked once).
    #[inline]
    fn judge(
        &mut self,
        command: u16,
        span: Span,
        watch: &mut Option<ReplyWatch>,
        observe: bool,
        engaged: Option<u8>,
    ) -> Verdict {
        let cmd = Scanned::new(self.requests.scanner(), self.requests.input(), span);
        let info: &CommandInfo = self.shared.table.by_id(command);
        let state = &self.state;
        let engaged = engaged.unwrap_or_else(|| {
            pipeline::engaged_now(&self.policy.guards, command, span.size, || {
                state.guards_may_act()
            })
        });
        let with = Judge {
            guards: &self.policy.guards,
            access: self.access,
            client: &self.identity,
            keys: &mut self.keys,
            scratch: &mut self.scratch,
            watch,
            observe: self.policy.keyspace.as_deref().filter(|_| observe),
        };
        pipeline::judge_engaged(&cmd, info, with, engaged)
    }

    /// Record what to do with the replies of the command at `span`, sent to Redis, and the
    /// guard's watch on its reply. A command inside MULTI is answered QUEUED; its reply
    /// arrives inside EXEC's array, so it is not watched.
    #[inline(always)]
    fn record(&mut self, info: CommandFacts, span: Span, watch: Option<ReplyWatch>) {
        // The common guarded command (no special kind, outside MULTI, replies on): one
        // forwarded entry, its effect the guard's watch if any, as `push_for` would record
        // it, without the general path.
        if !matches!(info.special, Special::None) || !self.state.records_as_sent() {
            self.record_general(info, span, watch);
        } else if let Some(watch) = watch {
            self.state.push_watched(info.id, watch);
        } else {
            self.state.push_plain(info.id);
        }
    }

    /// [`Self::record`] for any command, through the connection state's general path.
    #[inline(never)]
    fn record_general(&mut self, info: CommandFacts, span: Span, watch: Option<ReplyWatch>) {
        let watch = watch.filter(|_| !self.state.in_multi());
        let requests = &self.requests;
        let cmd = || Scanned::new(requests.scanner(), requests.input(), span);
        let recorded = self.state.push_for(cmd, info, watch);
        if recorded.memory_event {
            self.shared.control.context().pressure.mark_stale();
        }
        if recorded.quit {
            // Redis closes after QUIT and reads nothing more.
            self.ignore_input = true;
        }
    }

    /// The command at `span` is answered by the proxy (a refusal counted as one); inside
    /// MULTI that fails the transaction as Redis's own queue-time errors do.
    fn refuse(&mut self, command: u16, reply: Bytes, span: Span) {
        if reply.first() == Some(&b'-') {
            self.shared.control.refusals.record(&self.identity);
        }
        self.answer_locally(command, reply, span);
        if self.state.in_multi() {
            let abort = self.state.abort_transaction();
            self.requests.send(abort);
        }
    }

    /// While Redis is unreachable: a guard's answer in Redis's place (fail-open keys get
    /// the empty-cache answer), if any guard has one for the command.
    fn answer_when_down(&mut self, command: u16, span: Span) -> Option<Bytes> {
        let guards = &self.policy.guards;
        if !guards.answers_when_down(command) {
            return None;
        }
        let info = self.shared.table.by_id(command);
        let cmd = Scanned::new(self.requests.scanner(), self.requests.input(), span);
        let view = cmd.view(info, &mut self.keys, self.access);
        let resp3 = self.state.queue().is_resp3();
        guards.when_upstream_down(&view, &self.identity, resp3)
    }

    /// Why each command fails while there is no upstream connection.
    pub(super) fn unavailable_reply(&self) -> Bytes {
        resp::error(&self.upstream.error())
    }

    /// Answer the command at `span` without sending it upstream.
    pub(super) fn answer_locally(&mut self, command: u16, reply: Bytes, span: Span) {
        debug_assert_eq!(span.start, self.requests.ready());
        self.requests.discard(span.end - span.start);
        match self.state.answer_locally(command, reply) {
            LocalAnswer::Queued => self.emit_local_replies(),
            LocalAnswer::Unsent => {}
            LocalAnswer::SkipPing => {
                if self.upstream.is_connected() {
                    self.requests.send(b"*1\r\n$4\r\nPING\r\n");
                }
            }
        }
    }
}

/// How a decided whole command goes to Redis.
#[derive(Debug, Clone, Copy)]
enum Outgoing {
    /// As the client sent it.
    AsSent,
    /// Replaced by the first bytes of the scratch buffer.
    Replaced(usize),
    /// With `args` arguments (the first `len` scratch bytes) after its own.
    Appended { args: u32, len: usize },
    /// With `args` arguments (`fixed`, then the first `len` scratch bytes) before its own.
    Prepended {
        args: u32,
        fixed: &'static [u8],
        len: usize,
    },
}
