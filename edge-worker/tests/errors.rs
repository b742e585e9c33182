//! Every bad input gets its documented status and OpenAI-shaped error code;
//! a bad model file stops start-up with one line and a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::Write;
use std::process::Command;

use common::{greedy, Worker, MODEL};
use serde_json::{json, Value};

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "wanted {status} {code}");
    let body: Value = resp.json().await.unwrap();
    let err = &body["error"];
    assert_eq!(err["code"], code, "{body}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["type"].is_string(), "{body}");
    assert!(err.as_object().unwrap().contains_key("param"), "{body}");
    body
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let w = Worker::start(&["--max-body-bytes", "65536"]).await;
    let post = |body: String| {
        w.client
            .post(w.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    expect_error(post("{not json".into()).await.unwrap(), 400, "invalid_json").await;
    expect_error(
        post("[1,2]".into()).await.unwrap(),
        400,
        "invalid_request_body",
    )
    .await;
    expect_error(
        post(json!({"messages": []}).to_string()).await.unwrap(),
        400,
        "invalid_request_body",
    )
    .await;
    let b = expect_error(
        post(json!({"model": MODEL}).to_string()).await.unwrap(),
        400,
        "invalid_messages",
    )
    .await;
    assert_eq!(b["error"]["param"], "messages");
    expect_error(
        post(json!({"model": MODEL, "messages": []}).to_string())
            .await
            .unwrap(),
        400,
        "invalid_messages",
    )
    .await;
    let b = expect_error(
        w.chat(&json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}))
            .await,
        404,
        "model_not_found",
    )
    .await;
    assert_eq!(b["error"]["param"], "model");
    let b = expect_error(
        w.chat(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]})).await,
        400,
        "unsupported_role",
    )
    .await;
    assert_eq!(b["error"]["param"], "messages[1].role");
    parameter_errors(&w).await;
    transport_errors(&w).await;

    // After all that the worker still serves, with nothing left running.
    assert_eq!(w.chat(&greedy("hi", 2)).await.status(), 200);
    let load = w.load().await;
    assert_eq!(load["active_sequences"], 0);
    assert_eq!(load["waiting_sequences"], 0);
}

async fn parameter_errors(w: &Worker) {
    let b = expect_error(w.chat(&greedy("hi", 0)).await, 400, "invalid_max_tokens").await;
    assert_eq!(b["error"]["param"], "max_tokens");
    expect_error(
        w.chat(&greedy("hi", 9000)).await,
        400,
        "context_length_exceeded",
    )
    .await;
    let mut two = greedy("hi", 4);
    two["n"] = json!(2);
    expect_error(w.chat(&two).await, 400, "unsupported_parameter").await;
    let mut hot = greedy("hi", 4);
    hot["temperature"] = json!(5);
    expect_error(w.chat(&hot).await, 400, "invalid_value").await;
    let image = json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
    expect_error(w.chat(&image).await, 400, "unsupported_content").await;

    // A prompt longer than the context (8192 tokens), small enough for the body limit.
    let long = "word ".repeat(9000);
    expect_error(
        w.chat(&greedy(&long, 4)).await,
        400,
        "context_length_exceeded",
    )
    .await;
}

async fn transport_errors(w: &Worker) {
    // Over the body limit.
    let huge = "x".repeat(70_000);
    expect_error(w.chat(&greedy(&huge, 4)).await, 413, "request_too_large").await;

    // Wrong content type, unknown route, wrong method.
    let r = w
        .client
        .post(w.url("/v1/chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_error(r, 415, "unsupported_media_type").await;
    let r = w.client.get(w.url("/v1/nope")).send().await.unwrap();
    expect_error(r, 404, "not_found").await;
    let r = w
        .client
        .get(w.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    expect_error(r, 405, "method_not_allowed").await;

    // After all that the worker still serves.
    assert_eq!(w.chat(&greedy("hi", 2)).await.status(), 200);
    let load = w.load().await;
    assert_eq!(
        (
            load["active_sequences"].as_u64(),
            load["waiting_sequences"].as_u64()
        ),
        (Some(0), Some(0))
    );
}

fn start_with_model(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edge-worker"))
        .arg("--model-path")
        .arg(path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap()
}

fn assert_one_line_failure(out: &std::process::Output, needle: &str) {
    assert!(!out.status.success(), "worker should fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(lines[0].contains(needle), "{stderr}");
}

#[test]
fn missing_truncated_or_foreign_model_files_fail_fast() {
    let dir = tempfile::tempdir().unwrap();

    let out = start_with_model(&dir.path().join("absent.gguf"));
    assert_one_line_failure(&out, "does not exist");

    let foreign = dir.path().join("foreign.gguf");
    std::fs::write(&foreign, b"PK\x03\x04 a zip, not a model").unwrap();
    assert_one_line_failure(&start_with_model(&foreign), "not a GGUF file");

    // The real model cut to half its size.
    let real = std::fs::read(common::model_path()).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::File::create(&truncated)
        .unwrap()
        .write_all(&real[..real.len() / 2])
        .unwrap();
    assert_one_line_failure(&start_with_model(&truncated), "truncated");

    // The real model with its first metadata key claiming 2^64-1 bytes: a
    // trusting reader would try to allocate that much.
    let mut lying = real.clone();
    lying[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let path = dir.path().join("lying.gguf");
    std::fs::write(&path, &lying).unwrap();
    assert_one_line_failure(
        &start_with_model(&path),
        "a metadata key at byte 24 claims 18446744073709551615 bytes",
    );
}
