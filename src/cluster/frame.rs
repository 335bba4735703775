//! A small reader of the RESP2 replies the topology comes in (`CLUSTER SHARDS`, `CLUSTER
//! SLOTS`): a whole reply's bytes into a tree of [`Frame`]s borrowing them.
//!
//! Off the hot path, so it builds vectors freely; but every size is bounded, and a reply
//! past a bound is refused with a [`FrameError`] rather than followed: nesting
//! ([`MAX_DEPTH`]), elements of one aggregate ([`MAX_AGGREGATE`]), elements in all
//! ([`MAX_ELEMENTS`]) and one string ([`MAX_STRING`]).

/// The deepest nesting a topology reply may have (CLUSTER SHARDS nests four levels).
pub const MAX_DEPTH: usize = 8;
/// The most elements one aggregate may declare: a shard's flat slot list has at most two
/// per slot (32,768).
pub const MAX_AGGREGATE: u64 = 2 * super::slot::SLOTS as u64;
/// The most elements a whole reply may hold.
pub const MAX_ELEMENTS: usize = 1 << 20;
/// The longest string in a topology reply (addresses, node ids, host names, field names).
pub const MAX_STRING: u64 = 64 * 1024;

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

/// A reply that is not the RESP2 expected, or is larger than a topology can be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed reply at byte {at}: {what}")]
    Malformed { at: usize, what: &'static str },
    #[error("reply {what} of {size} over the bound of {max}")]
    TooLarge {
        what: &'static str,
        size: u64,
        max: u64,
    },
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
    let mut reader = Reader {
        bytes,
        at: 0,
        elements: 0,
    };
    let frame = reader.frame(0)?;
    if reader.at != bytes.len() {
        return Err(reader.malformed("bytes after the reply"));
    }
    Ok(frame)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    elements: usize,
}

impl<'a> Reader<'a> {
    fn malformed(&self, what: &'static str) -> FrameError {
        FrameError::Malformed { at: self.at, what }
    }

    fn frame(&mut self, depth: usize) -> Result<Frame<'a>, FrameError> {
        if depth > MAX_DEPTH {
            return Err(FrameError::TooLarge {
                what: "nesting",
                size: depth as u64,
                max: MAX_DEPTH as u64,
            });
        }
        self.elements += 1;
        if self.elements > MAX_ELEMENTS {
            return Err(FrameError::TooLarge {
                what: "element count",
                size: self.elements as u64,
                max: MAX_ELEMENTS as u64,
            });
        }
        let kind = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| self.malformed("the reply ends early"))?;
        self.at += 1;
        let line = self.line()?;
        match kind {
            b'+' => Ok(Frame::Text(line)),
            b'-' => Ok(Frame::Error(line)),
            b':' => Ok(Frame::Integer(self.number(line)?)),
            b'$' => match self.number(line)? {
                -1 => Ok(Frame::Nil),
                n => self.bulk(n),
            },
            b'*' => match self.number(line)? {
                -1 => Ok(Frame::Nil),
                n => self.array(n, depth),
            },
            _ => Err(self.malformed("not a RESP2 type")),
        }
    }

    /// The rest of the current line, up to its `\r\n`.
    fn line(&mut self) -> Result<&'a [u8], FrameError> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| self.malformed("a line without its end"))?;
        self.at += end + 2;
        Ok(&rest[..end])
    }

    fn number(&self, line: &[u8]) -> Result<i64, FrameError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.malformed("not a number"))
    }

    fn bulk(&mut self, len: i64) -> Result<Frame<'a>, FrameError> {
        let len = u64::try_from(len).map_err(|_| self.malformed("a negative length"))?;
        if len > MAX_STRING {
            return Err(FrameError::TooLarge {
                what: "string length",
                size: len,
                max: MAX_STRING,
            });
        }
        let len = len as usize;
        let end = self.at + len;
        if self.bytes.get(end..end + 2) != Some(b"\r\n") {
            return Err(self.malformed("a string without its end"));
        }
        let text = &self.bytes[self.at..end];
        self.at = end + 2;
        Ok(Frame::Text(text))
    }

    fn array(&mut self, count: i64, depth: usize) -> Result<Frame<'a>, FrameError> {
        let count = u64::try_from(count).map_err(|_| self.malformed("a negative count"))?;
        if count > MAX_AGGREGATE {
            return Err(FrameError::TooLarge {
                what: "array length",
                size: count,
                max: MAX_AGGREGATE,
            });
        }
        let mut items = Vec::with_capacity(count as usize);
        for _ in 0..count {
            items.push(self.frame(depth + 1)?);
        }
        Ok(Frame::Array(items))
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
