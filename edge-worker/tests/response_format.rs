//! `response_format` is honoured by constrained decoding, streamed or not,
//! and what the worker cannot honour (tools, bad schemas) is refused with a
//! 400 naming the parameter instead of being ignored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::{greedy, sse_chunks, Worker};
use serde_json::{json, Value};

/// One short string: the model can always close the object well within
/// `max_tokens`.
fn city_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": false,
    })
}

fn city_format() -> Value {
    json!({"type": "json_schema",
           "json_schema": {"name": "city", "schema": city_schema(), "strict": true}})
}

fn ask(format: &Value, max_tokens: u32) -> Value {
    let mut body = greedy("What is the capital of France?", max_tokens);
    body["response_format"] = format.clone();
    body
}

/// The answer is one JSON object with exactly a `city` string of at most 20
/// characters.
fn assert_city(text: &str) {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let object = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text:?}"));
    assert_eq!(object.keys().collect::<Vec<_>>(), ["city"], "{text:?}");
    let city = object["city"].as_str().unwrap();
    assert!(city.chars().count() <= 20, "{text:?}");
}

async fn whole(w: &Worker, body: &Value) -> (String, String) {
    let response = w.chat(body).await;
    assert_eq!(response.status(), 200);
    let v: Value = response.json().await.unwrap();
    let choice = &v["choices"][0];
    (
        choice["message"]["content"].as_str().unwrap().to_owned(),
        choice["finish_reason"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn json_schema_answers_match_the_schema_streamed_or_not() {
    let w = Worker::start(&[]).await;

    // Unconstrained, the model answers in prose.
    let (prose, _) = whole(&w, &greedy("What is the capital of France?", 64)).await;
    assert!(serde_json::from_str::<Value>(&prose).is_err(), "{prose:?}");

    let (text, finish) = whole(&w, &ask(&city_format(), 64)).await;
    assert_eq!(finish, "stop", "{text:?}");
    assert_city(&text);

    // Streamed: the same tokens, chunk by chunk, and the same finish.
    let mut body = ask(&city_format(), 64);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks, streamed) = sse_chunks(w.chat(&body).await).await;
    assert_eq!(streamed, text);
    assert_city(&streamed);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(
        chunks.last().unwrap()["usage"]["energy_joules"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // json_object: any JSON object. (Asked about France, this model keeps
    // adding keys past 64 tokens; this prompt it answers briefly.)
    let mut object = greedy("Return {\"ok\": true} as JSON.", 64);
    object["response_format"] = json!({"type": "json_object"});
    let (text, finish) = whole(&w, &object).await;
    assert_eq!(finish, "stop", "{text:?}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(v.is_object(), "{text:?}");

    // `text` is the default, stated.
    let (text, _) = whole(&w, &ask(&json!({"type": "text"}), 64)).await;
    assert_eq!(text, prose);

    // Cut short by max_tokens, the answer says so rather than pretending
    // to be complete.
    let (cut, finish) = whole(&w, &ask(&city_format(), 3)).await;
    assert_eq!(finish, "length", "{cut:?}");
    assert!(serde_json::from_str::<Value>(&cut).is_err(), "{cut:?}");
}

async fn expect_400(w: &Worker, body: &Value, code: &str, param: &str) {
    let response = w.chat(body).await;
    assert_eq!(response.status(), 400, "{body}");
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["param"], param, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
}

#[tokio::test]
async fn what_cannot_be_honoured_is_refused() {
    let w = Worker::start(&[]).await;
    let with = |key: &str, value: Value| {
        let mut body = greedy("What is the capital of France?", 8);
        body[key] = value;
        body
    };
    for format in [
        json!({"type": "yaml"}),
        json!("json"),
        json!({"type": "json_schema"}),
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": 7}}),
        // Schemas llguidance cannot compile.
        json!({"type": "json_schema", "json_schema": {"name": "x",
            "schema": {"type": "frobnicate"}}}),
        json!({"type": "json_schema", "json_schema": {"name": "x",
            "schema": {"$ref": "#/$defs/missing"}}}),
    ] {
        expect_400(
            &w,
            &with("response_format", format),
            "invalid_value",
            "response_format",
        )
        .await;
    }

    let tool = json!([{"type": "function",
        "function": {"name": "weather", "parameters": {"type": "object"}}}]);
    expect_400(&w, &with("tools", tool), "unsupported_parameter", "tools").await;
    expect_400(
        &w,
        &with("tool_choice", json!("required")),
        "unsupported_parameter",
        "tool_choice",
    )
    .await;
    let mut tool_turn = greedy("", 8);
    tool_turn["messages"] = json!([
        {"role": "user", "content": "Weather?"},
        {"role": "tool", "tool_call_id": "1", "content": "sunny"},
    ]);
    expect_400(&w, &tool_turn, "unsupported_role", "messages[1].role").await;

    // Asking for no tool call is no tool calling.
    assert_eq!(
        w.chat(&with("tool_choice", json!("none"))).await.status(),
        200
    );
    let load = w.load().await;
    assert_eq!(
        (
            load["active_sequences"].as_u64(),
            load["waiting_sequences"].as_u64()
        ),
        (Some(0), Some(0))
    );
}
