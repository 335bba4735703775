//! Subscriptions spread over several nodes of a real Redis Cluster are answered as one
//! Redis answers them, in RESP2 and RESP3, per client and multiplexed: shard channels on
//! two primaries, a channel and a pattern on the pub/sub node, each confirmation's count
//! the client's total (not its node's), a RESP2 subscriber's other commands refused as one
//! Redis refuses them, confirmations in the client's order when another node answers
//! first, and `RESET` ending every node's subscriptions. The reference is a standalone
//! `redis-server` running the same session.

use crate::cluster_harness::Cluster;
use crate::cluster_mux::{key_on, primaries, MUX};
use crate::cluster_proxy::{proxy_for_cluster, slot_map};
use crate::harness::*;

/// The names the session uses, each on the node it needs in the cluster.
struct Names {
    /// Shard channels on primary `a`.
    on_a: [String; 2],
    /// Shard channels on primary `b`.
    on_b: [String; 2],
    /// A key on the third primary, which holds no subscription before the channel's.
    key: String,
}

impl Names {
    async fn for_cluster(cluster: &Cluster, a: &str, b: &str, c: &str) -> Self {
        Names {
            on_a: [
                key_on(cluster, a, "news:a").await,
                key_on(cluster, a, "feed:a").await,
            ],
            on_b: [
                key_on(cluster, b, "news:b").await,
                key_on(cluster, b, "feed:b").await,
            ],
            key: key_on(cluster, c, "value:").await,
        }
    }
}

/// Read `n` replies, one string each.
async fn replies(conn: &mut Conn, n: usize) -> Vec<String> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(String::from_utf8_lossy(&conn.reply().await).into_owned());
    }
    all
}

/// A confirmation's channel and count (its last two lines).
fn channel_and_count(confirmation: &str) -> (String, String) {
    let lines: Vec<&str> = confirmation.split("\r\n").collect();
    let n = lines.len();
    (lines[n - 4].to_string(), lines[n - 2].to_string())
}

/// The session, its transcript returned: on `sub`, with `publisher` publishing; `paused`
/// (a node of the cluster the names' `on_a` channels are on) is paused before a pipelined
/// batch so that another node answers its part first.
async fn session(
    sub: &mut Conn,
    publisher: &mut Conn,
    names: &Names,
    resp3: bool,
    paused: Option<(&Cluster, &str)>,
) -> Vec<String> {
    let mut t = Vec::new();
    let [a1, a2] = &names.on_a;
    let [b1, b2] = &names.on_b;
    assert_eq!(publisher.call(&["SET", &names.key, "v"]).await, "+OK\r\n");
    if resp3 {
        assert!(sub.call(&["HELLO", "3"]).await.starts_with('%'));
    }
    t.push(sub.call(&["SSUBSCRIBE", a1]).await);
    t.push(sub.call(&["SSUBSCRIBE", b1]).await);
    // RESP2: refused (in the cluster, by a subscribed node the key's slot is not on).
    t.push(sub.call(&["GET", &names.key]).await);
    t.push(sub.call(&["SUBSCRIBE", "chat"]).await);
    t.push(sub.call(&["PSUBSCRIBE", "room:*"]).await);
    t.push(sub.call(&["PING"]).await);
    t.push(sub.call(&["PING", "hello"]).await);
    t.push(sub.call(&["ECHO", "x"]).await);
    for (publish, channel) in [
        ("SPUBLISH", a1.as_str()),
        ("SPUBLISH", b1),
        ("PUBLISH", "chat"),
        ("PUBLISH", "room:1"),
    ] {
        t.push(publisher.call(&[publish, channel, "m"]).await);
        t.push(String::from_utf8_lossy(&sub.reply().await).into_owned());
    }

    // Pipelined over two nodes, the first one slow: answered in the client's order.
    let mut batch = encode(&["SSUBSCRIBE", a2]);
    batch.extend(encode(&["SSUBSCRIBE", b2]));
    batch.extend(encode(&["PING"]));
    if let Some((cluster, node)) = paused {
        let mut admin = cluster.conn(node).await;
        assert_eq!(
            admin.call(&["CLIENT", "PAUSE", "300", "ALL"]).await,
            "+OK\r\n"
        );
    }
    sub.send(&batch).await;
    t.extend(replies(sub, 3).await);

    t.push(sub.call(&["SUNSUBSCRIBE", a1]).await);
    // One per shard channel left, counted down; one Redis gives them in its own order.
    let all = replies_to_one(sub, &["SUNSUBSCRIBE"], 3).await;
    let (mut channels, counts): (Vec<String>, Vec<String>) =
        all.iter().map(|c| channel_and_count(c)).unzip();
    channels.sort();
    t.push(format!("{channels:?} {counts:?} {}", &all[0][..4]));
    t.push(sub.call(&["UNSUBSCRIBE"]).await);
    t.push(sub.call(&["PUNSUBSCRIBE"]).await);
    t.push(sub.call(&["GET", &names.key]).await);
    t.push(publisher.call(&["SPUBLISH", a1, "m"]).await);
    t.push(publisher.call(&["SPUBLISH", b1, "m"]).await);

    // RESET ends the subscriptions on every node before its reply.
    t.push(sub.call(&["SSUBSCRIBE", a1]).await);
    t.push(sub.call(&["SSUBSCRIBE", b1]).await);
    t.push(sub.call(&["RESET"]).await);
    t.push(publisher.call(&["SPUBLISH", a1, "m"]).await);
    t.push(publisher.call(&["SPUBLISH", b1, "m"]).await);
    t.push(sub.call(&["GET", &names.key]).await);
    t
}

/// Send `command`, read `n` replies.
async fn replies_to_one(conn: &mut Conn, command: &[&str], n: usize) -> Vec<String> {
    conn.send(&encode(command)).await;
    replies(conn, n).await
}

async fn subscriptions_over_nodes_are_one_redis_s(toml: &str, resp3: bool) {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, toml).await;
    let pubsub = slot_map(&cluster).await.shards()[0].primary.clone();
    // Shard channels on the two primaries that are not the pub/sub node's, the key on it:
    // the key's node holds no subscription until `SUBSCRIBE`.
    let others: Vec<String> = primaries(&cluster)
        .await
        .into_iter()
        .filter(|p| *p != pubsub)
        .collect();
    let names = Names::for_cluster(&cluster, &others[0], &others[1], &pubsub).await;

    let one_redis = RedisServer::start();
    let mut sub = Conn::open(one_redis.addr()).await;
    let mut publisher = Conn::open(one_redis.addr()).await;
    let expected = session(&mut sub, &mut publisher, &names, resp3, None).await;

    let mut sub = Conn::open(proxy.addr).await;
    let mut publisher = Conn::open(proxy.addr).await;
    let seen = session(
        &mut sub,
        &mut publisher,
        &names,
        resp3,
        Some((&cluster, &others[0])),
    )
    .await;
    for (i, (seen, expected)) in seen.iter().zip(&expected).enumerate() {
        assert_eq!(seen, expected, "step {i}");
    }
    assert_eq!(seen.len(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_subscriptions_over_nodes_are_answered_as_by_one_redis() {
    subscriptions_over_nodes_are_one_redis_s("", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_subscriptions_over_nodes_are_answered_as_by_one_redis() {
    subscriptions_over_nodes_are_one_redis_s("", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_resp2_subscriptions_over_nodes_are_answered_as_by_one_redis() {
    subscriptions_over_nodes_are_one_redis_s(MUX, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_resp3_subscriptions_over_nodes_are_answered_as_by_one_redis() {
    subscriptions_over_nodes_are_one_redis_s(MUX, true).await;
}
