//! Concurrency, the bounded queue, cancellation and draining, against the
//! real model.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::Duration;

use common::{greedy, wait_load, Worker};
use futures::StreamExt;
use serde_json::{json, Value};

/// Also the batched path of the compute pool (`pool`): with two threads the
/// engine thread computes as a rayon worker once warmed up, and sampling
/// several sequences at once (which mistralrs hands to rayon from that
/// thread) must still complete rather than wait on the engine thread.
#[tokio::test]
async fn eight_concurrent_requests_all_complete() {
    let w = Worker::start(&["--max-running", "4", "--max-waiting", "8", "--threads", "2"]).await;
    assert_eq!(w.load().await["engine_in_compute_pool"], true);
    let requests = (0..8).map(|i| {
        let body = greedy(&format!("Write a word about the number {i}."), 12);
        let w = &w;
        async move { w.chat(&body).await }
    });
    let responses = tokio::time::timeout(
        Duration::from_secs(120),
        futures::future::join_all(requests),
    )
    .await
    .expect("concurrent requests stalled");
    for r in responses {
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
    let load = w.load().await;
    assert_eq!(load["active_sequences"], 0);
    assert_eq!(load["waiting_sequences"], 0);
}

/// Requests that run in one batch answer exactly as they do alone, token
/// for token and with the same log-probabilities. The scheduler batches
/// sequences of equal length, so prompts of different lengths run apart
/// at first and together once the shorter ones caught up; greedy answers
/// show any mixing between them.
///
/// This also covers a sequence set aside in mid-generation: when the
/// running set emptied, the scheduler used to restart every such sequence
/// from its prompt, and the context prefilled again gave log-probabilities
/// up to 0.1 nats off, in about a quarter of the runs of this test, enough
/// to turn a near-tie the other way (`scripts/batch-invariance.py`).
#[tokio::test]
async fn batched_requests_answer_as_they_do_alone() {
    let w = Worker::start(&[]).await;
    let prompts = [
        "Invent a name for a cat and say why.",
        "Name a colour.",
        "What is two plus two?",
        "Say hello in French.",
    ];
    let bodies = prompts.map(|p| {
        let mut body = greedy(p, 24);
        body["logprobs"] = json!(true);
        body
    });
    let mut alone = Vec::new();
    for body in &bodies {
        alone.push(tokens(&w, body).await);
    }
    let together = futures::future::join_all(bodies.iter().map(|b| tokens(&w, b))).await;
    for ((prompt, alone), together) in prompts.iter().zip(&alone).zip(&together) {
        assert_eq!(together, alone, "{prompt}");
    }
}

/// A greedy answer's tokens, each with its log-probability.
async fn tokens(w: &Worker, body: &Value) -> Vec<(String, f64)> {
    let response = w.chat(body).await;
    assert_eq!(response.status(), 200);
    let v: Value = response.json().await.unwrap();
    v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no logprobs: {v}"))
        .iter()
        .map(|entry| {
            (
                entry["token"].as_str().unwrap().to_owned(),
                entry["logprob"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn beyond_the_queue_bound_requests_get_429_and_nothing_else() {
    let w = Worker::start(&["--max-running", "1", "--max-waiting", "1"]).await;
    let requests = (0..6).map(|_| {
        let body = greedy("Tell me a long story about a lighthouse.", 48);
        let w = &w;
        async move { w.chat(&body).await }
    });
    let responses = futures::future::join_all(requests).await;
    let mut ok = 0;
    let mut busy = 0;
    for r in responses {
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(r.headers()["retry-after"], "1");
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], "worker_busy");
                assert_eq!(v["error"]["type"], "rate_limit_error");
                busy += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // One runs and one waits; the other four are refused at once.
    assert_eq!((ok, busy), (2, 4));
}

/// Every finished sequence is offered to the prefix cache; it keeps at most
/// `--prefix-cache-sequences` of them (16 by default), each only as large as
/// its tokens. A stream of distinct prompts leaves memory flat: keeping all
/// of them, at the 512-token blocks they were allocated in, grows by about
/// 23 MiB a request for this model.
#[tokio::test]
async fn distinct_prompts_leave_memory_flat() {
    let w = Worker::start(&[]).await;
    let ask = |i: usize| greedy(&format!("Request {i}: name a colour."), 4);
    for i in 0..20 {
        assert_eq!(w.chat(&ask(i)).await.status(), 200);
    }
    let before = w.rss_mib();
    for i in 20..60 {
        assert_eq!(w.chat(&ask(i)).await.status(), 200);
    }
    let grown = w.rss_mib() - before;
    assert!(
        grown < 100.0,
        "resident memory grew by {grown:.0} MiB over 40 distinct prompts"
    );
}

/// A client that goes away while its prompt waits to be tokenized (the
/// engine thread answers tokenizations between decode steps) must cost
/// nothing but its own request: the engine once panicked on the closed
/// channel and took every running generation down with it.
#[tokio::test]
async fn clients_gone_during_tokenization_leave_running_generations_alone() {
    let w = Worker::start(&[]).await;
    let mut body = greedy("Write a very long essay about the sea.", 200);
    body["stream"] = json!(true);
    let resp = w.chat(&body).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = Vec::new();
    while !text.windows(5).any(|w| w == b"data:") {
        text.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    // While it decodes, requests whose clients give up after 1 to 20 ms:
    // most are waiting for their tokenization then.
    for i in 0..40u64 {
        let sent = w
            .client
            .post(w.url("/v1/chat/completions"))
            .timeout(Duration::from_millis(1 + i % 20))
            .json(&greedy(&format!("Count to {i}."), 4))
            .send()
            .await;
        if let Ok(r) = sent {
            let _ = r.bytes().await;
        }
    }
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.trim_end().ends_with("data: [DONE]") && !text.contains("\"error\""),
        "the running generation did not finish: {}",
        &text[text.len().saturating_sub(300)..]
    );
    let metrics = w.metrics().await;
    assert!(
        !metrics.contains("edge_generations_total{outcome=\"error\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_dropped_stream_frees_its_slot_promptly() {
    let w = Worker::start(&[]).await;
    let mut body = greedy("Write a very long essay about the sea.", 2000);
    body["stream"] = json!(true);
    let resp = w.chat(&body).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut chunks = 0;
    while chunks < 3 {
        let bytes = stream.next().await.unwrap().unwrap();
        chunks += bytes.windows(5).filter(|w| w == b"data:").count();
    }
    assert_eq!(w.load().await["active_sequences"], 1);
    drop(stream);
    let load = wait_load(&w, Duration::from_secs(2), |l| l["active_sequences"] == 0).await;
    assert_eq!(
        load["active_sequences"], 0,
        "slot not freed within 2 s: {load}"
    );

    // The engine really stopped, not only the slot: a generating worker
    // burns about a core-second per second; an idle one next to nothing.
    // (A second's window, starting half a second after the slot was freed.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = w.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let burnt = w.cpu_seconds() - before;
    assert!(
        burnt < 0.25,
        "the worker used {burnt:.2} CPU-seconds in the second after the drop"
    );

    // The next request gets the model at once, and the cancelled
    // generation is counted as such.
    let r = w.chat(&greedy("Hi", 4)).await;
    assert_eq!(r.status(), 200);
    let metrics = w
        .client
        .get(w.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("edge_generations_total{outcome=\"cancelled\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let w = Worker::start(&["--drain-timeout-s", "60"]).await;
    let mut body = greedy("Describe a mountain.", 40);
    body["stream"] = json!(true);
    let resp = w.chat(&body).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();

    let pid = w.pid();
    let waiter = tokio::task::spawn_blocking(move || w.terminate());
    // The in-flight stream still runs to its end.
    let mut tail = Vec::new();
    while let Some(chunk) = stream.next().await {
        tail.extend_from_slice(&chunk.unwrap());
    }
    let tail = String::from_utf8(tail).unwrap();
    assert!(
        tail.trim_end().ends_with("data: [DONE]"),
        "stream cut short: {tail}"
    );
    let status = waiter.await.unwrap();
    assert!(status.success(), "worker {pid} exited with {status}");
}
