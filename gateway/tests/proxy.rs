//! The proxy against stand-in upstreams (no model needed): the client's
//! body reaches the upstream untouched but for `model`, the usage chunk
//! follows the client's `stream_options`, and failover between clouds ends
//! in a 502 when every candidate fails, or a 503 with the upstream's
//! `Retry-After` when the last was rate-limited.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown
)]

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::ConnectInfo;
use axum::routing::post;
use axum::Json;
use common::harness::{
    chat_body, cloud_backend, error_of, header, mock_cloud, sse_data, tenant_and_key, test_config,
    Gateway,
};
use gateway::config::Config;
use gateway::routing::Policy;
use gateway::store::LedgerStatus;
use loadtest::mock_cloud::{Behaviour, MockCloud, MockConfig};
use serde_json::{json, Value};

/// A request as the stand-in upstream received it.
struct Received {
    /// The gateway's end of the connection it came over.
    peer: SocketAddr,
    body: Value,
}

/// A stand-in upstream that records the requests it receives.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<Received>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, Json(body): Json<Value>| {
                let store = Arc::clone(&store);
                async move {
                    store.lock().unwrap().push(Received { peer, body });
                    Json(json!({
                        "id": "x", "object": "chat.completion", "created": 0, "model": "cloud-model",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
                    }))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app).await.unwrap();
    });
    (url, seen)
}

#[tokio::test]
async fn unknown_fields_pass_through_and_usage_chunk_follows_the_client() {
    let (url, seen) = recording_upstream().await;
    let db = common::sqlite().await;
    db.store
        .add_backend(&cloud_backend("rec", &url))
        .await
        .unwrap();
    // No settings cache: the backend swapped below is seen at once.
    let config = Config {
        settings_cache_ms: 0,
        ..test_config()
    };
    let gw = Gateway::start(db, config).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    let mut body = chat_body("hi", 4);
    body["logit_bias"] = json!({"50256": -100});
    body["vendor_extension"] = json!({"nested": [1, {"a": null}]});
    body["user"] = json!("u-1");
    let r = gw.chat(&key, &body).await;
    assert_eq!(r.status(), 200);
    let got = seen.lock().unwrap().pop().unwrap().body;
    assert_eq!(
        got["model"], "cloud-model",
        "model is rewritten to the upstream's name"
    );
    for field in [
        "logit_bias",
        "vendor_extension",
        "user",
        "messages",
        "temperature",
        "max_tokens",
    ] {
        assert_eq!(got[field], body[field], "{field} changed on the way");
    }

    // Streams: the gateway always asks the upstream for usage, and passes
    // the usage chunk on only when the client asked for it.
    let mock = mock_cloud().await;
    gw.store().remove_backend("rec").await.unwrap();
    gw.store()
        .add_backend(&cloud_backend("cloud", &mock.base_url()))
        .await
        .unwrap();
    for include_usage in [false, true] {
        let mut body = chat_body("hi", 5);
        body["stream"] = json!(true);
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let r = gw.chat(&key, &body).await;
        assert_eq!(header(&r, "x-gateway-backend"), "cloud");
        let id = header(&r, "x-gateway-ledger-id").to_owned();
        let data = sse_data(r).await;
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let usage_chunks = data
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v["choices"].as_array().is_some_and(Vec::is_empty))
            .count();
        assert_eq!(usage_chunks, usize::from(include_usage), "{data:?}");
        let row = gw.row(&id).await;
        assert_eq!(
            (row.status, row.completion_tokens),
            (LedgerStatus::Ok, Some(5))
        );
        assert!(row.ttft_ms.is_some());
    }
    gw.ledger_counts(3).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn failover_between_clouds_then_502_when_all_fail() {
    let failing = MockCloud::start(MockConfig {
        behaviour: Behaviour {
            fail_status: Some(503),
            ..Behaviour::default()
        },
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let healthy = mock_cloud().await;
    let db = common::sqlite().await;
    let mut first = cloud_backend("a-failing", &failing.base_url());
    first.price_in_per_1k = 0.0;
    first.price_out_per_1k = 0.0;
    db.store.add_backend(&first).await.unwrap();
    db.store
        .add_backend(&cloud_backend("b-healthy", &healthy.base_url()))
        .await
        .unwrap();
    // No settings cache: the backend disabled below is seen at once.
    let config = Config {
        settings_cache_ms: 0,
        ..test_config()
    };
    let gw = Gateway::start(db, config).await;
    let (tenant, key) = tenant_and_key(gw.store(), |_| {}).await;
    gw.store()
        .set_policy(&tenant, &Policy::default())
        .await
        .unwrap();

    let r = gw.chat(&key, &chat_body("hi", 4)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "b-healthy");
    assert_eq!(header(&r, "x-gateway-route-reason"), "failover");
    let row = gw.row(header(&r, "x-gateway-ledger-id")).await;
    assert_eq!(row.backend.as_deref(), Some("b-healthy"));
    assert_eq!(
        row.decision.unwrap().value().unwrap()["chosen"]["backend"],
        "a-failing"
    );
    assert_eq!(failing.stats().requests_total, 1);

    gw.store()
        .set_backend_enabled("b-healthy", false)
        .await
        .unwrap();
    let (status, err) = error_of(gw.chat(&key, &chat_body("hi", 4)).await).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (502, Some("upstream_error"))
    );
    let counts = gw.ledger_counts(2).await;
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&1));
    assert_eq!(counts.get(&LedgerStatus::Error), Some(&1));
    gw.shutdown().await;
}

/// A rate-limited cloud (429) is failed over like any busy upstream; when
/// it was the last candidate, the client gets 503 `upstream_busy` with the
/// upstream's `Retry-After`, streaming or not, and the row records it.
#[tokio::test]
async fn a_rate_limited_upstream_gives_503_with_its_retry_after() {
    let busy = MockCloud::start(MockConfig {
        behaviour: Behaviour {
            fail_status: Some(429),
            retry_after_s: 7,
            ..Behaviour::default()
        },
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let db = common::sqlite().await;
    db.store
        .add_backend(&cloud_backend("busy", &busy.base_url()))
        .await
        .unwrap();
    let gw = Gateway::start(db, test_config()).await;
    let (tenant, key) = tenant_and_key(gw.store(), |_| {}).await;
    gw.store()
        .set_policy(&tenant, &Policy::default())
        .await
        .unwrap();

    for stream in [false, true] {
        let mut body = chat_body("hi", 4);
        body["stream"] = json!(stream);
        let r = gw.chat(&key, &body).await;
        assert_eq!(header(&r, "retry-after"), "7", "stream: {stream}");
        let (status, err) = error_of(r).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (503, Some("upstream_busy")),
            "stream: {stream}"
        );
    }
    assert_eq!(busy.stats().requests_total, 2);
    let counts = gw.ledger_counts(2).await;
    assert_eq!(counts.get(&LedgerStatus::Error), Some(&2));
    // A rate limit says nothing about the backend's health: still up.
    let r = gw.chat(&key, &chat_body("hi", 4)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(busy.stats().requests_total, 3);
    gw.ledger_counts(3).await;
    gw.shutdown().await;
}

/// Serving threads, each with upstream clients of its own: three client
/// connections, given to three threads, reach the upstream over three
/// connections and reuse them (one shared pool would have used one for
/// these one-at-a-time requests, no pooling six). On Postgres, whose
/// connections opened during these requests belong to the serving threads'
/// runtimes, every row is stored by the time shutdown returns.
#[tokio::test]
async fn each_serving_thread_has_its_own_upstream_connections() {
    use std::collections::HashSet;

    let (url, seen) = recording_upstream().await;
    let db = common::postgres().await;
    db.store
        .add_backend(&cloud_backend("threads", &url))
        .await
        .unwrap();
    let config = Config {
        serve_threads: 3,
        ..test_config()
    };
    let gw = Gateway::start(db, config).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    // One client per connection, each connected before the next: the
    // accept loop gives each to the thread with the fewest open ones.
    let clients: Vec<reqwest::Client> = (0..3).map(|_| reqwest::Client::new()).collect();
    for _round in 0..2 {
        for client in &clients {
            let r = client
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&chat_body("hi", 1))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(header(&r, "x-gateway-backend"), "threads");
        }
    }
    let peers: Vec<SocketAddr> = seen.lock().unwrap().iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 6);
    let distinct: HashSet<_> = peers.iter().collect();
    assert_eq!(distinct.len(), 3, "upstream connections: {peers:?}");
    assert_eq!(
        &peers[..3],
        &peers[3..],
        "each thread reuses its connection in the same order"
    );

    let db = gw.shutdown().await;
    let counts: std::collections::HashMap<_, _> = db
        .store
        .count_ledger_by_status()
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&6), "{counts:?}");
}
