//! Commands one node cannot answer alone, and how their replies are put back together.
//!
//! - [`split`]: a command whose keys hash to several slots, when splitting keeps its
//!   meaning (`MGET`, `MSET`, `DEL`, `UNLINK`, `EXISTS`, `TOUCH`): one command per slot,
//!   keys (and `MSET`'s values) in the client's order within each;
//! - [`keyless`]: where a command naming no key goes: any node, every primary, or `SCAN`'s
//!   one primary at a time;
//! - [`Merge`]: the client's one reply from the parts' replies.
//!
//! Pure: bytes in, bytes out, no I/O. Off the single-slot path (a command in one slot is
//! never looked at here).

use bytes::{Bytes, BytesMut};

use crate::resp;
use crate::scanner::reply::{ReplyScanner, ReplyStep};

/// How the parts' replies become the client's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// One part: its reply as it is.
    One,
    /// `MGET` split: the values put back in the client's key order: for each key, its
    /// part and its index in that part's reply.
    Values(Vec<(u16, u32)>),
    /// The integers added up (`DEL`, `UNLINK`, `EXISTS`, `TOUCH` split; `DBSIZE`).
    Sum,
    /// The first error, else the first part's reply (`MSET` split, `FLUSHALL`,
    /// `SCRIPT LOAD`: every node answers alike).
    Same,
    /// The arrays concatenated (`KEYS`).
    Concat,
    /// Arrays of `0`/`1` answered element by element: `1` only where every part says `1`
    /// (`SCRIPT EXISTS`: a script is there only if every primary has it).
    AllOf,
    /// One of the replies that is not null, at random (`RANDOMKEY`: a key of any node).
    AnyValue,
    /// A `SCAN` on the primary `node` of `nodes`: the cursor Redis gives is moved into the
    /// proxy's cursor, which names the primary in its high bits (see [`scan_cursor`]).
    Scan { node: u16, nodes: u16 },
}

/// Where a command naming no key goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keyless {
    /// Any node answers (the session's last, else a primary).
    AnyNode,
    /// Every primary runs it; the replies merged so.
    EveryPrimary(Merge),
    /// `SCAN`: one primary at a time, named by the cursor.
    Scan,
}

/// Where `name` (upper case; `sub`, its first argument upper-cased, for a container
/// command) goes when it names no key.
pub fn keyless(name: &[u8], sub: &[u8]) -> Keyless {
    match name {
        b"DBSIZE" => Keyless::EveryPrimary(Merge::Sum),
        b"KEYS" => Keyless::EveryPrimary(Merge::Concat),
        b"RANDOMKEY" => Keyless::EveryPrimary(Merge::AnyValue),
        b"FLUSHALL" | b"FLUSHDB" => Keyless::EveryPrimary(Merge::Same),
        b"SCAN" => Keyless::Scan,
        b"SCRIPT" if matches!(sub, b"LOAD" | b"FLUSH") => Keyless::EveryPrimary(Merge::Same),
        b"SCRIPT" if sub == b"EXISTS" => Keyless::EveryPrimary(Merge::AllOf),
        b"FUNCTION" if matches!(sub, b"LOAD" | b"DELETE" | b"FLUSH" | b"RESTORE") => {
            Keyless::EveryPrimary(Merge::Same)
        }
        _ => Keyless::AnyNode,
    }
}

/// A command split per slot: each part's command and slot, and the merge.
#[derive(Debug)]
pub struct Split {
    /// One command per slot, in order of each slot's first key.
    pub parts: Vec<(Bytes, u16)>,
    /// How the client's reply is made from theirs.
    pub merge: Merge,
}

/// `args` (the name upper-cased in `name`) split per slot, if the command is one whose
/// meaning survives the split; `None` for the others (Redis Cluster's `-CROSSSLOT`).
pub fn split(name: &[u8], args: &[&[u8]], slot_of: impl Fn(&[u8]) -> u16) -> Option<Split> {
    let (stride, merge_sum) = match name {
        b"MGET" => (1, false),
        b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" => (1, true),
        b"MSET" => (2, false),
        _ => return None,
    };
    let items = &args[1..];
    if items.is_empty() || items.len() % stride != 0 {
        return None;
    }
    // Group the keys (with their values) by slot, slots in order of first appearance.
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    let mut places = Vec::with_capacity(items.len() / stride);
    for (n, chunk) in items.chunks(stride).enumerate() {
        let slot = slot_of(chunk[0]);
        let g = match groups.iter().position(|(s, _)| *s == slot) {
            Some(g) => g,
            None => {
                groups.push((slot, Vec::new()));
                groups.len() - 1
            }
        };
        let members = &mut groups[g].1;
        places.push((g as u16, members.len() as u32));
        members.push(n);
    }
    let parts = groups
        .iter()
        .map(|(slot, members)| {
            let mut part_args: Vec<&[u8]> = Vec::with_capacity(1 + members.len() * stride);
            part_args.push(args[0]);
            for &n in members {
                part_args.extend_from_slice(&items[n * stride..(n + 1) * stride]);
            }
            let mut out = BytesMut::new();
            resp::command(&mut out, &part_args);
            (out.freeze(), *slot)
        })
        .collect();
    let merge = match (name, merge_sum) {
        (b"MGET", _) => Merge::Values(places),
        (_, true) => Merge::Sum,
        _ => Merge::Same,
    };
    Some(Split { parts, merge })
}

/// The proxy's `SCAN` cursor for Redis's `cursor` on primary `node`: the primary in the
/// top 10 bits, Redis's cursor below (Redis's cursors stay far below 2^54: they index its
/// hash table). 0 only when the last primary is done.
pub fn scan_cursor(node: u16, cursor: u64) -> Option<u64> {
    (cursor < 1 << 54 && node < 1 << 10).then(|| (u64::from(node) << 54) | cursor)
}

/// A proxy `SCAN` cursor read back: which primary, and Redis's cursor there.
pub fn scan_position(cursor: u64) -> (u16, u64) {
    ((cursor >> 54) as u16, cursor & ((1 << 54) - 1))
}

/// Whether a reply is null (RESP2's `$-1` or `*-1`, RESP3's `_`).
fn is_null(reply: &[u8]) -> bool {
    matches!(reply, b"$-1\r\n" | b"*-1\r\n" | b"_\r\n")
}

/// Whether a reply is an error (`-` or RESP3's `!`).
pub fn is_error(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'-' | b'!'))
}

/// The client's reply from the parts' `replies` (in part order), by `merge`.
pub fn merge(merge: &Merge, replies: &[Bytes]) -> Bytes {
    if let Some(error) = replies.iter().find(|r| is_error(r)) {
        return error.clone();
    }
    let merged = match merge {
        Merge::One | Merge::Same => replies.first().cloned(),
        Merge::Sum => sum(replies),
        Merge::Concat => concat(replies),
        Merge::AllOf => all_of(replies),
        Merge::AnyValue => {
            let values: Vec<&Bytes> = replies.iter().filter(|r| !is_null(r)).collect();
            match values.len() {
                0 => replies.first().cloned(),
                n => Some(values[fastrand::usize(..n)].clone()),
            }
        }
        Merge::Values(places) => values(replies, places),
        Merge::Scan { node, nodes } => scan_reply(&replies[0], *node, *nodes),
    };
    merged.unwrap_or_else(|| {
        resp::error("ERR respguard: a cluster node's reply could not be merged (unexpected shape)")
    })
}

fn sum(replies: &[Bytes]) -> Option<Bytes> {
    let mut total: i64 = 0;
    for r in replies {
        let line = r.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
        total = total.checked_add(std::str::from_utf8(line).ok()?.parse().ok()?)?;
    }
    let mut out = BytesMut::new();
    resp::integer(&mut out, total);
    Some(out.freeze())
}

/// The elements of a top-level array reply, as byte ranges.
fn elements(reply: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    let mut scanner = ReplyScanner::new();
    scanner.report_elements(true);
    let mut ranges = Vec::new();
    let mut start = match scanner.scan(reply).ok()? {
        ReplyStep::Header { end, count } => {
            ranges.reserve(count as usize);
            end
        }
        ReplyStep::Done(end) if reply.starts_with(b"*0\r\n") => {
            return Some(vec![]).filter(|_| end == 4)
        }
        _ => return None,
    };
    loop {
        match scanner.scan(reply).ok()? {
            ReplyStep::Element(end) => {
                ranges.push(start..end);
                start = end;
            }
            ReplyStep::Done(end) => {
                ranges.push(start..end);
                return (end == reply.len()).then_some(ranges);
            }
            _ => return None,
        }
    }
}

fn concat(replies: &[Bytes]) -> Option<Bytes> {
    let parts = replies
        .iter()
        .map(|r| elements(r))
        .collect::<Option<Vec<_>>>()?;
    let mut out = BytesMut::new();
    resp::array_header(&mut out, parts.iter().map(Vec::len).sum());
    for (reply, ranges) in replies.iter().zip(&parts) {
        if let (Some(first), Some(last)) = (ranges.first(), ranges.last()) {
            out.extend_from_slice(&reply[first.start..last.end]);
        }
    }
    Some(out.freeze())
}

fn all_of(replies: &[Bytes]) -> Option<Bytes> {
    let parts = replies
        .iter()
        .map(|r| elements(r))
        .collect::<Option<Vec<_>>>()?;
    let count = parts.first()?.len();
    if parts.iter().any(|p| p.len() != count) {
        return None;
    }
    let mut out = BytesMut::new();
    resp::array_header(&mut out, count);
    for i in 0..count {
        let mut every = true;
        for (reply, ranges) in replies.iter().zip(&parts) {
            match &reply[ranges[i].clone()] {
                b":1\r\n" => {}
                b":0\r\n" => every = false,
                _ => return None,
            }
        }
        resp::integer(&mut out, i64::from(every));
    }
    Some(out.freeze())
}

fn values(replies: &[Bytes], places: &[(u16, u32)]) -> Option<Bytes> {
    let parts = replies
        .iter()
        .map(|r| elements(r))
        .collect::<Option<Vec<_>>>()?;
    let mut out = BytesMut::new();
    resp::array_header(&mut out, places.len());
    for &(part, index) in places {
        let range = parts.get(usize::from(part))?.get(index as usize)?;
        out.extend_from_slice(&replies[usize::from(part)][range.clone()]);
    }
    Some(out.freeze())
}

/// `SCAN`'s reply `[cursor, keys]` with Redis's cursor on primary `node` (of `nodes`)
/// turned into the proxy's: on to the next primary when this one is done.
fn scan_reply(reply: &Bytes, node: u16, nodes: u16) -> Option<Bytes> {
    let ranges = elements(reply)?;
    let [cursor, keys] = ranges.as_slice() else {
        return None;
    };
    let text = &reply[cursor.clone()];
    let digits = text.strip_prefix(b"$")?;
    let body = &digits[digits.iter().position(|&b| b == b'\n')? + 1..digits.len() - 2];
    let redis_cursor: u64 = std::str::from_utf8(body).ok()?.parse().ok()?;
    let proxy_cursor = match redis_cursor {
        0 if node + 1 >= nodes => 0,
        0 => scan_cursor(node + 1, 0)?,
        c => scan_cursor(node, c)?,
    };
    let mut out = BytesMut::new();
    resp::array_header(&mut out, 2);
    resp::bulk(&mut out, proxy_cursor.to_string().as_bytes());
    out.extend_from_slice(&reply[keys.clone()]);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::slot::key_slot;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn mget_is_split_by_slot_and_its_values_put_back_in_key_order() {
        let args: Vec<&[u8]> = vec![b"MGET", b"{a}1", b"{b}1", b"{a}2", b"{b}1"];
        let split = split(b"MGET", &args, key_slot).unwrap();
        assert_eq!(split.parts.len(), 2);
        assert_eq!(
            split.parts[0].0,
            b("*3\r\n$4\r\nMGET\r\n$4\r\n{a}1\r\n$4\r\n{a}2\r\n")
        );
        assert_eq!(split.parts[0].1, key_slot(b"a"));
        assert_eq!(
            split.parts[1].0,
            b("*3\r\n$4\r\nMGET\r\n$4\r\n{b}1\r\n$4\r\n{b}1\r\n")
        );
        let replies = [
            b("*2\r\n$1\r\nx\r\n$-1\r\n"),
            b("*2\r\n$1\r\ny\r\n$1\r\ny\r\n"),
        ];
        assert_eq!(
            merge(&split.merge, &replies),
            b("*4\r\n$1\r\nx\r\n$1\r\ny\r\n$-1\r\n$1\r\ny\r\n")
        );
    }

    #[test]
    fn mset_keeps_each_value_with_its_key_and_counts_are_summed() {
        let args: Vec<&[u8]> = vec![b"MSET", b"{a}1", b"v1", b"{b}1", b"v2"];
        let mset = split(b"MSET", &args, key_slot).unwrap();
        assert_eq!(
            mset.parts[1].0,
            b("*3\r\n$4\r\nMSET\r\n$4\r\n{b}1\r\n$2\r\nv2\r\n")
        );
        assert_eq!(
            merge(&mset.merge, &[b("+OK\r\n"), b("+OK\r\n")]),
            b("+OK\r\n")
        );
        assert_eq!(
            merge(&Merge::Sum, &[b(":2\r\n"), b(":0\r\n"), b(":5\r\n")]),
            b(":7\r\n")
        );
        let args: Vec<&[u8]> = vec![b"MSET", b"{a}1", b"v1", b"{b}1"];
        assert!(split(b"MSET", &args, key_slot).is_none(), "odd arguments");
        assert!(split(b"MSETNX", &args, key_slot).is_none());
    }

    #[test]
    fn the_first_error_is_the_reply_and_an_odd_shape_is_refused() {
        assert_eq!(
            merge(&Merge::Sum, &[b(":1\r\n"), b("-ERR x\r\n")]),
            b("-ERR x\r\n")
        );
        assert!(merge(&Merge::Sum, &[b("+OK\r\n")]).starts_with(b"-ERR respguard"));
        assert!(
            merge(&Merge::Values(vec![(0, 3)]), &[b("*1\r\n$1\r\nx\r\n")])
                .starts_with(b"-ERR respguard")
        );
    }

    /// SCRIPT EXISTS asked of every primary: a digest is there only where every primary
    /// answered 1; replies of other lengths or shapes are refused, not guessed at.
    #[test]
    fn script_exists_is_one_only_where_every_primary_has_the_script() {
        let a = b("*3\r\n:1\r\n:1\r\n:0\r\n");
        let b_ = b("*3\r\n:1\r\n:0\r\n:0\r\n");
        assert_eq!(
            merge(&Merge::AllOf, &[a.clone(), b_]),
            b("*3\r\n:1\r\n:0\r\n:0\r\n")
        );
        assert_eq!(merge(&Merge::AllOf, std::slice::from_ref(&a)), a);
        assert!(
            merge(&Merge::AllOf, &[a.clone(), b("*1\r\n:1\r\n")]).starts_with(b"-ERR respguard")
        );
        assert!(merge(&Merge::AllOf, &[b("*1\r\n$1\r\n1\r\n")]).starts_with(b"-ERR respguard"));
        assert_eq!(
            merge(&Merge::AllOf, &[b("*0\r\n"), b("*0\r\n")]),
            b("*0\r\n")
        );
    }

    #[test]
    fn keys_are_concatenated_and_scan_cursors_walk_the_primaries() {
        assert_eq!(
            merge(
                &Merge::Concat,
                &[b("*1\r\n$1\r\na\r\n"), b("*0\r\n"), b("*1\r\n$1\r\nb\r\n")]
            ),
            b("*2\r\n$1\r\na\r\n$1\r\nb\r\n")
        );
        let page = |cursor: &str| {
            b(&format!(
                "*2\r\n${}\r\n{cursor}\r\n*1\r\n$1\r\nk\r\n",
                cursor.len()
            ))
        };
        let next = scan_cursor(0, 17).unwrap();
        assert_eq!(
            merge(&Merge::Scan { node: 0, nodes: 3 }, &[page("17")]),
            b(&format!(
                "*2\r\n${}\r\n{next}\r\n*1\r\n$1\r\nk\r\n",
                next.to_string().len()
            ))
        );
        let second = scan_cursor(1, 0).unwrap();
        assert!(
            merge(&Merge::Scan { node: 0, nodes: 3 }, &[page("0")]).starts_with(
                format!("*2\r\n${}\r\n{second}\r\n", second.to_string().len()).as_bytes()
            )
        );
        assert!(merge(&Merge::Scan { node: 2, nodes: 3 }, &[page("0")])
            .starts_with(b"*2\r\n$1\r\n0\r\n"));
        assert_eq!(scan_position(next), (0, 17));
        assert_eq!(scan_position(second), (1, 0));
    }

    #[test]
    fn keyless_commands_go_where_their_answer_is_whole() {
        assert_eq!(keyless(b"DBSIZE", b""), Keyless::EveryPrimary(Merge::Sum));
        assert_eq!(
            keyless(b"SCRIPT", b"LOAD"),
            Keyless::EveryPrimary(Merge::Same)
        );
        assert_eq!(
            keyless(b"SCRIPT", b"EXISTS"),
            Keyless::EveryPrimary(Merge::AllOf)
        );
        assert_eq!(keyless(b"PING", b""), Keyless::AnyNode);
        assert_eq!(
            merge(
                &Merge::AnyValue,
                &[b("$-1\r\n"), b("$1\r\nk\r\n"), b("_\r\n")]
            ),
            b("$1\r\nk\r\n")
        );
        assert_eq!(
            merge(&Merge::AnyValue, &[b("$-1\r\n"), b("$-1\r\n")]),
            b("$-1\r\n")
        );
        assert_eq!(keyless(b"SCAN", b"0"), Keyless::Scan);
    }
}
