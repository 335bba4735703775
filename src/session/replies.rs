//! Reply routing: each reply Redis sends, scanned, matched with the command that caused
//! it, and forwarded to the client or hidden (or, for a filtered EXEC, sent with the
//! proxy's own elements left out); local answers written in their place among Redis's
//! replies; what a successful reply changes (who the client is, the access probe's answer,
//! what a guard watching it records).
//!
//! The fate of a reply is fixed on its first byte and applied to its last. Never decides
//! what a reply means: the reply queue and the connection state do.

use super::Session;
use crate::reply_queue::{Disposition, Effect, HelloEffect, Matched};
use crate::scanner::reply::{ReplyInfo, ReplyKind, ReplyStep};
use crate::telemetry::LatencyRun;

/// What the first byte at the scan position began.
enum Begun {
    /// No byte has arrived yet.
    Nothing,
    /// A reply, its fate decided.
    Reply,
    /// A replication stream: the session is a tunnel from here on.
    Tunnel,
}

impl Session {
    /// Scan the replies received, forwarding or hiding each and applying what they change.
    pub(super) fn on_upstream_input(&mut self) -> Result<(), String> {
        loop {
            self.forward_plain_replies();
            self.emit_local_replies();
            if self.reply_forwarded.is_none() {
                match self.begin_reply() {
                    Begun::Nothing => break,
                    Begun::Tunnel => return Ok(()),
                    Begun::Reply => {}
                }
            }
            let (scanner, input) = self.replies.scan_parts();
            let step = scanner
                .scan(input)
                .map_err(|e| format!("malformed reply from Redis: {e}"))?;
            match step {
                ReplyStep::Partial(upto) => {
                    self.keep_or_drop_reply_bytes(upto);
                    break;
                }
                ReplyStep::Header { end, count } => {
                    // EXEC's array, filtered: a new header with the proxy's commands removed.
                    let kept = self.state.exec_header(count as usize);
                    self.replies.discard(end - self.replies.ready());
                    self.reply_partly_sent = true;
                    crate::resp::array_header(self.replies.append(), kept);
                }
                ReplyStep::Element(end) => {
                    self.keep_or_drop_reply_bytes(end);
                    self.state.element_done();
                }
                ReplyStep::Done(end) => {
                    self.keep_or_drop_reply_bytes(end);
                    self.on_reply_done();
                }
            }
        }
        self.replies.move_ready();
        Ok(())
    }

    /// The common reply, matched in a few steps: while the head entry waits for one plain
    /// forwarded reply ([`crate::reply_queue::ReplyQueue::next_reply_is_plain`]) and a whole
    /// simple string, error, integer or bulk string has arrived, its bytes go to the client
    /// and the entry is done; so too a watched push's integer reply
    /// ([`Self::forward_watched_reply`]). Anything else is left to the general path, which
    /// carries on from where this stopped.
    ///
    /// The replies answer commands mostly read together: their latency is counted a run at
    /// a time ([`LatencyRun`]), before the replies can reach the client.
    #[inline]
    fn forward_plain_replies(&mut self) {
        let mut run = LatencyRun::default();
        loop {
            while self.reply_forwarded.is_none() && self.state.queue().next_reply_is_plain() {
                let (scanner, input) = self.replies.scan_parts();
                let Some(end) = scanner.skip_plain_reply(input) else {
                    break;
                };
                let (command, received_us) = self.state.queue_mut().pop_plain();
                self.replies.ready_upto(end);
                if let Some(ended) = run.add(command, received_us) {
                    self.record_latency_run(ended);
                }
            }
            if self.reply_forwarded.is_some() {
                break;
            }
            let Some((command, received_us)) = self.forward_watched_reply() else {
                break;
            };
            if let Some(ended) = run.add(command, received_us) {
                self.record_latency_run(ended);
            }
        }
        if self.watched_run.is_open() {
            self.hand_over_watched_run();
        }
        self.record_latency_run(run);
    }

    /// The watched entries at the head answered by integers (pushes onto a followed queue,
    /// answered by the queue's length), matched in a few steps each, their watches noted in
    /// the watched run ([`WatchedRun`]): the last one's command id and when it was read, for
    /// its latency (the others' latency is counted here), or `None` when the head entry or
    /// the reply is not of that kind.
    #[inline(never)]
    fn forward_watched_reply(&mut self) -> Option<(u16, u64)> {
        let mut last = None;
        let mut run = LatencyRun::default();
        while self.state.queue().next_reply_is_watched() {
            let (scanner, input) = self.replies.scan_parts();
            let Some((start, end)) = scanner.skip_integer_reply(input) else {
                break;
            };
            let Some((command, received_us, watch)) = self.state.queue_mut().pop_watched() else {
                break;
            };
            self.watched_run.note(watch, start, self.replies.input());
            self.replies.ready_upto(end);
            if let Some((command, received_us)) = last.replace((command, received_us)) {
                if let Some(ended) = run.add(command, received_us) {
                    self.record_latency_run(ended);
                }
            }
        }
        self.record_latency_run(run);
        last
    }

    /// Hand each watch of the watched run its last reply, still in the reply input.
    #[inline(never)]
    fn hand_over_watched_run(&mut self) {
        self.watched_run.hand_over(self.replies.input());
    }

    /// A reply begins at the scan position, if any byte of it has arrived: decide from its
    /// first byte whether it is forwarded, or whether it starts a replication stream.
    fn begin_reply(&mut self) -> Begun {
        let Some(&first) = self.replies.input().get(self.replies.ready()) else {
            return Begun::Nothing;
        };
        if self.state.queue().starts_replication(first) {
            self.start_tunnel();
            return Begun::Tunnel;
        }
        let (forwarded, filter_exec) = self.state.begin_reply(first);
        self.reply_forwarded = Some(forwarded);
        if filter_exec {
            self.replies.scanner_mut().report_elements(true);
        }
        Begun::Reply
    }

    /// A whole reply was scanned: match it with its command and apply what it changes.
    fn on_reply_done(&mut self) {
        self.reply_partly_sent = false;
        self.state.end_reply();
        let info = *self.replies.scanner().info();
        let forwarded = self.reply_forwarded.take() == Some(true);
        let matched = self.state.queue_mut().on_reply(&info);
        debug_assert!(
            !matches!(&matched, Matched::Reply { hidden, .. } if *hidden == forwarded),
            "a reply's disposition changed while it streamed"
        );
        if let Matched::Reply {
            finished: Some(p), ..
        } = matched
        {
            self.last_reply_killed =
                matches!(p.effect, Effect::Kill) && info.kind != ReplyKind::Error;
            if !matches!(p.disposition, Disposition::Hide) {
                self.record_latency(p.command, p.received_us, self.replies_arrived_us);
            }
            if matches!(p.effect, Effect::AccessProbe) {
                self.on_access_probe(&info);
            } else if info.kind != ReplyKind::Error {
                self.apply_effect(p.effect, &info);
            }
        }
    }

    /// The reply bytes scanned since the last piece, up to `upto`, go to the client or are
    /// dropped: by the reply's fate, or, in a filtered EXEC array, by the element's.
    fn keep_or_drop_reply_bytes(&mut self, upto: usize) {
        let from = self.replies.ready();
        let keep = self.reply_forwarded == Some(true) && self.state.keeps_current_element();
        if keep {
            self.reply_partly_sent |= upto > from;
            self.replies.ready_upto(upto);
        } else {
            self.replies.discard(upto - from);
        }
    }

    fn apply_effect(&mut self, effect: Effect, reply: &ReplyInfo) {
        match effect {
            Effect::Watched(watch) => watch.on_reply(reply),
            Effect::None
            | Effect::Monitor
            | Effect::AccessProbe
            | Effect::Replication
            | Effect::Kill => {}
            Effect::MemoryEvent => self.shared.control.context().pressure.mark_stale(),
            Effect::Hello(hello) => {
                let HelloEffect { user, name, .. } = *hello;
                if let Some(u) = user {
                    self.identity.user = Some(u);
                    self.set_authenticated(true);
                }
                if let Some(n) = name {
                    self.identity.set_name(n);
                }
                self.confirm_switch();
            }
            Effect::Auth(user) => {
                self.identity.user = Some(user.into());
                // Under `[auth]`, an AUTH reaches Redis only with the credentials of the
                // user the proxy accepted: Redis's +OK completes the authentication.
                self.set_authenticated(true);
                // Multiplexed, an AUTH naming another user moved the client to its lanes.
                self.confirm_switch();
            }
            Effect::SetName(name) => self.identity.set_name(name.into()),
            Effect::SetLibName(lib) => self.identity.set_lib_name(lib.into()),
            Effect::Reset => self.identity.reset(),
            Effect::Quit => self.close_when_flushed = true,
            Effect::LaneSwitch => self.confirm_switch(),
        }
    }

    /// Send every local answer now at the head of the queue, after the replies before it.
    #[inline]
    pub(super) fn emit_local_replies(&mut self) {
        if self.state.queue().front_is_local() {
            self.emit_local_replies_now();
        }
    }

    /// [`Self::emit_local_replies`] when there is one to send.
    fn emit_local_replies_now(&mut self) {
        while let Some(p) = self.state.queue_mut().pop_local() {
            // Behind replies from Redis, a local answer waited for them; first in the
            // queue, it is answered as the command is read.
            let now = self.replies_arrived_us.max(p.received_us);
            self.record_latency(p.command, p.received_us, now);
            if let Disposition::Local(reply) = p.disposition {
                self.replies.send(&reply);
            } else {
                self.replies.move_ready();
            }
        }
    }
}
