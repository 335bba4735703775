//! The reply queue: for every command sent upstream (or answered by the proxy), what to do
//! with its reply, in order.
//!
//! Redis answers commands in the order it receives them, but not always one reply per
//! command: SUBSCRIBE with three channels gets three confirmations, commands under
//! `CLIENT REPLY OFF` get none, and pub/sub messages, MONITOR lines and RESP3 pushes arrive
//! unasked. The queue follows all of that, so that each reply is matched with the command
//! that caused it. That pairing is what lets the proxy:
//! - hide the replies of commands it added itself ([`Disposition::Hide`]),
//! - answer a command itself, in the right place among Redis's replies
//!   ([`Disposition::Local`]),
//! - learn from a reply (the client's user after AUTH, its protocol after HELLO).
//!
//! The queue never touches a socket. It has a fixed capacity: the session stops reading the
//! client while it is full, which bounds the commands in flight per connection.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::command::Special;
pub use crate::command::SubKind;
use crate::guard::ReplyWatch;
use crate::scanner::reply::{ReplyInfo, ReplyKind};

/// What to do with the reply (or replies) of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Pass Redis's reply to the client.
    Forward,
    /// Swallow Redis's reply: the proxy sent this command on its own behalf.
    Hide,
    /// The command never went upstream; send these bytes to the client in its place.
    Local(Bytes),
    /// EXEC of a transaction holding commands the proxy added: forward the reply array
    /// without the elements at these positions (an error or nil reply passes unchanged).
    FilterExec(Box<[u32]>),
}

/// How many replies Redis will send for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exactly one.
    One,
    /// Pub/sub confirmations, one per channel; an error reply ends them early.
    Confirmations(u32),
    /// One confirmation per subscription of `kind` held when Redis runs it (at least one).
    UnsubscribeAll(SubKind),
}

impl Expect {
    /// The replies Redis sends for a command of kind `special` with `argc` arguments (its
    /// name counted), outside MULTI: a subscription or unsubscription naming channels gets
    /// one confirmation per channel, an unsubscription naming none one per subscription of
    /// its kind held, anything else one reply. The session and a cluster router (following
    /// a client's subscriptions on its own node connections) count them alike.
    pub fn of(special: Special, argc: usize) -> Expect {
        match special {
            Special::Subscribe(_) | Special::Unsubscribe(_) if argc >= 2 => {
                Expect::Confirmations((argc - 1) as u32)
            }
            Special::Unsubscribe(kind) => Expect::UnsubscribeAll(kind),
            _ => Expect::One,
        }
    }
}

/// What a successful reply changes in the session's view of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing.
    None,
    /// HELLO succeeded (boxed: it is rare, and keeps every queue entry small enough to move
    /// without a `memcpy` call).
    Hello(Box<HelloEffect>),
    /// AUTH succeeded as this user. (The names below are boxed slices, 16 bytes, not
    /// `Bytes`, 32: they keep every entry of the queue 16 bytes smaller, and are made
    /// with one allocation each, as a `Bytes` copied from the request would be.)
    Auth(Box<[u8]>),
    /// CLIENT SETNAME succeeded.
    SetName(Box<[u8]>),
    /// CLIENT SETINFO LIB-NAME succeeded.
    SetLibName(Box<[u8]>),
    /// MONITOR succeeded: from now on Redis streams every command it runs.
    Monitor,
    /// RESET succeeded: the connection is as new.
    Reset,
    /// QUIT: Redis closes the connection after this reply.
    Quit,
    /// CLIENT KILL: if it killed the calling connection, Redis closes it after this reply.
    Kill,
    /// A guard watches the reply (the queue guard: a push's reply is the queue's depth).
    Watched(ReplyWatch),
    /// The proxy's probe of what its user may run ([`crate::guard::PROBE`]); an error reply
    /// is an answer too.
    AccessProbe,
    /// A [`crate::command::Special::MemoryEvent`] command succeeded: the memory reading is
    /// stale now that Redis has applied it.
    MemoryEvent,
    /// SYNC or PSYNC: unless Redis answers with an error, its answer starts a replication
    /// stream (an RDB without a trailing CRLF, then commands), not a reply.
    Replication,
    /// Multiplexed, a `SELECT` sent on a lane of another identity succeeded: the client
    /// uses that identity's lanes from now on (a HELLO's move is its `Hello` effect).
    LaneSwitch,
}

/// What a successful HELLO changes: protocol version (when given), user (when AUTH was
/// given) and client name (when SETNAME was given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloEffect {
    /// The protocol version asked for.
    pub protocol: Option<u8>,
    /// The user of its AUTH clause.
    pub user: Option<Bytes>,
    /// The name of its SETNAME clause.
    pub name: Option<Bytes>,
}

/// One command's place in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// How many replies to wait for.
    pub expect: Expect,
    /// What to do with them.
    pub disposition: Disposition,
    /// What a successful reply changes.
    pub effect: Effect,
    /// The command's id in the command table, for metrics.
    pub command: u16,
    /// When the proxy read the command, in microseconds of the queue's clock (set by
    /// [`ReplyQueue::push`]), for the latency histogram.
    pub received_us: u64,
}

impl Pending {
    /// A command whose single reply goes to the client unchanged.
    pub fn forward(command: u16) -> Self {
        Pending {
            expect: Expect::One,
            disposition: Disposition::Forward,
            effect: Effect::None,
            command,
            received_us: 0,
        }
    }

    /// A command the proxy added, whose reply the client must never see.
    pub fn hidden(command: u16) -> Self {
        Pending {
            disposition: Disposition::Hide,
            ..Pending::forward(command)
        }
    }

    /// A command answered by the proxy with `reply`.
    pub fn local(command: u16, reply: Bytes) -> Self {
        Pending {
            disposition: Disposition::Local(reply),
            ..Pending::forward(command)
        }
    }
}

/// How the session must treat one complete reply from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matched {
    /// Not an answer to any command (a message, an invalidation, a MONITOR line):
    /// forward it.
    OutOfBand,
    /// An answer to the queue's head command. `finished` holds the entry when this was its
    /// last reply, so the caller can apply its effect.
    Reply {
        /// The reply is the proxy's own (its command was hidden from the client).
        hidden: bool,
        finished: Option<Pending>,
    },
}

/// The per-connection queue of commands awaiting replies, and the reply-shaping state of the
/// connection (subscriptions, MONITOR) that decides which replies are answers.
#[derive(Debug)]
pub struct ReplyQueue {
    entries: VecDeque<Pending>,
    capacity: usize,
    channels: i64,
    patterns: i64,
    shard_channels: i64,
    resp3: bool,
    monitoring: bool,
    /// The time stamped on commands pushed now (microseconds, the session's clock).
    clock_us: u64,
    /// Commands pushed that Redis answers (every one but those answered locally), ever:
    /// how a multiplexed session counts the replies a batch it submits expects.
    to_upstream: u64,
}

impl ReplyQueue {
    /// An empty queue holding at most `capacity` commands.
    pub fn new(capacity: usize) -> Self {
        ReplyQueue {
            // Empty until the first command: an idle client costs no entries; the queue
            // grows once to the client's burst and keeps it.
            entries: VecDeque::new(),
            capacity,
            channels: 0,
            patterns: 0,
            shard_channels: 0,
            resp3: false,
            monitoring: false,
            clock_us: 0,
            to_upstream: 0,
        }
    }

    /// Set the time stamped on the commands pushed from now on: the session reads its
    /// clock once per read from the client, not once per command.
    pub fn set_clock(&mut self, micros: u64) {
        self.clock_us = micros;
    }

    /// Commands waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The commands waiting, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.entries.iter()
    }

    /// Remove and return the oldest command waiting.
    pub fn pop_front(&mut self) -> Option<Pending> {
        self.entries.pop_front()
    }

    /// Forget every command waiting (the connection is going away).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// True while Redis streams MONITOR output on this connection.
    pub fn is_monitoring(&self) -> bool {
        self.monitoring
    }

    /// True when no command is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when the session must stop reading commands until replies drain.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    /// Room for this many more commands.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.entries.len())
    }

    /// Follow a connection that speaks RESP3 (`resp3`) or RESP2 from now on, as a HELLO
    /// answered elsewhere set it.
    pub fn set_resp3(&mut self, resp3: bool) {
        self.resp3 = resp3;
    }

    /// True when the connection is in RESP3.
    pub fn is_resp3(&self) -> bool {
        self.resp3
    }

    /// True while the connection holds any subscription.
    pub fn is_subscribed(&self) -> bool {
        self.channels + self.patterns + self.shard_channels > 0
    }

    /// Add a command at the tail. The caller checks [`Self::is_full`] before reading more
    /// commands; a command already read is always accepted, so the bound can be exceeded by
    /// at most the commands of one read.
    pub fn push(&mut self, mut p: Pending) {
        p.received_us = self.clock_us;
        self.to_upstream += u64::from(!matches!(p.disposition, Disposition::Local(_)));
        self.entries.push_back(p);
    }

    /// Add a command at the tail whose one reply is forwarded and watched by a guard: the
    /// entry [`Self::push`] would add for a forwarded command given the effect
    /// [`Effect::Watched`], built where it is stored: no default entry is built first and
    /// its effect replaced (and dropped) after.
    #[inline]
    pub fn push_watched(&mut self, command: u16, watch: ReplyWatch) {
        self.to_upstream += 1;
        self.entries.push_back(Pending {
            expect: Expect::One,
            disposition: Disposition::Forward,
            effect: Effect::Watched(watch),
            command,
            received_us: self.clock_us,
        });
    }

    /// Give the command pushed last `effect` (what its successful reply changes), when the
    /// session learns it only after the push.
    pub fn set_last_effect(&mut self, effect: Effect) {
        if let Some(last) = self.entries.back_mut() {
            last.effect = effect;
        }
    }

    /// How many commands Redis answers were ever pushed (see [`Self::push`]).
    pub fn pushed_to_upstream(&self) -> u64 {
        self.to_upstream
    }

    /// Whether the next reply is the plain answer of the head entry: one reply, forwarded,
    /// changing nothing, on a connection where no reply of that kind can be a MONITOR line.
    /// Such a reply, when it is not an array or a push, is matched by popping the entry
    /// ([`Self::pop_plain`]), exactly as [`Self::on_reply`] would match it.
    #[inline]
    pub fn next_reply_is_plain(&self) -> bool {
        self.next_reply_is_one_forwarded(|effect| matches!(effect, Effect::None))
    }

    /// Whether the head entry waits for one reply, forwarded, on a connection where no
    /// reply can be a MONITOR line, and its effect is one that `effect` accepts.
    #[inline(always)]
    fn next_reply_is_one_forwarded(&self, effect: impl Fn(&Effect) -> bool) -> bool {
        !self.monitoring
            && matches!(
                self.entries.front(),
                Some(Pending {
                    expect: Expect::One,
                    disposition: Disposition::Forward,
                    effect: e,
                    ..
                }) if effect(e)
            )
    }

    /// Take the head entry, answered by a plain reply (see [`Self::next_reply_is_plain`]):
    /// its command id and when it was read.
    #[inline]
    pub fn pop_plain(&mut self) -> (u16, u64) {
        debug_assert!(self.next_reply_is_plain());
        match self.entries.pop_front() {
            Some(plain) => {
                let answered = (plain.command, plain.received_us);
                // A plain entry owns nothing (no local reply, no effect): no drop to run.
                std::mem::forget(plain);
                answered
            }
            None => (0, 0),
        }
    }

    /// Whether the next reply is the answer of a watched head entry that is otherwise
    /// plain: one reply, forwarded, its one effect a guard's watch (a push onto a followed
    /// queue). Matched as [`Self::next_reply_is_plain`], by [`Self::pop_watched`].
    #[inline]
    pub fn next_reply_is_watched(&self) -> bool {
        self.next_reply_is_one_forwarded(|effect| matches!(effect, Effect::Watched(_)))
    }

    /// Take the watched head entry (see [`Self::next_reply_is_watched`]): its command id,
    /// when it was read, and its watch.
    #[inline]
    pub fn pop_watched(&mut self) -> Option<(u16, u64, ReplyWatch)> {
        match self.entries.pop_front()? {
            Pending {
                effect: Effect::Watched(watch),
                command,
                received_us,
                ..
            } => Some((command, received_us, watch)),
            other => {
                debug_assert!(false, "not a watched entry: {other:?}");
                self.entries.push_front(other);
                None
            }
        }
    }

    /// Whether the head entry is a local answer, which the session can send now.
    #[inline]
    pub fn front_is_local(&self) -> bool {
        matches!(
            self.entries.front(),
            Some(Pending {
                disposition: Disposition::Local(_),
                ..
            })
        )
    }

    /// Take the head entry if it is a local answer, so the session can send it now.
    pub fn pop_local(&mut self) -> Option<Pending> {
        match self.entries.front() {
            Some(Pending {
                disposition: Disposition::Local(_),
                ..
            }) => self.entries.pop_front(),
            _ => None,
        }
    }

    /// Whether the reply beginning with `first_byte` (still arriving) goes to the client.
    pub fn forwards_reply_starting_with(&self, first_byte: u8) -> bool {
        if first_byte == b'>' {
            return true;
        }
        !matches!(
            self.entries.front(),
            Some(Pending {
                disposition: Disposition::Hide,
                ..
            })
        )
    }

    /// Whether what Redis sends now, beginning with `first_byte`, starts a replication
    /// stream: the head command is SYNC or PSYNC and this is neither an error nor a RESP3
    /// push. (Before `+FULLRESYNC` or the RDB, Redis may send bare newlines as keep-alives.)
    pub fn starts_replication(&self, first_byte: u8) -> bool {
        first_byte != b'-'
            && first_byte != b'>'
            && self
                .entries
                .front()
                .is_some_and(|p| matches!(p.effect, Effect::Replication))
    }

    /// True while SYNC or PSYNC is the last command sent: nothing after it may be scanned
    /// until Redis says whether the connection becomes a replication link.
    pub fn awaits_replication(&self) -> bool {
        self.entries
            .back()
            .is_some_and(|p| matches!(p.effect, Effect::Replication))
    }

    /// The positions to leave out of the reply now expected, if the head is a filtered EXEC.
    pub fn exec_filter_at_head(&self) -> Option<Box<[u32]>> {
        match self.entries.front() {
            Some(Pending {
                disposition: Disposition::FilterExec(hidden),
                ..
            }) => Some(hidden.clone()),
            _ => None,
        }
    }

    /// Match one complete reply against the head of the queue.
    pub fn on_reply(&mut self, info: &ReplyInfo) -> Matched {
        let confirmation = self.confirmation_kind(info);
        if self.is_out_of_band(info, confirmation.is_some()) {
            return Matched::OutOfBand;
        }
        if let Some((kind, subscribing)) = confirmation {
            self.track_subscription(kind, subscribing, info.last_int.unwrap_or(0));
        }
        let Some(head) = self.entries.front_mut() else {
            // Redis sent something nobody asked for; the client sees it as Redis sent it.
            return Matched::OutOfBand;
        };
        let done = match &mut head.expect {
            Expect::One => true,
            Expect::Confirmations(n) => {
                *n -= 1;
                *n == 0 || info.kind == ReplyKind::Error
            }
            Expect::UnsubscribeAll(kind) => {
                // The count in the first confirmation tells how many follow.
                if info.kind == ReplyKind::Error {
                    true
                } else {
                    let held_before = match kind {
                        SubKind::Channel => self.channels + 1,
                        SubKind::Pattern => self.patterns + 1,
                        SubKind::Shard => self.shard_channels + 1,
                    };
                    let remaining = (held_before - 1).max(0) as u32;
                    head.expect = Expect::Confirmations(remaining.max(1));
                    remaining == 0
                }
            }
        };
        let hidden = matches!(head.disposition, Disposition::Hide);
        let finished = if done {
            let entry = self.entries.pop_front();
            if let Some(e) = &entry {
                if info.kind != ReplyKind::Error {
                    self.apply(&e.effect);
                }
            }
            entry
        } else {
            None
        };
        Matched::Reply { hidden, finished }
    }

    /// Record what a successful reply changes in the queue's own view of the connection.
    fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::Hello(h) => {
                if let Some(p) = h.protocol {
                    self.resp3 = p == 3;
                }
            }
            Effect::Monitor => self.monitoring = true,
            Effect::Reset => {
                self.channels = 0;
                self.patterns = 0;
                self.shard_channels = 0;
                self.resp3 = false;
                self.monitoring = false;
            }
            _ => {}
        }
    }

    fn confirmation_kind(&self, info: &ReplyInfo) -> Option<(SubKind, bool)> {
        if !matches!(info.kind, ReplyKind::Array | ReplyKind::Push) {
            return None;
        }
        let head_is_pubsub = matches!(
            self.entries.front().map(|e| e.expect),
            Some(Expect::Confirmations(_)) | Some(Expect::UnsubscribeAll(_))
        );
        // In RESP2 an array is only a confirmation when a pub/sub command is waiting for one;
        // otherwise it is some command's ordinary array reply.
        if info.kind == ReplyKind::Array && !head_is_pubsub {
            return None;
        }
        match info.first_str()? {
            b"subscribe" => Some((SubKind::Channel, true)),
            b"unsubscribe" => Some((SubKind::Channel, false)),
            b"psubscribe" => Some((SubKind::Pattern, true)),
            b"punsubscribe" => Some((SubKind::Pattern, false)),
            b"ssubscribe" => Some((SubKind::Shard, true)),
            b"sunsubscribe" => Some((SubKind::Shard, false)),
            _ => None,
        }
    }

    fn is_out_of_band(&self, info: &ReplyInfo, is_confirmation: bool) -> bool {
        match info.kind {
            ReplyKind::Push => !is_confirmation,
            ReplyKind::Array if !self.resp3 && self.is_subscribed() => matches!(
                info.first_str(),
                Some(b"message") | Some(b"pmessage") | Some(b"smessage")
            ),
            // MONITOR lines start with the time as digits; a command's own status reply
            // (RESET's `+RESET`, `+OK`, `+PONG`) never does.
            ReplyKind::Simple if self.monitoring => {
                info.first.first().is_some_and(|b| b.is_ascii_digit())
            }
            _ => false,
        }
    }

    /// Follow the subscription counts from a confirmation. Channel and pattern counts share
    /// one total in Redis's replies, so each is updated by the change in that total.
    fn track_subscription(&mut self, kind: SubKind, subscribing: bool, count: i64) {
        match kind {
            SubKind::Shard => self.shard_channels = count,
            SubKind::Channel | SubKind::Pattern => {
                let total = self.channels + self.patterns;
                let delta = count - total;
                let changed = if subscribing { delta > 0 } else { delta < 0 };
                if changed {
                    let slot = if kind == SubKind::Channel {
                        &mut self.channels
                    } else {
                        &mut self.patterns
                    };
                    *slot = (*slot + delta).max(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scanner::reply::{ReplyScanner, ReplyStep};

    /// Scan a byte stream of replies and match each against the queue; return for each
    /// reply whether it was forwarded to the client.
    fn run(q: &mut ReplyQueue, stream: &[u8]) -> Vec<(String, bool)> {
        let mut s = ReplyScanner::new();
        let mut out = Vec::new();
        let mut start = 0;
        while start < stream.len() {
            let ReplyStep::Done(end) = s.scan(stream).unwrap() else {
                panic!("incomplete reply stream")
            };
            let text = String::from_utf8_lossy(&stream[start..end]).replace("\r\n", " ");
            let fwd = match q.on_reply(s.info()) {
                Matched::OutOfBand => true,
                Matched::Reply { hidden, .. } => !hidden,
            };
            out.push((text.trim().to_string(), fwd));
            start = end;
        }
        out
    }

    /// An entry is at most 88 bytes: it is written for every command and moved out for
    /// every reply (the names an effect carries are boxed slices for this).
    #[test]
    fn an_entry_stays_small() {
        assert!(
            std::mem::size_of::<Pending>() <= 88,
            "{}",
            std::mem::size_of::<Pending>()
        );
    }

    /// A watcher that only exists, for entries carrying a watch.
    #[derive(Debug)]
    struct Watcher;

    impl crate::guard::ReplyWatcher for Watcher {
        fn on_reply(&self, _: &ReplyInfo) {}
    }

    /// A watched push's entry, built in place, is the one `push` stores for a forwarded
    /// command given the watch; taken back, its watch is handed over whole (no reference
    /// lost or kept).
    #[test]
    fn a_watched_entry_is_pushed_and_taken_as_the_general_path_does() {
        let watcher = std::sync::Arc::new(Watcher);
        let watch = || ReplyWatch::new(std::sync::Arc::clone(&watcher) as _);
        let (mut direct, mut general) = (ReplyQueue::new(4), ReplyQueue::new(4));
        for q in [&mut direct, &mut general] {
            q.set_clock(7);
        }
        direct.push_watched(3, watch());
        general.push(Pending {
            effect: Effect::Watched(watch()),
            ..Pending::forward(3)
        });
        assert!(direct.iter().eq(general.iter()));
        assert_eq!(direct.pushed_to_upstream(), general.pushed_to_upstream());
        assert!(direct.next_reply_is_watched());
        let (command, received_us, taken) = direct.pop_watched().expect("a watched entry");
        assert_eq!((command, received_us), (3, 7));
        assert!(taken == watch() && direct.is_empty());
        drop((taken, general));
        assert_eq!(std::sync::Arc::strong_count(&watcher), 1);
    }

    #[test]
    fn hidden_replies_are_swallowed_in_order() {
        let mut q = ReplyQueue::new(16);
        q.push(Pending::forward(1));
        q.push(Pending::hidden(2));
        q.push(Pending::forward(3));
        let got = run(&mut q, b"+OK\r\n:1\r\n$1\r\nv\r\n");
        assert_eq!(
            got,
            vec![
                ("+OK".into(), true),
                (":1".into(), false),
                ("$1 v".into(), true)
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn local_answers_wait_for_earlier_replies() {
        let mut q = ReplyQueue::new(16);
        q.push(Pending::forward(1));
        q.push(Pending::local(2, Bytes::from_static(b"-ERR x\r\n")));
        assert!(
            q.pop_local().is_none(),
            "the forwarded reply must come first"
        );
        run(&mut q, b"+OK\r\n");
        assert_eq!(
            q.pop_local().map(|p| p.disposition),
            Some(Disposition::Local(Bytes::from_static(b"-ERR x\r\n")))
        );
    }

    #[test]
    fn resp2_subscribe_counts_confirmations_and_skips_messages() {
        let mut q = ReplyQueue::new(16);
        q.push(Pending {
            expect: Expect::Confirmations(2),
            ..Pending::forward(1)
        });
        q.push(Pending::hidden(2));
        let stream = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n\
*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n\
*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        let got: Vec<bool> = run(&mut q, stream).into_iter().map(|(_, f)| f).collect();
        assert_eq!(got, vec![true, true, true, false]);
        assert!(q.is_subscribed());
    }

    #[test]
    fn unsubscribe_all_expects_one_confirmation_per_channel() {
        let mut q = ReplyQueue::new(16);
        q.push(Pending {
            expect: Expect::Confirmations(2),
            ..Pending::forward(1)
        });
        q.push(Pending {
            expect: Expect::Confirmations(1),
            ..Pending::forward(2)
        });
        q.push(Pending {
            expect: Expect::UnsubscribeAll(SubKind::Channel),
            ..Pending::forward(3)
        });
        q.push(Pending::hidden(4));
        let stream = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n\
*3\r\n$10\r\npsubscribe\r\n$2\r\np*\r\n:3\r\n\
*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:2\r\n\
*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:1\r\n\
+OK\r\n";
        let got: Vec<bool> = run(&mut q, stream).into_iter().map(|(_, f)| f).collect();
        assert_eq!(got, vec![true, true, true, true, true, false]);
        assert!(q.is_subscribed(), "the pattern subscription remains");
    }

    #[test]
    fn resp3_pushes_are_out_of_band_but_confirmations_answer() {
        let mut q = ReplyQueue::new(16);
        q.push(Pending {
            effect: Effect::Hello(Box::new(HelloEffect {
                protocol: Some(3),
                user: None,
                name: None,
            })),
            ..Pending::forward(1)
        });
        q.push(Pending {
            expect: Expect::Confirmations(1),
            ..Pending::forward(2)
        });
        q.push(Pending::hidden(3));
        let stream = b"%1\r\n+proto\r\n:3\r\n\
>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n\
>3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
>3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n\
:5\r\n";
        let got: Vec<bool> = run(&mut q, stream).into_iter().map(|(_, f)| f).collect();
        assert_eq!(got, vec![true, true, true, true, false]);
        assert!(q.is_empty());
    }

    #[test]
    fn monitor_lines_are_out_of_band_until_reset() {
        let mut q = ReplyQueue::new(16);
        q.push(Pending {
            effect: Effect::Monitor,
            ..Pending::forward(1)
        });
        q.push(Pending {
            effect: Effect::Reset,
            ..Pending::forward(2)
        });
        q.push(Pending::hidden(3));
        let stream = b"+OK\r\n+1700000000.1 [0 127.0.0.1:1] \"get\"\r\n+RESET\r\n+OK\r\n";
        let got: Vec<bool> = run(&mut q, stream).into_iter().map(|(_, f)| f).collect();
        assert_eq!(got, vec![true, true, true, false]);
    }

    #[test]
    fn an_error_ends_a_confirmation_run() {
        let mut q = ReplyQueue::new(16);
        q.push(Pending {
            expect: Expect::Confirmations(3),
            ..Pending::forward(1)
        });
        q.push(Pending::hidden(2));
        let got: Vec<bool> = run(&mut q, b"-NOPERM no\r\n+OK\r\n")
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        assert_eq!(got, vec![true, false]);
    }

    #[test]
    fn a_queue_entry_stays_small_enough_to_move_inline() {
        // Past 128 bytes, moving an entry (push, on_reply) becomes a `memcpy` call:
        // +87 instructions per command under callgrind.
        assert!(std::mem::size_of::<Pending>() <= 128);
    }
}
