//! The TTL guard's catch-all rules and job libraries' keys: a `pattern = "*"` rule (the
//! Betterworks fix: no cache key lives for ever) gives every other key its TTL and lowers
//! expiries to its `max_ttl`, but leaves keys with a job library's shape alone, so queues,
//! job data and results a library expires itself survive. Real Huey, RQ and Celery run
//! through the proxy (scripts in `tests/clients/ttl/`; a missing library fails the test
//! with the command that installs it); what they left in Redis is read from Redis itself.

use serde_json::Value;

use crate::harness::*;
use respguard::app::ProxyHandle;
use respguard::guard::library::library_of;

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/ttl");

/// The rule's TTL and `max_ttl`, in milliseconds: an odd value no library uses for its
/// own expiries, nor within [`SLACK_MS`] below (RQ gives a stopped worker's key 60 s, Bull
/// and BullMQ their stalled-check key 30 s; their longer expiries, RQ's 500 s results and
/// Celery's day, are above it, so a rule lowering them would show), so a key's PTTL says
/// whether the rule gave it.
const RULE_MS: i64 = 97_000;

/// How long a test may take after the rule gave a key its TTL: a PTTL within this of
/// [`RULE_MS`] is the rule's.
const SLACK_MS: i64 = 20_000;

/// A catch-all rule that also gives pushed lists, sets and sorted sets a TTL: what a user
/// writes to make sure nothing lives for ever.
pub(crate) const CATCH_ALL: &str = r#"
[[guards.ttl.rules]]
pattern = "*"
ttl = "97s"
max_ttl = "97s"
commands = ["LPUSH", "RPUSH", "SADD", "ZADD"]
"#;

async fn pttl(server: &RedisServer, key: &[u8]) -> i64 {
    let mut c = Conn::open(server.addr()).await;
    c.send(&encode_bytes(&[&b"PTTL"[..], key])).await;
    let r = String::from_utf8_lossy(&c.reply().await).into_owned();
    r.trim_start_matches(':')
        .trim()
        .parse()
        .expect("PTTL answers an integer")
}

/// A key the rule gave its TTL, or lowered to it.
fn given_the_rule_s_ttl(t: i64) -> bool {
    t > 0 && t <= RULE_MS
}

/// A job library's key is as the library left it: no expiry, or its own, which is not the
/// rule's (above `max_ttl`, or too far below it to be the rule's TTL counting down).
fn as_the_library_left_it(t: i64) -> bool {
    t == -1 || t > RULE_MS || (t > 0 && t <= RULE_MS - SLACK_MS)
}

#[tokio::test]
async fn a_catch_all_rule_leaves_job_library_keys_alone() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(&server, CATCH_ALL).await;
    let mut c = Conn::open(proxy.addr).await;
    let writes: &[&[&str]] = &[
        &["SET", "cache:user:1", "v"],
        &["HSET", "cache:page:1", "f", "v"],
        &["SET", "cache:long", "v", "EX", "86400"],
        // Bee-Queue's hash of every job's data; Huey's one results hash.
        &["HSET", "bq:emails:jobs", "1", "{\"data\":1}"],
        &["HSET", "huey.results.ttl", "lock", "1"],
        &["HSETNX", "huey.results.ttl", "r1", "2"],
        &["LPUSH", "queue:default", "{}"],
        &["ZADD", "schedule", "1", "{}"],
        &["SADD", "_kombu.binding.celery", "celery"],
        &["SET", "rq:job:1:lock", "v"],
        &["MSET", "rq:job:2", "v", "cache:m", "v"],
        // Celery's own result expiry (result_expires, a day) is not lowered to max_ttl.
        &["SETEX", "celery-task-meta-1", "86400", "{}"],
        &["SET", "bull:emails:1", "v", "PX", "86400000"],
    ];
    for w in writes {
        let reply = c.call(w).await;
        assert!(!reply.starts_with('-'), "{w:?}: {reply}");
    }
    for w in writes {
        let keys: Vec<&str> = if w[0] == "MSET" {
            vec![w[1], w[3]]
        } else {
            vec![w[1]]
        };
        for key in keys {
            let t = pttl(&server, key.as_bytes()).await;
            if library_of(key.as_bytes()).is_some() {
                assert!(as_the_library_left_it(t), "{key}: PTTL {t}");
            } else {
                assert!(given_the_rule_s_ttl(t), "{key}: PTTL {t}");
            }
        }
    }
    assert_eq!(pttl(&server, b"bq:emails:jobs").await, -1);
    assert_eq!(pttl(&server, b"huey.results.ttl").await, -1);
    assert!(pttl(&server, b"celery-task-meta-1").await > 86_000_000);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_mset_too_large_to_list_leaves_library_keys_alone_too() {
    // More arguments than one script call passes on: the pairs script matches the keys.
    let server = RedisServer::start();
    let proxy = proxy_with_toml(&server, CATCH_ALL).await;
    let mut c = Conn::open(proxy.addr).await;
    let mut mset = vec!["MSET".to_string()];
    for i in 0..1500 {
        let key = match i % 3 {
            0 => format!("cache:{i}"),
            1 => format!("rq:job:{i}"),
            _ => format!("huey.results.{i}"),
        };
        mset.extend([key, "v".into()]);
    }
    let args: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(c.call(&args).await, "+OK\r\n");
    for key in args[1..].iter().step_by(2).take(30) {
        let t = pttl(&server, key.as_bytes()).await;
        if key.starts_with("cache:") {
            assert!(given_the_rule_s_ttl(t), "{key}: PTTL {t}");
        } else {
            assert_eq!(t, -1, "{key}");
        }
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_rule_that_names_library_keys_covers_them_after_a_catch_all() {
    let server = RedisServer::start();
    let rules = r#"
[[guards.ttl.rules]]
pattern = "*"
ttl = "1h"
[[guards.ttl.rules]]
pattern = "bull:*"
ttl = "30s"
max_ttl = "30s"
"#;
    let proxy = proxy_with_toml(&server, rules).await;
    let mut c = Conn::open(proxy.addr).await;
    for w in [
        &["SET", "bull:emails:1", "v"][..],
        &["SET", "bull:emails:2", "v", "EX", "86400"],
        &["SET", "rq:job:1", "v"],
        &["SET", "cache:1", "v"],
    ] {
        assert_eq!(c.call(w).await, "+OK\r\n");
    }
    for key in ["bull:emails:1", "bull:emails:2"] {
        let t = pttl(&server, key.as_bytes()).await;
        assert!(t > 0 && t <= 30_000, "{key}: PTTL {t}");
    }
    assert_eq!(pttl(&server, b"rq:job:1").await, -1);
    let t = pttl(&server, b"cache:1").await;
    assert!(t > 30_000 && t <= 3_600_000, "cache:1: PTTL {t}");
    proxy.shutdown().await;
}

/// Run a library's script through a proxy with the catch-all rule; its JSON report.
async fn run(script: &str, install: &str) -> (RedisServer, ProxyHandle, Value) {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(&server, CATCH_ALL).await;
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args([
            proxy.addr.port().to_string(),
            server.addr().port().to_string(),
        ])
        .current_dir(SCRIPTS)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({install}):\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    let report: Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{script} printed {stdout:?}: {e}"));
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["values"], report["want"], "results: {report}");
    (server, proxy, report)
}

/// After a library ran: a cache key written through the same proxy gets the rule's TTL,
/// and every key in Redis with a job library's shape is as the library left it.
pub(crate) async fn assert_rule_active_and_library_keys_untouched(
    server: &RedisServer,
    proxy: &ProxyHandle,
) {
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", "cache:probe", "v"]).await, "+OK\r\n");
    let t = pttl(server, b"cache:probe").await;
    assert!(given_the_rule_s_ttl(t), "cache:probe: PTTL {t}");
    let mut direct = Conn::open(server.addr()).await;
    direct.send(&encode(&["KEYS", "*"])).await;
    let keys = crate::fidelity::bulk_strings(&direct.reply().await);
    let library_keys: Vec<&Vec<u8>> = keys.iter().filter(|k| library_of(k).is_some()).collect();
    assert!(!library_keys.is_empty(), "the library left no keys");
    for key in library_keys {
        let t = pttl(server, key).await;
        assert!(
            as_the_library_left_it(t),
            "{}: PTTL {t}",
            String::from_utf8_lossy(key)
        );
    }
}

fn i64s(report: &Value, field: &str) -> Vec<i64> {
    report[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
        .iter()
        .map(|v| v.as_i64().expect("an integer"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn huey_keeps_its_queue_and_results_hash_under_a_catch_all_rule() {
    let (server, proxy, report) = run("huey_catch_all.py", "pip install huey").await;
    assert_eq!(report["queued"], 21, "{report}");
    // Queue, lock and results all live in keys Huey never expires.
    for field in ["queue_pttl", "lock_pttl", "results_pttl"] {
        assert_eq!(report[field], -1, "{field}: {report}");
    }
    assert_eq!(report["stored"], 21, "{report}");
    assert_rule_active_and_library_keys_untouched(&server, &proxy).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rq_keeps_its_jobs_and_own_result_ttl_under_a_catch_all_rule() {
    let (server, proxy, report) = run("rq_catch_all.py", "pip install rq").await;
    assert_eq!(report["queued"], 20, "{report}");
    assert!(
        i64s(&report, "waiting_pttls").iter().all(|&t| t == -1),
        "{report}"
    );
    // RQ expires a finished job after its result_ttl (500 s), not the rule's max_ttl.
    let result_ttl = report["result_ttl_ms"].as_i64().expect("result_ttl_ms");
    assert!(
        i64s(&report, "finished_pttls")
            .iter()
            .all(|&t| t > result_ttl - 60_000 && t <= result_ttl),
        "{report}"
    );
    assert_rule_active_and_library_keys_untouched(&server, &proxy).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn celery_keeps_its_queue_and_own_result_expiry_under_a_catch_all_rule() {
    let (server, proxy, report) = run("celery_catch_all.py", "pip install celery[redis]").await;
    assert_eq!(report["queued"], 10, "{report}");
    assert_eq!(report["queue_pttl"], -1, "{report}");
    // Celery expires results after result_expires (a day), not the rule's max_ttl.
    let expires = report["result_expires_ms"]
        .as_i64()
        .expect("result_expires_ms");
    assert!(
        i64s(&report, "result_pttls")
            .iter()
            .all(|&t| t > expires - 600_000 && t <= expires),
        "{report}"
    );
    assert_rule_active_and_library_keys_untouched(&server, &proxy).await;
    proxy.shutdown().await;
}
