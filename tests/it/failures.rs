//! Failure paths: Redis unreachable, killed, slow; clients that leave at the worst moment;
//! the connection cap; the proxy's own handshake with Redis.

use std::time::{Duration, Instant};

use crate::differential::wait_for_blocked;
use crate::harness::*;

fn fast_backoff(url: &str) -> respguard::config::RawConfig {
    let mut raw = proxy_config(url);
    raw.upstream.backoff_min = respguard::config::HumanDuration(Duration::from_millis(10));
    raw.upstream.backoff_max = respguard::config::HumanDuration(Duration::from_millis(50));
    raw
}

#[tokio::test]
async fn unreachable_upstream_gives_each_command_a_prompt_error_then_recovers() {
    let port = free_port();
    let proxy = start_proxy(fast_backoff(&format!("redis://127.0.0.1:{port}"))).await;
    let mut c = Conn::open(proxy.addr).await;
    let started = Instant::now();
    let mut batch = encode(&["SET", "a", "1"]);
    batch.extend_from_slice(&encode(&["GET", "a"]));
    batch.extend_from_slice(&encode(&["PING"]));
    c.send(&batch).await;
    for _ in 0..3 {
        let r = String::from_utf8_lossy(&c.reply().await).into_owned();
        assert!(r.starts_with("-ERR respguard: upstream 127.0.0.1:"), "{r}");
        assert!(
            r.contains("unreachable") || r.contains("unavailable"),
            "{r}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "errors must be prompt: {:?}",
        started.elapsed()
    );
    // Redis comes up where the proxy expects it: the same connection starts working.
    let _server = RedisServer::start_on(port, &[]);
    eventually!(WAIT, "the proxy reconnected", {
        match c.call(&["PING"]).await {
            pong if pong == "+PONG\r\n" => Ok(()),
            other => Err(other),
        }
    });
    assert_eq!(c.call(&["SET", "a", "1"]).await, "+OK\r\n");
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_killed_mid_pipeline_errors_every_pending_command_then_closes() {
    let mut server = RedisServer::start();
    let proxy = start_proxy(fast_backoff(&server.url())).await;
    let mut c = Conn::open(proxy.addr).await;
    let mut watcher = Conn::open(server.addr()).await;
    assert_eq!(c.call(&["SET", "k", "v"]).await, "+OK\r\n");
    // A blocked command holds the rest of the pipeline behind it.
    let mut batch = encode(&["BLPOP", "never", "0"]);
    for _ in 0..5 {
        batch.extend_from_slice(&encode(&["GET", "k"]));
    }
    c.send(&batch).await;
    wait_for_blocked(&mut watcher, 1).await;
    server.kill();
    let rest = String::from_utf8_lossy(&c.read_to_close().await).into_owned();
    let errors: Vec<&str> = rest.split_terminator("\r\n").collect();
    assert_eq!(errors.len(), 6, "one error per pending command: {rest}");
    for e in errors {
        assert!(
            e.starts_with("-ERR respguard: upstream") && e.contains("connection lost"),
            "{e}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn client_leaving_while_blocked_frees_its_upstream_connection() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let mut watcher = Conn::open(server.addr()).await;
    let mut c = Conn::open(proxy.addr).await;
    c.cmd(&["BLPOP", "q", "0"]).await;
    wait_for_blocked(&mut watcher, 1).await;
    drop(c);
    // Redis sees the upstream connection go away and unblocks: no client left blocked.
    wait_for_blocked(&mut watcher, 0).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn client_leaving_mid_reply_does_not_disturb_other_clients() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    let big = "x".repeat(8 * 1024 * 1024);
    assert_eq!(c.call(&["SET", "big", &big]).await, "+OK\r\n");
    for _ in 0..5 {
        let mut leaver = Conn::open(proxy.addr).await;
        leaver.cmd(&["GET", "big"]).await;
        let mut first = [0u8; 1024];
        use tokio::io::AsyncReadExt;
        leaver.stream.read_exact(&mut first).await.unwrap();
        drop(leaver);
    }
    assert_eq!(c.call(&["STRLEN", "big"]).await, ":8388608\r\n");
    let mut watcher = Conn::open(server.addr()).await;
    // Only the watcher, the remaining client's upstream and the proxy's health check remain.
    eventually!(WAIT, "upstream connections freed", {
        let info = watcher.call(&["INFO", "clients"]).await;
        if info.contains("connected_clients:3\r\n") {
            Ok(())
        } else {
            Err(info)
        }
    });
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_replies_arrive_late_but_in_order() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = proxy_for(&server).await;
    let mut slow = Conn::open(server.addr()).await;
    let mut c = Conn::open(proxy.addr).await;
    slow.cmd(&["DEBUG", "SLEEP", "0.5"]).await;
    let mut batch = Vec::new();
    for i in 0..100 {
        batch.extend_from_slice(&encode(&["ECHO", &i.to_string()]));
    }
    c.send(&batch).await;
    for i in 0..100 {
        let want = format!("${}\r\n{i}\r\n", i.to_string().len());
        assert_eq!(String::from_utf8_lossy(&c.reply().await), want);
    }
    assert_eq!(slow.replies(1).await, "+OK\r\n");
    proxy.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_with_a_clear_error() {
    let server = RedisServer::start();
    let mut raw = proxy_config(&server.url());
    raw.proxy.max_clients = 2;
    let proxy = start_proxy(raw).await;
    let mut a = Conn::open(proxy.addr).await;
    let mut b = Conn::open(proxy.addr).await;
    assert_eq!(a.call(&["PING"]).await, "+PONG\r\n");
    assert_eq!(b.call(&["PING"]).await, "+PONG\r\n");
    let mut c = Conn::open(proxy.addr).await;
    let refused = String::from_utf8_lossy(&c.read_to_close().await).into_owned();
    assert_eq!(
        refused,
        "-ERR respguard: max number of clients reached (proxy.max_clients = 2)\r\n"
    );
    drop(a);
    // The slot comes back when a session ends.
    eventually!(WAIT, "the slot freed", {
        let mut d = Conn::open(proxy.addr).await;
        d.cmd(&["PING"]).await;
        match d.read_reply_or_close().await {
            pong if pong == "+PONG\r\n" => Ok(()),
            other => Err(other),
        }
    });
    proxy.shutdown().await;
}

#[tokio::test]
async fn proxy_credentials_and_database_survive_reset() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let proxy = start_proxy(proxy_config(&format!(
        "redis://:s3cret@127.0.0.1:{}/5",
        server.port
    )))
    .await;
    let mut c = Conn::open(proxy.addr).await;
    // The application holds no password and names no database.
    assert_eq!(c.call(&["SET", "k", "in5"]).await, "+OK\r\n");
    assert_eq!(c.call(&["RESET"]).await, "+RESET\r\n");
    // After RESET the proxy authenticated and selected again, unseen.
    assert_eq!(c.call(&["GET", "k"]).await, "$3\r\nin5\r\n");
    let mut direct = Conn::open(server.addr()).await;
    direct.call(&["AUTH", "s3cret"]).await;
    direct.call(&["SELECT", "5"]).await;
    assert_eq!(direct.call(&["GET", "k"]).await, "$3\r\nin5\r\n");
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_replies_finish() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = proxy_for(&server).await;
    let addr = proxy.addr;
    let mut c = Conn::open(addr).await;
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
    c.cmd(&["DEBUG", "SLEEP", "0.3"]).await;
    c.cmd(&["SET", "after", "1"]).await;
    let stopping = tokio::spawn(proxy.shutdown());
    assert_eq!(c.replies(2).await, "+OK\r\n+OK\r\n");
    assert!(c.read_to_close().await.is_empty());
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// Shutdown reaches every session, not only those with replies in flight: a client
/// waiting for nothing is closed at once, long before the drain timeout, in both modes.
#[tokio::test]
async fn shutdown_closes_idle_clients_at_once() {
    let server = RedisServer::start();
    for mode in Mode::BOTH {
        let mut raw = mode.config(&server.url());
        raw.proxy.drain_timeout = respguard::config::HumanDuration(Duration::from_secs(120));
        let proxy = start_proxy(raw).await;
        let mut idle = Vec::new();
        for _ in 0..5 {
            let mut c = Conn::open(proxy.addr).await;
            assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
            idle.push(c);
        }
        let stopping = tokio::spawn(proxy.shutdown());
        for c in &mut idle {
            assert!(c.read_to_close().await.is_empty(), "{mode:?}");
        }
        tokio::time::timeout(WAIT, stopping)
            .await
            .expect("stopped without waiting for the drain timeout")
            .unwrap();
    }
}

#[tokio::test]
async fn the_admin_listener_bounds_a_request_and_answers_its_endpoints() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let admin = proxy.admin_addr.unwrap();
    // A request head that never ends is cut off at 8 KiB, with 431.
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let junk = vec![b'x'; 16 * 1024];
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nX: ").await;
    let _ = s.write_all(&junk).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("closed");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
    assert_eq!(http_get(admin, "/healthz").await.status, 200);
    assert_eq!(http_get(admin, "/nothing").await.status, 404);
    proxy.shutdown().await;
}

#[tokio::test]
async fn readyz_follows_the_upstream() {
    let mut server = RedisServer::start();
    let proxy = start_proxy(fast_backoff(&server.url())).await;
    let admin = proxy.admin_addr.unwrap();
    let wait_for = |want: bool| async move {
        let what = format!("/readyz ready: {want}");
        eventually!(WAIT, what, {
            (http_get(admin, "/readyz").await.status == 200) == want
        })
    };
    wait_for(true).await;
    let port = server.port;
    server.kill();
    wait_for(false).await;
    let _back = RedisServer::start_on(port, &[]);
    wait_for(true).await;
    proxy.shutdown().await;
}

/// An upstream answering `COMMAND` (and everything else) with a reply nested 100,000
/// arrays deep: the proxy, in this test's process, where a decoder recursing per level
/// would overflow the stack and abort it, refuses the reply as a command table and starts
/// on the built-in one; a client's command gets the server's deep reply byte for byte (the
/// client path's scanners are iterative).
#[tokio::test]
async fn an_upstream_answering_a_deeply_nested_reply_is_survived() {
    let deep = deeply_nested_reply(100_000);
    let peer = ScriptedPeer::start(deep.clone()).await;
    let proxy = start_proxy(proxy_config(&format!("redis://{}", peer.addr))).await;
    assert_eq!(
        proxy.table.source(),
        respguard::command::TableSource::Builtin
    );
    assert!(peer.answers.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    let mut c = Conn::open(proxy.addr).await;
    c.send(&encode(&["PING"])).await;
    let got = c.read_exactly(deep.len()).await;
    assert!(
        got == deep,
        "the client got {} bytes unlike the server's",
        got.len()
    );
    proxy.shutdown().await;
}
