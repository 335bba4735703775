//! Job libraries run for real through the proxy. Those whose enqueues are Lua scripts or
//! that had no preset (Dramatiq, Bee-Queue, Bull, taskiq): a retry storm limited by each
//! library's preset, counted from what Redis holds (the queue and the payload store, so a
//! payload left without its queue entry counts), with `drop` (the producer raises nothing)
//! and `reject` (an error naming the rule). Workers of BullMQ, Bull, Bee-Queue, Dramatiq, RQ,
//! Celery, Sidekiq and taskiq draining a full queue through the proxy while it sheds at the
//! hard level, and producing and processing 200 jobs under a catch-all TTL rule that must
//! leave their keys alone. The scripts are in `tests/clients/storms/`.

use respguard::pressure::Level;
use serde_json::Value;

use crate::enqueue::{assert_storm_limited, n, storm, Library, STORMS, TASKIQ};
use crate::harness::*;
use crate::pressure::{level_within_polls, limited_server, used_memory, MAXMEMORY};

const DRAMATIQ: Library = Library {
    program: "python3",
    script: "dramatiq_storm.py",
    install: "pip install dramatiq[redis] (scripts/install-test-deps.sh)",
};
const BEEQUEUE: Library = Library {
    program: "node",
    script: "beequeue_storm.js",
    install: "cd tests/clients && npm ci",
};
const BULL: Library = Library {
    program: "node",
    script: "bull_storm.js",
    install: "cd tests/clients && npm ci",
};

/// With `limit = 1` and `drop`: what every storm must show (no error raised, the 100
/// distinct jobs all in Redis, the same job once per client, of 100 from one client and 3
/// from another), and no payload stored without its queue entry.
fn assert_limited(report: &Value) {
    assert_storm_limited(report);
    assert_eq!(n(report, "queued"), n(report, "stored"), "{report}");
}

fn drop_rule(preset: &str) -> String {
    format!("preset = '{preset}'\nname = '{preset}-storm'\naction = 'drop'")
}

#[tokio::test(flavor = "multi_thread")]
async fn dramatiq_retry_storm_is_dropped_per_client() {
    let (_server, proxy, report) = storm(&DRAMATIQ, &drop_rule("dramatiq")).await;
    assert_limited(&report);
    assert_eq!(n(&report, "queued"), 2 + 100, "{report}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn beequeue_retry_storm_is_dropped_per_client() {
    let (_server, proxy, report) = storm(&BEEQUEUE, &drop_rule("beequeue")).await;
    assert_limited(&report);
    // The second save of a custom id is Bee-Queue's own duplicate: passed (a re-push of
    // that id), and Redis keeps one job.
    assert_eq!(n(&report, "fixed"), 1, "{report}");
    assert_eq!(n(&report, "queued"), 2 + 100 + 1, "{report}");
    assert_eq!(n(&report, "dropped_ids"), 99 + 2, "{report}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bull_retry_storm_is_dropped_per_client() {
    let (_server, proxy, report) = storm(&BULL, &drop_rule("bull")).await;
    assert_limited(&report);
    assert_eq!(n(&report, "fixed"), 1, "{report}");
    assert_eq!(n(&report, "queued"), 2 + 100 + 1, "{report}");
    assert_eq!(n(&report, "dropped_ids"), 99 + 2, "{report}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_taskiq_preset_limits_its_retry_storm() {
    let (_server, proxy, report) = storm(&TASKIQ, &drop_rule("taskiq")).await;
    assert_storm_limited(&report);
    assert_eq!(n(&report, "queued"), 102, "{report}");
    proxy.shutdown().await;
}

/// A `reject` rule answers each library's over-limit enqueue with an error naming it.
#[tokio::test(flavor = "multi_thread")]
async fn rejected_duplicates_raise_an_error_naming_the_rule() {
    for (lib, preset, over) in [
        (&DRAMATIQ, "dramatiq", 99 + 2),
        (&BEEQUEUE, "beequeue", 99 + 2),
        (&BULL, "bull", 99 + 2),
    ] {
        let rule = format!("preset = '{preset}'\nname = '{preset}-reject'\naction = 'reject'");
        let (_server, proxy, report) = storm(lib, &rule).await;
        let errors = report["errors"].as_array().expect("errors");
        assert_eq!(errors.len(), over, "{preset}: {report}");
        let want = format!("refused by enqueue rule '{preset}-reject'");
        assert!(
            errors[0]
                .as_str()
                .is_some_and(|e| e.contains(&want) && e.contains("respguard: duplicate job")),
            "{preset}: {report}"
        );
        assert_eq!(n(&report, "distinct"), 100, "{preset}: {report}");
        assert_eq!(
            n(&report, "queued"),
            n(&report, "stored"),
            "{preset}: {report}"
        );
        proxy.shutdown().await;
    }
}

/// A library's drain script: `produce` N jobs, or `work` until N were processed.
struct Drain {
    program: &'static str,
    script: &'static str,
}

/// Sidekiq's launcher in process (`sidekiq_drain.rb`).
const SIDEKIQ: Drain = Drain {
    program: "ruby",
    script: "sidekiq_drain.rb",
};

/// taskiq's receiver in process, with its Redis result backend (`taskiq_drain.py`).
const TASKIQ_DRAIN: Drain = Drain {
    program: "python3",
    script: "taskiq_drain.py",
};

/// Run `lib`'s drain script in `mode` for `n` jobs through the proxy on `port`; its JSON
/// report.
async fn drain_script(lib: &Drain, port: u16, mode: &str, n: usize) -> Value {
    let out = tokio::process::Command::new(lib.program)
        .arg(lib.script)
        .args([port.to_string(), mode.to_string(), n.to_string()])
        .current_dir(STORMS)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", lib.program));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {mode}: {stdout}\n{stderr}",
        lib.script
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{} printed {stdout:?}: {e}", lib.script))
}

/// `lib`'s producer sends `n` jobs through the proxy on `port`, and none raises.
async fn produce_all(lib: &Drain, port: u16, n: usize) {
    let produced = drain_script(lib, port, "produce", n).await;
    assert_eq!(produced["errors"], serde_json::json!([]), "{produced}");
}

/// `lib`'s worker, through the proxy on `port`, processes each of `n` jobs exactly once and
/// raises nothing; its report.
async fn work_all(lib: &Drain, port: u16, n: usize) -> Value {
    let worked = drain_script(lib, port, "work", n).await;
    assert_eq!(worked["errors"], serde_json::json!([]), "{worked}");
    let want: Vec<usize> = (0..n).collect();
    assert_eq!(
        worked["processed"],
        serde_json::json!(want),
        "{}: each job exactly once",
        lib.script
    );
    worked
}

/// Shedding at 50% (soft) and 75% (hard) of a 32 MB Redis, polled every 50 ms.
const SHED: &str = "[monitor]\ninterval = \"50ms\"\n[guards.shed]\nsoft_enter = 0.5\n\
    soft_exit = 0.4\nhard_enter = 0.75\nhard_exit = 0.65\n";

/// Write to Redis directly (not through the proxy) until its memory is past `ratio`.
async fn fill_directly(server: &RedisServer, ratio: f64) {
    let mut c = Conn::open(server.addr()).await;
    let value = "v".repeat(200_000);
    let mut i = 0;
    while (used_memory(server).await as f64) < ratio * MAXMEMORY as f64 {
        assert_eq!(
            c.call(&["SET", &format!("data:{i}"), &value]).await,
            "+OK\r\n"
        );
        i += 1;
    }
}

/// 200 jobs produced through the proxy; Redis's memory pushed past the hard level; a new
/// job refused (an enqueue is shed like a write); then the library's worker, through the
/// proxy, processes each of the 200 exactly once. `left` are the keys that must be empty
/// afterwards, read from Redis directly. The worker's report.
async fn drain_at_hard(lib: &Drain, left: &[(&str, &str)]) -> Value {
    drain_at_hard_with(lib, "", left).await
}

/// [`drain_at_hard`] with `rules` (TOML) added to the shed guard's configuration.
async fn drain_at_hard_with(lib: &Drain, rules: &str, left: &[(&str, &str)]) -> Value {
    const JOBS: usize = 200;
    let server = limited_server();
    let proxy = proxy_with_toml(&server, &format!("{SHED}{rules}")).await;
    let port = proxy.addr.port();
    produce_all(lib, port, JOBS).await;

    fill_directly(&server, 0.8).await;
    level_within_polls(&proxy, Level::Hard, 20).await;
    let refused = drain_script(lib, port, "produce", 1).await;
    let errors = refused["errors"].as_array().expect("errors");
    assert!(
        errors.len() == 1
            && errors[0]
                .as_str()
                .is_some_and(|e| e.contains("respguard: write refused")),
        "an enqueue at hard is shed: {refused}"
    );

    let worked = work_all(lib, port, JOBS).await;
    assert_eq!(proxy.pressure.polled_level(), Level::Hard, "still at hard");
    let mut direct = Conn::open(server.addr()).await;
    for (command, key) in left {
        assert_eq!(
            direct.call(&[command, key]).await,
            ":0\r\n",
            "{command} {key}"
        );
    }
    proxy.shutdown().await;
    worked
}

#[tokio::test(flavor = "multi_thread")]
async fn bullmq_workers_drain_their_queue_at_the_hard_level() {
    let lib = Drain {
        program: "node",
        script: "bullmq_drain.js",
    };
    drain_at_hard(
        &lib,
        &[("LLEN", "bull:emails:wait"), ("LLEN", "bull:emails:active")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dramatiq_workers_drain_their_queue_at_the_hard_level() {
    let lib = Drain {
        program: "python3",
        script: "dramatiq_drain.py",
    };
    drain_at_hard(
        &lib,
        &[
            ("LLEN", "dramatiq:emails"),
            ("HLEN", "dramatiq:emails.msgs"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn beequeue_workers_drain_their_queue_at_the_hard_level() {
    let lib = Drain {
        program: "node",
        script: "beequeue_drain.js",
    };
    drain_at_hard(
        &lib,
        &[("LLEN", "bq:emails:waiting"), ("LLEN", "bq:emails:active")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bull_workers_drain_their_queue_at_the_hard_level() {
    let lib = Drain {
        program: "node",
        script: "bull_drain.js",
    };
    drain_at_hard(
        &lib,
        &[("LLEN", "bull:emails:wait"), ("LLEN", "bull:emails:active")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rq_workers_drain_their_queue_at_the_hard_level() {
    let lib = Drain {
        program: "python3",
        script: "rq_drain.py",
    };
    drain_at_hard(&lib, &[("LLEN", "rq:queue:emails")]).await;
}

/// arq's drain script, run by the venv that holds arq and its redis-py.
const ARQ_DRAIN: Drain = Drain {
    program: concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/arq-venv/bin/python"
    ),
    script: "arq_drain.py",
};

/// arq's worker drains at hard: its locks, retry counts and results pass; a new job (its
/// key, then its id on the queue, in one MULTI) is refused whole.
#[tokio::test(flavor = "multi_thread")]
async fn arq_workers_drain_their_queue_at_the_hard_level() {
    drain_at_hard(&ARQ_DRAIN, &[("ZCARD", "arq:queue")]).await;
}

/// Sidekiq's launcher drains its queue at hard, and its heartbeat and statistics pass: the
/// process is seen after the jobs and every job counted (the 200, and two that fail and are
/// scheduled for a retry and sent to the dead set, which pass too).
#[tokio::test(flavor = "multi_thread")]
async fn sidekiq_workers_drain_their_queue_at_the_hard_level() {
    let worked = drain_at_hard(&SIDEKIQ, &[("LLEN", "queue:emails")]).await;
    assert_sidekiq_bookkeeping(&worked);
}

/// What Sidekiq's API read back after its worker ran `sidekiq_drain.rb`'s jobs: 200 and the
/// two failing ones processed, two failed, one waiting for its retry, one dead, and the
/// process seen after the jobs by its heartbeat.
fn assert_sidekiq_bookkeeping(worked: &Value) {
    assert_eq!(
        worked["stats"],
        serde_json::json!({"processed": 202, "failed": 2}),
        "{worked}"
    );
    assert_eq!(worked["retry"], 1, "{worked}");
    assert_eq!(worked["dead"], 1, "{worked}");
    assert_eq!(worked["beat"], true, "{worked}");
}

/// taskiq's receiver drains its list at hard. Its results are plain SETs of keys with no
/// shape of the library's (bare task ids, here under the backend's `prefix_str`), so they
/// pass through the rule `docs/job-libraries.md` gives for them, and all read back.
#[tokio::test(flavor = "multi_thread")]
async fn taskiq_workers_drain_their_queue_at_the_hard_level() {
    let results = "[[guards.shed.rules]]\npattern = \"taskiq-result:*\"\npriority = \"critical\"\n";
    let worked = drain_at_hard_with(&TASKIQ_DRAIN, results, &[("LLEN", "taskiq")]).await;
    assert_eq!(worked["results"], 200, "{worked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn celery_workers_drain_their_queue_at_the_hard_level() {
    let lib = Drain {
        program: "python3",
        script: "celery_drain.py",
    };
    drain_at_hard(&lib, &[("LLEN", "emails"), ("HLEN", "unacked")]).await;
}

/// 200 jobs produced and then processed through a proxy whose catch-all TTL rule covers
/// every key, with a TTL far longer than the test: each job processed exactly once, and
/// every key of a job library's shape left as the library left it (no TTL from the rule),
/// with the queue full and after the work, while a cache key written through the same
/// proxy gets the rule's.
async fn work_under_a_catch_all_ttl_rule(lib: &Drain) -> Value {
    catch_all_ttl(lib, Drained::KeepsItsKeys).await
}

/// What a library leaves in Redis of its own once its queue is drained.
#[derive(PartialEq)]
enum Drained {
    /// Statistics, registries, bookkeeping: checked again after the work.
    KeepsItsKeys,
    /// Nothing (taskiq's list broker): its queue is checked while full only.
    LeavesNothing,
}

/// [`work_under_a_catch_all_ttl_rule`]: the library's keys checked with the queue full, and
/// after the work unless it leaves nothing. The worker's report.
async fn catch_all_ttl(lib: &Drain, drained: Drained) -> Value {
    use crate::ttl_libraries::assert_rule_active_and_library_keys_untouched as untouched;
    const JOBS: usize = 200;
    let server = RedisServer::start();
    let proxy = proxy_with_toml(&server, crate::ttl_libraries::CATCH_ALL).await;
    let port = proxy.addr.port();
    produce_all(lib, port, JOBS).await;
    untouched(&server, &proxy).await;
    let worked = work_all(lib, port, JOBS).await;
    if drained == Drained::KeepsItsKeys {
        untouched(&server, &proxy).await;
    }
    proxy.shutdown().await;
    worked
}

#[tokio::test(flavor = "multi_thread")]
async fn bullmq_works_under_a_catch_all_ttl_rule() {
    work_under_a_catch_all_ttl_rule(&Drain {
        program: "node",
        script: "bullmq_drain.js",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bull_works_under_a_catch_all_ttl_rule() {
    work_under_a_catch_all_ttl_rule(&Drain {
        program: "node",
        script: "bull_drain.js",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn beequeue_works_under_a_catch_all_ttl_rule() {
    work_under_a_catch_all_ttl_rule(&Drain {
        program: "node",
        script: "beequeue_drain.js",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dramatiq_works_under_a_catch_all_ttl_rule() {
    work_under_a_catch_all_ttl_rule(&Drain {
        program: "python3",
        script: "dramatiq_drain.py",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rq_works_under_a_catch_all_ttl_rule() {
    work_under_a_catch_all_ttl_rule(&Drain {
        program: "python3",
        script: "rq_drain.py",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn celery_works_under_a_catch_all_ttl_rule() {
    work_under_a_catch_all_ttl_rule(&Drain {
        program: "python3",
        script: "celery_drain.py",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sidekiq_works_under_a_catch_all_ttl_rule() {
    let worked = work_under_a_catch_all_ttl_rule(&SIDEKIQ).await;
    assert_sidekiq_bookkeeping(&worked);
}

/// taskiq's list broker keeps nothing once drained, so its queue is checked while full; its
/// results (keys of no shape of the library's) are the application's to the rule, and all
/// read back.
#[tokio::test(flavor = "multi_thread")]
async fn taskiq_works_under_a_catch_all_ttl_rule() {
    let worked = catch_all_ttl(&TASKIQ_DRAIN, Drained::LeavesNothing).await;
    assert_eq!(worked["results"], 200, "{worked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn arq_works_under_a_catch_all_ttl_rule() {
    work_under_a_catch_all_ttl_rule(&ARQ_DRAIN).await;
}
