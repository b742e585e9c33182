//! The mock's failure modes, as a client observes them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{assert_openai_error, chat_body, chat_url, default_mock, mock, post_chat, read_sse};
use loadtest::mock_cloud::{Behaviour, MockCloud, MockConfig};
use serde_json::{json, Value};

#[tokio::test]
async fn injected_statuses_carry_openai_errors() {
    let mock = default_mock().await;
    for (status, kind, code) in [
        (500, "server_error", None),
        (503, "server_error", Some("service_unavailable")),
        (429, "requests", Some("rate_limit_exceeded")),
    ] {
        let scenario = format!(r#"{{"fail_status":{status}}}"#);
        let response = post_chat(&mock, &chat_body("m", json!({})), Some(&scenario)).await;
        assert_eq!(response.status().as_u16(), status);
        if status == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
        assert_openai_error(&response.json().await.unwrap(), kind, code);
    }
    // Streaming requests fail before any event, with the same error body.
    let scenario = r#"{"fail_status":503}"#;
    let response = post_chat(
        &mock,
        &chat_body("m", json!({"stream": true})),
        Some(scenario),
    )
    .await;
    assert_eq!(response.status(), 503);
    assert_eq!(mock.stats().by_status.get(&503), Some(&2));
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let mock = mock(Behaviour {
        models: vec!["edge-small".into()],
        ..Behaviour::default()
    })
    .await;
    let response = post_chat(&mock, &chat_body("gpt-4o", json!({})), None).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_openai_error(&body, "invalid_request_error", Some("model_not_found"));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gpt-4o"));
    mock.shutdown().await.unwrap();
}

/// Which of `n` requests fail on a mock with seed `seed` at probability 0.5.
async fn failure_pattern(seed: u64, n: usize) -> Vec<bool> {
    let mock = MockCloud::start(MockConfig {
        seed,
        behaviour: Behaviour {
            fail_status: Some(500),
            fail_probability: 0.5,
            ..Behaviour::default()
        },
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut pattern = Vec::with_capacity(n);
    for _ in 0..n {
        let response = post_chat(&mock, &chat_body("m", json!({})), None).await;
        pattern.push(response.status() == 500);
    }
    mock.shutdown().await.unwrap();
    pattern
}

#[tokio::test]
async fn random_failures_are_seeded() {
    let first = failure_pattern(7, 40).await;
    assert_eq!(
        first,
        failure_pattern(7, 40).await,
        "same seed, same failures"
    );
    let failed = first.iter().filter(|&&f| f).count();
    assert!((8..=32).contains(&failed), "{failed} of 40 failed at p=0.5");
    assert_ne!(
        first,
        failure_pattern(8, 40).await,
        "another seed, other failures"
    );
}

#[tokio::test]
async fn dropped_stream_is_incomplete_for_the_client() {
    let mock = default_mock().await;
    let body = chat_body("m", json!({"stream": true, "max_tokens": 10}));
    let response = post_chat(&mock, &body, Some(r#"{"drop_after_chunks":3}"#)).await;
    assert_eq!(response.status(), 200);
    let sse = read_sse(response).await;
    assert!(sse.broken, "the connection must be cut, not closed cleanly");
    assert_eq!(sse.data.len(), 3);
    assert!(!sse.data.iter().any(|d| d == "[DONE]"));
    let stats = mock.stats();
    assert_eq!(stats.streams_aborted, 1);
    assert_eq!(stats.streams_completed, 0);

    // The same holds with pacing, where events leave one at a time.
    let response = post_chat(
        &mock,
        &body,
        Some(r#"{"drop_after_chunks":2,"tokens_per_second":1000}"#),
    )
    .await;
    let sse = read_sse(response).await;
    assert!(sse.broken);
    assert_eq!(sse.data.len(), 2);
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn stalled_stream_trips_the_client_timeout() {
    let mock = default_mock().await;
    let response = reqwest::Client::builder()
        .read_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(chat_url(&mock))
        .header("x-mock-scenario", r#"{"stall_after_chunks":2}"#)
        .json(&chat_body("m", json!({"stream": true})))
        .send()
        .await
        .unwrap();
    let sse = read_sse(response).await;
    assert!(sse.broken);
    assert_eq!(sse.data.len(), 2);
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn hanging_request_never_answers_until_shutdown() {
    let mock = mock(Behaviour {
        hang: true,
        ..Behaviour::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = client
        .post(chat_url(&mock))
        .json(&chat_body("m", json!({})))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");

    // A hanging request is still in flight; shutdown must end it rather than wait forever.
    let pending = tokio::spawn({
        let client = reqwest::Client::new();
        let url = chat_url(&mock);
        async move {
            client
                .post(url)
                .json(&chat_body("m", json!({})))
                .send()
                .await
        }
    });
    while mock.stats().in_flight == 0 || mock.stats().requests_total < 2 {
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(Duration::from_secs(5), mock.shutdown())
        .await
        .expect("shutdown ends hanging requests")
        .unwrap();
    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
}
