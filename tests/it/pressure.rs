//! Memory pressure, queue backlog and connection storms, against real Redis servers with a
//! small `maxmemory`: the shedding levels, the queue depth limit, the connection limits, the
//! reconnect rate after a Redis restart, fast failure while Redis is down, and fail-open
//! cache keys.

use std::time::{Duration, Instant};

use respguard::app::ProxyHandle;
use respguard::pressure::Level;

use crate::harness::*;

pub(crate) const MAXMEMORY: u64 = 32 * 1024 * 1024;

pub(crate) fn limited_server() -> RedisServer {
    RedisServer::start_with(&["--maxmemory", "32mb", "--maxmemory-policy", "noeviction"])
}

/// Redis's `used_memory`, asked directly.
pub(crate) async fn used_memory(server: &RedisServer) -> u64 {
    let mut c = Conn::open(server.addr()).await;
    let info = c.call(&["INFO", "memory"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .expect("used_memory in INFO")
        .trim()
        .parse()
        .unwrap()
}

/// Wait until the monitor's polled level is `want`; fail if that takes more than `polls`
/// polls from now.
pub(crate) async fn level_within_polls(proxy: &ProxyHandle, want: Level, polls: u64) {
    let p = &proxy.pressure;
    let mut rx = p.subscribe_polls();
    let start = p.polls();
    loop {
        if p.polled_level() == want {
            return;
        }
        assert!(
            p.polls() < start + polls,
            "level {want:?} not reached within {polls} polls (still {:?}, {:?})",
            p.polled_level(),
            p.reading()
        );
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("the monitor polls")
            .unwrap();
    }
}

/// Wait for `n` more polls.
async fn polls(proxy: &ProxyHandle, n: u64) {
    let mut rx = proxy.pressure.subscribe_polls();
    for _ in 0..n {
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("the monitor polls")
            .unwrap();
    }
}

const SCRIPT_ALLOWED: &str = "return redis.call('SET', KEYS[1], ARGV[1])";
const SCRIPT_OTHER: &str = "redis.call('SET', KEYS[1], ARGV[1]) return 1";
/// Calls no memory-growing command: passes at every level once the proxy has seen it.
const SCRIPT_READER: &str = "return redis.call('GET', KEYS[1])";
/// A function library: one function flagged no-writes, one that writes.
const LIBRARY: &str = "#!lua name=shedlib\n\
    redis.register_function{function_name='peek', callback=function(keys) return redis.call('GET', keys[1]) end, flags={'no-writes'}}\n\
    redis.register_function('poke', function(keys, args) return redis.call('SET', keys[1], args[1]) end)";

fn shed_config() -> String {
    let sha = sha1_smol::Sha1::from(SCRIPT_ALLOWED).digest().to_string();
    format!(
        r#"
[monitor]
interval = "50ms"
[guards.shed]
soft_enter = 0.5
soft_exit = 0.4
hard_enter = 0.75
hard_exit = 0.65
allowed_scripts = ["{sha}"]
[[guards.shed.rules]]
pattern = "analytics:*"
priority = "low"
[[guards.shed.rules]]
pattern = "critical:*"
priority = "critical"
"#
    )
}

/// Write 200,000-byte values through the proxy until Redis's memory is a point past
/// `ratio` (the monitor's own reading may differ from this one by a client's buffers).
/// Filling towards the hard level stops early when the proxy refuses a write as hard: its
/// estimate (the last poll plus what was written since) may see the crossing before this
/// test's own INFO does.
async fn fill_until(server: &RedisServer, c: &mut Conn, next: &mut usize, ratio: f64) {
    let value = "v".repeat(200_000);
    while (used_memory(server).await as f64) < (ratio + 0.01) * MAXMEMORY as f64 {
        let key = format!("data:{next}");
        let reply = c.call(&["SET", &key, &value]).await;
        if ratio >= 0.75 && is_oom(&reply, "hard", "75") {
            return;
        }
        assert_eq!(reply, "+OK\r\n", "{key}");
        *next += 1;
    }
}

/// Delete the filled keys, newest first, until Redis's memory is under `ratio`.
async fn drain_until(server: &RedisServer, c: &mut Conn, next: &mut usize, ratio: f64) {
    while (used_memory(server).await as f64) >= ratio * MAXMEMORY as f64 {
        assert!(*next > 0, "nothing left to delete");
        *next -= 1;
        assert_eq!(c.call(&["DEL", &format!("data:{next}")]).await, ":1\r\n");
    }
}

fn is_oom(reply: &str, level: &str, above: &str) -> bool {
    reply.starts_with("-OOM respguard: ")
        && reply.contains("% of maxmemory (")
        && reply.contains(&format!("({level} shedding above {above}%"))
}

/// Writes count towards the pressure estimate however the proxy reads them: a pipeline of
/// small writes that only the shed guard wants goes on in the request run while the guard
/// cannot engage, and their bytes are counted there. With the monitor polling once a
/// minute, a pipeline whose bytes pass the hard level is refused from there on, by the
/// estimate, before any poll sees Redis's memory.
#[tokio::test]
async fn a_pipeline_crossing_hard_between_polls_is_refused_from_there_on() {
    let server = limited_server();
    let toml = r#"
[monitor]
interval = "60s"
[guards.shed]
soft_enter = 0.0
hard_enter = 0.75
hard_exit = 0.65
"#;
    let proxy = proxy_with_toml(&server, toml).await;
    while proxy.pressure.polls() == 0 {
        polls(&proxy, 1).await;
    }
    level_within_polls(&proxy, Level::Normal, 1).await;
    let polled = proxy.pressure.polls();
    let mut c = Conn::open(proxy.addr).await;
    let value = "v".repeat(1000);
    // Each SET is over 1,000 bytes: the estimate passes 75% of maxmemory within this many,
    // whatever Redis held at the poll.
    let most_passing = (MAXMEMORY * 3 / 4 / 1000) as usize + 1;
    let (batch, mut sent, mut first_refused) = (256, 0, None);
    while first_refused.is_none() {
        assert!(
            sent <= most_passing + batch,
            "no write refused after {sent}"
        );
        let mut pipeline = Vec::new();
        for i in sent..sent + batch {
            pipeline.extend(encode(&["SET", &format!("fill:{i}"), &value]));
        }
        c.send(&pipeline).await;
        for i in sent..sent + batch {
            let reply = String::from_utf8_lossy(&c.reply().await).into_owned();
            match first_refused {
                None if reply == "+OK\r\n" => {}
                None => {
                    assert!(is_oom(&reply, "hard", "75"), "write {i}: {reply}");
                    first_refused = Some(i);
                }
                Some(_) => assert!(is_oom(&reply, "hard", "75"), "write {i}: {reply}"),
            }
        }
        sent += batch;
    }
    let first_refused = first_refused.unwrap();
    assert!(
        first_refused <= most_passing,
        "first refused: {first_refused}"
    );
    assert_eq!(proxy.pressure.polls(), polled, "no poll in between");
}

#[tokio::test]
async fn shedding_follows_memory_through_soft_and_hard_and_back() {
    let server = limited_server();
    let proxy = proxy_with_toml(&server, &shed_config()).await;
    let mut c = Conn::open(proxy.addr).await;
    let mut next = 0;
    // Set-up at normal pressure: a list to pop, a small key to delete, the allowed script.
    assert_eq!(c.call(&["RPUSH", "jobs", "a", "b", "c"]).await, ":3\r\n");
    assert_eq!(c.call(&["SET", "small", "1"]).await, "+OK\r\n");
    let sha = c.call(&["SCRIPT", "LOAD", SCRIPT_ALLOWED]).await;
    let sha = sha.lines().nth(1).unwrap().to_string();
    let reader = c.call(&["SCRIPT", "LOAD", SCRIPT_READER]).await;
    let reader = reader.lines().nth(1).unwrap().to_string();
    assert_eq!(
        c.call(&["FUNCTION", "LOAD", LIBRARY]).await,
        "$7\r\nshedlib\r\n"
    );
    // A read-only script loaded behind the proxy's back is not known to it.
    let mut direct = Conn::open(server.addr()).await;
    let unseen = "return redis.call('STRLEN', KEYS[1])";
    let unseen = direct.call(&["SCRIPT", "LOAD", unseen]).await;
    let unseen = unseen.lines().nth(1).unwrap().to_string();
    assert_eq!(c.call(&["SET", "analytics:early", "x"]).await, "+OK\r\n");
    level_within_polls(&proxy, Level::Normal, 2).await;

    // normal -> soft, within two polls of Redis's memory crossing 50%.
    fill_until(&server, &mut c, &mut next, 0.5).await;
    level_within_polls(&proxy, Level::Soft, 2).await;
    let r = c.call(&["SET", "analytics:1", "x"]).await;
    assert!(is_oom(&r, "soft", "50"), "{r}");
    assert!(
        r.ends_with(": for low-priority keys, shed rule 'analytics:*')\r\n"),
        "{r}"
    );
    let r = c.call(&["LPUSH", "analytics:events", "x"]).await;
    assert!(is_oom(&r, "soft", "50"), "{r}");
    let r = c
        .call(&["EVAL", SCRIPT_OTHER, "1", "analytics:s", "x"])
        .await;
    assert!(r.starts_with("-OOM respguard: script refused"), "{r}");
    // A script that cannot grow memory passes, even on low-priority keys.
    assert_eq!(
        c.call(&["EVAL", SCRIPT_READER, "1", "analytics:early"])
            .await,
        "$1\r\nx\r\n"
    );
    // Everything else still works.
    assert_eq!(c.call(&["SET", "data:soft", "x"]).await, "+OK\r\n");
    assert_eq!(c.call(&["SET", "critical:soft", "x"]).await, "+OK\r\n");
    assert_eq!(c.call(&["GET", "analytics:early"]).await, "$1\r\nx\r\n");
    assert_eq!(c.call(&["DEL", "analytics:early"]).await, ":1\r\n");

    // soft -> hard at 75%.
    fill_until(&server, &mut c, &mut next, 0.75).await;
    level_within_polls(&proxy, Level::Hard, 2).await;
    let r = c.call(&["SET", "data:hard", "x"]).await;
    assert!(is_oom(&r, "hard", "75"), "{r}");
    assert!(r.ends_with("(hard shedding above 75%)\r\n"), "{r}");
    let r = c.call(&["HSET", "data:hash", "f", "v"]).await;
    assert!(is_oom(&r, "hard", "75"), "{r}");
    let r = c.call(&["EVAL", SCRIPT_OTHER, "1", "data:s", "x"]).await;
    assert!(
        r.starts_with("-OOM respguard: script refused")
            && r.contains(
                "scripts that may grow memory and are not in guards.shed.allowed_scripts"
            ),
        "{r}"
    );
    let r = c.call(&["FCALL", "poke", "1", "data:f", "x"]).await;
    assert!(r.starts_with("-OOM respguard: script refused"), "{r}");
    let r = c.call(&["EVALSHA", &unseen, "1", "data:0"]).await;
    assert!(r.starts_with("-OOM respguard: script refused"), "{r}");
    // SCRIPT LOAD is not `denyoom` in Redis and runs past maxmemory: it passes, and the
    // script it loads is learned (a client whose EVALSHA met NOSCRIPT loads and retries);
    // FUNCTION LOAD is `denyoom` and is shed like a write.
    let late = "return redis.call('EXISTS', KEYS[1])";
    let loaded = c.call(&["SCRIPT", "LOAD", late]).await;
    assert_eq!(loaded, direct.call(&["SCRIPT", "LOAD", late]).await);
    let late_sha = loaded.lines().nth(1).unwrap().to_string();
    assert_eq!(
        c.call(&["EVALSHA", &late_sha, "1", "data:missing"]).await,
        ":0\r\n"
    );
    let r = c
        .call(&["FUNCTION", "LOAD", &LIBRARY.replace("shedlib", "shedlib2")])
        .await;
    assert!(is_oom(&r, "hard", "75"), "{r}");
    // Scripts and functions seen and found unable to grow memory run, as against Redis.
    assert_eq!(
        c.call(&["EVALSHA", &reader, "1", "data:missing"]).await,
        "$-1\r\n"
    );
    assert_eq!(
        c.call(&["EVAL", SCRIPT_READER, "1", "data:missing"]).await,
        "$-1\r\n"
    );
    assert_eq!(
        c.call(&["FCALL", "peek", "1", "data:missing"]).await,
        "$-1\r\n"
    );
    // Critical writes, reads, deletes, expiries, pops, read-only and allowed scripts pass.
    assert_eq!(c.call(&["SET", "critical:hard", "x"]).await, "+OK\r\n");
    assert_eq!(c.call(&["GET", "critical:hard"]).await, "$1\r\nx\r\n");
    assert_eq!(c.call(&["STRLEN", "data:0"]).await, ":200000\r\n");
    assert_eq!(c.call(&["DEL", "small"]).await, ":1\r\n");
    assert_eq!(c.call(&["EXPIRE", "data:0", "3600"]).await, ":1\r\n");
    assert_eq!(c.call(&["LPOP", "jobs"]).await, "$1\r\na\r\n");
    assert_eq!(
        c.call(&[
            "EVAL_RO",
            "return redis.call('GET', KEYS[1])",
            "1",
            "critical:hard"
        ])
        .await,
        "$1\r\nx\r\n"
    );
    assert_eq!(
        c.call(&["EVALSHA", &sha, "1", "critical:script", "y"])
            .await,
        "+OK\r\n"
    );
    // A shed command inside MULTI fails the transaction as Redis's own OOM does.
    assert_eq!(c.call(&["MULTI"]).await, "+OK\r\n");
    let r = c.call(&["SET", "data:multi", "x"]).await;
    assert!(is_oom(&r, "hard", "75"), "{r}");
    assert_eq!(
        c.call(&["EXEC"]).await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );

    // Under the enter ratio but above the exit ratio, hard holds: no flapping.
    drain_until(&server, &mut c, &mut next, 0.75).await;
    assert!(used_memory(&server).await as f64 >= 0.65 * MAXMEMORY as f64);
    let transitions = proxy.pressure.transitions();
    polls(&proxy, 6).await;
    assert_eq!(proxy.pressure.polled_level(), Level::Hard);
    assert_eq!(
        proxy.pressure.transitions(),
        transitions,
        "the level flapped"
    );
    let r = c.call(&["SET", "data:band", "x"]).await;
    assert!(is_oom(&r, "hard", "75"), "{r}");

    // Below hard's exit: back to soft (still above soft's exit), then to normal.
    drain_until(&server, &mut c, &mut next, 0.65).await;
    level_within_polls(&proxy, Level::Soft, 2).await;
    assert_eq!(c.call(&["SET", "data:again", "x"]).await, "+OK\r\n");
    drain_until(&server, &mut c, &mut next, 0.4).await;
    level_within_polls(&proxy, Level::Normal, 2).await;
    assert_eq!(c.call(&["SET", "analytics:again", "x"]).await, "+OK\r\n");

    proxy.shutdown().await;
}

#[tokio::test]
async fn a_writer_never_meets_redis_own_oom_behind_the_hard_level() {
    let server = limited_server();
    let proxy = proxy_with_toml(
        &server,
        r#"
[monitor]
interval = "100ms"
[guards.shed]
soft_enter = 0.0
hard_enter = 0.75
hard_exit = 0.7
"#,
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    let value = "w".repeat(60_000);
    let (mut ok, mut shed) = (0, 0);
    // 2,000 writes of 60 KB (120 MB, nearly four times maxmemory), 50 per pipeline, as fast
    // as the proxy takes them: faster than the monitor polls.
    for batch in 0..40 {
        let mut bytes = Vec::new();
        for i in 0..50 {
            bytes.extend_from_slice(&encode(&["SET", &format!("w:{batch}:{i}"), &value]));
        }
        c.send(&bytes).await;
        for _ in 0..50 {
            let r = String::from_utf8_lossy(&c.reply().await).into_owned();
            if r == "+OK\r\n" {
                ok += 1;
            } else {
                assert!(is_oom(&r, "hard", "75"), "not the proxy's refusal: {r}");
                shed += 1;
            }
        }
    }
    assert!(ok > 100 && shed > 1000, "{ok} stored, {shed} shed");
    let used = used_memory(&server).await;
    assert!(used < MAXMEMORY, "Redis reached maxmemory: {used}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn queue_depth_follows_push_replies_and_refuses_past_the_limit() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(
        &server,
        r#"
[monitor]
interval = "50ms"
[[guards.queue.rules]]
pattern = "queue:*"
max_depth = 100
[[guards.queue.rules]]
pattern = "events:*"
"#,
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    // 100 enqueues in one pipeline, one job each.
    let mut bytes = Vec::new();
    for i in 0..100 {
        bytes.extend_from_slice(&encode(&["RPUSH", "queue:jobs", &format!("job-{i}")]));
    }
    c.send(&bytes).await;
    let replies = c.replies(100).await;
    assert!(replies.ends_with(":100\r\n"), "{replies}");
    assert_eq!(
        c.call(&["LPUSH", "events:clicks", "a", "b", "c"]).await,
        ":3\r\n"
    );
    assert_eq!(proxy.queues.get(b"queue:jobs").unwrap().depth(), 100);
    assert_eq!(proxy.queues.get(b"events:clicks").unwrap().depth(), 3);
    assert!(proxy.queues.get(b"other").is_none());

    // The gauges match LLEN once the monitor has exported them.
    polls(&proxy, 2).await;
    let metrics = scrape(proxy.admin_addr.unwrap()).await;
    let mut direct = Conn::open(server.addr()).await;
    assert_eq!(direct.call(&["LLEN", "queue:jobs"]).await, ":100\r\n");
    assert!(
        metrics.contains("respguard_queue_depth{rule=\"queue:*\"} 100\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("respguard_queue_depth{rule=\"events:*\"} 3\n"),
        "{metrics}"
    );

    // At its limit, the queue refuses enqueues; other queues do not.
    let r = c.call(&["RPUSH", "queue:jobs", "one-too-many"]).await;
    assert_eq!(
        r,
        "-ERR respguard: queue 'queue:jobs' holds 100 jobs, at the max_depth of 100 of queue rule 'queue:*'; enqueue refused until workers drain it\r\n"
    );
    assert_eq!(c.call(&["RPUSH", "queue:other", "x"]).await, ":1\r\n");
    assert_eq!(direct.call(&["LLEN", "queue:jobs"]).await, ":100\r\n");

    // A worker drains 60 jobs (pops do not report the length); within a poll or two the
    // monitor reads the depth again and enqueues are accepted.
    for _ in 0..60 {
        assert!(direct.call(&["LPOP", "queue:jobs"]).await.starts_with('$'));
    }
    polls(&proxy, 2).await;
    assert_eq!(proxy.queues.get(b"queue:jobs").unwrap().depth(), 40);
    assert_eq!(
        c.call(&["RPUSH", "queue:jobs", "accepted"]).await,
        ":41\r\n"
    );
    proxy.shutdown().await;
}

/// Pushes onto two queues interleaved in one pipeline, the replies read together: each
/// queue's depth is its own last reply, whether its pushes came in a run or between the
/// other queue's (the session reads only the last integer of a run one watch asked for).
#[tokio::test]
async fn interleaved_pushes_to_two_queues_leave_each_its_last_length() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(
        &server,
        r#"
[[guards.queue.rules]]
pattern = "queue:*"
"#,
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    let order = ["a", "a", "b", "a", "b", "b", "b", "a", "a", "b", "b"];
    let mut bytes = Vec::new();
    for (i, q) in order.iter().enumerate() {
        bytes.extend_from_slice(&encode(&[
            "RPUSH",
            &format!("queue:{q}"),
            &format!("job-{i}"),
        ]));
    }
    // A GET between two runs of one queue's pushes, and a push again after it.
    bytes.extend_from_slice(&encode(&["GET", "x"]));
    bytes.extend_from_slice(&encode(&["LPUSH", "queue:a", "last", "two"]));
    c.send(&bytes).await;
    let replies = c.replies(order.len() + 2).await;
    let mut direct = Conn::open(server.addr()).await;
    let (a, b) = (
        direct.call(&["LLEN", "queue:a"]).await,
        direct.call(&["LLEN", "queue:b"]).await,
    );
    assert_eq!((a.as_str(), b.as_str()), (":7\r\n", ":6\r\n"));
    assert!(replies.ends_with("$-1\r\n:7\r\n"), "{replies}");
    assert_eq!(proxy.queues.get(b"queue:a").unwrap().depth(), 7);
    assert_eq!(proxy.queues.get(b"queue:b").unwrap().depth(), 6);
    proxy.shutdown().await;
}

/// Job libraries keep delayed, retry, dead and finished jobs in sorted sets, some queues in
/// streams, and move jobs between them with scripts: ZADD and XADD replies do not say the
/// size and a script says nothing, so the monitor reads it (ZCARD, XLEN, TYPE first for a key
/// only a script wrote). A set of finished jobs that grows forever shows in the gauge.
#[tokio::test]
async fn sorted_set_stream_and_script_written_queues_are_followed() {
    let server = RedisServer::start();
    let proxy = proxy_with_toml(
        &server,
        r#"
[monitor]
interval = "50ms"
[[guards.queue.rules]]
pattern = "retry"
max_depth = 5
[[guards.queue.rules]]
pattern = "events"
[[guards.queue.rules]]
pattern = "bull:*:completed"
[[guards.queue.rules]]
pattern = "bull:*:meta"
"#,
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    let mut direct = Conn::open(server.addr()).await;
    for i in 0..5 {
        let score = i.to_string();
        assert_eq!(
            c.call(&["ZADD", "retry", &score, &format!("job-{i}")])
                .await,
            ":1\r\n"
        );
    }
    for _ in 0..3 {
        assert!(c
            .call(&["XADD", "events", "*", "f", "v"])
            .await
            .starts_with('$'));
    }
    // A script moves 7 jobs into the completed set, and writes a hash under a queue rule.
    let script = "for i = 1, tonumber(ARGV[1]) do redis.call('ZADD', KEYS[1], i, 'done-' .. i) end redis.call('HSET', KEYS[2], 'v', 1) return 1";
    let eval = [
        "EVAL",
        script,
        "2",
        "bull:mail:completed",
        "bull:mail:meta",
        "7",
    ];
    assert_eq!(c.call(&eval).await, ":1\r\n");

    // Within a few polls every depth is Redis's own count; a script-written key needs one
    // poll for TYPE and one for its size. Counted in polls, not in seconds: a loaded
    // machine slows the polls, not how many it takes.
    let depth = |key: &[u8]| proxy.queues.get(key).map(|q| q.depth());
    let mut polled = 0;
    while depth(b"bull:mail:completed") != Some(7) {
        assert!(polled < 10, "completed set not read in {polled} polls");
        polls(&proxy, 1).await;
        polled += 1;
    }
    assert_eq!(direct.call(&["ZCARD", "retry"]).await, ":5\r\n");
    assert_eq!(depth(b"retry"), Some(5));
    assert_eq!(direct.call(&["XLEN", "events"]).await, ":3\r\n");
    assert_eq!(depth(b"events"), Some(3));
    let meta = proxy.queues.get(b"bull:mail:meta").unwrap();
    assert_eq!(meta.kind(), respguard::guard::queue::QueueKind::NotAQueue);
    assert_eq!(meta.depth(), 0);

    // The retry set is at its max_depth: ZADD is refused as a push would be, and Redis
    // holds what it held.
    let r = c.call(&["ZADD", "retry", "9", "job-9"]).await;
    assert_eq!(
        r,
        "-ERR respguard: queue 'retry' holds 5 jobs, at the max_depth of 5 of queue rule 'retry'; enqueue refused until workers drain it\r\n"
    );
    assert_eq!(direct.call(&["ZCARD", "retry"]).await, ":5\r\n");
    // A script touching a queue at any depth is never refused: it may be a worker's.
    assert_eq!(c.call(&eval).await, ":1\r\n");

    // The script's second run added no member (the same seven); three more scripts add one
    // each, and the growth reaches the gauge.
    for i in 0..3 {
        let member = format!("late-{i}");
        assert_eq!(
            c.call(&[
                "EVAL",
                "return redis.call('ZADD', KEYS[1], 1, ARGV[1])",
                "1",
                "bull:mail:completed",
                &member
            ])
            .await,
            ":1\r\n"
        );
    }
    let mut polled = 0;
    while depth(b"bull:mail:completed") != Some(10) {
        assert!(
            polled < 10,
            "completed set growth not read in {polled} polls"
        );
        polls(&proxy, 1).await;
        polled += 1;
    }
    polls(&proxy, 1).await;
    let metrics = scrape(proxy.admin_addr.unwrap()).await;
    assert!(
        metrics.contains("respguard_queue_depth{rule=\"bull:*:completed\"} 10\n"),
        "{metrics}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn connection_rates_are_limited_per_address_and_in_all() {
    let server = RedisServer::start();
    for (toml, refused) in [
        (
            "[proxy]\nmax_connections_per_second = 0\nmax_connections_per_second_per_address = 5\n",
            "-ERR respguard: too many new connections from 127.0.0.1, try again later (proxy.max_connections_per_second_per_address = 5)\r\n",
        ),
        (
            "[proxy]\nmax_connections_per_second = 5\nmax_connections_per_second_per_address = 0\n",
            "-ERR respguard: too many new connections, try again later (proxy.max_connections_per_second = 5)\r\n",
        ),
    ] {
        let proxy = proxy_with_toml(&server, toml).await;
        let mut open = Vec::new();
        for _ in 0..5 {
            let mut c = Conn::open(proxy.addr).await;
            assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
            open.push(c);
        }
        let mut sixth = Conn::open(proxy.addr).await;
        assert_eq!(
            String::from_utf8_lossy(&sixth.read_to_close().await),
            refused
        );
        // The connections admitted are unaffected.
        assert_eq!(open[0].call(&["PING"]).await, "+PONG\r\n");
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn upstream_connections_are_capped() {
    let server = RedisServer::start();
    // One for the monitor, one for a client.
    let proxy = proxy_with_toml(&server, "[upstream]\nmax_connections = 2\n").await;
    polls(&proxy, 1).await;
    let mut first = Conn::open(proxy.addr).await;
    assert_eq!(first.call(&["PING"]).await, "+PONG\r\n");
    let mut second = Conn::open(proxy.addr).await;
    let r = second.call(&["PING"]).await;
    assert!(
        r.starts_with("-ERR respguard: upstream 127.0.0.1:")
            && r.ends_with(
                "connection limit reached (upstream.max_connections = 2), try again\r\n"
            ),
        "{r}"
    );
    drop(first);
    // Once the first client's connection is gone, the second gets one on its next command.
    eventually!(WAIT, "an upstream connection freed", {
        match second.call(&["PING"]).await {
            pong if pong == "+PONG\r\n" => Ok(()),
            other => Err(other),
        }
    });
    proxy.shutdown().await;
}

/// `total_connections_received` from INFO stats.
async fn connections_received(c: &mut Conn) -> u64 {
    let info = c.call(&["INFO", "stats"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A client that connects and retries PING until Redis answers through the proxy, as an
/// application's connection pool does.
async fn connected_client(addr: std::net::SocketAddr) -> Conn {
    let mut c = Conn::open(addr).await;
    loop {
        match c.call(&["PING"]).await.as_str() {
            "+PONG\r\n" => return c,
            r => assert!(r.starts_with("-ERR respguard: upstream"), "{r}"),
        }
        // The application's own retry delay.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_500_clients_sees_reconnects_at_the_configured_rate() {
    let _ = rlimit::increase_nofile_limit(8192);
    const CLIENTS: usize = 500;
    const RATE: u64 = 100;
    let mut server = RedisServer::start();
    let port = server.port;
    let proxy = proxy_with_toml(
        &server,
        &format!(
            "[upstream]\nmax_connects_per_second = {RATE}\nbackoff_max = \"200ms\"\n[proxy]\nmax_connections_per_second_per_address = 0\nmax_connections_per_second = 0\n"
        ),
    )
    .await;
    let addr = proxy.addr;
    let connect_all = || {
        (0..CLIENTS)
            .map(|_| tokio::spawn(connected_client(addr)))
            .collect::<Vec<_>>()
    };
    let mut clients = Vec::new();
    for t in connect_all() {
        clients.push(t.await.unwrap());
    }

    server.kill();
    // Every client's connection is closed after Redis goes away, as with Redis itself.
    for c in &mut clients {
        c.read_to_close().await;
    }
    drop(clients);
    let server = RedisServer::start_on(port, &[]);
    let started = Instant::now();
    // Every client reconnects at once and retries until Redis answers through the proxy.
    let tasks = connect_all();
    let mut watcher = Conn::open(server.addr()).await;
    let mut samples = vec![(Instant::now(), connections_received(&mut watcher).await)];
    let mut done = Vec::new();
    for t in tasks {
        while !t.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            samples.push((Instant::now(), connections_received(&mut watcher).await));
        }
        done.push(t.await.unwrap());
    }
    samples.push((Instant::now(), connections_received(&mut watcher).await));
    let elapsed = started.elapsed();
    let total = samples.last().unwrap().1;
    eprintln!("{CLIENTS} clients reconnected in {elapsed:?}; Redis saw {total} connections");
    assert!(total >= CLIENTS as u64, "{total} connections");
    // Spread out: a second's bucket at most, then the rate. 500 connections at 100 a
    // second take at least four seconds.
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    for (i, &(t0, n0)) in samples.iter().enumerate() {
        for &(t1, n1) in &samples[i + 1..] {
            let window = t1.duration_since(t0).as_secs_f64();
            let allowed = (RATE as f64 * (1.0 + window)) as u64 + 5;
            assert!(
                n1 - n0 <= allowed,
                "{} connections in {window:.2}s (allowed {allowed})",
                n1 - n0
            );
        }
    }
    drop(done);
    proxy.shutdown().await;
}

#[tokio::test]
async fn with_redis_down_every_command_fails_fast_and_fail_open_keys_answer_as_a_cache() {
    let mut server = RedisServer::start();
    let proxy = proxy_with_toml(
        &server,
        "[[guards.fail_open.rules]]\npattern = \"cache:*\"\n",
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", "cache:a", "stored"]).await, "+OK\r\n");
    server.kill();
    c.read_to_close().await;

    let mut c = Conn::open(proxy.addr).await;
    for _ in 0..20 {
        let sent = Instant::now();
        let r = c.call(&["GET", "user:1"]).await;
        assert!(r.starts_with("-ERR respguard: upstream 127.0.0.1:"), "{r}");
        assert!(
            sent.elapsed() < Duration::from_millis(500),
            "a command waited {:?} for a dead Redis",
            sent.elapsed()
        );
    }
    for (cmd, want) in [
        (&["GET", "cache:a"][..], "$-1\r\n"),
        (&["MGET", "cache:a", "cache:b"], "*2\r\n$-1\r\n$-1\r\n"),
        (&["SET", "cache:a", "v"], "+OK\r\n"),
        (&["SET", "cache:a", "v", "EX", "60", "GET"], "$-1\r\n"),
        (&["SET", "cache:a", "v", "XX"], "$-1\r\n"),
        (&["SETEX", "cache:a", "60", "v"], "+OK\r\n"),
        (&["HSET", "cache:h", "f", "1", "g", "2"], ":2\r\n"),
        (&["HGET", "cache:h", "f"], "$-1\r\n"),
        (
            &["HMGET", "cache:h", "f", "g", "i"],
            "*3\r\n$-1\r\n$-1\r\n$-1\r\n",
        ),
        (&["HGETALL", "cache:h"], "*0\r\n"),
        (&["DEL", "cache:a", "cache:b"], ":0\r\n"),
        (&["EXISTS", "cache:a"], ":0\r\n"),
        (&["TTL", "cache:a"], ":-2\r\n"),
        (&["SETNX", "cache:n", "v"], ":1\r\n"),
    ] {
        assert_eq!(c.call(cmd).await, want, "{cmd:?}");
    }
    // A command touching any other key, or one not covered, fails as usual.
    for cmd in [
        &["MGET", "cache:a", "user:1"][..],
        &["INCR", "cache:counter"],
        &["PING"],
    ] {
        let r = c.call(cmd).await;
        assert!(r.starts_with("-ERR respguard: upstream"), "{cmd:?}: {r}");
    }
    let metrics = scrape(proxy.admin_addr.unwrap()).await;
    assert!(
        metrics.contains(
            "respguard_guard_decisions_total{guard=\"fail_open\",rule=\"cache:*\",action=\"answer\",mode=\"enforce\"} 14\n"
        ),
        "{metrics}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_proxy_user_without_info_is_ready_and_never_sheds() {
    let server = limited_server();
    let mut admin = Conn::open(server.addr()).await;
    assert_eq!(
        admin
            .call(&["ACL", "SETUSER", "proxy", "on", ">pw", "~*", "&*", "+@all", "-info"])
            .await,
        "+OK\r\n"
    );
    let mut raw = proxy_config(&format!("redis://proxy:pw@127.0.0.1:{}", server.port));
    raw.guards.shed.soft_enter = 0.0;
    raw.guards.shed.hard_enter = 0.01;
    raw.guards.shed.hard_exit = 0.005;
    raw.monitor.interval = respguard::config::HumanDuration(Duration::from_millis(50));
    let proxy = start_proxy(raw).await;
    polls(&proxy, 2).await;
    // Redis answers PING, so the proxy is ready; INFO is refused, so pressure is unknown
    // and even a hard level at 1% sheds nothing.
    let readyz = http_get(proxy.admin_addr.unwrap(), "/readyz").await;
    assert_eq!(readyz.status, 200, "{}", readyz.body);
    assert_eq!(proxy.pressure.reading().level, Level::Normal);
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(c.call(&["SET", "k", "v"]).await, "+OK\r\n");
    proxy.shutdown().await;
}
