//! Where a push carries its payloads ([`PushLayout`]), and the push rewritten without the
//! dropped ones: the same push with fewer values, or, when none is left, a read whose reply
//! has the type the push's would have had (LPUSH → LLEN, ZADD → ZCARD, XADD → ECHO of the
//! entry id), so pipelines and MULTI keep their reply counts and clients their reply types.
//!
//! Commands are encoded with [`crate::resp`]. It never decides which payloads go.

use bytes::BytesMut;

use super::super::{CommandView, Verdict};
use super::rules::Cmd;
use crate::resp;

/// Where a push's payloads are.
#[derive(Debug)]
pub struct PushLayout {
    /// Argument indices of the payloads (ZADD: the members).
    pub payloads: Vec<usize>,
    /// XADD: the index of the entry id.
    pub xadd_id: usize,
}

/// The payloads of a push. `None` for a form that does not enqueue (ZADD INCR) or that
/// does not parse (Redis will answer it with an error). `field` names the XADD field
/// holding the payload; without it, all of an entry's fields and values are the payload.
pub fn push_layout(cmd: &CommandView<'_>, kind: Cmd, field: Option<&[u8]>) -> Option<PushLayout> {
    match kind {
        Cmd::ListPush => Some(PushLayout {
            payloads: (2..cmd.argc).collect(),
            xadd_id: 0,
        }),
        Cmd::Zadd => zadd_layout(cmd),
        Cmd::Xadd => xadd_layout(cmd, field),
        _ => None,
    }
}

/// Argument `i` in lower case (empty when missing).
fn word(cmd: &CommandView<'_>, i: usize) -> Vec<u8> {
    cmd.arg(i)
        .map(|a| a.to_ascii_lowercase())
        .unwrap_or_default()
}

/// ZADD's members, after its options.
fn zadd_layout(cmd: &CommandView<'_>) -> Option<PushLayout> {
    let argc = cmd.argc;
    let mut i = 2;
    while i < argc {
        match word(cmd, i).as_slice() {
            b"nx" | b"xx" | b"gt" | b"lt" | b"ch" => i += 1,
            b"incr" => return None,
            _ => break,
        }
    }
    if i >= argc || (argc - i) % 2 != 0 {
        return None;
    }
    Some(PushLayout {
        payloads: (i + 1..argc).step_by(2).collect(),
        xadd_id: 0,
    })
}

/// XADD's entry id, after its options, and the payload: the value of `field`, or the
/// fields and values from the first field on.
fn xadd_layout(cmd: &CommandView<'_>, field: Option<&[u8]>) -> Option<PushLayout> {
    let argc = cmd.argc;
    let mut i = 2;
    while i < argc {
        match word(cmd, i).as_slice() {
            b"nomkstream" => i += 1,
            b"maxlen" | b"minid" => {
                i += 1;
                if matches!(cmd.arg(i), Some(b"=") | Some(b"~")) {
                    i += 1;
                }
                i += 1;
            }
            b"limit" => i += 2,
            _ => break,
        }
    }
    let id = i;
    let first = id + 1;
    if first >= argc || (argc - first) % 2 != 0 {
        return None;
    }
    let payloads = match field {
        Some(f) => (first..argc)
            .step_by(2)
            .find(|&j| cmd.arg(j) == Some(f))
            .map(|j| vec![j + 1])?,
        None => vec![first],
    };
    Some(PushLayout {
        payloads,
        xadd_id: id,
    })
}

/// Leave the payloads at argument indices `gone` (ascending, a subset of the layout's) out
/// of a push: send the push without them, or, when none is left, a read with the same reply
/// type (LPUSH → LLEN, ZADD → ZCARD, XADD → ECHO of the entry id).
pub fn drop_payloads(
    out: &mut BytesMut,
    cmd: &CommandView<'_>,
    kind: Cmd,
    layout: &PushLayout,
    gone: &[usize],
) -> Verdict {
    let key = cmd.arg(1).unwrap_or_default();
    if gone.len() < layout.payloads.len() {
        encode_without(out, cmd, gone, kind == Cmd::Zadd);
        return rewritten(out);
    }
    match kind {
        Cmd::Zadd => resp::command(out, &[b"ZCARD", key]),
        Cmd::Xadd => {
            let id = cmd.arg(layout.xadd_id).unwrap_or(b"*");
            let made;
            let id = if id == b"*" {
                // The id Redis would have given the entry: now in Unix milliseconds.
                made = format!("{}-0", unix_ms());
                made.as_bytes()
            } else {
                id
            };
            resp::command(out, &[b"ECHO", id]);
        }
        _ => resp::command(out, &[b"LLEN", key]),
    }
    rewritten(out)
}

/// The verdict for a command replaced by what was written to `out`.
pub fn rewritten(out: &BytesMut) -> Verdict {
    Verdict::Rewrite {
        replacement: Some(out.len()),
        hidden: 0,
    }
}

/// Write `cmd` without the arguments at `gone` (and, with `scored`, the ZADD score before
/// each of them).
fn encode_without(out: &mut BytesMut, cmd: &CommandView<'_>, gone: &[usize], scored: bool) {
    let skip = |i: usize| {
        gone.binary_search(&i).is_ok() || (scored && gone.binary_search(&(i + 1)).is_ok())
    };
    let width = if scored { 2 } else { 1 };
    resp::array_header(out, cmd.argc - gone.len() * width);
    for (i, r) in cmd.args.iter().enumerate() {
        if !skip(i) {
            resp::bulk(out, &cmd.src[r.clone()]);
        }
    }
}

/// Wall-clock time in Unix milliseconds (a stream entry id's first part).
fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
