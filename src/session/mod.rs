//! One client connection and its upstream connection: the proxy's hot path.
//!
//! A session owns two sockets, the client's (downstream) and Redis's (upstream), one to one,
//! so every piece of per-connection state (AUTH, SELECT, MULTI, WATCH, subscriptions,
//! CLIENT TRACKING, CLIENT REPLY, blocking) lives in Redis exactly as if the client were
//! connected to it directly. Multiplexed, it starts on a shared connection instead and takes
//! one of its own the first time it needs such state (`shared`).
//!
//! Both directions move at once in one task: requests are read, scanned and forwarded while
//! replies are read, matched and forwarded. Neither direction ever waits for the other, so a
//! client that writes a long pipeline before it reads cannot deadlock against Redis; each
//! direction's unwritten bytes are bounded (`proxy.output_buffer`) and, past the bound, the
//! session stops reading the side that feeds it, which pushes back on the sender as TCP does.
//!
//! The flow of one command: bytes from the client land in the request [`pipe`], the
//! [`RequestScanner`] finds the command, the session records in the reply queue what to do
//! with its reply and leaves the command's bytes in place; at the end of the read, everything
//! scanned moves to the upstream output without a copy (`split_to`/`unsplit`) and is
//! written. Replies follow the same path back through the reply pipe and the
//! [`ReplyScanner`]. Only a command the proxy changes or answers itself costs a copy.
//!
//! Once Redis accepts SYNC or PSYNC, the connection carries an RDB and a replication
//! stream rather than replies, and the session becomes a plain byte tunnel for the rest of
//! its life (see `tunnel`).
//!
//! The session decides no guard policy (it carries out what the reply queue, the command
//! table and the guards say; it decides only its own `RESPGUARD` command and `[auth]`), and
//! once it exists it is the only code that writes to its two sockets.
//!
//! # Layout
//!
//! This file holds the [`Session`] and its event loop (events, back-pressure, draining,
//! shutdown). The pure parts it drives: [`pipe`] (one direction's bytes), [`state`] (the
//! connection state that decides reply counts: CLIENT REPLY, MULTI, EXEC filtering,
//! subscriptions), [`upstream`] (whether it holds a connection), [`watchdog`] (the reply
//! timer). Its own behaviour, by concern: `requests` (the request loop), `verdicts`
//! (classify, judge and carry out the guards' verdicts, fail-open), `intercept` (the
//! proxy's own commands, client authentication, the access probe), `replies` (reply
//! routing and what replies change), `ending` (when a session is done: draining, a
//! silent Redis, a lost one), `tunnel` (SYNC/PSYNC).

mod ending;
mod hello;
mod intercept;
mod pipe;
mod replies;
mod requests;
mod run;
mod shared;
mod state;
mod switch;
mod tunnel;
mod upstream;
mod verdicts;
mod watchdog;
mod watched_run;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use crate::cluster::ClusterUpstream;
use crate::command::{CommandTable, LastName};
use crate::config::Replication;
use crate::control::{Control, Policy};
use crate::guard::ScriptAccess;
use crate::identity::ClientIdentity;
use crate::mux::threads::LanesPerThread;
use crate::mux::{LaneIdentity, LaneUser, SharedConnections};
use crate::scanner::reply::ReplyScanner;
use crate::scanner::request::{Limits, RequestScanner};
use crate::shutdown::{ShutdownSignal, ShutdownWait};
use crate::telemetry::{CommandLatency, LatencyRun, ProxyMetrics};
use crate::transport::Stream;
use crate::upstream::ConnectGate;

use pipe::Pipe;
use state::ConnectionState;
use upstream::Upstream;
use watchdog::Watchdog;

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
    /// The shared connections of each serving thread, with `upstream.connections =
    /// "multiplexed"`.
    pub lanes: Option<Arc<LanesPerThread>>,
    /// With a `redis-cluster://` upstream: the cluster each client's router reaches.
    pub cluster: Option<Arc<ClusterUpstream>>,
    /// Rung by the listeners when shutdown begins; each session subscribes once.
    pub shutdown: Arc<ShutdownSignal>,
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
    /// On a shared connection, the client left more replies unread than
    /// `proxy.output_buffer`.
    SlowReader,
}

/// One client connection being proxied.
pub struct Session {
    shared: Arc<Shared>,
    /// The shared connections of the serving thread that accepted the client
    /// (`upstream.connections = "multiplexed"`).
    lanes: Option<Arc<SharedConnections>>,
    client: Stream,
    upstream: Upstream,
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
    /// Under `[auth]` and multiplexing, the Redis user (and HELLO's protocol) of the AUTH
    /// the proxy accepted, whose shared connections the client joins once connected
    /// (`switch::join_lanes_of_mapped_user`).
    mapped_user: Option<(LaneUser, Option<u8>)>,
    /// Client → upstream: the client's bytes, scanned for commands.
    requests: Pipe<RequestScanner>,
    /// Upstream → client: Redis's bytes, scanned for replies.
    replies: Pipe<ReplyScanner>,
    /// Whether the reply being scanned goes to the client (decided when it begins).
    reply_forwarded: Option<bool>,
    /// The watched integer replies the plain-reply loop is passing, each watch handed its
    /// last when the loop stops.
    watched_run: watched_run::WatchedRun,
    /// Some bytes of the reply being scanned already went to the client: if Redis goes
    /// away now, nothing more may be written (it would land inside that reply).
    reply_partly_sent: bool,
    /// CLIENT REPLY, MULTI, subscriptions and the reply queue.
    state: ConnectionState,
    /// Commands scanned since the last metrics update.
    commands_in_batch: u64,
    /// The session's clock for command latency: read once per socket read, not per command.
    epoch: std::time::Instant,
    /// When the replies being scanned arrived (microseconds since `epoch`).
    replies_arrived_us: u64,
    /// What the Redis user may run for the guards, from the last probe.
    access: ScriptAccess,
    /// A probe of `access` is in flight: guarded writes that depend on it wait for it.
    probing: bool,
    /// A command is held back (unscanned) until the probe answers.
    waiting_for_probe: bool,
    /// The last command name a run of commands found (`run::forward_run`): the next
    /// command of that name, in this run or the next, is known without a lookup.
    last_name: LastName,
    /// Argument indices of the current command's keys (capacity kept).
    keys: Vec<usize>,
    /// Where guards write rewritten and extra commands (capacity kept).
    scratch: BytesMut,
    /// Extra commands to send once the streamed command ends, and how many.
    after_stream: BytesMut,
    after_stream_hidden: u32,
    streaming: Option<StreamTo>,
    /// The client socket is not read any more (it closed, or shutdown began); commands
    /// already read still go through.
    input_closed: bool,
    /// Client input is ignored from here on: QUIT was sent or the input was malformed.
    ignore_input: bool,
    /// Close once everything pending is written (QUIT, protocol error).
    close_when_flushed: bool,
    /// The last reply answered a CLIENT KILL: if Redis closes the connection now, that
    /// command killed it (see [`Session::upstream_lost`]).
    last_reply_killed: bool,
    /// The client half-closed or shutdown began: finish what is in flight, then close.
    draining: Option<tokio::time::Instant>,
    /// The proxy is shutting down.
    shutting_down: bool,
    /// The reply watchdog (see [`Session::on_watchdog`]).
    watchdog: Watchdog,
    /// Redis began a replication stream: from here on the session is a byte tunnel.
    tunnel: bool,
    /// The session has (or will open) a connection of its own: per-client mode, or a
    /// multiplexed client that uses connection state.
    pinned: bool,
    /// The client sent a command whose state lasts for the connection's life
    /// ([`crate::command::Pinning::ForLife`]): under multiplexing it keeps its own connection
    /// for good (otherwise, once that connection holds no state, it goes back to a shared
    /// one, [`Session::unpin`]); behind Sentinel, a lost connection cannot be replaced
    /// unseen.
    lasting_state: bool,
    /// A command waits, unscanned, for the session to leave its shared connection.
    pin_pending: bool,
    /// On a shared connection: commands Redis answers that were handed to it so far
    /// (against [`crate::reply_queue::ReplyQueue::pushed_to_upstream`]).
    submitted: u64,
    /// Multiplexed: the identity (database, protocol) whose shared connections the client
    /// uses, and which a connection of its own is given; the URL's at first (`switch`).
    lane_identity: LaneIdentity,
    /// A move to another identity's shared connections waiting for Redis's answer.
    switch: Option<upstream::LaneSwitch>,
}

enum Event {
    ClientRead(std::io::Result<usize>),
    UpstreamRead(std::io::Result<usize>),
    /// The shared connection has something for the session.
    Inbox,
    ClientWrote(std::io::Result<usize>),
    UpstreamWrote(std::io::Result<usize>),
    Shutdown,
    DrainExpired,
    WatchdogFired,
}

/// What the event loop waits for from the client's lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneWatch {
    /// No lane (a connection of its own, or none).
    Off,
    /// Its news: replies, lost commands.
    News,
    /// The client's replies leave no room for more: only the news that it must end (a
    /// slow reader), so its replies wait in the slot meanwhile.
    EndOnly,
}

/// What the event loop waits for this time round.
#[derive(Debug, Clone, Copy)]
struct Interest {
    client_read: bool,
    upstream_read: bool,
    inbox: LaneWatch,
    client_write: bool,
    upstream_write: bool,
    shutdown: bool,
    drain: Option<tokio::time::Instant>,
    watchdog: bool,
    /// Nothing is owed or to be written: the client's next command is what comes next, so
    /// its socket is polled first (see [`Session::next_event`]).
    client_first: bool,
}

impl Session {
    /// A session for an accepted client. The upstream connection is opened in [`Self::run`].
    pub fn new(shared: Arc<Shared>, client: Stream, identity: ClientIdentity) -> Self {
        let policy_generation = shared.control.generation();
        let policy = shared.control.policy();
        let mut limits = shared.limits;
        if shared.lanes.is_some() {
            // On a shared connection a streamed command needs a connection of its own (see
            // `shared`): commands up to the buffered bound are read whole instead.
            limits.stream_threshold =
                (limits.stream_threshold).max(limits.max_buffered_command as u64);
        }
        let mut requests = RequestScanner::new(limits);
        requests.set_unauthenticated(policy.auth.required());
        let state = ConnectionState::new(shared.max_pending, shared.table.unknown().id);
        Session {
            authenticated: !policy.auth.required(),
            connect_for_auth: false,
            mapped_user: None,
            policy,
            policy_generation,
            client,
            upstream: Upstream::none(),
            identity,
            requests: Pipe::new(requests),
            replies: Pipe::new(ReplyScanner::new()),
            reply_forwarded: None,
            watched_run: Default::default(),
            reply_partly_sent: false,
            state,
            commands_in_batch: 0,
            epoch: std::time::Instant::now(),
            replies_arrived_us: 0,
            access: ScriptAccess::Allowed,
            probing: false,
            waiting_for_probe: false,
            last_name: LastName::default(),
            keys: Vec::new(),
            scratch: BytesMut::new(),
            after_stream: BytesMut::new(),
            after_stream_hidden: 0,
            streaming: None,
            input_closed: false,
            ignore_input: false,
            close_when_flushed: false,
            last_reply_killed: false,
            draining: None,
            shutting_down: false,
            watchdog: Watchdog::default(),
            tunnel: false,
            pinned: shared.lanes.is_none(),
            lasting_state: false,
            pin_pending: false,
            submitted: 0,
            lane_identity: LaneIdentity {
                user: None,
                db: shared.gate.target().db,
                protocol: 2,
            },
            switch: None,
            lanes: shared.lanes.as_ref().map(|lanes| lanes.here()),
            shared,
        }
    }

    /// Who the client is, as far as Redis has confirmed.
    pub fn identity(&self) -> &ClientIdentity {
        &self.identity
    }

    /// Proxy the connection until one side closes or shutdown completes.
    pub async fn run(mut self) -> End {
        let end = self.serve().await;
        self.hand_back_own_connection();
        end
    }

    async fn serve(&mut self) -> End {
        // Subscribed once for the whole session: each wait is then an atomic load.
        let mut stop = self.shared.shutdown.subscribe();
        if self.authenticated {
            // Under `[auth]`, only once the client has authenticated.
            self.connect_upstream().await;
        }
        loop {
            if let Some(end) = self.finished() {
                return end;
            }
            let interest = self.interest();
            let event = self.next_event(interest, &mut stop).await;
            if let Some(end) = self.handle(event).await {
                return end;
            }
            if self.ready_to_pin() {
                self.pin().await;
            }
            // Also right after a pin that failed: the held commands got the reason.
            if self.ready_to_unpin() {
                self.unpin();
            }
            if self.tunnel {
                return self.run_tunnel(&mut stop).await;
            }
        }
    }

    /// What to wait for: each side is read only while the other side's output has room
    /// (back-pressure), and the client only while the reply queue has room and nothing
    /// holds its next command back.
    fn interest(&mut self) -> Interest {
        let cap = self.shared.output_buffer;
        let queue = self.state.queue();
        let client_read = !self.input_closed
            && !self.ignore_input
            && self.requests.unwritten() < cap
            && !queue.is_full()
            && !self.state.identity_pending()
            && !queue.awaits_replication();
        if let Some(timeout) = self.shared.reply_timeout {
            // While replies keep coming it stays armed with its first deadline, so a busy
            // session touches the timer once per `reply_timeout`, not once per command.
            if self.upstream.stream().is_some() && !queue.is_empty() {
                self.watchdog.arm(timeout);
            }
        }
        let room = self.replies.unwritten() < cap;
        let client_read = client_read && !self.pin_pending;
        let inbox = match self.upstream.lane() {
            None => LaneWatch::Off,
            Some(_) if room => LaneWatch::News,
            Some(_) => LaneWatch::EndOnly,
        };
        let client_write = self.replies.unwritten() > 0 || self.client.wants_flush();
        let upstream_write = self
            .upstream
            .stream()
            .is_some_and(|u| self.requests.unwritten() > 0 || u.wants_flush());
        Interest {
            client_read,
            upstream_read: self.upstream.stream().is_some() && room,
            inbox,
            client_write,
            upstream_write,
            shutdown: !self.shutting_down,
            drain: self.draining,
            watchdog: self.watchdog.is_armed(),
            client_first: client_read && queue.is_empty() && !client_write && !upstream_write,
        }
    }

    /// Wait for the first of what `want` names: a read or a write on either socket,
    /// shutdown (`stop`), the drain deadline, the reply watchdog.
    async fn next_event(&mut self, want: Interest, stop: &mut ShutdownWait) -> Event {
        if want.client_read {
            self.requests.prepare();
        }
        if want.upstream_read {
            self.replies.prepare();
        }
        let (mut client_rx, mut client_tx) = self.client.halves();
        let (stream, lane) = self.upstream.parts();
        let (mut up_rx, mut up_tx) = match stream {
            Some(u) => {
                let (r, w) = u.halves();
                (Some(r), Some(w))
            }
            None => (None, None),
        };
        let inbox = lane.and_then(|l| match want.inbox {
            LaneWatch::Off => None,
            LaneWatch::News => Some(l.ready()),
            LaneWatch::EndOnly => Some(l.ended()),
        });
        let watch_lane = inbox.is_some();
        let (from_client, to_upstream) = self.requests.io_parts();
        let (from_upstream, to_client) = self.replies.io_parts();
        let watchdog = &mut self.watchdog;
        if want.client_first {
            // Between commands (nothing owed, nothing to write): what wakes the session is
            // nearly always the client's next command, so its socket is polled first, not
            // after Redis's (or the lane's) for a reply that cannot be there. Those are
            // still watched, so a connection Redis closes while the client is idle is
            // noticed then, as before.
            return tokio::select! {
                biased;
                r = client_rx.read_buf(from_client) => Event::ClientRead(r),
                r = async { up_rx.as_mut().expect("upstream").read_buf(from_upstream).await },
                    if want.upstream_read => Event::UpstreamRead(r),
                _ = async { inbox.expect("lane").wait().await }, if watch_lane => Event::Inbox,
                _ = stop.rung(), if want.shutdown => Event::Shutdown,
                _ = async { tokio::time::sleep_until(want.drain.expect("deadline")).await },
                    if want.drain.is_some() => Event::DrainExpired,
                _ = std::future::poll_fn(|cx| watchdog.poll_fired(cx)), if want.watchdog => {
                    Event::WatchdogFired
                }
            };
        }
        // Polled in this order, not at random (which costs a random number and, when a
        // branch is ready, polls others for nothing): replies and writes first, since each is
        // bounded by commands already read, so a client that keeps sending cannot hold back
        // its own replies; new requests next; the rare events last (tokio's cooperative
        // budget makes a socket that is always ready say pending now and then, so they are
        // still seen).
        tokio::select! {
            biased;
            r = async { up_rx.as_mut().expect("upstream").read_buf(from_upstream).await },
                if want.upstream_read => Event::UpstreamRead(r),
            _ = async { inbox.expect("lane").wait().await }, if watch_lane => Event::Inbox,
            r = client_tx.send(to_client), if want.client_write => Event::ClientWrote(r),
            r = async { up_tx.as_mut().expect("upstream").send(to_upstream).await },
                if want.upstream_write => Event::UpstreamWrote(r),
            r = client_rx.read_buf(from_client), if want.client_read => Event::ClientRead(r),
            _ = stop.rung(), if want.shutdown => Event::Shutdown,
            _ = async { tokio::time::sleep_until(want.drain.expect("deadline")).await },
                if want.drain.is_some() => Event::DrainExpired,
            _ = std::future::poll_fn(|cx| watchdog.poll_fired(cx)), if want.watchdog => {
                Event::WatchdogFired
            }
        }
    }

    async fn handle(&mut self, event: Event) -> Option<End> {
        match event {
            Event::ClientRead(Ok(0)) => {
                self.input_closed = true;
                // A command cut off by the close can never complete; Redis would drop such a
                // client at once, and so does the proxy.
                if self.state.queue().is_empty()
                    && self.replies.unwritten() == 0
                    && !self.pin_pending
                    || self.requests.scanner().in_command()
                    || self.must_close_at_once()
                {
                    return Some(End::ClientClosed);
                }
                // Finish the replies in flight, as Redis does for what it already read.
                self.start_draining();
            }
            Event::ClientRead(Ok(n)) => self.on_client_read(n).await,
            Event::ClientRead(Err(e)) | Event::ClientWrote(Err(e)) => {
                return Some(End::ClientError(e));
            }
            Event::UpstreamRead(Ok(0)) => return self.upstream_lost("connection closed by Redis"),
            Event::UpstreamRead(Ok(n)) => return self.on_upstream_read(n),
            Event::Inbox => return self.on_inbox(),
            Event::UpstreamRead(Err(e)) | Event::UpstreamWrote(Err(e)) => {
                return self.upstream_lost(&e.to_string());
            }
            Event::ClientWrote(Ok(n)) => {
                self.shared.metrics.client_bytes_sent.increment(n as u64);
                self.replies.wrote(n);
            }
            Event::UpstreamWrote(Ok(n)) => {
                self.shared.metrics.upstream_bytes_sent.increment(n as u64);
                self.requests.wrote(n);
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

    async fn on_client_read(&mut self, n: usize) {
        self.requests.after_read(n);
        let now_us = self.clock_us();
        self.state.queue_mut().set_clock(now_us);
        self.follow_reloads();
        let metrics = &self.shared.metrics;
        metrics.client_bytes_received.increment(n as u64);
        if !self.upstream.is_connected() && self.authenticated && !self.ignore_input {
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

    fn on_upstream_read(&mut self, n: usize) -> Option<End> {
        self.replies.after_read(n);
        self.replies_arrived_us = self.clock_us();
        let metrics = &self.shared.metrics;
        metrics.upstream_bytes_received.increment(n as u64);
        if self.shared.gate.follows_sentinel() {
            self.watch_for_demotion(n);
        }
        if let Err(reason) = self.on_upstream_input() {
            return self.upstream_lost(&reason);
        }
        self.flush_client();
        // Replies freed room in the queue: carry on with requests already read.
        self.on_client_input();
        self.flush_upstream();
        None
    }

    /// Behind Sentinel: a `-READONLY` error among the `n` bytes just read says the node is no
    /// longer the primary; the watcher asks the sentinels at once (a value that happens to
    /// contain the word costs one needless question).
    #[cold]
    fn watch_for_demotion(&self, n: usize) {
        let input = self.replies.input();
        let read = &input[input.len().saturating_sub(n)..];
        if memchr::memmem::find(read, b"-READONLY ").is_some() {
            self.shared.gate.suspect_primary();
        }
    }

    /// Open the session's way to Redis: a place on a shared connection under multiplexing
    /// (until the session is pinned), else a connection of its own.
    async fn connect_upstream(&mut self) {
        self.upstream = match &self.lanes {
            Some(lanes) if !self.pinned => {
                self.submitted = self.state.queue().pushed_to_upstream();
                Upstream::Shared(self.attach_to_identity().unwrap_or_else(|| lanes.attach()))
            }
            Some(lanes) => {
                let handshake = self.own_connection_handshake(lanes);
                Upstream::pinned(lanes, &self.identity, &handshake).await
            }
            None => match &self.shared.cluster {
                Some(cluster) => {
                    let proxy = self
                        .client
                        .local_addr()
                        .unwrap_or(([127, 0, 0, 1], 0).into());
                    Upstream::connect_cluster(cluster, proxy, &self.identity)
                }
                None => Upstream::connect(&self.shared.gate, &self.identity).await,
            },
        };
        if self.upstream.is_connected() {
            self.probe_access();
            self.flush_upstream();
        }
    }

    /// While the upstream is missing, try again between reads, when the gate allows it.
    async fn reconnect_if_allowed(&mut self) {
        // A shared connection reconnects on its own (see `mux::lane`).
        if self.upstream.lane().is_none()
            && self.state.queue().is_empty()
            && !self.requests.scanner().in_command()
            && !self.shared.gate.is_open()
        {
            self.connect_upstream().await;
        }
    }

    /// Write as much as the upstream socket takes now, without waiting; on a shared
    /// connection, submit what was scanned.
    fn flush_upstream(&mut self) {
        if let Some(up) = self.upstream.stream() {
            self.requests
                .flush(up, &self.shared.metrics.upstream_bytes_sent);
        } else {
            self.submit_to_lane();
        }
    }

    /// Write as much as the client socket takes now, without waiting.
    fn flush_client(&mut self) {
        self.replies
            .flush(&self.client, &self.shared.metrics.client_bytes_sent);
    }

    /// Microseconds since the session started.
    fn clock_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Count a command answered at `now_us` in its latency histogram.
    #[inline]
    fn record_latency(&self, command: u16, received_us: u64, now_us: u64) {
        if let Some(latency) = &self.shared.latency {
            latency.record(command, now_us.saturating_sub(received_us));
        }
    }

    /// Count the commands of `run`, whose replies arrived with the last read from Redis,
    /// in their latency histogram.
    #[inline]
    fn record_latency_run(&self, run: LatencyRun) {
        if let Some(latency) = &self.shared.latency {
            latency.record_run(run, self.replies_arrived_us);
        }
    }
}
