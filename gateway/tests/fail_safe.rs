//! Hostile clients and hostile or failing upstreams, against the real
//! gateway over HTTP with scripted stand-in upstreams (no model needed):
//! slow clients, oversized and malformed input, fields that try to steer
//! the upstream, upstream errors that could leak a key, broken and
//! oversized streams, failover before the first token, recovery of a
//! failed backend, and shutdown with streams still open.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown
)]

use crate::common;

use std::time::{Duration, Instant};

use common::harness::{error_of, header, sse_data, tenant_and_key, test_config, Gateway};
use common::stand_in::{backend, Mode, StandIn};
use gateway::config::Config;
use gateway::routing::Zone;
use gateway::store::LedgerStatus;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn body(stream: bool) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
           "max_tokens": 4, "stream": stream})
}

fn quick() -> Config {
    Config {
        settings_cache_ms: 0,
        upstream_first_byte_timeout_ms: 500,
        upstream_idle_timeout_ms: 500,
        header_read_timeout_ms: 300,
        body_read_timeout_ms: 300,
        ..test_config()
    }
}

/// A gateway over one cloud-zone stand-in (and any extra backends), with a
/// key.
async fn one_cloud(config: Config, mode: Mode) -> (Gateway, StandIn, String) {
    let up = StandIn::start().await;
    up.set(mode.clone());
    let db = common::sqlite().await;
    db.store
        .add_backend(&backend("cloud", &up.url_for(&mode), Zone::Cloud, 1.0))
        .await
        .unwrap();
    let gw = Gateway::start(db, config).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    (gw, up, key)
}

fn addr(gw: &Gateway) -> String {
    gw.base.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn slow_and_unauthenticated_clients_cost_nothing() {
    let (gw, up, key) = one_cloud(quick(), Mode::Answer).await;

    // Headers trickled in: the connection is closed after the header read
    // timeout, without an answer.
    let mut slow = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a slowloris connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Connections that send nothing, or an HTTP/2 preface cut short, are
    // closed after the header read timeout too, giving their slots back.
    for first in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut idle = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
        idle.write_all(first).await.unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a connection that sent {first:?} stayed open");
        assert!(buf.is_empty());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    // A body announced but never sent, with a bad key: refused at once,
    // before the gateway waits for any of it.
    let mut conn = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    conn.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\
          Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut head))
        .await
        .expect("no answer before the body")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 401");

    // The same with a valid key: the body read times out with a 408.
    let mut conn = tokio::net::TcpStream::connect(addr(&gw)).await.unwrap();
    conn.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut head))
        .await
        .expect("no answer to a stalled body")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 408");
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

/// Whether `key` is served again within a few seconds (a slot taken by a
/// dropped stream comes back when its body is dropped).
async fn served_again(gw: &Gateway, key: &str) -> bool {
    for _ in 0..50 {
        if gw.chat(key, &body(false)).await.status() == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn beyond_max_in_flight_requests_get_503_at_once() {
    let config = Config {
        max_in_flight: 1,
        ..quick()
    };
    let (gw, up, key) = one_cloud(config, Mode::StallAfterFirst).await;
    let first = gw.chat(&key, &body(true)).await;
    assert_eq!(first.status(), 200);
    // The first stream holds the only slot until its body ends.
    let second = gw.chat(&key, &body(false)).await;
    let (status, err) = error_of(second).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (503, Some("service_unavailable"))
    );
    drop(first);
    // The slot comes back when the stream's body is dropped.
    up.set(Mode::Answer);
    assert!(served_again(&gw, &key).await, "the slot was never released");
    gw.shutdown().await;
}

/// An answer that never stops (a token every 50 ms, so never idle) ends
/// at the upstream's total timeout with an error event.
#[tokio::test]
async fn an_endless_stream_ends_at_the_total_timeout() {
    let config = Config {
        upstream_total_timeout_ms: 1_000,
        ..quick()
    };
    let (gw, _up, key) = one_cloud(config, Mode::Trickle(Duration::from_millis(50))).await;
    let started = Instant::now();
    let r = gw.chat(&key, &body(true)).await;
    assert_eq!(r.status(), 200);
    let events = tokio::time::timeout(Duration::from_secs(10), sse_data(r))
        .await
        .expect("the stream outlived its total timeout");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    let last = events.last().unwrap();
    assert!(last.contains("upstream_error"), "{last}");
    gw.shutdown().await;
}

/// One key holds at most `max_in_flight_per_key` requests at once; past it
/// its requests get 429 at once (before their body is read), while another
/// key is served as usual.
#[tokio::test]
async fn one_key_cannot_take_every_slot() {
    let config = Config {
        max_in_flight_per_key: 1,
        ..quick()
    };
    let (gw, up, key) = one_cloud(config, Mode::StallAfterFirst).await;
    let first = gw.chat(&key, &body(true)).await;
    assert_eq!(first.status(), 200);
    let second = gw.chat(&key, &body(false)).await;
    assert_eq!(second.headers()["retry-after"], "1");
    let (status, err) = error_of(second).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded"))
    );
    // Another key of the same gateway is not held back.
    let (_, other) = tenant_and_key(gw.store(), |_| {}).await;
    up.set(Mode::Answer);
    assert_eq!(gw.chat(&other, &body(false)).await.status(), 200);
    // The key's slot comes back when its stream's body is dropped.
    drop(first);
    assert!(
        served_again(&gw, &key).await,
        "the key's slot was never released"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn client_fields_cannot_steer_the_upstream() {
    let (gw, up, key) = one_cloud(quick(), Mode::Answer).await;
    // A listener standing for an address the client would like the gateway
    // (or a proxy behind it) to reach.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    let mut b = body(false);
    for field in ["api_base", "base_url", "API_BASE"] {
        b[field] = json!(trap_url);
    }
    b["api_key"] = json!("sk-client-supplied");
    b["api_version"] = json!("2024-01-01");
    b["extra_headers"] = json!({"Authorization": "Bearer stolen"});
    b["organization"] = json!("org-evil");
    b["store"] = json!(true);
    b["aws_secret_access_key"] = json!("x");
    let long_id = "i".repeat(200);
    let r = gw.chat_with(&key, &b, &[("x-request-id", &long_id)]).await;
    assert_eq!(r.status(), 200);
    let sent = up.bodies().pop().unwrap();
    let mut keys: Vec<&str> = sent
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["max_tokens", "messages", "model", "stream"]);
    // Nothing connected to the trap, and the client's headers stayed home.
    let accepted = tokio::time::timeout(Duration::from_millis(200), trap.accept()).await;
    assert!(
        accepted.is_err(),
        "the gateway connected to a client-named address"
    );
    let headers = up.headers().pop().unwrap();
    assert!(headers.get("authorization").is_none());
    let id = headers["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "request id {id:?}");

    // Model names are bounded and free of control characters.
    for model in ["a\u{0}b".to_owned(), "m".repeat(257)] {
        let mut b = body(false);
        b["model"] = json!(model);
        let (status, err) = error_of(gw.chat(&key, &b).await).await;
        assert_eq!(
            (status, err["error"]["param"].as_str()),
            (400, Some("model"))
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_errors_never_echo_credentials_and_are_bounded() {
    let leak = r#"{"error":{"message":"Incorrect API key provided: sk-proj-abc***************wxyz. You can find your API key at https://example.com.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let (gw, up, key) = one_cloud(quick(), Mode::Status(401, leak.into())).await;
    let r = gw.chat(&key, &body(false)).await;
    let (status, err) = error_of(r).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (502, Some("upstream_error"))
    );
    let text = err.to_string();
    assert!(
        !text.contains("wxyz") && !text.contains("sk-proj"),
        "{text}"
    );

    // A 400 about the request keeps its status and code; a message that
    // mentions a key is replaced.
    let bad = r#"{"error":{"message":"Invalid value for temperature: must be <= 2.","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}"#;
    up.set(Mode::Status(400, bad.into()));
    let (status, err) = error_of(gw.chat(&key, &body(false)).await).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "invalid_value");
    assert_eq!(err["error"]["param"], "temperature");
    assert_eq!(
        err["error"]["message"],
        "Invalid value for temperature: must be <= 2."
    );
    let sneaky = r#"{"error":{"message":"bad request for key sk-abcdefghijklmnopqrstuvwx","type":"x","param":null,"code":"bad"}}"#;
    up.set(Mode::Status(400, sneaky.into()));
    let (_, err) = error_of(gw.chat(&key, &body(false)).await).await;
    assert!(!err.to_string().contains("sk-abc"), "{err}");

    // A huge error body is cut, not buffered whole.
    up.set(Mode::Status(400, "x".repeat(4 << 20)));
    let r = gw.chat(&key, &body(false)).await;
    assert_eq!(r.status(), 400);
    assert!(r.bytes().await.unwrap().len() < 4096);
    gw.shutdown().await;
}

#[tokio::test]
async fn stream_framing_survives_multi_line_and_oversized_events() {
    let config = Config {
        max_sse_event_bytes: 64 << 10,
        ..quick()
    };
    let (gw, up, key) = one_cloud(config, Mode::MultiLineEvent).await;
    let r = gw.chat(&key, &body(true)).await;
    let data = sse_data_all(r).await;
    // The two-line event arrives as one event whose data is valid JSON.
    let joined: Vec<Value> = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(joined
        .iter()
        .any(|v| v["choices"][0]["delta"]["content"] == "two"));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));

    up.set(Mode::HugeEvent(1 << 20));
    let r = gw.chat(&key, &body(true)).await;
    let id = header(&r, "x-gateway-ledger-id").to_owned();
    let data = sse_data_all(r).await;
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error");
    assert_eq!(gw.row(&id).await.status, LedgerStatus::Partial);
    gw.shutdown().await;
}

/// Every event's data, joining multi-line `data:` fields with `\n` as an
/// SSE client does.
async fn sse_data_all(r: reqwest::Response) -> Vec<String> {
    let text = r.text().await.unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

#[tokio::test]
async fn failures_before_the_first_token_fail_over_and_context_errors_go_larger() {
    let first = StandIn::start().await;
    let second = StandIn::start().await;
    let db = common::sqlite().await;
    // The cheaper on-prem backend is tried first.
    let mut small = backend("edge-small", &first.url, Zone::OnPrem, 0.0);
    small.context_length = 4096;
    db.store.add_backend(&small).await.unwrap();
    db.store
        .add_backend(&backend("edge-big", &second.url, Zone::OnPrem, 0.5))
        .await
        .unwrap();
    first.set_context(4096);
    let gw = Gateway::start(db, quick()).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;

    // 200 headers, then an error event before any token: fail over.
    first.set(Mode::ErrorFirst);
    let r = gw.chat(&key, &body(true)).await;
    assert_eq!(header(&r, "x-gateway-backend"), "edge-big");
    assert_eq!(header(&r, "x-gateway-route-reason"), "failover");
    let data = sse_data(r).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        data.iter().all(|d| !d.contains("engine failed")),
        "{data:?}"
    );

    // The first says the prompt does not fit its context: the larger one
    // serves it.
    let ctx = r#"{"error":{"message":"too long","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    first.set(Mode::Status(400, ctx.into()));
    let r = gw.chat(&key, &body(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "edge-big");
    // With only the small one left, the client gets the 400.
    second.set(Mode::Status(400, ctx.into()));
    let (status, err) = error_of(gw.chat(&key, &body(false)).await).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("context_length_exceeded"))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_failed_cloud_backend_recovers_after_its_cool_down() {
    let config = Config {
        unhealthy_after: 2,
        unhealthy_cooldown_ms: 1_000,
        ..quick()
    };
    let busted = r#"{"error":{"message":"down","type":"server_error","param":null,"code":"x"}}"#;
    let (gw, up, key) = one_cloud(config, Mode::Status(503, busted.into())).await;
    for _ in 0..2 {
        assert_eq!(gw.chat(&key, &body(false)).await.status(), 502);
    }
    // Open: not even tried.
    let (status, err) = error_of(gw.chat(&key, &body(false)).await).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (503, Some("no_backend_available"))
    );
    assert_eq!(up.count(), 2);
    up.set(Mode::Answer);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Half-open: one trial, which succeeds and closes the circuit.
    assert_eq!(gw.chat(&key, &body(false)).await.status(), 200);
    assert_eq!(gw.chat(&key, &body(false)).await.status(), 200);
    assert_eq!(up.count(), 4);
    gw.shutdown().await;
}

/// Two on-premises backends fail together (as they would if the fault were
/// the gateway's own network): the ejection cap keeps half of the pool in
/// routing, so once they recover the next request is served at once
/// instead of waiting out a minute's rest. Without the cap (100%) the same
/// request finds no backend.
#[tokio::test]
async fn failures_cannot_eject_more_than_the_capped_share_of_a_pool() {
    async fn after_both_failed(max_ejection_percent: u32) -> (u16, String, [usize; 2]) {
        let config = Config {
            unhealthy_after: 1,
            unhealthy_cooldown_ms: 60_000,
            max_ejection_percent,
            ..quick()
        };
        let busted =
            r#"{"error":{"message":"down","type":"server_error","param":null,"code":"x"}}"#;
        let (a, b) = (StandIn::start().await, StandIn::start().await);
        let db = common::sqlite().await;
        // Not polled (an OpenAI-compatible server in the rack), so only
        // requests judge their health; `a` is preferred.
        for (name, up, price) in [("a", &a, 0.0), ("b", &b, 1.0)] {
            up.set(Mode::Status(503, busted.into()));
            let on_prem = gateway::routing::Backend {
                kind: gateway::routing::BackendKind::Cloud,
                ..backend(name, &up.url, Zone::OnPrem, price)
            };
            db.store.add_backend(&on_prem).await.unwrap();
        }
        let gw = Gateway::start(db, config).await;
        let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
        // Tried on a, failed over to b: both fail, both are ejected.
        assert_eq!(gw.chat(&key, &body(false)).await.status(), 502);
        assert_eq!((a.count(), b.count()), (1, 1));
        a.set(Mode::Answer);
        b.set(Mode::Answer);
        let r = gw.chat(&key, &body(false)).await;
        let status = r.status().as_u16();
        let served_by = r
            .headers()
            .get("x-gateway-backend")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        gw.shutdown().await;
        (status, served_by, [a.count(), b.count()])
    }

    // Half of two may be out: a, whose rest ends first, is readmitted.
    assert_eq!(after_both_failed(50).await, (200, "a".to_owned(), [2, 1]));
    // No cap: the whole pool rests, and nothing was tried.
    let (status, _, counts) = after_both_failed(100).await;
    assert_eq!((status, counts), (503, [1, 1]));
}

#[tokio::test]
async fn a_slow_non_streaming_edge_answer_is_awaited_not_redone() {
    let edge = StandIn::start().await;
    let cloud = StandIn::start().await;
    let db = common::sqlite().await;
    db.store
        .add_backend(&backend("edge", &edge.url, Zone::OnPrem, 0.0))
        .await
        .unwrap();
    db.store
        .add_backend(&backend("cloud", &cloud.url, Zone::Cloud, 1.0))
        .await
        .unwrap();
    let gw = Gateway::start(db, quick()).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    // The worker answers after more than the first-byte timeout (500 ms),
    // within what its prediction allows for 4 tokens.
    edge.set(Mode::Slow(Duration::from_millis(900)));
    let mut b = body(false);
    b["max_tokens"] = json!(64);
    let r = gw.chat(&key, &b).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "edge");
    assert_eq!(cloud.count(), 0, "the work was done twice");
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_an_error_event_and_a_cancelled_row() {
    let config = Config {
        shutdown_grace_ms: 300,
        upstream_idle_timeout_ms: 60_000,
        ..quick()
    };
    let (gw, _up, key) = one_cloud(config, Mode::StallAfterFirst).await;
    let r = gw.chat(&key, &body(true)).await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-gateway-ledger-id").to_owned();
    let reading = tokio::spawn(sse_data_all(r));
    let started = Instant::now();
    let db = tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("shutdown hung with a stream open");
    assert!(started.elapsed() < Duration::from_secs(5));
    let data = tokio::time::timeout(Duration::from_secs(5), reading)
        .await
        .expect("the stream outlived the server")
        .unwrap();
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "server_shutting_down");
    let row = db.store.ledger_entry(&id).await.unwrap().unwrap();
    assert_eq!(row.status, LedgerStatus::Cancelled);
}

/// Requests still waiting for their answer (a stream before its first
/// token, a JSON answer) when the grace runs out get a 503 that names their
/// ledger row, not a connection closed without a word.
#[tokio::test]
async fn shutdown_answers_requests_still_waiting_with_a_503_and_a_cancelled_row() {
    let config = Config {
        shutdown_grace_ms: 300,
        upstream_first_byte_timeout_ms: 60_000,
        upstream_idle_timeout_ms: 60_000,
        ..quick()
    };
    let (gw, up, key) = one_cloud(config, Mode::Hang).await;
    let waiting: Vec<_> = [false, true]
        .into_iter()
        .map(|stream| {
            let request = gw
                .client
                .post(format!("{}/v1/chat/completions", gw.base))
                .bearer_auth(&key)
                .json(&body(stream))
                .send();
            tokio::spawn(async move {
                let r = request.await.unwrap();
                let id = header(&r, "x-gateway-ledger-id").to_owned();
                (id, error_of(r).await)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the requests never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let db = tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("shutdown hung with requests waiting");
    for answer in waiting {
        let (id, (status, body)) = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("no answer after the server stopped")
            .unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "server_shutting_down");
        let row = db.store.ledger_entry(&id).await.unwrap().unwrap();
        assert_eq!(row.status, LedgerStatus::Cancelled);
        assert_eq!(row.http_status, Some(503));
    }
}

/// Three on-prem stand-ins that all answer 500, health tracking turned off
/// (so every request tries every candidate): with an unlimited budget each
/// request costs three upstream attempts; with a 20% budget and no floor,
/// retries add at most a fifth of the requests.
#[tokio::test]
async fn failover_retries_stay_within_the_retry_budget() {
    async fn upstream_attempts(ratio: f64) -> (usize, Vec<u16>) {
        let ups = [
            StandIn::start().await,
            StandIn::start().await,
            StandIn::start().await,
        ];
        let db = common::sqlite().await;
        for (i, up) in ups.iter().enumerate() {
            up.set(Mode::Status(500, "{}".into()));
            db.store
                .add_backend(&backend(
                    &format!("edge-{i}"),
                    &up.url,
                    Zone::OnPrem,
                    i as f64,
                ))
                .await
                .unwrap();
        }
        let config = Config {
            unhealthy_after: 1_000_000,
            retry_budget_ratio: ratio,
            retry_budget_min_per_s: 0.0,
            ..quick()
        };
        let gw = Gateway::start(db, config).await;
        let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
        let mut statuses = Vec::new();
        for _ in 0..50 {
            statuses.push(gw.chat(&key, &body(false)).await.status().as_u16());
        }
        gw.shutdown().await;
        (ups.iter().map(StandIn::count).sum(), statuses)
    }

    let (unbudgeted, statuses) = upstream_attempts(10.0).await;
    assert_eq!(unbudgeted, 150, "every request tries all three");
    assert!(statuses.iter().all(|s| *s == 502), "{statuses:?}");
    let (budgeted, statuses) = upstream_attempts(0.2).await;
    assert!(
        (50..=60).contains(&budgeted),
        "{budgeted} upstream attempts for 50 requests at a 20% retry budget"
    );
    // Every request still gets an answer, and the same error.
    assert!(statuses.iter().all(|s| *s == 502), "{statuses:?}");
}

/// `gateway_backend_up` names the current edge backends only: 1 while one
/// answers its load polls, 0 while it does not, and no series at all once
/// it is removed (a stale 0 would keep its alert firing for good).
#[tokio::test]
async fn backend_up_follows_the_current_edge_backends() {
    let up = StandIn::start().await;
    let db = common::sqlite().await;
    db.store
        .add_backend(&backend(
            "edge-up",
            &up.url_for(&Mode::Answer),
            Zone::OnPrem,
            0.0,
        ))
        .await
        .unwrap();
    db.store
        .add_backend(&backend(
            "edge-down",
            &common::stand_in::closed_port(),
            Zone::OnPrem,
            0.0,
        ))
        .await
        .unwrap();
    let gw = Gateway::start(db, quick()).await;
    let metrics = || async {
        gw.client
            .get(gw.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics().await;
        if text.contains("gateway_backend_up{backend=\"edge-up\"} 1")
            && text.contains("gateway_backend_up{backend=\"edge-down\"} 0")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.store().remove_backend("edge-down").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics().await;
        if !text.contains("gateway_backend_up{backend=\"edge-down\"") {
            assert!(
                text.contains("gateway_backend_up{backend=\"edge-up\"} 1"),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.shutdown().await;
}
