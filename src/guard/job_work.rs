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
//! A library configured with another prefix, namespace or key names is not recognised: its
//! writes are judged as any write. Sidekiq's workers fetch with BRPOP, which never grows
//! memory; their statistics and heartbeats (`stat:*`, `processes`, the process hash) are
//! plain writes judged by their keys' priority, so at the hard level a Sidekiq worker keeps
//! processing jobs while those writes are refused (Sidekiq logs them and retries).
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
/// that enqueues only through scripts, or all of them RQ's or Celery's own bookkeeping
/// (and the write not an RQ enqueue).
pub fn is_worker_write(cmd: &CommandView<'_>) -> bool {
    if cmd.keys.is_empty() {
        return false;
    }
    let keys = || cmd.keys.iter().map(|&i| cmd.arg(i).unwrap_or_default());
    if under_one_queue(keys()).is_some() || keys().all(is_kombu_bookkeeping) {
        return true;
    }
    keys().all(|k| k.starts_with(RQ_PREFIX)) && !is_rq_enqueue(cmd)
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
