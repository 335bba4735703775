//! The bounded decoder of the replies the proxy asks for itself (`scanner::tree`) on
//! arbitrary bytes: never a panic or a stack overflow (libFuzzer's inputs nest as deep as
//! their length allows), and a reply it decodes is decoded again alike from exactly the
//! bytes it said it took.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respguard::scanner::tree::{decode, extent, Bounds};

fuzz_target!(|data: &[u8]| {
    for bounds in [Bounds::SERVER_REPLY, TIGHT] {
        if let Ok(Some((frame, used))) = decode(data, &bounds) {
            assert!(used > 0 && used <= data.len());
            assert_eq!(extent(&data[..used], &bounds), Ok(Some(used)));
            assert_eq!(decode(&data[..used], &bounds), Ok(Some((frame, used))));
        }
    }
});

const TIGHT: Bounds = Bounds {
    depth: 3,
    aggregate: 4,
    elements: 16,
    string: 8,
};
