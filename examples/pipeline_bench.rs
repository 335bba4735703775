//! A pipelining load generator for Redis-protocol servers, for operations of more than one
//! command.
//!
//! redis-benchmark sends one command per request; this tool sends *operations*, each a list
//! of commands, so a workload such as "HSET, then PEXPIRE ... NX on the same key" can be
//! measured as one unit. `scripts/bench.sh` uses it for the HSET rows, where respguard's TTL
//! guard turns one HSET into an HSET plus an expiry: the proxy is sent plain HSETs and its
//! anchor, HAProxy, is sent HSET followed by `PEXPIRE key 3600000 NX`, by the same tool.
//!
//! Each of `-c` connections sends a pipeline of `-P` operations at a time and reads every
//! reply before sending the next; `-n` operations are sent in all. Each command is one
//! argument of whitespace-separated words, in which `__rand_int__` becomes a random
//! 12-digit number below `-r` (the same number in every command of one operation; left as
//! it is without `-r`, as redis-benchmark does) and `__data__` becomes a value of `-d` bytes.
//! Any error reply (`-...`) stops the run with a non-zero exit. The report gives operations
//! per second and the latency of a pipeline (from writing it to reading its last reply);
//! `--csv` prints it in the shape of `redis-benchmark --csv`.
//!
//! ```text
//! cargo build --release --example pipeline_bench
//! target/release/examples/pipeline_bench --port 6379 -c 50 -P 32 -n 100000 -d 100 -r 100000 \
//!     'HSET key:__rand_int__ field __data__' 'PEXPIRE key:__rand_int__ 3600000 NX'
//! ```
//!
//! Unit tests: `cargo test --example pipeline_bench`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// The placeholder replaced by a random number below `--keyspace`.
const RAND_INT: &str = "__rand_int__";
/// The placeholder replaced by a value of `--data-size` bytes.
const DATA: &str = "__data__";
/// Digits of a random number, zero-padded (as redis-benchmark writes them).
const RAND_DIGITS: usize = 12;

/// Command-line options (named after redis-benchmark's where they mean the same).
#[derive(Parser, Debug)]
#[command(about = "Pipelined load of multi-command operations against a Redis-protocol server")]
struct Args {
    /// Server host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Server port.
    #[arg(short, long, default_value_t = 6379)]
    port: u16,
    /// Connections, each with one pipeline in flight.
    #[arg(short, long, default_value_t = 50)]
    clients: usize,
    /// Operations per pipeline.
    #[arg(short = 'P', long, default_value_t = 1)]
    pipeline: usize,
    /// Operations in all.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    requests: u64,
    /// Bytes of the `__data__` value.
    #[arg(short, long, default_value_t = 3)]
    data_size: usize,
    /// `__rand_int__` becomes a random number below this; without it, it stays as written.
    #[arg(short = 'r', long)]
    keyspace: Option<u64>,
    /// Print one CSV line in the shape of `redis-benchmark --csv`.
    #[arg(long)]
    csv: bool,
    /// The test's name in the report (default: the commands).
    #[arg(long)]
    name: Option<String>,
    /// The commands of one operation, each as whitespace-separated words.
    #[arg(required = true)]
    commands: Vec<String>,
}

/// A piece of a command's argument.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    /// Bytes sent as written.
    Text(Vec<u8>),
    /// The operation's random number.
    Rand,
    /// The value of `data_size` bytes.
    Data,
}

/// One operation's commands, RESP-encoded once: literal bytes (headers included, as every
/// placeholder has a fixed length) between the places a random number or the value goes.
#[derive(Debug)]
struct Operation {
    /// The encoding, in order.
    segments: Vec<Part>,
    /// The value `__data__` stands for.
    data: Vec<u8>,
    /// Commands in one operation: the replies it gets.
    replies: usize,
}

impl Operation {
    /// Parse the command templates; `__rand_int__` is a placeholder only when `randomize`.
    fn new(commands: &[String], data_size: usize, randomize: bool) -> Result<Self> {
        let mut segments = Vec::new();
        let mut text = Vec::new();
        for command in commands {
            let words: Vec<Vec<Part>> = command
                .split_whitespace()
                .map(|w| parse_word(w, randomize))
                .collect();
            if words.is_empty() {
                bail!("an empty command");
            }
            text.extend_from_slice(format!("*{}\r\n", words.len()).as_bytes());
            for word in words {
                let len: usize = word
                    .iter()
                    .map(|p| match p {
                        Part::Text(t) => t.len(),
                        Part::Rand => RAND_DIGITS,
                        Part::Data => data_size,
                    })
                    .sum();
                text.extend_from_slice(format!("${len}\r\n").as_bytes());
                for part in word {
                    match part {
                        Part::Text(t) => text.extend_from_slice(&t),
                        placeholder => {
                            if !text.is_empty() {
                                segments.push(Part::Text(std::mem::take(&mut text)));
                            }
                            segments.push(placeholder);
                        }
                    }
                }
                text.extend_from_slice(b"\r\n");
            }
        }
        segments.push(Part::Text(text));
        Ok(Self {
            segments,
            data: vec![b'x'; data_size],
            replies: commands.len(),
        })
    }

    /// Replies one operation gets.
    fn replies(&self) -> usize {
        self.replies
    }

    /// Append the operation's commands, RESP-encoded, with `rand` as its random number.
    fn encode(&self, rand: u64, out: &mut Vec<u8>) {
        let mut digits = [b'0'; RAND_DIGITS];
        let mut n = rand;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        for segment in &self.segments {
            out.extend_from_slice(match segment {
                Part::Text(t) => t,
                Part::Rand => &digits,
                Part::Data => &self.data,
            });
        }
    }
}

/// Split one word into text and placeholders.
fn parse_word(word: &str, randomize: bool) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = word;
    loop {
        let rand_at = rest.find(RAND_INT).filter(|_| randomize);
        let data_at = rest.find(DATA);
        let (at, part, len) = match (rand_at, data_at) {
            (Some(r), Some(d)) if d < r => (d, Part::Data, DATA.len()),
            (Some(r), _) => (r, Part::Rand, RAND_INT.len()),
            (None, Some(d)) => (d, Part::Data, DATA.len()),
            (None, None) => break,
        };
        if at > 0 {
            parts.push(Part::Text(rest.as_bytes()[..at].to_vec()));
        }
        parts.push(part);
        rest = &rest[at + len..];
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(Part::Text(rest.as_bytes().to_vec()));
    }
    parts
}

/// One complete RESP2 reply at the start of a buffer.
#[derive(Debug, PartialEq)]
struct Reply {
    /// Its length in bytes.
    len: usize,
    /// Whether it is an error reply (`-...`).
    error: bool,
}

/// The reply at the start of `buf`: `None` while it is incomplete.
fn parse_reply(buf: &[u8]) -> Result<Option<Reply>> {
    Ok(reply_end(buf, 0)?.map(|len| Reply {
        len,
        error: buf[0] == b'-',
    }))
}

/// Where the RESP2 value starting at `pos` ends: `None` while it is incomplete.
fn reply_end(buf: &[u8], pos: usize) -> Result<Option<usize>> {
    let Some(crlf) = memchr::memmem::find(&buf[pos..], b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[pos + 1..pos + crlf];
    let next = pos + crlf + 2;
    let count = || -> Result<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad length {:?}", String::from_utf8_lossy(line)))
    };
    match buf[pos] {
        b'+' | b'-' | b':' => Ok(Some(next)),
        b'$' => {
            let n = count()?;
            if n < 0 {
                return Ok(Some(next));
            }
            let end = next + n as usize + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        b'*' => {
            let mut at = next;
            for _ in 0..count()?.max(0) {
                match reply_end(buf, at)? {
                    Some(end) => at = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        other => bail!("unexpected reply type byte {:?}", other as char),
    }
}

/// What one connection measured.
#[derive(Debug, Default)]
struct Measured {
    /// The latency of each pipeline it sent.
    latencies: Vec<Duration>,
}

/// Take up to `want` operations from the ones left to send; 0 when none are left.
fn claim(left: &AtomicU64, want: u64) -> u64 {
    match left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        (n > 0).then(|| n - n.min(want))
    }) {
        Ok(before) => before.min(want),
        Err(_) => 0,
    }
}

/// One connection: pipelines of operations until none are left, every reply read.
async fn connection(
    addr: String,
    op: Arc<Operation>,
    args: Arc<Args>,
    left: Arc<AtomicU64>,
    start: Arc<Barrier>,
) -> Result<Measured> {
    let mut stream = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    start.wait().await;
    let mut measured = Measured::default();
    let mut out = Vec::new();
    let mut input = BytesMut::with_capacity(64 * 1024);
    loop {
        let ops = claim(&left, args.pipeline as u64);
        if ops == 0 {
            return Ok(measured);
        }
        out.clear();
        for _ in 0..ops {
            let rand = args.keyspace.map_or(0, |k| fastrand::u64(0..k.max(1)));
            op.encode(rand, &mut out);
        }
        let sent = Instant::now();
        stream.write_all(&out).await?;
        let mut pending = ops as usize * op.replies();
        while pending > 0 {
            while let Some(reply) = parse_reply(&input)? {
                if reply.error {
                    bail!(
                        "error reply: {}",
                        String::from_utf8_lossy(&input[..reply.len]).trim_end()
                    );
                }
                input.advance(reply.len);
                pending -= 1;
                if pending == 0 {
                    break;
                }
            }
            if pending > 0 && stream.read_buf(&mut input).await? == 0 {
                bail!("the server closed the connection");
            }
        }
        measured.latencies.push(sent.elapsed());
    }
}

/// The `q` quantile (0 to 1) of sorted latencies, by nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Milliseconds, as redis-benchmark prints them.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Run the load and print its report.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    if args.clients == 0 || args.pipeline == 0 || args.requests == 0 {
        bail!("--clients, --pipeline and --requests must be at least 1");
    }
    let op = Arc::new(Operation::new(
        &args.commands,
        args.data_size,
        args.keyspace.is_some(),
    )?);
    let addr = format!("{}:{}", args.host, args.port);
    let left = Arc::new(AtomicU64::new(args.requests));
    let start = Arc::new(Barrier::new(args.clients + 1));
    let mut tasks = JoinSet::new();
    for _ in 0..args.clients {
        tasks.spawn(connection(
            addr.clone(),
            op.clone(),
            args.clone(),
            left.clone(),
            start.clone(),
        ));
    }
    start.wait().await;
    let began = Instant::now();
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done? {
            Ok(m) => latencies.extend(m.latencies),
            Err(e) => {
                eprintln!("pipeline_bench: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let elapsed = began.elapsed();
    latencies.sort_unstable();
    let rate = args.requests as f64 / elapsed.as_secs_f64();
    let avg = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| args.commands.join("; "));
    let (p50, p95, p99) = (
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.95),
        quantile(&latencies, 0.99),
    );
    let (min, max) = (latencies[0], latencies[latencies.len() - 1]);
    if args.csv {
        println!(
            "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\""
        );
        println!(
            "\"{name}\",\"{rate:.2}\",\"{:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\"",
            ms(avg),
            ms(min),
            ms(p50),
            ms(p95),
            ms(p99),
            ms(max)
        );
    } else {
        println!("{name}");
        println!(
            "  {} operations in {:.2} s: {rate:.0} operations/s",
            args.requests,
            elapsed.as_secs_f64()
        );
        println!(
            "  pipeline latency ms: avg {:.3}, min {:.3}, p50 {:.3}, p95 {:.3}, p99 {:.3}, max {:.3}",
            ms(avg),
            ms(min),
            ms(p50),
            ms(p95),
            ms(p99),
            ms(max)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both commands of an operation share its random number; `__data__` is the value.
    #[test]
    fn encodes_an_operation() {
        let op = Operation::new(
            &[
                "HSET key:__rand_int__ f __data__".into(),
                "PEXPIRE key:__rand_int__ 3600000 NX".into(),
            ],
            4,
            true,
        )
        .unwrap();
        let mut out = Vec::new();
        op.encode(42, &mut out);
        assert_eq!(
            out,
            b"*4\r\n$4\r\nHSET\r\n$16\r\nkey:000000000042\r\n$1\r\nf\r\n$4\r\nxxxx\r\n\
              *4\r\n$7\r\nPEXPIRE\r\n$16\r\nkey:000000000042\r\n$7\r\n3600000\r\n$2\r\nNX\r\n"
        );
        assert_eq!(op.replies(), 2);
    }

    /// Without a keyspace, `__rand_int__` is sent as written.
    #[test]
    fn keeps_the_placeholder_without_a_keyspace() {
        assert_eq!(
            parse_word("key:__rand_int__", false),
            vec![Part::Text(b"key:__rand_int__".to_vec())]
        );
        assert_eq!(
            parse_word("a__data__b__rand_int__", true),
            vec![
                Part::Text(b"a".to_vec()),
                Part::Data,
                Part::Text(b"b".to_vec()),
                Part::Rand
            ]
        );
    }

    /// Complete, incomplete, nested and error replies.
    #[test]
    fn parses_replies() {
        let ok = |buf: &[u8]| parse_reply(buf).unwrap();
        assert_eq!(
            ok(b"+OK\r\n+OK"),
            Some(Reply {
                len: 5,
                error: false
            })
        );
        assert_eq!(
            ok(b":1\r\n"),
            Some(Reply {
                len: 4,
                error: false
            })
        );
        assert_eq!(
            ok(b"-ERR no\r\n"),
            Some(Reply {
                len: 9,
                error: true
            })
        );
        assert_eq!(
            ok(b"$3\r\nabc\r\n"),
            Some(Reply {
                len: 9,
                error: false
            })
        );
        assert_eq!(
            ok(b"$-1\r\n"),
            Some(Reply {
                len: 5,
                error: false
            })
        );
        assert_eq!(ok(b"$3\r\nab"), None);
        assert_eq!(ok(b"+OK\r"), None);
        assert_eq!(
            ok(b"*2\r\n:1\r\n*1\r\n$1\r\na\r\n"),
            Some(Reply {
                len: 19,
                error: false
            })
        );
        assert_eq!(ok(b"*2\r\n:1\r\n"), None);
        assert!(parse_reply(b"%1\r\n").is_err());
    }

    /// Operations are handed out in pipelines until none are left.
    #[test]
    fn claims_operations() {
        let left = AtomicU64::new(70);
        assert_eq!(claim(&left, 32), 32);
        assert_eq!(claim(&left, 32), 32);
        assert_eq!(claim(&left, 32), 6);
        assert_eq!(claim(&left, 32), 0);
    }

    /// Nearest-rank quantiles.
    #[test]
    fn quantiles() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(quantile(&sorted, 0.5), Duration::from_micros(50));
        assert_eq!(quantile(&sorted, 0.99), Duration::from_micros(99));
        assert_eq!(quantile(&sorted[..1], 0.99), Duration::from_micros(1));
    }
}
