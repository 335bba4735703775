//! ACL users under multiplexing in front of a real Redis Cluster: a client's `AUTH` (or
//! `HELLO 3 AUTH …`) moves it to the shared node connections of the user it names, opened
//! with its credentials, instead of giving it connections of its own for life. Redis checks
//! every password, so a wrong one gets Redis's own error and leaves the client as it was,
//! and every command runs with the permissions of the user the client authenticated as.
//!
//! Every reply is compared with a direct connection's to the node serving its keys; the
//! nodes' `CLIENT LIST` (`user=`, `resp=`, `name=`) shows which connections exist and as
//! whom.

use std::collections::HashMap;
use std::time::Duration;

use crate::cluster_harness::Cluster;
use crate::cluster_mux::{primaries, shared_on, unshared_on, wait_for_own, MUX};
use crate::cluster_proxy::{proxy_for_cluster, slot_map};
use crate::harness::*;
use crate::identities::pipelined;
use respguard::cluster::slot::key_slot;

/// Give every node of `cluster` the user alice (password `apw`), who may touch `a:*` keys
/// only and run anything but `CONFIG`.
async fn add_alice(cluster: &Cluster) {
    for address in cluster.addresses() {
        let mut admin = cluster.conn(&address).await;
        let set = admin
            .call(&[
                "ACL", "SETUSER", "alice", "on", ">apw", "~a:*", "&*", "+@all", "-config",
            ])
            .await;
        assert_eq!(set, "+OK\r\n", "{address}");
    }
}

/// A cluster whose nodes have alice, and a multiplexed proxy in front of it (its URL names
/// no user: the clients start as `default`).
async fn cluster_with_alice() -> (Cluster, respguard::app::ProxyHandle) {
    let cluster = Cluster::start().await;
    add_alice(&cluster).await;
    let proxy = proxy_for_cluster(&cluster, MUX).await;
    (cluster, proxy)
}

/// For each primary, the first key `prefix` and a number makes whose slot it serves.
async fn keys_on_each(cluster: &Cluster, prefix: &str) -> HashMap<String, String> {
    let map = slot_map(cluster).await;
    let mut keys = HashMap::new();
    for i in 0.. {
        let key = format!("{prefix}{i}");
        let node = map
            .shard_of(key_slot(key.as_bytes()))
            .unwrap()
            .primary
            .clone();
        keys.entry(node).or_insert(key);
        if keys.len() == map.shards().len() {
            return keys;
        }
    }
    unreachable!()
}

/// The shared connections `address` lists as `user`.
async fn shared_as(cluster: &Cluster, address: &str, user: &str) -> Vec<String> {
    let word = format!(" user={user} ");
    shared_on(cluster, address)
        .await
        .into_iter()
        .filter(|l| l.contains(&word))
        .collect()
}

/// Wait until no primary lists a connection of a client's own: none named with
/// `name_prefix` (each test client names itself, and the name is given to each connection
/// of its own), and none as alice that is not shared but the test's direct ones (named
/// `direct`). The proxy's own connections (the monitor's, a topology read's) come and go
/// as `default`.
async fn no_client_owned(cluster: &Cluster, nodes: &[String], name_prefix: &str) {
    let tries = Tries::new(Duration::from_secs(5));
    let named = format!(" name={name_prefix}");
    loop {
        let mut seen = Vec::new();
        for node in nodes {
            for line in unshared_on(cluster, node).await {
                let alice = line.contains(" user=alice ") && !line.contains(" name=direct ");
                if line.contains(&named) || alice {
                    seen.push(format!("{node}: {line}"));
                }
            }
        }
        if seen.is_empty() {
            return;
        }
        tries
            .again("no connection of a client's own", format!("{seen:?}"))
            .await;
    }
}

/// 20 clients each `AUTH` as alice, then write and read a key on every primary: each
/// reply is the one a direct connection as alice gets, and each primary lists exactly two
/// shared connections as alice (`shared_connections = 2`) and no connection of a client's
/// own; the clients' `ACL WHOAMI` says alice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_clients_share_their_users_connections_on_every_node() {
    let (cluster, proxy) = cluster_with_alice().await;
    let nodes = primaries(&cluster).await;
    let mut direct = HashMap::new();
    for node in &nodes {
        let mut c = cluster.conn(node).await;
        assert_eq!(c.call(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
        assert_eq!(c.call(&["CLIENT", "SETNAME", "direct"]).await, "+OK\r\n");
        direct.insert(node.clone(), c);
    }
    let mut clients = Vec::new();
    for c in 0..20 {
        let mut conn = Conn::open(proxy.addr).await;
        assert_eq!(
            conn.call(&["CLIENT", "SETNAME", &format!("alice-client-{c}")])
                .await,
            "+OK\r\n"
        );
        assert_eq!(conn.call(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
        assert_eq!(conn.call(&["ACL", "WHOAMI"]).await, "$5\r\nalice\r\n");
        clients.push(conn);
    }
    for (c, conn) in clients.iter_mut().enumerate() {
        for (node, key) in keys_on_each(&cluster, &format!("a:{c}:")).await {
            let value = format!("value {c}");
            let script: &[&[&str]] = &[&["SET", &key, &value], &["GET", &key], &["DEL", &key]];
            let want = pipelined(direct.get_mut(&node).unwrap(), script).await;
            assert_eq!(
                want,
                format!("+OK\r\n${}\r\n{value}\r\n:1\r\n", value.len())
            );
            assert_eq!(pipelined(conn, script).await, want, "client {c} on {node}");
        }
    }
    for node in &nodes {
        let alice = shared_as(&cluster, node, "alice").await;
        assert_eq!(alice.len(), 2, "{node}: {alice:?}");
        for line in shared_on(&cluster, node).await {
            assert!(
                line.contains(" user=alice ") || line.contains(" user=default "),
                "{line}"
            );
        }
    }
    no_client_owned(&cluster, &nodes, "alice-client-").await;
    drop(clients);
    proxy.shutdown().await;
}

/// The script of a client that gives a wrong password (as its first command, then once
/// authenticated as alice, then in `HELLO 3 AUTH`), each followed by commands that show
/// whom it runs as and in which protocol: `ACL WHOAMI`, a write of a key alice may not
/// touch, a `GET` of a missing key (`$-1` in RESP2).
fn wrong_password_script<'a>(
    a_key: &'a str,
    b_key: &'a str,
    missing: &'a str,
) -> Vec<Vec<&'a str>> {
    vec![
        vec!["CLIENT", "SETNAME", "wrongpass-client"],
        vec!["AUTH", "alice", "wrong"],
        vec!["ACL", "WHOAMI"],
        vec!["SET", b_key, "by-default"],
        vec!["AUTH", "wrong"],
        vec!["ACL", "WHOAMI"],
        vec!["AUTH", "alice", "apw"],
        vec!["ACL", "WHOAMI"],
        vec!["AUTH", "alice", "wrong"],
        vec!["ACL", "WHOAMI"],
        vec!["SET", b_key, "by-alice"],
        vec!["SET", a_key, "by-alice"],
        vec!["HELLO", "3", "AUTH", "alice", "wrong"],
        vec!["GET", missing],
        vec!["ACL", "WHOAMI"],
        vec!["AUTH", "a", "b", "c"],
        vec!["HELLO", "4", "AUTH", "alice", "apw"],
        vec!["ACL", "WHOAMI"],
    ]
}

/// A wrong password gets exactly the bytes Redis sends a direct client (`-WRONGPASS …`),
/// and the client stays as it was: `default` before it authenticated, alice after (its
/// `ACL WHOAMI`, the keys it may write, RESP2 after a refused `HELLO 3 AUTH`), pipelined
/// or one command at a time; afterwards no node lists a connection of the client's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_gets_redis_s_error_and_leaves_the_client_as_it_was() {
    let (cluster, proxy) = cluster_with_alice().await;
    let nodes = primaries(&cluster).await;
    let node = nodes[0].clone();
    let a_key = keys_on_each(&cluster, "a:wrong:").await[&node].clone();
    let b_key = keys_on_each(&cluster, "b:wrong:").await[&node].clone();
    let missing = keys_on_each(&cluster, "a:missing:").await[&node].clone();
    let script = wrong_password_script(&a_key, &b_key, &missing);
    let script: Vec<&[&str]> = script.iter().map(Vec::as_slice).collect();

    let mut direct = cluster.conn(&node).await;
    let want = pipelined(&mut direct, &script).await;
    assert!(
        want.contains("-WRONGPASS invalid username-password pair or user is disabled.\r\n"),
        "{want}"
    );
    assert!(want.contains("$5\r\nalice\r\n"), "{want}");
    assert!(want.contains("-NOPERM"), "{want}");
    assert!(want.contains("$-1\r\n"), "{want}");
    // Not to be taken for the client's own connection.
    assert_eq!(
        direct.call(&["CLIENT", "SETNAME", "direct"]).await,
        "+OK\r\n"
    );
    let mut admin = cluster.conn(&node).await;
    for key in [&a_key, &b_key] {
        assert_eq!(admin.call(&["DEL", key]).await, ":1\r\n");
    }

    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(pipelined(&mut c, &script).await, want, "one pipeline");
    for key in [&a_key, &b_key] {
        assert_eq!(admin.call(&["DEL", key]).await, ":1\r\n");
    }
    let mut c2 = Conn::open(proxy.addr).await;
    let mut replies = String::new();
    for command in &script {
        replies.push_str(&c2.call(command).await);
    }
    assert_eq!(replies, want, "one at a time");
    no_client_owned(&cluster, &nodes, "wrongpass-client").await;
    proxy.shutdown().await;
}

/// Permissions follow the user the client authenticated as, on shared connections and on
/// a connection of its own: on every primary, alice's client gets the direct connection's
/// replies, `-NOPERM` included, for a key she may not write, for `CONFIG GET`, and inside a
/// `MULTI` (which the node that runs it shows as alice's own connection, `user=alice`,
/// gone once `EXEC` answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_follow_the_authenticated_user() {
    let (cluster, proxy) = cluster_with_alice().await;
    let a_keys = keys_on_each(&cluster, "a:perm:").await;
    let b_keys = keys_on_each(&cluster, "b:perm:").await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(
        c.call(&["CLIENT", "SETNAME", "perm-client"]).await,
        "+OK\r\n"
    );
    assert_eq!(c.call(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    for node in primaries(&cluster).await {
        let (a, b) = (&a_keys[&node], &b_keys[&node]);
        let script: &[&[&str]] = &[
            &["SET", a, "mine"],
            &["SET", b, "not mine"],
            &["GET", b],
            &["CONFIG", "GET", "maxmemory"],
            &["GET", a],
            &["ACL", "WHOAMI"],
        ];
        let mut direct = cluster.conn(&node).await;
        assert_eq!(direct.call(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
        assert_eq!(
            direct.call(&["CLIENT", "SETNAME", "direct"]).await,
            "+OK\r\n"
        );
        let want = pipelined(&mut direct, script).await;
        assert_eq!(want.matches("-NOPERM").count(), 3, "{want}");
        assert_eq!(pipelined(&mut c, script).await, want, "{node}");

        let transaction: &[&[&str]] = &[&["MULTI"], &["SET", a, "in multi"], &["SET", b, "x"]];
        let want = pipelined(&mut direct, transaction).await;
        assert!(want.ends_with("-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"), "{want}");
        assert_eq!(pipelined(&mut c, transaction).await, want, "{node}");
        let own = wait_for_own(&cluster, &node, "perm-client", " cmd=set ").await;
        assert!(own.contains(" user=alice "), "{own}");
        let exec = direct.call(&["EXEC"]).await;
        assert!(exec.starts_with("-EXECABORT"), "{exec}");
        assert_eq!(c.call(&["EXEC"]).await, exec, "{node}");
        no_client_owned(&cluster, std::slice::from_ref(&node), "perm-client").await;
    }
    proxy.shutdown().await;
}

/// `HELLO 3 AUTH alice apw` moves the client to alice's RESP3 shared connections: on every
/// primary its replies are the direct connection's in RESP3 (`HELLO`'s map but for its
/// connection `id`, `_` for a missing key, `-NOPERM` for another's key and `CONFIG`), and
/// the nodes it used list two shared connections as alice in RESP3 and none of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_auth_moves_the_client_to_its_users_resp3_connections() {
    let (cluster, proxy) = cluster_with_alice().await;
    let nodes = primaries(&cluster).await;
    let a_keys = keys_on_each(&cluster, "a:three:").await;
    let b_keys = keys_on_each(&cluster, "b:three:").await;
    let missing = keys_on_each(&cluster, "a:missing:").await;
    let hello: &[&str] = &["HELLO", "3", "AUTH", "alice", "apw"];
    let mut direct = HashMap::new();
    let mut want_hello = Vec::new();
    for node in &nodes {
        let mut c = cluster.conn(node).await;
        want_hello.push(mask(&c.call(hello).await));
        assert_eq!(c.call(&["CLIENT", "SETNAME", "direct"]).await, "+OK\r\n");
        direct.insert(node.clone(), c);
    }
    assert!(want_hello[0].starts_with('%'), "{}", want_hello[0]);
    assert!(
        want_hello.iter().all(|h| *h == want_hello[0]),
        "{want_hello:?}"
    );
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = Conn::open(proxy.addr).await;
        assert_eq!(
            c.call(&["CLIENT", "SETNAME", &format!("resp3-client-{i}")])
                .await,
            "+OK\r\n"
        );
        assert_eq!(mask(&c.call(hello).await), want_hello[0], "client {i}");
        clients.push(c);
    }
    for node in &nodes {
        let (a, b) = (&a_keys[node], &b_keys[node]);
        let script: &[&[&str]] = &[
            &["SET", a, "three"],
            &["GET", a],
            &["GET", &missing[node]],
            &["SET", b, "not mine"],
            &["CONFIG", "GET", "maxmemory"],
            &["ACL", "WHOAMI"],
        ];
        let want = pipelined(direct.get_mut(node).unwrap(), script).await;
        assert!(want.contains("_\r\n"), "{want}");
        assert_eq!(want.matches("-NOPERM").count(), 2, "{want}");
        for c in &mut clients {
            assert_eq!(pipelined(c, script).await, want, "{node}");
        }
    }
    for node in &nodes {
        let alice = shared_as(&cluster, node, "alice").await;
        assert_eq!(alice.len(), 2, "{node}: {alice:?}");
        assert!(alice.iter().all(|l| l.contains(" resp=3")), "{alice:?}");
    }
    no_client_owned(&cluster, &nodes, "resp3-client-").await;
    proxy.shutdown().await;
}

/// `AUTH alice apw` inside a transaction (after a key that puts the transaction on one
/// primary, as Redis Cluster's clients must): once `EXEC` ran it, the client is alice on every
/// node, as a direct connection is after such an `EXEC`: its commands on every primary
/// get a direct alice connection's replies (`-NOPERM` for another's key and `CONFIG`, its
/// own key written), and `ACL WHOAMI` says alice. A transaction whose `AUTH` failed
/// (a wrong password) leaves it as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_inside_a_transaction_makes_the_client_that_user_everywhere() {
    let (cluster, proxy) = cluster_with_alice().await;
    let a_keys = keys_on_each(&cluster, "a:tx:").await;
    let b_keys = keys_on_each(&cluster, "b:tx:").await;
    let nodes = primaries(&cluster).await;
    let first = &a_keys[&nodes[0]];
    let mut c = Conn::open(proxy.addr).await;
    let mut direct = cluster.conn(&nodes[0]).await;
    let wrong: &[&[&str]] = &[
        &["MULTI"],
        &["SET", first, "default"],
        &["AUTH", "alice", "nope"],
        &["EXEC"],
        &["ACL", "WHOAMI"],
    ];
    let want = pipelined(&mut direct, wrong).await;
    assert!(want.ends_with("$7\r\ndefault\r\n"), "{want}");
    assert_eq!(pipelined(&mut c, wrong).await, want);
    let right: &[&[&str]] = &[
        &["MULTI"],
        &["SET", first, "alice"],
        &["AUTH", "alice", "apw"],
        &["EXEC"],
    ];
    let want = pipelined(&mut direct, right).await;
    assert_eq!(want, "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n+OK\r\n");
    assert_eq!(pipelined(&mut c, right).await, want);
    for node in &nodes {
        let (a, b) = (&a_keys[node], &b_keys[node]);
        let script: &[&[&str]] = &[
            &["SET", a, "mine"],
            &["SET", b, "not mine"],
            &["CONFIG", "GET", "maxmemory"],
            &["GET", a],
            &["ACL", "WHOAMI"],
        ];
        let mut direct = cluster.conn(node).await;
        assert_eq!(direct.call(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
        let want = pipelined(&mut direct, script).await;
        assert_eq!(want.matches("-NOPERM").count(), 2, "{want}");
        assert_eq!(pipelined(&mut c, script).await, want, "{node}");
    }
    proxy.shutdown().await;
}

/// Per client too, a node whose ACL disagrees with the others on alice's password never
/// runs alice's commands as the user the client had before: a node connection opened after
/// her `AUTH` is given it checked, so a write there gets that node's refusal and changes
/// nothing; and when a connection to that node was open at the `AUTH`, the client's
/// upstream ends after it (its `AUTH` accepted elsewhere), as when Redis goes away: the
/// write sent next gets the connection-lost error, never reaching any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_disagreeing_on_a_password_never_run_a_clients_commands_as_another_user() {
    let cluster = Cluster::start().await;
    add_alice(&cluster).await;
    let primaries = primaries(&cluster).await;
    let (agreeing, disagreeing) = (&primaries[0], &primaries[1]);
    let mut admin = cluster.conn(disagreeing).await;
    let changed = admin
        .call(&["ACL", "SETUSER", "alice", "resetpass", ">other"])
        .await;
    assert_eq!(changed, "+OK\r\n");
    let refusal = cluster
        .conn(disagreeing)
        .await
        .call(&["AUTH", "alice", "apw"])
        .await;
    assert!(refusal.starts_with("-WRONGPASS"), "{refusal}");
    let keys = keys_on_each(&cluster, "a:").await;
    let proxy = proxy_for_cluster(&cluster, "").await;

    // Opened after the AUTH: the node refuses alice, each command there gets the refusal.
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["GET", &keys[agreeing]]).await, "$-1\r\n");
    assert_eq!(c.call(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    assert_eq!(c.call(&["SET", &keys[disagreeing], "v"]).await, refusal);
    assert_eq!(c.call(&["SET", &keys[agreeing], "v"]).await, "+OK\r\n");

    // Open before the AUTH: the client's connection ends once the refusal is known.
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["GET", &keys[disagreeing]]).await, "$-1\r\n");
    assert_eq!(c.call(&["GET", &keys[agreeing]]).await, "$1\r\nv\r\n");
    // One write: a command still in the socket when the client's upstream ends is never
    // read, and the client sees the connection close, as from a Redis going away.
    let auth_then_write = [
        encode(&["AUTH", "alice", "apw"]),
        encode(&["SET", &keys[disagreeing], "v"]),
    ]
    .concat();
    c.send(&auth_then_write).await;
    assert_eq!(c.read_reply_or_close().await, "+OK\r\n");
    let lost = c.read_reply_or_close().await;
    assert!(
        lost.starts_with("-ERR respguard: upstream") && lost.contains("connection lost"),
        "the write answered as when Redis goes away: {lost:?}"
    );

    let mut direct = cluster.conn(disagreeing).await;
    assert_eq!(direct.call(&["EXISTS", &keys[disagreeing]]).await, ":0\r\n");
    proxy.shutdown().await;
}
