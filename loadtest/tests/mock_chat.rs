//! The mock's happy paths: response shapes, SSE framing, limits, auth, stats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{
    assert_openai_error, chat_body, chat_url, client, default_mock, mock, post_chat, read_sse,
};
use loadtest::mock_cloud::Behaviour;
use serde_json::{json, Value};

#[tokio::test]
async fn non_streaming_completion_has_openai_shape() {
    let mock = default_mock().await;
    let response = post_chat(&mock, &chat_body("gpt-x", json!({})), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();

    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "gpt-x");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(
        content.split(' ').count(),
        16,
        "default answer is 16 tokens"
    );
    assert_eq!(choice["finish_reason"], "stop");
    // "hello there" is 2 + 2 tokens under the 4-byte rule.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 16, "total_tokens": 20})
    );
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn max_tokens_cuts_the_answer_with_length() {
    let mock = default_mock().await;
    for (extra, tokens, reason) in [
        (json!({"max_tokens": 5}), 5, "length"),
        (json!({"max_completion_tokens": 3}), 3, "length"),
        (json!({"max_tokens": 16}), 16, "stop"),
        (json!({"max_tokens": 100}), 16, "stop"),
    ] {
        let body: Value = post_chat(&mock, &chat_body("m", extra.clone()), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["usage"]["completion_tokens"], tokens, "{extra}");
        assert_eq!(body["choices"][0]["finish_reason"], reason, "{extra}");
    }
    // The natural length is configurable per request too.
    let body: Value = post_chat(
        &mock,
        &chat_body("m", json!({})),
        Some(r#"{"completion_tokens":40}"#),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 40);
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn stream_is_framed_like_openai_with_usage_and_done() {
    let mock = default_mock().await;
    let body = chat_body(
        "m",
        json!({"stream": true, "stream_options": {"include_usage": true}, "max_tokens": 4}),
    );
    let response = post_chat(&mock, &body, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let sse = read_sse(response).await;
    assert!(!sse.broken);
    assert_eq!(sse.data.last().unwrap(), "[DONE]");

    let chunks: Vec<Value> = sse.data[..sse.data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    // Role chunk, four tokens, finish chunk, usage chunk.
    assert_eq!(chunks.len(), 7);
    let id = &chunks[0]["id"];
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(&chunk["id"], id);
        assert_eq!(chunk["model"], "m");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..5]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text.split(' ').count(), 4);
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[5]["usage"], Value::Null);
    let usage = &chunks[6];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(usage["usage"]["total_tokens"], 8);
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_chunk() {
    let mock = default_mock().await;
    let sse = read_sse(
        post_chat(
            &mock,
            &chat_body("m", json!({"stream": true, "max_tokens": 2})),
            None,
        )
        .await,
    )
    .await;
    assert!(!sse.broken);
    // Role chunk, two tokens, finish chunk, [DONE].
    assert_eq!(sse.data.len(), 5);
    for data in &sse.data[..4] {
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert!(chunk.get("usage").is_none(), "{data}");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn pacing_delays_first_token_and_decode() {
    let mock = default_mock().await;
    let body = chat_body("m", json!({"stream": true, "max_tokens": 5}));
    let started = Instant::now();
    let response = post_chat(
        &mock,
        &body,
        Some(r#"{"ttft_ms":60,"tokens_per_second":100}"#),
    )
    .await;
    let sse = read_sse(response).await;
    assert!(!sse.broken);
    // 60 ms to the first token, then four more at 10 ms each.
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let response = post_chat(&mock, &chat_body("m", json!({})), Some(r#"{"ttft_ms":50}"#)).await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(50));
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_or_missing_key_is_401_invalid_api_key() {
    let mock = mock(Behaviour {
        api_key: Some("sk-right".into()),
        ..Behaviour::default()
    })
    .await;
    let body = chat_body("m", json!({}));
    for key in [None, Some("sk-wrong")] {
        let mut request = client().post(chat_url(&mock)).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_openai_error(
            &response.json().await.unwrap(),
            "invalid_request_error",
            Some("invalid_api_key"),
        );
    }
    let ok = client()
        .post(chat_url(&mock))
        .bearer_auth("sk-right")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let models = client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn models_lists_accepted_models() {
    let mock = mock(Behaviour {
        models: vec!["a".into(), "b".into()],
        ..Behaviour::default()
    })
    .await;
    let body: Value = client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(body["data"][0]["object"], "model");
    mock.shutdown().await.unwrap();
}

/// `logprobs: true` gives every token a fixed log-probability, in the
/// completion and in each streamed token's chunk; `top_logprobs` alone is a
/// 400 naming it, as at `OpenAI`.
#[tokio::test]
async fn logprobs_are_fixed_fakes_when_asked_for() {
    let mock = default_mock().await;
    let asked = json!({"max_tokens": 3, "logprobs": true, "top_logprobs": 2});
    let body: Value = post_chat(&mock, &chat_body("m", asked.clone()), None)
        .await
        .json()
        .await
        .unwrap();
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(content.len(), 3);
    let text: String = content
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert_eq!(text, body["choices"][0]["message"]["content"]);
    assert!(content.iter().all(|e| e["logprob"] == -0.1));
    assert!(content
        .iter()
        .all(|e| e["top_logprobs"].as_array().unwrap().len() == 2));

    let mut streamed = asked.clone();
    streamed["stream"] = json!(true);
    let sse = read_sse(post_chat(&mock, &chat_body("m", streamed), None).await).await;
    let entries: Vec<Value> = sse.data[..sse.data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(entries, *content);

    for extra in [
        json!({"top_logprobs": 2}),
        json!({"logprobs": true, "top_logprobs": 21}),
    ] {
        let response = post_chat(&mock, &chat_body("m", extra.clone()), None).await;
        assert_eq!(response.status(), 400, "{extra}");
        let error: Value = response.json().await.unwrap();
        assert_openai_error(&error, "invalid_request_error", None);
        assert_eq!(error["error"]["param"], "top_logprobs");
    }
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_body_and_bad_scenario_are_400() {
    let mock = default_mock().await;
    let response = client()
        .post(chat_url(&mock))
        .header("content-type", "application/json")
        .body(r#"{"messages": "#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_openai_error(
        &response.json().await.unwrap(),
        "invalid_request_error",
        None,
    );

    let response = post_chat(&mock, &chat_body("m", json!({})), Some(r#"{"ttft":1}"#)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "x-mock-scenario");
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn stats_count_requests_by_model_and_status_and_reset() {
    let mock = mock(Behaviour {
        models: vec!["known".into()],
        ..Behaviour::default()
    })
    .await;
    for model in ["known", "known", "unknown"] {
        post_chat(&mock, &chat_body(model, json!({})), None)
            .await
            .bytes()
            .await
            .unwrap();
    }
    let sse =
        read_sse(post_chat(&mock, &chat_body("known", json!({"stream": true})), None).await).await;
    assert!(!sse.broken);
    client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap();

    // The HTTP view and the library view agree.
    let over_http: loadtest::mock_cloud::MockStats = client()
        .get(format!("http://{}/mock/stats", mock.addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stats = mock.stats();
    assert_eq!(over_http, stats);
    assert_eq!(stats.requests_total, 4);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.by_model.get("known"), Some(&3));
    assert_eq!(stats.by_model.get("unknown"), Some(&1));
    assert_eq!(stats.by_status.get(&200), Some(&3));
    assert_eq!(stats.by_status.get(&404), Some(&1));
    assert_eq!(stats.streams_completed, 1);
    assert_eq!(stats.models_requests, 1);

    let reset = client()
        .post(format!("http://{}/mock/reset", mock.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(mock.stats(), loadtest::mock_cloud::MockStats::default());
    mock.shutdown().await.unwrap();
}
