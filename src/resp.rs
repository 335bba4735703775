//! RESP encoding: every byte respguard itself writes in Redis's protocol goes through here,
//! whether a command it sends (a guard's rewrite, a hidden expiry, its handshake) or a reply
//! it gives (a refusal, a fail-open answer, `RESPGUARD STATUS`).
//!
//! One integer formatter ([`Decimal`]) writes every length and number, on the stack, so
//! encoding a command on the hot path allocates nothing beyond the output buffer's growth.
//! Reading RESP is the scanners' job (`scanner/`); this module never parses.

use bytes::{BufMut, Bytes, BytesMut};

/// Decimal digits of an integer, formatted into a stack buffer.
///
/// `i64::MIN` has 20 characters with its sign, so 20 bytes hold any `i64` and any `u64`.
pub struct Decimal {
    buf: [u8; 20],
    start: usize,
}

impl Decimal {
    /// The digits of `n`.
    #[inline]
    pub fn of(n: u64) -> Self {
        let mut d = Decimal {
            buf: [0; 20],
            start: 20,
        };
        d.push_digits(n);
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

    #[inline]
    fn push_digits(&mut self, mut n: u64) {
        loop {
            self.start -= 1;
            self.buf[self.start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
    }

    /// The formatted bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Append a line `<kind><n>\r\n`: an array (`*`), a bulk length (`$`), a map (`%`), ...
#[inline]
fn length_line<B: BufMut>(out: &mut B, kind: u8, n: u64) {
    out.put_u8(kind);
    out.put_slice(Decimal::of(n).as_bytes());
    out.put_slice(b"\r\n");
}

/// Append an array header `*<n>\r\n`: a command of `n` arguments, or an array reply.
#[inline]
pub fn array_header<B: BufMut>(out: &mut B, n: usize) {
    length_line(out, b'*', n as u64);
}

/// Append a bulk string's header `$<len>\r\n`, for a caller writing the body itself (and
/// then `\r\n`).
#[inline]
pub fn bulk_header<B: BufMut>(out: &mut B, len: usize) {
    length_line(out, b'$', len as u64);
}

/// Append one bulk string `$<len>\r\n<bytes>\r\n`: a command's argument, or a bulk reply.
#[inline]
pub fn bulk<B: BufMut>(out: &mut B, bytes: &[u8]) {
    bulk_header(out, bytes.len());
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

/// Append `args` as one command (an array of bulk strings).
pub fn command<B: BufMut>(out: &mut B, args: &[&[u8]]) {
    array_header(out, args.len());
    for a in args {
        bulk(out, a);
    }
}

/// Append an integer reply `:<n>\r\n`.
pub fn integer<B: BufMut>(out: &mut B, n: i64) {
    out.put_u8(b':');
    out.put_slice(Decimal::signed(n).as_bytes());
    out.put_slice(b"\r\n");
}

/// A bulk-string reply holding `bytes`.
pub fn bulk_reply(bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(bytes.len() + 16);
    bulk(&mut out, bytes);
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
    out.put_u8(kind);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

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
