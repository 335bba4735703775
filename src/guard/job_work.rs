//! Job libraries' worker operations, told apart from their enqueues, so the shed guard lets
//! workers drain their queues under memory pressure while enqueues are shed by their
//! queue's priority like other writes. Draining is what frees memory: a worker refused its
//! fetch, acknowledgement or completion leaves the queue full.
//!
//! Recognised by shape (keys and arguments as each library's source writes them, checked
//! against its traffic), which needs no script body and so also covers scripts loaded before
//! the proxy started:
//! - **Dramatiq**: its `dispatch` script (one key, the namespace; ARGV[1] the operation,
//!   ARGV[2] a timestamp): `fetch`, `ack`, `nack`, `requeue`, `purge` and `qsize` are a
//!   worker's; `enqueue` is an enqueue on `<namespace>:<queue>`.
//! - **BullMQ**, **Bull** and **Bee-Queue**: scripts and plain writes whose keys all lie
//!   under one queue's prefix (`bull:<q>:`, `bq:<q>:`, the default prefixes). These
//!   libraries enqueue only through their add scripts (BullMQ's `add*Job`, Bull's and
//!   Bee-Queue's `addJob`, read by the enqueue guard's shapes); every other script
//!   (moving a job to active, finishing, failing, retrying, delaying, extending a lock,
//!   checking stalled jobs) and every plain write (Bull's and Bee-Queue's
//!   `BRPOPLPUSH wait active`, Bee-Queue's completion in MULTI) is a worker's or the
//!   queue's own bookkeeping.
//!
//! - **RQ** (the `rq:` prefix): every write whose keys all lie under `rq:` (a worker's
//!   registration and heartbeat, its fetch `LMOVE rq:queue:<q> …:intermediate`, the job's
//!   status and result, the started, finished and failed registries), except the two ways
//!   a job is enqueued: a push onto `rq:queue:<q>` and a ZADD onto `rq:scheduled:<q>`. A
//!   producer's enqueue is a transaction of the job hash and the push, so shedding the push
//!   aborts the job hash with it (EXECABORT, as Redis does after an OOM in MULTI).
//! - **Celery** (kombu's Redis transport, default key names): writes and scripts whose keys
//!   are all kombu's bookkeeping (`unacked`, `unacked_index`, `unacked_mutex`, the
//!   `_kombu.binding…` sets) or task results (`celery-task-meta-<id>`,
//!   `celery-taskset-meta-<id>`). A task is enqueued by a push onto its queue, which is
//!   judged by its key's priority like any write.
//!
//! - **Sidekiq** (6.4's traffic; 7.x's by its source): a worker fetches with BRPOP, which
//!   never grows memory. Its plain writes with no prefix of Sidekiq's own are recognised
//!   by command, key and arguments together: the statistics (`INCRBY stat:processed`,
//!   `stat:failed`, and per day `stat:processed:<date>`), the heartbeat (`SADD processes`
//!   of process identities `<hostname>:<pid>:<12 hex digits>`, HSET or HMSET of the
//!   process hash `<identity>` with only the heartbeat's fields `info`, `busy`, `beat`,
//!   `rtt_us`, `quiet`, `rss`, and HSET of `<identity>:workers`, 7.x's `<identity>:work`)
//!   and a failed job's `ZADD retry` or `ZADD dead` of one job, a JSON object carrying the
//!   `failed_at` Sidekiq stamps on it. An enqueue, a push onto `queue:<q>` with the `SADD
//!   queues` before it or a `ZADD schedule`, is judged by its key's priority; so is the
//!   scheduler's move of a due retry or scheduled job to its queue (the same LPUSH) and a
//!   stopping worker's requeue of unfinished jobs (RPUSH), which look like a producer's.
//!   An application's own keys of these names pass only with these shapes: a `processes`
//!   set of members shaped like identities, a hash so named with those fields, `retry` or
//!   `dead` members stamped `failed_at`, counters named `stat:processed` or `stat:failed`.
//! - **taskiq** (taskiq-redis's `ListQueueBroker`): a worker's only command is its BRPOP
//!   fetch. Its result backend writes a result with `SET <task id>` (a bare uuid in hex,
//!   or `<prefix_str>:<task id>`), a shape an application's keys share (hex digests), so
//!   results are judged by their key's priority like any write: a `critical` shed rule on
//!   the backend's `prefix_str` keeps them at `hard`.
//!
//! - **arq** (default key names): every write whose keys all lie under `arq:` (a job's
//!   `arq:in-progress:<id>` lock, its `arq:retry:<id>` count, its `arq:result:<id>`, the
//!   health check, a retry's ZINCRBY on the queue), except the two writes of an enqueue:
//!   the job key `arq:job:<id>` and a ZADD of its id onto the queue (`arq:queue`; any ZADD
//!   but onto the `arq:abort` set). An enqueue is a transaction of both, so shedding the
//!   job key aborts the push with it. A queue named outside `arq:` is judged as any write.
//!
//! A library configured with another prefix, namespace or key names is not recognised: its
//! writes are judged as any write.
//!
//! It never decides a verdict: the shed guard does, with what this module says.

use super::enqueue;
use super::verdict::CommandView;

/// What a job library's command is, for shedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobWork {
    /// A worker's operation: passes at every level.
    Worker,
    /// An enqueue through a script whose declared keys are its queue's.
    Enqueue,
    /// A Dramatiq enqueue, whose one declared key is the namespace: its queue is
    /// `<namespace>:<queue>` (ARGV[3]).
    DramatiqEnqueue,
}

/// Dramatiq's dispatch operations that a worker runs.
const DRAMATIQ_WORKER_OPS: &[&[u8]] = &[b"fetch", b"ack", b"nack", b"requeue", b"purge", b"qsize"];

/// The key prefixes of the libraries that enqueue only through add scripts.
const QUEUE_PREFIXES: &[&[u8]] = &[b"bull:", b"bq:"];

/// What `cmd`, an EVAL or EVALSHA, is for a job library, if it is one's.
pub fn of_script(cmd: &CommandView<'_>) -> Option<JobWork> {
    let numkeys: usize = std::str::from_utf8(cmd.arg(2)?).ok()?.parse().ok()?;
    if numkeys == 0 || cmd.argc < 3 + numkeys {
        return None;
    }
    if let Some(work) = dramatiq_dispatch(cmd, numkeys) {
        return Some(work);
    }
    let keys = || (3..3 + numkeys).map(|i| cmd.arg(i).unwrap_or_default());
    if keys().all(is_kombu_bookkeeping) {
        // kombu's scripts: releasing the `unacked` mutex, binding a queue.
        return Some(JobWork::Worker);
    }
    under_one_queue(keys())?;
    Some(if enqueue::is_script_add(cmd) {
        JobWork::Enqueue
    } else {
        JobWork::Worker
    })
}

/// Whether `cmd`, a plain write, is a worker's: all its keys under one queue of a library
/// that enqueues only through scripts, or all of them RQ's, arq's or Celery's own
/// bookkeeping (and the write not an RQ or arq enqueue), or a Sidekiq worker's statistics,
/// heartbeat, retry or death of a job.
pub fn is_worker_write(cmd: &CommandView<'_>) -> bool {
    if cmd.keys.is_empty() {
        return false;
    }
    let keys = || cmd.keys.iter().map(|&i| cmd.arg(i).unwrap_or_default());
    if under_one_queue(keys()).is_some() || keys().all(is_kombu_bookkeeping) {
        return true;
    }
    if keys().all(|k| k.starts_with(RQ_PREFIX)) {
        return !is_rq_enqueue(cmd);
    }
    if keys().all(|k| k.starts_with(ARQ_PREFIX)) {
        return !is_arq_enqueue(cmd);
    }
    is_sidekiq_worker_write(cmd)
}

/// A Sidekiq worker's write, by command, key and arguments: its statistics, its heartbeat
/// (the `processes` set, the process hash, the hash of the jobs it is running) and a failed
/// job's retry or death.
fn is_sidekiq_worker_write(cmd: &CommandView<'_>) -> bool {
    let &[k] = cmd.keys else { return false };
    let Some(key) = cmd.arg(k) else { return false };
    let args = || (2..cmd.argc).map(|i| cmd.arg(i));
    match &*cmd.info.name {
        "incrby" => is_sidekiq_stat(key),
        // `SADD processes <identity>`: only identities, so an application's `processes` set
        // of other members is judged as any write.
        "sadd" => key == b"processes" && args().all(|m| m.is_some_and(is_sidekiq_identity)),
        "hset" | "hmset" => {
            is_sidekiq_work_key(key)
                || (is_sidekiq_identity(key)
                    && cmd.argc % 2 == 0
                    && args()
                        .step_by(2)
                        .all(|f| f.is_some_and(|f| SIDEKIQ_BEAT_FIELDS.contains(&f))))
        }
        // `ZADD retry|dead <when> <job>`: one job, which Sidekiq stamps `failed_at`.
        "zadd" => {
            matches!(key, b"retry" | b"dead")
                && cmd.argc == 4
                && cmd.arg(2).is_some_and(is_decimal)
                && cmd.arg(3).is_some_and(is_failed_sidekiq_job)
        }
        _ => false,
    }
}

/// The fields of a Sidekiq process hash (`<identity>`) its heartbeat writes.
const SIDEKIQ_BEAT_FIELDS: &[&[u8]] = &[b"info", b"busy", b"beat", b"rtt_us", b"quiet", b"rss"];

/// Sidekiq's counters: `stat:processed` and `stat:failed`, and per day
/// `stat:processed:<date>` (`2026-12-04` in 6.x, `20261204` in 7.x).
fn is_sidekiq_stat(key: &[u8]) -> bool {
    let Some(rest) = key
        .strip_prefix(b"stat:processed")
        .or_else(|| key.strip_prefix(b"stat:failed"))
    else {
        return false;
    };
    match rest {
        [] => true,
        [b':', date @ ..] => {
            matches!(date.len(), 8 | 10)
                && date.first().is_some_and(u8::is_ascii_digit)
                && date.iter().all(|&b| b.is_ascii_digit() || b == b'-')
        }
        _ => false,
    }
}

/// A Sidekiq process identity, `<hostname>:<pid>:<nonce>` with a nonce of 12 lower-case
/// hex digits (`web-1:9199:18f91f12fd97`).
fn is_sidekiq_identity(key: &[u8]) -> bool {
    let Some((head, nonce)) = split_last_colon(key) else {
        return false;
    };
    let Some((host, pid)) = split_last_colon(head) else {
        return false;
    };
    nonce.len() == 12
        && nonce
            .iter()
            .all(|&b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && !host.is_empty()
        && !pid.is_empty()
        && pid.iter().all(u8::is_ascii_digit)
}

/// The hash of the jobs a Sidekiq process is running: `<identity>:workers` (6.x) or
/// `<identity>:work` (7.x).
fn is_sidekiq_work_key(key: &[u8]) -> bool {
    key.strip_suffix(b":workers")
        .or_else(|| key.strip_suffix(b":work"))
        .is_some_and(is_sidekiq_identity)
}

/// A job Sidekiq's retry handling writes: a JSON object it stamped `failed_at`.
fn is_failed_sidekiq_job(job: &[u8]) -> bool {
    job.first() == Some(&b'{')
        && job.last() == Some(&b'}')
        && memchr::memmem::find(job, b"\"failed_at\":").is_some()
}

/// A score as Sidekiq writes one: digits with at most one decimal point.
fn is_decimal(score: &[u8]) -> bool {
    !score.is_empty()
        && score.iter().filter(|&&b| b == b'.').count() <= 1
        && score.iter().all(|&b| b.is_ascii_digit() || b == b'.')
}

/// `a:b:c` → (`a:b`, `c`).
fn split_last_colon(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = s.iter().rposition(|&b| b == b':')?;
    Some((&s[..at], &s[at + 1..]))
}

/// The prefix of every key arq writes with its default names.
const ARQ_PREFIX: &[u8] = b"arq:";

/// An arq enqueue: a write of a job key (`arq:job:<id>`), or a ZADD of a job's id onto a
/// queue (any sorted set of arq's but the `arq:abort` set).
fn is_arq_enqueue(cmd: &CommandView<'_>) -> bool {
    let mut keys = cmd.keys.iter().filter_map(|&i| cmd.arg(i));
    if keys.clone().any(|k| k.starts_with(b"arq:job:")) {
        return true;
    }
    &*cmd.info.name == "zadd" && keys.next() != Some(b"arq:abort")
}

/// The prefix of every key RQ writes.
const RQ_PREFIX: &[u8] = b"rq:";

/// An RQ enqueue: a push onto a queue (`rq:queue:<q>`) or a ZADD onto a scheduled-jobs
/// registry (`rq:scheduled:<q>`), both as the job's first key.
fn is_rq_enqueue(cmd: &CommandView<'_>) -> bool {
    let first = cmd
        .keys
        .first()
        .and_then(|&i| cmd.arg(i))
        .unwrap_or_default();
    match &*cmd.info.name {
        "lpush" | "rpush" | "lpushx" | "rpushx" => first.starts_with(b"rq:queue:"),
        "zadd" => first.starts_with(b"rq:scheduled:"),
        _ => false,
    }
}

/// kombu's (Celery's Redis transport) own keys with their default names, and Celery's
/// task results: a worker's acknowledgement bookkeeping and its results.
fn is_kombu_bookkeeping(key: &[u8]) -> bool {
    matches!(key, b"unacked" | b"unacked_index" | b"unacked_mutex")
        || key.starts_with(b"_kombu.binding")
        || key.starts_with(b"celery-task-meta-")
        || key.starts_with(b"celery-taskset-meta-")
}

/// A Dramatiq dispatch call: one key and at least eight ARGV, a known operation and a
/// numeric timestamp.
fn dramatiq_dispatch(cmd: &CommandView<'_>, numkeys: usize) -> Option<JobWork> {
    let argv = 3 + numkeys;
    if numkeys != 1 || cmd.argc < argv + 8 {
        return None;
    }
    let op = cmd.arg(argv)?;
    let timestamp = cmd.arg(argv + 1)?;
    if timestamp.is_empty() || !timestamp.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if op == b"enqueue" {
        Some(JobWork::DramatiqEnqueue)
    } else {
        DRAMATIQ_WORKER_OPS.contains(&op).then_some(JobWork::Worker)
    }
}

/// The queue prefix (`bull:<q>:`, `bq:<q>:`) all `keys` lie under, if there is one.
fn under_one_queue<'a>(mut keys: impl Iterator<Item = &'a [u8]>) -> Option<&'a [u8]> {
    let first = keys.next()?;
    let prefix = queue_prefix(first)?;
    keys.all(|k| k.starts_with(prefix)).then_some(prefix)
}

/// `bull:emails:wait` → `bull:emails:`; `None` for a key not under a library's queue.
fn queue_prefix(key: &[u8]) -> Option<&[u8]> {
    let library = QUEUE_PREFIXES.iter().find(|p| key.starts_with(p))?;
    let rest = &key[library.len()..];
    let queue_end = rest.iter().position(|&b| b == b':')?;
    (queue_end > 0).then(|| &key[..library.len() + queue_end + 1])
}

/// Dramatiq's queue key, `<namespace>:<queue>`, written into `buf`; `None` when it does not
/// fit (the namespace alone then decides).
pub fn dramatiq_queue_key<'b>(cmd: &CommandView<'_>, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    let namespace = cmd.arg(3)?;
    let queue = cmd.arg(3 + 1 + 2)?;
    let len = namespace.len() + 1 + queue.len();
    let out = buf.get_mut(..len)?;
    out[..namespace.len()].copy_from_slice(namespace);
    out[namespace.len()] = b':';
    out[namespace.len() + 1..].copy_from_slice(queue);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::verdict::with_view;

    fn script(args: &[&[u8]]) -> Option<JobWork> {
        with_view(args, &[], of_script)
    }

    const SHA: &[u8] = b"fdacc359c79a5adc3b8eeb53ff5772d7c42144e3";

    /// A Dramatiq 2.2 dispatch of `op`, as captured (message shortened).
    fn dramatiq(op: &[u8], rest: &[&[u8]]) -> Vec<&'static [u8]> {
        let mut args: Vec<&[u8]> = vec![
            b"EVALSHA",
            SHA,
            b"1",
            b"dramatiq",
            b"",
            b"1796398804972",
            b"emails",
            b"ab1f1519-2733-4258-a93b-a6d47262f193",
            b"60000",
            b"604800000",
            b"0",
            b"3996",
        ];
        args[4] = op.to_vec().leak();
        args.extend(rest.iter().map(|r| &*r.to_vec().leak()));
        args
    }

    #[test]
    fn dramatiq_operations_are_told_apart() {
        let enqueue = dramatiq(b"enqueue", &[b"f93902d2", br#"{"actor_name":"send"}"#]);
        assert_eq!(script(&enqueue), Some(JobWork::DramatiqEnqueue));
        assert!(with_view(&enqueue, &[], enqueue::is_script_add));
        let mut buf = [0u8; 64];
        let key = with_view(&enqueue, &[], |c| {
            dramatiq_queue_key(c, &mut buf).map(<[u8]>::to_vec)
        });
        assert_eq!(key.as_deref(), Some(&b"dramatiq:emails"[..]));
        for op in [&b"fetch"[..], b"ack", b"nack", b"requeue"] {
            assert_eq!(
                script(&dramatiq(op, &[b"x"])),
                Some(JobWork::Worker),
                "{op:?}"
            );
        }
        assert_eq!(script(&dramatiq(b"other", &[b"x"])), None);
    }

    #[test]
    fn queue_scripts_are_adds_or_workers() {
        // Bee-Queue 2.0's addJob, as captured.
        let bq_add: &[&[u8]] = &[
            b"EVALSHA", SHA, b"3", b"bq:emails:id", b"bq:emails:jobs", b"bq:emails:waiting", b"",
            br#"{"data":{"to":"a@b"},"options":{"timestamp":1796398805514,"stacktraces":[]},"status":"created","progress":0}"#,
        ];
        assert_eq!(script(bq_add), Some(JobWork::Enqueue));
        // Its checkStalledJobs.
        let bq_stalled: &[&[u8]] = &[
            b"EVALSHA",
            SHA,
            b"4",
            b"bq:emails:stallBlock",
            b"bq:emails:stalling",
            b"bq:emails:waiting",
            b"bq:emails:active",
            b"5000",
        ];
        assert_eq!(script(bq_stalled), Some(JobWork::Worker));
        // Bull 4.16's addJob, as captured (opts shortened).
        let bull_add: &[&[u8]] = &[
            b"EVALSHA",
            SHA,
            b"6",
            b"bull:emails:wait",
            b"bull:emails:paused",
            b"bull:emails:meta-paused",
            b"bull:emails:id",
            b"bull:emails:delayed",
            b"bull:emails:priority",
            b"bull:emails:",
            b"fx",
            b"named",
            br#"{"to":"a@b"}"#,
            b"{}",
            b"1796398805569",
            b"0",
            b"0",
            b"0",
            b"LPUSH",
            b"token",
        ];
        assert_eq!(script(bull_add), Some(JobWork::Enqueue));
        let bull_extend: &[&[u8]] = &[
            b"EVALSHA",
            SHA,
            b"2",
            b"bull:emails:1:lock",
            b"bull:emails:stalled",
            b"token",
            b"30000",
            b"1",
        ];
        assert_eq!(script(bull_extend), Some(JobWork::Worker));
        // Keys of two queues, or of an application: not a library's.
        let mixed: &[&[u8]] = &[
            b"EVALSHA",
            SHA,
            b"2",
            b"bull:a:wait",
            b"bull:b:wait",
            b"x",
            b"y",
        ];
        assert_eq!(script(mixed), None);
        let app: &[&[u8]] = &[b"EVAL", b"return 1", b"1", b"cache:x", b"v"];
        assert_eq!(script(app), None);
    }

    #[test]
    fn plain_writes_under_one_queue_are_workers() {
        let fetch: &[&[u8]] = &[
            b"BRPOPLPUSH",
            b"bq:emails:waiting",
            b"bq:emails:active",
            b"0",
        ];
        assert!(with_view(fetch, &[1, 2], is_worker_write));
        let done: &[&[u8]] = &[b"SADD", b"bq:emails:succeeded", b"7"];
        assert!(with_view(done, &[1], is_worker_write));
        let app: &[&[u8]] = &[b"SET", b"cache:x", b"v"];
        assert!(!with_view(app, &[1], is_worker_write));
        let across: &[&[u8]] = &[b"LMOVE", b"bq:a:waiting", b"cache:x", b"LEFT", b"RIGHT"];
        assert!(!with_view(across, &[1, 2], is_worker_write));
    }

    /// RQ 3.0's worker writes, as captured, pass; its two ways of enqueueing do not.
    #[test]
    fn rq_worker_writes_pass_and_its_enqueues_do_not() {
        let worker: &[(&[&[u8]], &[usize])] = &[
            (
                &[
                    b"LMOVE",
                    b"rq:queue:emails",
                    b"rq:queue:emails:intermediate",
                    b"LEFT",
                    b"RIGHT",
                ],
                &[1, 2],
            ),
            (&[b"HSET", b"rq:worker:fca8", b"state", b"busy"], &[1]),
            (&[b"SADD", b"rq:workers:emails", b"rq:worker:fca8"], &[1]),
            (
                &[b"ZADD", b"rq:wip:emails", b"1796414842", b"e984:cfab"],
                &[1],
            ),
            (
                &[b"ZADD", b"rq:finished:emails", b"1796415102", b"e984"],
                &[1],
            ),
            (&[b"HSET", b"rq:job:e984", b"status", b"finished"], &[1]),
            (&[b"XADD", b"rq:results:e984", b"*", b"type", b"1"], &[1]),
            (
                &[
                    b"SET",
                    b"rq:clean_registries:emails",
                    b"1",
                    b"NX",
                    b"EX",
                    b"899",
                ],
                &[1],
            ),
        ];
        for (args, keys) in worker {
            assert!(with_view(args, keys, is_worker_write), "{args:?}");
        }
        let enqueues: &[(&[&[u8]], &[usize])] = &[
            (&[b"RPUSH", b"rq:queue:emails", b"e984"], &[1]),
            (&[b"LPUSH", b"rq:queue:emails", b"e984"], &[1]),
            (
                &[b"ZADD", b"rq:scheduled:emails", b"1796415102", b"e984"],
                &[1],
            ),
            (&[b"SET", b"cache:x", b"v"], &[1]),
            (
                &[b"LMOVE", b"rq:queue:a", b"cache:x", b"LEFT", b"RIGHT"],
                &[1, 2],
            ),
        ];
        for (args, keys) in enqueues {
            assert!(!with_view(args, keys, is_worker_write), "{args:?}");
        }
    }

    /// arq 0.28's worker writes (from its source, as `tests/it/jobs.rs` runs them) pass;
    /// the two writes of its enqueue do not.
    #[test]
    fn arq_worker_writes_pass_and_its_enqueues_do_not() {
        let worker: &[&[&[u8]]] = &[
            &[b"PSETEX", b"arq:in-progress:6f1e", b"300000", b"1"],
            &[b"INCR", b"arq:retry:6f1e"],
            &[b"SETEX", b"arq:retry:6f1e", b"88400", b"2"],
            &[b"SET", b"arq:result:6f1e", b"r", b"PX", b"86400000"],
            &[b"PSETEX", b"arq:queue:health-check", b"3601000", b"ok"],
            &[b"ZINCRBY", b"arq:queue", b"5000", b"6f1e"],
            &[b"ZADD", b"arq:abort", b"1796415102", b"6f1e"],
        ];
        for args in worker {
            assert!(with_view(args, &[1], is_worker_write), "{args:?}");
        }
        let enqueues: &[&[&[u8]]] = &[
            &[b"PSETEX", b"arq:job:6f1e", b"86400000", b"pickle"],
            &[b"ZADD", b"arq:queue", b"1796415102", b"6f1e"],
            &[b"ZADD", b"arq:queue:emails", b"1796415102", b"6f1e"],
        ];
        for args in enqueues {
            assert!(!with_view(args, &[1], is_worker_write), "{args:?}");
        }
    }

    /// kombu 5's acknowledgement bookkeeping and Celery's results, as captured, pass; a task
    /// pushed onto its queue does not.
    #[test]
    fn celery_bookkeeping_passes_and_its_queue_pushes_do_not() {
        let worker: &[(&[&[u8]], &[usize])] = &[
            (
                &[b"HSET", b"unacked", b"6474", b"[{\"body\": \"W1sw\"}]"],
                &[1],
            ),
            (
                &[b"ZADD", b"unacked_index", b"1796414613.26", b"6474"],
                &[1],
            ),
            (
                &[b"SET", b"unacked_mutex", b"c86c", b"NX", b"PX", b"300000"],
                &[1],
            ),
            (
                &[b"SADD", b"_kombu.binding.emails", b"emails\x06\x16"],
                &[1],
            ),
            (
                &[
                    b"ZADD",
                    b"_kombu.binding_deadlines",
                    b"GT",
                    b"1796418213265",
                    b"celery.pidbox",
                ],
                &[1],
            ),
            (
                &[b"SET", b"celery-task-meta-6474", b"{}", b"EX", b"86400"],
                &[1],
            ),
        ];
        for (args, keys) in worker {
            assert!(with_view(args, keys, is_worker_write), "{args:?}");
        }
        assert!(!with_view(
            &[b"LPUSH", b"emails", b"{}"],
            &[1],
            is_worker_write
        ));
        assert!(!with_view(
            &[b"SET", b"unacked2", b"v"],
            &[1],
            is_worker_write
        ));
        let release: &[&[u8]] = &[b"EVALSHA", SHA, b"1", b"unacked_mutex", b"c86c"];
        assert_eq!(script(release), Some(JobWork::Worker));
        let bind: &[&[u8]] = &[
            b"EVALSHA",
            SHA,
            b"2",
            b"_kombu.binding.celery.pidbox",
            b"_kombu.binding_deadlines",
            b"\x06\x16",
        ];
        assert_eq!(script(bind), Some(JobWork::Worker));
        let other: &[&[u8]] = &[b"EVALSHA", SHA, b"2", b"unacked", b"emails"];
        assert_eq!(script(other), None);
    }

    /// Sidekiq 6.4's worker writes, as captured (payloads shortened), pass: its statistics,
    /// heartbeat, the hash of its running jobs, a job's retry and death. Its enqueues (a
    /// push onto `queue:<q>` with the `queues` set, a scheduled job) and look-alike
    /// application writes do not.
    #[test]
    fn sidekiq_worker_writes_pass_and_its_enqueues_do_not() {
        const ID: &[u8] = b"vm:9199:18f91f12fd97";
        let worker: &[&[&[u8]]] = &[
            &[b"INCRBY", b"stat:processed", b"5"],
            &[b"INCRBY", b"stat:processed:2026-12-04", b"5"],
            &[b"INCRBY", b"stat:failed", b"0"],
            &[b"INCRBY", b"stat:failed:2026-12-04", b"0"],
            // Sidekiq 7's per-day counter.
            &[b"INCRBY", b"stat:processed:20261204", b"5"],
            &[b"SADD", b"processes", ID],
            &[
                b"HMSET",
                ID,
                b"info",
                br#"{"hostname":"vm","pid":9199,"identity":"vm:9199:18f91f12fd97"}"#,
                b"busy",
                b"0",
                b"beat",
                b"1796422874.7515914",
                b"rtt_us",
                b"82",
                b"quiet",
                b"false",
                b"rss",
                b"27008",
            ],
            &[
                b"HSET",
                b"vm:9199:18f91f12fd97:workers",
                b"7nb",
                br#"{"queue":"emails","payload":"{\"class\":\"SlowJob\"}"}"#,
            ],
            &[b"HSET", b"web.1:7:0123456789ab:work", b"7nb", b"{}"],
            &[
                b"ZADD",
                b"retry",
                b"1796422900.7055287",
                br#"{"retry":true,"queue":"emails","class":"FailJob","jid":"7a11","error_message":"boom","failed_at":1796422882.7055163,"retry_count":0}"#,
            ],
            &[
                b"ZADD",
                b"dead",
                b"1796422882.7068264",
                br#"{"retry":0,"queue":"emails","class":"DeadJob","jid":"7827","failed_at":1796422882.7067127,"retry_count":0}"#,
            ],
        ];
        for args in worker {
            assert!(with_view(args, &[1], is_worker_write), "{args:?}");
        }
        let judged: &[&[&[u8]]] = &[
            // A producer's push: the queue and the set of queue names.
            &[
                b"LPUSH",
                b"queue:emails",
                br#"{"class":"DrainJob","jid":"ddf2"}"#,
            ],
            &[b"SADD", b"queues", b"emails"],
            // A scheduled job, and a job pushed to the retry set without having failed.
            &[
                b"ZADD",
                b"schedule",
                b"1796422900.1",
                br#"{"class":"DrainJob"}"#,
            ],
            &[
                b"ZADD",
                b"retry",
                b"1796422900.1",
                br#"{"class":"DrainJob"}"#,
            ],
            &[
                b"ZADD",
                b"retry",
                b"NX",
                b"1796422900.1",
                br#"{"failed_at":1}"#,
            ],
            // Application keys of the same names or near shapes.
            &[b"SADD", b"processes", b"backup"],
            &[b"HSET", b"processes", b"info", b"x"],
            &[b"HSET", ID, b"owner", b"x"],
            &[b"HSET", b"vm:9199:18F91F12FD97", b"info", b"x"],
            &[b"HSET", b"vm:x:18f91f12fd97", b"info", b"x"],
            &[b"HSET", b"vm:9199:18f91f12fd97:jobs", b"t", b"x"],
            &[b"INCRBY", b"stat:visits", b"1"],
            &[b"INCRBY", b"stat:processed:emails", b"1"],
            &[b"SET", b"stat:processed", b"1"],
        ];
        for args in judged {
            assert!(!with_view(args, &[1], is_worker_write), "{args:?}");
        }
    }

    #[test]
    fn queue_prefixes() {
        assert_eq!(
            queue_prefix(b"bull:emails:wait"),
            Some(&b"bull:emails:"[..])
        );
        assert_eq!(queue_prefix(b"bq:emails:jobs"), Some(&b"bq:emails:"[..]));
        assert_eq!(queue_prefix(b"bull::wait"), None);
        assert_eq!(queue_prefix(b"bull:emails"), None);
        assert_eq!(queue_prefix(b"cache:x:y"), None);
    }
}
