//! Operating the proxy: exact metrics after known traffic, `/status`, the `RESPGUARD`
//! command and who may send it, hot reload under load (SIGHUP and `RESPGUARD RELOAD`),
//! and client authentication to the proxy.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::harness::{
    encode, eventually, http_get, proxy_config, python_ok, sample, scrape, start_proxy, Conn,
    RedisServer, WAIT,
};
use crate::memory::ProxyProcess;

#[tokio::test]
async fn metrics_count_known_traffic_exactly() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("respguard.toml");
    std::fs::write(
        &config,
        "[[guards.size.rules]]\npattern = \"m:*\"\nmax_value = \"8B\"\n",
    )
    .unwrap();
    let (proxy, admin) = ProxyProcess::start_with_admin(&server.url(), &config);
    let mut c = Conn::open(proxy.addr).await;
    let (mut sent, mut received, mut upstream_sent, mut upstream_received) = (0, 0, 0, 0);
    let mut run = |args: &[&str], reply: &[u8], forwarded: bool| {
        let request = encode(args).len();
        sent += request;
        received += reply.len();
        if forwarded {
            upstream_sent += request;
            upstream_received += reply.len();
        }
    };
    for i in 0..10 {
        let args = ["SET", "m:k", &format!("v{i}")];
        c.cmd(&args).await;
        let reply = c.reply().await;
        assert_eq!(reply, b"+OK\r\n");
        run(&args, &reply, true);
    }
    for _ in 0..5 {
        c.cmd(&["GET", "m:k"]).await;
        let reply = c.reply().await;
        assert_eq!(reply, b"$2\r\nv9\r\n");
        run(&["GET", "m:k"], &reply, true);
    }
    for _ in 0..3 {
        c.cmd(&["NOSUCHCOMMAND", "x"]).await;
        let reply = c.reply().await;
        assert!(reply.starts_with(b"-ERR unknown command"));
        run(&["NOSUCHCOMMAND", "x"], &reply, true);
    }
    let big = ["SET", "m:k", "a-value-over-8-bytes"];
    c.cmd(&big).await;
    let reply = c.reply().await;
    assert!(reply.starts_with(b"-ERR respguard: value of 20 bytes"));
    run(&big, &reply, false);

    // The proxy counts a write after the socket took it, so the client can read the last
    // reply a moment before it is counted: scrape until it is.
    let body = eventually!(WAIT, "every reply byte counted", {
        let body = scrape(admin).await;
        match sample(&body, "respguard_client_sent_bytes_total") {
            Some(counted) if counted == received as f64 => Ok(body),
            counted => Err(counted),
        }
    });
    let m = |series: &str| sample(&body, series);
    assert!(body.contains("# TYPE respguard_command_duration_seconds histogram"));
    assert_eq!(
        m("respguard_command_duration_seconds_count{command=\"set\"}"),
        Some(11.0)
    );
    assert_eq!(
        m("respguard_command_duration_seconds_count{command=\"get\"}"),
        Some(5.0)
    );
    assert_eq!(
        m("respguard_command_duration_seconds_count{command=\"other\"}"),
        Some(3.0)
    );
    assert_eq!(
        m("respguard_command_duration_seconds_bucket{command=\"get\",le=\"+Inf\"}"),
        Some(5.0)
    );
    assert_eq!(m("respguard_commands_total"), Some(19.0));
    assert_eq!(
        m("respguard_client_received_bytes_total"),
        Some(sent as f64)
    );
    assert_eq!(
        m("respguard_client_sent_bytes_total"),
        Some(received as f64)
    );
    assert_eq!(
        m("respguard_upstream_sent_bytes_total"),
        Some(upstream_sent as f64)
    );
    assert_eq!(
        m("respguard_upstream_received_bytes_total"),
        Some(upstream_received as f64)
    );
    assert_eq!(
        m("respguard_guard_decisions_total{guard=\"size\",rule=\"m:*\",action=\"refused\",mode=\"enforce\"}"),
        Some(1.0)
    );
    assert_eq!(m("respguard_client_connections"), Some(1.0));
    // The session's connection and the memory monitor's (which connects on its own
    // schedule: scrape until it has).
    eventually!(
        WAIT,
        "the session's and the monitor's upstream connections",
        {
            match sample(&scrape(admin).await, "respguard_upstream_connections") {
                Some(2.0) => Ok(()),
                n => Err(n),
            }
        }
    );
    let (rss_kib, _) = proxy.rss_kib();
    let reported = m("respguard_process_resident_memory_bytes").expect("RSS gauge");
    assert!(
        (reported / 1024.0 - rss_kib as f64).abs() < 4096.0,
        "reported {reported} bytes, /proc says {rss_kib} KiB"
    );
    assert_eq!(m("respguard_config_generation"), Some(1.0));
    // No key ever becomes a label.
    assert!(!body.contains("m:k"), "{body}");
}

#[tokio::test]
async fn status_and_the_respguard_command_report_the_proxy() {
    let server = RedisServer::start();
    let mut raw = proxy_config(&server.url());
    raw.guards.size =
        toml::from_str("[[rules]]\npattern = \"st:*\"\nmax_value = \"4B\"\n").unwrap();
    let proxy = start_proxy(raw).await;
    let mut worker = Conn::open(proxy.addr).await;
    assert_eq!(
        worker.call(&["CLIENT", "SETNAME", "worker-7"]).await,
        "+OK\r\n"
    );
    for _ in 0..3 {
        let r = worker.call(&["SET", "st:a", "too-long"]).await;
        assert!(r.starts_with("-ERR respguard: value of 8 bytes"), "{r}");
    }
    let mut other = Conn::open(proxy.addr).await;
    assert!(other
        .call(&["SET", "st:b", "12345"])
        .await
        .starts_with("-ERR"));

    let response = http_get(proxy.admin_addr.unwrap(), "/status").await;
    assert!(
        response.head.contains("Content-Type: application/json"),
        "{}",
        response.head
    );
    let status = response.json();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["config"]["generation"], 1);
    assert_eq!(status["config"]["hash"].as_str().unwrap().len(), 12);
    assert_eq!(status["clients"]["connected"], 2);
    assert_eq!(status["upstream"]["address"], server.addr().to_string());
    assert_eq!(
        status["top_refused_clients"],
        serde_json::json!([
            {"client": "127.0.0.1 name=worker-7", "refusals": 3},
            {"client": "127.0.0.1", "refusals": 1},
        ])
    );
    assert_eq!(status["memory"]["shedding_level"], "normal");

    // The same report over RESP, as redis-cli would show it.
    let reply = other.call(&["RESPGUARD", "STATUS"]).await;
    let body = reply.split_once("\r\n").unwrap().1.trim_end();
    let over_resp: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        over_resp["top_refused_clients"],
        status["top_refused_clients"]
    );
    let rules = other.call(&["respguard", "rules"]).await;
    assert!(rules.contains("max_value = \"4\""), "{rules}");
    assert!(rules.contains("pattern = \"st:*\""), "{rules}");
    assert_eq!(
        other.call(&["RESPGUARD", "RELOAD"]).await,
        "-ERR respguard: reload refused, the rules in force are unchanged: the proxy was started without a configuration file (--config): nothing to reload\r\n"
    );
    assert_eq!(
        other.call(&["RESPGUARD", "FROB"]).await,
        "-ERR unknown subcommand 'FROB'. Try RESPGUARD HELP.\r\n"
    );
    assert!(other
        .call(&["RESPGUARD", "HELP"])
        .await
        .starts_with("*6\r\n"));
    // Inside MULTI it aborts the transaction, as any queue-time error does.
    assert_eq!(other.call(&["MULTI"]).await, "+OK\r\n");
    assert!(other
        .call(&["RESPGUARD", "STATUS"])
        .await
        .starts_with("-ERR respguard: RESPGUARD commands cannot be queued"));
    assert!(other.call(&["EXEC"]).await.starts_with("-EXECABORT"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_respguard_command_is_refused_unless_the_connection_is_allowed() {
    let server = RedisServer::start();
    let mut direct = Conn::open(server.addr()).await;
    assert_eq!(
        direct
            .call(&["ACL", "SETUSER", "ops", "on", ">ops-pass", "~*", "+@all"])
            .await,
        "+OK\r\n"
    );
    let refused = "-NOPERM respguard: this connection may not send RESPGUARD commands (admin.command_networks, admin.command_users)\r\n";

    let mut raw = proxy_config(&server.url());
    raw.admin.command_networks = vec![];
    let closed = start_proxy(raw).await;
    let mut c = Conn::open(closed.addr).await;
    assert_eq!(c.call(&["RESPGUARD", "STATUS"]).await, refused);
    closed.shutdown().await;

    let mut raw = proxy_config(&server.url());
    raw.admin.command_users = vec!["ops".into()];
    let ops_only = start_proxy(raw).await;
    let mut c = Conn::open(ops_only.addr).await;
    assert_eq!(c.call(&["RESPGUARD", "STATUS"]).await, refused);
    assert_eq!(c.call(&["AUTH", "ops", "ops-pass"]).await, "+OK\r\n");
    assert!(c.call(&["RESPGUARD", "STATUS"]).await.starts_with('$'));
    ops_only.shutdown().await;
}

/// What one client saw during the reload test.
#[derive(Default)]
struct Seen {
    strict_batches: [AtomicUsize; 5],
}

/// The reload test's phases: 0 while a reload is in progress, then the rules in force.
const LOOSE: u64 = 1;
const TIGHT: u64 = 2;

const LOOSE_RULES: &str = "[[guards.size.rules]]\npattern = \"rl:*\"\nmax_value = \"1KiB\"\n";
const TIGHT_RULES: &str = "[[guards.size.rules]]\npattern = \"rl:*\"\nmax_value = \"10B\"\n";

/// 100 clients pipelining without pause while the rules change: every ECHO is answered
/// once, in order; a SET of a 20-byte value passes under the loose rules and is refused
/// under the tight ones, for every batch sent and answered wholly under one set of rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_under_load_without_losing_a_command() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("respguard.toml");
    std::fs::write(&config, LOOSE_RULES).unwrap();
    let (proxy, admin) = ProxyProcess::start_with_admin(&server.url(), &config);
    // Even: the phase's rules are in force; odd: a change is under way.
    let epoch = Arc::new(AtomicU64::new(2 * LOOSE));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for id in 0..100 {
        let (epoch, stop, seen, progress) = (
            Arc::clone(&epoch),
            Arc::clone(&stop),
            Arc::clone(&seen),
            Arc::clone(&progress),
        );
        let addr = proxy.addr;
        clients.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await;
            let mut n = 0u64;
            let mut commands = 0u64;
            while !stop.load(Ordering::Acquire) {
                let before = epoch.load(Ordering::Acquire);
                let mut batch = Vec::new();
                for i in 0..10 {
                    batch.extend(encode(&["ECHO", &format!("{id}:{}", n + i)]));
                    batch.extend(encode(&[
                        "SET",
                        &format!("rl:{id}"),
                        "twenty-bytes-value!!",
                    ]));
                }
                c.send(&batch).await;
                let mut outcomes = Vec::new();
                for i in 0..10 {
                    let echo = String::from_utf8(c.reply().await).unwrap();
                    let want = format!("{id}:{}", n + i);
                    assert_eq!(
                        echo,
                        format!("${}\r\n{want}\r\n", want.len()),
                        "client {id}"
                    );
                    outcomes.push(String::from_utf8(c.reply().await).unwrap());
                }
                n += 10;
                commands += 20;
                let after = epoch.load(Ordering::Acquire);
                if before == after && before % 2 == 0 {
                    let phase = before / 2;
                    for o in &outcomes {
                        if phase == LOOSE {
                            assert_eq!(o, "+OK\r\n", "client {id}, loose rules");
                        } else {
                            assert!(
                                o.starts_with("-ERR respguard: value of 20 bytes for key"),
                                "client {id}, tight rules: {o}"
                            );
                        }
                    }
                    seen.strict_batches[phase as usize].fetch_add(1, Ordering::Relaxed);
                    progress.notify_one();
                }
            }
            commands
        }));
    }
    // Wait until `count` more batches have run wholly under the phase now in force.
    let run_phase = |phase: u64| {
        let seen = Arc::clone(&seen);
        let progress = Arc::clone(&progress);
        async move {
            let start = seen.strict_batches[phase as usize].load(Ordering::Relaxed);
            while seen.strict_batches[phase as usize].load(Ordering::Relaxed) < start + 300 {
                tokio::time::timeout(WAIT, progress.notified())
                    .await
                    .expect("clients make progress");
            }
        }
    };
    let generation = || async {
        http_get(admin, "/status").await.json()["config"]["generation"]
            .as_u64()
            .unwrap()
    };
    let mut ops = Conn::open(proxy.addr).await;
    run_phase(LOOSE).await;

    // 1. SIGHUP to the tight rules.
    epoch.store(2 * LOOSE + 1, Ordering::Release);
    std::fs::write(&config, TIGHT_RULES).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually!(WAIT, "SIGHUP reloaded", generation().await == 2);
    epoch.store(2 * TIGHT, Ordering::Release);
    run_phase(TIGHT).await;

    // 2. An invalid file is refused and the tight rules stay.
    epoch.store(2 * TIGHT + 1, Ordering::Release);
    std::fs::write(
        &config,
        "[[guards.size.rules]]\npattern = \"rl:*\"\nmax_value = \"ten\"\n",
    )
    .unwrap();
    let refused = ops.call(&["RESPGUARD", "RELOAD"]).await;
    assert!(
        refused.starts_with("-ERR respguard: reload refused, the rules in force are unchanged:"),
        "{refused}"
    );
    assert!(refused.contains("max_value"), "{refused}");
    epoch.store(2 * TIGHT, Ordering::Release);
    run_phase(TIGHT).await;
    let status = http_get(admin, "/status").await.json();
    assert_eq!(status["config"]["generation"], 2);
    assert_eq!(status["config"]["last_reload"]["applied"], false);

    // 3. RESPGUARD RELOAD back to the loose rules; a listen change needs a restart.
    epoch.store(2 * TIGHT + 1, Ordering::Release);
    std::fs::write(
        &config,
        format!("[proxy]\nmax_clients = 5000\n{LOOSE_RULES}"),
    )
    .unwrap();
    assert_eq!(
        ops.call(&["RESPGUARD", "RELOAD"]).await,
        "+OK generation 3; needs a restart to apply: proxy.max_clients\r\n"
    );
    epoch.store(2 * LOOSE, Ordering::Release);
    run_phase(LOOSE).await;

    stop.store(true, Ordering::Release);
    let mut total = 0;
    for c in clients {
        total += c.await.expect("client saw every reply it expected");
    }
    let body = scrape(admin).await;
    let echoes = sample(
        &body,
        "respguard_command_duration_seconds_count{command=\"echo\"}",
    )
    .expect("echo count") as u64;
    assert_eq!(echoes * 2, total, "each command answered exactly once");
    assert_eq!(
        sample(&body, "respguard_config_reloads_total{result=\"applied\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, "respguard_config_reloads_total{result=\"refused\"}"),
        Some(1.0)
    );
}

/// A Redis with a password and a read-only ACL user, behind a proxy whose clients
/// authenticate with their own credentials.
async fn auth_setup() -> (RedisServer, respguard::app::ProxyHandle) {
    let server = RedisServer::start_with(&["--requirepass", "redis-admin-pass"]);
    let mut direct = Conn::open(server.addr()).await;
    assert_eq!(direct.call(&["AUTH", "redis-admin-pass"]).await, "+OK\r\n");
    assert_eq!(
        direct
            .call(&[
                "ACL",
                "SETUSER",
                "ro",
                "on",
                ">ro-pass",
                "~*",
                "+@read",
                "+@connection",
                "+acl|whoami"
            ])
            .await,
        "+OK\r\n"
    );
    assert_eq!(
        direct
            .call(&["ACL", "SETUSER", "rw", "on", ">rw-pass", "~*", "+@all", "-@admin"])
            .await,
        "+OK\r\n"
    );
    let mut raw = proxy_config(&format!("redis://:redis-admin-pass@{}", server.addr()));
    raw.auth = toml::from_str(
        r#"
        [[users]]
        name = "writer"
        password = "writer-pass"
        upstream_user = "rw"
        upstream_password = "rw-pass"

        [[users]]
        name = "reader"
        password_sha256 = "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7"
        upstream_user = "ro"
        upstream_password = "ro-pass"

        [[users]]
        name = "default"
        password = "app-pass"
        upstream_user = "rw"
        upstream_password = "rw-pass"
        "#,
    )
    .unwrap();
    (server, start_proxy(raw).await)
}

#[tokio::test]
async fn clients_authenticate_to_the_proxy_with_their_own_credentials() {
    let (_server, proxy) = auth_setup().await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(
        c.call(&["GET", "a"]).await,
        "-NOAUTH Authentication required.\r\n"
    );
    assert!(c
        .call(&["HELLO", "3"])
        .await
        .starts_with("-NOAUTH HELLO must be called"));
    assert_eq!(
        c.call(&["AUTH", "writer", "redis-admin-pass"]).await,
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(
        c.call(&["PING"]).await,
        "-NOAUTH Authentication required.\r\n"
    );
    // A pipeline: AUTH, then commands that rely on it.
    let mut batch = encode(&["AUTH", "writer", "writer-pass"]);
    batch.extend(encode(&["SET", "auth:k", "v"]));
    batch.extend(encode(&["ACL", "WHOAMI"]));
    c.send(&batch).await;
    assert_eq!(c.replies(3).await, "+OK\r\n+OK\r\n$2\r\nrw\r\n");

    // A mapped user runs as its Redis user: reads pass, writes meet Redis's own ACL.
    let mut r = Conn::open(proxy.addr).await;
    let hello = r
        .call(&["HELLO", "3", "AUTH", "reader", "hunter2", "SETNAME", "rdr"])
        .await;
    assert!(hello.starts_with("%"), "{hello}");
    assert_eq!(r.call(&["ACL", "WHOAMI"]).await, "$2\r\nro\r\n");
    assert_eq!(r.call(&["GET", "auth:k"]).await, "$1\r\nv\r\n");
    assert!(r.call(&["SET", "auth:k", "w"]).await.starts_with("-NOPERM"));
    assert_eq!(r.call(&["CLIENT", "GETNAME"]).await, "$3\r\nrdr\r\n");
    // RESET forgets the client, here as in Redis.
    assert_eq!(r.call(&["RESET"]).await, "+RESET\r\n");
    assert_eq!(
        r.call(&["GET", "auth:k"]).await,
        "-NOAUTH Authentication required.\r\n"
    );
    // AUTH <password> is the `default` user's.
    assert_eq!(r.call(&["AUTH", "app-pass"]).await, "+OK\r\n");
    assert_eq!(r.call(&["GET", "auth:k"]).await, "$1\r\nv\r\n");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_authenticates_to_the_proxy() {
    let (_server, proxy) = auth_setup().await;
    let script = format!(
        r#"
import redis
r = redis.Redis(host="127.0.0.1", port={port}, username="reader", password="hunter2", protocol=3)
assert r.acl_whoami() == b"ro", r.acl_whoami()
try:
    r.set("py:k", "v")
    raise SystemExit("the read-only user wrote")
except redis.exceptions.NoPermissionError:
    pass
try:
    redis.Redis(host="127.0.0.1", port={port}, password="wrong").ping()
    raise SystemExit("a wrong password was accepted")
except redis.exceptions.AuthenticationError:
    pass
print("ok")
"#,
        port = proxy.addr.port()
    );
    python_ok(&script).await;
    proxy.shutdown().await;
}
