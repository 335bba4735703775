//! Fault injection: Redis cut off, restarted, silent, half-closed or sending garbage (through
//! the [`Shim`]), clients leaving mid-request, and 10,000 clients at once. Every test states
//! what the client sees, and checks each reply against the one Redis gives for its own
//! request, so a reply delivered to the wrong request fails the test.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::differential::wait_for_blocked;
use crate::harness::*;
use crate::shim::{Fault, Shim};

/// A proxy configuration that reconnects fast and lets Redis stay silent `reply_timeout`.
fn config(url: &str, reply_timeout: Duration) -> respguard::config::RawConfig {
    let mut raw = proxy_config(url);
    raw.upstream.backoff_min = respguard::config::HumanDuration(Duration::from_millis(10));
    raw.upstream.backoff_max = respguard::config::HumanDuration(Duration::from_millis(50));
    raw.upstream.reply_timeout = respguard::config::HumanDuration(reply_timeout);
    raw
}

/// `key-000` .. `key-{n-1}`, each holding `value-NNN` (so every reply is 15 bytes).
async fn load_keys(server: &RedisServer, n: usize) -> Vec<Vec<u8>> {
    let mut direct = Conn::open(server.addr()).await;
    let mut expected = Vec::new();
    for i in 0..n {
        let value = format!("value-{i:03}");
        assert_eq!(
            direct.call(&["SET", &format!("key-{i:03}"), &value]).await,
            "+OK\r\n"
        );
        expected.push(format!("${}\r\n{value}\r\n", value.len()).into_bytes());
    }
    expected
}

fn gets(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| encode(&["GET", &format!("key-{i:03}")]))
        .collect()
}

/// What a client received for a pipeline whose replies from Redis are `expected`.
#[derive(Debug, PartialEq)]
struct Received {
    /// Leading replies equal to the ones Redis gave for the same requests.
    matched: usize,
    /// Then the proxy's errors for the requests Redis never answered.
    errors: usize,
    /// Then the bytes of a reply cut off (always a prefix of the right reply).
    partial: usize,
}

/// Split `got` into replies and check each against its own request's reply: whole matching
/// replies first, then only errors containing `reason`, and at most a prefix of the next
/// expected reply at the end. Anything else (a reply out of place, garbage) panics.
fn judge(got: &[u8], expected: &[Vec<u8>], reason: &str) -> Received {
    let mut at = 0;
    let (mut matched, mut errors) = (0, 0);
    while let Some(n) = frame_len(&got[at..]) {
        let reply = &got[at..at + n];
        let text = String::from_utf8_lossy(reply);
        if errors == 0 && matched < expected.len() && reply == expected[matched].as_slice() {
            matched += 1;
        } else if text.starts_with("-ERR respguard: upstream") && text.contains(reason) {
            errors += 1;
        } else {
            panic!(
                "reply {} is {text:?}, expected {:?} or an error about {reason:?}",
                matched + errors,
                expected
                    .get(matched + errors)
                    .map(|e| String::from_utf8_lossy(e))
            );
        }
        at += n;
    }
    assert!(
        matched + errors <= expected.len(),
        "more replies than requests"
    );
    let rest = &got[at..];
    if !rest.is_empty() {
        assert_eq!(errors, 0, "bytes after the errors: {rest:?}");
        let next = &expected[matched];
        assert!(
            next.starts_with(rest),
            "a cut-off reply that is not the start of the right one: {:?}",
            String::from_utf8_lossy(rest)
        );
    }
    Received {
        matched,
        errors,
        partial: rest.len(),
    }
}

/// A new client gets answers again (the proxy reconnects on its own).
async fn wait_until_served(proxy: std::net::SocketAddr) -> Conn {
    eventually!(WAIT, "the proxy serves again", {
        let mut c = Conn::open(proxy).await;
        c.cmd(&["PING"]).await;
        match c.read_reply_or_close().await {
            pong if pong == "+PONG\r\n" => Ok(c),
            other => Err(other),
        }
    })
}

/// Redis closes the connection of a client that is idle between commands (an operator's
/// CLIENT KILL, as Redis's own `timeout` would): a client connected directly sees its
/// connection close at once, without sending anything, and so does one through the proxy,
/// whose session, waiting for the client's next command, still watches Redis's side.
#[tokio::test]
async fn an_idle_clients_connection_closed_by_redis_closes_it_as_a_direct_one() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let mut direct = Conn::open(server.addr()).await;
    let mut proxied = Conn::open(proxy.addr).await;
    let mut admin = Conn::open(server.addr()).await;
    for client in [&mut direct, &mut proxied] {
        // The id of the client's Redis connection; answered, the client is idle.
        let id = client.call(&["CLIENT", "ID"]).await;
        let id = id.trim_start_matches(':').trim_end();
        assert_eq!(admin.call(&["CLIENT", "KILL", "ID", id]).await, ":1\r\n");
    }
    let seen_direct = direct.read_to_close().await;
    assert_eq!(proxied.read_to_close().await, seen_direct);
    proxy.shutdown().await;
}

/// Redis's connection is cut in the middle of a 100-command pipeline. The client sees the
/// replies Redis sent, each to its own request, and then: at a reply boundary, one error
/// per unanswered command; inside a reply, the part that came and nothing more. Then its
/// connection closes (what Redis had of its state is gone), and new connections work.
#[tokio::test]
async fn upstream_cut_mid_pipeline() {
    let server = RedisServer::start();
    let expected = load_keys(&server, 100).await;
    let shim = Shim::start(server.addr()).await;
    let proxy = start_proxy(config(&shim.url(), Duration::from_secs(30))).await;
    for (cut, want) in [
        (
            40 * 15,
            Received {
                matched: 40,
                errors: 60,
                partial: 0,
            },
        ),
        (
            40 * 15 + 7,
            Received {
                matched: 40,
                errors: 0,
                partial: 7,
            },
        ),
    ] {
        let mut c = wait_until_served(proxy.addr).await;
        shim.set(Fault::CutAfter(cut));
        c.send(&gets(100)).await;
        let got = c.read_to_close().await;
        let received = judge(&got, &expected, "connection lost");
        // The proxy may hold back the cut-off reply's start, never anything else.
        assert_eq!(received.matched, want.matched, "cut at {cut}");
        assert_eq!(received.errors, want.errors, "cut at {cut}");
        assert!(received.partial <= want.partial, "cut at {cut}");
        shim.set(Fault::Pass);
    }
    let mut c = wait_until_served(proxy.addr).await;
    c.send(&gets(100)).await;
    let got = c.replies(100).await;
    assert_eq!(got.as_bytes(), expected.concat());
    proxy.shutdown().await;
}

/// Redis's connection is cut 1 MiB into a 4 MiB value. The client gets a start of that
/// value and then its connection closes: no error is appended inside a bulk string (it
/// would be read as data). The value is intact when read again.
#[tokio::test]
async fn upstream_cut_mid_large_value() {
    let server = RedisServer::start();
    let value: String = (0..4 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut direct = Conn::open(server.addr()).await;
    assert_eq!(direct.call(&["SET", "big", &value]).await, "+OK\r\n");
    let expected = vec![format!("${}\r\n{value}\r\n", value.len()).into_bytes()];
    let shim = Shim::start(server.addr()).await;
    let proxy = start_proxy(config(&shim.url(), Duration::from_secs(30))).await;
    let mut c = wait_until_served(proxy.addr).await;
    shim.set(Fault::CutAfter(1024 * 1024));
    c.cmd(&["GET", "big"]).await;
    let got = c.read_to_close().await;
    let received = judge(&got, &expected, "connection lost");
    assert_eq!((received.matched, received.errors), (0, 0));
    assert!(received.partial <= 1024 * 1024);
    shim.set(Fault::Pass);
    let mut c = wait_until_served(proxy.addr).await;
    c.cmd(&["GET", "big"]).await;
    assert_eq!(c.reply().await, expected[0]);
    proxy.shutdown().await;
}

/// Redis is killed and restarted while one client is blocked in BLPOP and two are
/// subscribed (RESP2 and RESP3). The blocked client gets one error saying the connection
/// was lost, then its connection closes; the subscribers' connections close, as a direct
/// connection would. Once Redis is back, the same commands work again: the pushed job and
/// the published message reach the clients that asked for them.
#[tokio::test]
async fn upstream_restarted_under_blocked_and_subscribed_clients() {
    let mut server = RedisServer::start();
    let port = server.port;
    let proxy = start_proxy(config(&server.url(), Duration::from_secs(30))).await;
    let mut watcher = Conn::open(server.addr()).await;
    let mut blocked = Conn::open(proxy.addr).await;
    blocked.cmd(&["BLPOP", "jobs", "0"]).await;
    let mut sub2 = Conn::open(proxy.addr).await;
    assert!(sub2
        .call(&["SUBSCRIBE", "news"])
        .await
        .starts_with("*3\r\n"));
    let mut sub3 = Conn::open(proxy.addr).await;
    assert!(sub3.call(&["HELLO", "3"]).await.starts_with('%'));
    assert!(sub3
        .call(&["SUBSCRIBE", "news"])
        .await
        .starts_with(">3\r\n"));
    wait_for_blocked(&mut watcher, 1).await;
    server.kill();

    let got = String::from_utf8_lossy(&blocked.read_to_close().await).into_owned();
    assert!(
        got.starts_with("-ERR respguard: upstream") && got.contains("connection lost"),
        "{got}"
    );
    assert_eq!(got.matches("\r\n").count(), 1, "one error: {got}");
    assert_eq!(sub2.read_to_close().await, b"", "RESP2 subscriber");
    assert_eq!(sub3.read_to_close().await, b"", "RESP3 subscriber");

    let server = RedisServer::start_on(port, &[]);
    let mut blocked = wait_until_served(proxy.addr).await;
    blocked.cmd(&["BLPOP", "jobs", "0"]).await;
    let mut sub = wait_until_served(proxy.addr).await;
    assert!(sub.call(&["SUBSCRIBE", "news"]).await.starts_with("*3\r\n"));
    let mut watcher = Conn::open(server.addr()).await;
    wait_for_blocked(&mut watcher, 1).await;
    assert_eq!(watcher.call(&["RPUSH", "jobs", "j1"]).await, ":1\r\n");
    assert_eq!(watcher.call(&["PUBLISH", "news", "back"]).await, ":1\r\n");
    assert_eq!(blocked.replies(1).await, "*2\r\n$4\r\njobs\r\n$2\r\nj1\r\n");
    assert_eq!(
        sub.replies(1).await,
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$4\r\nback\r\n"
    );
    proxy.shutdown().await;
}

/// Redis stops answering (its replies are held back). With `upstream.reply_timeout` at
/// 300 ms, each waiting command gets an error naming the setting, the connection closes,
/// and the proxy closes its Redis connection too, freeing it. Other clients are untouched
/// once Redis answers again.
#[tokio::test]
async fn upstream_that_stops_answering_times_out_and_frees_the_connection() {
    let server = RedisServer::start();
    let expected = load_keys(&server, 3).await;
    let shim = Shim::start(server.addr()).await;
    let proxy = start_proxy(config(&shim.url(), Duration::from_millis(300))).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(
        c.call(&["ECHO", "stalled-client"]).await,
        "$14\r\nstalled-client\r\n"
    );
    shim.set(Fault::Stall);
    c.send(&gets(3)).await;
    let got = c.read_to_close().await;
    let received = judge(
        &got,
        &expected,
        "no reply within 300ms, upstream.reply_timeout",
    );
    assert_eq!((received.matched, received.errors), (0, 3));
    shim.wait_closed("stalled-client").await;
    // The recorder is shared by the tests of this binary: at least this timeout counted.
    let metrics = scrape(proxy.admin_addr.expect("admin listener")).await;
    let timeouts = sample(&metrics, "respguard_upstream_reply_timeouts_total")
        .unwrap_or_else(|| panic!("no reply-timeout counter in {metrics}"));
    assert!(timeouts >= 1.0, "{metrics}");
    shim.set(Fault::Pass);
    let mut c = wait_until_served(proxy.addr).await;
    c.send(&gets(3)).await;
    assert_eq!(c.replies(3).await.as_bytes(), expected.concat());
    proxy.shutdown().await;
}

/// A slow Redis within the timeout is only slow: with replies held 100 ms per chunk and a
/// 1 s timeout, a pipeline gets every reply, in order.
#[tokio::test]
async fn slow_upstream_within_the_timeout_answers_everything() {
    let server = RedisServer::start();
    let expected = load_keys(&server, 20).await;
    let shim = Shim::start(server.addr()).await;
    let proxy = start_proxy(config(&shim.url(), Duration::from_secs(1))).await;
    let mut c = wait_until_served(proxy.addr).await;
    shim.set(Fault::Delay(Duration::from_millis(100)));
    for (i, want) in expected.iter().enumerate() {
        // One command at a time: each reply is a chunk of its own, each delayed.
        let key = format!("key-{i:03}");
        assert_eq!(c.call(&["GET", &key]).await.as_bytes(), want);
    }
    c.send(&gets(20)).await;
    assert_eq!(c.replies(20).await.as_bytes(), expected.concat());
    proxy.shutdown().await;
}

/// What Redis is allowed to take its time over is not a timeout: with a 200 ms
/// `reply_timeout`, BLPOP and WAIT wait their own timeouts, and a subscriber and a MONITOR
/// client stay connected through a second of silence. A Redis busy for longer than the
/// timeout (DEBUG SLEEP) is not answering, and is treated so.
#[tokio::test]
async fn blocking_commands_subscribers_and_monitor_are_not_timed_out() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = start_proxy(config(&server.url(), Duration::from_millis(200))).await;
    let mut sub = Conn::open(proxy.addr).await;
    assert!(sub.call(&["SUBSCRIBE", "news"]).await.starts_with("*3\r\n"));
    let mut monitor = Conn::open(proxy.addr).await;
    assert_eq!(monitor.call(&["MONITOR"]).await, "+OK\r\n");
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["BLPOP", "nothing", "1"]).await, "*-1\r\n");
    assert_eq!(c.call(&["WAIT", "1", "500"]).await, ":0\r\n");
    assert_eq!(c.call(&["SET", "after", "wait"]).await, "+OK\r\n");
    let mut direct = Conn::open(server.addr()).await;
    assert_eq!(
        direct.call(&["PUBLISH", "news", "still-here"]).await,
        ":1\r\n"
    );
    assert_eq!(
        sub.replies(1).await,
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$10\r\nstill-here\r\n"
    );
    // MONITOR shows the commands since, ending with the PUBLISH.
    loop {
        let line = String::from_utf8_lossy(&monitor.reply().await).into_owned();
        if line.contains("\"PUBLISH\" \"news\" \"still-here\"") {
            break;
        }
    }
    c.cmd(&["DEBUG", "SLEEP", "1"]).await;
    let got = String::from_utf8_lossy(&c.read_to_close().await).into_owned();
    assert!(
        got.starts_with("-ERR respguard: upstream")
            && got.contains("no reply within 200ms, upstream.reply_timeout"),
        "{got}"
    );
    proxy.shutdown().await;
}

/// Redis half-closes (sends FIN, keeps reading) after 5 replies of a 20-command pipeline.
/// The client gets those 5 replies, an error for each of the 15 others, and a close; the
/// proxy closes its side of the Redis connection instead of leaving it half-open.
#[tokio::test]
async fn upstream_half_close_is_a_lost_connection() {
    let server = RedisServer::start();
    let expected = load_keys(&server, 20).await;
    let shim = Shim::start(server.addr()).await;
    let proxy = start_proxy(config(&shim.url(), Duration::from_secs(30))).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(
        c.call(&["ECHO", "half-closed"]).await,
        "$11\r\nhalf-closed\r\n"
    );
    shim.set(Fault::HalfCloseAfter(5 * 15));
    c.send(&gets(20)).await;
    let received = judge(&c.read_to_close().await, &expected, "connection lost");
    assert_eq!(
        received,
        Received {
            matched: 5,
            errors: 15,
            partial: 0
        }
    );
    shim.wait_closed("half-closed").await;
    proxy.shutdown().await;
}

/// A byte of a reply's header is corrupted (not a RESP type any more). The proxy never
/// passes the garbage on: the replies before it arrive, each later command gets an error
/// saying the connection was lost, and the connection closes.
#[tokio::test]
async fn corrupted_reply_stream_is_never_passed_on() {
    let server = RedisServer::start();
    let expected = load_keys(&server, 30).await;
    let shim = Shim::start(server.addr()).await;
    let proxy = start_proxy(config(&shim.url(), Duration::from_secs(30))).await;
    let mut c = wait_until_served(proxy.addr).await;
    shim.set(Fault::CorruptAfter(10 * 15));
    c.send(&gets(30)).await;
    let got = c.read_to_close().await;
    assert!(!got.contains(&b'?'), "{:?}", String::from_utf8_lossy(&got));
    let received = judge(&got, &expected, "connection lost");
    assert_eq!(
        received,
        Received {
            matched: 10,
            errors: 20,
            partial: 0
        }
    );
    proxy.shutdown().await;
}

/// A client that half-closes after sending a pipeline (shutdown of its write side) gets
/// every reply, in order, and then the close.
#[tokio::test]
async fn client_half_close_after_a_pipeline_gets_every_reply() {
    let server = RedisServer::start();
    let expected = load_keys(&server, 50).await;
    let proxy = proxy_for(&server).await;
    let mut c = Conn::open(proxy.addr).await;
    c.send(&gets(50)).await;
    c.stream.shutdown().await.unwrap();
    let got = c.read_to_close().await;
    assert_eq!(got, expected.concat());
    proxy.shutdown().await;
}

/// A client that leaves in the middle of a command (a small one, and a 8 MiB value being
/// streamed through) never has it run: Redis does not see the key, and the proxy closes
/// the Redis connection that had part of the command, so Redis frees it.
#[tokio::test]
async fn client_leaving_mid_request_never_runs_the_command() {
    let server = RedisServer::start();
    let shim = Shim::start(server.addr()).await;
    let proxy = start_proxy(config(&shim.url(), Duration::from_secs(30))).await;
    let mut small = Conn::open(proxy.addr).await;
    assert_eq!(
        small.call(&["ECHO", "small-leaver"]).await,
        "$12\r\nsmall-leaver\r\n"
    );
    small
        .send(b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$10\r\nabcd")
        .await;
    drop(small);
    let mut big = Conn::open(proxy.addr).await;
    assert_eq!(
        big.call(&["ECHO", "big-leaver"]).await,
        "$10\r\nbig-leaver\r\n"
    );
    let mut head = b"*3\r\n$3\r\nSET\r\n$4\r\nhuge\r\n$8388608\r\n".to_vec();
    head.extend(std::iter::repeat_n(b'v', 1024 * 1024));
    big.send(&head).await;
    drop(big);
    shim.wait_closed("small-leaver").await;
    shim.wait_closed("big-leaver").await;
    let mut direct = Conn::open(server.addr()).await;
    assert_eq!(direct.call(&["EXISTS", "half", "huge"]).await, ":0\r\n");
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", "after", "1"]).await, "+OK\r\n");
    assert_eq!(c.call(&["GET", "after"]).await, "$1\r\n1\r\n");
    proxy.shutdown().await;
}

/// 10,000 clients connect at once to the real binary; each served client has its own
/// Redis connection. Every served client gets its own replies (its own key's value, its
/// own ECHO), `/status` counts them, and when they leave every Redis connection is freed.
///
/// Each served client costs the proxy two descriptors, so the proxy serves as many as its
/// open-file limit allows (all 10,000 from a hard limit of 20,064) and refuses the rest
/// with the max-clients error rather than failing on "too many open files". The proxy's
/// resident memory with every client connected is printed for the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: scripts/test.sh runs it alone, after the parallel suite"]
async fn ten_thousand_concurrent_clients_each_get_their_own_replies() {
    ten_thousand_clients(false).await;
}

/// The same 10,000 clients multiplexed (`upstream.connections = "multiplexed"`): each costs
/// the proxy one descriptor, so all are served; while they are all connected Redis sees
/// only the two shared connections (plus the monitor's and the test's own), every client
/// still gets its own replies, and an idle client costs the proxy at most 8 KiB of
/// resident memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: scripts/test.sh runs it alone, after the parallel suite"]
async fn ten_thousand_multiplexed_clients_share_two_redis_connections() {
    ten_thousand_clients(true).await;
}

async fn ten_thousand_clients(multiplexed: bool) {
    const CLIENTS: usize = 10_000;
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let want = CLIENTS as u64 + 1024;
    if soft < want {
        rlimit::setrlimit(rlimit::Resource::NOFILE, want.min(hard), hard).unwrap();
    }
    assert!(
        hard >= want,
        "this test needs {want} open files here (hard limit {hard})"
    );
    let server = RedisServer::start_with(&["--maxclients", "10100"]);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("respguard.toml");
    let mode = if multiplexed {
        "connections = \"multiplexed\"\nshared_connections = 2\n"
    } else {
        ""
    };
    std::fs::write(
        &conf,
        format!(
            "[proxy]\nmax_clients = 10100\nmax_connections_per_second = 100000\n\
             max_connections_per_second_per_address = 100000\n\
             [upstream]\nmax_connects_per_second = 100000\n{mode}"
        ),
    )
    .unwrap();
    let (proxy, admin) = crate::memory::ProxyProcess::start_with_admin(&server.url(), &conf);
    let max = connected_and_max(admin).await.1;
    let expect_served = CLIENTS.min(max);
    let per_client = if multiplexed { 1 } else { 2 };
    assert_eq!(
        expect_served,
        CLIENTS.min(((hard - 64) / per_client) as usize),
        "the proxy serves what its descriptors allow"
    );
    let (rss_before_kib, _) = proxy.rss_kib();

    // Connect in waves of 500 (the listen backlog is finite), each client writing its key;
    // clients over the proxy's limit are refused with the max-clients error.
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut refused = 0;
    for wave in 0..CLIENTS / 500 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in wave * 500..(wave + 1) * 500 {
            let addr = proxy.addr;
            tasks.spawn(async move {
                let mut c = Conn::open(addr).await;
                let value = i.to_string();
                c.cmd(&["SET", &format!("client:{i}"), &value]).await;
                let reply = c.read_reply_or_close().await;
                (i, c, reply)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (i, c, reply) = done.unwrap();
            if reply == "+OK\r\n" {
                clients.push((i, c));
            } else {
                assert!(
                    reply.starts_with("-ERR respguard: max number of clients reached"),
                    "client {i}: {reply}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(clients.len(), expect_served, "{refused} refused");
    assert_eq!(connected_and_max(admin).await.0, expect_served);
    let (rss_kib, _) = proxy.rss_kib();
    let per_client_kib = rss_kib.saturating_sub(rss_before_kib) as f64 / clients.len() as f64;
    println!(
        "respguard ({}) with {} clients connected ({refused} refused): RSS {} MiB, {:.1} KiB per client",
        if multiplexed { "multiplexed" } else { "per-client" },
        clients.len(),
        rss_kib / 1024,
        per_client_kib
    );
    let mut watcher = Conn::open(server.addr()).await;
    if multiplexed {
        assert!(
            per_client_kib <= 8.0,
            "an idle multiplexed client costs {per_client_kib:.1} KiB"
        );
        // The two shared connections and what the per-client run leaves at the end (the
        // monitor's, this watcher).
        let connected = redis_clients(&mut watcher).await;
        assert!(
            connected <= 5,
            "{connected} Redis connections for {} clients",
            clients.len()
        );
    }

    // All at once: each asks for its own key and echoes its own number.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut c) in clients {
        tasks.spawn(async move {
            let value = i.to_string();
            let mut batch = encode(&["GET", &format!("client:{i}")]);
            batch.extend_from_slice(&encode(&["ECHO", &value]));
            c.send(&batch).await;
            let own = format!("${}\r\n{value}\r\n", value.len());
            assert_eq!(c.replies(2).await, format!("{own}{own}"), "client {i}");
            c
        });
    }
    let mut clients = Vec::with_capacity(CLIENTS);
    while let Some(done) = tasks.join_next().await {
        clients.push(done.unwrap());
    }
    drop(clients);

    // Every upstream connection is freed: only the monitor's, the watcher and (multiplexed)
    // the shared ones remain.
    let left = if multiplexed { 5 } else { 3 };
    eventually!(WAIT, "every Redis connection freed", {
        let connected = redis_clients(&mut watcher).await;
        if connected <= left {
            Ok(())
        } else {
            Err(format!("{connected} Redis connections left"))
        }
    });
    // The proxy counts a client gone once its session has ended.
    eventually!(WAIT, "no client counted", {
        match connected_and_max(admin).await.0 {
            0 => Ok(()),
            n => Err(format!("{n} clients still counted")),
        }
    });
}

/// Redis's `connected_clients`, asked on `c`.
async fn redis_clients(c: &mut Conn) -> usize {
    let info = c.call(&["INFO", "clients"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("connected_clients")
}

/// `clients.connected` and `clients.max` from `/status`.
async fn connected_and_max(admin: std::net::SocketAddr) -> (usize, usize) {
    let status = http_get(admin, "/status").await.json();
    let field = |name: &str| status["clients"][name].as_u64().expect("a count") as usize;
    (field("connected"), field("max"))
}
