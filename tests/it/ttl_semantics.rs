//! Exact Redis semantics under the TTL and size guards: each test runs the same commands
//! directly against one Redis and through a guarded proxy against another, and compares
//! every reply byte for byte and the state Redis is left in. One test per defect found by
//! adversarial testing; the comment on each says what it guards against.

use std::net::SocketAddr;

use respguard::config::RawConfig;

use crate::harness::*;

/// The configuration the defects were found with.
const RULES: &str = r#"
[[guards.ttl.rules]]
pattern = "exempt:*"
ttl = "none"
[[guards.ttl.rules]]
pattern = "*"
ttl = "1h"
max_ttl = "1d"
[[guards.size.rules]]
pattern = "*"
max_value = "1MiB"
"#;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// A Redis reached directly, and another behind a proxy with `toml`'s guards.
struct Pair {
    direct: RedisServer,
    behind: RedisServer,
    proxy: respguard::app::ProxyHandle,
}

impl Pair {
    async fn start(toml: &str) -> Pair {
        Self::start_with(toml, &[]).await
    }

    async fn start_with(toml: &str, redis_args: &[&str]) -> Pair {
        let direct = RedisServer::start_with(redis_args);
        let behind = RedisServer::start_with(redis_args);
        let proxy = proxy_with_toml(&behind, toml).await;
        Pair {
            direct,
            behind,
            proxy,
        }
    }

    /// The address clients use on each side: direct Redis, then the proxy.
    fn sides(&self) -> [SocketAddr; 2] {
        [self.direct.addr(), self.proxy.addr]
    }

    /// Run `setup` on both Redis servers directly (state the test starts from).
    async fn setup(&self, cmds: &[&[&str]]) {
        for addr in [self.direct.addr(), self.behind.addr()] {
            let mut c = Conn::open(addr).await;
            for cmd in cmds {
                c.call(cmd).await;
            }
        }
    }

    /// Send `cmds` pipelined on one connection to each side; the replies must be equal.
    async fn same(&self, cmds: &[&[&str]]) -> String {
        self.same_n(cmds, cmds.len()).await
    }

    /// As [`Pair::same`], for commands that get `replies` replies in all.
    async fn same_n(&self, cmds: &[&[&str]], replies: usize) -> String {
        let mut outs = Vec::new();
        for addr in self.sides() {
            let mut c = Conn::open(addr).await;
            let mut batch = Vec::new();
            for cmd in cmds {
                batch.extend_from_slice(&encode(cmd));
            }
            c.send(&batch).await;
            outs.push(mask(&c.replies(replies).await));
        }
        assert_eq!(
            outs[0], outs[1],
            "replies through the proxy differ from Redis's own"
        );
        outs.pop().unwrap()
    }

    /// One command's reply, directly on each Redis (not through the proxy).
    async fn both(&self, cmd: &[&str]) -> [String; 2] {
        let mut out = [String::new(), String::new()];
        for (i, addr) in [self.direct.addr(), self.behind.addr()]
            .into_iter()
            .enumerate()
        {
            out[i] = Conn::open(addr).await.call(cmd).await;
        }
        out
    }

    async fn pttl_behind(&self, key: &str) -> i64 {
        let r = Conn::open(self.behind.addr())
            .await
            .call(&["PTTL", key])
            .await;
        r.trim_start_matches(':').trim().parse().unwrap()
    }
}

fn around(ms: i64, target: i64) -> bool {
    (target - 60_000..=target).contains(&ms)
}

#[tokio::test]
async fn a_write_that_changes_nothing_leaves_a_watched_key_clean() {
    // The TTL once came from a hidden `PEXPIRE … NX` sent whatever the write's outcome: a
    // failed SETNX/HSETNX/MSETNX or a WRONGTYPE HSET gave the untouched key a TTL, which
    // aborted another client's WATCH on it.
    let pair = Pair::start(RULES).await;
    let failing: &[&[&str]] = &[
        &["SETNX", "lock", "x"],
        &["HSETNX", "h", "f", "other"],
        &["MSETNX", "lock", "y", "fresh", "z"],
        &["HSET", "lock", "f", "v"],
    ];
    for write in failing {
        pair.setup(&[
            &["FLUSHALL"],
            &["SET", "lock", "v"],
            &["HSET", "h", "f", "v"],
        ])
        .await;
        let mut outs = Vec::new();
        for addr in pair.sides() {
            let mut a = Conn::open(addr).await;
            let mut b = Conn::open(addr).await;
            let mut out = a.call(&["WATCH", "lock", "h"]).await;
            out += &b.call(write).await;
            a.send(
                &[
                    encode(&["MULTI"]),
                    encode(&["GET", "lock"]),
                    encode(&["EXEC"]),
                ]
                .concat(),
            )
            .await;
            out += &a.replies(3).await;
            outs.push(out);
        }
        assert_eq!(outs[0], outs[1], "{write:?}: differs from Redis");
        assert!(
            outs[1].ends_with("*1\r\n$1\r\nv\r\n"),
            "{write:?}: {}",
            outs[1]
        );
        assert_eq!(pair.pttl_behind("lock").await, -1, "{write:?}");
        assert_eq!(pair.pttl_behind("h").await, -1, "{write:?}");
        assert_eq!(pair.both(&["EXISTS", "fresh"]).await, [":0\r\n", ":0\r\n"]);
    }
    // On one connection too, and a write that does change its key still gets the TTL.
    pair.setup(&[&["FLUSHALL"], &["SET", "lock", "v"]]).await;
    pair.same(&[
        &["WATCH", "lock"],
        &["SETNX", "lock", "x"],
        &["MULTI"],
        &["GET", "lock"],
        &["EXEC"],
        &["SETNX", "new", "1"],
        &["HSETNX", "newh", "f", "v"],
    ])
    .await;
    assert!(around(pair.pttl_behind("new").await, HOUR_MS));
    assert!(around(pair.pttl_behind("newh").await, HOUR_MS));
    assert_eq!(pair.pttl_behind("lock").await, -1);
}

/// A TTL rule that applies to every key, under a rule name no other test uses, so its
/// counters can be read exactly.
fn acl_rules(name: &str) -> String {
    format!("[[guards.ttl.rules]]\npattern = \"{name}*\"\nttl = \"1h\"\nmax_ttl = \"1d\"\n")
}

/// The TTL guard's `ttl_skipped` count for the rule with `pattern`.
async fn skipped(pair: &Pair, pattern: &str) -> f64 {
    let body = scrape(pair.proxy.admin_addr.expect("admin")).await;
    let series = format!(
        "respguard_guard_decisions_total{{guard=\"ttl\",rule=\"{pattern}\",action=\"ttl_skipped\",mode=\"enforce\"}}"
    );
    sample(&body, &series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_user_who_may_not_set_expiries_gets_redis_replies() {
    // The hidden PEXPIRE was refused by ACL inside MULTI, so EXEC answered EXECABORT; outside
    // MULTI the key silently got no TTL. The user's replies must never change, and a TTL
    // that could not be set is counted (and logged).
    let pair = Pair::start(&acl_rules("")).await;
    pair.setup(&[&[
        "ACL", "SETUSER", "lim", "on", ">limpw", "~*", "+@all", "-pexpire", "-expire",
    ]])
    .await;
    pair.same(&[
        &["AUTH", "lim", "limpw"],
        &["MULTI"],
        &["HSET", "h", "f", "v"],
        &["SETNX", "n", "1"],
        &["EXEC"],
        &["HSETNX", "h2", "f", "v"],
        &["SET", "s", "v"],
        &["EXPIRE", "s", "864000"],
    ])
    .await;
    assert_eq!(pair.pttl_behind("h").await, -1);
    assert_eq!(pair.pttl_behind("n").await, -1);
    // SET … PX needs no other permission than SET's own.
    assert!(pair.pttl_behind("s").await > 0);
    assert_eq!(
        skipped(&pair, "*").await,
        4.0,
        "HSET, SETNX, HSETNX, EXPIRE"
    );
}

#[tokio::test]
async fn a_user_who_may_not_run_scripts_gets_redis_replies() {
    // Writes the TTL guard wraps run as EVAL: a user without EVAL would get NOPERM for its
    // own HSET. The proxy asks Redis what the user may run before the first such write.
    let pair = Pair::start(&acl_rules("k")).await;
    pair.setup(&[&[
        "ACL",
        "SETUSER",
        "noeval",
        "on",
        ">pw",
        "~*",
        "+@all",
        "-@scripting",
    ]])
    .await;
    pair.same(&[
        &["AUTH", "noeval", "pw"],
        &["MULTI"],
        &["HSET", "kh", "f", "v"],
        &["SETNX", "kn", "1"],
        &["EXEC"],
        &["HSETNX", "kh", "g", "v"],
        &["SET", "ks", "v"],
        &["AUTH", "default", ""],
    ])
    .await;
    assert_eq!(pair.pttl_behind("kh").await, -1);
    assert_eq!(pair.pttl_behind("kn").await, -1);
    assert!(around(pair.pttl_behind("ks").await, HOUR_MS));
    assert_eq!(skipped(&pair, "k*").await, 3.0);
    // Back as a user who may: writes get their TTL again.
    let mut c = Conn::open(pair.proxy.addr).await;
    assert_eq!(c.call(&["HSET", "kh2", "f", "v"]).await, ":1\r\n");
    assert!(around(pair.pttl_behind("kh2").await, HOUR_MS));
}

#[tokio::test]
async fn streamed_writes_get_their_ttl() {
    // Values over `protocol.stream_threshold` stream to Redis unread; the TTL guard used to
    // let GETSET, SETEX and PSETEX of such values through untouched.
    let pair = Pair::start(RULES).await;
    let big = "x".repeat(70 * 1024);
    let b = big.as_str();
    pair.same(&[
        &["SET", "set", b],
        &["SET", "setex-opt", b, "EX", "864000"],
        &["SET", "keep", "v", "EX", "100"],
        &["SET", "keep", b, "KEEPTTL"],
        &["GETSET", "getset", b],
        &["SETEX", "setex", "864000", b],
        &["PSETEX", "psetex", "864000000", b],
        &["HSET", "hash", "f", b],
        &["SETNX", "setnx", b],
    ])
    .await;
    for key in ["set", "getset", "hash", "setnx"] {
        assert!(around(pair.pttl_behind(key).await, HOUR_MS), "{key}");
    }
    for key in ["setex-opt", "setex", "psetex"] {
        assert!(around(pair.pttl_behind(key).await, DAY_MS), "{key}");
    }
    assert!(pair.pttl_behind("keep").await <= 100_000);
}

#[tokio::test]
async fn a_streamed_set_that_writes_nothing_gives_no_ttl() {
    // A SET whose value streams is wrapped without the proxy seeing its options: the
    // script reads them, and whether the SET wrote from its reply. A SET NX on a key that
    // exists, or XX on one that does not (with GET or without), wrote nothing, so it must
    // not give the key that is there a TTL; the same with GET that did write must.
    let pair = Pair::start(RULES).await;
    pair.setup(&[
        &["SET", "nx", "old"],
        &["SET", "nx-get", "old"],
        &["SET", "xx-get", "old"],
    ])
    .await;
    let big = "x".repeat(70 * 1024);
    let b = big.as_str();
    pair.same(&[
        &["SET", "nx", b, "NX"],
        &["SET", "nx-get", b, "NX", "GET"],
        &["SET", "xx", b, "XX"],
        &["SET", "xx-absent-get", b, "XX", "GET"],
        &["SET", "xx-get", b, "XX", "GET"],
        &["SET", "get-new", b, "GET"],
        &["SET", "nx-new", b, "NX", "GET"],
    ])
    .await;
    for key in ["nx", "nx-get"] {
        assert_eq!(
            pair.pttl_behind(key).await,
            -1,
            "{key}: not written, no TTL"
        );
    }
    for key in ["xx", "xx-absent-get"] {
        assert_eq!(pair.pttl_behind(key).await, -2, "{key}: never created");
    }
    for key in ["xx-get", "get-new", "nx-new"] {
        assert!(
            around(pair.pttl_behind(key).await, HOUR_MS),
            "{key}: written"
        );
    }
}

#[tokio::test]
async fn client_reply_skip_and_off_apply_to_answers_the_proxy_gives() {
    // A refusal under CLIENT REPLY SKIP was sent while Redis applied the SKIP to the next
    // command; under OFF, refusals and RESPGUARD's own output were sent although Redis
    // would send nothing.
    let toml = r#"
[[guards.size.rules]]
pattern = "*"
max_value = "1KiB"
"#;
    let pair = Pair::start(toml).await;
    let big = "x".repeat(2048);
    let out = pair
        .same_n(
            &[
                &["CLIENT", "REPLY", "SKIP"],
                &["SET", "k", &big],
                &["PING"],
                &["CLIENT", "REPLY", "OFF"],
                &["SET", "k", &big],
                &["RESPGUARD", "HELP"],
                &["PING"],
                &["CLIENT", "REPLY", "ON"],
                &["ECHO", "end"],
            ],
            3,
        )
        .await;
    assert_eq!(out, "+PONG\r\n+OK\r\n$3\r\nend\r\n");
}

#[tokio::test]
async fn invalid_expiries_stay_redis_errors() {
    // Clamping to max_ttl once turned expiries Redis refuses into writes of one day.
    let pair = Pair::start(RULES).await;
    pair.setup(&[&["SET", "e", "v"]]).await;
    let out = pair
        .same(&[
            &["SET", "k1", "v", "EX", "9223372036854776"],
            &["SET", "k2", "v", "PX", "9223372036854775807"],
            &["SETEX", "k3", "9223372036854775807", "v"],
            &["PSETEX", "k4", "9223372036854775807", "v"],
            &["GETEX", "e", "EX", "9223372036854776"],
            &["PEXPIRE", "e", "9223372036854775807"],
            &["EXPIREAT", "e", "9223372036854775807"],
            &["EXISTS", "k1", "k2", "k3", "k4"],
        ])
        .await;
    assert!(out.ends_with(":0\r\n"), "{out}");
    assert_eq!(pair.pttl_behind("e").await, -1);
}

#[tokio::test]
async fn commands_redis_rejects_for_their_arity_reach_it_unchanged() {
    // `SET k` was rewritten to `SET k PX …`, answered "syntax error" instead of Redis's arity
    // error.
    let pair = Pair::start(RULES).await;
    pair.same(&[
        &["SET", "k"],
        &["GETSET", "k"],
        &["SETNX", "k"],
        &["HSET", "h", "f"],
        &["MSET", "a"],
        &["EXPIRE", "k"],
    ])
    .await;
}

#[tokio::test]
async fn only_keys_a_command_writes_get_a_ttl() {
    // A rule's extra commands gave the keys COPY, SUNIONSTORE and SORT only read a TTL (data
    // lost later) and missed SORT's STORE destination.
    let toml = r#"
[[guards.ttl.rules]]
pattern = "*"
ttl = "1h"
commands = ["COPY", "SUNIONSTORE", "SORT"]
"#;
    let pair = Pair::start(toml).await;
    pair.setup(&[
        &["SET", "src", "v"],
        &["SADD", "s1", "a"],
        &["RPUSH", "l", "2", "1"],
    ])
    .await;
    pair.same(&[
        &["COPY", "src", "dst"],
        &["SUNIONSTORE", "union", "s1"],
        &["SORT", "l", "STORE", "sorted"],
        &["SORT", "l"],
    ])
    .await;
    for read in ["src", "s1", "l"] {
        assert_eq!(pair.pttl_behind(read).await, -1, "{read} is only read");
    }
    for written in ["dst", "union", "sorted"] {
        assert!(
            around(pair.pttl_behind(written).await, HOUR_MS),
            "{written}"
        );
    }
    // A read-only command in the list is refused when the rules are built.
    let mut raw = RawConfig::from_toml(&toml.replace("\"SORT\"]", "\"SORT\", \"GET\"]")).unwrap();
    raw.upstream.url = pair.behind.url();
    let err = respguard::app::check(&raw.validate().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`GET` only reads keys"), "{err}");
}

#[tokio::test]
async fn a_clamped_expiry_keeps_redis_answer() {
    // `EXPIRE k 864000 GT` on a key with two days left was clamped to one day first, so GT
    // failed and the client got :0 where Redis answers :1. GETEX … PERSIST and PERSIST
    // escaped max_ttl. (They now give the key max_ttl back: a PERSIST repeated afterwards
    // answers :1 where Redis answers :0, the one place this guard shows, on purpose.)
    let pair = Pair::start(RULES).await;
    pair.setup(&[
        &["SET", "k", "v", "EX", "172800"],
        &["SET", "g", "v", "EX", "100"],
        &["SET", "p", "v", "EX", "100"],
    ])
    .await;
    pair.same(&[
        &["EXPIRE", "k", "864000", "GT"],
        &["GETEX", "g", "PERSIST"],
        &["PERSIST", "p"],
    ])
    .await;
    for key in ["k", "g", "p"] {
        assert!(around(pair.pttl_behind(key).await, DAY_MS), "{key}");
    }
}

#[tokio::test]
async fn resp3_replies_keep_their_types_when_a_write_is_wrapped() {
    // A wrapped command's reply comes back through the script; it must keep the client's
    // protocol types (a double stays a double in RESP3).
    let toml = r#"
[[guards.ttl.rules]]
pattern = "*"
ttl = "1h"
commands = ["ZINCRBY", "INCRBYFLOAT", "LPUSH", "XADD"]
"#;
    let pair = Pair::start(toml).await;
    for proto in ["2", "3"] {
        pair.setup(&[&["FLUSHALL"]]).await;
        pair.same(&[
            &["HELLO", proto],
            &["ZINCRBY", "z", "1.5", "m"],
            &["INCRBYFLOAT", "f", "0.1"],
            &["LPUSH", "l", "a", "b"],
            &["HSET", "h", "a", "1", "b", "2"],
            &["HSETNX", "h", "a", "1"],
            &["ZINCRBY", "l", "1", "m"],
        ])
        .await;
        for key in ["z", "f", "l", "h"] {
            assert!(around(pair.pttl_behind(key).await, HOUR_MS), "{key}");
        }
    }
}

#[tokio::test]
async fn every_key_of_a_streamed_mset_gets_its_rules_ttl() {
    // Keys after a streamed value were never seen by the guard: `MSET a 1 b <70 KB> c 1`
    // left c without a TTL, and so did MSETNX.
    let pair = Pair::start(RULES).await;
    let big = "x".repeat(70 * 1024);
    pair.setup(&[&["SET", "taken", "v"]]).await;
    pair.same(&[
        &["MSET", "a", "1", "b", &big, "c", "1", "exempt:d", "1"],
        &["MSETNX", "e", "1", "f", &big, "g", "1"],
        &["MSETNX", "h", "1", "i", &big, "taken", "1"],
        &["EXISTS", "h", "i"],
    ])
    .await;
    for key in ["a", "b", "c", "e", "f", "g"] {
        assert!(around(pair.pttl_behind(key).await, HOUR_MS), "{key}");
    }
    assert_eq!(pair.pttl_behind("exempt:d").await, -1);
    assert_eq!(
        pair.pttl_behind("taken").await,
        -1,
        "a failed MSETNX touches nothing"
    );
}

/// Keys of `server` without a TTL, counted by Redis itself.
async fn keys_without_ttl(addr: SocketAddr) -> String {
    let script = "local n = 0 for _, k in ipairs(redis.call('keys', '*')) do \
                  if redis.call('pttl', k) == -1 then n = n + 1 end end return n";
    Conn::open(addr).await.call(&["EVAL", script, "0"]).await
}

#[tokio::test]
async fn every_key_of_an_mset_too_large_to_hold_gets_its_ttl() {
    // An MSET of 200,000 pairs (past `protocol.max_buffered_command`) left most of its keys
    // without a TTL.
    let pair = Pair::start(RULES).await;
    let mut mset = vec!["MSET".to_string()];
    for i in 0..200_000 {
        let key = if i % 10 == 0 {
            format!("exempt:{i}")
        } else {
            format!("k:{i}")
        };
        mset.push(key);
        mset.push(i.to_string());
    }
    let args: Vec<&str> = mset.iter().map(String::as_str).collect();
    pair.same(&[&args, &["DBSIZE"]]).await;
    assert_eq!(keys_without_ttl(pair.behind.addr()).await, ":20000\r\n");
    assert!(around(pair.pttl_behind("k:199999").await, HOUR_MS));
}

#[tokio::test]
async fn the_scripts_glob_matches_the_keys_redis_keys_returns() {
    // The script that handles MSETs too large to list matches keys against the rules
    // itself, with a port of Redis's matcher: it must pick, for every key, the first rule
    // whose pattern `KEYS` would match. Rule i gives a TTL of (i + 1) * 10^6 ms, so a key's
    // TTL names the rule that matched it.
    use crate::fidelity::{bulk_strings, Rng};
    use std::collections::BTreeSet;
    let server = RedisServer::start();
    let mut c = Conn::open(server.addr()).await;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let key_bytes: &[u8] = b"ab-]^![\\*?xz\xc3\xa9\xff";
    let mut keys = BTreeSet::new();
    keys.insert(Vec::new());
    while keys.len() < 300 {
        let len = rng.below(6);
        keys.insert(
            (0..len)
                .map(|_| key_bytes[rng.below(key_bytes.len())])
                .collect::<Vec<u8>>(),
        );
    }
    let pattern_bytes: &[u8] = b"abx-]^![\\*?z\xc3\xa9";
    let mut patterns: Vec<Vec<u8>> = [
        "x[!a]", "[\\]]x", "[a-]x", "*[", "ab[", "[z-a]", "a\\", "[", "[^", "ab[^", "\\", "[\\",
        "[a-", "[]]", "[]a]", "[^]]", "\\*", "\\[a]", "*\\", "[-a]", "[a-b-z]", "a[b", "a*", "*a",
        "a?", "**", "",
    ]
    .iter()
    .map(|p| p.as_bytes().to_vec())
    .collect();
    while patterns.len() < 1200 {
        let len = rng.below(8);
        patterns.push(
            (0..len)
                .map(|_| pattern_bytes[rng.below(pattern_bytes.len())])
                .collect(),
        );
    }
    for rules in patterns.chunks(200) {
        c.call(&["FLUSHALL"]).await;
        // What KEYS says each pattern matches, before any key is written by the script.
        let mut mset: Vec<&[u8]> = vec![b"MSET"];
        for k in &keys {
            mset.extend([&k[..], b"1"]);
        }
        c.send(&encode_bytes(&mset)).await;
        c.reply().await;
        let mut matched = Vec::new();
        for p in rules {
            c.send(&encode_bytes(&[&b"KEYS"[..], p])).await;
            matched.push(bulk_strings(&c.reply().await));
        }
        c.call(&["FLUSHALL"]).await;
        let ttls: Vec<String> = (0..rules.len())
            .map(|i| ((i + 1) * 1_000_000).to_string())
            .collect();
        let count = rules.len().to_string();
        let mut eval: Vec<&[u8]> = vec![
            b"EVAL",
            respguard::guard::ttl::PAIRS_SCRIPT.as_bytes(),
            b"0",
            count.as_bytes(),
        ];
        for (p, ttl) in rules.iter().zip(&ttls) {
            // Not a catch-all: every key the pattern matches is its rule's.
            eval.extend([&p[..], ttl.as_bytes(), b"0"]);
        }
        eval.push(b"0"); // No job-library shapes.
        eval.extend(mset.iter().copied());
        c.send(&encode_bytes(&eval)).await;
        assert_eq!(String::from_utf8_lossy(&c.reply().await), "+OK\r\n");
        for k in &keys {
            c.send(&encode_bytes(&[&b"PTTL"[..], k])).await;
            let r = String::from_utf8_lossy(&c.reply().await).into_owned();
            let pttl: i64 = r.trim_start_matches(':').trim().parse().unwrap();
            let got = (pttl > 0).then(|| ((pttl + 999_999) / 1_000_000 - 1) as usize);
            let want = matched.iter().position(|m| m.contains(k));
            assert_eq!(
                got.map(|i| String::from_utf8_lossy(&rules[i]).into_owned()),
                want.map(|i| String::from_utf8_lossy(&rules[i]).into_owned()),
                "key {:?}: the script's first matching rule (left) and KEYS' (right) differ",
                String::from_utf8_lossy(k)
            );
        }
    }
}
