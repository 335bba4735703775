//! RESP3 subscriptions in front of a real Redis Cluster keep the client's order: a
//! `SUBSCRIBE` pipelined behind a command another node is slow to answer is answered after
//! it (its confirmation, or Redis's refusal), as over one connection, and a message on the
//! channel comes after the confirmation. Every reply is compared with a direct connection's.

use crate::cluster_harness::Cluster;
use crate::cluster_mux::{key_on, primaries, MUX};
use crate::cluster_proxy::slot_map;
use crate::harness::*;
use respguard::app::ProxyHandle;

/// An ACL user `app` (password `secret`) on every node that may use only channels
/// `allowed:*`.
async fn user_with_some_channels(cluster: &Cluster) {
    for address in cluster.addresses() {
        let mut admin = cluster.conn(&address).await;
        let set = admin
            .call(&[
                "ACL",
                "SETUSER",
                "app",
                "on",
                ">secret",
                "~*",
                "resetchannels",
                "&allowed:*",
                "+@all",
            ])
            .await;
        assert_eq!(set, "+OK\r\n");
    }
}

/// A cluster whose nodes have the user of [`user_with_some_channels`], and a proxy
/// configured by `toml` in front of it, connecting as that user.
pub(crate) async fn cluster_and_proxy_as_app(toml: &str) -> (Cluster, ProxyHandle) {
    let cluster = Cluster::start().await;
    user_with_some_channels(&cluster).await;
    let mut raw = respguard::config::RawConfig::from_toml(toml).unwrap();
    raw.proxy.listen = "127.0.0.1:0".into();
    raw.admin.listen = "127.0.0.1:0".into();
    raw.upstream.url = format!(
        "redis-cluster://app:secret@{}",
        cluster.addresses()[..2].join(",")
    );
    let proxy = start_proxy(raw).await;
    (cluster, proxy)
}

/// A connection to `address` as `app`, in RESP3.
async fn direct_app(cluster: &Cluster, address: &str) -> Conn {
    let mut c = cluster.conn(address).await;
    assert_eq!(c.call(&["AUTH", "app", "secret"]).await, "+OK\r\n");
    assert!(c.call(&["HELLO", "3"]).await.starts_with('%'));
    c
}

/// Pause every client of the node at `address` for `ms` milliseconds.
async fn pause(cluster: &Cluster, address: &str, ms: u32) {
    let mut admin = cluster.conn(address).await;
    let ms = ms.to_string();
    assert_eq!(
        admin.call(&["CLIENT", "PAUSE", &ms, "ALL"]).await,
        "+OK\r\n"
    );
}

/// The pub/sub node (the first shard's primary, where channels go) and another primary.
async fn pubsub_node_and_another(cluster: &Cluster) -> (String, String) {
    let pubsub = slot_map(cluster).await.shards()[0].primary.clone();
    let other = primaries(cluster)
        .await
        .into_iter()
        .find(|a| *a != pubsub)
        .expect("a second primary");
    (pubsub, other)
}

async fn subscriptions_keep_the_clients_order_with(toml: &str) {
    let (cluster, proxy) = cluster_and_proxy_as_app(toml).await;
    // Channels go to the first shard's primary; the key lives on another primary.
    let (pubsub, other) = pubsub_node_and_another(&cluster).await;
    let key = key_on(&cluster, &other, "order:").await;

    let mut on_other = direct_app(&cluster, &other).await;
    assert_eq!(on_other.call(&["SET", &key, "v"]).await, "+OK\r\n");
    let value = on_other.call(&["GET", &key]).await;
    let mut on_pubsub = direct_app(&cluster, &pubsub).await;
    let noperm = on_pubsub.call(&["SUBSCRIBE", "news"]).await;
    assert!(noperm.starts_with("-NOPERM"), "{noperm}");
    let first = on_pubsub.call(&["SUBSCRIBE", "allowed:y"]).await;
    let confirmed = on_pubsub.call(&["SUBSCRIBE", "allowed:x"]).await;
    assert!(confirmed.starts_with(">3"), "{confirmed}");

    let mut c = Conn::open(proxy.addr).await;
    assert!(c.call(&["HELLO", "3"]).await.starts_with('%'));
    assert_eq!(c.call(&["GET", &key]).await, value);
    // Subscribed first: a multiplexed client is on connections of its own from here on,
    // so what follows is not ordered by its move off the shared ones.
    assert_eq!(c.call(&["SUBSCRIBE", "allowed:y"]).await, first);

    // Refused: the other node, paused, answers its GET after the refusal has arrived.
    let mut batch = encode(&["GET", &key]);
    batch.extend(encode(&["SUBSCRIBE", "news"]));
    batch.extend(encode(&["GET", &key]));
    pause(&cluster, &other, 300).await;
    c.send(&batch).await;
    assert_eq!(String::from_utf8_lossy(&c.reply().await), value);
    assert_eq!(String::from_utf8_lossy(&c.reply().await), noperm);
    assert_eq!(String::from_utf8_lossy(&c.reply().await), value);

    // Confirmed: the same, then a message on the channel after its confirmation.
    let mut batch = encode(&["GET", &key]);
    batch.extend(encode(&["SUBSCRIBE", "allowed:x"]));
    pause(&cluster, &other, 300).await;
    c.send(&batch).await;
    assert_eq!(String::from_utf8_lossy(&c.reply().await), value);
    assert_eq!(String::from_utf8_lossy(&c.reply().await), confirmed);
    let mut publisher = direct_app(&cluster, &pubsub).await;
    assert_eq!(
        publisher.call(&["PUBLISH", "allowed:x", "hi"]).await,
        ":2\r\n"
    );
    let direct_message = on_pubsub.reply().await;
    assert_eq!(c.reply().await, direct_message);
    assert_eq!(c.call(&["GET", &key]).await, value);

    // Pattern and un- forms, each confirmation in turn, then a command after them.
    for command in [
        &["PSUBSCRIBE", "allowed:*"][..],
        &["PUNSUBSCRIBE", "allowed:*"],
        &["UNSUBSCRIBE", "allowed:x", "allowed:y"],
    ] {
        let mut direct = Vec::new();
        on_pubsub.send(&encode(command)).await;
        for _ in 1..command.len() {
            direct.push(on_pubsub.reply().await);
        }
        let mut batch = encode(command);
        batch.extend(encode(&["GET", &key]));
        c.send(&batch).await;
        for expected in direct {
            assert_eq!(c.reply().await, expected, "{command:?}");
        }
        assert_eq!(String::from_utf8_lossy(&c.reply().await), value);
    }
    proxy.shutdown().await;
}

/// Each client on node connections of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_subscription_is_answered_in_the_clients_order() {
    subscriptions_keep_the_clients_order_with("").await;
}

/// Multiplexed: subscribed, the client is on connections of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiplexed_resp3_subscription_is_answered_in_the_clients_order() {
    subscriptions_keep_the_clients_order_with(MUX).await;
}

/// Messages held behind a reply another node still owes are bounded: a RESP3 client whose
/// `SUBSCRIBE` waits behind its own `BLPOP … 0` on another node, while messages of 1 MiB
/// arrive on the channel, is let go past 4 MiB (its connection closed) instead of the proxy holding
/// them without end. No message reaches it: the two commands it is owed get the
/// connection-lost error, then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_behind_an_unanswered_command_are_bounded() {
    let (cluster, proxy) = cluster_and_proxy_as_app("").await;
    let (pubsub, other) = pubsub_node_and_another(&cluster).await;
    let queue = key_on(&cluster, &other, "empty:").await;

    let mut c = Conn::open(proxy.addr).await;
    assert!(c.call(&["HELLO", "3"]).await.starts_with('%'));
    let mut batch = encode(&["BLPOP", &queue, "0"]);
    batch.extend(encode(&["SUBSCRIBE", "allowed:flood"]));
    c.send(&batch).await;
    // The subscription is in force on its node once Redis counts it.
    let mut publisher = direct_app(&cluster, &pubsub).await;
    let mut subscribed = String::new();
    for _ in 0..100 {
        subscribed = publisher.call(&["PUBSUB", "NUMSUB", "allowed:flood"]).await;
        if subscribed.ends_with(":1\r\n") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(subscribed.ends_with(":1\r\n"), "{subscribed}");
    // 1 MiB at a time until the subscriber is gone (Redis counts no one to deliver to):
    // past the proxy's 4 MiB of held output, at the fifth message.
    let message = "m".repeat(1 << 20);
    let mut delivered = 0;
    while publisher
        .call(&["PUBLISH", "allowed:flood", &message])
        .await
        == ":1\r\n"
    {
        delivered += 1;
        assert!(delivered <= 8, "8 MiB held for a client that reads nothing");
    }
    assert!(delivered >= 4, "let go after only {delivered} MiB");
    // The two commands owed get the connection-lost error the session gives when its way
    // to Redis ends; no message ever reached the client.
    let before_close = String::from_utf8_lossy(&c.read_to_close().await).into_owned();
    assert_eq!(
        before_close.matches("\r\n").count(),
        2,
        "{before_close:.300}"
    );
    for line in before_close.lines() {
        assert!(
            line.starts_with("-ERR respguard: upstream") && line.contains("connection lost"),
            "{line:.300}"
        );
    }
    proxy.shutdown().await;
}

/// `[GET, command, GET]` through `c`, the node at `paused` paused meanwhile: the value,
/// then what `command` is answered (`pushes` of them), then the value again.
async fn around_a_slow_get(
    c: &mut Conn,
    cluster: &Cluster,
    paused: &str,
    key: &str,
    command: &[&str],
    pushes: usize,
) -> Vec<Vec<u8>> {
    let value = {
        let mut direct = direct_app(cluster, paused).await;
        direct.call(&["GET", key]).await
    };
    let mut batch = encode(&["GET", key]);
    batch.extend(encode(command));
    batch.extend(encode(&["GET", key]));
    pause(cluster, paused, 300).await;
    c.send(&batch).await;
    assert_eq!(String::from_utf8_lossy(&c.reply().await), value);
    let mut answer = Vec::new();
    for _ in 0..pushes {
        answer.push(c.reply().await);
    }
    assert_eq!(
        String::from_utf8_lossy(&c.reply().await),
        value,
        "{command:?}: nothing more than its confirmations before the next reply"
    );
    answer
}

async fn unsubscriptions_naming_no_channel_end_every_subscription_with(toml: &str) {
    let (cluster, proxy) = cluster_and_proxy_as_app(toml).await;
    let (pubsub, other) = pubsub_node_and_another(&cluster).await;
    let key = key_on(&cluster, &other, "order:").await;
    let on_other_channel = key_on(&cluster, &other, "allowed:s").await;
    let on_pubsub_channel = key_on(&cluster, &pubsub, "allowed:t").await;

    let mut on_other = direct_app(&cluster, &other).await;
    assert_eq!(on_other.call(&["SET", &key, "v"]).await, "+OK\r\n");
    // What one Redis answers, the shard channels ended in the order the proxy ends them
    // (the other node's first): counts are the client's, over every node.
    let one_redis = RedisServer::start();
    let mut reference = Conn::open(one_redis.addr()).await;
    assert!(reference.call(&["HELLO", "3"]).await.starts_with('%'));
    let shard_other = reference.call(&["SSUBSCRIBE", &on_other_channel]).await;
    let shard_pubsub = reference.call(&["SSUBSCRIBE", &on_pubsub_channel]).await;
    let channel = reference.call(&["SUBSCRIBE", "allowed:x"]).await;
    let unsub_other = reference.call(&["SUNSUBSCRIBE", &on_other_channel]).await;
    let unsub_pubsub = reference.call(&["SUNSUBSCRIBE", &on_pubsub_channel]).await;
    let unsub_channel = reference.call(&["UNSUBSCRIBE"]).await;
    let unsub_none = reference.call(&["SUNSUBSCRIBE"]).await;
    assert_eq!(unsub_none, ">3\r\n$12\r\nsunsubscribe\r\n_\r\n:0\r\n");

    let mut c = Conn::open(proxy.addr).await;
    assert!(c.call(&["HELLO", "3"]).await.starts_with('%'));
    assert_eq!(
        c.call(&["SSUBSCRIBE", &on_other_channel]).await,
        shard_other
    );
    assert_eq!(
        c.call(&["SSUBSCRIBE", &on_pubsub_channel]).await,
        shard_pubsub
    );
    assert_eq!(c.call(&["SUBSCRIBE", "allowed:x"]).await, channel);

    // The shard channels of both nodes, each node's confirmation in the client's turn.
    let answer = around_a_slow_get(&mut c, &cluster, &other, &key, &["SUNSUBSCRIBE"], 2).await;
    assert_eq!(
        answer,
        [unsub_other.into_bytes(), unsub_pubsub.into_bytes()]
    );
    let mut publisher = direct_app(&cluster, &other).await;
    assert_eq!(
        publisher.call(&["SPUBLISH", &on_other_channel, "m"]).await,
        ":0\r\n",
        "no subscriber left on the other node"
    );
    let mut publisher = direct_app(&cluster, &pubsub).await;
    assert_eq!(
        publisher.call(&["SPUBLISH", &on_pubsub_channel, "m"]).await,
        ":0\r\n"
    );

    let answer = around_a_slow_get(&mut c, &cluster, &other, &key, &["UNSUBSCRIBE"], 1).await;
    assert_eq!(answer, [unsub_channel.into_bytes()]);
    assert_eq!(
        publisher.call(&["PUBLISH", "allowed:x", "m"]).await,
        ":0\r\n"
    );
    // Nothing held: Redis's one confirmation naming no channel.
    let answer = around_a_slow_get(&mut c, &cluster, &other, &key, &["SUNSUBSCRIBE"], 1).await;
    assert_eq!(answer, [unsub_none.into_bytes()]);
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
    proxy.shutdown().await;
}

/// RESP3 `SUNSUBSCRIBE` and `UNSUBSCRIBE` naming no channel, each client on node
/// connections of its own: `SUNSUBSCRIBE` ends the shard subscriptions on every node
/// (the confirmations byte for byte one Redis's, counted over every node, after the reply
/// the client was owed first), `UNSUBSCRIBE` the channel, and with nothing held Redis's one
/// confirmation naming no channel; no publisher finds a subscriber afterwards, and the
/// hidden `PING` that ends each never reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscriptions_naming_no_channel_end_every_subscription_in_turn() {
    unsubscriptions_naming_no_channel_end_every_subscription_with("").await;
}

/// The same, multiplexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_unsubscriptions_naming_no_channel_end_every_subscription_in_turn() {
    unsubscriptions_naming_no_channel_end_every_subscription_with(MUX).await;
}
