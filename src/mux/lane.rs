//! One shared Redis connection (a **lane**) and the clients' places on it (**slots**).
//!
//! A lane is owned by one task ([`Lane::run`]): it alone opens, reads and writes the
//! connection. Sessions reach it through a [`LaneLink`]: [`LaneLink::submit`] appends a
//! batch of whole commands to the lane's output and records, in the same lock, how many
//! replies the batch expects (a run in the [`Router`]), so a client's commands (and the
//! hidden commands a guard added to them) reach Redis back to back, never interleaved with
//! another client's. The task routes each reply to its slot's inbox and wakes the session,
//! which takes the bytes ([`LaneLink::take`]) and reads them as it would its own
//! connection's.
//!
//! Bounds: a slot's inbox holds the bytes the session has not taken (the client is not
//! reading them yet) within an [`UnreadLimit`], Redis's `client-output-buffer-limit` for
//! one client: any amount up to the soft limit, up to the hard limit for at most the soft
//! time. Past it the slot is closed as a slow reader and the rest of its replies are
//! dropped as they arrive, so a client that stops reading costs the proxy bounded memory
//! and never stalls the lane for the others, while one reading a reply larger than the
//! soft limit (a 4 MB GET arrives faster than any client reads it) is served. The output
//! holds what sessions submitted, each bounded by its own reply queue.
//!
//! When the connection is lost (closed, failed, malformed, silent past the reply timeout)
//! every reply still owed is lost: each slot is told how many of its commands get the
//! error, and the clients stay connected; the next submit opens a new connection through
//! the [`ConnectGate`] (rate, breaker, TLS, `max_connections`), whose handshake (AUTH,
//! SELECT) is the URL's, then gives it the lane's identity (`AUTH`, `SELECT n`, `HELLO 3`,
//! [`LaneSettings::handshake`]), each reply checked before any client's command is written
//! (a refusal fails what was submitted with Redis's own error, and marks the lane refused),
//! then names it `respguard-shared`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::identity::{give_identity, IdentityFailure};
use super::router::{Owner, Router};
use crate::alarm::SilenceAlarm;
use crate::buffer::ReadBuffer;
use crate::resp;
use crate::transport::Stream;
use crate::upstream::ConnectGate;
use crate::wakeup::WakeUp;
use crate::write_batch::WriteBatch;

/// The name every shared connection carries in Redis's `CLIENT LIST`.
pub const LANE_NAME: &str = "respguard-shared";

/// How a lane behaves, from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct LaneSettings {
    /// Longest silence while replies are owed before the connection counts as lost.
    pub reply_timeout: Option<Duration>,
    /// Bytes of replies a slot may hold that its session has not taken.
    pub unread: UnreadLimit,
    /// What every new connection is sent before any client's command, and how many
    /// replies that gets, each checked: the lane's identity, when not the URL's
    /// (`AUTH`, `SELECT n`, `HELLO 3`; see [`super::LaneIdentity::handshake_from`]).
    pub handshake: (Bytes, u32),
    /// Longest time the identity's commands may take to be answered
    /// (`upstream.connect_timeout`).
    pub handshake_timeout: Duration,
}

/// How many reply bytes a client may leave untaken on a lane: Redis's
/// `client-output-buffer-limit` (`proxy.output_buffer`, `output_buffer_hard`,
/// `output_buffer_soft_time`).
#[derive(Debug, Clone, Copy)]
pub struct UnreadLimit {
    /// Any amount up to this, for as long as the client likes.
    pub soft: usize,
    /// Never more than this.
    pub hard: usize,
    /// Longest time a slot may stay above `soft` (measured when replies arrive).
    pub soft_time: Duration,
}

/// Why a client was found too slow to take its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowReader {
    /// Its unread replies would have passed the hard limit.
    Hard,
    /// They stayed above the soft limit longer than the soft time.
    SoftTime,
}

impl Default for UnreadLimit {
    /// The defaults of `proxy.output_buffer`, `output_buffer_hard` and
    /// `output_buffer_soft_time`.
    fn default() -> Self {
        UnreadLimit {
            soft: 256 * 1024,
            hard: 512 * 1024 * 1024,
            soft_time: Duration::from_secs(60),
        }
    }
}

impl UnreadLimit {
    /// Whether a client holding `unread` bytes, above the soft limit since `over_since`,
    /// is a slow reader at `now`.
    pub(crate) fn judge(
        &self,
        unread: usize,
        over_since: Instant,
        now: Instant,
    ) -> Option<SlowReader> {
        if unread > self.hard {
            Some(SlowReader::Hard)
        } else if unread > self.soft && now.duration_since(over_since) > self.soft_time {
            Some(SlowReader::SoftTime)
        } else {
            None
        }
    }
}

/// Commands of one batch whose replies were lost with the connection, and the error
/// reply each of them gets.
#[derive(Debug, Clone)]
pub(crate) struct Lost {
    /// How many replies.
    pub replies: u32,
    /// The whole RESP error reply.
    pub error: Bytes,
    /// The first of them was cut after some of its bytes were handed over.
    pub cut: bool,
}

/// What the lane told a slot, in the order it happened: bytes received before a loss
/// belong to replies before the lost ones, bytes after it to commands written after.
#[derive(Debug)]
pub(crate) enum News {
    /// Reply bytes, in order.
    Replies(BytesMut),
    /// Replies lost with the connection.
    Lost(Lost),
}

/// A slot's news in order. Nearly always one piece of reply bytes (consecutive replies
/// join it), kept inline: delivering and taking it allocate nothing per command.
#[derive(Debug, Default)]
pub(crate) struct NewsList {
    first: Option<News>,
    rest: VecDeque<News>,
}

impl NewsList {
    /// Reply bytes after everything held: joined to the last piece when it is replies.
    fn push_replies(&mut self, bytes: BytesMut) {
        let last = match self.rest.back_mut() {
            Some(last) => Some(last),
            None => self.first.as_mut(),
        };
        match last {
            Some(News::Replies(inbox)) => inbox.unsplit(bytes),
            _ => self.push(News::Replies(bytes)),
        }
    }

    fn push(&mut self, news: News) {
        if self.first.is_none() {
            self.first = Some(news);
        } else {
            self.rest.push_back(news);
        }
    }

    fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }
}

impl IntoIterator for NewsList {
    type Item = News;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<News>, std::collections::vec_deque::IntoIter<News>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

/// What a slot holds for its session.
#[derive(Debug, Default)]
struct SlotState {
    news: NewsList,
    /// Reply bytes among `news`.
    unread: usize,
    /// Since when `unread` has been above the soft limit.
    over_soft_since: Option<Instant>,
    /// The client was found too slow: the session must end.
    slow: Option<SlowReader>,
    /// The session is gone (or slow): its replies are dropped as they arrive.
    dead: bool,
}

/// One session's place on a lane: its inbox and its wake-ups.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    /// Something new: replies, losses, the end.
    ready: WakeUp,
    /// The end only: the client was found too slow.
    ended: WakeUp,
}

impl Owner for Arc<Slot> {
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

impl Slot {
    /// A slot whose replies nobody reads (the lane's own handshake).
    fn sink() -> Arc<Slot> {
        let slot = Slot::default();
        slot.state.lock().expect("slot lock").dead = true;
        Arc::new(slot)
    }

    fn deliver(&self, bytes: BytesMut, limit: &UnreadLimit) {
        let mut st = self.state.lock().expect("slot lock");
        if st.dead {
            return;
        }
        let unread = st.unread + bytes.len();
        let mut verdict = None;
        if unread > limit.soft {
            let now = Instant::now();
            let since = *st.over_soft_since.get_or_insert(now);
            verdict = limit.judge(unread, since, now);
        }
        if verdict.is_some() {
            st.slow = verdict;
            st.dead = true;
            self.ended.notify();
            st.news.clear();
            st.unread = 0;
        } else {
            st.unread += bytes.len();
            st.news.push_replies(bytes);
        }
        drop(st);
        self.ready.notify();
    }

    fn lose(&self, replies: u32, cut: bool, error: &Bytes) {
        let mut st = self.state.lock().expect("slot lock");
        if st.dead {
            return;
        }
        st.news.push(News::Lost(Lost {
            replies,
            error: error.clone(),
            cut,
        }));
        drop(st);
        self.ready.notify();
    }
}

/// What a session takes from its slot at once.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// What happened, in order.
    pub news: NewsList,
    /// The client let more replies wait than its [`UnreadLimit`]: it must be disconnected.
    pub slow: Option<SlowReader>,
}

/// The lane's state shared with sessions.
#[derive(Debug, Default)]
struct LaneState {
    /// Commands submitted and not yet taken by the writer: the lane's own buffer, whose
    /// capacity goes back and forth with the writer's (see [`Lane::serve`]).
    out: BytesMut,
    router: Router<Arc<Slot>>,
}

/// One shared connection to Redis.
#[derive(Debug)]
pub(crate) struct Lane {
    state: Mutex<LaneState>,
    /// Wakes the lane task: something to write, or a session left.
    work: WakeUp,
    gate: Arc<ConnectGate>,
    settings: LaneSettings,
    sink: Arc<Slot>,
    started: AtomicBool,
    /// Sessions attached.
    links: AtomicUsize,
    /// The last attempt to connect failed: sessions answer as they do without Redis
    /// (fail-open keys, the reason) until an attempt succeeds.
    down: AtomicBool,
    /// Why, as a Redis error line without its `-`.
    down_error: Mutex<String>,
    /// Redis refused the lane's identity on the last connection.
    refused: AtomicBool,
    /// No session will attach any more (see [`Lane::retire`]).
    retired: AtomicBool,
    shutdown: watch::Receiver<bool>,
}

/// How long a lane that cannot connect waits between attempts while sessions are attached
/// (the gate's backoff spaces real attempts further; meanwhile they fail at once).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The most capacity a lane keeps in its two output buffers once a write is done: a burst
/// past it (many clients' long pipelines at once) is served, then its memory given back.
/// Sessions submit into one ([`LaneState::out`], under the lane's lock) while the task
/// writes the other (a [`WriteBatch`]); the two change places once a batch is written.
const KEPT_OUTPUT: usize = 1 << 20;

impl Lane {
    /// A lane that connects on its first submit.
    pub fn new(
        gate: Arc<ConnectGate>,
        settings: LaneSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Lane {
            state: Mutex::new(LaneState::default()),
            work: WakeUp::new(),
            gate,
            settings,
            sink: Slot::sink(),
            started: AtomicBool::new(false),
            links: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            down_error: Mutex::new(String::new()),
            refused: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            shutdown,
        }
    }

    /// A place on this lane for a new session; starts the lane's task on first use.
    pub fn attach(self: &Arc<Self>) -> LaneLink {
        self.links.fetch_add(1, Ordering::Relaxed);
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(self).run());
        }
        LaneLink {
            lane: Arc::clone(self),
            slot: Arc::new(Slot::default()),
        }
    }

    /// True while the lane cannot connect (see [`LaneLink::is_up`]).
    fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Sessions attached now.
    pub fn links(&self) -> usize {
        self.links.load(Ordering::Relaxed)
    }

    /// The lane task: connect when there is something to write, serve the connection until
    /// it is lost, fail what it owed, and again; ends once the proxy shuts down and no
    /// session is attached.
    async fn run(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let retry = self.down.load(Ordering::Relaxed) && self.links() > 0;
            if retry {
                tokio::time::sleep(RETRY_PAUSE).await;
            } else if !self.wait_for_work(&mut shutdown).await {
                self.started.store(false, Ordering::Release);
                return;
            }
            match self.gate.connect().await {
                Err(e) => {
                    tracing::debug!(error = %e, "shared upstream connection not opened");
                    let error = format!("ERR respguard: {e}");
                    self.lose_everything(&resp::error(&error));
                    *self.down_error.lock().expect("lane lock") = error;
                    self.down.store(true, Ordering::Relaxed);
                }
                Ok((mut stream, _place)) => {
                    self.down.store(false, Ordering::Relaxed);
                    let handshake = &self.settings.handshake;
                    let timeout = self.settings.handshake_timeout;
                    if let Err(failure) = give_identity(&mut stream, handshake, timeout).await {
                        self.on_identity_failure(failure);
                        continue;
                    }
                    self.refused.store(false, Ordering::Relaxed);
                    self.write_handshake_first();
                    let reason = self.serve(stream, &mut shutdown).await;
                    let Some(reason) = reason else {
                        self.started.store(false, Ordering::Release);
                        return;
                    };
                    if self.state.lock().expect("lane lock").router.owed() > 0 {
                        tracing::info!(reason, "shared upstream connection lost");
                        metrics::counter!("respguard_shared_connections_lost_total").increment(1);
                    }
                    let address = self.gate.address();
                    self.lose_everything(&resp::error(&format!(
                        "ERR respguard: upstream {address} connection lost before the reply ({reason})"
                    )));
                }
            }
        }
    }

    /// The connection could not be given the lane's identity: what was submitted fails
    /// with Redis's own refusal (`-WRONGPASS ...` for a wrong password, `-ERR DB index is
    /// out of range` for a database past `databases`), or with the connection-lost error; the lane is marked refused, so that
    /// the next client needing its identity gets new lanes ([`super::SharedConnections`]).
    fn on_identity_failure(&self, failure: IdentityFailure) {
        let error = match failure {
            IdentityFailure::Refused(reply) => {
                tracing::debug!(reply = %String::from_utf8_lossy(&reply).trim_end(), "shared connection's identity refused");
                self.refused.store(true, Ordering::Relaxed);
                reply
            }
            IdentityFailure::Lost(reason) => {
                let address = self.gate.address();
                resp::error(&format!(
                    "ERR respguard: upstream {address} connection lost before the reply ({reason})"
                ))
            }
        };
        self.lose_everything(&error);
    }

    /// Redis refused this lane's identity on its last connection.
    pub fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// No new session will attach: the task ends once none is attached and nothing is
    /// owed (its connection closes).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.work.notify();
    }

    /// Whether the task must go on: waits until something is submitted (true) or the
    /// proxy shuts down with no session attached (false).
    async fn wait_for_work(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        loop {
            if !self.state.lock().expect("lane lock").out.is_empty() {
                return true;
            }
            if self.finished(shutdown) {
                return false;
            }
            tokio::select! {
                _ = self.work.wait() => {}
                r = shutdown.changed() => {
                    if r.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    /// The proxy is shutting down (or the lane was retired) and no session is attached.
    fn finished(&self, shutdown: &watch::Receiver<bool>) -> bool {
        (*shutdown.borrow() || self.retired.load(Ordering::Relaxed)) && self.links() == 0
    }

    /// Put the lane's own `CLIENT SETNAME` before everything queued: its reply is dropped.
    fn write_handshake_first(&self) {
        let mut st = self.state.lock().expect("lane lock");
        let mut out = BytesMut::with_capacity(64 + st.out.len());
        resp::command(&mut out, &[b"CLIENT", b"SETNAME", LANE_NAME.as_bytes()]);
        out.extend_from_slice(&st.out);
        st.out = out;
        st.router.expect_first(&self.sink, 1);
    }

    /// Every reply owed, and every command not written yet, fails with `error`.
    fn lose_everything(&self, error: &Bytes) {
        let mut st = self.state.lock().expect("lane lock");
        st.out.clear();
        st.router
            .lose_all(|slot, replies, cut| slot.lose(replies, cut, error));
    }

    /// Serve an open connection: write what sessions submit, route what Redis answers.
    /// Returns why the connection ended, or `None` when the proxy shut down with no
    /// session left and nothing owed.
    async fn serve(
        &self,
        mut stream: Stream,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<String> {
        let mut input = ReadBuffer::new();
        let mut routed = Vec::new();
        let mut writing = WriteBatch::new(KEPT_OUTPUT);
        let mut watching = true;
        let mut silence = SilenceAlarm::new(self.settings.reply_timeout);
        loop {
            let owed = {
                let mut st = self.state.lock().expect("lane lock");
                if writing.is_empty() {
                    writing.swap_in(&mut st.out);
                }
                st.router.owed()
            };
            silence.owing(owed > 0);
            if owed == 0 && writing.is_empty() && self.finished(shutdown) {
                return None;
            }
            let flush = stream.wants_flush();
            input.prepare();
            let (mut rx, mut tx) = stream.halves();
            tokio::select! {
                biased;
                r = rx.read_buf(input.bytes_mut()) => match r {
                    Ok(0) => return Some("connection closed by Redis".into()),
                    Ok(n) => {
                        input.after_read(n);
                        silence.replied();
                        if let Err(e) = self.route(input.bytes_mut(), &mut routed) {
                            return Some(e);
                        }
                    }
                    Err(e) => return Some(e.to_string()),
                },
                r = tx.send(writing.pending()), if !writing.is_empty() || flush => match r {
                    Ok(n) => writing.wrote(n),
                    Err(e) => return Some(e.to_string()),
                },
                _ = self.work.wait(), if writing.is_empty() => {
                    // Let the other sessions woken in this tick submit too: one write then
                    // carries all their commands (with one session, there are none).
                    if self.links() > 1 {
                        tokio::task::yield_now().await;
                    }
                }
                timeout = std::future::poll_fn(|cx| silence.poll_silent_too_long(cx)),
                    if silence.watching() => {
                    metrics::counter!("respguard_upstream_reply_timeouts_total").increment(1);
                    return Some(format!("no reply within {timeout:?}, upstream.reply_timeout"));
                }
                r = shutdown.changed(), if watching => watching = r.is_ok(),
            }
        }
    }

    /// Hand what arrived to the slots it belongs to: the replies split among them under
    /// the lane's lock, then delivered (each slot's lock, each session woken) after it is
    /// released, so a woken session submitting its next command does not wait for it.
    /// `routed` is scratch space, kept between reads.
    fn route(
        &self,
        input: &mut BytesMut,
        routed: &mut Vec<(Arc<Slot>, BytesMut)>,
    ) -> Result<(), String> {
        let split = {
            let mut st = self.state.lock().expect("lane lock");
            st.router
                .route(input, |slot, bytes| routed.push((Arc::clone(slot), bytes)))
        };
        let limit = self.settings.unread;
        for (slot, bytes) in routed.drain(..) {
            slot.deliver(bytes, &limit);
        }
        split.map_err(|e| e.to_string())
    }
}

/// A session's attachment to a lane. Dropping it leaves the lane: replies still owed to
/// the session are dropped as they arrive.
#[derive(Debug)]
pub(crate) struct LaneLink {
    lane: Arc<Lane>,
    slot: Arc<Slot>,
}

impl LaneLink {
    /// Queue `bytes` (whole commands) for Redis, expecting `replies` replies for them.
    pub fn submit(&self, bytes: BytesMut, replies: u32) {
        let mut st = self.lane.state.lock().expect("lane lock");
        st.router.expect(&self.slot, replies);
        // The lane was woken by the submit that made the output non-empty.
        let wake = st.out.is_empty();
        // Copied into the lane's buffer, never adopted: a session's bytes taken as the
        // lane's output when it was empty made the next submit reallocate it.
        st.out.extend_from_slice(&bytes);
        drop(st);
        if wake {
            self.lane.work.notify();
        }
    }

    /// Everything the slot holds for the session, taken at once.
    pub fn take(&self) -> Taken {
        let mut st = self.slot.state.lock().expect("slot lock");
        st.unread = 0;
        st.over_soft_since = None;
        Taken {
            news: std::mem::take(&mut st.news),
            slow: st.slow,
        }
    }

    /// Resolves once the client was found too slow (a wake-up may be spurious); waited on
    /// instead of [`Self::ready`] while the session has no room for more replies.
    pub fn ended(&self) -> &WakeUp {
        &self.slot.ended
    }

    /// How many reply bytes the slot may hold untaken.
    pub fn unread_limit(&self) -> UnreadLimit {
        self.lane.settings.unread
    }

    /// False while the lane cannot reach Redis: the session then answers as it does with no
    /// connection ([`Self::down_error`]); the lane keeps trying on its own.
    #[inline]
    pub fn is_up(&self) -> bool {
        !self.lane.is_down()
    }

    /// Why the lane cannot reach Redis, as a Redis error line without its `-`.
    pub fn down_error(&self) -> String {
        self.lane.down_error.lock().expect("lane lock").clone()
    }

    /// Resolves once the slot may hold something new (a wake-up may be spurious).
    pub fn ready(&self) -> &WakeUp {
        &self.slot.ready
    }
}

impl Drop for LaneLink {
    fn drop(&mut self) {
        {
            let mut st = self.slot.state.lock().expect("slot lock");
            st.dead = true;
            st.news.clear();
        }
        self.lane.links.fetch_sub(1, Ordering::Relaxed);
        self.lane.work.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(replies: u32) -> News {
        News::Lost(Lost {
            replies,
            error: Bytes::from_static(b"-ERR lost\r\n"),
            cut: false,
        })
    }

    /// What `list` holds, as text: replies as their bytes, losses as `lost n`.
    fn shown(list: NewsList) -> Vec<String> {
        list.into_iter()
            .map(|news| match news {
                News::Replies(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                News::Lost(lost) => format!("lost {}", lost.replies),
            })
            .collect()
    }

    #[test]
    fn replies_join_the_last_piece_and_losses_keep_their_place() {
        let mut list = NewsList::default();
        list.push_replies(BytesMut::from(&b"+a\r\n"[..]));
        list.push_replies(BytesMut::from(&b"+b\r\n"[..]));
        assert!(list.rest.is_empty(), "one piece of replies is held inline");
        list.push(lost(2));
        list.push_replies(BytesMut::from(&b"+c\r\n"[..]));
        list.push_replies(BytesMut::from(&b"+d\r\n"[..]));
        list.push(lost(1));
        assert_eq!(
            shown(list),
            ["+a\r\n+b\r\n", "lost 2", "+c\r\n+d\r\n", "lost 1"]
        );
    }

    #[test]
    fn a_loss_first_is_followed_by_the_replies_after_it() {
        let mut list = NewsList::default();
        list.push(lost(3));
        list.push_replies(BytesMut::from(&b"+x\r\n"[..]));
        assert_eq!(shown(list), ["lost 3", "+x\r\n"]);
        let mut cleared = NewsList::default();
        cleared.push_replies(BytesMut::from(&b"+y\r\n"[..]));
        cleared.push(lost(1));
        cleared.clear();
        assert!(shown(cleared).is_empty());
    }
}
