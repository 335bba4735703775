//! Reaching Redis: opening upstream connections, and the gate every session shares so that a
//! Redis restart cannot turn into a reconnect storm.
//!
//! [`ConnectGate`] is one per proxy. Before any session opens an upstream connection it asks
//! the gate, which enforces two things:
//! - a token bucket of connection attempts per second across all sessions, so 5,000 clients
//!   reconnecting at once reach Redis spread out at the configured rate;
//! - a circuit breaker: after a failed attempt, further attempts are refused at once for a
//!   backoff that doubles per consecutive failure (with full jitter, up to a maximum), so
//!   while Redis is down each command fails fast instead of each waiting for a timeout.
//!   When the backoff ends, one attempt probes Redis while the others keep failing fast
//!   (half-open), so a Redis that times out costs one session a timeout, not all of them;
//! - optionally, a cap on upstream connections open at once (`upstream.max_connections`):
//!   each connection holds an [`UpstreamSlot`] for as long as it lives.
//!
//! A new connection gets `TCP_NODELAY` and then the proxy's own handshake (AUTH and SELECT
//! from the upstream URL), whose replies the client never sees.
//!
//! Behind a Sentinel URL the address is not fixed: the [`crate::sentinel`] watcher sets it
//! ([`ConnectGate::switch_to`]). Every connection is then checked with `ROLE` before use
//! (a node that is not a master is refused), and the gate keeps a duplicate of each
//! connection's socket so that a switch shuts down every connection to the old primary at
//! once: its sessions see the connection lost, and their next connection goes to the new
//! primary. A connection opened across a switch is refused, never used.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::UpstreamTarget;
use crate::scanner::reply::{ReplyKind, ReplyScanner, ReplyStep};
use crate::transport::Stream;

/// Why no upstream connection could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {address} unreachable: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("upstream {address} unavailable after recent failures ({reason}); next attempt in {retry_in_ms} ms")]
    CircuitOpen {
        address: String,
        reason: String,
        retry_in_ms: u64,
    },
    #[error("upstream {address}: too many connection attempts per second, try again")]
    RateLimited { address: String },
    #[error("upstream {address} refused the proxy's handshake: {reply}")]
    Handshake { address: String, reply: String },
    #[error("upstream {address}: connection limit reached (upstream.max_connections = {max}), try again")]
    TooManyConnections { address: String, max: usize },
    #[error("upstream {address}: no primary known ({reason})")]
    NoPrimary { address: String, reason: String },
    #[error(
        "upstream {address} is not the primary (ROLE says {role}); asking the sentinels again"
    )]
    NotPrimary { address: String, role: String },
}

/// A place among the upstream connections allowed at once; dropped with its connection.
#[derive(Debug)]
pub struct UpstreamSlot {
    _permit: Option<OwnedSemaphorePermit>,
    open: Arc<AtomicUsize>,
    /// Behind Sentinel: this connection's entry among those a switch shuts down.
    tracked: Option<(Arc<Mutex<Tracked>>, u64)>,
}

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let Some((tracked, id)) = self.tracked.take() {
            tracked.lock().expect("tracked lock").sockets.remove(&id);
        }
    }
}

/// Behind Sentinel: the primary's generation (one more per switch) and a duplicate of every
/// open connection's socket, so that a switch can shut them all down. The duplicate keeps
/// the socket itself open until the slot is dropped with its connection, so a shutdown never
/// reaches a descriptor number reused by something else.
#[derive(Debug, Default)]
pub struct Tracked {
    generation: u64,
    next_id: u64,
    sockets: HashMap<u64, OwnedFd>,
}

/// Settings of the gate, from `[upstream]`.
#[derive(Debug, Clone)]
pub struct GateSettings {
    /// Longest time one attempt (connect plus handshake) may take.
    pub connect_timeout: Duration,
    /// First backoff after a failure.
    pub backoff_min: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Attempts per second across all sessions.
    pub max_connects_per_second: u32,
    /// Connections open at once; 0 for no limit.
    pub max_connections: usize,
    /// TLS, for a `rediss://` upstream.
    pub tls: Option<crate::config::UpstreamTls>,
}

#[derive(Debug)]
struct GateState {
    tokens: f64,
    refilled_at: Instant,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// After a failure, one attempt at a time probes Redis.
    probing: bool,
    last_error: String,
}

/// The shared gate in front of every upstream connection attempt.
#[derive(Debug)]
pub struct ConnectGate {
    target: UpstreamTarget,
    /// `host:port` of the primary: the URL's, or behind Sentinel the watcher's (empty until
    /// one is known).
    address: ArcSwap<String>,
    /// Behind Sentinel: why no primary is known (while `address` is empty).
    no_primary: Mutex<String>,
    /// Behind Sentinel: the connections a switch shuts down.
    tracked: Option<Arc<Mutex<Tracked>>>,
    /// Behind Sentinel: a connection found a node that is not the primary; the watcher
    /// asks the sentinels at once.
    suspect: tokio::sync::Notify,
    settings: GateSettings,
    state: Mutex<GateState>,
    slots: Option<Arc<Semaphore>>,
    handshake: Vec<u8>,
    handshake_replies: usize,
    /// Connections open now (their slots alive).
    open: Arc<AtomicUsize>,
}

impl ConnectGate {
    /// A gate to an address where nothing listens, for unit tests of what holds a gate
    /// without ever connecting through it.
    #[cfg(test)]
    pub fn unreachable() -> Self {
        ConnectGate::unreachable_limited(0)
    }

    /// [`Self::unreachable`], allowing `rate` connection attempts per second (0: no limit).
    #[cfg(test)]
    pub fn unreachable_limited(rate: u32) -> Self {
        ConnectGate::new(
            UpstreamTarget::parse("redis://127.0.0.1:1").unwrap(),
            GateSettings {
                connect_timeout: Duration::from_millis(200),
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(1),
                max_connects_per_second: rate,
                max_connections: 0,
                tls: None,
            },
        )
    }

    /// A gate for `target`, with a full bucket and a closed circuit.
    pub fn new(target: UpstreamTarget, settings: GateSettings) -> Self {
        let (handshake, handshake_replies) = handshake_commands(&target);
        let sentinel = target.sentinel.is_some();
        ConnectGate {
            address: ArcSwap::from_pointee(target.address.clone()),
            no_primary: Mutex::new(if sentinel {
                "the sentinels have not been asked yet".into()
            } else {
                String::new()
            }),
            tracked: sentinel.then(Arc::default),
            suspect: tokio::sync::Notify::new(),
            state: Mutex::new(GateState {
                tokens: f64::from(settings.max_connects_per_second),
                refilled_at: Instant::now(),
                consecutive_failures: 0,
                open_until: None,
                probing: false,
                last_error: String::new(),
            }),
            slots: (settings.max_connections > 0)
                .then(|| Arc::new(Semaphore::new(settings.max_connections))),
            target,
            settings,
            handshake,
            handshake_replies,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Upstream connections open now, the monitor's included.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Where the upstream is, as configured (behind Sentinel, its `address` is empty: see
    /// [`Self::address`]).
    pub fn target(&self) -> &UpstreamTarget {
        &self.target
    }

    /// `host:port` of the upstream now (behind Sentinel, the primary last found; the master
    /// name while none is known).
    pub fn address(&self) -> String {
        let address = self.address.load();
        match &self.target.sentinel {
            Some(s) if address.is_empty() => format!("(master `{}`)", s.master),
            _ => address.to_string(),
        }
    }

    /// Behind Sentinel, reading from replicas: a gate for the master's data nodes, the
    /// primary and its replicas at the address each router gives (`crate::cluster`), with
    /// this gate's settings, handshake (AUTH, SELECT) and TLS, but no ROLE check (a
    /// replica is meant) and no switch to follow (the routers follow the sentinels' view).
    pub fn for_nodes(&self) -> ConnectGate {
        let label = self.address();
        ConnectGate::new(
            UpstreamTarget {
                sentinel: None,
                address: label,
                ..self.target.clone()
            },
            self.settings.clone(),
        )
    }

    /// Behind Sentinel: the primary's generation, one more per switch.
    pub fn generation(&self) -> u64 {
        self.tracked
            .as_ref()
            .map_or(0, |t| t.lock().expect("tracked lock").generation)
    }

    /// Whether the primary is found through sentinels (and may change).
    pub fn follows_sentinel(&self) -> bool {
        self.tracked.is_some()
    }

    /// The primary is now `address` (behind Sentinel): new connections go there, every
    /// connection open to the old one is shut down (its commands in flight get the
    /// connection-lost error), and the breaker forgets the old primary's failures. Returns
    /// how many connections were shut down.
    pub fn switch_to(&self, address: &str) -> usize {
        let Some(tracked) = &self.tracked else {
            return 0;
        };
        let mut t = tracked.lock().expect("tracked lock");
        self.address.store(Arc::new(address.to_string()));
        t.generation += 1;
        for fd in t.sockets.values() {
            let _ = socket2::SockRef::from(fd).shutdown(std::net::Shutdown::Both);
        }
        let closed = t.sockets.len();
        drop(t);
        let mut st = self.state.lock().expect("gate lock");
        st.consecutive_failures = 0;
        st.open_until = None;
        st.probing = false;
        closed
    }

    /// Behind Sentinel: no primary can be found now, and why (connections are refused with
    /// this reason until one is found). The last primary known stays in use if there was one.
    pub fn no_primary_known(&self, reason: String) {
        *self.no_primary.lock().expect("gate lock") = reason;
    }

    /// A connection met a node that is not the primary (ROLE, or a `-READONLY` reply): ask
    /// the sentinels now rather than at the next periodic check.
    pub fn suspect_primary(&self) {
        self.suspect.notify_one();
    }

    /// Resolves when [`Self::suspect_primary`] was called.
    pub(crate) fn suspected(&self) -> tokio::sync::futures::Notified<'_> {
        self.suspect.notified()
    }

    /// The commands (AUTH, SELECT) the proxy sends on every new connection and after RESET,
    /// and how many replies they produce.
    pub fn handshake(&self) -> (&[u8], usize) {
        (&self.handshake, self.handshake_replies)
    }

    /// True while the circuit is open (the last attempt failed and its backoff runs).
    pub fn is_open(&self) -> bool {
        let st = self.state.lock().expect("gate lock");
        st.open_until.is_some_and(|t| t > Instant::now())
    }

    /// True when the last attempt succeeded (or none was made yet).
    pub fn is_healthy(&self) -> bool {
        self.state.lock().expect("gate lock").consecutive_failures == 0
    }

    /// Open a connection to the upstream, if the gate allows an attempt now. Waits for a
    /// token for at most the connect timeout; refuses at once while the circuit is open or
    /// every upstream slot is taken. The slot must be kept as long as the connection.
    pub async fn connect(&self) -> Result<(Stream, UpstreamSlot), UpstreamError> {
        if self.tracked.is_some() && self.address.load().is_empty() {
            // Nothing to attempt: not a failure of Redis, so the breaker is left alone.
            return Err(self.no_primary());
        }
        let permit = self.take_permit()?;
        let generation = self.generation();
        let (stream, socket) = self.connect_stream().await?;
        let tracked = match (&self.tracked, socket) {
            (Some(tracked), Some(socket)) => {
                let mut t = tracked.lock().expect("tracked lock");
                if t.generation != generation {
                    // The primary changed while this connection was being opened: it may
                    // lead to the old one.
                    return Err(UpstreamError::Unreachable {
                        address: self.address(),
                        reason: "the primary changed while connecting".into(),
                    });
                }
                let id = t.next_id;
                t.next_id += 1;
                t.sockets.insert(id, socket);
                Some((Arc::clone(tracked), id))
            }
            _ => None,
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        let slot = UpstreamSlot {
            _permit: permit,
            open: Arc::clone(&self.open),
            tracked,
        };
        Ok((stream, slot))
    }

    /// A place under `upstream.max_connections` for a connection opened another way: a
    /// cluster router's (the session's side of it; the router's node connections are its
    /// own). Neither the breaker nor the rate limit apply.
    pub fn admit(&self) -> Result<UpstreamSlot, UpstreamError> {
        let permit = self.take_permit()?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(UpstreamSlot {
            _permit: permit,
            open: Arc::clone(&self.open),
            tracked: None,
        })
    }

    fn take_permit(&self) -> Result<Option<OwnedSemaphorePermit>, UpstreamError> {
        match &self.slots {
            None => Ok(None),
            Some(s) => Arc::clone(s).try_acquire_owned().map(Some).map_err(|_| {
                UpstreamError::TooManyConnections {
                    address: self.address(),
                    max: self.settings.max_connections,
                }
            }),
        }
    }

    async fn connect_stream(&self) -> Result<(Stream, Option<OwnedFd>), UpstreamError> {
        let deadline = Instant::now() + self.settings.connect_timeout;
        loop {
            let wait = self.take_token()?;
            let Some(wait) = wait else { break };
            if Instant::now() + wait > deadline {
                return Err(UpstreamError::RateLimited {
                    address: self.address(),
                });
            }
            tokio::time::sleep(wait).await;
        }
        // Should this attempt be abandoned half-way, the probe must not stay taken.
        struct EndProbe<'a>(&'a Mutex<GateState>);
        impl Drop for EndProbe<'_> {
            fn drop(&mut self) {
                if let Ok(mut st) = self.0.lock() {
                    st.probing = false;
                }
            }
        }
        let _probe = EndProbe(&self.state);
        let attempt = tokio::time::timeout(self.settings.connect_timeout, self.open());
        let result = match attempt.await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Unreachable {
                address: self.address(),
                reason: format!("no answer within {:?}", self.settings.connect_timeout),
            }),
        };
        self.record(&result);
        result
    }

    /// Take one token, or say how long until one is available. Errors when the circuit is open.
    fn take_token(&self) -> Result<Option<Duration>, UpstreamError> {
        let mut st = self.state.lock().expect("gate lock");
        let now = Instant::now();
        let open = st.open_until.filter(|&until| until > now);
        if open.is_some() || (st.consecutive_failures > 0 && st.probing) {
            return Err(UpstreamError::CircuitOpen {
                address: self.address(),
                reason: st.last_error.clone(),
                retry_in_ms: open.map_or(0, |until| (until - now).as_millis() as u64),
            });
        }
        let rate = f64::from(self.settings.max_connects_per_second);
        let elapsed = now.duration_since(st.refilled_at).as_secs_f64();
        st.tokens = (st.tokens + elapsed * rate).min(rate);
        st.refilled_at = now;
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            // After failures, this attempt is the probe; the others fail fast until it ends.
            st.probing = st.consecutive_failures > 0;
            Ok(None)
        } else {
            Ok(Some(Duration::from_secs_f64((1.0 - st.tokens) / rate)))
        }
    }

    fn record<T>(&self, result: &Result<T, UpstreamError>) {
        let mut st = self.state.lock().expect("gate lock");
        st.probing = false;
        match result {
            Ok(_) => {
                st.consecutive_failures = 0;
                st.open_until = None;
            }
            Err(e) => {
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                let exp = st.consecutive_failures.min(20) - 1;
                let ceiling = self
                    .settings
                    .backoff_min
                    .saturating_mul(1u32 << exp)
                    .min(self.settings.backoff_max);
                // Full jitter between the minimum and the ceiling: proxies restarted together
                // do not retry in lockstep.
                let span = ceiling.saturating_sub(self.settings.backoff_min);
                let backoff = self.settings.backoff_min + span.mul_f64(fastrand::f64());
                st.open_until = Some(Instant::now() + backoff);
                st.last_error = match e {
                    UpstreamError::Unreachable { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                metrics::counter!("respguard_upstream_connect_failures_total").increment(1);
            }
        }
    }

    async fn open(&self) -> Result<(Stream, Option<OwnedFd>), UpstreamError> {
        let address = self.address.load_full();
        if address.is_empty() {
            return Err(self.no_primary());
        }
        let opened = self.open_at(&address).await;
        if let Err(UpstreamError::NotPrimary { .. }) = &opened {
            self.suspect_primary();
        }
        opened
    }

    fn no_primary(&self) -> UpstreamError {
        UpstreamError::NoPrimary {
            address: self.address(),
            reason: self.no_primary.lock().expect("gate lock").clone(),
        }
    }
}

/// Opening one connection: TCP, TLS, the handshake, the ROLE check; for clients (through
/// the limits above) and for the proxy's own questions to other nodes.
impl ConnectGate {
    /// Behind Sentinel: whether `address` is a primary the proxy can use (it connects,
    /// accepts the handshake and says `master` to ROLE), within the connect timeout. Neither
    /// the breaker nor the rate limit apply: only the watcher calls this, a few times a
    /// second at most.
    pub async fn verify_primary(&self, address: &str) -> Result<(), UpstreamError> {
        self.open_node(address).await.map(drop)
    }

    /// Open a connection to the node at `address`, which need not be the upstream's own
    /// (a cluster node asked for its topology): TCP, TLS, the handshake (and behind
    /// Sentinel the ROLE check), within the connect timeout. Neither the breaker, the rate
    /// limit nor a connection slot apply: it is for the proxy's own occasional questions,
    /// never a client's connection.
    pub async fn open_node(&self, address: &str) -> Result<Stream, UpstreamError> {
        match tokio::time::timeout(self.settings.connect_timeout, self.open_at(address)).await {
            Ok(r) => r.map(|(stream, _socket)| stream),
            Err(_) => Err(UpstreamError::Unreachable {
                address: address.to_string(),
                reason: format!("no answer within {:?}", self.settings.connect_timeout),
            }),
        }
    }

    /// The longest time one connection attempt (connect plus handshake) may take.
    pub fn connect_timeout(&self) -> Duration {
        self.settings.connect_timeout
    }

    /// Whether connections to Redis use TLS.
    pub fn uses_tls(&self) -> bool {
        self.settings.tls.is_some()
    }

    /// Open a connection to a sentinel at `address`: TCP, and TLS when the upstream uses it
    /// (`rediss-sentinel://`: sentinels and data nodes alike), within the connect timeout;
    /// no handshake (a sentinel has its own password).
    pub async fn open_sentinel(&self, address: &str) -> Result<Stream, UpstreamError> {
        let dial = self.dial(address, false);
        match tokio::time::timeout(self.settings.connect_timeout, dial).await {
            Ok(r) => r.map(|(stream, _socket)| stream),
            Err(_) => Err(UpstreamError::Unreachable {
                address: address.to_string(),
                reason: format!("no answer within {:?}", self.settings.connect_timeout),
            }),
        }
    }

    /// Open a connection to `address`: TCP, TLS, the handshake, and behind Sentinel the ROLE
    /// check (with the duplicate of its socket).
    async fn open_at(&self, address: &str) -> Result<(Stream, Option<OwnedFd>), UpstreamError> {
        let (stream, socket) = self.dial(address, self.tracked.is_some()).await?;
        let stream = self.greet(stream, address).await?;
        Ok((stream, socket))
    }

    /// TCP to `address`, then TLS if configured; with `keep_socket`, a duplicate of the
    /// socket (to shut the connection down from outside on a switch).
    async fn dial(
        &self,
        address: &str,
        keep_socket: bool,
    ) -> Result<(Stream, Option<OwnedFd>), UpstreamError> {
        let unreachable = |e: io::Error| UpstreamError::Unreachable {
            address: address.to_string(),
            reason: e.to_string(),
        };
        let tcp = TcpStream::connect(address).await.map_err(unreachable)?;
        tcp.set_nodelay(true).map_err(unreachable)?;
        let socket = match keep_socket {
            true => Some(tcp.as_fd().try_clone_to_owned().map_err(unreachable)?),
            false => None,
        };
        let stream = match &self.settings.tls {
            None => Stream::Tcp(tcp),
            Some(tls) => {
                let server_name = match &tls.server_name {
                    Some(name) => name.clone(),
                    // Behind Sentinel with no name configured: the host dialled.
                    None => crate::transport::server_name(host_of(address)).map_err(|e| {
                        UpstreamError::Unreachable {
                            address: address.to_string(),
                            reason: format!("TLS server name: {e}"),
                        }
                    })?,
                };
                let s = tls.connector.connect(server_name, tcp).await.map_err(|e| {
                    UpstreamError::Unreachable {
                        address: address.to_string(),
                        reason: format!("TLS handshake failed: {e}"),
                    }
                })?;
                Stream::tls(tokio_rustls::TlsStream::Client(s)).map_err(unreachable)?
            }
        };
        Ok((stream, socket))
    }

    /// The URL's AUTH and SELECT on a new connection, and behind Sentinel the ROLE check.
    async fn greet(&self, mut stream: Stream, address: &str) -> Result<Stream, UpstreamError> {
        let unreachable = |e: io::Error| UpstreamError::Unreachable {
            address: address.to_string(),
            reason: e.to_string(),
        };
        if self.handshake_replies > 0 {
            stream
                .write_all(&self.handshake)
                .await
                .map_err(unreachable)?;
            let replies = read_replies(&mut stream, self.handshake_replies)
                .await
                .map_err(unreachable)?;
            if let Some(err) = replies.into_iter().find_map(|r| r.err()) {
                return Err(UpstreamError::Handshake {
                    address: address.to_string(),
                    reply: err,
                });
            }
        }
        if self.tracked.is_some() {
            // Behind Sentinel, only the primary is ever used: a node the sentinels still
            // name but which was demoted (or not promoted yet) is refused.
            stream
                .write_all(b"*1\r\n$4\r\nROLE\r\n")
                .await
                .map_err(unreachable)?;
            let reply = read_replies(&mut stream, 1).await.map_err(unreachable)?;
            let role = match reply.into_iter().next() {
                Some(Ok(bytes)) => role_of(&bytes),
                Some(Err(e)) => e,
                None => String::new(),
            };
            if role != "master" {
                return Err(UpstreamError::NotPrimary {
                    address: address.to_string(),
                    role,
                });
            }
        }
        Ok(stream)
    }
}

/// `host:port`, an IPv6 address in brackets.
pub fn join_host_port(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host of `host:port` (an IPv6 address without its brackets).
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The role in a `ROLE` reply (`master`, `slave`, `sentinel`), or what came instead.
pub fn role_of(reply: &[u8]) -> String {
    use crate::scanner::tree::{decode, Bounds};
    use redis_protocol::resp2::types::OwnedFrame;
    let first = match decode(reply, &Bounds::SERVER_REPLY) {
        Ok(Some((OwnedFrame::Array(parts), _))) => parts.into_iter().next(),
        _ => None,
    };
    match first {
        Some(OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b)) => {
            String::from_utf8_lossy(&b).into_owned()
        }
        _ => "nothing readable".into(),
    }
}

/// AUTH and SELECT for a target, encoded, and how many replies they produce.
fn handshake_commands(target: &UpstreamTarget) -> (Vec<u8>, usize) {
    let mut out = BytesMut::new();
    let mut n = 0;
    if let Some(pw) = &target.password {
        match &target.username {
            Some(user) => {
                crate::resp::command(&mut out, &[b"AUTH", user.as_bytes(), pw.as_bytes()])
            }
            None => crate::resp::command(&mut out, &[b"AUTH", pw.as_bytes()]),
        }
        n += 1;
    }
    if target.db != 0 {
        crate::resp::command(&mut out, &[b"SELECT", target.db.to_string().as_bytes()]);
        n += 1;
    }
    (out.to_vec(), n)
}

/// The most bytes the replies to one of the proxy's own questions may take together
/// ([`read_replies`]): far above what any of them needs (`COMMAND` takes about 300 KB, an
/// audit page a few MB), so that a server streaming without end costs bounded memory.
pub const OWN_REPLIES_MAX_BYTES: usize = 64 << 20;

/// Read `n` replies from a connection the proxy owns (off the hot path), together within
/// [`OWN_REPLIES_MAX_BYTES`]. Each is `Ok` with its bytes, or `Err` with the error text.
pub async fn read_replies(
    stream: &mut (impl AsyncRead + Unpin),
    n: usize,
) -> io::Result<Vec<Result<Vec<u8>, String>>> {
    read_replies_within(stream, n, OWN_REPLIES_MAX_BYTES).await
}

/// [`read_replies`], refusing (an `InvalidData` error) replies that together pass
/// `max_bytes`.
pub async fn read_replies_within(
    stream: &mut (impl AsyncRead + Unpin),
    n: usize,
    max_bytes: usize,
) -> io::Result<Vec<Result<Vec<u8>, String>>> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut scanner = ReplyScanner::new();
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while out.len() < n {
        match scanner
            .scan(&buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            ReplyStep::Done(end) => {
                let bytes = buf[start..end].to_vec();
                out.push(if scanner.info().kind == ReplyKind::Error {
                    Err(String::from_utf8_lossy(&bytes[1..bytes.len() - 2]).into_owned())
                } else {
                    Ok(bytes)
                });
                start = end;
            }
            ReplyStep::Header { .. } | ReplyStep::Element(_) => {}
            ReplyStep::Partial(_) => {
                if buf.len() >= max_bytes {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a reply over {max_bytes} bytes"),
                    ));
                }
                buf.reserve(64 * 1024);
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before the reply",
                    ));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(rate: u32) -> ConnectGate {
        ConnectGate::unreachable_limited(rate)
    }

    #[test]
    fn the_bucket_spaces_attempts_at_the_configured_rate() {
        let g = gate(10);
        for _ in 0..10 {
            assert_eq!(g.take_token().unwrap(), None);
        }
        let wait = g.take_token().unwrap().expect("bucket is empty");
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn a_failure_opens_the_circuit_and_later_attempts_fail_fast() {
        let g = gate(100);
        // Port 1 on loopback refuses connections.
        let first = g.connect().await.unwrap_err();
        assert!(
            matches!(first, UpstreamError::Unreachable { .. }),
            "{first}"
        );
        let started = Instant::now();
        let second = g.connect().await.unwrap_err();
        assert!(
            matches!(second, UpstreamError::CircuitOpen { .. }),
            "{second}"
        );
        assert!(started.elapsed() < Duration::from_millis(50));
        assert!(g.is_open() && !g.is_healthy());
    }

    #[test]
    fn role_reads_the_first_element() {
        assert_eq!(role_of(b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"), "master");
        assert_eq!(
            role_of(b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:1\r\n"),
            "slave"
        );
        assert_eq!(role_of(b"+OK\r\n"), "nothing readable");
    }

    #[test]
    fn handshake_has_auth_and_select() {
        let t = UpstreamTarget::parse("redis://u:p@h:1/2").unwrap();
        let (bytes, n) = handshake_commands(&t);
        assert_eq!(n, 2);
        assert_eq!(
            bytes,
            b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$1\r\np\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n"
        );
    }
}
