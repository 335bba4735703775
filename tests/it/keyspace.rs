//! The live keyspace insight through the real proxy and a real Redis: exact figures for a
//! known workload (sample rate 1, fewer prefixes than the capacity), the report bounded
//! under many prefixes, `RESPGUARD KEYSPACE` and its `RESET`, and a reload that keeps the
//! insight and its counts while the new rules feed it.

use crate::harness::*;

/// The report as `RESPGUARD KEYSPACE` answers it: a bulk string of JSON.
async fn keyspace(conn: &mut Conn) -> serde_json::Value {
    let reply = conn.call(&["RESPGUARD", "KEYSPACE"]).await;
    assert!(reply.starts_with('$'), "{reply}");
    let body = reply.split_once("\r\n").unwrap().1.trim_end();
    serde_json::from_str(body).unwrap()
}

fn prefix<'r>(report: &'r serde_json::Value, name: &str) -> &'r serde_json::Value {
    report["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["prefix"] == name)
        .unwrap_or_else(|| panic!("{name} not in {report:#}"))
}

/// `fields` of a prefix, in order.
fn figures(p: &serde_json::Value, fields: &[&str]) -> Vec<u64> {
    fields.iter().map(|f| p[*f].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn a_known_workload_is_reported_exactly() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(
        &server,
        r#"
        [keyspace]
        sample_rate = 1
        [[guards.ttl.rules]]
        pattern = "cache:*"
        ttl = "1h"
        [[guards.size.rules]]
        pattern = "*"
        max_value = "64KiB"
        "#,
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    let big = "x".repeat(50_000);
    let script: Vec<Vec<&str>> = vec![
        vec!["SET", "cache:user:1", "hello"],
        vec!["SET", "cache:user:2", "abc", "EX", "100"],
        vec!["SET", "cache:user:3", "abcdefgh"],
        vec!["SET", "session:9f8e7d6c5b4a", "0123456789"],
        vec!["SET", "session:1a2b3c4d5e6f", "0123456789"],
        vec!["SET", "blob:report:7", &big],
        vec!["SET", "blob:report:8", "too large", "PX", "1"],
        vec!["RPUSH", "queue:jobs", "a", "b", "c"],
        vec!["RPUSH", "queue:jobs", "d", "e"],
        vec!["LPOP", "queue:jobs"],
        vec!["LPOP", "queue:jobs", "2"],
        vec!["ZADD", "board", "1", "a", "2", "b"],
    ];
    for cmd in &script {
        let reply = c.call(cmd).await;
        assert!(!reply.starts_with('-'), "{cmd:?}: {reply}");
    }
    for _ in 0..20 {
        assert_eq!(c.call(&["GET", "cache:user:1"]).await, "$5\r\nhello\r\n");
    }
    // An oversized value is refused: an operation, not a write.
    let refused = c.call(&["SET", "blob:report:9", &"y".repeat(70_000)]).await;
    assert!(
        refused.starts_with("-ERR respguard: value of 70000 bytes"),
        "{refused}"
    );

    let report = keyspace(&mut c).await;
    assert_eq!(report["sample_rate"], 1);
    assert_eq!(report["evicted_prefixes"], 0);
    let counted = [
        "operations",
        "writes",
        "writes_without_ttl",
        "writes_with_ttl",
        "ttl_added",
    ];
    // Two writes got the TTL guard's default, one had its own, then 20 reads.
    assert_eq!(
        figures(prefix(&report, "cache:user:*"), &counted),
        [23, 3, 0, 1, 2]
    );
    assert_eq!(
        figures(prefix(&report, "session:*"), &counted),
        [2, 2, 2, 0, 0]
    );
    let blob = prefix(&report, "blob:report:*");
    assert_eq!(figures(blob, &counted), [3, 2, 1, 1, 0]);
    assert_eq!(blob["largest_value_bytes"], 50_000);
    // Values as the size guard counts them, options included (`PX 1`).
    assert_eq!(blob["bytes_written"], 50_000 + 9 + 2 + 1);
    let queue = prefix(&report, "queue:*");
    assert_eq!(figures(queue, &["operations", "pushes", "pops"]), [4, 5, 3]);
    // `queue:*` is the shape of Sidekiq's queues; a cache prefix has no library.
    assert_eq!(queue["library"], "sidekiq");
    assert!(prefix(&report, "cache:user:*")["library"].is_null());
    assert_eq!(
        figures(prefix(&report, "board"), &["pushes", "pops"]),
        [2, 0]
    );
    let hot = &report["hot_keys"][0];
    assert_eq!(hot["key"], "cache:user:1");
    assert_eq!(
        (hot["operations"].as_u64(), hot["error_bound"].as_u64()),
        (Some(21), Some(0))
    );
    // What the report says of TTLs is what Redis holds.
    let mut direct = Conn::open(server.addr()).await;
    for (key, has_ttl) in [
        ("cache:user:1", true),
        ("cache:user:3", true),
        ("session:9f8e7d6c5b4a", false),
    ] {
        let ttl = direct.call(&["TTL", key]).await;
        assert_eq!(ttl != ":-1\r\n", has_ttl, "{key}: {ttl}");
    }
    // The same report from the control plane (what /keyspace serves).
    let live = proxy.control.keyspace().unwrap();
    assert_eq!(
        live.prefixes.len(),
        report["prefixes"].as_array().unwrap().len()
    );

    assert_eq!(c.call(&["RESPGUARD", "KEYSPACE", "RESET"]).await, "+OK\r\n");
    let report = keyspace(&mut c).await;
    assert_eq!(report["tracked_prefixes"], 0);
    assert_eq!(report["hot_keys"], serde_json::json!([]));
    proxy.shutdown().await;
}

#[tokio::test]
async fn many_prefixes_keep_the_report_within_its_capacity() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(
        &server,
        "[keyspace]\nsample_rate = 1\nmax_prefixes = 64\nhot_keys = 4\n",
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    let commands = 5_000;
    let mut batch = Vec::new();
    for i in 0..commands {
        batch.extend(encode(&[
            "SET",
            &format!("tenant{}:item:{i}", i % 1000),
            "v",
        ]));
    }
    c.send(&batch).await;
    c.replies(commands).await;
    let report = keyspace(&mut c).await;
    assert_eq!(report["prefix_capacity"], 64);
    assert_eq!(report["tracked_prefixes"], 64);
    assert_eq!(report["prefixes"].as_array().unwrap().len(), 64);
    assert_eq!(report["hot_keys"].as_array().unwrap().len(), 4);
    assert!(report["evicted_prefixes"].as_u64().unwrap() >= 1000 - 64);
    // The counts add up to every command seen, none lost, none invented.
    let total: u64 = report["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["operations"].as_u64().unwrap())
        .sum();
    assert_eq!(total, commands as u64);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_disabled_insight_says_so() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(&server, "[keyspace]\nenabled = false\n").await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", "a:1", "v"]).await, "+OK\r\n");
    let disabled =
        "-ERR respguard: the keyspace insight is disabled (keyspace.enabled = false)\r\n";
    assert_eq!(c.call(&["RESPGUARD", "KEYSPACE"]).await, disabled);
    assert_eq!(c.call(&["RESPGUARD", "KEYSPACE", "RESET"]).await, disabled);
    assert!(proxy.control.keyspace().is_none());
    let answer = http_get(proxy.admin_addr.unwrap(), "/keyspace").await;
    assert_eq!(
        (answer.status, &*answer.body),
        (404, "keyspace insight disabled\n")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_reload_keeps_the_insight_and_its_counts() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("respguard.toml");
    let head = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[admin]\nlisten = \"\"\n",
        server.url()
    );
    std::fs::write(&path, format!("{head}[keyspace]\nsample_rate = 1\n")).unwrap();
    let mut config = respguard::config::RawConfig::from_file(&path)
        .unwrap()
        .validate()
        .unwrap();
    config.source = Some(respguard::config::ConfigSource {
        path: path.clone(),
        overrides: Default::default(),
    });
    let proxy = respguard::app::start(config).await.unwrap();
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", "cache:page:1", "v"]).await, "+OK\r\n");
    // A TTL rule added (applied) and the sample rate changed (needs a restart).
    let changed = format!(
        "{head}[keyspace]\nsample_rate = 8\n[[guards.ttl.rules]]\npattern = \"cache:*\"\nttl = \"1h\"\n"
    );
    std::fs::write(&path, changed).unwrap();
    let reload = c.call(&["RESPGUARD", "RELOAD"]).await;
    assert_eq!(
        reload,
        "+OK generation 2; needs a restart to apply: keyspace.sample_rate\r\n"
    );
    assert_eq!(c.call(&["SET", "cache:page:2", "v"]).await, "+OK\r\n");
    let report = keyspace(&mut c).await;
    assert_eq!(report["sample_rate"], 1);
    let counted = ["operations", "writes", "writes_without_ttl", "ttl_added"];
    assert_eq!(
        figures(prefix(&report, "cache:page:*"), &counted),
        [2, 2, 1, 1]
    );
    proxy.shutdown().await;
}
