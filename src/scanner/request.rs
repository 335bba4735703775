//! The request scanner: finds command boundaries in the bytes a client sends.
//!
//! It understands both request forms Redis accepts, multibulk (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`)
//! and inline (`GET k\r\n`), and is *resumable*: fed a buffer that grows at the end, it
//! continues from the byte where it stopped and never looks at a byte twice. It never
//! allocates per command: argument positions go into a `Vec` whose capacity is kept.
//!
//! A value too large to hold is not buffered. When an argument's declared length is above
//! the stream threshold, or the command already buffered has grown past the buffering limit,
//! the scanner stops with [`Step::Streaming`]: the head of the command is known (its name,
//! the arguments so far, the declared length of the next one) and the rest of the command is
//! consumed as raw bytes through [`RequestScanner::stream`], a chunk at a time, so the caller
//! can forward or discard it without holding it.
//!
//! Errors mirror Redis's own protocol errors word for word, because a client library or an
//! operator reading logs should see the same message it would get from Redis.
//!
//! Positions are absolute offsets into the caller's buffer. When the caller drops bytes from
//! the front of its buffer it calls [`RequestScanner::rebase`].

use std::ops::Range;

#[cfg(test)]
use super::length::plain_number;
use super::length::{length_line, length_line_at_front};

/// Redis's `PROTO_INLINE_MAX_SIZE`: the longest inline command or length line.
pub const REDIS_INLINE_MAX: usize = 64 * 1024;
/// Redis's default `proto-max-bulk-len`.
pub const REDIS_MAX_BULK_LEN: u64 = 512 * 1024 * 1024;
/// The most arguments Redis accepts in one multibulk command (`INT_MAX`). The proxy's
/// memory is bounded by bytes (`max_buffered_command`), not by this count.
pub const REDIS_MAX_ARGS: u64 = i32::MAX as u64;
/// Most arguments Redis 7.0 reads from a client that has not authenticated.
pub const UNAUTHENTICATED_MAX_ARGS: u64 = 10;
/// Largest argument Redis 7.0 reads from a client that has not authenticated.
pub const UNAUTHENTICATED_MAX_BULK_LEN: u64 = 16 * 1024;

/// Bounds the scanner enforces; all are configurable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest inline command, and longest `*`/`$` length line, in bytes.
    pub max_inline_len: usize,
    /// Most arguments one multibulk command may declare (default: Redis's own limit).
    pub max_args: u64,
    /// Largest declared bulk length.
    pub max_bulk_len: u64,
    /// An argument longer than this is streamed rather than buffered.
    pub stream_threshold: u64,
    /// A command whose buffered bytes exceed this is streamed from that point on.
    pub max_buffered_command: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_inline_len: REDIS_INLINE_MAX,
            max_args: REDIS_MAX_ARGS,
            max_bulk_len: REDIS_MAX_BULK_LEN,
            stream_threshold: 64 * 1024,
            max_buffered_command: 1024 * 1024,
        }
    }
}

/// A protocol error, worded as Redis words it (the text after `-ERR `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: too big mbulk count string")]
    CountLineTooBig,
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: too big bulk count string")]
    BulkLineTooBig,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedDollar(char),
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
}

/// What one call to [`RequestScanner::scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The buffer ends inside a command (or holds nothing); read more and call again.
    Incomplete,
    /// A whole command is in `buf[start..end]`; [`RequestScanner::args`] has its arguments.
    /// For an inline command the arguments live in [`RequestScanner::inline_bytes`] and
    /// `inline` is true; the caller forwards the multibulk form from there.
    Command {
        start: usize,
        end: usize,
        inline: bool,
    },
    /// A command too large to buffer begins at `start`. `buf[start..head_end]` is its head
    /// (everything up to and including the next argument's length line, or up to the end of
    /// the last whole argument); [`RequestScanner::args`] has the whole arguments so far,
    /// `argc` is the declared count and `next_len` the declared length of the argument being
    /// streamed, if a length line ended the head. The caller forwards or discards the head
    /// and then feeds the rest through [`RequestScanner::stream`].
    Streaming {
        start: usize,
        head_end: usize,
        argc: u64,
        next_len: Option<u64>,
    },
    /// An empty command (`*0`, `*-1`, or a blank inline line) that Redis ignores without
    /// a reply ended at `end`.
    Empty { end: usize },
    /// Malformed input: Redis would answer this error and close the connection.
    Error(ProtocolError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between commands.
    Idle,
    /// Reading argument length lines and bodies of a multibulk command.
    Args { remaining: u64 },
    /// Waiting for `len` body bytes plus the two terminator bytes of a buffered argument.
    Body { remaining: u64, len: u64 },
    /// Streaming: `payload` raw bytes of the current argument (terminator included) are
    /// still to come, then `remaining` more arguments.
    StreamPayload { payload: u64, remaining: u64 },
    /// Streaming, between arguments: the next length line is being read.
    StreamArgs { remaining: u64 },
}

/// What [`RequestScanner::stream`] tells the caller about the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStep {
    /// The first `n` bytes belong to the streamed command, which goes on.
    More(usize),
    /// The first `n` bytes end the streamed command.
    Done(usize),
    /// The streamed command's next length line is malformed.
    Error(ProtocolError),
}

/// The resumable scanner; one per client connection.
#[derive(Debug)]
pub struct RequestScanner {
    limits: Limits,
    state: State,
    /// Start of the command being scanned.
    cmd_start: usize,
    /// Next byte to look at.
    pos: usize,
    /// Where to resume the search for a line end, so a long line is not searched twice.
    line_search: usize,
    argc: u64,
    args: Vec<Range<usize>>,
    /// True when `args` index `inline` rather than the caller's buffer.
    args_inline: bool,
    inline: Vec<u8>,
    /// The client has not authenticated: Redis's tighter bounds apply.
    unauthenticated: bool,
    /// The one-step path's bounds, from `limits` and `unauthenticated`.
    one_step: OneStep,
}

impl RequestScanner {
    /// A scanner enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestScanner {
            limits,
            state: State::Idle,
            cmd_start: 0,
            pos: 0,
            line_search: 0,
            argc: 0,
            args: Vec::new(),
            args_inline: false,
            inline: Vec::new(),
            unauthenticated: false,
            one_step: OneStep::of(&limits, false),
        }
    }

    /// Whether the client still has to authenticate. Until it has, commands are bounded as
    /// Redis bounds them ([`UNAUTHENTICATED_MAX_ARGS`], [`UNAUTHENTICATED_MAX_BULK_LEN`]), so
    /// a client without credentials cannot make the proxy read a large command.
    pub fn set_unauthenticated(&mut self, unauthenticated: bool) {
        self.unauthenticated = unauthenticated;
        self.one_step = OneStep::of(&self.limits, unauthenticated);
    }

    /// The error for a declared bulk length, if it is one.
    fn bulk_len_error(&self, len: i64) -> Option<ProtocolError> {
        if len < 0 || len as u64 > self.limits.max_bulk_len {
            Some(ProtocolError::InvalidBulkLength)
        } else if self.unauthenticated && len as u64 > UNAUTHENTICATED_MAX_BULK_LEN {
            Some(ProtocolError::UnauthenticatedBulkLength)
        } else {
            None
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Positions of the arguments of the last command found (argument 0 is the name).
    /// They index the caller's buffer, or [`Self::inline_bytes`] for an inline command.
    pub fn args(&self) -> &[Range<usize>] {
        &self.args
    }

    /// The multibulk encoding of the last inline command; argument positions index it.
    pub fn inline_bytes(&self) -> &[u8] {
        &self.inline
    }

    /// True while a command is partly scanned or being streamed.
    pub fn in_command(&self) -> bool {
        self.state != State::Idle
    }

    /// True while a command is being streamed through [`Self::stream`].
    pub fn is_streaming(&self) -> bool {
        matches!(
            self.state,
            State::StreamPayload { .. } | State::StreamArgs { .. }
        )
    }

    /// Forget the command found last, which starts at `start`, so the next [`Self::scan`]
    /// finds it again: the caller holds it back until it can decide about it.
    pub fn unscan(&mut self, start: usize) {
        self.state = State::Idle;
        self.pos = start;
        self.line_search = 0;
        self.args.clear();
    }

    /// Shift every position left by `n`: the caller dropped `n` bytes from its buffer.
    /// `n` must not exceed the start of the command in progress.
    pub fn rebase(&mut self, n: usize) {
        self.cmd_start = self.cmd_start.saturating_sub(n);
        // While streaming, positions are the caller's (see `stream`); the saturation only
        // matters there.
        self.pos = self.pos.saturating_sub(n);
        if !self.is_streaming() {
            // While streaming, `line_search` is relative to the unconsumed bytes instead.
            self.line_search = self.line_search.saturating_sub(n);
        }
        if !self.is_streaming() && !self.args_inline {
            if self.args.first().is_some_and(|a| a.start < n) {
                // The bytes of the last command were dropped: its arguments are gone.
                self.args.clear();
            }
            for a in &mut self.args {
                a.start -= n;
                a.end -= n;
            }
        }
    }

    /// Scan on from where the last call stopped. `buf` must be the same buffer (grown at the
    /// end, or rebased) as before. Must not be called while streaming.
    ///
    /// The common command is read in one step ([`Self::scan_whole`], inlined into the
    /// caller); the state machine takes over where that stops (at its first arguments,
    /// still `Args`, or with nothing read, still `Idle`).
    #[inline]
    pub fn scan(&mut self, buf: &[u8]) -> Step {
        debug_assert!(!self.is_streaming());
        match self.scan_whole(buf) {
            Some((start, end)) => Step::Command {
                start,
                end,
                inline: false,
            },
            None => self.scan_general(buf),
        }
    }

    /// [`Self::scan`] by the state machine: every form, partial input, streaming, errors.
    #[inline(never)]
    fn scan_general(&mut self, buf: &[u8]) -> Step {
        loop {
            match self.state {
                State::Idle => {
                    if self.pos >= buf.len() {
                        return Step::Incomplete;
                    }
                    self.cmd_start = self.pos;
                    self.args.clear();
                    self.args_inline = false;
                    if buf[self.pos] != b'*' {
                        return self.scan_inline(buf);
                    }
                    // Not the common command (`scan_whole`): read the count line in full.
                    let Some((line, next)) = self.line(buf, self.pos + 1) else {
                        if buf.len() - self.pos > self.limits.max_inline_len {
                            return Step::Error(ProtocolError::CountLineTooBig);
                        }
                        return Step::Incomplete;
                    };
                    let Some(count) = parse_int(line) else {
                        return Step::Error(ProtocolError::InvalidMultibulkLength);
                    };
                    if count > i64::from(i32::MAX) || count > self.limits.max_args as i64 {
                        return Step::Error(ProtocolError::InvalidMultibulkLength);
                    }
                    if self.unauthenticated && count > UNAUTHENTICATED_MAX_ARGS as i64 {
                        return Step::Error(ProtocolError::UnauthenticatedMultibulkLength);
                    }
                    self.pos = next;
                    if count <= 0 {
                        return Step::Empty { end: next };
                    }
                    self.argc = count as u64;
                    self.state = State::Args {
                        remaining: count as u64,
                    };
                }
                State::Args { remaining } => {
                    let remaining = self.whole_args(buf, remaining);
                    self.state = State::Args { remaining };
                    if remaining == 0 {
                        self.state = State::Idle;
                        return Step::Command {
                            start: self.cmd_start,
                            end: self.pos,
                            inline: false,
                        };
                    }
                    if self.pos - self.cmd_start > self.limits.max_buffered_command {
                        return self.start_streaming(remaining, None, self.pos);
                    }
                    if self.pos >= buf.len() {
                        return Step::Incomplete;
                    }
                    if buf[self.pos] != b'$' {
                        return Step::Error(ProtocolError::ExpectedDollar(buf[self.pos] as char));
                    }
                    let Some((line, next)) = self.line(buf, self.pos + 1) else {
                        if buf.len() - self.pos > self.limits.max_inline_len {
                            return Step::Error(ProtocolError::BulkLineTooBig);
                        }
                        return Step::Incomplete;
                    };
                    let len = parse_int(line).unwrap_or(-1);
                    if let Some(e) = self.bulk_len_error(len) {
                        return Step::Error(e);
                    }
                    let len = len as u64;
                    if len > self.limits.stream_threshold {
                        return self.start_streaming(remaining, Some(len), next);
                    }
                    self.pos = next;
                    self.state = State::Body { remaining, len };
                }
                State::Body { remaining, len } => {
                    // Redis skips the two terminator bytes without checking them; so do we.
                    let end = self.pos + len as usize + 2;
                    if end > buf.len() {
                        return Step::Incomplete;
                    }
                    self.args.push(self.pos..self.pos + len as usize);
                    self.pos = end;
                    self.state = State::Args {
                        remaining: remaining - 1,
                    };
                }
                State::StreamPayload { .. } | State::StreamArgs { .. } => {
                    unreachable!("scan called while streaming")
                }
            }
        }
    }

    fn start_streaming(&mut self, remaining: u64, next_len: Option<u64>, head_end: usize) -> Step {
        self.pos = head_end;
        self.line_search = 0;
        self.state = match next_len {
            Some(len) => State::StreamPayload {
                payload: len + 2,
                remaining: remaining - 1,
            },
            None => State::StreamArgs { remaining },
        };
        Step::Streaming {
            start: self.cmd_start,
            head_end,
            argc: self.argc,
            next_len,
        }
    }

    /// Feed `buf[from..]`: the bytes that follow a streamed command's head (or follow the
    /// bytes consumed by the previous call). Bytes past the command's end are left alone.
    /// Length lines are parsed here too; a line split across calls is not consumed until it
    /// is whole, and the caller keeps those bytes. On `Done(n)` the scanner resumes at
    /// `from + n` in the same buffer.
    pub fn stream(&mut self, buf: &[u8], from: usize) -> StreamStep {
        let bytes = &buf[from..];
        let mut used = 0usize;
        loop {
            match self.state {
                State::StreamPayload { payload, remaining } => {
                    let take = (bytes.len() - used).min(payload.min(usize::MAX as u64) as usize);
                    used += take;
                    let payload = payload - take as u64;
                    if payload > 0 {
                        self.state = State::StreamPayload { payload, remaining };
                        return StreamStep::More(used);
                    }
                    self.state = State::StreamArgs { remaining };
                }
                State::StreamArgs { remaining } => {
                    if remaining == 0 {
                        self.state = State::Idle;
                        self.pos = from + used;
                        self.line_search = 0;
                        self.args.clear();
                        return StreamStep::Done(used);
                    }
                    let rest = &bytes[used..];
                    if rest.is_empty() {
                        return StreamStep::More(used);
                    }
                    if rest[0] != b'$' {
                        return StreamStep::Error(ProtocolError::ExpectedDollar(rest[0] as char));
                    }
                    // `line_search` counts the bytes of this partial line already searched.
                    let seen = self.line_search.max(1);
                    let Some(cr) = memchr(b'\r', &rest[seen..]).map(|i| i + seen) else {
                        if rest.len() > self.limits.max_inline_len {
                            return StreamStep::Error(ProtocolError::BulkLineTooBig);
                        }
                        self.line_search = rest.len();
                        return StreamStep::More(used);
                    };
                    if cr + 2 > rest.len() {
                        self.line_search = cr;
                        return StreamStep::More(used);
                    }
                    self.line_search = 0;
                    let len = parse_int(&rest[1..cr]).unwrap_or(-1);
                    if let Some(e) = self.bulk_len_error(len) {
                        return StreamStep::Error(e);
                    }
                    let len = len as u64;
                    used += cr + 2;
                    self.state = State::StreamPayload {
                        payload: len + 2,
                        remaining: remaining - 1,
                    };
                }
                _ => unreachable!("stream called while not streaming"),
            }
        }
    }

    /// Find the line starting at `from`: Redis looks for `\r` and assumes the `\n` after it.
    /// Returns the line's contents and the offset just past its terminator.
    fn line<'b>(&mut self, buf: &'b [u8], from: usize) -> Option<(&'b [u8], usize)> {
        let search_from = self.line_search.max(from);
        match memchr(b'\r', &buf[search_from..]) {
            Some(i) => {
                let cr = search_from + i;
                if cr + 2 > buf.len() {
                    self.line_search = cr;
                    return None;
                }
                self.line_search = 0;
                Some((&buf[from..cr], cr + 2))
            }
            None => {
                self.line_search = buf.len();
                None
            }
        }
    }

    fn scan_inline(&mut self, buf: &[u8]) -> Step {
        let search_from = self.line_search.max(self.pos);
        let Some(i) = memchr(b'\n', &buf[search_from..]) else {
            self.line_search = buf.len();
            if buf.len() - self.pos > self.limits.max_inline_len {
                return Step::Error(ProtocolError::InlineTooBig);
            }
            return Step::Incomplete;
        };
        self.line_search = 0;
        let nl = search_from + i;
        let end = nl + 1;
        let mut line = &buf[self.pos..nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        self.pos = end;
        self.inline.clear();
        self.args.clear();
        if split_inline_args(line, &mut self.inline, &mut self.args).is_err() {
            return Step::Error(ProtocolError::UnbalancedQuotes);
        }
        if self.args.is_empty() {
            return Step::Empty { end };
        }
        if self.args.len() as u64 > self.limits.max_args {
            return Step::Error(ProtocolError::InvalidMultibulkLength);
        }
        encode_inline_as_multibulk(&mut self.inline, &mut self.args);
        self.args_inline = true;
        Step::Command {
            start: self.cmd_start,
            end,
            inline: true,
        }
    }
}

/// The one-step path for the common command: whole, multibulk, plain length lines. The
/// general state machine above takes over wherever this path stops.
impl RequestScanner {
    /// The common case in one step, at the start of a command ([`Self::scan`] tries it
    /// first): a multibulk command whose length lines are plain digits, wholly in `buf`.
    /// Returns where it starts and ends ([`Self::args`] has its arguments). `None` when it
    /// is something else (nothing is consumed) or not whole yet (what was read is kept, and
    /// the state machine carries on from there without reading it again).
    #[inline]
    fn scan_whole(&mut self, buf: &[u8]) -> Option<(usize, usize)> {
        let start = self.pos;
        if self.state != State::Idle || buf.get(start) != Some(&b'*') {
            return None;
        }
        let (count, next) = self.count_line(buf, start)?;
        self.cmd_start = start;
        self.args.clear();
        self.args_inline = false;
        self.argc = count;
        self.pos = next;
        let remaining = self.whole_args(buf, count);
        if remaining > 0 {
            self.state = State::Args { remaining };
            return None;
        }
        Some((start, self.pos))
    }

    /// The fast path: take the arguments that are wholly in `buf` and ordinary (a plain
    /// length under the stream threshold), without a state change per argument. Stops at the
    /// first argument that is not, and leaves it to the general path, which handles partial
    /// input, streaming and errors. Returns how many arguments remain.
    #[inline]
    fn whole_args(&mut self, buf: &[u8], remaining: u64) -> u64 {
        let (longest, buffered_limit) = (
            self.one_step.longest_arg,
            self.buffered_limit(self.cmd_start),
        );
        let args = &mut self.args;
        let (pos, remaining) =
            walk_args(buf, self.pos, remaining, longest, buffered_limit, |arg| {
                args.push(arg)
            });
        self.pos = pos;
        self.line_search = 0;
        remaining
    }

    /// The next command, looked at without being taken, for a caller that forwards runs of
    /// commands knowing only their names: its start, its name's position and where its
    /// other arguments begin. `None` unless it is one [`Self::scan`] reads in one step and
    /// its name is whole in `buf`.
    #[inline]
    pub fn skim(&self, buf: &[u8]) -> Option<Skimmed> {
        let start = self.pos;
        if self.state != State::Idle {
            return None;
        }
        let (count, at) = self.count_line(buf, start)?;
        let (len, body) = length_line(buf, at, b'$')?;
        let end = body + len as usize + 2;
        // As for the other arguments (`walk_args`), the name must end by the point where
        // the rest of a command is streamed.
        let within = buf.len().min(self.buffered_limit(start));
        if len > self.one_step.longest_arg || end > within {
            return None;
        }
        Some(Skimmed {
            start,
            name: body..body + len as usize,
            rest: end,
            remaining: count - 1,
        })
    }

    /// Where the command [`Self::skim`] found ends, if the rest of it is whole in `buf` and
    /// read in one step (the same arguments [`Self::scan`] would take in one step).
    /// Always inlined: the request run's loop calls it for every command it forwards.
    #[inline(always)]
    pub fn skim_end(&self, buf: &[u8], skimmed: &Skimmed) -> Option<usize> {
        let (longest, buffered_limit) = self.rest_bounds(skimmed);
        let (end, remaining) = walk_args(
            buf,
            skimmed.rest,
            skimmed.remaining,
            longest,
            buffered_limit,
            |_| {},
        );
        (remaining == 0).then_some(end)
    }

    /// The bounds [`walk_args`] keeps to after a skimmed command's name: the longest
    /// argument, and where the one-step path's arguments must end.
    #[inline(always)]
    fn rest_bounds(&self, skimmed: &Skimmed) -> (u64, usize) {
        (
            self.one_step.longest_arg,
            self.buffered_limit(skimmed.start),
        )
    }

    /// The count line `*<n>` of a command starting at `start`, if the one-step path reads
    /// it: the count (1 to the most arguments it takes) and where the arguments begin.
    #[inline(always)]
    fn count_line(&self, buf: &[u8], start: usize) -> Option<(u64, usize)> {
        let (count, next) = length_line(buf, start, b'*')?;
        (count != 0 && count <= self.one_step.max_args).then_some((count, next))
    }

    /// Where the buffered part of a command starting at `start` ends: the general path
    /// streams the rest of a command from the first argument starting past it, and the
    /// one-step path takes only arguments ending by it.
    #[inline(always)]
    fn buffered_limit(&self, start: usize) -> usize {
        start.saturating_add(self.limits.max_buffered_command)
    }

    /// Take the skimmed commands up to `end` as read: the next scan starts there. Their
    /// arguments are not recorded ([`Self::args`] is left empty).
    #[inline]
    pub fn take_skimmed(&mut self, end: usize) {
        debug_assert!(self.state == State::Idle && end >= self.pos);
        self.pos = end;
        self.line_search = 0;
        self.args.clear();
    }

    /// Take the command [`Self::skim`] found as [`Self::scan`] would, its arguments in
    /// [`Self::args`]: where it ends, if all of it is whole in `buf` and read in one step.
    /// `None`, and nothing taken, otherwise (the next scan reads it afresh).
    #[inline]
    pub fn take_whole(&mut self, buf: &[u8], skimmed: &Skimmed) -> Option<usize> {
        let (longest, buffered_limit) = self.rest_bounds(skimmed);
        let args = &mut self.args;
        args.clear();
        args.push(skimmed.name.clone());
        let (rest, remaining) = (skimmed.rest, skimmed.remaining);
        let (end, remaining) = walk_args(buf, rest, remaining, longest, buffered_limit, |arg| {
            args.push(arg)
        });
        if remaining > 0 {
            self.args.clear();
            return None;
        }
        self.cmd_start = skimmed.start;
        self.argc = skimmed.remaining + 1;
        self.args_inline = false;
        self.pos = end;
        self.line_search = 0;
        Some(end)
    }
}

/// A command [`RequestScanner::skim`] found and has not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skimmed {
    /// Where the command starts.
    pub start: usize,
    /// Its name (argument 0).
    pub name: Range<usize>,
    /// Where its next argument starts.
    rest: usize,
    /// Arguments after the name.
    remaining: u64,
}

/// The bounds of the one-step path ([`RequestScanner::scan_whole`] and
/// [`RequestScanner::skim`]): the limits, tightened while the client has not
/// authenticated. Worked out when they change, not per command.
#[derive(Debug, Clone, Copy)]
struct OneStep {
    /// Most arguments in one command.
    max_args: u64,
    /// Longest argument (a longer one is streamed, or refused, by the general path).
    longest_arg: u64,
}

impl OneStep {
    fn of(limits: &Limits, unauthenticated: bool) -> Self {
        let mut max_args = limits.max_args.min(i32::MAX as u64);
        let mut longest_arg = limits.stream_threshold.min(limits.max_bulk_len);
        if unauthenticated {
            max_args = max_args.min(UNAUTHENTICATED_MAX_ARGS);
            longest_arg = longest_arg.min(UNAUTHENTICATED_MAX_BULK_LEN);
        }
        OneStep {
            max_args,
            longest_arg,
        }
    }
}

/// Walk the arguments from `pos` that are whole in `buf` and ordinary (a plain length up to
/// `longest`, ending by `buffered_limit`), handing each one's position to `each`; stops at the
/// first that is not. Returns where it stopped and how many of `remaining` are left.
///
/// Arguments are read from a slice that shrinks past each, so an argument costs a test of
/// its length line's window and one of its end. An argument that ends by `buffered_limit`
/// starts before it; one that starts by it and ends past it is left to the general path,
/// which buffers it (as it buffers every argument starting by that point) and streams the
/// rest: one bound stands for the two tests an argument needs.
#[inline(always)]
fn walk_args(
    buf: &[u8],
    pos: usize,
    mut remaining: u64,
    longest: u64,
    buffered_limit: usize,
    mut each: impl FnMut(Range<usize>),
) -> (usize, u64) {
    let within = &buf[..buf.len().min(buffered_limit)];
    let Some(mut rest) = within.get(pos..) else {
        return (pos, remaining);
    };
    while remaining > 0 {
        let Some((len, used)) = bulk_line(rest) else {
            break;
        };
        if len > longest {
            break;
        }
        let Some(after) = rest.get(used + len as usize + 2..) else {
            break;
        };
        let body = within.len() - rest.len() + used;
        each(body..body + len as usize);
        rest = after;
        remaining -= 1;
    }
    (within.len() - rest.len(), remaining)
}

/// A bulk length line `$<n>\r` at the front of `rest`, read as [`super::length`] reads
/// the number: the length and the bytes the line takes. Away from the end of the buffer a
/// line of up to six digits is read as one word, with no bounds check or branch per digit;
/// anything else goes byte by byte.
#[inline(always)]
fn bulk_line(rest: &[u8]) -> Option<(u64, usize)> {
    length_line_at_front(rest, b'$')
}

/// Redis's `string2ll` on a length line: an optional `-`, digits, no spaces, no `+`, no
/// leading zero (so no `-0` either).
pub(crate) fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let leading_zero = digits.first() == Some(&b'0') && (digits.len() > 1 || neg);
    if digits.is_empty() || digits.len() > 19 || leading_zero {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

/// Index of the first `needle` in `hay`. The standard library's search compiles to a
/// vectorised loop; a dedicated crate measured no faster on lines this short.
#[inline]
pub(crate) fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Split an inline command the way Redis's `sdssplitargs` does: words separated by
/// whitespace, with "double quotes" (supporting \n \r \t \b \a \\ \" and \xHH escapes)
/// and 'single quotes' (supporting \'). Arguments are written unescaped into `out`.
fn split_inline_args(
    line: &[u8],
    out: &mut Vec<u8>,
    args: &mut Vec<Range<usize>>,
) -> Result<(), ()> {
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Ok(());
        }
        let start = out.len();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i >= line.len() {
                    return Err(());
                }
                let c = line[i];
                if c == b'\\'
                    && i + 3 < line.len()
                    && line[i + 1] == b'x'
                    && line[i + 2].is_ascii_hexdigit()
                    && line[i + 3].is_ascii_hexdigit()
                {
                    out.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                    i += 3;
                } else if c == b'\\' && i + 1 < line.len() {
                    i += 1;
                    out.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    // A closing quote must be followed by a space or the end.
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return Err(());
                    }
                    i += 1;
                    break;
                } else {
                    out.push(c);
                }
            } else if in_sq {
                if i >= line.len() {
                    return Err(());
                }
                let c = line[i];
                if c == b'\\' && i + 1 < line.len() && line[i + 1] == b'\'' {
                    i += 1;
                    out.push(b'\'');
                } else if c == b'\'' {
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return Err(());
                    }
                    i += 1;
                    break;
                } else {
                    out.push(c);
                }
            } else {
                if i >= line.len() {
                    break;
                }
                match line[i] {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => {
                        i += 1;
                        break;
                    }
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => out.push(c),
                }
            }
            i += 1;
        }
        args.push(start..out.len());
    }
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

/// Rewrite the unescaped inline arguments held in `raw` into multibulk form in place,
/// updating `args` to point at the arguments inside the encoding.
fn encode_inline_as_multibulk(raw: &mut Vec<u8>, args: &mut [Range<usize>]) {
    let plain = std::mem::take(raw);
    crate::resp::array_header(raw, args.len());
    for a in args.iter_mut() {
        crate::resp::bulk_header(raw, a.len());
        let start = raw.len();
        raw.extend_from_slice(&plain[a.clone()]);
        *a = start..raw.len();
        raw.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn integers_are_read_as_redis_string2ll_reads_them() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"9"), Some(9));
        assert_eq!(parse_int(b"-15"), Some(-15));
        for bad in [
            &b""[..],
            b"09",
            b"00",
            b"+9",
            b"-0",
            b"-",
            b" 9",
            b"9 ",
            b"1e1",
            b"x",
        ] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }

    use super::*;

    fn scan_all(input: &[u8], limits: Limits) -> Vec<Result<Vec<Vec<u8>>, ProtocolError>> {
        let mut s = RequestScanner::new(limits);
        let mut out = Vec::new();
        loop {
            match s.scan(input) {
                Step::Incomplete => return out,
                Step::Command { inline, .. } => {
                    let src: &[u8] = if inline { s.inline_bytes() } else { input };
                    out.push(Ok(s
                        .args()
                        .iter()
                        .map(|r| src[r.clone()].to_vec())
                        .collect()));
                }
                Step::Empty { .. } => {}
                Step::Streaming { .. } => panic!("unexpected streaming"),
                Step::Error(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    fn words(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    /// Commands (start, end, arguments) found by feeding `input` in pieces of `piece`
    /// bytes.
    fn boundaries(input: &[u8], piece: usize) -> Vec<(usize, usize, Vec<Vec<u8>>)> {
        let mut s = RequestScanner::new(Limits::default());
        let mut out = Vec::new();
        let mut fed = 0;
        while fed < input.len() {
            fed = (fed + piece).min(input.len());
            let buf = &input[..fed];
            loop {
                let (start, end) = match s.scan(buf) {
                    Step::Command { start, end, .. } => (start, end),
                    Step::Empty { .. } => continue,
                    Step::Incomplete => break,
                    other => panic!("{other:?}"),
                };
                let args = s.args().iter().map(|r| buf[r.clone()].to_vec()).collect();
                out.push((start, end, args));
            }
        }
        out
    }

    #[test]
    fn commands_are_found_alike_in_one_step_and_piece_by_piece() {
        // Whole, each command is read in one step; cut, from where the one step stopped.
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\n*0\r\n*-1\r\n\
            *1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$0\r\n\r\n*2\r\n$3\r\nGET\r\n$12\r\nabcdefghijkl\r\n";
        let expected = vec![
            (0, 37, words(&["SET", "k", "0123456789"])),
            (46, 60, words(&["PING"])),
            (60, 79, words(&["GET", ""])),
            (79, 111, words(&["GET", "abcdefghijkl"])),
        ];
        for piece in 1..=input.len() {
            assert_eq!(boundaries(input, piece), expected, "pieces of {piece}");
        }
    }

    #[test]
    fn a_bulk_line_reads_alike_from_the_window_and_near_the_end_of_the_buffer() {
        let lines: [&[u8]; 10] = [
            b"$0\r\n",
            b"$7\r\n",
            b"$123456789012345678\r\n",
            b"$1234567890123456789\r\n",
            b"$01\r\n",
            b"$\r\n",
            b"$-1\r\n",
            b"$12x\r\n",
            b"*3\r\n",
            b"$5\r",
        ];
        for line in lines {
            let near_end = line;
            let mut padded = line.to_vec();
            padded.extend_from_slice(&[b'z'; 32]);
            let plain = |buf: &[u8]| (buf[0] == b'$').then(|| plain_number(buf, 1)).flatten();
            assert_eq!(bulk_line(&padded), plain(&padded), "{line:?}");
            assert_eq!(bulk_line(near_end), plain(near_end), "{line:?}");
        }
    }

    #[test]
    fn every_length_line_reads_alike_from_the_window_and_byte_by_byte() {
        let plain = |buf: &[u8]| (buf[0] == b'$').then(|| plain_number(buf, 1)).flatten();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for n in (0..20_000u64)
            .chain((0..64).map(|k| 1u64 << k))
            .chain([9_999_999, 99_999_999])
        {
            lines.push(format!("${n}\r\n").into_bytes());
            lines.push(format!("$0{n}\r\n").into_bytes());
            lines.push(format!("${n}x\r\n").into_bytes());
        }
        for odd in [b'/', b':', b' ', b'-', 0x80, 0xff, 0x00, b'\n'] {
            for at in 1..10 {
                let mut line = b"$123456789\r\n".to_vec();
                line[at] = odd;
                lines.push(line);
            }
        }
        for line in &lines {
            let mut padded = line.clone();
            padded.extend_from_slice(&[b'7'; 20]);
            assert_eq!(
                bulk_line(&padded),
                plain(&padded),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// The multibulk encoding of `args`.
    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn an_argument_ending_at_the_buffers_end_is_read_in_one_step() {
        // Short last arguments put their length line's nine-byte window past the end.
        for n in (0..=12).chain([99, 100, 999, 1000]) {
            let value = vec![b'v'; n];
            let cmd = encode(&[b"SET", b"k", &value]);
            let whole = vec![b"SET".to_vec(), b"k".to_vec(), value.clone()];
            let args_of = |s: &RequestScanner| -> Vec<Vec<u8>> {
                s.args().iter().map(|r| cmd[r.clone()].to_vec()).collect()
            };
            let mut s = RequestScanner::new(Limits::default());
            assert_eq!(s.scan_whole(&cmd), Some((0, cmd.len())), "{n}");
            assert_eq!(args_of(&s), whole);
            let mut s = RequestScanner::new(Limits::default());
            let skimmed = s.skim(&cmd).expect("skimmed");
            assert_eq!(s.skim_end(&cmd, &skimmed), Some(cmd.len()), "{n}");
            assert_eq!(s.take_whole(&cmd, &skimmed), Some(cmd.len()), "{n}");
            assert_eq!(args_of(&s), whole);
            // One byte short, nothing is whole.
            let cut = &cmd[..cmd.len() - 1];
            let mut s = RequestScanner::new(Limits::default());
            let skimmed = s.skim(cut).expect("the name is whole");
            assert_eq!(s.skim_end(cut, &skimmed), None, "{n}");
            assert_eq!(s.take_whole(cut, &skimmed), None, "{n}");
            assert_eq!(s.scan(cut), Step::Incomplete, "{n}");
        }
    }

    #[test]
    fn the_buffered_part_of_a_command_ends_where_the_general_scan_ends_it() {
        // Arguments start at 4, 13, 20 and 37; the command ends at 44.
        let cmd = encode(&[b"SET", b"k", b"0123456789", b"x"]);
        let starts = [4, 13, 20, 37];
        for max_buffered_command in 0..=50 {
            let limits = Limits {
                max_buffered_command,
                ..Limits::default()
            };
            // Every argument starting by the limit is buffered, the rest streamed.
            let buffered = starts.iter().filter(|&&at| at <= max_buffered_command);
            let expected = match buffered.count() {
                4 => Step::Command {
                    start: 0,
                    end: cmd.len(),
                    inline: false,
                },
                k => Step::Streaming {
                    start: 0,
                    head_end: starts[k],
                    argc: 4,
                    next_len: None,
                },
            };
            let mut s = RequestScanner::new(limits);
            let step = s.scan(&cmd);
            assert_eq!(step, expected, "limit {max_buffered_command}");
            let k = starts
                .iter()
                .filter(|&&at| at <= max_buffered_command)
                .count();
            assert_eq!(s.args().len(), k, "limit {max_buffered_command}");
            // A skim reads the command in one step only when the scan takes it whole.
            let mut s = RequestScanner::new(limits);
            if let Some(skimmed) = s.skim(&cmd) {
                let end = s.skim_end(&cmd, &skimmed);
                assert_eq!(s.take_whole(&cmd, &skimmed), end);
                if end.is_some() {
                    assert_eq!(end, Some(cmd.len()));
                    assert_eq!(k, 4, "limit {max_buffered_command}");
                }
            }
        }
    }

    #[test]
    fn the_one_step_scan_leaves_anything_unusual_to_the_general_scan() {
        let limits = Limits {
            max_args: 2,
            ..Limits::default()
        };
        for input in [
            &b"PING\r\n"[..],
            b"*-1\r\n",
            b"*0\r\n",
            b"*3\r\n$3\r\nSET\r\n",
            b"*01\r\n$4\r\nPING\r\n",
            b"*1\r\n$04\r\nPING\r\n",
            b"*1\r\n$-4\r\nPING\r\n",
        ] {
            let mut s = RequestScanner::new(limits);
            assert_eq!(s.scan_whole(input), None, "{input:?}");
        }
        let mut s = RequestScanner::new(limits);
        s.set_unauthenticated(true);
        assert_eq!(
            s.scan_whole(b"*2\r\n$4\r\nAUTH\r\n$1\r\np\r\n"),
            Some((0, 21))
        );
    }

    #[test]
    fn multibulk_and_inline_commands() {
        let got = scan_all(
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nSET a \"b c\" 'd'\r\nPING\n",
            Limits::default(),
        );
        assert_eq!(
            got,
            vec![
                Ok(words(&["GET", "k"])),
                Ok(words(&["SET", "a", "b c", "d"])),
                Ok(words(&["PING"]))
            ]
        );
    }

    #[test]
    fn unauthenticated_clients_get_redis_tighter_bounds() {
        let unauthenticated = |input: &[u8]| {
            let mut s = RequestScanner::new(Limits::default());
            s.set_unauthenticated(true);
            s.scan(input)
        };
        let ten = b"*10\r\n$4\r\nPING\r\n";
        assert_eq!(unauthenticated(ten), Step::Incomplete);
        assert_eq!(
            unauthenticated(b"*11\r\n"),
            Step::Error(ProtocolError::UnauthenticatedMultibulkLength)
        );
        let mut arg = b"*2\r\n$4\r\nAUTH\r\n$16384\r\n".to_vec();
        arg.extend(std::iter::repeat_n(b'x', 16384));
        arg.extend(b"\r\n");
        assert!(matches!(unauthenticated(&arg), Step::Command { .. }));
        assert_eq!(
            unauthenticated(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n"),
            Step::Error(ProtocolError::UnauthenticatedBulkLength)
        );
        // Once authenticated, the ordinary bounds again.
        let mut s = RequestScanner::new(Limits::default());
        s.set_unauthenticated(true);
        s.set_unauthenticated(false);
        assert_eq!(s.scan(b"*11\r\n"), Step::Incomplete);
    }

    #[test]
    fn inline_escapes_and_encoding() {
        let mut s = RequestScanner::new(Limits::default());
        let input = b"set \"a\\x41\\n\" x\r\n";
        assert!(matches!(s.scan(input), Step::Command { inline: true, .. }));
        assert_eq!(
            s.inline_bytes(),
            b"*3\r\n$3\r\nset\r\n$3\r\naA\n\r\n$1\r\nx\r\n"
        );
    }

    #[test]
    fn every_split_point_gives_the_same_commands() {
        let input: &[u8] =
            b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
        let whole = scan_all(input, Limits::default());
        for cut in 0..input.len() {
            let mut s = RequestScanner::new(Limits::default());
            let mut got = Vec::new();
            for end in [cut, input.len()] {
                loop {
                    match s.scan(&input[..end]) {
                        Step::Incomplete => break,
                        Step::Command { inline, .. } => {
                            let src: &[u8] = if inline { s.inline_bytes() } else { input };
                            got.push(Ok(s
                                .args()
                                .iter()
                                .map(|r| src[r.clone()].to_vec())
                                .collect()));
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            assert_eq!(got, whole, "split at {cut}");
        }
    }

    #[test]
    fn redis_protocol_errors() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*x\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*1\r\n+3\r\n", ProtocolError::ExpectedDollar('+')),
            (b"*1\r\n$-3\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$99999999999\r\n", ProtocolError::InvalidBulkLength),
            (b"*3000000000\r\n", ProtocolError::InvalidMultibulkLength),
            (b"SET \"a\r\n", ProtocolError::UnbalancedQuotes),
        ];
        for (input, err) in cases {
            assert_eq!(
                scan_all(input, Limits::default()),
                vec![Err(err.clone())],
                "{input:?}"
            );
        }
    }

    #[test]
    fn overlong_lines_are_refused_without_a_terminator() {
        let limits = Limits::default();
        let inline = vec![b'a'; limits.max_inline_len + 1];
        assert_eq!(
            scan_all(&inline, limits),
            vec![Err(ProtocolError::InlineTooBig)]
        );
        let mut count = b"*".to_vec();
        count.extend(std::iter::repeat_n(b'1', limits.max_inline_len + 1));
        assert_eq!(
            scan_all(&count, limits),
            vec![Err(ProtocolError::CountLineTooBig)]
        );
    }

    #[test]
    fn empty_commands_are_skipped() {
        let mut s = RequestScanner::new(Limits::default());
        assert_eq!(s.scan(b"*0\r\n"), Step::Empty { end: 4 });
        let mut s = RequestScanner::new(Limits::default());
        assert_eq!(s.scan(b"  \r\n"), Step::Empty { end: 4 });
    }

    #[test]
    fn large_argument_streams_in_chunks() {
        let limits = Limits {
            stream_threshold: 8,
            ..Limits::default()
        };
        let mut s = RequestScanner::new(limits);
        let head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20\r\n";
        let step = s.scan(head);
        assert_eq!(
            step,
            Step::Streaming {
                start: 0,
                head_end: head.len(),
                argc: 3,
                next_len: Some(20)
            }
        );
        assert_eq!(s.args().len(), 2);
        assert_eq!(s.stream(&[b'x'; 15], 0), StreamStep::More(15));
        assert_eq!(s.stream(b"xxxxx\r\nPING\r\n", 0), StreamStep::Done(7));
        assert!(!s.in_command());
    }

    #[test]
    fn streamed_command_with_trailing_arguments() {
        let limits = Limits {
            stream_threshold: 4,
            ..Limits::default()
        };
        let mut s = RequestScanner::new(limits);
        let input = b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\nvvvvvv\r\n$2\r\nPX\r\n$3\r\n100\r\n";
        let Step::Streaming { head_end, .. } = s.scan(input) else {
            panic!()
        };
        // Feed the rest one byte at a time, keeping what the scanner did not consume.
        let rest = &input[head_end..];
        let mut pending: Vec<u8> = Vec::new();
        let mut done = false;
        for &b in rest {
            pending.push(b);
            match s.stream(&pending, 0) {
                StreamStep::More(n) => {
                    pending.drain(..n);
                }
                StreamStep::Done(n) => {
                    pending.drain(..n);
                    done = true;
                }
                StreamStep::Error(e) => panic!("{e}"),
            }
        }
        assert!(done);
        assert!(pending.is_empty());
    }

    #[test]
    fn buffered_command_limit_switches_to_streaming() {
        let limits = Limits {
            max_buffered_command: 32,
            ..Limits::default()
        };
        let mut s = RequestScanner::new(limits);
        let mut input = b"*100\r\n".to_vec();
        for _ in 0..100 {
            input.extend_from_slice(b"$3\r\nabc\r\n");
        }
        match s.scan(&input) {
            Step::Streaming {
                next_len: None,
                argc: 100,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        assert!(s.args().len() < 10);
    }

    #[test]
    fn rebase_keeps_a_partial_command_valid() {
        let mut s = RequestScanner::new(Limits::default());
        let mut buf = b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n".to_vec();
        let Step::Command { end, .. } = s.scan(&buf) else {
            panic!()
        };
        assert_eq!(s.scan(&buf), Step::Incomplete);
        buf.drain(..end);
        s.rebase(end);
        buf.extend_from_slice(b"$1\r\nk\r\n");
        let Step::Command { start, .. } = s.scan(&buf) else {
            panic!()
        };
        assert_eq!(start, 0);
        assert_eq!(&buf[s.args()[1].clone()], b"k");
    }
}
