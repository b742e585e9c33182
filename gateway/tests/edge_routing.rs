//! Routing with the real edge worker (the real bundled model) next to the
//! mock cloud: the edge when idle, the cloud past the SLO or when the edge
//! is saturated, confidential requests pinned to the edge, and a dropped
//! client cancelling its upstream request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown
)]

use crate::common;

use common::edge::EdgeWorker;
use common::harness::{
    chat_body, cloud_backend, edge_and_cloud, edge_backend, header, mock_cloud, preferred_cloud,
    sse_data, tenant_and_key, test_config, EdgeSetup, Gateway,
};
use futures::StreamExt;
use gateway::privacy::{Class, RuleSpec};
use gateway::routing::Policy;
use gateway::store::LedgerStatus;
use serde_json::{json, Value};

async fn edge_when_idle(db: common::TestDb) {
    // `edge: _edge` keeps the worker process alive to the end of the test.
    let EdgeSetup {
        edge: _edge,
        mock,
        gw,
        key,
        ..
    } = edge_and_cloud(db, &[], |url| cloud_backend("cloud", url), test_config()).await;

    let r = gw.chat(&key, &chat_body("Say hi.", 8)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "edge");
    assert_eq!(header(&r, "x-gateway-route-reason"), "lowest_score");
    let id = header(&r, "x-gateway-ledger-id").to_owned();
    let body: Value = r.json().await.unwrap();
    let energy = body["usage"]["energy_joules"].as_f64().unwrap();
    let row = gw.row(&id).await;
    assert_eq!(row.status, LedgerStatus::Ok);
    assert_eq!(
        row.completion_tokens,
        body["usage"]["completion_tokens"]
            .as_u64()
            .map(|n| n as u32)
    );
    assert!(
        (row.joules.unwrap() - energy).abs() < 1e-9,
        "joules come from the edge's usage"
    );
    assert_eq!(row.usd, Some(0.0));
    assert!(row.predicted_energy_j.unwrap() > 0.0 && row.ttft_ms.is_some());

    let mut body = chat_body("Say hi.", 8);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = gw.chat(&key, &body).await;
    assert_eq!(header(&r, "x-gateway-backend"), "edge");
    let id = header(&r, "x-gateway-ledger-id").to_owned();
    let data = sse_data(r).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(
        usage["usage"]["energy_joules"].as_f64().is_some(),
        "{usage}"
    );
    let row = gw.row(&id).await;
    assert_eq!((row.status, row.stream), (LedgerStatus::Ok, true));
    assert_eq!(
        row.completion_tokens,
        usage["usage"]["completion_tokens"]
            .as_u64()
            .map(|n| n as u32)
    );

    let counts = gw.ledger_counts(2).await;
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&2));
    assert_eq!(
        mock.stats().requests_total,
        0,
        "nothing should reach the cloud"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn edge_when_idle_on_sqlite() {
    edge_when_idle(common::sqlite().await).await;
}

#[tokio::test]
async fn edge_when_idle_on_postgres() {
    edge_when_idle(common::postgres().await).await;
}

#[tokio::test]
async fn cloud_when_the_edge_would_break_the_slo() {
    let fast_cloud = |url: &str| {
        let mut cloud = cloud_backend("cloud", url);
        cloud.rtt_ms = 1.0;
        cloud.prefill_tps = 1e6;
        cloud.decode_tps = 1e5;
        cloud
    };
    let EdgeSetup {
        edge: _edge,
        mock,
        gw,
        tenant,
        key,
        ..
    } = edge_and_cloud(common::sqlite().await, &[], fast_cloud, test_config()).await;
    // 16 tokens at the edge's few dozen tokens/s take far longer than 50 ms.
    let policy = Policy {
        latency_slo_ms: 50.0,
        ..Policy::default()
    };
    gw.store().set_policy(&tenant, &policy).await.unwrap();

    let r = gw.chat(&key, &chat_body("Say hi.", 16)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "cloud");
    assert_eq!(header(&r, "x-gateway-route-reason"), "edge_over_slo");
    let row = gw.row(header(&r, "x-gateway-ledger-id")).await;
    let decision = row.decision.unwrap().value().unwrap();
    assert_eq!(decision["fallbacks"][0]["backend"], "edge");
    assert_eq!(decision["fallbacks"][0]["meets_slo"], false);
    assert_eq!(mock.stats().requests_total, 1);
    assert_eq!(gw.ledger_counts(1).await.get(&LedgerStatus::Ok), Some(&1));
    gw.shutdown().await;
}

#[tokio::test]
async fn saturated_edge_overflows_to_cloud_and_a_dropped_client_cancels() {
    let EdgeSetup {
        edge: _edge,
        mock: _mock,
        gw,
        edge_id,
        tenant,
        key,
    } = edge_and_cloud(
        common::sqlite().await,
        &["--max-running", "1", "--max-waiting", "0"],
        |url| cloud_backend("cloud", url),
        test_config(),
    )
    .await;
    // A long holder must still be predicted within the SLO on the edge.
    let policy = Policy {
        latency_slo_ms: 600_000.0,
        ..Policy::default()
    };
    gw.store().set_policy(&tenant, &policy).await.unwrap();

    // Hold the edge's only slot with a stream; greedy decoding of this
    // prompt runs on for many tokens, and the stream is dropped below long
    // before its bound.
    let mut holder = chat_body("Write a very long story about a dragon.", 400);
    holder["stream"] = json!(true);
    let r = gw.chat(&key, &holder).await;
    assert_eq!(header(&r, "x-gateway-backend"), "edge");
    let holder_id = header(&r, "x-gateway-ledger-id").to_owned();
    let mut chunks = r.bytes_stream();
    chunks.next().await.unwrap().unwrap();
    gw.wait_live(&edge_id, |l| {
        l.load
            .as_ref()
            .is_some_and(gateway::routing::WorkerLoad::saturated)
    })
    .await;

    let r = gw.chat(&key, &chat_body("Say hi.", 8)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "cloud");
    assert_eq!(header(&r, "x-gateway-route-reason"), "edge_saturated");

    // The client goes away: the gateway drops its upstream request, which
    // frees the edge's slot, and records the tokens relayed so far.
    chunks.next().await.unwrap().unwrap();
    drop(chunks);
    gw.wait_live(&edge_id, |l| {
        l.load.as_ref().is_some_and(|l| l.active_sequences == 0)
    })
    .await;
    let counts = gw.ledger_counts(2).await;
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&1));
    assert_eq!(counts.get(&LedgerStatus::Cancelled), Some(&1));
    let row = gw.row(&holder_id).await;
    assert_eq!(row.status, LedgerStatus::Cancelled);
    assert!(row.completion_tokens.unwrap() >= 1, "{row:?}");
    assert!(row.prompt_tokens.unwrap() >= 1 && row.joules.unwrap() > 0.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn confidential_stays_on_the_edge_and_gets_503_without_it() {
    let mut edge = EdgeWorker::start(&[]).await;
    let mock = mock_cloud().await;
    let db = common::sqlite().await;
    let e = db
        .store
        .add_backend(&edge_backend("edge", &edge.base))
        .await
        .unwrap();
    db.store
        .add_backend(&preferred_cloud("cloud", &mock.base_url()))
        .await
        .unwrap();
    // Every builtin detector is confidential by default (no rule rows);
    // the operator adds a code name of their own.
    let codename = RuleSpec::Regex {
        name: "codename".into(),
        pattern: r"(?i)\bproject bluebird\b".into(),
        class: Class::Confidential,
    };
    db.store.add_privacy_rule(None, &codename).await.unwrap();
    let gw = Gateway::start(db, test_config()).await;
    gw.wait_live(&e.id, |l| l.load.is_some()).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;

    // A public request prefers the cloud here, so staying on the edge is
    // the privacy rule at work, not the cost model.
    let r = gw.chat(&key, &chat_body("Say hi.", 4)).await;
    assert_eq!(header(&r, "x-gateway-backend"), "cloud");
    assert_eq!(mock.stats().requests_total, 1);

    // (prompt, detector expected to fire); the last two are tagged instead.
    let cases = [
        ("Write to ana@example.com", Some("email")),
        ("Call +44 20 7946 0958", Some("phone")),
        ("Card 4111 1111 1111 1111", Some("card")),
        ("IBAN GB82 WEST 1234 5698 7654 32", Some("iban")),
        ("Ping 10.20.30.40", Some("ip_address")),
        ("key AKIAIOSFODNN7EXAMPLE", Some("secret")),
        ("Status of Project Bluebird?", Some("codename")),
        ("Say hi. (header tag)", None),
        ("Say hi. (metadata tag)", None),
    ];
    for (prompt, detector) in cases {
        let mut body = chat_body(prompt, 2);
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if prompt.ends_with("(metadata tag)") {
            body["metadata"] = json!({"privacy_class": "confidential"});
        }
        if prompt.ends_with("(header tag)") {
            headers.push(("x-privacy-class", "confidential"));
        }
        let r = gw.chat_with(&key, &body, &headers).await;
        assert_eq!(r.status(), 200, "{prompt}");
        assert_eq!(header(&r, "x-gateway-backend"), "edge", "{prompt}");
        assert_eq!(
            header(&r, "x-gateway-privacy-class"),
            "confidential",
            "{prompt}"
        );
        let row = gw.row(header(&r, "x-gateway-ledger-id")).await;
        assert_eq!(row.privacy_class, Class::Confidential);
        if let Some(d) = detector {
            assert!(
                row.detectors.iter().any(|f| f == d),
                "{prompt}: {:?}",
                row.detectors
            );
        }
        assert!(
            !serde_json::to_string(&row).unwrap().contains(prompt),
            "ledger holds the text"
        );
    }
    assert_eq!(
        mock.stats().requests_total,
        1,
        "a confidential request reached the cloud"
    );
    confidential_metrics_stay_on_prem(&gw).await;

    without_the_edge(&gw, &mut edge, &e.id, &key, &mock).await;
    let counts = gw.ledger_counts(12).await;
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&10));
    let failed = counts.get(&LedgerStatus::Error).unwrap_or(&0)
        + counts.get(&LedgerStatus::Rejected).unwrap_or(&0);
    assert_eq!(failed, 2);
    gw.shutdown().await;
}

/// What an operator sees from the outside: requests per privacy class and
/// backend zone, none of them confidential in the cloud, and the edge's
/// reported energy added up.
async fn confidential_metrics_stay_on_prem(gw: &Gateway) {
    let text = gw.metrics().await;
    let confidential: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("gateway_requests_total{") && l.contains(r#"class="confidential""#)
        })
        .collect();
    assert!(
        confidential
            .iter()
            .any(|l| l.contains(r#"zone="on_prem""#) && l.contains(r#"backend="edge""#)),
        "{confidential:?}"
    );
    assert!(
        !confidential.iter().any(|l| l.contains(r#"zone="cloud""#)),
        "{confidential:?}"
    );
    // The edge reports joules per answer; the gateway adds them up.
    let edge_mj: f64 = text
        .lines()
        .find(|l| {
            l.starts_with("gateway_energy_millijoules_total{") && l.contains(r#"backend="edge""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(edge_mj > 0.0, "no edge energy in /metrics");
}

/// Without the edge there is no private route, and still nothing reaches
/// the cloud. Right after the kill the gateway may still believe the edge
/// is up (the attempt fails), or the poller may have noticed (routing
/// refuses): both must be a 503 `privacy_route_unavailable`.
async fn without_the_edge(
    gw: &Gateway,
    edge: &mut EdgeWorker,
    edge_id: &str,
    key: &str,
    mock: &loadtest::mock_cloud::MockCloud,
) {
    edge.kill();
    let r = gw
        .chat(key, &chat_body("Write to ana@example.com", 2))
        .await;
    assert_eq!(r.status(), 503);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "privacy_route_unavailable");
    gw.wait_live(edge_id, |l| l.failures >= 2).await;
    let tag = [("x-privacy-class", "confidential")];
    let r = gw.chat_with(key, &chat_body("Say hi.", 2), &tag).await;
    assert_eq!(r.status(), 503);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "privacy_route_unavailable");
    assert_eq!(
        mock.stats().requests_total,
        1,
        "a confidential request reached the cloud"
    );
}
