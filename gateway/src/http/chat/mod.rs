//! `POST /v1/chat/completions`, one feature folder: authenticate, parse
//! ([`request`]), admit, classify, route, then execute the decision
//! ([`relay`]: attempts and failover; [`stream`]: the SSE relay over the
//! [`sse`] reader).
//!
//! A request is *admitted* once its key is valid, the ledger has room for
//! its row and its body parses. From then on it owns a ledger [`Record`], so
//! it leaves exactly one row whatever happens: `rejected` when limits,
//! budget or routing refuse it, `error` when the store or every upstream
//! fails, `ok`, `partial` or `cancelled` otherwise. Requests refused before
//! that leave no row: a bad key or body has no trustworthy tenant or model
//! to record, and a full ledger backlog has no room for one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tracing::Span;

mod collab;
pub mod relay;
pub mod request;
pub mod sse;
mod stream;

use request::ChatRequest;

use super::{with_gateway_headers, ApiError, RouteHeaders};
use crate::auth::{require_scope, Peer};
use crate::catalog::{CatalogError, Snapshot};
use crate::ledger::{Record, RecordInit};
use crate::limits::{worst_case_usd, Admission, BudgetAsk, KeyLimits, LimitExceeded};
use crate::live::BackendLive;
use crate::privacy::{classify_with, request_texts, Class, Classification, RuleSet};
use crate::routing::{
    cap_ejections, rank, resolve_alias, Backend, BackendKind, Decision, Observed, RequestView,
};
use crate::state::AppState;
use crate::store::{now_ms, ApiKey, LedgerStatus};
use crate::traces::{self, RequestTrace};

pub async fn chat_completions(
    State(app): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = traces::request(&headers);
    let response = handle(app, peer.map(|p| p.0), &headers, body, &span).await;
    otel::answered(&span, response.status().as_u16());
    response
}

async fn handle(
    app: AppState,
    peer: Option<Peer>,
    headers: &HeaderMap,
    body: Body,
    span: &Span,
) -> Response {
    // The key is checked before a byte of the body is read, so an
    // unauthenticated client cannot make the gateway buffer a megabyte.
    let auth = traces::auth(span);
    let key = match app.keys.authenticate(headers, peer).await {
        Ok(k) => k,
        Err(e) => return reject_auth(&auth, e.into()),
    };
    if let Err(e) = require_scope(&key, "chat") {
        return reject_auth(&auth, e.into());
    }
    traces::auth_outcome(&auth, "ok");
    drop(auth);
    // Held by the row until the request ends (a stream's last event).
    let Some(key_slot) = app.key_in_flight.acquire(&key.id) else {
        metrics::counter!("gateway_rejected_total", "code" => "key_in_flight").increment(1);
        return reject(ApiError::Limited(LimitExceeded::Concurrent));
    };
    // Once the ledger's backlog is full (memory and spill file, while the
    // store is slow or down), new requests are refused before their body is
    // read: otherwise their rows would pile up without bound.
    if app.ledger.is_full() {
        metrics::counter!("gateway_rejected_total", "code" => "ledger_backlog").increment(1);
        return reject(ApiError::Unavailable);
    }
    let limit = app.config.max_body_bytes;
    let bytes = match super::body::read(body, limit, app.config.body_read_timeout()).await {
        Ok(b) => b,
        Err(e) => return reject(e.into()),
    };
    let mut req = match ChatRequest::parse(&bytes, headers) {
        Ok(r) => r,
        Err(e) => return reject(e),
    };
    let mut record = Record::new(
        RecordInit {
            id: ledger_id(),
            tenant_id: key.tenant_id.clone(),
            key_id: key.id.clone(),
            requested_model: req.model.clone(),
            stream: req.stream,
            created_at: now_ms(),
        },
        app.ledger.sink(),
    );
    record.set_trace(RequestTrace::new(span.clone()));
    record.hold_key_slot(key_slot);
    record.learn_lengths(Arc::clone(&app.lengths));
    traces::parsed(span, req.stream, req.max_tokens, &key.tenant_id);
    let routed = admit_and_route(&app, &key, &mut req, bytes.len(), &mut record).await;
    match routed {
        Ok((decision, snapshot)) => {
            traces::model(span, &req.model);
            relay::execute(&app, req, &decision, &snapshot, record).await
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

fn reject_auth(span: &Span, e: ApiError) -> Response {
    traces::auth_outcome(span, e.code());
    reject(e)
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
    body_bytes: usize,
    record: &mut Record,
) -> Result<(Decision, Arc<Snapshot>), ApiError> {
    let tenant = app.catalog.tenant(&key.tenant_id).await?;
    req.apply_policy(&tenant.policy);
    // Everything that will leave: the body as forwarded, after the policy
    // removed what it does not allow. No client header is forwarded.
    let default = key.default_class.max(tenant.policy.default_class);
    let limits = key.limits();
    refused_before_scan(app, &limits, default, req, record)?;
    let class = classify(app, req, default, &tenant.rules, body_bytes, record.trace()).await?;
    record.set_class(&class, req.prompt_estimate);

    let route_span = traces::route(record.trace().request());
    let snapshot = app.catalog.snapshot().await?;
    let now = std::time::Instant::now();
    // Naive placement (for comparison) routes on the reports as they are.
    let predicted = app.config.predicted_placement;
    let prefix = crate::live::affinity::prefix_of(&req.body).filter(|_| predicted);
    let lives: Vec<BackendLive> = snapshot
        .backends
        .iter()
        .map(|b| app.live.get(&b.id))
        .collect();
    let mut observed: Vec<Observed<'_>> = snapshot
        .backends
        .iter()
        .zip(&lives)
        .map(|(b, live)| Observed {
            backend: b,
            healthy: live.usable(app.config.unhealthy_after, now),
            load: match b.kind {
                BackendKind::Edge => live.load.as_ref(),
                BackendKind::Cloud => None,
            },
            in_flight: app.live.in_flight(&b.id),
            queue: (predicted && b.kind == BackendKind::Edge)
                .then(|| app.load.model(&b.id, now))
                .flatten(),
            prefix_cached: prefix.is_some_and(|p| {
                let cache = live.load.as_ref().and_then(|l| l.prefix_cache);
                app.affinity.holds(p, &b.id, now, cache)
            }),
        })
        .collect();
    let view = RequestView {
        model: req.model.clone(),
        class: class.class,
        prompt_tokens: req.prompt_estimate,
        max_output_tokens: req.max_tokens,
        needs: req.needs,
        choices: req.choices,
        prefix,
        seed: predicted.then(rand::random),
        expected: app.lengths.expected(&key.tenant_id, &req.model),
    };
    let target = resolve_alias(&req.model, &snapshot.aliases);
    let rest_ends: Vec<_> = lives.iter().map(|l| l.retry_at).collect();
    let readmitted = cap_ejections(
        &mut observed,
        &rest_ends,
        &target,
        app.config.max_ejection_percent,
    );
    let decision = rank(&view, &target, &tenant.policy, &observed).map(|mut d| {
        d.readmitted = readmitted
            .iter()
            .map(|&i| snapshot.backends[i].id.clone())
            .collect();
        d
    });
    traces::decided(&route_span, decision.as_ref());
    let decision = decision.map_err(ApiError::NoRoute)?;
    drop((observed, route_span));
    let expected_out = req
        .max_tokens
        .unwrap_or(tenant.policy.expected_output_tokens);
    let admission = Admission {
        limits: &limits,
        tokens: req
            .prompt_estimate
            .saturating_add(expected_out.saturating_mul(req.choices)),
        budget: key
            .budget_usd
            .map(|budget_usd| budget_ask(app, key, req, record, &decision, &snapshot, budget_usd)),
    };
    let unbounded = admission.budget.is_some() && req.max_tokens.is_none();
    let hold = app.limiter.admit(admission).await.map_err(|e| match e {
        LimitExceeded::Budget if unbounded => ApiError::Limited(LimitExceeded::BudgetUnbounded),
        LimitExceeded::Requests { wait } => {
            app.refusals.note(&limits, wait, std::time::Instant::now());
            ApiError::Limited(e)
        }
        e => ApiError::Limited(e),
    })?;
    if let Some(hold) = hold {
        record.hold_budget(hold);
    }
    Ok((decision, snapshot))
}

/// A key whose requests/min refuses until a known instant is turned away
/// before its body is scanned: scanning is most of what a request costs
/// the gateway before it reaches a backend. Its row has the class known
/// without a scan, the key's and tenant's default.
fn refused_before_scan(
    app: &AppState,
    limits: &KeyLimits,
    default: Class,
    req: &ChatRequest,
    record: &mut Record,
) -> Result<(), ApiError> {
    app.refusals
        .check(limits, std::time::Instant::now())
        .map_err(|e| {
            let unscanned = Classification {
                class: default,
                fired: Vec::new(),
            };
            record.set_class(&unscanned, req.prompt_estimate);
            ApiError::Limited(e)
        })
}

/// The request's privacy class. A body over `classify_inline_bytes` is
/// scanned on the blocking pool, one scan per CPU at a time, so that the
/// serving thread goes on with its other connections meanwhile; a request
/// waiting for a slot holds no thread. Should the scan fail, the request is
/// refused: nothing is sent anywhere unclassified.
async fn classify(
    app: &AppState,
    req: &mut ChatRequest,
    default: Class,
    rules: &Arc<RuleSet>,
    body_bytes: usize,
    trace: &RequestTrace,
) -> Result<Classification, ApiError> {
    let span = traces::classify(trace.request());
    let pooled = body_bytes > app.config.classify_inline_bytes;
    let class = if pooled {
        let slot = Arc::clone(&app.classify_slots)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable)?;
        let (app, rules, tag) = (app.clone(), Arc::clone(rules), req.tag);
        let body = std::mem::take(&mut req.body);
        let scanned = tokio::task::spawn_blocking(move || {
            let class = scan(&app, &body, default, tag, &rules);
            drop(slot);
            (body, class)
        })
        .await;
        let Ok((body, class)) = scanned else {
            tracing::error!("the privacy scan of a request failed; it is refused");
            return Err(ApiError::Internal);
        };
        req.body = body;
        class
    } else {
        scan(app, &req.body, default, req.tag, rules)
    };
    traces::classified(&span, &class, pooled);
    Ok(class)
}

fn scan(
    app: &AppState,
    body: &serde_json::Map<String, serde_json::Value>,
    default: Class,
    tag: Option<Class>,
    rules: &RuleSet,
) -> Classification {
    classify_with(
        request_texts(body),
        default,
        tag,
        rules,
        app.privacy_memo.as_ref(),
    )
}

/// What to hold against the key's budget: the request's worst-case cost
/// over every backend it may reach, failover included; settled by the
/// ledger row. Without `max_tokens` an answer may run to the end of the
/// largest context among them: holding less would let concurrent requests
/// spend past the budget by more than one request's worst case.
fn budget_ask<'a>(
    app: &AppState,
    key: &'a ApiKey,
    req: &ChatRequest,
    record: &'a Record,
    decision: &Decision,
    snapshot: &Snapshot,
    budget_usd: f64,
) -> BudgetAsk<'a> {
    let backends: Vec<&Backend> = decision
        .candidates()
        .filter_map(|c| snapshot.backends.iter().find(|b| b.id == c.backend_id))
        .collect();
    let worst_out = req.max_tokens.unwrap_or_else(|| {
        backends
            .iter()
            .map(|b| relay::context_length(app, b).saturating_sub(req.prompt_estimate))
            .max()
            .unwrap_or(decision.policy.expected_output_tokens)
    });
    let prices = backends
        .iter()
        .map(|b| (b.price_in_per_1k, b.price_out_per_1k));
    BudgetAsk {
        key_id: &key.id,
        request_id: record.id(),
        budget_usd,
        stored_spent_usd: key.spent_usd,
        // Each choice may run to the worst length.
        worst_usd: worst_case_usd(
            req.prompt_estimate,
            worst_out.saturating_mul(req.choices),
            prices,
        ),
    }
}

/// A new ledger row's id: a UUIDv7, ordered by time, so the ledger's
/// primary key takes each row at the end of its index rather than on a
/// random page (fewer pages written per batch). Its random bits come from
/// the thread's generator ([`crate::ids`]), through uuid's builder: the
/// crate's `v7` feature would change its features for everything that
/// depends on it for this one constructor.
fn ledger_id() -> String {
    let bits: [u8; 10] = rand::random();
    let ms = u64::try_from(now_ms()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(ms, &bits)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::ledger_id;

    #[test]
    fn ledger_ids_are_version_7_and_sort_by_time() {
        let first = ledger_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = ledger_id();
        for id in [&first, &second] {
            let u = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(u.get_version_num(), 7, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
        assert!(first < second, "{first} then {second}");
    }
}
