//! Connection state a multiplexed client in front of a real Redis Cluster sets or ends
//! without taking connections of its own, or gives back when Redis refuses it: `QUIT`
//! answered by the proxy after the replies before it, `CLIENT SETINFO` kept per client
//! (never sent on a shared connection), and a RESP3 subscription Redis refuses. Each
//! reply is compared with a direct connection to the node.

use crate::cluster_harness::Cluster;
use crate::cluster_mux::{
    key_on, named_on, primaries, shared_on, unshared_on, wait_for_own, wait_until_back, MUX,
};
use crate::cluster_proxy::{proxy_for_cluster, slot_map};
use crate::harness::*;

/// The value of `field` in `INFO section` on `conn` (0 when absent: a command never run
/// has no `cmdstat_` line).
pub(crate) async fn info_number(conn: &mut Conn, section: &str, field: &str) -> u64 {
    let info = conn.call(&["INFO", section]).await;
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| {
            let v = v.trim();
            let v = v.strip_prefix("calls=").unwrap_or(v);
            v.split(',').next().unwrap().parse().unwrap()
        })
        .unwrap_or(0)
}

/// What each node (one connection to each in `admins`) counted: connections accepted,
/// QUITs run, CLIENT SETNAMEs run (a connection of a client's own is given the client's
/// name, a new shared one its own).
async fn node_counts(admins: &mut [Conn]) -> Vec<(u64, u64, u64)> {
    let mut counts = Vec::new();
    for admin in admins {
        counts.push((
            info_number(admin, "stats", "total_connections_received").await,
            info_number(admin, "commandstats", "cmdstat_quit").await,
            info_number(admin, "commandstats", "cmdstat_client|setname").await,
        ));
    }
    counts
}

/// A client on shared node connections pipelines commands on two nodes' keys, `QUIT` and
/// a command after it: it gets the replies a direct connection to the node gets, byte for
/// byte (every reply before `QUIT` in order, then `+OK`, then the connection closed, the
/// command after it never run), and no node accepted a connection, ran a `QUIT` or named
/// a connection meanwhile: the proxy answered it, opening nothing. (Connections accepted
/// are compared over up to three clients, as the proxy's topology read opens one to a
/// node every 5 s; the commands run are exact.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_on_shared_connections_is_answered_after_earlier_replies_without_a_connection() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, MUX).await;
    let nodes = primaries(&cluster).await;
    let node = nodes[0].clone();
    let key = key_on(&cluster, &node, "quit:").await;
    let counter = key_on(&cluster, &node, "quits:").await;
    let elsewhere = key_on(&cluster, &nodes[1], "quitx:").await;
    let after = key_on(&cluster, &node, "after:").await;
    let script: &[&[&str]] = &[
        &["SET", &key, "v"],
        &["INCR", &counter],
        &["GET", &key],
        &["QUIT"],
        &["SET", &after, "never"],
    ];
    let batch: Vec<u8> = script.iter().flat_map(|c| encode(c)).collect();
    let mut direct = cluster.conn(&node).await;
    direct.send(&batch).await;
    let want = direct.read_to_close().await;
    assert_eq!(
        String::from_utf8_lossy(&want),
        "+OK\r\n:1\r\n$1\r\nv\r\n+OK\r\n"
    );
    let mut admins = Vec::new();
    for address in cluster.addresses() {
        admins.push(cluster.conn(&address).await);
    }
    let mut unseen = false;
    for attempt in 0..3 {
        let mut admin = cluster.conn(&node).await;
        assert_eq!(admin.call(&["DEL", &counter]).await, ":1\r\n");
        drop(admin);
        let mut c = Conn::open(proxy.addr).await;
        // On shared connections to two nodes, named (the name kept by the proxy).
        assert_eq!(c.call(&["CLIENT", "SETNAME", "quitter"]).await, "+OK\r\n");
        assert_eq!(c.call(&["SET", &elsewhere, "x"]).await, "+OK\r\n");
        assert_eq!(c.call(&["GET", &key]).await, "$1\r\nv\r\n");
        let before = node_counts(&mut admins).await;
        c.send(&batch).await;
        let got = c.read_to_close().await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
        let now = node_counts(&mut admins).await;
        for (i, ((conns, quits, names), (conns0, quits0, names0))) in
            now.iter().zip(&before).enumerate()
        {
            assert_eq!(quits, quits0, "node {i} ran a QUIT");
            assert_eq!(names, names0, "node {i} named a connection");
            if conns != conns0 {
                eprintln!(
                    "attempt {attempt}: node {i} accepted {} connections",
                    conns - conns0
                );
            }
        }
        if now.iter().zip(&before).all(|(a, b)| a.0 == b.0) {
            unseen = true;
            break;
        }
    }
    assert!(unseen, "a node accepted a connection during every QUIT");
    let mut check = cluster.conn(&node).await;
    assert_eq!(check.call(&["EXISTS", &after]).await, ":0\r\n");
    proxy.shutdown().await;
}

/// The `lib-name=… lib-ver=…` part of a `CLIENT LIST` or `CLIENT INFO` line (Redis 7.2
/// and Valkey show it; Redis 7.0 has no such fields).
fn library_of(line: &str) -> Option<String> {
    let at = line.find(" lib-name=")?;
    let rest = &line[at + 1..];
    let end = rest
        .find(" lib-ver=")
        .map(|v| v + 1 + rest[v + 1..].find(' ').unwrap_or(rest.len() - v - 1))?;
    Some(rest[..end].to_string())
}

/// `CLIENT SETINFO` on shared node connections, valid and refused (an attribute value
/// with a space, an unknown attribute), gets the replies a direct connection to the node
/// gets; no shared connection takes the library (no node's `respguard-shared` line names
/// it), and a connection of the client's own (WATCH) shows exactly what the direct
/// connection's `CLIENT INFO` shows. Redis 7.0 knows no SETINFO and refuses each (the
/// proxy too, sending it where it changes nothing); `scripts/test.sh` runs this test
/// against Valkey 8 too, where the valid ones are kept per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_setinfo_on_shared_connections_is_kept_per_client() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, MUX).await;
    let node = primaries(&cluster).await[0].clone();
    let key = key_on(&cluster, &node, "lib:").await;
    let script: &[&[&str]] = &[
        &["CLIENT", "SETINFO", "lib-name", "mylib"],
        &["CLIENT", "SETINFO", "LIB-VER", "1.0"],
        &["CLIENT", "SETINFO", "lib-name", "bad lib"],
        &["CLIENT", "SETINFO", "lib-colour", "red"],
        &["GET", &key],
    ];
    let mut direct = cluster.conn(&node).await;
    let mut want = Vec::new();
    for command in script {
        want.push(direct.call(command).await);
    }
    let direct_info = direct.call(&["CLIENT", "INFO"]).await;
    let library = library_of(&direct_info);

    let mut other = Conn::open(proxy.addr).await;
    assert_eq!(other.call(&["GET", &key]).await, "$-1\r\n");
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["CLIENT", "SETNAME", "libclient"]).await, "+OK\r\n");
    assert_eq!(c.call(&["GET", &key]).await, "$-1\r\n");
    let before = unshared_on(&cluster, &node).await.len();
    for (command, want) in script.iter().zip(&want) {
        assert_eq!(&c.call(command).await, want, "{command:?}");
    }
    // Another client's view: no shared connection names the library.
    for address in primaries(&cluster).await {
        for line in shared_on(&cluster, &address).await {
            assert!(!line.contains("mylib"), "{line}");
        }
    }
    wait_until_back(&cluster, &node, "libclient", before).await;
    assert_eq!(other.call(&["GET", &key]).await, "$-1\r\n");
    // A connection of its own is given the library as Redis kept it for the direct one.
    assert_eq!(c.call(&["WATCH", &key]).await, "+OK\r\n");
    let own = wait_for_own(&cluster, &node, "libclient", " cmd=watch ").await;
    assert_eq!(library_of(&own), library, "{own}");
    assert_eq!(c.call(&["UNWATCH"]).await, "+OK\r\n");
    wait_until_back(&cluster, &node, "libclient", before).await;
    proxy.shutdown().await;
}

/// A RESP3 subscription Redis refuses moves the client back to shared connections once it
/// holds none: `SUBSCRIBE` of a channel the ACL user may not use (`-NOPERM`) and an
/// `SSUBSCRIBE` across slots (`-CROSSSLOT`) each get the direct connection's reply, and
/// the client's connections of its own are gone afterwards; a `GET` pipelined behind the
/// refused `SUBSCRIBE` gets its value, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resp3_subscription_leaves_the_client_on_shared_connections() {
    let (cluster, proxy) = crate::cluster_pubsub_order::cluster_and_proxy_as_app(MUX).await;
    let pubsub = slot_map(&cluster).await.shards()[0].primary.clone();
    let key = key_on(&cluster, &pubsub, "sub:").await;
    // Two shard channels in different slots.
    let (a, b) = ("allowed:{a}", "allowed:{b}");

    let mut direct = cluster.conn(&pubsub).await;
    assert_eq!(direct.call(&["AUTH", "app", "secret"]).await, "+OK\r\n");
    assert!(direct.call(&["HELLO", "3"]).await.starts_with('%'));
    assert_eq!(direct.call(&["SET", &key, "v"]).await, "+OK\r\n");
    let noperm = direct.call(&["SUBSCRIBE", "news"]).await;
    assert!(noperm.starts_with("-NOPERM"), "{noperm}");
    let value = direct.call(&["GET", &key]).await;
    let crossslot = direct.call(&["SSUBSCRIBE", a, b]).await;
    assert!(crossslot.starts_with("-CROSSSLOT"), "{crossslot}");

    let mut c = Conn::open(proxy.addr).await;
    assert!(c.call(&["HELLO", "3"]).await.starts_with('%'));
    assert_eq!(c.call(&["CLIENT", "SETNAME", "refused3"]).await, "+OK\r\n");
    assert_eq!(c.call(&["GET", &key]).await, value);
    let before = unshared_on(&cluster, &pubsub).await.len();
    let mut batch = encode(&["SUBSCRIBE", "news"]);
    batch.extend(encode(&["GET", &key]));
    c.send(&batch).await;
    assert_eq!(String::from_utf8_lossy(&c.reply().await), noperm);
    assert_eq!(String::from_utf8_lossy(&c.reply().await), value);
    wait_until_back(&cluster, &pubsub, "refused3", before).await;
    assert_eq!(c.call(&["SSUBSCRIBE", a, b]).await, crossslot);
    // Refused by the proxy as Redis Cluster refuses it, before any node is asked.
    for address in primaries(&cluster).await {
        let named = named_on(&cluster, &address, "refused3").await;
        assert!(named.is_empty(), "{address}: {named:?}");
    }
    assert_eq!(c.call(&["GET", &key]).await, value);
    wait_until_back(&cluster, &pubsub, "refused3", before).await;
    proxy.shutdown().await;
}
