//! Watching the upstream: a dedicated connection that PINGs Redis at a fixed interval, so
//! `/readyz` says whether Redis answers even when no client is connected.
//!
//! It connects through the shared [`ConnectGate`], so its failures open the circuit breaker
//! (and sessions fail fast) and its reconnects respect the global connect rate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::upstream::{read_replies, ConnectGate};

/// Whether the upstream answered its last PING.
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    up: AtomicBool,
}

impl UpstreamHealth {
    /// True when the last PING was answered.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("upstream is answering");
            } else {
                tracing::warn!("upstream is not answering");
            }
        }
        metrics::gauge!("respguard_upstream_up").set(if up { 1.0 } else { 0.0 });
    }
}

/// PING the upstream every `interval` until shutdown, recording the result in `health`.
pub async fn watch_upstream(
    gate: Arc<ConnectGate>,
    health: Arc<UpstreamHealth>,
    interval: Duration,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn: Option<TcpStream> = None;
    loop {
        if conn.is_none() {
            conn = gate.connect().await.ok();
        }
        let ok = match conn.as_mut() {
            Some(c) => tokio::time::timeout(timeout, ping(c))
                .await
                .is_ok_and(|r| r.is_ok()),
            None => false,
        };
        if !ok {
            conn = None;
        }
        health.set(ok);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn ping(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
    let replies = read_replies(conn, 1).await?;
    match replies.into_iter().next() {
        // LOADING and other errors mean Redis cannot serve yet.
        Some(Ok(_)) => Ok(()),
        _ => Err(std::io::Error::other("PING refused")),
    }
}
