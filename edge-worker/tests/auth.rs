//! The worker token: `/v1/*` needs it, probes and scrapers do not, and a
//! worker without one will not listen beyond loopback unless told to.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::process::Command;

use common::{greedy, model_path, Worker};
use serde_json::Value;

const TOKEN: &str = "edge-test-token-7f3a";

async fn expect_401(response: reqwest::Response) {
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], "invalid_worker_token", "{body}");
    assert_eq!(error["type"], "authentication_error", "{body}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error.as_object().unwrap().contains_key("param"));
    assert!(!body.to_string().contains(TOKEN));
}

#[tokio::test]
async fn with_a_token_every_v1_route_needs_it_and_probes_do_not() {
    let w = Worker::start_with_env(&[], &[("EDGE_WORKER_TOKEN", TOKEN)]).await;
    let body = greedy("Say hi.", 4);
    let v1 = [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/worker/load"),
        ("GET", "/v1/nope"),
    ];
    for (method, path) in v1 {
        for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let mut request = match method {
                "POST" => w.client.post(w.url(path)).json(&body),
                _ => w.client.get(w.url(path)),
            };
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            expect_401(request.send().await.unwrap()).await;
        }
    }
    // A token in another scheme is no token.
    let basic = w
        .client
        .get(w.url("/v1/models"))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    expect_401(basic).await;

    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = w.client.get(w.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    let w = w.with_token(TOKEN);
    assert_eq!(w.chat(&body).await.status(), 200);
    assert_eq!(w.get("/v1/models").await.status(), 200);
    assert_eq!(w.load().await["ready"], true);
    // The refusals are counted like any other answer.
    let metrics = w.metrics().await;
    assert!(
        metrics.contains("edge_requests_total{path=\"/v1/chat/completions\",status=\"401\"} 3"),
        "{metrics}"
    );
}

/// A token from a file lets the worker listen on every interface.
#[tokio::test]
async fn a_token_file_opens_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let w = Worker::start_with_env(
        &[
            "--listen",
            "0.0.0.0:0",
            "--worker-token-file",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    expect_401(w.get("/v1/models").await).await;
    let w = w.with_token(TOKEN);
    assert_eq!(w.get("/v1/models").await.status(), 200);
}

fn start(listen: &str, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edge-worker"))
        .arg("--model-path")
        .arg(model_path())
        .args(["--listen", listen])
        .args(extra)
        .env_remove("EDGE_WORKER_TOKEN")
        .env_remove("EDGE_WORKER_TOKEN_FILE")
        .env_remove("EDGE_INSECURE_NO_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn assert_refused(out: &std::process::Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(lines[0].contains(needle), "{stderr}");
    assert!(!stderr.contains(TOKEN), "{stderr}");
}

#[test]
fn without_a_token_only_loopback_is_served() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        assert_refused(&start(listen, &[], &[]), "without a worker token");
        // An empty token is no token.
        assert_refused(
            &start(listen, &[], &[("EDGE_WORKER_TOKEN", "")]),
            "without a worker token",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.to_str().unwrap();
    assert_refused(
        &start("127.0.0.1:0", &["--worker-token-file", empty], &[]),
        "is empty",
    );
    let missing = dir.path().join("missing");
    assert_refused(
        &start(
            "127.0.0.1:0",
            &["--worker-token-file", missing.to_str().unwrap()],
            &[],
        ),
        "cannot read the worker token file",
    );
    let file = dir.path().join("token");
    std::fs::write(&file, TOKEN).unwrap();
    assert_refused(
        &start(
            "127.0.0.1:0",
            &["--worker-token-file", file.to_str().unwrap()],
            &[("EDGE_WORKER_TOKEN", TOKEN)],
        ),
        "use one",
    );
}

/// `--insecure-no-token` is the explicit way to serve a LAN without one.
#[tokio::test]
async fn insecure_no_token_opens_every_interface_without_a_token() {
    let w = Worker::start_with_env(&["--listen", "0.0.0.0:0", "--insecure-no-token"], &[]).await;
    assert_eq!(w.get("/v1/models").await.status(), 200);
}
