//! The edge worker process dying under the gateway: before the first byte
//! (the request fails over to the cloud) and mid-stream (the client's
//! stream ends with an OpenAI-shaped SSE error event, ledger `partial`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown
)]

use crate::common;

use common::harness::{chat_body, cloud_backend, edge_and_cloud, header, test_config, EdgeSetup};
use futures::StreamExt;
use gateway::store::LedgerStatus;
use serde_json::{json, Value};

#[tokio::test]
async fn failover_to_cloud_when_the_edge_dies_before_the_first_byte() {
    // One poll at start-up, then none: the gateway keeps believing the edge
    // is healthy, so the request really is sent there first.
    let mut config = test_config();
    config.poll_interval_ms = 3_600_000;
    let EdgeSetup {
        mut edge,
        mock,
        gw,
        edge_id,
        key,
        tenant: _,
    } = edge_and_cloud(
        common::sqlite().await,
        &[],
        |url| cloud_backend("cloud", url),
        config,
    )
    .await;
    let r = gw.chat(&key, &chat_body("Say hi.", 4)).await;
    assert_eq!(header(&r, "x-gateway-backend"), "edge");

    edge.kill();
    for stream in [false, true] {
        let mut body = chat_body("Say hi.", 4);
        body["stream"] = json!(stream);
        let r = gw.chat(&key, &body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-gateway-backend"), "cloud");
        assert_eq!(header(&r, "x-gateway-route-reason"), "failover");
        let id = header(&r, "x-gateway-ledger-id").to_owned();
        let _ = r.bytes().await.unwrap();
        let row = gw.row(&id).await;
        assert_eq!(
            (row.status, row.backend.as_deref()),
            (LedgerStatus::Ok, Some("cloud"))
        );
        assert_eq!(
            row.decision.unwrap().value().unwrap()["chosen"]["backend"],
            "edge"
        );
    }
    assert_eq!(mock.stats().requests_total, 2);
    assert!(
        gw.state.live.get(&edge_id).failures >= 1,
        "the failed connect counts against the edge"
    );
    let counts = gw.ledger_counts(3).await;
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&3));
    gw.shutdown().await;
}

#[tokio::test]
async fn sse_error_event_when_the_edge_dies_mid_stream() {
    let EdgeSetup {
        mut edge,
        mock,
        gw,
        key,
        edge_id: _,
        tenant: _,
    } = edge_and_cloud(
        common::sqlite().await,
        &[],
        |url| cloud_backend("cloud", url),
        test_config(),
    )
    .await;

    let mut body = chat_body("Write a very long story about a dragon.", 32);
    body["stream"] = json!(true);
    let r = gw.chat(&key, &body).await;
    assert_eq!(header(&r, "x-gateway-backend"), "edge");
    let id = header(&r, "x-gateway-ledger-id").to_owned();
    let mut chunks = r.bytes_stream();
    let mut text = String::new();
    while text.matches("data: ").count() < 2 {
        let chunk = chunks.next().await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    edge.kill();
    while let Some(chunk) = chunks.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|b| b.strip_prefix("data: "))
        .collect();
    assert!(!events.contains(&"[DONE]"), "{text}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{text}");
    for field in ["message", "type", "param"] {
        assert!(last["error"].get(field).is_some(), "{last}");
    }
    let row = gw.row(&id).await;
    assert_eq!(row.status, LedgerStatus::Partial);
    assert!(row.completion_tokens.unwrap() >= 1);
    assert_eq!(
        mock.stats().requests_total,
        0,
        "no failover after the first byte"
    );
    let counts = gw.ledger_counts(1).await;
    assert_eq!(counts.get(&LedgerStatus::Partial), Some(&1));
    gw.shutdown().await;
}
