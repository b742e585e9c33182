//! One request and its outcome. The body is a shared `Bytes`, so sending it
//! copies nothing; the response is always read to its end, both to measure
//! the whole answer and to hand the connection back to the keep-alive pool.

use std::time::{Duration, Instant};

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::HeaderMap;

use super::report::{Outcome, Route};

/// What every request of a run sends.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    /// The JSON body.
    pub body: Bytes,
    /// Headers, content type and authorization included.
    pub headers: HeaderMap,
    /// Whether the body asks for an SSE stream (decides how the answer is read).
    pub stream: bool,
}

/// Sends one request that was due at `scheduled`; returns how late it left
/// and its outcome. All times are measured from `scheduled`, so a slow
/// server that delays later sends is charged for that delay.
pub(crate) async fn send(
    client: &reqwest::Client,
    url: &reqwest::Url,
    spec: &RequestSpec,
    scheduled: Instant,
) -> (Duration, Outcome) {
    let lag = scheduled.elapsed();
    let response = client
        .post(url.clone())
        .headers(spec.headers.clone())
        .body(spec.body.clone())
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => return (lag, Outcome::Failed(transport_kind(&e))),
    };
    let status = response.status();
    if !status.is_success() {
        // Read the error body so the connection can be reused.
        let _ = response.bytes().await;
        return (lag, Outcome::Failed(status.as_u16().to_string()));
    }
    let route = route_of(response.headers());
    let outcome = if spec.stream {
        read_stream(response, scheduled, route).await
    } else {
        match response.bytes().await {
            Ok(_) => Outcome::Ok {
                latency: scheduled.elapsed(),
                ttft: None,
                route,
            },
            Err(e) => Outcome::Failed(body_kind(&e)),
        }
    };
    (lag, outcome)
}

/// Reads an SSE answer to its end. A stream that ends without `[DONE]`, or
/// breaks, counts as `incomplete_stream`: that is what a client sees when an
/// upstream dies mid-answer.
async fn read_stream(response: reqwest::Response, scheduled: Instant, route: Route) -> Outcome {
    let mut events = response.bytes_stream().eventsource();
    let mut ttft = None;
    let mut done = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                ttft.get_or_insert_with(|| scheduled.elapsed());
                if event.data == "[DONE]" {
                    done = true;
                }
            }
            Err(eventsource_stream::EventStreamError::Transport(e)) if e.is_timeout() => {
                return Outcome::Failed("timeout".to_owned());
            }
            Err(_) => return Outcome::Failed("incomplete_stream".to_owned()),
        }
    }
    if !done {
        return Outcome::Failed("incomplete_stream".to_owned());
    }
    Outcome::Ok {
        latency: scheduled.elapsed(),
        ttft,
        route,
    }
}

fn route_of(headers: &HeaderMap) -> Route {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(Box::from)
    };
    Route {
        backend: get("x-gateway-backend"),
        ledger_id: get("x-gateway-ledger-id"),
    }
}

fn transport_kind(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    kind.to_owned()
}

fn body_kind(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() { "timeout" } else { "body" };
    kind.to_owned()
}
