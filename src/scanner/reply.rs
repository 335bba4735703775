//! The reply scanner: finds where each reply from Redis ends.
//!
//! It knows every RESP2 and RESP3 type: simple strings, errors, integers, bulk strings,
//! arrays, and RESP3's null, boolean, double, big number, bulk error, verbatim string, map,
//! set, attribute and push, plus streamed strings (`$?` with `;` chunks) and streamed
//! aggregates (`*?` ... `.`). An attribute belongs to the reply that follows it.
//!
//! Like the request scanner it is resumable and never looks at a byte twice. A bulk payload
//! is skipped by count, so the scanner can move past the end of the buffer in the middle of
//! a large value: the caller forwards what was scanned and drops it, and a 256 MiB reply
//! passes through without being held.
//!
//! Nesting costs bytes, not frames: only the innermost aggregate is held whole, and the ones
//! around it are packed a byte or so each, so the deepest reply Redis can send (about 8,000
//! levels) is followed, up to [`MAX_DEPTH`].
//!
//! For each reply it records a little about its shape ([`ReplyInfo`]): what the session
//! needs to follow pub/sub confirmations and RESET without parsing the reply again.

/// The most aggregates one reply may nest. Redis's deepest reply is a Lua script returning
/// a table that contains itself: about 8,000 levels, where Lua's stack ends. Levels cost a
/// byte each while their aggregates have fewer than 32 elements left, and at most 9 bytes.
pub const MAX_DEPTH: usize = 1 << 18;

/// The most elements an aggregate may declare (a map counts its keys and values): far more
/// than any Redis holds, and small enough to pack into a level's bytes.
const MAX_COUNT: u64 = 1 << 60;

/// Bytes of packed levels kept between replies; a deeper reply's are given back when it ends.
const KEEP_NESTING_BYTES: usize = 4 * 1024;

/// The longest line [`ReplyScanner::skip_plain_reply`] looks at.
const SKIP_LINE: usize = 32;

/// Malformed reply bytes: the upstream is not speaking RESP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("unexpected byte {0:#04x} at the start of a reply")]
    UnknownType(u8),
    #[error("invalid length line in a reply")]
    InvalidLength,
    #[error("reply nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("reply line longer than {0} bytes")]
    LineTooLong(usize),
}

/// The top-level type of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyKind {
    /// Anything that is not one of the kinds below.
    #[default]
    Other,
    /// `-` or `!`.
    Error,
    /// `+`.
    Simple,
    /// `*`.
    Array,
    /// `>`: out of band in RESP3 (pub/sub messages, invalidations, confirmations).
    Push,
}

/// What the scanner noticed about one complete reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplyInfo {
    /// The top-level type.
    pub kind: ReplyKind,
    /// Up to 16 bytes of the first element of a top-level aggregate (when it is a short
    /// string), or of a top-level simple string; `first_len` is its true length.
    pub first: [u8; 16],
    /// True length of that first string, or `usize::MAX` when there is none.
    pub first_len: usize,
    /// A top-level integer, or the last integer seen directly inside a top-level aggregate.
    pub last_int: Option<i64>,
}

impl ReplyInfo {
    /// The first string, if it was short enough to keep.
    pub fn first_str(&self) -> Option<&[u8]> {
        (self.first_len <= self.first.len()).then(|| &self.first[..self.first_len])
    }
}

/// One level of nesting: the aggregate being scanned at that depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// An aggregate with `n` children still to come.
    Counted(u64),
    /// A streamed aggregate, ended by `.`.
    Streamed,
    /// An attribute with `n` keys and values still to come; it annotates the value that
    /// follows it and is not itself one of its parent's elements.
    Attribute(u64),
}

impl Frame {
    /// The frame as one number: the count above two bits of kind (counts are below
    /// [`MAX_COUNT`], so it fits).
    fn pack(self) -> u64 {
        match self {
            Frame::Counted(n) => n << 2,
            Frame::Streamed => 1,
            Frame::Attribute(n) => (n << 2) | 2,
        }
    }

    fn unpack(v: u64) -> Frame {
        match v & 3 {
            0 => Frame::Counted(v >> 2),
            1 => Frame::Streamed,
            _ => Frame::Attribute(v >> 2),
        }
    }
}

/// The aggregates enclosing the scan position. The innermost is kept as a [`Frame`], since
/// every value ending touches it; the ones around it wait packed in `outer`, each as 7-bit
/// groups (least significant first, the first byte of a level marked by its high bit), so a
/// level costs one byte while its aggregate has fewer than 32 elements left.
#[derive(Debug)]
struct Nesting {
    depth: usize,
    /// The innermost aggregate; meaningful while `depth > 0`.
    innermost: Frame,
    outer: Vec<u8>,
}

impl Nesting {
    fn new() -> Self {
        Nesting {
            depth: 0,
            innermost: Frame::Streamed,
            outer: Vec::with_capacity(16),
        }
    }

    /// The innermost aggregate, if any.
    fn top(&self) -> Option<Frame> {
        (self.depth > 0).then_some(self.innermost)
    }

    /// Enter an aggregate, refusing to go deeper than [`MAX_DEPTH`].
    fn push(&mut self, frame: Frame) -> Result<(), ReplyError> {
        if self.depth >= MAX_DEPTH {
            return Err(ReplyError::TooDeep);
        }
        if self.depth > 0 {
            let mut v = self.innermost.pack();
            self.outer.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
            while v > 0 {
                self.outer.push((v & 0x7f) as u8);
                v >>= 7;
            }
        }
        self.innermost = frame;
        self.depth += 1;
        Ok(())
    }

    /// Leave the innermost aggregate; the one around it becomes the innermost.
    fn pop(&mut self) {
        self.depth -= 1;
        if self.depth == 0 {
            return;
        }
        let mut v = 0u64;
        while let Some(b) = self.outer.pop() {
            v = (v << 7) | u64::from(b & 0x7f);
            if b & 0x80 != 0 {
                break;
            }
        }
        self.innermost = Frame::unpack(v);
    }

    /// Between replies: give back the memory of an unusually deep one.
    fn reset(&mut self) {
        debug_assert_eq!(self.depth, 0);
        if self.outer.capacity() > KEEP_NESTING_BYTES {
            self.outer = Vec::with_capacity(16);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the type byte of a value.
    Value,
    /// Skipping `n` payload bytes plus the terminator.
    Payload(u64),
    /// Inside a streamed string, expecting a `;len` chunk header.
    Chunk,
    /// Skipping a streamed string's chunk payload.
    ChunkPayload(u64),
}

/// What one call to [`ReplyScanner::scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStep {
    /// A reply ends at this offset; [`ReplyScanner::info`] describes it.
    Done(usize),
    /// Everything up to this offset belongs to a reply that has not ended yet (the offset
    /// may be past the end of the buffer's bytes only when it equals the buffer length).
    Partial(usize),
    /// With [`ReplyScanner::report_elements`] on: the header of a top-level aggregate of
    /// `count` elements ends at this offset.
    Header { end: usize, count: u64 },
    /// With [`ReplyScanner::report_elements`] on: an element of the top-level aggregate
    /// (not its last, which ends with `Done`) ends at this offset.
    Element(usize),
}

/// The resumable reply scanner; one per upstream connection.
#[derive(Debug)]
pub struct ReplyScanner {
    nesting: Nesting,
    state: State,
    pos: usize,
    /// What is known so far of the reply being scanned.
    current: ReplyInfo,
    /// The last complete reply's facts.
    info: ReplyInfo,
    /// True once the reply being scanned has begun.
    started: bool,
    /// Index of the element being scanned at depth 1 (for [`ReplyInfo::first`]).
    depth1_index: u64,
    /// Bytes of the first element copied so far, while its payload is being skipped.
    capturing: Option<usize>,
    /// Where to resume looking for the end of a line, so a long line is searched once.
    line_search: usize,
    max_line: usize,
    /// Report the header and elements of the next top-level aggregate.
    elements: bool,
    /// Set when an element of the top-level aggregate just ended (element mode).
    element_end: Option<usize>,
}

impl Default for ReplyScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyScanner {
    /// A scanner at the start of a reply stream.
    pub fn new() -> Self {
        ReplyScanner {
            nesting: Nesting::new(),
            state: State::Value,
            pos: 0,
            current: empty_info(),
            info: empty_info(),
            started: false,
            depth1_index: 0,
            capturing: None,
            line_search: 0,
            max_line: 64 * 1024,
            elements: false,
            element_end: None,
        }
    }

    /// Report the header and each element of the next top-level aggregate reply (for a
    /// reply the session rewrites element by element, such as EXEC's). Turned off again when
    /// that reply ends.
    pub fn report_elements(&mut self, on: bool) {
        self.elements = on;
    }

    /// Facts about the last complete reply.
    pub fn info(&self) -> &ReplyInfo {
        &self.info
    }

    /// Shift positions left by `n`: the caller dropped `n` scanned bytes from its buffer.
    pub fn rebase(&mut self, n: usize) {
        self.pos -= n;
        self.line_search = self.line_search.saturating_sub(n);
    }

    /// Scan on from where the last call stopped, until one reply ends or the buffer does.
    pub fn scan(&mut self, buf: &[u8]) -> Result<ReplyStep, ReplyError> {
        if self.state == State::Value && self.nesting.depth == 0 && !self.started {
            if let Some(step) = self.scan_plain(buf)? {
                return Ok(step);
            }
        }
        loop {
            if let Some(end) = self.element_end.take() {
                return Ok(ReplyStep::Element(end));
            }
            match self.state {
                State::Payload(n) | State::ChunkPayload(n) => {
                    let avail = (buf.len() - self.pos) as u64;
                    if let Some(have) = self.capturing {
                        // Copy the first element's bytes (never its terminator) as they pass.
                        let want = self.current.first_len - have;
                        let take = want.min(avail as usize);
                        self.current.first[have..have + take]
                            .copy_from_slice(&buf[self.pos..self.pos + take]);
                        self.capturing =
                            (have + take < self.current.first_len).then_some(have + take);
                    }
                    if avail < n {
                        self.state = match self.state {
                            State::Payload(_) => State::Payload(n - avail),
                            _ => State::ChunkPayload(n - avail),
                        };
                        self.pos = buf.len();
                        return Ok(ReplyStep::Partial(self.pos));
                    }
                    self.pos += n as usize;
                    if matches!(self.state, State::ChunkPayload(_)) {
                        self.state = State::Chunk;
                        continue;
                    }
                    self.state = State::Value;
                    if let Some(end) = self.value_done() {
                        return Ok(ReplyStep::Done(end));
                    }
                }
                State::Chunk => {
                    let Some((line, next)) = self.line(buf)? else {
                        return Ok(ReplyStep::Partial(self.pos));
                    };
                    if line.first() != Some(&b';') {
                        return Err(ReplyError::InvalidLength);
                    }
                    let len = parse_len(&line[1..])?;
                    self.pos = next;
                    if len == 0 {
                        self.state = State::Value;
                        if let Some(end) = self.value_done() {
                            return Ok(ReplyStep::Done(end));
                        }
                    } else {
                        self.state = State::ChunkPayload(len + 2);
                    }
                }
                State::Value => {
                    let Some((line, next)) = self.line(buf)? else {
                        return Ok(ReplyStep::Partial(self.pos));
                    };
                    let ty = line[0];
                    let body = &line[1..];
                    let top = self.nesting.depth == 0;
                    if top {
                        self.started = true;
                    }
                    let at_depth1 = self.at_depth1();
                    if top && ty != b'|' {
                        self.current.kind = match ty {
                            b'-' | b'!' => ReplyKind::Error,
                            b'+' => ReplyKind::Simple,
                            b'*' => ReplyKind::Array,
                            b'>' => ReplyKind::Push,
                            _ => ReplyKind::Other,
                        };
                    }
                    match ty {
                        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
                            if (top && ty == b'+') || (at_depth1 && self.depth1_index == 0) {
                                self.keep_first(body);
                            }
                            if (top || at_depth1) && ty == b':' {
                                self.current.last_int = crate::scanner::request::parse_int(body);
                            }
                            self.pos = next;
                            if let Some(end) = self.value_done() {
                                return Ok(ReplyStep::Done(end));
                            }
                        }
                        b'$' | b'!' | b'=' => {
                            self.pos = next;
                            if body == b"?" {
                                self.state = State::Chunk;
                                continue;
                            }
                            let len = parse_signed_len(body)?;
                            match len {
                                None => {
                                    if let Some(end) = self.value_done() {
                                        return Ok(ReplyStep::Done(end));
                                    }
                                }
                                Some(len) => {
                                    if at_depth1 && self.depth1_index == 0 && len <= 16 {
                                        self.current.first_len = len as usize;
                                        self.capturing = (len > 0).then_some(0);
                                    }
                                    self.state = State::Payload(len + 2);
                                }
                            }
                        }
                        b'*' | b'%' | b'~' | b'>' | b'|' => {
                            self.pos = next;
                            if body == b"?" {
                                self.nesting.push(Frame::Streamed)?;
                                continue;
                            }
                            let Some(n) = parse_signed_len(body)? else {
                                // A null array.
                                if let Some(end) = self.value_done() {
                                    return Ok(ReplyStep::Done(end));
                                }
                                continue;
                            };
                            let children = if matches!(ty, b'%' | b'|') { n * 2 } else { n };
                            if children >= MAX_COUNT {
                                return Err(ReplyError::InvalidLength);
                            }
                            if ty == b'|' {
                                // An empty attribute annotates nothing visible: the value
                                // it precedes is scanned next either way.
                                if children > 0 {
                                    self.nesting.push(Frame::Attribute(children))?;
                                }
                                continue;
                            }
                            if children == 0 {
                                if let Some(end) = self.value_done() {
                                    return Ok(ReplyStep::Done(end));
                                }
                                continue;
                            }
                            self.nesting.push(Frame::Counted(children))?;
                            if top && self.elements {
                                return Ok(ReplyStep::Header {
                                    end: self.pos,
                                    count: children,
                                });
                            }
                        }
                        b'.' if self.nesting.top() == Some(Frame::Streamed) => {
                            self.pos = next;
                            self.nesting.pop();
                            if let Some(end) = self.value_done() {
                                return Ok(ReplyStep::Done(end));
                            }
                        }
                        other => return Err(ReplyError::UnknownType(other)),
                    }
                }
            }
        }
    }
}

/// The common replies skipped in one step, for a caller that matches them with their
/// commands without the general path.
impl ReplyScanner {
    /// Skip a whole short reply of RESP2's plain types (a simple string, error or integer
    /// line of up to [`SKIP_LINE`] bytes, or a bulk string with a plain length) starting at
    /// the scan position: its end. For a caller that needs nothing of the reply but where
    /// it ends, so [`Self::info`] is not updated. `None`, with nothing consumed, for
    /// anything else (another type, a longer line, a reply not wholly here, a malformed
    /// one), which [`Self::scan`] then reads: of these bytes it can only read again a line
    /// of at most [`SKIP_LINE`] bytes.
    // Always inlined: the session's plain-reply loop depends on it (a call there costs
    // about 20 instructions per reply), and a shared connection's router calls it too.
    #[inline(always)]
    pub fn skip_plain_reply(&mut self, buf: &[u8]) -> Option<usize> {
        if !self.at_reply_start() {
            return None;
        }
        let at = self.pos;
        let end = match *buf.get(at)? {
            b'+' | b'-' | b':' => {
                let line = buf.get(at + 1..)?;
                let line = &line[..line.len().min(SKIP_LINE)];
                let nl = short_line_end(line).or_else(|| line.iter().position(|&b| b == b'\n'))?;
                if nl == 0 || line[nl - 1] != b'\r' {
                    return None;
                }
                at + 1 + nl + 1
            }
            // A plain length (what nearly every bulk reply has), read as requests' are; the
            // `\n` Redis always sends checked, as the general path checks it.
            b'$' if buf.get(at + 1) != Some(&b'-') => {
                let (len, body) = super::length::length_line(buf, at, b'$')?;
                if buf.get(body - 1) != Some(&b'\n') {
                    return None;
                }
                body.checked_add(usize::try_from(len).ok()?)?
                    .checked_add(2)?
            }
            b'$' => {
                let (line, body) = short_line(buf, at)?;
                match parse_signed_len(line).ok()? {
                    None => body,
                    Some(len) => body
                        .checked_add(usize::try_from(len).ok()?)?
                        .checked_add(2)?,
                }
            }
            _ => return None,
        };
        if end > buf.len() {
            return None;
        }
        self.pos = end;
        Some(end)
    }

    /// Whether the scan position is at the start of a top-level reply, where the one-step
    /// skips may read.
    #[inline(always)]
    fn at_reply_start(&self) -> bool {
        self.state == State::Value && self.nesting.depth == 0 && !self.started
    }

    /// True when the scan stands between two replies (none of the next one read yet).
    pub fn between_replies(&self) -> bool {
        self.at_reply_start()
    }

    /// An integer reply (`:<n>\r\n`, its line at most [`SKIP_LINE`] bytes) skipped as
    /// [`Self::skip_plain_reply`] skips it: where it starts and ends. Its value is read
    /// apart, by [`integer_reply_info`], only for the reply a caller needs it of. `None`,
    /// and nothing consumed, for any other reply.
    #[inline(always)]
    pub fn skip_integer_reply(&mut self, buf: &[u8]) -> Option<(usize, usize)> {
        let start = self.pos;
        if buf.get(start) != Some(&b':') {
            return None;
        }
        Some((start, self.skip_plain_reply(buf)?))
    }
}

/// What the general path notes of the integer reply at `at` (whole in `buf`, as
/// [`ReplyScanner::skip_integer_reply`] found it): its value in `last_int`.
pub fn integer_reply_info(buf: &[u8], at: usize) -> ReplyInfo {
    let last_int = match plain_integer_line(buf, at) {
        Some((n, _)) => Some(n),
        None => short_line(buf, at).and_then(|(line, _)| crate::scanner::request::parse_int(line)),
    };
    ReplyInfo {
        last_int,
        ..empty_info()
    }
}

/// The general scan's first step, and its helpers.
impl ReplyScanner {
    /// The common reply, read in one step: a simple string, error, integer or bulk string
    /// (RESP2's types) at the start of a reply. `None` hands the reply to the general path,
    /// left where it would have been (a bulk string's payload still to come, or nothing read
    /// for any other type), so no byte is looked at twice.
    #[inline]
    fn scan_plain(&mut self, buf: &[u8]) -> Result<Option<ReplyStep>, ReplyError> {
        let ty = match buf.get(self.pos) {
            Some(&ty @ (b'+' | b'-' | b':' | b'$')) => ty,
            _ => return Ok(None),
        };
        let Some((line, next)) = self.line(buf)? else {
            return Ok(Some(ReplyStep::Partial(self.pos)));
        };
        let body = &line[1..];
        match ty {
            b'+' => {
                self.current.kind = ReplyKind::Simple;
                self.keep_first(body);
            }
            b'-' => self.current.kind = ReplyKind::Error,
            b':' => self.current.last_int = crate::scanner::request::parse_int(body),
            _ if body == b"?" => {
                // A streamed string: the general path reads its line again (two bytes).
                self.line_search = 0;
                return Ok(None);
            }
            _ => {
                if let Some(len) = parse_signed_len(body)? {
                    let end = next as u64 + len + 2;
                    if end > buf.len() as u64 {
                        self.started = true;
                        self.pos = next;
                        self.state = State::Payload(len + 2);
                        return Ok(None);
                    }
                    self.pos = end as usize;
                    return Ok(self.finish().map(ReplyStep::Done));
                }
            }
        }
        self.pos = next;
        Ok(self.finish().map(ReplyStep::Done))
    }

    fn at_depth1(&self) -> bool {
        self.nesting.depth == 1 && !matches!(self.nesting.innermost, Frame::Attribute(_))
    }

    fn keep_first(&mut self, s: &[u8]) {
        self.current.first_len = s.len();
        let n = s.len().min(16);
        self.current.first[..n].copy_from_slice(&s[..n]);
        if s.len() > 16 {
            self.current.first_len = usize::MAX;
        }
    }

    /// A value just ended: count it against its parent, closing finished aggregates.
    /// Returns the end offset when a whole top-level reply is complete. In element mode, the
    /// end of an element of the top-level aggregate is noted for `scan` to report.
    fn value_done(&mut self) -> Option<usize> {
        loop {
            let element = self.at_depth1();
            if element {
                self.depth1_index += 1;
            }
            if self.nesting.depth == 0 {
                return self.finish();
            }
            match &mut self.nesting.innermost {
                Frame::Streamed => {
                    if element && self.elements {
                        self.element_end = Some(self.pos);
                    }
                    return None;
                }
                Frame::Counted(n) | Frame::Attribute(n) => {
                    *n -= 1;
                    if *n > 0 {
                        if element && self.elements {
                            self.element_end = Some(self.pos);
                        }
                        return None;
                    }
                    let was_attribute = matches!(self.nesting.innermost, Frame::Attribute(_));
                    self.nesting.pop();
                    if was_attribute {
                        // The attribute is over; the value it annotates comes next.
                        return None;
                    }
                }
            }
        }
    }

    fn finish(&mut self) -> Option<usize> {
        let end = self.pos;
        self.elements = false;
        self.started = false;
        self.depth1_index = 0;
        self.nesting.reset();
        self.info = self.current;
        self.current = empty_info();
        Some(end)
    }

    #[inline(always)]
    fn line<'b>(&mut self, buf: &'b [u8]) -> Result<Option<(&'b [u8], usize)>, ReplyError> {
        let from = self.line_search.max(self.pos);
        match crate::scanner::request::memchr(b'\n', &buf[from..]) {
            Some(i) => {
                let nl = from + i;
                self.line_search = 0;
                if nl < self.pos + 2 || buf[nl - 1] != b'\r' {
                    return Err(ReplyError::InvalidLength);
                }
                Ok(Some((&buf[self.pos..nl - 1], nl + 1)))
            }
            None if buf.len() - self.pos > self.max_line => {
                Err(ReplyError::LineTooLong(self.max_line))
            }
            None => {
                self.line_search = buf.len();
                Ok(None)
            }
        }
    }
}

fn empty_info() -> ReplyInfo {
    ReplyInfo {
        kind: ReplyKind::Other,
        first: [0; 16],
        first_len: usize::MAX,
        last_int: None,
    }
}

fn parse_len(s: &[u8]) -> Result<u64, ReplyError> {
    match crate::scanner::request::parse_int(s) {
        Some(n) if n >= 0 => Ok(n as u64),
        _ => Err(ReplyError::InvalidLength),
    }
}

/// The line after the type byte at `at`, if it ends in `\r\n` within [`SKIP_LINE`] bytes:
/// its contents and the offset past it.
#[inline(always)]
fn short_line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let line = buf.get(at + 1..)?;
    let line = &line[..line.len().min(SKIP_LINE)];
    let cr = line.iter().position(|&b| b == b'\r')?;
    if line.get(cr + 1) != Some(&b'\n') {
        return None;
    }
    Some((&line[..cr], at + 1 + cr + 2))
}

/// The most digits [`plain_integer_line`] reads: any 18-digit number fits an `i64`.
const PLAIN_INTEGER_DIGITS: usize = 18;

/// The integer line after the type byte at `at` when it is as Redis writes a non-negative
/// integer (1 to 18 digits, no sign, no leading zero) and ends in `\r\n`: its value and the
/// offset past it, read in one pass over the digits. `None` for any other line, which
/// [`short_line`] and `parse_int` read instead (and read a line this one accepts to the
/// same value and end).
#[inline(always)]
fn plain_integer_line(buf: &[u8], at: usize) -> Option<(i64, usize)> {
    let line = buf.get(at + 1..)?;
    let mut value: i64 = 0;
    let mut n = 0;
    while let Some(&b) = line.get(n) {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 || n == PLAIN_INTEGER_DIGITS {
            break;
        }
        value = value * 10 + i64::from(digit);
        n += 1;
    }
    let plain = n == 1 || (n > 1 && line[0] != b'0');
    (plain && line.get(n..n + 2) == Some(b"\r\n")).then_some((value, at + 1 + n + 2))
}

/// Where the first `\n` of `line` is, if it is among its first eight bytes and they are
/// all there: every byte compared at once (a byte of `word ^ "\n\n…"` is zero exactly where
/// a `\n` is, and the lowest zero byte is found exactly by the borrow trick).
#[inline(always)]
fn short_line_end(line: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let word = u64::from_le_bytes(line.get(..8)?.try_into().ok()?) ^ (u64::from(b'\n') * ONES);
    let zero = word.wrapping_sub(ONES) & !word & (0x80 * ONES);
    (zero != 0).then(|| zero.trailing_zeros() as usize / 8)
}

fn parse_signed_len(s: &[u8]) -> Result<Option<u64>, ReplyError> {
    match crate::scanner::request::parse_int(s) {
        Some(-1) => Ok(None),
        Some(n) if n >= 0 => Ok(Some(n as u64)),
        _ => Err(ReplyError::InvalidLength),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_a_plain_reply_ends_where_scanning_it_does() {
        let replies: [&[u8]; 12] = [
            b"+OK\r\n",
            b"-ERR wrong\r\n",
            b":12345\r\n",
            b"$5\r\nhello\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"+a status line longer than the skipped line length\r\n",
            b"*1\r\n:1\r\n",
            b"$?\r\n;2\r\nab\r\n;0\r\n",
            b"_\r\n",
            b"$1\r2\r\n",
            b"+no cr\n",
        ];
        let skipped: Vec<usize> = (0..replies.len())
            .filter(|&i| ReplyScanner::new().skip_plain_reply(replies[i]).is_some())
            .collect();
        assert_eq!(
            skipped,
            [0, 1, 2, 3, 4, 5],
            "the short plain replies are skipped"
        );
        let hundred = [b"$100\r\n".as_slice(), &[b'v'; 100], b"\r\n"].concat();
        for reply in replies
            .iter()
            .copied()
            .chain([&hundred[..], b"$12\n0123456789ab\r\n"])
        {
            // Followed by more replies, as in a pipeline: read a word at a time, it ends
            // where it ends alone.
            let padded = [reply, b"*2\r\n$3\r\nabc\r\n:1\r\n"].concat();
            assert_eq!(
                ReplyScanner::new().skip_plain_reply(&padded),
                ReplyScanner::new().skip_plain_reply(reply),
                "{reply:?}"
            );
            let mut whole = ReplyScanner::new();
            let scanned = whole.scan(reply);
            for cut in 0..=reply.len() {
                let mut s = ReplyScanner::new();
                match s.skip_plain_reply(&reply[..cut]) {
                    Some(end) => {
                        assert_eq!(cut, reply.len(), "{reply:?} skipped before its end");
                        assert_eq!(scanned, Ok(ReplyStep::Done(end)), "{reply:?}");
                    }
                    None => {
                        assert_eq!(s.pos, 0, "{reply:?} cut at {cut}: nothing consumed");
                        if cut == reply.len() {
                            assert_eq!(s.scan(reply), scanned, "{reply:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn skipping_an_integer_reply_notes_what_scanning_it_does() {
        for reply in [
            &b":7\r\n"[..],
            b":-12\r\n",
            b":0\r\n",
            b":99999999999999999999\r\n",
        ] {
            let padded = [reply, b":1\r\n+OK\r\n"].concat();
            let mut whole = ReplyScanner::new();
            assert_eq!(whole.scan(&padded), Ok(ReplyStep::Done(reply.len())));
            let skipped = ReplyScanner::new().skip_integer_reply(&padded);
            assert_eq!(skipped, Some((0, reply.len())), "{reply:?}");
            assert_eq!(integer_reply_info(&padded, 0), *whole.info(), "{reply:?}");
        }
        for other in [&b"+OK\r\n"[..], b"$1\r\n1\r\n", b"-ERR x\r\n", b":1\r"] {
            let mut s = ReplyScanner::new();
            assert_eq!(s.skip_integer_reply(other), None, "{other:?}");
            assert_eq!(s.pos, 0);
        }
    }

    /// An integer reply is skipped where the plain skip ends it, and its value read as the
    /// general scan notes it: at every width, at the bounds of the 18 digits the one-pass
    /// reading takes, and on the lines it leaves to `parse_int` (a sign, a leading zero, 19
    /// digits).
    #[test]
    fn an_integer_reply_of_any_width_is_noted_as_scanning_it_does() {
        let mut replies: Vec<Vec<u8>> = (0..=19)
            .flat_map(|digits: u32| {
                let n = 10u64.pow(digits);
                [n - 1, n, n + 7]
            })
            .map(|n| format!(":{n}\r\n").into_bytes())
            .collect();
        for other in [
            &b":007\r\n"[..],
            b":00\r\n",
            b":-0\r\n",
            b":-123\r\n",
            b":9223372036854775807\r\n",
            b":9223372036854775808\r\n",
        ] {
            replies.push(other.to_vec());
        }
        for reply in &replies {
            let padded = [&reply[..], b":1\r\n"].concat();
            let mut whole = ReplyScanner::new();
            if whole.scan(&padded) != Ok(ReplyStep::Done(reply.len())) {
                // Refused by the general scan (past an i64): the plain skip, like the plain
                // path for an unwatched reply, does not read the digits.
                continue;
            }
            let skipped = ReplyScanner::new().skip_integer_reply(&padded);
            let plain = ReplyScanner::new().skip_plain_reply(&padded);
            assert_eq!(skipped, Some((0, reply.len())), "{reply:?}");
            assert_eq!(plain, Some(reply.len()), "{reply:?}");
            assert_eq!(integer_reply_info(&padded, 0), *whole.info(), "{reply:?}");
            for cut in 0..reply.len() {
                let skipped = ReplyScanner::new().skip_integer_reply(&reply[..cut]);
                assert_eq!(skipped, None, "{reply:?} cut at {cut}");
            }
        }
    }

    /// Reply end offsets found in `stream`, fed whole and then one byte at a time.
    fn boundaries(stream: &[u8]) -> Vec<usize> {
        let mut whole = Vec::new();
        let mut s = ReplyScanner::new();
        while let ReplyStep::Done(end) = s.scan(stream).unwrap() {
            whole.push(end);
        }
        let mut bytewise = Vec::new();
        let mut s = ReplyScanner::new();
        for cut in 1..=stream.len() {
            while let ReplyStep::Done(end) = s.scan(&stream[..cut]).unwrap() {
                bytewise.push(end);
            }
        }
        assert_eq!(whole, bytewise);
        whole
    }

    #[test]
    fn resp2_nulls_and_nested_arrays() {
        let s = b"$-1\r\n*-1\r\n*2\r\n*1\r\n:1\r\n$3\r\nabc\r\n*0\r\n";
        // 5 + 5 + (4 + 4 + 4 + 9) + 4
        assert_eq!(boundaries(s), vec![5, 10, 31, 35]);
    }

    #[test]
    fn resp3_streamed_strings_and_aggregates() {
        let s = b"$?\r\n;3\r\nabc\r\n;0\r\n*?\r\n:1\r\n$?\r\n;1\r\nx\r\n;0\r\n.\r\n+OK\r\n";
        // (4 + 4 + 5 + 4) + (4 + 4 + 4 + 4 + 3 + 4 + 3) + 5
        assert_eq!(boundaries(s), vec![17, 43, 48]);
    }

    #[test]
    fn attributes_belong_to_the_reply_they_annotate() {
        // A top-level attribute, then an array whose element carries an attribute.
        let s = b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n*1\r\n|1\r\n+a\r\n:1\r\n:5\r\n*1\r\n|0\r\n:6\r\n";
        // 21, then (4 + 4 + 4 + 4 + 4), then (4 + 4 + 4)
        assert_eq!(boundaries(s), vec![21, 41, 53]);
    }

    #[test]
    fn first_element_and_count_of_a_confirmation() {
        let mut s = ReplyScanner::new();
        let msg = b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:7\r\n";
        assert_eq!(s.scan(msg).unwrap(), ReplyStep::Done(msg.len()));
        assert_eq!(s.info().kind, ReplyKind::Push);
        assert_eq!(s.info().first_str(), Some(&b"subscribe"[..]));
        assert_eq!(s.info().last_int, Some(7));
    }

    #[test]
    fn element_mode_reports_header_and_elements() {
        let mut s = ReplyScanner::new();
        s.report_elements(true);
        let r = b"*3\r\n+QUEUED\r\n*2\r\n:1\r\n:2\r\n$1\r\nx\r\n+after\r\n";
        assert_eq!(s.scan(r).unwrap(), ReplyStep::Header { end: 4, count: 3 });
        assert_eq!(s.scan(r).unwrap(), ReplyStep::Element(13));
        assert_eq!(s.scan(r).unwrap(), ReplyStep::Element(25));
        assert_eq!(s.scan(r).unwrap(), ReplyStep::Done(32));
        // Element mode ends with the reply.
        assert_eq!(s.scan(r).unwrap(), ReplyStep::Done(40));
        let mut s = ReplyScanner::new();
        s.report_elements(true);
        assert_eq!(s.scan(b"-EXECABORT x\r\n").unwrap(), ReplyStep::Done(14));
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert_eq!(
            ReplyScanner::new().scan(b"?\r\n"),
            Err(ReplyError::UnknownType(b'?'))
        );
        assert_eq!(
            ReplyScanner::new().scan(b"$x\r\n"),
            Err(ReplyError::InvalidLength)
        );
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(
            ReplyScanner::new().scan(deep.as_bytes()),
            Err(ReplyError::TooDeep)
        );
        assert_eq!(
            ReplyScanner::new().scan(b"%1152921504606846976\r\n"),
            Err(ReplyError::InvalidLength)
        );
    }

    /// A Lua table containing itself: Redis nests arrays until Lua's stack ends (about 8,000
    /// levels) and closes them with an error.
    #[test]
    fn replies_as_deep_as_lua_can_nest_are_followed() {
        let mut s = "*1\r\n".repeat(8000);
        s.push_str("-ERR reached lua stack limit\r\n:1\r\n");
        assert_eq!(boundaries(s.as_bytes()), vec![s.len() - 4, s.len()]);
    }

    /// Levels of every kind and count survive being packed under deeper ones.
    #[test]
    fn packed_levels_come_back_unchanged() {
        let frames = [
            Frame::Counted(1),
            Frame::Streamed,
            Frame::Attribute(2),
            Frame::Counted(31),
            Frame::Counted(32),
            Frame::Counted(300),
            Frame::Attribute(MAX_COUNT - 1),
            Frame::Counted(MAX_COUNT - 1),
        ];
        let mut n = Nesting::new();
        for f in frames {
            n.push(f).unwrap();
        }
        assert_eq!(n.depth, frames.len());
        for f in frames.iter().rev() {
            assert_eq!(n.top(), Some(*f));
            n.pop();
        }
        assert_eq!(n.top(), None);
        assert!(n.outer.is_empty());
    }
}
