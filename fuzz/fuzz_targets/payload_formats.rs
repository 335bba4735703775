//! The enqueue guard's payload readers on arbitrary bytes: JSON, MessagePack and pickle
//! each read a document or refuse, never panic, and what they read stays within the
//! readers' bounds (libFuzzer's `-malloc_limit_mb` and `-rss_limit_mb` in
//! `scripts/fuzz.sh` catch a reader that allocates what it was never sent). Seeds: pickles
//! written by Python (protocols 2 to 5, Huey's message) and MessagePack jobs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respguard::guard::enqueue::payload::Format;

fuzz_target!(|data: &[u8]| {
    for format in [Format::Json, Format::Msgpack, Format::Pickle] {
        if let Some(doc) = format.document(data) {
            // A document is data: it writes back out as JSON without failing.
            assert!(serde_json::to_vec(&doc).is_ok());
        }
    }
});
