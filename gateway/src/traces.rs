//! The spans of one chat request, for OpenTelemetry traces.
//!
//! One trace per request: a server span for the request (parented on the
//! client's `traceparent` when it sends one), with children for `auth`,
//! `classify` (privacy), `route` (the decision), one `chat {model}` client
//! span per upstream attempt, and `ledger` (the row handed to the writer).
//! An edge worker continues the trace from the attempt span's
//! `traceparent`; a cloud backend never receives trace context (see
//! `upstream`).
//!
//! Attributes follow the OpenTelemetry GenAI conventions where one fits
//! (`gen_ai.operation.name`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `gen_ai.provider.name`, `gen_ai.usage.*`) and
//! the HTTP ones for the server span; the rest are `gateway.*`. They hold
//! names, classes, counts, predictions and outcomes: never a prompt, an
//! answer, a key, a key id or an upstream credential, and never a matched
//! privacy finding (only the detector's name).
//!
//! Spans are created with explicit parents and never entered, so each
//! ends when its last handle drops: the request span with the ledger
//! [`crate::ledger::Record`] that carries it, which for a stream is when
//! the stream ends. With traces off (see the `otel` crate) every span here
//! is disabled at its call site and no attribute value is built.

use http::HeaderMap;
use otel::OpenTelemetrySpanExt as _;
use tracing::Span;

use crate::privacy::Classification;
use crate::routing::{Backend, BackendKind, Decision, NoRoute, Scored};
use crate::store::LedgerEntry;
use crate::upstream::AttemptError;

/// The request's spans that outlive the handler: the server span and the
/// current upstream attempt. A [`crate::ledger::Record`] owns them, so
/// both end when the request's row is sent.
#[derive(Debug)]
pub struct RequestTrace {
    request: Span,
    attempt: Option<Span>,
}

impl Default for RequestTrace {
    /// No spans: a request refused before its trace began, or traces off.
    fn default() -> RequestTrace {
        RequestTrace::new(Span::none())
    }
}

impl RequestTrace {
    #[must_use]
    pub fn new(request: Span) -> RequestTrace {
        RequestTrace {
            request,
            attempt: None,
        }
    }

    /// The request's server span, the parent of every other.
    #[must_use]
    pub fn request(&self) -> &Span {
        &self.request
    }

    /// Starts the span of an attempt on `backend`; the previous attempt's
    /// span (a failed one) ends now.
    pub fn attempt(&mut self, backend: &Backend, cand: &Scored, number: u32) -> &Span {
        let span = tracing::info_span!(
            target: otel::TARGET,
            parent: &self.request,
            "chat",
            otel.name = %format_args!("chat {}", cand.upstream_model),
            otel.kind = "client",
            gen_ai.operation.name = "chat",
            gen_ai.request.model = %cand.upstream_model,
            gen_ai.provider.name = provider(backend.kind),
            gateway.backend = %backend.name,
            gateway.backend.kind = backend.kind.as_str(),
            gateway.backend.zone = backend.zone.as_str(),
            gateway.attempt = i64::from(number),
            gateway.attempt.outcome = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        );
        self.attempt.insert(span)
    }

    /// Ends the trace with the row as it is sent to the ledger: a `ledger`
    /// span, and the outcome and usage on the request span.
    pub fn finish(&mut self, row: &LedgerEntry) {
        self.attempt = None;
        let request = &self.request;
        if request.is_disabled() {
            return;
        }
        let ledger = tracing::info_span!(
            target: otel::TARGET,
            parent: request,
            "ledger",
            gateway.ledger.id = %row.id,
            gateway.ledger.status = row.status.as_str(),
        );
        for span in [request, &ledger] {
            if let Some(model) = &row.resolved_model {
                span.set_attribute("gen_ai.response.model", model.clone());
            }
            if let Some(backend) = &row.backend {
                span.set_attribute("gateway.backend", backend.clone());
            }
            if let Some(n) = row.prompt_tokens {
                span.set_attribute("gen_ai.usage.input_tokens", i64::from(n));
            }
            if let Some(n) = row.completion_tokens {
                span.set_attribute("gen_ai.usage.output_tokens", i64::from(n));
            }
            if let Some(usd) = row.usd {
                span.set_attribute("gateway.cost_usd", usd);
            }
            if let Some(j) = row.joules {
                span.set_attribute("gateway.energy_j", j);
            }
        }
        if let Some(ms) = row.ttft_ms {
            ledger.set_attribute("gateway.ttft_ms", ms);
        }
        if let Some(ms) = row.latency_ms {
            ledger.set_attribute("gateway.latency_ms", ms);
        }
        if let Some(code) = &row.error_code {
            ledger.set_attribute("gateway.error_code", code.clone());
        }
        request.set_attribute("gateway.ledger.status", row.status.as_str());
    }
}

/// The server span of a chat request, continuing the client's trace when
/// its `traceparent` names one (accepting a caller's parent is what W3C
/// Trace Context asks of a server; the context goes on only to edge
/// workers, never to a cloud).
pub fn request(headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: otel::TARGET,
        "POST /v1/chat/completions",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/chat/completions",
        gen_ai.operation.name = "chat",
    );
    otel::continue_trace(&span, headers);
    span
}

/// The request as parsed: what the client asked for (no content; not even
/// the model it named, which may be any text until routing finds it in the
/// catalog: see [`model`]).
pub fn parsed(request: &Span, stream: bool, max_tokens: Option<u32>, tenant: &str) {
    if request.is_disabled() {
        return;
    }
    request.set_attribute("gateway.stream", stream);
    request.set_attribute("gateway.tenant", tenant.to_owned());
    if let Some(n) = max_tokens {
        request.set_attribute("gen_ai.request.max_tokens", i64::from(n));
    }
}

/// The model the request named, once routing found it in the catalog (a
/// model or an alias): a name the operator chose, not client text.
pub fn model(request: &Span, model: &str) {
    if !request.is_disabled() {
        request.set_attribute("gen_ai.request.model", model.to_owned());
    }
}

/// The `auth` span: the key check. It ends when dropped.
pub fn auth(request: &Span) -> Span {
    tracing::info_span!(
        target: otel::TARGET,
        parent: request,
        "auth",
        gateway.auth.outcome = tracing::field::Empty,
    )
}

/// How authentication ended: `ok`, or the error code.
pub fn auth_outcome(span: &Span, outcome: &'static str) {
    span.record("gateway.auth.outcome", outcome);
}

/// The `classify` span, from the wait for a scan slot to the class.
pub fn classify(request: &Span) -> Span {
    tracing::info_span!(target: otel::TARGET, parent: request, "classify")
}

/// The class and the names of the detectors that fired, never what they
/// matched; `pooled`: the scan ran on the classify pool.
pub fn classified(span: &Span, c: &Classification, pooled: bool) {
    if !span.is_disabled() {
        span.set_attribute("gateway.privacy.class", c.class.as_str());
        span.set_attribute("gateway.privacy.detectors", otel::strings(c.fired.clone()));
        span.set_attribute("gateway.privacy.pooled", pooled);
    }
}

/// The `route` span: candidates, predictions, the winner and why.
pub fn route(request: &Span) -> Span {
    tracing::info_span!(target: otel::TARGET, parent: request, "route")
}

/// The decision: every candidate in failover order with its predicted
/// latency, energy and cost and its score, the winner and the reason, and
/// the backends left out with why; or why no backend can take the request.
pub fn decided(span: &Span, decision: Result<&Decision, &NoRoute>) {
    if span.is_disabled() {
        return;
    }
    let d = match decision {
        Ok(d) => d,
        Err(r) => {
            span.set_attribute("gateway.route.outcome", r.code.as_str());
            span.set_attribute("error.type", r.code.as_str());
            return;
        }
    };
    let cands: Vec<&Scored> = d.candidates().collect();
    let floats = |f: fn(&Scored) -> f64| otel::floats(cands.iter().map(|c| f(c)));
    span.set_attribute(
        "gateway.route.candidates",
        otel::strings(cands.iter().map(|c| c.backend.clone())),
    );
    span.set_attribute(
        "gateway.route.predicted_latency_ms",
        floats(|c| c.prediction.latency_ms),
    );
    span.set_attribute(
        "gateway.route.predicted_energy_j",
        floats(|c| c.prediction.energy_j),
    );
    span.set_attribute(
        "gateway.route.predicted_cost_usd",
        floats(|c| c.prediction.cost_usd),
    );
    span.set_attribute("gateway.route.scores", floats(|c| c.score));
    span.set_attribute("gateway.route.winner", d.chosen.backend.clone());
    span.set_attribute("gateway.route.reason", d.chosen.reason.as_str());
    span.set_attribute("gateway.route.class", d.class.as_str());
    span.set_attribute("gateway.route.prompt_tokens", i64::from(d.prompt_tokens));
    span.set_attribute("gateway.route.output_tokens", i64::from(d.output_tokens));
    if let Some(a) = d.answer_tokens {
        span.set_attribute("gateway.route.answer_tokens", i64::from(a));
    }
    span.set_attribute(
        "gateway.route.excluded",
        otel::strings(d.excluded.iter().map(|e| {
            let why = serde_json::to_value(e.why)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            format!("{}: {why}", e.backend)
        })),
    );
}

/// An attempt whose answer started (for a stream: its first token).
pub fn attempt_ok(span: &Span) {
    span.record("gateway.attempt.outcome", "ok");
}

/// An attempt that failed before anything reached the client.
pub fn attempt_failed(span: &Span, e: &AttemptError) {
    if span.is_disabled() {
        return;
    }
    span.record("gateway.attempt.outcome", e.label());
    span.record("error.type", e.label());
    match e {
        AttemptError::Status { status, .. } => {
            span.set_attribute("http.response.status_code", i64::from(*status));
        }
        AttemptError::Busy { .. } => span.set_attribute("http.response.status_code", 429_i64),
        _ => {}
    }
    span.set_status(otel::Status::error(""));
}

/// `gen_ai.provider.name`: who serves the model behind the backend. Cloud
/// backends are OpenAI-compatible APIs of unnamed vendors.
fn provider(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Edge => "edge_worker",
        BackendKind::Cloud => "openai_compatible",
    }
}
