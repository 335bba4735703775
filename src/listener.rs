//! Accepting client connections: the connection cap, and stopping cleanly.
//!
//! Each accepted connection takes a permit from a semaphore sized by `proxy.max_clients`;
//! the permit lives as long as the session and gives its slot back when dropped. A client
//! over the cap gets Redis's own wording, prefixed so it is clear the proxy refused it, and
//! the connection closes. Before that, the connection-rate limits of [`Admission`] apply
//! (globally and per client address), answered the same way. On shutdown the listener stops accepting, and sessions finish the
//! replies in flight (within `proxy.drain_timeout`).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::admission::Admission;
use crate::identity::ClientIdentity;
use crate::session::{Session, Shared};

/// The client listener.
pub struct Listener {
    listener: TcpListener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    max_clients: usize,
    admission: Admission,
}

impl Listener {
    /// Wrap a bound socket.
    pub fn new(
        listener: TcpListener,
        shared: Arc<Shared>,
        slots: Arc<Semaphore>,
        admission: Admission,
    ) -> Self {
        Listener {
            listener,
            shared,
            max_clients: slots.available_permits(),
            slots,
            admission,
        }
    }

    /// Accept until `shutdown` turns true, then wait up to `drain` for sessions to finish.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        loop {
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                _ = shutdown.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let metrics = &self.shared.metrics;
            if let Err(refusal) = self.admission.admit(peer.ip()) {
                metrics.clients_rate_limited.increment(1);
                tracing::debug!(%peer, "{refusal}");
                refuse(stream, format!("-{refusal}\r\n"));
                continue;
            }
            let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                metrics.clients_refused.increment(1);
                refuse(
                    stream,
                    format!(
                        "-ERR respguard: max number of clients reached (proxy.max_clients = {})\r\n",
                        self.max_clients
                    ),
                );
                continue;
            };
            metrics.clients_accepted.increment(1);
            metrics.clients_open.increment(1.0);
            let shared = Arc::clone(&self.shared);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let session = Session::new(Arc::clone(&shared), stream, ClientIdentity::new(peer));
                let end = session.run(shutdown).await;
                tracing::debug!(%peer, ?end, "session ended");
                shared.metrics.clients_open.decrement(1.0);
                drop(permit);
            });
        }
        // Wait for every session's permit to come back, or for the drain time to run out.
        let all = self.max_clients as u32;
        let _ = tokio::time::timeout(drain, self.slots.acquire_many(all)).await;
    }
}

/// Tell a refused client why, then close its connection (without waiting on it).
fn refuse(stream: tokio::net::TcpStream, message: String) {
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(message.as_bytes()))
            .await;
    });
}
