//! What a guard sees and what it answers: the [`CommandView`] of one command (its bytes,
//! arguments, keys, what the command table says of it, what the client's Redis user may
//! run) and the [`Verdict`].
//!
//! A guard answers:
//! - [`Verdict::Forward`]: send the command as it is;
//! - [`Verdict::Rewrite`]: send what the guard wrote instead, possibly followed by extra
//!   commands whose replies the client never sees;
//! - [`Verdict::Append`]: send the command as the client encoded it, with arguments the
//!   guard wrote after its own (the client's bytes are not copied into the guard's buffer);
//! - [`Verdict::Prepend`]: the same with arguments before its own, the first of them
//!   fixed bytes the guard encoded once (a script), copied only into what Redis is sent;
//! - [`Verdict::Answer`]: reply to the client without asking Redis;
//! - [`Verdict::Refuse`]: reply with an error that names the guard, the rule and the reason.
//!
//! A guard that lets a command through and wants to see its reply says so on the view
//! ([`CommandView::watch_reply`]), not in its verdict. Never imports a guard.

#[cfg(test)]
use std::cell::Cell;
use std::ops::Range;

use bytes::Bytes;

use super::watch::{ReplyWatch, WatchSlot};
use crate::command::CommandInfo;

/// What a guard decided about one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send the command unchanged.
    Forward,
    /// Send what the guard wrote to the scratch buffer: its first `replacement` bytes (when
    /// `Some`) instead of the command, then `hidden` commands whose replies are hidden.
    Rewrite {
        replacement: Option<usize>,
        hidden: u32,
    },
    /// Send the command with `args` more arguments after its own: a new `*N` line, the
    /// client's own encoding of its arguments, then the first `len` bytes the guard wrote
    /// (the added arguments, encoded). Only for a whole command sent in multibulk form
    /// ([`CommandView::wire`] is known).
    Append { args: u32, len: usize },
    /// Send the command with `args` more arguments before its own: a new `*N` line,
    /// `fixed` (arguments encoded once, such as a script), the first `len` bytes the guard
    /// wrote (the rest of the added arguments, encoded), then the client's own encoding of
    /// its arguments. Only for a whole command sent in multibulk form
    /// ([`CommandView::wire`] is known).
    Prepend {
        args: u32,
        fixed: &'static [u8],
        len: usize,
    },
    /// Answer the client with these bytes; Redis never sees the command.
    Answer(Bytes),
    /// Refuse the command with this error reply; Redis never sees the command.
    Refuse(Bytes),
}

/// The command a guard looks at. Argument `i` is `src[args[i]]`.
#[derive(Debug)]
pub struct CommandView<'a> {
    /// The bytes the argument ranges index.
    pub src: &'a [u8],
    /// The arguments available (all of them, or those before a streamed one).
    pub args: &'a [Range<usize>],
    /// Indices of the arguments that are keys, ascending and without duplicates.
    pub keys: &'a [usize],
    /// What the command table says of the command.
    pub info: &'a CommandInfo,
    /// The declared argument count.
    pub argc: usize,
    /// For a command too large to hold: the declared length of argument `args.len()`, which
    /// is arriving now. `None` for a whole command.
    pub streaming: Option<u64>,
    /// What the client's Redis user may run for a guard that sends scripts or expiries.
    pub access: ScriptAccess,
    /// The command's size in bytes (for a streamed command, at least this many).
    pub size: u64,
    /// Where in `src` the arguments lie exactly as the client encoded them, after the
    /// `*N` line: for a whole multibulk command all of them (a guard appending arguments
    /// copies these bytes instead of encoding each argument again); for a streamed command
    /// its head, up to where the streamed rest begins. `None` for inline commands.
    pub wire: Option<Range<usize>>,
    /// Where a guard that lets the command through asks to see its reply
    /// ([`CommandView::watch_reply`]); empty when the view is made.
    pub watch: WatchSlot,
}

#[cfg(test)]
thread_local! {
    /// Arguments the guards examined on this thread (see [`CommandView::count_examined`]).
    static EXAMINED: Cell<usize> = const { Cell::new(0) };
}

/// How many arguments the guards examined on this thread so far: read through
/// [`CommandView::arg`] or measured by the size guard. The tests bound its growth to show
/// a check is linear in a command's arguments; only test builds count, so the hot path
/// never does.
#[cfg(test)]
pub fn examined() -> usize {
    EXAMINED.with(Cell::get)
}

/// Test support: `f` on the whole command `args`, whose keys are at positions `keys`, as
/// the session would show it to a guard (scanned by the real scanner, looked up in the
/// built-in command table, every script and expiry allowed).
#[cfg(test)]
pub fn with_view<R>(args: &[&[u8]], keys: &[usize], f: impl FnOnce(&CommandView<'_>) -> R) -> R {
    use crate::command::CommandTable;
    use crate::scanner::request::{Limits, RequestScanner, Step};

    let table = CommandTable::builtin();
    let mut src = bytes::BytesMut::new();
    crate::resp::command(&mut src, args);
    let mut scanner = RequestScanner::new(Limits::default());
    let Step::Command { .. } = scanner.scan(&src) else {
        panic!("a whole command");
    };
    let view = CommandView {
        src: &src,
        args: scanner.args(),
        keys,
        info: table.lookup(args),
        argc: args.len(),
        access: ScriptAccess::Allowed,
        streaming: None,
        size: src.len() as u64,
        wire: None,
        watch: Default::default(),
    };
    f(&view)
}

/// Test support: `f` on the whole multibulk command `src`, in the client's own encoding, as
/// the session shows it to a guard: scanned by the real scanner, looked up in the built-in
/// command table, its keys found by [`find_keys`], its encoding at hand (`wire`), every
/// script and expiry allowed. `f` may change the view (drop `wire`, say).
#[cfg(test)]
pub fn with_scanned_view<R>(src: &[u8], f: impl FnOnce(&mut CommandView<'_>) -> R) -> R {
    use crate::command::CommandTable;
    use crate::scanner::request::{Limits, RequestScanner, Step};

    let table = CommandTable::builtin();
    let mut scanner = RequestScanner::new(Limits::default());
    let Step::Command { start, end, .. } = scanner.scan(src) else {
        panic!("a whole command");
    };
    let args = scanner.args();
    let info = table.lookup(&args.iter().map(|r| &src[r.clone()]).collect::<Vec<_>>());
    let mut keys = Vec::new();
    find_keys(info, src, args, args.len(), &mut keys);
    let mut view = CommandView {
        src,
        args,
        keys: &keys,
        info,
        argc: args.len(),
        access: ScriptAccess::Allowed,
        streaming: None,
        size: src.len() as u64,
        wire: wire_args(src, start, end, args.len()),
        watch: Default::default(),
    };
    f(&mut view)
}

/// What the client's Redis user may run on the guards' behalf, as the session learnt it
/// from a probe ([`PROBE`]) after connecting and after each change of user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptAccess {
    /// EVAL and PEXPIRE (or not known yet: the session holds guarded writes back while a
    /// probe is in flight, so this means "not denied").
    Allowed,
    /// EVAL, but not PEXPIRE: no key can be given an expiry.
    NoExpire,
    /// Not EVAL (scripts are denied), so no write can be wrapped.
    NoScripts,
}

impl ScriptAccess {
    /// Read the probe's reply: an error (EVAL refused), `:1` (PEXPIRE refused), or else
    /// allowed (`:2`, or `:0` when the user's key patterns leave the answer open).
    pub fn from_probe_reply(is_error: bool, value: Option<i64>) -> Self {
        match (is_error, value) {
            (true, _) => ScriptAccess::NoScripts,
            (false, Some(1)) => ScriptAccess::NoExpire,
            _ => ScriptAccess::Allowed,
        }
    }
}

/// The probe a session sends (its reply hidden) to learn its user's [`ScriptAccess`]: EVAL
/// itself, then PEXPIRE against GET on a probe key, so a user whose key patterns exclude the
/// probe key is not mistaken for one denied PEXPIRE. Nothing is run or logged in ACL LOG.
pub const PROBE: &[u8] = b"*3\r\n$4\r\nEVAL\r\n$153\r\nlocal k = 'respguard:probe' if redis.acl_check_cmd('pexpire', k, '1', 'NX') then return 2 end if redis.acl_check_cmd('get', k) then return 1 end return 0\r\n$1\r\n0\r\n";

/// The arguments of a whole multibulk command `src[start..end]` of `argc` arguments, as
/// encoded: everything after the `*argc` line (see [`CommandView::wire`]). The request
/// scanner takes only a plain count (digits without a sign or a leading zero, as Redis's
/// `string2ll`), and, like Redis, ends the line at its `\r` and the byte after it,
/// whatever that byte is: so the line is `*`, the digits of `argc`, and two bytes, and
/// where it ends is known without reading it again.
#[inline]
pub fn wire_args(src: &[u8], start: usize, end: usize, argc: usize) -> Option<Range<usize>> {
    let args = start + 3 + decimal_digits(argc);
    debug_assert!(
        args > end || src[start..args - 1].ends_with(b"\r"),
        "the count line of {argc}"
    );
    (args <= end).then_some(args..end)
}

/// How many decimal digits `n` is written with.
#[inline(always)]
fn decimal_digits(n: usize) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        _ => n.ilog10() as usize + 1,
    }
}

/// The argument indices of a command's keys into `keys` (its capacity kept), sorted and
/// unique: several key specifications may list keys out of order or twice, and guards rely
/// on a sorted, unique list to tell keys from values in O(log n). Inlined into the
/// judging, where a one-key command's key is found in a few instructions.
#[inline]
pub fn find_keys(
    info: &CommandInfo,
    src: &[u8],
    args: &[std::ops::Range<usize>],
    argc: usize,
    keys: &mut Vec<usize>,
) {
    keys.clear();
    info.key_positions_by(argc, |i| args.get(i).map(|r| &src[r.clone()]), keys);
    if keys.len() > 1 {
        keys.sort_unstable();
        keys.dedup();
    }
}

impl<'a> CommandView<'a> {
    /// Argument `i`, if available.
    pub fn arg(&self, i: usize) -> Option<&'a [u8]> {
        self.count_examined(1);
        self.args.get(i).map(|r| &self.src[r.clone()])
    }

    /// Count `n` arguments examined (`examined()` in test builds); nothing otherwise.
    #[inline(always)]
    pub fn count_examined(&self, _n: usize) {
        #[cfg(test)]
        EXAMINED.with(|e| e.set(e.get() + _n));
    }

    /// True when argument `i` is a key.
    #[inline]
    pub fn is_key(&self, i: usize) -> bool {
        self.keys.binary_search(&i).is_ok()
    }

    /// True for a whole command (not streamed).
    pub fn is_whole(&self) -> bool {
        self.streaming.is_none()
    }

    /// Ask to see the reply to this command, should the chain let it through: the session
    /// hands it to `watch` when it arrives (see [`super::watch`]).
    #[inline]
    pub fn watch_reply(&self, watch: ReplyWatch) {
        self.watch.set(watch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_line_ends_where_redis_ends_it() {
        // Redis ends a line at `\r` and skips the next byte, whatever it is; a rewrite that
        // looked for `\n` copied the arguments from the middle of the next line
        // (found by the guard-pipeline fuzz target).
        let src = b"*2\rX$4\r\nINCR\r\n$1\r\nk\r\n";
        assert_eq!(wire_args(src, 0, src.len(), 2), Some(4..src.len()));
        assert_eq!(wire_args(b"*1\r", 0, 3, 1), None);
        let mut long = b"*12\r\n".to_vec();
        for _ in 0..12 {
            long.extend_from_slice(b"$1\r\nx\r\n");
        }
        assert_eq!(wire_args(&long, 0, long.len(), 12), Some(5..long.len()));
    }

    #[test]
    fn digits_are_counted_at_every_power_of_ten() {
        for n in [0usize, 9, 10, 99, 100, 999, 1000, 9999, 10_000, 1 << 31] {
            assert_eq!(decimal_digits(n), n.to_string().len(), "{n}");
        }
    }
}
