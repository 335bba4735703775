//! The enqueue guard against real job libraries in a retry storm: each scenario script in
//! `tests/clients/storms/` makes one client enqueue the same job 1,000 times, interleaved
//! with 100 distinct jobs, and a second client (another client name) enqueue it 3 times,
//! then reads what Redis holds directly. A missing library fails the test with the command
//! that installs it; it never skips.

use serde_json::Value;

use crate::harness::*;
use respguard::app::ProxyHandle;
use respguard::config::RawEnqueueGuard;

pub(crate) const STORMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/storms");

/// `[guards.enqueue]` with one rule written in TOML.
fn enqueue_rules(rule: &str) -> RawEnqueueGuard {
    let text = format!("[[rules]]\n{rule}");
    toml::from_str(&text).expect("rule parses")
}

pub(crate) async fn proxy_with(server: &RedisServer, rule: &str) -> ProxyHandle {
    let mut raw = proxy_config(&server.url());
    raw.guards.enqueue = enqueue_rules(rule);
    start_proxy(raw).await
}

/// The counter `respguard_enqueues_total` for `rule` and `kind`, from /metrics.
pub(crate) async fn enqueues(proxy: &ProxyHandle, rule: &str, kind: &str) -> u64 {
    let series = format!("respguard_enqueues_total{{rule=\"{rule}\",kind=\"{kind}\"}}");
    metric(proxy.admin_addr.expect("admin"), &series)
        .await
        .map_or(0, |v| v as u64)
}

pub(crate) fn n(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

/// What every storm must show with `limit = 1` and `drop`: no error raised, the distinct
/// jobs all queued, the same job once per client.
pub(crate) fn assert_storm_limited(report: &Value) {
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(n(report, "distinct"), 100, "{report}");
    assert_eq!(n(report, "same_job"), 2, "once by each client: {report}");
}

/// A job library's storm script and how to install the library.
pub(crate) struct Library {
    pub(crate) program: &'static str,
    pub(crate) script: &'static str,
    pub(crate) install: &'static str,
}

const SIDEKIQ: Library = Library {
    program: "ruby",
    script: "sidekiq_storm.rb",
    install: "apt-get install ruby-sidekiq",
};
const CELERY: Library = Library {
    program: "python3",
    script: "celery_storm.py",
    install: "pip install celery[redis]",
};
const RQ: Library = Library {
    program: "python3",
    script: "rq_storm.py",
    install: "pip install rq",
};
const BULLMQ: Library = Library {
    program: "node",
    script: "bullmq_storm.js",
    install: "cd tests/clients && npm install",
};
pub(crate) const TASKIQ: Library = Library {
    program: "python3",
    script: "taskiq_storm.py",
    install: "pip install taskiq-redis",
};

/// Start a Redis and a proxy with the enqueue `rule` in front of it, and run `lib`'s storm
/// through them; its JSON report.
pub(crate) async fn storm(lib: &Library, rule: &str) -> (RedisServer, ProxyHandle, Value) {
    let server = RedisServer::start();
    let proxy = proxy_with(&server, rule).await;
    let ports = [
        proxy.addr.port().to_string(),
        server.addr().port().to_string(),
    ];
    let out = tokio::process::Command::new(lib.program)
        .arg(lib.script)
        .args(&ports)
        .current_dir(STORMS)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e} ({})", lib.program, lib.install));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n{stdout}\n{stderr}",
        lib.program,
        lib.script,
        lib.install
    );
    let last = stdout.lines().last().unwrap_or_default();
    let report = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{} printed {stdout:?}: {e}", lib.script));
    (server, proxy, report)
}

#[tokio::test(flavor = "multi_thread")]
async fn sidekiq_retry_storm_is_dropped_per_client() {
    let (_server, proxy, report) = storm(
        &SIDEKIQ,
        "preset = 'sidekiq'\nname = 'sidekiq-storm'\naction = 'drop'",
    )
    .await;
    assert_storm_limited(&report);
    // Every push returned its jid as if enqueued.
    assert_eq!(n(&report, "returned_jids"), 1000 + 100 + 2 + 3, "{report}");
    // Re-pushes of one jid are not duplicates.
    assert_eq!(n(&report, "repushed"), 2, "{report}");
    assert_eq!(n(&report, "queued"), 2 + 100 + 2, "{report}");
    assert_eq!(enqueues(&proxy, "sidekiq-storm", "repush").await, 1);
    assert_eq!(
        enqueues(&proxy, "sidekiq-storm", "duplicate").await,
        999 + 2
    );
    assert_eq!(
        enqueues(&proxy, "sidekiq-storm", "first").await,
        1 + 100 + 1 + 1
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn celery_retry_storm_is_dropped_per_client() {
    let (_server, proxy, report) = storm(
        &CELERY,
        "preset = 'celery'\nname = 'celery-storm'\naction = 'drop'",
    )
    .await;
    assert_storm_limited(&report);
    assert_eq!(
        n(&report, "repushed"),
        2,
        "a retry keeps its task id: {report}"
    );
    assert_eq!(n(&report, "queued"), 2 + 100 + 2, "{report}");
    assert_eq!(enqueues(&proxy, "celery-storm", "repush").await, 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rq_retry_storm_is_dropped_per_client_without_leaving_job_hashes() {
    let (_server, proxy, report) =
        storm(&RQ, "preset = 'rq'\nname = 'rq-storm'\naction = 'drop'").await;
    assert_storm_limited(&report);
    assert_eq!(n(&report, "queued"), 102, "{report}");
    // The status HSET before a dropped job's data is undone: no job hash without its job.
    assert_eq!(n(&report, "job_hashes"), 102, "{report}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bullmq_retry_storm_is_dropped_per_client() {
    let (_server, proxy, report) = storm(
        &BULLMQ,
        "preset = 'bullmq'\nname = 'bullmq-storm'\naction = 'drop'",
    )
    .await;
    assert_storm_limited(&report);
    // The second add of a custom id is BullMQ's own duplicate: Redis keeps one job, and
    // the proxy (a re-push of that id) lets it through to answer it.
    assert_eq!(n(&report, "repushed"), 1, "{report}");
    assert_eq!(n(&report, "fixed_ids"), 2, "{report}");
    assert_eq!(n(&report, "queued"), 2 + 100 + 1, "{report}");
    assert_eq!(n(&report, "job_hashes"), 2 + 100 + 1, "{report}");
    // A dropped add is answered with an id, as BullMQ's duplicate path answers.
    assert_eq!(n(&report, "dropped_ids"), 999 + 2, "{report}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generic_rule_limits_taskiq() {
    let rule = "preset = 'generic'\nname = 'taskiq-storm'\npattern = 'taskiq'\naction = 'drop'\n\
                format = 'json'\nexclude = ['/task_id', '/labels']\njob_id = '/task_id'\n\
                label = '/task_name'";
    let (_server, proxy, report) = storm(&TASKIQ, rule).await;
    assert_storm_limited(&report);
    assert_eq!(n(&report, "queued"), 102, "{report}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sidekiq_storm_rejected_raises_an_error_naming_the_rule() {
    let (_server, proxy, report) = storm(
        &SIDEKIQ,
        "preset = 'sidekiq'\nname = 'sidekiq-reject'\naction = 'reject'",
    )
    .await;
    let errors = report["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 999 + 2, "{report}");
    assert_eq!(
        errors[0],
        "ERR respguard: duplicate job, refused by enqueue rule 'sidekiq-reject' (see the proxy's log)"
    );
    assert_eq!(n(&report, "same_job"), 2, "{report}");
    assert_eq!(n(&report, "distinct"), 100, "{report}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn observe_counts_and_forwards_everything() {
    let (_server, proxy, report) = storm(
        &CELERY,
        "preset = 'celery'\nname = 'celery-observe'\naction = 'observe'",
    )
    .await;
    assert_eq!(n(&report, "same_job"), 1003, "{report}");
    assert_eq!(
        enqueues(&proxy, "celery-observe", "duplicate").await,
        999 + 2
    );
    proxy.shutdown().await;
}

/// Raw pushes: partial drops keep the reply shape, MULTI keeps its reply count, ZADD and
/// XADD are read, and a second window lets the job through again.
#[tokio::test(flavor = "multi_thread")]
async fn raw_pushes_in_pipelines_and_transactions() {
    let server = RedisServer::start();
    let rule = "preset = 'generic'\nname = 'raw-jobs'\npattern = 'jobs:*'\naction = 'drop'\n\
                format = 'raw'\nwindow = '1s'\n\
                [[rules]]\npreset = 'generic'\nname = 'stream-jobs'\npattern = 'stream:*'\n\
                action = 'reject'\ncommands = ['XADD']\nfield = 'job'\nexclude = ['/id']\njob_id = '/id'";
    let proxy = proxy_with(&server, rule).await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["RPUSH", "jobs:a", "x", "y"]).await, ":2\r\n");
    // x is a duplicate and left out; z is new.
    assert_eq!(c.call(&["RPUSH", "jobs:a", "x", "z"]).await, ":3\r\n");
    // All duplicates: answered with the length, nothing pushed.
    assert_eq!(c.call(&["LPUSH", "jobs:a", "y"]).await, ":3\r\n");
    // Every payload of a long push is judged: 64 duplicates do not hide a new job after them.
    let many: Vec<String> = (0..64).map(|i| format!("d{i}")).collect();
    let mut first = vec!["RPUSH", "jobs:b"];
    first.extend(many.iter().map(String::as_str));
    let mut again = first.clone();
    again.push("new");
    assert_eq!(c.call(&first).await, ":64\r\n");
    assert_eq!(c.call(&again).await, ":65\r\n");
    // Inside MULTI the dropped push still has its place in EXEC's array.
    c.send(
        &[
            encode(&["MULTI"]),
            encode(&["RPUSH", "jobs:a", "z"]),
            encode(&["ZADD", "jobs:z", "1", "x", "2", "x"]),
            encode(&["EXEC"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        c.replies(4).await,
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:3\r\n:1\r\n"
    );
    assert_eq!(c.call(&["ZCARD", "jobs:z"]).await, ":1\r\n");
    // An XADD whose `job` field repeats a job (with another id) is refused.
    let job = |id: u32| format!("{{\"id\":{id},\"task\":\"mail\"}}");
    let first = c.call(&["XADD", "stream:s", "*", "job", &job(1)]).await;
    assert!(first.starts_with('$'), "{first}");
    let refused = c
        .call(&[
            "XADD",
            "stream:s",
            "MAXLEN",
            "~",
            "100",
            "*",
            "job",
            &job(2),
        ])
        .await;
    assert_eq!(
        refused,
        "-ERR respguard: duplicate job, refused by enqueue rule 'stream-jobs' (see the proxy's log)\r\n"
    );
    assert_eq!(c.call(&["XLEN", "stream:s"]).await, ":1\r\n");
    // Once the one-second window is over, the job passes again.
    let mut direct = Conn::open(server.addr()).await;
    // Waiting for wall-clock time to pass is the point here.
    let within = std::time::Duration::from_secs(5);
    let passed = eventually!(within, "the window ended", {
        match c.call(&["RPUSH", "jobs:a", "x"]).await {
            dropped if dropped == ":3\r\n" => Err(dropped),
            passed => Ok(passed),
        }
    });
    assert_eq!(passed, ":4\r\n");
    assert_eq!(direct.call(&["LLEN", "jobs:a"]).await, ":4\r\n");
    proxy.shutdown().await;
}

/// The token bucket limits all of a client's enqueues, whatever the job.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limits_all_enqueues_of_a_client() {
    let server = RedisServer::start();
    let rule = "preset = 'generic'\nname = 'rated'\npattern = 'q:*'\nformat = 'raw'\n\
                limit = 0\nrate = 0.001\nburst = 5\naction = 'reject'";
    let proxy = proxy_with(&server, rule).await;
    let mut a = Conn::open(proxy.addr).await;
    let mut b = Conn::open(proxy.addr).await;
    b.call(&["CLIENT", "SETNAME", "other"]).await;
    for i in 0..5 {
        assert_eq!(
            a.call(&["RPUSH", "q:1", &format!("job{i}")]).await,
            format!(":{}\r\n", i + 1)
        );
    }
    let refused = a.call(&["RPUSH", "q:1", "job5"]).await;
    assert!(
        refused.starts_with(
            "-ERR respguard: enqueue rate over the limit, refused by enqueue rule 'rated'"
        ),
        "{refused}"
    );
    // Another client has its own bucket.
    assert_eq!(b.call(&["RPUSH", "q:1", "job6"]).await, ":6\r\n");
    proxy.shutdown().await;
}
