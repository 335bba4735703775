//! The reply scanner on arbitrary bytes, scanned reply after reply as a session does: it
//! never panics and every position it reports lies inside the input. (Comparing with the
//! `redis-protocol` decoder on arbitrary bytes only finds inputs Redis never sends, which
//! the reference accepts and the scanner refuses: a lone `.`, a simple string holding a
//! bare `\n`, a big number of any bytes. The property tests compare the two on valid
//! streams.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use respguard::scanner::reply::{ReplyScanner, ReplyStep};

fuzz_target!(|data: &[u8]| {
    let mut scanner = ReplyScanner::new();
    let mut pos = 0;
    // Replies one after another, as a session scans them.
    while pos < data.len() {
        match scanner.scan(&data[pos..]) {
            Ok(ReplyStep::Done(end)) => {
                assert!(end > 0 && end <= data.len() - pos);
                pos += end;
                scanner.rebase(end);
            }
            Ok(ReplyStep::Header { end, .. }) | Ok(ReplyStep::Element(end)) => {
                assert!(end <= data.len() - pos);
            }
            Ok(ReplyStep::Partial(upto)) => {
                assert!(upto <= data.len() - pos);
                break;
            }
            Err(_) => break,
        }
    }
});
