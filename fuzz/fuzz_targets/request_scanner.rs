//! The request scanner on arbitrary bytes, fed in arbitrary pieces and consumed as a session
//! consumes them: it never panics, every position it reports lies inside the buffer and
//! moves forward, and the bytes it makes the caller hold stay within its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respguard::scanner::request::{Limits, RequestScanner, Step, StreamStep};

const LIMITS: Limits = Limits {
    max_inline_len: 256,
    max_args: 64,
    max_bulk_len: 1 << 20,
    stream_threshold: 128,
    max_buffered_command: 512,
};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece % 64) + 1;
    let mut scanner = RequestScanner::new(LIMITS);
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut streaming = false;
    loop {
        if fed < stream.len() {
            let n = piece.min(stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
        }
        // What is held between reads: one command's buffered part, one argument below the
        // streaming threshold with its length line, and one read.
        let bound = LIMITS.max_buffered_command
            + LIMITS.stream_threshold as usize
            + LIMITS.max_inline_len
            + piece
            + 64;
        assert!(buf.len() <= bound, "{} bytes held", buf.len());
        loop {
            if streaming {
                match scanner.stream(&buf, 0) {
                    StreamStep::More(n) => {
                        assert!(n <= buf.len());
                        buf.drain(..n);
                        scanner.rebase(n);
                        break;
                    }
                    StreamStep::Done(n) => {
                        assert!(n <= buf.len());
                        buf.drain(..n);
                        scanner.rebase(n);
                        streaming = false;
                    }
                    StreamStep::Error(_) => return,
                }
                continue;
            }
            match scanner.scan(&buf) {
                Step::Incomplete => break,
                Step::Empty { end } => {
                    assert!(end > 0 && end <= buf.len());
                    buf.drain(..end);
                    scanner.rebase(end);
                }
                Step::Command { start, end, inline } => {
                    assert!(start < end && end <= buf.len());
                    let src = if inline { scanner.inline_bytes() } else { &buf[..] };
                    assert!(!scanner.args().is_empty());
                    for r in scanner.args() {
                        assert!(r.start <= r.end && r.end <= src.len());
                    }
                    buf.drain(..end);
                    scanner.rebase(end);
                }
                Step::Streaming { start, head_end, argc, .. } => {
                    assert!(start < head_end && head_end <= buf.len());
                    assert!(argc <= LIMITS.max_args);
                    buf.drain(..head_end);
                    scanner.rebase(head_end);
                    streaming = true;
                }
                Step::Error(_) => return,
            }
        }
        if fed == stream.len() {
            return;
        }
    }
});
