//! One direction of a session: bytes read from one socket, scanned, and moved to the
//! output for the other.
//!
//! A [`Pipe`] holds the read buffer, the scanner that finds boundaries in it, how many
//! scanned bytes at its front are ready to go, and the output buffer. The session has two,
//! client → upstream (requests) and upstream → client (replies), with the same code.
//!
//! Ready bytes move to the output with `split_to`/`unsplit`: when the output is empty (the
//! usual case, as it was written at once) that is no copy at all, only a change of which
//! handle owns the memory. Only bytes the proxy adds (a rewrite, a local answer) are
//! copied. Writing tries the socket at once (`try_write`) and leaves the rest to the
//! session's event loop, which waits for writability.
//!
//! Never decides what is ready or what to drop: the session does, from what the scanners
//! and the reply queue say.

use bytes::{Buf, BytesMut};
use metrics::Counter;

use crate::buffer::ReadBuffer;
use crate::guard::wire_args;
use crate::resp;
use crate::scanner::reply::ReplyScanner;
use crate::scanner::request::RequestScanner;
use crate::transport::Stream;

/// Bytes of room made in the output beyond the unread input when the proxy appends its own.
const APPEND_ROOM: usize = 1024;

/// A scanner whose positions count from the start of the pipe's read buffer, so they move
/// when bytes leave its front.
pub(crate) trait Rebase {
    /// `n` bytes left the front of the buffer.
    fn rebase(&mut self, n: usize);
}

impl Rebase for RequestScanner {
    #[inline]
    fn rebase(&mut self, n: usize) {
        RequestScanner::rebase(self, n)
    }
}

impl Rebase for ReplyScanner {
    #[inline]
    fn rebase(&mut self, n: usize) {
        ReplyScanner::rebase(self, n)
    }
}

/// One direction's bytes: read, scanned, ready, written.
#[derive(Debug)]
pub(crate) struct Pipe<S> {
    input: ReadBuffer,
    /// Bytes at the front of `input` scanned and waiting to move to `output`.
    ready: usize,
    output: BytesMut,
    /// How large the output grew in the last batch the proxy appended to: the room made at
    /// the first append of the next batch, so a batch of rewrites (each adding far more
    /// than its own input, as a wrapped command does) grows its output once, not by
    /// repeated doubling, each copying everything before it.
    append_hint: usize,
    /// The proxy appended to the output since the hint was last noted.
    appended: bool,
    scanner: S,
}

impl<S: Rebase> Pipe<S> {
    /// An empty pipe; no memory is taken until the first read.
    pub fn new(scanner: S) -> Self {
        Pipe {
            input: ReadBuffer::new(),
            ready: 0,
            output: BytesMut::new(),
            append_hint: 0,
            appended: false,
            scanner,
        }
    }

    /// The bytes read and not moved or dropped yet.
    #[inline]
    pub fn input(&self) -> &[u8] {
        self.input.bytes()
    }

    /// The scanner over [`Self::input`].
    #[inline]
    pub fn scanner(&self) -> &S {
        &self.scanner
    }

    /// The scanner, to scan or reconfigure.
    #[inline]
    pub fn scanner_mut(&mut self) -> &mut S {
        &mut self.scanner
    }

    /// The scanner and the bytes it scans, borrowed together.
    #[inline]
    pub fn scan_parts(&mut self) -> (&mut S, &[u8]) {
        (&mut self.scanner, self.input.bytes())
    }

    /// Make room for the next read.
    pub fn prepare(&mut self) {
        self.input.prepare();
    }

    /// Where a read appends, and the output a write takes from: borrowed together so one
    /// event loop can wait on both.
    #[inline]
    pub fn io_parts(&mut self) -> (&mut BytesMut, &BytesMut) {
        (self.input.bytes_mut(), &self.output)
    }

    /// Note that `n` bytes were read.
    pub fn after_read(&mut self, n: usize) {
        self.input.after_read(n);
    }

    /// Bytes at the front of the input ready to move.
    #[inline]
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// The input up to `upto` is ready to move.
    #[inline]
    pub fn ready_upto(&mut self, upto: usize) {
        self.ready = upto;
    }

    /// `n` more bytes of the input are ready to move.
    #[inline]
    pub fn add_ready(&mut self, n: usize) {
        self.ready += n;
    }

    /// Move the ready bytes to the output, without copying when the output is empty.
    #[inline]
    pub fn move_ready(&mut self) {
        if self.ready > 0 {
            let chunk = self.input.split_to(self.ready);
            self.output.unsplit(chunk);
            self.scanner.rebase(self.ready);
            self.ready = 0;
        }
    }

    /// Drop every input byte that follows the ready ones (which move first), and start the
    /// scan afresh: the part of a reply a lost connection cut off.
    pub fn forget_unready(&mut self)
    where
        S: Default,
    {
        self.move_ready();
        let n = self.input.bytes().len();
        self.input.discard(n);
        self.scanner = S::default();
    }

    /// Drop `n` input bytes that follow the ready ones (which move first).
    pub fn discard(&mut self, n: usize) {
        self.move_ready();
        self.input.discard(n);
        self.scanner.rebase(n);
    }

    /// The output, after the ready bytes, for the proxy to append its own bytes to.
    ///
    /// When the output has no room left, room is made at once for the rest of the input
    /// as well, or for as much as the last batch that was appended to grew to, whichever
    /// is larger: the output may be the input's own memory, taken without a copy, which
    /// cannot grow in place; growing it a command at a time would copy it again at each
    /// doubling.
    #[inline]
    pub fn append(&mut self) -> &mut BytesMut {
        self.move_ready();
        self.make_room(1);
        &mut self.output
    }

    /// Make sure the output has room for `need` more bytes, the ready bytes moved already:
    /// when it has not, the room [`Self::append`] describes. Room made once serves the
    /// batch's later appends (asking for it again at each would regrow the output at
    /// nearly every command, as it fills faster than the input empties).
    #[inline]
    fn make_room(&mut self, need: usize) {
        if self.output.capacity() - self.output.len() < need {
            let rest = self.input.bytes().len() + APPEND_ROOM;
            // The last batch's size plus this append's: the last command's reservation is
            // an upper bound (its `*argc` line counted at its longest), so a batch exactly
            // as large as the last must not find itself a few bytes short at its end.
            self.output.reserve(rest.max(self.append_hint + need));
        }
        self.appended = true;
    }

    /// Append `bytes` to the output, after the ready bytes.
    #[inline]
    pub fn send(&mut self, bytes: &[u8]) {
        self.move_ready();
        self.make_room(bytes.len());
        self.output.extend_from_slice(bytes);
    }

    /// Drop the first `size` input bytes after the ready ones (which move first), a command
    /// the proxy rewrote, and send `bytes`, its replacement, in their place.
    #[inline]
    pub fn replace_with(&mut self, size: usize, bytes: &[u8]) {
        self.move_ready();
        self.input.discard(size);
        self.scanner.rebase(size);
        self.make_room(bytes.len());
        self.output.extend_from_slice(bytes);
    }

    /// Send the whole multibulk command at the front of the unready input (its first
    /// `size` bytes, after the ready ones, which move first) with arguments added after its
    /// own: a new `*argc` line, a copy of the client's own encoding of its arguments, then
    /// `added` (the added arguments, encoded); the command's bytes leave the input. One
    /// reservation for all three. `own` is how many arguments the command had.
    pub fn replace_with_appended(&mut self, own: usize, argc: usize, size: usize, added: &[u8]) {
        self.move_ready();
        let wire = wire_args(self.input.bytes(), 0, size, own).unwrap_or(size..size);
        debug_assert!(wire.start > 0, "a multibulk command");
        // The `*argc` line takes at most 23 bytes.
        self.make_room(23 + wire.len() + added.len());
        let out = &mut self.output;
        resp::array_header(out, argc);
        out.extend_from_slice(&self.input.bytes()[wire]);
        out.extend_from_slice(added);
        self.input.discard(size);
        self.scanner.rebase(size);
    }

    /// Send the whole multibulk command at the front of the unready input (its first
    /// `size` bytes, after the ready ones, which move first) with arguments added before
    /// its own: a new `*argc` line, `fixed` and `added` (the added arguments, encoded), then
    /// a copy of the client's own encoding of its arguments (`own` of them); the command's
    /// bytes leave the input. One reservation for all four.
    pub fn replace_with_prepended(
        &mut self,
        own: usize,
        argc: usize,
        size: usize,
        (fixed, added): (&[u8], &[u8]),
    ) {
        self.move_ready();
        let wire = wire_args(self.input.bytes(), 0, size, own).unwrap_or(size..size);
        debug_assert!(wire.start > 0, "a multibulk command");
        // The `*argc` line takes at most 23 bytes.
        self.make_room(23 + fixed.len() + added.len() + wire.len());
        let out = &mut self.output;
        resp::array_header(out, argc);
        out.extend_from_slice(fixed);
        out.extend_from_slice(added);
        out.extend_from_slice(&self.input.bytes()[wire]);
        self.input.discard(size);
        self.scanner.rebase(size);
    }

    /// Append bytes the scanner holds (an inline command's multibulk form) to the output.
    #[inline]
    pub fn send_from_scanner(&mut self, bytes: impl FnOnce(&S) -> &[u8]) {
        self.move_ready();
        self.output.extend_from_slice(bytes(&self.scanner));
    }

    /// Move every input byte to the output unscanned (a replication tunnel).
    pub fn pass_all(&mut self) {
        self.move_ready();
        let n = self.input.bytes().len();
        self.pass(n);
    }

    /// Move the first `n` input bytes to the output, unscanned (a replication tunnel).
    pub fn pass(&mut self, n: usize) {
        let bytes = self.input.split_to(n);
        self.output.unsplit(bytes);
    }

    /// Take the output whole (whole commands for a shared connection), leaving it empty.
    pub fn take_output(&mut self) -> BytesMut {
        self.note_output_size();
        std::mem::take(&mut self.output)
    }

    /// Append `bytes` to the input as if read from a socket (replies routed from a shared
    /// connection): no copy when the input is empty. Returns how many.
    pub fn feed(&mut self, bytes: BytesMut) -> usize {
        let n = bytes.len();
        self.input.bytes_mut().unsplit(bytes);
        n
    }

    /// Drop every input byte not ready to move (a reply cut off in its middle) and scan
    /// afresh with `scanner`; the ready bytes move to the output first.
    pub fn restart(&mut self, scanner: S) {
        self.move_ready();
        let rest = self.input.bytes().len();
        self.input.discard(rest);
        self.scanner = scanner;
    }

    /// Unwritten output bytes.
    #[inline]
    pub fn unwritten(&self) -> usize {
        self.output.len()
    }

    /// Forget the unwritten output (it was meant for a connection that never opened).
    pub fn drop_output(&mut self) {
        self.output.clear();
    }

    /// Remember the output's size as the next batch's [`Self::append`] hint when the proxy
    /// appended to it; bounded by the largest read, so one huge batch does not make every
    /// later one reserve as much. Noted before the batch's first bytes are written, by a
    /// flush or by the event loop's own write ([`Self::wrote`]), whichever comes first.
    #[inline]
    fn note_output_size(&mut self) {
        if self.appended {
            self.append_hint = self.output.len().min(crate::buffer::MAX_READ);
            self.appended = false;
        }
    }

    /// `n` output bytes were written. An emptied output gives up its handle, so the read
    /// buffer can reuse the memory.
    pub fn wrote(&mut self, n: usize) {
        // The batch's size before its first bytes leave (a flush after the write would
        // find the output emptied).
        self.note_output_size();
        self.output.advance(n);
        if self.output.is_empty() {
            self.output = BytesMut::new();
        }
    }

    /// Write as much as `to` takes now, without waiting, counting the bytes in `sent`.
    pub fn flush(&mut self, to: &Stream, sent: &Counter) {
        self.note_output_size();
        while !self.output.is_empty() {
            match to.try_write(&self.output) {
                Ok(n) => {
                    sent.increment(n as u64);
                    self.output.advance(n)
                }
                Err(_) => break,
            }
        }
        if self.output.is_empty() {
            self.output = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what the pipe told it, to check positions stay in step with the buffer.
    #[derive(Debug, Default)]
    struct Shifts(usize);

    impl Rebase for Shifts {
        fn rebase(&mut self, n: usize) {
            self.0 += n;
        }
    }

    fn pipe_with(bytes: &[u8]) -> Pipe<Shifts> {
        let mut pipe = Pipe::new(Shifts::default());
        pipe.prepare();
        let (input, _) = pipe.io_parts();
        input.extend_from_slice(bytes);
        pipe.after_read(bytes.len());
        pipe
    }

    fn output(pipe: &mut Pipe<Shifts>) -> Vec<u8> {
        pipe.io_parts().1.to_vec()
    }

    #[test]
    fn ready_bytes_move_and_the_scanner_follows() {
        let mut pipe = pipe_with(b"GET a\r\nGET b\r\n");
        pipe.ready_upto(7);
        pipe.move_ready();
        assert_eq!(output(&mut pipe), b"GET a\r\n");
        assert_eq!(pipe.input(), b"GET b\r\n");
        assert_eq!((pipe.ready(), pipe.scanner().0), (0, 7));
        pipe.move_ready();
        assert_eq!(pipe.scanner().0, 7, "nothing ready moves nothing");
    }

    #[test]
    fn a_move_into_an_empty_output_copies_nothing() {
        let mut pipe = pipe_with(b"PING\r\n");
        let at = pipe.input().as_ptr();
        pipe.ready_upto(6);
        pipe.move_ready();
        assert_eq!(pipe.io_parts().1.as_ptr(), at);
    }

    #[test]
    fn discarded_bytes_follow_the_ready_ones_and_never_reach_the_output() {
        let mut pipe = pipe_with(b"aaBBBcc");
        pipe.ready_upto(2);
        pipe.discard(3);
        pipe.send(b"X");
        pipe.add_ready(2);
        pipe.move_ready();
        assert_eq!(output(&mut pipe), b"aaXcc");
        assert_eq!(pipe.scanner().0, 7);
        assert!(pipe.input().is_empty());
    }

    #[test]
    fn the_append_hint_follows_the_last_appended_batch_up_to_the_largest_read() {
        let mut pipe = pipe_with(b"ab");
        pipe.ready_upto(2);
        pipe.send(&[b'x'; 3000]);
        pipe.note_output_size();
        assert_eq!(pipe.append_hint, 3002, "the batch's size");
        pipe.drop_output();
        pipe.send(&vec![b'x'; 4 * crate::buffer::MAX_READ]);
        pipe.note_output_size();
        assert_eq!(pipe.append_hint, crate::buffer::MAX_READ, "bounded");
        assert!(pipe.io_parts().1.capacity() >= 4 * crate::buffer::MAX_READ);
        pipe.drop_output();
        pipe.note_output_size();
        assert_eq!(
            pipe.append_hint,
            crate::buffer::MAX_READ,
            "nothing appended since"
        );
    }

    /// A batch the event loop writes before any flush still sets the hint to its size: a
    /// flush after the write finds the output emptied and leaves the hint alone, so the
    /// next batch of rewrites finds its room made at once instead of regrowing (each
    /// regrowth copying the output so far).
    #[test]
    fn a_batch_written_before_a_flush_still_sets_the_hint() {
        let mut pipe = pipe_with(b"");
        pipe.send(&[b'x'; 3000]);
        pipe.wrote(1000);
        assert_eq!(
            pipe.append_hint, 3000,
            "the batch's size before its first write"
        );
        pipe.wrote(2000);
        pipe.note_output_size();
        assert_eq!(pipe.append_hint, 3000, "an emptied output leaves the hint");
    }

    /// A command sent with arguments appended: the ready bytes first, then a new `*N`
    /// line, the command's own arguments and the added ones; its bytes leave the input and
    /// the scanner follows. A replaced command leaves the input the same way.
    #[test]
    fn a_command_goes_out_with_its_added_arguments_or_replaced() {
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
        let mut pipe = pipe_with(&[&b"+x"[..], set, b"*1\r\n$4\r\nPING\r\n"].concat());
        pipe.ready_upto(2);
        pipe.replace_with_appended(3, 5, set.len(), b"$2\r\nPX\r\n$1\r\n9\r\n");
        assert_eq!(
            output(&mut pipe),
            b"+x*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nPX\r\n$1\r\n9\r\n"
        );
        assert_eq!(pipe.input(), b"*1\r\n$4\r\nPING\r\n");
        assert_eq!((pipe.ready(), pipe.scanner().0), (0, 2 + set.len()));
        pipe.replace_with(14, b"+PONG\r\n");
        assert!(output(&mut pipe).ends_with(b"\r\n9\r\n+PONG\r\n"));
        assert!(pipe.input().is_empty());
        assert_eq!(pipe.scanner().0, 2 + set.len() + 14);
    }

    /// Appends that fit the room made at the first one do not grow the output again: asking
    /// for the rest of the input at every append regrew it at nearly every command.
    #[test]
    fn a_batch_of_appends_grows_the_output_once() {
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
        let mut pipe = pipe_with(&set.repeat(32));
        pipe.replace_with_appended(3, 5, set.len(), b"$2\r\nPX\r\n$1\r\n9\r\n");
        let room = pipe.io_parts().1.capacity();
        for _ in 1..32 {
            pipe.replace_with_appended(3, 5, set.len(), b"$2\r\nPX\r\n$1\r\n9\r\n");
        }
        assert!(pipe.input().is_empty());
        assert_eq!(pipe.io_parts().1.capacity(), room);
    }

    /// A batch of prepended commands (a wrapped write, each far larger than the input it
    /// replaces) as large as the batch before it grows its output once: the room made at
    /// its first command holds the last command too, whose reservation counts its `*argc`
    /// line at its longest. Sized from the last batch alone, the batch came up a few bytes
    /// short at its last command and was copied into a larger buffer each time.
    #[test]
    fn a_batch_as_large_as_the_last_grows_its_output_once() {
        let hset = b"*4\r\n$4\r\nHSET\r\n$1\r\nh\r\n$1\r\nf\r\n$1\r\nv\r\n";
        let fixed = [b'x'; 300];
        let batch = |pipe: &mut Pipe<Shifts>| {
            let mut rooms = Vec::new();
            for _ in 0..32 {
                pipe.replace_with_prepended(4, 7, hset.len(), (&fixed, b"$1\r\nh\r\n"));
                rooms.push(pipe.io_parts().1.capacity());
            }
            rooms
        };
        let mut pipe = pipe_with(&hset.repeat(64));
        batch(&mut pipe);
        let written = pipe.unwritten();
        pipe.wrote(written);
        let rooms = batch(&mut pipe);
        assert!(pipe.input().is_empty());
        assert!(
            rooms.iter().all(|&r| r == rooms[0]),
            "the second batch's output grew after its first command: {rooms:?}"
        );
    }

    #[test]
    fn appended_bytes_come_after_the_ready_ones() {
        let mut pipe = pipe_with(b"ab");
        pipe.ready_upto(1);
        pipe.append().extend_from_slice(b"!");
        assert_eq!(output(&mut pipe), b"a!");
        assert_eq!(pipe.input(), b"b");
    }

    #[test]
    fn written_bytes_leave_the_output_and_passed_bytes_skip_the_scanner() {
        let mut pipe = pipe_with(b"abcdef");
        pipe.ready_upto(2);
        pipe.pass_all();
        assert_eq!(output(&mut pipe), b"abcdef");
        assert_eq!(pipe.scanner().0, 2, "only scanned bytes rebase the scanner");
        pipe.wrote(4);
        assert_eq!(pipe.unwritten(), 2);
        pipe.wrote(2);
        assert_eq!(pipe.unwritten(), 0);
        pipe.send(b"x");
        pipe.drop_output();
        assert_eq!(pipe.unwritten(), 0);
    }
}
