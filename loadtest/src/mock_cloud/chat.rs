//! `POST /v1/chat/completions`: checks in the order a real cloud does (key,
//! body, model), then applies the scenario (hang, injected failure), then
//! answers with a completion or a paced SSE stream.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::time::Instant;

use super::body::{self, Answer};
use super::config::{Behaviour, SCENARIO_HEADER};
use super::error::MockError;
use super::stats::InFlight;
use super::stream::{paced, Pacing};
use super::text::{count_tokens, MAX_COMPLETION_TOKENS};
use super::AppState;

/// The fields of a chat request the mock reads; others are ignored, as a
/// cloud ignores fields it does not act on.
#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    messages: Vec<ChatMessage<'a>>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

/// Message content: a string, or an array of parts of which text parts count.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl ChatRequest<'_> {
    fn prompt_tokens(&self) -> u32 {
        self.messages
            .iter()
            .filter_map(|m| m.content.as_ref())
            .map(|c| match c {
                Content::Text(text) => count_tokens(text),
                Content::Parts(parts) => parts
                    .iter()
                    .filter_map(|p| p.text.as_deref())
                    .map(count_tokens)
                    .fold(0, u32::saturating_add),
            })
            .fold(0, u32::saturating_add)
    }
}

pub(super) async fn chat_completions(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let start = Instant::now();
    let (guard, seq) = InFlight::new(app.stats.clone());
    match answer(&app, &headers, &body, seq, start, guard).await {
        Ok(response) => response,
        Err(error) => {
            app.stats.status(error.status().as_u16());
            error.into_response()
        }
    }
}

async fn answer(
    app: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    seq: u64,
    start: Instant,
    guard: InFlight,
) -> Result<Response, MockError> {
    let behaviour = scenario(app, headers)?;
    authorize(&behaviour, headers)?;
    let request: ChatRequest<'_> =
        serde_json::from_slice(body).map_err(|e| MockError::BadRequest {
            message: format!("Invalid chat completion request: {e}"),
            param: None,
        })?;
    let logprobs = logprobs(&request)?;
    app.stats.model(&request.model);
    if !behaviour.accepts_model(&request.model) {
        return Err(MockError::ModelNotFound(request.model.into_owned()));
    }
    if behaviour.hang {
        app.shutdown.cancelled().await;
        return Err(MockError::ShuttingDown);
    }
    if let Some(status) = behaviour.fail_status {
        if fails(app.seed, seq, behaviour.fail_probability) {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(MockError::Injected(status, behaviour.retry_after_s));
        }
    }

    let limit = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(u32::MAX)
        .min(MAX_COMPLETION_TOKENS);
    let natural = behaviour.completion_tokens.min(MAX_COMPLETION_TOKENS);
    let (tokens, finish_reason) = if limit < natural {
        (limit, "length")
    } else {
        (natural, "stop")
    };
    let pacing = Pacing {
        ttft: std::time::Duration::from_millis(behaviour.ttft_ms),
        tokens_per_second: behaviour.tokens_per_second,
        tokens,
        drop_after: behaviour.drop_after_chunks,
        stall_after: behaviour.stall_after_chunks,
    };
    let id = format!("chatcmpl-mock-{seq}");
    let answer = Answer {
        id: &id,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: &request.model,
        prompt_tokens: request.prompt_tokens(),
        completion_tokens: tokens,
        finish_reason,
        logprobs,
    };
    let internal = |e: serde_json::Error| MockError::Internal(e.to_string());

    if request.stream.unwrap_or(false) {
        let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
        let sse = body::sse(&answer, include_usage).map_err(internal)?;
        app.stats.status(200);
        let stream = paced(sse, pacing, start, app.shutdown.clone(), guard);
        let mut response = Response::new(Body::from_stream(stream));
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(response);
    }

    let json = body::completion(&answer).map_err(internal)?;
    let ready = start + pacing.done_due();
    // Only sleep for a future deadline: tokio's timer rounds up to whole
    // milliseconds, which would swamp the sub-millisecond figures measured.
    if ready > Instant::now() {
        tokio::select! {
            () = tokio::time::sleep_until(ready) => {}
            () = app.shutdown.cancelled() => return Err(MockError::ShuttingDown),
        }
    }
    app.stats.status(200);
    if behaviour.drop_after_chunks.is_some() || behaviour.stall_after_chunks.is_some() {
        return Ok(cut_body(
            &Bytes::from(json),
            behaviour.stall_after_chunks.is_some(),
            app.shutdown.clone(),
            guard,
        ));
    }
    drop(guard);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response())
}

/// A non-streaming answer broken off midway: the headers promise the whole
/// body, the first half is sent, then the connection is aborted (`drop`) or
/// goes silent until the mock shuts down (`stall`).
fn cut_body(
    json: &Bytes,
    stall: bool,
    shutdown: tokio_util::sync::CancellationToken,
    guard: InFlight,
) -> Response {
    let length = json.len();
    let half = json.slice(..length / 2);
    let tail = futures::stream::once(async move {
        if stall {
            shutdown.cancelled().await;
        } else {
            // Let the server flush the first half before the abort.
            tokio::task::yield_now().await;
        }
        drop(guard);
        Err::<Bytes, _>(std::io::Error::other("body cut by the mock"))
    });
    let body = futures::stream::once(async move { Ok(half) }).chain(tail);
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// `None` unless `logprobs: true`; then how many `top_logprobs` (0 to 20).
/// `top_logprobs` alone is refused, as `OpenAI` does.
fn logprobs(request: &ChatRequest<'_>) -> Result<Option<u32>, MockError> {
    let asked = request.logprobs.unwrap_or(false);
    match request.top_logprobs {
        Some(n) if n > 20 || !asked => Err(MockError::BadRequest {
            message: format!(
                "Invalid value for 'top_logprobs': {n}; it must be between 0 and 20 and needs 'logprobs' set to true."
            ),
            param: Some("top_logprobs"),
        }),
        n => Ok(asked.then(|| n.unwrap_or(0))),
    }
}

/// The instance's behaviour, or a copy with the request's scenario applied.
fn scenario<'a>(app: &'a AppState, headers: &HeaderMap) -> Result<Cow<'a, Behaviour>, MockError> {
    let Some(value) = headers.get(SCENARIO_HEADER) else {
        return Ok(Cow::Borrowed(&app.behaviour));
    };
    let bad = |message: String| MockError::BadRequest {
        message,
        param: Some(SCENARIO_HEADER),
    };
    let text = value.to_str().map_err(|e| bad(e.to_string()))?;
    app.behaviour
        .with_overrides(text)
        .map(Cow::Owned)
        .map_err(|e| bad(e.to_string()))
}

/// Checks the bearer key when the behaviour requires one.
pub(super) fn authorize(behaviour: &Behaviour, headers: &HeaderMap) -> Result<(), MockError> {
    let Some(expected) = behaviour.api_key.as_deref() else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(expected) {
        Ok(())
    } else {
        Err(MockError::InvalidApiKey)
    }
}

/// Whether request `seq` draws an injected failure. Each request gets its own
/// generator seeded from the instance seed and its sequence number, so draws
/// need no shared lock and a run with the same seed fails the same requests.
fn fails(seed: u64, seq: u64, probability: f64) -> bool {
    if probability >= 1.0 {
        return true;
    }
    if probability <= 0.0 {
        return false;
    }
    let mut rng =
        rand::rngs::SmallRng::seed_from_u64(seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.random_bool(probability)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failure_draws_are_seeded_and_near_their_probability() {
        let draws = |seed| (0..10_000).filter(|&i| fails(seed, i, 0.3)).count();
        assert_eq!(draws(1), draws(1));
        let n = draws(1);
        assert!(
            (2_700..3_300).contains(&n),
            "{n} failures of 10000 at p=0.3"
        );
        assert!(fails(0, 0, 1.0));
        assert!(!fails(0, 0, 0.0));
    }

    #[test]
    fn prompt_tokens_count_text_and_parts() {
        let request: ChatRequest<'_> = serde_json::from_str(
            r#"{"model":"m","messages":[
                {"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hello there"},{"type":"image_url","image_url":{"url":"x"}}]},
                {"role":"assistant","content":null}
            ]}"#,
        )
        .unwrap();
        // "be brief" = 1 + 2, "hello there" = 2 + 2; the image part and null content count nothing.
        assert_eq!(request.prompt_tokens(), 7);
    }
}
