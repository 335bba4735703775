//! Shared connections (`upstream.connections = "multiplexed"`) when Redis misbehaves or a
//! client ends: a Redis that stays silent, one that is down at start, a client's QUIT, a
//! connection idle past the reply timeout. Each checks that the clients stay connected
//! where Redis itself would keep them, and that what they get is Redis's own answer or the
//! proxy's named error.

use std::time::Duration;

use respguard::config::{ConnectionModel, HumanDuration, RawConfig};

use crate::harness::*;

/// A multiplexed proxy's configuration in front of `url`, with fast reconnection.
fn multiplexed(url: &str) -> RawConfig {
    let mut raw = proxy_config(url);
    raw.upstream.connections = ConnectionModel::Multiplexed;
    raw.upstream.shared_connections = 1;
    raw.upstream.backoff_min = HumanDuration(Duration::from_millis(10));
    raw.upstream.backoff_max = HumanDuration(Duration::from_millis(50));
    raw
}

/// The ids of Redis's connections named `respguard-shared`, asked on `c`.
async fn shared_ids(c: &mut Conn) -> Vec<String> {
    let list = c.call(&["CLIENT", "LIST"]).await;
    list.lines()
        .filter(|l| l.contains("name=respguard-shared"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

/// A shared connection idle for longer than `upstream.reply_timeout` is not timed out by
/// the next command: the timer counts silence while replies are owed, not idleness.
#[tokio::test]
async fn a_shared_connection_idle_past_the_reply_timeout_serves_the_next_command() {
    let server = RedisServer::start();
    let mut raw = multiplexed(&server.url());
    raw.upstream.reply_timeout = HumanDuration(Duration::from_millis(200));
    let proxy = start_proxy(raw).await;
    let mut watcher = Conn::open(server.addr()).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", "k", "v"]).await, "+OK\r\n");
    let before = shared_ids(&mut watcher).await;
    assert_eq!(before.len(), 1, "one shared connection");
    // Idle for three reply timeouts: the passing of time is what is tested.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.call(&["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(
        shared_ids(&mut watcher).await,
        before,
        "the same connection"
    );
    proxy.shutdown().await;
}

/// Redis silent past `upstream.reply_timeout` (DEBUG SLEEP): every command in flight on the
/// shared connection, of every client, gets the timeout's error; the clients stay
/// connected and, once Redis answers again, their next commands work on a new connection.
#[tokio::test]
async fn a_silent_redis_fails_the_shared_commands_in_flight_and_keeps_the_clients() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let mut raw = multiplexed(&server.url());
    raw.upstream.reply_timeout = HumanDuration(Duration::from_millis(300));
    let proxy = start_proxy(raw).await;
    let mut a = Conn::open(proxy.addr).await;
    let mut b = Conn::open(proxy.addr).await;
    assert_eq!(a.call(&["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(b.call(&["GET", "k"]).await, "$1\r\nv\r\n");
    a.cmd(&["DEBUG", "SLEEP", "1"]).await;
    b.cmd(&["GET", "k"]).await;
    for c in [&mut a, &mut b] {
        let r = String::from_utf8_lossy(&c.reply().await).into_owned();
        assert!(
            r.starts_with("-ERR respguard: upstream 127.0.0.1:")
                && r.contains("connection lost before the reply (no reply within 300ms"),
            "{r}"
        );
    }
    eventually!(WAIT, "commands work again", {
        match (a.call(&["GET", "k"]).await, b.call(&["PING"]).await) {
            (v, p) if v == "$1\r\nv\r\n" && p == "+PONG\r\n" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    proxy.shutdown().await;
}

/// QUIT on a shared connection: the client gets what Redis sends a direct client (its
/// earlier replies, `+OK`, then the connection closes, nothing after QUIT answered), while
/// the shared connection stays open for the others.
#[tokio::test]
async fn quit_closes_the_client_and_not_the_shared_connection() {
    let direct = RedisServer::start();
    let server = RedisServer::start();
    let proxy = start_proxy(multiplexed(&server.url())).await;
    let mut other = Conn::open(proxy.addr).await;
    assert_eq!(other.call(&["PING"]).await, "+PONG\r\n");
    let mut watcher = Conn::open(server.addr()).await;
    let shared = shared_ids(&mut watcher).await;
    let mut batch = encode(&["SET", "k", "v"]);
    batch.extend_from_slice(&encode(&["QUIT"]));
    batch.extend_from_slice(&encode(&["GET", "k"]));
    let mut want = Conn::open(direct.addr()).await;
    want.send(&batch).await;
    let want = want.read_to_close().await;
    let mut c = Conn::open(proxy.addr).await;
    c.send(&batch).await;
    assert_eq!(c.read_to_close().await, want);
    assert_eq!(other.call(&["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(
        shared_ids(&mut watcher).await,
        shared,
        "the shared connection stayed"
    );
    proxy.shutdown().await;
}

/// Redis down when the clients arrive: each command gets the gate's reason at once; the
/// shared connection keeps trying on its own, and when Redis comes up the same client
/// connections work.
#[tokio::test]
async fn redis_down_at_start_then_up_serves_the_same_clients() {
    let port = free_port();
    let proxy = start_proxy(multiplexed(&format!("redis://127.0.0.1:{port}"))).await;
    let mut c = Conn::open(proxy.addr).await;
    for _ in 0..3 {
        let r = c.call(&["GET", "k"]).await;
        assert!(r.starts_with("-ERR respguard: upstream 127.0.0.1:"), "{r}");
    }
    let _server = RedisServer::start_on(port, &[]);
    eventually!(WAIT, "the shared connection is back", {
        match c.call(&["SET", "k", "v"]).await {
            ok if ok == "+OK\r\n" => Ok(()),
            other => Err(other),
        }
    });
    assert_eq!(c.call(&["GET", "k"]).await, "$1\r\nv\r\n");
    proxy.shutdown().await;
}

/// A client that pipelines a write and a blocking read of the same key in one write: the
/// blocking read moves it to a connection of its own only once the write was answered on
/// the shared one, so Redis runs them in the order sent (the BLPOP finds the element;
/// run the other way round it would block for good).
#[tokio::test]
async fn a_pinning_command_runs_after_the_clients_shared_commands() {
    let server = RedisServer::start();
    let proxy = start_proxy(multiplexed(&server.url())).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.extend_from_slice(&encode(&["RPUSH", "q", &i.to_string()]));
    }
    batch.extend_from_slice(&encode(&["BLPOP", "q", "0"]));
    batch.extend_from_slice(&encode(&["LLEN", "q"]));
    c.send(&batch).await;
    let replies = c.replies(52).await;
    assert!(
        replies.ends_with(":50\r\n*2\r\n$1\r\nq\r\n$1\r\n0\r\n:49\r\n"),
        "{replies}"
    );
    proxy.shutdown().await;
}
