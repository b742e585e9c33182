//! Secret canaries: the gateway runs with logs at trace level, a canary
//! gateway key, a canary upstream key and a canary worker token, through
//! successes, bad keys, upstream errors that quote the key, failover and
//! broken streams. Then every log line, response body and header,
//! `/metrics` and every ledger row is searched for the canaries: none may
//! appear anywhere.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown
)]

use crate::common;

use common::harness::{tenant_and_key, test_config, Gateway};
use common::stand_in::{backend, Mode, StandIn};
use gateway::config::Config;
use gateway::routing::Zone;
use secrecy::SecretString;
use serde_json::json;

const UPSTREAM_KEY: &str = "sk-canary-upstream-5f0c9e1d2b3a4f6e7d8c";
const WORKER_TOKEN: &str = "wt-canary-worker-8a7b6c5d4e3f2a1b0c9d";
const WRONG_KEY: &str = "gw-canary-wrong-key-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_errors_metrics_or_the_ledger() {
    let logs = common::logs::capture();
    // The variable the cloud backend names, named for this test alone: the
    // test process's environment is shared.
    std::env::set_var("CANARY_CLOUD_KEY", UPSTREAM_KEY);

    let edge = StandIn::start().await;
    let cloud = StandIn::start().await;
    let db = common::sqlite().await;
    db.store
        .add_backend(&backend("edge", &edge.url, Zone::OnPrem, 0.0))
        .await
        .unwrap();
    let mut cloud_backend = backend("cloud", &cloud.url, Zone::Cloud, 1.0);
    cloud_backend.api_key_env = Some("CANARY_CLOUD_KEY".to_owned());
    db.store.add_backend(&cloud_backend).await.unwrap();
    let config = Config {
        settings_cache_ms: 0,
        upstream_first_byte_timeout_ms: 500,
        upstream_idle_timeout_ms: 500,
        worker_token: Some(SecretString::from(WORKER_TOKEN)),
        ..test_config()
    };
    let gw = Gateway::start(db, config).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    let mut seen = String::new();
    let send = |b: serde_json::Value, k: String| {
        let gw = &gw;
        async move {
            let r = gw.chat(&k, &b).await;
            let headers = format!("{:?}", r.headers());
            format!("{headers}\n{}", r.text().await.unwrap())
        }
    };
    let plain =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let stream = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": true});

    // The edge serves, then fails before its first token (failover to the
    // cloud, which gets the upstream key), then the cloud answers 401 with
    // a body quoting the key, then streams break.
    seen += &send(plain.clone(), key.clone()).await;
    seen += &send(stream.clone(), key.clone()).await;
    edge.set(Mode::ErrorFirst);
    seen += &send(stream.clone(), key.clone()).await;
    let quoting = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {UPSTREAM_KEY}","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#
    );
    cloud.set(Mode::Status(401, quoting.clone()));
    seen += &send(plain.clone(), key.clone()).await;
    cloud.set(Mode::Status(400, quoting.clone()));
    seen += &send(plain.clone(), key.clone()).await;
    // The same quoted mid-stream, after the first token.
    cloud.set(Mode::ErrorAfterFirst(quoting));
    let mid = send(stream.clone(), key.clone()).await;
    assert!(mid.contains("The upstream failed mid-answer."), "{mid}");
    assert!(mid.contains("invalid_api_key"), "{mid}");
    seen += &mid;
    edge.set(Mode::DieAfterFirst);
    seen += &send(stream.clone(), key.clone()).await;
    seen += &send(plain.clone(), WRONG_KEY.to_owned()).await;
    seen += &send(plain.clone(), format!("{key}x")).await;
    seen += &gw.metrics().await;
    gw.state.ledger.flush().await;
    let rows = gw.store().recent_ledger(None, 100).await.unwrap();
    assert!(rows.len() >= 6, "{} rows", rows.len());
    seen += &serde_json::to_string(&rows).unwrap();

    // The canaries did travel where they belong: the upstream key to the
    // cloud, the worker token to the edge.
    let auth = |up: &StandIn| {
        up.headers()
            .iter()
            .filter_map(|h| {
                h.get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned())
            })
            .collect::<Vec<_>>()
    };
    assert!(auth(&cloud).contains(&format!("Bearer {UPSTREAM_KEY}")));
    assert!(auth(&edge).contains(&format!("Bearer {WORKER_TOKEN}")));

    gw.shutdown().await;
    let logs = logs.text();
    assert!(logs.lines().count() > 20, "trace logging captured nothing");
    let everything = format!("{logs}\n{seen}");
    for canary in [key.as_str(), UPSTREAM_KEY, WORKER_TOKEN, WRONG_KEY] {
        // Whole secrets, and their distinctive middle (what a truncating
        // formatter would keep).
        let middle = &canary[6..canary.len() - 4];
        assert!(
            !everything.contains(middle),
            "a secret leaked: {}",
            everything
                .lines()
                .find(|l| l.contains(middle))
                .unwrap_or_default()
        );
    }
}
