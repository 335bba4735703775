//! Where a guard does not act on purpose, the client cannot tell respguard from Redis: each
//! test runs the same commands directly and through the proxy (or the proxy's own matcher
//! against Redis's `KEYS`) and compares what comes back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use respguard::app::ProxyHandle;
use respguard::config::HumanDuration;
use respguard::guard::pattern::KeyPattern;
use respguard::pressure::Level;

use crate::harness::*;
use crate::memory::ProxyProcess;

/// Each command's reply, in order, one command at a time.
async fn replies(addr: std::net::SocketAddr, cmds: &[&[&str]]) -> Vec<String> {
    let mut c = Conn::open(addr).await;
    let mut out = Vec::new();
    for cmd in cmds {
        out.push(c.call(cmd).await);
    }
    out
}

/// A rule on `blob:*` once refused an MSET whose large value belonged to another key,
/// because every key's rule was checked against the command's largest value.
#[tokio::test]
async fn each_value_is_judged_by_its_own_keys_size_rule() {
    let rules =
        "[[guards.size.rules]]\npattern = \"blob:*\"\nmax_value = \"1KiB\"\nmax_elements = 2\n";
    let big = "v".repeat(5000);
    let passing: &[&[&str]] = &[
        &["MSET", "blob:a", "1", "other:b", &big],
        &["MSET", "other:b", &big, "blob:a", "1"],
        &["MSETNX", "blob:n", "1", "other:n", &big],
        // Three pairs: each key still owns one value, under max_elements.
        &["MSET", "blob:a", "1", "other:b", &big, "blob:c", "2"],
        &["MGET", "blob:a", "other:b", "blob:c"],
    ];
    let direct = RedisServer::start();
    let behind = RedisServer::start();
    let proxy = proxy_with_toml(&behind, rules).await;
    assert_eq!(
        replies(direct.addr(), passing).await,
        replies(proxy.addr, passing).await,
        "a value of another key's rule decided"
    );
    // The guard still acts on the rule's own key's value.
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(
        c.call(&["MSET", "other:b", "1", "blob:a", &big]).await,
        "-ERR respguard: value of 5000 bytes for key 'blob:a' exceeds the 1024-byte limit of size rule 'blob:*'\r\n"
    );
    proxy.shutdown().await;
}

/// A small deterministic generator (xorshift), so a failure names a reproducible case.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The elements of an array reply of bulk strings.
pub fn bulk_strings(reply: &[u8]) -> BTreeSet<Vec<u8>> {
    let line_end =
        |from: usize| from + reply[from..].windows(2).position(|w| w == b"\r\n").unwrap();
    let end = line_end(0);
    assert_eq!(reply[0], b'*', "{}", String::from_utf8_lossy(reply));
    let n: usize = std::str::from_utf8(&reply[1..end])
        .unwrap()
        .parse()
        .unwrap();
    let mut at = end + 2;
    let mut out = BTreeSet::new();
    for _ in 0..n {
        let end = line_end(at);
        let len: usize = std::str::from_utf8(&reply[at + 1..end])
            .unwrap()
            .parse()
            .unwrap();
        out.insert(reply[end + 2..end + 2 + len].to_vec());
        at = end + 2 + len + 2;
    }
    out
}

/// Rule patterns once went to a general glob library: `x[!a]`, `[\]]x`, `[a-]x` matched
/// other keys than Redis's, and `*[`, `ab[`, `[z-a]`, `a\` were refused at load. A rule
/// must match exactly the keys `KEYS` returns, for every pattern Redis accepts.
#[tokio::test]
async fn rule_patterns_match_exactly_the_keys_redis_keys_returns() {
    let server = RedisServer::start();
    let mut c = Conn::open(server.addr()).await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Bytes that mean something to a glob, plain letters, and bytes above 0x7f (signed in
    // Redis's range comparison): 'é' is 0xc3 0xa9.
    let key_bytes: &[u8] = b"ab-]^![\\*?xz\xc3\xa9\xff";
    let mut keys = BTreeSet::new();
    keys.insert(Vec::new());
    while keys.len() < 400 {
        let len = rng.below(6);
        keys.insert(
            (0..len)
                .map(|_| key_bytes[rng.below(key_bytes.len())])
                .collect(),
        );
    }
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    for k in &keys {
        mset.push(k);
        mset.push(b"1");
    }
    c.send(&encode_bytes(&mset)).await;
    assert_eq!(c.replies(1).await, "+OK\r\n");

    let pattern_chars = [
        'a', 'b', 'x', '-', ']', '^', '!', '[', '\\', '*', '?', 'é', 'z',
    ];
    let mut patterns: Vec<String> = [
        "x[!a]", "[\\]]x", "[a-]x", "*[", "ab[", "[z-a]", "a\\", "[", "[^", "ab[^", "\\", "[\\",
        "[a-", "[a-é]", "[é-a]*", "*", "**", "", "a*", "a**", "*a", "a?", "[]]", "[]a]", "[^]]",
        "[\\", "\\*", "\\[a]", "*\\", "[-a]", "[a-b-z]", "a[b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    while patterns.len() < 3000 {
        let len = rng.below(8);
        patterns.push(
            (0..len)
                .map(|_| pattern_chars[rng.below(pattern_chars.len())])
                .collect(),
        );
    }
    for chunk in patterns.chunks(500) {
        let mut batch = Vec::new();
        for p in chunk {
            batch.extend_from_slice(&encode_bytes(&[b"KEYS", p.as_bytes()]));
        }
        c.send(&batch).await;
        for p in chunk {
            let redis = bulk_strings(&c.reply().await);
            let rule = KeyPattern::new(p);
            let ours: BTreeSet<Vec<u8>> =
                keys.iter().filter(|k| rule.matches(k)).cloned().collect();
            let show = |s: &BTreeSet<Vec<u8>>| {
                s.iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                show(&redis),
                show(&ours),
                "pattern {p:?}: KEYS (left) and the rule (right) differ"
            );
        }
    }
}

/// `protocol.max_args` once defaulted to 1,048,576 and refused an RPUSH of 1,048,575
/// elements that Redis accepts; memory is bounded by bytes, so the count is Redis's own.
#[tokio::test]
async fn a_command_of_more_than_a_million_arguments_passes_as_in_redis() {
    let direct = RedisServer::start();
    let behind = RedisServer::start();
    let proxy = ProxyProcess::start(&behind.url(), &[]);
    let argc = 1_048_577;
    let mut cmd = format!("*{argc}\r\n$5\r\nRPUSH\r\n$4\r\nlist\r\n").into_bytes();
    for i in 0..argc - 2 {
        let v = (i % 10).to_string();
        cmd.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
    }
    let mut want = Conn::open(direct.addr()).await;
    want.send(&cmd).await;
    let mut got = Conn::open(proxy.addr).await;
    got.send(&cmd).await;
    assert_eq!(want.replies(1).await, got.replies(1).await);
    assert_eq!(
        want.call(&["LLEN", "list"]).await,
        got.call(&["LLEN", "list"]).await
    );
    let (rss, peak) = proxy.rss_kib();
    println!("RPUSH of {argc} arguments: proxy RSS {rss} KiB (peak {peak} KiB)");
    assert!(peak < 64 * 1024, "proxy peak RSS {peak} KiB");
}

/// Wait (bounded) until the proxy's last poll decided `level`.
async fn wait_for_level(proxy: &ProxyHandle, level: Level) {
    let mut polls = proxy.pressure.subscribe_polls();
    let deadline = Instant::now() + WAIT;
    while proxy.pressure.polled_level() != level {
        tokio::time::timeout_at(deadline.into(), polls.changed())
            .await
            .unwrap_or_else(|_| panic!("the level never became {}", level.name()))
            .unwrap();
    }
}

/// After `CONFIG SET maxmemory 100` and back to 0, a SET within one monitor interval got
/// `-OOM respguard: … at 1023859% of maxmemory` from the stale reading where Redis says OK.
#[tokio::test]
async fn lifting_maxmemory_through_the_proxy_applies_to_the_next_write() {
    let direct = RedisServer::start();
    let behind = RedisServer::start();
    let mut raw = proxy_config(&behind.url());
    // The next regular poll is then up to a second away, far longer than two commands take:
    // only a fresh reading the commands themselves ask for can help.
    raw.monitor.interval = HumanDuration(Duration::from_secs(1));
    let proxy = start_proxy(raw).await;
    let lower: &[&str] = &["CONFIG", "SET", "maxmemory", "100"];
    let lift: &[&str] = &["CONFIG", "SET", "maxmemory", "0"];
    let set: &[&str] = &["SET", "k", "v"];

    let mut c = Conn::open(proxy.addr).await;
    let mut d = Conn::open(direct.addr()).await;
    assert_eq!(c.call(lower).await, d.call(lower).await);
    wait_for_level(&proxy, Level::Hard).await;
    let mut got = c.call(lift).await;
    got.push_str(&c.call(set).await);
    let mut want = d.call(lift).await;
    want.push_str(&d.call(set).await);
    assert_eq!(want, got, "one command at a time");

    // The same in one pipeline: the write behind the CONFIG SET is not judged on the old
    // reading either.
    assert_eq!(c.call(lower).await, d.call(lower).await);
    wait_for_level(&proxy, Level::Hard).await;
    let mut batch = encode(lift);
    batch.extend_from_slice(&encode(set));
    c.send(&batch).await;
    d.send(&batch).await;
    assert_eq!(d.replies(2).await, c.replies(2).await, "pipelined");

    // And inside a transaction: the CONFIG SET runs at EXEC.
    assert_eq!(c.call(lower).await, d.call(lower).await);
    wait_for_level(&proxy, Level::Hard).await;
    let mut batch = encode(&["MULTI"]);
    batch.extend_from_slice(&encode(lift));
    batch.extend_from_slice(&encode(&["EXEC"]));
    batch.extend_from_slice(&encode(set));
    c.send(&batch).await;
    d.send(&batch).await;
    assert_eq!(d.replies(4).await, c.replies(4).await, "in MULTI");
    proxy.shutdown().await;
}

/// `/readyz` said "upstream not answering" while Redis answered `-LOADING`.
#[tokio::test]
async fn readyz_says_redis_is_loading_its_dataset() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_string();
    {
        let first = RedisServer::start_with(&["--dir", &dir, "--enable-debug-command", "yes"]);
        let mut c = Conn::open(first.addr()).await;
        assert_eq!(c.call(&["DEBUG", "POPULATE", "30000"]).await, "+OK\r\n");
        assert_eq!(c.call(&["SAVE"]).await, "+OK\r\n");
    }
    let port = free_port();
    let mut raw = proxy_config(&format!("redis://127.0.0.1:{port}"));
    raw.monitor.interval = HumanDuration(Duration::from_millis(50));
    let proxy = start_proxy(raw).await;
    let admin = proxy.admin_addr.unwrap();
    // About 3 s of loading (100 µs per key), answering `-LOADING` every KiB read.
    let loading = tokio::task::spawn_blocking(move || {
        RedisServer::start_on(
            port,
            &[
                "--dir",
                &dir,
                "--key-load-delay",
                "100",
                "--loading-process-events-interval-bytes",
                "1024",
            ],
        )
    });
    let wait_for = |want: &'static str| async move {
        eventually!(WAIT, format!("/readyz says {want:?}"), {
            let response = http_get(admin, "/readyz").await;
            if response.body.contains(want) {
                Ok(response)
            } else {
                Err(response.body)
            }
        })
    };
    let readyz = wait_for("not ready: upstream Redis is loading its dataset").await;
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    let server = loading.await.unwrap();
    wait_for("ready: upstream answering").await;
    drop(server);
    proxy.shutdown().await;
}

/// `CLIENT KILL SKIPME no` kills every connection, the caller's own included: Redis answers
/// with the count and closes the connection, leaving the commands sent after it
/// unanswered. Through the proxy the client sees the same: one integer reply, then its
/// connection closing, not an error for the PING it pipelined after (Redis's own
/// `introspection` suite checks this); and a new connection is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_kill_of_the_callers_own_connection_closes_it_as_redis_does() {
    let server = RedisServer::start();
    let proxy = proxy_for(&server).await;
    let kill_then_ping = [
        encode(&["CLIENT", "KILL", "SKIPME", "no"]),
        encode(&["PING"]),
    ]
    .concat();
    let mut seen = Vec::new();
    for addr in [server.addr(), proxy.addr] {
        let mut c = Conn::open(addr).await;
        c.send(&kill_then_ping).await;
        let got = String::from_utf8_lossy(&c.read_to_close().await).into_owned();
        // The count of connections killed is Redis's to tell; the shape must be the same.
        seen.push(got.replace(|ch: char| ch.is_ascii_digit(), "N"));
    }
    assert_eq!(seen[0], ":N\r\n", "direct Redis");
    assert_eq!(seen[1], seen[0], "through the proxy");
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
    proxy.shutdown().await;
}
