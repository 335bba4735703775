//! Shared connections (`upstream.connections = "multiplexed"`) when Redis misbehaves or a
//! client ends: a Redis that stays silent, one that is down at start, a client's QUIT, a
//! connection idle past the reply timeout. Each checks that the clients stay connected
//! where Redis itself would keep them, and that what they get is Redis's own answer or the
//! proxy's named error.

use std::time::Duration;

use respguard::config::{ConnectionModel, HumanDuration, RawConfig};

use crate::harness::*;

/// A multiplexed proxy's configuration in front of `url`, with fast reconnection.
fn multiplexed(url: &str) -> RawConfig {
    let mut raw = proxy_config(url);
    raw.upstream.connections = ConnectionModel::Multiplexed;
    raw.upstream.shared_connections = 1;
    raw.upstream.backoff_min = HumanDuration(Duration::from_millis(10));
    raw.upstream.backoff_max = HumanDuration(Duration::from_millis(50));
    raw
}

/// The ids of Redis's connections named `respguard-shared`, asked on `c`.
async fn shared_ids(c: &mut Conn) -> Vec<String> {
    let list = c.call(&["CLIENT", "LIST"]).await;
    list.lines()
        .filter(|l| l.contains("name=respguard-shared"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

/// A shared connection idle for longer than `upstream.reply_timeout` is not timed out by
/// the next command: the timer counts silence while replies are owed, not idleness.
#[tokio::test]
async fn a_shared_connection_idle_past_the_reply_timeout_serves_the_next_command() {
    let server = RedisServer::start();
    let mut raw = multiplexed(&server.url());
    raw.upstream.reply_timeout = HumanDuration(Duration::from_millis(200));
    let proxy = start_proxy(raw).await;
    let mut watcher = Conn::open(server.addr()).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", "k", "v"]).await, "+OK\r\n");
    let before = shared_ids(&mut watcher).await;
    assert_eq!(before.len(), 1, "one shared connection");
    // Idle for three reply timeouts: the passing of time is what is tested.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.call(&["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(
        shared_ids(&mut watcher).await,
        before,
        "the same connection"
    );
    proxy.shutdown().await;
}

/// Redis silent past `upstream.reply_timeout` (DEBUG SLEEP): every command in flight on the
/// shared connection, of every client, gets the timeout's error; the clients stay
/// connected and, once Redis answers again, their next commands work on a new connection.
#[tokio::test]
async fn a_silent_redis_fails_the_shared_commands_in_flight_and_keeps_the_clients() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let mut raw = multiplexed(&server.url());
    raw.upstream.reply_timeout = HumanDuration(Duration::from_millis(300));
    let proxy = start_proxy(raw).await;
    let mut a = Conn::open(proxy.addr).await;
    let mut b = Conn::open(proxy.addr).await;
    assert_eq!(a.call(&["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(b.call(&["GET", "k"]).await, "$1\r\nv\r\n");
    a.cmd(&["DEBUG", "SLEEP", "1"]).await;
    b.cmd(&["GET", "k"]).await;
    for c in [&mut a, &mut b] {
        let r = String::from_utf8_lossy(&c.reply().await).into_owned();
        assert!(
            r.starts_with("-ERR respguard: upstream 127.0.0.1:")
                && r.contains("connection lost before the reply (no reply within 300ms"),
            "{r}"
        );
    }
    eventually!(WAIT, "commands work again", {
        match (a.call(&["GET", "k"]).await, b.call(&["PING"]).await) {
            (v, p) if v == "$1\r\nv\r\n" && p == "+PONG\r\n" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    proxy.shutdown().await;
}

/// QUIT on a shared connection: the client gets what Redis sends a direct client (its
/// earlier replies, `+OK`, then the connection closes, nothing after QUIT answered), while
/// the shared connection stays open for the others.
#[tokio::test]
async fn quit_closes_the_client_and_not_the_shared_connection() {
    let direct = RedisServer::start();
    let server = RedisServer::start();
    let proxy = start_proxy(multiplexed(&server.url())).await;
    let mut other = Conn::open(proxy.addr).await;
    assert_eq!(other.call(&["PING"]).await, "+PONG\r\n");
    let mut watcher = Conn::open(server.addr()).await;
    let shared = shared_ids(&mut watcher).await;
    let mut batch = encode(&["SET", "k", "v"]);
    batch.extend_from_slice(&encode(&["QUIT"]));
    batch.extend_from_slice(&encode(&["GET", "k"]));
    let mut want = Conn::open(direct.addr()).await;
    want.send(&batch).await;
    let want = want.read_to_close().await;
    let mut c = Conn::open(proxy.addr).await;
    c.send(&batch).await;
    assert_eq!(c.read_to_close().await, want);
    assert_eq!(other.call(&["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(
        shared_ids(&mut watcher).await,
        shared,
        "the shared connection stayed"
    );
    proxy.shutdown().await;
}

/// Redis down when the clients arrive: each command gets the gate's reason at once; the
/// shared connection keeps trying on its own, and when Redis comes up the same client
/// connections work.
#[tokio::test]
async fn redis_down_at_start_then_up_serves_the_same_clients() {
    let port = free_port();
    let proxy = start_proxy(multiplexed(&format!("redis://127.0.0.1:{port}"))).await;
    let mut c = Conn::open(proxy.addr).await;
    for _ in 0..3 {
        let r = c.call(&["GET", "k"]).await;
        assert!(r.starts_with("-ERR respguard: upstream 127.0.0.1:"), "{r}");
    }
    let _server = RedisServer::start_on(port, &[]);
    eventually!(WAIT, "the shared connection is back", {
        match c.call(&["SET", "k", "v"]).await {
            ok if ok == "+OK\r\n" => Ok(()),
            other => Err(other),
        }
    });
    assert_eq!(c.call(&["GET", "k"]).await, "$1\r\nv\r\n");
    proxy.shutdown().await;
}

/// A client that pipelines a write and a blocking read of the same key in one write: the
/// blocking read moves it to a connection of its own only once the write was answered on
/// the shared one, so Redis runs them in the order sent (the BLPOP finds the element;
/// run the other way round it would block for good).
#[tokio::test]
async fn a_pinning_command_runs_after_the_clients_shared_commands() {
    let server = RedisServer::start();
    let proxy = start_proxy(multiplexed(&server.url())).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.extend_from_slice(&encode(&["RPUSH", "q", &i.to_string()]));
    }
    batch.extend_from_slice(&encode(&["BLPOP", "q", "0"]));
    batch.extend_from_slice(&encode(&["LLEN", "q"]));
    c.send(&batch).await;
    let replies = c.replies(52).await;
    assert!(
        replies.ends_with(":50\r\n*2\r\n$1\r\nq\r\n$1\r\n0\r\n:49\r\n"),
        "{replies}"
    );
    proxy.shutdown().await;
}

/// 500 multiplexed clients pipeline SETs and GETs of values carrying their own tag while the
/// network between proxy and Redis corrupts a reply byte, half-closes, cuts and stalls the
/// shared connections in turn (the fault shim). Whatever a fault does, no client ever
/// receives a byte of another client's data: each reply is its own, an error, or the
/// beginning of its own before its connection closes. Once the faults stop, every client
/// (reconnecting if it was closed) gets all its replies exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_the_shared_connections_under_500_clients_never_cross_clients() {
    use crate::shim::{Fault, Shim};
    const CLIENTS: usize = 500;
    const PAIRS: usize = 8;
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let server = RedisServer::start_with(&["--maxclients", "2000"]);
    let shim = Shim::start(server.addr()).await;
    let mut raw = multiplexed(&shim.url());
    raw.upstream.shared_connections = 2;
    raw.upstream.reply_timeout = HumanDuration(Duration::from_millis(500));
    raw.proxy.max_clients = 2000;
    raw.proxy.max_connections_per_second = 100_000;
    raw.proxy.max_connections_per_second_per_address = 100_000;
    let proxy = start_proxy(raw).await;
    let addr = proxy.addr;

    /// One round of a client's tagged pipeline: `None` when its connection closed (after at
    /// most the start of its own reply), else whether every reply was exactly its own.
    async fn round(c: &mut Conn, client: usize, round: usize) -> Option<bool> {
        let tag = format!("<c{client:03}>");
        let mut batch = Vec::new();
        let mut want = Vec::new();
        for j in 0..PAIRS {
            let key = format!("{tag}:{j}");
            let value = format!("{key}:{round}:{}", "x".repeat(j * 700));
            batch.extend_from_slice(&encode(&["SET", &key, &value]));
            batch.extend_from_slice(&encode(&["GET", &key]));
            want.push("+OK\r\n".to_string());
            want.push(format!("${}\r\n{value}\r\n", value.len()));
        }
        if tokio::io::AsyncWriteExt::write_all(&mut c.stream, &batch)
            .await
            .is_err()
        {
            return None;
        }
        let mut exact = true;
        for own in want {
            let got = c.read_reply_or_close().await;
            let foreign = got.contains("<c") && !got.contains(&tag);
            assert!(!foreign, "client {client} got another's data: {got:?}");
            if frame_len(got.as_bytes()) != Some(got.len()) {
                return None;
            }
            if got.starts_with('-') {
                assert!(
                    got.starts_with("-ERR respguard: "),
                    "client {client}: {got:?}"
                );
            }
            exact &= got == own;
        }
        Some(exact)
    }

    let (done_tx, done) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let done = done.clone();
        tasks.spawn(async move {
            let mut c = Conn::open(addr).await;
            let mut closes = 0;
            let mut n = 0;
            while !*done.borrow() {
                if round(&mut c, client, n).await.is_none() {
                    closes += 1;
                    c = Conn::open(addr).await;
                }
                n += 1;
            }
            // The faults are over: a round answered exactly (a connection cut as the faults
            // ended may still fail one), on a fresh connection if this one was closed.
            eventually!(WAIT, format!("client {client} served in full"), {
                n += 1;
                match round(&mut c, client, n).await {
                    Some(true) => Ok(()),
                    Some(false) => Err("an error reply"),
                    None => {
                        c = Conn::open(addr).await;
                        Err("closed")
                    }
                }
            });
            closes
        });
    }
    for fault in [
        Fault::CorruptAfter(3000),
        Fault::HalfCloseAfter(5000),
        Fault::CutAfter(7000),
        Fault::Stall,
        Fault::CorruptAfter(100),
        Fault::CutAfter(0),
    ] {
        // Let traffic flow, then apply the fault to every shared connection for a while.
        shim.set(Fault::Pass);
        tokio::time::sleep(Duration::from_millis(150)).await;
        shim.set(fault);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    shim.set(Fault::Pass);
    done_tx.send(true).unwrap();
    let closes: usize = tasks.join_all().await.into_iter().sum();
    println!("500 clients through six faults: {closes} client connections closed mid-reply");
    proxy.shutdown().await;
}

/// Connections of their own come through the same gate as any (`upstream.max_connections`):
/// with every place taken (the monitor's and the two shared connections), a client whose
/// BLPOP needs a connection of its own gets the limit's error at once, not a hang, while
/// the clients on the shared connections go on.
#[tokio::test]
async fn a_client_needing_its_own_connection_past_the_limit_gets_the_limits_error() {
    let server = RedisServer::start();
    let mut raw = multiplexed(&server.url());
    raw.upstream.shared_connections = 2;
    raw.upstream.max_connections = 3;
    let proxy = start_proxy(raw).await;
    let mut a = Conn::open(proxy.addr).await;
    let mut b = Conn::open(proxy.addr).await;
    assert_eq!(a.call(&["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(b.call(&["PING"]).await, "+PONG\r\n");
    let mut watcher = Conn::open(server.addr()).await;
    eventually!(WAIT, "the monitor and both shared connections open", {
        let list = watcher.call(&["CLIENT", "LIST"]).await;
        match list.lines().filter(|l| l.starts_with("id=")).count() {
            4 => Ok(()),
            n => Err(format!("{n} connections: {list}")),
        }
    });
    let mut c = Conn::open(proxy.addr).await;
    let r = c.call(&["BLPOP", "q", "5"]).await;
    assert!(
        r.starts_with("-ERR respguard: upstream 127.0.0.1:")
            && r.contains("connection limit reached (upstream.max_connections = 3)"),
        "{r}"
    );
    assert_eq!(a.call(&["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(b.call(&["PING"]).await, "+PONG\r\n");
    proxy.shutdown().await;
}

/// Fairness on a shared connection: a client pipelining 100,000 INCRs holds another
/// client's INCR back by at most one batch of its commands, the session's
/// `proxy.max_pending_commands` plus one read (64 KiB, 2,849 of these INCRs), not by its
/// whole pipeline. Counted by Redis itself: writes are paused (`CLIENT PAUSE WRITE`) while
/// the pipeline flows, the count read, the other client's INCR sent and seen arriving in the
/// shared connection's query buffer, writes resumed; its INCR returns how many ran before it.
/// (256 pending INCRs take 5.9 KB, within one of Redis's 16 KiB reads, so a paused Redis
/// still reads all of them and then the other client's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_pipeline_holds_another_client_back_by_one_batch_at_most() {
    const PIPELINE: usize = 100_000;
    const PENDING: usize = 256;
    let incr = encode(&["INCR", "n"]);
    let one_read = 64 * 1024 / incr.len();
    let server = RedisServer::start();
    let mut raw = multiplexed(&server.url());
    raw.proxy.max_pending_commands = PENDING;
    let proxy = start_proxy(raw).await;
    let mut direct = Conn::open(server.addr()).await;
    let mut other = Conn::open(proxy.addr).await;
    assert_eq!(other.call(&["PING"]).await, "+PONG\r\n");

    let long = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (long_rx, mut long_tx) = long.into_split();
    let pipeline = incr.repeat(PIPELINE);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        long_tx.write_all(&pipeline).await.unwrap();
        long_tx
    });
    let reader = tokio::spawn(read_counts(long_rx, PIPELINE));
    eventually!(WAIT, "the pipeline under way", {
        let n = direct.call(&["GET", "n"]).await;
        if n.starts_with('$') && n != "$-1\r\n" {
            Ok(())
        } else {
            Err(n)
        }
    });
    assert_eq!(
        direct.call(&["CLIENT", "PAUSE", "20000", "WRITE"]).await,
        "+OK\r\n"
    );
    let before = bulk_int(&direct.call(&["GET", "n"]).await);
    let settled = settled_query_buffer(&mut direct).await;
    other.send(&incr).await;
    eventually!(
        WAIT,
        "the other client's INCR in the shared connection's query buffer",
        {
            let now = shared_query_buffer(&mut direct).await;
            if now == settled + incr.len() {
                Ok(())
            } else {
                Err(now)
            }
        }
    );
    assert_eq!(direct.call(&["CLIENT", "UNPAUSE"]).await, "+OK\r\n");

    let reply = String::from_utf8(other.reply().await).unwrap();
    let at: usize = reply.trim_start_matches(':').trim_end().parse().unwrap();
    let ahead = at - 1 - before;
    println!("pipeline commands run after the pause and before the other client's: {ahead}");
    assert!(
        ahead <= PENDING + one_read,
        "{ahead} of the pipeline's commands ran ahead of another client's"
    );
    let values = reader.await.unwrap();
    let mut want: Vec<usize> = (1..=PIPELINE + 1).filter(|&v| v != at).collect();
    want.truncate(PIPELINE);
    assert!(
        values == want,
        "the pipeline's replies are its own, in order"
    );
    writer.await.unwrap();
    proxy.shutdown().await;
}

/// The integer replies of `count` INCRs read from `rx`.
async fn read_counts(mut rx: tokio::net::tcp::OwnedReadHalf, count: usize) -> Vec<usize> {
    use tokio::io::AsyncReadExt;
    let mut values = Vec::with_capacity(count);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while values.len() < count {
        let n = tokio::time::timeout(WAIT, rx.read(&mut chunk))
            .await
            .expect("replies in time")
            .unwrap();
        assert!(n > 0, "closed after {} replies", values.len());
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(end) = buf[start..].windows(2).position(|w| w == b"\r\n") {
            let line = &buf[start + 1..start + end];
            values.push(std::str::from_utf8(line).unwrap().parse().unwrap());
            start += end + 2;
        }
        buf.drain(..start);
    }
    values
}

/// The shared connection's query buffer once it stops growing: the long pipeline's
/// session has stopped submitting (its replies are held by the pause).
async fn settled_query_buffer(direct: &mut Conn) -> usize {
    let mut last = shared_query_buffer(direct).await;
    eventually!(WAIT, "the shared connection's query buffer settled", {
        let now = shared_query_buffer(direct).await;
        let settled = now == last && now > 0;
        last = now;
        if settled {
            Ok(())
        } else {
            Err(now)
        }
    });
    last
}

/// `qbuf` of the one shared connection in `CLIENT LIST`.
async fn shared_query_buffer(direct: &mut Conn) -> usize {
    let list = direct.call(&["CLIENT", "LIST"]).await;
    list.lines()
        .find(|l| l.contains("name=respguard-shared"))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("qbuf=")))
        .and_then(|q| q.parse().ok())
        .expect("a shared connection")
}

/// The integer in a bulk string reply.
fn bulk_int(reply: &str) -> usize {
    reply.lines().nth(1).unwrap().parse().unwrap()
}
