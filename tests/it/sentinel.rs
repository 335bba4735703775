//! Sentinel: the proxy behind a `redis-sentinel://` URL finds the primary through real
//! sentinels (three `redis-server --sentinel` processes watching a primary and its
//! replica) and follows it across failovers, forced (`SENTINEL FAILOVER`) and after a crash
//! (SIGKILL), per client and multiplexed, under load; and without a sentinel at start it
//! says why at once and serves once one answers.
//!
//! The failover tests print the commands that failed and the recovery times
//! (`--nocapture` shows them).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;

use crate::harness::*;

pub(crate) const MASTER: &str = "respguard-primary";
/// Clients looping SET and GET through the proxy during a failover.
const CLIENTS: usize = 10;
/// The longest a failover (and the sentinels' setup) may take on a busy machine.
pub(crate) const FAILOVER_WAIT: Duration = Duration::from_secs(40);

pub(crate) fn frame(reply: &str) -> OwnedFrame {
    match redis_protocol::resp2::decode::decode(reply.as_bytes()) {
        Ok(Some((f, _))) => f,
        other => panic!("not a reply ({other:?}): {reply:?}"),
    }
}

fn text(f: &OwnedFrame) -> String {
    match f {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        other => format!("{other:?}"),
    }
}

/// The value of `name` in a flat `[name, value, ...]` array (a sentinel's description of
/// an instance).
pub(crate) fn field(entry: &OwnedFrame, name: &str) -> Option<String> {
    let OwnedFrame::Array(items) = entry else {
        return None;
    };
    items
        .chunks(2)
        .find(|kv| text(&kv[0]) == name)
        .map(|kv| text(&kv[1]))
}

/// A primary, its replica and three sentinels watching them (quorum 2, a node down after
/// 1 s of silence).
pub(crate) struct Deployment {
    /// The primary at start, then its replica.
    pub(crate) nodes: Vec<RedisServer>,
    pub(crate) sentinels: Vec<SentinelServer>,
}

impl Deployment {
    async fn start() -> Self {
        let primary = RedisServer::start();
        let port = primary.port.to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
        let sentinels = (0..3)
            .map(|_| SentinelServer::start_on(free_port(), MASTER, primary.port, 2, 1000, 5000))
            .collect();
        Deployment {
            nodes: vec![primary, replica],
            sentinels,
        }
    }

    /// Start, and wait until a failover can happen: every sentinel knows the two others
    /// and the replica, whose link to the primary is up.
    pub(crate) async fn ready() -> Self {
        let d = Self::start().await;
        eventually!(
            FAILOVER_WAIT,
            "the sentinels ready for a failover",
            d.check_ready().await
        );
        d
    }

    async fn check_ready(&self) -> Result<(), String> {
        for s in &self.sentinels {
            let mut c = Conn::open(s.addr()).await;
            let others = frame(&c.call(&["SENTINEL", "SENTINELS", MASTER]).await);
            match &others {
                OwnedFrame::Array(a) if a.len() == 2 => {}
                other => return Err(format!("sentinel {} knows sentinels {other:?}", s.port)),
            }
            let replicas = frame(&c.call(&["SENTINEL", "REPLICAS", MASTER]).await);
            let linked = match &replicas {
                OwnedFrame::Array(a) => a.iter().any(|r| {
                    field(r, "flags").as_deref() == Some("slave")
                        && field(r, "master-link-status").as_deref() == Some("ok")
                }),
                _ => false,
            };
            if !linked {
                return Err(format!("sentinel {} knows replicas {replicas:?}", s.port));
            }
        }
        Ok(())
    }

    /// `redis-sentinel://` with the three sentinels.
    pub(crate) fn url(&self, db: u32) -> String {
        let hosts: Vec<String> = (self.sentinels.iter())
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis-sentinel://{}/{db}#{MASTER}", hosts.join(","))
    }

    /// The primary as sentinel `i` names it.
    pub(crate) async fn named_by(&self, i: usize) -> String {
        let mut c = Conn::open(self.sentinels[i].addr()).await;
        let reply = frame(
            &c.call(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])
                .await,
        );
        match reply {
            OwnedFrame::Array(a) if a.len() == 2 => format!("{}:{}", text(&a[0]), text(&a[1])),
            other => panic!("sentinel {i} names no primary: {other:?}"),
        }
    }
}

/// Once the proxy serves `c`, a SET through it lands on `primary`.
async fn writes_reach(c: &mut Conn, primary: &RedisServer) {
    eventually!(WAIT, "the proxy serving through a sentinel", {
        let got = c.call(&["SET", "k", "v"]).await;
        if got == "+OK\r\n" {
            Ok(())
        } else {
            Err(got)
        }
    });
    let mut direct = Conn::open(primary.addr()).await;
    assert_eq!(direct.call(&["GET", "k"]).await, "$1\r\nv\r\n");
}

pub(crate) fn address(server: &RedisServer) -> String {
    format!("127.0.0.1:{}", server.port)
}

/// One command of a load client, as the client saw it.
#[derive(Debug, Clone)]
struct Op {
    sent: Instant,
    done: Instant,
    /// The value a SET wrote; `None` for a GET.
    set: Option<u64>,
    reply: String,
}

impl Op {
    fn ok(&self) -> bool {
        !self.reply.starts_with('-') && !self.reply.is_empty()
    }
}

/// What one load client did.
struct Run {
    key: String,
    ops: Vec<Op>,
    /// Times the proxy closed the client's connection (it then reconnected).
    closes: usize,
}

/// Loop SET key n / GET key through the proxy until `stop`, counting successful writes in
/// `progress`; a closed connection is counted and replaced.
async fn load(
    proxy: std::net::SocketAddr,
    id: usize,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> Run {
    let key = format!("failover:{id}");
    let mut run = Run {
        key: key.clone(),
        ops: Vec::new(),
        closes: 0,
    };
    let mut c = Conn::open(proxy).await;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let value = n.to_string();
        for set in [Some(n), None] {
            let command = match set {
                Some(_) => encode(&["SET", &key, &value]),
                None => encode(&["GET", &key]),
            };
            let sent = Instant::now();
            let reply = match c.stream.write_all(&command).await {
                Ok(()) => c.read_reply_or_close().await,
                Err(_) => String::new(),
            };
            let closed = frame_len(reply.as_bytes()).is_none();
            let op = Op {
                sent,
                done: Instant::now(),
                set,
                reply,
            };
            if set.is_some() && op.ok() {
                progress.fetch_add(1, Ordering::Relaxed);
            }
            let failed = !op.ok();
            run.ops.push(op);
            if closed {
                run.closes += 1;
                c = Conn::open(proxy).await;
            }
            if failed {
                // While Redis is down each command fails at once: no need to spin.
                tokio::time::sleep(Duration::from_millis(5)).await;
                break;
            }
        }
        // A steady load, not a saturating one: the sentinels share the machine.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    run
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// `SENTINEL FAILOVER`: the old primary stays up and becomes a replica.
    Command,
    /// The primary is SIGKILLed; the sentinels notice and fail over.
    Kill,
}

/// What a failover under load cost the clients.
struct Cost {
    /// Commands that got an error once the failover began.
    errors: usize,
    /// Commands sent once the failover began.
    commands: usize,
    /// From the failover's start until the proxy switched.
    switched_after: Duration,
    /// From the failover's start until the first write on the new primary succeeded.
    recovered_after: Duration,
    /// Writes acknowledged before the switch that the next read, after it, did not see:
    /// taken by the old primary while the sentinels were promoting the new one (Sentinel's
    /// own window of loss, before the proxy could know).
    lost_before_switch: usize,
}

/// Run `CLIENTS` load clients through a proxy in `mode`, fail the primary over `how`, and
/// check what the clients saw: after the switch every write succeeds on the new primary
/// and is read back from it, no client loses its connection to the proxy, and (forced
/// failover) no client of the proxy is left on the demoted node.
async fn failover_under_load(mode: Mode, how: How) -> Cost {
    let mut d = Deployment::ready().await;
    let old = address(&d.nodes[0]);
    let new = address(&d.nodes[1]);
    let proxy = start_proxy(mode.config(&d.url(0))).await;
    assert_eq!(proxy.gate.address(), old, "the primary found at start");
    let generation = proxy.gate.generation();
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Vec<Arc<AtomicU64>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(load(
                proxy.addr,
                i,
                Arc::clone(&stop),
                Arc::clone(&progress[i]),
            ))
        })
        .collect();
    let writes = |at_least: u64| {
        let counts: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
        if counts.iter().all(|&c| c >= at_least) {
            Ok(counts)
        } else {
            Err(counts)
        }
    };
    eventually!(WAIT, "every client writing", writes(20));

    let began = Instant::now();
    match how {
        How::Command => {
            // Through the last sentinel: the others hear of the failover later, and the
            // proxy must not follow them back to the old primary meanwhile.
            let mut s = Conn::open(d.sentinels[2].addr()).await;
            assert_eq!(s.call(&["SENTINEL", "FAILOVER", MASTER]).await, "+OK\r\n");
        }
        How::Kill => d.nodes[0].kill(),
    }
    // When the sentinel the test asks first names the new primary, for comparison with
    // the proxy's own switch (how long the failover itself took).
    let mut named = None;
    let switched = eventually!(FAILOVER_WAIT, "the proxy switching primaries", {
        if named.is_none() && d.named_by(2).await == new {
            named = Some(Instant::now());
        }
        if proxy.gate.generation() > generation {
            Ok(Instant::now())
        } else {
            Err(proxy.gate.address())
        }
    });
    let named = match named {
        Some(at) => format!("{:?}", at - began),
        None => "after the proxy's switch".into(),
    };
    assert_eq!(proxy.gate.address(), new, "the replica promoted");
    let marks = writes(0).unwrap();
    eventually!(WAIT, "every client writing after the switch", {
        writes(marks.iter().min().unwrap() + 20)
    });
    stop.store(true, Ordering::Relaxed);
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await.unwrap());
    }
    for i in 0..d.sentinels.len() {
        eventually!(WAIT, "every sentinel naming the new primary", {
            let named = d.named_by(i).await;
            if named == new {
                Ok(())
            } else {
                Err(named)
            }
        });
    }

    assert_eq!(
        proxy.gate.generation(),
        generation + 1,
        "one switch, never back to the old primary while the sentinels caught up"
    );
    // Writes sent after the switch landed on the new primary: each client's GET after
    // such a SET reads its value back, and the new primary holds each client's last
    // acknowledged value.
    let mut direct = Conn::open(d.nodes[1].addr()).await;
    let mut cost = Cost {
        errors: 0,
        commands: 0,
        switched_after: switched - began,
        recovered_after: FAILOVER_WAIT,
        lost_before_switch: 0,
    };
    for run in &runs {
        assert_eq!(
            run.closes, 0,
            "{mode:?}: the client kept its connection to the proxy"
        );
        let before: Vec<&Op> = run.ops.iter().filter(|o| o.done < began).collect();
        assert!(before.iter().all(|o| o.ok()), "{before:?}");
        let after: Vec<&Op> = run.ops.iter().filter(|o| o.done >= began).collect();
        cost.commands += after.len();
        cost.errors += after.iter().filter(|o| !o.ok()).count();
        if let Some(first) =
            (run.ops.iter()).find(|o| o.set.is_some() && o.sent >= switched && o.ok())
        {
            cost.recovered_after = cost.recovered_after.min(first.done - began);
        }
        for pair in run.ops.windows(2) {
            let (set, get) = (&pair[0], &pair[1]);
            let (Some(value), None) = (set.set, get.set) else {
                continue;
            };
            let want = format!("${}\r\n{value}\r\n", value.to_string().len());
            if !set.ok() || !get.ok() || get.reply == want {
                continue;
            }
            assert!(
                set.sent < switched,
                "{mode:?}: a write sent after the switch not read back: {set:?} then {get:?}"
            );
            cost.lost_before_switch += 1;
        }
        let last = (run.ops.iter().rev())
            .find_map(|o| o.set.filter(|_| o.ok()))
            .unwrap();
        assert!(
            run.ops
                .iter()
                .any(|o| o.set == Some(last) && o.sent >= switched),
            "the last write came after the switch"
        );
        let want = format!("${}\r\n{last}\r\n", last.to_string().len());
        assert_eq!(
            direct.call(&["GET", &run.key]).await,
            want,
            "{mode:?} on {new}"
        );
    }
    if how == How::Command {
        // The demoted node, still up, keeps no connection of the proxy's clients: none
        // there ran a SET or GET last, and no shared connection is named there.
        let mut demoted = Conn::open(d.nodes[0].addr()).await;
        eventually!(WAIT, "no client of the proxy left on the demoted node", {
            let list = demoted.call(&["CLIENT", "LIST"]).await;
            let left: Vec<&str> = (list.lines())
                .filter(|l| {
                    l.contains("cmd=set ")
                        || l.contains("cmd=get ")
                        || l.contains("name=respguard-shared ")
                })
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.join("\n"))
            }
        });
    }
    let admin = proxy.admin_addr.unwrap();
    let failovers = metric(admin, "respguard_upstream_failovers_total").await;
    assert!(failovers >= Some(1.0), "{failovers:?}");
    proxy.shutdown().await;
    println!(
        "sentinel failover, {mode:?}, {how:?}: {} of {} commands failed after it began ({CLIENTS} clients); the proxy switched after {:?}, the first write on the new primary succeeded after {:?}; {} writes acknowledged before the switch were not seen after it; sentinel 2 named the new primary after {named}",
        cost.errors, cost.commands, cost.switched_after, cost.recovered_after, cost.lost_before_switch
    );
    cost
}

/// The proxy finds the primary through the sentinels (the node they name, not the
/// replica), and commands through it get the replies the primary gives a direct client, in
/// the URL's database.
#[tokio::test]
async fn the_proxy_finds_the_primary_through_the_sentinels() {
    let d = Deployment::start().await;
    let proxy = start_proxy(proxy_config(&d.url(3))).await;
    assert_eq!(proxy.gate.address(), address(&d.nodes[0]));
    let mut via = Conn::open(proxy.addr).await;
    let mut direct = Conn::open(d.nodes[0].addr()).await;
    assert_eq!(direct.call(&["SELECT", "3"]).await, "+OK\r\n");
    let script: &[&[&str]] = &[
        &["SET", "{p}a", "1"],
        &["INCR", "{p}a"],
        &["GET", "{p}a"],
        &["RPUSH", "{p}l", "x", "y"],
        &["LRANGE", "{p}l", "0", "-1"],
        &["INCR", "{p}l"],
        &["DBSIZE"],
    ];
    let mut replies = Vec::new();
    for command in script {
        replies.push(via.call(command).await);
    }
    assert_eq!(direct.call(&["FLUSHDB"]).await, "+OK\r\n");
    for (command, via) in script.iter().zip(&replies) {
        assert_eq!(&direct.call(command).await, via, "{command:?}");
    }
    // The proxy's writes went to the primary: the replica has them too (db 3).
    let mut replica = Conn::open(d.nodes[1].addr()).await;
    assert_eq!(replica.call(&["SELECT", "3"]).await, "+OK\r\n");
    eventually!(WAIT, "the write replicated", {
        let got = replica.call(&["GET", "{p}a"]).await;
        if got == "$1\r\n2\r\n" {
            Ok(())
        } else {
            Err(got)
        }
    });
    proxy.shutdown().await;
}

/// `SENTINEL FAILOVER` while 10 clients loop SET/GET through a proxy with a connection per
/// client: the proxy switches to the promoted replica, only commands in flight at the
/// switch fail (at most two per client), every client keeps its connection to the proxy,
/// writes after the switch land on the new primary, and no client of the proxy stays on
/// the demoted node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_under_load_fails_only_commands_in_flight() {
    let cost = failover_under_load(Mode::PerClient, How::Command).await;
    assert!(cost.errors <= 2 * CLIENTS, "{} errors", cost.errors);
    assert!(cost.recovered_after < FAILOVER_WAIT);
}

/// The same forced failover with the clients on shared connections (`multiplexed`): the
/// shared connections move to the new primary, with the same bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_under_load_moves_the_shared_connections() {
    let cost = failover_under_load(Mode::Multiplexed, How::Command).await;
    assert!(cost.errors <= 2 * CLIENTS, "{} errors", cost.errors);
    assert!(cost.recovered_after < FAILOVER_WAIT);
}

/// The primary SIGKILLed under load: commands fail while there is no primary (each at
/// once, with the reason), the sentinels fail over on their own (down after 1 s, then the
/// election), and the proxy follows: writes succeed on the new primary, every client still
/// on its connection to the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_under_load_is_replaced_by_the_sentinels_choice() {
    let cost = failover_under_load(Mode::PerClient, How::Kill).await;
    assert!(
        cost.recovered_after >= Duration::from_secs(1),
        "not before the sentinels' down-after"
    );
    assert!(cost.recovered_after < FAILOVER_WAIT);
}

/// With no sentinel answering at start, the proxy starts anyway, at once: each command
/// gets an error naming the master and why no primary is known, and `/readyz` says not
/// ready. Once a sentinel answers on one of the URL's addresses, the proxy finds the
/// primary and serves the same client connection.
#[tokio::test]
async fn without_a_sentinel_at_start_the_proxy_says_why_then_follows_one_that_comes() {
    start_without_a_sentinel("").await;
}

/// The same with a rule reading from replicas (clients then go through a router): the same
/// error, then served once a sentinel answers.
#[tokio::test]
async fn reading_from_replicas_without_a_sentinel_at_start_the_proxy_says_why_the_same_way() {
    start_without_a_sentinel("[[upstream.read_from]]\npattern = \"r:*\"\nfrom = \"replica\"\n")
        .await;
}

/// Start a proxy configured by `toml` behind two sentinels not started yet; see
/// [`without_a_sentinel_at_start_the_proxy_says_why_then_follows_one_that_comes`].
async fn start_without_a_sentinel(toml: &str) {
    let ports = [free_port(), free_port()];
    let url = format!(
        "redis-sentinel://127.0.0.1:{},127.0.0.1:{}#{MASTER}",
        ports[0], ports[1]
    );
    let mut raw = respguard::config::RawConfig::from_toml(toml).unwrap();
    raw.proxy.listen = "127.0.0.1:0".into();
    raw.admin.listen = "127.0.0.1:0".into();
    raw.upstream.url = url;
    let started = Instant::now();
    let proxy = tokio::time::timeout(WAIT, start_proxy(raw))
        .await
        .expect("the proxy starts without a sentinel");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let mut c = Conn::open(proxy.addr).await;
    let reply = c.call(&["PING"]).await;
    let want = format!(
        "-ERR respguard: upstream (master `{MASTER}`): no primary known (no sentinel named the primary of master `{MASTER}` (127.0.0.1:{}: ",
        ports[0]
    );
    assert!(reply.starts_with(&want), "{reply}");
    let admin = proxy.admin_addr.unwrap();
    let ready = http_get(admin, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);

    let primary = RedisServer::start();
    let _sentinel = SentinelServer::start_on(ports[1], MASTER, primary.port, 1, 1000, 5000);
    writes_reach(&mut c, &primary).await;
    eventually!(WAIT, "/readyz ready", {
        let r = http_get(admin, "/readyz").await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.body)
        }
    });
    proxy.shutdown().await;
}

/// A master name the sentinels do not monitor: the proxy starts, and each command's error
/// says that no sentinel knows that name; `/readyz` says not ready.
#[tokio::test]
async fn a_master_name_no_sentinel_knows_is_named_in_the_error() {
    let primary = RedisServer::start();
    let sentinel = SentinelServer::start_on(free_port(), MASTER, primary.port, 1, 1000, 5000);
    let url = format!(
        "redis-sentinel://127.0.0.1:{}#no-such-master",
        sentinel.port
    );
    let proxy = tokio::time::timeout(WAIT, start_proxy(proxy_config(&url)))
        .await
        .expect("the proxy starts");
    let mut c = Conn::open(proxy.addr).await;
    let reply = c.call(&["GET", "k"]).await;
    assert!(
        reply.contains("no sentinel knows master `no-such-master`"),
        "{reply}"
    );
    let ready = http_get(proxy.admin_addr.unwrap(), "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    proxy.shutdown().await;
}

/// A sentinel that answers with a reply nested 100,000 arrays deep (a decoder recursing
/// per level would overflow the stack of this test's process and abort it): alone, it is
/// reported in the error each command gets, as a reply past the nesting bound; beside a
/// real sentinel, it is passed over and the proxy serves through the other one.
#[tokio::test]
async fn a_sentinel_answering_a_deeply_nested_reply_is_passed_over() {
    let deep = ScriptedPeer::start(deeply_nested_reply(100_000)).await;
    let alone = start_proxy(proxy_config(&format!(
        "redis-sentinel://{}#{MASTER}",
        deep.addr
    )))
    .await;
    let mut c = Conn::open(alone.addr).await;
    let reply = c.call(&["PING"]).await;
    assert!(reply.contains("nesting"), "{reply}");
    alone.shutdown().await;

    let primary = RedisServer::start();
    let sentinel = SentinelServer::start_on(free_port(), MASTER, primary.port, 1, 1000, 5000);
    let url = format!(
        "redis-sentinel://{},127.0.0.1:{}#{MASTER}",
        deep.addr, sentinel.port
    );
    let proxy = start_proxy(proxy_config(&url)).await;
    let mut c = Conn::open(proxy.addr).await;
    writes_reach(&mut c, &primary).await;
    proxy.shutdown().await;
}
