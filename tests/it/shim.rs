//! A fault-injection TCP shim for tests: it sits between the proxy and Redis, copies bytes
//! both ways, and on command delays, stalls, cuts, half-closes or corrupts the reply
//! stream of every connection through it. Nothing in the proxy knows it is there.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::harness::{eventually, WAIT};

/// What the shim does to the replies (Redis to proxy) from now on.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Copy everything as it comes.
    Pass,
    /// Hold each chunk of replies this long before passing it on.
    Delay(Duration),
    /// Stop passing replies on (requests still reach Redis): a Redis that went silent.
    Stall,
    /// Pass this many more reply bytes per connection, then close both sides.
    CutAfter(usize),
    /// Pass this many more reply bytes per connection, then send FIN to the proxy but keep
    /// reading what the proxy sends.
    HalfCloseAfter(usize),
    /// Pass this many more reply bytes per connection, then replace the next byte with `?`
    /// (not a RESP type), and pass the rest.
    CorruptAfter(usize),
}

/// The shim's listening side; stops when dropped.
pub struct Shim {
    /// Where the proxy should connect.
    pub addr: SocketAddr,
    fault: watch::Sender<(u64, Fault)>,
    connections: Arc<Mutex<Vec<Record>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the shim remembers of one connection: the start of what the proxy sent on it (to
/// tell a client's connection from the proxy's monitor) and whether it is still open.
#[derive(Debug, Default)]
struct Record {
    head: Vec<u8>,
    open: bool,
}

/// Bytes of each connection's requests kept in its [`Record`].
const HEAD: usize = 4096;

impl Shim {
    /// A shim in front of `upstream`, passing everything until told otherwise.
    pub async fn start(upstream: SocketAddr) -> Shim {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (fault, fault_rx) = watch::channel((0, Fault::Pass));
        let connections: Arc<Mutex<Vec<Record>>> = Arc::default();
        let c = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((proxy_side, _)) = listener.accept().await else {
                    return;
                };
                let Ok(redis_side) = TcpStream::connect(upstream).await else {
                    continue; // Redis is down: the proxy sees the connection close.
                };
                proxy_side.set_nodelay(true).unwrap();
                redis_side.set_nodelay(true).unwrap();
                let faults = fault_rx.clone();
                let records = Arc::clone(&c);
                let index = {
                    let mut r = records.lock().unwrap();
                    r.push(Record {
                        head: Vec::new(),
                        open: true,
                    });
                    r.len() - 1
                };
                tokio::spawn(async move {
                    carry(proxy_side, redis_side, faults, &records, index).await;
                    records.lock().unwrap()[index].open = false;
                });
            }
        });
        Shim {
            addr,
            fault,
            connections,
            task,
        }
    }

    /// `redis://` URL of the shim, for the proxy's upstream.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Apply `fault` to every connection from now on.
    pub fn set(&self, fault: Fault) {
        self.fault.send_modify(|(generation, f)| {
            *generation += 1;
            *f = fault;
        });
    }

    /// Connections whose requests so far contain `needle`, and how many of them are open.
    pub fn carrying(&self, needle: &[u8]) -> (usize, usize) {
        let records = self.connections.lock().unwrap();
        let matching = records
            .iter()
            .filter(|r| r.head.windows(needle.len()).any(|w| w == needle));
        matching.fold((0, 0), |(all, open), r| {
            (all + 1, open + usize::from(r.open))
        })
    }

    /// Wait until every connection that carried `needle` is closed (there was at least one).
    pub async fn wait_closed(&self, needle: &str) {
        let what = format!("shim: every connection carrying {needle:?} closed");
        eventually!(WAIT, what, {
            match self.carrying(needle.as_bytes()) {
                (all, 0) if all > 0 => Ok(()),
                (all, open) => Err(format!("{open} of {all} still open")),
            }
        })
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copy one connection both ways until either side closes or a fault cuts it.
async fn carry(
    proxy: TcpStream,
    redis: TcpStream,
    faults: watch::Receiver<(u64, Fault)>,
    records: &Arc<Mutex<Vec<Record>>>,
    index: usize,
) {
    let (proxy_rx, proxy_tx) = proxy.into_split();
    let (redis_rx, redis_tx) = redis.into_split();
    let mut requests = tokio::spawn(copy_requests(
        proxy_rx,
        redis_tx,
        Arc::clone(records),
        index,
    ));
    tokio::select! {
        ended = copy_replies(redis_rx, proxy_tx, faults) => {
            if ended == Ended::HalfClosed {
                // The request side runs on until the proxy closes.
                let _ = (&mut requests).await;
            } else {
                // Cut, or Redis closed: close both sockets.
                requests.abort();
            }
        }
        // The proxy closed its side (even while replies are stalled): close everything.
        _ = &mut requests => {}
    }
}

#[derive(PartialEq)]
enum Ended {
    Closed,
    HalfClosed,
}

async fn copy_requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    records: Arc<Mutex<Vec<Record>>>,
    index: usize,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                {
                    let head = &mut records.lock().unwrap()[index].head;
                    let room = HEAD.saturating_sub(head.len()).min(n);
                    head.extend_from_slice(&buf[..room]);
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn copy_replies(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut faults: watch::Receiver<(u64, Fault)>,
) -> Ended {
    let mut buf = vec![0u8; 64 * 1024];
    let mut generation = u64::MAX;
    let mut passed_since_fault = 0usize;
    loop {
        let fault = {
            let current = faults.borrow_and_update();
            if current.0 != generation {
                generation = current.0;
                passed_since_fault = 0;
            }
            current.1.clone()
        };
        if fault == Fault::Stall {
            // Hold everything until the fault changes.
            if faults.changed().await.is_err() {
                return Ended::Closed;
            }
            continue;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(n) => n,
            },
            changed = faults.changed() => {
                if changed.is_err() { return Ended::Closed; }
                continue;
            }
        };
        let chunk = &mut buf[..n];
        match fault {
            Fault::Pass | Fault::Stall => {}
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::CutAfter(limit) | Fault::HalfCloseAfter(limit) => {
                let room = limit.saturating_sub(passed_since_fault);
                if chunk.len() >= room {
                    let _ = to.write_all(&chunk[..room]).await;
                    if matches!(fault, Fault::HalfCloseAfter(_)) {
                        let _ = to.shutdown().await;
                        return Ended::HalfClosed;
                    }
                    return Ended::Closed;
                }
            }
            Fault::CorruptAfter(limit) => {
                if passed_since_fault <= limit && limit < passed_since_fault + chunk.len() {
                    chunk[limit - passed_since_fault] = b'?';
                }
            }
        }
        passed_since_fault += n;
        if to.write_all(&buf[..n]).await.is_err() {
            return Ended::Closed;
        }
    }
}
