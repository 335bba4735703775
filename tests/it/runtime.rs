//! The per-core runtime model (`proxy.runtime = "per-core"`), in the real binary: clients
//! are served on every serving thread, and what is shared stays shared: `max_clients` is one
//! limit for all threads, shutdown drains the sessions of every thread, and a reload reaches
//! them all. Each test opens enough connections that the kernel spreads them over both
//! threads' sockets (the first test checks that it does).

use std::net::SocketAddr;

use crate::harness::{eventually, http_get, Conn, RedisServer, WAIT};
use crate::memory::ProxyProcess;

/// Serving threads in these tests.
const THREADS: usize = 2;

/// Connections each test opens: all of them on one of two sockets has odds of 2^-15.
const CONNECTIONS: usize = 16;

/// Start the binary in the per-core model with `THREADS` threads, the `[proxy]` settings
/// `proxy` and the sections `rest`, with its admin listener; the directory holds the
/// configuration file.
fn per_core(
    server: &RedisServer,
    proxy: &str,
    rest: &str,
) -> (ProxyProcess, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("respguard.toml");
    std::fs::write(&config, per_core_toml(proxy, rest)).unwrap();
    let (proxy, admin) = ProxyProcess::start_with_admin(&server.url(), &config);
    (proxy, admin, dir)
}

/// The configuration text: `[proxy]` in the per-core model with `proxy`, then `rest`.
fn per_core_toml(proxy: &str, rest: &str) -> String {
    format!("[proxy]\nruntime = \"per-core\"\nworker_threads = {THREADS}\n{proxy}\n{rest}")
}

/// How many times each serving thread of `pid` has gone to sleep waiting for work
/// (`voluntary_ctxt_switches`), by thread name.
fn sleeps_per_serving_thread(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.starts_with("core-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let sleeps = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap();
        out.push((name.trim().to_owned(), sleeps));
    }
    out.sort();
    out
}

/// Open `n` connections and check each is served.
async fn served_connections(addr: SocketAddr, n: usize) -> Vec<Conn> {
    let mut conns = Vec::new();
    for i in 0..n {
        let mut c = Conn::open(addr).await;
        let key = format!("rt:{i}");
        assert_eq!(c.call(&["SET", &key, "v"]).await, "+OK\r\n");
        assert_eq!(c.call(&["GET", &key]).await, "$1\r\nv\r\n");
        conns.push(c);
    }
    conns
}

#[tokio::test]
async fn per_core_serves_clients_on_every_thread() {
    let server = RedisServer::start();
    let (proxy, _admin, _dir) = per_core(&server, "", "");
    // The port opens as the sockets are bound, before the threads start: wait until every
    // serving thread runs and has gone idle once, so a wake counted below is a served
    // connection, not the thread starting.
    let before = eventually!(WAIT, "every serving thread started and went idle", {
        let threads = sleeps_per_serving_thread(proxy.pid());
        let names: Vec<&str> = threads.iter().map(|(name, _)| name.as_str()).collect();
        if names == ["core-0", "core-1"] && threads.iter().all(|(_, sleeps)| *sleeps > 0) {
            Ok(threads)
        } else {
            Err(format!("serving threads: {threads:?}"))
        }
    });
    // A serving thread with no connection sleeps without waking: each one that wakes has
    // accepted (and served) some of these connections.
    let _conns = served_connections(proxy.addr, CONNECTIONS).await;
    eventually!(WAIT, "every serving thread served a connection", {
        let after = sleeps_per_serving_thread(proxy.pid());
        let all_woke = after.iter().zip(&before).all(|(a, b)| a.1 > b.1);
        if all_woke {
            Ok(())
        } else {
            Err(format!("before {before:?}, now {after:?}"))
        }
    });
}

#[tokio::test]
async fn per_core_max_clients_is_one_limit_for_all_threads() {
    let server = RedisServer::start();
    let limit = 4;
    let (proxy, _admin, _dir) = per_core(&server, &format!("max_clients = {limit}"), "");
    let mut open = served_connections(proxy.addr, limit).await;
    // Every further connection is refused, whichever thread's socket it reaches (a limit per
    // thread would let about half of them in).
    for _ in 0..CONNECTIONS {
        let mut c = Conn::open(proxy.addr).await;
        let refused = String::from_utf8_lossy(&c.read_to_close().await).into_owned();
        assert_eq!(
            refused,
            format!(
                "-ERR respguard: max number of clients reached (proxy.max_clients = {limit})\r\n"
            )
        );
    }
    // A slot freed on one thread serves a client on any.
    drop(open.pop());
    eventually!(WAIT, "the freed slot serves a new client", {
        let mut c = Conn::open(proxy.addr).await;
        c.cmd(&["PING"]).await;
        match c.read_reply_or_close().await {
            pong if pong == "+PONG\r\n" => Ok(()),
            other => Err(other),
        }
    });
}

#[tokio::test]
async fn per_core_shutdown_drains_the_sessions_of_every_thread() {
    let server = RedisServer::start();
    let (mut proxy, _admin, _dir) = per_core(&server, "", "");
    let mut redis = Conn::open(server.addr()).await;
    let mut waiting = served_connections(proxy.addr, CONNECTIONS).await;
    // Writes wait in Redis (not blocking commands: those are closed at once on shutdown).
    assert_eq!(
        redis.call(&["CLIENT", "PAUSE", "20000", "WRITE"]).await,
        "+OK\r\n"
    );
    for (i, c) in waiting.iter_mut().enumerate() {
        c.cmd(&["SET", &format!("drain:{i}"), "v"]).await;
    }
    let paused = format!("blocked_clients:{CONNECTIONS}\r");
    eventually!(WAIT, "every SET reached Redis", {
        redis.call(&["INFO", "clients"]).await.contains(&paused)
    });
    proxy.signal("TERM");
    // Every thread's socket is closed once shutdown has reached it.
    eventually!(WAIT, "no listener accepts any more", {
        tokio::net::TcpStream::connect(proxy.addr).await.is_err()
    });
    // The replies in flight on every thread still arrive, then each connection closes.
    assert_eq!(redis.call(&["CLIENT", "UNPAUSE"]).await, "+OK\r\n");
    for (i, c) in waiting.iter_mut().enumerate() {
        assert_eq!(c.replies(1).await, "+OK\r\n", "connection {i}");
        assert!(c.read_to_close().await.is_empty(), "connection {i}");
    }
    let status = proxy.wait_for_exit().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn per_core_reload_reaches_the_sessions_of_every_thread() {
    let server = RedisServer::start();
    let loose = "[[guards.size.rules]]\npattern = \"rl:*\"\nmax_value = \"1KiB\"\n";
    let tight = "[[guards.size.rules]]\npattern = \"rl:*\"\nmax_value = \"10B\"\n";
    let (proxy, admin, dir) = per_core(&server, "", loose);
    let mut conns = served_connections(proxy.addr, CONNECTIONS).await;
    for c in &mut conns {
        assert_eq!(
            c.call(&["SET", "rl:k", "twenty-bytes-value!!"]).await,
            "+OK\r\n"
        );
    }
    std::fs::write(dir.path().join("respguard.toml"), per_core_toml("", tight)).unwrap();
    proxy.signal("HUP");
    eventually!(WAIT, "SIGHUP reloaded", {
        http_get(admin, "/status").await.json()["config"]["generation"].as_u64() == Some(2)
    });
    // Sessions opened before the reload, on every thread, and a new one, all under the
    // new rules.
    conns.push(Conn::open(proxy.addr).await);
    for c in &mut conns {
        let refused = c.call(&["SET", "rl:k", "twenty-bytes-value!!"]).await;
        assert!(
            refused.starts_with("-ERR respguard: value of 20 bytes for key"),
            "{refused}"
        );
    }
}

/// Redis's `CLIENT LIST`, one line per connection.
async fn client_list(redis: &mut Conn) -> Vec<String> {
    let list = redis.call(&["CLIENT", "LIST"]).await;
    list.lines()
        .filter(|l| l.contains("id="))
        .map(str::to_owned)
        .collect()
}

/// Multiplexed per core: each serving thread has its own shared connections (one each here,
/// so two in all, where one set of lanes would be one), and every client gets its own
/// replies through them.
#[tokio::test]
async fn per_core_multiplexed_threads_have_their_own_shared_connections() {
    let server = RedisServer::start();
    let upstream = "[upstream]\nconnections = \"multiplexed\"\nshared_connections = 1";
    let (proxy, _admin, _dir) = per_core(&server, "", upstream);
    let _conns = served_connections(proxy.addr, CONNECTIONS).await;
    let mut redis = Conn::open(server.addr()).await;
    let shared: Vec<String> = client_list(&mut redis)
        .await
        .into_iter()
        .filter(|l| l.contains("name=respguard-shared"))
        .collect();
    assert_eq!(shared.len(), THREADS, "{shared:#?}");
}

/// Multiplexed per core, the connections of their own are one pool for every thread: with
/// `pinned_connections = 1`, of sixteen clients (on both threads) sending BLPOP, one blocks
/// in Redis and the others get the limit's error once `connect_timeout` has passed.
#[tokio::test]
async fn per_core_multiplexed_threads_share_one_pinned_limit() {
    let server = RedisServer::start();
    let upstream = "[upstream]\nconnections = \"multiplexed\"\npinned_connections = 1\n\
                    connect_timeout = \"300ms\"";
    let (proxy, _admin, _dir) = per_core(&server, "", upstream);
    let mut conns = served_connections(proxy.addr, CONNECTIONS).await;
    for c in &mut conns {
        c.send(&crate::harness::encode(&["BLPOP", "rt:queue", "0"]))
            .await;
    }
    let mut refused = 0;
    for c in conns.iter_mut() {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(3), c.reply()).await;
        if let Ok(reply) = waited {
            let reply = String::from_utf8_lossy(&reply);
            assert!(reply.contains("(upstream.pinned_connections)"), "{reply}");
            refused += 1;
        }
    }
    assert_eq!(refused, CONNECTIONS - 1);
    let mut redis = Conn::open(server.addr()).await;
    let blocked = client_list(&mut redis)
        .await
        .into_iter()
        .filter(|l| l.contains("cmd=blpop"))
        .count();
    assert_eq!(blocked, 1);
}
