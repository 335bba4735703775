//! A generic rule for jobs written as a key and queued by id (`id_queues`): the job key's
//! write and the push of its id, in one MULTI as arq and RQ-like libraries send them, are
//! dropped together, and the transaction's replies keep their place and types. Passing
//! transactions are also sent to a second Redis directly and the replies compared byte for
//! byte; what Redis holds (job keys and queue, so an orphan counts) is read directly. arq,
//! run for real, has its retry storm limited by such a rule on its pickled jobs.

use crate::enqueue::{assert_storm_limited, enqueues, n, proxy_with, storm, Library};
use crate::harness::*;

const ARQ: Library = Library {
    program: concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/arq-venv/bin/python"
    ),
    script: "arq_storm.py",
    install: "bash scripts/install-test-deps.sh (arq in tests/clients/arq-venv)",
};

/// A job: its `id` and `at` change per enqueue, the rest is the work.
fn job(id: &str, to: &str) -> String {
    format!(
        "{{\"id\":\"{id}\",\"at\":{},\"task\":\"mail\",\"to\":\"{to}\"}}",
        id.len()
    )
}

/// A rule `name` on job keys `job:*` whose ids go to `queue:*`, the payload JSON without
/// its id and time; `extra` adds settings. (Metrics are shared by the tests: one name each.)
fn rule(name: &str, action: &str, extra: &str) -> String {
    format!(
        "preset = 'generic'\nname = '{name}'\npattern = 'job:*'\nid_queues = 'queue:*'\n\
         exclude = ['/id', '/at']\naction = '{action}'\n{extra}"
    )
}

/// `commands` in one MULTI ... EXEC: the replies, MULTI's and QUEUED included.
async fn transaction(c: &mut Conn, commands: &[Vec<&str>]) -> String {
    let mut tx = encode(&["MULTI"]);
    for args in commands {
        tx.extend(encode(args));
    }
    tx.extend(encode(&["EXEC"]));
    c.send(&tx).await;
    c.replies(commands.len() + 2).await
}

/// An arq-shaped enqueue of `payload` as job `id`: the job key with a TTL, then its id on
/// the sorted-set queue.
fn enqueue<'a>(id: &'a str, payload: &'a str) -> Vec<Vec<&'a str>> {
    vec![
        vec!["PSETEX", id, "60000", payload],
        vec!["ZADD", "queue:mail", "1", &id[4..]],
    ]
}

/// A job hash with the payload in `data`, then its id pushed onto a list queue.
fn job_hash<'a>(key: &'a str, payload: &'a str) -> Vec<Vec<&'a str>> {
    vec![
        vec!["HSET", key, "status", "queued", "data", payload],
        vec!["RPUSH", "queue:hash", &key[4..]],
    ]
}

/// The job keys in the Redis behind `c`.
async fn job_keys(c: &mut Conn) -> String {
    c.call(&["EVAL", "return #redis.call('KEYS', 'job:*')", "0"])
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_job_key_takes_its_queued_id_with_it() {
    let server = RedisServer::start();
    let mirror = RedisServer::start();
    let proxy = proxy_with(&server, &rule("jobs", "drop", "")).await;
    let mut c = Conn::open(proxy.addr).await;
    let mut twin = Conn::open(mirror.addr()).await;
    let mut direct = Conn::open(server.addr()).await;

    let first = job("1", "a@example.com");
    let passed = transaction(&mut c, &enqueue("job:1", &first)).await;
    assert_eq!(
        passed,
        transaction(&mut twin, &enqueue("job:1", &first)).await
    );
    assert_eq!(passed, "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:1\r\n");

    // The same work under 50 fresh ids: each transaction answered in full, in its
    // places: the job key's +OK as PSETEX gives it, the ZADD's integer (the queue's size,
    // as for any dropped push), and nothing written.
    for i in 2..52 {
        let id = format!("job:{i}");
        let same = job(&id[4..], "a@example.com");
        let got = transaction(&mut c, &enqueue(&id, &same)).await;
        assert_eq!(
            got, "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:1\r\n",
            "{id}"
        );
    }
    assert_eq!(direct.call(&["ZCARD", "queue:mail"]).await, ":1\r\n");
    assert_eq!(job_keys(&mut direct).await, ":1\r\n", "no orphan job key");

    // Other work passes, answered as Redis answers it.
    for i in 0..20 {
        let id = format!("job:d{i}");
        let other = job(&id[4..], &format!("user{i}@example.com"));
        let got = transaction(&mut c, &enqueue(&id, &other)).await;
        assert_eq!(got, transaction(&mut twin, &enqueue(&id, &other)).await);
    }
    assert_eq!(direct.call(&["ZCARD", "queue:mail"]).await, ":21\r\n");
    assert_eq!(job_keys(&mut direct).await, ":21\r\n");
    assert_eq!(enqueues(&proxy, "jobs", "duplicate").await, 50);

    // Within seconds of its drop, a dropped id is left out of any push onto the rule's
    // queues (the rest of the push goes on); onto other keys it is no business of the rule.
    assert_eq!(c.call(&["RPUSH", "queue:list", "d3", "7"]).await, ":1\r\n");
    let list = direct.call(&["LRANGE", "queue:list", "0", "-1"]).await;
    assert_eq!(list, "*1\r\n$2\r\nd3\r\n");
    assert_eq!(c.call(&["RPUSH", "other", "7"]).await, ":1\r\n");
    proxy.shutdown().await;
}

/// With `field`, the job is a hash's field: HSET's reply on a drop is the count of fields it
/// would have created, the list push of its id becomes LLEN; a rejected job aborts its
/// transaction (EXECABORT), leaving neither key nor push.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_hash_and_its_list_push_are_dropped_or_refused_together() {
    let server = RedisServer::start();
    let mut direct = Conn::open(server.addr()).await;
    let proxy = proxy_with(&server, &rule("job-hashes", "drop", "field = 'data'")).await;
    let mut c = Conn::open(proxy.addr).await;
    for i in 0..10 {
        let key = format!("job:h{i}");
        let payload = job(&key[4..], "b@example.com");
        let got = transaction(&mut c, &job_hash(&key, &payload)).await;
        assert_eq!(
            got, "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:2\r\n:1\r\n",
            "{key}: the first passes, the others are answered as if written"
        );
    }
    assert_eq!(direct.call(&["LLEN", "queue:hash"]).await, ":1\r\n");
    assert_eq!(job_keys(&mut direct).await, ":1\r\n");
    proxy.shutdown().await;

    let proxy = proxy_with(
        &server,
        &rule("job-hashes-reject", "reject", "field = 'data'"),
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    for i in 0..2 {
        let key = format!("job:r{i}");
        let payload = job(&key[4..], "c@example.com");
        let got = transaction(&mut c, &job_hash(&key, &payload)).await;
        if i == 0 {
            assert!(got.ends_with("*2\r\n:2\r\n:2\r\n"), "{got}");
        } else {
            assert!(
                got.contains(
                    "-ERR respguard: duplicate job, refused by enqueue rule 'job-hashes-reject'"
                ) && got
                    .ends_with("-EXECABORT Transaction discarded because of previous errors.\r\n"),
                "{got}"
            );
        }
    }
    assert_eq!(direct.call(&["LLEN", "queue:hash"]).await, ":2\r\n");
    assert_eq!(job_keys(&mut direct).await, ":2\r\n");
    proxy.shutdown().await;
}

/// arq 0.28 (pickled jobs, `PSETEX arq:job:<id>` then `ZADD arq:queue`, in one MULTI
/// under WATCH): client A enqueues the same call 100 times with fresh ids, interleaved with
/// 100 distinct calls; client B the same call 3 times. Then an arq worker, through the
/// proxy, runs every queued job and stores its result.
#[tokio::test(flavor = "multi_thread")]
async fn arq_retry_storm_is_dropped_per_client() {
    let rule = "preset = 'generic'\nname = 'arq'\npattern = 'arq:job:*'\n\
                id_queues = 'arq:queue'\nformat = 'pickle'\nexclude = ['/et']\n\
                label = '/f'\naction = 'drop'";
    let (_server, proxy, report) = storm(&ARQ, rule).await;
    assert_storm_limited(&report);
    assert_eq!(n(&report, "queued"), 2 + 100, "{report}");
    assert_eq!(n(&report, "stored"), 2 + 100, "no orphan job key: {report}");
    assert_eq!(n(&report, "complete"), 2 + 100, "{report}");
    assert_eq!(n(&report, "failed"), 0, "{report}");
    assert_eq!(n(&report, "results"), 2 + 100, "{report}");
    assert_eq!(enqueues(&proxy, "arq", "duplicate").await, 99 + 2);
    assert_eq!(enqueues(&proxy, "arq", "unread").await, 0);
    proxy.shutdown().await;
}
