//! The admin HTTP listener: `/healthz`, `/readyz`, `/status`, `/metrics`, `/keyspace` and
//! the live console at `/`.
//!
//! The routes ([`routes`]) are an axum router; the connections are served one by one with
//! hyper's HTTP/1.1 server, so every bound is set on hyper itself rather than trusted to a
//! default: one request per connection (no keep-alive: probers and scrapers open a
//! connection per request anyway), a request head of at most [`MAX_HEAD`] bytes (a larger
//! one is answered `431 Request Header Fields Too Large`), no request body (`413`), the
//! whole connection within [`CONNECTION_TIME`] (a client that sends its head a byte at a
//! time, or reads its answer as slowly, is cut off), and at most [`MAX_CONNECTIONS`]
//! connections at once (the next is answered `503` and closed). So a stuck or hostile
//! prober can hold neither memory nor the listener.
//!
//! On shutdown the listener stops accepting, and the connections it is serving finish
//! their request (each still within its time bound) and close.
//!
//! Never writes anything but HTTP responses to its own clients, and never changes the
//! proxy's state: every endpoint reads.

pub mod console;
pub mod routes;
pub mod state;

pub use state::{AdminState, KeyspaceSource};

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// The largest request head read, in bytes (hyper's smallest read buffer, and the
/// listener's bound since its first version).
pub const MAX_HEAD: usize = 8 * 1024;

/// How long one connection may last, from accept to close: reading the request, answering
/// and writing the answer.
pub const CONNECTION_TIME: Duration = Duration::from_secs(5);

/// The most admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Serve admin requests until `shutdown` turns true (or its sender is dropped), then wait
/// for the connections in progress to finish (each within [`CONNECTION_TIME`]).
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let router = routes::router(Arc::new(state));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = shutdown.changed() => break,
        };
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(connection(stream, router.clone(), permit, shutdown.clone()));
            }
            Err(_) => refuse_busy(stream),
        }
    }
    drop(listener);
    let _ = slots.acquire_many(MAX_CONNECTIONS as u32).await;
}

/// Serve one connection: one request, bounded in size and time.
async fn connection(
    stream: TcpStream,
    router: axum::Router,
    _permit: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let served = http1::Builder::new()
        .keep_alive(false)
        .title_case_headers(true)
        .max_buf_size(MAX_HEAD)
        .timer(TokioTimer::new())
        .header_read_timeout(CONNECTION_TIME)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    tokio::pin!(served);
    let bounded = tokio::time::timeout(CONNECTION_TIME, async {
        tokio::select! {
            r = served.as_mut() => r,
            _ = shutdown.changed() => {
                served.as_mut().graceful_shutdown();
                served.as_mut().await
            }
        }
    });
    // Errors here are the client's (a malformed or oversized head, already answered by
    // hyper, or a connection dropped midway): nothing to report to anyone.
    let _ = bounded.await;
}

/// Over [`MAX_CONNECTIONS`]: say so without waiting for the request, and close. The answer
/// goes in one non-blocking write; a client that cannot take even that gets only the close.
fn refuse_busy(stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
        Content-Length: 27\r\nConnection: close\r\n\r\ntoo many admin connections\n";
    let _ = stream.try_write(BUSY);
}
