//! The proxy's own memory stays bounded: a 256 MiB value passes through, 1,000 idle
//! connections stay open, a client floods a pipeline without reading, a command declares a
//! million arguments. These run the real binary as its own process and read its RSS from
//! /proc, and print the numbers.

use std::process::{Child, Command, Stdio};

use tokio::io::AsyncWriteExt;

use crate::harness::*;

/// The `respguard` binary running in front of a server, stopped on drop.
pub struct ProxyProcess {
    child: Child,
    pub addr: std::net::SocketAddr,
}

impl ProxyProcess {
    pub fn start(upstream: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_respguard"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                upstream,
            ])
            .args(["--log-level", "info"])
            .args(if extra.contains(&"--admin-listen") {
                &[][..]
            } else {
                &["--admin-listen", ""][..]
            })
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start respguard");
        wait_for_line(
            child.stderr.take().unwrap(),
            "respguard listening",
            "respguard",
        );
        ProxyProcess {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        }
    }

    /// Start with the configuration file `config` and the admin listener on a free port;
    /// returns the process and the admin listener's address.
    pub fn start_with_admin(
        upstream: &str,
        config: &std::path::Path,
    ) -> (Self, std::net::SocketAddr) {
        let admin = free_port();
        let proxy = ProxyProcess::start(
            upstream,
            &[
                "--config",
                config.to_str().unwrap(),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ],
        );
        (proxy, ([127, 0, 0, 1], admin).into())
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send the signal `name` (`TERM`, `HUP`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Wait (at most [`WAIT`]) for the process to exit by itself; its exit status.
    pub async fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        eventually!(
            WAIT,
            "respguard exited",
            self.child.try_wait().unwrap().ok_or("running")
        )
    }

    /// (current RSS, peak RSS) in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LIMIT_KIB: u64 = 64 * 1024;

#[tokio::test]
async fn a_256_mib_value_passes_through_in_bounded_memory() {
    let server = RedisServer::start();
    let proxy = ProxyProcess::start(&server.url(), &[]);
    let mut c = Conn::open(proxy.addr).await;
    let len: usize = 256 * 1024 * 1024;
    c.send(format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${len}\r\n").as_bytes())
        .await;
    let chunk = vec![b'v'; 1024 * 1024];
    for _ in 0..len / chunk.len() {
        c.stream.write_all(&chunk).await.unwrap();
    }
    c.send(b"\r\n").await;
    assert_eq!(c.replies(1).await, "+OK\r\n");
    let (_, peak_write) = proxy.rss_kib();
    c.cmd(&["GET", "big"]).await;
    let reply = c.reply().await;
    assert_eq!(reply.len(), len + format!("${len}\r\n\r\n").len());
    let (rss, peak) = proxy.rss_kib();
    println!("256 MiB value: proxy peak RSS {peak_write} KiB after SET, {peak} KiB after GET, {rss} KiB now");
    assert!(
        peak < LIMIT_KIB,
        "proxy peak RSS {peak} KiB while a 256 MiB value passed"
    );
}

#[tokio::test]
async fn a_thousand_idle_connections_in_bounded_memory() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let server = RedisServer::start();
    let proxy = ProxyProcess::start(&server.url(), &[]);
    let mut conns = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let mut c = Conn::open(proxy.addr).await;
        assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
        conns.push(c);
    }
    let (rss, peak) = proxy.rss_kib();
    println!("1000 idle connections: proxy RSS {rss} KiB (peak {peak} KiB)");
    assert!(
        rss < LIMIT_KIB,
        "proxy RSS {rss} KiB with 1000 idle connections"
    );
    // Every connection still works.
    for c in conns.iter_mut().step_by(97) {
        assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
    }
}

#[tokio::test]
async fn a_client_that_never_reads_cannot_grow_the_proxy() {
    let server = RedisServer::start();
    let proxy = ProxyProcess::start(&server.url(), &[]);
    let c = Conn::open(proxy.addr).await;
    let mut batch = Vec::new();
    for _ in 0..10_000 {
        batch.extend_from_slice(&encode(&["SET", "k", &"v".repeat(100)]));
    }
    // Write until the proxy stops taking bytes: that is back-pressure reaching the client.
    let mut written = 0usize;
    // Resume where the last write stopped: the batch is whole commands, so wrapping
    // around at its end keeps the stream valid.
    let mut at = 0usize;
    loop {
        c.stream.writable().await.unwrap();
        match c.stream.try_write(&batch[at..]) {
            Ok(n) => {
                written += n;
                at = (at + n) % batch.len();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Writable again within a moment means the proxy is still draining.
                let more = tokio::time::timeout(
                    std::time::Duration::from_millis(500),
                    c.stream.writable(),
                )
                .await;
                if more.is_err() {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
        assert!(written < 4 << 30, "the proxy never pushed back");
    }
    let (rss, peak) = proxy.rss_kib();
    println!("client not reading: {} MiB accepted before back-pressure, proxy RSS {rss} KiB (peak {peak} KiB)", written >> 20);
    assert!(peak < LIMIT_KIB, "proxy peak RSS {peak} KiB");
}

#[tokio::test]
async fn a_million_argument_command_streams_in_bounded_memory() {
    let server = RedisServer::start();
    let proxy = ProxyProcess::start(&server.url(), &[]);
    let mut c = Conn::open(proxy.addr).await;
    let n = 1_000_000;
    let mut cmd = format!("*{}\r\n$5\r\nRPUSH\r\n$4\r\nlist\r\n", n + 2).into_bytes();
    for i in 0..n {
        let v = (i % 1000).to_string();
        cmd.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
    }
    c.send(&cmd).await;
    assert_eq!(c.replies(1).await, format!(":{n}\r\n"));
    let (rss, peak) = proxy.rss_kib();
    println!(
        "RPUSH with 1,000,000 arguments ({} MiB): proxy RSS {rss} KiB (peak {peak} KiB)",
        cmd.len() >> 20
    );
    assert!(peak < LIMIT_KIB, "proxy peak RSS {peak} KiB");
    assert_eq!(c.call(&["LLEN", "list"]).await, format!(":{n}\r\n"));
}

#[tokio::test]
async fn a_1_gib_set_is_refused_in_bounded_memory_and_the_connection_goes_on() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("respguard.toml");
    std::fs::write(
        &config,
        "[protocol]\nmax_bulk_len = \"2GiB\"\n[[guards.size.rules]]\npattern = \"blob:*\"\nmax_value = \"1MiB\"\n",
    )
    .unwrap();
    let proxy = ProxyProcess::start(&server.url(), &["--config", config.to_str().unwrap()]);
    let mut c = Conn::open(proxy.addr).await;
    let len: usize = 1 << 30;
    c.send(format!("*3\r\n$3\r\nSET\r\n$6\r\nblob:1\r\n${len}\r\n").as_bytes())
        .await;
    // The refusal comes as soon as the length is known; the payload is read and discarded.
    let refusal = String::from_utf8_lossy(&c.reply().await).into_owned();
    assert_eq!(
        refusal,
        "-ERR respguard: value of 1073741824 bytes for key 'blob:1' exceeds the 1048576-byte limit of size rule 'blob:*'\r\n"
    );
    let chunk = vec![b'v'; 4 * 1024 * 1024];
    for _ in 0..len / chunk.len() {
        c.stream.write_all(&chunk).await.unwrap();
    }
    c.send(b"\r\n").await;
    assert_eq!(c.call(&["SET", "after", "1"]).await, "+OK\r\n");
    assert_eq!(c.call(&["EXISTS", "blob:1"]).await, ":0\r\n");
    let (rss, peak) = proxy.rss_kib();
    println!("1 GiB SET refused: proxy RSS {rss} KiB (peak {peak} KiB)");
    assert!(peak < LIMIT_KIB, "proxy peak RSS {peak} KiB");
}

/// A flood of a million distinct jobs fills the enqueue guard's fingerprint table to its
/// configured bound and no further: the proxy's RSS grows by the table's 24 bytes per slot.
#[tokio::test]
async fn a_million_distinct_jobs_stay_within_the_fingerprint_bound() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("respguard.toml");
    std::fs::write(
        &config,
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [guards.enqueue]\nmax_fingerprints = 200000\n\
         [[guards.enqueue.rules]]\npreset = \"generic\"\nname = \"flood\"\n\
         pattern = \"flood:*\"\nformat = \"raw\"\naction = \"drop\"\nwindow = \"1h\"\n",
    )
    .unwrap();
    let (proxy, admin) = ProxyProcess::start_with_admin(&server.url(), &config);
    let mut c = Conn::open(proxy.addr).await;
    let (rss_before, _) = proxy.rss_kib();
    // LPUSHX to a missing list: the guard reads every job, Redis stores nothing.
    let batch = 10_000;
    for b in 0..100 {
        let mut cmds = Vec::with_capacity(batch * 48);
        for i in 0..batch {
            let job = format!("job-{}", b * batch + i);
            cmds.extend_from_slice(&encode(&["LPUSHX", "flood:q", &job]));
        }
        c.send(&cmds).await;
        assert_eq!(c.replies(batch).await, ":0\r\n".repeat(batch));
    }
    let (rss, peak) = proxy.rss_kib();
    let metrics = scrape(admin).await;
    let gauge =
        |series: &str| -> f64 { sample(&metrics, series).unwrap_or_else(|| panic!("no {series}")) };
    let capacity = gauge("respguard_enqueue_fingerprints_capacity");
    let used = gauge("respguard_enqueue_fingerprints");
    let firsts = gauge(r#"respguard_enqueues_total{rule="flood",kind="first"}"#);
    println!(
        "1,000,000 distinct jobs, max_fingerprints 200000: {used} slots used of {capacity}; \
         proxy RSS {rss_before} KiB before, {rss} KiB after (peak {peak} KiB)"
    );
    assert_eq!(firsts, 1_000_000.0, "every job was read as a new one");
    assert!((200_000.0..=202_048.0).contains(&capacity), "{capacity}");
    assert!(
        used <= capacity && used > capacity * 0.9,
        "{used} of {capacity}"
    );
    // The table is 24 bytes a slot (4.7 MiB here); allow the same again for everything else.
    let table_kib = (capacity as u64 * 24) >> 10;
    assert!(
        rss < rss_before + 2 * table_kib,
        "RSS grew {} KiB for a {table_kib} KiB table",
        rss - rss_before
    );
}
