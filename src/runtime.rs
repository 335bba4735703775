//! The runtime model (`proxy.runtime`): which threads serve clients.
//!
//! - `multi-thread`: one tokio work-stealing runtime of `proxy.worker_threads` threads runs
//!   everything: one listening socket, one accept loop, and a session may move between
//!   threads.
//! - `per-core`: the control plane (signals, reloads, the admin listener, the monitor) runs
//!   on a single-threaded runtime on the main thread, and [`serve`] starts
//!   `proxy.worker_threads` serving threads (one per core when 0), each a single-threaded
//!   runtime with its own listening socket bound to the same address with `SO_REUSEPORT`.
//!   The kernel spreads new connections over the sockets; a session stays on the thread
//!   that accepted it.
//!
//! Either way every socket accepts into one [`Intake`], so `proxy.max_clients` and the
//! connection rates stay global; every listener watches the same shutdown signal and waits
//! for every session of the proxy before it stops; and a reload reaches every session
//! through the shared [`crate::control::Control`]. docs/benchmarks.md ("Runtime model")
//! holds the measurements behind the default.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{RawProxy, RuntimeModel};
use crate::listener::{Intake, Listener};

/// The runtime the process starts on: for `multi-thread` the one that serves clients too;
/// for `per-core` the control plane's, single-threaded ([`serve`] starts the serving
/// threads).
pub fn build(proxy: &RawProxy) -> io::Result<Runtime> {
    match proxy.runtime {
        RuntimeModel::MultiThread => {
            let mut builder = Builder::new_multi_thread();
            if proxy.worker_threads > 0 {
                builder.worker_threads(proxy.worker_threads);
            }
            builder.enable_all().build()
        }
        RuntimeModel::PerCore => Builder::new_current_thread().enable_all().build(),
    }
}

/// How many serving threads `per-core` starts: `worker_threads`, or one per core when 0.
pub fn serving_threads(worker_threads: usize) -> usize {
    match worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The listeners [`serve`] started.
pub struct Serving {
    /// The address clients connect to (with the port chosen, if `listen` asked for 0).
    pub addr: SocketAddr,
    listeners: Vec<Stopped>,
}

/// How to learn that one listener has stopped.
enum Stopped {
    /// A listener task on the runtime that called [`serve`].
    Task(JoinHandle<()>),
    /// A serving thread: completes (or is dropped) once its runtime is gone.
    Thread(oneshot::Receiver<()>),
}

impl Serving {
    /// Wait until every listener has stopped: shutdown was signalled and every session has
    /// finished, or the drain timeout ran out.
    pub async fn stopped(self) {
        for listener in self.listeners {
            match listener {
                Stopped::Task(task) => {
                    let _ = task.await;
                }
                Stopped::Thread(thread) => {
                    let _ = thread.await;
                }
            }
        }
    }
}

/// Bind `listen` and serve clients through `intake` as `proxy.runtime` says, until
/// `shutdown` turns true; then wait up to `proxy.drain_timeout` for the sessions.
pub async fn serve(
    proxy: &RawProxy,
    listen: SocketAddr,
    intake: Arc<Intake>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<Serving> {
    let drain = proxy.drain_timeout.0;
    match proxy.runtime {
        RuntimeModel::MultiThread => {
            let socket = TcpListener::bind(listen).await?;
            let addr = socket.local_addr()?;
            let listener = Listener::new(socket, intake).run(shutdown, drain);
            Ok(Serving {
                addr,
                listeners: vec![Stopped::Task(tokio::spawn(listener))],
            })
        }
        RuntimeModel::PerCore => {
            let sockets = bind_shared(listen, serving_threads(proxy.worker_threads))?;
            let addr = sockets[0].local_addr()?;
            let listeners = sockets
                .into_iter()
                .enumerate()
                .map(|(index, socket)| {
                    spawn_core(index, socket, Arc::clone(&intake), shutdown.clone(), drain)
                })
                .collect::<io::Result<_>>()?;
            Ok(Serving { addr, listeners })
        }
    }
}

/// `count` listening sockets on one address, sharing it through `SO_REUSEPORT`: the first
/// binds `listen` (choosing the port if it is 0), the others the address it got. Returned
/// as std sockets, each to be registered by the runtime that accepts on it.
fn bind_shared(listen: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_reusable(listen)?;
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind_reusable(addr)?);
    }
    Ok(sockets)
}

/// One listening socket on `addr` with `SO_REUSEADDR` (as [`TcpListener::bind`] sets) and
/// `SO_REUSEPORT`. Needs a runtime only while it is built.
fn bind_reusable(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// The accept queue of each socket: [`TcpListener::bind`]'s.
const LISTEN_BACKLOG: u32 = 1024;

/// Start serving thread `index`: a single-threaded runtime accepting on `socket` and
/// running the sessions it accepts, until shutdown and the drain are over.
fn spawn_core(
    index: usize,
    socket: std::net::TcpListener,
    intake: Arc<Intake>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> io::Result<Stopped> {
    let runtime = Builder::new_current_thread().enable_all().build()?;
    let socket = {
        let _registering_on = runtime.enter();
        TcpListener::from_std(socket)?
    };
    let (done, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("core-{index}"))
        .spawn(move || {
            crate::mux::threads::serve_on_thread(index);
            runtime.block_on(Listener::new(socket, intake).run(shutdown, drain));
            // Sessions still running after the drain timeout end with their runtime.
            drop(runtime);
            let _ = done.send(());
        })?;
    Ok(Stopped::Thread(stopped))
}
