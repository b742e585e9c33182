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
    let mut body = app
        .metrics
        .as_ref()
        .map(metrics_exporter_prometheus::PrometheusHandle::render)
        .unwrap_or_default();
    backends_up(&app, &mut body).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// `gateway_backend_up`, one series for each enabled edge backend of the
/// current snapshot (stored or self-registered), 1 while its polls and
/// connections succeed. Rendered here rather than kept as a gauge: a gauge
/// of a backend removed, disabled or gone (a worker that left, a pod's
/// address that changed) would stay at its last value for good, its alert
/// firing and the series growing with every address the fleet ever had.
async fn backends_up(app: &AppState, out: &mut String) {
    use std::fmt::Write as _;
    let Ok(snapshot) = app.catalog.snapshot().await else {
        return;
    };
    let edges = snapshot
        .backends
        .iter()
        .filter(|b| b.enabled && b.kind == crate::routing::BackendKind::Edge);
    let mut lines = String::new();
    for b in edges {
        let live = app.live.get(&b.id);
        let up = u8::from(live.failures == 0 && live.load.is_some());
        let name = b
            .name
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = writeln!(lines, "gateway_backend_up{{backend=\"{name}\"}} {up}");
    }
    if !lines.is_empty() {
        out.push_str("# HELP gateway_backend_up Whether an edge backend's load polls and connections succeed (1) or fail (0).\n");
        out.push_str("# TYPE gateway_backend_up gauge\n");
        out.push_str(&lines);
    }
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
