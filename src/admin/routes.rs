//! The admin endpoints: which path answers what, with which status and content type.
//!
//! | path | answer |
//! |---|---|
//! | `/healthz` | `200 ok`: the process serves |
//! | `/readyz` | `200` while Redis answers, else `503` with the reason |
//! | `/status` | the status report ([`Control::status`](crate::control::Control::status)), JSON |
//! | `/metrics` | Prometheus text (`404 metrics disabled` without `admin.metrics`) |
//! | `/keyspace` | the live keyspace report, JSON (`404 keyspace insight disabled` without one) |
//! | `/` and `/console/*` | the live console and the figures it polls ([`console`](super::console)) |
//!
//! Every request is a GET without a body: another method is answered `405`, a body `413`,
//! before any endpoint runs.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use metrics_exporter_prometheus::PrometheusHandle;

use super::console;
use super::state::{json, text, AdminState, KeyspaceSource, Shared};

/// The admin router over `state`.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/keyspace", get(keyspace))
        .merge(console::routes())
        .fallback(|| async { text(StatusCode::NOT_FOUND, "not found\n".to_string()) })
        .layer(middleware::from_fn(get_without_body))
        .with_state(state)
}

/// Only GET, and no body: the endpoints read nothing but the path, so a body is never
/// read, and a request announcing one is refused rather than left unread.
async fn get_without_body(request: Request, next: Next) -> Response {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_string());
    }
    let headers = request.headers();
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|l| l.as_bytes() != b"0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    if announced {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "admin requests carry no body\n".to_string(),
        );
    }
    next.run(request).await
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".to_string())
}

async fn readyz(State(state): State<Shared>) -> Response {
    if state.health.is_up() {
        text(
            StatusCode::OK,
            format!(
                "ready: upstream answering, command table from {}\n",
                state.table_source
            ),
        )
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {}\n",
                state.health.state().not_ready_reason().unwrap_or_default()
            ),
        )
    }
}

async fn status(State(state): State<Shared>) -> Response {
    json(&state.control.status())
}

async fn metrics(State(state): State<Shared>) -> Response {
    match &state.prometheus {
        Some(p) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render_metrics(p, &state),
        )
            .into_response(),
        None => text(StatusCode::NOT_FOUND, "metrics disabled\n".to_string()),
    }
}

async fn keyspace(State(state): State<Shared>) -> Response {
    keyspace_answer(state.keyspace.as_ref())
}

/// `/keyspace`: the report from `source`, or 404 while no insight runs.
pub fn keyspace_answer(source: Option<&KeyspaceSource>) -> Response {
    match source {
        Some(report) => json(&report()),
        None => text(
            StatusCode::NOT_FOUND,
            "keyspace insight disabled\n".to_string(),
        ),
    }
}

/// The recorder's metrics, with the gauges read at scrape time refreshed first, then the
/// guards' decision counts and the per-command histograms.
fn render_metrics(prometheus: &PrometheusHandle, state: &AdminState) -> String {
    metrics::gauge!("respguard_process_resident_memory_bytes")
        .set(crate::control::resident_memory_bytes() as f64);
    metrics::gauge!("respguard_upstream_connections")
        .set(state.control.upstream_connections() as f64);
    let mut text = prometheus.render();
    crate::guard::decisions::render(&mut text);
    if let Some(latency) = &state.latency {
        latency.render(&mut text);
    }
    state.control.render_keyspace_metrics(&mut text);
    text
}

/// The body of a response, for tests.
#[cfg(test)]
async fn body_of(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    String::from_utf8(bytes.to_vec()).expect("UTF-8")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::keyspace::report::{LiveReport, PrefixActivity};

    #[tokio::test]
    async fn keyspace_is_404_without_an_insight_and_the_report_with_one() {
        let disabled = keyspace_answer(None);
        assert_eq!(disabled.status(), StatusCode::NOT_FOUND);
        assert_eq!(body_of(disabled).await, "keyspace insight disabled\n");

        let report = LiveReport {
            window_seconds: 60.0,
            sample_rate: 1,
            prefix_capacity: 1024,
            tracked_prefixes: 1,
            prefixes: vec![PrefixActivity {
                prefix: "session:*".into(),
                operations: 10,
                writes: 4,
                writes_per_second: 4.0 / 60.0,
                bytes_written: 400,
                writes_without_ttl: 1,
                largest_value_bytes: 120,
                library: Some("sidekiq".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let expected = report.clone();
        let source: KeyspaceSource = Arc::new(move || report.clone());
        let answer = keyspace_answer(Some(&source));
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(
            answer.headers()[header::CONTENT_TYPE],
            "application/json",
            "served as JSON"
        );
        let parsed: LiveReport = serde_json::from_str(&body_of(answer).await).expect("JSON");
        assert_eq!(parsed, expected, "the provider's report, whole");
    }
}
