//! A generic enqueue rule reading enqueues made by a script: a small real "library" whose
//! script (or function) stores a job hash and pushes its id, called through the proxy with
//! EVALSHA, EVAL and FCALL. Every call expected to pass is also sent to a second Redis
//! directly, and the replies compared byte for byte; what Redis holds (the queue and the
//! job hashes, so a job left without its queue entry counts) is read directly. Dramatiq,
//! run for real, is limited by a generic rule equivalent to its preset.

use crate::enqueue::{assert_storm_limited, enqueues, n, proxy_with, storm, Library};
use crate::harness::*;

/// The library's script: `enqueue` stores the job (a JSON document with an `id`) and
/// pushes its id to the queue `KEYS[1]`; any other operation (`ack`) marks the job.
const SCRIPT: &str = "-- my-lib enqueue: ARGV[1] the operation, ARGV[2] the job\n\
    local job = cjson.decode(ARGV[2])\n\
    if ARGV[1] == 'enqueue' then\n\
      redis.call('HSET', 'job:' .. job.id, 'data', ARGV[2])\n\
      return redis.call('RPUSH', KEYS[1], job.id)\n\
    end\n\
    return redis.call('HSET', 'acked', job.id, ARGV[1])";

/// The same library as a function: keys `[meta, queue]`, args `[operation, job]`,
/// answering `queued`.
const LIBRARY: &str = "#!lua name=mylib\n\
    redis.register_function('enqueue_job', function(keys, args)\n\
      local job = cjson.decode(args[2])\n\
      redis.call('HSET', 'job:' .. job.id, 'data', args[2])\n\
      redis.call('RPUSH', keys[2], job.id)\n\
      return 'queued'\n\
    end)\n\
    redis.register_function{function_name = 'peek_job', flags = {'no-writes'},\n\
      callback = function(keys, args) return redis.call('LLEN', keys[2]) end}";

const DRAMATIQ: Library = Library {
    program: "python3",
    script: "dramatiq_storm.py",
    install: "pip install dramatiq[redis] (scripts/install-test-deps.sh)",
};

/// A job: its `id` changes per call, the rest is the work.
fn job(id: &str, task: &str) -> String {
    format!("{{\"id\":\"{id}\",\"task\":\"{task}\",\"to\":\"a@example.com\"}}")
}

/// A generic script rule named `name` on `myq:*`, its script given by `script` (TOML).
fn rule(name: &str, script: &str, action: &str, extra: &str) -> String {
    format!(
        "preset = 'generic'\nname = '{name}'\npattern = 'myq:*'\nscript = {script}\n\
         payload_arg = 2\noperation_arg = 1\noperation = 'enqueue'\nexclude = ['/id']\n\
         action = '{action}'\n{extra}"
    )
}

fn sha1(body: &str) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}

/// The number of job hashes in the Redis behind `c`.
async fn job_hashes(c: &mut Conn) -> String {
    c.call(&["EVAL", "return #redis.call('KEYS', 'job:*')", "0"])
        .await
}

/// EVALSHA of `sha` with `op` and `payload`, on the queue `myq:mail`.
async fn evalsha(c: &mut Conn, sha: &str, op: &str, payload: &str) -> String {
    c.call(&["EVALSHA", sha, "1", "myq:mail", op, payload])
        .await
}

/// `args` sent through the proxy (`c`) and directly to the mirror Redis (`twin`): the same
/// reply, which is returned.
async fn same(c: &mut Conn, twin: &mut Conn, args: &[&str]) -> String {
    let got = c.call(args).await;
    assert_eq!(got, twin.call(args).await, "{args:?}");
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn an_evalsha_storm_of_a_script_loaded_behind_the_proxy_reaches_redis_once() {
    let server = RedisServer::start();
    let mirror = RedisServer::start();
    let mut direct = Conn::open(server.addr()).await;
    let mut twin = Conn::open(mirror.addr()).await;
    let sha = sha1(SCRIPT);
    let loaded = direct.call(&["SCRIPT", "LOAD", SCRIPT]).await;
    assert_eq!(loaded, format!("$40\r\n{sha}\r\n"));
    twin.call(&["SCRIPT", "LOAD", SCRIPT]).await;
    let proxy = proxy_with(
        &server,
        &rule("my-lib-sha", &format!("{{ sha1 = '{sha}' }}"), "drop", ""),
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    // 100 enqueues of the same work, each with a fresh id: the first reaches Redis, the
    // others are answered nil, the rule's default.
    for i in 0..100 {
        let payload = job(&format!("s{i}"), "mail");
        let args = ["EVALSHA", &sha, "1", "myq:mail", "enqueue", &payload];
        if i == 0 {
            assert_eq!(same(&mut c, &mut twin, &args).await, ":1\r\n");
        } else {
            assert_eq!(c.call(&args).await, "$-1\r\n", "{i}");
        }
    }
    assert_eq!(direct.call(&["LLEN", "myq:mail"]).await, ":1\r\n");
    assert_eq!(job_hashes(&mut direct).await, ":1\r\n", "no orphan job");
    // 100 distinct jobs all arrive, answered as Redis answers them.
    for i in 0..100 {
        let payload = job(&format!("d{i}"), &format!("task{i}"));
        let args = ["EVALSHA", &sha, "1", "myq:mail", "enqueue", &payload];
        let want = format!(":{}\r\n", i + 2);
        assert_eq!(same(&mut c, &mut twin, &args).await, want);
    }
    assert_eq!(direct.call(&["LLEN", "myq:mail"]).await, ":101\r\n");
    assert_eq!(job_hashes(&mut direct).await, ":101\r\n");
    // Another operation of the same script, with the storm's work, passes untouched.
    for i in 0..5 {
        let payload = job(&format!("s{i}"), "mail");
        let args = ["EVALSHA", &sha, "1", "myq:mail", "ack", &payload];
        assert_eq!(same(&mut c, &mut twin, &args).await, ":1\r\n");
    }
    assert_eq!(direct.call(&["HLEN", "acked"]).await, ":5\r\n");
    // Loading the script through the proxy is passed as it is, and changes nothing.
    assert_eq!(
        same(&mut c, &mut twin, &["SCRIPT", "LOAD", SCRIPT]).await,
        loaded
    );
    let payload = job("s100", "mail");
    assert_eq!(evalsha(&mut c, &sha, "enqueue", &payload).await, "$-1\r\n");
    assert_eq!(enqueues(&proxy, "my-lib-sha", "first").await, 101);
    assert_eq!(enqueues(&proxy, "my-lib-sha", "duplicate").await, 100);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_scripted_duplicates_are_errors_naming_the_rule() {
    let server = RedisServer::start();
    let sha = sha1(SCRIPT);
    let mut direct = Conn::open(server.addr()).await;
    direct.call(&["SCRIPT", "LOAD", SCRIPT]).await;
    let proxy = proxy_with(
        &server,
        &rule(
            "my-lib-reject",
            &format!("{{ sha1 = '{}' }}", sha.to_uppercase()),
            "reject",
            "",
        ),
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    let mut errors = 0;
    for i in 0..102 {
        let payload = job(&format!("r{i}"), "mail");
        let got = c
            .call(&["EVALSHA", &sha, "1", "myq:mail", "enqueue", &payload])
            .await;
        if i == 0 {
            assert_eq!(got, ":1\r\n");
        } else {
            assert_eq!(
                got,
                "-ERR respguard: duplicate job, refused by enqueue rule 'my-lib-reject' (see the proxy's log)\r\n"
            );
            errors += 1;
        }
    }
    assert_eq!(errors, 101);
    assert_eq!(direct.call(&["LLEN", "myq:mail"]).await, ":1\r\n");
    assert_eq!(job_hashes(&mut direct).await, ":1\r\n");
    proxy.shutdown().await;
}

/// An EVAL of the body and an EVALSHA of its digest are one script: the rule knows it by
/// digest, and a duplicate dropped inside MULTI keeps its place in EXEC's reply.
#[tokio::test(flavor = "multi_thread")]
async fn eval_and_evalsha_of_one_script_are_one_script() {
    let server = RedisServer::start();
    let mirror = RedisServer::start();
    let mut direct = Conn::open(server.addr()).await;
    let mut twin = Conn::open(mirror.addr()).await;
    let sha = sha1(SCRIPT);
    let proxy = proxy_with(
        &server,
        &rule(
            "my-lib-eval",
            &format!("{{ sha1 = '{sha}' }}"),
            "drop",
            "dropped_reply = 1",
        ),
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    let first = job("e0", "mail");
    let args = ["EVAL", SCRIPT, "1", "myq:mail", "enqueue", &first];
    assert_eq!(same(&mut c, &mut twin, &args).await, ":1\r\n");
    for i in 1..50 {
        let payload = job(&format!("e{i}"), "mail");
        let got = c
            .call(&["EVAL", SCRIPT, "1", "myq:mail", "enqueue", &payload])
            .await;
        assert_eq!(got, ":1\r\n", "dropped, answered as configured");
        let got = c
            .call(&["EVALSHA", &sha, "1", "myq:mail", "enqueue", &payload])
            .await;
        assert_eq!(got, ":1\r\n", "dropped, answered as configured");
    }
    assert_eq!(direct.call(&["LLEN", "myq:mail"]).await, ":1\r\n");
    assert_eq!(job_hashes(&mut direct).await, ":1\r\n");
    // In a transaction: the duplicate is answered in its place, the new job queued.
    let new = job("m1", "report");
    let dup = job("m2", "mail");
    let tx = [
        encode(&["MULTI"]),
        encode(&["EVALSHA", &sha, "1", "myq:mail", "enqueue", &dup]),
        encode(&["EVALSHA", &sha, "1", "myq:mail", "enqueue", &new]),
        encode(&["EXEC"]),
    ]
    .concat();
    c.send(&tx).await;
    assert_eq!(
        c.replies(4).await,
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:2\r\n"
    );
    let args = ["EVALSHA", &sha, "1", "myq:mail", "enqueue", &new];
    let mirrored = twin.call(&args).await;
    assert_eq!(mirrored, ":2\r\n", "the new job's reply is Redis's own");
    assert_eq!(direct.call(&["LLEN", "myq:mail"]).await, ":2\r\n");
    assert_eq!(job_hashes(&mut direct).await, ":2\r\n");
    proxy.shutdown().await;
}

/// A script known by text in its body: learned when its body passes (SCRIPT LOAD or EVAL
/// through the proxy); loaded behind the proxy's back, its EVALSHA is not recognised until
/// then (documented).
#[tokio::test(flavor = "multi_thread")]
async fn a_script_known_by_its_text_is_learned_from_its_body() {
    let server = RedisServer::start();
    let mut direct = Conn::open(server.addr()).await;
    let sha = sha1(SCRIPT);
    direct.call(&["SCRIPT", "LOAD", SCRIPT]).await;
    let proxy = proxy_with(
        &server,
        &rule(
            "my-lib-text",
            "{ body_contains = '-- my-lib enqueue' }",
            "drop",
            "",
        ),
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    let enqueue = |i: usize| job(&format!("b{i}"), "mail");
    for i in 0..3 {
        let got = evalsha(&mut c, &sha, "enqueue", &enqueue(i)).await;
        assert_eq!(got, format!(":{}\r\n", i + 1), "not known yet");
    }
    let loaded = c.call(&["SCRIPT", "LOAD", SCRIPT]).await;
    assert_eq!(loaded, format!("$40\r\n{sha}\r\n"));
    let got = evalsha(&mut c, &sha, "enqueue", &enqueue(3)).await;
    assert_eq!(got, ":4\r\n");
    for i in 4..20 {
        let got = evalsha(&mut c, &sha, "enqueue", &enqueue(i)).await;
        assert_eq!(got, "$-1\r\n", "{i}");
    }
    // EVAL of the body is known by the text directly.
    let payload = job("b20", "mail");
    let got = c
        .call(&["EVAL", SCRIPT, "1", "myq:mail", "enqueue", &payload])
        .await;
    assert_eq!(got, "$-1\r\n");
    assert_eq!(direct.call(&["LLEN", "myq:mail"]).await, ":4\r\n");
    assert_eq!(job_hashes(&mut direct).await, ":4\r\n");
    proxy.shutdown().await;
}

/// FCALL of a function loaded with FUNCTION LOAD, the rule's pattern matched against its
/// second key; the configured answer of a drop is the function's own.
#[tokio::test(flavor = "multi_thread")]
async fn an_fcall_storm_reaches_redis_once() {
    let server = RedisServer::start();
    let mirror = RedisServer::start();
    let mut direct = Conn::open(server.addr()).await;
    let mut twin = Conn::open(mirror.addr()).await;
    let extra = "key_index = 2\ndropped_reply = 'queued'";
    let proxy = proxy_with(
        &server,
        &rule("my-fn", "{ function = 'enqueue_job' }", "drop", extra),
    )
    .await;
    let mut c = Conn::open(proxy.addr).await;
    assert_eq!(
        same(&mut c, &mut twin, &["FUNCTION", "LOAD", LIBRARY]).await,
        "$5\r\nmylib\r\n"
    );
    for i in 0..100 {
        let payload = job(&format!("f{i}"), "mail");
        let args = [
            "FCALL",
            "enqueue_job",
            "2",
            "myq:meta",
            "myq:fn",
            "enqueue",
            &payload,
        ];
        if i == 0 {
            assert_eq!(same(&mut c, &mut twin, &args).await, "$6\r\nqueued\r\n");
        } else {
            // Byte for byte what the function answers a job it queues.
            assert_eq!(c.call(&args).await, twin.call(&args).await, "{i}");
        }
    }
    // Redis finds a function by its name in any case, and so does the rule.
    let payload = job("f100", "mail");
    let args = [
        "FCALL",
        "ENQUEUE_JOB",
        "2",
        "myq:meta",
        "myq:fn",
        "enqueue",
        &payload,
    ];
    assert_eq!(c.call(&args).await, "$6\r\nqueued\r\n");
    assert_eq!(direct.call(&["LLEN", "myq:fn"]).await, ":1\r\n");
    assert_eq!(job_hashes(&mut direct).await, ":1\r\n");
    for i in 0..20 {
        let payload = job(&format!("g{i}"), &format!("task{i}"));
        let args = [
            "FCALL",
            "enqueue_job",
            "2",
            "myq:meta",
            "myq:fn",
            "enqueue",
            &payload,
        ];
        same(&mut c, &mut twin, &args).await;
    }
    assert_eq!(direct.call(&["LLEN", "myq:fn"]).await, ":21\r\n");
    // Another function, and FCALL_RO, are not the rule's.
    let peek = [
        "FCALL_RO", "peek_job", "2", "myq:meta", "myq:fn", "enqueue", "{}",
    ];
    let mirrored = twin.call(&peek).await;
    assert_eq!(c.call(&peek).await, ":21\r\n");
    assert_eq!(
        mirrored, ":120\r\n",
        "the mirror queued the dropped ones too"
    );
    assert_eq!(enqueues(&proxy, "my-fn", "duplicate").await, 100);
    proxy.shutdown().await;
}

/// Dramatiq, run for real, limited by a generic rule equivalent to its preset: its
/// dispatch script known by digest, `enqueue` its operation, the message its tenth ARGV.
#[tokio::test(flavor = "multi_thread")]
async fn a_generic_script_rule_limits_a_dramatiq_storm() {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import dramatiq.brokers.redis as r, os; print(os.path.dirname(r.__file__))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("python3: {e} ({})", DRAMATIQ.install));
    assert!(out.status.success(), "{} needed", DRAMATIQ.install);
    let dir = String::from_utf8(out.stdout).unwrap();
    let body = std::fs::read(format!("{}/redis/dispatch.lua", dir.trim())).expect("dispatch.lua");
    let sha = sha1_smol::Sha1::from(&body).digest().to_string();
    let rule = format!(
        "preset = 'generic'\nname = 'dramatiq-generic'\npattern = 'dramatiq'\n\
         script = {{ sha1 = '{sha}' }}\nkey_index = 1\noperation_arg = 1\n\
         operation = 'enqueue'\npayload_arg = 10\n\
         include = ['/actor_name', '/args', '/kwargs']\njob_id = '/message_id'\n\
         label = '/actor_name'\naction = 'drop'"
    );
    let (_server, proxy, report) = storm(&DRAMATIQ, &rule).await;
    assert_storm_limited(&report);
    assert_eq!(n(&report, "queued"), 2 + 100, "{report}");
    assert_eq!(n(&report, "queued"), n(&report, "stored"), "{report}");
    assert_eq!(
        enqueues(&proxy, "dramatiq-generic", "duplicate").await,
        99 + 2
    );
    proxy.shutdown().await;
}
