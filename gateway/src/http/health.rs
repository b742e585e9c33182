//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::ledger::Backlog;
use crate::state::AppState;

/// The process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the settings can be read (the store answers, or a recent
/// snapshot is cached) and the ledger's backlog is not full. The body says
/// which, with the backlog.
///
/// A backlog alone (the database is down, rows wait in memory or in the
/// spill file) keeps the gateway ready: every gateway of a fleet shares the
/// database, so turning unready on it would take them all out of the load
/// balancer at once. Only a full backlog, which admission refuses requests
/// on anyway, turns a gateway unready.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let ledger = app.ledger.backlog();
    let unready = if ledger.full {
        Some("ledger backlog full")
    } else if app.catalog.snapshot().await.is_err() {
        Some("store unavailable")
    } else {
        None
    };
    let body = json!({
        "status": if unready.is_some() { "unready" } else { "ready" },
        "reason": unready,
        "ledger": ledger,
    });
    let status = if unready.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    metrics::gauge!("gateway_ledger_queue_depth").set(app.ledger.depth() as f64);
    backlog_gauges(&app.ledger.backlog());
    let body = app
        .metrics
        .as_ref()
        .map(metrics_exporter_prometheus::PrometheusHandle::render)
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn backlog_gauges(b: &Backlog) {
    metrics::gauge!("gateway_ledger_memory_rows").set(b.memory_rows as f64);
    metrics::gauge!("gateway_ledger_memory_bytes").set(b.memory_bytes as f64);
    metrics::gauge!("gateway_ledger_spill_rows").set(b.spill_rows as f64);
    metrics::gauge!("gateway_ledger_spill_bytes").set(b.spill_bytes as f64);
    metrics::gauge!("gateway_ledger_oldest_age_seconds").set(b.oldest_age_seconds.unwrap_or(0.0));
    metrics::gauge!("gateway_ledger_store_reachable").set(if b.store_reachable == Some(false) {
        0.0
    } else {
        1.0
    });
    metrics::gauge!("gateway_ledger_backlog_full").set(if b.full { 1.0 } else { 0.0 });
}
