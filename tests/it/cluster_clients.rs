//! Real client libraries through the proxy in front of a real Redis Cluster (three
//! primaries, three replicas): redis-py and ioredis as cluster-unaware clients, the same
//! libraries' cluster clients (which find one node, the proxy, serving every slot), and
//! BullMQ with its documented cluster setting (a hash-tagged prefix). Each scenario script
//! (`tests/clients/cluster_*`) prints what the client saw; a run through the proxy must
//! equal a run against a standalone Redis directly, so nothing is hard-coded but the
//! number of jobs. A missing library fails the test with the command that installs it.
//! The last tests check, with raw connections, what those libraries' users rely on beyond
//! the scenarios (PUBLISH's count, CLIENT TRACKING's invalidations, commands on a RESP3
//! subscribed connection, RANDOMKEY), each against one Redis.

use std::net::SocketAddr;

use serde_json::Value;

use crate::cluster_harness::Cluster;
use crate::cluster_proxy::proxy_for_cluster;
use crate::harness::*;

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

/// A scenario script of `tests/clients/`: how to run it, and how to install its library.
struct Script {
    program: &'static str,
    file: &'static str,
    install: &'static str,
}

const REDIS_PY: Script = Script {
    program: "python3",
    file: "cluster_redis_py.py",
    install: "pip install redis (scripts/install-test-deps.sh)",
};

const IOREDIS: Script = Script {
    program: "node",
    file: "cluster_ioredis.js",
    install: "cd tests/clients && npm ci",
};

const BULLMQ: Script = Script {
    program: "node",
    file: "cluster_bullmq.js",
    install: "cd tests/clients && npm ci",
};

/// Run `script` with `args` after the port of `addr`; the JSON of its last line.
async fn run(script: &Script, addr: SocketAddr, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(script.program)
        .arg(script.file)
        .arg(addr.port().to_string())
        .args(args)
        .current_dir(CLIENTS)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e} ({})", script.program, script.install));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {args:?} against {addr} failed ({}):\n{stdout}\n{stderr}",
        script.file,
        script.install
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{} {args:?} printed {stdout:?}: {e}", script.file))
}

/// Assert two transcripts (`[[step, result], …]`) are equal, naming the first step whose
/// result differs.
fn assert_same_transcript(what: &str, direct: &Value, proxied: &Value) {
    let (want, got) = (steps(direct), steps(proxied));
    assert!(!want.is_empty(), "{what}: the direct run recorded nothing");
    for (w, g) in want.iter().zip(got) {
        assert_eq!(
            w, g,
            "{what}: step {} differs (left: one Redis directly, right: the proxy in front of the cluster)",
            w[0]
        );
    }
    assert_eq!(want.len(), got.len(), "{what}: a different number of steps");
}

fn steps(run: &Value) -> &Vec<Value> {
    run["transcript"].as_array().expect("a transcript")
}

/// `script`'s scenario with `args` against a fresh standalone Redis directly and through
/// `proxy`: the same transcript; the proxied run's JSON.
async fn same_as_one_redis(script: &Script, proxy: SocketAddr, args: &[&str]) -> Value {
    let direct = RedisServer::start();
    let want = run(script, direct.addr(), args).await;
    let got = run(script, proxy, args).await;
    assert_same_transcript(&format!("{} {args:?}", script.file), &want, &got);
    got
}

/// redis-py's `redis.Redis` (sync and asyncio, RESP2 and RESP3) runs an application's
/// commands through the proxy in front of the cluster exactly as against one Redis:
/// pipelines over every shard with an error in the middle, transactions on hash-tagged
/// keys (WATCH, an abort by another client's write, an error inside EXEC), scripts,
/// blocking pops, pub/sub with patterns, and MGET/MSET/EXISTS/TOUCH/DEL/UNLINK/KEYS/SCAN
/// across slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_unaware_of_the_cluster_sees_one_redis() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    for protocol in ["2", "3"] {
        same_as_one_redis(&REDIS_PY, proxy.addr, &["redis", protocol, "app"]).await;
    }
    proxy.shutdown().await;
}

/// ioredis's `new Redis` runs the same kind of application through the proxy in front of
/// the cluster exactly as against one Redis (see the redis-py test; scripts as a defined
/// command, EVALSHA falling back to EVAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ioredis_unaware_of_the_cluster_sees_one_redis() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    same_as_one_redis(&IOREDIS, proxy.addr, &["redis", "app"]).await;
    proxy.shutdown().await;
}

/// The nodes a cluster client's run says it discovered.
fn nodes(run: &Value) -> Vec<String> {
    run["nodes"]
        .as_array()
        .expect("a node list")
        .iter()
        .map(|n| n.as_str().expect("host:port").to_string())
        .collect()
}

/// Cluster-aware clients pointed at the proxy, redis-py's `RedisCluster` (RESP2 and RESP3)
/// and ioredis's `Redis.Cluster`, discover one node, the proxy, and their single-key
/// commands, MGET/MSET/EXISTS/DEL across slots, pipelines and a transaction on one slot
/// give what the libraries' plain clients get from one Redis. redis-py's cluster client
/// pointed at the cluster itself discovers the cluster's nodes (at least its three
/// primaries) and gets the same: the proxy changes nothing a cluster client sees but the
/// number of nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_clients_find_the_proxy_as_the_only_node() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let only_the_proxy = vec![proxy.addr.to_string()];
    let direct = RedisServer::start();
    for protocol in ["2", "3"] {
        let want = run(&REDIS_PY, direct.addr(), &["redis", protocol, "keys"]).await;
        let through = run(&REDIS_PY, proxy.addr, &["cluster", protocol, "keys"]).await;
        assert_eq!(nodes(&through), only_the_proxy, "RedisCluster's nodes");
        assert_same_transcript(&format!("RedisCluster RESP{protocol}"), &want, &through);
        let first: SocketAddr = cluster.addresses()[0].parse().unwrap();
        let on_the_cluster = run(&REDIS_PY, first, &["cluster", protocol, "keys"]).await;
        let found = nodes(&on_the_cluster);
        assert!(
            found.len() >= crate::cluster_harness::NODES / 2
                && found.iter().all(|n| cluster.addresses().contains(n)),
            "RedisCluster on the cluster itself found {found:?}"
        );
        assert_same_transcript(
            &format!("RedisCluster RESP{protocol} on the cluster itself"),
            &on_the_cluster,
            &through,
        );
    }
    let want = run(&IOREDIS, direct.addr(), &["redis", "keys"]).await;
    let through = run(&IOREDIS, proxy.addr, &["cluster", "keys"]).await;
    assert_eq!(nodes(&through), only_the_proxy, "Redis.Cluster's nodes");
    assert_same_transcript("Redis.Cluster", &want, &through);
    proxy.shutdown().await;
}

/// BullMQ with its cluster setting (`prefix: '{bull}'`), connected through the proxy in
/// front of the cluster both as a plain connection and as a `Redis.Cluster`: every job
/// added (one at a time and in bulk) is processed exactly once, with no error; a delayed
/// job, a job retried after two failures and a flow (a parent waiting for its two
/// children) complete; QueueEvents sees every completion. The report (job counts, return
/// values, attempts, the parent's result) equals the same run's against one Redis, and
/// every key the queue wrote sits on one primary (the hash tag's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_with_a_hash_tagged_prefix_processes_every_job() {
    const JOBS: usize = 200;
    let jobs = JOBS.to_string();
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let direct = RedisServer::start();
    let want = run(&BULLMQ, direct.addr(), &["redis", &jobs]).await;
    assert_eq!(want["errors"], serde_json::json!([]), "{want}");
    let every_job: Vec<usize> = (0..JOBS).collect();
    assert_eq!(want["processed"], serde_json::json!(every_job), "{want}");
    assert_eq!(want["parent"], serde_json::json!([10, 20]), "{want}");
    for client in ["redis", "cluster"] {
        Conn::open(proxy.addr).await.call(&["FLUSHALL"]).await;
        let got = run(&BULLMQ, proxy.addr, &[client, &jobs]).await;
        assert_eq!(got, want, "BullMQ over a {client} connection");
        assert_eq!(
            primaries_holding_keys(&cluster).await,
            1,
            "the queue's keys share one slot"
        );
    }
    proxy.shutdown().await;
}

/// How many of the cluster's primaries hold at least one key.
async fn primaries_holding_keys(cluster: &Cluster) -> usize {
    let mut holding = 0;
    for address in cluster.addresses() {
        let mut node = cluster.conn(&address).await;
        if node.call(&["ROLE"]).await.contains("master") && node.call(&["DBSIZE"]).await != ":0\r\n"
        {
            holding += 1;
        }
    }
    holding
}

/// PUBLISH answers how many clients received the message, as one Redis does, whichever
/// node the publisher's previous command went to: a subscriber through the proxy gets
/// every message, and the publisher's count says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_counts_the_subscriber_that_received_the_message() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let direct = RedisServer::start();
    let want = publish_counts(direct.addr()).await;
    assert_eq!(want, ":1\r\n".repeat(6), "one Redis counts the subscriber");
    assert_eq!(publish_counts(proxy.addr).await, want);
    proxy.shutdown().await;
}

/// One subscriber to `news`; a publisher reading a key of each of six slots (so its
/// commands go to every primary), each read followed by a PUBLISH whose message the
/// subscriber receives. The PUBLISH replies, concatenated.
async fn publish_counts(addr: SocketAddr) -> String {
    let mut subscriber = Conn::open(addr).await;
    subscriber.call(&["SUBSCRIBE", "news"]).await;
    let mut publisher = Conn::open(addr).await;
    let mut counts = String::new();
    for key in ["a", "b", "c", "d", "e", "f"] {
        publisher.call(&["GET", key]).await;
        counts.push_str(&publisher.call(&["PUBLISH", "news", key]).await);
        let message = subscriber.replies(1).await;
        assert!(
            message.ends_with(&format!("$1\r\n{key}\r\n")),
            "{message:?}"
        );
    }
    counts
}

/// A RESP3 client with `CLIENT TRACKING ON` (what client-side caches send: redis-py's
/// `cache_config`, node-redis's `clientSideCache`, Lettuce, Jedis) is told of every tracked
/// key another client changes, as by one Redis, whichever node holds the key: a cache that
/// missed one would serve a stale value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tracking_invalidates_keys_on_every_node() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let direct = RedisServer::start();
    let want = invalidations(direct.addr()).await;
    assert!(!want.contains("none"), "one Redis sends every push: {want}");
    assert_eq!(invalidations(proxy.addr).await, want);
    proxy.shutdown().await;
}

/// A tracking client reads each of six keys (on every primary) that another client then
/// changes; what the tracking client receives next for each, within 5 s.
async fn invalidations(addr: SocketAddr) -> String {
    let mut tracking = Conn::open(addr).await;
    tracking.call(&["HELLO", "3"]).await;
    assert_eq!(
        tracking.call(&["CLIENT", "TRACKING", "ON"]).await,
        "+OK\r\n"
    );
    let mut writer = Conn::open(addr).await;
    let mut seen = String::new();
    for key in ["a", "b", "c", "d", "e", "f"] {
        writer.call(&["SET", key, "old"]).await;
        tracking.call(&["GET", key]).await;
        writer.call(&["SET", key, "new"]).await;
        match tokio::time::timeout(std::time::Duration::from_secs(5), tracking.reply()).await {
            Ok(push) => seen.push_str(&String::from_utf8_lossy(&push)),
            Err(_) => seen.push_str(&format!("(none for {key})\r\n")),
        }
    }
    seen
}

/// In RESP3 a subscribed connection may run any command (node-redis and Lettuce share one
/// connection between subscriptions and commands): through the proxy, GET of keys on every
/// node, MGET across slots and DBSIZE while subscribed answer as one Redis does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_commands_while_subscribed_are_routed_as_ever() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let direct = RedisServer::start();
    let want = commands_while_subscribed(direct.addr()).await;
    assert!(!want.contains("MOVED"), "{want}");
    assert_eq!(commands_while_subscribed(proxy.addr).await, want);
    proxy.shutdown().await;
}

/// Six keys set (on every primary), then on one RESP3 connection: SUBSCRIBE, GET of each
/// key, an MGET of three, DBSIZE. The replies, concatenated.
async fn commands_while_subscribed(addr: SocketAddr) -> String {
    let keys = ["a", "b", "c", "d", "e", "f"];
    let mut writer = Conn::open(addr).await;
    writer.call(&["FLUSHALL"]).await;
    for key in keys {
        writer.call(&["SET", key, key]).await;
    }
    let mut c = Conn::open(addr).await;
    c.call(&["HELLO", "3"]).await;
    let mut seen = c.call(&["SUBSCRIBE", "news"]).await;
    for key in keys {
        seen.push_str(&c.call(&["GET", key]).await);
    }
    seen.push_str(&c.call(&["MGET", "a", "b", "c"]).await);
    seen.push_str(&c.call(&["DBSIZE"]).await);
    seen
}

/// RANDOMKEY answers a key whenever the database holds one, as one Redis does, whichever
/// node the connection's previous command went to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomkey_finds_a_key_on_any_node() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let direct = RedisServer::start();
    let want = random_key_after_a_read_elsewhere(direct.addr()).await;
    assert_eq!(want, "$1\r\nb\r\n");
    assert_eq!(random_key_after_a_read_elsewhere(proxy.addr).await, want);
    proxy.shutdown().await;
}

/// The only key, `b`, set; a read of `a` (another primary's slot); then RANDOMKEY's reply.
async fn random_key_after_a_read_elsewhere(addr: SocketAddr) -> String {
    let mut c = Conn::open(addr).await;
    c.call(&["FLUSHALL"]).await;
    c.call(&["SET", "b", "1"]).await;
    c.call(&["GET", "a"]).await;
    c.call(&["RANDOMKEY"]).await
}
