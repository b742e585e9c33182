//! Executes a routing decision: tries the ranked candidates in order and
//! relays the first answer.
//!
//! Failover happens only while nothing has reached the client: on a
//! connection error, a timeout before the answer (or, for streams, before
//! its first event), a 5xx or a 429. A non-streaming answer is buffered
//! whole before the client sees anything, so a body that breaks off fails
//! over too. Once a stream's first event is relayed, an upstream failure
//! ends the stream with an SSE error event instead (see [`stream`]).
//!
//! A confidential request is never sent to a cloud-zone backend: routing
//! already leaves those out, and [`execute`] checks again right before
//! sending, so a future routing bug cannot break the invariant.

mod stream;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use crate::catalog::Snapshot;
use crate::http::request::ChatRequest;
use crate::http::{with_gateway_headers, ApiError, RouteHeaders};
use crate::ledger::{Pricing, Record};
use crate::privacy::Class;
use crate::routing::{Backend, Decision, Exclusion, NoRoute, NoRouteCode, Scored, Zone};
use crate::state::AppState;
use crate::store::LedgerStatus;
use crate::upstream::AttemptError;

/// Usage as upstreams report it; `energy_joules` is the edge worker's
/// extension.
#[derive(Debug, Deserialize)]
pub(crate) struct Usage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    #[serde(default)]
    energy_joules: Option<f64>,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Usage>,
}

/// Runs the request on the decision's candidates and returns the answer.
pub async fn execute(
    app: &AppState,
    mut req: ChatRequest,
    decision: &Decision,
    snapshot: &Snapshot,
    mut record: Record,
    request_id: &str,
) -> Response {
    record.set_decision(decision);
    let class = decision.class;
    for (i, cand) in decision.candidates().enumerate() {
        let Some(backend) = snapshot.backends.iter().find(|b| b.id == cand.backend_id) else {
            continue;
        };
        if backend.zone == Zone::Cloud && class >= Class::Confidential {
            tracing::error!(backend = %backend.name, "refused to send a confidential request to the cloud");
            metrics::counter!("gateway_privacy_blocks_total").increment(1);
            continue;
        }
        let reason = if i == 0 {
            cand.reason.as_str()
        } else {
            metrics::counter!("gateway_failovers_total", "to" => backend.name.clone()).increment(1);
            "failover"
        };
        record.set_backend(cand, backend.zone, reason, pricing(app, backend));
        let route = RouteHeaders {
            backend: Some(backend.name.clone()),
            reason: Some(reason),
            class: Some(class),
            ledger_id: Some(record.id().to_owned()),
        };
        let in_flight = app.live.begin(&backend.id);
        let body = req.upstream_body(&cand.upstream_model);
        let sent = app.upstreams.send_chat(backend, body, request_id).await;
        let outcome = match sent {
            Ok(resp) if req.stream => {
                stream::start(app, resp, record, in_flight, req.include_usage)
                    .await
                    .map(|r| with_gateway_headers(r, &route))
            }
            Ok(resp) => json_answer(app, resp, record)
                .await
                .map(|r| with_gateway_headers(r, &route)),
            Err(e) => Err((e, record)),
        };
        match outcome {
            Ok(response) => return response,
            Err((e, rec)) => {
                record = rec;
                note_failure(app, backend, cand, &e);
                if !e.retryable() {
                    return pass_through(e, record, &route);
                }
            }
        }
    }
    let err = if decision
        .excluded
        .iter()
        .any(|e| e.why == Exclusion::PrivacyZone)
    {
        // Every on-premises candidate failed and the cloud may not be used:
        // to the client this is the same as no private route at all.
        ApiError::NoRoute(NoRoute {
            code: NoRouteCode::PrivacyRouteUnavailable,
            excluded: decision.excluded.clone(),
        })
    } else {
        ApiError::Upstream
    };
    let route = RouteHeaders {
        class: Some(class),
        ledger_id: Some(record.id().to_owned()),
        ..RouteHeaders::default()
    };
    record.finish(LedgerStatus::Error, err.status().as_u16(), Some(err.code()));
    with_gateway_headers(err.into_response(), &route)
}

fn note_failure(app: &AppState, backend: &Backend, cand: &Scored, e: &AttemptError) {
    tracing::warn!(backend = %backend.name, model = %cand.upstream_model, error = %e, "upstream attempt failed");
    metrics::counter!("gateway_upstream_errors_total", "backend" => backend.name.clone(), "kind" => e.label())
        .increment(1);
    if e.backend_down() {
        app.live.failure(&backend.id);
    }
}

/// Prices and energy rates: the edge's live joules per token when it
/// reported them, the backend's configured ones otherwise.
fn pricing(app: &AppState, b: &Backend) -> Pricing {
    let live = app.live.get(&b.id).load;
    Pricing {
        price_in_per_1k: b.price_in_per_1k,
        price_out_per_1k: b.price_out_per_1k,
        joules_per_prompt_token: live
            .as_ref()
            .map_or(b.joules_per_prompt_token, |l| l.joules_per_prompt_token),
        joules_per_output_token: live
            .as_ref()
            .map_or(b.joules_per_output_token, |l| l.joules_per_output_token),
    }
}

/// The upstream's own 4xx, passed on: it is about the request (e.g. its
/// context is too long), and another backend would say the same.
fn pass_through(e: AttemptError, record: Record, route: &RouteHeaders) -> Response {
    let (status, body) = match e {
        AttemptError::Status { status, body } if is_openai_error(&body) => (status, body),
        AttemptError::Status { status, .. } => {
            let body = crate::http::error_body(
                "The upstream rejected the request.",
                "invalid_request_error",
                None,
                "upstream_rejected",
            );
            (status, Bytes::from(body.to_string()))
        }
        _ => return ApiError::Upstream.into_response(),
    };
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    record.finish(LedgerStatus::Error, status, code.as_deref());
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    with_gateway_headers(response, route)
}

fn is_openai_error(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v["error"].is_object())
}

/// Buffers a non-streaming answer (bounded in size and by the idle
/// timeout), records its usage and returns it unchanged.
async fn json_answer(
    app: &AppState,
    mut resp: reqwest::Response,
    mut record: Record,
) -> Result<Response, (AttemptError, Record)> {
    let limits = &app.upstreams;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(limits.timeouts.idle, resp.chunk()).await {
            Err(_) => return Err((AttemptError::Timeout, record)),
            Ok(Err(_)) => return Err((AttemptError::Body, record)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(c))) => c,
        };
        if buf.len() + chunk.len() > limits.max_body_bytes {
            return Err((AttemptError::Body, record));
        }
        buf.extend_from_slice(&chunk);
    }
    record.first_token();
    if let Ok(WithUsage { usage: Some(u) }) = serde_json::from_slice::<WithUsage>(&buf) {
        record.set_usage(u.prompt_tokens, u.completion_tokens, u.energy_joules);
    }
    record.finish(LedgerStatus::Ok, 200, None);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(buf),
    )
        .into_response())
}
