//! What the proxy must carry unchanged though no ordinary reply looks like it: the deepest
//! nesting Redis produces, and replication (SYNC/PSYNC) through the proxy's address.
//! Everything is compared with what Redis gives directly.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Send `request` on a fresh connection and read until the bytes end with `last`.
async fn exchange(addr: SocketAddr, request: &[u8], last: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send");
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while !got.ends_with(last) {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut chunk = [0u8; 64 * 1024];
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {last:?} in time; have {} bytes", got.len()))
            .expect("read");
        assert!(n > 0, "closed after {} bytes: {:?}", got.len(), tail(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

fn tail(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[b.len().saturating_sub(120)..]).into_owned()
}

/// A Lua table that contains itself makes Redis nest arrays until Lua's stack ends (about
/// 8,000 levels) and close them with an error; the proxy once dropped the client past 128
/// levels. The reply must arrive whole, byte for byte, in RESP2 and RESP3.
#[tokio::test]
async fn replies_nested_as_deep_as_lua_allows_pass_unchanged() {
    let redis = RedisServer::start();
    let proxy = proxy_for(&redis).await;
    for proto in ["2", "3"] {
        let mut request = encode(&["HELLO", proto]);
        request.extend(encode(&[
            "EVAL",
            "local a = {}; local b = {a}; a[1] = b; return a",
            "0",
        ]));
        request.extend(encode(&["PING"]));
        let direct = exchange(redis.addr(), &request, b"+PONG\r\n").await;
        let through = exchange(proxy.addr, &request, b"+PONG\r\n").await;
        let depth = direct.windows(4).filter(|w| w == b"*1\r\n").count();
        assert!(
            depth > 1000,
            "RESP{proto}: Redis nested only {depth} levels"
        );
        assert_eq!(
            mask(&String::from_utf8_lossy(&direct)),
            mask(&String::from_utf8_lossy(&through)),
            "RESP{proto}"
        );
    }
    proxy.shutdown().await;
}

/// A primary whose full syncs start at once (diskless or from disk).
fn primary(diskless: bool) -> RedisServer {
    RedisServer::start_with(&[
        "--repl-diskless-sync",
        if diskless { "yes" } else { "no" },
        "--repl-diskless-sync-delay",
        "0",
    ])
}

/// The primary's `INFO replication` lines for its replicas, e.g.
/// `slave0:ip=127.0.0.1,port=0,state=online,offset=7,lag=0`.
async fn replica_lines(primary: SocketAddr) -> String {
    let info = Conn::open(primary)
        .await
        .call(&["INFO", "replication"])
        .await;
    let lines: Vec<&str> = info.lines().filter(|l| l.starts_with("slave")).collect();
    lines.join("\n")
}

/// Read from `s` into `got` until it holds `want` (a deadline bounds the wait).
async fn read_until(s: &mut TcpStream, got: &mut Vec<u8>, want: &[u8]) {
    let deadline = Instant::now() + WAIT;
    while !got.windows(want.len()).any(|w| w == want) {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut chunk = [0u8; 64 * 1024];
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {:?} in time: {:?}", want, tail(got)))
            .expect("read");
        assert!(n > 0, "closed before {:?}: {:?}", want, tail(got));
        got.extend_from_slice(&chunk[..n]);
    }
}

/// A replica attached to a Redis through the proxy (its only reachable address) once
/// lost its link with "malformed reply": the RDB and the replication stream are not
/// replies. Through the proxy's tunnel it must load the data set, follow later writes and
/// acknowledge its offset, with the RDB sent from disk (`$<len>`) or diskless (`$EOF:`).
#[tokio::test]
async fn a_replica_attached_through_the_proxy_follows_its_primary() {
    for diskless in [false, true] {
        let primary = primary(diskless);
        let mut raw = proxy_config(&primary.url());
        raw.admin.listen = "127.0.0.1:0".into();
        let proxy = start_proxy(raw).await;
        let mut writer = Conn::open(primary.addr()).await;
        assert_eq!(writer.call(&["SET", "before", "1"]).await, "+OK\r\n");
        let port = proxy.addr.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
        let mut reader = Conn::open(replica.addr()).await;
        for key in ["before", "after"] {
            if key == "after" {
                assert_eq!(writer.call(&["SET", "after", "2"]).await, "+OK\r\n");
            }
            eventually!(WAIT, format!("the replica got {key}"), {
                reader.call(&["EXISTS", key]).await == ":1\r\n"
            });
        }
        // The replica's REPLCONF ACKs cross the tunnel: the primary sees it online.
        eventually!(WAIT, "primary sees the replica online", {
            replica_lines(primary.addr()).await.contains("state=online")
        });
        let metrics = scrape(proxy.admin_addr.unwrap()).await;
        let tunnels = sample(&metrics, "respguard_replication_tunnels_total");
        assert!(tunnels >= Some(1.0), "{metrics}");
        drop(replica);
        proxy.shutdown().await;
    }
}

/// Read a full sync's preamble: keep-alive newlines, `+FULLRESYNC <id> <offset>`, then
/// `$<len>`; returns the replication id and the RDB's length.
async fn full_sync_preamble(s: &mut TcpStream, got: &mut Vec<u8>) -> (String, usize) {
    read_until(s, got, b"\r\n$").await;
    let text = String::from_utf8_lossy(got).into_owned();
    let start = text.find("+FULLRESYNC ").expect("a FULLRESYNC line");
    assert!(text[..start].bytes().all(|b| b == b'\n'), "{text:?}");
    let id = text[start..].split(' ').nth(1).unwrap().to_string();
    read_until(s, got, b"REDIS").await;
    let dollar = got.iter().position(|&b| b == b'$').unwrap();
    let line_end = dollar + got[dollar..].windows(2).position(|w| w == b"\r\n").unwrap();
    let len = std::str::from_utf8(&got[dollar + 1..line_end])
        .unwrap()
        .parse()
        .expect("an RDB length");
    got.drain(..line_end + 2);
    (id, len)
}

/// `PSYNC ? -1` on a raw socket, through the proxy as directly: the same replication id and
/// an RDB of the same size, then later writes arrive as the replication stream and a
/// `REPLCONF ACK` sent back (which gets no reply) reaches the primary. A partial resync
/// (`+CONTINUE`) is tunnelled too.
#[tokio::test]
async fn raw_psync_through_the_proxy_gets_the_rdb_and_the_stream() {
    let primary = primary(false);
    let proxy = proxy_for(&primary).await;
    let mut writer = Conn::open(primary.addr()).await;
    assert_eq!(writer.call(&["SET", "k", "v"]).await, "+OK\r\n");
    let mut links = Vec::new();
    for addr in [primary.addr(), proxy.addr] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PSYNC ? -1\r\n").await.unwrap();
        let mut got = Vec::new();
        let (id, len) = full_sync_preamble(&mut s, &mut got).await;
        while got.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got.starts_with(b"REDIS"));
        got.drain(..len);
        links.push((s, got, (id, len)));
    }
    assert_eq!(writer.call(&["SET", "streamed", "x"]).await, "+OK\r\n");
    for (i, (s, got, _)) in links.iter_mut().enumerate() {
        read_until(s, got, b"streamed").await;
        let ack = format!("REPLCONF ACK {}\r\n", 1000 + i);
        s.write_all(ack.as_bytes()).await.unwrap();
        let want = format!("offset={},", 1000 + i);
        eventually!(WAIT, "the primary records the acknowledged offset", {
            replica_lines(primary.addr()).await.contains(&want)
        });
    }
    let seen: Vec<_> = links.iter().map(|(_, _, seen)| seen).collect();
    assert_eq!(
        seen[0], seen[1],
        "direct vs proxy (replication id, RDB length)"
    );
    // A partial resync from where the primary is now: `+CONTINUE`, then the stream.
    let info = writer.call(&["INFO", "replication"]).await;
    let offset: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("master_repl_offset");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let psync = format!("PSYNC {} {}\r\n", seen[0].0, offset + 1);
    s.write_all(psync.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut s, &mut got, b"+CONTINUE").await;
    assert_eq!(writer.call(&["SET", "continued", "x"]).await, "+OK\r\n");
    read_until(&mut s, &mut got, b"continued").await;
    proxy.shutdown().await;
}

/// Commands pipelined before and after PSYNC keep Redis's order: Redis refuses PSYNC while
/// replies are pending and runs what follows as commands; and what follows a PSYNC Redis
/// accepts (here `REPLCONF ACK`) reaches it on the replication link, which then carries
/// the stream.
#[tokio::test]
async fn commands_pipelined_around_psync_keep_redis_order() {
    let primary = primary(false);
    let proxy = proxy_for(&primary).await;
    let pipeline = b"PING\r\nSET before 1\r\nPSYNC ? -1\r\nSET after 1\r\nPING\r\n";
    let direct = exchange(primary.addr(), pipeline, b"+OK\r\n+PONG\r\n").await;
    let through = exchange(proxy.addr, pipeline, b"+OK\r\n+PONG\r\n").await;
    assert!(direct.starts_with(b"+PONG\r\n+OK\r\n-"), "{direct:?}");
    assert_eq!(
        String::from_utf8_lossy(&direct),
        String::from_utf8_lossy(&through)
    );
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PSYNC ? -1\r\nREPLCONF ACK 4242\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    full_sync_preamble(&mut s, &mut got).await;
    eventually!(WAIT, "the ACK sent behind PSYNC reaches the primary", {
        replica_lines(primary.addr()).await.contains("offset=4242,")
    });
    let mut writer = Conn::open(primary.addr()).await;
    assert_eq!(writer.call(&["SET", "later", "1"]).await, "+OK\r\n");
    read_until(&mut s, &mut got, b"later").await;
    proxy.shutdown().await;
}

/// `redis-cli --rdb` through the proxy saves an RDB that `redis-check-rdb` accepts, of the
/// size it saves directly.
#[tokio::test]
async fn redis_cli_rdb_through_the_proxy_matches_direct() {
    let primary = primary(true);
    let proxy = proxy_for(&primary).await;
    let mut writer = Conn::open(primary.addr()).await;
    for i in 0..100 {
        writer.call(&["SET", &format!("k{i}"), "v"]).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut sizes = Vec::new();
    for (name, port) in [("direct", primary.port), ("proxy", proxy.addr.port())] {
        let file = dir.path().join(format!("{name}.rdb"));
        let out = tokio::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "--rdb", file.to_str().unwrap()])
            .output();
        let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        let check = std::process::Command::new("redis-check-rdb")
            .arg(&file)
            .output()
            .unwrap();
        assert!(check.status.success(), "{name}: {check:?}");
        sizes.push(std::fs::metadata(&file).unwrap().len());
    }
    assert_eq!(sizes[0], sizes[1], "direct vs proxy RDB size");
    proxy.shutdown().await;
}

/// With `proxy.replication = "refuse"`, SYNC and PSYNC get the proxy's error naming the
/// setting, and the connection goes on serving commands.
#[tokio::test]
async fn replication_refused_by_setting_names_it() {
    let primary = primary(false);
    let mut raw = proxy_config(&primary.url());
    raw.proxy.replication = respguard::config::Replication::Refuse;
    let proxy = start_proxy(raw).await;
    let mut c = Conn::open(proxy.addr).await;
    for cmd in [&["SYNC"][..], &["PSYNC", "?", "-1"]] {
        let reply = c.call(cmd).await;
        assert!(
            reply.starts_with("-ERR respguard: ") && reply.contains("proxy.replication"),
            "{reply}"
        );
    }
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
    assert_eq!(replica_lines(primary.addr()).await, "");
    proxy.shutdown().await;
}
