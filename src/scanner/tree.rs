//! Whole replies the proxy asks for itself, read into a tree: the command table from
//! `COMMAND`, a sentinel's answers and `+switch-master` messages, `ROLE`, the audit's
//! replies, a cluster's topology.
//!
//! redis-protocol's decoder builds the tree, but it recurses once per nesting level and sets
//! no bound of its own: a reply of 100,000 nested one-element arrays overflows a thread's
//! stack and aborts the process (`a_reply_nested_past_the_stack_is_refused_not_decoded`).
//! So every decode goes through [`decode`] or [`decode_range`], which first walk the reply
//! without recursion ([`extent`]) and refuse one past its [`Bounds`]: nesting, elements of
//! one array, elements in all, one string's length. Only a reply within them reaches
//! redis-protocol. Off the hot path: client traffic and the replies to it go through the
//! resumable scanners and never through here.

use redis_protocol::resp2::types::{OwnedFrame, RangeFrame};

/// How large a reply may be, by shape. Past any bound, the reply is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most arrays open at once (`*1\r\n:1\r\n` is 1).
    pub depth: usize,
    /// Most elements one array may declare.
    pub aggregate: u64,
    /// Most elements in the whole reply, arrays included.
    pub elements: u64,
    /// Longest bulk string, and longest simple line.
    pub string: u64,
}

impl Bounds {
    /// Generous bounds for replies of a known shape from a server the proxy was pointed
    /// at: `COMMAND` nests 6 levels (subcommands' key specifications), `SENTINEL MASTER`
    /// and `ROLE` 2, the audit's `SCAN` page 2; 32 leaves room for new fields.
    pub const SERVER_REPLY: Bounds = Bounds {
        depth: 32,
        aggregate: 1 << 20,
        elements: 1 << 22,
        string: 64 << 20,
    };
}

/// A reply that is not RESP2, or is larger than its [`Bounds`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// Not RESP2 at byte `at`.
    #[error("malformed reply at byte {at}: {what}")]
    Malformed {
        /// Where.
        at: usize,
        /// What was wrong.
        what: &'static str,
    },
    /// A size past its bound.
    #[error("reply {what} of {size} over the bound of {max}")]
    TooLarge {
        /// Which size.
        what: &'static str,
        /// How large it was (for nesting, the depth reached).
        size: u64,
        /// The bound.
        max: u64,
    },
}

/// The first whole reply in `bytes`, decoded, and how many bytes it took; `None` while
/// it is incomplete.
pub fn decode(bytes: &[u8], bounds: &Bounds) -> Result<Option<(OwnedFrame, usize)>, TreeError> {
    let Some(len) = extent(bytes, bounds)? else {
        return Ok(None);
    };
    match redis_protocol::resp2::decode::decode(&bytes[..len]) {
        Ok(Some((frame, used))) if used == len => Ok(Some((frame, len))),
        Ok(_) => Err(TreeError::Malformed {
            at: 0,
            what: "a reply redis-protocol reads differently",
        }),
        Err(_) => Err(malformed_content()),
    }
}

/// As [`decode`], the tree holding ranges of `bytes` instead of copies.
pub fn decode_range(
    bytes: &[u8],
    bounds: &Bounds,
) -> Result<Option<(RangeFrame, usize)>, TreeError> {
    let Some(len) = extent(bytes, bounds)? else {
        return Ok(None);
    };
    match redis_protocol::resp2::decode::decode_range(&bytes[..len]) {
        Ok(Some((frame, used))) if used == len => Ok(Some((frame, len))),
        Ok(_) => Err(TreeError::Malformed {
            at: 0,
            what: "a reply redis-protocol reads differently",
        }),
        Err(_) => Err(malformed_content()),
    }
}

fn malformed_content() -> TreeError {
    TreeError::Malformed {
        at: 0,
        what: "a value that is not what its type says (an integer that is not a number)",
    }
}

/// How many bytes the first whole reply in `bytes` takes, `None` while it is incomplete;
/// a loop over the bytes with one counter per open array, never recursion.
pub fn extent(bytes: &[u8], bounds: &Bounds) -> Result<Option<usize>, TreeError> {
    let mut walk = Walk {
        bytes,
        bounds,
        at: 0,
        elements: 0,
        open: Vec::new(),
    };
    walk.run()
}

/// The walk's place: where it is, how many elements it has seen, and for each open
/// array how many of its elements are still to come.
struct Walk<'a> {
    bytes: &'a [u8],
    bounds: &'a Bounds,
    at: usize,
    elements: u64,
    open: Vec<u64>,
}

/// What one element's header said.
enum Element {
    /// Complete once its header (and, for a bulk string, its payload) is read.
    Whole,
    /// An array of this many elements, still to come.
    Array(u64),
}

impl<'a> Walk<'a> {
    fn run(&mut self) -> Result<Option<usize>, TreeError> {
        loop {
            let Some(element) = self.element()? else {
                return Ok(None);
            };
            if let Element::Array(count) = element {
                if self.open.len() >= self.bounds.depth {
                    return Err(too_large(
                        "nesting",
                        self.open.len() as u64 + 1,
                        self.bounds.depth as u64,
                    ));
                }
                self.open.push(count);
                continue;
            }
            if self.close_finished() {
                return Ok(Some(self.at));
            }
        }
    }

    /// One element counted in its array and, arrays it completed, closed in theirs;
    /// whether the whole reply is complete.
    fn close_finished(&mut self) -> bool {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }

    /// The next element's header (and a bulk string's payload); `None` if incomplete.
    fn element(&mut self) -> Result<Option<Element>, TreeError> {
        self.elements += 1;
        if self.elements > self.bounds.elements {
            return Err(too_large(
                "element count",
                self.elements,
                self.bounds.elements,
            ));
        }
        let Some(&kind) = self.bytes.get(self.at) else {
            return Ok(None);
        };
        let start = self.at;
        let Some(line) = self.line(start + 1)? else {
            return Ok(None);
        };
        match kind {
            b'+' | b'-' | b':' => Ok(Some(Element::Whole)),
            b'$' => match length(line, start)? {
                None => Ok(Some(Element::Whole)),
                Some(len) => self.bulk(len, start),
            },
            b'*' => match length(line, start)? {
                None | Some(0) => Ok(Some(Element::Whole)),
                Some(count) if count > self.bounds.aggregate => {
                    Err(too_large("array length", count, self.bounds.aggregate))
                }
                Some(count) => Ok(Some(Element::Array(count))),
            },
            _ => Err(TreeError::Malformed {
                at: start,
                what: "not a RESP2 type",
            }),
        }
    }

    /// The line from `from` to its `\r\n` (moving past it); `None` if not all here.
    fn line(&mut self, from: usize) -> Result<Option<&'a [u8]>, TreeError> {
        let bytes = self.bytes;
        let rest = &bytes[from..];
        let longest = self.bounds.string as usize + 2;
        match rest.windows(2).take(longest).position(|w| w == b"\r\n") {
            Some(end) => {
                self.at = from + end + 2;
                Ok(Some(&bytes[from..from + end]))
            }
            None if rest.len() > longest => Err(too_large(
                "line length",
                rest.len() as u64,
                self.bounds.string,
            )),
            None => Ok(None),
        }
    }

    /// Past a bulk string's payload and its `\r\n`; `None` if not all here.
    fn bulk(&mut self, len: u64, start: usize) -> Result<Option<Element>, TreeError> {
        if len > self.bounds.string {
            return Err(too_large("string length", len, self.bounds.string));
        }
        let end = self.at + len as usize;
        match self.bytes.get(end..end + 2) {
            None => Ok(None),
            Some(b"\r\n") => {
                self.at = end + 2;
                Ok(Some(Element::Whole))
            }
            Some(_) => Err(TreeError::Malformed {
                at: start,
                what: "a string longer than its length",
            }),
        }
    }
}

/// A `$`/`*` length: `None` for -1 (null).
fn length(line: &[u8], at: usize) -> Result<Option<u64>, TreeError> {
    let malformed = TreeError::Malformed {
        at,
        what: "a length that is not a number",
    };
    let text = std::str::from_utf8(line).map_err(|_| malformed.clone())?;
    match text.parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if n >= 0 => Ok(Some(n as u64)),
        _ => Err(malformed),
    }
}

fn too_large(what: &'static str, size: u64, max: u64) -> TreeError {
    TreeError::TooLarge { what, size, max }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Bounds = Bounds {
        depth: 4,
        aggregate: 8,
        elements: 20,
        string: 16,
    };

    #[test]
    fn a_reply_is_decoded_once_whole_and_its_length_told() {
        let reply = b"*3\r\n$2\r\nip\r\n:7000\r\n*2\r\n+a\r\n$-1\r\n+next\r\n";
        let whole = reply.len() - b"+next\r\n".len();
        for cut in 0..whole {
            assert_eq!(decode(&reply[..cut], &SMALL), Ok(None), "cut at {cut}");
        }
        let (frame, used) = decode(reply, &SMALL).unwrap().unwrap();
        assert_eq!(used, whole);
        assert_eq!(
            frame,
            OwnedFrame::Array(vec![
                OwnedFrame::BulkString(b"ip".to_vec()),
                OwnedFrame::Integer(7000),
                OwnedFrame::Array(vec![
                    OwnedFrame::SimpleString(b"a".to_vec()),
                    OwnedFrame::Null
                ]),
            ])
        );
        assert_eq!(extent(b"*0\r\n*-1\r\n", &SMALL), Ok(Some(4)));
        assert_eq!(extent(b"$-1\r\n", &SMALL), Ok(Some(5)));
    }

    #[test]
    fn a_reply_nested_past_the_stack_is_refused_not_decoded() {
        // Deep enough to overflow redis-protocol's recursion on a 2 MiB stack.
        let deep = "*1\r\n".repeat(100_000) + ":1\r\n";
        assert_eq!(
            decode(deep.as_bytes(), &Bounds::SERVER_REPLY),
            Err(TreeError::TooLarge {
                what: "nesting",
                size: 33,
                max: 32
            })
        );
        let within = "*1\r\n".repeat(4) + ":1\r\n";
        assert!(decode(within.as_bytes(), &SMALL).unwrap().is_some());
        let past = "*1\r\n".repeat(5) + ":1\r\n";
        assert!(matches!(
            decode(past.as_bytes(), &SMALL),
            Err(TreeError::TooLarge {
                what: "nesting",
                ..
            })
        ));
    }

    #[test]
    fn absurd_sizes_are_refused_before_their_bytes_arrive() {
        let refused = |bytes: &[u8]| match extent(bytes, &SMALL) {
            Err(TreeError::TooLarge { what, .. }) => what,
            other => panic!("{bytes:?}: {other:?}"),
        };
        assert_eq!(refused(b"*9\r\n"), "array length");
        assert_eq!(refused(b"$17\r\n"), "string length");
        assert_eq!(refused(b"+0123456789abcdefghij"), "line length");
        let wide = "*8\r\n".to_string() + &"*3\r\n:1\r\n:2\r\n:3\r\n".repeat(8);
        assert_eq!(refused(wide.as_bytes()), "element count");
    }

    #[test]
    fn bytes_that_are_not_resp2_are_malformed() {
        for bad in [
            &b"%1\r\n+a\r\n+b\r\n"[..],
            b"$x\r\n",
            b"*-2\r\n",
            b"$2\r\nabc\r\n",
            b":x\r\n",
        ] {
            assert!(
                matches!(decode(bad, &SMALL), Err(TreeError::Malformed { .. })),
                "{bad:?}"
            );
        }
    }
}
