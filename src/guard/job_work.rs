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
//! A library configured with another prefix or namespace is not recognised: its scripts
//! are judged as any script. Sidekiq, Celery and RQ workers fetch with BRPOP/BLPOP, which
//! never grow memory; their completion writes (statistics, registries, Celery's `unacked`
//! hash) are plain writes judged by their keys' priority.
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
    let keys = (3..3 + numkeys).map(|i| cmd.arg(i).unwrap_or_default());
    under_one_queue(keys)?;
    Some(if enqueue::is_script_add(cmd) {
        JobWork::Enqueue
    } else {
        JobWork::Worker
    })
}

/// Whether `cmd`, a plain write, is a worker's: all its keys under one queue of a library
/// that enqueues only through scripts.
pub fn is_worker_write(cmd: &CommandView<'_>) -> bool {
    let keys = cmd.keys.iter().map(|&i| cmd.arg(i).unwrap_or_default());
    !cmd.keys.is_empty() && under_one_queue(keys).is_some()
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
