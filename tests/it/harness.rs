//! The test harness: real `redis-server` processes on free ports, proxies started
//! in-process in front of them, and a raw RESP client that reads whole replies using the
//! `redis-protocol` decoder (an independent parser, so the proxy's own scanner is never
//! used to judge itself).

use std::fmt::Debug;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use respguard::app::ProxyHandle;
use respguard::config::RawConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A `redis-server` (or `valkey-server`) process on a free port, stopped on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The server binary: `RESPGUARD_TEST_SERVER` or `redis-server`.
pub fn server_binary() -> String {
    std::env::var("RESPGUARD_TEST_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// Read a child's output until a line containing `needle` (the child's own word that it is
/// ready), then keep draining it in a thread so the child never blocks on a full pipe.
pub fn wait_for_line(output: impl std::io::Read + Send + 'static, needle: &str, what: &str) {
    assert!(
        saw_line(output, needle),
        "{what} exited before saying {needle:?}"
    );
}

/// [`wait_for_line`], saying whether the line came (false: the child exited first).
pub fn saw_line(output: impl std::io::Read + Send + 'static, needle: &str) -> bool {
    let mut lines = BufReader::new(output).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(needle) => break,
            Some(Ok(_)) => continue,
            _ => return false,
        }
    }
    std::thread::spawn(move || for _ in lines {});
    true
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Start a server with no persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start a server with extra `--name value` arguments, on a free port. A port found
    /// free may be taken (by another test's connection) before the server binds it: the
    /// start is tried again on another port, a few times.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_ports(|| extra.iter().map(|a| a.to_string()).collect())
    }

    /// Start a server with the arguments `args()` makes for each attempt (a cluster node
    /// takes a fresh bus port each time), on a free port, tried a few times.
    pub fn start_with_ports(args: impl Fn() -> Vec<String>) -> Self {
        for _ in 0..4 {
            let extra = args();
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            if let Some(server) = Self::try_start_on(free_port(), &extra) {
                return server;
            }
        }
        let extra = args();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Self::start_on(free_port(), &extra)
    }

    /// Start a server on a given port (to restart one where it was).
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        Self::try_start_on(port, extra).unwrap_or_else(|| {
            panic!(
                "{} on port {port} exited before it was ready",
                server_binary()
            )
        })
    }

    /// Start a server on `port`; `None` when it exits before it is ready (a port taken).
    pub fn try_start_on(port: u16, extra: &[&str]) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let bin = server_binary();
        let mut child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .args(["--dir", dir.path().to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (is it installed?): {e}"));
        // Wait for the server's own word that it is ready, not for a fixed time.
        let stdout = child.stdout.take().unwrap();
        if !saw_line(stdout, "Ready to accept connections") {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(RedisServer {
            port,
            child,
            _dir: dir,
        })
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A configuration for a proxy in front of `upstream_url`, on free ports.
pub fn proxy_config(upstream_url: &str) -> RawConfig {
    let mut raw = RawConfig::default();
    raw.proxy.listen = "127.0.0.1:0".into();
    raw.admin.listen = "127.0.0.1:0".into();
    raw.upstream.url = upstream_url.into();
    raw
}

/// How a test's proxy reaches Redis (`upstream.connections`): a connection per client, or
/// a few connections all clients share (a client using connection state gets its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    PerClient,
    Multiplexed,
}

impl Mode {
    /// Both modes, for tests whose behaviour must not depend on the mode.
    pub const BOTH: [Mode; 2] = [Mode::PerClient, Mode::Multiplexed];

    /// `raw` with its upstream connections in this mode.
    pub fn apply(self, mut raw: RawConfig) -> RawConfig {
        raw.upstream.connections = match self {
            Mode::PerClient => respguard::config::ConnectionModel::PerClient,
            Mode::Multiplexed => respguard::config::ConnectionModel::Multiplexed,
        };
        raw
    }

    /// A configuration in this mode in front of `upstream_url`, on free ports.
    pub fn config(self, upstream_url: &str) -> RawConfig {
        self.apply(proxy_config(upstream_url))
    }

    /// Start a proxy in this mode with default settings in front of `server`.
    pub async fn proxy_for(self, server: &RedisServer) -> ProxyHandle {
        start_proxy(self.config(&server.url())).await
    }
}

/// A configuration of a multiplexed proxy (`upstream.connections = "multiplexed"`, the
/// default `shared_connections`) in front of `upstream_url`, on free ports.
pub fn mux_config(upstream_url: &str) -> RawConfig {
    Mode::Multiplexed.config(upstream_url)
}

/// Start a multiplexed proxy with default settings in front of `server`.
pub async fn mux_proxy_for(server: &RedisServer) -> ProxyHandle {
    Mode::Multiplexed.proxy_for(server).await
}

/// Start a proxy in this process.
pub async fn start_proxy(raw: RawConfig) -> ProxyHandle {
    respguard::app::start(raw.validate().expect("valid test config"))
        .await
        .expect("proxy starts")
}

/// Start a proxy in front of `server` with the settings of `toml` (guards, mostly), on
/// free ports.
pub async fn proxy_with_toml(server: &RedisServer, toml: &str) -> ProxyHandle {
    let mut raw = RawConfig::from_toml(toml).expect("test config parses");
    raw.proxy.listen = "127.0.0.1:0".into();
    raw.admin.listen = "127.0.0.1:0".into();
    raw.upstream.url = server.url();
    start_proxy(raw).await
}

/// Start a proxy with default settings in front of `server`.
pub async fn proxy_for(server: &RedisServer) -> ProxyHandle {
    start_proxy(proxy_config(&server.url())).await
}

/// A raw RESP connection that reads whole replies as their exact bytes.
pub struct Conn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Connect to `addr` (bounded by [`WAIT`]), with Nagle's algorithm off so every
    /// command leaves at once.
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Send raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Send one command, encoded as multibulk.
    pub async fn cmd(&mut self, args: &[&str]) {
        let bytes = encode(args);
        self.send(&bytes).await;
    }

    /// Read exactly one reply (an attribute counts with the reply it annotates).
    pub async fn reply(&mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, self.read_reply())
            .await
            .expect("a reply in time")
    }

    async fn read_reply(&mut self) -> Vec<u8> {
        loop {
            if let Some(n) = frame_len(&self.buf) {
                return self.buf.split_to(n).to_vec();
            }
            self.buf.reserve(64 * 1024);
            let n = self.stream.read_buf(&mut self.buf).await.expect("read");
            assert!(
                n > 0,
                "connection closed while a reply was expected; have {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Read `n` replies and return them as one string (lossy UTF-8) for comparison.
    pub async fn replies(&mut self, n: usize) -> String {
        let mut out = String::new();
        for _ in 0..n {
            out.push_str(&String::from_utf8_lossy(&self.reply().await));
        }
        out
    }

    /// Send a command and read its reply as a string.
    pub async fn call(&mut self, args: &[&str]) -> String {
        self.cmd(args).await;
        String::from_utf8_lossy(&self.reply().await).into_owned()
    }

    /// One reply as a string, or what came before the connection closed.
    pub async fn read_reply_or_close(&mut self) -> String {
        loop {
            if let Some(n) = frame_len(&self.buf) {
                return String::from_utf8_lossy(&self.buf.split_to(n)).into_owned();
            }
            self.buf.reserve(4096);
            match tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&self.buf).into_owned(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("no reply and no close in time"),
            }
        }
    }

    /// The next `n` bytes, whatever they hold (a reply too deep for [`frame_len`]).
    pub async fn read_exactly(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.buf.reserve(64 * 1024);
            let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("bytes in time")
                .expect("read");
            assert!(read > 0, "closed after {} of {n} bytes", self.buf.len());
        }
        self.buf.split_to(n).to_vec()
    }

    /// Wait until the server closes the connection; returns the bytes that came before.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut rest = self.buf.split().to_vec();
        tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .ok();
        rest
    }
}

/// Encode a command as multibulk.
pub fn encode(args: &[&str]) -> Vec<u8> {
    encode_bytes(args)
}

/// Encode a command of raw byte arguments as multibulk.
pub fn encode_bytes<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The length of the first complete RESP2/RESP3 frame in `buf`, by the reference decoder.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.is_empty() {
        return None;
    }
    match redis_protocol::resp3::decode::complete::decode(buf) {
        Ok(Some((frame, n))) => {
            // An attribute frame annotates the next one: both are one reply.
            if matches!(frame, redis_protocol::resp3::types::OwnedFrame::Map { .. })
                && buf[0] == b'|'
            {
                frame_len(&buf[n..]).map(|m| n + m)
            } else {
                Some(n)
            }
        }
        Ok(None) => None,
        // RESP2's null bulk string and null array (`$-1`, `*-1`) are not RESP3: a reply
        // from a RESP2 connection is decoded as RESP2.
        Err(_) => match redis_protocol::resp2::decode::decode(buf) {
            Ok(Some((_, n))) => Some(n),
            Ok(None) => None,
            Err(e) => panic!(
                "invalid RESP from the server: {e:?}: {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(200)])
            ),
        },
    }
}

/// Mask what legitimately differs between two connections: client ids in HELLO replies
/// and CLIENT ID, addresses in MONITOR lines.
pub fn mask(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("id\r\n:") {
        out.push_str(&rest[..i + 5]);
        rest = &rest[i + 5..];
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        out.push('N');
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// Run a Python snippet (redis-py, installed by `scripts/install-test-deps.sh`) and check
/// that it succeeded and printed `ok`; otherwise fail with its output.
pub async fn python_ok(script: &str) {
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a check polled by [`eventually!`] reports: whether the awaited state holds, and if
/// not, what it saw instead (for the failure message).
pub trait Condition {
    /// What the check yields once the state holds.
    type Value;
    /// `Ok` with the value once the state holds, `Err` with what was seen otherwise.
    fn outcome(self) -> Result<Self::Value, String>;
}

impl Condition for bool {
    type Value = ();
    fn outcome(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false".into())
        }
    }
}

impl<T, E: Debug> Condition for Result<T, E> {
    type Value = T;
    fn outcome(self) -> Result<T, String> {
        self.map_err(|seen| format!("{seen:?}"))
    }
}

/// How long [`eventually!`] pauses between two checks: short against the waits it bounds,
/// long enough that polling another process does not spin.
const POLL_PAUSE: Duration = Duration::from_millis(10);

/// Check `$check` (an expression of the calling async function, which may `.await`, giving
/// a `bool` or a `Result` whose `Err` is what it saw instead) until it holds, for at most
/// `$within`; then fail, saying `$what` never happened and what the last check saw. It
/// evaluates to the check's value. For states no event announces (another process's view,
/// a window of time passing); where an event exists, await it instead. A macro rather than a
/// function taking an async closure, so a check may borrow the caller's connections and
/// still run inside a future that must be `Send`.
macro_rules! eventually {
    ($within:expr, $what:expr, $check:expr $(,)?) => {{
        let tries = $crate::harness::Tries::new($within);
        loop {
            match $crate::harness::Condition::outcome($check) {
                Ok(value) => break value,
                Err(seen) => tries.again(&$what, seen).await,
            }
        }
    }};
}
pub(crate) use eventually;

/// The deadline of one [`eventually!`] wait.
pub struct Tries {
    within: Duration,
    deadline: tokio::time::Instant,
}

impl Tries {
    /// A wait of at most `within`, from now.
    pub fn new(within: Duration) -> Self {
        Tries {
            within,
            deadline: tokio::time::Instant::now() + within,
        }
    }

    /// After a check that did not hold: fail if the deadline has passed, naming `what` and
    /// what the check saw; otherwise pause before the next check.
    pub async fn again(&self, what: &str, seen: String) {
        assert!(
            tokio::time::Instant::now() < self.deadline,
            "{what}: not within {:?}; last seen: {seen}",
            self.within
        );
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// A response of the admin listener: its status code, headers and body.
pub struct HttpResponse {
    /// The status code (`200`, `503`, ...).
    pub status: u16,
    /// The status line and the headers, as sent.
    pub head: String,
    /// Everything after the headers.
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON (the `/status` report), failing the test if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// GET `path` from the admin listener at `addr` (one request on its own connection, read
/// until the listener closes it).
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("admin connect in time")
        .expect("admin connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("send the request");
    let mut response = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut response))
        .await
        .expect("a response in time")
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {response:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"));
    HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// The body of the admin listener's `/metrics` at `admin` (Prometheus text), checked to be
/// a `200`; read several series of one moment from it with [`sample`].
pub async fn scrape(admin: SocketAddr) -> String {
    let response = http_get(admin, "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    response.body
}

/// The value of one series in a `/metrics` body: the metric's name with its labels as the
/// proxy prints them, e.g. `respguard_enqueues_total{rule="jobs",kind="duplicate"}`.
/// `None` if the series is not there.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

/// One series (as for [`sample`]) from a fresh scrape of the admin listener at `admin`.
pub async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    sample(&scrape(admin).await, series)
}

/// A `redis-server --sentinel` process on a port of its own, monitoring one master, stopped
/// on drop. Its configuration is a file of its own in a temporary directory: a sentinel
/// rewrites it as it learns the deployment.
pub struct SentinelServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SentinelServer {
    /// Start a sentinel on `port` monitoring `master` at `127.0.0.1:primary_port` with
    /// `quorum`, a node counted down after `down_after_ms` of silence and a failover
    /// abandoned after `failover_timeout_ms`.
    pub fn start_on(
        port: u16,
        master: &str,
        primary_port: u16,
        quorum: u32,
        down_after_ms: u32,
        failover_timeout_ms: u32,
    ) -> Self {
        let timing = format!(
            "sentinel down-after-milliseconds {master} {down_after_ms}\n\
             sentinel failover-timeout {master} {failover_timeout_ms}\n"
        );
        Self::start_configured(port, master, primary_port, quorum, &timing)
    }

    /// Start a sentinel on `port` monitoring `master` at `127.0.0.1:primary_port`, with
    /// `extra` lines of configuration after the monitoring ones (TLS, timings).
    pub fn start_configured(
        port: u16,
        master: &str,
        primary_port: u16,
        quorum: u32,
        extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile \"\"\n\
                 sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}\n\
                 sentinel parallel-syncs {master} 1\n{extra}",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let bin = server_binary();
        let mut child = Command::new(&bin)
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} --sentinel: {e}"));
        // Its own word that it monitors the master.
        let stdout = child.stdout.take().unwrap();
        wait_for_line(
            stdout,
            "+monitor master",
            &format!("sentinel on port {port}"),
        );
        SentinelServer {
            port,
            child,
            _dir: dir,
        }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reply of `depth` nested one-element arrays around `:1`: at 100,000 levels, deep
/// enough to overflow the stack of a decoder that recurses once per level.
pub fn deeply_nested_reply(depth: usize) -> Vec<u8> {
    let mut reply = b"*1\r\n".repeat(depth);
    reply.extend_from_slice(b":1\r\n");
    reply
}

/// A server that is not Redis: on every connection, each read of the peer's bytes is
/// answered with `reply` once. Counts the answers it gave.
pub struct ScriptedPeer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How many times it has answered.
    pub answers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ScriptedPeer {
    /// Listen on a free port and answer every read with `reply`.
    pub async fn start(reply: Vec<u8>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = answers.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let reply = reply.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {
                        if socket.write_all(&reply).await.is_err() {
                            return;
                        }
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        ScriptedPeer { addr, answers }
    }
}
