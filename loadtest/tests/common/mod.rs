//! Shared harness: a mock on a loopback port and helpers to talk to it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use eventsource_stream::Eventsource;
use futures::StreamExt;
use loadtest::mock_cloud::{Behaviour, MockCloud, MockConfig};
use serde_json::{json, Value};

/// Starts a mock on 127.0.0.1:0 with `behaviour`.
pub async fn mock(behaviour: Behaviour) -> MockCloud {
    MockCloud::start(MockConfig {
        behaviour,
        ..MockConfig::default()
    })
    .await
    .expect("mock starts")
}

/// Starts a mock with the default behaviour.
pub async fn default_mock() -> MockCloud {
    mock(Behaviour::default()).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub fn chat_url(mock: &MockCloud) -> String {
    format!("{}/chat/completions", mock.base_url())
}

/// A chat body for `model`, with `extra` fields merged in.
pub fn chat_body(model: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
    });
    let (Some(fields), Value::Object(extra)) = (body.as_object_mut(), extra) else {
        panic!("extra fields must be a JSON object");
    };
    fields.extend(extra);
    body
}

/// Posts `body` to the mock's chat endpoint with an optional scenario header.
pub async fn post_chat(
    mock: &MockCloud,
    body: &Value,
    scenario: Option<&str>,
) -> reqwest::Response {
    let mut request = client().post(chat_url(mock)).json(body);
    if let Some(scenario) = scenario {
        request = request.header("x-mock-scenario", scenario);
    }
    request.send().await.expect("request is sent")
}

/// The SSE events of a response, and whether the stream ended cleanly.
pub struct Sse {
    pub data: Vec<String>,
    pub broken: bool,
}

pub async fn read_sse(response: reqwest::Response) -> Sse {
    let mut events = response.bytes_stream().eventsource();
    let mut data = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => data.push(event.data),
            Err(_) => return Sse { data, broken: true },
        }
    }
    Sse {
        data,
        broken: false,
    }
}

/// Asserts `body` is an `OpenAI` error of type `kind` with `code` (`None` for null).
pub fn assert_openai_error(body: &Value, kind: &str, code: Option<&str>) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], kind, "{body}");
    assert_eq!(error["code"].as_str(), code, "{body}");
    assert!(error.get("param").is_some(), "{body}");
}
