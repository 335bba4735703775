//! Generic enqueue rules reading MessagePack and pickle payloads: a storm of jobs that differ
//! only in a fresh id reaches Redis once when the rule leaves the id out, and every time
//! when it does not; distinct jobs all arrive. The pickles come from Python's own `pickle`
//! and from real Huey, the MessagePack payloads from `rmp`; what arrived is counted by
//! Redis itself (LLEN on a direct connection).

use serde_json::Value;

use crate::enqueue::{enqueues, STORMS};
use crate::harness::*;
use respguard::app::ProxyHandle;

/// A proxy in front of `server` with one generic enqueue rule named `name`, dropping every
/// enqueue of a job after its first in the window.
async fn proxy_with_rule(server: &RedisServer, name: &str, settings: &str) -> ProxyHandle {
    let toml = format!(
        "[[guards.enqueue.rules]]\npreset = 'generic'\nname = '{name}'\nlimit = 1\n\
         window = '1h'\naction = 'drop'\n{settings}"
    );
    proxy_with_toml(server, &toml).await
}

/// The length of the list `key`, asked of Redis directly.
async fn llen(server: &RedisServer, key: &str) -> u64 {
    let reply = Conn::open(server.addr()).await.call(&["LLEN", key]).await;
    reply
        .trim_start_matches(':')
        .trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("LLEN {key}: {reply:?}"))
}

/// Run the Python `script` of the storms directory against the proxy; its JSON report,
/// after checking it raised no error.
async fn python_storm(script: &str, install: &str, proxy: &ProxyHandle) -> Value {
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(proxy.addr.port().to_string())
        .current_dir(STORMS)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({install}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script} printed {stdout:?}: {e}"));
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn pickles_differing_only_in_a_fresh_uuid_reach_redis_once() {
    let server = RedisServer::start();
    // A namedtuple Job(id, task, args, kwargs): `/args/0` is the uuid.UUID object.
    let proxy = proxy_with_rule(
        &server,
        "pickled",
        "pattern = 'jobs:*'\nformat = 'pickle'\nexclude = ['/args/0']\n\
         job_id = '/args/0/state/int'\nlabel = '/args/1'",
    )
    .await;
    python_storm("pickle_jobs.py", "pip install redis", &proxy).await;
    assert_eq!(llen(&server, "jobs:same").await, 1);
    assert_eq!(llen(&server, "jobs:distinct").await, 100);
    assert_eq!(enqueues(&proxy, "pickled", "duplicate").await, 99);
    assert_eq!(enqueues(&proxy, "pickled", "unread").await, 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pickles_pass_when_the_uuid_is_not_left_out() {
    let server = RedisServer::start();
    let proxy = proxy_with_rule(
        &server,
        "pickled-whole",
        "pattern = 'jobs:*'\nformat = 'pickle'",
    )
    .await;
    python_storm("pickle_jobs.py", "pip install redis", &proxy).await;
    assert_eq!(llen(&server, "jobs:same").await, 100);
    assert_eq!(llen(&server, "jobs:distinct").await, 100);
    assert_eq!(enqueues(&proxy, "pickled-whole", "first").await, 200);
    proxy.shutdown().await;
}

/// The rule of the Huey example in docs/job-libraries.md.
const HUEY_RULE: &str = "pattern = 'huey.redis.*'\ncommands = ['LPUSH']\nformat = 'pickle'\n\
                         exclude = ['/args/0']\njob_id = '/args/0'\nlabel = '/args/1'";

#[tokio::test(flavor = "multi_thread")]
async fn huey_messages_of_one_call_reach_redis_once() {
    let server = RedisServer::start();
    let proxy = proxy_with_rule(&server, "huey", HUEY_RULE).await;
    python_storm("huey_jobs.py", "pip install huey", &proxy).await;
    assert_eq!(llen(&server, "huey.redis.payloads").await, 1 + 100);
    assert_eq!(enqueues(&proxy, "huey", "duplicate").await, 99);
    proxy.shutdown().await;
}

/// A MessagePack job `{"id": <fresh>, "task": "send", "args": [arg], "nonce": <16 random
/// bytes>}`.
fn packed(arg: u64) -> Vec<u8> {
    use rmp::encode::*;
    let mut b = Vec::new();
    write_map_len(&mut b, 4).unwrap();
    write_str(&mut b, "id").unwrap();
    write_str(&mut b, &format!("{:032x}", fastrand::u128(..))).unwrap();
    write_str(&mut b, "task").unwrap();
    write_str(&mut b, "send").unwrap();
    write_str(&mut b, "args").unwrap();
    write_array_len(&mut b, 1).unwrap();
    write_uint(&mut b, arg).unwrap();
    write_str(&mut b, "nonce").unwrap();
    write_bin(&mut b, &fastrand::u128(..).to_le_bytes()).unwrap();
    b
}

/// 100 LPUSHes of the same work to `mp:same` and 100 distinct jobs to `mp:distinct`, through
/// the proxy; every reply is an integer, as LPUSH's is.
async fn msgpack_storm(proxy: &ProxyHandle) {
    let mut c = Conn::open(proxy.addr).await;
    for i in 0..100 {
        for (key, arg) in [("mp:same", 7), ("mp:distinct", i)] {
            c.send(&encode_bytes(&[
                &b"LPUSH"[..],
                key.as_bytes(),
                &packed(arg),
            ]))
            .await;
            let reply = c.reply().await;
            assert_eq!(reply[0], b':', "{:?}", String::from_utf8_lossy(&reply));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn msgpack_jobs_differing_only_in_their_id_reach_redis_once() {
    let server = RedisServer::start();
    let proxy = proxy_with_rule(
        &server,
        "packed",
        "pattern = 'mp:*'\nformat = 'msgpack'\nexclude = ['/id', '/nonce']\njob_id = '/id'\n\
         label = '/task'",
    )
    .await;
    msgpack_storm(&proxy).await;
    assert_eq!(llen(&server, "mp:same").await, 1);
    assert_eq!(llen(&server, "mp:distinct").await, 100);
    assert_eq!(enqueues(&proxy, "packed", "duplicate").await, 99);
    proxy.shutdown().await;

    // The same rule without the exclusions: every job is new.
    let server = RedisServer::start();
    let proxy = proxy_with_rule(
        &server,
        "packed-whole",
        "pattern = 'mp:*'\nformat = 'msgpack'",
    )
    .await;
    msgpack_storm(&proxy).await;
    assert_eq!(llen(&server, "mp:same").await, 100);
    assert_eq!(llen(&server, "mp:distinct").await, 100);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_payloads_are_counted_and_passed() {
    let server = RedisServer::start();
    let proxy = proxy_with_rule(&server, "pickled", "pattern = 'jobs:*'\nformat = 'pickle'").await;
    let mut c = Conn::open(proxy.addr).await;
    // Not a pickle; a pickle past the nesting bound; a pickle with an opcode never read.
    let deep = [&b"\x80\x04"[..], &[b']'; 200], &[b'a'; 199], b"."].concat();
    for payload in [
        &b"{\"not\": \"a pickle\"}"[..],
        &deep,
        b"\x80\x02cos\nsystem\n(S'x'\ntR.",
    ] {
        for _ in 0..2 {
            c.send(&encode_bytes(&[&b"LPUSH"[..], b"jobs:odd", payload]))
                .await;
            assert_eq!(c.reply().await[0], b':');
        }
    }
    assert_eq!(llen(&server, "jobs:odd").await, 6);
    assert_eq!(enqueues(&proxy, "pickled", "unread").await, 6);
    proxy.shutdown().await;
}

/// `respguard check-config` on a file with one generic rule: whether it passed, and stderr.
fn check_rule(settings: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("respguard.toml");
    let toml = format!("[[guards.enqueue.rules]]\npreset = 'generic'\npattern = 'q'\n{settings}");
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_respguard"))
        .args(["check-config", path.to_str().unwrap()])
        .env_remove("RESPGUARD_LISTEN")
        .env_remove("RESPGUARD_UPSTREAM")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_the_formats_and_what_each_needs() {
    assert!(check_rule("format = 'msgpack'\nexclude = ['/id']").0);
    assert!(check_rule("format = 'pickle'\nexclude = ['/args/0']\njob_id = '/args/0'").0);
    let (ok, err) = check_rule("format = 'yaml'");
    assert!(
        !ok && err.contains("msgpack") && err.contains("pickle"),
        "{err}"
    );
    let (ok, err) = check_rule("format = 'raw'\nexclude = ['/id']");
    assert!(!ok && err.contains("json, msgpack or pickle"), "{err}");
    let (ok, err) = check_rule("format = 'pickle'\ncommands = ['XADD']");
    assert!(
        !ok && err.contains("generic pickle rule reading XADD needs `field`"),
        "{err}"
    );
    let (ok, err) = check_rule("format = 'pickle'\nexclude = ['args']");
    assert!(!ok && err.contains("not a JSON pointer"), "{err}");
}
