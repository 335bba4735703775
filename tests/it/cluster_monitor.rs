//! `MONITOR` through the proxy in front of a real Redis Cluster (three primaries, a
//! replica each), per client and multiplexed: every command another client sends shows in
//! the stream, each line byte for byte the one the node's own monitors get; what a
//! monitoring client sends is answered as one Redis answers it (compared with a
//! standalone redis-server); no node keeps a monitor once the client resets or leaves; a
//! monitoring client that stops reading is let go; with reads on replicas, the replicas'
//! reads show and each write shows once.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster_harness::Cluster;
use crate::cluster_mux::MUX;
use crate::cluster_proxy::{proxy_for_cluster, slot_map};
use crate::harness::*;

/// Whether `reply` is a MONITOR line (`+<time> [<db> <addr>] …`), not a command's reply.
fn is_line(reply: &[u8]) -> bool {
    reply.first() == Some(&b'+') && reply.get(1).is_some_and(u8::is_ascii_digit)
}

/// Whether `line` has the shape of a node's MONITOR line for a command from a TCP client:
/// `+<seconds>.<6 digits> [0 <ip:port>] "ARG" …\r\n`.
fn well_formed(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('+') else {
        return false;
    };
    let Some((time, rest)) = rest.split_once(' ') else {
        return false;
    };
    let Some((seconds, micros)) = time.split_once('.') else {
        return false;
    };
    let Some((client, command)) = rest.split_once("] ") else {
        return false;
    };
    seconds.bytes().all(|b| b.is_ascii_digit())
        && micros.len() == 6
        && micros.bytes().all(|b| b.is_ascii_digit())
        && client.starts_with("[0 127.0.0.1:")
        && command.starts_with('"')
        && command.ends_with("\"\r\n")
}

/// The primaries' addresses.
async fn primaries(cluster: &Cluster) -> Vec<String> {
    let map = slot_map(cluster).await;
    map.shards().iter().map(|s| s.primary.clone()).collect()
}

/// A direct MONITOR on each of `nodes`.
async fn direct_monitors(cluster: &Cluster, nodes: &[String]) -> Vec<Conn> {
    let mut monitors = Vec::new();
    for node in nodes {
        let mut m = cluster.conn(node).await;
        assert_eq!(m.call(&["MONITOR"]).await, "+OK\r\n");
        monitors.push(m);
    }
    monitors
}

/// Read lines from `monitor` until `wanted` lines containing `needle` came; those lines.
async fn lines_with(monitor: &mut Conn, needle: &str, wanted: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    while seen.len() < wanted {
        let reply = monitor.reply().await;
        assert!(is_line(&reply), "not a MONITOR line: {reply:?}");
        let line = String::from_utf8(reply).expect("a line is text");
        if line.contains(needle) {
            seen.insert(line);
        }
    }
    seen
}

/// How many monitors node `address` lists (`flags=O`: Redis 7.0 has no `TYPE monitor`).
async fn monitors_on(cluster: &Cluster, address: &str) -> usize {
    let list = cluster.conn(address).await.call(&["CLIENT", "LIST"]).await;
    list.lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("flags=")))
        .filter(|flags| flags.contains('O'))
        .count()
}

/// Wait until no node of `cluster` lists a monitor.
async fn no_monitor_left(cluster: &Cluster) {
    for node in cluster.addresses() {
        eventually!(WAIT, format!("{node} lists no monitor"), {
            monitors_on(cluster, &node).await == 0
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_through_the_proxy_shows_every_command_on_every_primary() {
    every_command_shows(&Cluster::start().await, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_through_a_multiplexed_proxy_shows_every_command_on_every_primary() {
    every_command_shows(&Cluster::start().await, MUX).await;
}

/// A client monitors through the proxy while another writes 300 keys spread over every
/// slot: each `SET` shows once, and the lines are the very bytes the primaries' own
/// monitors got (same time, same client address), whole.
async fn every_command_shows(cluster: &Cluster, toml: &str) {
    let proxy = proxy_for_cluster(cluster, toml).await;
    let primaries = primaries(cluster).await;
    let mut direct = direct_monitors(cluster, &primaries).await;
    let mut monitor = Conn::open(proxy.addr).await;
    let asked = std::time::Instant::now();
    assert_eq!(monitor.call(&["MONITOR"]).await, "+OK\r\n");
    let confirmed = asked.elapsed();
    let mut writer = Conn::open(proxy.addr).await;
    let keys = 300;
    let mut sent = String::new();
    for i in 0..keys {
        let (key, value) = (format!("mon:{i}"), format!("v{i}"));
        writer.cmd(&["SET", &key, &value]).await;
        sent.push_str("+OK\r\n");
    }
    assert_eq!(writer.replies(keys).await, sent);
    let answered = std::time::Instant::now();
    let through = lines_with(&mut monitor, "\"SET\" \"mon:", keys).await;
    eprintln!(
        "MONITOR confirmed by {} primaries in {confirmed:?}; the last of {keys} lines {:?} after the last reply",
        primaries.len(),
        answered.elapsed()
    );
    for line in &through {
        assert!(well_formed(line), "{line:?}");
    }
    let commands: BTreeSet<String> = through
        .iter()
        .map(|l| l.split_once("] ").expect("well formed").1.to_string())
        .collect();
    let expected: BTreeSet<String> = (0..keys)
        .map(|i| format!("\"SET\" \"mon:{i}\" \"v{i}\"\r\n"))
        .collect();
    assert_eq!(commands, expected);
    // Every primary took some of the keys, and its monitors saw the same lines.
    let mut at_nodes = BTreeSet::new();
    for (node, m) in primaries.iter().zip(direct.iter_mut()) {
        let size = cluster.conn(node).await.call(&["DBSIZE"]).await;
        let size: usize = size.trim_start_matches(':').trim().parse().unwrap();
        assert!(size > 0, "{node} holds none of the keys");
        at_nodes.extend(lines_with(m, "\"SET\" \"mon:", size).await);
    }
    assert_eq!(through, at_nodes);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_on_a_monitoring_connection_are_answered_as_by_one_redis() {
    // In front of one Redis too: a second MONITOR, which Redis leaves unanswered.
    let direct = RedisServer::start();
    let one = monitoring_session(direct.addr()).await;
    let proxy = proxy_for(&direct).await;
    assert_eq!(monitoring_session(proxy.addr).await, one);
    proxy.shutdown().await;
    let cluster = Cluster::start().await;
    for toml in ["", MUX] {
        let proxy = proxy_for_cluster(&cluster, toml).await;
        let direct = RedisServer::start();
        let one = monitoring_session(direct.addr()).await;
        let through = monitoring_session(proxy.addr).await;
        assert_eq!(through, one, "{toml:?}");
        no_monitor_left(&cluster).await;
        proxy.shutdown().await;
    }
}

/// A monitoring connection's script: each command's reply (MONITOR lines apart), which
/// of its own commands its stream showed, that no line follows `+RESET`, and what follows
/// `QUIT`.
async fn monitoring_session(addr: SocketAddr) -> String {
    let mut c = Conn::open(addr).await;
    let mut out = String::new();
    let mut own = Vec::new();
    let script: &[&[&str]] = &[
        &["MONITOR"],
        &["PING", "first"],
        &["ECHO", "hello"],
        &["GET", "k"],
        &["SET", "k", "v"],
        &["DBSIZE"],
        &["CLIENT", "SETNAME", "watcher"],
    ];
    for command in script {
        c.cmd(command).await;
        out.push_str(&next_reply(&mut c, &mut own).await);
    }
    // A second MONITOR gets no reply: the PING after it gets the next one.
    c.cmd(&["MONITOR"]).await;
    c.cmd(&["PING", "again"]).await;
    out.push_str(&next_reply(&mut c, &mut own).await);
    c.cmd(&["RESET"]).await;
    out.push_str(&next_reply(&mut c, &mut own).await);
    // Nothing but the replies from now: no line after +RESET.
    for command in [&["GET", "k"][..], &["PING"], &["CLIENT", "GETNAME"]] {
        out.push_str(&c.call(command).await);
    }
    assert_eq!(c.call(&["MONITOR"]).await, "+OK\r\n");
    c.cmd(&["QUIT"]).await;
    out.push_str(&next_reply(&mut c, &mut own).await);
    let rest = c.read_to_close().await;
    out.push_str(&format!("after QUIT: {rest:?}\n"));
    own.sort();
    own.dedup();
    out.push_str(&format!("own commands shown: {own:?}\n"));
    out
}

/// The session's own commands a MONITOR line may show (no other client sends them).
const OWN: [&str; 4] = [
    "\"PING\" \"first\"\r\n",
    "\"ECHO\" \"hello\"\r\n",
    "\"CLIENT\" \"SETNAME\" \"watcher\"\r\n",
    "\"PING\" \"again\"\r\n",
];

/// The next reply that is not a MONITOR line; the lines before it showing one of the
/// session's [`OWN`] commands go to `own`.
async fn next_reply(c: &mut Conn, own: &mut Vec<String>) -> String {
    loop {
        let reply = c.reply().await;
        let text = String::from_utf8_lossy(&reply).into_owned();
        if !is_line(&reply) {
            return text;
        }
        let command = text.split_once("] ").map(|(_, c)| c).unwrap_or("");
        if OWN.contains(&command) {
            own.push(command.to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_monitor_ends_when_the_client_resets_or_leaves() {
    let cluster = Cluster::start().await;
    for toml in ["", MUX] {
        let proxy = proxy_for_cluster(&cluster, toml).await;
        let primaries = primaries(&cluster).await;
        let mut c = Conn::open(proxy.addr).await;
        assert_eq!(c.call(&["MONITOR"]).await, "+OK\r\n");
        for node in &primaries {
            assert_eq!(monitors_on(&cluster, node).await, 1, "{node} {toml:?}");
        }
        // Once +RESET arrives every node has ended its monitor.
        c.cmd(&["RESET"]).await;
        assert_eq!(next_reply(&mut c, &mut Vec::new()).await, "+RESET\r\n");
        for node in cluster.addresses() {
            assert_eq!(monitors_on(&cluster, &node).await, 0, "{node} {toml:?}");
        }
        assert_eq!(c.call(&["MONITOR"]).await, "+OK\r\n");
        for node in &primaries {
            assert_eq!(monitors_on(&cluster, node).await, 1, "{node} {toml:?}");
        }
        drop(c);
        no_monitor_left(&cluster).await;
        proxy.shutdown().await;
    }
}

/// A monitoring client that reads nothing (its receive buffer small) while another
/// writes is disconnected once its unread lines pass `proxy.output_buffer` for
/// `output_buffer_soft_time`, and its node monitors end; the writer is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitoring_client_that_stops_reading_is_let_go() {
    let cluster = Cluster::start().await;
    let toml = "[proxy]\noutput_buffer = \"64KiB\"\noutput_buffer_soft_time = \"200ms\"\n";
    let proxy = proxy_for_cluster(&cluster, toml).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut idle = socket.connect(proxy.addr).await.unwrap();
    idle.write_all(&encode(&["MONITOR"])).await.unwrap();
    let mut ok = [0u8; 5];
    idle.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    let primaries = primaries(&cluster).await;
    let mut writer = Conn::open(proxy.addr).await;
    let value = "x".repeat(16 * 1024);
    // At most 64 MiB of lines: far more than any buffer on the way holds.
    let mut written = 0;
    for round in 0..40 {
        let mut expected = String::new();
        for i in 0..100 {
            writer
                .cmd(&["SET", &format!("slow:{round}:{i}"), &value])
                .await;
            expected.push_str("+OK\r\n");
        }
        assert_eq!(writer.replies(100).await, expected);
        written += 100 * value.len();
        if monitors_on(&cluster, &primaries[0]).await == 0 {
            break;
        }
    }
    no_monitor_left(&cluster).await;
    // What had reached the client before it was let go, then the close.
    let mut before = Vec::new();
    tokio::time::timeout(WAIT, idle.read_to_end(&mut before))
        .await
        .expect("closed in time")
        .ok();
    assert!(
        before.len() < written,
        "{} of {written} bytes",
        before.len()
    );
    eprintln!(
        "let go after {written} bytes of values written; {} bytes had reached it",
        before.len()
    );
    proxy.shutdown().await;
}

/// With reads on replicas (`[[upstream.read_from]]`), MONITOR covers the replicas too:
/// the reads they run show, and each write shows once (a replica's replication link is
/// left out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_shows_reads_on_replicas_and_each_write_once() {
    let cluster = Cluster::start().await;
    let toml = "[[upstream.read_from]]\npattern = \"r:*\"\nfrom = \"replica\"\n";
    let proxy = proxy_for_cluster(&cluster, toml).await;
    let mut monitor = Conn::open(proxy.addr).await;
    assert_eq!(monitor.call(&["MONITOR"]).await, "+OK\r\n");
    for node in cluster.addresses() {
        assert_eq!(monitors_on(&cluster, &node).await, 1, "{node}");
    }
    let mut client = Conn::open(proxy.addr).await;
    let keys = 60;
    for i in 0..keys {
        assert_eq!(
            client.call(&["SET", &format!("r:{i}"), "v"]).await,
            "+OK\r\n"
        );
    }
    client.call(&["WAIT", "1", "0"]).await;
    for i in 0..keys {
        assert_eq!(
            client.call(&["GET", &format!("r:{i}")]).await,
            "$1\r\nv\r\n"
        );
    }
    // Each SET once, each GET once (on a replica), in all.
    let mut seen = Vec::new();
    while seen.len() < 2 * keys {
        let reply = monitor.reply().await;
        let line = String::from_utf8(reply).unwrap();
        if line.contains("\"SET\" \"r:") || line.contains("\"GET\" \"r:") {
            seen.push(line.split_once("] ").unwrap().1.to_string());
        }
    }
    // A duplicate would arrive before the proxy's answer to a PING sent last.
    monitor.cmd(&["PING"]).await;
    loop {
        let reply = monitor.reply().await;
        if !is_line(&reply) {
            assert_eq!(reply, b"+PONG\r\n");
            break;
        }
        let line = String::from_utf8(reply).unwrap();
        assert!(!line.contains("\"r:"), "a command shown twice: {line:?}");
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 2 * keys, "{seen:?}");
    proxy.shutdown().await;
}

/// A node's monitor connection lost (killed by `CLIENT KILL`): the client stays, the
/// other nodes' lines keep coming, and the node is monitored again at the next check, so
/// writes to every primary show afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_monitor_is_replaced_and_the_client_keeps_its_stream() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let primaries = primaries(&cluster).await;
    let mut monitor = Conn::open(proxy.addr).await;
    assert_eq!(monitor.call(&["MONITOR"]).await, "+OK\r\n");
    let mut node = cluster.conn(&primaries[0]).await;
    let list = node.call(&["CLIENT", "LIST"]).await;
    let id = list
        .lines()
        .find(|l| l.contains("flags=O"))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("the proxy's monitor on the node")
        .to_string();
    assert_eq!(node.call(&["CLIENT", "KILL", "ID", &id]).await, ":1\r\n");
    eventually!(WAIT, "the node monitored again", {
        let list = node.call(&["CLIENT", "LIST"]).await;
        list.lines()
            .any(|l| l.contains("flags=O") && !l.contains(&format!("id={id} ")))
    });
    let mut writer = Conn::open(proxy.addr).await;
    let keys = 100;
    for i in 0..keys {
        writer.cmd(&["SET", &format!("back:{i}"), "v"]).await;
    }
    assert_eq!(writer.replies(keys).await, "+OK\r\n".repeat(keys));
    let seen = lines_with(&mut monitor, "\"SET\" \"back:", keys).await;
    assert_eq!(seen.len(), keys);
    proxy.shutdown().await;
}

/// `CLUSTER FAILOVER` on a replica while a client monitors through the proxy: once the
/// proxy's slot map names the promoted node, it is monitored and the demoted one no longer
/// is (its lines would repeat each write its new primary makes), and writes to every slot,
/// the moved shard's included, show in the client's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_while_monitoring_moves_the_monitor_to_the_promoted_primary() {
    let cluster = Cluster::start().await;
    let proxy = proxy_for_cluster(&cluster, "").await;
    let map = slot_map(&cluster).await;
    let old = map.shards()[0].primary.clone();
    let new = map.shards()[0].replicas[0].clone();
    let mut monitor = Conn::open(proxy.addr).await;
    assert_eq!(monitor.call(&["MONITOR"]).await, "+OK\r\n");
    assert_eq!(monitors_on(&cluster, &old).await, 1);
    assert_eq!(
        cluster
            .conn(&new)
            .await
            .call(&["CLUSTER", "FAILOVER"])
            .await,
        "+OK\r\n"
    );
    eventually!(
        std::time::Duration::from_secs(30),
        "the promoted node monitored, the demoted one not",
        {
            let (on_new, on_old) = (
                monitors_on(&cluster, &new).await,
                monitors_on(&cluster, &old).await,
            );
            if (on_new, on_old) == (1, 0) {
                Ok(())
            } else {
                Err(format!("{on_new} on {new}, {on_old} on {old}"))
            }
        }
    );
    let mut writer = Conn::open(proxy.addr).await;
    let keys = 100;
    for i in 0..keys {
        writer.cmd(&["SET", &format!("moved:{i}"), "v"]).await;
    }
    assert_eq!(writer.replies(keys).await, "+OK\r\n".repeat(keys));
    let seen = lines_with(&mut monitor, "\"SET\" \"moved:", keys).await;
    assert!(seen.iter().all(|l| well_formed(l)), "{seen:?}");
    let distinct: BTreeSet<&str> = (seen.iter())
        .filter_map(|l| l.split("\"SET\" \"").nth(1))
        .collect();
    assert_eq!(distinct.len(), keys, "every key shows");
    proxy.shutdown().await;
}

/// A `MONITOR` one primary refuses (its ACL denies the proxy's user the command) gets that
/// node's refusal, byte for byte a direct connection's; the monitors the other nodes
/// accepted end, and the client is served as one not monitoring, per client and
/// multiplexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_one_node_refuses_is_refused_and_ends_on_every_node() {
    let cluster = Cluster::start().await;
    let refusing = primaries(&cluster).await[1].clone();
    let mut admin = cluster.conn(&refusing).await;
    assert_eq!(
        admin.call(&["ACL", "SETUSER", "default", "-monitor"]).await,
        "+OK\r\n"
    );
    let refusal = cluster.conn(&refusing).await.call(&["MONITOR"]).await;
    assert!(refusal.starts_with("-NOPERM"), "{refusal}");
    for toml in ["", MUX] {
        let proxy = proxy_for_cluster(&cluster, toml).await;
        let mut c = Conn::open(proxy.addr).await;
        assert_eq!(c.call(&["MONITOR"]).await, refusal, "{toml:?}");
        no_monitor_left(&cluster).await;
        // Not monitoring: each reply is the command's own, no line before it.
        assert_eq!(c.call(&["SET", "refused:k", "v"]).await, "+OK\r\n");
        assert_eq!(c.call(&["GET", "refused:k"]).await, "$1\r\nv\r\n");
        assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
        proxy.shutdown().await;
    }
}
