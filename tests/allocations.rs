//! No allocation per command on the hot path: a counting global allocator over a pipeline
//! of 10,000 mixed guarded commands through a proxy with every guard configured, in front
//! of a real `redis-server` (per client, multiplexed, and as a one-node Redis Cluster
//! through the cluster router).
//!
//! The proxy runs in this process (`respguard::app::start` on a runtime made here), so the
//! allocator counts its allocations, on every thread. The client is a plain blocking
//! `TcpStream` on the test thread: every request is encoded and the reply buffer sized
//! before counting starts, and inside the counted window the client only writes, reads
//! into that buffer and counts replies, none of which allocates. Only allocations
//! (`alloc`, `alloc_zeroed`, `realloc`) are counted; frees are not.
//!
//! Its own test binary because a `#[global_allocator]` is one per binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use respguard::config::RawConfig;

/// The system allocator, counting allocations while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to `System` unchanged; counting touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Commands in the counted pipeline.
const COMMANDS: usize = 10_000;

/// Commands written before their replies are read.
const BATCH: usize = 500;

/// Every guard configured and acting on the commands below (as `CONF_ALL_GUARDS` in
/// scripts/lib.sh): TTLs added to SET and HSET, sizes checked, LPUSH onto `jobs`
/// fingerprinted and limited, the list followed as a queue, shedding levels and rules set.
///
/// The monitor polls at start and then hourly: its polls allocate (reading INFO, the queues'
/// depths) on a timer, not per command, and are kept out of the counted window.
const CONFIG: &str = r#"
# Every command observed by the keyspace insight: it allocates nothing per command either.
[keyspace]
sample_rate = 1
[monitor]
interval = "1h"
growth_window = "2h"
memory_budget = "64GiB"
[guards.shed]
soft_enter = 0.8
soft_exit = 0.75
hard_enter = 0.9
hard_exit = 0.85
[[guards.shed.rules]]
pattern = "analytics:*"
priority = "low"
[[guards.queue.rules]]
pattern = "jobs"
max_depth = 1000000000
[[guards.ttl.rules]]
pattern = "*"
ttl = "1h"
[[guards.size.rules]]
pattern = "*"
max_value = "1KiB"
max_elements = 100000
[[guards.enqueue.rules]]
preset = "generic"
name = "jobs"
pattern = "jobs"
commands = ["LPUSH"]
format = "raw"
limit = 1
window = "60s"
action = "reject"
"#;

/// A `redis-server` with no persistence on a free port, killed on drop.
struct Redis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// A one-node Redis Cluster: cluster mode on, every slot given to this node, ready
    /// once it says `cluster_state:ok`.
    fn start_cluster() -> Self {
        let redis = Self::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-announce-ip",
            "127.0.0.1",
        ]);
        let mut conn = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
        let mut ask = |args: &[&[u8]]| {
            let mut out = Vec::new();
            encode(&mut out, args);
            conn.write_all(&out).unwrap();
            let mut reply = vec![0u8; 4096];
            let n = conn.read(&mut reply).unwrap();
            String::from_utf8_lossy(&reply[..n]).into_owned()
        };
        assert_eq!(
            ask(&[b"CLUSTER", b"ADDSLOTSRANGE", b"0", b"16383"]),
            "+OK\r\n"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !ask(&[b"CLUSTER", b"INFO"]).contains("cluster_state:ok") {
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn start_with(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .args(["--dir", dir.path().to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server starts (is it installed?)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => break,
                Some(Ok(_)) => continue,
                _ => panic!("redis-server exited before it was ready"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Redis {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Append `args` to `out` as a RESP array of bulk strings.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// `COMMANDS` guarded commands in batches of `BATCH`, their LPUSH payloads numbered from
/// `round * COMMANDS` so that no round repeats another's job; with `refused`, one command in
/// ten is a SET over the size limit.
fn pipeline(round: usize, refused: bool) -> Vec<Vec<u8>> {
    let value = [b'v'; 100];
    let oversized = [b'o'; 2048];
    let mut batches = Vec::new();
    let mut out = Vec::new();
    for i in 0..COMMANDS {
        let n = (i % 100).to_string();
        let key = format!("k:{n}");
        let job = format!(
            "{{\"job\":{},\"pad\":\"{}\"}}",
            round * COMMANDS + i,
            "x".repeat(60)
        );
        match i % 10 {
            // No TTL: the TTL guard appends PX.
            0 => encode(&mut out, &[b"SET", key.as_bytes(), &value]),
            // The TTL guard adds a hidden PEXPIRE ... NX.
            1 => encode(
                &mut out,
                &[b"HSET", format!("h:{n}").as_bytes(), b"f", &value],
            ),
            // A distinct job: fingerprinted, counted, passed; the queue's depth followed.
            2 | 7 => encode(&mut out, &[b"LPUSH", b"jobs", job.as_bytes()]),
            3 | 8 => encode(&mut out, &[b"GET", key.as_bytes()]),
            4 => encode(&mut out, &[b"INCR", format!("n:{n}").as_bytes()]),
            5 => encode(&mut out, &[b"DEL", format!("d:{n}").as_bytes()]),
            // Already has a TTL: checked, forwarded as it is.
            6 => encode(&mut out, &[b"SET", key.as_bytes(), &value, b"EX", b"100"]),
            _ if refused => encode(&mut out, &[b"SET", key.as_bytes(), &oversized]),
            _ => encode(&mut out, &[b"SET", format!("low:{n}").as_bytes(), &value]),
        }
        if (i + 1) % BATCH == 0 {
            batches.push(std::mem::take(&mut out));
        }
    }
    batches
}

/// Complete replies at the start of `buf` and the bytes they take; allocates nothing.
/// Replies here are simple strings, errors, integers and bulk strings.
fn complete_replies(buf: &[u8]) -> (usize, usize) {
    let line_end = |from: usize| {
        buf[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p + 2)
    };
    let (mut replies, mut at) = (0, 0);
    while at < buf.len() {
        let Some(end) = line_end(at) else { break };
        let next = match buf[at] {
            b'+' | b'-' | b':' => end,
            b'$' => {
                let len = std::str::from_utf8(&buf[at + 1..end - 2])
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .expect("bulk length");
                if len < 0 {
                    end
                } else {
                    end + len as usize + 2
                }
            }
            other => panic!("unexpected reply type {:?}", other as char),
        };
        if next > buf.len() {
            break;
        }
        replies += 1;
        at = next;
    }
    (replies, at)
}

/// Send every batch and read all its replies into `buf` (never grown); the replies that
/// were errors are counted.
fn run(stream: &mut TcpStream, batches: &[Vec<u8>], buf: &mut [u8]) -> usize {
    let mut errors = 0;
    for batch in batches {
        stream.write_all(batch).unwrap();
        let (mut read, mut filled) = (0, 0);
        while read < BATCH {
            let n = stream.read(&mut buf[filled..]).unwrap();
            assert!(n > 0, "the proxy closed the connection");
            filled += n;
            let (replies, used) = complete_replies(&buf[..filled]);
            errors += buf[..used]
                .split(|&b| b == b'\n')
                .filter(|l| l.first() == Some(&b'-'))
                .count();
            read += replies;
            buf.copy_within(used..filled, 0);
            filled -= used;
        }
        assert_eq!(filled, 0, "more replies than commands");
    }
    errors
}

/// Allocations counted while `batches` go through the proxy, and the error replies.
fn counted(stream: &mut TcpStream, batches: &[Vec<u8>], buf: &mut [u8]) -> (u64, usize) {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let errors = run(stream, batches, buf);
    COUNTING.store(false, Ordering::SeqCst);
    (ALLOCATIONS.load(Ordering::SeqCst), errors)
}

/// How the proxy reaches Redis in one run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Upstream {
    PerClient,
    Multiplexed,
    /// A one-node Redis Cluster: every command read by the client's cluster router.
    Cluster,
}

/// Per-client, multiplexed (`upstream.connections`) and in front of a cluster, one after
/// the other: the allocation counter is global to the process.
#[test]
fn a_pipeline_of_guarded_commands_allocates_nothing_per_command() {
    for upstream in [
        Upstream::PerClient,
        Upstream::Multiplexed,
        Upstream::Cluster,
    ] {
        allocations_per_command(upstream);
    }
}

fn allocations_per_command(upstream: Upstream) {
    let redis = match upstream {
        Upstream::Cluster => Redis::start_cluster(),
        _ => Redis::start(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut raw = RawConfig::from_toml(CONFIG).expect("config parses");
    raw.proxy.listen = "127.0.0.1:0".into();
    raw.admin.listen = String::new();
    raw.upstream.url = match upstream {
        Upstream::Cluster => format!("redis-cluster://127.0.0.1:{}", redis.port),
        _ => format!("redis://127.0.0.1:{}", redis.port),
    };
    if upstream == Upstream::Multiplexed {
        raw.upstream.connections = respguard::config::ConnectionModel::Multiplexed;
    }
    let config = raw.validate().expect("config is valid");
    let proxy = runtime
        .block_on(respguard::app::start(config))
        .expect("proxy starts");

    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = vec![0u8; 4 << 20];
    // Warm up: buffers grow to the pipeline's size, tables' shards are made, rules' metric
    // handles are registered.
    for round in 0..3 {
        run(&mut stream, &pipeline(round, true), &mut buf);
    }

    let batches = pipeline(3, false);
    let (allocations, errors) = counted(&mut stream, &batches, &mut buf);
    assert_eq!(errors, 0, "every command passes");
    // Each kind of command is at least a tenth of the pipeline, so one allocation per
    // command of any kind is 1,000 or more. What is allowed is per read and per batch, not per
    // command (the session's buffers making room for a batch of requests). In front of a
    // cluster, the router and its node task add their own per-read buffers and channel
    // blocks: about 500 per 10,000 commands, still under one per command of any kind.
    let bound = match upstream {
        Upstream::Cluster => COMMANDS / 10,
        _ => COMMANDS / 20,
    };
    assert!(
        allocations < bound as u64,
        "{allocations} allocations for {COMMANDS} guarded commands ({upstream:?}): the hot path allocates"
    );

    // Refusals are not the hot path: their allocations (the error's text) are shown, not
    // bounded.
    let (refusing, errors) = counted(&mut stream, &pipeline(4, true), &mut buf);
    eprintln!(
        "{upstream:?}: {allocations} allocations for {COMMANDS} commands; {refusing} with {errors} of them refused"
    );

    runtime.block_on(proxy.shutdown());
}
