//! The admin HTTP listener: `/healthz`, `/readyz`, `/status` and `/metrics`.
//!
//! A deliberately small HTTP/1.1 responder (one GET per connection, no keep-alive): these
//! endpoints are scraped every few seconds by Prometheus and probed by orchestrators, and
//! nothing more is needed than a status line and a body. Requests are bounded in size and
//! time, so a stuck or hostile prober cannot hold memory: a request head over 8 KiB is
//! answered `431 Request Header Fields Too Large`.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::control::Control;
use crate::health::UpstreamHealth;
use crate::telemetry::CommandLatency;

/// The largest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct AdminState {
    /// Renders the Prometheus text format.
    pub prometheus: Option<PrometheusHandle>,
    /// The per-command histograms, rendered after the recorder's metrics.
    pub latency: Option<Arc<CommandLatency>>,
    /// Whether Redis answers.
    pub health: Arc<UpstreamHealth>,
    /// The status report.
    pub control: Arc<Control>,
    /// Name of the command table's source, for `/readyz`.
    pub table_source: &'static str,
}

/// Serve admin requests until shutdown.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), respond(stream, &state)).await;
        });
    }
}

/// The recorder's metrics, with the gauges read at scrape time refreshed first, then the
/// per-command histograms.
fn render_metrics(prometheus: &PrometheusHandle, state: &AdminState) -> String {
    metrics::gauge!("respguard_process_resident_memory_bytes")
        .set(crate::control::resident_memory_bytes() as f64);
    metrics::gauge!("respguard_upstream_connections")
        .set(state.control.upstream_connections() as f64);
    let mut text = prometheus.render();
    if let Some(latency) = &state.latency {
        latency.render(&mut text);
    }
    text
}

async fn respond(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        if buf.len() + n > MAX_REQUEST {
            return refuse_oversized(stream).await;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = if method != b"GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else {
        match path {
            b"/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
            b"/readyz" if state.health.is_up() => (
                "200 OK",
                "text/plain",
                format!(
                    "ready: upstream answering, command table from {}\n",
                    state.table_source
                ),
            ),
            b"/readyz" => (
                "503 Service Unavailable",
                "text/plain",
                format!(
                    "not ready: {}\n",
                    state.health.state().not_ready_reason().unwrap_or_default()
                ),
            ),
            b"/status" => (
                "200 OK",
                "application/json",
                format!("{:#}\n", state.control.status()),
            ),
            b"/metrics" => match &state.prometheus {
                Some(p) => (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    render_metrics(p, state),
                ),
                None => (
                    "404 Not Found",
                    "text/plain",
                    "metrics disabled\n".to_string(),
                ),
            },
            _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
        }
    };
    write_response(&mut stream, status, content_type, &body).await
}

/// A request head over [`MAX_REQUEST`]: answer 431 and close. The rest of what the client
/// sends is read and dropped (within the request's time bound): closing with unread input
/// would reset the connection and lose the answer.
async fn refuse_oversized(mut stream: TcpStream) -> std::io::Result<()> {
    let body = format!("request head larger than {MAX_REQUEST} bytes\n");
    write_response(
        &mut stream,
        "431 Request Header Fields Too Large",
        "text/plain",
        &body,
    )
    .await?;
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

async fn write_response(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
