//! Reading from replicas through the proxy in front of a real Redis Cluster (three
//! primaries, a replica each): `[[upstream.read_from]]` rules send reads of matching keys
//! to a replica of their shard, proven by the nodes' own `INFO commandstats` (which node
//! ran how many `GET`s), never a mock. Also `SCRIPT EXISTS`, asked of every primary.

use std::time::{Duration, Instant};

use crate::cluster_harness::Cluster;
use crate::cluster_proxy::{proxy_for_cluster, slot_map};
use crate::harness::*;
use crate::memory::ProxyProcess;
use respguard::cluster::slot::key_slot;
use respguard::cluster::topology::SlotMap;

/// Reads of `r:` keys from replicas.
const R_FROM_REPLICA: &str = "[[upstream.read_from]]\npattern = \"r:*\"\nfrom = \"replica\"\n";

/// The primaries' and the replicas' addresses.
fn roles(map: &SlotMap) -> (Vec<String>, Vec<String>) {
    let primaries = map.shards().iter().map(|s| s.primary.clone()).collect();
    let replicas: Vec<String> = map
        .shards()
        .iter()
        .flat_map(|s| s.replicas.iter().cloned())
        .collect();
    assert_eq!(replicas.len(), 3, "a replica per shard: {map:?}");
    (primaries, replicas)
}

/// `cmdstat_<command>` calls, added up over the nodes at `addresses`, as they count them.
async fn calls(cluster: &Cluster, addresses: &[String], command: &str) -> u64 {
    let mut total = 0;
    let field = format!("cmdstat_{command}:calls=");
    for address in addresses {
        let info = cluster
            .conn(address)
            .await
            .call(&["INFO", "commandstats"])
            .await;
        if let Some(at) = info.find(&field) {
            let rest = &info[at + field.len()..];
            let end = rest.find(',').unwrap();
            total += rest[..end].parse::<u64>().unwrap();
        }
    }
    total
}

/// `CONFIG RESETSTAT` on every node.
async fn reset_stats(cluster: &Cluster) {
    for address in cluster.addresses() {
        assert_eq!(
            cluster
                .conn(&address)
                .await
                .call(&["CONFIG", "RESETSTAT"])
                .await,
            "+OK\r\n"
        );
    }
}

/// `SET key value` through the proxy, then `WAIT 1 0` through the proxy (which asks the
/// node that took the write), so the key's replica holds it.
async fn write_and_wait(c: &mut Conn, key: &str, value: &str) {
    assert_eq!(c.call(&["SET", key, value]).await, "+OK\r\n");
    assert_eq!(c.call(&["WAIT", "1", "0"]).await, ":1\r\n");
}

/// Where a step's commands ran: (calls on primaries, calls on replicas) of one command
/// since the last step that counted it.
struct Counts<'a> {
    cluster: &'a Cluster,
    primaries: Vec<String>,
    replicas: Vec<String>,
    last: std::collections::HashMap<String, (u64, u64)>,
}

impl Counts<'_> {
    async fn step(&mut self, command: &str) -> (u64, u64) {
        let now = (
            calls(self.cluster, &self.primaries, command).await,
            calls(self.cluster, &self.replicas, command).await,
        );
        let last = self.last.insert(command.to_string(), now).unwrap_or((0, 0));
        (now.0 - last.0, now.1 - last.1)
    }
}

/// With `from = "replica"` for `r:*`: GETs of `r:` keys run on replicas and give the
/// values written (after `WAIT 1 0` through the proxy), other keys stay on primaries; a
/// read inside MULTI or after WATCH runs on the primary; EVAL runs on the primary and
/// EVAL_RO on the replica; the client's own READWRITE and RESET leave replica reads
/// working (no redirection: the primaries' counts stay still); an MGET across slots is
/// split onto the replicas and equals a direct read of the primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_matched_by_a_replica_rule_run_on_replicas_and_nothing_else_does() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, R_FROM_REPLICA).await;
    let (primaries, replicas) = roles(&slot_map(&cluster).await);
    let mut c = Conn::open(proxy.addr).await;
    let keys: Vec<String> = (0..60).map(|i| format!("r:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        write_and_wait(&mut c, k, &format!("v{i}")).await;
        write_and_wait(&mut c, &format!("o:{i}"), &format!("w{i}")).await;
    }
    reset_stats(&cluster).await;
    let mut counts = Counts {
        cluster: &cluster,
        primaries: primaries.clone(),
        replicas: replicas.clone(),
        last: Default::default(),
    };

    for (i, k) in keys.iter().enumerate() {
        let v = format!("v{i}");
        assert_eq!(
            c.call(&["GET", k]).await,
            format!("${}\r\n{v}\r\n", v.len())
        );
    }
    assert_eq!(
        counts.step("get").await,
        (0, 60),
        "r: GETs on replicas only"
    );
    for i in 0..60 {
        let v = format!("w{i}");
        assert_eq!(
            c.call(&["GET", &format!("o:{i}")]).await,
            format!("${}\r\n{v}\r\n", v.len())
        );
    }
    assert_eq!(counts.step("get").await, (60, 0), "other keys on primaries");

    // Inside MULTI, and between WATCH and UNWATCH: the primary.
    assert_eq!(c.call(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.call(&["GET", "r:1"]).await, "+QUEUED\r\n");
    assert_eq!(c.call(&["EXEC"]).await, "*1\r\n$2\r\nv1\r\n");
    assert_eq!(counts.step("get").await, (1, 0), "a read in MULTI");
    assert_eq!(c.call(&["WATCH", "r:1"]).await, "+OK\r\n");
    assert_eq!(c.call(&["GET", "r:1"]).await, "$2\r\nv1\r\n");
    assert_eq!(counts.step("get").await, (1, 0), "a read after WATCH");
    assert_eq!(c.call(&["UNWATCH"]).await, "+OK\r\n");
    assert_eq!(c.call(&["GET", "r:1"]).await, "$2\r\nv1\r\n");
    assert_eq!(counts.step("get").await, (0, 1), "after UNWATCH");

    // Scripts: EVAL is never sent to a replica, EVAL_RO is.
    let script = "return redis.call('GET', KEYS[1])";
    assert_eq!(c.call(&["EVAL", script, "1", "r:2"]).await, "$2\r\nv2\r\n");
    assert_eq!(counts.step("eval").await, (1, 0), "EVAL");
    assert_eq!(
        c.call(&["EVAL_RO", script, "1", "r:2"]).await,
        "$2\r\nv2\r\n"
    );
    assert_eq!(counts.step("eval_ro").await, (0, 1), "EVAL_RO");
    let no_writes = "#!lua flags=no-writes\nreturn redis.call('GET', KEYS[1])";
    assert_eq!(
        c.call(&["EVAL", no_writes, "1", "r:2"]).await,
        "$2\r\nv2\r\n"
    );
    assert_eq!(counts.step("eval").await, (0, 1), "a no-writes EVAL");
    assert_eq!(counts.step("get").await, (1, 2), "the scripts' own GETs");

    // The client's own READWRITE and RESET do not take READONLY from the proxy's replica
    // connections: reads stay there, with no -MOVED to follow.
    assert_eq!(c.call(&["READWRITE"]).await, "+OK\r\n");
    assert_eq!(c.call(&["GET", "r:3"]).await, "$2\r\nv3\r\n");
    assert_eq!(counts.step("get").await, (0, 1), "after READWRITE");
    assert_eq!(c.call(&["RESET"]).await, "+RESET\r\n");
    assert_eq!(c.call(&["GET", "r:4"]).await, "$2\r\nv4\r\n");
    assert_eq!(counts.step("get").await, (0, 1), "after RESET");

    // MGET across slots: each part on its slot's replica; the values a direct read of the
    // primaries gives.
    let some: Vec<&str> = keys[..20].iter().map(String::as_str).collect();
    let mut direct = format!("*{}\r\n", some.len());
    for k in &some {
        let slot = key_slot(k.as_bytes());
        let map = slot_map(&cluster).await;
        let mut primary = cluster.conn(&map.shard_of(slot).unwrap().primary).await;
        direct.push_str(&primary.call(&["GET", k]).await);
    }
    counts.step("get").await;
    let mut mget = vec!["MGET"];
    mget.extend(&some);
    assert_eq!(c.call(&mget).await, direct);
    let slots: std::collections::BTreeSet<u16> =
        some.iter().map(|k| key_slot(k.as_bytes())).collect();
    assert_eq!(
        counts.step("mget").await,
        (0, slots.len() as u64),
        "one MGET per slot, on replicas"
    );
    proxy.shutdown().await;
}

/// With `from = "prefer-replica"`: reads run on the replica until it is killed (SIGKILL)
/// with reads in flight, then on the primary, every reply the value written and none an
/// error (reads in flight on the lost replica are sent again to the primary), for long
/// enough that the proxy tries the dead replica again and falls back again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_replica_reads_fall_back_to_the_primary_when_the_replica_is_killed() {
    let mut cluster = Cluster::start().await;
    let rule = "[[upstream.read_from]]\npattern = \"p:*\"\nfrom = \"prefer-replica\"\n";
    let proxy = proxy_for_cluster(&cluster, rule).await;
    let map = slot_map(&cluster).await;
    let shard = &map.shards()[0];
    let (primary, replica) = (vec![shard.primary.clone()], shard.replicas.clone());
    assert_eq!(replica.len(), 1);
    let keys: Vec<String> = (0..2000)
        .map(|i| format!("p:{i}"))
        .filter(|k| map.shard_of(key_slot(k.as_bytes())) == Some(shard))
        .take(20)
        .collect();
    let mut c = Conn::open(proxy.addr).await;
    for k in &keys {
        write_and_wait(&mut c, k, k).await;
    }
    reset_stats(&cluster).await;
    let expected = |k: &str| format!("${}\r\n{k}\r\n", k.len());
    for k in &keys {
        assert_eq!(c.call(&["GET", k]).await, expected(k));
    }
    assert_eq!(calls(&cluster, &replica, "get").await, 20, "on the replica");
    assert_eq!(calls(&cluster, &primary, "get").await, 0);

    // A pipeline of reads, the replica killed while they are under way.
    let rounds = 50;
    for _ in 0..rounds {
        for k in &keys {
            c.cmd(&["GET", k]).await;
        }
    }
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.addr().to_string() == replica[0])
        .unwrap();
    cluster.nodes[victim].kill();
    let mut errors = Vec::new();
    for _ in 0..rounds {
        for k in &keys {
            let reply = String::from_utf8_lossy(&c.reply().await).into_owned();
            if reply != expected(k) {
                errors.push(reply);
            }
        }
    }
    // Then one read after another, past the time the dead replica is passed over.
    let killed = Instant::now();
    let mut reads = 0;
    while killed.elapsed() < respguard::cluster::replica::DOWN_FOR + Duration::from_secs(2) {
        for k in &keys {
            let reply = c.call(&["GET", k]).await;
            reads += 1;
            if reply != expected(k) {
                errors.push(reply);
            }
        }
    }
    let on_primary = calls(&cluster, &primary, "get").await;
    eprintln!(
        "replica killed: {reads} reads after the pipeline, {on_primary} GETs on the primary, errors: {errors:?}"
    );
    assert!(errors.is_empty(), "no read failed: {errors:?}");
    assert!(on_primary >= reads, "the reads went to the primary");
    proxy.shutdown().await;
}

/// `SCRIPT EXISTS` through the proxy asks every primary: after `SCRIPT LOAD` through the
/// proxy (which loads on every primary) it is 1; after `SCRIPT FLUSH` on one primary
/// directly it is 0, since a script run on that primary's keys would not be found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_exists_is_one_only_while_every_primary_has_the_script() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let (primaries, _) = roles(&slot_map(&cluster).await);
    let mut c = Conn::open(proxy.addr).await;
    let other = "0000000000000000000000000000000000000000";
    let loaded = c.call(&["SCRIPT", "LOAD", "return 'x'"]).await;
    let sha = loaded.lines().nth(1).unwrap().to_string();
    assert_eq!(sha.len(), 40, "{loaded}");
    assert_eq!(
        c.call(&["SCRIPT", "EXISTS", &sha, other]).await,
        "*2\r\n:1\r\n:0\r\n"
    );
    for p in &primaries {
        assert_eq!(
            cluster
                .conn(p)
                .await
                .call(&["SCRIPT", "EXISTS", &sha])
                .await,
            "*1\r\n:1\r\n",
            "loaded on {p}"
        );
    }
    assert_eq!(
        cluster
            .conn(&primaries[1])
            .await
            .call(&["SCRIPT", "FLUSH"])
            .await,
        "+OK\r\n"
    );
    assert_eq!(
        c.call(&["SCRIPT", "EXISTS", &sha, other]).await,
        "*2\r\n:0\r\n:0\r\n"
    );
    proxy.shutdown().await;
}

/// `[[upstream.read_from]]` follows a reload, for clients already connected: with no rule
/// a client's GETs of `r:` keys run on primaries; once `RESPGUARD RELOAD` has put the
/// replica rule in force (no restart needed), the same connection's GETs run on replicas,
/// each giving the value written; once a reload has taken the rule away, on primaries
/// again. The nodes' own `INFO commandstats` say where each ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_rules_follow_a_reload_for_clients_already_connected() {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("respguard.toml");
    std::fs::write(&config, "").unwrap();
    let url = format!("redis-cluster://{}", cluster.addresses()[..2].join(","));
    let proxy = ProxyProcess::start(&url, &["--config", config.to_str().unwrap()]);
    let (primaries, replicas) = roles(&slot_map(&cluster).await);
    let mut c = Conn::open(proxy.addr).await;
    let keys: Vec<String> = (0..20).map(|i| format!("r:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        write_and_wait(&mut c, k, &format!("v{i}")).await;
    }
    reset_stats(&cluster).await;
    let mut counts = Counts {
        cluster: &cluster,
        primaries,
        replicas,
        last: Default::default(),
    };
    let read_all = async |c: &mut Conn| {
        for (i, k) in keys.iter().enumerate() {
            let v = format!("v{i}");
            assert_eq!(
                c.call(&["GET", k]).await,
                format!("${}\r\n{v}\r\n", v.len())
            );
        }
    };

    read_all(&mut c).await;
    assert_eq!(counts.step("get").await, (20, 0), "no rule: primaries");

    std::fs::write(&config, R_FROM_REPLICA).unwrap();
    assert_eq!(
        c.call(&["RESPGUARD", "RELOAD"]).await,
        "+OK generation 2\r\n",
        "read rules apply without a restart"
    );
    read_all(&mut c).await;
    assert_eq!(
        counts.step("get").await,
        (0, 20),
        "after the reload: replicas"
    );

    std::fs::write(&config, "").unwrap();
    assert_eq!(
        c.call(&["RESPGUARD", "RELOAD"]).await,
        "+OK generation 3\r\n"
    );
    read_all(&mut c).await;
    assert_eq!(counts.step("get").await, (20, 0), "rule removed: primaries");
}
