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

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}

/// A place among the upstream connections allowed at once; dropped with its connection.
#[derive(Debug)]
pub struct UpstreamSlot {
    _permit: Option<OwnedSemaphorePermit>,
    open: Arc<AtomicUsize>,
}

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
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
    settings: GateSettings,
    state: Mutex<GateState>,
    slots: Option<Arc<Semaphore>>,
    handshake: Vec<u8>,
    handshake_replies: usize,
    /// Connections open now (their slots alive).
    open: Arc<AtomicUsize>,
}

impl ConnectGate {
    /// A gate for `target`, with a full bucket and a closed circuit.
    pub fn new(target: UpstreamTarget, settings: GateSettings) -> Self {
        let (handshake, handshake_replies) = handshake_commands(&target);
        ConnectGate {
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

    /// Where the upstream is.
    pub fn target(&self) -> &UpstreamTarget {
        &self.target
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
        let permit = match &self.slots {
            None => None,
            Some(s) => Some(Arc::clone(s).try_acquire_owned().map_err(|_| {
                UpstreamError::TooManyConnections {
                    address: self.target.address.clone(),
                    max: self.settings.max_connections,
                }
            })?),
        };
        let stream = self.connect_stream().await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        let slot = UpstreamSlot {
            _permit: permit,
            open: Arc::clone(&self.open),
        };
        Ok((stream, slot))
    }

    async fn connect_stream(&self) -> Result<Stream, UpstreamError> {
        let deadline = Instant::now() + self.settings.connect_timeout;
        loop {
            let wait = self.take_token()?;
            let Some(wait) = wait else { break };
            if Instant::now() + wait > deadline {
                return Err(UpstreamError::RateLimited {
                    address: self.target.address.clone(),
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
                address: self.target.address.clone(),
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
                address: self.target.address.clone(),
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

    fn record(&self, result: &Result<Stream, UpstreamError>) {
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

    async fn open(&self) -> Result<Stream, UpstreamError> {
        let unreachable = |e: io::Error| UpstreamError::Unreachable {
            address: self.target.address.clone(),
            reason: e.to_string(),
        };
        let tcp = TcpStream::connect(&self.target.address)
            .await
            .map_err(unreachable)?;
        tcp.set_nodelay(true).map_err(unreachable)?;
        let mut stream = match &self.settings.tls {
            None => Stream::Tcp(tcp),
            Some(tls) => {
                let s = tls
                    .connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|e| UpstreamError::Unreachable {
                        address: self.target.address.clone(),
                        reason: format!("TLS handshake failed: {e}"),
                    })?;
                Stream::tls(tokio_rustls::TlsStream::Client(s)).map_err(unreachable)?
            }
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
                    address: self.target.address.clone(),
                    reply: err,
                });
            }
        }
        Ok(stream)
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

/// Read `n` replies from a connection the proxy owns (off the hot path). Each is `Ok` with
/// its bytes, or `Err` with the error text.
pub async fn read_replies(
    stream: &mut (impl AsyncRead + Unpin),
    n: usize,
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
