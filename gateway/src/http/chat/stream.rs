//! Relaying an upstream SSE stream chunk by chunk.
//!
//! Nothing reaches the client until the upstream's first *token* (a chunk
//! with content, a tool call, a finish reason or usage, or `[DONE]`):
//! events before it (the role-only opening chunk) are held. So a backend
//! that accepts the connection and then dies, or reports an error before
//! its first token (an edge worker commits its 200 headers at once), still
//! fails over. After that each event is passed on as it arrives (its `data`
//! unchanged, re-framed line by line), with three exceptions: the usage
//! chunk is withheld when the client did not ask for it (the gateway
//! always asks, to learn token counts), an upstream failure becomes an
//! OpenAI-shaped SSE error event that ends the stream (ledger `partial`),
//! and a stream that ends without `[DONE]` counts as such a failure. When
//! the gateway shuts down past its grace period, the stream ends with an
//! error event too (ledger `cancelled`).
//!
//! The relay's state owns the ledger [`Record`] and the in-flight guard.
//! When the client disconnects, hyper drops the body, which drops the
//! upstream response (cancelling it) and the record (a `cancelled` row with
//! the tokens relayed so far).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use wire::ErrorBody;

use super::relay::Usage;
use super::sse::{frame, SseReader};
use crate::http::ApiError;
use crate::ledger::Record;
use crate::live::InFlight;
use crate::store::LedgerStatus;
use crate::upstream::{AttemptError, BodyStream, UpstreamResponse, Upstreams};

/// Most events held back before the first token; an upstream that sends
/// more without a token is relayed anyway.
const MAX_HELD: usize = 16;

/// The fields of a chunk the relay looks at.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    choices: Option<Vec<ChoicePeek>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<ErrorPeek>,
}

#[derive(Deserialize)]
struct ErrorPeek {
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize)]
struct ChoicePeek {
    #[serde(default)]
    delta: Option<DeltaPeek>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaPeek {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    function_call: Option<serde::de::IgnoredAny>,
}

impl Peek {
    fn has_content(&self) -> bool {
        self.choices.iter().flatten().any(|c| {
            c.delta
                .as_ref()
                .and_then(|d| d.content.as_deref())
                .is_some_and(|s| !s.is_empty())
        })
    }

    /// A token, a tool call, a finish reason or usage: the stream is
    /// producing an answer.
    fn is_token(&self) -> bool {
        self.has_content()
            || self.usage.is_some()
            || self.choices.iter().flatten().any(|c| {
                c.finish_reason.is_some()
                    || c.delta
                        .as_ref()
                        .is_some_and(|d| d.tool_calls.is_some() || d.function_call.is_some())
            })
    }
}

/// Reads upstream chunks into events.
struct Events {
    chunks: BodyStream,
    reader: SseReader,
    ready: VecDeque<String>,
}

/// Why no next event came.
enum EventError {
    Ended,
    Broke,
    TooLarge,
}

impl Events {
    async fn next(&mut self) -> Result<String, EventError> {
        loop {
            if let Some(data) = self.ready.pop_front() {
                return Ok(data);
            }
            let chunk = match self.chunks.next().await {
                None => return Err(EventError::Ended),
                Some(Err(_)) => return Err(EventError::Broke),
                Some(Ok(c)) => c,
            };
            let mut out = Vec::new();
            let pushed = self.reader.push(&chunk, &mut out);
            self.ready.extend(out);
            if pushed.is_err() {
                return Err(EventError::TooLarge);
            }
        }
    }
}

struct Relay {
    events: Events,
    /// `None` once the outcome is recorded.
    record: Option<Record>,
    _in_flight: InFlight,
    include_usage: bool,
    idle: Duration,
    /// Events read before the response was committed, to relay first.
    held: VecDeque<String>,
    /// Fires when shutdown's grace period is over.
    shutdown: CancellationToken,
}

/// What a streamed attempt needs besides the response.
pub(super) struct StreamAttempt<'a> {
    pub upstreams: &'a Upstreams,
    pub first_token: Duration,
    pub include_usage: bool,
    pub shutdown: CancellationToken,
}

/// A stream whose first token has arrived, not yet committed to the
/// client: the events read so far and the rest of the upstream.
pub(super) struct Primed {
    events: Events,
    held: VecDeque<String>,
    include_usage: bool,
    idle: Duration,
    shutdown: CancellationToken,
}

/// Waits for the first token of `resp`. Nothing is sent to the client and
/// nothing recorded: the caller decides whether this stream is the answer
/// (hedged requests race two).
pub(super) async fn prime(
    attempt: StreamAttempt<'_>,
    resp: UpstreamResponse,
) -> Result<Primed, AttemptError> {
    let mut events = Events {
        chunks: resp.into_body(),
        reader: SseReader::new(attempt.upstreams.max_event_bytes),
        ready: VecDeque::new(),
    };
    let held = match tokio::time::timeout(attempt.first_token, first_token(&mut events)).await {
        Err(_) => return Err(AttemptError::Timeout),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(held)) => held,
    };
    Ok(Primed {
        events,
        held,
        include_usage: attempt.include_usage,
        idle: attempt.upstreams.timeouts.idle,
        shutdown: attempt.shutdown,
    })
}

/// Commits a primed stream to the client: the streaming response, which
/// owns the ledger record and the in-flight guard until it ends.
pub(super) fn relay(primed: Primed, record: Record, in_flight: InFlight) -> Response {
    let relay = Relay {
        events: primed.events,
        record: Some(record),
        _in_flight: in_flight,
        include_usage: primed.include_usage,
        idle: primed.idle,
        held: primed.held,
        shutdown: primed.shutdown,
    };
    let body = futures::stream::unfold(relay, |mut relay| async move {
        let out = relay.next_frame().await?;
        Some((Ok::<Bytes, Infallible>(out), relay))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Reads events up to and including the first token. An error event or a
/// broken stream before it is a failed attempt (the next candidate may be
/// tried); an error that says the context is too small is reported as such.
async fn first_token(events: &mut Events) -> Result<VecDeque<String>, AttemptError> {
    let mut held = VecDeque::new();
    loop {
        let data = events.next().await.map_err(|_| AttemptError::Failed)?;
        if data.trim() == "[DONE]" {
            held.push_back(data);
            return Ok(held);
        }
        match serde_json::from_str::<Peek>(&data) {
            Ok(Peek { error: Some(e), .. }) => {
                return Err(match e.code.as_deref() {
                    Some("context_length_exceeded") => AttemptError::ContextLength,
                    _ => AttemptError::Failed,
                })
            }
            Ok(peek) if peek.is_token() => {
                held.push_back(data);
                return Ok(held);
            }
            _ => {}
        }
        held.push_back(data);
        if held.len() >= MAX_HELD {
            return Ok(held);
        }
    }
}

impl Relay {
    /// The next bytes for the client, or `None` when the stream is over.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            self.record.as_ref()?;
            let data = if let Some(d) = self.held.pop_front() {
                d
            } else {
                let next = tokio::time::timeout(self.idle, self.events.next());
                let result = tokio::select! {
                    () = self.shutdown.cancelled() => return Some(self.end_for_shutdown()),
                    r = next => r,
                };
                match result {
                    Err(_) => return Some(self.fail("The upstream stopped sending.")),
                    Ok(Err(EventError::Ended)) => {
                        return Some(self.fail("The upstream stream ended early."))
                    }
                    Ok(Err(EventError::Broke)) => {
                        return Some(self.fail("The upstream stream broke."))
                    }
                    Ok(Err(EventError::TooLarge)) => {
                        return Some(self.fail("The upstream sent an oversized event."))
                    }
                    Ok(Ok(d)) => d,
                }
            };
            if let Some(frame) = self.handle(&data) {
                return Some(frame);
            }
        }
    }

    /// The frame to relay for one upstream event; `None` to withhold it.
    fn handle(&mut self, data: &str) -> Option<Bytes> {
        if data.trim() == "[DONE]" {
            self.finish(LedgerStatus::Ok, None);
            return Some(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        let framed = Bytes::from(frame(data));
        let Ok(peek) = serde_json::from_str::<Peek>(data) else {
            return Some(framed);
        };
        if peek.error.is_some() {
            // The upstream reported its own failure mid-stream: passed on
            // as the stream's last event, with only what may be echoed of
            // it (as for an error before the stream).
            self.finish(LedgerStatus::Partial, Some("upstream_error"));
            let shown = super::relay::echoable(
                data.as_bytes(),
                "upstream_error",
                "upstream_error",
                "The upstream failed mid-answer.",
            );
            return Some(Bytes::from(shown.sse_event()));
        }
        let record = self.record.as_mut()?;
        if peek.has_content() {
            record.content_chunk();
        }
        if let Some(u) = &peek.usage {
            record.set_usage(u.prompt_tokens, u.completion_tokens, u.energy_joules);
            if peek.choices.as_ref().is_none_or(Vec::is_empty) && !self.include_usage {
                return None;
            }
        }
        Some(framed)
    }

    /// Ends the stream with an error event; the row says `partial`.
    fn fail(&mut self, message: &str) -> Bytes {
        metrics::counter!("gateway_stream_failures_total").increment(1);
        self.finish(LedgerStatus::Partial, Some("upstream_error"));
        Bytes::from(ErrorBody::new(message, "upstream_error", None, "upstream_error").sse_event())
    }

    /// Ends the stream because the gateway is shutting down; the row says
    /// `cancelled`.
    fn end_for_shutdown(&mut self) -> Bytes {
        let err = ApiError::ShuttingDown;
        self.finish(LedgerStatus::Cancelled, Some(err.code()));
        Bytes::from(err.body().sse_event())
    }

    fn finish(&mut self, status: LedgerStatus, code: Option<&str>) {
        if let Some(record) = self.record.take() {
            record.finish(status, 200, code);
        }
    }
}
