//! One client connection and its own upstream connection: the proxy's hot path.
//!
//! A session owns two sockets, the client's (downstream) and Redis's (upstream), one to one,
//! so every piece of per-connection state (AUTH, SELECT, MULTI, WATCH, subscriptions,
//! CLIENT TRACKING, CLIENT REPLY, blocking) lives in Redis exactly as if the client were
//! connected to it directly.
//!
//! Both directions move at once in one task: requests are read, scanned and forwarded while
//! replies are read, matched and forwarded. Neither direction ever waits for the other, so a
//! client that writes a long pipeline before it reads cannot deadlock against Redis; each
//! direction's unwritten bytes are bounded (`proxy.output_buffer`) and, past the bound, the
//! session stops reading the side that feeds it, which pushes back on the sender as TCP does.
//!
//! The flow of one command: bytes from the client land in the request buffer, the
//! [`RequestScanner`] finds the command, the session records in the [`ReplyQueue`] what to do
//! with its reply and leaves the command's bytes in place; at the end of the read, everything
//! scanned moves to the upstream output buffer without a copy (`split_to`/`unsplit`) and is
//! written. Replies follow the same path back through the [`ReplyScanner`]. Only a command
//! the proxy changes or answers itself costs a copy.
//!
//! Once Redis accepts SYNC or PSYNC, the connection carries an RDB and a replication
//! stream rather than replies, and the session becomes a plain byte tunnel for the rest of
//! its life (see `Session::run_tunnel`).
//!
//! The session never decides policy; it carries out what the reply queue and the command
//! table say, and it is the only code that writes to either socket.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::transport::Stream;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::buffer::ReadBuffer;
use crate::command::{CommandInfo, CommandTable, Flags, Special};
use crate::config::Replication;
use crate::control::{Control, Policy};
use crate::guard::queue::QueueHandle;
use crate::guard::{find_keys, CommandView, ScriptAccess, Verdict};
use crate::identity::ClientIdentity;
use crate::reply_queue::{Disposition, Effect, Expect, HelloEffect, Matched, Pending, ReplyQueue};
use crate::scanner::reply::{ReplyScanner, ReplyStep};
use crate::scanner::request::{Limits, RequestScanner, Step, StreamStep};
use crate::telemetry::{CommandLatency, ProxyMetrics};
use crate::upstream::{ConnectGate, UpstreamSlot};
use crate::wire;

/// What every session shares: the command table, the upstream gate, the settings.
#[derive(Debug)]
pub struct Shared {
    /// Commands and their flags.
    pub table: Arc<CommandTable>,
    /// The gate in front of every upstream connection attempt.
    pub gate: Arc<ConnectGate>,
    /// Request scanner bounds.
    pub limits: Limits,
    /// Commands in flight per connection before the session stops reading.
    pub max_pending: usize,
    /// Unwritten bytes per direction before the session stops reading the other side.
    pub output_buffer: usize,
    /// How long in-flight replies may take once the client has gone or shutdown began.
    pub drain_timeout: Duration,
    /// How long Redis may stay silent while it owes replies (`upstream.reply_timeout`);
    /// `None` when the check is off.
    pub reply_timeout: Option<Duration>,
    /// What SYNC and PSYNC get (`proxy.replication`).
    pub replication: Replication,
    /// Pre-registered metric handles.
    pub metrics: ProxyMetrics,
    /// Calls and latency per command (`None` with `admin.metrics = false`).
    pub latency: Option<Arc<CommandLatency>>,
    /// The policy in force (guards, client authentication), its reloads, the `RESPGUARD`
    /// command and the refusal tally.
    pub control: Arc<Control>,
}

/// `CLIENT REPLY` mode, followed at send time because it decides how many replies come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    SkipNext,
}

/// Where the rest of a streamed command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamTo {
    Upstream,
    Discard,
}

/// Why a session ended; logged at debug level.
#[derive(Debug)]
pub enum End {
    /// The client closed its connection.
    ClientClosed,
    /// The client's socket failed.
    ClientError(std::io::Error),
    /// The client sent QUIT, or a protocol error closed the connection.
    Closed,
    /// Redis closed the connection or failed.
    UpstreamLost(String),
    /// The proxy is shutting down.
    Shutdown,
}

/// One client connection being proxied.
pub struct Session {
    shared: Arc<Shared>,
    client: Stream,
    upstream: Option<Stream>,
    /// The upstream connection's place under `upstream.max_connections`.
    upstream_slot: Option<UpstreamSlot>,
    /// Why the upstream is missing, for the error each command gets meanwhile.
    upstream_error: String,
    identity: ClientIdentity,
    /// The policy this session applies, and its generation: replaced at the next read
    /// after a reload.
    policy: Arc<Policy>,
    policy_generation: u64,
    /// The client authenticated to the proxy (always true without `[auth]` users).
    authenticated: bool,
    /// An AUTH the proxy accepted waits for the upstream connection to be opened (a client
    /// gets one only once it has authenticated).
    connect_for_auth: bool,
    /// A command that may change who the client is (AUTH, HELLO, CLIENT SETNAME, RESET) is
    /// in flight: the next command waits for its reply, so that guards and `RESPGUARD`
    /// judge it by the identity in force when Redis runs it.
    identity_pending: bool,
    /// Bytes from the client. `requests_ready` bytes at its front are scanned and waiting to
    /// move to `to_upstream`; the rest are not scanned yet.
    from_client: ReadBuffer,
    requests_ready: usize,
    /// Bytes from Redis; `replies_ready` bytes at its front are waiting to move to
    /// `to_client`, and `reply_start` is where the reply being scanned begins.
    from_upstream: ReadBuffer,
    replies_ready: usize,
    reply_start: usize,
    /// Whether the reply being scanned goes to the client (decided when it begins).
    reply_forwarded: Option<bool>,
    /// Some bytes of the reply being scanned already went to the client: if Redis goes
    /// away now, nothing more may be written (it would land inside that reply).
    reply_partly_sent: bool,
    to_upstream: BytesMut,
    to_client: BytesMut,
    requests: RequestScanner,
    replies: ReplyScanner,
    queue: ReplyQueue,
    reply_mode: ReplyMode,
    in_multi: bool,
    /// Commands scanned since the last metrics update.
    commands_in_batch: u64,
    /// The session's clock for command latency: read once per socket read, not per command.
    epoch: std::time::Instant,
    /// When the replies being scanned arrived (microseconds since `epoch`).
    replies_arrived_us: u64,
    /// Inside MULTI: commands queued so far, and the positions of those the proxy added.
    multi_queued: u32,
    multi_hidden: Vec<u32>,
    /// Inside MULTI: a queued command changes what the memory reading means (CONFIG SET,
    /// FLUSHALL, ...), so EXEC marks the reading stale.
    multi_memory_event: bool,
    /// What the Redis user may run for the guards, from the last probe.
    access: ScriptAccess,
    /// A probe of `access` is in flight: guarded writes that depend on it wait for it.
    probing: bool,
    /// A command is held back (unscanned) until the probe answers.
    waiting_for_probe: bool,
    /// Argument indices of the current command's keys (capacity kept).
    keys: Vec<usize>,
    /// Where guards write rewritten and extra commands (capacity kept).
    scratch: BytesMut,
    /// The followed queue the command being recorded pushes to, if any.
    tracked_queue: Option<QueueHandle>,
    /// Extra commands to send once the streamed command ends, and how many.
    after_stream: BytesMut,
    after_stream_hidden: u32,
    /// While an EXEC reply is filtered: the positions to leave out and the element now
    /// arriving.
    exec_filter: Option<ExecFilter>,
    streaming: Option<StreamTo>,
    /// The client socket is not read any more (it closed, or shutdown began); commands
    /// already read still go through.
    input_closed: bool,
    /// Client input is ignored from here on: QUIT was sent or the input was malformed.
    ignore_input: bool,
    /// Close once everything pending is written (QUIT, protocol error).
    close_when_flushed: bool,
    /// The client half-closed or shutdown began: finish what is in flight, then close.
    draining: Option<tokio::time::Instant>,
    /// The proxy is shutting down.
    shutting_down: bool,
    /// The reply watchdog (see [`Session::on_watchdog`]): created the first time replies
    /// are owed, armed while they are.
    watchdog: Option<Pin<Box<tokio::time::Sleep>>>,
    watchdog_armed: bool,
    /// When the watchdog last found a reason to wait (blocked, streaming, back-pressure),
    /// in microseconds since `epoch`: silence before it does not count.
    wait_excused_us: u64,
    /// Redis began a replication stream: from here on the session is a byte tunnel
    /// ([`Session::run_tunnel`]).
    tunnel: bool,
}

/// What the proxy does with a command before the guards (see [`Session::intercept`]).
enum Intercept {
    /// Not the proxy's own business: the guards decide.
    Pass,
    /// Answer with this reply; Redis never sees the command.
    Answer(Bytes),
    /// Send the scratch buffer's command instead.
    Replace,
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

/// The facts about a command the session acts on, copied out of the table.
#[derive(Debug, Clone, Copy)]
struct CommandFacts {
    id: u16,
    special: Special,
}

impl CommandFacts {
    fn of(info: &CommandInfo) -> Self {
        CommandFacts {
            id: info.id,
            special: info.special,
        }
    }
}

enum Event {
    ClientRead(std::io::Result<usize>),
    UpstreamRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    UpstreamWrote(std::io::Result<usize>),
    Shutdown,
    DrainExpired,
    WatchdogFired,
}

impl Session {
    /// A session for an accepted client. The upstream connection is opened in [`Self::run`].
    pub fn new(shared: Arc<Shared>, client: Stream, identity: ClientIdentity) -> Self {
        let limits = shared.limits;
        let max_pending = shared.max_pending;
        let policy_generation = shared.control.generation();
        let policy = shared.control.policy();
        let mut requests = RequestScanner::new(limits);
        requests.set_unauthenticated(policy.auth.required());
        Session {
            authenticated: !policy.auth.required(),
            connect_for_auth: false,
            identity_pending: false,
            policy,
            policy_generation,
            shared,
            client,
            upstream: None,
            upstream_slot: None,
            upstream_error: String::new(),
            identity,
            from_client: ReadBuffer::new(),
            requests_ready: 0,
            from_upstream: ReadBuffer::new(),
            replies_ready: 0,
            reply_start: 0,
            reply_forwarded: None,
            reply_partly_sent: false,
            to_upstream: BytesMut::new(),
            to_client: BytesMut::new(),
            requests,
            replies: ReplyScanner::new(),
            queue: ReplyQueue::new(max_pending),
            reply_mode: ReplyMode::On,
            in_multi: false,
            commands_in_batch: 0,
            epoch: std::time::Instant::now(),
            replies_arrived_us: 0,
            multi_queued: 0,
            multi_hidden: Vec::new(),
            multi_memory_event: false,
            access: ScriptAccess::Allowed,
            probing: false,
            waiting_for_probe: false,
            keys: Vec::new(),
            scratch: BytesMut::new(),
            tracked_queue: None,
            after_stream: BytesMut::new(),
            after_stream_hidden: 0,
            exec_filter: None,
            streaming: None,
            input_closed: false,
            ignore_input: false,
            close_when_flushed: false,
            draining: None,
            shutting_down: false,
            watchdog: None,
            watchdog_armed: false,
            wait_excused_us: 0,
            tunnel: false,
        }
    }

    /// Who the client is, as far as Redis has confirmed.
    pub fn identity(&self) -> &ClientIdentity {
        &self.identity
    }

    /// Proxy the connection until one side closes or shutdown completes.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> End {
        // Wait for shutdown with one future for the whole session, not one per event: each
        // new wait registers on the channel every session shares, a contended lock.
        let mut stop = std::pin::pin!(async move {
            let _ = shutdown.wait_for(|&stopping| stopping).await;
        });
        if self.authenticated {
            // Under `[auth]`, only once the client has authenticated.
            self.connect_upstream().await;
        }
        loop {
            if let Some(end) = self.finished() {
                return end;
            }
            let cap = self.shared.output_buffer;
            let want_client_read = !self.input_closed
                && !self.ignore_input
                && self.to_upstream.len() < cap
                && !self.queue.is_full()
                && !self.identity_pending
                && !self.queue.awaits_replication();
            let want_upstream_read = self.upstream.is_some() && self.to_client.len() < cap;
            let want_client_write = !self.to_client.is_empty() || self.client.wants_flush();
            let want_upstream_write = self
                .upstream
                .as_ref()
                .is_some_and(|u| !self.to_upstream.is_empty() || u.wants_flush());
            let shutting_down = self.shutting_down;
            let drain_deadline = self.draining;
            self.arm_watchdog();
            let watchdog_armed = self.watchdog_armed;
            if want_client_read {
                self.from_client.prepare();
            }
            if want_upstream_read {
                self.from_upstream.prepare();
            }
            let event = {
                let (mut client_rx, mut client_tx) = self.client.halves();
                let (mut up_rx, mut up_tx) = match self.upstream.as_mut() {
                    Some(u) => {
                        let (r, w) = u.halves();
                        (Some(r), Some(w))
                    }
                    None => (None, None),
                };
                let from_client = self.from_client.bytes_mut();
                let from_upstream = self.from_upstream.bytes_mut();
                let to_client = &self.to_client;
                let to_upstream = &self.to_upstream;
                let watchdog = &mut self.watchdog;
                tokio::select! {
                    r = client_rx.read_buf(from_client), if want_client_read => Event::ClientRead(r),
                    r = async { up_rx.as_mut().expect("upstream").read_buf(from_upstream).await },
                        if want_upstream_read => Event::UpstreamRead(r),
                    r = client_tx.send(to_client), if want_client_write => Event::ClientWrote(r),
                    r = async { up_tx.as_mut().expect("upstream").send(to_upstream).await },
                        if want_upstream_write => Event::UpstreamWrote(r),
                    _ = &mut stop, if !shutting_down => Event::Shutdown,
                    _ = async { tokio::time::sleep_until(drain_deadline.expect("deadline")).await },
                        if drain_deadline.is_some() => Event::DrainExpired,
                    _ = async { watchdog.as_mut().expect("armed").as_mut().await },
                        if watchdog_armed => Event::WatchdogFired,
                }
            };
            if let Some(end) = self.handle(event).await {
                return end;
            }
            if self.tunnel {
                return self.run_tunnel(stop.as_mut()).await;
            }
        }
    }

    async fn handle(&mut self, event: Event) -> Option<End> {
        match event {
            Event::ClientRead(Ok(0)) => {
                self.input_closed = true;
                // A command cut off by the close can never complete; Redis would drop such a
                // client at once, and so does the proxy.
                if self.queue.is_empty() && self.to_client.is_empty()
                    || self.requests.in_command()
                    || self.must_close_at_once()
                {
                    return Some(End::ClientClosed);
                }
                // Finish the replies in flight, as Redis does for what it already read.
                self.start_draining();
            }
            Event::ClientRead(Ok(n)) => {
                self.from_client.after_read(n);
                self.queue.set_clock(self.clock_us());
                self.follow_reloads();
                self.shared
                    .metrics
                    .client_bytes_received
                    .increment(n as u64);
                if self.upstream.is_none() && self.authenticated && !self.ignore_input {
                    self.reconnect_if_allowed().await;
                }
                self.on_client_input();
                while self.connect_for_auth {
                    self.connect_after_auth().await;
                    self.on_client_input();
                }
                self.flush_upstream();
                self.flush_client();
            }
            Event::ClientRead(Err(e)) | Event::ClientWrote(Err(e)) => {
                return Some(End::ClientError(e));
            }
            Event::UpstreamRead(Ok(0)) => return self.upstream_lost("connection closed by Redis"),
            Event::UpstreamRead(Ok(n)) => {
                self.from_upstream.after_read(n);
                self.replies_arrived_us = self.clock_us();
                self.shared
                    .metrics
                    .upstream_bytes_received
                    .increment(n as u64);
                if let Err(reason) = self.on_upstream_input() {
                    return self.upstream_lost(&reason);
                }
                self.flush_client();
                // Replies freed room in the queue: carry on with requests already read.
                self.on_client_input();
                self.flush_upstream();
            }
            Event::UpstreamRead(Err(e)) | Event::UpstreamWrote(Err(e)) => {
                return self.upstream_lost(&e.to_string());
            }
            Event::ClientWrote(Ok(n)) => {
                self.shared.metrics.client_bytes_sent.increment(n as u64);
                self.to_client.advance(n);
                if self.to_client.is_empty() {
                    // Drop the handle so the read buffer can reuse its memory.
                    self.to_client = BytesMut::new();
                }
            }
            Event::UpstreamWrote(Ok(n)) => {
                self.shared.metrics.upstream_bytes_sent.increment(n as u64);
                self.to_upstream.advance(n);
                if self.to_upstream.is_empty() {
                    self.to_upstream = BytesMut::new();
                }
            }
            Event::Shutdown => {
                // Commands the client already sent are still answered (see `finished`);
                // the drain timeout bounds how long that may take.
                self.shutting_down = true;
                if self.must_close_at_once() {
                    return Some(End::Shutdown);
                }
                self.start_draining();
            }
            Event::DrainExpired => return Some(End::Shutdown),
            Event::WatchdogFired => return self.on_watchdog(),
        }
        None
    }

    /// Arm the reply watchdog when replies are owed by Redis and it is not armed yet.
    /// While replies keep coming it stays armed with its first deadline, so a busy session
    /// touches the timer once per `reply_timeout`, not once per command.
    fn arm_watchdog(&mut self) {
        let Some(timeout) = self.shared.reply_timeout else {
            return;
        };
        if self.watchdog_armed || self.upstream.is_none() || self.queue.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        match &mut self.watchdog {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.watchdog = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.watchdog_armed = true;
    }

    /// The watchdog's deadline passed. Redis has timed out if it still owes replies, has
    /// sent nothing for `reply_timeout` since the oldest of those commands was read, and
    /// nothing excuses the wait: a blocking command, WAIT, subscribed mode or MONITOR, a
    /// command still streaming to Redis, or a client too slow to take its replies (then the
    /// proxy is the one not reading). Otherwise the watchdog re-arms for what is left.
    fn on_watchdog(&mut self) -> Option<End> {
        self.watchdog_armed = false;
        let timeout = self.shared.reply_timeout?;
        let front_received_us = self.queue.iter().next()?.received_us;
        self.upstream.as_ref()?;
        let now_us = self.clock_us();
        let excused = self.streaming == Some(StreamTo::Upstream)
            || self.to_client.len() >= self.shared.output_buffer
            || self.must_close_at_once()
            || self.queue.iter().any(|p| {
                let name = &*self.shared.table.by_id(p.command).name;
                name == "wait" || name == "waitaof"
            });
        if excused {
            self.wait_excused_us = now_us;
        }
        let silent_since = front_received_us
            .max(self.replies_arrived_us)
            .max(self.wait_excused_us);
        let timeout_us = timeout.as_micros() as u64;
        let silent_for = now_us.saturating_sub(silent_since);
        if !excused && silent_for >= timeout_us {
            self.shared.metrics.upstream_reply_timeouts.increment(1);
            tracing::warn!(
                client = %self.identity,
                waiting = self.queue.len(),
                "upstream sent nothing for {timeout:?} while replies were owed (upstream.reply_timeout); closing the connection"
            );
            return self.upstream_lost(&format!(
                "no reply within {timeout:?}, upstream.reply_timeout"
            ));
        }
        let left = Duration::from_micros(timeout_us - silent_for.min(timeout_us));
        let deadline = tokio::time::Instant::now() + left.max(Duration::from_millis(1));
        if let Some(sleep) = &mut self.watchdog {
            sleep.as_mut().reset(deadline);
            self.watchdog_armed = true;
        }
        None
    }

    /// The session's work is done when nothing is in flight and nothing is left to write.
    fn finished(&mut self) -> Option<End> {
        let replies_delivered = self.queue.is_empty() && self.to_client.is_empty();
        if self.close_when_flushed && replies_delivered {
            // QUIT or malformed input: whatever follows is never read.
            return Some(End::Closed);
        }
        let idle = replies_delivered && self.to_upstream.is_empty() && !self.requests.in_command();
        if self.shutting_down && idle {
            // Answer what the client already sent: only when its socket is empty is it
            // safe to close without cutting a command off. tokio's cached readiness can lag
            // behind the socket, so ask the kernel directly.
            return if self.client.has_unread_bytes() {
                None
            } else {
                Some(End::Shutdown)
            };
        }
        if self.draining.is_some() && idle {
            return Some(End::ClientClosed);
        }
        None
    }

    fn start_draining(&mut self) {
        if self.draining.is_none() {
            self.draining = Some(tokio::time::Instant::now() + self.shared.drain_timeout);
        }
    }

    /// A client that leaves while blocked, subscribed or monitoring is gone for good: close
    /// the upstream at once so Redis frees the connection, as it would for a direct client.
    fn must_close_at_once(&self) -> bool {
        self.queue.is_subscribed()
            || self.queue.is_monitoring()
            || self.queue.iter().any(|p| {
                p.effect == Effect::Monitor
                    || self
                        .shared
                        .table
                        .by_id(p.command)
                        .flags
                        .contains(Flags::BLOCKING)
            })
    }

    async fn connect_upstream(&mut self) {
        match self.shared.gate.connect().await {
            Ok((stream, slot)) => {
                self.upstream = Some(stream);
                self.upstream_slot = Some(slot);
                self.upstream_error.clear();
                self.probe_access();
            }
            Err(e) => {
                tracing::debug!(client = %self.identity, error = %e, "no upstream connection");
                self.upstream_error = format!("ERR respguard: {e}");
            }
        }
    }

    /// Open the upstream connection for the AUTH just accepted, the first time the client
    /// authenticates. If Redis cannot be reached, the AUTH gets the reason instead and the
    /// client stays unauthenticated.
    async fn connect_after_auth(&mut self) {
        self.connect_for_auth = false;
        self.connect_upstream().await;
        if self.upstream.is_none() {
            // Every command before it was answered by the proxy: only the AUTH is queued.
            self.to_upstream.clear();
            if let Some(auth) = self.queue.pop_front() {
                let reply = self.unavailable_reply();
                self.queue.push(Pending::local(auth.command, reply));
                self.emit_local_replies();
            }
        }
    }

    /// While the upstream is missing, try again between reads, when the gate allows it.
    async fn reconnect_if_allowed(&mut self) {
        if self.queue.is_empty() && !self.requests.in_command() && !self.shared.gate.is_open() {
            self.connect_upstream().await;
        }
    }

    /// Scan and route every whole command in the request buffer.
    fn on_client_input(&mut self) {
        loop {
            if self.ignore_input
                || self.waiting_for_probe
                || self.connect_for_auth
                || self.queue.awaits_replication()
            {
                break;
            }
            if self.identity_pending {
                if !self.queue.is_empty() {
                    break;
                }
                self.identity_pending = false;
            }
            if let Some(to) = self.streaming {
                let from = self.requests_ready;
                let step = self.requests.stream(self.from_client.bytes(), from);
                let (n, done) = match step {
                    StreamStep::More(n) => (n, false),
                    StreamStep::Done(n) => (n, true),
                    StreamStep::Error(e) => {
                        self.protocol_error(&e.to_string());
                        break;
                    }
                };
                match to {
                    StreamTo::Upstream => self.requests_ready += n,
                    StreamTo::Discard => self.discard_requests(n),
                }
                if !done {
                    break;
                }
                self.streaming = None;
                if self.after_stream_hidden > 0 {
                    // A guard's extra commands follow the streamed command they belong to.
                    self.move_requests();
                    self.to_upstream.extend_from_slice(&self.after_stream);
                    self.after_stream.clear();
                    let n = std::mem::take(&mut self.after_stream_hidden);
                    self.expect_hidden(n);
                }
                continue;
            }
            if self.queue.is_full() {
                break;
            }
            match self.requests.scan(self.from_client.bytes()) {
                Step::Incomplete => break,
                Step::Empty { end } => self.requests_ready = end,
                Step::Command { start, end, inline } => self.on_command(start, end, inline),
                Step::Streaming {
                    start,
                    head_end,
                    argc,
                    next_len,
                } => self.on_streamed_head(start, head_end, argc as usize, next_len),
                Step::Error(e) => {
                    self.protocol_error(&e.to_string());
                    break;
                }
            }
        }
        self.move_requests();
        // One shared-counter update per read, not per command.
        if self.commands_in_batch > 0 {
            self.shared
                .metrics
                .commands
                .increment(self.commands_in_batch);
            self.commands_in_batch = 0;
        }
    }

    /// What the command table says of the command just scanned (with its subcommand).
    fn lookup_current(&self, inline: bool) -> CommandFacts {
        let src: &[u8] = if inline {
            self.requests.inline_bytes()
        } else {
            self.from_client.bytes()
        };
        let args = self.requests.args();
        let name = args.first().map(|r| &src[r.clone()]).unwrap_or_default();
        let sub = args.get(1).map(|r| &src[r.clone()]).unwrap_or_default();
        let table: &CommandTable = &self.shared.table;
        let info = if args.len() > 1 {
            table.lookup(&[name, sub])
        } else {
            table.lookup(&[name])
        };
        CommandFacts::of(info)
    }

    fn on_command(&mut self, start: usize, end: usize, inline: bool) {
        let info = self.lookup_current(inline);
        if self.hold_for_probe(info.id, start) {
            return;
        }
        self.commands_in_batch += 1;
        let intercept = match self.intercept(&info, inline) {
            Intercept::Pass if info.special == Special::Sync => self.on_sync(),
            other => other,
        };
        if self.upstream.is_none()
            && !self.connect_for_auth
            && !matches!(intercept, Intercept::Answer(_))
        {
            let reply = self
                .fail_open_reply(info.id, inline)
                .unwrap_or_else(|| self.unavailable_reply());
            self.answer_locally(info.id, reply, start, end);
            return;
        }
        let size = (end - start) as u64;
        let verdict = match intercept {
            Intercept::Answer(reply) => Verdict::Answer(reply),
            Intercept::Replace => Verdict::Rewrite {
                replacement: Some(self.scratch.len()),
                hidden: 0,
            },
            Intercept::Pass if self.guards_apply(info.id, size) => {
                let argc = self.requests.args().len();
                let wire = if inline {
                    None
                } else {
                    crate::guard::wire_args(self.from_client.bytes(), start, end)
                };
                self.guard_verdict(info.id, inline, argc, None, size, wire)
            }
            Intercept::Pass => Verdict::Forward,
        };
        let (replacement, hidden) = match verdict {
            Verdict::Forward | Verdict::Track(_) => (None, 0),
            Verdict::Rewrite {
                replacement,
                hidden,
            } => (replacement, hidden),
            Verdict::Answer(reply) | Verdict::Refuse(reply) => {
                if reply.first() == Some(&b'-') {
                    self.shared.control.refusals.record(&self.identity);
                }
                self.answer_locally(info.id, reply, start, end);
                if self.in_multi {
                    self.abort_transaction();
                }
                return;
            }
        };
        let is_reset = info.special == Special::Reset;
        let changes_user = match info.special {
            Special::Auth => true,
            Special::Hello => self.any_arg_is(inline, b"auth"),
            _ => false,
        };
        self.push_for(info, inline);
        if let Some(len) = replacement {
            self.discard_requests(end - start);
            self.to_upstream.extend_from_slice(&self.scratch[..len]);
        } else if inline {
            // Redis would parse the inline form the same way; send the exact arguments.
            self.discard_requests(end - start);
            self.to_upstream
                .extend_from_slice(self.requests.inline_bytes());
        } else {
            self.requests_ready = end;
        }
        if hidden > 0 {
            self.move_requests();
            let from = replacement.unwrap_or(0);
            self.to_upstream.extend_from_slice(&self.scratch[from..]);
            self.expect_hidden(hidden);
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

    /// Whether an argument of the command just scanned (the name aside) is `word`, in any
    /// case.
    fn any_arg_is(&self, inline: bool, word: &[u8]) -> bool {
        let src: &[u8] = if inline {
            self.requests.inline_bytes()
        } else {
            self.from_client.bytes()
        };
        self.requests.args()[1..]
            .iter()
            .any(|r| src[r.clone()].eq_ignore_ascii_case(word))
    }

    /// Send the access probe ([`crate::guard::PROBE`]), its reply hidden, when a guard may
    /// act as the user and the probe's reply will come back on its own (not inside MULTI,
    /// under CLIENT REPLY OFF/SKIP, or where Redis refuses EVAL: subscribed, MONITOR).
    fn probe_access(&mut self) {
        let can_probe = self.upstream.is_some()
            && self.policy.guards.probes_access()
            && !self.in_multi
            && self.reply_mode == ReplyMode::On
            && (self.queue.is_resp3() || !self.queue.is_subscribed())
            && !self.queue.is_monitoring();
        if !can_probe {
            return;
        }
        self.move_requests();
        self.to_upstream.extend_from_slice(crate::guard::PROBE);
        let mut probe = Pending::hidden(self.shared.table.unknown().id);
        probe.effect = Effect::AccessProbe;
        self.queue.push(probe);
        self.probing = true;
    }

    /// Hold the command starting at `start` back while a probe is in flight and the guards
    /// need its answer to judge it: it is scanned again once the probe has answered.
    fn hold_for_probe(&mut self, command: u16, start: usize) -> bool {
        if !self.probing || !self.policy.guards.needs_access(command) {
            return false;
        }
        self.requests.unscan(start);
        self.waiting_for_probe = true;
        true
    }

    /// The probe answered: guarded writes may go on.
    fn on_access_probe(&mut self, reply: &crate::scanner::reply::ReplyInfo) {
        let is_error = reply.kind == crate::scanner::reply::ReplyKind::Error;
        self.access = ScriptAccess::from_probe_reply(is_error, reply.last_int);
        self.probing = false;
        self.waiting_for_probe = false;
        if self.access != ScriptAccess::Allowed {
            tracing::debug!(client = %self.identity, access = ?self.access, "the Redis user may not run what the TTL guard sends");
        }
    }

    /// The head of a command too large to hold: decide now, then stream or discard the rest.
    fn on_streamed_head(
        &mut self,
        start: usize,
        head_end: usize,
        argc: usize,
        next_len: Option<u64>,
    ) {
        let info = self.lookup_current(false);
        if self.hold_for_probe(info.id, start) {
            return;
        }
        self.commands_in_batch += 1;
        if self.upstream.is_none() && self.authenticated {
            self.answer_locally(info.id, self.unavailable_reply(), start, head_end);
            self.streaming = Some(StreamTo::Discard);
            return;
        }
        let size = (head_end - start) as u64 + next_len.map_or(0, |n| n + 2);
        let verdict = if self.policy.auth.required()
            && matches!(info.special, Special::Auth | Special::Hello)
        {
            // Credentials too large to hold match no `[auth]` user; never sent to Redis.
            Verdict::Refuse(wire::error(crate::auth::WRONGPASS))
        } else if !self.authenticated {
            // Too large to hold, so never one the proxy answers itself: refused unread.
            Verdict::Refuse(wire::error(crate::auth::NOAUTH))
        } else if self.guards_apply(info.id, size) {
            let wire = crate::guard::wire_args(self.from_client.bytes(), start, head_end);
            self.guard_verdict(
                info.id,
                false,
                argc,
                Some(next_len.unwrap_or(0)),
                size,
                wire,
            )
        } else {
            Verdict::Forward
        };
        match verdict {
            Verdict::Answer(reply) | Verdict::Refuse(reply) => {
                if reply.first() == Some(&b'-') {
                    self.shared.control.refusals.record(&self.identity);
                }
                self.answer_locally(info.id, reply, start, head_end);
                if self.in_multi {
                    self.abort_transaction();
                }
                self.streaming = Some(StreamTo::Discard);
            }
            Verdict::Forward | Verdict::Track(_) | Verdict::Rewrite { .. } => {
                let mut new_head = None;
                if let Verdict::Rewrite {
                    replacement,
                    hidden,
                } = verdict
                {
                    // A replacement is a new head for the rest, which streams unchanged;
                    // extra commands follow once the command has passed.
                    new_head = replacement;
                    let from = replacement.unwrap_or(0);
                    self.after_stream.clear();
                    self.after_stream.extend_from_slice(&self.scratch[from..]);
                    self.after_stream_hidden = hidden;
                }
                self.push_for(info, false);
                match new_head {
                    Some(len) => {
                        self.discard_requests(head_end - start);
                        self.to_upstream.extend_from_slice(&self.scratch[..len]);
                    }
                    None => self.requests_ready = head_end,
                }
                self.streaming = Some(StreamTo::Upstream);
            }
        }
    }

    /// Whether the guards look at this command. Not while the connection is in RESP2
    /// subscribed mode or MONITOR, where Redis refuses writes and reply counts are Redis's;
    /// nor when no guard that wants it may act now (the shed guard while memory is low).
    #[inline]
    fn guards_apply(&self, command: u16, size: u64) -> bool {
        let guards = &self.policy.guards;
        guards.wants(command)
            && (self.queue.is_resp3() || !self.queue.is_subscribed())
            && !self.queue.is_monitoring()
            && guards.engaged(command, size)
    }

    /// While Redis is unreachable: the empty-cache answer for a command on fail-open keys.
    fn fail_open_reply(&mut self, command: u16, inline: bool) -> Option<Bytes> {
        let fail_open = self.policy.guards.fail_open()?;
        if !fail_open.covers(command) {
            return None;
        }
        let info = self.shared.table.by_id(command);
        let src: &[u8] = if inline {
            self.requests.inline_bytes()
        } else {
            self.from_client.bytes()
        };
        let args = self.requests.args();
        let argc = args.len();
        find_keys(info, src, args, argc, &mut self.keys);
        let view = CommandView {
            src,
            args,
            keys: &self.keys,
            info,
            argc,
            streaming: None,
            access: self.access,
            size: 0,
            wire: None,
        };
        fail_open.answer(&view, &self.identity, self.queue.is_resp3())
    }

    /// Run the guards on the command just scanned. `streaming` is the declared length of the
    /// argument being streamed, for a command too large to hold.
    fn guard_verdict(
        &mut self,
        command: u16,
        inline: bool,
        argc: usize,
        streaming: Option<u64>,
        size: u64,
        wire: Option<std::ops::Range<usize>>,
    ) -> Verdict {
        let info = self.shared.table.by_id(command);
        let src: &[u8] = if inline {
            self.requests.inline_bytes()
        } else {
            self.from_client.bytes()
        };
        let args = self.requests.args();
        find_keys(info, src, args, argc, &mut self.keys);
        let view = CommandView {
            src,
            args,
            keys: &self.keys,
            info,
            argc,
            streaming,
            access: self.access,
            size,
            wire,
        };
        let mut tracked = None;
        let verdict =
            self.policy
                .guards
                .check(&view, &self.identity, &mut self.scratch, &mut tracked);
        // A push inside MULTI is answered QUEUED; its length arrives inside EXEC's array.
        self.tracked_queue = tracked.filter(|_| !self.in_multi);
        verdict
    }

    /// Expect the replies of `n` commands the proxy added, which the client must not see.
    fn expect_hidden(&mut self, n: u32) {
        let id = self.shared.table.unknown().id;
        for _ in 0..n {
            if self.in_multi {
                // It is queued: remember its place so EXEC's array can leave it out.
                self.multi_hidden.push(self.multi_queued);
                self.multi_queued += 1;
            }
            if self.reply_mode == ReplyMode::On {
                self.queue.push(Pending::hidden(id));
            }
        }
    }

    /// A command refused inside MULTI must fail the transaction as a queue-time error does
    /// in Redis (EXEC answers EXECABORT): send Redis a command it will reject at queue time,
    /// and hide its error.
    fn abort_transaction(&mut self) {
        self.move_requests();
        self.to_upstream
            .extend_from_slice(b"*1\r\n$32\r\nRESPGUARD.REFUSED-IN-TRANSACTION\r\n");
        if self.reply_mode == ReplyMode::On {
            let id = self.shared.table.unknown().id;
            self.queue.push(Pending::hidden(id));
        }
    }

    /// Record what to do with the replies of the command just scanned, following the
    /// connection state that decides how many replies it gets.
    fn push_for(&mut self, info: CommandFacts, inline: bool) {
        let src: &[u8] = if inline {
            self.requests.inline_bytes()
        } else {
            self.from_client.bytes()
        };
        let args = self.requests.args();
        let arg = |i: usize| args.get(i).map(|r| &src[r.clone()]);
        let argc = args.len();

        let mut pending = Pending::forward(info.id);
        if let Some(q) = self.tracked_queue.take() {
            pending.effect = Effect::QueueDepth(q);
        }
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
            self.multi_memory_event |= info.special == Special::MemoryEvent;
        }
        let skip_this = self.reply_mode == ReplyMode::SkipNext;
        if skip_this {
            self.reply_mode = ReplyMode::On;
        }
        let mut replies = self.reply_mode == ReplyMode::On && !skip_this;
        if !queued {
            match info.special {
                Special::None => {}
                Special::Subscribe(_) if argc >= 2 => {
                    pending.expect = Expect::Confirmations((argc - 1) as u32)
                }
                Special::Unsubscribe(kind) => {
                    pending.expect = if argc >= 2 {
                        Expect::Confirmations((argc - 1) as u32)
                    } else {
                        Expect::UnsubscribeAll(kind)
                    }
                }
                Special::Subscribe(_) => {}
                Special::Hello => {
                    pending.effect = hello_effect(args.len(), &arg);
                }
                Special::Auth => {
                    let user = if argc >= 3 {
                        arg(1)
                    } else {
                        Some(&b"default"[..])
                    };
                    if let Some(u) = user {
                        pending.effect = Effect::Auth(Bytes::copy_from_slice(u));
                    }
                }
                Special::ClientSetName => {
                    if let Some(n) = arg(2) {
                        pending.effect = Effect::SetName(Bytes::copy_from_slice(n));
                    }
                }
                Special::ClientSetInfo => {
                    if let (Some(attr), Some(v)) = (arg(2), arg(3)) {
                        if attr.eq_ignore_ascii_case(b"lib-name") {
                            pending.effect = Effect::SetLibName(Bytes::copy_from_slice(v));
                        }
                    }
                }
                Special::ClientReply if argc == 3 => {
                    let mode = arg(2).unwrap_or_default();
                    if mode.eq_ignore_ascii_case(b"on") {
                        self.reply_mode = ReplyMode::On;
                        replies = true;
                    } else if mode.eq_ignore_ascii_case(b"off") {
                        self.reply_mode = ReplyMode::Off;
                        replies = false;
                    } else if mode.eq_ignore_ascii_case(b"skip") {
                        if self.reply_mode != ReplyMode::Off {
                            self.reply_mode = ReplyMode::SkipNext;
                        }
                        replies = false;
                    }
                }
                Special::ClientReply => {}
                Special::Monitor => pending.effect = Effect::Monitor,
                Special::Reset => {
                    pending.effect = Effect::Reset;
                    self.reply_mode = ReplyMode::On;
                    self.in_multi = false;
                    self.multi_hidden.clear();
                    replies = true;
                }
                Special::Quit => {
                    pending.effect = Effect::Quit;
                    // Redis closes after QUIT and reads nothing more.
                    self.ignore_input = true;
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
                        self.policy.guards.pressure().mark_stale();
                        pending.effect = Effect::MemoryEvent;
                    }
                    self.in_multi = false;
                }
                Special::Discard => {
                    self.in_multi = false;
                    self.multi_hidden.clear();
                    self.multi_memory_event = false;
                }
                Special::Watch => {}
                Special::MemoryEvent => {
                    // Stale from now (for writes pipelined behind it) and again once Redis
                    // has applied it (so the monitor's next poll sees the change).
                    self.policy.guards.pressure().mark_stale();
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
    }

    /// After RESET, Redis has forgotten the proxy's AUTH and SELECT: send them again, hidden.
    fn send_handshake(&mut self) {
        let shared = Arc::clone(&self.shared);
        let (bytes, replies) = shared.gate.handshake();
        if replies == 0 {
            return;
        }
        self.move_requests();
        self.to_upstream.extend_from_slice(bytes);
        // RESET has just ended any MULTI and turned replies back on.
        self.expect_hidden(replies as u32);
    }

    fn unavailable_reply(&self) -> Bytes {
        wire::error(&self.upstream_error)
    }

    /// Answer the command in `start..end` without sending it upstream.
    fn answer_locally(&mut self, command: u16, reply: Bytes, start: usize, end: usize) {
        debug_assert_eq!(start, self.requests_ready);
        self.discard_requests(end - start);
        match self.reply_mode {
            ReplyMode::On => {
                self.queue.push(Pending::local(command, reply));
                self.emit_local_replies();
            }
            // Under CLIENT REPLY OFF, Redis would send nothing for this command.
            ReplyMode::Off => {}
            // This command's reply is the one the client asked to skip. Redis, which never
            // sees it, would skip the next one instead: give it a PING to skip.
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                if self.upstream.is_some() {
                    self.to_upstream.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
                }
            }
        }
    }

    /// Malformed input: Redis answers the error and closes the connection.
    fn protocol_error(&mut self, message: &str) {
        tracing::debug!(client = %self.identity, error = message, "protocol error from client");
        self.shared.metrics.client_protocol_errors.increment(1);
        self.move_requests();
        let id = self.shared.table.unknown().id;
        self.queue
            .push(Pending::local(id, wire::error(&format!("ERR {message}"))));
        self.emit_local_replies();
        self.ignore_input = true;
        self.close_when_flushed = true;
    }

    /// Move the scanned, unchanged requests to the upstream output, without copying when
    /// the output is empty.
    fn move_requests(&mut self) {
        if self.requests_ready > 0 {
            let chunk = self.from_client.split_to(self.requests_ready);
            self.to_upstream.unsplit(chunk);
            self.requests.rebase(self.requests_ready);
            self.requests_ready = 0;
        }
    }

    /// Drop `n` request bytes that follow the ready ones (which must already be moved).
    fn discard_requests(&mut self, n: usize) {
        self.move_requests();
        self.from_client.discard(n);
        self.requests.rebase(n);
    }

    /// Scan the replies received, forwarding or hiding each and applying what they change.
    fn on_upstream_input(&mut self) -> Result<(), String> {
        loop {
            self.emit_local_replies();
            if self.reply_forwarded.is_none() {
                // A reply begins here: decide from its first byte whether it is forwarded.
                let Some(&first) = self.from_upstream.bytes().get(self.reply_start) else {
                    break;
                };
                if self.queue.starts_replication(first) {
                    self.start_tunnel();
                    return Ok(());
                }
                self.reply_forwarded = Some(self.queue.forwards_reply_starting_with(first));
                if first != b'>' {
                    if let Some(hidden) = self.queue.exec_filter_at_head() {
                        self.exec_filter = Some(ExecFilter {
                            hidden,
                            element: None,
                        });
                        self.replies.report_elements(true);
                    }
                }
            }
            let step = self
                .replies
                .scan(self.from_upstream.bytes())
                .map_err(|e| format!("malformed reply from Redis: {e}"))?;
            match step {
                ReplyStep::Partial(upto) => {
                    self.keep_or_drop_reply_bytes(upto);
                    break;
                }
                ReplyStep::Header { end, count } => {
                    // EXEC's array, filtered: a new header with the proxy's commands removed.
                    let hidden = self.exec_filter.as_ref().map_or(0, |f| f.hidden.len());
                    self.drop_replies(self.reply_start, end);
                    self.reply_partly_sent = true;
                    crate::guard::encode_header(
                        &mut self.to_client,
                        (count as usize).saturating_sub(hidden),
                    );
                    if let Some(f) = self.exec_filter.as_mut() {
                        f.element = Some(0);
                    }
                }
                ReplyStep::Element(end) => {
                    self.keep_or_drop_reply_bytes(end);
                    if let Some(f) = self.exec_filter.as_mut() {
                        f.element = f.element.map(|i| i + 1);
                    }
                }
                ReplyStep::Done(end) => {
                    self.keep_or_drop_reply_bytes(end);
                    self.reply_partly_sent = false;
                    self.exec_filter = None;
                    let info = *self.replies.info();
                    let forwarded = self.reply_forwarded.take() == Some(true);
                    let matched = self.queue.on_reply(&info);
                    debug_assert!(
                        !matches!(&matched, Matched::Reply { disposition, .. }
                            if (*disposition == Disposition::Hide) == forwarded),
                        "a reply's disposition changed while it streamed"
                    );
                    if let Matched::Reply {
                        finished: Some(p), ..
                    } = matched
                    {
                        if p.disposition != Disposition::Hide {
                            self.record_latency(&p, self.replies_arrived_us);
                        }
                        if p.effect == Effect::AccessProbe {
                            self.on_access_probe(&info);
                        } else if info.kind != crate::scanner::reply::ReplyKind::Error {
                            self.apply_effect(p.effect, &info);
                        }
                    }
                }
            }
        }
        self.move_replies();
        Ok(())
    }

    /// The reply bytes scanned since the last piece, up to `upto`, go to the client or are
    /// dropped: by the reply's fate, or, in a filtered EXEC array, by the element's.
    fn keep_or_drop_reply_bytes(&mut self, upto: usize) {
        let keep = self.reply_forwarded == Some(true)
            && self.exec_filter.as_ref().is_none_or(|f| f.keeps_current());
        if keep {
            self.reply_partly_sent |= upto > self.reply_start;
            self.replies_ready = upto;
        } else {
            self.drop_replies(self.reply_start, upto);
        }
        self.reply_start = self.replies_ready;
    }

    fn apply_effect(&mut self, effect: Effect, reply: &crate::scanner::reply::ReplyInfo) {
        match effect {
            Effect::QueueDepth(q) => {
                if let Some(depth) = reply.last_int {
                    q.record(depth);
                }
            }
            Effect::None | Effect::Monitor | Effect::AccessProbe | Effect::Replication => {}
            Effect::MemoryEvent => self.policy.guards.pressure().mark_stale(),
            Effect::Hello(hello) => {
                let HelloEffect { user, name, .. } = *hello;
                if let Some(u) = user {
                    self.identity.user = Some(u);
                    self.set_authenticated(true);
                }
                if let Some(n) = name {
                    self.identity.name = Some(n);
                }
            }
            Effect::Auth(user) => {
                self.identity.user = Some(user);
                // Under `[auth]`, an AUTH reaches Redis only with the credentials of the
                // user the proxy accepted: Redis's +OK completes the authentication.
                self.set_authenticated(true);
            }
            Effect::SetName(name) => self.identity.name = Some(name),
            Effect::SetLibName(lib) => self.identity.lib_name = Some(lib),
            Effect::Reset => self.identity.reset(),
            Effect::Quit => self.close_when_flushed = true,
        }
    }

    /// Send every local answer now at the head of the queue, after the replies before it.
    fn emit_local_replies(&mut self) {
        while let Some(p) = self.queue.pop_local() {
            // Behind replies from Redis, a local answer waited for them; first in the
            // queue, it is answered as the command is read.
            let now = self.replies_arrived_us.max(p.received_us);
            self.record_latency(&p, now);
            self.move_replies();
            if let Disposition::Local(reply) = p.disposition {
                self.to_client.extend_from_slice(&reply);
            }
        }
    }

    /// Microseconds since the session started.
    fn clock_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Count a command answered at `now_us` in its latency histogram.
    fn record_latency(&self, p: &Pending, now_us: u64) {
        if let Some(latency) = &self.shared.latency {
            latency.record(p.command, now_us.saturating_sub(p.received_us));
        }
    }

    /// Pick up the policy of a reload: commands read from now on are judged by it.
    fn follow_reloads(&mut self) {
        let generation = self.shared.control.generation();
        if generation != self.policy_generation {
            self.policy = self.shared.control.policy();
            self.policy_generation = generation;
            if !self.policy.auth.required() {
                self.set_authenticated(true);
            }
        }
    }

    /// Whether the client has authenticated to the proxy; until it has, the request
    /// scanner applies Redis's bounds for unauthenticated clients.
    fn set_authenticated(&mut self, authenticated: bool) {
        self.authenticated = authenticated;
        self.requests.set_unauthenticated(!authenticated);
    }

    /// The arguments of the command just scanned, copied (only for the proxy's own
    /// commands and authentication, never on the guarded path).
    fn current_args(&self, inline: bool) -> Vec<Vec<u8>> {
        let src: &[u8] = if inline {
            self.requests.inline_bytes()
        } else {
            self.from_client.bytes()
        };
        self.requests
            .args()
            .iter()
            .map(|r| src[r.clone()].to_vec())
            .collect()
    }

    /// What the proxy itself does with a command before the guards: its `RESPGUARD`
    /// command, and client authentication when `[auth]` lists users. Two comparisons for
    /// any other command.
    fn intercept(&mut self, info: &CommandFacts, inline: bool) -> Intercept {
        let unknown = info.id == self.shared.table.unknown().id;
        let auth = self.policy.auth.required();
        let auth_command = matches!(
            info.special,
            Special::Auth | Special::Hello | Special::Reset
        );
        if !unknown && (!auth || self.authenticated && !auth_command) {
            return Intercept::Pass;
        }
        let argv = self.current_args(inline);
        let is_respguard = unknown
            && argv
                .first()
                .is_some_and(|a| a.eq_ignore_ascii_case(b"respguard"));
        if auth && !self.authenticated && !is_respguard {
            // Redis refuses an unknown command or a wrong argument count before it asks
            // for authentication.
            if let Some(error) = self.shared.table.rejection(&argv) {
                return Intercept::Answer(wire::error(&error));
            }
        }
        if auth
            && !self.authenticated
            && !matches!(
                info.special,
                Special::Auth | Special::Hello | Special::Quit | Special::Reset
            )
        {
            return Intercept::Answer(wire::error(crate::auth::NOAUTH));
        }
        if auth && !self.authenticated && self.upstream.is_none() {
            // No upstream connection before authentication: answer as Redis would.
            match info.special {
                Special::Quit => {
                    self.ignore_input = true;
                    self.close_when_flushed = true;
                    return Intercept::Answer(Bytes::from_static(b"+OK\r\n"));
                }
                Special::Reset => return Intercept::Answer(Bytes::from_static(b"+RESET\r\n")),
                _ => {}
            }
        }
        if is_respguard {
            if self.in_multi {
                return Intercept::Answer(wire::error(
                    "ERR respguard: RESPGUARD commands cannot be queued in MULTI",
                ));
            }
            let args: Vec<&[u8]> = argv[1..].iter().map(|a| a.as_slice()).collect();
            return Intercept::Answer(self.shared.control.command(&args, &self.identity));
        }
        if !auth {
            return Intercept::Pass;
        }
        match info.special {
            Special::Auth => self.authenticate(&argv, None),
            Special::Hello => {
                // HELLO [protover [AUTH user password] [SETNAME name]]
                let at = (2..argv.len().saturating_sub(2))
                    .find(|&i| argv[i].eq_ignore_ascii_case(b"auth"));
                match at {
                    Some(i) => self.authenticate(&argv[i..i + 3], Some((&argv, i))),
                    None if self.authenticated => Intercept::Pass,
                    None => Intercept::Answer(wire::error(
                        "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                    )),
                }
            }
            Special::Reset => {
                // Redis forgets who the connection was; so does the proxy.
                self.set_authenticated(false);
                Intercept::Pass
            }
            _ => Intercept::Pass,
        }
    }

    /// Check `AUTH [user] password` (`auth`, the command's arguments or HELLO's AUTH
    /// clause) against `[auth]`. Accepted: the command is rewritten to carry the Redis
    /// credentials the user is mapped to (`upstream_user`, or for a user without one the
    /// `upstream.url` user, which configuration allows only when the URL holds no
    /// password), and the client counts as authenticated once Redis answers it. The
    /// upstream connection is opened then if the client had none. `hello` is the whole
    /// HELLO command and the AUTH clause's position.
    fn authenticate(&mut self, auth: &[Vec<u8>], hello: Option<(&[Vec<u8>], usize)>) -> Intercept {
        let (name, password): (&[u8], &[u8]) = match auth.len() {
            2 => (b"default", &auth[1]),
            3 => (&auth[1], &auth[2]),
            _ => {
                return Intercept::Answer(wire::error(
                    "ERR wrong number of arguments for 'auth' command",
                ))
            }
        };
        if self.in_multi {
            return Intercept::Answer(wire::error(
                "ERR respguard: AUTH cannot be queued in MULTI when respguard authenticates clients",
            ));
        }
        let Some(user) = self.policy.auth.check(name, password).cloned() else {
            tracing::info!(client = %self.identity, user = %String::from_utf8_lossy(name), "proxy authentication failed");
            return Intercept::Answer(wire::error(crate::auth::WRONGPASS));
        };
        let target = self.shared.gate.target();
        // The Redis credentials this user's commands run with. Without a password in the
        // URL the proxy runs as Redis's `default` user, which then has none (`nopass`) and
        // accepts any.
        let (u, p): (&[u8], &[u8]) = match (&user.upstream, &target.password) {
            (Some((u, p)), _) => (u, p),
            (None, Some(p)) => (
                target.username.as_deref().unwrap_or("default").as_bytes(),
                p.as_bytes(),
            ),
            (None, None) => (b"default", b""),
        };
        self.scratch.clear();
        match hello {
            None => wire::command(&mut self.scratch, &[b"AUTH", u, p]),
            Some((argv, at)) => {
                let mut out: Vec<&[u8]> = Vec::with_capacity(argv.len());
                out.extend(argv[..at].iter().map(|a| a.as_slice()));
                out.extend([&b"AUTH"[..], u, p]);
                out.extend(argv[at + 3..].iter().map(|a| a.as_slice()));
                wire::command(&mut self.scratch, &out);
            }
        }
        self.connect_for_auth = self.upstream.is_none();
        Intercept::Replace
    }

    fn move_replies(&mut self) {
        if self.replies_ready > 0 {
            let chunk = self.from_upstream.split_to(self.replies_ready);
            self.to_client.unsplit(chunk);
            self.replies.rebase(self.replies_ready);
            self.reply_start = self.reply_start.saturating_sub(self.replies_ready);
            self.replies_ready = 0;
        }
    }

    /// Drop reply bytes `from..to` (a hidden reply, or part of one); `from` follows the
    /// ready bytes.
    fn drop_replies(&mut self, from: usize, to: usize) {
        debug_assert_eq!(from, self.replies_ready);
        self.move_replies();
        let n = to - from;
        self.from_upstream.discard(n);
        self.replies.rebase(n);
        self.reply_start = 0;
    }

    /// Write as much as the sockets take now, without waiting.
    fn flush_upstream(&mut self) {
        if let Some(up) = &self.upstream {
            while !self.to_upstream.is_empty() {
                match up.try_write(&self.to_upstream) {
                    Ok(n) => {
                        self.shared.metrics.upstream_bytes_sent.increment(n as u64);
                        self.to_upstream.advance(n)
                    }
                    Err(_) => break,
                }
            }
            if self.to_upstream.is_empty() {
                self.to_upstream = BytesMut::new();
            }
        }
    }

    fn flush_client(&mut self) {
        while !self.to_client.is_empty() {
            match self.client.try_write(&self.to_client) {
                Ok(n) => {
                    self.shared.metrics.client_bytes_sent.increment(n as u64);
                    self.to_client.advance(n)
                }
                Err(_) => break,
            }
        }
        if self.to_client.is_empty() {
            self.to_client = BytesMut::new();
        }
    }

    /// Redis went away mid-session: the commands still waiting get an error that says so,
    /// then the client connection closes, as it would if it had been connected to Redis.
    fn upstream_lost(&mut self, reason: &str) -> Option<End> {
        self.upstream = None;
        self.upstream_slot = None;
        if self.close_when_flushed || (self.input_closed && self.queue.is_empty()) {
            self.flush_client();
            return Some(End::Closed);
        }
        tracing::info!(client = %self.identity, reason, "upstream connection lost");
        let mid_reply = self.reply_partly_sent;
        self.move_replies();
        if !mid_reply {
            let message = wire::error(&format!(
                "ERR respguard: upstream {} connection lost before the reply ({reason})",
                self.shared.gate.target().address
            ));
            while let Some(p) = self.queue.pop_front() {
                match p.disposition {
                    Disposition::Forward | Disposition::FilterExec(_) => {
                        self.to_client.extend_from_slice(&message)
                    }
                    Disposition::Local(b) => self.to_client.extend_from_slice(&b),
                    Disposition::Hide => {}
                }
            }
        }
        self.ignore_input = true;
        self.close_when_flushed = true;
        // Give the client its errors; the run loop closes once they are written.
        self.queue.clear();
        None
    }
}

/// Replication through the proxy. A replica (or `redis-cli --rdb`) sends SYNC or PSYNC;
/// once Redis starts answering (`+FULLRESYNC`, `+CONTINUE`, the RDB's `$` header, or a
/// keep-alive newline before them) the connection carries an RDB with no trailing CRLF and
/// then the replication stream, which no reply scanner can follow. So from that byte on
/// the session is a plain tunnel both ways for the rest of its life: no scanning, no
/// guards, no reply timeout. Nothing the client sent after SYNC is scanned before Redis's
/// answer, so it reaches Redis, in order, either as commands (after an error) or through
/// the tunnel.
impl Session {
    /// SYNC or PSYNC arrived: forward it, or refuse it with `proxy.replication = "refuse"`.
    fn on_sync(&self) -> Intercept {
        match self.shared.replication {
            Replication::Tunnel => Intercept::Pass,
            Replication::Refuse => Intercept::Answer(wire::error(
                "ERR respguard: SYNC and PSYNC are refused (proxy.replication = \"refuse\"); replicate from Redis directly",
            )),
        }
    }

    /// Redis began a replication stream: replies before it go to the client as scanned,
    /// and every byte not yet scanned, either way, passes through from now on.
    fn start_tunnel(&mut self) {
        self.move_replies();
        let stream = self
            .from_upstream
            .split_to(self.from_upstream.bytes().len());
        self.to_client.unsplit(stream);
        let requests = self.from_client.split_to(self.from_client.bytes().len());
        self.to_upstream.unsplit(requests);
        self.queue.clear();
        self.watchdog_armed = false;
        // The request scanner is done with this connection.
        self.ignore_input = true;
        self.tunnel = true;
        self.shared.metrics.replication_tunnels.increment(1);
        tracing::info!(client = %self.identity, "SYNC/PSYNC accepted by Redis: the connection is now a byte tunnel, unguarded (proxy.replication)");
    }

    /// Carry bytes both ways until either side closes (after what it sent is written to
    /// the other) or the proxy shuts down.
    async fn run_tunnel<F: std::future::Future<Output = ()>>(
        &mut self,
        mut stop: Pin<&mut F>,
    ) -> End {
        if self.shutting_down {
            return End::Shutdown;
        }
        self.flush_upstream();
        self.flush_client();
        loop {
            if self.upstream.is_none() && self.to_client.is_empty() {
                return End::UpstreamLost("replication stream closed by Redis".into());
            }
            if self.input_closed && self.to_upstream.is_empty() {
                return End::ClientClosed;
            }
            let cap = self.shared.output_buffer;
            let want_client_read = !self.input_closed && self.to_upstream.len() < cap;
            let want_upstream_read = self.upstream.is_some() && self.to_client.len() < cap;
            let want_client_write = !self.to_client.is_empty() || self.client.wants_flush();
            let want_upstream_write = self
                .upstream
                .as_ref()
                .is_some_and(|u| !self.to_upstream.is_empty() || u.wants_flush());
            if want_client_read {
                self.from_client.prepare();
            }
            if want_upstream_read {
                self.from_upstream.prepare();
            }
            let event = {
                let (mut client_rx, mut client_tx) = self.client.halves();
                let (mut up_rx, mut up_tx) = match self.upstream.as_mut() {
                    Some(u) => {
                        let (r, w) = u.halves();
                        (Some(r), Some(w))
                    }
                    None => (None, None),
                };
                let from_client = self.from_client.bytes_mut();
                let from_upstream = self.from_upstream.bytes_mut();
                let to_client = &self.to_client;
                let to_upstream = &self.to_upstream;
                tokio::select! {
                    r = client_rx.read_buf(from_client), if want_client_read => Event::ClientRead(r),
                    r = async { up_rx.as_mut().expect("upstream").read_buf(from_upstream).await },
                        if want_upstream_read => Event::UpstreamRead(r),
                    r = client_tx.send(to_client), if want_client_write => Event::ClientWrote(r),
                    r = async { up_tx.as_mut().expect("upstream").send(to_upstream).await },
                        if want_upstream_write => Event::UpstreamWrote(r),
                    _ = &mut stop => Event::Shutdown,
                }
            };
            if let Some(end) = self.on_tunnel_event(event) {
                return end;
            }
        }
    }

    fn on_tunnel_event(&mut self, event: Event) -> Option<End> {
        let metrics = &self.shared.metrics;
        match event {
            Event::ClientRead(Ok(0)) => self.input_closed = true,
            Event::ClientRead(Ok(n)) => {
                metrics.client_bytes_received.increment(n as u64);
                let bytes = self.from_client.split_to(n);
                self.to_upstream.unsplit(bytes);
                self.flush_upstream();
            }
            Event::UpstreamRead(Ok(0)) => {
                self.upstream = None;
                self.upstream_slot = None;
            }
            Event::UpstreamRead(Ok(n)) => {
                metrics.upstream_bytes_received.increment(n as u64);
                let bytes = self.from_upstream.split_to(n);
                self.to_client.unsplit(bytes);
                self.flush_client();
            }
            // An emptied output gives up its handle, so the read buffer can reuse the memory.
            Event::ClientWrote(Ok(n)) => {
                metrics.client_bytes_sent.increment(n as u64);
                self.to_client.advance(n);
                if self.to_client.is_empty() {
                    self.to_client = BytesMut::new();
                }
            }
            Event::UpstreamWrote(Ok(n)) => {
                metrics.upstream_bytes_sent.increment(n as u64);
                self.to_upstream.advance(n);
                if self.to_upstream.is_empty() {
                    self.to_upstream = BytesMut::new();
                }
            }
            Event::ClientRead(Err(e)) | Event::ClientWrote(Err(e)) => {
                return Some(End::ClientError(e))
            }
            Event::UpstreamRead(Err(e)) | Event::UpstreamWrote(Err(e)) => {
                return Some(End::UpstreamLost(e.to_string()))
            }
            // A replica reconnects on its own; its link is not drained like commands.
            Event::Shutdown | Event::DrainExpired | Event::WatchdogFired => {
                return Some(End::Shutdown)
            }
        }
        None
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
mod tests {
    use super::*;

    fn effect(args: &[&str]) -> Effect {
        let arg = |i: usize| args.get(i).map(|s| s.as_bytes());
        hello_effect(args.len(), &arg)
    }

    #[test]
    fn hello_gives_protocol_and_user() {
        assert_eq!(
            effect(&["HELLO", "3", "AUTH", "app", "pw", "SETNAME", "n"]),
            Effect::Hello(Box::new(HelloEffect {
                protocol: Some(3),
                user: Some(Bytes::from_static(b"app")),
                name: Some(Bytes::from_static(b"n")),
            }))
        );
        assert_eq!(
            effect(&["HELLO"]),
            Effect::Hello(Box::new(HelloEffect {
                protocol: None,
                user: None,
                name: None,
            }))
        );
        assert_eq!(
            effect(&["hello", "2", "setname", "x"]),
            Effect::Hello(Box::new(HelloEffect {
                protocol: Some(2),
                user: None,
                name: Some(Bytes::from_static(b"x")),
            }))
        );
    }
}
