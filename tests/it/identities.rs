//! Identity pools under multiplexing: a client's database (SELECT) picks which shared
//! connections it uses instead of giving it a connection of its own. Shared connections
//! are grouped by identity (database, protocol); the URL's has them from the start, another
//! gets `shared_connections` of its own when a client first needs it, up to
//! `upstream.shared_identities`, past which a client keeps a connection of its own.
//!
//! Every reply is compared byte for byte with what a direct connection gets; Redis's
//! `CLIENT LIST` (its `db=` field) shows which connections exist and in which database, and
//! keys written through the proxy are looked up directly in the database they belong to.

use std::time::Duration;

use respguard::app::ProxyHandle;
use respguard::config::{HumanDuration, RawConfig};

use crate::harness::*;
use crate::multiplexed::{ClientLine, Watcher, SHARED_NAME};

/// A multiplexed proxy in front of `server`, with `adjust` applied to its configuration.
pub(crate) async fn mux_proxy(
    server: &RedisServer,
    adjust: impl FnOnce(&mut RawConfig),
) -> ProxyHandle {
    let mut raw = mux_config(&server.url());
    adjust(&mut raw);
    start_proxy(raw).await
}

/// Send `script` as one pipeline and read its replies.
pub(crate) async fn pipelined(conn: &mut Conn, script: &[&[&str]]) -> String {
    pipelined_with_pushes(conn, script, 0).await
}

/// Send `script` as one pipeline and read its replies and the `pushes` RESP3 pushes
/// among them.
async fn pipelined_with_pushes(conn: &mut Conn, script: &[&[&str]], pushes: usize) -> String {
    let bytes: Vec<u8> = script.iter().flat_map(|c| encode(c)).collect();
    conn.send(&bytes).await;
    conn.replies(script.len() + pushes).await
}

/// Redis's connections now, the proxy's shared ones and those serving one client each.
async fn connections(watcher: &mut Watcher) -> (Vec<ClientLine>, Vec<ClientLine>) {
    watcher.serving().await
}

/// Wait until Redis shows no connection serving one client (the clients are on shared
/// ones), and return the shared ones.
pub(crate) async fn only_shared(watcher: &mut Watcher, what: &str) -> Vec<ClientLine> {
    eventually!(WAIT, what, {
        let (shared, dedicated) = connections(watcher).await;
        if dedicated.is_empty() {
            Ok(shared)
        } else {
            Err(format!("dedicated {dedicated:?}"))
        }
    })
}

/// The value of `key` in database `db`, read directly (and the connection left in db 0).
async fn get_in(direct: &mut Conn, db: u32, key: &str) -> String {
    assert_eq!(direct.call(&["SELECT", &db.to_string()]).await, "+OK\r\n");
    let value = direct.call(&["GET", key]).await;
    assert_eq!(direct.call(&["SELECT", "0"]).await, "+OK\r\n");
    value
}

/// The SELECTs a client may send, pipelined with reads and writes between them: a database
/// other than the URL's, one past Redis's `databases` (16), spellings Redis refuses (`09`,
/// `-1`, `abc`, past an `int`), the URL's database again, the same one twice. Through the
/// proxy the client gets, byte for byte, what a direct connection gets; Redis shows no
/// connection of the client's own, but shared ones in databases 0 and 5; and the keys
/// landed in the databases selected.
#[tokio::test]
async fn select_moves_a_client_to_the_shared_connections_of_its_database() {
    let script: &[&[&str]] = &[
        &["SET", "k", "zero"],
        &["SELECT", "5"],
        &["SET", "k", "five"],
        &["GET", "k"],
        &["SELECT", "16"],
        &["GET", "k"],
        &["SELECT", "09"],
        &["SELECT", "-1"],
        &["SELECT", "abc"],
        &["SELECT", "2147483648"],
        &["SELECT", "5"],
        &["INCR", "n"],
        &["SELECT", "0"],
        &["GET", "k"],
        &["INCR", "n"],
        &["SELECT", "5"],
        &["GET", "k"],
        &["DBSIZE"],
    ];
    let reference = RedisServer::start();
    let mut direct = Conn::open(reference.addr()).await;
    let want = pipelined(&mut direct, script).await;
    assert!(want.contains("-ERR DB index is out of range"), "{want}");

    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut watcher = Watcher::open(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(pipelined(&mut c, script).await, want, "one pipeline");
    // And one command at a time, each waiting for its reply, from a clean slate.
    let mut direct = watcher.direct(&server).await;
    assert_eq!(direct.call(&["FLUSHALL"]).await, "+OK\r\n");
    let mut c2 = Conn::open(proxy.addr).await;
    let mut replies = String::new();
    for command in script {
        replies.push_str(&c2.call(command).await);
    }
    assert_eq!(replies, want, "one at a time");

    let shared = only_shared(&mut watcher, "both clients on shared connections").await;
    let dbs: std::collections::BTreeSet<u32> = shared.iter().map(|c| c.db).collect();
    assert_eq!(
        dbs,
        [0, 5].into(),
        "shared connections in db 0 and 5: {shared:?}"
    );
    assert!(shared.len() <= 4, "{shared:?}");
    assert_eq!(get_in(&mut direct, 5, "k").await, "$4\r\nfive\r\n");
    assert_eq!(get_in(&mut direct, 0, "k").await, "$4\r\nzero\r\n");
    assert_eq!(get_in(&mut direct, 5, "n").await, "$1\r\n1\r\n");
    assert_eq!(get_in(&mut direct, 0, "n").await, "$1\r\n1\r\n");
    proxy.shutdown().await;
}

/// With the URL naming database 9, `SELECT 9` changes nothing (`+OK`, as Redis answers) and
/// `SELECT 3` moves the client to shared connections in database 3; both clients' keys land
/// in their databases and Redis shows no connection of a client's own.
#[tokio::test]
async fn select_starts_from_the_urls_database() {
    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |raw| {
        raw.upstream.url = format!("{}/9", server.url())
    })
    .await;
    let mut watcher = Watcher::open(&server).await;
    let mut direct = watcher.direct(&server).await;
    assert_eq!(direct.call(&["SELECT", "9"]).await, "+OK\r\n");
    let script: &[&[&str]] = &[
        &["SELECT", "9"],
        &["SET", "db:k", "nine"],
        &["SELECT", "3"],
        &["SET", "db:k", "three"],
        &["GET", "db:k"],
        &["SELECT", "9"],
        &["GET", "db:k"],
        &["SELECT", "3"],
    ];
    let want = pipelined(&mut direct, script).await;
    assert_eq!(direct.call(&["FLUSHALL"]).await, "+OK\r\n");
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(pipelined(&mut c, script).await, want);
    let shared = only_shared(&mut watcher, "on shared connections").await;
    assert!(shared.iter().any(|c| c.db == 3), "{shared:?}");
    assert!(shared.iter().all(|c| c.db == 3 || c.db == 9), "{shared:?}");
    assert_eq!(get_in(&mut direct, 3, "db:k").await, "$5\r\nthree\r\n");
    assert_eq!(get_in(&mut direct, 9, "db:k").await, "$4\r\nnine\r\n");
    proxy.shutdown().await;
}

/// Sixteen clients, four in each of databases 0 to 3, send interleaved pipelines at once
/// (a write of their own key, reads of it and of their database's marker, twenty rounds):
/// each sees only its database's marker and its own values, the keys are found directly in
/// the right database and in no other, and no client has a connection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_different_databases_never_see_each_others_keys() {
    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut watcher = Watcher::open(&server).await;
    let mut direct = watcher.direct(&server).await;
    for db in 0..4u32 {
        assert_eq!(direct.call(&["SELECT", &db.to_string()]).await, "+OK\r\n");
        let marker = format!("db{db}");
        assert_eq!(direct.call(&["SET", "marker", &marker]).await, "+OK\r\n");
    }
    assert_eq!(direct.call(&["SELECT", "0"]).await, "+OK\r\n");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u32 {
        let addr = proxy.addr;
        tasks.spawn(async move {
            let db = i % 4;
            let mut c = Conn::open(addr).await;
            assert_eq!(c.call(&["SELECT", &db.to_string()]).await, "+OK\r\n");
            let marker = format!("db{db}");
            for round in 0..20 {
                let (key, value) = (format!("c:{i}"), format!("{i}-{round}"));
                let script: &[&[&str]] = &[
                    &["SET", &key, &value],
                    &["GET", "marker"],
                    &["GET", &key],
                    &["EXISTS", "c:0", "c:1", "c:2", "c:3"],
                ];
                // Each database holds the keys of its four clients only (those of
                // clients i % 4 == db): of c:0..c:3, exactly the one of this database,
                // once its client wrote it.
                let got = pipelined(&mut c, script).await;
                let want_head = format!(
                    "+OK\r\n${}\r\n{marker}\r\n${}\r\n{value}\r\n",
                    marker.len(),
                    value.len()
                );
                assert!(got.starts_with(&want_head), "client {i}: {got}");
                assert!(
                    got.ends_with(":0\r\n") || got.ends_with(":1\r\n"),
                    "client {i}: {got}"
                );
            }
            c
        });
    }
    let clients = tasks.join_all().await;
    only_shared(&mut watcher, "sixteen clients on shared connections").await;
    for i in 0..16u32 {
        for db in 0..4u32 {
            let got = get_in(&mut direct, db, &format!("c:{i}")).await;
            let want = if db == i % 4 {
                format!("${}\r\n{i}-19\r\n", format!("{i}-19").len())
            } else {
                "$-1\r\n".to_owned()
            };
            assert_eq!(got, want, "client {i} in db {db}");
        }
    }
    drop(clients);
    proxy.shutdown().await;
}

/// With `shared_identities = 2` (the URL's database and one more), a client selecting a
/// database past the bound gets Redis's `+OK` from a connection of its own, kept for good
/// (today's behaviour), while a client of the one other database shares; each one's keys
/// land in its database.
#[tokio::test]
async fn past_shared_identities_a_client_keeps_a_connection_of_its_own() {
    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |raw| {
        raw.upstream.shared_identities = 2;
        raw.upstream.pinned_idle = 0;
    })
    .await;
    let mut watcher = Watcher::open(&server).await;
    let mut direct = watcher.direct(&server).await;
    let mut one = Conn::open(proxy.addr).await;
    let mut two = Conn::open(proxy.addr).await;
    assert_eq!(one.call(&["SELECT", "1"]).await, "+OK\r\n");
    assert_eq!(one.call(&["SET", "k", "one"]).await, "+OK\r\n");
    only_shared(&mut watcher, "the first other database shares").await;
    assert_eq!(two.call(&["SELECT", "2"]).await, "+OK\r\n");
    assert_eq!(two.call(&["SET", "k", "two"]).await, "+OK\r\n");
    assert_eq!(two.call(&["GET", "k"]).await, "$3\r\ntwo\r\n");
    assert_eq!(one.call(&["GET", "k"]).await, "$3\r\none\r\n");
    let own = eventually!(WAIT, "a connection of its own in db 2", {
        let (_, dedicated) = connections(&mut watcher).await;
        if dedicated.len() == 1 && dedicated[0].db == 2 {
            Ok(dedicated)
        } else {
            Err(format!("{dedicated:?}"))
        }
    });
    // Kept for good: still there after more commands.
    assert_eq!(two.call(&["PING"]).await, "+PONG\r\n");
    let (_, dedicated) = connections(&mut watcher).await;
    assert_eq!(
        dedicated.iter().map(|c| c.id).collect::<Vec<_>>(),
        [own[0].id]
    );
    assert_eq!(get_in(&mut direct, 1, "k").await, "$3\r\none\r\n");
    assert_eq!(get_in(&mut direct, 2, "k").await, "$3\r\ntwo\r\n");
    proxy.shutdown().await;
}

/// A client in database 6 whose shared connections are killed: its next commands get
/// replies (the lane reconnects), the new shared connection is in database 6 again, and the
/// key written after the loss is found in database 6.
#[tokio::test]
async fn a_lost_shared_connection_of_another_database_reopens_in_it() {
    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |raw| {
        raw.upstream.backoff_min = HumanDuration(Duration::from_millis(10));
        raw.upstream.backoff_max = HumanDuration(Duration::from_millis(50));
    })
    .await;
    let mut watcher = Watcher::open(&server).await;
    let mut direct = watcher.direct(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SELECT", "6"]).await, "+OK\r\n");
    assert_eq!(c.call(&["SET", "before", "1"]).await, "+OK\r\n");
    let shared = only_shared(&mut watcher, "on shared connections").await;
    let in_six: Vec<u64> = shared.iter().filter(|c| c.db == 6).map(|c| c.id).collect();
    assert!(!in_six.is_empty(), "{shared:?}");
    for id in &in_six {
        watcher.kill(*id).await;
    }
    eventually!(WAIT, "the write after the loss", {
        let reply = c.call(&["SET", "after", "1"]).await;
        if reply == "+OK\r\n" {
            Ok(())
        } else {
            Err(reply)
        }
    });
    assert_eq!(c.call(&["GET", "before"]).await, "$1\r\n1\r\n");
    let shared = only_shared(&mut watcher, "on shared connections again").await;
    let reopened: Vec<&ClientLine> = shared
        .iter()
        .filter(|l| l.db == 6 && l.name == SHARED_NAME)
        .collect();
    assert!(!reopened.is_empty(), "{shared:?}");
    assert!(
        reopened.iter().all(|l| !in_six.contains(&l.id)),
        "{shared:?}"
    );
    assert_eq!(get_in(&mut direct, 6, "after").await, "$1\r\n1\r\n");
    assert_eq!(get_in(&mut direct, 0, "after").await, "$-1\r\n");
    proxy.shutdown().await;
}

/// A client in database 5 that opens a transaction gets a connection of its own in
/// database 5 (its writes land there), and after EXEC none (that connection, not in the
/// URL's database, is closed rather than kept for another client). SELECT inside MULTI is
/// queued and takes effect at EXEC, as Redis does, and keeps the client on a connection of
/// its own for good. Every reply as a direct connection gets it.
#[tokio::test]
async fn transactions_keep_the_clients_database_and_select_inside_them_pins() {
    let script: &[&[&str]] = &[
        &["SELECT", "5"],
        &["MULTI"],
        &["SET", "m", "1"],
        &["EXEC"],
        &["GET", "m"],
    ];
    let inside: &[&[&str]] = &[
        &["MULTI"],
        &["SELECT", "7"],
        &["SET", "x", "1"],
        &["EXEC"],
        &["SET", "y", "1"],
        &["GET", "m"],
    ];
    let reference = RedisServer::start();
    let mut direct = Conn::open(reference.addr()).await;
    let want = pipelined(&mut direct, script).await;
    let want_inside = pipelined(&mut direct, inside).await;

    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut watcher = Watcher::open(&server).await;
    let mut direct = watcher.direct(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(pipelined(&mut c, script).await, want);
    only_shared(&mut watcher, "back on shared connections after EXEC").await;
    assert_eq!(get_in(&mut direct, 5, "m").await, "$1\r\n1\r\n");
    assert_eq!(get_in(&mut direct, 0, "m").await, "$-1\r\n");
    // The connection used for the transaction was not kept for another client.
    let idle = watcher.serving().await.1;
    assert!(idle.is_empty(), "{idle:?}");

    assert_eq!(pipelined(&mut c, inside).await, want_inside);
    eventually!(WAIT, "a connection of its own in db 7", {
        let (_, dedicated) = connections(&mut watcher).await;
        if dedicated.len() == 1 && dedicated[0].db == 7 {
            Ok(())
        } else {
            Err(format!("{dedicated:?}"))
        }
    });
    assert_eq!(get_in(&mut direct, 7, "x").await, "$1\r\n1\r\n");
    assert_eq!(get_in(&mut direct, 7, "y").await, "$1\r\n1\r\n");
    proxy.shutdown().await;
}

/// `HELLO 3` (and back with `HELLO 2`) moves a client to the shared connections of its
/// protocol: pipelined with RESP3 replies of every shape Redis 7 sends (null, map, set,
/// double, boolean through DEBUG PROTOCOL, an attribute, a verbatim string, a push sent
/// before its reply), HELLO with no version, with a version Redis refuses (`4`, `03`), and
/// SELECT on the RESP3 side, the client gets byte for byte what a direct connection gets
/// (HELLO's `id` field aside: it is the shared connection's); a RESP2 client beside it
/// keeps RESP2 replies; Redis shows no connection of the client's own, and shared ones in
/// RESP3.
#[tokio::test]
async fn hello_moves_a_client_to_the_shared_connections_of_its_protocol() {
    let script: &[&[&str]] = &[
        &["HELLO", "3"],
        &["GET", "nothing"],
        &["HSET", "h", "f", "v"],
        &["HGETALL", "h"],
        &["SADD", "s", "a"],
        &["SMEMBERS", "s"],
        &["ZADD", "z", "1.5", "m"],
        &["ZSCORE", "z", "m"],
        &["DEBUG", "PROTOCOL", "true"],
        &["DEBUG", "PROTOCOL", "attrib"],
        &["DEBUG", "PROTOCOL", "verbatim"],
        &["DEBUG", "PROTOCOL", "bignum"],
        &["DEBUG", "PROTOCOL", "push"],
        &["HELLO"],
        &["HELLO", "4"],
        &["HELLO", "03"],
        &["HELLO", "3"],
        &["SELECT", "2"],
        &["HGETALL", "h"],
        &["SET", "k", "v"],
        &["HELLO", "2"],
        &["GET", "nothing"],
        &["GET", "k"],
        &["HGETALL", "h"],
        &["SELECT", "0"],
        &["HGETALL", "h"],
    ];
    let debug = ["--enable-debug-command", "yes"];
    let reference = RedisServer::start_with(&debug);
    let mut direct = Conn::open(reference.addr()).await;
    let want = mask(&pipelined_with_pushes(&mut direct, script, 1).await);
    assert!(want.contains("|1\r\n"), "an attribute: {want}");
    assert!(want.contains(">2\r\n"), "a push: {want}");

    let server = RedisServer::start_with(&debug);
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut watcher = Watcher::open(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    let mut resp2 = Conn::open(proxy.addr).await;
    let got = pipelined_with_pushes(&mut c, script, 1).await;
    assert_eq!(mask(&got), want, "one pipeline");
    assert_eq!(
        resp2.call(&["HGETALL", "h"]).await,
        "*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    assert_eq!(resp2.call(&["GET", "nothing"]).await, "$-1\r\n");

    let mut direct = watcher.direct(&server).await;
    assert_eq!(direct.call(&["FLUSHALL"]).await, "+OK\r\n");
    let mut c2 = Conn::open(proxy.addr).await;
    let mut replies = String::new();
    for command in script {
        replies.push_str(&c2.call(command).await);
        if command == &["DEBUG", "PROTOCOL", "push"] {
            // The push, then the reply.
            replies.push_str(&String::from_utf8_lossy(&c2.reply().await));
        }
    }
    assert_eq!(mask(&replies), want, "one at a time");
    let shared = only_shared(&mut watcher, "the clients on shared connections").await;
    assert!(shared.len() <= 2 * 4, "{shared:?}");
    let list = watcher.conn.call(&["CLIENT", "LIST"]).await;
    let resp3_shared = list
        .lines()
        .filter(|l| l.contains(SHARED_NAME) && l.contains(" resp=3"))
        .count();
    assert!(resp3_shared >= 1, "{list}");
    assert_eq!(get_in(&mut direct, 2, "k").await, "$1\r\nv\r\n");
    proxy.shutdown().await;
}

/// A RESP3 client in database 4 that opens a transaction gets a connection of its own in
/// RESP3 and database 4 (hidden `SELECT 4` and `HELLO 3` first), its replies as a direct
/// connection's; after EXEC it has none, and its writes are in database 4.
#[tokio::test]
async fn a_connection_of_its_own_gets_the_clients_protocol_and_database() {
    let script: &[&[&str]] = &[
        &["HELLO", "3"],
        &["SELECT", "4"],
        &["MULTI"],
        &["HSET", "h", "f", "v"],
        &["HGETALL", "h"],
        &["GET", "nothing"],
        &["EXEC"],
        &["HGETALL", "h"],
    ];
    let reference = RedisServer::start();
    let mut direct = Conn::open(reference.addr()).await;
    let want = mask(&pipelined(&mut direct, script).await);
    let server = RedisServer::start();
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut watcher = Watcher::open(&server).await;
    let mut direct = watcher.direct(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(mask(&pipelined(&mut c, script).await), want);
    only_shared(&mut watcher, "back on shared connections").await;
    assert_eq!(get_in(&mut direct, 4, "nothing").await, "$-1\r\n");
    assert_eq!(direct.call(&["SELECT", "4"]).await, "+OK\r\n");
    assert_eq!(direct.call(&["HGET", "h", "f"]).await, "$1\r\nv\r\n");
    proxy.shutdown().await;
}
