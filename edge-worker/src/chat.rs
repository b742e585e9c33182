//! `POST /v1/chat/completions`: validation ([`validate`]), admission, then
//! either one JSON answer or an SSE stream, both driven by the same
//! [`Generation`].

mod validate;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream};
use tracing::Span;

use crate::engine::EngineError;
use crate::error::ApiError;
use crate::generation::{Event, Failure, Finish, Generation};
use crate::openai::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta, Logprobs,
    Usage, SYSTEM_FINGERPRINT,
};
use crate::trace::{self, GenerationTrace};
use crate::AppState;

pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let span = trace::request(&headers);
    let result = handle(state, body, &span).await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(e) => e.status(),
    };
    otel::answered(&span, status.as_u16());
    result
}

async fn handle(
    state: AppState,
    body: Result<Json<ChatRequest>, JsonRejection>,
    span: &Span,
) -> Result<Response, ApiError> {
    let received_at = Instant::now();
    if state.draining.load(Ordering::Acquire) {
        return Err(ApiError::Draining);
    }
    let engine = state.engine.get().cloned().ok_or(ApiError::NotReady)?;
    let Json(req) =
        body.map_err(|r| ApiError::from_json_rejection(&r, state.config.max_body_bytes))?;
    let mut v = validate::validate(req, state.config.default_max_tokens, &engine.model_id)?;
    engine
        .check_format(&v.params.format)
        .await
        .map_err(|e| match e {
            EngineError::InvalidFormat(why) => ApiError::invalid(
                "response_format",
                "invalid_value",
                format!(
                    "the JSON schema cannot be enforced: {}",
                    truncate(&why, 400)
                ),
            ),
            other => {
                tracing::error!(error = %other, "grammar check failed");
                ApiError::Internal
            }
        })?;

    let ticket = state.admission.try_admit().ok_or_else(|| {
        metrics::counter!("edge_queue_rejections_total").increment(1);
        ApiError::Busy(1)
    })?;

    let prompt_tokens = engine
        .prompt_tokens(&v.params.messages)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "tokenization failed");
            ApiError::Internal
        })?;
    let ctx = engine.context_length;
    if prompt_tokens >= ctx {
        return Err(ApiError::ContextLength(format!(
            "the prompt is {prompt_tokens} tokens; this model's context is {ctx} tokens"
        )));
    }
    match v.max_tokens {
        Some(n) if prompt_tokens + n > ctx => {
            return Err(ApiError::InvalidParam {
                param: "max_tokens".into(),
                code: "context_length_exceeded",
                message: format!(
                    "prompt ({prompt_tokens} tokens) plus max_tokens ({n}) exceeds the context of {ctx} tokens"
                ),
            });
        }
        Some(_) => {}
        None => v.params.max_tokens = v.params.max_tokens.min(ctx - prompt_tokens),
    }

    let queued_at = Instant::now();
    let waiting = state.admission.waiting();
    let slot = trace::queued(span, waiting, ticket.start(state.config.queue_timeout()))
        .await
        .ok_or_else(|| {
            metrics::counter!("edge_queue_rejections_total").increment(1);
            ApiError::Busy(1)
        })?;
    // How long this request waited for a running slot: the gateway records
    // it next to the wait it predicted.
    let queue_ms = queued_at.elapsed().as_secs_f64() * 1000.0;
    let energy_id = state.next_energy_id.fetch_add(1, Ordering::Relaxed);
    state.reporters.energy.begin(energy_id);
    let meta = ResponseMeta::new(&engine.model_id, &state, v.params.logprobs.is_some());
    let stream = match engine.generate(v.params).await {
        Ok(stream) => stream,
        Err(e) => {
            state.reporters.energy.end(energy_id);
            tracing::error!(error = %e, "engine refused the request");
            return Err(ApiError::Internal);
        }
    };
    let generation = Generation::new(
        stream,
        slot,
        state.reporters.clone(),
        energy_id,
        received_at,
        state.config.request_timeout(),
        GenerationTrace::start(span.clone(), &engine.model_id, prompt_tokens),
    );
    let mut response = if v.stream {
        stream_response(generation, meta, v.include_usage).into_response()
    } else {
        collect_response(generation, meta).await?
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{queue_ms:.1}")) {
        response.headers_mut().insert("x-queue-ms", v);
    }
    Ok(response)
}

struct ResponseMeta {
    id: String,
    created: u64,
    model: String,
    energy_method: &'static str,
    /// Whether the request asked for log-probabilities.
    logprobs: bool,
}

impl ResponseMeta {
    fn new(model: &str, state: &AppState, logprobs: bool) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: unix_now(),
            model: model.to_owned(),
            energy_method: state.reporters.energy.method().as_str(),
            logprobs,
        }
    }

    fn usage(&self, f: &Finish) -> Usage {
        Usage {
            prompt_tokens: f.prompt_tokens,
            completion_tokens: f.completion_tokens,
            total_tokens: f.prompt_tokens + f.completion_tokens,
            energy_joules: f.joules,
            energy_method: self.energy_method,
        }
    }

    fn chunk(
        &self,
        delta: Delta<'_>,
        finish_reason: Option<&str>,
        logprobs: Option<Logprobs<'_>>,
    ) -> String {
        let chunk = ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                logprobs,
            }],
            usage: None,
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }

    fn usage_chunk(&self, f: &Finish) -> String {
        let chunk = ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: vec![],
            usage: Some(self.usage(f)),
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }
}

fn failure_error(f: Failure) -> ApiError {
    match f {
        Failure::Engine => ApiError::Internal,
        Failure::Timeout => ApiError::Timeout,
    }
}

async fn collect_response(mut g: Generation, meta: ResponseMeta) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(event) = g.next().await {
        match event {
            Event::Delta(d) => {
                text.push_str(&d.text);
                logprobs.extend(d.logprobs);
            }
            Event::Failed(f) => return Err(failure_error(f)),
            Event::Finished(f) => {
                let body = ChatCompletion {
                    id: meta.id.clone(),
                    object: "chat.completion",
                    created: meta.created,
                    model: meta.model.clone(),
                    system_fingerprint: SYSTEM_FINGERPRINT,
                    choices: vec![Choice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant",
                            content: text,
                        },
                        finish_reason: f.finish_reason.clone(),
                        logprobs: meta.logprobs.then(|| Logprobs::of(&logprobs)),
                    }],
                    usage: meta.usage(&f),
                };
                let mut response = Json(body).into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", f.joules)) {
                    response.headers_mut().insert("x-energy-joules", v);
                }
                response.headers_mut().insert(
                    "x-energy-method",
                    HeaderValue::from_static(meta.energy_method),
                );
                return Ok(response);
            }
        }
    }
    Err(ApiError::Internal)
}

/// Where the SSE stream is in its life.
enum Phase {
    /// Nothing sent yet: the first chunk carries the assistant role.
    Start,
    Streaming,
    /// The finish chunk went out; the usage chunk (if asked for) and
    /// `[DONE]` remain.
    Finished(Option<Finish>),
    Done,
}

fn stream_response(
    generation: Generation,
    meta: ResponseMeta,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = stream::unfold(
        (generation, meta, Phase::Start),
        move |(mut g, meta, phase)| async move {
            let data = match phase {
                Phase::Done => return None,
                Phase::Finished(finish) => {
                    let next = Phase::Finished(None);
                    return Some(match finish.filter(|_| include_usage) {
                        Some(f) => (
                            Ok(SseEvent::default().data(meta.usage_chunk(&f))),
                            (g, meta, next),
                        ),
                        None => (
                            Ok(SseEvent::default().data("[DONE]")),
                            (g, meta, Phase::Done),
                        ),
                    });
                }
                Phase::Start | Phase::Streaming => match g.next().await {
                    Some(Event::Delta(d)) => {
                        let role = matches!(phase, Phase::Start).then_some("assistant");
                        let data = meta.chunk(
                            Delta {
                                role,
                                // Empty only for tokens that add no text
                                // but carry their log-probabilities.
                                content: Some(d.text.as_str()).filter(|t| !t.is_empty()),
                            },
                            None,
                            meta.logprobs.then(|| Logprobs::of(&d.logprobs)),
                        );
                        (data, Phase::Streaming)
                    }
                    Some(Event::Finished(f)) => {
                        let data = meta.chunk(Delta::default(), Some(&f.finish_reason), None);
                        (data, Phase::Finished(Some(f)))
                    }
                    Some(Event::Failed(f)) => {
                        // Headers are gone: the error travels as an SSE event
                        // in the OpenAI error shape, and the stream ends.
                        (failure_error(f).body().to_json(), Phase::Done)
                    }
                    None => return None,
                },
            };
            let (data, next) = data;
            Some((Ok(SseEvent::default().data(data)), (g, meta, next)))
        },
    );
    Sse::new(stream)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
