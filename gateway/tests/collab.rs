//! Hedging and cascade: a real edge worker, the mock cloud, and the policy
//! switches. Each changes the route in the cases it should, leaves it alone
//! otherwise, never acts for a confidential request, and leaves its trace
//! in the request's ledger row.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::{Duration, Instant};

use common::edge::EdgeWorker;
use common::harness::{
    chat_body, cloud_backend, edge_and_cloud, header, sse_data, test_config, EdgeSetup, Gateway,
};
use gateway::config::Config;
use gateway::routing::Policy;
use loadtest::mock_cloud::MockCloud;
use serde_json::{json, Value};

async fn setup(policy: Policy, config: Config) -> (EdgeWorker, MockCloud, Gateway, String) {
    let EdgeSetup {
        edge,
        mock,
        gw,
        tenant,
        key,
        ..
    } = edge_and_cloud(
        common::sqlite().await,
        &[],
        |url| cloud_backend("cloud", url),
        config,
    )
    .await;
    gw.store().set_policy(&tenant, &policy).await.unwrap();
    // The settings cache lasts 100 ms in tests.
    tokio::time::sleep(Duration::from_millis(150)).await;
    (edge, mock, gw, key)
}

fn hedged(margin_ms: f64) -> Policy {
    Policy {
        hedge_margin_ms: Some(margin_ms),
        // Patient: the edge is the choice even when it is slow.
        latency_slo_ms: 60_000.0,
        ..Policy::default()
    }
}

/// A worker that accepted the request and then froze (SIGSTOP: the
/// connection stays open, nothing comes): the hedge starts in the cloud at
/// the predicted first byte plus the margin, and the cloud's answer wins
/// long before the 30 s first-byte timeout would have failed over.
#[tokio::test]
async fn a_stalled_edge_is_hedged_to_the_cloud() {
    let (edge, mock, gw, key) = setup(hedged(300.0), test_config()).await;
    edge.signal("STOP");
    let started = Instant::now();
    let mut body = chat_body("Say hello.", 4);
    body["stream"] = json!(true);
    let r = gw.chat(&key, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "cloud");
    assert_eq!(header(&r, "x-gateway-route-reason"), "hedge");
    let ledger_id = header(&r, "x-gateway-ledger-id").to_owned();
    let events = sse_data(r).await;
    let elapsed = started.elapsed();
    edge.signal("CONT");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert_eq!(mock.stats().requests_total, 1);
    let row = gw.row(&ledger_id).await;
    assert_eq!(row.backend.as_deref(), Some("cloud"));
    assert_eq!(row.route_reason.as_deref(), Some("hedge"));
    let hedge = &decision(&row)["hedge"];
    assert_eq!(hedge["started"], true, "{hedge}");
    assert_eq!(hedge["winner"], "cloud", "{hedge}");
    assert!(hedge["after_ms"].as_f64().unwrap() >= 300.0, "{hedge}");
    // The cancelled edge attempt's energy is the row's too: the cloud's own
    // is 0 joules a token here, so the row's energy is the loser's alone.
    let loser_joules = hedge["loser_joules"].as_f64().unwrap();
    assert!(loser_joules > 0.0, "{hedge}");
    assert!((row.joules.unwrap() - loser_joules).abs() < 1e-9, "{row:?}");
    gw.shutdown().await;
}

/// The same stalled worker with a confidential request: no hedge, nothing
/// reaches the cloud; the request waits for the worker's first-byte
/// timeout and is refused for want of a private route.
#[tokio::test]
async fn a_confidential_request_is_never_hedged() {
    let config = Config {
        upstream_first_byte_timeout_ms: 2_000,
        ..test_config()
    };
    let (edge, mock, gw, key) = setup(hedged(0.0), config).await;
    edge.signal("STOP");
    let mut body = chat_body("Say hello.", 4);
    body["stream"] = json!(true);
    let r = gw
        .chat_with(&key, &body, &[("x-privacy-class", "confidential")])
        .await;
    edge.signal("CONT");
    assert_eq!(r.status(), 503);
    let ledger_id = header(&r, "x-gateway-ledger-id").to_owned();
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "privacy_route_unavailable", "{err}");
    assert_eq!(mock.stats().requests_total, 0);
    let row = gw.row(&ledger_id).await;
    assert!(decision(&row).get("hedge").is_none());
    gw.shutdown().await;
}

/// A worker that answers within its prediction and the margin is not
/// hedged: the cloud gets nothing and the row has no hedge.
#[tokio::test]
async fn a_prompt_edge_answer_is_not_hedged() {
    let (_edge, mock, gw, key) = setup(hedged(20_000.0), test_config()).await;
    let r = gw.chat(&key, &chat_body("Say hello.", 4)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "edge");
    let ledger_id = header(&r, "x-gateway-ledger-id").to_owned();
    assert_eq!(mock.stats().requests_total, 0);
    let row = gw.row(&ledger_id).await;
    assert!(decision(&row).get("hedge").is_none());
    gw.shutdown().await;
}

fn cascading(threshold: f64) -> Policy {
    Policy {
        cascade_min_logprob: Some(threshold),
        latency_slo_ms: 60_000.0,
        ..Policy::default()
    }
}

/// A threshold no real answer meets (its tokens would all need probability
/// 1): the edge answers first, with log-probabilities, and the request is
/// escalated; the client gets the cloud's answer and no log-probabilities
/// it did not ask for; the row keeps the edge's confidence and usage.
#[tokio::test]
async fn a_low_confidence_edge_answer_is_escalated_to_the_cloud() {
    let (_edge, mock, gw, key) = setup(cascading(-1e-9), test_config()).await;
    let r = gw.chat(&key, &chat_body("Name a colour.", 8)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "cloud");
    assert_eq!(header(&r, "x-gateway-route-reason"), "cascade");
    let ledger_id = header(&r, "x-gateway-ledger-id").to_owned();
    let answer: Value = r.json().await.unwrap();
    assert!(answer["choices"][0]["logprobs"].is_null(), "{answer}");
    assert_eq!(mock.stats().requests_total, 1);
    let row = gw.row(&ledger_id).await;
    let cascade = &decision(&row)["cascade"];
    assert_eq!(cascade["escalated"], true, "{cascade}");
    assert!(cascade["mean_logprob"].as_f64().unwrap() < 0.0, "{cascade}");
    assert!(
        cascade["edge_usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{cascade}"
    );
    // The edge's answer, not shown, was spent all the same: its energy is
    // the row's (the cloud's own is 0 joules a token here).
    let edge_joules = cascade["edge_joules"].as_f64().unwrap();
    assert!(edge_joules > 0.0, "{cascade}");
    assert!((row.joules.unwrap() - edge_joules).abs() < 1e-9, "{row:?}");
    gw.shutdown().await;
}

/// A threshold every answer meets: the edge's answer is kept, without the
/// log-probabilities the gateway asked for, or with them when the client
/// asked; nothing reaches the cloud.
#[tokio::test]
async fn a_confident_edge_answer_is_kept() {
    let (_edge, mock, gw, key) = setup(cascading(-1000.0), test_config()).await;
    let r = gw.chat(&key, &chat_body("Name a colour.", 8)).await;
    assert_eq!(header(&r, "x-gateway-backend"), "edge");
    let ledger_id = header(&r, "x-gateway-ledger-id").to_owned();
    let answer: Value = r.json().await.unwrap();
    assert!(answer["choices"][0]["logprobs"].is_null(), "{answer}");
    let row = gw.row(&ledger_id).await;
    let cascade = &decision(&row)["cascade"];
    assert_eq!(cascade["escalated"], false, "{cascade}");
    assert!(
        cascade["mean_logprob"].as_f64().unwrap() <= 0.0,
        "{cascade}"
    );

    let mut asked = chat_body("Name a colour.", 8);
    asked["logprobs"] = json!(true);
    let answer: Value = gw.chat(&key, &asked).await.json().await.unwrap();
    let tokens = answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert!(!tokens.is_empty(), "{answer}");
    assert_eq!(mock.stats().requests_total, 0);
    gw.shutdown().await;
}

/// Confidential requests and streams are never cascaded, whatever the
/// threshold.
#[tokio::test]
async fn confidential_requests_and_streams_are_not_cascaded() {
    let (_edge, mock, gw, key) = setup(cascading(-1e-9), test_config()).await;
    let r = gw
        .chat_with(
            &key,
            &chat_body("Name a colour.", 8),
            &[("x-privacy-class", "confidential")],
        )
        .await;
    assert_eq!(header(&r, "x-gateway-backend"), "edge");
    let ledger_id = header(&r, "x-gateway-ledger-id").to_owned();
    let answer: Value = r.json().await.unwrap();
    assert!(answer["choices"][0]["logprobs"].is_null(), "{answer}");
    let row = gw.row(&ledger_id).await;
    assert!(decision(&row).get("cascade").is_none());

    let mut body = chat_body("Name a colour.", 8);
    body["stream"] = json!(true);
    let r = gw.chat(&key, &body).await;
    assert_eq!(header(&r, "x-gateway-backend"), "edge");
    let ledger_id = header(&r, "x-gateway-ledger-id").to_owned();
    // The row is written when the stream ends.
    assert_eq!(sse_data(r).await.last().map(String::as_str), Some("[DONE]"));
    let row = gw.row(&ledger_id).await;
    assert!(decision(&row).get("cascade").is_none());
    assert_eq!(mock.stats().requests_total, 0);
    gw.shutdown().await;
}

/// The row's decision as a JSON tree.
fn decision(row: &gateway::store::LedgerEntry) -> Value {
    row.decision
        .as_ref()
        .and_then(gateway::store::DecisionJson::value)
        .expect("a decision")
}
