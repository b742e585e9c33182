//! Logs, traces and metrics set-up.
//!
//! Logs go to stderr. Traces (OpenTelemetry, OTLP over HTTP/protobuf) are
//! exported only when the standard `OTEL_EXPORTER_OTLP_*ENDPOINT`
//! variables ask (see the `otel` crate); the spans themselves are made in
//! [`crate::traces`].
//!
//! Metrics go through the `metrics` facade to one process-wide Prometheus
//! recorder, rendered at `/metrics`. Labels are backend names, statuses,
//! route reasons and error kinds: low cardinality, and never a key, a key id
//! or request content.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

/// Buckets (seconds) for request duration and TTFT: from sub-millisecond
/// gateway answers to minute-long generations.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets (seconds) for the time a request's admission waits on Redis,
/// and a lease renewal's round trip: a loopback round trip is tens of
/// microseconds, and the calls time out at `redis_timeout_ms` (50 ms by
/// default).
const REDIS_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_075, 0.000_1, 0.000_125, 0.000_15, 0.000_2, 0.000_25, 0.000_3,
    0.000_4, 0.000_5, 0.000_75, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// The process's Prometheus recorder, installed on first use. `None` when
/// another recorder was installed first (then `/metrics` is empty).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Prefix("gateway_limits_".to_owned()),
                    REDIS_BUCKETS,
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "gateway_requests_total",
        "Admitted chat requests by ledger status, backend, route reason, privacy class and backend zone"
    );
    metrics::describe_counter!(
        "gateway_energy_millijoules_total",
        "Energy of served requests (reported by edge workers, else estimated), by backend and zone"
    );
    metrics::describe_counter!(
        "gateway_cost_microusd_total",
        "Cost of served requests at the backends' prices, in millionths of a US dollar"
    );
    metrics::describe_histogram!(
        "gateway_request_duration_seconds",
        "Admitted chat request duration, to the last byte"
    );
    metrics::describe_histogram!("gateway_ttft_seconds", "Time to the first upstream token");
    metrics::describe_histogram!(
        "gateway_limits_redis_seconds",
        "Time a request's admission waited on Redis: 0 from a lease, else one script (rates and budget hold)"
    );
    metrics::describe_counter!(
        "gateway_limits_leased_total",
        "Admissions decided from this gateway's lease of the key's limits, with no Redis round trip"
    );
    metrics::describe_histogram!(
        "gateway_limits_lease_seconds",
        "Round trip of a lease renewal (in the background, off the request path)"
    );
    metrics::describe_counter!(
        "gateway_upstream_errors_total",
        "Failed upstream attempts by backend and kind"
    );
    metrics::describe_counter!(
        "gateway_failovers_total",
        "Requests moved to the next candidate before the first byte"
    );
    metrics::describe_gauge!(
        "gateway_ledger_queue_depth",
        "Ledger rows not yet stored (in memory or in the spill file)"
    );
    for (name, help) in [
        (
            "gateway_ledger_memory_rows",
            "Ledger rows waiting in memory",
        ),
        (
            "gateway_ledger_memory_bytes",
            "Approximate bytes of ledger rows waiting in memory",
        ),
        (
            "gateway_ledger_spill_rows",
            "Ledger rows waiting in the spill file",
        ),
        (
            "gateway_ledger_spill_bytes",
            "Size of the ledger spill file",
        ),
        (
            "gateway_ledger_oldest_age_seconds",
            "Age of the oldest ledger row not yet stored (0: none)",
        ),
        (
            "gateway_ledger_store_reachable",
            "0 while the last ledger write found the database unreachable",
        ),
        (
            "gateway_ledger_backlog_full",
            "1 while the ledger backlog is full and requests are refused",
        ),
    ] {
        metrics::describe_gauge!(name, help);
    }
    for (name, help) in [
        (
            "gateway_ledger_spilled_rows_total",
            "Ledger rows written to the spill file",
        ),
        (
            "gateway_ledger_replayed_rows_total",
            "Ledger rows stored from the spill file",
        ),
        (
            "gateway_ledger_duplicate_rows_total",
            "Ledger rows skipped because their request id was already stored",
        ),
        (
            "gateway_ledger_store_retries_total",
            "Ledger writes retried because the database was unreachable",
        ),
    ] {
        metrics::describe_counter!(name, help);
    }
    metrics::describe_counter!(
        "gateway_rejected_total",
        "Requests refused before reaching a backend, by error code"
    );
}

/// Installs the log subscriber (stderr, `RUST_LOG` filter, default `info`)
/// and, when the `OTEL_*` variables ask for them, traces. The returned
/// pipeline must be shut down at exit to send the last spans. Logs are
/// installed even when the trace settings are refused, so the error can
/// be reported.
pub fn init(format: LogFormat) -> Result<Option<otel::Traces>, otel::TracesError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = match format {
        LogFormat::Json => otel::LogFormat::Json,
        LogFormat::Text => otel::LogFormat::Text,
    };
    let traces = otel::Traces::from_env("gateway");
    let exporting = traces.as_ref().ok().and_then(Option::as_ref);
    otel::install(filter, format, exporting);
    traces
}
