//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// The process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the settings can be read (the store answers, or a recent
/// snapshot is cached).
pub async fn readyz(State(app): State<AppState>) -> Response {
    match app.catalog.snapshot().await {
        Ok(_) => "ready".into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response(),
    }
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    metrics::gauge!("gateway_ledger_queue_depth").set(app.ledger.depth() as f64);
    let body = app
        .metrics
        .as_ref()
        .map(metrics_exporter_prometheus::PrometheusHandle::render)
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
