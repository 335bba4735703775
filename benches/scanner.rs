//! Micro-benchmarks of the hot-path scanners: nanoseconds per command and per reply.
//!
//! Run with `cargo bench --bench scanner`. Each benchmark scans a buffer holding a pipeline
//! of 64 messages and reports the time for the whole buffer; divide by 64 for one message
//! (criterion's throughput line shows messages per second directly).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use respguard::command::CommandTable;
use respguard::scanner::reply::{ReplyScanner, ReplyStep};
use respguard::scanner::request::{Limits, RequestScanner, Step};

const PIPELINE: usize = 64;

fn pipeline(cmd: &[u8]) -> Vec<u8> {
    cmd.repeat(PIPELINE)
}

fn set_100() -> Vec<u8> {
    let mut c = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000001234\r\n$100\r\n".to_vec();
    c.extend_from_slice(&[b'x'; 100]);
    c.extend_from_slice(b"\r\n");
    c
}

fn bench_requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_scanner");
    g.throughput(Throughput::Elements(PIPELINE as u64));
    for (name, cmd) in [
        (
            "GET",
            b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000001234\r\n".to_vec(),
        ),
        ("SET_100B", set_100()),
    ] {
        let buf = pipeline(&cmd);
        let table = CommandTable::builtin();
        g.bench_function(name, |b| {
            let mut s = RequestScanner::new(Limits::default());
            b.iter(|| {
                let mut n = 0;
                while let Step::Command { .. } = s.scan(black_box(&buf)) {
                    n += 1;
                }
                s.rebase(buf.len());
                n
            })
        });
        g.bench_function(format!("{name}+lookup"), |b| {
            let mut s = RequestScanner::new(Limits::default());
            b.iter(|| {
                let mut ids = 0u32;
                while let Step::Command { .. } = s.scan(black_box(&buf)) {
                    let args = s.args();
                    let info = table.lookup(&[&buf[args[0].clone()], &buf[args[1].clone()]]);
                    ids += u32::from(info.id);
                }
                s.rebase(buf.len());
                ids
            })
        });
        // The reference decoder, for comparison: it builds a frame per command.
        g.bench_function(format!("{name}_redis_protocol_decoder"), |b| {
            b.iter(|| {
                let mut at = 0;
                let mut n = 0;
                while let Ok(Some((_, len))) =
                    redis_protocol::resp2::decode::decode(black_box(&buf[at..]))
                {
                    at += len;
                    n += 1;
                }
                n
            })
        });
    }
    g.finish();
}

fn bench_replies(c: &mut Criterion) {
    let mut g = c.benchmark_group("reply_scanner");
    g.throughput(Throughput::Elements(PIPELINE as u64));
    let mut bulk = b"$100\r\n".to_vec();
    bulk.extend_from_slice(&[b'v'; 100]);
    bulk.extend_from_slice(b"\r\n");
    for (name, reply) in [
        ("+OK", b"+OK\r\n".to_vec()),
        ("bulk_100B", bulk),
        ("array_of_3", b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n".to_vec()),
    ] {
        let buf = pipeline(&reply);
        g.bench_function(name, |b| {
            let mut s = ReplyScanner::new();
            b.iter(|| {
                let mut n = 0;
                while let Ok(ReplyStep::Done(_)) = s.scan(black_box(&buf)) {
                    n += 1;
                }
                s.rebase(buf.len());
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_requests, bench_replies);
criterion_main!(benches);
