//! Connections of their own under multiplexing (`upstream.connections = "multiplexed"`):
//! a client holding connection state that ends (a transaction, WATCH, a blocking command,
//! a subscription) gives its connection back when the state ends and returns to the shared
//! ones; given-back connections are reused without carrying anything to the next client;
//! `upstream.pinned_connections` bounds how many are in use at once, and a client past it
//! waits up to `upstream.connect_timeout`, then gets the limit's error.
//!
//! Redis is watched from a direct connection (`CLIENT LIST`, `INFO`), and every reply is
//! compared with what a direct connection gets for the same commands.

use std::time::Duration;

use respguard::app::ProxyHandle;
use respguard::config::{HumanDuration, RawConfig};

use crate::differential::wait_for_blocked;
use crate::harness::*;
use crate::multiplexed::{Want, Watcher};

/// A multiplexed proxy in front of `server`, with `adjust` applied to its configuration.
async fn mux_proxy(server: &RedisServer, adjust: impl FnOnce(&mut RawConfig)) -> ProxyHandle {
    let mut raw = mux_config(&server.url());
    adjust(&mut raw);
    start_proxy(raw).await
}

/// One field of `INFO` as a number.
async fn info_number(conn: &mut Conn, section: &str, field: &str) -> u64 {
    let info = conn.call(&["INFO", section]).await;
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {info}"))
}

/// Connections serving clients that are not shared ones.
async fn own_connections(watcher: &mut Watcher) -> usize {
    watcher.serving().await.1.len()
}

/// `script` as one pipelined write on `conn`, and its replies.
async fn pipelined(conn: &mut Conn, script: &[&[&str]]) -> String {
    let bytes: Vec<u8> = script.iter().flat_map(|c| encode(c)).collect();
    conn.send(&bytes).await;
    conn.replies(script.len()).await
}

/// The commands of one round of [`a_client_using_state_again_and_again_reuses_one_connection`]
/// on the counter `n`: each state that ends, then a GET.
fn round_of_states(n: &str) -> [Vec<&str>; 10] {
    [
        vec!["MULTI"],
        vec!["INCR", n],
        vec!["EXEC"],
        vec!["BLPOP", "reuse:none", "0.01"],
        vec!["WATCH", n],
        vec!["UNWATCH"],
        vec!["SUBSCRIBE", "reuse:ch"],
        vec!["UNSUBSCRIBE", "reuse:ch"],
        vec!["GET", n],
        vec!["PING"],
    ]
}

/// One client running thirty rounds of a transaction, a blocking command that times out,
/// WATCH … UNWATCH and SUBSCRIBE … UNSUBSCRIBE, each followed by a GET, gets the replies a
/// direct connection gets, and Redis accepts at most one new connection for all of it:
/// the connection given back after each state is the one taken for the next.
#[tokio::test]
async fn a_client_using_state_again_and_again_reuses_one_connection() {
    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut watcher = Watcher::open(&server).await;
    let mut direct = watcher.direct(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["GET", "warm"]).await, "$-1\r\n");
    let before = info_number(&mut watcher.conn, "stats", "total_connections_received").await;
    for round in 0..30 {
        let want = {
            let script = round_of_states("direct:n");
            let script: Vec<&[&str]> = script.iter().map(|c| c.as_slice()).collect();
            pipelined(&mut direct, &script).await
        };
        let script = round_of_states("proxy:n");
        let script: Vec<&[&str]> = script.iter().map(|c| c.as_slice()).collect();
        assert_eq!(pipelined(&mut c, &script).await, want, "round {round}");
    }
    let after = info_number(&mut watcher.conn, "stats", "total_connections_received").await;
    assert!(after - before <= 1, "{} new connections", after - before);
    proxy.shutdown().await;
}

/// A connection given back carries nothing to the client that takes it next: after client
/// A subscribed and unsubscribed, and watched a key that then changed and unwatched it,
/// client B takes the same connection (Redis accepts no new one) and its transaction on
/// that key commits, a PUBLISH to A's channel reaches nobody, and B's BLPOP gets the
/// element pushed for it; every reply as a direct connection gets it.
#[tokio::test]
async fn a_connection_given_back_carries_no_state_to_the_next_client() {
    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |raw| raw.upstream.pinned_idle = 1).await;
    let mut watcher = Watcher::open(&server).await;
    let mut direct = watcher.direct(&server).await;
    let mut a = Conn::open(proxy.addr).await;
    let first: [&[&str]; 2] = [&["SUBSCRIBE", "given:ch"], &["UNSUBSCRIBE", "given:ch"]];
    assert_eq!(
        pipelined(&mut a, &first).await,
        pipelined(&mut direct, &first).await
    );
    for conn in [&mut a, &mut direct] {
        assert_eq!(conn.call(&["WATCH", "given:w"]).await, "+OK\r\n");
    }
    assert_eq!(
        watcher.conn.call(&["SET", "given:w", "changed"]).await,
        "+OK\r\n"
    );
    for conn in [&mut a, &mut direct] {
        assert_eq!(conn.call(&["UNWATCH"]).await, "+OK\r\n");
        // Read after UNWATCH's reply: by then A is back on a shared connection.
        assert_eq!(conn.call(&["GET", "given:w"]).await, "$7\r\nchanged\r\n");
    }
    assert_eq!(
        own_connections(&mut watcher).await,
        1,
        "the one A gave back, kept"
    );
    let before = info_number(&mut watcher.conn, "stats", "total_connections_received").await;
    let mut b = Conn::open(proxy.addr).await;
    let transaction: [&[&str]; 3] = [&["MULTI"], &["SET", "given:w", "b"], &["EXEC"]];
    let want = pipelined(&mut direct, &transaction).await;
    assert_eq!(want, "+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n");
    assert_eq!(pipelined(&mut b, &transaction).await, want);
    b.cmd(&["BLPOP", "given:q", "5"]).await;
    wait_for_blocked(&mut watcher.conn, 1).await;
    let after = info_number(&mut watcher.conn, "stats", "total_connections_received").await;
    assert_eq!(after, before, "B took the connection A gave back");
    assert_eq!(
        watcher.conn.call(&["PUBLISH", "given:ch", "m"]).await,
        ":0\r\n"
    );
    assert_eq!(
        watcher.conn.call(&["RPUSH", "given:q", "v"]).await,
        ":1\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&b.reply().await),
        "*2\r\n$7\r\ngiven:q\r\n$1\r\nv\r\n"
    );
    proxy.shutdown().await;
}

/// A client that leaves while blocked leaves nothing behind: its connection is closed, not
/// kept for reuse (Redis would still have it blocked, and the next element pushed would go
/// to nobody). The element pushed afterwards reaches the next client's BLPOP.
#[tokio::test]
async fn a_client_gone_while_blocked_leaves_no_connection_behind() {
    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut watcher = Watcher::open(&server).await;
    let mut a = Conn::open(proxy.addr).await;
    a.cmd(&["BLPOP", "gone:q", "0"]).await;
    wait_for_blocked(&mut watcher.conn, 1).await;
    drop(a);
    wait_for_blocked(&mut watcher.conn, 0).await;
    let none = Want {
        plain: 0,
        pinned: 0,
        shared_max: 2,
    };
    watcher
        .expect(Mode::Multiplexed, none, "A's connection closed")
        .await;
    let mut b = Conn::open(proxy.addr).await;
    b.cmd(&["BLPOP", "gone:q", "5"]).await;
    wait_for_blocked(&mut watcher.conn, 1).await;
    assert_eq!(watcher.conn.call(&["RPUSH", "gone:q", "v"]).await, ":1\r\n");
    assert_eq!(
        String::from_utf8_lossy(&b.reply().await),
        "*2\r\n$6\r\ngone:q\r\n$1\r\nv\r\n"
    );
    proxy.shutdown().await;
}

/// The error a client gets when every connection of its own is in use.
fn exhausted(limit: usize) -> String {
    format!("-ERR respguard: all {limit} connections for clients using connection state are in use (upstream.pinned_connections)")
}

/// With `pinned_connections = 2` held by two blocked clients, a third client's BLPOP waits
/// `connect_timeout`, then gets the limit's error naming the setting; Redis never sees a
/// third connection of a client's own. The third client stays connected and served (its
/// GET goes over a shared connection), and once one of the two is answered its BLPOP gets a
/// connection.
#[tokio::test]
async fn past_pinned_connections_a_client_gets_the_limits_error_then_goes_on() {
    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |raw| {
        raw.upstream.pinned_connections = 2;
        raw.upstream.connect_timeout = HumanDuration(Duration::from_millis(300));
    })
    .await;
    let mut watcher = Watcher::open(&server).await;
    let mut holders = Vec::new();
    for q in ["full:a", "full:b"] {
        let mut h = Conn::open(proxy.addr).await;
        h.cmd(&["BLPOP", q, "0"]).await;
        holders.push(h);
    }
    wait_for_blocked(&mut watcher.conn, 2).await;
    let mut c = Conn::open(proxy.addr).await;
    let refused = c.call(&["BLPOP", "full:c", "0"]).await;
    assert!(refused.starts_with(&exhausted(2)), "{refused}");
    assert_eq!(own_connections(&mut watcher).await, 2);
    assert_eq!(c.call(&["GET", "full:k"]).await, "$-1\r\n");
    assert_eq!(watcher.conn.call(&["RPUSH", "full:a", "v"]).await, ":1\r\n");
    assert_eq!(
        String::from_utf8_lossy(&holders[0].reply().await),
        "*2\r\n$6\r\nfull:a\r\n$1\r\nv\r\n"
    );
    assert_eq!(c.call(&["BLPOP", "full:c", "0.01"]).await, "*-1\r\n");
    proxy.shutdown().await;
}

/// With `pinned_connections = 1` held by a blocked client, another client's MULTI waits
/// (no reply while the connection is held) and gets the connection as soon as it is given
/// back: its transaction then runs as on a direct connection.
#[tokio::test]
async fn a_client_waiting_for_a_connection_gets_the_one_given_back() {
    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |raw| {
        raw.upstream.pinned_connections = 1;
        raw.upstream.connect_timeout = HumanDuration(Duration::from_secs(10));
    })
    .await;
    let mut watcher = Watcher::open(&server).await;
    let mut holder = Conn::open(proxy.addr).await;
    holder.cmd(&["BLPOP", "wait:q", "0"]).await;
    wait_for_blocked(&mut watcher.conn, 1).await;
    let mut c = Conn::open(proxy.addr).await;
    let transaction: [&[&str]; 3] = [&["MULTI"], &["INCR", "wait:n"], &["EXEC"]];
    let bytes: Vec<u8> = transaction.iter().flat_map(|c| encode(c)).collect();
    c.send(&bytes).await;
    // Nothing may arrive while the only connection is held: waiting, not refused.
    let early = tokio::time::timeout(Duration::from_millis(300), c.reply()).await;
    assert!(early.is_err(), "a reply while waiting: {early:?}");
    assert_eq!(watcher.conn.call(&["RPUSH", "wait:q", "v"]).await, ":1\r\n");
    assert_eq!(
        String::from_utf8_lossy(&holder.reply().await),
        "*2\r\n$6\r\nwait:q\r\n$1\r\nv\r\n"
    );
    assert_eq!(c.replies(3).await, "+OK\r\n+QUEUED\r\n*1\r\n:1\r\n");
    proxy.shutdown().await;
}

/// A hundred clients, each running twenty transactions (MULTI, INCR of its own counter,
/// EXEC) as fast as it can, with `pinned_connections = 4` and `pinned_idle = 2`: every
/// EXEC returns the client's next count, and Redis's `connected_clients`, sampled
/// throughout, never passes the baseline plus the shared connections plus 4 in use plus 2
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_taking_turns_stay_within_the_pinned_limit() {
    const CLIENTS: usize = 100;
    const ROUNDS: usize = 20;
    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |raw| {
        raw.upstream.pinned_connections = 4;
        raw.upstream.pinned_idle = 2;
        raw.upstream.connect_timeout = HumanDuration(Duration::from_secs(15));
    })
    .await;
    let mut watcher = Watcher::open(&server).await;
    let baseline = watcher.connected().await;
    let limit = baseline + 2 + 4 + 2;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = std::sync::Arc::clone(&done);
        let mut conn = Conn::open(server.addr()).await;
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(info_number(&mut conn, "clients", "connected_clients").await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let mut c = Conn::open(addr).await;
                let n = format!("turns:{i}");
                for round in 1..=ROUNDS {
                    let script: [&[&str]; 4] = [&["MULTI"], &["INCR", &n], &["EXEC"], &["GET", &n]];
                    let got = pipelined(&mut c, &script).await;
                    let want = format!(
                        "+OK\r\n+QUEUED\r\n*1\r\n:{round}\r\n${}\r\n{round}\r\n",
                        round.to_string().len()
                    );
                    assert_eq!(got, want, "client {i}, round {round}");
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client ran");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    // The sampler's own connection counts too.
    let most = sampler.await.expect("sampler ran") as usize;
    assert!(
        most <= limit + 1,
        "{most} connections, limit {limit} + sampler"
    );
    proxy.shutdown().await;
}
