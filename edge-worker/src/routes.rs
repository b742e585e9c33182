//! The router and the small read-only endpoints.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use wire::{Capabilities, LoadReport};

use crate::error::ApiError;
use crate::openai::{ModelCard, ModelList};
use crate::AppState;

/// What this worker honours beyond plain chat, published in the load report
/// so that the gateway sends such requests only to backends that can.
pub const CAPABILITIES: Capabilities = Capabilities {
    // `response_format` json_object / json_schema, by constrained decoding.
    json_schema: true,
    // Requests with tools are refused with 400 (`chat::validate`).
    tools: false,
};

/// The worker's HTTP surface.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(crate::chat::completions))
        .route("/v1/models", get(models))
        .route("/v1/worker/load", get(load))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|req: Request<axum::body::Body>| async move {
            ApiError::NotFound(req.uri().path().to_string())
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Inside the token check: a caller without the token is refused
        // before its body is read.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            read_body_within,
        ))
        // Inside the counter, so refused requests are counted too.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ))
        .layer(middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(PropagateRequestIdLayer::x_request_id())
        // Handlers log their own failures with context; the trace layer's
        // per-response error lines would repeat them (and flag every 503 of
        // a readiness probe during start-up).
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Reads the request's body within `body_read_timeout_ms` and the body
/// limit before the handler runs: a client that sends its body a byte at a
/// time gets 408 instead of holding a connection and a task forever, and a
/// declared length over the limit gets 413 before anything is read.
async fn read_body_within(
    State(state): State<AppState>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let limit = state.config.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::TooLarge(limit).into_response();
    }
    let (parts, body) = req.into_parts();
    let within = Duration::from_millis(state.config.body_read_timeout_ms);
    let bytes = match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Err(_) => return ApiError::BodyTimeout.into_response(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return ApiError::TooLarge(limit).into_response()
        }
        Ok(Err(e)) => return ApiError::InvalidBody(e.to_string()).into_response(),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Counts every request by route and status, errors included.
async fn count_requests(req: Request<axum::body::Body>, next: Next) -> Response {
    // Only known routes become label values, so label cardinality stays fixed.
    let path = [
        "/v1/chat/completions",
        "/v1/models",
        "/v1/worker/load",
        "/healthz",
        "/readyz",
        "/metrics",
    ]
    .into_iter()
    .find(|p| *p == req.uri().path())
    .unwrap_or("other");
    let response = next.run(req).await;
    metrics::counter!("edge_requests_total", "path" => path, "status" => response.status().as_u16().to_string())
        .increment(1);
    response
}

async fn models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let engine = state.engine.get().ok_or(ApiError::NotReady)?;
    Ok(Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: engine.model_id.clone(),
            object: "model",
            created: 0,
            owned_by: "edge-worker",
            context_length: engine.context_length,
        }],
    }))
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if state.engine.get().is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response();
    }
    "ready".into_response()
}

/// Counts and sizes go on the wire as `u32`; none comes near its limit, and
/// one that did would read as full rather than wrap.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The load report the gateway polls, in the shared [`wire::LoadReport`]
/// shape: what is not known yet (the model while it loads, rates before the
/// first measured generation) is `null`, never a made-up value.
async fn load(State(state): State<AppState>) -> Json<LoadReport> {
    Json(load_report(&state))
}

/// The report as of now; also what each registration heartbeat carries.
pub fn load_report(state: &AppState) -> LoadReport {
    let engine = state.engine.get();
    let rates = state.reporters.stats.snapshot();
    let draining = state.draining.load(Ordering::Acquire);
    LoadReport {
        model: engine.map(|e| e.model_id.clone()),
        quantization: Some(state.facts.quantization.clone()),
        served_quantization: state.facts.served_quantization.get().cloned(),
        context_length: engine.map(|e| count(e.context_length)),
        active_sequences: count(state.admission.running()),
        waiting_sequences: count(state.admission.waiting()),
        max_running_sequences: count(state.admission.max_running),
        max_waiting_sequences: count(state.admission.max_waiting),
        admitted_total: Some(state.admission.admitted_total()),
        prefill_tokens_per_s: rates.prefill_tokens_per_s,
        decode_tokens_per_s: rates.decode_tokens_per_s,
        joules_per_prompt_token: rates.joules_per_prompt_token,
        joules_per_output_token: rates.joules_per_output_token,
        joules_at_running: rates.joules_at_running,
        energy_method: Some(state.reporters.energy.method().as_str().to_string()),
        // Whether mistralrs's engine thread computes as a rayon worker (see
        // `pool`); false means the slow path, e.g. with one compute thread.
        engine_in_compute_pool: crate::pool::engine_attached(),
        capabilities: CAPABILITIES,
        prefix_cache: state.facts.prefix_cache,
        ready: engine.is_some() && !draining,
        draining,
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let rates = state.reporters.stats.snapshot();
    for (name, value) in [
        ("edge_prefill_tokens_per_second", rates.prefill_tokens_per_s),
        ("edge_decode_tokens_per_second", rates.decode_tokens_per_s),
        (
            "edge_joules_per_prompt_token",
            rates.joules_per_prompt_token,
        ),
        (
            "edge_joules_per_output_token",
            rates.joules_per_output_token,
        ),
    ] {
        if let Some(v) = value {
            metrics::gauge!(name).set(v);
        }
    }
    for (i, j) in rates.joules_at_running.iter().enumerate() {
        let running = (i + 1).to_string();
        if let Some(v) = j.prompt {
            metrics::gauge!("edge_joules_per_prompt_token_at_running", "running" => running.clone())
                .set(v);
        }
        if let Some(v) = j.output {
            metrics::gauge!("edge_joules_per_output_token_at_running", "running" => running).set(v);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
