//! The worker's life and its documented statuses around it: health while
//! loading, 503 `model_loading`, 504 `timeout`, 429 after a queue wait, the
//! SIGTERM drain (readiness off, new requests refused, stragglers ended by
//! the drain timeout), and the sampling parameters doing what they say.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::{Duration, Instant};

use common::{greedy, Worker, MODEL};
use futures::StreamExt;
use serde_json::{json, Value};

/// A request the model answers at length (several hundred tokens greedily:
/// it counts), so it is still running when the test acts on it.
fn long(max_tokens: u32) -> Value {
    greedy(
        "Count from 1 to 1000, one number after another, separated by commas.",
        max_tokens,
    )
}

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Starts a streaming request and returns its body stream once the first
/// bytes arrived, i.e. once the sequence is running.
async fn running_stream(
    w: &Worker,
    max_tokens: u32,
) -> impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> {
    let mut body = long(max_tokens);
    body["stream"] = json!(true);
    let resp = w.chat(&body).await;
    assert_eq!(resp.status(), 200);
    let mut stream = Box::pin(resp.bytes_stream());
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    stream
}

async fn drain_text(stream: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>>) -> String {
    let chunks: Vec<_> = stream.collect().await;
    let mut text = Vec::new();
    for c in chunks {
        match c {
            Ok(b) => text.extend_from_slice(&b),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test]
async fn while_loading_health_is_ok_readiness_is_not_and_chat_gets_503() {
    let w = Worker::spawn(&[], &[]).await;
    // The worker listens before the model is loaded (reading and warming
    // up the model takes well over the milliseconds these calls take).
    let chat = w.chat(&greedy("hi", 2)).await;
    let retry_after = chat.headers().get("retry-after").cloned();
    assert_eq!(error_code(chat).await, (503, "model_loading".to_owned()));
    assert!(
        retry_after.is_some(),
        "503 model_loading without Retry-After"
    );
    let health = w.get("/healthz").await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    w.wait_ready().await;
    assert_eq!(w.get("/healthz").await.status(), 200);
    assert_eq!(w.get("/readyz").await.status(), 200);
    assert_eq!(w.chat(&greedy("hi", 2)).await.status(), 200);
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_504_and_stops_generating() {
    let w = Worker::start(&["--request-timeout-s", "1"]).await;
    let started = Instant::now();
    let (status, code) = error_code(w.chat(&long(2000)).await).await;
    assert_eq!((status, code.as_str()), (504, "timeout"));
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The sequence was cancelled, not left running: the worker is idle and
    // the generation was counted as a timeout.
    let load = w.load().await;
    assert_eq!(load["active_sequences"], 0, "{load}");
    let metrics = w.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("edge_generations_total{outcome=\"timeout\"} 1")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_queue_wait_past_its_timeout_gets_429_with_retry_after() {
    let w = Worker::start(&[
        "--max-running",
        "1",
        "--max-waiting",
        "4",
        "--queue-timeout-ms",
        "400",
    ])
    .await;
    let running = running_stream(&w, 1500).await;
    let started = Instant::now();
    let resp = w.chat(&greedy("hi", 2)).await;
    let waited = started.elapsed();
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(error_code(resp).await, (429, "worker_busy".to_owned()));
    // It waited its turn before giving up (not refused at once, which is
    // what a full queue gets).
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    drop(running);
}

#[tokio::test]
async fn sigterm_refuses_new_work_turns_unready_and_ends_stragglers_at_the_drain_timeout() {
    let w = Worker::start(&["--drain-timeout-s", "2"]).await;
    let straggler = running_stream(&w, 3000).await;
    let client = w.client.clone();
    let base = w.base.clone();
    w.send_sigterm();
    // Readiness fails and new requests are refused while the straggler runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&greedy("hi", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(refused).await,
        (503, "worker_draining".to_owned())
    );

    // The straggler is ended by the drain timeout (it wanted 3000 tokens,
    // far more than 2 s of decoding), and the process exits on its own.
    let signalled = Instant::now();
    let tail = drain_text(straggler).await;
    assert!(
        !tail.trim_end().ends_with("data: [DONE]"),
        "the straggler finished instead of being cut: {tail}"
    );
    let status = tokio::task::spawn_blocking(move || w.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn top_p_and_penalties_change_what_is_sampled() {
    let w = Worker::start(&[]).await;
    let prompt = "Write a short poem about the sea.";
    let greedy_text = w.content(&greedy(prompt, 24)).await;
    let sampled = |seed: u64, top_p: Option<f64>| {
        let mut body = json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 1.5,
            "seed": seed,
            "max_tokens": 24,
        });
        if let Some(p) = top_p {
            body["top_p"] = json!(p);
        }
        body
    };
    // A hot temperature spreads the samples: seeds disagree.
    let free: Vec<String> = futures::future::join_all((1..=3).map(|s| {
        let body = sampled(s, None);
        let w = &w;
        async move { w.content(&body).await }
    }))
    .await;
    assert!(
        free.iter().any(|t| *t != free[0]),
        "three seeds at temperature 1.5 gave one answer: {free:?}"
    );
    // A tiny nucleus keeps only the most likely token: every seed answers
    // as greedy decoding does.
    for seed in 1..=3 {
        assert_eq!(
            w.content(&sampled(seed, Some(1e-6))).await,
            greedy_text,
            "seed {seed}"
        );
    }

    // Penalties: greedy decoding of this prompt repeats "apple" some twenty
    // times; either penalty, alone, breaks the repetition.
    let repeat = "Write the word apple twenty times.";
    let apples = |t: &str| t.to_lowercase().matches("apple").count();
    let plain = w.content(&greedy(repeat, 48)).await;
    assert!(apples(&plain) >= 10, "{plain:?}");
    for penalty in ["frequency_penalty", "presence_penalty"] {
        let mut body = greedy(repeat, 48);
        body[penalty] = json!(1.5);
        let penalised = w.content(&body).await;
        assert!(
            apples(&penalised) * 2 < apples(&plain),
            "{penalty} did not reduce repetition: {penalised:?}"
        );
    }
}

#[tokio::test]
async fn top_p_and_stop_out_of_range_are_invalid_values() {
    let w = Worker::start(&[]).await;
    let cases = [
        ("top_p", json!(0)),
        ("top_p", json!(1.5)),
        ("top_p", json!(-0.1)),
        ("stop", json!(["a", "b", "c", "d", "e"])),
        ("stop", json!([""])),
        ("stop", json!("")),
    ];
    for (field, value) in cases {
        let mut body = greedy("hi", 2);
        body[field] = value.clone();
        let resp = w.chat(&body).await;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            (
                status,
                v["error"]["code"].as_str(),
                v["error"]["param"].as_str()
            ),
            (400, Some("invalid_value"), Some(field)),
            "{field} = {value}: {v}"
        );
    }
}
