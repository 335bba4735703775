//! Accepting client connections: the connection cap, and stopping cleanly.
//!
//! Each accepted connection takes a permit from a semaphore sized by `proxy.max_clients`;
//! the permit lives as long as the session and gives its slot back when dropped. A client
//! over the cap gets Redis's own wording, prefixed so it is clear the proxy refused it, and
//! the connection closes. Before that, the connection-rate limits of [`Admission`] apply
//! (globally and per client address), answered the same way. Every listening socket (one,
//! or one per thread in the per-core runtime model, [`crate::runtime`]) accepts into one
//! [`Intake`], so the cap and the rates hold for the whole proxy. On shutdown the listeners
//! stop accepting, and sessions finish the replies in flight (within `proxy.drain_timeout`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use bytes::Bytes;

use crate::admission::Admission;
use crate::identity::ClientIdentity;
use crate::resp;
use crate::session::{Session, Shared};
use crate::transport::Stream;

/// What every listening socket shares: the session state, the `max_clients` permits, the
/// connection-rate limits and TLS. One per proxy, however many sockets accept into it, so
/// each limit stays global.
pub struct Intake {
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    max_clients: usize,
    admission: Admission,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Intake {
    /// The intake of a proxy serving at most `slots.available_permits()` clients.
    pub fn new(
        shared: Arc<Shared>,
        slots: Arc<Semaphore>,
        admission: Admission,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        Intake {
            tls,
            shared,
            max_clients: slots.available_permits(),
            slots,
            admission,
        }
    }
}

/// One listening socket accepting into an [`Intake`]; its sessions run on the runtime that
/// runs the listener.
pub struct Listener {
    listener: TcpListener,
    intake: Arc<Intake>,
}

impl Listener {
    /// Wrap a bound socket.
    pub fn new(listener: TcpListener, intake: Arc<Intake>) -> Self {
        Listener { listener, intake }
    }

    /// Accept until `shutdown` turns true, close the socket, then wait up to `drain` for
    /// every session of the intake (on any listener) to finish.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        let Listener { listener, intake } = self;
        let intake = &intake;
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.changed() => break,
            };
            let (stream, peer) = match accepted {
                // On a dual-stack listener an IPv4 client arrives as `::ffff:a.b.c.d`: rules,
                // admin networks and rate limits see it as the IPv4 address it is.
                Ok((stream, peer)) => (
                    stream,
                    SocketAddr::new(peer.ip().to_canonical(), peer.port()),
                ),
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let metrics = &intake.shared.metrics;
            if let Err(refusal) = intake.admission.admit(peer.ip()) {
                metrics.clients_rate_limited.increment(1);
                tracing::debug!(%peer, "{refusal}");
                refuse(stream, resp::error(&refusal.to_string()));
                continue;
            }
            let Ok(permit) = Arc::clone(&intake.slots).try_acquire_owned() else {
                metrics.clients_refused.increment(1);
                refuse(
                    stream,
                    resp::error(&format!(
                        "ERR respguard: max number of clients reached (proxy.max_clients = {})",
                        intake.max_clients
                    )),
                );
                continue;
            };
            metrics.clients_accepted.increment(1);
            metrics.clients_open.increment(1.0);
            let shared = Arc::clone(&intake.shared);
            let tls = intake.tls.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let stream = match tls {
                    None => Some(Stream::Tcp(stream)),
                    Some(acceptor) => accept_tls(stream, &acceptor, peer, &shared).await,
                };
                if let Some(stream) = stream {
                    let session =
                        Session::new(Arc::clone(&shared), stream, ClientIdentity::new(peer));
                    let end = session.run().await;
                    tracing::debug!(%peer, ?end, "session ended");
                }
                shared.metrics.clients_open.decrement(1.0);
                drop(permit);
            });
        }
        // Every session starts draining (each listener of the intake rings; once counts).
        intake.shared.shutdown.ring();
        // Closed at once: a client connecting during the drain is refused rather than left
        // waiting in the accept queue.
        drop(listener);
        // Wait for every session's permit to come back, or for the drain time to run out.
        let all = intake.max_clients as u32;
        let _ = tokio::time::timeout(drain, intake.slots.acquire_many(all)).await;
    }
}

/// The TLS handshake with a new client, within [`TLS_HANDSHAKE_TIMEOUT`]. A client speaking
/// plain RESP to the TLS port is told so in RESP before the connection closes; a failed
/// handshake (an unknown CA, a missing client certificate) is logged and closes it.
async fn accept_tls(
    stream: TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    peer: std::net::SocketAddr,
    shared: &Shared,
) -> Option<Stream> {
    let handshake = async {
        // A TLS connection starts with a handshake record (type 22).
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) if first[0] == 0x16 => {}
            Ok(1) => return Err(Some(stream)),
            _ => return Err(None),
        }
        match acceptor.accept(stream).await {
            Ok(tls) => Ok(Stream::tls(tokio_rustls::TlsStream::Server(tls))),
            Err(e) => {
                tracing::info!(%peer, error = %e, "client TLS handshake failed");
                Err(None)
            }
        }
    };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(Ok(stream))) => Some(stream),
        Ok(Err(Some(plain))) => {
            shared.metrics.client_tls_failures.increment(1);
            tracing::info!(%peer, "plain-text client on the TLS listener");
            refuse(
                plain,
                resp::error("ERR respguard: this port requires TLS (proxy.tls)"),
            );
            None
        }
        _ => {
            shared.metrics.client_tls_failures.increment(1);
            None
        }
    }
}

/// How long a client has to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Tell a refused client why, then close its connection (without waiting on it).
///
/// Whatever the client already sent is read and dropped, for at most a second: closing a
/// socket with unread input resets the connection, and the client would lose the message.
fn refuse(stream: TcpStream, message: Bytes) {
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(&message).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}
