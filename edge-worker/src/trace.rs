//! The spans of one chat completion, for OpenTelemetry traces (switched on
//! by the standard `OTEL_EXPORTER_OTLP_*ENDPOINT` variables; see the
//! `otel` crate).
//!
//! A request's server span continues the caller's trace from its
//! `traceparent` (the gateway's attempt span), with children for the
//! `queue wait` (for a running slot), the `prefill` (to the first token)
//! and the `decode` (to the last). Attributes follow the OpenTelemetry
//! generative-AI conventions (`gen_ai.*`) where one fits; they hold
//! counts, timings and the model's name, never a message or generated
//! text.
//!
//! Spans are never entered: each ends when its last handle drops, and the
//! [`GenerationTrace`] a generation owns ends the request span with it,
//! which for a stream is when the stream ends.

use std::future::Future;
use std::time::Instant;

use http::HeaderMap;
use otel::OpenTelemetrySpanExt as _;
use tracing::Span;

/// The server span of a chat completion, continuing the caller's trace.
pub fn request(headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: otel::TARGET,
        "POST /v1/chat/completions",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/chat/completions",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = "edge_worker",
    );
    otel::continue_trace(&span, headers);
    span
}

/// Waits for a running slot (`wait`) inside a `queue wait` span that
/// records how the wait ended: `slot`, or `timeout`.
pub async fn queued<T>(
    request: &Span,
    waiting: usize,
    wait: impl Future<Output = Option<T>>,
) -> Option<T> {
    let span = tracing::info_span!(
        target: otel::TARGET,
        parent: request,
        "queue wait",
        edge.queue.waiting = count(waiting),
        edge.queue.outcome = tracing::field::Empty,
    );
    let got = wait.await;
    span.record(
        "edge.queue.outcome",
        if got.is_some() { "slot" } else { "timeout" },
    );
    got
}

/// The spans of a running generation: the request's, and the phase it is
/// in. Dropping it ends them all.
#[derive(Debug)]
pub struct GenerationTrace {
    request: Span,
    prefill: Option<Span>,
    decode: Option<Span>,
    decode_started: Option<Instant>,
}

impl GenerationTrace {
    /// A generation just started on `model`: its prefill begins now. The
    /// worker serves one model, so it is both the requested and the
    /// responding one.
    pub fn start(request: Span, model: &str, prompt_tokens: usize) -> GenerationTrace {
        if !request.is_disabled() {
            request.set_attribute("gen_ai.request.model", model.to_owned());
            request.set_attribute("gen_ai.response.model", model.to_owned());
            request.set_attribute("gen_ai.usage.input_tokens", count(prompt_tokens));
        }
        let prefill = tracing::info_span!(
            target: otel::TARGET,
            parent: &request,
            "prefill",
            gen_ai.usage.input_tokens = count(prompt_tokens),
        );
        GenerationTrace {
            request,
            prefill: Some(prefill),
            decode: None,
            decode_started: None,
        }
    }

    /// The first token: the prefill ends and the decode begins.
    pub fn first_token(&mut self) {
        if self.prefill.take().is_some() {
            self.decode_started = Some(Instant::now());
            self.decode = Some(tracing::info_span!(
                target: otel::TARGET,
                parent: &self.request,
                "decode",
                gen_ai.usage.output_tokens = tracing::field::Empty,
                edge.decode.tokens_per_s = tracing::field::Empty,
            ));
        }
    }

    /// The sequence finished: usage, finish reason and energy.
    pub fn finished(&mut self, output_tokens: usize, finish_reason: &str, joules: f64) {
        self.prefill = None;
        if let Some(decode) = self.decode.take() {
            decode.record("gen_ai.usage.output_tokens", count(output_tokens));
            let seconds = self
                .decode_started
                .map_or(0.0, |t| t.elapsed().as_secs_f64());
            // The first token belongs to the prefill.
            if seconds > 0.0 && output_tokens > 1 {
                decode.record(
                    "edge.decode.tokens_per_s",
                    (output_tokens - 1) as f64 / seconds,
                );
            }
        }
        let request = &self.request;
        if request.is_disabled() {
            return;
        }
        request.set_attribute("gen_ai.usage.output_tokens", count(output_tokens));
        request.set_attribute(
            "gen_ai.response.finish_reasons",
            otel::strings([finish_reason.to_owned()]),
        );
        request.set_attribute("edge.energy_j", joules);
        request.set_attribute("edge.outcome", "completed");
    }

    /// The generation failed (`error`, `timeout`) or the client left
    /// (`cancelled`).
    pub fn ended(&mut self, outcome: &'static str) {
        self.prefill = None;
        self.decode = None;
        if self.request.is_disabled() {
            return;
        }
        self.request.set_attribute("edge.outcome", outcome);
        if outcome != "cancelled" {
            self.request.set_attribute("error.type", outcome);
            self.request.set_status(otel::Status::error(""));
        }
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
