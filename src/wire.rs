//! Encoding what the proxy itself says on the wire: commands it sends upstream on its own
//! behalf, and error replies it gives clients. Off the hot path: these are rare.

use bytes::{BufMut, Bytes, BytesMut};

/// Append `args` to `out` as one multibulk command.
pub fn command(out: &mut BytesMut, args: &[&[u8]]) {
    out.put_u8(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.put_u8(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// An error reply: `-<message>\r\n`, with any line break in the message made a space so
/// the reply stays one line. `message` starts with its prefix (`ERR`, `OOM`, ...).
pub fn error(message: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 3);
    out.put_u8(b'-');
    out.extend(
        message
            .bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_stay_on_one_line() {
        assert_eq!(&error("ERR a\r\nb")[..], b"-ERR a  b\r\n");
    }
}
