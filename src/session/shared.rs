//! The session on a shared connection (`upstream.connections = "multiplexed"`).
//!
//! While on a lane the session works as it does on a connection of its own, with three
//! differences, all here:
//! - **Submitting**: at the end of each read, the commands scanned (whole ones only) go to
//!   the lane in one batch, with the number of replies Redis will send for them
//!   ([`Session::submit_to_lane`]); the reply queue stays the one record of what to do with
//!   each reply.
//! - **Receiving**: the lane hands the session its replies' bytes ([`Session::on_inbox`]),
//!   which go through the reply pipe exactly as bytes read from a socket; and, when the
//!   lane's connection was lost, how many of its commands lost their replies: those get the
//!   connection-lost error, and the client stays connected. A client whose unread replies pass
//!   the lane's [`UnreadLimit`](crate::mux::UnreadLimit) is disconnected
//!   ([`End::SlowReader`]); while its replies fill the pipe it waits only for that news.
//! - **Pinning**: a command that needs state on its connection ([`Pinning`]) is held back
//!   unscanned until every reply the session owes on the lane has arrived; then the session
//!   leaves the lane for a connection of its own from the pinned pool ([`Session::pin`]),
//!   and the command goes there. Redis thus runs the client's commands in the order it sent
//!   them. QUIT is the exception: answered by the session, never sent to the shared
//!   connection; and AUTH, SELECT and HELLO, which move the client to
//!   the lanes of its user, database and protocol instead (`switch`).
//! - **Unpinning**: once that connection owes nothing and holds no state the session
//!   follows (no transaction or watched key, no subscription, replies on), the session
//!   hands it back to the pool and returns to a lane ([`Session::unpin`]), unless it sent a
//!   command whose state lasts for the connection's life ([`Pinning::ForLife`]: AUTH,
//!   SELECT and HELLO there, CLIENT ..., MONITOR, RESET). If no connection of its own can be had, the
//!   held commands get the reason and the session stays on the lane.

use super::upstream::Upstream;
use super::{End, Session};
use bytes::Bytes;

use crate::command::{Pinning, Special};
use crate::mux::lane::News;
use crate::mux::{LaneUser, SlowReader};
use crate::pipeline::{CommandFacts, Span};
use crate::scanner::reply::ReplyScanner;

/// Whether Redis accepts `value` as a library attribute: printable ASCII without spaces
/// (so `CLIENT LIST` stays splittable), or empty (which clears it).
pub(super) fn is_printable_attribute(value: &[u8]) -> bool {
    value.iter().all(|b| (b'!'..=b'~').contains(b))
}

impl Session {
    /// Hand the commands scanned since the last submit to the lane, with the number of
    /// replies they expect.
    pub(super) fn submit_to_lane(&mut self) {
        let Some(lane) = self.upstream.lane() else {
            return;
        };
        if self.requests.unwritten() == 0 {
            return;
        }
        let pushed = self.state.queue().pushed_to_upstream();
        let replies = (pushed - self.submitted) as u32;
        debug_assert!(replies > 0, "every command on a lane expects its reply");
        let batch = self.requests.take_output();
        (self.shared.metrics.upstream_bytes_sent).increment(batch.len() as u64);
        lane.submit(batch, replies);
        self.submitted = pushed;
    }

    /// Whether `info`, about to be decided, needs a connection of its own while the session
    /// is on a lane. If so it is held back unscanned (see [`Session::pin`]); true then.
    #[inline]
    pub(super) fn hold_for_pin(&mut self, info: CommandFacts, span: Span) -> bool {
        if info.pinning == Pinning::Never || self.upstream.lane().is_none() {
            return false;
        }
        let pins = match info.pinning {
            Pinning::WhenBlocking => self.current(span).any_arg_is(b"block"),
            // Not answered by `name_kept_here`: one Redis refuses, keeping nothing.
            _ if matches!(
                info.special,
                Special::ClientSetInfo | Special::ClientSetName
            ) =>
            {
                false
            }
            _ => true,
        };
        // Under `[auth]`, AUTH and HELLO's AUTH clause name a proxy user, not a Redis one:
        // they keep a connection of their own.
        let proxy_auth = self.policy.auth.required();
        if pins {
            match info.special {
                Special::Hello => {
                    if let Some(hello) = self.hello_arguments(span) {
                        if hello.user.is_none() || !proxy_auth {
                            return self.hello_on_lane(span, hello.protocol, hello.user);
                        }
                    }
                }
                Special::Auth if !proxy_auth => return self.auth_on_lane(span),
                Special::Auth => {}
                _ => {
                    if let Some(arg) = self.select_argument(span) {
                        return self.select_on_lane(info, span, &arg);
                    }
                }
            }
        }
        pins && self.hold_until_pinned(span.start)
    }

    /// The argument of the command at `span` when it is `SELECT` with exactly one (copied:
    /// a few bytes, on a rare command).
    fn select_argument(&self, span: Span) -> Option<Bytes> {
        let cmd = self.current(span);
        let (Some(name), Some(db), None) = (cmd.arg(0), cmd.arg(1), cmd.arg(2)) else {
            return None;
        };
        name.eq_ignore_ascii_case(b"select")
            .then(|| Bytes::copy_from_slice(db))
    }

    /// The credentials of `AUTH` at `span`, when it has one or two arguments (any other
    /// count Redis refuses, changing nothing).
    pub(super) fn auth_arguments(&self, span: Span) -> Option<LaneUser> {
        let cmd = self.current(span);
        match (cmd.arg(1), cmd.arg(2), cmd.arg(3)) {
            (Some(password), None, None) => LaneUser::from_auth_args(&[password]),
            (Some(user), Some(password), None) => LaneUser::from_auth_args(&[user, password]),
            _ => None,
        }
    }

    /// QUIT on a lane: answered here (Redis would close the shared connection), and the
    /// client's connection closes once the replies before it are written, as Redis does.
    /// True when it was.
    #[inline]
    pub(super) fn quit_on_lane(&mut self, info: CommandFacts, span: Span) -> bool {
        if info.special != Special::Quit || self.upstream.lane().is_none() {
            return false;
        }
        self.commands_in_batch += 1;
        self.answer_locally(info.id, Bytes::from_static(b"+OK\r\n"), span);
        self.ignore_input = true;
        self.close_when_flushed = true;
        true
    }

    /// Multiplexed, what a client says about itself (CLIENT SETINFO LIB-NAME, LIB-VER;
    /// CLIENT SETNAME on a shared connection) is kept by respguard rather than on a Redis
    /// connection, which other clients share or which goes back to the pool: a valid one is
    /// answered `+OK` here (an invalid one goes to Redis, which refuses it and keeps
    /// nothing). CLIENT GETNAME on a shared connection is answered from the name kept. A
    /// connection of the client's own is given the name when taken, and CLIENT SETNAME
    /// there goes to Redis as usual. So a client library sending them needs no connection
    /// of its own. Inside MULTI Redis queues them as usual. True when answered.
    pub(super) fn name_kept_here(&mut self, info: CommandFacts, span: Span) -> bool {
        if self.lanes.is_none() || self.state.in_multi() {
            return false;
        }
        let reply = match info.special {
            Special::ClientSetInfo => self.set_info_here(span),
            Special::ClientSetName if self.upstream.lane().is_some() => self.set_name_here(span),
            Special::ClientGetName if self.upstream.lane().is_some() => self.get_name_here(span),
            _ => None,
        };
        let Some(reply) = reply else {
            return false;
        };
        self.commands_in_batch += 1;
        self.answer_locally(info.id, reply, span);
        true
    }

    /// `CLIENT SETINFO LIB-NAME|LIB-VER value`, when valid: `+OK`, the library kept.
    fn set_info_here(&mut self, span: Span) -> Option<Bytes> {
        let cmd = self.current(span);
        let (Some(attr), Some(value), None) = (cmd.arg(2), cmd.arg(3), cmd.arg(4)) else {
            return None;
        };
        if !is_printable_attribute(value) {
            return None;
        }
        if attr.eq_ignore_ascii_case(b"lib-name") {
            self.identity.set_lib_name(Bytes::copy_from_slice(value));
        } else if !attr.eq_ignore_ascii_case(b"lib-ver") {
            return None;
        }
        Some(Bytes::from_static(b"+OK\r\n"))
    }

    /// `CLIENT SETNAME name`, when Redis would accept the name (printable, no spaces; empty
    /// removes it): `+OK`, the name kept.
    fn set_name_here(&mut self, span: Span) -> Option<Bytes> {
        let cmd = self.current(span);
        let (Some(name), None) = (cmd.arg(2), cmd.arg(3)) else {
            return None;
        };
        if !is_printable_attribute(name) {
            return None;
        }
        self.identity.set_name(Bytes::copy_from_slice(name));
        Some(Bytes::from_static(b"+OK\r\n"))
    }

    /// `CLIENT GETNAME`: the client's name, or Redis's null in the client's protocol.
    fn get_name_here(&mut self, span: Span) -> Option<Bytes> {
        if self.current(span).arg(2).is_some() {
            return None;
        }
        Some(match &self.identity.name {
            Some(name) => crate::resp::bulk_reply(name),
            None if self.state.queue().is_resp3() => Bytes::from_static(b"_\r\n"),
            None => Bytes::from_static(b"$-1\r\n"),
        })
    }

    /// A streamed command on a lane always needs a connection of its own: it arrives over
    /// many reads, and another client's commands must not land in the middle of it.
    pub(super) fn hold_streamed_for_pin(&mut self, start: usize) -> bool {
        self.upstream.lane().is_some() && self.hold_until_pinned(start)
    }

    /// Hold the command starting at `start` back, unscanned, until the session has its own
    /// connection (see [`Session::pin`]).
    pub(super) fn hold_until_pinned(&mut self, start: usize) -> bool {
        self.requests.scanner_mut().unscan(start);
        self.pin_pending = true;
        true
    }

    /// The held command may go once nothing is owed on the lane.
    pub(super) fn ready_to_pin(&self) -> bool {
        self.pin_pending && self.state.queue().is_empty()
    }

    /// Leave the lane for a connection of the session's own, and carry on with the held
    /// command. The connection has the lane's user, so the guards' access (probed on the
    /// lane) holds on it too: it is given the lane's identity (user, database, protocol)
    /// first, every reply checked, and not used if Redis refuses it.
    pub(super) async fn pin(&mut self) {
        self.pin_pending = false;
        self.pinned = true;
        self.upstream = Upstream::none();
        self.shared.metrics.pinned_clients.increment(1);
        tracing::debug!(client = %self.identity, "client moved to a connection of its own");
        if let Some(lanes) = self.lanes.clone() {
            let handshake = self.own_connection_handshake(&lanes);
            self.upstream = Upstream::pinned(&lanes, &self.identity, &handshake).await;
        }
        self.on_client_input();
        self.flush_upstream();
        self.flush_client();
    }

    /// Note a command sent to Redis: one whose state lasts for the connection's life keeps
    /// the session on its own connection for good. On a lane the only such commands sent
    /// are a SELECT or HELLO that changes nothing (Redis refuses it, or it names the
    /// identity in use) and the SELECT or HELLO of a move to another identity's lanes
    /// (`switch`).
    /// CLIENT GETNAME, and CLIENT SETNAME outside MULTI, are the exceptions: the session
    /// keeps the name, and gives it to every connection of its own it takes, so they bind
    /// the client to none. (A SETNAME a transaction runs is Redis's alone: the client keeps
    /// that connection.)
    #[inline]
    pub(super) fn note_pinning(&mut self, info: CommandFacts) {
        let name = match info.special {
            Special::ClientGetName => true,
            Special::ClientSetName => !self.state.in_multi(),
            _ => false,
        };
        if info.pinning == Pinning::ForLife && !name {
            self.note_lasting_command();
        }
    }

    fn note_lasting_command(&mut self) {
        if self.upstream.lane().is_some() {
            self.note_switch_sent();
            return;
        }
        self.lasting_state = true;
    }

    /// A multiplexed session on its own connection (or without one, when taking it failed)
    /// may return to a lane: nothing owed, no state the session follows, nothing half sent
    /// or unread, and no command whose state lasts for the connection's life.
    pub(super) fn ready_to_unpin(&self) -> bool {
        self.pinned
            && !self.lasting_state
            && self.lanes.is_some()
            && !self.close_when_flushed
            && !self.ignore_input
            && self.holds_nothing_upstream()
    }

    /// The connection is as the pool handed it out: it owes nothing, holds no state the
    /// session follows, and nothing is half sent to it or unread from it.
    fn holds_nothing_upstream(&self) -> bool {
        self.state.queue().is_empty()
            && self.state.holds_nothing()
            && self.requests.unwritten() == 0
            && self.streaming.is_none()
            && self.replies.input().is_empty()
            && !self.pin_pending
            && !self.tunnel
    }

    /// Hand the session's own connection back to the pool and return to a lane; commands
    /// read meanwhile go there.
    pub(super) fn unpin(&mut self) {
        let Some(lanes) = self.lanes.clone() else {
            return;
        };
        let Some(link) = self.attach_to_identity() else {
            // Its identity's lanes are always kept; should they not be, it stays here.
            self.lasting_state = true;
            return;
        };
        self.submitted = self.state.queue().pushed_to_upstream();
        let own = std::mem::replace(&mut self.upstream, Upstream::Shared(link));
        if let Upstream::Pinned(connection) = own {
            if self.own_connection_reusable() {
                lanes.pinned().give_back(connection);
            }
        }
        self.pinned = false;
        self.watchdog.disarm();
        self.shared.metrics.unpinned_clients.increment(1);
        tracing::debug!(client = %self.identity, "client back on a shared connection");
        self.on_client_input();
        self.flush_upstream();
        self.flush_client();
    }

    /// The session ends: its own connection goes back to the pool if it is clean, and is
    /// closed otherwise (a client gone mid-BLPOP leaves Redis nothing to answer).
    pub(super) fn hand_back_own_connection(&mut self) {
        if !self.lasting_state && self.holds_nothing_upstream() && self.own_connection_reusable() {
            if let (Upstream::Pinned(_), Some(lanes)) = (&self.upstream, &self.lanes) {
                let lanes = std::sync::Arc::clone(lanes);
                if let Upstream::Pinned(connection) =
                    std::mem::replace(&mut self.upstream, Upstream::none())
                {
                    lanes.pinned().give_back(connection);
                }
            }
        }
    }

    /// The lane has something for the session: replies, lost commands (in the order they
    /// happened), or the news that the client is too slow.
    pub(super) fn on_inbox(&mut self) -> Option<End> {
        let lane = self.upstream.lane()?;
        let taken = lane.take();
        if let Some(why) = taken.slow {
            self.shared.metrics.slow_readers.increment(1);
            let limit = lane.unread_limit();
            match why {
                SlowReader::Hard => tracing::info!(
                    client = %self.identity,
                    limit = limit.hard,
                    "client disconnected: it left more replies unread than proxy.output_buffer_hard"
                ),
                SlowReader::SoftTime => tracing::info!(
                    client = %self.identity,
                    limit = limit.soft,
                    time = ?limit.soft_time,
                    "client disconnected: its unread replies stayed above proxy.output_buffer \
                     longer than proxy.output_buffer_soft_time"
                ),
            }
            return Some(End::SlowReader);
        }
        for news in taken.news {
            match news {
                News::Replies(bytes) => {
                    let n = self.replies.feed(bytes);
                    if let Some(end) = self.on_upstream_read(n) {
                        return Some(end);
                    }
                }
                News::Lost(lost) => {
                    if lost.cut && !self.drop_cut_reply() {
                        let reason = String::from_utf8_lossy(&lost.error).trim().to_string();
                        return self.upstream_lost(&reason);
                    }
                    // The oldest commands in flight lost their replies; the client stays.
                    self.answer_lost(&lost.error, lost.replies);
                    self.emit_local_replies();
                    self.flush_client();
                    self.on_client_input();
                    self.flush_upstream();
                }
            }
        }
        None
    }

    /// The reply being read was cut off by the loss of the lane's connection. If none of
    /// its bytes reached the client, they are forgotten (its command gets the error like
    /// the others lost): true. False when some did: nothing may follow them.
    fn drop_cut_reply(&mut self) -> bool {
        if self.reply_partly_sent {
            return false;
        }
        self.replies.restart(ReplyScanner::new());
        self.reply_forwarded = None;
        true
    }
}
