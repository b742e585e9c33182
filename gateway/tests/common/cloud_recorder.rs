//! A recording front for a cloud backend: a loopback server that keeps the
//! `x-request-id` and the body of every request it receives, then passes
//! the request on to the real (mock) cloud and streams its answer back
//! unchanged. Register its URL as the cloud backend's to learn exactly
//! what left the premises.

#![allow(dead_code, clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One request as the cloud received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub request_id: Option<String>,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct CloudRecorder {
    /// `http://127.0.0.1:PORT`, the address to register as the cloud's.
    pub url: String,
    target: String,
    client: reqwest::Client,
    received: Arc<Mutex<Vec<Received>>>,
}

impl CloudRecorder {
    /// Records and forwards to `target` (`http://host:port`).
    pub async fn start(target: &str) -> CloudRecorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let recorder = CloudRecorder {
            url: format!("http://{}", listener.local_addr().unwrap()),
            target: target.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(recorder.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        recorder
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn forward(
    State(rec): State<CloudRecorder>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    rec.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        request_id,
        body: body.clone(),
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = rec
        .client
        .request(method, format!("{}{path}", rec.target))
        .body(body);
    for name in ["content-type", "authorization", "x-request-id"] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v);
        }
    }
    let answer = match req.send().await {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut response = Response::builder().status(answer.status());
    if let Some(ct) = answer.headers().get("content-type") {
        response = response.header("content-type", ct);
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .unwrap()
}
