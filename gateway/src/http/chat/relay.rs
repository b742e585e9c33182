//! Executes a routing decision: tries the ranked candidates in order and
//! relays the first answer.
//!
//! Failover happens only while nothing has reached the client: on a
//! connection error, a timeout before the answer (or, for streams, before
//! its first token), an error event before the first token, a 5xx, a 429,
//! or an answer about the gateway's own configuration (401, 403, 404: a
//! bad key or model mapping for that backend). An upstream's
//! `context_length_exceeded` moves on to candidates with a larger context
//! only. A non-streaming answer is buffered whole before the client sees
//! anything, so a body that breaks off fails over too. Once a stream's
//! first token is relayed, an upstream failure ends the stream with an SSE
//! error event instead (see [`stream`]).
//!
//! Failover attempts are budgeted ([`crate::live::retry`]): once retries
//! exceed their share of recent requests, a failed attempt is the last.
//!
//! A non-streaming request to an edge worker gets a deadline from its
//! prediction: the worker sends headers only with the whole answer, so the
//! plain first-byte timeout would abandon (and redo elsewhere) long answers
//! the worker is still producing.
//!
//! When no candidate answered and the last was busy (its 429: a cloud's
//! rate limit, a full edge queue), the client gets 503 `upstream_busy` with
//! the upstream's `Retry-After`, not a 502 it would retry at once.
//!
//! An upstream's error text is never shown as is: a 401 or 403 (whose text
//! can quote a key) becomes the gateway's own 502, and a 400-class answer
//! about the request is passed on with its code and a message only when
//! that message is short and holds nothing key-like.
//!
//! A confidential request is never sent to a cloud-zone backend: routing
//! already leaves those out, and [`execute`] checks again right before
//! sending, so a future routing bug cannot break the invariant.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tracing::Span;
use wire::ErrorBody;

use super::request::ChatRequest;
use super::{collab, stream};
use crate::catalog::Snapshot;
use crate::http::{with_gateway_headers, ApiError, RouteHeaders};
use crate::ledger::{Pricing, Record};
use crate::live::InFlight;
use crate::privacy::{classify, Class, RuleSet};
use crate::routing::{
    Backend, BackendKind, Decision, Exclusion, NoRoute, NoRouteCode, Scored, Zone,
};
use crate::state::AppState;
use crate::store::LedgerStatus;
use crate::traces;
use crate::upstream::{AttemptError, UpstreamResponse, Upstreams};

/// Usage as upstreams report it; `energy_joules` is the edge worker's
/// extension.
#[derive(Debug, Deserialize)]
pub(super) struct Usage {
    #[serde(default)]
    pub(super) prompt_tokens: u32,
    #[serde(default)]
    pub(super) completion_tokens: u32,
    #[serde(default)]
    pub(super) energy_joules: Option<f64>,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Usage>,
}

/// Longest upstream error message passed on to the client.
const MAX_UPSTREAM_MESSAGE: usize = 512;

/// Runs the request on the decision's candidates and returns the answer.
///
/// A request still waiting for its answer when the server's shutdown grace
/// runs out is answered 503 `server_shutting_down`, with its ledger id and a
/// `cancelled` row, instead of a connection closed without a word: the
/// client may retry at once, on another gateway.
pub async fn execute(
    app: &AppState,
    req: ChatRequest,
    decision: &Decision,
    snapshot: &Snapshot,
    mut record: Record,
) -> Response {
    record.set_decision(decision);
    let class = decision.class;
    let shutdown = app.streams_end.clone();
    let outcome = tokio::select! {
        // An answer that is ready goes out even when the grace ran out too.
        biased;
        outcome = try_candidates(app, req, decision, snapshot, &mut record) => outcome,
        () = shutdown.cancelled() => Outcome::ShuttingDown,
    };
    let (err, status) = match outcome {
        Outcome::Answered(answered) => return deliver(app, *answered, record, class),
        Outcome::Refused(last) => {
            let route = route_headers(last.backend, last.reason, class, &record);
            return pass_through(last.error, record, &route);
        }
        Outcome::Unanswered(last_error) => (
            no_answer(decision, last_error.as_ref()),
            LedgerStatus::Error,
        ),
        Outcome::ShuttingDown => (ApiError::ShuttingDown, LedgerStatus::Cancelled),
    };
    let route = RouteHeaders {
        class: Some(class),
        ledger_id: Some(record.id().to_owned()),
        ..RouteHeaders::default()
    };
    record.finish(status, err.status().as_u16(), Some(err.code()));
    with_gateway_headers(err.into_response(), &route)
}

/// How trying the candidates ended.
enum Outcome<'a> {
    /// One answered.
    Answered(Box<Answered<'a>>),
    /// One failed in a way another backend cannot fix (a client error): its
    /// answer goes to the client as it is.
    Refused(Failed<'a>),
    /// None answered; the last retryable failure, if any was tried.
    Unanswered(Option<AttemptError>),
    /// The server's shutdown grace ran out first.
    ShuttingDown,
}

/// Tries the decision's candidates in order, failing over while the retry
/// budget allows.
async fn try_candidates<'a>(
    app: &AppState,
    mut req: ChatRequest,
    decision: &'a Decision,
    snapshot: &'a Snapshot,
    record: &mut Record,
) -> Outcome<'a> {
    let class = decision.class;
    // After an upstream said the prompt does not fit, only larger contexts
    // are worth trying.
    let mut context_floor: Option<u32> = None;
    let mut last_error: Option<AttemptError> = None;
    let mut attempts = 0u32;
    // Backends a hedge or a cascade already tried.
    let mut tried: Vec<String> = Vec::new();
    app.retries.request();
    for (i, cand) in decision.candidates().enumerate() {
        let Some(backend) = snapshot.backends.iter().find(|b| b.id == cand.backend_id) else {
            continue;
        };
        if tried.contains(&backend.id) {
            continue;
        }
        if backend.zone == Zone::Cloud && class >= Class::Confidential {
            tracing::error!(backend = %backend.name, "refused to send a confidential request to the cloud");
            metrics::counter!("gateway_privacy_blocks_total").increment(1);
            continue;
        }
        let context = context_length(app, backend);
        if context_floor.is_some_and(|floor| context <= floor) {
            continue;
        }
        // Every attempt after the first is a retry, and retries are
        // budgeted: a failing fleet gets at most a share more load.
        if attempts > 0 && !app.retries.try_retry() {
            metrics::counter!("gateway_retry_budget_exhausted_total").increment(1);
            tracing::warn!(backend = %backend.name, "retry budget spent; no further failover");
            break;
        }
        if !decision.readmitted.contains(&backend.id) && !app.live.claim_trial(&backend.id) {
            // Another request holds this backend's recovery trial.
            continue;
        }
        attempts += 1;
        let reason = if i == 0 {
            cand.reason.as_str()
        } else {
            metrics::counter!("gateway_failovers_total", "to" => backend.name.clone()).increment(1);
            "failover"
        };
        record.set_backend(cand, backend.zone, reason, pricing(app, backend));
        let attempt = Attempt::prepare(
            app,
            &mut req,
            (backend, cand, reason),
            context,
            record,
            attempts,
        );
        // The first choice may be hedged or cascaded to the cloud, as the
        // policy says (never a confidential request).
        let outcome = if i == 0 {
            let mut first = collab::First {
                app,
                decision,
                snapshot,
                req: &mut req,
                record: &mut *record,
                attempts: &mut attempts,
            };
            first.run(attempt).await
        } else {
            attempt.run(app, &req).await.map_err(|f| vec![f])
        };
        match outcome {
            Ok(answered) => return Outcome::Answered(Box::new(answered)),
            Err(failures) => {
                let mut last = None;
                for f in failures {
                    tried.push(f.backend.id.clone());
                    last = Some(f);
                }
                let Some(last) = last else {
                    continue;
                };
                if !last.error.retryable() {
                    return Outcome::Refused(last);
                }
                if matches!(last.error, AttemptError::ContextLength) {
                    context_floor = Some(context_floor.map_or(context, |f| f.max(context)));
                }
                last_error = Some(last.error);
            }
        }
    }
    Outcome::Unanswered(last_error)
}

/// A backend, the candidate it came from, and why it was chosen.
pub(super) type Target<'a> = (&'a Backend, &'a Scored, &'static str);

/// One attempt at one backend, ready to send.
pub(super) struct Attempt<'a> {
    pub target: Target<'a>,
    pub body: Vec<u8>,
    first_byte: Duration,
    trace: Span,
    request_id: String,
    /// The request is confidential: a cloud-zone backend is refused.
    confidential: bool,
}

/// An answer read far enough to commit to: a stream past its first token,
/// or a whole JSON body.
pub(super) enum Answer {
    Stream(stream::Primed),
    Json { body: Bytes, usage: Option<Usage> },
}

/// A successful attempt, not yet shown to the client.
pub(super) struct Answered<'a> {
    pub target: Target<'a>,
    pub answer: Answer,
    in_flight: InFlight,
    queue_ms: Option<f64>,
    trace: Span,
}

/// A failed attempt.
pub(super) struct Failed<'a> {
    pub backend: &'a Backend,
    pub reason: &'static str,
    pub error: AttemptError,
}

impl<'a> Attempt<'a> {
    /// The attempt's body, deadline and trace span.
    pub(super) fn prepare(
        app: &AppState,
        req: &mut ChatRequest,
        target: Target<'a>,
        context: u32,
        record: &mut Record,
        number: u32,
    ) -> Self {
        let (backend, cand, _) = target;
        Attempt {
            target,
            body: req.upstream_body(&cand.upstream_model),
            first_byte: first_byte_deadline(&app.upstreams, req, backend, cand, context),
            trace: record.trace().attempt(backend, cand, number).clone(),
            // Upstreams see the gateway's own id (the ledger row's), never
            // the client's, so no client header leaves and logs still
            // correlate.
            request_id: record.id().to_owned(),
            confidential: record.class() >= Class::Confidential,
        }
    }

    /// Sends the request and reads the answer up to its first token (a
    /// stream) or to its end (JSON). A failure is noted against the
    /// backend's health.
    pub(super) async fn run(
        self,
        app: &AppState,
        req: &ChatRequest,
    ) -> Result<Answered<'a>, Failed<'a>> {
        let (backend, cand, reason) = self.target;
        if self.confidential && backend.zone == Zone::Cloud {
            // Whoever chose this backend (failover, a hedge, a cascade),
            // nothing confidential leaves.
            tracing::error!(backend = %backend.name, "refused to send a confidential request to the cloud");
            metrics::counter!("gateway_privacy_blocks_total").increment(1);
            return Err(Failed {
                backend,
                reason,
                error: AttemptError::PrivacyBlocked,
            });
        }
        let in_flight = app.live.begin(&backend.id);
        note_sent(app, backend, req);
        let answered = async {
            let resp = app
                .upstreams
                .send_chat(
                    backend,
                    self.body,
                    &self.request_id,
                    self.first_byte,
                    &self.trace,
                )
                .await?;
            let queue_ms = queue_ms(&resp);
            let answer = if req.stream {
                let attempt = stream::StreamAttempt {
                    upstreams: &app.upstreams,
                    first_token: self.first_byte,
                    include_usage: req.include_usage,
                    shutdown: app.streams_end.clone(),
                };
                Answer::Stream(stream::prime(attempt, resp).await?)
            } else {
                read_json(&app.upstreams, resp).await?
            };
            Ok::<_, AttemptError>((answer, queue_ms))
        }
        .await;
        match answered {
            Ok((answer, queue_ms)) => Ok(Answered {
                target: self.target,
                answer,
                in_flight,
                queue_ms,
                trace: self.trace,
            }),
            Err(error) => {
                note_failure(app, backend, cand, &error, &self.trace);
                Err(Failed {
                    backend,
                    reason,
                    error,
                })
            }
        }
    }
}

/// Commits an answer to the client and the ledger.
pub(super) fn deliver(
    app: &AppState,
    a: Answered<'_>,
    mut record: Record,
    class: Class,
) -> Response {
    let (backend, cand, reason) = a.target;
    record.set_backend(cand, backend.zone, reason, pricing(app, backend));
    if let Some(ms) = a.queue_ms {
        record.set_actual_wait(ms);
    }
    note_success(app, backend, &a.trace);
    let route = route_headers(backend, reason, class, &record);
    let response = match a.answer {
        Answer::Stream(primed) => stream::relay(primed, record, a.in_flight),
        Answer::Json { body, usage } => {
            record.first_token();
            if let Some(u) = usage {
                record.set_usage(u.prompt_tokens, u.completion_tokens, u.energy_joules);
            }
            record.finish(LedgerStatus::Ok, 200, None);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from(body),
            )
                .into_response()
        }
    };
    with_gateway_headers(response, &route)
}

fn route_headers(
    backend: &Backend,
    reason: &'static str,
    class: Class,
    record: &Record,
) -> RouteHeaders {
    RouteHeaders {
        backend: Some(backend.name.clone()),
        reason: Some(reason),
        class: Some(class),
        ledger_id: Some(record.id().to_owned()),
    }
}

/// Counts a request sent to an edge worker for its queue model, and
/// remembers that the worker now holds the request's leading prompt.
fn note_sent(app: &AppState, backend: &Backend, req: &ChatRequest) {
    if backend.kind != BackendKind::Edge {
        return;
    }
    let now = std::time::Instant::now();
    app.load.sent(&backend.id, now);
    // What the worker's prefix cache keeps of it: the prompt and the answer,
    // as long as the policy expects within `max_tokens` (as routing
    // predicts it).
    let answer = req.max_tokens.map_or(req.expected_output_tokens, |m| {
        m.min(req.expected_output_tokens)
    });
    let tokens = u64::from(req.prompt_estimate) + u64::from(answer);
    let prefix = crate::live::affinity::prefix_of(&req.body);
    app.affinity.sent(prefix, &backend.id, tokens, now);
}

/// The wait for a running slot an edge worker reports with its answer.
fn queue_ms(resp: &UpstreamResponse) -> Option<f64> {
    resp.headers()
        .get("x-queue-ms")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The client's error when no candidate answered.
fn no_answer(decision: &Decision, last_error: Option<&AttemptError>) -> ApiError {
    let no_route = |code| {
        ApiError::NoRoute(NoRoute {
            code,
            excluded: decision.excluded.clone(),
        })
    };
    if matches!(last_error, Some(AttemptError::ContextLength)) {
        return no_route(NoRouteCode::ContextLengthExceeded);
    }
    if decision
        .excluded
        .iter()
        .any(|e| e.why == Exclusion::PrivacyZone)
    {
        // Every on-premises candidate failed and the cloud may not be used:
        // to the client this is the same as no private route at all.
        return no_route(NoRouteCode::PrivacyRouteUnavailable);
    }
    if let Some(AttemptError::Busy { retry_after_s }) = last_error {
        // Rate-limited or full: the client may come back, and is told when.
        return ApiError::UpstreamBusy(*retry_after_s);
    }
    ApiError::Upstream
}

/// The backend's context length: the edge's live report, else its config.
/// The backend's context length: what its worker reports, else as stored.
pub(super) fn context_length(app: &AppState, backend: &Backend) -> u32 {
    app.live
        .get(&backend.id)
        .load
        .and_then(|l| l.context_length)
        .unwrap_or(backend.context_length)
}

/// How long to wait for the answer to start. Streams and cloud backends
/// start answering at once, so the configured first-byte timeout applies.
/// A non-streaming edge request sends its headers only when the whole
/// answer is done: it gets the time its prediction says it needs for the
/// most it may generate, twice over, on top of that timeout (bounded by
/// the total timeout).
fn first_byte_deadline(
    upstreams: &Upstreams,
    req: &ChatRequest,
    backend: &Backend,
    cand: &Scored,
    context: u32,
) -> Duration {
    let base = upstreams.timeouts.first_byte;
    if req.stream || backend.kind != BackendKind::Edge {
        return base;
    }
    let p = &cand.prediction;
    let most_output = req
        .max_tokens
        .unwrap_or_else(|| context.saturating_sub(req.prompt_estimate));
    let service_s = f64::from(req.prompt_estimate) / p.prefill_tps.max(1e-3)
        + f64::from(most_output) / p.decode_tps.max(1e-3)
        + p.queue_ms / 1000.0;
    let extra = Duration::try_from_secs_f64(2.0 * service_s).unwrap_or(upstreams.timeouts.total);
    (base + extra).min(upstreams.timeouts.total)
}

/// The attempt answered: the backend is well, and its span says so.
fn note_success(app: &AppState, backend: &Backend, trace: &Span) {
    traces::attempt_ok(trace);
    app.live.success(&backend.id);
}

fn note_failure(app: &AppState, backend: &Backend, cand: &Scored, e: &AttemptError, trace: &Span) {
    traces::attempt_failed(trace, e);
    // A final 4xx (400, 413, 422) is about the request, not the backend:
    // logged at WARN, any key holder could fill the log with them.
    if matches!(e, AttemptError::Status { .. }) && !e.retryable() {
        tracing::debug!(backend = %backend.name, model = %cand.upstream_model, error = %e, "upstream refused the request");
    } else {
        tracing::warn!(backend = %backend.name, model = %cand.upstream_model, error = %e, "upstream attempt failed");
    }
    metrics::counter!("gateway_upstream_errors_total", "backend" => backend.name.clone(), "kind" => e.label())
        .increment(1);
    if e.backend_down() {
        app.live.failure(&backend.id);
    }
}

/// Prices and energy rates: the edge's live joules per token when it
/// reported them, the backend's configured ones otherwise.
pub(super) fn pricing(app: &AppState, b: &Backend) -> Pricing {
    let live = app.live.get(&b.id).load.map(|l| l.average_joules());
    Pricing {
        price_in_per_1k: b.price_in_per_1k,
        price_out_per_1k: b.price_out_per_1k,
        joules_per_prompt_token: live
            .and_then(|j| j.prompt)
            .unwrap_or(b.joules_per_prompt_token),
        joules_per_output_token: live
            .and_then(|j| j.output)
            .unwrap_or(b.joules_per_output_token),
    }
}

/// The upstream's own answer about the request (400, 413, 415, 422), passed
/// on with its status and code: another backend would say the same. Its
/// message is replaced unless it is short and free of key-like text.
fn pass_through(e: AttemptError, record: Record, route: &RouteHeaders) -> Response {
    let AttemptError::Status { status, body } = e else {
        record.finish(LedgerStatus::Error, 502, Some("upstream_error"));
        return with_gateway_headers(ApiError::Upstream.into_response(), route);
    };
    let rendered = echoable(
        &body,
        "invalid_request_error",
        "upstream_rejected",
        "The upstream rejected the request.",
    );
    let code = rendered
        .error
        .code
        .as_deref()
        .unwrap_or("upstream_rejected");
    record.finish(LedgerStatus::Error, status, Some(code));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        rendered.to_json(),
    )
        .into_response();
    with_gateway_headers(response, route)
}

/// An upstream's error body as the client may see it, typed `kind`: its
/// code if a plain identifier (else `code`), its message and parameter if
/// [`safe_to_echo`] (else `message` and none).
pub(super) fn echoable(body: &[u8], kind: &str, code: &str, message: &str) -> ErrorBody {
    let upstream = serde_json::from_slice::<ErrorBody>(body).ok();
    let code = upstream
        .as_ref()
        .and_then(|b| b.error.code.as_deref())
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .unwrap_or(code);
    let message = upstream
        .as_ref()
        .map(|b| b.error.message.as_str())
        .filter(|m| safe_to_echo(m))
        .unwrap_or(message);
    let param = upstream
        .as_ref()
        .and_then(|b| b.error.param.as_deref())
        .filter(|p| p.len() <= 64 && safe_to_echo(p));
    ErrorBody::new(message, kind, param, code)
}

/// Whether upstream text may be shown to the client: short, and neither
/// mentioning credentials nor holding anything the secret detectors find.
fn safe_to_echo(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    text.len() <= MAX_UPSTREAM_MESSAGE
        && ![
            "key",
            "token",
            "auth",
            "bearer",
            "password",
            "secret",
            "credential",
        ]
        .iter()
        .any(|w| lower.contains(w))
        && RuleSet::builtins().is_some_and(|rules| {
            classify([text], Class::Public, None, rules)
                .fired
                .is_empty()
        })
}

/// Buffers a non-streaming answer, bounded in size and by the idle
/// timeout. A 200 whose body is not a JSON object (cut off, or an HTML
/// page from a proxy in between) is not an answer.
async fn read_json(
    upstreams: &Upstreams,
    mut resp: UpstreamResponse,
) -> Result<Answer, AttemptError> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(upstreams.timeouts.idle, resp.chunk()).await {
            Err(_) => return Err(AttemptError::Timeout),
            Ok(Err(_)) => return Err(AttemptError::Body),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(c))) => c,
        };
        if buf.len() + chunk.len() > upstreams.max_body_bytes {
            return Err(AttemptError::Body);
        }
        buf.extend_from_slice(&chunk);
    }
    let answer = serde_json::from_slice::<WithUsage>(&buf).map_err(|_| AttemptError::Body)?;
    Ok(Answer::Json {
        body: Bytes::from(buf),
        usage: answer.usage,
    })
}
