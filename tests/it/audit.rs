//! `respguard audit` and `respguard suggest` against a real Redis: a seeded keyspace of 20
//! prefixes (caches with and without TTLs, sessions, hashes, lists, sets, sorted sets, and
//! the keys of Sidekiq, RQ and BullMQ) is audited by the real binary while MONITOR watches
//! every command it sends; the counts and TTL shares per prefix must be exact, the audit
//! fast and small, its commands read-only; its suggestions must pass `check-config`,
//! give the TTL-less cache a TTL and leave the job libraries' keys alone.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use respguard::config::UpstreamTarget;
use respguard::keyspace::audit::{self, AuditOptions, AuditReport};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::harness::*;

/// How a family's keys are written.
#[derive(Clone, Copy)]
enum Kind {
    Str(usize),
    Hash,
    List,
    Set,
    Zset,
}

/// Which of a family's keys get an expiry.
#[derive(Clone, Copy)]
enum Ttl {
    Never,
    All(u64),
    Half(u64),
}

/// Keys of one prefix.
struct Family {
    prefix: &'static str,
    count: u64,
    key: fn(u64) -> String,
    kind: Kind,
    ttl: Ttl,
    library: Option<&'static str>,
}

impl Family {
    fn without_ttl(&self) -> u64 {
        match self.ttl {
            Ttl::Never => self.count,
            Ttl::All(_) => 0,
            Ttl::Half(_) => self.count - self.count / 2,
        }
    }

    fn ttl_of(&self, i: u64) -> Option<u64> {
        match self.ttl {
            Ttl::Never => None,
            Ttl::All(s) => Some(s),
            Ttl::Half(s) => (i % 2 == 1).then_some(s),
        }
    }
}

/// The TTL of the `tmp*` keys in a workload of `total` keys: under a minute when the audit
/// reads them well within it, else under an hour.
fn short_ttl(total: u64) -> u64 {
    if total <= 200_000 {
        59
    } else {
        3_000
    }
}

/// The workload of `total` keys over 20 prefixes.
fn workload(total: u64) -> Vec<Family> {
    let f = |prefix, count, key, kind, ttl, library| Family {
        prefix,
        count,
        key,
        kind,
        ttl,
        library,
    };
    let scale = total / 200_000;
    let mut families = vec![
        f(
            "cache:page:*",
            20_000 * scale,
            |i| format!("cache:page:{i}"),
            Kind::Str(50),
            Ttl::All(1_800),
            None,
        ),
        f(
            "session:*",
            20_000 * scale,
            |i| format!("session:{i}"),
            Kind::Str(30),
            Ttl::All(172_800),
            None,
        ),
        f(
            "feed:*",
            20_000 * scale,
            |i| format!("feed:{i}"),
            Kind::Str(20),
            Ttl::Half(600),
            None,
        ),
        f(
            "rate:*",
            10_000 * scale,
            |i| format!("rate:{i}"),
            Kind::Str(8),
            Ttl::All(864_000),
            None,
        ),
        f(
            "user:*:*",
            10_000 * scale,
            |i| format!("user:{i}:profile"),
            Kind::Hash,
            Ttl::Never,
            None,
        ),
        f(
            "order:*:*",
            5_000 * scale,
            |i| format!("order:{i}:items"),
            Kind::List,
            Ttl::Never,
            None,
        ),
        f(
            "tags:*",
            1_000,
            |i| format!("tags:{i}"),
            Kind::Set,
            Ttl::Never,
            None,
        ),
        f(
            "leaderboard:*",
            1_000,
            |i| format!("leaderboard:{i}"),
            Kind::Zset,
            Ttl::All(7_200),
            None,
        ),
        f(
            "rq:job:*",
            5_000,
            |i| format!("rq:job:{i}"),
            Kind::Hash,
            Ttl::Never,
            Some("rq"),
        ),
        f(
            "rq:queue:*",
            1,
            |_| "rq:queue:default".into(),
            Kind::List,
            Ttl::Never,
            Some("rq"),
        ),
        f(
            "queue:*",
            2,
            |i| ["queue:default", "queue:mailers"][i as usize].into(),
            Kind::List,
            Ttl::Never,
            Some("sidekiq"),
        ),
        f(
            "schedule",
            1,
            |_| "schedule".into(),
            Kind::Zset,
            Ttl::Never,
            Some("sidekiq"),
        ),
        f(
            "retry",
            1,
            |_| "retry".into(),
            Kind::Zset,
            Ttl::Never,
            Some("sidekiq"),
        ),
        f(
            "dead",
            1,
            |_| "dead".into(),
            Kind::Zset,
            Ttl::Never,
            Some("sidekiq"),
        ),
        f(
            "stat:*",
            2,
            |i| ["stat:processed", "stat:failed"][i as usize].into(),
            Kind::Str(4),
            Ttl::Never,
            Some("sidekiq"),
        ),
        f(
            "bull:emails:*",
            2_000,
            |i| format!("bull:emails:{i}"),
            Kind::Hash,
            Ttl::Never,
            Some("bullmq"),
        ),
        // Under a minute (the 200k audit's budget is 30 s, so it reads them before they
        // expire); the million's audit may take up to two minutes on a loaded machine,
        // so there they live under an hour instead, and none expires while it runs.
        f(
            "tmp*",
            2_000,
            |i| format!("tmp{i}"),
            Kind::Str(10),
            Ttl::All(short_ttl(total)),
            None,
        ),
        f(
            "events:*",
            500,
            |i| format!("events:{i}"),
            Kind::List,
            Ttl::Never,
            None,
        ),
        f(
            "config",
            1,
            |_| "config".into(),
            Kind::Str(100),
            Ttl::Never,
            None,
        ),
    ];
    let rest = total - families.iter().map(|f| f.count).sum::<u64>();
    // The big TTL-less cache: the prefix the incidents are about.
    families.insert(
        0,
        f(
            "cache:user:*",
            rest,
            |i| format!("cache:user:{i}"),
            Kind::Str(100),
            Ttl::Never,
            None,
        ),
    );
    families
}

/// Append the commands writing key `i` of `family`; returns how many.
fn write_key(family: &Family, i: u64, out: &mut Vec<u8>) -> usize {
    let key = (family.key)(i);
    let member = format!("m{i}");
    let args: Vec<String> = match family.kind {
        Kind::Str(size) => {
            let mut a = vec!["SET".into(), key.clone(), "v".repeat(size)];
            if let Some(s) = family.ttl_of(i) {
                a.extend(["EX".into(), s.to_string()]);
            }
            out.extend(encode_bytes(&a));
            return 1;
        }
        Kind::Hash => vec!["HSET".into(), key.clone(), "f".into(), member],
        Kind::List => vec!["RPUSH".into(), key.clone(), member, "x".into()],
        Kind::Set => vec!["SADD".into(), key.clone(), member, "x".into()],
        Kind::Zset => vec!["ZADD".into(), key.clone(), "1".into(), member],
    };
    out.extend(encode_bytes(&args));
    match family.ttl_of(i) {
        Some(s) => {
            out.extend(encode_bytes(&["EXPIRE".to_string(), key, s.to_string()]));
            2
        }
        None => 1,
    }
}

/// Write the workload into `server`, pipelined: a chunk of commands out, its replies in.
async fn seed(server: &RedisServer, families: &[Family]) {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let mut out = Vec::with_capacity(4 << 20);
    let mut pending = 0;
    let mut buf = BytesMut::with_capacity(1 << 20);
    for family in families {
        for i in 0..family.count {
            pending += write_key(family, i, &mut out);
            if pending >= 20_000 {
                flush(&mut stream, &mut out, &mut pending, &mut buf).await;
            }
        }
    }
    flush(&mut stream, &mut out, &mut pending, &mut buf).await;
}

async fn flush(stream: &mut TcpStream, out: &mut Vec<u8>, pending: &mut usize, buf: &mut BytesMut) {
    stream.write_all(out).await.unwrap();
    out.clear();
    while *pending > 0 {
        while let Some(n) = frame_len(buf) {
            let reply = buf.split_to(n);
            assert!(
                !reply.starts_with(b"-"),
                "{:?}",
                String::from_utf8_lossy(&reply)
            );
            *pending -= 1;
            if *pending == 0 {
                break;
            }
        }
        if *pending > 0 {
            buf.reserve(1 << 20);
            assert!(
                stream.read_buf(buf).await.unwrap() > 0,
                "Redis closed the seeding connection"
            );
        }
    }
}

/// Every command name MONITOR shows on `server`, counted, until the marker ECHO arrives.
async fn monitor(server: &RedisServer) -> (tokio::task::JoinHandle<BTreeMap<String, u64>>, Conn) {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(&encode(&["MONITOR"])).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let ok = lines.next_line().await.unwrap().unwrap();
    assert_eq!(ok, "+OK");
    let task = tokio::spawn(async move {
        let mut names = BTreeMap::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("\"respguard-audit-done\"") {
                return names;
            }
            let name = line
                .split_once("] \"")
                .and_then(|(_, rest)| rest.split('"').next())
                .unwrap_or("?")
                .to_ascii_uppercase();
            *names.entry(name).or_insert(0) += 1;
        }
        panic!("MONITOR ended before the marker");
    });
    (task, Conn::open(server.addr()).await)
}

/// Run the real binary under `/usr/bin/time -v`; returns its stdout and peak RSS in KiB.
fn run_measured(args: &[&str]) -> (String, u64, Duration) {
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_respguard"))
        .args(args)
        .env_remove("RESPGUARD_UPSTREAM")
        .output()
        .expect("/usr/bin/time runs respguard (install the `time` package)");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rss = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {stderr}"));
    (String::from_utf8(out.stdout).unwrap(), rss, took)
}

fn respguard(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_respguard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Audit `total` seeded keys with the real binary and check everything it reports.
async fn audit_workload(total: u64, max_seconds: u64, max_rss_kib: u64) -> AuditReport {
    let server = RedisServer::start();
    let families = workload(total);
    assert_eq!(families.len(), 20);
    let seeding = Instant::now();
    seed(&server, &families).await;
    let seeded = seeding.elapsed();
    let (names, mut marker) = monitor(&server).await;
    let url = server.url();
    let (json, rss_kib, took) = tokio::task::spawn_blocking(move || {
        run_measured(&[
            "audit",
            "--upstream",
            &url,
            "--json",
            "--rate",
            "0",
            "--scan-count",
            "1000",
        ])
    })
    .await
    .unwrap();
    marker.call(&["ECHO", "respguard-audit-done"]).await;
    let names = tokio::time::timeout(WAIT, names)
        .await
        .expect("MONITOR drained")
        .unwrap();
    let report: AuditReport = serde_json::from_str(&json).expect("the --json report parses");
    println!(
        "{total} keys: seeded in {:.1} s; audit {:.1} s ({} commands, {} round trips, slowest {:.1} ms), peak RSS {} KiB",
        seeded.as_secs_f64(),
        took.as_secs_f64(),
        report.commands_sent,
        report.round_trips,
        report.slowest_round_trip_ms,
        rss_kib
    );

    // Every command it sent is read-only, and it asked about every key.
    let allowed = ["SCAN", "TYPE", "PTTL", "MEMORY", "DBSIZE"];
    for (name, n) in &names {
        assert!(
            allowed.contains(&name.as_str()),
            "the audit sent {n} × {name}"
        );
    }
    assert_eq!(names.get("TYPE"), Some(&total), "{names:?}");
    assert_eq!(names.get("PTTL"), Some(&total), "{names:?}");
    assert_eq!(names.get("MEMORY"), Some(&report.sampled_keys), "{names:?}");
    assert_eq!(
        names.values().sum::<u64>(),
        report.commands_sent,
        "{names:?}"
    );

    // Exact counts and TTL shares per prefix.
    assert!(report.complete);
    assert_eq!(report.dbsize_at_start, total);
    assert_eq!(report.scanned_keys, total);
    assert_eq!(report.vanished_keys, 0);
    assert_eq!(
        report.prefixes.len(),
        20,
        "{:?}",
        report
            .prefixes
            .iter()
            .map(|p| &p.prefix)
            .collect::<Vec<_>>()
    );
    assert!(report.other.is_none());
    for family in &families {
        let p = report
            .prefixes
            .iter()
            .find(|p| p.prefix == family.prefix)
            .unwrap_or_else(|| panic!("no prefix {}", family.prefix));
        assert_eq!(p.keys, family.count, "{}", family.prefix);
        assert_eq!(
            p.keys_without_ttl,
            family.without_ttl(),
            "{}",
            family.prefix
        );
        assert_eq!(p.ttl.none, family.without_ttl(), "{}", family.prefix);
        let share = family.without_ttl() as f64 / family.count as f64;
        assert!(
            (p.share_without_ttl - share).abs() < 1e-9,
            "{}",
            family.prefix
        );
        assert_eq!(p.library.as_deref(), family.library, "{}", family.prefix);
        assert!(
            p.sampled_keys >= 1 && p.bytes > 0,
            "{}: {p:?}",
            family.prefix
        );
        assert!(
            p.biggest.len() <= 5 && !p.biggest.is_empty(),
            "{}",
            family.prefix
        );
    }
    let bucket = |prefix: &str| {
        report
            .prefixes
            .iter()
            .find(|p| p.prefix == prefix)
            .unwrap()
            .ttl
    };
    let tmp = bucket("tmp*");
    let short = if short_ttl(total) < 60 {
        tmp.under_1m
    } else {
        tmp.under_1h
    };
    assert_eq!(short, 2_000, "{tmp:?}");
    assert_eq!(bucket("cache:page:*").under_1h, 20_000 * (total / 200_000));
    assert_eq!(bucket("feed:*").under_1h, 10_000 * (total / 200_000));
    assert_eq!(bucket("leaderboard:*").under_1d, 1_000);
    assert_eq!(bucket("session:*").under_7d, 20_000 * (total / 200_000));
    assert_eq!(bucket("rate:*").over_7d, 10_000 * (total / 200_000));
    let types = report
        .prefixes
        .iter()
        .find(|p| p.prefix == "user:*:*")
        .unwrap()
        .types;
    assert_eq!(types.hash, 10_000 * (total / 200_000));
    // The biggest prefix by bytes is the TTL-less cache.
    assert_eq!(report.prefixes[0].prefix, "cache:user:*");

    // Bounded time and memory.
    assert!(
        took < Duration::from_secs(max_seconds),
        "audit took {took:?}"
    );
    assert!(rss_kib < max_rss_kib, "peak RSS {rss_kib} KiB");

    // A lower prefix bound sends the rest to (other), in-process this time.
    let mut options = AuditOptions::new(UpstreamTarget::parse(&server.url()).unwrap());
    options.max_prefixes = 5;
    options.memory_sample = 0;
    options.pace.max_commands_per_second = 0;
    options.scan_count = 1_000;
    let bounded = audit::run(&options, |_| {}).await.unwrap();
    assert_eq!(bounded.prefixes.len(), 5);
    let tracked: u64 = bounded.prefixes.iter().map(|p| p.keys).sum();
    assert_eq!(
        bounded.other.as_ref().map(|o| o.keys),
        Some(total - tracked)
    );
    assert!(bounded.table().contains("(other)"));
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_of_200k_keys_counts_every_prefix_exactly_with_read_only_commands() {
    let report = audit_workload(200_000, 30, 64 * 1024).await;
    check_suggestions(&report);
}

/// The full size; about a minute. Run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: a million keys"]
async fn an_audit_of_a_million_keys_stays_small_and_fast() {
    audit_workload(1_000_000, 120, 64 * 1024).await;
}

/// `suggest --from-audit` on the workload's report: valid configuration, a TTL for the
/// TTL-less cache, none for any job library's keys.
fn check_suggestions(report: &AuditReport) {
    let dir = tempfile::tempdir().unwrap();
    let audit_file = dir.path().join("audit.json");
    std::fs::write(&audit_file, serde_json::to_string(report).unwrap()).unwrap();
    let (ok, toml, err) = respguard(&["suggest", "--from-audit", audit_file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let rules_file = dir.path().join("rules.toml");
    std::fs::write(&rules_file, &toml).unwrap();
    let (ok, out, err) = respguard(&["check-config", rules_file.to_str().unwrap()]);
    assert!(ok, "suggestions fail check-config: {err}\n{toml}");
    assert!(out.contains("is valid"), "{out}");

    let value: toml::Value = toml::from_str(&toml).unwrap();
    let rules = |guard: &str| -> Vec<toml::Value> {
        value["guards"][guard]["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let ttl_patterns: Vec<String> = rules("ttl")
        .iter()
        .map(|r| r["pattern"].as_str().unwrap().to_string())
        .collect();
    let cache = rules("ttl")
        .into_iter()
        .find(|r| r["pattern"].as_str() == Some("cache:user:*"))
        .unwrap_or_else(|| panic!("no TTL for cache:user:*:\n{toml}"));
    assert_eq!(cache["ttl"].as_str(), Some("1d"));
    assert!(toml.contains("# cache:user:*: "), "{toml}");
    for library_prefix in [
        "rq:job:*",
        "rq:queue:*",
        "queue:*",
        "schedule",
        "retry",
        "dead",
        "stat:*",
        "bull:emails:*",
    ] {
        assert!(
            !ttl_patterns.iter().any(|p| p == library_prefix),
            "TTL proposed for {library_prefix}:\n{toml}"
        );
    }
    // Prefixes with TTLs already, or half without, get none.
    for covered in ["cache:page:*", "session:*", "feed:*", "tmp*"] {
        assert!(
            !ttl_patterns.iter().any(|p| p == covered),
            "TTL proposed for {covered}:\n{toml}"
        );
    }
    let queues: Vec<_> = rules("queue")
        .iter()
        .map(|r| r["pattern"].as_str().unwrap().to_string())
        .collect();
    assert!(
        queues.contains(&"queue:*".to_string()) && queues.contains(&"rq:queue:*".to_string()),
        "{toml}"
    );
}

/// `suggest --from-proxy` reads a live report from a file and from a one-shot HTTP server.
#[tokio::test]
async fn suggestions_from_a_live_report_file_and_over_http() {
    let live = respguard::keyspace::report::LiveReport {
        window_seconds: 60.0,
        sample_rate: 1,
        prefix_capacity: 1_000,
        tracked_prefixes: 2,
        prefixes: vec![
            respguard::keyspace::report::PrefixActivity {
                prefix: "cache:product:*".into(),
                operations: 20_000,
                writes: 18_000,
                writes_per_second: 300.0,
                bytes_written: 18_000_000,
                writes_without_ttl: 17_640,
                writes_with_ttl: 360,
                largest_value_bytes: 4_000,
                ..Default::default()
            },
            respguard::keyspace::report::PrefixActivity {
                prefix: "bull:emails:*".into(),
                operations: 500,
                writes: 500,
                writes_per_second: 8.3,
                writes_without_ttl: 500,
                library: Some("bullmq".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let json = serde_json::to_string(&live).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("live.json");
    std::fs::write(&file, &json).unwrap();
    let (ok, from_file, err) = respguard(&["suggest", "--from-proxy", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        from_file.contains("pattern = \"cache:product:*\"\nttl = \"1d\""),
        "{from_file}"
    );
    assert!(from_file.contains("300.0/s"), "{from_file}");
    assert!(
        !from_file.contains("pattern = \"bull:emails:*\"\nttl"),
        "{from_file}"
    );
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, &from_file).unwrap();
    let (ok, _, err) = respguard(&["check-config", rules.to_str().unwrap()]);
    assert!(ok, "{err}");

    // The same report served once over HTTP, as the admin listener serves /keyspace.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request ended early");
            request.extend_from_slice(&chunk[..n]);
        }
        let request = String::from_utf8_lossy(&request).into_owned();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            json.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(json.as_bytes()).await.unwrap();
        request
    });
    let target = addr.to_string();
    let (ok, over_http, err) =
        tokio::task::spawn_blocking(move || respguard(&["suggest", "--from-proxy", &target]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    let request = server.await.unwrap();
    assert!(
        request.starts_with("GET /keyspace HTTP/1.1\r\n"),
        "{request}"
    );
    // Only the source line differs.
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&over_http), body(&from_file));
}

/// The ceiling on commands per second holds, and a Redis that stops answering for a
/// moment (CLIENT PAUSE) makes the audit pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_keeps_to_its_rate_and_pauses_when_redis_is_slow() {
    let server = RedisServer::start();
    let families = [Family {
        prefix: "k:*",
        count: 3_000,
        key: |i| format!("k:{i}"),
        kind: Kind::Str(10),
        ttl: Ttl::Never,
        library: None,
    }];
    seed(&server, &families).await;
    let mut options = AuditOptions::new(UpstreamTarget::parse(&server.url()).unwrap());
    options.memory_sample = 0;
    options.scan_count = 100;
    options.pace.max_commands_per_second = 4_000;
    options.pace.slow_round_trip = Duration::from_millis(30);
    options.pace.pause = Duration::from_millis(50);
    let started = Instant::now();
    let run = tokio::spawn(async move { audit::run(&options, |_| {}).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = Conn::open(server.addr()).await;
    assert_eq!(
        admin.call(&["CLIENT", "PAUSE", "200", "ALL"]).await,
        "+OK\r\n"
    );
    let report = run.await.unwrap().unwrap();
    let took = started.elapsed();
    assert_eq!(report.scanned_keys, 3_000);
    // 6,000 TYPE and PTTL plus the SCANs at 4,000 per second: 1.5 s at least.
    let floor = report.commands_sent as f64 / 4_000.0;
    assert!(
        took.as_secs_f64() >= floor * 0.95,
        "{took:?} for {} commands",
        report.commands_sent
    );
    assert!(report.pauses >= 1, "{report:?}");
    assert!(report.slowest_round_trip_ms >= 100.0, "{report:?}");
}

/// A URL's user, password and database are used: the audit authenticates and reads the
/// database it names, not database 0.
#[tokio::test]
async fn the_audit_authenticates_and_reads_the_database_of_its_url() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let mut c = Conn::open(server.addr()).await;
    assert_eq!(c.call(&["AUTH", "s3cret"]).await, "+OK\r\n");
    for i in 0..50 {
        c.call(&["SET", &format!("zero:{i}"), "v"]).await;
    }
    c.call(&["SELECT", "2"]).await;
    for i in 0..70 {
        c.call(&["SET", &format!("two:{i}"), "v", "EX", "100"])
            .await;
    }
    let url = format!("redis://default:s3cret@127.0.0.1:{}/2", server.port);
    let report = audit::run(
        &AuditOptions::new(UpstreamTarget::parse(&url).unwrap()),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.scanned_keys, 70);
    assert_eq!(report.prefixes.len(), 1);
    assert_eq!(report.prefixes[0].prefix, "two:*");
    assert_eq!(report.prefixes[0].ttl.under_1h, 70);
    assert!(!report.target.contains("s3cret"), "{}", report.target);
    let wrong = format!("redis://default:wrong@127.0.0.1:{}/2", server.port);
    let err = audit::run(
        &AuditOptions::new(UpstreamTarget::parse(&wrong).unwrap()),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("handshake"), "{err}");
}
