//! ACL users under multiplexing: a client's `AUTH` (or `HELLO v AUTH ...`) moves it to the
//! shared connections of the user it names, opened with its credentials, instead of giving
//! it a connection of its own for life. Redis itself checks every password (on the new
//! user's connection, or again on the one the client shares), so a wrong one gets Redis's
//! own error and moves nothing.
//!
//! Every reply is compared byte for byte with a direct connection's to a Redis with the same
//! users; Redis's `CLIENT LIST` (`user=`) shows which connections exist and as whom.

use std::collections::BTreeSet;

use crate::harness::*;
use crate::identities::{mux_proxy, only_shared, pipelined};
use crate::multiplexed::{ClientLine, Watcher};

/// Give `server` two users besides `default`: alice, who may touch `a:*` keys, and bob,
/// `b:*` keys.
async fn add_users(server: &RedisServer) {
    let mut c = Conn::open(server.addr()).await;
    for user in [
        &["ACL", "SETUSER", "alice", "on", ">apw", "~a:*", "+@all"][..],
        &["ACL", "SETUSER", "bob", "on", ">bpw", "~b:*", "+@all"],
    ] {
        assert_eq!(c.call(user).await, "+OK\r\n");
    }
}

/// The users of the shared connections Redis shows, once no client has one of its own.
async fn shared_users(watcher: &mut Watcher, what: &str) -> BTreeSet<String> {
    let shared: Vec<ClientLine> = only_shared(watcher, what).await;
    shared.into_iter().map(|c| c.user).collect()
}

/// Wait until the connections Redis shows serving one client each are those of `users`.
async fn own_connections_of(watcher: &mut Watcher, users: &[&str]) {
    eventually!(WAIT, format!("connections of their own for {users:?}"), {
        let (_, own) = watcher.serving().await;
        let seen: Vec<&str> = own.iter().map(|c| c.user.as_str()).collect();
        if seen == users {
            Ok(())
        } else {
            Err(format!("{own:?}"))
        }
    });
}

/// The users a client moves between, pipelined with commands each may or may not run:
/// a wrong password, the right ones, `HELLO 3 AUTH`, argument counts Redis refuses, and
/// `AUTH` with the user already in use. Through the proxy the client gets, byte for byte,
/// what a direct connection gets, whether pipelined or one command at a time; Redis then
/// shows no connection of a client's own, and shared ones as default, alice and bob.
#[tokio::test]
async fn auth_moves_a_client_to_the_shared_connections_of_its_user() {
    let script: &[&[&str]] = &[
        &["AUTH", "alice", "wrong"],
        &["ACL", "WHOAMI"],
        &["SET", "a:1", "by-default"],
        &["AUTH", "alice", "apw"],
        &["ACL", "WHOAMI"],
        &["SET", "a:1", "by-alice"],
        &["SET", "b:1", "by-alice"],
        &["AUTH", "alice", "apw"],
        &["GET", "a:1"],
        &["AUTH", "bob", "bpw"],
        &["GET", "a:1"],
        &["SET", "b:1", "by-bob"],
        &["AUTH", "bob", "apw"],
        &["ACL", "WHOAMI"],
        &["AUTH"],
        &["AUTH", "a", "b", "c"],
        &["HELLO", "3", "AUTH", "alice", "apw"],
        &["GET", "a:1"],
        &["HELLO", "2", "AUTH", "bob", "wrong"],
        &["HELLO", "2", "AUTH", "bob", "bpw"],
        &["GET", "b:1"],
        &["HELLO", "4", "AUTH", "alice", "apw"],
        &["ACL", "WHOAMI"],
    ];
    let reference = RedisServer::start();
    add_users(&reference).await;
    let mut direct = Conn::open(reference.addr()).await;
    let want = mask(&pipelined(&mut direct, script).await);
    assert!(want.contains("-WRONGPASS"), "{want}");
    assert!(want.contains("-NOPERM"), "{want}");

    let server = RedisServer::start();
    add_users(&server).await;
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut watcher = Watcher::open(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(mask(&pipelined(&mut c, script).await), want, "one pipeline");
    let mut direct = watcher.direct(&server).await;
    assert_eq!(direct.call(&["FLUSHALL"]).await, "+OK\r\n");
    let mut c2 = Conn::open(proxy.addr).await;
    let mut replies = String::new();
    for command in script {
        replies.push_str(&c2.call(command).await);
    }
    assert_eq!(mask(&replies), want, "one at a time");

    let users = shared_users(&mut watcher, "both clients on shared connections").await;
    assert_eq!(users, ["alice", "bob", "default"].map(String::from).into());
    assert_eq!(direct.call(&["GET", "b:1"]).await, "$6\r\nby-bob\r\n");
    proxy.shutdown().await;
}

/// Clients of three users pipelining at once through shared connections each run as their
/// own user: every `ACL WHOAMI` names it, and each may write only its own keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_different_users_keep_their_permissions() {
    let server = RedisServer::start();
    add_users(&server).await;
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut tasks = Vec::new();
    for (user, password, prefix) in [("alice", "apw", "a"), ("bob", "bpw", "b"), ("", "", "c")] {
        for client in 0..4 {
            let addr = proxy.addr;
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::open(addr).await;
                if !user.is_empty() {
                    assert_eq!(c.call(&["AUTH", user, password]).await, "+OK\r\n");
                }
                let me = if user.is_empty() { "default" } else { user };
                for round in 0..50 {
                    let key = format!("{prefix}:{client}");
                    let other = if prefix == "a" { "b:x" } else { "a:x" };
                    let value = round.to_string();
                    let script: &[&[&str]] = &[
                        &["ACL", "WHOAMI"],
                        &["SET", &key, &value],
                        &["GET", &key],
                        &["SET", other, "no"],
                    ];
                    let got = pipelined(&mut c, script).await;
                    let head = format!(
                        "${}\r\n{me}\r\n+OK\r\n${}\r\n{value}\r\n",
                        me.len(),
                        value.len()
                    );
                    assert!(got.starts_with(&head), "{me}: {got}");
                    let last = got[head.len()..].to_string();
                    assert_eq!(last.starts_with("-NOPERM"), me != "default", "{me}: {last}");
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut watcher = Watcher::open(&server).await;
    let users = shared_users(&mut watcher, "every client on shared connections").await;
    assert_eq!(users, ["alice", "bob", "default"].map(String::from).into());
    proxy.shutdown().await;
}

/// With the URL's own user (`redis://svc:spw@...`), a client sending the URL's credentials
/// stays on the URL's shared connections (no other user's are opened), and a wrong
/// password gets Redis's error and changes nothing; as a direct client, it is still `svc`.
#[tokio::test]
async fn the_urls_own_credentials_keep_the_urls_shared_connections() {
    let setup: &[&[&str]] = &[&["ACL", "SETUSER", "svc", "on", ">spw", "~*", "+@all"]];
    let script: &[&[&str]] = &[
        &["AUTH", "svc", "spw"],
        &["ACL", "WHOAMI"],
        &["AUTH", "svc", "wrong"],
        &["ACL", "WHOAMI"],
        &["SET", "k", "v"],
    ];
    let reference = RedisServer::start();
    let mut direct = Conn::open(reference.addr()).await;
    pipelined(&mut direct, setup).await;
    assert_eq!(direct.call(&["AUTH", "svc", "spw"]).await, "+OK\r\n");
    let want = pipelined(&mut direct, script).await;

    let server = RedisServer::start();
    let mut admin = Conn::open(server.addr()).await;
    pipelined(&mut admin, setup).await;
    let url = format!("redis://svc:spw@{}", server.addr());
    let proxy = mux_proxy(&server, |raw| raw.upstream.url = url).await;
    let mut watcher = Watcher::open(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(pipelined(&mut c, script).await, want);
    let users = shared_users(&mut watcher, "the client on the URL's connections").await;
    assert_eq!(users, ["svc".to_string()].into());
    proxy.shutdown().await;
}

/// A password changed in Redis while a user's shared connections are open: a new client
/// giving the old password is refused by Redis (the proxy checks it again on the shared
/// connection rather than trusting the one it opened with), the new password is accepted,
/// and the client already authenticated goes on working, as a direct one would.
#[tokio::test]
async fn a_changed_password_is_checked_by_redis_not_by_the_open_connections() {
    let server = RedisServer::start();
    add_users(&server).await;
    let proxy = mux_proxy(&server, |_| {}).await;
    let mut first = Conn::open(proxy.addr).await;
    assert_eq!(first.call(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    assert_eq!(first.call(&["SET", "a:1", "v"]).await, "+OK\r\n");
    let mut admin = Conn::open(server.addr()).await;
    let rotate = ["ACL", "SETUSER", "alice", "resetpass", ">new"];
    assert_eq!(admin.call(&rotate).await, "+OK\r\n");

    let mut late = Conn::open(proxy.addr).await;
    let refused = late.call(&["AUTH", "alice", "apw"]).await;
    assert!(refused.starts_with("-WRONGPASS"), "{refused}");
    assert_eq!(late.call(&["ACL", "WHOAMI"]).await, "$7\r\ndefault\r\n");
    assert_eq!(late.call(&["AUTH", "alice", "new"]).await, "+OK\r\n");
    assert_eq!(late.call(&["ACL", "WHOAMI"]).await, "$5\r\nalice\r\n");
    assert_eq!(first.call(&["GET", "a:1"]).await, "$1\r\nv\r\n");
    proxy.shutdown().await;
}

/// A client authenticated as alice that needs a connection of its own (a transaction) gets
/// one authenticated as alice: its permissions inside MULTI are alice's (Redis's own
/// `-NOPERM` at queue time, byte for byte as directly), Redis shows that connection as
/// alice's, and the client is back on alice's shared connections afterwards.
#[tokio::test]
async fn a_connection_of_its_own_is_authenticated_as_the_clients_user() {
    let script: &[&[&str]] = &[
        &["AUTH", "alice", "apw"],
        &["MULTI"],
        &["SET", "a:1", "in-multi"],
        &["SET", "b:1", "in-multi"],
        &["EXEC"],
        &["MULTI"],
        &["SET", "a:2", "x"],
        &["EXEC"],
        &["ACL", "WHOAMI"],
    ];
    let reference = RedisServer::start();
    add_users(&reference).await;
    let mut direct = Conn::open(reference.addr()).await;
    let want = pipelined(&mut direct, script).await;
    assert!(want.contains("-NOPERM"), "{want}");

    let server = RedisServer::start();
    add_users(&server).await;
    let proxy = mux_proxy(&server, |raw| raw.upstream.pinned_idle = 0).await;
    let mut watcher = Watcher::open(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    let opening: &[&[&str]] = &[&["AUTH", "alice", "apw"], &["MULTI"]];
    let got = pipelined(&mut c, opening).await;
    assert_eq!(got, "+OK\r\n+OK\r\n");
    own_connections_of(&mut watcher, &["alice"]).await;
    let got = got + &pipelined(&mut c, &script[2..]).await;
    assert_eq!(got, want);
    let users = shared_users(&mut watcher, "back on alice's shared connections").await;
    assert!(users.contains("alice"), "{users:?}");
    proxy.shutdown().await;
}

/// `upstream.shared_identities` bounds the users with shared connections, and places are
/// given back: a user Redis refused (a wrong password) does not keep one, and a user no
/// client uses any more gives its place to the next; past the bound a client gets a
/// connection of its own authenticated as its user.
#[tokio::test]
async fn shared_identities_bound_users_and_unused_ones_give_their_place() {
    let server = RedisServer::start();
    add_users(&server).await;
    let proxy = mux_proxy(&server, |raw| {
        raw.upstream.shared_identities = 2;
        raw.upstream.pinned_idle = 0;
    })
    .await;
    let mut watcher = Watcher::open(&server).await;
    let mut refused = Conn::open(proxy.addr).await;
    assert_eq!(refused.call(&["PING"]).await, "+PONG\r\n");
    let wrong = refused.call(&["AUTH", "alice", "wrong"]).await;
    assert!(wrong.starts_with("-WRONGPASS"), "{wrong}");

    let mut bob = Conn::open(proxy.addr).await;
    assert_eq!(bob.call(&["AUTH", "bob", "bpw"]).await, "+OK\r\n");
    assert_eq!(bob.call(&["SET", "b:1", "v"]).await, "+OK\r\n");
    let users = shared_users(&mut watcher, "bob shares in the refused user's place").await;
    assert_eq!(users, ["bob", "default"].map(String::from).into());

    let mut alice = Conn::open(proxy.addr).await;
    assert_eq!(alice.call(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    assert_eq!(alice.call(&["ACL", "WHOAMI"]).await, "$5\r\nalice\r\n");
    // Past the bound, a connection of its own.
    own_connections_of(&mut watcher, &["alice"]).await;
    drop(alice);

    drop(bob);
    let mut alice = Conn::open(proxy.addr).await;
    assert_eq!(alice.call(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    assert_eq!(alice.call(&["ACL", "WHOAMI"]).await, "$5\r\nalice\r\n");
    let users = eventually!(WAIT, "alice shares in bob's place, bob's lanes closed", {
        let users = shared_users(&mut watcher, "alice on shared connections").await;
        if users.contains("bob") {
            Err(format!("{users:?}"))
        } else {
            Ok(users)
        }
    });
    assert_eq!(users, ["alice", "default"].map(String::from).into());
    proxy.shutdown().await;
}

/// `[auth]` with two proxy users mapped to Redis's alice and bob.
const PROXY_USERS: &str = r#"
[[auth.users]]
name = "app"
password = "app-proxy-pass"
upstream_user = "alice"
upstream_password = "apw"

[[auth.users]]
name = "ops"
password = "ops-proxy-pass"
upstream_user = "bob"
upstream_password = "bpw"
"#;

/// Clients respguard authenticates itself (`[auth]`) share the connections of the Redis
/// user each is mapped to: after `AUTH app ...` (or `HELLO 3 AUTH ...`) the client runs as
/// alice, with alice's permissions, on alice's shared connections; a wrong password is
/// refused by the proxy; SELECT and `HELLO 2 SETNAME` keep the client on shared connections
/// (the name kept by the proxy, no shared connection renamed); a transaction takes a
/// connection of its own as alice and gives it back. Redis shows no connection of a client's own at the end, and shared ones as
/// alice and bob only.
#[tokio::test]
async fn clients_the_proxy_authenticates_share_their_redis_users_connections() {
    let server = RedisServer::start();
    add_users(&server).await;
    let proxy = mux_proxy(&server, |raw| {
        raw.auth = respguard::config::RawConfig::from_toml(PROXY_USERS)
            .unwrap()
            .auth;
        raw.upstream.pinned_idle = 0;
    })
    .await;
    let mut watcher = Watcher::open(&server).await;
    let mut clients = Vec::new();
    for (name, password, redis_user, key) in [
        ("app", "app-proxy-pass", "alice", "a:1"),
        ("app", "app-proxy-pass", "alice", "a:2"),
        ("ops", "ops-proxy-pass", "bob", "b:1"),
    ] {
        let mut c = Conn::open(proxy.addr).await;
        let wrong = c.call(&["AUTH", name, "wrong"]).await;
        assert!(wrong.starts_with("-WRONGPASS"), "{wrong}");
        let script: &[&[&str]] = &[
            &["AUTH", name, password],
            &["ACL", "WHOAMI"],
            &["SET", key, "v"],
            &["SET", "c:1", "v"],
        ];
        let got = pipelined(&mut c, script).await;
        let want = format!("+OK\r\n${}\r\n{redis_user}\r\n+OK\r\n", redis_user.len());
        assert!(got.starts_with(&want), "{name}: {got}");
        assert!(got[want.len()..].starts_with("-NOPERM"), "{name}: {got}");
        clients.push(c);
    }
    let mut resp3 = Conn::open(proxy.addr).await;
    let hello = resp3
        .call(&["HELLO", "3", "AUTH", "app", "app-proxy-pass"])
        .await;
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert_eq!(resp3.call(&["ACL", "WHOAMI"]).await, "$5\r\nalice\r\n");
    // SELECT and a name given by HELLO keep an authenticated client on shared connections.
    assert_eq!(clients[2].call(&["SELECT", "5"]).await, "+OK\r\n");
    assert_eq!(clients[2].call(&["SET", "b:5", "v"]).await, "+OK\r\n");
    let named = clients[1].call(&["HELLO", "2", "SETNAME", "worker"]).await;
    assert!(named.starts_with("*14\r\n"), "{named}");
    let name = clients[1].call(&["CLIENT", "GETNAME"]).await;
    assert_eq!(name, "$6\r\nworker\r\n");
    let users = shared_users(&mut watcher, "authenticated clients on shared connections").await;
    assert_eq!(users, ["alice", "bob"].map(String::from).into());
    let shared = only_shared(&mut watcher, "no shared connection renamed").await;
    assert!(shared.iter().all(|c| c.name != "worker"), "{shared:?}");

    let transaction: &[&[&str]] = &[&["MULTI"], &["SET", "a:3", "t"], &["EXEC"]];
    assert_eq!(
        pipelined(&mut clients[0], transaction).await,
        "+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n"
    );
    let users = shared_users(&mut watcher, "back on alice's shared connections").await;
    assert_eq!(users, ["alice", "bob"].map(String::from).into());
    assert_eq!(clients[1].call(&["GET", "a:3"]).await, "$1\r\nt\r\n");
    proxy.shutdown().await;
}
