//! Every way an upstream attempt can break, against the real gateway over
//! HTTP: the mock cloud's failure modes (a hang, a stream dropped or
//! stalled before or after its first event, a non-streaming body cut or
//! stalled midway) and a real edge worker killed after it accepted the
//! request. Each case checks the documented outcome (failover before the
//! first token reached the client, an SSE error event after it) and that
//! the request left exactly one ledger row with the right status.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown,
    // Counters and stored settings are compared exactly on purpose.
    clippy::float_cmp
)]

use crate::common;

use common::harness::{
    chat_body, cloud_backend, edge_and_cloud, header, metric, tenant_and_key, test_config,
    EdgeSetup, Gateway, CLOUD_PRICE_IN, CLOUD_PRICE_OUT,
};
use futures::StreamExt;
use gateway::config::Config;
use gateway::routing::Policy;
use gateway::store::LedgerStatus;
use loadtest::mock_cloud::{Behaviour, MockCloud, MockConfig};
use serde_json::{json, Value};

/// Short upstream timeouts, so the hang and stall cases end quickly.
fn quick() -> Config {
    Config {
        upstream_first_byte_timeout_ms: 400,
        upstream_idle_timeout_ms: 400,
        ..test_config()
    }
}

async fn mock(behaviour: Behaviour) -> MockCloud {
    MockCloud::start(MockConfig {
        behaviour: Behaviour {
            models: vec!["cloud-model".into()],
            completion_tokens: 8,
            ..behaviour
        },
        ..MockConfig::default()
    })
    .await
    .expect("start mock cloud")
}

/// Two clouds: `first`, cheaper and so always tried first, failing the way
/// `fault` says; `second`, dearer and sound. A fresh gateway per case, so
/// no health state carries over from the case before.
struct Pair {
    gw: Gateway,
    first: MockCloud,
    second: MockCloud,
    key: String,
}

async fn pair(fault: Behaviour) -> Pair {
    pair_named(fault, ["first", "second"], quick()).await
}

async fn pair_named(fault: Behaviour, names: [&str; 2], config: Config) -> Pair {
    let first = mock(fault).await;
    let second = mock(Behaviour::default()).await;
    let db = common::sqlite().await;
    let mut cheap = cloud_backend(names[0], &first.base_url());
    cheap.price_in_per_1k = CLOUD_PRICE_IN / 10.0;
    cheap.price_out_per_1k = CLOUD_PRICE_OUT / 10.0;
    db.store.add_backend(&cheap).await.unwrap();
    let mut dear = cloud_backend(names[1], &second.base_url());
    dear.joules_per_prompt_token = 0.25;
    dear.joules_per_output_token = 0.5;
    db.store.add_backend(&dear).await.unwrap();
    let gw = Gateway::start(db, config).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    Pair {
        gw,
        first,
        second,
        key,
    }
}

fn body(stream: bool) -> Value {
    let mut b = chat_body("Say hi.", 8);
    b["stream"] = json!(stream);
    b
}

/// The request fails over from `first` to `second` and the client sees a
/// whole, ordinary answer; its one row is `ok`, served by `second`.
async fn assert_fails_over(fault: Behaviour, stream: bool) {
    let p = pair(fault).await;
    let r = p.gw.chat(&p.key, &body(stream)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "second");
    assert_eq!(header(&r, "x-gateway-route-reason"), "failover");
    let id = header(&r, "x-gateway-ledger-id").to_owned();
    let text = r.text().await.unwrap();
    if stream {
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(!text.contains("\"error\""), "{text}");
    } else {
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["object"], "chat.completion", "{text}");
    }
    assert_eq!(p.first.stats().requests_total, 1, "first tried once");
    assert_eq!(p.second.stats().requests_total, 1, "second answered");
    let row = p.gw.row(&id).await;
    assert_eq!(
        (row.status, row.backend.as_deref(), row.http_status),
        (LedgerStatus::Ok, Some("second"), Some(200))
    );
    assert_eq!(row.completion_tokens, Some(8));
    assert!(!row.usage_estimated, "the upstream reported the usage");
    let counts = p.gw.ledger_counts(1).await;
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&1), "{counts:?}");
    p.gw.shutdown().await;
}

/// The stream reached the client, so there is no failover: it ends with an
/// OpenAI-shaped error event and no `[DONE]`, and its one row is `partial`.
async fn assert_stream_breaks_after_first_event(fault: Behaviour) {
    let p = pair(fault).await;
    let r = p.gw.chat(&p.key, &body(true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "first");
    let id = header(&r, "x-gateway-ledger-id").to_owned();
    let mut text = String::new();
    let mut chunks = r.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert!(!events.contains(&"[DONE]"), "{text}");
    let first: Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk", "{text}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{text}");
    assert_eq!(
        p.second.stats().requests_total,
        0,
        "no failover after the first event"
    );
    let row = p.gw.row(&id).await;
    assert_eq!(
        (row.status, row.backend.as_deref()),
        (LedgerStatus::Partial, Some("first"))
    );
    assert_eq!(row.error_code.as_deref(), Some("upstream_error"));
    // The mock's usage chunk never came: the counts are estimates, and
    // say so. Its first two events are the role and one content token.
    assert!(row.usage_estimated);
    assert_eq!(row.completion_tokens, Some(1));
    let counts = p.gw.ledger_counts(1).await;
    assert_eq!(counts.get(&LedgerStatus::Partial), Some(&1), "{counts:?}");
    p.gw.shutdown().await;
}

#[tokio::test]
async fn first_byte_timeout_fails_over() {
    for stream in [false, true] {
        let hang = Behaviour {
            hang: true,
            ..Behaviour::default()
        };
        assert_fails_over(hang, stream).await;
    }
}

#[tokio::test]
async fn a_stream_that_dies_before_its_first_event_fails_over() {
    let dies = Behaviour {
        drop_after_chunks: Some(0),
        ..Behaviour::default()
    };
    assert_fails_over(dies, true).await;
}

#[tokio::test]
async fn a_stream_that_stalls_before_its_first_event_fails_over() {
    let stalls = Behaviour {
        stall_after_chunks: Some(0),
        ..Behaviour::default()
    };
    assert_fails_over(stalls, true).await;
}

#[tokio::test]
async fn a_stream_that_dies_after_its_first_event_ends_with_an_error_event() {
    assert_stream_breaks_after_first_event(Behaviour {
        drop_after_chunks: Some(2),
        ..Behaviour::default()
    })
    .await;
}

#[tokio::test]
async fn a_stream_that_stalls_after_its_first_event_ends_with_an_error_event() {
    assert_stream_breaks_after_first_event(Behaviour {
        stall_after_chunks: Some(2),
        ..Behaviour::default()
    })
    .await;
}

#[tokio::test]
async fn a_non_streaming_body_cut_or_stalled_midway_fails_over() {
    let cut = Behaviour {
        drop_after_chunks: Some(0),
        ..Behaviour::default()
    };
    assert_fails_over(cut, false).await;
    let stalled = Behaviour {
        stall_after_chunks: Some(0),
        ..Behaviour::default()
    };
    assert_fails_over(stalled, false).await;
}

#[tokio::test]
async fn an_edge_worker_killed_after_accepting_fails_over_to_the_cloud() {
    // One poll at start-up, then one every 50 ms: the test waits on the
    // gateway's own view of the worker to know it is generating.
    let mut config = test_config();
    config.poll_interval_ms = 50;
    let EdgeSetup {
        mut edge,
        mock,
        gw,
        edge_id,
        key,
        tenant,
    } = edge_and_cloud(
        common::sqlite().await,
        &[],
        |url| cloud_backend("cloud", url),
        config,
    )
    .await;
    // A long answer on a shared CPU may be predicted past the default SLO,
    // which would send it to the cloud first; this test needs the edge.
    let patient = Policy {
        latency_slo_ms: 600_000.0,
        ..Policy::default()
    };
    gw.store().set_policy(&tenant, &patient).await.unwrap();
    let request = {
        let gw_client = gw.client.clone();
        let url = gw.url("/v1/chat/completions");
        let key = key.clone();
        tokio::spawn(async move {
            gw_client
                .post(url)
                .bearer_auth(key)
                .json(&chat_body("Write a very long story about a dragon.", 200))
                .send()
                .await
                .unwrap()
        })
    };
    gw.wait_live(&edge_id, |l| {
        l.load.as_ref().is_some_and(|r| r.active_sequences >= 1)
    })
    .await;
    edge.kill();
    let r = request.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "cloud");
    assert_eq!(header(&r, "x-gateway-route-reason"), "failover");
    let id = header(&r, "x-gateway-ledger-id").to_owned();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["model"], "cloud-model");
    assert_eq!(mock.stats().requests_total, 1);
    let row = gw.row(&id).await;
    assert_eq!(
        (row.status, row.backend.as_deref()),
        (LedgerStatus::Ok, Some("cloud"))
    );
    assert_eq!(
        row.decision.unwrap().value().unwrap()["chosen"]["backend"],
        "edge"
    );
    let counts = gw.ledger_counts(1).await;
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&1), "{counts:?}");
    gw.shutdown().await;
}

/// The gateway's own metrics move by what known requests did: three
/// requests, each failing over from a backend answering 503 to one that
/// answers, streaming and not.
#[tokio::test]
async fn metrics_count_what_the_requests_did() {
    // Backend names of their own: the recorder is global to the process.
    let names = ["metered-first", "metered-second"];
    let fails = Behaviour {
        fail_status: Some(503),
        ..Behaviour::default()
    };
    // The failing backend stays in rotation, so each request tries it.
    let config = Config {
        unhealthy_after: 1_000,
        ..quick()
    };
    let p = pair_named(fails, names, config).await;
    let before = p.gw.metrics().await;
    let mut rows = Vec::new();
    for stream in [false, true, false] {
        let r = p.gw.chat(&p.key, &body(stream)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-gateway-backend"), names[1]);
        let id = header(&r, "x-gateway-ledger-id").to_owned();
        let _ = r.bytes().await.unwrap();
        rows.push(p.gw.row(&id).await);
    }
    let after = p.gw.metrics().await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    let served = [("backend", names[1])];
    let ok = [
        ("status", "ok"),
        ("backend", names[1]),
        ("reason", "failover"),
        ("class", "public"),
        ("zone", "cloud"),
    ];
    assert_eq!(moved("gateway_requests_total", &ok), 3.0);
    assert_eq!(
        moved("gateway_requests_total", &[("backend", names[0])]),
        0.0
    );
    assert_eq!(moved("gateway_failovers_total", &[("to", names[1])]), 3.0);
    assert_eq!(
        moved(
            "gateway_upstream_errors_total",
            &[("backend", names[0]), ("kind", "5xx")]
        ),
        3.0
    );
    for histogram in [
        "gateway_request_duration_seconds_count",
        "gateway_ttft_seconds_count",
    ] {
        assert_eq!(moved(histogram, &served), 3.0, "{histogram}");
    }
    // Every observation falls in the +Inf bucket, and the sum of the
    // durations is what the rows measured (each observed once).
    assert_eq!(
        moved(
            "gateway_request_duration_seconds_bucket",
            &[("backend", names[1]), ("le", "+Inf")]
        ),
        3.0
    );
    let seconds: f64 = rows.iter().map(|r| r.latency_ms.unwrap() / 1000.0).sum();
    let sum = moved("gateway_request_duration_seconds_sum", &served);
    assert!((sum - seconds).abs() < 1e-3, "{sum} vs {seconds}");
    // Cost and energy counters move by the rows' own figures.
    let usd: f64 = rows.iter().map(|r| r.usd.unwrap()).sum();
    let joules: f64 = rows.iter().map(|r| r.joules.unwrap()).sum();
    assert!(usd > 0.0 && joules > 0.0, "{usd} {joules}");
    let micro = moved("gateway_cost_microusd_total", &served);
    let milli = moved("gateway_energy_millijoules_total", &served);
    assert!((micro - usd * 1e6).abs() <= 3.0, "{micro} vs {usd}");
    assert!((milli - joules * 1e3).abs() <= 3.0, "{milli} vs {joules}");
    p.gw.shutdown().await;
}
