//! Soak: the real binary under minutes of mixed traffic with every guard enforcing, the
//! duplicate-job table churning, clients reconnecting and the configuration reloaded every
//! few seconds. Its resident memory is sampled once a second and must not trend upward.
//!
//! `RESPGUARD_SOAK_SECONDS` sets the length (120 by default); the RSS series (first, middle
//! and last samples, and the fitted trend) is printed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::memory::ProxyProcess;

/// Every guard with rules that act on the soak's traffic. `{ttl}` alternates between
/// reloads, so each reload really changes the policy.
const POLICY: &str = r#"
[monitor]
interval = "100ms"
memory_budget = "1GiB"
[guards.shed]
soft_enter = 0.0001
soft_exit = 0.00005
hard_enter = 0.0
[[guards.shed.rules]]
pattern = "analytics:*"
priority = "low"
[[guards.ttl.rules]]
pattern = "soak:*"
ttl = "{ttl}"
[[guards.size.rules]]
pattern = "*"
max_value = "2KiB"
[[guards.queue.rules]]
pattern = "soakq:*"
max_depth = 50
[guards.enqueue]
max_fingerprints = 512
max_buckets = 64
[[guards.enqueue.rules]]
preset = "generic"
name = "soak-jobs"
pattern = "jobs:*"
commands = ["LPUSH"]
exclude = ["/id"]
job_id = "/id"
limit = 1
window = "1h"
action = "drop"
"#;

fn policy(ttl: &str) -> String {
    POLICY.replace("{ttl}", ttl)
}

/// What the traffic saw, for the final report and assertions.
#[derive(Default)]
struct Tally {
    commands: AtomicU64,
    size_refusals: AtomicU64,
    shed_refusals: AtomicU64,
    queue_refusals: AtomicU64,
    reloads: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: scripts/test.sh runs it alone, after the parallel suite"]
async fn soak_with_every_guard_enforcing_keeps_memory_flat() {
    let seconds: u64 = std::env::var("RESPGUARD_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("respguard.toml");
    std::fs::write(&conf, policy("1h")).unwrap();
    let (proxy, admin) = ProxyProcess::start_with_admin(&server.url(), &conf);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));

    let mut traffic = tokio::task::JoinSet::new();
    for worker in 0..6 {
        let (tally, stop, addr) = (Arc::clone(&tally), Arc::clone(&stop), proxy.addr);
        traffic.spawn(async move { client_loop(worker, addr, &tally, &stop).await });
    }
    {
        // Reloads every 2 s, alternating the TTL, by RESPGUARD RELOAD and by SIGHUP.
        let (tally, stop, addr) = (Arc::clone(&tally), Arc::clone(&stop), proxy.addr);
        let (conf, pid) = (conf.clone(), proxy.pid());
        traffic.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                n += 1;
                std::fs::write(&conf, policy(if n % 2 == 0 { "1h" } else { "30m" })).unwrap();
                if n % 2 == 0 {
                    let mut c = Conn::open(addr).await;
                    let reply = c.call(&["RESPGUARD", "RELOAD"]).await;
                    assert!(reply.starts_with("+OK generation"), "{reply}");
                } else {
                    let status = tokio::process::Command::new("kill")
                        .args(["-HUP", &pid.to_string()])
                        .status()
                        .await
                        .unwrap();
                    assert!(status.success());
                }
                tally.reloads.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    // One RSS sample a second for the whole run.
    let started = Instant::now();
    let mut samples: Vec<u64> = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(proxy.rss_kib().0);
        // A worker that failed ends the run at once.
        if let Some(done) = traffic.try_join_next() {
            done.unwrap();
            panic!("a soak task ended early");
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = traffic.join_next().await {
        done.unwrap();
    }

    let t = &*tally;
    let commands = t.commands.load(Ordering::Relaxed);
    let metrics = scrape(admin).await;
    let metric = |series: &str| -> u64 {
        sample(&metrics, series).unwrap_or_else(|| panic!("no {series} in the metrics")) as u64
    };
    let drops = metric(r#"respguard_enqueues_total{rule="soak-jobs",kind="duplicate"}"#);
    let evictions = metric("respguard_enqueue_fingerprint_evictions_total");
    let fingerprints = metric("respguard_enqueue_fingerprints");
    let capacity = metric("respguard_enqueue_fingerprints_capacity");
    println!(
        "soak: {seconds} s, {commands} commands, {} reloads, refusals: size {}, shed {}, queue {}; duplicate jobs dropped {drops}, fingerprints held {fingerprints} (table of {capacity}), evicted {evictions}",
        t.reloads.load(Ordering::Relaxed),
        t.size_refusals.load(Ordering::Relaxed),
        t.shed_refusals.load(Ordering::Relaxed),
        t.queue_refusals.load(Ordering::Relaxed),
    );
    for (what, count) in [
        ("size refusals", &t.size_refusals),
        ("shed refusals", &t.shed_refusals),
        ("queue refusals", &t.queue_refusals),
        ("reloads", &t.reloads),
    ] {
        assert!(
            count.load(Ordering::Relaxed) > 0,
            "no {what}: a guard never acted"
        );
    }
    assert!(drops > 0, "no duplicate job was dropped");
    assert!(evictions > 0, "the fingerprint table never churned");
    assert!(
        fingerprints <= capacity,
        "{fingerprints} fingerprints in a table of {capacity}"
    );

    // The first fifth is warm-up (allocator pools, buffers reaching their working size).
    let warm = &samples[samples.len() / 5..];
    let (first, middle, last) = (warm[0], warm[warm.len() / 2], warm[warm.len() - 1]);
    let slope = slope_kib_per_sample(warm);
    let growth = slope * warm.len() as f64;
    println!(
        "soak RSS (KiB, one sample a second after {} s warm-up): first {first}, middle {middle}, last {last}; fitted trend {growth:+.0} KiB over {} s; peak {} KiB",
        samples.len() / 5,
        warm.len(),
        samples.iter().max().unwrap()
    );
    let mean = warm.iter().sum::<u64>() as f64 / warm.len() as f64;
    assert!(
        growth < (mean * 0.05).max(2048.0),
        "RSS trends upward: {growth:+.0} KiB over the run (mean {mean:.0} KiB): {samples:?}"
    );
}

/// One client's traffic until `stop`: pipelines of TTL-guarded writes read back by their
/// writer, oversized values, shed analytics writes, a followed queue filled past its
/// depth and drained, unique and duplicate jobs, and a reconnect every 200 rounds.
async fn client_loop(worker: usize, addr: std::net::SocketAddr, tally: &Tally, stop: &AtomicBool) {
    let big = "x".repeat(4096);
    let mut round = 0u64;
    let mut c = Conn::open(addr).await;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        if round % 200 == 0 {
            c = Conn::open(addr).await;
        }
        let key = format!("soak:{worker}:{}", round % 500);
        let value = format!("{worker}-{round}");
        let queue = format!("soakq:{worker}");
        let jobs = format!("jobs:{worker}");
        let job = format!(
            "{{\"id\":\"{round}\",\"class\":\"Mail\",\"args\":[{}]}}",
            round % 7
        );
        let unique_job =
            format!("{{\"id\":\"u{round}\",\"class\":\"Mail\",\"args\":[\"{worker}-{round}\"]}}");
        let commands: Vec<Vec<&str>> = vec![
            vec!["SET", &key, &value],
            vec!["GET", &key],
            vec!["HSET", &key, "f", &value], // wrong type: Redis's own error
            vec!["SET", "soak:big", &big],
            vec!["SET", "analytics:hits", &value],
            vec!["LPUSH", &queue, &value],
            vec!["LPUSH", &jobs, &job],
            vec!["LPUSH", &jobs, &unique_job],
            vec!["DEL", &key],
        ];
        let mut batch = Vec::new();
        for cmd in &commands {
            batch.extend_from_slice(&encode(cmd));
        }
        if round % 60 == 0 {
            batch.extend_from_slice(&encode(&["DEL", &queue, &jobs]));
        }
        c.send(&batch).await;
        let n = commands.len() + usize::from(round % 60 == 0);
        let mut replies = Vec::with_capacity(n);
        for _ in 0..n {
            replies.push(String::from_utf8_lossy(&c.reply().await).into_owned());
        }
        tally.commands.fetch_add(n as u64, Ordering::Relaxed);
        // Each reply belongs to its own request.
        assert_eq!(replies[0], "+OK\r\n");
        assert_eq!(replies[1], format!("${}\r\n{value}\r\n", value.len()));
        assert!(replies[2].starts_with("-WRONGTYPE"), "{}", replies[2]);
        assert!(
            replies[3].starts_with("-ERR respguard:") && replies[3].contains("size rule"),
            "{}",
            replies[3]
        );
        tally.size_refusals.fetch_add(1, Ordering::Relaxed);
        if replies[4].starts_with("-OOM respguard") {
            tally.shed_refusals.fetch_add(1, Ordering::Relaxed);
        } else {
            assert_eq!(replies[4], "+OK\r\n");
        }
        if replies[5].starts_with("-ERR respguard: queue")
            || replies[5].starts_with("-OOM respguard")
        {
            tally.queue_refusals.fetch_add(1, Ordering::Relaxed);
        } else {
            assert!(replies[5].starts_with(':'), "{}", replies[5]);
        }
        assert!(replies[6].starts_with(':'), "{}", replies[6]);
        assert!(replies[7].starts_with(':'), "{}", replies[7]);
        assert_eq!(replies[8], ":1\r\n");
    }
}

/// Least-squares slope of `samples` against their index.
fn slope_kib_per_sample(samples: &[u64]) -> f64 {
    let n = samples.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = samples.iter().sum::<u64>() as f64 / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, &y) in samples.iter().enumerate() {
        let dx = i as f64 - mean_x;
        num += dx * (y as f64 - mean_y);
        den += dx * dx;
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}
