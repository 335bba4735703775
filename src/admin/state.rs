//! What the admin endpoints share: the state they report on and the shapes of their
//! answers (plain text, JSON). Imported by the routes and the console, importing neither.

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::control::Control;
use crate::health::UpstreamHealth;
use crate::keyspace::report::LiveReport;
use crate::telemetry::CommandLatency;

/// Produces the live keyspace report served as `/keyspace`.
pub type KeyspaceSource = Arc<dyn Fn() -> LiveReport + Send + Sync>;

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
    /// The keyspace insight's report, for `/keyspace`; `None` while no insight runs (the
    /// endpoint then answers `404 keyspace insight disabled`).
    pub keyspace: Option<KeyspaceSource>,
}

/// The state as every handler holds it.
pub type Shared = Arc<AdminState>;

/// A plain-text answer.
pub fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// A JSON answer (pretty-printed, newline-terminated, as `/status` always was).
pub fn json(value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
