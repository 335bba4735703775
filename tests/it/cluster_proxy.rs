//! The proxy in front of a real Redis Cluster (`redis-cluster://`, three primaries and
//! three replicas started by the tests): a cluster-unaware client sees one Redis. Each
//! scripted session runs against a standalone Redis directly and through the proxy in
//! front of the cluster, and the replies must be equal byte for byte (the `mode` field of
//! HELLO, which names the server's mode, is masked). Keys are spread over every slot.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::cluster_harness::Cluster;
use crate::harness::*;
use respguard::app::ProxyHandle;

/// A proxy in front of `cluster`, its seeds the cluster's first two nodes, configured by
/// `toml` (empty: the defaults).
pub async fn proxy_for_cluster(cluster: &Cluster, toml: &str) -> ProxyHandle {
    let mut raw = respguard::config::RawConfig::from_toml(toml).expect("test config parses");
    raw.proxy.listen = "127.0.0.1:0".into();
    raw.admin.listen = "127.0.0.1:0".into();
    raw.upstream.url = format!("redis-cluster://{}", cluster.addresses()[..2].join(","));
    start_proxy(raw).await
}

/// The cluster's slot map, as its first node describes it.
pub async fn slot_map(cluster: &Cluster) -> respguard::cluster::topology::SlotMap {
    let first = cluster.addresses()[0].clone();
    let gate = crate::cluster_harness::gate_for(&first);
    respguard::cluster::reader::read_topology(&gate, &first)
        .await
        .unwrap()
        .0
}

/// The connection to the primary serving `key`, found by asking the cluster.
async fn primary_of(cluster: &Cluster, key: &str) -> Conn {
    let first = cluster.addresses()[0].clone();
    let mut any = cluster.conn(&first).await;
    let slot = any.call(&["CLUSTER", "KEYSLOT", key]).await;
    let slot: u16 = slot.trim_start_matches(':').trim().parse().unwrap();
    let map = slot_map(cluster).await;
    cluster.conn(&map.shard_of(slot).unwrap().primary).await
}

/// The replies with what names the server's mode masked.
fn unmode(replies: &str) -> String {
    mask(replies).replace(
        "$4\r\nmode\r\n$7\r\ncluster\r\n",
        "$4\r\nmode\r\n$10\r\nstandalone\r\n",
    )
}

/// Run `script` against a fresh standalone Redis and through `proxy`, in RESP2 and
/// RESP3, and compare.
async fn same_as_one_redis<F, Fut>(proxy: SocketAddr, script: F)
where
    F: Fn(SocketAddr, u8) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    for proto in [2u8, 3] {
        let direct = RedisServer::start();
        let want = unmode(&script(direct.addr(), proto).await);
        let got = unmode(&script(proxy, proto).await);
        assert!(!want.is_empty());
        if want != got {
            let at = want
                .bytes()
                .zip(got.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(got.len()));
            let lo = at.saturating_sub(100);
            panic!(
                "RESP{proto}: replies differ at byte {at}\n direct: {:?}\n  proxy: {:?}",
                &want[lo..(at + 100).min(want.len())],
                &got[lo..(at + 100).min(got.len())]
            );
        }
        // The next protocol's run starts from an empty cluster, as from a fresh server.
        Conn::open(proxy).await.call(&["FLUSHALL"]).await;
    }
}

async fn hello(addr: SocketAddr, proto: u8) -> (Conn, String) {
    let mut c = Conn::open(addr).await;
    let hello = c.call(&["HELLO", &proto.to_string()]).await;
    (c, hello)
}

/// 10,000 single-key commands over 1,000 keys (every primary's slots), written at once:
/// every reply in order, equal to one Redis's.
async fn single_key_pipeline(addr: SocketAddr, proto: u8) -> String {
    let (mut c, mut out) = hello(addr, proto).await;
    let mut batch = Vec::new();
    for i in 0..10_000 {
        let k = format!("key:{}", i % 1000);
        let cmd: Vec<String> = match i % 6 {
            0 => vec!["SET".into(), k, format!("v{i}")],
            1 => vec!["GET".into(), k],
            2 => vec!["INCR".into(), format!("n:{}", i % 97)],
            3 => vec!["LPUSH".into(), format!("l:{}", i % 31), i.to_string()],
            4 => vec!["HSET".into(), format!("h:{}", i % 13), k, i.to_string()],
            _ => vec!["INCR".into(), format!("h:{}", i % 13)], // WRONGTYPE
        };
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        batch.extend_from_slice(&encode(&refs));
    }
    c.send(&batch).await;
    out.push_str(&c.replies(10_000).await);
    for i in 0..31 {
        out.push_str(&c.call(&["LRANGE", &format!("l:{i}"), "0", "-1"]).await);
    }
    out
}

/// Multi-key commands across slots, split per slot and merged in the client's order;
/// DBSIZE summed over the primaries; KEYS and a whole SCAN give every key once.
async fn multi_key_commands(addr: SocketAddr, proto: u8) -> String {
    let (mut c, mut out) = hello(addr, proto).await;
    let keys: Vec<String> = (0..200).map(|i| format!("mk:{i}")).collect();
    let mut mset = vec!["MSET".to_string()];
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        mset.push(k.clone());
        mset.push(format!("value-{i}"));
    }
    let refs: Vec<&str> = mset.iter().map(String::as_str).collect();
    out.push_str(&c.call(&refs).await);
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    mget.push("mk:0");
    out.push_str(&c.call(&mget).await);
    for name in ["EXISTS", "TOUCH"] {
        let mut cmd = vec![name];
        cmd.extend(keys.iter().map(String::as_str));
        out.push_str(&c.call(&cmd).await);
    }
    out.push_str(&c.call(&["DBSIZE"]).await);
    let mut keys_reply = c.call(&["KEYS", "mk:*"]).await;
    keys_reply = sorted_elements(&keys_reply);
    out.push_str(&keys_reply);
    let mut scanned = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let page = c
            .call(&["SCAN", &cursor, "MATCH", "mk:*", "COUNT", "50"])
            .await;
        let lines: Vec<&str> = page.split("\r\n").collect();
        cursor = lines[2].to_string();
        scanned.extend(
            lines
                .iter()
                .filter(|l| l.starts_with("mk:"))
                .map(|s| s.to_string()),
        );
        if cursor == "0" {
            break;
        }
    }
    scanned.sort();
    scanned.dedup();
    out.push_str(&format!("scanned {} keys\n", scanned.len()));
    for name in ["DEL", "UNLINK"] {
        let mut cmd = vec![name];
        cmd.extend(keys[..100].iter().map(String::as_str));
        out.push_str(&c.call(&cmd).await);
    }
    out.push_str(&c.call(&["DBSIZE"]).await);
    out.push_str(&c.call(&["FLUSHALL"]).await);
    out.push_str(&c.call(&["DBSIZE"]).await);
    out
}

/// The elements of a flat array reply of bulk strings, sorted, as text.
fn sorted_elements(reply: &str) -> String {
    let mut items: Vec<&str> = reply
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.starts_with('$') && !l.is_empty())
        .collect();
    items.sort();
    format!("{}:{}\n", items.len(), items.join(","))
}

/// Transactions and WATCH on one slot (hash tags), blocking commands, scripts, CLIENT
/// REPLY, pub/sub: as with one Redis.
async fn connection_state(addr: SocketAddr, proto: u8) -> String {
    let (mut c, mut out) = hello(addr, proto).await;
    for cmd in [
        &["SET", "{user:1}:n", "5"][..],
        &["WATCH", "{user:1}:n"],
        &["MULTI"],
        &["INCR", "{user:1}:n"],
        &["LPUSH", "{user:1}:log", "a", "b"],
        &["EXEC"],
        &["MULTI"],
        &["PING"],
        &["EXEC"],
        &["MULTI"],
        &["DISCARD"],
        &["WATCH", "{user:2}:n"],
        &["MULTI"],
        &["SET", "{user:2}:n", "x"],
        &["EXEC"],
        &[
            "EVAL",
            "return redis.call('INCRBY', KEYS[1], ARGV[1])",
            "1",
            "{user:1}:n",
            "10",
        ],
        &["SCRIPT", "LOAD", "return ARGV[1]"],
        &[
            "EVALSHA",
            "e5f0fbb4c4e2f63c0e84c0c5ecd9ceb3c05df1c9",
            "0",
            "x",
        ],
        &["EXISTS", "{user:1}:n", "{user:1}:log", "{user:1}:none"],
    ] {
        out.push_str(&c.call(cmd).await);
    }
    // CLIENT REPLY: the OFF'd and SKIP'd replies never come.
    c.send(&encode(&["CLIENT", "REPLY", "SKIP"])).await;
    c.send(&encode(&["SET", "skipped", "1"])).await;
    c.send(&encode(&["CLIENT", "REPLY", "OFF"])).await;
    c.send(&encode(&["SET", "off", "1"])).await;
    out.push_str(&c.call(&["CLIENT", "REPLY", "ON"]).await);
    out.push_str(&c.call(&["MGET", "skipped", "off"]).await);
    // A pop served by a push from another connection (blocked first, or not: the reply
    // is the same either way).
    let mut other = Conn::open(addr).await;
    c.send(&encode(&["BLPOP", "queue:{q}", "5"])).await;
    other.call(&["RPUSH", "queue:{q}", "job"]).await;
    out.push_str(&mask(&c.replies(1).await));
    // Pub/sub: subscribed (the confirmation says so), a message, then back to commands.
    let (mut sub, _) = hello(addr, proto).await;
    out.push_str(&sub.call(&["SUBSCRIBE", "news"]).await);
    other.call(&["PUBLISH", "news", "hello"]).await;
    out.push_str(&sub.replies(1).await);
    out.push_str(&sub.call(&["UNSUBSCRIBE", "news"]).await);
    out.push_str(&sub.call(&["GET", "{user:1}:n"]).await);
    out
}

/// One cluster for the differential sessions: started once, each session run against a
/// fresh standalone Redis and through the proxy, FLUSHALL between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_unaware_client_sees_one_redis() {
    a_cluster_unaware_client_sees_one_redis_with("").await;
}

/// The differential sessions through a proxy configured by `toml` (`cluster_mux` runs them
/// multiplexed).
pub async fn a_cluster_unaware_client_sees_one_redis_with(toml: &str) {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, toml).await;
    same_as_one_redis(proxy.addr, single_key_pipeline).await;
    same_as_one_redis(proxy.addr, multi_key_commands).await;
    same_as_one_redis(proxy.addr, connection_state).await;
    // The keys were spread over every primary.
    let mut c = Conn::open(proxy.addr).await;
    for i in 0..300 {
        c.call(&["SET", &format!("spread:{i}"), "x"]).await;
    }
    for shard in cluster.addresses() {
        let mut node = cluster.conn(&shard).await;
        if node.call(&["ROLE"]).await.contains("master") {
            let size = node.call(&["DBSIZE"]).await;
            assert_ne!(size, ":0\r\n", "{shard} holds none of the keys");
        }
    }
    proxy.shutdown().await;
}

/// What Redis Cluster itself refuses across slots gets Redis Cluster's own error, without
/// a round trip; a cluster-aware client sees one node, the proxy, serving every slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_slot_refusals_are_redis_s_and_the_proxy_is_a_one_node_cluster() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let mut node = cluster.conn(&cluster.addresses()[0]).await;
    let mut c = Conn::open(proxy.addr).await;
    for cmd in [
        &["MSETNX", "a", "1", "b", "2"][..],
        &["RENAME", "a", "b"],
        &["SUNIONSTORE", "a", "b", "c"],
        &["EVAL", "return 1", "2", "a", "b"],
    ] {
        let want = node.call(cmd).await;
        assert!(want.starts_with("-CROSSSLOT"), "{cmd:?}: {want}");
        assert_eq!(c.call(cmd).await, want, "{cmd:?}");
    }
    let slots = c.call(&["CLUSTER", "SLOTS"]).await;
    let port = proxy.addr.port().to_string();
    assert!(
        slots.starts_with(&format!(
            "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:{port}\r\n"
        )),
        "{slots}"
    );
    let nodes = c.call(&["CLUSTER", "NODES"]).await;
    assert!(nodes.contains(&format!("127.0.0.1:{port}@")), "{nodes}");
    assert!(c
        .call(&["CLUSTER", "INFO"])
        .await
        .contains("cluster_state:ok"));
    // Other subcommands are a node's: KEYSLOT is Redis's own.
    assert_eq!(
        c.call(&["CLUSTER", "KEYSLOT", "user:1"]).await,
        node.call(&["CLUSTER", "KEYSLOT", "user:1"]).await
    );
    proxy.shutdown().await;
}

/// Resharding under load: `redis-cli --cluster reshard` moves 1,000 slots while 50
/// clients write and read keys across slots through the proxy. No client sees an error,
/// and every value read back is the last one its client wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_load_is_invisible_to_clients() {
    resharding_under_load_is_invisible_to_clients_with("").await;
}

/// Resharding under load through a proxy configured by `toml`.
pub async fn resharding_under_load_is_invisible_to_clients_with(toml: &str) {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, toml).await;
    let map = slot_map(&cluster).await;
    let from = map.shards()[0].primary.clone();
    let to = map.shards()[1].primary.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..50 {
        let stop = std::sync::Arc::clone(&stop);
        let addr = proxy.addr;
        clients.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await;
            let mut round = 0u64;
            let mut errors = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || round < 5 {
                round += 1;
                let keys: Vec<String> = (0..4).map(|k| format!("c{client}:k{k}")).collect();
                let value = format!("r{round}");
                // One key alone, then all four at once (across slots), then read back.
                let set = c.call(&["SET", &keys[0], &value]).await;
                let mut mset = vec!["MSET"];
                for k in &keys[1..] {
                    mset.push(k);
                    mset.push(&value);
                }
                let mset_reply = c.call(&mset).await;
                let got = c.call(&["GET", &keys[0]]).await;
                let mut mget = vec!["MGET"];
                mget.extend(keys.iter().map(String::as_str));
                let many = c.call(&mget).await;
                let want_one = format!("${}\r\n{value}\r\n", value.len());
                let want_many = format!("*4\r\n{}", want_one.repeat(4));
                for (what, reply, want) in [
                    ("SET", &set, "+OK\r\n"),
                    ("MSET", &mset_reply, "+OK\r\n"),
                    ("GET", &got, want_one.as_str()),
                    ("MGET", &many, want_many.as_str()),
                ] {
                    if reply != want {
                        errors.push(format!("{what}: {reply:?}, want {want:?}"));
                    }
                }
            }
            (round, errors)
        }));
    }
    let began = Instant::now();
    let out = tokio::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &from])
        .args(["--cluster-from", &node_id_of(&cluster, &from).await])
        .args(["--cluster-to", &node_id_of(&cluster, &to).await])
        .args(["--cluster-slots", "1000", "--cluster-yes"])
        .output()
        .await
        .unwrap();
    let resharded_in = began.elapsed();
    assert!(
        out.status.success(),
        "reshard: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut rounds = 0;
    for client in clients {
        let (done, errors) = client.await.unwrap();
        rounds += done;
        assert!(
            errors.is_empty(),
            "{} errors, first: {}",
            errors.len(),
            errors[0]
        );
    }
    eprintln!(
        "resharding 1,000 slots took {resharded_in:?}; 50 clients ran {rounds} rounds (4 commands each) without an error"
    );
    proxy.shutdown().await;
}

pub async fn node_id_of(cluster: &Cluster, address: &str) -> String {
    let reply = cluster.conn(address).await.call(&["CLUSTER", "MYID"]).await;
    reply.split("\r\n").nth(1).unwrap().to_string()
}

/// A primary killed under load: only the commands in flight on it, and those sent before
/// its replica took over, fail; the proxy then routes to the new primary, within the
/// cluster's own failover time plus a topology read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_costs_only_the_commands_meant_for_it_until_failover() {
    let mut cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let addresses = cluster.addresses();
    let map = slot_map(&cluster).await;
    let victim = map.shards()[1].primary.clone();
    // Redis's default stops every shard while one has no primary; with full coverage not
    // required (a common production setting), the other shards keep serving.
    for node in &addresses {
        let mut n = cluster.conn(node).await;
        n.call(&["CONFIG", "SET", "cluster-require-full-coverage", "no"])
            .await;
    }
    let mut c = Conn::open(proxy.addr).await;
    let keys: Vec<String> = (0..300).map(|i| format!("fo:{i}")).collect();
    for k in &keys {
        assert_eq!(c.call(&["SET", k, "before"]).await, "+OK\r\n");
    }
    let on_victim: Vec<&String> = keys
        .iter()
        .filter(|k| {
            map.shard_of(respguard::cluster::slot::key_slot(k.as_bytes()))
                .unwrap()
                .primary
                == victim
        })
        .collect();
    assert!(!on_victim.is_empty());
    // Wait for the replicas to hold every key before the kill.
    for node in &addresses {
        let mut n = cluster.conn(node).await;
        n.call(&["WAIT", "1", "2000"]).await;
    }
    let killed_at = Instant::now();
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.addr().to_string() == victim)
        .unwrap();
    cluster.nodes[index].kill();
    let mut errors_on_victim = 0;
    let mut errors_elsewhere = 0;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    let recovered_in = loop {
        let mut all_ok = true;
        for k in &keys {
            let reply = c.call(&["GET", k]).await;
            if reply != "$6\r\nbefore\r\n" {
                all_ok = false;
                *kinds.entry(reply.chars().take(60).collect()).or_default() += 1;
                if on_victim.contains(&k) {
                    errors_on_victim += 1;
                } else {
                    errors_elsewhere += 1;
                }
            }
        }
        if all_ok {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no recovery in 30 s"
        );
    };
    eprintln!(
        "primary killed: recovered in {recovered_in:?}; {errors_on_victim} failed GETs on its keys, {errors_elsewhere} elsewhere: {kinds:?}"
    );
    assert_eq!(
        errors_elsewhere, 0,
        "keys on the other primaries kept working"
    );
    proxy.shutdown().await;
}

/// The guards act through the cluster as in front of one Redis: a SET without expiry gets
/// the default TTL on the node that holds the key (the TTL guard's rewrite names the same
/// key, so the same slot), a HSET's `EVAL` wrapper runs on its key's node, and an oversized
/// value is refused before any node sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guards_act_on_the_node_that_holds_the_key() {
    let cluster = Cluster::start().await;
    let toml = "[[guards.ttl.rules]]\npattern = \"*\"\nttl = \"1h\"\n[[guards.size.rules]]\npattern = \"*\"\nmax_value = \"1KiB\"\n";
    let proxy = proxy_for_cluster(&cluster, toml).await;
    let mut c = Conn::open(proxy.addr).await;
    for i in 0..30 {
        let key = format!("ttl:{i}");
        assert_eq!(c.call(&["SET", &key, "v"]).await, "+OK\r\n");
        let hash = format!("hash:{i}");
        assert_eq!(c.call(&["HSET", &hash, "f", "v"]).await, ":1\r\n");
        for key in [&key, &hash] {
            let ttl = primary_of(&cluster, key).await.call(&["TTL", key]).await;
            let secs: i64 = ttl.trim_start_matches(':').trim().parse().unwrap();
            assert!(
                (3590..=3600).contains(&secs),
                "{key}: TTL {ttl:?} on its node"
            );
        }
    }
    let big = "x".repeat(2000);
    let refused = c.call(&["SET", "big", &big]).await;
    assert!(
        refused.starts_with("-ERR") && refused.contains("size"),
        "{refused}"
    );
    assert_eq!(
        primary_of(&cluster, "big")
            .await
            .call(&["EXISTS", "big"])
            .await,
        ":0\r\n"
    );
    proxy.shutdown().await;
}

/// A primary killed while a pipeline is in flight: every command gets exactly one reply,
/// in order; those in flight on the lost node get the connection-lost error naming it, the
/// others their values; the client stays connected, and once the replica has taken over
/// every key answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_pipeline_fails_only_its_commands_in_flight() {
    let mut cluster = Cluster::start().await;
    for node in cluster.addresses() {
        let mut n = cluster.conn(&node).await;
        n.call(&["CONFIG", "SET", "cluster-require-full-coverage", "no"])
            .await;
    }
    let proxy = proxy_for_cluster(&cluster, "").await;
    let mut c = Conn::open(proxy.addr).await;
    let keys: Vec<String> = (0..200).map(|i| format!("mid:{i}")).collect();
    for k in &keys {
        c.call(&["SET", k, "value"]).await;
    }
    for node in cluster.addresses() {
        cluster.conn(&node).await.call(&["WAIT", "1", "2000"]).await;
    }
    // The victim: the primary of the first key. A blocked BLPOP on its node holds the
    // pipeline's commands for that node in flight while it is killed.
    let map = slot_map(&cluster).await;
    let slot_of = |k: &str| respguard::cluster::slot::key_slot(k.as_bytes());
    let victim = map.shard_of(slot_of(&keys[0])).unwrap().primary.clone();
    let blocker = (0..)
        .map(|i| format!("block:{i}"))
        .find(|k| map.shard_of(slot_of(k)).unwrap().primary == victim)
        .unwrap();
    let mut batch = encode(&["BLPOP", &blocker, "0"]);
    for k in &keys {
        batch.extend_from_slice(&encode(&["GET", k]));
    }
    c.send(&batch).await;
    let mut watcher = cluster.conn(&victim).await;
    eventually!(WAIT, "the BLPOP blocked on the victim", {
        watcher
            .call(&["CLIENT", "LIST"])
            .await
            .contains("cmd=blpop")
    });
    drop(watcher);
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.addr().to_string() == victim)
        .unwrap();
    cluster.nodes[index].kill();
    let lost = format!("-ERR respguard: connection to cluster node {victim} lost");
    let blpop = c.replies(1).await;
    assert!(blpop.starts_with(&lost), "{blpop}");
    for k in &keys {
        let reply = c.replies(1).await;
        let on_victim = map.shard_of(slot_of(k)).unwrap().primary == victim;
        if reply != "$5\r\nvalue\r\n" {
            assert!(on_victim && reply.starts_with(&lost), "{k}: {reply}");
        }
    }
    // The same connection, once the replica has taken over: every key answers.
    eventually!(
        Duration::from_secs(30),
        "every key answers after the failover",
        {
            let mut all = true;
            for k in &keys {
                all &= c.call(&["GET", k]).await == "$5\r\nvalue\r\n";
            }
            all
        }
    );
    proxy.shutdown().await;
}

/// A client that goes away takes its router's node connections with it: each node's
/// client count comes back to what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_closes_its_node_connections() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let connected = |info: String| -> usize {
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    // The monitor's own connections (a router, one to each primary) open at its first
    // polls: counted in `before`.
    let mut polled = proxy.pressure.subscribe_polls();
    while proxy.pressure.polls() < 2 {
        tokio::time::timeout(WAIT, polled.changed())
            .await
            .unwrap()
            .unwrap();
    }
    let mut before = Vec::new();
    for node in cluster.addresses() {
        before.push(connected(
            cluster.conn(&node).await.call(&["INFO", "clients"]).await,
        ));
    }
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = Conn::open(proxy.addr).await;
        for i in 0..30 {
            c.call(&["SET", &format!("gone:{i}"), "v"]).await;
        }
        clients.push(c);
    }
    drop(clients);
    for (node, before) in cluster.addresses().iter().zip(before) {
        let mut n = cluster.conn(node).await;
        eventually!(WAIT, format!("{node} back to its client count"), {
            // This connection itself is one more than before.
            connected(n.call(&["INFO", "clients"]).await) <= before + 1
        });
    }
    proxy.shutdown().await;
}

/// Shedding per shard: one primary filled past the hard level (its `maxmemory` lowered
/// under what it holds) sheds writes to its keys while keys on the other shards, and reads
/// and deletes on the full one, pass; raising its limit again lifts the shedding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_shard_sheds_writes_to_its_keys_only() {
    let cluster = Cluster::start().await;
    let toml = "[monitor]\ninterval = \"50ms\"\n[guards.shed]\nsoft_enter = 0.5\nsoft_exit = 0.4\nhard_enter = 0.75\nhard_exit = 0.65\n";
    let proxy = proxy_for_cluster(&cluster, toml).await;
    let map = slot_map(&cluster).await;
    let slot_of = |k: &str| respguard::cluster::slot::key_slot(k.as_bytes());
    let full = map.shards()[0].primary.clone();
    let on = |k: &String| map.shard_of(slot_of(k)).unwrap().primary.clone();
    let keys: Vec<String> = (0..60).map(|i| format!("shard:{i}")).collect();
    let mut c = Conn::open(proxy.addr).await;
    for k in &keys {
        assert_eq!(c.call(&["SET", k, "before"]).await, "+OK\r\n");
    }
    // Every primary gets a generous limit, then the full one a limit just above what it
    // uses: past the hard level (75%).
    for shard in map.shards() {
        let mut n = cluster.conn(&shard.primary).await;
        n.call(&["CONFIG", "SET", "maxmemory", "1gb"]).await;
    }
    let mut node = cluster.conn(&full).await;
    let info = node.call(&["INFO", "memory"]).await;
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    node.call(&["CONFIG", "SET", "maxmemory", &(used * 11 / 10).to_string()])
        .await;
    let (on_full, elsewhere): (Vec<&String>, Vec<&String>) =
        keys.iter().partition(|k| on(k) == full);
    assert!(!on_full.is_empty() && !elsewhere.is_empty());
    eventually!(WAIT, "writes to the full shard's keys shed", {
        c.call(&["SET", on_full[0], "after"])
            .await
            .starts_with("-OOM respguard: ")
    });
    for k in &on_full {
        let reply = c.call(&["SET", k, "after"]).await;
        assert!(reply.starts_with("-OOM respguard: "), "{k}: {reply}");
        let read = c.call(&["GET", k]).await;
        assert!(read.starts_with('$'), "reads pass: {k}: {read}");
    }
    for k in &elsewhere {
        assert_eq!(
            c.call(&["SET", k, "after"]).await,
            "+OK\r\n",
            "{k} on another shard"
        );
    }
    assert_eq!(c.call(&["DEL", on_full[0]]).await, ":1\r\n", "deletes pass");
    let admin = proxy.admin_addr.expect("admin listener");
    let series = format!("respguard_shard_shedding_level{{node=\"{full}\"}}");
    assert_eq!(
        metric(admin, &series).await,
        Some(2.0),
        "the full shard's level, by node"
    );
    node.call(&["CONFIG", "SET", "maxmemory", "1gb"]).await;
    eventually!(WAIT, "the full shard's keys writable again", {
        c.call(&["SET", on_full[1], "again"]).await == "+OK\r\n"
    });
    proxy.shutdown().await;
}

/// `CLUSTER FAILOVER` on a replica under load (a planned failover: the primary hands over
/// its slots, then answers `-MOVED`): no client sees an error, every value read back is
/// the one written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_under_load_is_invisible_to_clients() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let map = slot_map(&cluster).await;
    let old_primary = map.shards()[0].primary.clone();
    let replica = map.shards()[0].replicas[0].clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..20 {
        let stop = std::sync::Arc::clone(&stop);
        let addr = proxy.addr;
        clients.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await;
            let (mut round, mut errors) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || round < 5 {
                round += 1;
                let key = format!("pf{client}:{}", round % 16);
                let value = format!("r{round}");
                let set = c.call(&["SET", &key, &value]).await;
                let got = c.call(&["GET", &key]).await;
                let want = format!("${}\r\n{value}\r\n", value.len());
                if set != "+OK\r\n" || got != want {
                    errors.push(format!("{key}: SET {set:?}, GET {got:?}"));
                }
            }
            (round, errors)
        }));
    }
    let began = Instant::now();
    let mut r = cluster.conn(&replica).await;
    assert_eq!(r.call(&["CLUSTER", "FAILOVER"]).await, "+OK\r\n");
    eventually!(WAIT, "the replica is a primary", {
        r.call(&["ROLE"]).await.contains("master")
    });
    let mut old = cluster.conn(&old_primary).await;
    eventually!(WAIT, "the old primary is a replica", {
        old.call(&["ROLE"]).await.contains("slave")
    });
    let switched_in = began.elapsed();
    // The load goes on for a while on the new primary (MOVED from the old one followed).
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut rounds = 0;
    for client in clients {
        let (done, errors) = client.await.unwrap();
        rounds += done;
        assert!(
            errors.is_empty(),
            "{} errors, first: {}",
            errors.len(),
            errors[0]
        );
    }
    eprintln!("planned failover took {switched_in:?}; 20 clients ran {rounds} SET+GET rounds without an error");
    proxy.shutdown().await;
}

/// A subscriber that stops reading does not pile messages up in the proxy: its router
/// stops reading the node once 4 MiB wait for the session, so the messages wait in Redis,
/// whose own pub/sub output limit (1 MiB here) disconnects the proxy's connection; the
/// client then sees its connection end, as a slow subscriber of one Redis does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_let_go_by_redis_s_limit() {
    let cluster = Cluster::start().await;
    for node in cluster.addresses() {
        let mut n = cluster.conn(&node).await;
        let limit = n
            .call(&[
                "CONFIG",
                "SET",
                "client-output-buffer-limit",
                "pubsub 1mb 0 0",
            ])
            .await;
        assert_eq!(limit, "+OK\r\n");
    }
    let proxy = proxy_for_cluster(&cluster, "").await;
    let mut subscriber = Conn::open(proxy.addr).await;
    assert!(subscriber
        .call(&["SUBSCRIBE", "flood"])
        .await
        .contains("subscribe"));
    let mut publisher = Conn::open(proxy.addr).await;
    let message = "m".repeat(10_000);
    let mut published = 0;
    // 200 MB offered to a subscriber that reads nothing: without the bound the proxy would
    // hold it all.
    while published < 20_000 {
        let reply = publisher.call(&["PUBLISH", "flood", &message]).await;
        published += 1;
        if reply == ":0\r\n" {
            break;
        }
    }
    assert!(published < 20_000, "Redis never let the subscriber go");
    let rest = subscriber.read_to_close().await;
    assert!(
        rest.len() < 64 * 1024 * 1024,
        "read {} bytes before the end",
        rest.len()
    );
    proxy.shutdown().await;
}

/// `upstream.reply_timeout` for per-client cluster connections (not multiplexed): with
/// `reply_timeout = "300ms"`, a BLPOP waiting a second is answered as a direct connection
/// answers it; then, its primary paused (`CLIENT PAUSE 2500 ALL`), a client's GET and
/// another's pipelined SET and GET, each on its own connection to that node, get
/// `no reply within 300ms, upstream.reply_timeout` well before the pause ends, counted;
/// a BLPOP sent during the pause with a one-second timeout is not cut (it runs once the
/// pause ends, answered as a direct connection's); and after the pause each client's
/// next command succeeds on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_node_connections_fail_what_a_silent_node_owes_within_the_reply_timeout() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "[upstream]\nreply_timeout = \"300ms\"\n").await;
    let admin_addr = proxy.admin_addr.expect("admin listener");
    let map = slot_map(&cluster).await;
    let node = map.shards()[0].primary.clone();
    let on_node = |prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| {
                let slot = respguard::cluster::slot::key_slot(k.as_bytes());
                map.shard_of(slot).unwrap().primary == node
            })
            .unwrap()
    };
    let (key, other, queue) = (on_node("silent:"), on_node("silent2:"), on_node("silentq:"));
    let mut direct = cluster.conn(&node).await;
    let nil = direct.call(&["BLPOP", &queue, "1"]).await;

    let mut blocked = Conn::open(proxy.addr).await;
    let began = Instant::now();
    assert_eq!(blocked.call(&["BLPOP", &queue, "1"]).await, nil);
    assert!(began.elapsed() >= Duration::from_millis(900));

    let mut a = Conn::open(proxy.addr).await;
    let mut b = Conn::open(proxy.addr).await;
    assert_eq!(a.call(&["SET", &key, "v"]).await, "+OK\r\n");
    assert_eq!(b.call(&["GET", &key]).await, "$1\r\nv\r\n");
    let timeouts = "respguard_upstream_reply_timeouts_total";
    let before = metric(admin_addr, timeouts).await.unwrap_or(0.0);

    let mut admin = cluster.conn(&node).await;
    assert_eq!(
        admin.call(&["CLIENT", "PAUSE", "2500", "ALL"]).await,
        "+OK\r\n"
    );
    let paused = Instant::now();
    a.cmd(&["GET", &key]).await;
    let mut batch = encode(&["SET", &other, "w"]);
    batch.extend(encode(&["GET", &key]));
    b.send(&batch).await;
    blocked.cmd(&["BLPOP", &queue, "1"]).await;
    let error = format!(
        "-ERR respguard: connection to cluster node {node} lost (no reply within 300ms, upstream.reply_timeout)\r\n"
    );
    assert_eq!(String::from_utf8_lossy(&a.reply().await), error, "a");
    for i in 0..2 {
        assert_eq!(String::from_utf8_lossy(&b.reply().await), error, "b {i}");
    }
    let waited = paused.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "the errors took {waited:?}"
    );
    let counted = metric(admin_addr, timeouts).await.unwrap_or(0.0);
    assert!(counted >= before + 2.0, "{before} then {counted}");

    assert_eq!(admin.call(&["CLIENT", "UNPAUSE"]).await, "+OK\r\n");
    let unpaused = Instant::now();
    assert_eq!(String::from_utf8_lossy(&blocked.reply().await), nil);
    assert!(unpaused.elapsed() >= Duration::from_millis(900));
    assert_eq!(a.call(&["GET", &key]).await, "$1\r\nv\r\n");
    assert_eq!(b.call(&["SET", &other, "w"]).await, "+OK\r\n");
    assert_eq!(b.call(&["GET", &other]).await, "$1\r\nw\r\n");
    proxy.shutdown().await;
}

/// `CLIENT SETNAME` inside a transaction names the client's connection once `EXEC` ran it,
/// on every node, as it names a direct connection: `CLIENT GETNAME` answers the name, and
/// each primary the client then reads a key on lists its connection under that name. A
/// transaction that did not run (`DISCARD`) names nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_set_inside_a_transaction_is_the_connections_on_every_node() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let nodes = crate::cluster_mux::primaries(&cluster).await;
    let first = crate::cluster_mux::key_on(&cluster, &nodes[0], "txname:").await;
    let mut direct = cluster.conn(&nodes[0]).await;
    let mut c = Conn::open(proxy.addr).await;
    let discarded: &[&[&str]] = &[
        &["MULTI"],
        &["SET", &first, "x"],
        &["CLIENT", "SETNAME", "never"],
        &["DISCARD"],
        &["CLIENT", "GETNAME"],
    ];
    let want = crate::identities::pipelined(&mut direct, discarded).await;
    assert!(want.ends_with("$-1\r\n"), "{want}");
    assert_eq!(crate::identities::pipelined(&mut c, discarded).await, want);
    let named: &[&[&str]] = &[
        &["MULTI"],
        &["SET", &first, "x"],
        &["CLIENT", "SETNAME", "txname"],
        &["EXEC"],
        &["CLIENT", "GETNAME"],
    ];
    let want = crate::identities::pipelined(&mut direct, named).await;
    assert!(
        want.ends_with("*2\r\n+OK\r\n+OK\r\n$6\r\ntxname\r\n"),
        "{want}"
    );
    assert_eq!(crate::identities::pipelined(&mut c, named).await, want);
    for node in &nodes {
        let key = crate::cluster_mux::key_on(&cluster, node, "txname:read:").await;
        assert_eq!(c.call(&["GET", &key]).await, "$-1\r\n");
        let listed = crate::cluster_mux::named_on(&cluster, node, "txname").await;
        assert!(!listed.is_empty(), "{node}: no connection named txname");
    }
    proxy.shutdown().await;
}
