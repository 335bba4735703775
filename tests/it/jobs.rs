//! Job libraries whose enqueues are Lua scripts or that had no preset (Dramatiq, Bee-Queue,
//! Bull, taskiq), run for real through the proxy: a retry storm limited by each library's
//! preset, counted from what Redis holds (the queue and the payload store, so a payload
//! left without its queue entry counts), with `drop` (the producer raises nothing) and
//! `reject` (an error naming the rule). The storm scripts are in `tests/clients/storms/`.

use serde_json::Value;

use crate::enqueue::{n, storm, Library, TASKIQ};

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

/// With `limit = 1` and `drop`: no error raised, the 100 distinct jobs all in Redis, the
/// same job once per client (of 100 from one client and 3 from another), and no payload
/// stored without its queue entry.
fn assert_limited(report: &Value) {
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(n(report, "distinct"), 100, "{report}");
    assert_eq!(n(report, "same_job"), 2, "once by each client: {report}");
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
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(n(&report, "distinct"), 100, "{report}");
    assert_eq!(n(&report, "same_job"), 2, "once by each client: {report}");
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
