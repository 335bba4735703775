//! Multiplexing in front of a real Redis Cluster (`upstream.connections = "multiplexed"`
//! with a `redis-cluster://` URL): clients' routers share a few connections per node,
//! each client still sees one Redis of its own, a client holding connection state moves
//! to connections of its own while the state lasts (for good after a command whose state
//! lasts for the connection's life), a shared connection lost costs only the commands in
//! flight on it, and a silent node (`upstream.reply_timeout`) fails what it owes.

use std::time::{Duration, Instant};

use crate::cluster_harness::Cluster;
use crate::cluster_proxy::{
    a_cluster_unaware_client_sees_one_redis_with, proxy_for_cluster,
    resharding_under_load_is_invisible_to_clients_with, slot_map,
};
use crate::harness::*;
use respguard::cluster::slot::key_slot;

/// Multiplexed, two shared connections per node.
pub(crate) const MUX: &str = "[upstream]\nconnections = \"multiplexed\"\nshared_connections = 2\n";

/// The connections a node lists (`CLIENT LIST`), one line each.
pub(crate) async fn client_list(cluster: &Cluster, address: &str) -> Vec<String> {
    let list = cluster.conn(address).await.call(&["CLIENT", "LIST"]).await;
    list.lines()
        .filter(|l| l.starts_with("id="))
        .map(str::to_string)
        .collect()
}

/// The shared connections a node lists.
pub(crate) async fn shared_on(cluster: &Cluster, address: &str) -> Vec<String> {
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
pub(crate) async fn primaries(cluster: &Cluster) -> Vec<String> {
    let map = slot_map(cluster).await;
    map.shards().iter().map(|s| s.primary.clone()).collect()
}

/// A key (`prefix` and a number) whose slot `address` serves.
pub(crate) async fn key_on(cluster: &Cluster, address: &str, prefix: &str) -> String {
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
    // The moved client goes on (back on the shared connections).
    assert_eq!(waiter.call(&["GET", &other]).await, "$1\r\n1\r\n");
    let mut tx = Conn::open(proxy.addr).await;
    assert_eq!(tx.call(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(tx.call(&["INCR", &other]).await, "+QUEUED\r\n");
    assert_eq!(reader.call(&["GET", &other]).await, "$1\r\n1\r\n");
    assert_eq!(tx.call(&["EXEC"]).await, "*1\r\n:2\r\n");
    let shared = shared_on(&cluster, &node).await;
    assert!(shared.len() <= 2, "{shared:?}");
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

/// The connections a node lists that are not shared ones, but for the one asking and the
/// proxy's memory monitor's (its last command `INFO` or a `CLUSTER` question, whichever
/// the listing catches).
pub(crate) async fn unshared_on(cluster: &Cluster, address: &str) -> Vec<String> {
    client_list(cluster, address)
        .await
        .into_iter()
        .filter(|l| {
            !l.contains(" name=respguard-shared ")
                && !l.contains(" cmd=client|list ")
                && !l.contains(" cmd=cluster|")
                && !l.contains(" cmd=info ")
        })
        .collect()
}

/// The connections a node lists named `name` (a client's own connections carry the name
/// it gave, replayed on each).
pub(crate) async fn named_on(cluster: &Cluster, address: &str, name: &str) -> Vec<String> {
    let word = format!(" name={name} ");
    client_list(cluster, address)
        .await
        .into_iter()
        .filter(|l| l.contains(&word))
        .collect()
}

/// Wait until `address` lists a connection named `name` whose line holds `detail`.
pub(crate) async fn wait_for_own(
    cluster: &Cluster,
    address: &str,
    name: &str,
    detail: &str,
) -> String {
    let tries = Tries::new(Duration::from_secs(5));
    loop {
        let named = named_on(cluster, address, name).await;
        if let Some(line) = named.iter().find(|l| l.contains(detail)) {
            return line.clone();
        }
        tries
            .again(
                &format!("{name}'s own connection with {detail}"),
                format!("{named:?}"),
            )
            .await;
    }
}

/// Wait until `address` lists no connection named `name`, and as many that are not
/// shared as `before` (the proxy's own monitor's, a topology read's come and go).
pub(crate) async fn wait_until_back(cluster: &Cluster, address: &str, name: &str, before: usize) {
    let tries = Tries::new(Duration::from_secs(5));
    loop {
        let named = named_on(cluster, address, name).await;
        let unshared = unshared_on(cluster, address).await;
        if named.is_empty() && unshared.len() == before {
            return;
        }
        tries
            .again(
                &format!("{name} back on shared connections, {before} unshared"),
                format!("named {named:?}, unshared {unshared:?}"),
            )
            .await;
    }
}

/// The replies `commands` get, in order, from `conn`.
pub(crate) async fn replies_to(conn: &mut Conn, commands: &[&[&str]]) -> Vec<String> {
    let mut out = Vec::new();
    for command in commands {
        out.push(conn.call(command).await);
    }
    out
}

/// A client's state ends and it goes back to the shared connections, its own closed (the
/// node's count of unshared connections back to what it was): after MULTI, SET, EXEC;
/// after WATCH … UNWATCH; after a BLPOP answered by another client's push; after
/// SUBSCRIBE, a message and UNSUBSCRIBE (of one channel of two: not yet). Each reply is byte for byte the one a direct
/// connection to the node gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_state_ended_is_back_on_shared_connections() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, MUX).await;
    let node = primaries(&cluster).await[0].clone();
    let key = key_on(&cluster, &node, "tx:").await;
    let queue = key_on(&cluster, &node, "jobs:").await;
    let pubsub = slot_map(&cluster).await.shards()[0].primary.clone();
    let mut direct = cluster.conn(&node).await;
    let mut subscriber = cluster.conn(&pubsub).await;
    let mut pusher = Conn::open(proxy.addr).await;
    assert_eq!(pusher.call(&["GET", &key]).await, "$-1\r\n");
    let before = unshared_on(&cluster, &node).await.len();
    let before_pubsub = unshared_on(&cluster, &pubsub).await.len();
    let mut c = Conn::open(proxy.addr).await;
    // The name is the client's, kept by the proxy on shared connections (no move) and
    // given to each connection of its own, which shows them.
    let admin = proxy.admin_addr.expect("admin listener");
    let unshared = "respguard_cluster_clients_unshared_total";
    let moves = metric(admin, unshared).await.unwrap_or(0.0);
    let naming: &[&[&str]] = &[
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "returner"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "a name"],
    ];
    let mut named = cluster.conn(&node).await;
    let want = replies_to(&mut named, naming).await;
    drop(named);
    assert_eq!(replies_to(&mut c, &naming[..3]).await, want[..3]);
    assert_eq!(metric(admin, unshared).await.unwrap_or(0.0), moves);
    // A name Redis refuses is Redis's to refuse, on a connection of the client's own.
    assert_eq!(c.call(naming[3]).await, want[3]);
    assert_eq!(metric(admin, unshared).await.unwrap_or(0.0), moves + 1.0);
    assert_eq!(c.call(naming[2]).await, want[2]);
    assert_eq!(c.call(&["GET", &key]).await, "$-1\r\n");
    wait_until_back(&cluster, &node, "returner", before).await;

    // MULTI … EXEC on a connection of its own, then back.
    let transaction: &[&[&str]] = &[&["MULTI"], &["SET", &key, "1"], &["INCR", &key], &["EXEC"]];
    let want = replies_to(&mut direct, transaction).await;
    assert_eq!(c.call(transaction[0]).await, want[0]);
    assert_eq!(c.call(transaction[1]).await, want[1]);
    wait_for_own(&cluster, &node, "returner", " flags=x ").await;
    assert_eq!(c.call(transaction[2]).await, want[2]);
    assert_eq!(c.call(transaction[3]).await, want[3]);
    assert_eq!(c.call(&["GET", &key]).await, "$1\r\n2\r\n");
    wait_until_back(&cluster, &node, "returner", before).await;
    assert_eq!(c.call(&["INCR", &key]).await, ":3\r\n");

    // WATCH … UNWATCH.
    let watching: &[&[&str]] = &[&["WATCH", &key], &["UNWATCH"]];
    let want = replies_to(&mut direct, watching).await;
    assert_eq!(c.call(watching[0]).await, want[0]);
    wait_for_own(&cluster, &node, "returner", " cmd=watch ").await;
    assert_eq!(c.call(watching[1]).await, want[1]);
    wait_until_back(&cluster, &node, "returner", before).await;
    assert_eq!(c.call(&["GET", &key]).await, "$1\r\n3\r\n");

    // BLPOP, answered by another client's RPUSH.
    assert_eq!(direct.call(&["RPUSH", &queue, "job"]).await, ":1\r\n");
    let popped = direct.call(&["BLPOP", &queue, "0"]).await;
    c.cmd(&["BLPOP", &queue, "0"]).await;
    wait_for_own(&cluster, &node, "returner", " cmd=blpop ").await;
    assert_eq!(pusher.call(&["RPUSH", &queue, "job"]).await, ":1\r\n");
    assert_eq!(String::from_utf8_lossy(&c.reply().await), popped);
    wait_until_back(&cluster, &node, "returner", before).await;
    assert_eq!(c.call(&["GET", &key]).await, "$1\r\n3\r\n");

    // SUBSCRIBE to two channels (on the pub/sub node), a message, UNSUBSCRIBE of one: the
    // client, still subscribed, keeps its connection (a message still reaches it); once
    // the other is unsubscribed too, back.
    let subscribing = ["SUBSCRIBE", "news", "more"];
    subscriber.cmd(&subscribing).await;
    let subscribed = subscriber.replies(2).await;
    c.cmd(&subscribing).await;
    assert_eq!(c.replies(2).await, subscribed);
    wait_for_own(&cluster, &pubsub, "returner", " cmd=subscribe ").await;
    assert_eq!(pusher.call(&["PUBLISH", "news", "hello"]).await, ":2\r\n");
    let message = String::from_utf8_lossy(&subscriber.reply().await).into_owned();
    assert_eq!(String::from_utf8_lossy(&c.reply().await), message);
    let unsubscribed = subscriber.call(&["UNSUBSCRIBE", "news"]).await;
    assert_eq!(c.call(&["UNSUBSCRIBE", "news"]).await, unsubscribed);
    assert_eq!(pusher.call(&["PUBLISH", "more", "still"]).await, ":2\r\n");
    let message = String::from_utf8_lossy(&subscriber.reply().await).into_owned();
    assert_eq!(String::from_utf8_lossy(&c.reply().await), message);
    assert_eq!(named_on(&cluster, &pubsub, "returner").await.len(), 1);
    let unsubscribed = subscriber.call(&["UNSUBSCRIBE", "more"]).await;
    assert_eq!(c.call(&["UNSUBSCRIBE", "more"]).await, unsubscribed);
    wait_until_back(&cluster, &pubsub, "returner", before_pubsub).await;
    assert_eq!(c.call(&["GET", &key]).await, "$1\r\n3\r\n");
    proxy.shutdown().await;
}

/// In RESP3 too: a client that said `HELLO 3` (on the RESP3 shared connections), then
/// subscribed, got a message and unsubscribed, goes back to the shared connections once
/// its last subscription is gone (the pushes counted as one Redis connection's), each
/// push the bytes a direct RESP3 connection gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_subscriber_is_back_on_shared_connections_after_its_last_unsubscribe() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, MUX).await;
    let pubsub = slot_map(&cluster).await.shards()[0].primary.clone();
    let key = key_on(&cluster, &pubsub, "r3:").await;
    let mut subscriber = cluster.conn(&pubsub).await;
    assert!(subscriber.call(&["HELLO", "3"]).await.starts_with('%'));
    let mut publisher = Conn::open(proxy.addr).await;
    assert_eq!(publisher.call(&["SET", &key, "v"]).await, "+OK\r\n");
    let before = unshared_on(&cluster, &pubsub).await.len();

    let mut c = Conn::open(proxy.addr).await;
    assert!(c.call(&["HELLO", "3"]).await.starts_with('%'));
    let unnamed = subscriber.call(&["CLIENT", "GETNAME"]).await;
    assert_eq!(unnamed, "_\r\n");
    assert_eq!(c.call(&["CLIENT", "GETNAME"]).await, unnamed);
    assert_eq!(c.call(&["CLIENT", "SETNAME", "pusher3"]).await, "+OK\r\n");
    assert_eq!(c.call(&["GET", &key]).await, "$1\r\nv\r\n");
    wait_until_back(&cluster, &pubsub, "pusher3", before).await;

    let subscribed = subscriber.call(&["SUBSCRIBE", "events"]).await;
    assert!(subscribed.starts_with('>'), "{subscribed:?}");
    assert_eq!(c.call(&["SUBSCRIBE", "events"]).await, subscribed);
    wait_for_own(&cluster, &pubsub, "pusher3", " cmd=subscribe ").await;
    // Still subscribed: a command between is routed as ever, and the client stays.
    assert_eq!(c.call(&["GET", &key]).await, "$1\r\nv\r\n");
    assert_eq!(publisher.call(&["PUBLISH", "events", "e1"]).await, ":2\r\n");
    let message = String::from_utf8_lossy(&subscriber.reply().await).into_owned();
    assert_eq!(String::from_utf8_lossy(&c.reply().await), message);
    assert_eq!(named_on(&cluster, &pubsub, "pusher3").await.len(), 1);
    let unsubscribed = subscriber.call(&["UNSUBSCRIBE", "events"]).await;
    assert_eq!(c.call(&["UNSUBSCRIBE", "events"]).await, unsubscribed);
    wait_until_back(&cluster, &pubsub, "pusher3", before).await;
    assert_eq!(c.call(&["GET", &key]).await, "$1\r\nv\r\n");
    proxy.shutdown().await;
}

/// A command whose state lasts for the connection's life keeps the client on the
/// connection of its own it took: `CLIENT ID` answers the same id before and after other
/// commands (a client back on shared connections would need a new one, of another id),
/// and after `READONLY` the connection that took it is the one `CLIENT ID` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sent_client_id_or_readonly_keeps_its_connections() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, MUX).await;
    let node = primaries(&cluster).await[0].clone();
    let key = key_on(&cluster, &node, "life:").await;

    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", &key, "v"]).await, "+OK\r\n");
    let id = c.call(&["CLIENT", "ID"]).await;
    let digits = id.trim_start_matches(':').trim_end();
    assert!(
        id.starts_with(':') && digits.parse::<u64>().is_ok(),
        "{id:?}"
    );
    for _ in 0..3 {
        assert_eq!(c.call(&["GET", &key]).await, "$1\r\nv\r\n");
    }
    assert_eq!(c.call(&["CLIENT", "ID"]).await, id);
    let list = client_list(&cluster, &node).await;
    let own = list
        .iter()
        .find(|l| l.starts_with(&format!("id={digits} ")))
        .unwrap_or_else(|| panic!("no connection {digits} on {node}: {list:?}"));
    assert!(!own.contains("respguard-shared"), "{own}");

    let mut direct = cluster.conn(&node).await;
    let mut r = Conn::open(proxy.addr).await;
    assert_eq!(r.call(&["CLIENT", "SETNAME", "reader"]).await, "+OK\r\n");
    assert_eq!(r.call(&["GET", &key]).await, "$1\r\nv\r\n");
    assert_eq!(
        r.call(&["READONLY"]).await,
        direct.call(&["READONLY"]).await
    );
    let line = wait_for_own(&cluster, &node, "reader", " cmd=readonly ").await;
    assert_eq!(r.call(&["GET", &key]).await, "$1\r\nv\r\n");
    let id = r.call(&["CLIENT", "ID"]).await;
    assert!(
        line.starts_with(&format!("id={} ", id.trim_start_matches(':').trim_end())),
        "CLIENT ID {id:?} is not the READONLY connection {line}"
    );
    proxy.shutdown().await;
}

/// `upstream.reply_timeout` on cluster node links: a node paused (`CLIENT PAUSE … ALL`)
/// owes replies and sends nothing; each client waiting on it, on a shared connection or
/// on one of its own, gets `no reply within 300ms, upstream.reply_timeout` well before
/// the pause ends, the timeouts are counted, and once the node answers again the same
/// clients' commands run on new connections. A BLPOP waiting longer than the limit is
/// excused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_fails_what_it_owes_within_the_reply_timeout() {
    let cluster = Cluster::start().await;
    let toml = "[upstream]\nconnections = \"multiplexed\"\nshared_connections = 1\nreply_timeout = \"300ms\"\n";
    let proxy = proxy_for_cluster(&cluster, toml).await;
    let node = primaries(&cluster).await[0].clone();
    let key = key_on(&cluster, &node, "slow:").await;
    let queue = key_on(&cluster, &node, "wait:").await;

    // Excused: a blocking command waits past the limit.
    let mut blocked = Conn::open(proxy.addr).await;
    let mut direct = cluster.conn(&node).await;
    let began = Instant::now();
    assert_eq!(
        blocked.call(&["BLPOP", &queue, "1"]).await,
        direct.call(&["BLPOP", &queue, "1"]).await
    );
    assert!(began.elapsed() >= Duration::from_millis(900));

    let mut shared = Conn::open(proxy.addr).await;
    let mut other = Conn::open(proxy.addr).await;
    let mut own = Conn::open(proxy.addr).await;
    assert_eq!(shared.call(&["SET", &key, "v"]).await, "+OK\r\n");
    assert_eq!(other.call(&["GET", &key]).await, "$1\r\nv\r\n");
    assert!(own.call(&["CLIENT", "ID"]).await.starts_with(':'));
    assert_eq!(own.call(&["GET", &key]).await, "$1\r\nv\r\n");

    let mut admin = cluster.conn(&node).await;
    assert_eq!(
        admin.call(&["CLIENT", "PAUSE", "2500", "ALL"]).await,
        "+OK\r\n"
    );
    let began = Instant::now();
    shared.cmd(&["GET", &key]).await;
    other.cmd(&["GET", &key]).await;
    own.cmd(&["GET", &key]).await;
    let error = format!(
        "-ERR respguard: connection to cluster node {node} lost (no reply within 300ms, upstream.reply_timeout)\r\n"
    );
    for (who, conn) in [
        ("shared", &mut shared),
        ("other", &mut other),
        ("own", &mut own),
    ] {
        let reply = String::from_utf8_lossy(&conn.reply().await).into_owned();
        assert_eq!(reply, error, "{who}");
    }
    let waited = began.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "the errors took {waited:?}"
    );
    let admin_addr = proxy.admin_addr.expect("admin listener");
    let timeouts = metric(admin_addr, "respguard_upstream_reply_timeouts_total").await;
    assert!(timeouts.is_some_and(|n| n >= 2.0), "{timeouts:?}");

    // Paused too, it runs once the pause is over.
    assert_eq!(admin.call(&["CLIENT", "UNPAUSE"]).await, "+OK\r\n");
    assert_eq!(shared.call(&["GET", &key]).await, "$1\r\nv\r\n");
    assert_eq!(other.call(&["GET", &key]).await, "$1\r\nv\r\n");
    assert_eq!(own.call(&["GET", &key]).await, "$1\r\nv\r\n");
    proxy.shutdown().await;
}
