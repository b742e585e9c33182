//! `POST /v1/chat/completions`: validation, admission, then either one JSON
//! answer or an SSE stream, both driven by the same [`Generation`].

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream};

use crate::engine::{self, EngineMessage, GenerateParams};
use crate::error::ApiError;
use crate::generation::{Event, Failure, Finish, Generation};
use crate::openai::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Choice, ChunkChoice,
    Content, Delta, Usage, SYSTEM_FINGERPRINT,
};
use crate::AppState;

/// Roles the chat template understands. `developer` is OpenAI's newer name
/// for `system`.
fn engine_role(role: &str) -> Option<&'static str> {
    match role {
        "system" | "developer" => Some("system"),
        "user" => Some("user"),
        "assistant" => Some("assistant"),
        _ => None,
    }
}

/// A request checked and translated for the engine.
struct Validated {
    stream: bool,
    include_usage: bool,
    /// `None` when the client left it to the worker's default.
    max_tokens: Option<usize>,
    params: GenerateParams,
}

/// Checks roles and content and renders messages as the engine takes them.
fn convert_messages(messages: Option<Vec<ChatMessage>>) -> Result<Vec<EngineMessage>, ApiError> {
    let Some(messages) = messages.filter(|m| !m.is_empty()) else {
        return Err(ApiError::invalid(
            "messages",
            "invalid_messages",
            "`messages` must be a non-empty array",
        ));
    };
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let Some(role) = engine_role(&m.role) else {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                "unsupported_role",
                format!(
                    "role `{}` is not supported; use system, developer, user or assistant",
                    m.role
                ),
            ));
        };
        let text = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content"),
                            "unsupported_content",
                            format!("content part type `{}` is not supported; only text", p.kind),
                        ));
                    }
                    text.push_str(p.text.as_deref().unwrap_or_default());
                }
                text
            }
        };
        out.push(engine::message(role, text));
    }
    Ok(out)
}

fn validate(req: ChatRequest, state: &AppState, model_id: &str) -> Result<Validated, ApiError> {
    if req.model != model_id {
        return Err(ApiError::ModelNotFound(req.model));
    }
    let out = convert_messages(req.messages)?;
    if let Some(n) = req.n.filter(|n| *n != 1) {
        return Err(ApiError::invalid(
            "n",
            "unsupported_parameter",
            format!("only n=1 is supported, got {n}"),
        ));
    }
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        None => None,
        Some(n) if n < 1 => {
            return Err(ApiError::invalid(
                "max_tokens",
                "invalid_max_tokens",
                format!("max_tokens must be at least 1, got {n}"),
            ))
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    if let Some(t) = req.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(ApiError::invalid(
            "temperature",
            "invalid_value",
            format!("temperature must be between 0 and 2, got {t}"),
        ));
    }
    if let Some(p) = req.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(ApiError::invalid(
            "top_p",
            "invalid_value",
            format!("top_p must be in (0, 1], got {p}"),
        ));
    }
    let stop = req
        .stop
        .map(crate::openai::Stop::into_vec)
        .unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "invalid_value",
            "stop takes up to 4 non-empty strings",
        ));
    }
    let stream = req.stream.unwrap_or(false);
    Ok(Validated {
        stream,
        include_usage: stream && req.stream_options.is_some_and(|o| o.include_usage),
        max_tokens,
        params: GenerateParams {
            messages: out,
            max_tokens: max_tokens.unwrap_or(state.config.default_max_tokens),
            temperature: req.temperature,
            top_p: req.top_p,
            stop,
            frequency_penalty: req.frequency_penalty,
            presence_penalty: req.presence_penalty,
            seed: req.seed.map(i64::cast_unsigned),
        },
    })
}

pub async fn completions(
    State(state): State<AppState>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let received_at = Instant::now();
    if state.draining.load(Ordering::Acquire) {
        return Err(ApiError::Draining);
    }
    let engine = state.engine.get().cloned().ok_or(ApiError::NotReady)?;
    let Json(req) =
        body.map_err(|r| ApiError::from_json_rejection(&r, state.config.max_body_bytes))?;
    let mut v = validate(req, &state, &engine.model_id)?;

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

    let slot = ticket
        .start(state.config.queue_timeout())
        .await
        .ok_or_else(|| {
            metrics::counter!("edge_queue_rejections_total").increment(1);
            ApiError::Busy(1)
        })?;
    let energy_id = state.next_energy_id.fetch_add(1, Ordering::Relaxed);
    state.reporters.energy.begin(energy_id);
    let rx = match engine.generate(v.params).await {
        Ok(rx) => rx,
        Err(e) => {
            state.reporters.energy.end(energy_id);
            tracing::error!(error = %e, "engine refused the request");
            return Err(ApiError::Internal);
        }
    };
    let generation = Generation::new(
        rx,
        slot,
        state.reporters.clone(),
        energy_id,
        received_at,
        state.config.request_timeout(),
    );
    let meta = ResponseMeta {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: unix_now(),
        model: engine.model_id.clone(),
        energy_method: state.reporters.energy.method().as_str(),
    };
    if v.stream {
        Ok(stream_response(generation, meta, v.include_usage).into_response())
    } else {
        collect_response(generation, meta).await
    }
}

struct ResponseMeta {
    id: String,
    created: u64,
    model: String,
    energy_method: &'static str,
}

impl ResponseMeta {
    fn usage(&self, f: &Finish) -> Usage {
        Usage {
            prompt_tokens: f.prompt_tokens,
            completion_tokens: f.completion_tokens,
            total_tokens: f.prompt_tokens + f.completion_tokens,
            energy_joules: f.joules,
            energy_method: self.energy_method,
        }
    }

    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&str>) -> String {
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
                logprobs: None,
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
    while let Some(event) = g.next().await {
        match event {
            Event::Delta(t) => text.push_str(&t),
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
                        logprobs: None,
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
                    Some(Event::Delta(t)) => {
                        let role = matches!(phase, Phase::Start).then_some("assistant");
                        let data = meta.chunk(
                            Delta {
                                role,
                                content: Some(&t),
                            },
                            None,
                        );
                        (data, Phase::Streaming)
                    }
                    Some(Event::Finished(f)) => {
                        let data = meta.chunk(Delta::default(), Some(&f.finish_reason));
                        (data, Phase::Finished(Some(f)))
                    }
                    Some(Event::Failed(f)) => {
                        // Headers are gone: the error travels as an SSE event
                        // in the OpenAI error shape, and the stream ends.
                        let err = failure_error(f);
                        let data = serde_json::json!({"error": {
                            "message": err.to_string(), "type": "server_error",
                            "param": null, "code": err.code()}})
                        .to_string();
                        (data, Phase::Done)
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
