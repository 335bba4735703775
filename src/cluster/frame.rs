//! The RESP2 replies the topology comes in (`CLUSTER SHARDS`, `CLUSTER SLOTS`): a whole
//! reply's bytes as a tree of [`Frame`]s borrowing them.
//!
//! Read by `scanner::tree` within bounds fit for a topology: nesting ([`MAX_DEPTH`]),
//! elements of one array ([`MAX_AGGREGATE`]), elements in all ([`MAX_ELEMENTS`]) and one
//! string ([`MAX_STRING`]); a reply past a bound is refused with a [`FrameError`] rather
//! than followed.

use redis_protocol::resp2::types::RangeFrame;

pub use crate::scanner::tree::TreeError as FrameError;
use crate::scanner::tree::{self, Bounds};

/// The most arrays open at once in a topology reply (CLUSTER SHARDS nests four levels).
pub const MAX_DEPTH: usize = 8;
/// The most elements one array may declare: a shard's flat slot list has at most two
/// per slot (32,768).
pub const MAX_AGGREGATE: u64 = 2 * super::slot::SLOTS as u64;
/// The most elements a whole reply may hold.
pub const MAX_ELEMENTS: u64 = 1 << 20;
/// The longest string in a topology reply (addresses, node ids, host names, field names).
pub const MAX_STRING: u64 = 64 * 1024;

const TOPOLOGY: Bounds = Bounds {
    depth: MAX_DEPTH,
    aggregate: MAX_AGGREGATE,
    elements: MAX_ELEMENTS,
    string: MAX_STRING,
};

/// One value of a reply, borrowing its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A bulk or simple string.
    Text(&'a [u8]),
    /// An integer.
    Integer(i64),
    /// A null bulk string or array.
    Nil,
    /// An error reply, without its `-`.
    Error(&'a [u8]),
    /// An array.
    Array(Vec<Frame<'a>>),
}

impl<'a> Frame<'a> {
    /// The string, if this is one.
    pub fn text(&self) -> Option<&'a [u8]> {
        match self {
            Frame::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn items(&self) -> Option<&[Frame<'a>]> {
        match self {
            Frame::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The integer, or a string holding one.
    pub fn integer(&self) -> Option<i64> {
        match self {
            Frame::Integer(n) => Some(*n),
            Frame::Text(t) => std::str::from_utf8(t).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// In a RESP2 map written as a flat array (`[k1, v1, k2, v2, …]`), the value of `key`.
    pub fn field(&self, key: &str) -> Option<&Frame<'a>> {
        self.items()?
            .chunks_exact(2)
            .find(|kv| kv[0].text() == Some(key.as_bytes()))
            .map(|kv| &kv[1])
    }
}

/// Read one whole reply from `bytes` (trailing bytes are an error).
pub fn parse(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let (range, used) = tree::decode_range(bytes, &TOPOLOGY)?.ok_or(FrameError::Malformed {
        at: bytes.len(),
        what: "the reply ends early",
    })?;
    if used != bytes.len() {
        return Err(FrameError::Malformed {
            at: used,
            what: "bytes after the reply",
        });
    }
    Ok(borrowed(bytes, range))
}

/// redis-protocol's ranges as slices of `bytes` (recursion bounded by [`MAX_DEPTH`]).
fn borrowed(bytes: &[u8], range: RangeFrame) -> Frame<'_> {
    match range {
        RangeFrame::SimpleString((from, to)) | RangeFrame::BulkString((from, to)) => {
            Frame::Text(&bytes[from..to])
        }
        RangeFrame::Error((from, to)) => Frame::Error(&bytes[from..to]),
        RangeFrame::Integer(n) => Frame::Integer(n),
        RangeFrame::Null => Frame::Nil,
        RangeFrame::Array(items) => {
            Frame::Array(items.into_iter().map(|i| borrowed(bytes, i)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_reply_is_read_whole() {
        let frame = parse(b"*3\r\n$2\r\nip\r\n:7000\r\n*2\r\n+a\r\n$-1\r\n").unwrap();
        assert_eq!(
            frame,
            Frame::Array(vec![
                Frame::Text(b"ip"),
                Frame::Integer(7000),
                Frame::Array(vec![Frame::Text(b"a"), Frame::Nil]),
            ])
        );
        assert_eq!(frame.field("ip"), Some(&Frame::Integer(7000)));
    }

    #[test]
    fn absurd_sizes_are_refused_not_followed() {
        assert!(matches!(
            parse(b"*99999999999\r\n"),
            Err(FrameError::TooLarge {
                what: "array length",
                ..
            })
        ));
        assert!(matches!(
            parse(b"$99999999999\r\n"),
            Err(FrameError::TooLarge {
                what: "string length",
                ..
            })
        ));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert!(matches!(
            parse(deep.as_bytes()),
            Err(FrameError::TooLarge {
                what: "nesting",
                ..
            })
        ));
        // Many elements, each array within the bound.
        let mut wide = "*32\r\n".to_string();
        for _ in 0..32 {
            wide += "*32768\r\n";
            wide += &":1\r\n".repeat(32_768);
        }
        assert!(matches!(
            parse(wide.as_bytes()),
            Err(FrameError::TooLarge {
                what: "element count",
                ..
            })
        ));
    }

    #[test]
    fn truncated_or_foreign_bytes_are_malformed() {
        for bad in [
            &b"*2\r\n:1\r\n"[..],
            b"$5\r\nab\r\n",
            b"%1\r\n+a\r\n+b\r\n",
            b":x\r\n",
            b"+ok",
            b"+ok\r\n+extra\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(FrameError::Malformed { .. })),
                "{bad:?}"
            );
        }
    }
}
