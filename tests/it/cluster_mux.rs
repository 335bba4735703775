//! Multiplexing in front of a real Redis Cluster (`upstream.connections = "multiplexed"`
//! with a `redis-cluster://` URL): clients' routers share a few connections per node,
//! each client still sees one Redis of its own, a client holding connection state moves
//! to connections of its own, and a shared connection lost costs only the commands in
//! flight on it.

use std::time::{Duration, Instant};

use crate::cluster_harness::Cluster;
use crate::cluster_proxy::{
    a_cluster_unaware_client_sees_one_redis_with, proxy_for_cluster,
    resharding_under_load_is_invisible_to_clients_with, slot_map,
};
use crate::harness::*;
use respguard::cluster::slot::key_slot;

/// Multiplexed, two shared connections per node.
const MUX: &str = "[upstream]\nconnections = \"multiplexed\"\nshared_connections = 2\n";

/// The connections a node lists (`CLIENT LIST`), one line each.
async fn client_list(cluster: &Cluster, address: &str) -> Vec<String> {
    let list = cluster.conn(address).await.call(&["CLIENT", "LIST"]).await;
    list.lines()
        .filter(|l| l.starts_with("id="))
        .map(str::to_string)
        .collect()
}

/// The shared connections a node lists.
async fn shared_on(cluster: &Cluster, address: &str) -> Vec<String> {
    client_list(cluster, address)
        .await
        .into_iter()
        .filter(|l| l.contains(" name=respguard-shared "))
        .collect()
}

/// `connected_clients` of a node's `INFO clients`.
async fn connected_clients(cluster: &Cluster, address: &str) -> usize {
    let info = cluster.conn(address).await.call(&["INFO", "clients"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The primaries' addresses.
async fn primaries(cluster: &Cluster) -> Vec<String> {
    let map = slot_map(cluster).await;
    map.shards().iter().map(|s| s.primary.clone()).collect()
}

/// A key (`prefix` and a number) whose slot `address` serves.
async fn key_on(cluster: &Cluster, address: &str, prefix: &str) -> String {
    let map = slot_map(cluster).await;
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| map.shard_of(key_slot(k.as_bytes())).unwrap().primary == address)
        .unwrap()
}

/// The scripted sessions (pipelines, commands across slots, transactions, scripts,
/// `CLIENT REPLY`, `BLPOP`, pub/sub), in RESP2 and RESP3, give what one Redis gives,
/// byte for byte, through a multiplexed proxy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_unaware_client_sees_one_redis_multiplexed() {
    a_cluster_unaware_client_sees_one_redis_with(MUX).await;
}

/// 200 clients connected at once, each writing and reading keys on every primary: each
/// node sees its two shared connections (and the proxy's own few), not 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_two_connections_per_node() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, MUX).await;
    let primaries = primaries(&cluster).await;
    let mut before = Vec::new();
    for p in &primaries {
        before.push(connected_clients(&cluster, p).await);
    }
    let mut clients = Vec::new();
    for c in 0..200 {
        let mut conn = Conn::open(proxy.addr).await;
        for k in 0..12 {
            let key = format!("c{c}:k{k}");
            assert_eq!(
                conn.call(&["SET", &key, &format!("v{c}.{k}")]).await,
                "+OK\r\n"
            );
        }
        clients.push(conn);
    }
    for (c, conn) in clients.iter_mut().enumerate() {
        for k in 0..12 {
            let value = format!("v{c}.{k}");
            let want = format!("${}\r\n{value}\r\n", value.len());
            assert_eq!(conn.call(&["GET", &format!("c{c}:k{k}")]).await, want);
        }
    }
    for (p, before) in primaries.iter().zip(before) {
        let shared = shared_on(&cluster, p).await;
        assert_eq!(shared.len(), 2, "{p}: {shared:?}");
        let now = connected_clients(&cluster, p).await;
        // The two shared connections, and at most two of the proxy's own (the memory
        // monitor's poll, a topology read) come and gone meanwhile.
        assert!(now <= before + 4, "{p}: {now} connections, {before} before");
    }
    drop(clients);
    proxy.shutdown().await;
}

/// 40 clients each pipeline 500 SETs then 500 GETs of their own values over the same
/// shared connections: each reads exactly its own replies, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_clients_each_get_their_own_replies() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, MUX).await;
    let mut tasks = Vec::new();
    for c in 0..40 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut batch = Vec::new();
            let mut want = String::new();
            for k in 0..500 {
                batch.extend(encode(&[
                    "SET",
                    &format!("p{c}:{k}"),
                    &format!("client {c} value {k}"),
                ]));
                want.push_str("+OK\r\n");
            }
            for k in 0..500 {
                batch.extend(encode(&["GET", &format!("p{c}:{k}")]));
                let value = format!("client {c} value {k}");
                want.push_str(&format!("${}\r\n{value}\r\n", value.len()));
            }
            conn.send(&batch).await;
            assert_eq!(conn.replies(1000).await, want, "client {c}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    proxy.shutdown().await;
}

/// A client blocked in `BLPOP` holds a connection of its own: the others' `GET`s on the
/// same node are answered meanwhile, and the shared connections stay two. `MULTI` and
/// `SUBSCRIBE` move their clients the same way, answered as one Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_takes_a_connection_of_its_own_and_blocks_no_one() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, MUX).await;
    let node = primaries(&cluster).await[0].clone();
    let queue = key_on(&cluster, &node, "queue:").await;
    let other = key_on(&cluster, &node, "other:").await;
    let mut waiter = Conn::open(proxy.addr).await;
    let mut reader = Conn::open(proxy.addr).await;
    // Both start on the shared connections.
    assert_eq!(waiter.call(&["SET", &other, "1"]).await, "+OK\r\n");
    assert_eq!(reader.call(&["GET", &other]).await, "$1\r\n1\r\n");
    waiter.cmd(&["BLPOP", &queue, "0"]).await;
    let tries = Tries::new(Duration::from_secs(5));
    loop {
        let list = client_list(&cluster, &node).await;
        if list
            .iter()
            .any(|l| l.contains(" cmd=blpop ") && l.contains(" flags=b "))
        {
            assert!(
                !list
                    .iter()
                    .any(|l| l.contains(" cmd=blpop ") && l.contains("respguard-shared")),
                "{list:?}"
            );
            break;
        }
        tries
            .again(
                "BLPOP blocked on a connection of its own",
                format!("{list:?}"),
            )
            .await;
    }
    let began = Instant::now();
    for _ in 0..20 {
        assert_eq!(reader.call(&["GET", &other]).await, "$1\r\n1\r\n");
    }
    assert!(began.elapsed() < Duration::from_secs(2));
    // The waiter's shared connection closes once no client is attached to it.
    let tries = Tries::new(Duration::from_secs(5));
    loop {
        let shared = shared_on(&cluster, &node).await;
        if shared.len() == 1 {
            break;
        }
        tries
            .again(
                "only the reader's shared connection left",
                format!("{shared:?}"),
            )
            .await;
    }
    assert_eq!(reader.call(&["RPUSH", &queue, "job"]).await, ":1\r\n");
    let popped = format!("*2\r\n${}\r\n{queue}\r\n$3\r\njob\r\n", queue.len());
    assert_eq!(String::from_utf8_lossy(&waiter.reply().await), popped);
    // The moved client goes on, on its own connections.
    assert_eq!(waiter.call(&["GET", &other]).await, "$1\r\n1\r\n");
    let mut tx = Conn::open(proxy.addr).await;
    assert_eq!(tx.call(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(tx.call(&["INCR", &other]).await, "+QUEUED\r\n");
    assert_eq!(reader.call(&["GET", &other]).await, "$1\r\n1\r\n");
    assert_eq!(tx.call(&["EXEC"]).await, "*1\r\n:2\r\n");
    assert_eq!(shared_on(&cluster, &node).await.len(), 1);
    proxy.shutdown().await;
}

/// A shared connection killed (`CLIENT KILL ID`) while commands wait on it (the node
/// paused for writes): those get the connection-lost error, the client stays connected,
/// and its next commands run on a new shared connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shared_connection_fails_only_its_commands_in_flight() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(
        &cluster,
        "[upstream]\nconnections = \"multiplexed\"\nshared_connections = 1\n",
    )
    .await;
    let node = primaries(&cluster).await[0].clone();
    let key = key_on(&cluster, &node, "k:").await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", &key, "before"]).await, "+OK\r\n");
    let mut admin = cluster.conn(&node).await;
    assert_eq!(
        admin.call(&["CLIENT", "PAUSE", "20000", "WRITE"]).await,
        "+OK\r\n"
    );
    let mut batch = Vec::new();
    for i in 0..100 {
        batch.extend(encode(&["SET", &key, &format!("v{i}")]));
    }
    c.send(&batch).await;
    let tries = Tries::new(Duration::from_secs(5));
    let id = loop {
        let shared = shared_on(&cluster, &node).await;
        let paused = shared.iter().find(|l| l.contains(" flags=b "));
        if let Some(line) = paused {
            break line
                .split(' ')
                .next()
                .unwrap()
                .trim_start_matches("id=")
                .to_string();
        }
        tries
            .again("the shared connection paused", format!("{shared:?}"))
            .await;
    };
    assert_eq!(admin.call(&["CLIENT", "KILL", "ID", &id]).await, ":1\r\n");
    assert_eq!(admin.call(&["CLIENT", "UNPAUSE"]).await, "+OK\r\n");
    let lost = format!("-ERR respguard: connection to cluster node {node} lost (");
    let mut errors = 0;
    for i in 0..100 {
        let reply = String::from_utf8_lossy(&c.reply().await).into_owned();
        if reply.starts_with(&lost) {
            errors += 1;
        } else {
            assert_eq!(reply, "+OK\r\n", "reply {i}");
        }
    }
    assert!(
        errors > 0,
        "no command was in flight on the killed connection"
    );
    // The same client, on a new shared connection.
    assert_eq!(c.call(&["SET", &key, "after"]).await, "+OK\r\n");
    assert_eq!(c.call(&["GET", &key]).await, "$5\r\nafter\r\n");
    let shared = shared_on(&cluster, &node).await;
    assert_eq!(shared.len(), 1, "{shared:?}");
    assert!(!shared[0].starts_with(&format!("id={id} ")));
    proxy.shutdown().await;
}

/// A client that stops reading its replies holds no shared connection back: its router
/// keeps taking them (and lets the client go past `proxy.output_buffer_hard`), so another
/// client on the same shared connection is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_no_shared_connection_back() {
    let cluster = Cluster::start().await;
    let toml = "[proxy]\noutput_buffer_hard = \"64MiB\"\n[upstream]\nconnections = \"multiplexed\"\nshared_connections = 1\n";
    let proxy = proxy_for_cluster(&cluster, toml).await;
    let node = primaries(&cluster).await[0].clone();
    let big = key_on(&cluster, &node, "big:").await;
    let small = key_on(&cluster, &node, "small:").await;
    let mut slow = Conn::open(proxy.addr).await;
    let value = "x".repeat(64 << 10);
    assert_eq!(slow.call(&["SET", &big, &value]).await, "+OK\r\n");
    let mut other = Conn::open(proxy.addr).await;
    assert_eq!(other.call(&["SET", &small, "s"]).await, "+OK\r\n");
    // 125 MiB of replies asked for, none read: more replies than a router's channel
    // holds, and a hard limit above what a router holds back without multiplexing, so
    // a shared connection waiting for it would stall.
    let mut batch = Vec::new();
    for _ in 0..2000 {
        batch.extend(encode(&["GET", &big]));
    }
    slow.send(&batch).await;
    for _ in 0..50 {
        assert_eq!(other.call(&["GET", &small]).await, "$1\r\ns\r\n");
    }
    assert_eq!(shared_on(&cluster, &node).await.len(), 1);
    proxy.shutdown().await;
}

/// 1,000 slots resharded while 50 multiplexed clients write and read across slots
/// (`-MOVED`, `-ASK` with its `ASKING`, `-TRYAGAIN` on shared connections): no error,
/// every value the one written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_load_is_invisible_to_multiplexed_clients() {
    resharding_under_load_is_invisible_to_clients_with(MUX).await;
}
