//! `POST /v1/chat/completions`: authenticate, parse, admit, classify, route,
//! then hand over to the [`proxy`](crate::proxy).
//!
//! A request is *admitted* once its key is valid and its body parses. From
//! then on it owns a ledger [`Record`], so it leaves exactly one row
//! whatever happens: `rejected` when limits, budget or routing refuse it,
//! `error` when the store or every upstream fails, `ok`, `partial` or
//! `cancelled` otherwise. Requests refused before that (bad key, bad body)
//! leave no row: there is no trustworthy tenant or model to record.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::request::ChatRequest;
use super::{with_gateway_headers, ApiError, RouteHeaders};
use crate::auth::require_scope;
use crate::catalog::{CatalogError, Snapshot};
use crate::ledger::{Record, RecordInit};
use crate::limits::check_budget;
use crate::live::BackendLive;
use crate::privacy::classify;
use crate::routing::{rank, resolve_alias, BackendKind, Decision, Observed, RequestView};
use crate::state::AppState;
use crate::store::{now_ms, ApiKey, LedgerStatus};

pub async fn chat_completions(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let key = match app.keys.authenticate(&headers).await {
        Ok(k) => k,
        Err(e) => return reject(e),
    };
    if let Err(e) = require_scope(&key, "chat") {
        return reject(e);
    }
    let bytes = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return reject(ApiError::TooLarge(app.config.max_body_bytes))
        }
        Err(r) => {
            return reject(ApiError::bad_request(
                r.body_text(),
                "invalid_request_body",
                None,
            ))
        }
    };
    let mut req = match ChatRequest::parse(&bytes, &headers) {
        Ok(r) => r,
        Err(e) => return reject(e),
    };
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // Past a full queue of unwritten rows (the store is slow or down), new
    // requests are refused: otherwise rows that cannot be queued would pile
    // up in memory without bound while the store catches up.
    if app.ledger.depth() >= app.config.ledger_queue as u64 {
        metrics::counter!("gateway_rejected_total", "code" => "ledger_backlog").increment(1);
        return reject(ApiError::Unavailable);
    }
    let mut record = Record::new(
        RecordInit {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: key.tenant_id.clone(),
            key_id: key.id.clone(),
            requested_model: req.model.clone(),
            stream: req.stream,
            created_at: now_ms(),
        },
        app.ledger.sink(),
    );
    let routed = admit_and_route(&app, &key, &mut req, &mut record).await;
    match routed {
        Ok((decision, snapshot)) => {
            crate::proxy::execute(&app, req, &decision, &snapshot, record, &request_id).await
        }
        Err(e) => {
            let status = match e {
                ApiError::Limited(_) | ApiError::NoRoute(_) => LedgerStatus::Rejected,
                _ => LedgerStatus::Error,
            };
            if let ApiError::NoRoute(r) = &e {
                record.set_no_route(r);
            }
            let route = RouteHeaders {
                backend: None,
                reason: None,
                class: Some(record.class()),
                ledger_id: Some(record.id().to_owned()),
            };
            metrics::counter!("gateway_rejected_total", "code" => e.code()).increment(1);
            record.finish(status, e.status().as_u16(), Some(e.code()));
            with_gateway_headers(e.into_response(), &route)
        }
    }
}

fn reject(e: ApiError) -> Response {
    metrics::counter!("gateway_rejected_total", "code" => e.code()).increment(1);
    e.into_response()
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        match e {
            CatalogError::Store(s) => s.into(),
            CatalogError::Rules => ApiError::Internal,
        }
    }
}

/// Limits, budget, privacy class and the routing decision.
async fn admit_and_route(
    app: &AppState,
    key: &ApiKey,
    req: &mut ChatRequest,
    record: &mut Record,
) -> Result<(Decision, Arc<Snapshot>), ApiError> {
    let tenant = app.catalog.tenant(&key.tenant_id).await?;
    let class = classify(
        req.texts(),
        key.default_class.max(tenant.policy.default_class),
        req.tag,
        &tenant.rules,
    );
    record.set_class(&class, req.prompt_estimate);
    let limits = key.limits();
    app.limiter
        .check_request(&limits)
        .map_err(ApiError::Limited)?;
    check_budget(key.budget_usd, key.spent_usd).map_err(ApiError::Limited)?;
    let expected_out = req
        .max_tokens
        .unwrap_or(tenant.policy.expected_output_tokens);
    app.limiter
        .check_tokens(&limits, req.prompt_estimate.saturating_add(expected_out))
        .map_err(ApiError::Limited)?;

    let snapshot = app.catalog.snapshot().await?;
    let lives: Vec<BackendLive> = snapshot
        .backends
        .iter()
        .map(|b| app.live.get(&b.id))
        .collect();
    let observed: Vec<Observed<'_>> = snapshot
        .backends
        .iter()
        .zip(&lives)
        .map(|(b, live)| Observed {
            backend: b,
            healthy: live.failures < app.config.unhealthy_after,
            load: match b.kind {
                BackendKind::Edge => live.load.as_ref(),
                BackendKind::Cloud => None,
            },
            in_flight: app.live.in_flight(&b.id),
        })
        .collect();
    let view = RequestView {
        model: req.model.clone(),
        class: class.class,
        prompt_tokens: req.prompt_estimate,
        max_output_tokens: req.max_tokens,
    };
    let target = resolve_alias(&req.model, &snapshot.aliases);
    let decision = rank(&view, &target, &tenant.policy, &observed).map_err(ApiError::NoRoute)?;
    drop(observed);
    Ok((decision, snapshot))
}
