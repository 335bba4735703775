//! Reading from replicas behind Sentinel: with `[[upstream.read_from]]` rules and a
//! `redis-sentinel://` URL, the proxy learns the master's replicas from real sentinels
//! (`SENTINEL REPLICAS`) and sends matched reads there, per client and multiplexed, proven
//! by the nodes' own `INFO commandstats`; everything else behaves as one Redis (compared
//! with a direct connection); and a forced failover under load moves writes to the new
//! primary and reads to the replicas the sentinels then name.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::harness::*;
use crate::sentinel::{address, Deployment, FAILOVER_WAIT, MASTER};
use respguard::app::ProxyHandle;

/// A proxy in `mode` behind the deployment's sentinels (database `db`), with `rules`.
async fn proxy_with_rules(d: &Deployment, mode: Mode, db: u32, rules: &str) -> ProxyHandle {
    let mut raw = respguard::config::RawConfig::from_toml(rules).expect("test config parses");
    raw.proxy.listen = "127.0.0.1:0".into();
    raw.admin.listen = "127.0.0.1:0".into();
    raw.upstream.url = d.url(db);
    start_proxy(mode.apply(raw)).await
}

/// `cmdstat_<command>` calls on the node at `server`, as it counts them. Sentinel closes a
/// node's clients when it makes it a replica (`CLIENT KILL TYPE normal`): a question cut
/// that way is asked again on a new connection.
async fn calls(server: &RedisServer, command: &str) -> u64 {
    let mut info = None;
    for _ in 0..20 {
        info = info_commandstats(server.addr()).await;
        if info.is_some() {
            break;
        }
    }
    let info = info.expect("INFO commandstats answered within 20 connections");
    let field = format!("cmdstat_{command}:calls=");
    info.find(&field).map_or(0, |at| {
        let rest = &info[at + field.len()..];
        rest[..rest.find(',').unwrap()].parse().unwrap()
    })
}

/// `INFO commandstats` of the node at `addr`; `None` when the node closed the connection
/// before answering.
async fn info_commandstats(addr: std::net::SocketAddr) -> Option<String> {
    let mut c = Conn::open(addr).await;
    let question = encode(&["INFO", "commandstats"]);
    c.stream.write_all(&question).await.ok()?;
    let reply = c.read_reply_or_close().await;
    frame_len(reply.as_bytes()).map(|_| reply)
}

/// (calls on the primary, calls on the replica) of `command` since `counts` last saw it.
struct Counts {
    last: std::collections::HashMap<String, (u64, u64)>,
}

impl Counts {
    async fn step(&mut self, d: &Deployment, command: &str) -> (u64, u64) {
        let now = (
            calls(&d.nodes[0], command).await,
            calls(&d.nodes[1], command).await,
        );
        let last = self.last.insert(command.into(), now).unwrap_or((0, 0));
        (now.0 - last.0, now.1 - last.1)
    }
}

/// Wait until the replica holds `key` = `value` in database `db` (multiplexed, a `WAIT`
/// runs on a connection of the client's own, which wrote nothing, so it proves nothing).
async fn replicated(d: &Deployment, db: u32, key: &str, value: &str) {
    let mut replica = Conn::open(d.nodes[1].addr()).await;
    assert_eq!(replica.call(&["SELECT", &db.to_string()]).await, "+OK\r\n");
    eventually!(WAIT, "the write replicated", {
        let got = replica.call(&["GET", key]).await;
        if got == bulk(value) {
            Ok(())
        } else {
            Err(got)
        }
    });
}

fn bulk(v: &str) -> String {
    format!("${}\r\n{v}\r\n", v.len())
}

/// Commands a single Redis runs and a cluster would refuse or split (keys of several
/// slots, `CLUSTER`): through the proxy behind Sentinel they get a direct connection's
/// replies.
const AS_ONE_REDIS: &[&[&str]] = &[
    &["MSET", "d:a", "1", "d:b", "2", "d:c", "3"],
    &["MGET", "d:a", "d:b", "d:c", "d:none"],
    &["RENAME", "d:a", "d:z"],
    &["MSETNX", "d:x", "1", "d:y", "2"],
    &["SUNIONSTORE", "d:u", "d:none", "d:other"],
    &["EXISTS", "d:a", "d:b", "d:z"],
    &[
        "EVAL",
        "return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])",
        "2",
        "d:b",
        "d:c",
    ],
    &["DBSIZE"],
    &["CLUSTER", "INFO"],
    &["CLUSTER", "SLOTS"],
    &["READONLY"],
    &["SELECT", "9"],
    &["DBSIZE"],
];

/// With `from = "replica"` for `r:*`, per client and multiplexed: commands a cluster
/// would refuse get a direct connection's replies; GETs of `r:` keys run on the replica
/// and give the values written (after `WAIT 1 0` through the proxy), other keys stay on the
/// primary; reads inside MULTI go to the primary; EVAL runs on the primary and EVAL_RO
/// on the replica (EVALSHA_RO of a script loaded through the proxy answers, though only
/// the primary has it); an MGET of matched keys is one MGET on the replica; and after the
/// client's `SELECT`, replica reads are in that database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_matched_by_a_rule_run_on_the_sentinels_replica_and_nothing_else_does() {
    let d = Deployment::ready().await;
    let rule = "[[upstream.read_from]]\npattern = \"r:*\"\nfrom = \"replica\"\n";
    for (i, mode) in Mode::BOTH.into_iter().enumerate() {
        // Databases of their own per mode: 2 and 3 through the proxy, 12 and 13 direct.
        let db = 2 + i as u32;
        let proxy = proxy_with_rules(&d, mode, db, rule).await;
        let mut c = Conn::open(proxy.addr).await;
        let mut direct = Conn::open(d.nodes[0].addr()).await;
        assert_eq!(
            direct.call(&["SELECT", &(db + 10).to_string()]).await,
            "+OK\r\n"
        );
        for command in AS_ONE_REDIS {
            assert_eq!(
                c.call(command).await,
                direct.call(command).await,
                "{mode:?}: {command:?}"
            );
        }
        // Both moved to database 9 by the script's SELECT: back to the URL's.
        let mut c = Conn::open(proxy.addr).await;

        for k in 0..30 {
            assert_eq!(
                c.call(&["SET", &format!("r:{k}"), &format!("v{k}")]).await,
                "+OK\r\n"
            );
            assert_eq!(
                c.call(&["SET", &format!("o:{k}"), &format!("w{k}")]).await,
                "+OK\r\n"
            );
        }
        assert_eq!(c.call(&["WAIT", "1", "0"]).await, ":1\r\n", "{mode:?}");
        replicated(&d, db, "o:29", "w29").await;
        let mut counts = Counts {
            last: Default::default(),
        };
        for command in ["get", "eval", "eval_ro", "mget"] {
            counts.step(&d, command).await;
        }
        for k in 0..30 {
            assert_eq!(
                c.call(&["GET", &format!("r:{k}")]).await,
                bulk(&format!("v{k}"))
            );
        }
        assert_eq!(
            counts.step(&d, "get").await,
            (0, 30),
            "{mode:?}: r: GETs on the replica"
        );
        for k in 0..30 {
            assert_eq!(
                c.call(&["GET", &format!("o:{k}")]).await,
                bulk(&format!("w{k}"))
            );
        }
        assert_eq!(
            counts.step(&d, "get").await,
            (30, 0),
            "{mode:?}: other keys on the primary"
        );

        assert_eq!(c.call(&["MULTI"]).await, "+OK\r\n");
        assert_eq!(c.call(&["GET", "r:1"]).await, "+QUEUED\r\n");
        assert_eq!(c.call(&["EXEC"]).await, "*1\r\n$2\r\nv1\r\n");
        assert_eq!(
            counts.step(&d, "get").await,
            (1, 0),
            "{mode:?}: a read in MULTI"
        );

        let script = "return redis.call('GET', KEYS[1])";
        assert_eq!(c.call(&["EVAL", script, "1", "r:2"]).await, bulk("v2"));
        assert_eq!(counts.step(&d, "eval").await, (1, 0), "{mode:?}: EVAL");
        assert_eq!(c.call(&["EVAL_RO", script, "1", "r:2"]).await, bulk("v2"));
        assert_eq!(
            counts.step(&d, "eval_ro").await,
            (0, 1),
            "{mode:?}: EVAL_RO"
        );
        let no_writes = "#!lua flags=no-writes\nreturn redis.call('GET', KEYS[1])";
        assert_eq!(c.call(&["EVAL", no_writes, "1", "r:2"]).await, bulk("v2"));
        assert_eq!(
            counts.step(&d, "eval").await,
            (0, 1),
            "{mode:?}: a no-writes EVAL"
        );
        // A script loaded through the proxy is on the primary only (Redis does not
        // replicate SCRIPT LOAD): EVALSHA_RO gets its result all the same.
        let sha = c.call(&["SCRIPT", "LOAD", script]).await;
        let sha = sha.lines().nth(1).unwrap();
        assert_eq!(c.call(&["EVALSHA_RO", sha, "1", "r:2"]).await, bulk("v2"));
        counts.step(&d, "get").await;

        // Keys of many slots, all matched: one MGET on the replica, nothing split.
        assert_eq!(
            c.call(&["MGET", "r:1", "r:2", "r:3"]).await,
            format!("*3\r\n{}{}{}", bulk("v1"), bulk("v2"), bulk("v3"))
        );
        assert_eq!(counts.step(&d, "mget").await, (0, 1), "{mode:?}: MGET");

        // The client's SELECT: its replica reads are in that database too.
        let other = (db + 4).to_string();
        assert_eq!(c.call(&["SELECT", &other]).await, "+OK\r\n");
        assert_eq!(c.call(&["SET", "r:s", "in-db"]).await, "+OK\r\n");
        assert_eq!(c.call(&["WAIT", "1", "0"]).await, ":1\r\n");
        replicated(&d, db + 4, "r:s", "in-db").await;
        counts.step(&d, "get").await;
        assert_eq!(c.call(&["GET", "r:s"]).await, bulk("in-db"));
        assert_eq!(
            c.call(&["GET", "r:1"]).await,
            "$-1\r\n",
            "{mode:?}: not in db {other}"
        );
        assert_eq!(
            counts.step(&d, "get").await,
            (0, 2),
            "{mode:?}: after SELECT"
        );
        proxy.shutdown().await;
    }
}

/// One client's command during the failover, as it saw it.
#[derive(Debug)]
struct Op {
    sent: Instant,
    /// The value a SET wrote; `None` for a GET.
    set: Option<u64>,
    reply: String,
}

/// Loop `SET w:<id> n` and `GET r:<id>` (a value written before, read from replicas)
/// until `stop`, and once more; returns every command and how often the connection closed.
async fn load(proxy: std::net::SocketAddr, id: usize, stop: Arc<AtomicBool>) -> (Vec<Op>, usize) {
    let (mut ops, mut closes) = (Vec::new(), 0);
    let mut c = Conn::open(proxy).await;
    let mut n = 0u64;
    // One more round once `stop` is seen: each client's last write is sent after the test
    // saw the failover settle (a write sent before it may be acknowledged after, retried
    // on the promoted node, while the other clients' writes settle it).
    let mut stopping = false;
    while !stopping {
        stopping = stop.load(Ordering::Relaxed);
        n += 1;
        for set in [Some(n), None] {
            let command = match set {
                Some(n) => encode(&["SET", &format!("w:{id}"), &n.to_string()]),
                None => encode(&["GET", &format!("r:{id}")]),
            };
            let sent = Instant::now();
            let reply = match c.stream.write_all(&command).await {
                Ok(()) => c.read_reply_or_close().await,
                Err(_) => String::new(),
            };
            if frame_len(reply.as_bytes()).is_none() {
                closes += 1;
                c = Conn::open(proxy).await;
            }
            ops.push(Op { sent, set, reply });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (ops, closes)
}

/// Loop `GET r:0` until `stop`; every command as the client saw it.
async fn read_only(proxy: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Vec<Op> {
    let mut c = Conn::open(proxy).await;
    let mut ops = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let reply = c.call(&["GET", "r:0"]).await;
        ops.push(Op {
            sent,
            set: None,
            reply,
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    ops
}

/// `SENTINEL FAILOVER` while 10 clients write through the primary and read `prefer-replica`
/// keys, each on a connection of its own: no client loses its connection, at most the
/// commands in flight fail, every read gives the value written, each client's last
/// acknowledged write is on the new primary, and reads go back to a replica (the demoted
/// primary) once the sentinels list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_moves_writes_to_the_new_primary_and_reads_to_its_replica() {
    failover_reading_from_replicas(Mode::PerClient, Failover::Forced).await;
}

/// The same with the clients on shared node connections (`multiplexed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_moves_the_shared_connections_of_replica_reads() {
    failover_reading_from_replicas(Mode::Multiplexed, Failover::Forced).await;
}

/// The primary SIGKILLed under the same load: reads go on from the replica while there is
/// no primary (writes wait, retried for up to 5 s), the sentinels promote it, and writes
/// resume there (each client's last
/// acknowledged write on it), every client still on its connection to the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_leaves_replica_reads_served_and_writes_move_to_the_promoted_one() {
    failover_reading_from_replicas(Mode::PerClient, Failover::Kill).await;
}

/// How the primary goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failover {
    /// `SENTINEL FAILOVER`: it stays up and becomes a replica.
    Forced,
    /// SIGKILL: the sentinels find it down and promote its replica.
    Kill,
}

async fn failover_reading_from_replicas(mode: Mode, how: Failover) {
    const CLIENTS: usize = 10;
    let mut d = Deployment::ready().await;
    let rule = "[[upstream.read_from]]\npattern = \"r:*\"\nfrom = \"prefer-replica\"\n";
    let proxy = proxy_with_rules(&d, mode, 0, rule).await;
    let mut c = Conn::open(proxy.addr).await;
    for id in 0..CLIENTS {
        assert_eq!(
            c.call(&["SET", &format!("r:{id}"), &format!("r{id}")])
                .await,
            "+OK\r\n"
        );
    }
    assert_eq!(c.call(&["WAIT", "1", "0"]).await, ":1\r\n");
    let generation = proxy.gate.generation();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(load(proxy.addr, id, Arc::clone(&stop))))
        .collect();
    let reader = tokio::spawn(read_only(proxy.addr, Arc::clone(&stop)));
    let replica_gets = calls(&d.nodes[1], "get").await;
    eventually!(WAIT, "reads on the replica", {
        let now = calls(&d.nodes[1], "get").await;
        if now > replica_gets + 100 {
            Ok(())
        } else {
            Err(now)
        }
    });

    let began = Instant::now();
    match how {
        Failover::Forced => {
            let mut s = Conn::open(d.sentinels[2].addr()).await;
            assert_eq!(s.call(&["SENTINEL", "FAILOVER", MASTER]).await, "+OK\r\n");
        }
        Failover::Kill => d.nodes[0].kill(),
    }
    let new = address(&d.nodes[1]);
    let switched = eventually!(FAILOVER_WAIT, "the proxy switching primaries", {
        if proxy.gate.generation() > generation {
            Ok(Instant::now())
        } else {
            Err(proxy.gate.address())
        }
    });
    assert_eq!(proxy.gate.address(), new);
    let settled = match how {
        // Reads go back to a replica: the demoted primary, once the sentinels list it.
        Failover::Forced => {
            let old_gets = calls(&d.nodes[0], "get").await;
            let mut reading = Conn::open(proxy.addr).await;
            eventually!(FAILOVER_WAIT, "reads on the demoted primary", {
                assert_eq!(reading.call(&["GET", "r:0"]).await, bulk("r0"));
                let now = calls(&d.nodes[0], "get").await;
                if now > old_gets + 10 {
                    Ok(Instant::now())
                } else {
                    Err(now)
                }
            })
        }
        // No replica left: every client writing on the promoted node.
        Failover::Kill => {
            let sets = calls(&d.nodes[1], "set").await;
            eventually!(FAILOVER_WAIT, "writes on the promoted node", {
                let now = calls(&d.nodes[1], "set").await;
                if now > sets + 20 * CLIENTS as u64 {
                    Ok(Instant::now())
                } else {
                    Err(now)
                }
            })
        }
    };
    stop.store(true, Ordering::Relaxed);
    // A client only reading is answered all along, the replica serving while the primary
    // is being replaced.
    let reads = reader.await.unwrap();
    let during: Vec<&Op> = (reads.iter())
        .filter(|o| o.sent >= began && o.sent < switched)
        .collect();
    assert!(!during.is_empty(), "{mode:?}: reads during the failover");
    for op in &reads {
        assert_eq!(op.reply, bulk("r0"), "{mode:?}: {op:?}");
    }
    let read_during = during.len();
    let mut errors = 0;
    let mut commands = 0;
    let mut direct = Conn::open(d.nodes[1].addr()).await;
    for (id, task) in tasks.into_iter().enumerate() {
        let (ops, closes) = task.await.unwrap();
        assert_eq!(
            closes, 0,
            "{mode:?}: client {id} kept its connection to the proxy"
        );
        let after: Vec<&Op> = ops.iter().filter(|o| o.sent >= began).collect();
        commands += after.len();
        let failed: Vec<&&Op> = after.iter().filter(|o| o.reply.starts_with('-')).collect();
        errors += failed.len();
        for op in ops
            .iter()
            .filter(|o| o.set.is_none() && !o.reply.starts_with('-'))
        {
            assert_eq!(op.reply, bulk(&format!("r{id}")), "client {id}: {op:?}");
        }
        let last = ops
            .iter()
            .rev()
            .find_map(|o| o.set.filter(|_| o.reply == "+OK\r\n"));
        let last = last.expect("a write acknowledged");
        assert!(
            ops.iter()
                .any(|o| o.set == Some(last) && o.sent >= switched),
            "client {id}: the last write came after the switch"
        );
        assert_eq!(
            direct.call(&["GET", &format!("w:{id}")]).await,
            bulk(&last.to_string()),
            "client {id}: its last write on the new primary"
        );
    }
    println!(
        "sentinel failover reading from replicas, {mode:?}, {how:?}: {errors} of {commands} commands failed after it began ({CLIENTS} clients); a reading client got {read_during} answers before the switch; the proxy switched after {:?}; settled (forced: reads on the demoted primary, now a replica; kill: every client writing on the promoted node) after {:?}",
        switched - began,
        settled - began
    );
    if how == Failover::Forced {
        assert!(errors <= 2 * CLIENTS, "{errors} errors");
    }
    proxy.shutdown().await;
}

/// A proxy behind Sentinel started without a rule reading from replicas refuses a reload
/// adding one (its clients are not routed through replicas) and says to restart; the rules
/// in force stay, so the next reload of the old file succeeds.
#[tokio::test]
async fn a_reload_adding_the_first_replica_rule_behind_sentinel_is_refused() {
    let d = Deployment::ready().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("respguard.toml");
    std::fs::write(&config, "").unwrap();
    let overrides = respguard::config::Overrides {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: Some(d.url(0)),
        ..Default::default()
    };
    let source = respguard::config::ConfigSource {
        path: config.clone(),
        overrides,
    };
    let mut started = source.load().unwrap().validate().unwrap();
    started.source = Some(source);
    let proxy = respguard::app::start(started).await.unwrap();
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", "r:1", "x"]).await, "+OK\r\n");

    std::fs::write(
        &config,
        "[[upstream.read_from]]\npattern = \"r:*\"\nfrom = \"replica\"\n",
    )
    .unwrap();
    let refused = c.call(&["RESPGUARD", "RELOAD"]).await;
    assert!(
        refused.starts_with("-ERR respguard: reload refused, the rules in force are unchanged:")
            && refused.contains("behind Sentinel, reading from replicas begins with a restart"),
        "{refused}"
    );
    std::fs::write(&config, "").unwrap();
    assert_eq!(
        c.call(&["RESPGUARD", "RELOAD"]).await,
        "+OK generation 2\r\n"
    );
    assert_eq!(c.call(&["GET", "r:1"]).await, bulk("x"));
    proxy.shutdown().await;
}
