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
        let keys: [&[u8]; 2] = [b"bull:a:wait", b"bull:a:active"];
        assert!(under_one_queue(keys.into_iter()).is_some());
        let keys: [&[u8]; 2] = [b"bull:a:wait", b"bull:b:active"];
        assert!(under_one_queue(keys.into_iter()).is_none());
    }
}
