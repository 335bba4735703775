//! RESP encoding: every byte respguard itself writes in Redis's protocol goes through here,
//! whether a command it sends (a guard's rewrite, a hidden expiry, its handshake) or a reply
//! it gives (a refusal, a fail-open answer, `RESPGUARD STATUS`).
//!
//! One integer formatter ([`Decimal`]) writes every length and number, on the stack, so
//! encoding a command on the hot path allocates nothing beyond the output buffer's growth.
//! Reading RESP is the scanners' job (`scanner/`); this module never parses.

use bytes::{Bytes, BytesMut};

/// Where encoded bytes go: the proxy's output buffers (`BytesMut`) or a plain `Vec<u8>`.
///
/// A trait of its own rather than `bytes::BufMut`, whose `put_slice` is not inlined into
/// these small writes: measured with `scripts/callgrind.sh`, encoding through it cost a
/// wrapped HSET about 500 instructions more than appending directly.
pub trait Out {
    /// Append `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

impl Out for BytesMut {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Out for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Decimal digits of an integer, formatted into a stack buffer.
///
/// `i64::MIN` has 20 characters with its sign, so 20 bytes hold any `i64` and any `u64`;
/// the buffer keeps a byte before them and `\r\n` after them, so a RESP line
/// (`$<len>\r\n`, `*<n>\r\n`) is one slice of it.
pub struct Decimal {
    buf: [u8; 23],
    start: usize,
}

/// Where the digits end in [`Decimal`]'s buffer (`\r\n` follows).
const DIGITS_END: usize = 21;

impl Decimal {
    /// The digits of `n`.
    #[inline]
    pub fn of(mut n: u64) -> Self {
        let mut d = Decimal {
            buf: [0; 23],
            start: DIGITS_END,
        };
        d.buf[DIGITS_END] = b'\r';
        d.buf[DIGITS_END + 1] = b'\n';
        loop {
            d.start -= 1;
            d.buf[d.start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        d
    }

    /// The digits of `n`, with a `-` when it is negative.
    pub fn signed(n: i64) -> Self {
        let mut d = Decimal::of(n.unsigned_abs());
        if n < 0 {
            d.start -= 1;
            d.buf[d.start] = b'-';
        }
        d
    }

    /// The formatted bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..DIGITS_END]
    }

    /// The RESP line `<kind><digits>\r\n`.
    #[inline]
    fn line(&mut self, kind: u8) -> &[u8] {
        self.start -= 1;
        self.buf[self.start] = kind;
        &self.buf[self.start..]
    }
}

/// Append a line `<kind><n>\r\n`: an array (`*`), a bulk length (`$`), a map (`%`), ...
/// in one append.
/// One and two digits, the usual lengths of a command's arguments, are written as one
/// fixed-size store; longer ones through [`Decimal`].
#[inline(always)]
fn length_line<O: Out>(out: &mut O, kind: u8, n: u64) {
    if n < 10 {
        out.put(&[kind, b'0' + n as u8, b'\r', b'\n']);
    } else if n < 100 {
        out.put(&[
            kind,
            b'0' + (n / 10) as u8,
            b'0' + (n % 10) as u8,
            b'\r',
            b'\n',
        ]);
    } else {
        out.put(Decimal::of(n).line(kind));
    }
}

/// Append an array header `*<n>\r\n`: a command of `n` arguments, or an array reply.
#[inline(always)]
pub fn array_header<O: Out>(out: &mut O, n: usize) {
    length_line(out, b'*', n as u64);
}

/// Append a bulk string's header `$<len>\r\n`, for a caller writing the body itself (and
/// then `\r\n`).
#[inline(always)]
pub fn bulk_header<O: Out>(out: &mut O, len: usize) {
    length_line(out, b'$', len as u64);
}

/// Append one bulk string `$<len>\r\n<bytes>\r\n`: a command's argument, or a bulk reply.
#[inline]
pub fn bulk<O: Out>(out: &mut O, bytes: &[u8]) {
    bulk_header(out, bytes.len());
    out.put(bytes);
    out.put(b"\r\n");
}

/// Append `args` as one command (an array of bulk strings).
pub fn command<O: Out>(out: &mut O, args: &[&[u8]]) {
    array_header(out, args.len());
    for a in args {
        bulk(out, a);
    }
}

/// Append an integer reply `:<n>\r\n`.
pub fn integer<O: Out>(out: &mut O, n: i64) {
    out.put(Decimal::signed(n).line(b':'));
}

/// A bulk-string reply holding `bytes`.
pub fn bulk_reply(bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(bytes.len() + 16);
    bulk(&mut out, bytes);
    out.freeze()
}

/// A command of one word, such as `ASKING` or `RESET`, as a multibulk.
pub fn simple_command(word: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    command(&mut out, &[word]);
    out.freeze()
}

/// A simple-string reply `+<line>\r\n`, with any line break made a space so the reply stays
/// one line.
pub fn simple(line: &str) -> Bytes {
    one_line(b'+', line)
}

/// An error reply `-<message>\r\n`, with any line break made a space so the reply stays one
/// line. `message` starts with its prefix (`ERR`, `OOM`, `NOAUTH`, ...).
pub fn error(message: &str) -> Bytes {
    one_line(b'-', message)
}

fn one_line(kind: u8, text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    out.put(&[kind]);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_lines_read_as_their_number_at_every_width() {
        for n in (0..1000).chain([12345, u32::MAX as usize]) {
            let mut out = Vec::new();
            bulk_header(&mut out, n);
            array_header(&mut out, n);
            assert_eq!(out, format!("${n}\r\n*{n}\r\n").as_bytes());
        }
    }

    #[test]
    fn decimals_cover_the_whole_range() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            assert_eq!(Decimal::of(n).as_bytes(), n.to_string().as_bytes());
        }
        for n in [0i64, -1, 7, -10, i64::MAX, i64::MIN] {
            assert_eq!(Decimal::signed(n).as_bytes(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = BytesMut::new();
        command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn encoded_commands_decode_as_redis_protocol_frames() {
        use redis_protocol::resp2::decode::decode;
        use redis_protocol::resp2::types::OwnedFrame;
        let args: Vec<Vec<u8>> = vec![b"HSET".to_vec(), vec![0, 13, 10], vec![b'x'; 300]];
        let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        let mut out = BytesMut::new();
        command(&mut out, &refs);
        let (frame, used) = decode(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        let OwnedFrame::Array(items) = frame else {
            panic!("not an array: {frame:?}")
        };
        let got: Vec<Vec<u8>> = items
            .into_iter()
            .map(|f| match f {
                OwnedFrame::BulkString(b) => b,
                other => panic!("not a bulk string: {other:?}"),
            })
            .collect();
        assert_eq!(got, args);
    }

    #[test]
    fn replies_stay_on_one_line() {
        assert_eq!(&error("ERR a\r\nb")[..], b"-ERR a  b\r\n");
        assert_eq!(&simple("OK\n")[..], b"+OK \r\n");
        let mut out = BytesMut::new();
        integer(&mut out, -2);
        assert_eq!(&out[..], b":-2\r\n");
        assert_eq!(&bulk_reply(b"hi")[..], b"$2\r\nhi\r\n");
    }
}
