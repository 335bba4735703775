//! Where a push carries its payloads ([`PushLayout`]), and the push rewritten without the
//! dropped ones: the same push with fewer values, or, when none is left, a read whose reply
//! has the type the push's would have had (LPUSH → LLEN, ZADD → ZCARD, XADD → ECHO of the
//! entry id), so pipelines and MULTI keep their reply counts and clients their reply types.
//!
//! Commands are encoded with [`crate::resp`]. It never decides which payloads go.

use bytes::BytesMut;

use super::super::verdict::{CommandView, Verdict};
use super::rules::Cmd;
use crate::resp;

/// Where a push's payloads are.
#[derive(Debug)]
pub struct PushLayout {
    /// Argument indices of the payloads (ZADD: the members), ascending: a range, so finding
    /// them allocates nothing.
    pub payloads: Payloads,
    /// XADD: the index of the entry id.
    pub xadd_id: usize,
}

/// Argument indices from `next` below `end`, `step` apart: what `(next..end).step_by(step)`
/// gives, in a loop of a comparison and an addition (a list push's one payload went
/// through `StepBy`'s setup and its first-step case, about 20 instructions).
#[derive(Debug, Clone)]
pub struct Payloads {
    next: usize,
    end: usize,
    step: usize,
}

impl Payloads {
    /// `(first..end).step_by(step)`; `step` is not 0.
    #[inline]
    fn new(first: usize, end: usize, step: usize) -> Self {
        Payloads {
            next: first,
            end,
            step,
        }
    }
}

impl Iterator for Payloads {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.next >= self.end {
            return None;
        }
        let i = self.next;
        self.next += self.step;
        Some(i)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end.saturating_sub(self.next).div_ceil(self.step);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Payloads {}

/// The payloads of a push. `None` for a form that does not enqueue (ZADD INCR) or that
/// does not parse (Redis will answer it with an error). `field` names the XADD field
/// holding the payload; without it, all of an entry's fields and values are the payload.
/// A list push's (every argument after the key) is laid out inline; the others read
/// their options apart.
#[inline]
pub fn push_layout(cmd: &CommandView<'_>, kind: Cmd, field: Option<&[u8]>) -> Option<PushLayout> {
    match kind {
        Cmd::ListPush => Some(PushLayout {
            payloads: Payloads::new(2, cmd.argc, 1),
            xadd_id: 0,
        }),
        _ => options_layout(cmd, kind, field),
    }
}

/// [`push_layout`] of a push with options: ZADD's or XADD's.
fn options_layout(cmd: &CommandView<'_>, kind: Cmd, field: Option<&[u8]>) -> Option<PushLayout> {
    match kind {
        Cmd::Zadd => zadd_layout(cmd),
        Cmd::Xadd => xadd_layout(cmd, field),
        _ => None,
    }
}

/// Whether argument `i` is one of `words` (lower case), in any case.
fn word_in(cmd: &CommandView<'_>, i: usize, words: &[&[u8]]) -> bool {
    cmd.arg(i)
        .is_some_and(|a| words.iter().any(|w| a.eq_ignore_ascii_case(w)))
}

/// ZADD's members, after its options.
fn zadd_layout(cmd: &CommandView<'_>) -> Option<PushLayout> {
    let argc = cmd.argc;
    let mut i = 2;
    while i < argc {
        if word_in(cmd, i, &[b"nx", b"xx", b"gt", b"lt", b"ch"]) {
            i += 1;
        } else if word_in(cmd, i, &[b"incr"]) {
            return None;
        } else {
            break;
        }
    }
    if i >= argc || (argc - i) % 2 != 0 {
        return None;
    }
    Some(PushLayout {
        payloads: Payloads::new(i + 1, argc, 2),
        xadd_id: 0,
    })
}

/// XADD's entry id, after its options, and the payload: the value of `field`, or the
/// fields and values from the first field on.
fn xadd_layout(cmd: &CommandView<'_>, field: Option<&[u8]>) -> Option<PushLayout> {
    let argc = cmd.argc;
    let mut i = 2;
    while i < argc {
        if word_in(cmd, i, &[b"nomkstream"]) {
            i += 1;
        } else if word_in(cmd, i, &[b"maxlen", b"minid"]) {
            i += 1;
            if matches!(cmd.arg(i), Some(b"=") | Some(b"~")) {
                i += 1;
            }
            i += 1;
        } else if word_in(cmd, i, &[b"limit"]) {
            i += 2;
        } else {
            break;
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
            .map(|j| Payloads::new(j + 1, j + 2, 1))?,
        None => Payloads::new(first, first + 1, 1),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::verdict::with_view;

    /// The command `args` with the payloads at `gone` dropped, as sent to Redis.
    fn dropped(args: &[&[u8]], kind: Cmd, field: Option<&[u8]>, gone: &[usize]) -> BytesMut {
        with_view(args, &[1], |cmd| {
            let layout = push_layout(cmd, kind, field).expect("a push");
            let mut out = BytesMut::new();
            let verdict = drop_payloads(&mut out, cmd, kind, &layout, gone);
            assert!(matches!(
                verdict,
                Verdict::Rewrite {
                    replacement: Some(n),
                    hidden: 0
                } if n == out.len()
            ));
            out
        })
    }

    fn encoded(args: &[&[u8]]) -> BytesMut {
        let mut out = BytesMut::new();
        resp::command(&mut out, args);
        out
    }

    #[test]
    fn a_push_keeps_the_payloads_not_dropped() {
        let push: &[&[u8]] = &[b"RPUSH", b"q:a", b"x", b"y", b"z"];
        let kept = dropped(push, Cmd::ListPush, None, &[2, 4]);
        assert_eq!(kept, encoded(&[b"RPUSH", b"q:a", b"y"]));
        let zadd: &[&[u8]] = &[b"ZADD", b"q:z", b"NX", b"1", b"a", b"2", b"b"];
        let kept = dropped(zadd, Cmd::Zadd, None, &[4]);
        assert_eq!(
            kept,
            encoded(&[b"ZADD", b"q:z", b"NX", b"2", b"b"]),
            "with its score"
        );
    }

    #[test]
    fn a_push_left_empty_becomes_a_read_with_the_same_reply_type() {
        let push: &[&[u8]] = &[b"LPUSH", b"q:a", b"x"];
        assert_eq!(
            dropped(push, Cmd::ListPush, None, &[2]),
            encoded(&[b"LLEN", b"q:a"])
        );
        let zadd: &[&[u8]] = &[b"ZADD", b"q:z", b"1", b"a"];
        assert_eq!(
            dropped(zadd, Cmd::Zadd, None, &[3]),
            encoded(&[b"ZCARD", b"q:z"])
        );
        let xadd: &[&[u8]] = &[b"XADD", b"q:s", b"MAXLEN", b"~", b"9", b"5-1", b"job", b"j"];
        let out = dropped(xadd, Cmd::Xadd, Some(b"job"), &[7]);
        assert_eq!(out, encoded(&[b"ECHO", b"5-1"]));
    }

    #[test]
    fn layouts_find_the_payloads_after_the_options() {
        let layout = |args: &[&[u8]], kind, field: Option<&[u8]>| {
            with_view(args, &[1], |cmd| {
                push_layout(cmd, kind, field).map(|l| (l.payloads.collect::<Vec<_>>(), l.xadd_id))
            })
        };
        let zadd: &[&[u8]] = &[b"ZADD", b"q:z", b"gt", b"CH", b"1", b"a", b"2", b"b"];
        assert_eq!(layout(zadd, Cmd::Zadd, None), Some((vec![5, 7], 0)));
        let incr: &[&[u8]] = &[b"ZADD", b"q:z", b"INCR", b"1", b"a"];
        assert_eq!(layout(incr, Cmd::Zadd, None), None, "not an enqueue");
        let xadd: &[&[u8]] = &[
            b"XADD",
            b"q:s",
            b"NOMKSTREAM",
            b"*",
            b"k",
            b"v",
            b"job",
            b"j",
        ];
        assert_eq!(layout(xadd, Cmd::Xadd, Some(b"job")), Some((vec![7], 3)));
        assert_eq!(
            layout(xadd, Cmd::Xadd, None),
            Some((vec![4], 3)),
            "the whole entry"
        );
        assert_eq!(layout(xadd, Cmd::Xadd, Some(b"none")), None);
    }
}
