//! `upstream.pinned_connections` in front of a real Redis Cluster, multiplexed: a client
//! on connections of its own holds one place however many nodes it uses, a client past the
//! limit waits `upstream.connect_timeout` and gets the limit's error (never a hang),
//! staying on shared connections, and a place given back is taken by the next client.

use std::time::{Duration, Instant};

use crate::cluster_harness::Cluster;
use crate::cluster_mux::{client_list, key_on, named_on, primaries};
use crate::cluster_mux_state::info_number;
use crate::cluster_proxy::proxy_for_cluster;
use crate::harness::*;
use crate::identities::pipelined;

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

/// Connections accepted by each node in `nodes`, summed.
async fn accepted(cluster: &Cluster, nodes: &[String]) -> u64 {
    let mut sum = 0;
    for node in nodes {
        sum += info_number(
            &mut cluster.conn(node).await,
            "stats",
            "total_connections_received",
        )
        .await;
    }
    // The counting connections themselves.
    sum - nodes.len() as u64
}

/// One client running twenty rounds of a transaction on one primary's key, WATCH …
/// UNWATCH and a BLPOP that times out on another's, SUBSCRIBE … UNSUBSCRIBE, each followed
/// by GETs, gets the replies a direct connection to the key's node gets; and the nodes
/// accept a handful of connections for all of it, not one per round and state (about 80):
/// one of the client's own per node, then the one it gave back each time (a connection is
/// handed back once its task has read everything, so a command right after the return
/// may find none kept yet and open one more, kept in turn: at most two per node are
/// allowed), and the proxy's topology reads, one per 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_client_using_state_again_and_again_reuses_its_node_connections() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, crate::cluster_mux::MUX).await;
    let nodes = primaries(&cluster).await;
    let (a, b) = (
        key_on(&cluster, &nodes[0], "reuse:a").await,
        key_on(&cluster, &nodes[1], "reuse:b").await,
    );
    let mut direct_a = cluster.conn(&nodes[0]).await;
    let mut direct_b = cluster.conn(&nodes[1]).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["GET", &a]).await, "$-1\r\n");
    assert_eq!(c.call(&["GET", &b]).await, "$-1\r\n");
    let before = accepted(&cluster, &nodes).await;
    let started = Instant::now();
    for round in 0..20 {
        let value = round.to_string();
        let on_a: [&[&str]; 6] = [
            &["MULTI"],
            &["SET", &a, &value],
            &["EXEC"],
            &["WATCH", &a],
            &["UNWATCH"],
            &["GET", &a],
        ];
        let on_b: [&[&str]; 2] = [&["BLPOP", &b, "0.01"], &["GET", &b]];
        let pubsub: [&[&str]; 2] = [&["SUBSCRIBE", "reuse:ch"], &["UNSUBSCRIBE", "reuse:ch"]];
        for (script, direct) in [(&on_a[..], &mut direct_a), (&on_b[..], &mut direct_b)] {
            let want = pipelined(direct, script).await;
            assert_eq!(pipelined(&mut c, script).await, want, "round {round}");
        }
        let want = pipelined(&mut direct_a, &pubsub).await;
        assert_eq!(pipelined(&mut c, &pubsub).await, want, "round {round}");
    }
    let topology_reads = started.elapsed().as_secs() / 5 + 1;
    let new = accepted(&cluster, &nodes).await - before;
    assert!(
        new <= 2 * 3 + topology_reads,
        "{new} connections accepted for 20 rounds ({topology_reads} topology reads)"
    );
    proxy.shutdown().await;
}

/// The id of the unnamed connection on `address` whose last command was `cmd` (the
/// client's own: shared ones and the tests' direct ones are named).
async fn unnamed_with(cluster: &Cluster, address: &str, cmd: &str) -> Option<String> {
    let last = format!(" cmd={cmd} ");
    client_list(cluster, address)
        .await
        .into_iter()
        .find(|l| l.contains(" name= ") && l.contains(&last))
        .and_then(|l| l.split(' ').next().map(str::to_string))
}

/// A node connection given back carries nothing to the next client: after client A's
/// WATCH of a key that then changed, and its UNWATCH, client B's transaction on that key
/// runs on the connection A gave back and commits, as a direct connection's does. A
/// client that named itself does not give its connection back: once it is done, no
/// connection on the node keeps its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_connection_given_back_carries_no_state_to_the_next_client() {
    let cluster = Cluster::start().await;
    let toml = "[upstream]\nconnections = \"multiplexed\"\npinned_idle = 1\n";
    let proxy = proxy_for_cluster(&cluster, toml).await;
    let nodes = primaries(&cluster).await;
    let node = nodes[0].clone();
    let key = key_on(&cluster, &node, "given:").await;
    let mut direct = cluster.conn(&node).await;
    assert_eq!(
        direct.call(&["CLIENT", "SETNAME", "direct"]).await,
        "+OK\r\n"
    );
    let mut a = Conn::open(proxy.addr).await;
    for conn in [&mut a, &mut direct] {
        assert_eq!(conn.call(&["WATCH", &key]).await, "+OK\r\n");
    }
    let own = unnamed_with(&cluster, &node, "watch")
        .await
        .expect("A's own connection");
    assert_eq!(
        cluster
            .conn(&node)
            .await
            .call(&["SET", &key, "changed"])
            .await,
        "+OK\r\n"
    );
    for conn in [&mut a, &mut direct] {
        assert_eq!(conn.call(&["UNWATCH"]).await, "+OK\r\n");
    }
    let mut b = Conn::open(proxy.addr).await;
    let transaction: [&[&str]; 3] = [&["MULTI"], &["SET", &key, "b"], &["EXEC"]];
    let want = pipelined(&mut direct, &transaction).await;
    assert_eq!(want, "+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n");
    // A hands its connection back once its task has read everything: B's first
    // transaction may come before that and take a new one (not kept then: one is).
    let mut tries = 0;
    eventually!(Duration::from_secs(5), "B's EXEC on A's connection", {
        tries += 1;
        assert_eq!(pipelined(&mut b, &transaction).await, want, "try {tries}");
        unnamed_with(&cluster, &node, "exec").await.as_ref() == Some(&own)
    });
    assert!(
        tries <= 2,
        "{tries} transactions before one ran on A's connection"
    );

    let mut named = Conn::open(proxy.addr).await;
    assert_eq!(named.call(&["CLIENT", "SETNAME", "named"]).await, "+OK\r\n");
    assert_eq!(pipelined(&mut named, &transaction).await, want);
    eventually!(Duration::from_secs(5), "the named connection closed", {
        named_on(&cluster, &node, "named").await.is_empty()
    });
    proxy.shutdown().await;
}
