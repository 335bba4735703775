//! `upstream.pinned_connections` in front of a real Redis Cluster, multiplexed: a client
//! on connections of its own holds one place however many nodes it uses, a client past the
//! limit waits `upstream.connect_timeout` and gets the limit's error (never a hang),
//! staying on shared connections, and a place given back is taken by the next client.

use std::time::{Duration, Instant};

use crate::cluster_harness::Cluster;
use crate::cluster_mux::{key_on, named_on, primaries};
use crate::cluster_proxy::proxy_for_cluster;
use crate::harness::*;

/// Multiplexed, one place for a client on connections of its own, waited for 300 ms.
const ONE_PLACE: &str = "[upstream]\nconnections = \"multiplexed\"\nshared_connections = 1\npinned_connections = 1\nconnect_timeout = \"300ms\"\n";

/// The error past the limit, up to the time waited.
fn exhausted(limit: usize) -> String {
    format!("-ERR respguard: all {limit} connections for clients using connection state are in use (upstream.pinned_connections), waited ")
}

/// With `pinned_connections = 1`: a RESP3 subscriber reading keys on all three primaries
/// holds its own connection to each (one place for the three: it is served); another
/// client's BLPOP then waits about `connect_timeout` and gets the limit's error naming the
/// setting, no node ever listing a connection of that client's own, and its next GET is
/// served on shared connections. Once the subscriber unsubscribes (back on shared
/// connections, its place given back), the other client's BLPOP runs, answered as a
/// direct connection's is. The refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_pinned_connections_a_cluster_client_gets_the_limits_error_then_goes_on() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, ONE_PLACE).await;
    let admin = proxy.admin_addr.expect("admin listener");
    let nodes = primaries(&cluster).await;
    let mut keys = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let key = key_on(&cluster, node, &format!("place{i}:")).await;
        let mut direct = cluster.conn(node).await;
        assert_eq!(
            direct.call(&["SET", &key, &format!("v{i}")]).await,
            "+OK\r\n"
        );
        keys.push(key);
    }

    let mut holder = Conn::open(proxy.addr).await;
    assert!(holder.call(&["HELLO", "3"]).await.starts_with('%'));
    assert_eq!(
        holder.call(&["CLIENT", "SETNAME", "holder"]).await,
        "+OK\r\n"
    );
    let subscribed = holder.call(&["SUBSCRIBE", "placed"]).await;
    assert!(subscribed.starts_with('>'), "{subscribed:?}");
    for (i, key) in keys.iter().enumerate() {
        let value = format!("v{i}");
        let want = format!("${}\r\n{value}\r\n", value.len());
        assert_eq!(holder.call(&["GET", key]).await, want);
    }
    for node in &nodes {
        let own = named_on(&cluster, node, "holder").await;
        assert_eq!(own.len(), 1, "{node}: {own:?}");
    }

    let exhausted_before = metric(admin, "respguard_pinned_connections_exhausted_total")
        .await
        .unwrap_or(0.0);
    let mut waiter = Conn::open(proxy.addr).await;
    assert_eq!(
        waiter.call(&["CLIENT", "SETNAME", "waiter"]).await,
        "+OK\r\n"
    );
    let queue = key_on(&cluster, &nodes[1], "placeq:").await;
    let began = Instant::now();
    let refused = waiter.call(&["BLPOP", &queue, "0"]).await;
    let waited = began.elapsed();
    assert!(refused.starts_with(&exhausted(1)), "{refused}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "refused after {waited:?}"
    );
    for node in &nodes {
        assert!(named_on(&cluster, node, "waiter").await.is_empty());
    }
    assert_eq!(waiter.call(&["GET", &keys[0]]).await, "$2\r\nv0\r\n");
    let exhausted_now = metric(admin, "respguard_pinned_connections_exhausted_total")
        .await
        .unwrap_or(0.0);
    assert!(exhausted_now > exhausted_before, "{exhausted_now}");

    let unsubscribed = holder.call(&["UNSUBSCRIBE", "placed"]).await;
    assert!(unsubscribed.starts_with('>'), "{unsubscribed:?}");
    let tries = Tries::new(Duration::from_secs(5));
    loop {
        let mut own = 0;
        for node in &nodes {
            own += named_on(&cluster, node, "holder").await.len();
        }
        if own == 0 {
            break;
        }
        tries
            .again("the holder back on shared connections", format!("{own}"))
            .await;
    }
    let mut direct = cluster.conn(&nodes[1]).await;
    let want = direct.call(&["BLPOP", &queue, "0.01"]).await;
    assert_eq!(waiter.call(&["BLPOP", &queue, "0.01"]).await, want);
    proxy.shutdown().await;
}

/// With `pinned_connections = 1` and a long `connect_timeout`, a client whose MULTI finds
/// the place taken (by a client blocked in BLPOP) gets no reply while it waits, then the
/// place once the blocked client is answered: its transaction runs as on a direct
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_client_waiting_for_a_place_gets_the_one_given_back() {
    let cluster = Cluster::start().await;
    let toml = "[upstream]\nconnections = \"multiplexed\"\npinned_connections = 1\nconnect_timeout = \"10s\"\n";
    let proxy = proxy_for_cluster(&cluster, toml).await;
    let node = primaries(&cluster).await[0].clone();
    let queue = key_on(&cluster, &node, "givenq:").await;
    let counter = key_on(&cluster, &node, "givenn:").await;
    let mut holder = Conn::open(proxy.addr).await;
    assert_eq!(
        holder.call(&["CLIENT", "SETNAME", "blocked"]).await,
        "+OK\r\n"
    );
    holder.cmd(&["BLPOP", &queue, "0"]).await;
    crate::cluster_mux::wait_for_own(&cluster, &node, "blocked", " cmd=blpop ").await;

    let transaction: [&[&str]; 3] = [&["MULTI"], &["INCR", &counter], &["EXEC"]];
    let mut direct = cluster.conn(&node).await;
    let mut want = String::new();
    for command in transaction {
        want.push_str(&direct.call(command).await);
    }
    assert_eq!(direct.call(&["DEL", &counter]).await, ":1\r\n");
    let mut c = Conn::open(proxy.addr).await;
    let bytes: Vec<u8> = transaction.iter().flat_map(|c| encode(c)).collect();
    c.send(&bytes).await;
    let early = tokio::time::timeout(Duration::from_millis(300), c.reply()).await;
    assert!(early.is_err(), "a reply while waiting: {early:?}");
    assert_eq!(direct.call(&["RPUSH", &queue, "v"]).await, ":1\r\n");
    let popped = format!("*2\r\n${}\r\n{queue}\r\n$1\r\nv\r\n", queue.len());
    assert_eq!(String::from_utf8_lossy(&holder.reply().await), popped);
    assert_eq!(c.replies(3).await, want);
    proxy.shutdown().await;
}
