//! A scripted OpenAI-compatible upstream on a loopback port, standing in
//! for a cloud or an on-premises server in tests of the proxy's own rules
//! (failover, relay framing, error handling). It records every request it
//! receives and answers the way its current [`Mode`] says. It also serves
//! a load report, so it can stand in as an edge-kind backend.

#![allow(dead_code, clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gateway::routing::{Backend, BackendKind, Capabilities, ModelMapping, Zone};
use serde_json::{json, Value};

/// How the stand-in answers a chat request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Answer,
    /// The backend's URL points at a closed port (see [`closed_port`]);
    /// the stand-in itself is never reached.
    Refused,
    /// This status with this body.
    Status(u16, String),
    /// Nothing, for much longer than any test's timeout.
    Hang,
    /// Streams: an error event before any token. Non-streaming: a 200
    /// whose body is not JSON.
    ErrorFirst,
    /// One token, then the connection dies.
    DieAfterFirst,
    /// One token, then nothing more (the connection stays open).
    StallAfterFirst,
    /// Answers normally after this long.
    Slow(Duration),
    /// Streams: one event with several `data:` lines, then `[DONE]`.
    MultiLineEvent,
    /// Streams: one token, then this error body as an event. Otherwise
    /// answers.
    ErrorAfterFirst(String),
    /// Streams: a token at every tick, without end.
    Trickle(Duration),
    /// Streams: one token, then an event of this many bytes.
    HugeEvent(usize),
}

#[derive(Clone)]
pub struct StandIn {
    pub url: String,
    mode: Arc<Mutex<Mode>>,
    received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    /// Context length in the load report.
    context: Arc<Mutex<u32>>,
}

impl StandIn {
    pub async fn start() -> StandIn {
        let up = StandIn {
            url: String::new(),
            mode: Arc::new(Mutex::new(Mode::Answer)),
            received: Arc::new(Mutex::new(Vec::new())),
            context: Arc::new(Mutex::new(8192)),
        };
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/worker/load", get(load))
            .with_state(up.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        StandIn { url, ..up }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn set_context(&self, tokens: u32) {
        *self.context.lock().unwrap() = tokens;
    }

    /// The URL to register: the stand-in's, or a closed port for
    /// [`Mode::Refused`].
    pub fn url_for(&self, mode: &Mode) -> String {
        if *mode == Mode::Refused {
            closed_port()
        } else {
            self.url.clone()
        }
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Bodies received so far, as JSON.
    pub fn bodies(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect()
    }

    /// Headers of the requests received so far.
    pub fn headers(&self) -> Vec<HeaderMap> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(h, _)| h.clone())
            .collect()
    }
}

/// A backend serving public model `m` at `url`: edge kind on-prem, cloud
/// kind in the cloud, at `price` USD per 1000 tokens each way, able to
/// honour tools and JSON schemas.
pub fn backend(name: &str, url: &str, zone: Zone, price: f64) -> Backend {
    Backend {
        id: String::new(),
        name: name.to_owned(),
        kind: match zone {
            Zone::OnPrem => BackendKind::Edge,
            Zone::Cloud => BackendKind::Cloud,
        },
        base_url: url.to_owned(),
        zone,
        api_key_env: None,
        models: vec![ModelMapping {
            public: "m".into(),
            upstream: "m".into(),
        }],
        price_in_per_1k: price,
        price_out_per_1k: price,
        joules_per_prompt_token: 0.01,
        joules_per_output_token: 0.1,
        rtt_ms: 1.0,
        prefill_tps: 1000.0,
        decode_tps: 50.0,
        max_concurrency: 0,
        context_length: 8192,
        enabled: true,
        capabilities: Capabilities {
            tools: true,
            json_schema: true,
        },
    }
}

/// A loopback URL on which nothing listens.
pub fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

fn event(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn chunk(content: &str) -> String {
    event(
        &json!({"id":"c","object":"chat.completion.chunk","created":0,"model":"m",
        "choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]}),
    )
}

fn role() -> String {
    event(
        &json!({"id":"c","object":"chat.completion.chunk","created":0,"model":"m",
        "choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}),
    )
}

fn usage() -> String {
    event(
        &json!({"id":"c","object":"chat.completion.chunk","created":0,"model":"m",
        "choices":[], "usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}),
    )
}

fn sse<S>(parts: S) -> Response
where
    S: futures::Stream<Item = Result<String, std::io::Error>> + Send + 'static,
{
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(parts),
    )
        .into_response()
}

fn answer() -> Response {
    axum::Json(json!({
        "id":"c","object":"chat.completion","created":0,"model":"m",
        "choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],
        "usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}
    }))
    .into_response()
}

fn stream_answer() -> Response {
    sse(futures::stream::iter(vec![
        Ok(role()),
        Ok(chunk("ok")),
        Ok(usage()),
        Ok("data: [DONE]\n\n".to_owned()),
    ]))
}

async fn chat(State(up): State<StandIn>, headers: HeaderMap, body: Bytes) -> Response {
    up.received.lock().unwrap().push((headers, body.clone()));
    let mode = up.mode.lock().unwrap().clone();
    let stream = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["stream"].as_bool())
        .unwrap_or(false);
    let died = || std::io::Error::other("died");
    match (mode, stream) {
        (Mode::Status(status, body), _) => (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response(),
        (Mode::Hang, _) => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            ().into_response()
        }
        (Mode::Slow(d), s) => {
            tokio::time::sleep(d).await;
            if s {
                stream_answer()
            } else {
                answer()
            }
        }
        (Mode::Answer, true) => stream_answer(),
        (Mode::Answer | Mode::ErrorAfterFirst(_), false) => answer(),
        (Mode::ErrorFirst, true) => sse(futures::stream::iter(vec![
            Ok(role()),
            Ok(event(
                &json!({"error":{"message":"engine failed","type":"server_error",
                "param":null,"code":"internal_error"}}),
            )),
        ])),
        (Mode::ErrorFirst, false) => "<html>proxy error</html>".into_response(),
        (Mode::DieAfterFirst, true) => sse(futures::stream::iter(vec![
            Ok(role()),
            Ok(chunk("ok")),
            Err(died()),
        ])),
        (Mode::DieAfterFirst, false) => (
            [("content-type", "application/json")],
            Body::from_stream(futures::stream::iter(vec![
                Ok::<_, std::io::Error>("{\"id\":\"c\",\"choi".to_owned()),
                Err(died()),
            ])),
        )
            .into_response(),
        (Mode::StallAfterFirst, _) => {
            let first = futures::stream::iter(vec![Ok(role()), Ok(chunk("ok"))]);
            sse(futures::StreamExt::chain(first, futures::stream::pending()))
        }
        (Mode::MultiLineEvent, _) => sse(futures::stream::iter(vec![
            Ok(chunk("ok")),
            Ok(
                "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\n\
                data: \"choices\":[{\"index\":0,\"delta\":{\"content\":\"two\"}}]}\n\n"
                    .to_owned(),
            ),
            Ok(usage()),
            Ok("data: [DONE]\n\n".to_owned()),
        ])),
        (Mode::ErrorAfterFirst(body), true) => sse(futures::stream::iter(vec![
            Ok(role()),
            Ok(chunk("ok")),
            Ok(format!("data: {body}\n\n")),
        ])),
        (Mode::Trickle(tick), _) => sse(futures::stream::unfold(0u64, move |n| async move {
            tokio::time::sleep(tick).await;
            let event = if n == 0 { role() } else { chunk("x") };
            Some((Ok(event), n + 1))
        })),
        (Mode::HugeEvent(n), _) => sse(futures::stream::iter(vec![
            Ok(chunk("ok")),
            Ok(format!("data: {}\n\n", "x".repeat(n))),
            Ok("data: [DONE]\n\n".to_owned()),
        ])),
        (Mode::Refused, _) => unreachable!("a refused backend is never reached"),
    }
}

/// A ready, idle worker able to honour tools and JSON schemas.
async fn load(State(up): State<StandIn>) -> axum::Json<Value> {
    let context = *up.context.lock().unwrap();
    axum::Json(json!({
        "model": "m", "context_length": context, "active_sequences": 0, "waiting_sequences": 0,
        "max_running_sequences": 64, "max_waiting_sequences": 64,
        "prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": 50.0,
        "joules_per_prompt_token": 0.01, "joules_per_output_token": 0.1,
        "capabilities": {"tools": true, "json_schema": true},
        "ready": true, "draining": false
    }))
}
