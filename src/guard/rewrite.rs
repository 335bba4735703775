//! Writing a guard's rewrite: the client's command again with an argument replaced or
//! arguments appended, in RESP. Never decides whether to rewrite.

use bytes::BytesMut;

use super::verdict::{CommandView, Verdict};
use crate::resp;

/// Write the command with argument `index` replaced by `with` (multibulk) into `out`.
pub fn encode_replacing(cmd: &CommandView<'_>, index: usize, with: &[u8], out: &mut BytesMut) {
    resp::array_header(out, cmd.args.len());
    for (i, r) in cmd.args.iter().enumerate() {
        let a = if i == index {
            with
        } else {
            &cmd.src[r.clone()]
        };
        resp::bulk(out, a);
    }
}

/// Arguments a rule appends to every command it rewrites, encoded as bulk strings once,
/// when the rule is built, so a rewrite costs one copy instead of formatting per command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedArgs {
    count: usize,
    bytes: Box<[u8]>,
}

impl EncodedArgs {
    /// `args`, encoded.
    pub fn new(args: &[&[u8]]) -> Self {
        let mut bytes = Vec::new();
        for a in args {
            resp::bulk(&mut bytes, a);
        }
        EncodedArgs {
            count: args.len(),
            bytes: bytes.into_boxed_slice(),
        }
    }

    /// The encoded arguments, for a caller writing the array header itself.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The verdict that sends the command with the `extra` arguments after its own: the
/// arguments alone written to `out` ([`Verdict::Append`]) when the client's own encoding
/// can be sent, else the whole command written again ([`Verdict::Rewrite`]).
#[inline(always)]
pub fn appending(cmd: &CommandView<'_>, extra: &EncodedArgs, out: &mut BytesMut) -> Verdict {
    if cmd.wire.is_some() && cmd.is_whole() {
        out.extend_from_slice(&extra.bytes);
        return Verdict::Append {
            args: extra.count as u32,
            len: out.len(),
        };
    }
    encode_appending(cmd, extra, out);
    Verdict::Rewrite {
        replacement: Some(out.len()),
        hidden: 0,
    }
}

/// Write the command followed by the `extra` arguments (multibulk) into `out`.
#[inline(never)]
pub fn encode_appending(cmd: &CommandView<'_>, extra: &EncodedArgs, out: &mut BytesMut) {
    resp::array_header(out, cmd.args.len() + extra.count);
    match &cmd.wire {
        // The client's own encoding, in one copy.
        Some(wire) => out.extend_from_slice(&cmd.src[wire.clone()]),
        None => {
            for r in cmd.args {
                resp::bulk(out, &cmd.src[r.clone()]);
            }
        }
    }
    out.extend_from_slice(&extra.bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::verdict::{wire_args, ScriptAccess};

    #[test]
    fn appending_to_the_clients_own_encoding_equals_encoding_each_argument() {
        use crate::scanner::request::{Limits, RequestScanner, Step};
        let table = crate::command::CommandTable::builtin();
        let src = b"*3\r\n$3\r\nSET\r\n$5\r\nk:one\r\n$11\r\nhello world\r\n";
        let mut scanner = RequestScanner::new(Limits::default());
        let Step::Command { start, end, .. } = scanner.scan(src) else {
            panic!("a whole command");
        };
        let args = scanner.args();
        let mut view = CommandView {
            src,
            args,
            keys: &[1],
            info: table.lookup(&[b"SET"]),
            argc: 3,
            access: ScriptAccess::Allowed,
            streaming: None,
            size: src.len() as u64,
            wire: wire_args(src, start, end, args.len()),
            watch: Default::default(),
        };
        assert_eq!(view.wire, Some(4..src.len()));
        let px = EncodedArgs::new(&[b"PX", b"3600000"]);
        let mut copied = BytesMut::new();
        encode_appending(&view, &px, &mut copied);
        view.wire = None;
        let mut encoded = BytesMut::new();
        encode_appending(&view, &px, &mut encoded);
        assert_eq!(copied, encoded);
        assert_eq!(
            &copied[..],
            &b"*5\r\n$3\r\nSET\r\n$5\r\nk:one\r\n$11\r\nhello world\r\n$2\r\nPX\r\n$7\r\n3600000\r\n"[..]
        );
    }
}
