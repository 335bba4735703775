//! The connection state a session follows to know how many replies each command gets and
//! which of them the client may see: `CLIENT REPLY` mode, MULTI (and where the proxy's own
//! commands sit inside it, so EXEC's array is sent without them), subscriptions, MONITOR
//! and RESP3 (through the [`ReplyQueue`] it drives), and whether a command that may change
//! who the client is still waits for its reply.
//!
//! Pure: it never touches a socket or shared state. What recording a command asks of the
//! session beyond the queue (stop reading after QUIT, mark the memory reading stale) comes
//! back as [`Recorded`].

use bytes::Bytes;

use crate::command::Special;
use crate::guard::ReplyWatch;
use crate::pipeline::{CommandFacts, Scanned};
use crate::reply_queue::{Disposition, Effect, Expect, HelloEffect, Pending, ReplyQueue};

/// `CLIENT REPLY` mode, followed at send time because it decides how many replies come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    SkipNext,
}

/// The Redis command the proxy sends inside MULTI to fail the transaction the way a
/// queue-time error does: Redis rejects it when queueing, so EXEC answers EXECABORT.
const REFUSED_IN_TRANSACTION: &[u8] = b"*1\r\n$32\r\nRESPGUARD.REFUSED-IN-TRANSACTION\r\n";

/// What recording a command asks of the session besides the reply queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// QUIT: Redis closes after it and reads nothing more.
    pub quit: bool,
    /// The memory reading is stale from now (CONFIG SET, FLUSHALL, ..., or an EXEC that
    /// runs one).
    pub memory_event: bool,
}

/// What becomes of a reply the proxy gives itself, by `CLIENT REPLY` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalAnswer {
    /// Queued in its place among Redis's replies.
    Queued,
    /// Not sent: the client turned replies off.
    Unsent,
    /// It is the reply the client asked to skip. Redis, which never sees the command,
    /// would skip the next one instead: the session sends it a `PING` to skip.
    SkipPing,
}

/// An EXEC reply being filtered: which elements to leave out and where the scan is.
#[derive(Debug)]
struct ExecFilter {
    hidden: Box<[u32]>,
    /// Index of the element now arriving; `None` before the array header.
    element: Option<u32>,
}

impl ExecFilter {
    fn keeps_current(&self) -> bool {
        match self.element {
            Some(i) => !self.hidden.contains(&i),
            None => true,
        }
    }
}

/// Per-connection state that decides reply counts and what the client sees.
#[derive(Debug)]
pub(crate) struct ConnectionState {
    queue: ReplyQueue,
    /// The command id hidden and proxy-added entries are recorded under.
    hidden_id: u16,
    reply_mode: ReplyMode,
    in_multi: bool,
    /// WATCH was sent and no EXEC, DISCARD, UNWATCH or RESET since.
    watching: bool,
    /// Inside MULTI: commands queued so far, and the positions of those the proxy added.
    multi_queued: u32,
    multi_hidden: Vec<u32>,
    /// Inside MULTI: a queued command changes what the memory reading means (CONFIG SET,
    /// FLUSHALL, ...), so EXEC marks the reading stale.
    multi_memory_event: bool,
    /// A command that may change who the client is (AUTH, HELLO, CLIENT SETNAME, RESET) is
    /// in flight: the next command waits for its reply, so that guards and `RESPGUARD`
    /// judge it by the identity in force when Redis runs it.
    identity_pending: bool,
    /// While an EXEC reply is filtered: the positions to leave out and the element now
    /// arriving.
    exec_filter: Option<ExecFilter>,
}

impl ConnectionState {
    /// A fresh connection: replies on, no transaction, at most `max_pending` commands in
    /// flight; hidden entries are recorded as command `hidden_id`.
    pub fn new(max_pending: usize, hidden_id: u16) -> Self {
        ConnectionState {
            queue: ReplyQueue::new(max_pending),
            hidden_id,
            reply_mode: ReplyMode::On,
            in_multi: false,
            watching: false,
            multi_queued: 0,
            multi_hidden: Vec::new(),
            multi_memory_event: false,
            identity_pending: false,
            exec_filter: None,
        }
    }

    /// The commands in flight.
    #[inline]
    pub fn queue(&self) -> &ReplyQueue {
        &self.queue
    }

    /// The commands in flight, to match replies or push what the proxy answers itself.
    #[inline]
    pub fn queue_mut(&mut self) -> &mut ReplyQueue {
        &mut self.queue
    }

    /// Inside MULTI.
    #[inline]
    pub fn in_multi(&self) -> bool {
        self.in_multi
    }

    /// Whether the connection holds no state the session follows that lasts past the
    /// replies in flight: no transaction, no watched key, replies on, no subscription, no
    /// MONITOR, no identity change waiting. Under multiplexing, a client whose own
    /// connection is in this state (and owes nothing) may go back to a shared one.
    pub fn holds_nothing(&self) -> bool {
        !self.in_multi
            && !self.watching
            && !self.identity_pending
            && self.reply_mode == ReplyMode::On
            && !self.queue.is_subscribed()
            && !self.queue.is_monitoring()
    }

    /// A command that may change the client's identity waits for its reply.
    #[inline]
    pub fn identity_pending(&self) -> bool {
        self.identity_pending
    }

    /// The next command waits until every reply in flight has arrived, as after a change
    /// of identity (a multiplexed client moving to other shared connections).
    pub fn wait_for_replies(&mut self) {
        self.identity_pending = true;
    }

    /// Whether the next command must wait for the identity change in flight; once its
    /// reply is in, it need not any more.
    #[inline]
    pub fn holds_for_identity(&mut self) -> bool {
        if self.identity_pending {
            if !self.queue.is_empty() {
                return true;
            }
            self.identity_pending = false;
        }
        false
    }

    /// Whether Redis's replies to the proxy's own commands come back on their own now:
    /// not inside MULTI, under CLIENT REPLY OFF/SKIP, or where Redis refuses EVAL
    /// (subscribed in RESP2, MONITOR).
    pub fn can_probe(&self) -> bool {
        !self.in_multi
            && self.reply_mode == ReplyMode::On
            && (self.queue.is_resp3() || !self.queue.is_subscribed())
            && !self.queue.is_monitoring()
    }

    /// Whether the guards may act on a command now: not in RESP2 subscribed mode or
    /// MONITOR, where Redis refuses writes and reply counts are Redis's.
    #[inline]
    pub fn guards_may_act(&self) -> bool {
        (self.queue.is_resp3() || !self.queue.is_subscribed()) && !self.queue.is_monitoring()
    }

    /// Expect the hidden reply of the access probe just sent.
    pub fn expect_probe(&mut self) {
        let mut probe = Pending::hidden(self.hidden_id);
        probe.effect = Effect::AccessProbe;
        self.queue.push(probe);
    }

    /// Expect the replies of `n` commands the proxy added, which the client must not see.
    pub fn expect_hidden(&mut self, n: u32) {
        for _ in 0..n {
            if self.in_multi {
                // It is queued: remember its place so EXEC's array can leave it out.
                self.multi_hidden.push(self.multi_queued);
                self.multi_queued += 1;
            }
            if self.reply_mode == ReplyMode::On {
                self.queue.push(Pending::hidden(self.hidden_id));
            }
        }
    }

    /// A command refused inside MULTI must fail the transaction as a queue-time error does
    /// in Redis (EXEC answers EXECABORT): returns a command Redis will reject at queue time
    /// for the session to send, and expects its error, hidden.
    pub fn abort_transaction(&mut self) -> &'static [u8] {
        if self.reply_mode == ReplyMode::On {
            self.queue.push(Pending::hidden(self.hidden_id));
        }
        REFUSED_IN_TRANSACTION
    }

    /// Record the proxy's own `reply` to `command`, which Redis never sees.
    pub fn answer_locally(&mut self, command: u16, reply: Bytes) -> LocalAnswer {
        match self.reply_mode {
            ReplyMode::On => {
                self.queue.push(Pending::local(command, reply));
                LocalAnswer::Queued
            }
            // Under CLIENT REPLY OFF, Redis would send nothing for this command.
            ReplyMode::Off => LocalAnswer::Unsent,
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                LocalAnswer::SkipPing
            }
        }
    }

    /// Record an ordinary command (no [`Special`] kind, no guard's watch) sent to Redis, if
    /// the connection state follows nothing that would change its entry (not inside MULTI,
    /// replies on): one forwarded reply, as [`Self::push_for`] would record it. False, and
    /// nothing recorded, otherwise.
    #[inline]
    pub fn push_plain(&mut self, command: u16) -> bool {
        if !self.records_as_sent() {
            return false;
        }
        self.queue.push(Pending::forward(command));
        true
    }

    /// Whether a command of no [`Special`] kind gets one forwarded reply, as sent: not
    /// inside MULTI, replies on.
    #[inline]
    pub fn records_as_sent(&self) -> bool {
        !self.in_multi && self.reply_mode == ReplyMode::On
    }

    /// Record a command of no [`Special`] kind whose reply a guard watches, where
    /// [`Self::records_as_sent`]: one forwarded reply, its effect the `watch`, as
    /// [`Self::push_for`] would record it.
    #[inline(never)]
    pub fn push_watched(&mut self, command: u16, watch: ReplyWatch) {
        debug_assert!(self.records_as_sent());
        self.queue.push_watched(command, watch);
    }

    /// Record what to do with the replies of `cmd`, sent to Redis, following the connection
    /// state that decides how many replies it gets. `watch` is a guard's watch on its reply,
    /// if any (not inside MULTI: the reply arrives inside EXEC's array).
    ///
    /// `cmd` gives the command's arguments; it is read only for the commands the state
    /// follows, so an ordinary command outside MULTI costs one queue entry.
    pub fn push_for<'a>(
        &mut self,
        cmd: impl FnOnce() -> Scanned<'a>,
        info: CommandFacts,
        watch: Option<ReplyWatch>,
    ) -> Recorded {
        let mut pending = Pending::forward(info.id);
        if let Some(w) = watch {
            pending.effect = Effect::Watched(w);
        }
        if matches!(info.special, Special::None)
            && !self.in_multi
            && self.reply_mode == ReplyMode::On
        {
            self.queue.push(pending);
            return Recorded::default();
        }
        let cmd = cmd();
        let argc = cmd.args.len();
        let mut recorded = Recorded::default();
        // Inside MULTI most commands are only queued: one `+QUEUED` and no effect yet.
        let queued = self.in_multi
            && !matches!(
                info.special,
                Special::Multi
                    | Special::Exec
                    | Special::Discard
                    | Special::Watch
                    | Special::Quit
                    | Special::Reset
            );
        if queued {
            self.multi_queued += 1;
            // Runs at EXEC: the memory reading is stale once EXEC has run.
            self.multi_memory_event |= matches!(info.special, Special::MemoryEvent);
        }
        let skip_this = self.reply_mode == ReplyMode::SkipNext;
        if skip_this {
            self.reply_mode = ReplyMode::On;
        }
        let mut replies = self.reply_mode == ReplyMode::On && !skip_this;
        if !queued {
            match info.special {
                Special::None | Special::Wait | Special::ClientGetName => {}
                // Inside MULTI Redis refuses it; counted as watching all the same (a pinned
                // client only stays on its connection longer).
                Special::Watch => self.watching = true,
                Special::Unwatch => self.watching = false,
                Special::Subscribe(_) | Special::Unsubscribe(_) => {
                    pending.expect = Expect::of(info.special, argc);
                }
                Special::Hello => {
                    pending.effect = hello_effect(argc, &|i| cmd.arg(i));
                }
                Special::Auth => {
                    let user = if argc >= 3 {
                        cmd.arg(1)
                    } else {
                        Some(&b"default"[..])
                    };
                    if let Some(u) = user {
                        pending.effect = Effect::Auth(u.into());
                    }
                }
                Special::ClientSetName => {
                    if let Some(n) = cmd.arg(2) {
                        pending.effect = Effect::SetName(n.into());
                    }
                }
                Special::ClientSetInfo => {
                    if let (Some(attr), Some(v)) = (cmd.arg(2), cmd.arg(3)) {
                        if attr.eq_ignore_ascii_case(b"lib-name") {
                            pending.effect = Effect::SetLibName(v.into());
                        }
                    }
                }
                Special::ClientReply => {
                    if argc == 3 {
                        replies = self.client_reply(cmd.arg(2).unwrap_or_default(), replies);
                    }
                }
                // Redis ignores MONITOR on a monitoring connection: no reply.
                Special::Monitor if self.monitoring_or_asked() => replies = false,
                Special::Monitor => pending.effect = Effect::Monitor,
                Special::ClientKill => pending.effect = Effect::Kill,
                Special::Reset => {
                    pending.effect = Effect::Reset;
                    self.reply_mode = ReplyMode::On;
                    self.in_multi = false;
                    self.watching = false;
                    self.multi_hidden.clear();
                    replies = true;
                }
                Special::Quit => {
                    pending.effect = Effect::Quit;
                    recorded.quit = true;
                    replies = true;
                }
                Special::Multi => {
                    if !self.in_multi {
                        self.in_multi = true;
                        self.multi_queued = 0;
                        self.multi_hidden.clear();
                    }
                }
                Special::Exec => {
                    if self.in_multi && !self.multi_hidden.is_empty() {
                        let hidden = std::mem::take(&mut self.multi_hidden);
                        pending.disposition = Disposition::FilterExec(hidden.into_boxed_slice());
                    }
                    if std::mem::take(&mut self.multi_memory_event) {
                        recorded.memory_event = true;
                        pending.effect = Effect::MemoryEvent;
                    }
                    self.in_multi = false;
                    self.watching = false;
                }
                Special::Discard => {
                    self.in_multi = false;
                    self.watching = false;
                    self.multi_hidden.clear();
                    self.multi_memory_event = false;
                }
                Special::MemoryEvent => {
                    // Stale from now (for writes pipelined behind it) and again once Redis
                    // has applied it (so the monitor's next poll sees the change).
                    recorded.memory_event = true;
                    pending.effect = Effect::MemoryEvent;
                }
                // Redis refuses it in RESP2 subscribed mode, and ignores it under MONITOR.
                Special::Sync if self.queue.is_monitoring() => {}
                Special::Sync if self.queue.is_subscribed() && !self.queue.is_resp3() => {}
                Special::Sync => pending.effect = Effect::Replication,
            }
        }
        if replies {
            self.identity_pending |= matches!(
                pending.effect,
                Effect::Auth(_) | Effect::Hello(_) | Effect::SetName(_) | Effect::Reset
            );
            self.queue.push(pending);
        }
        recorded
    }

    /// Whether the connection monitors, or a MONITOR waits for its reply.
    fn monitoring_or_asked(&self) -> bool {
        self.queue.is_monitoring()
            || self
                .queue
                .iter()
                .any(|p| matches!(p.effect, Effect::Monitor))
    }

    /// `CLIENT REPLY mode`: the new mode, and whether this command itself gets a reply
    /// (`replies` before it; an unknown mode changes nothing and Redis answers the error).
    fn client_reply(&mut self, mode: &[u8], replies: bool) -> bool {
        if mode.eq_ignore_ascii_case(b"on") {
            self.reply_mode = ReplyMode::On;
            true
        } else if mode.eq_ignore_ascii_case(b"off") {
            self.reply_mode = ReplyMode::Off;
            false
        } else if mode.eq_ignore_ascii_case(b"skip") {
            if self.reply_mode != ReplyMode::Off {
                self.reply_mode = ReplyMode::SkipNext;
            }
            false
        } else {
            replies
        }
    }

    /// A reply begins with `first`: whether it goes to the client, and whether it is an
    /// EXEC array to filter element by element (the reply scanner must report elements).
    pub fn begin_reply(&mut self, first: u8) -> (bool, bool) {
        let forwarded = self.queue.forwards_reply_starting_with(first);
        let mut filter = false;
        if first != b'>' {
            if let Some(hidden) = self.queue.exec_filter_at_head() {
                self.exec_filter = Some(ExecFilter {
                    hidden,
                    element: None,
                });
                filter = true;
            }
        }
        (forwarded, filter)
    }

    /// EXEC's array header arrived with `count` elements: how many the client gets.
    pub fn exec_header(&mut self, count: usize) -> usize {
        let hidden = self.exec_filter.as_ref().map_or(0, |f| f.hidden.len());
        if let Some(f) = self.exec_filter.as_mut() {
            f.element = Some(0);
        }
        count.saturating_sub(hidden)
    }

    /// Whether the bytes arriving now belong in the client's copy of the reply, as far as
    /// EXEC filtering goes (every byte of any other reply does).
    #[inline]
    pub fn keeps_current_element(&self) -> bool {
        self.exec_filter.as_ref().is_none_or(|f| f.keeps_current())
    }

    /// An element of a filtered EXEC array ended.
    #[inline]
    pub fn element_done(&mut self) {
        if let Some(f) = self.exec_filter.as_mut() {
            f.element = f.element.map(|i| i + 1);
        }
    }

    /// The reply ended.
    #[inline]
    pub fn end_reply(&mut self) {
        self.exec_filter = None;
    }
}

/// What a successful HELLO changes: `HELLO [protover [AUTH user pass] [SETNAME name]]`.
fn hello_effect<'a>(argc: usize, arg: &dyn Fn(usize) -> Option<&'a [u8]>) -> Effect {
    let protocol = arg(1).and_then(|v| match v {
        b"2" => Some(2),
        b"3" => Some(3),
        _ => None,
    });
    let mut user = None;
    let mut name = None;
    let mut i = 2;
    while i < argc {
        let opt = arg(i).unwrap_or_default();
        if opt.eq_ignore_ascii_case(b"auth") && i + 2 < argc {
            user = arg(i + 1).map(Bytes::copy_from_slice);
            i += 3;
        } else {
            if opt.eq_ignore_ascii_case(b"setname") {
                name = arg(i + 1).map(Bytes::copy_from_slice);
            }
            i += 2;
        }
    }
    Effect::Hello(Box::new(HelloEffect {
        protocol,
        user,
        name,
    }))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
