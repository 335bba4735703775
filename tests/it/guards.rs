//! The guards against real Redis: what they change in Redis (TTLs, refused writes), and that
//! every reply the client sees is what Redis would give it without the guard, in pipelines,
//! transactions, CLIENT REPLY modes, RESP2 and RESP3.

use std::net::SocketAddr;

use crate::harness::*;

const TTL_RULES: &str = r#"
[[guards.ttl.rules]]
pattern = "nottl:*"
ttl = "none"
[[guards.ttl.rules]]
pattern = "c:*"
ttl = "60s"
max_ttl = "10m"
commands = ["LPUSH", "SADD"]
"#;

/// Send `cmds` pipelined in one write after `HELLO proto`, return all replies.
async fn pipeline(addr: SocketAddr, proto: u8, cmds: &[&[&str]]) -> String {
    let mut c = Conn::open(addr).await;
    let mut out = mask(&c.call(&["HELLO", &proto.to_string()]).await);
    let mut batch = Vec::new();
    for cmd in cmds {
        batch.extend_from_slice(&encode(cmd));
    }
    c.send(&batch).await;
    out.push_str(&c.replies(cmds.len()).await);
    out
}

async fn pttl(server: &RedisServer, key: &str) -> i64 {
    let mut c = Conn::open(server.addr()).await;
    let r = c.call(&["PTTL", key]).await;
    r.trim_start_matches(':').trim().parse().unwrap()
}

/// Run `cmds` directly against one server and through a guarded proxy against another;
/// the replies must be identical. Returns the server behind the proxy, for TTL checks.
async fn same_replies(toml: &str, proto: u8, cmds: &[&[&str]]) -> RedisServer {
    let direct = RedisServer::start();
    let behind = RedisServer::start();
    let proxy = proxy_with_toml(&behind, toml).await;
    let want = pipeline(direct.addr(), proto, cmds).await;
    let got = pipeline(proxy.addr, proto, cmds).await;
    assert_eq!(want, got, "RESP{proto}: replies differ from Redis's own");
    proxy.shutdown().await;
    behind
}

fn in_default_window(ms: i64) -> bool {
    (50_000..=60_000).contains(&ms)
}

#[tokio::test]
async fn keys_written_without_a_ttl_get_the_rule_ttl_and_replies_are_unchanged() {
    for proto in [2, 3] {
        let cmds: &[&[&str]] = &[
            &["SET", "c:plain", "v"],
            &["SET", "c:ex", "v", "EX", "300"],
            &["SET", "c:keep", "v", "KEEPTTL"],
            &["SET", "c:nx", "v", "NX", "GET"],
            &["SET", "c:xx", "v", "XX"],
            &["SETNX", "c:setnx", "v"],
            &["MSET", "c:m1", "a", "c:m2", "b"],
            // The first key has no rule; the second's still applies.
            &["MSET", "unruled2", "a", "c:second", "b"],
            &["MSETNX", "c:n1", "a", "c:n2", "b"],
            &["HSET", "c:h", "f", "v", "g", "w"],
            &["HMSET", "c:hm", "f", "v"],
            &["HSETNX", "c:hn", "f", "v"],
            &["GETSET", "c:plain", "new"],
            &["GETSET", "c:gs", "first"],
            &["LPUSH", "c:list", "a", "b"],
            &["SADD", "c:set", "a"],
            &["RPUSH", "c:rlist", "a"],
            &["SET", "nottl:k", "v"],
            &["SET", "unruled", "v"],
            &["HSET", "c:plain", "f", "v"],
            &["GET", "c:plain"],
            &["SET", "c:bad", "v", "EX"],
        ];
        let behind = same_replies(TTL_RULES, proto, cmds).await;
        for key in [
            "c:plain", "c:nx", "c:setnx", "c:m1", "c:m2", "c:second", "c:n1", "c:n2", "c:h",
            "c:hm", "c:hn", "c:gs", "c:list", "c:set",
        ] {
            let t = pttl(&behind, key).await;
            assert!(in_default_window(t), "RESP{proto}: {key} has PTTL {t}");
        }
        assert!(
            (290_000..=300_000).contains(&pttl(&behind, "c:ex").await),
            "client TTL kept"
        );
        assert_eq!(
            pttl(&behind, "c:keep").await,
            -1,
            "SET ... KEEPTTL is left alone"
        );
        assert_eq!(
            pttl(&behind, "c:xx").await,
            -2,
            "SET XX of a missing key creates none"
        );
        assert_eq!(
            pttl(&behind, "c:rlist").await,
            -1,
            "RPUSH is not in the rule's commands"
        );
        assert_eq!(pttl(&behind, "nottl:k").await, -1, "exempt pattern");
        assert_eq!(pttl(&behind, "unruled").await, -1, "no rule");
        assert_eq!(pttl(&behind, "unruled2").await, -1, "no rule");
    }
}

#[tokio::test]
async fn keepttl_and_nx_leave_an_existing_ttl_alone() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(&server, TTL_RULES).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", "c:k", "v", "EX", "500"]).await, "+OK\r\n");
    assert_eq!(c.call(&["SET", "c:k", "w", "KEEPTTL"]).await, "+OK\r\n");
    assert!(pttl(&server, "c:k").await > 490_000);
    // HSET's hidden PEXPIRE is NX: the hash keeps the TTL it has.
    c.call(&["HSET", "c:h", "a", "1"]).await;
    c.call(&["PEXPIRE", "c:h", "400000"]).await;
    c.call(&["HSET", "c:h", "b", "2"]).await;
    assert!(pttl(&server, "c:h").await > 390_000);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_write_on_a_key_of_another_type_fails_and_leaves_the_key_alone() {
    // A write that fails changes nothing, so the guard gives no TTL either.
    let server = RedisServer::start();
    let mut direct = Conn::open(server.addr()).await;
    direct.call(&["SET", "c:str", "v"]).await;
    assert_eq!(pttl(&server, "c:str").await, -1);
    let proxy = proxy_with_toml(&server, TTL_RULES).await;
    let mut c = Conn::open(proxy.addr).await;
    let reply = c.call(&["HSET", "c:str", "f", "v"]).await;
    assert!(reply.starts_with("-WRONGTYPE"), "{reply}");
    assert_eq!(pttl(&server, "c:str").await, -1);
    assert_eq!(
        c.call(&["GET", "c:str"]).await,
        "$1\r\nv\r\n",
        "the value is untouched"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn max_ttl_lowers_larger_client_expiries() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let day_s = (now + 86_400).to_string();
    let day_ms = ((now + 86_400) * 1000).to_string();
    let cmds: &[&[&str]] = &[
        &["SET", "c:ex", "v", "EX", "86400"],
        &["SET", "c:px", "v", "PX", "86400000"],
        &["SET", "c:exat", "v", "EXAT", &day_s],
        &["SET", "c:pxat", "v", "PXAT", &day_ms],
        &["SETEX", "c:setex", "86400", "v"],
        &["PSETEX", "c:psetex", "86400000", "v"],
        &["SET", "c:e", "v"],
        &["EXPIRE", "c:e", "86400"],
        &["SET", "c:pe", "v"],
        &["PEXPIRE", "c:pe", "86400000"],
        &["SET", "c:ea", "v"],
        &["EXPIREAT", "c:ea", &day_s],
        &["SET", "c:pea", "v"],
        &["PEXPIREAT", "c:pea", &day_ms],
        &["SET", "c:gx", "v"],
        &["GETEX", "c:gx", "EX", "86400"],
        &["SET", "c:small", "v", "EX", "120"],
    ];
    let behind = same_replies(TTL_RULES, 2, cmds).await;
    for key in [
        "c:ex", "c:px", "c:exat", "c:pxat", "c:setex", "c:psetex", "c:e", "c:pe", "c:ea", "c:pea",
        "c:gx",
    ] {
        let t = pttl(&behind, key).await;
        assert!(
            (590_000..=600_000).contains(&t),
            "{key} has PTTL {t}, max_ttl is 10m"
        );
    }
    assert!((110_000..=120_000).contains(&pttl(&behind, "c:small").await));
}

#[tokio::test]
async fn transactions_never_show_the_added_commands() {
    for proto in [2, 3] {
        let cmds: &[&[&str]] = &[
            &["MULTI"],
            &["HSET", "c:h", "f", "v"],
            &["SET", "plain", "1"],
            &["MSET", "c:a", "1", "c:b", "2"],
            &["SET", "c:s", "v"],
            &["INCR", "plain"],
            &["EXEC"],
            // A transaction aborted at queue time keeps Redis's EXECABORT.
            &["MULTI"],
            &["HSET", "c:h2", "f", "v"],
            &["NOSUCHCOMMAND"],
            &["EXEC"],
            &["DISCARD"],
            // DISCARD drops the transaction, hidden commands included.
            &["MULTI"],
            &["HSET", "c:h3", "f", "v"],
            &["DISCARD"],
            &["EXISTS", "c:h3"],
        ];
        let behind = same_replies(TTL_RULES, proto, cmds).await;
        for key in ["c:h", "c:a", "c:b", "c:s"] {
            assert!(
                in_default_window(pttl(&behind, key).await),
                "RESP{proto}: {key}"
            );
        }
        assert_eq!(
            pttl(&behind, "c:h2").await,
            -2,
            "aborted transaction wrote nothing"
        );
    }
}

#[tokio::test]
async fn a_watch_abort_returns_nil_with_hidden_commands_queued() {
    for server_side in [false, true] {
        let server = RedisServer::start();
        let proxy = proxy_with_toml(&server, TTL_RULES).await;
        let addr = if server_side {
            server.addr()
        } else {
            proxy.addr
        };
        let mut c = Conn::open(addr).await;
        let mut other = Conn::open(server.addr()).await;
        c.call(&["WATCH", "w"]).await;
        c.call(&["MULTI"]).await;
        assert_eq!(c.call(&["HSET", "c:h", "f", "v"]).await, "+QUEUED\r\n");
        other.call(&["SET", "w", "changed"]).await;
        assert_eq!(c.call(&["EXEC"]).await, "*-1\r\n");
        assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn client_reply_off_and_skip_with_guarded_commands() {
    for proto in [2, 3] {
        let cmds: &[&[&str]] = &[
            &["CLIENT", "REPLY", "OFF"],
            &["HSET", "c:off", "f", "v"],
            &["SET", "c:off2", "v"],
            &["CLIENT", "REPLY", "ON"],
            &["CLIENT", "REPLY", "SKIP"],
            &["HSET", "c:skip", "f", "v"],
            &["HSET", "c:after", "f", "v"],
            &["PING"],
        ];
        let direct = RedisServer::start();
        let behind = RedisServer::start();
        let proxy = proxy_with_toml(&behind, TTL_RULES).await;
        let mut outs = Vec::new();
        for addr in [direct.addr(), proxy.addr] {
            let mut c = Conn::open(addr).await;
            let mut out = mask(&c.call(&["HELLO", &proto.to_string()]).await);
            let mut batch = Vec::new();
            for cmd in cmds {
                batch.extend_from_slice(&encode(cmd));
            }
            c.send(&batch).await;
            out.push_str(&c.replies(3).await); // ON's +OK, c:after's :1, PONG
            outs.push(out);
        }
        assert_eq!(outs[0], outs[1], "RESP{proto}");
        for key in ["c:off", "c:off2", "c:skip", "c:after"] {
            assert!(
                in_default_window(pttl(&behind, key).await),
                "RESP{proto}: {key}"
            );
        }
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn a_streamed_set_still_gets_its_ttl() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(&server, TTL_RULES).await;
    let mut c = Conn::open(proxy.addr).await;
    let big = "x".repeat(2 * 1024 * 1024);
    assert_eq!(c.call(&["SET", "c:big", &big]).await, "+OK\r\n");
    assert!(in_default_window(pttl(&server, "c:big").await));
    assert_eq!(
        c.call(&["SET", "c:big2", &big, "EX", "300"]).await,
        "+OK\r\n"
    );
    assert!(
        pttl(&server, "c:big2").await > 290_000,
        "the SET's own EX wins over NX"
    );
    assert_eq!(
        c.call(&["STRLEN", "c:big"]).await,
        format!(":{}\r\n", big.len())
    );
    proxy.shutdown().await;
}

const SIZE_RULES: &str = r#"
[[guards.size.rules]]
pattern = "blob:*"
max_value = "1MiB"
max_elements = 20
[[guards.size.rules]]
pattern = "req:*"
max_request = "4KiB"
"#;

#[tokio::test]
async fn oversized_values_are_refused_and_the_connection_stays_usable() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(&server, SIZE_RULES).await;
    let mut c = Conn::open(proxy.addr).await;
    let two_mib = "v".repeat(2 * 1024 * 1024);
    assert_eq!(
        c.call(&["SET", "blob:1", &two_mib]).await,
        "-ERR respguard: value of 2097152 bytes for key 'blob:1' exceeds the 1048576-byte limit of size rule 'blob:*'\r\n"
    );
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
    assert_eq!(c.call(&["EXISTS", "blob:1"]).await, ":0\r\n");
    // Under the limit, still streamed (above the 64 KiB stream threshold), it passes.
    let half = "v".repeat(512 * 1024);
    assert_eq!(c.call(&["SET", "blob:2", &half]).await, "+OK\r\n");
    assert_eq!(c.call(&["STRLEN", "blob:2"]).await, ":524288\r\n");
    // A small value refused when whole, not streamed.
    let small_rules_hit = c
        .call(&["APPEND", "blob:2", &"a".repeat(1024 * 1024 + 1)])
        .await;
    assert!(
        small_rules_hit.contains("exceeds the 1048576-byte limit"),
        "{small_rules_hit}"
    );
    // Element count: 11 fields and values are 22 elements.
    let mut hset = vec!["HSET", "blob:h"];
    let fields: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    for f in &fields {
        hset.push(f);
        hset.push("v");
    }
    assert_eq!(
        c.call(&hset).await,
        "-ERR respguard: 22 elements for key 'blob:h' exceed the limit of 20 of size rule 'blob:*'\r\n"
    );
    let r = c.call(&["SET", "req:1", &"r".repeat(5000)]).await;
    assert!(r.starts_with("-ERR respguard: request of 50"), "{r}");
    assert_eq!(
        c.call(&["SET", "other", &two_mib]).await,
        "+OK\r\n",
        "no rule, no limit"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_write_of_many_keys_is_checked_in_linear_time() {
    // 40,000 keys fit in one buffered command (under protocol.max_buffered_command), and the
    // proxy checks, forwards and refuses it whole. That the check is linear in the keys is
    // shown by a count, not a clock: the unit test of the same name in src/offline.rs
    // judges this MSET with 4,000 and 40,000 keys and bounds the arguments the guards
    // examine (a quadratic check examines a hundred times as many, and fails there).
    let rules = "[[guards.size.rules]]\npattern = \"*\"\nmax_value = \"1KiB\"\n";
    let server = RedisServer::start();
    let proxy = proxy_with_toml(&server, rules).await;
    let mut c = Conn::open(proxy.addr).await;
    let keys: Vec<String> = (0..40_000).map(|i| format!("k{i}")).collect();
    let mut cmd = vec!["MSET"];
    for k in &keys {
        cmd.push(k);
        cmd.push("v");
    }
    assert_eq!(c.call(&cmd).await, "+OK\r\n");
    let last = keys.last().unwrap();
    assert_eq!(c.call(&["GET", last]).await, "$1\r\nv\r\n");
    let big = "x".repeat(2048);
    let mut refused = cmd.clone();
    refused[2] = &big;
    let r = c.call(&refused).await;
    assert!(
        r.starts_with("-ERR respguard: value of 2048 bytes for key 'k0'"),
        "{r}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_refusal_inside_multi_aborts_the_transaction_as_redis_would() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(&server, SIZE_RULES).await;
    let mut c = Conn::open(proxy.addr).await;
    let two_mib = "v".repeat(2 * 1024 * 1024);
    assert_eq!(c.call(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.call(&["SET", "ok", "1"]).await, "+QUEUED\r\n");
    assert!(c
        .call(&["SET", "blob:1", &two_mib])
        .await
        .starts_with("-ERR respguard: value of"));
    assert_eq!(
        c.call(&["EXEC"]).await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(c.call(&["EXISTS", "ok"]).await, ":0\r\n");
    proxy.shutdown().await;
}

#[tokio::test]
async fn observe_mode_changes_nothing_and_counts_what_it_would_do() {
    let rules = r#"
[guards]
mode = "observe"
[[guards.ttl.rules]]
pattern = "obs:*"
ttl = "60s"
[[guards.size.rules]]
pattern = "obs:*"
max_value = "10"
"#;
    let server = RedisServer::start();
    let proxy = proxy_with_toml(&server, rules).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", "obs:1", "v"]).await, "+OK\r\n");
    assert_eq!(c.call(&["HSET", "obs:2", "f", "v"]).await, ":1\r\n");
    assert_eq!(
        c.call(&["SET", "obs:3", "a value longer than ten bytes"])
            .await,
        "+OK\r\n"
    );
    assert_eq!(pttl(&server, "obs:1").await, -1);
    assert_eq!(pttl(&server, "obs:2").await, -1);
    let metrics = scrape(proxy.admin_addr.unwrap()).await;
    let count = |action: &str, guard: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("respguard_guard_decisions_total")
                    && l.contains(&format!("action=\"{action}\""))
                    && l.contains(&format!("guard=\"{guard}\""))
                    && l.contains("mode=\"observe\"")
                    && l.contains("rule=\"obs:*\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.to_string())
    };
    // SET obs:3 would have been refused by the size guard, so the TTL guard never saw it.
    assert_eq!(count("ttl_added", "ttl").as_deref(), Some("3"), "{metrics}");
    assert_eq!(count("refused", "size").as_deref(), Some("1"), "{metrics}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_deep_pipeline_mixing_guarded_and_plain_commands_gets_redis_replies() {
    let rules = format!("{TTL_RULES}\n{SIZE_RULES}");
    for proto in [2, 3] {
        let mut owned: Vec<Vec<String>> = Vec::new();
        for i in 0..10_000 {
            let k = format!("c:{}", i % 50);
            let cmd: Vec<String> = match i % 9 {
                0 => vec!["SET".into(), k, i.to_string()],
                1 => vec!["GET".into(), k],
                2 => vec![
                    "HSET".into(),
                    format!("c:h{}", i % 7),
                    "f".into(),
                    i.to_string(),
                ],
                3 => vec!["MSET".into(), k, "1".into(), format!("p:{i}"), "2".into()],
                4 => vec!["INCR".into(), format!("p:n{}", i % 3)],
                5 => vec![
                    "SET".into(),
                    format!("c:e{}", i % 5),
                    "v".into(),
                    "EX".into(),
                    "100000".into(),
                ],
                6 => vec!["SET".into(), format!("blob:{}", i % 4), "v".repeat(i % 300)],
                7 => vec!["GETSET".into(), k, "g".into()],
                _ => vec!["LPUSH".into(), format!("c:l{}", i % 3), "x".into()],
            };
            owned.push(cmd);
        }
        let cmds: Vec<Vec<&str>> = owned
            .iter()
            .map(|c| c.iter().map(|s| s.as_str()).collect())
            .collect();
        let refs: Vec<&[&str]> = cmds.iter().map(|c| c.as_slice()).collect();
        let behind = same_replies(&rules, proto, &refs).await;
        assert!(in_default_window(pttl(&behind, "c:h3").await));
        assert!(
            (590_000..=600_000).contains(&pttl(&behind, "c:e1").await),
            "clamped by max_ttl"
        );
    }
}

#[tokio::test]
async fn rules_narrowed_to_a_user_a_client_name_or_a_network() {
    let rules = r#"
[[guards.ttl.rules]]
pattern = "n:*"
user = "worker"
ttl = "60s"
[[guards.ttl.rules]]
pattern = "n:*"
client_name = "billing"
ttl = "120s"
[[guards.ttl.rules]]
pattern = "n:*"
client_address = "10.0.0.0/8"
ttl = "180s"
[[guards.ttl.rules]]
pattern = "local:*"
client_address = "127.0.0.0/8"
ttl = "180s"
"#;
    let server = RedisServer::start();
    let mut admin = Conn::open(server.addr()).await;
    admin
        .call(&["ACL", "SETUSER", "worker", "on", ">pw", "~*", "+@all"])
        .await;
    let proxy = proxy_with_toml(&server, rules).await;
    // Neither the user nor the name: no rule applies (and 127.0.0.1 is not in 10.0.0.0/8).
    let mut c = Conn::open(proxy.addr).await;
    c.call(&["SET", "n:anon", "v"]).await;
    assert_eq!(pttl(&server, "n:anon").await, -1);
    // The user's rule applies once Redis has accepted the AUTH.
    assert_eq!(
        c.call(&["AUTH", "worker", "wrong"]).await.get(..10),
        Some("-WRONGPASS")
    );
    c.call(&["SET", "n:before", "v"]).await;
    assert_eq!(
        pttl(&server, "n:before").await,
        -1,
        "a failed AUTH changes nothing"
    );
    assert_eq!(c.call(&["AUTH", "worker", "pw"]).await, "+OK\r\n");
    c.call(&["SET", "n:worker", "v"]).await;
    assert!(in_default_window(pttl(&server, "n:worker").await));
    // The client name's rule, set through HELLO ... SETNAME or CLIENT SETNAME.
    let mut b = Conn::open(proxy.addr).await;
    b.call(&["CLIENT", "SETNAME", "billing"]).await;
    b.call(&["SET", "n:billing", "v"]).await;
    assert!((110_000..=120_000).contains(&pttl(&server, "n:billing").await));
    let mut h = Conn::open(proxy.addr).await;
    h.call(&["HELLO", "3", "SETNAME", "billing"]).await;
    h.call(&["SET", "n:hello", "v"]).await;
    assert!((110_000..=120_000).contains(&pttl(&server, "n:hello").await));
    // RESET forgets the name.
    h.call(&["RESET"]).await;
    h.call(&["SET", "n:reset", "v"]).await;
    assert_eq!(pttl(&server, "n:reset").await, -1);
    // The network rule applies to this test's loopback clients.
    h.call(&["SET", "local:k", "v"]).await;
    assert!((170_000..=180_000).contains(&pttl(&server, "local:k").await));
    proxy.shutdown().await;
}
