//! Property tests for the scanners against the `redis-protocol` reference decoder: random
//! valid streams split at random points give the same commands and reply boundaries as
//! the reference; random garbage never panics and never makes the scanner hold more than
//! its bounds.

use proptest::prelude::*;
use redis_protocol::resp3::types::OwnedFrame as F3;
use redis_protocol::resp3::types::Resp3Frame;
use respguard::scanner::reply::{ReplyScanner, ReplyStep};
use respguard::scanner::request::{Limits, RequestScanner, Step, StreamStep};

fn small_limits() -> Limits {
    Limits {
        stream_threshold: 64,
        max_buffered_command: 512,
        max_inline_len: 1024,
        ..Limits::default()
    }
}

fn arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => proptest::collection::vec(any::<u8>(), 60..400),
    ]
}

fn command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(arg(), 1..10)
}

fn encode_command(args: &[Vec<u8>]) -> Vec<u8> {
    crate::harness::encode_bytes(args)
}

/// What a scanner saw for one command: its arguments when buffered whole, or the head
/// arguments and the byte count when streamed.
#[derive(Debug, PartialEq)]
enum Seen {
    Whole(Vec<Vec<u8>>),
    Streamed {
        head: Vec<Vec<u8>>,
        bytes: usize,
    },
    /// Skimmed and taken without its arguments: its name and its bytes.
    Skimmed {
        name: Vec<u8>,
        bytes: Vec<u8>,
    },
}

/// How a command at the front of the buffer is read: by the scan, or skimmed first and
/// taken without its arguments or with them (the session's run of commands).
#[derive(Debug, Clone, Copy)]
enum Read {
    Scan,
    SkimNameOnly,
    SkimWhole,
}

fn read_how() -> impl Strategy<Value = Read> {
    prop_oneof![
        Just(Read::Scan),
        Just(Read::SkimNameOnly),
        Just(Read::SkimWhole)
    ]
}

/// Take the command at the front of `buf` by skimming it, as `how` says; what was seen
/// and how many bytes it took, or `None` when the skim leaves it to the scan.
fn skim_front(s: &mut RequestScanner, buf: &[u8], how: Read) -> Option<(Seen, usize)> {
    let skimmed = s.skim(buf)?;
    assert_eq!(skimmed.start, 0);
    match how {
        Read::Scan => None,
        Read::SkimNameOnly => {
            let end = s.skim_end(buf, &skimmed)?;
            s.take_skimmed(end);
            let name = buf[skimmed.name.clone()].to_vec();
            let bytes = buf[..end].to_vec();
            Some((Seen::Skimmed { name, bytes }, end))
        }
        Read::SkimWhole => {
            let end = s.take_whole(buf, &skimmed)?;
            let args = s.args().iter().map(|r| buf[r.clone()].to_vec()).collect();
            Some((Seen::Whole(args), end))
        }
    }
}

/// Feed `stream` in the given chunk sizes, consuming as a session does, and report what
/// the scanner saw.
fn scan_requests(stream: &[u8], cuts: &[usize], limits: Limits, reads: &[Read]) -> Vec<Seen> {
    let mut reads = reads.iter().copied().chain(std::iter::repeat(Read::Scan));
    let mut s = RequestScanner::new(limits);
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut seen = Vec::new();
    let mut streamed: Option<(Vec<Vec<u8>>, usize)> = None;
    let mut cuts = cuts.iter().copied().chain(std::iter::repeat(7));
    while fed < stream.len() || !buf.is_empty() {
        let n = cuts.next().unwrap().max(1).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            if let Some((head, bytes)) = streamed.as_mut() {
                match s.stream(&buf, 0) {
                    StreamStep::More(k) => {
                        *bytes += k;
                        buf.drain(..k);
                        s.rebase(k);
                        break;
                    }
                    StreamStep::Done(k) => {
                        *bytes += k;
                        buf.drain(..k);
                        s.rebase(k);
                        seen.push(Seen::Streamed {
                            head: std::mem::take(head),
                            bytes: *bytes,
                        });
                        streamed = None;
                        continue;
                    }
                    StreamStep::Error(e) => panic!("valid stream refused: {e}"),
                }
            }
            if let Some((seen_now, end)) = skim_front(&mut s, &buf, reads.next().unwrap()) {
                seen.push(seen_now);
                buf.drain(..end);
                s.rebase(end);
                continue;
            }
            match s.scan(&buf) {
                Step::Incomplete => break,
                Step::Command { start, end, inline } => {
                    assert!(!inline && start == 0);
                    seen.push(Seen::Whole(
                        s.args().iter().map(|r| buf[r.clone()].to_vec()).collect(),
                    ));
                    buf.drain(..end);
                    s.rebase(end);
                }
                Step::Streaming {
                    start, head_end, ..
                } => {
                    assert_eq!(start, 0);
                    let head = s.args().iter().map(|r| buf[r.clone()].to_vec()).collect();
                    buf.drain(..head_end);
                    s.rebase(head_end);
                    streamed = Some((head, head_end));
                }
                other => panic!("valid stream gave {other:?}"),
            }
        }
        if fed == stream.len() && streamed.is_none() && !s.in_command() {
            break;
        }
    }
    seen
}

fn f3_leaf() -> impl Strategy<Value = F3> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..50);
    let line = "[a-zA-Z0-9 ]{0,20}";
    prop_oneof![
        bytes.clone().prop_map(|data| F3::BlobString {
            data,
            attributes: None
        }),
        bytes.prop_map(|data| F3::BlobError {
            data,
            attributes: None
        }),
        line.prop_map(|s| F3::SimpleString {
            data: s.into_bytes(),
            attributes: None
        }),
        line.prop_map(|s| F3::SimpleError {
            data: s,
            attributes: None
        }),
        any::<i64>().prop_map(|data| F3::Number {
            data,
            attributes: None
        }),
        any::<bool>().prop_map(|data| F3::Boolean {
            data,
            attributes: None
        }),
        (-1e9f64..1e9).prop_map(|data| F3::Double {
            data,
            attributes: None
        }),
        "[0-9]{1,30}".prop_map(|s| F3::BigNumber {
            data: s.into_bytes(),
            attributes: None
        }),
        Just(F3::Null),
    ]
}

fn f3_key() -> impl Strategy<Value = F3> {
    prop_oneof![
        "[a-z]{1,8}".prop_map(|s| F3::BlobString {
            data: s.into_bytes(),
            attributes: None
        }),
        any::<i64>().prop_map(|data| F3::Number {
            data,
            attributes: None
        }),
    ]
}

fn f3() -> impl Strategy<Value = F3> {
    f3_leaf().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(|data| F3::Array {
                data,
                attributes: None
            }),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(|data| F3::Push {
                data,
                attributes: None
            }),
            proptest::collection::vec((f3_key(), inner), 0..4).prop_map(|kv| F3::Map {
                data: kv.into_iter().collect(),
                attributes: None
            }),
        ]
    })
}

fn with_attribute(frame: F3, attr: Option<(String, i64)>) -> F3 {
    let Some((k, v)) = attr else { return frame };
    let mut attrs = redis_protocol::resp3::types::FrameMap::new();
    attrs.insert(
        F3::SimpleString {
            data: k.into_bytes(),
            attributes: None,
        },
        F3::Number {
            data: v,
            attributes: None,
        },
    );
    match frame {
        F3::Array { data, .. } => F3::Array {
            data,
            attributes: Some(attrs),
        },
        F3::BlobString { data, .. } => F3::BlobString {
            data,
            attributes: Some(attrs),
        },
        other => other,
    }
}

fn encode_reply(frame: &F3) -> Vec<u8> {
    let mut out = vec![0u8; frame.encode_len(false)];
    let n = redis_protocol::resp3::encode::complete::encode(&mut out, frame, false).unwrap();
    out.truncate(n);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn request_scanner_agrees_with_the_reference(
        cmds in proptest::collection::vec(command(), 1..12),
        cuts in proptest::collection::vec(1usize..200, 0..40),
        reads in proptest::collection::vec(read_how(), 0..40),
    ) {
        let stream: Vec<u8> = cmds.iter().flat_map(|c| encode_command(c)).collect();
        // The reference: decode every frame of the stream.
        let mut reference = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let (frame, n) = redis_protocol::resp2::decode::decode(&stream[at..]).unwrap().unwrap();
            let redis_protocol::resp2::types::OwnedFrame::Array(items) = frame else { panic!() };
            let args: Vec<Vec<u8>> = items.into_iter().map(|i| match i {
                redis_protocol::resp2::types::OwnedFrame::BulkString(b) => b,
                other => panic!("{other:?}"),
            }).collect();
            reference.push((args, n));
            at += n;
        }
        let seen = scan_requests(&stream, &cuts, small_limits(), &reads);
        prop_assert_eq!(seen.len(), reference.len());
        for (s, (args, n)) in seen.iter().zip(&reference) {
            match s {
                Seen::Whole(got) => prop_assert_eq!(got, args),
                Seen::Skimmed { name, bytes } => {
                    prop_assert_eq!(name, &args[0]);
                    prop_assert_eq!(bytes, &encode_command(args));
                }
                Seen::Streamed { head, bytes } => {
                    prop_assert_eq!(&head[..], &args[..head.len()]);
                    prop_assert_eq!(bytes, n);
                }
            }
        }
    }

    #[test]
    fn reply_scanner_finds_the_reference_boundaries(
        frames in proptest::collection::vec((f3(), proptest::option::of(("[a-z]{1,5}", any::<i64>()))), 1..10),
        cuts in proptest::collection::vec(1usize..100, 0..40),
    ) {
        let encoded: Vec<Vec<u8>> = frames.into_iter().map(|(f, a)| encode_reply(&with_attribute(f, a))).collect();
        let mut want = Vec::new();
        let mut total = 0;
        for e in &encoded {
            total += e.len();
            want.push(total);
        }
        let stream: Vec<u8> = encoded.concat();
        // Feed in chunks and drop scanned bytes as the session does, even mid-reply.
        let mut s = ReplyScanner::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut base = 0;
        let mut fed = 0;
        let mut got = Vec::new();
        let mut cuts = cuts.into_iter().chain(std::iter::repeat(13));
        while fed < stream.len() {
            let n = cuts.next().unwrap().min(stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            loop {
                match s.scan(&buf).unwrap() {
                    ReplyStep::Done(end) => {
                        got.push(base + end);
                        buf.drain(..end);
                        s.rebase(end);
                        base += end;
                    }
                    ReplyStep::Partial(upto) => {
                        buf.drain(..upto);
                        s.rebase(upto);
                        base += upto;
                        break;
                    }
                    other => panic!("element mode is off, yet {other:?}"),
                }
            }
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn garbage_never_panics_and_never_buffers_past_the_bounds(
        chunks in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                "[*$:+\\-\\r\\n0-9]{0,32}".prop_map(String::into_bytes),
            ],
            1..40,
        ),
    ) {
        let limits = small_limits();
        let bound = limits.max_buffered_command + limits.max_inline_len + limits.stream_threshold as usize + 64;
        let mut s = RequestScanner::new(limits);
        let mut buf: Vec<u8> = Vec::new();
        let mut streaming = false;
        'feed: for c in &chunks {
            buf.extend_from_slice(c);
            loop {
                if streaming {
                    match s.stream(&buf, 0) {
                        StreamStep::More(k) => { buf.drain(..k); s.rebase(k); break; }
                        StreamStep::Done(k) => { buf.drain(..k); s.rebase(k); streaming = false; }
                        StreamStep::Error(_) => break 'feed,
                    }
                    continue;
                }
                match s.scan(&buf) {
                    Step::Incomplete => break,
                    Step::Command { end, .. } | Step::Empty { end } => { buf.drain(..end); s.rebase(end); }
                    Step::Streaming { head_end, .. } => { buf.drain(..head_end); s.rebase(head_end); streaming = true; }
                    Step::Error(_) => break 'feed,
                }
            }
            prop_assert!(buf.len() <= bound, "held {} bytes, bound {}", buf.len(), bound);
        }
        let mut r = ReplyScanner::new();
        let bytes: Vec<u8> = chunks.concat();
        let _ = r.scan(&bytes);
    }
}
