//! Relaying an upstream SSE stream chunk by chunk.
//!
//! The upstream's first event is awaited before the client gets any byte,
//! so a backend that accepts the connection and then dies still fails over.
//! After that each event is passed on as it arrives (its `data` text
//! unchanged), with three exceptions: the usage chunk is withheld when the
//! client did not ask for it (the gateway always asks, to learn token
//! counts), an upstream failure becomes an OpenAI-shaped SSE error event
//! that ends the stream (ledger `partial`), and a stream that ends without
//! `[DONE]` counts as such a failure.
//!
//! The relay's state owns the ledger [`Record`] and the in-flight guard.
//! When the client disconnects, hyper drops the body, which drops the
//! upstream response (cancelling it) and the record (a `cancelled` row with
//! the tokens relayed so far).

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::Usage;
use crate::http::error_body;
use crate::ledger::Record;
use crate::live::InFlight;
use crate::state::AppState;
use crate::store::LedgerStatus;
use crate::upstream::AttemptError;

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// The fields of a chunk the relay looks at.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    choices: Option<Vec<ChoicePeek>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ChoicePeek {
    #[serde(default)]
    delta: Option<DeltaPeek>,
}

#[derive(Deserialize)]
struct DeltaPeek {
    #[serde(default)]
    content: Option<String>,
}

struct Relay {
    events: Events,
    /// `None` once the outcome is recorded.
    record: Option<Record>,
    _in_flight: InFlight,
    include_usage: bool,
    idle: Duration,
    /// The first event, read before the response was committed.
    first: Option<Event>,
}

/// Waits for the first event; on success returns the streaming response.
pub(super) async fn start(
    app: &AppState,
    resp: reqwest::Response,
    record: Record,
    in_flight: InFlight,
    include_usage: bool,
) -> Result<Response, (AttemptError, Record)> {
    let mut events: Events = Box::pin(resp.bytes_stream().eventsource());
    let first = match tokio::time::timeout(app.upstreams.timeouts.first_byte, events.next()).await {
        Err(_) => return Err((AttemptError::Timeout, record)),
        Ok(None | Some(Err(_))) => return Err((AttemptError::Body, record)),
        Ok(Some(Ok(event))) => event,
    };
    let relay = Relay {
        events,
        record: Some(record),
        _in_flight: in_flight,
        include_usage,
        idle: app.upstreams.timeouts.idle,
        first: Some(first),
    };
    let body = futures::stream::unfold(relay, |mut relay| async move {
        let out = relay.next_frame().await?;
        Some((Ok::<Bytes, Infallible>(out), relay))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

impl Relay {
    /// The next bytes for the client, or `None` when the stream is over.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            self.record.as_ref()?;
            let event = match self.first.take() {
                Some(e) => e,
                None => match tokio::time::timeout(self.idle, self.events.next()).await {
                    Err(_) => return Some(self.fail("The upstream stopped sending.")),
                    Ok(None) => return Some(self.fail("The upstream stream ended early.")),
                    Ok(Some(Err(_))) => return Some(self.fail("The upstream stream broke.")),
                    Ok(Some(Ok(e))) => e,
                },
            };
            if let Some(frame) = self.handle(&event.data) {
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
        let frame = Bytes::from(format!("data: {data}\n\n"));
        let Ok(peek) = serde_json::from_str::<Peek>(data) else {
            return Some(frame);
        };
        if peek.error.is_some() {
            // The upstream reported its own failure mid-stream: pass it on
            // as the stream's last event.
            self.finish(LedgerStatus::Partial, Some("upstream_error"));
            return Some(frame);
        }
        let choices = peek.choices.unwrap_or_default();
        let record = self.record.as_mut()?;
        if choices.iter().any(|c| {
            c.delta
                .as_ref()
                .and_then(|d| d.content.as_deref())
                .is_some_and(|s| !s.is_empty())
        }) {
            record.content_chunk();
        }
        if let Some(u) = peek.usage {
            record.set_usage(u.prompt_tokens, u.completion_tokens, u.energy_joules);
            if choices.is_empty() && !self.include_usage {
                return None;
            }
        }
        Some(frame)
    }

    /// Ends the stream with an error event; the row says `partial`.
    fn fail(&mut self, message: &str) -> Bytes {
        metrics::counter!("gateway_stream_failures_total").increment(1);
        self.finish(LedgerStatus::Partial, Some("upstream_error"));
        let body = error_body(message, "upstream_error", None, "upstream_error");
        Bytes::from(format!("data: {body}\n\n"))
    }

    fn finish(&mut self, status: LedgerStatus, code: Option<&str>) {
        if let Some(record) = self.record.take() {
            record.finish(status, 200, code);
        }
    }
}
