//! Promises of the README that no other test held the gateway to, each
//! checked over HTTP against scripted stand-in upstreams: the scope check,
//! the gateway's own context check, the `slo_fallback` reason, the request
//! id an upstream sees, the cost counter, the tenant policy's default class,
//! key expiry and tokens/min, the admin CLI on a running gateway, and the
//! ledger flushed by a graceful shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown
)]

use crate::common;

use std::time::Duration;

use common::harness::{error_of, header, tenant_and_key, test_config, Gateway, WAIT};
use common::process::admin;
use common::stand_in::{backend, Mode, StandIn};
use gateway::config::Config;
use gateway::privacy::Class;
use gateway::routing::{Policy, Zone};
use gateway::store::{now_ms, LedgerStatus};
use serde_json::{json, Value};

fn body(max_tokens: u32) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
           "max_tokens": max_tokens})
}

/// A gateway over one cloud-zone stand-in named `name`, priced at `price`
/// USD per 1000 tokens each way.
async fn one_cloud(config: Config, name: &str, price: f64) -> (Gateway, StandIn) {
    let up = StandIn::start().await;
    let db = common::sqlite().await;
    db.store
        .add_backend(&backend(name, &up.url, Zone::Cloud, price))
        .await
        .unwrap();
    (Gateway::start(db, config).await, up)
}

fn code(err: &Value) -> Option<&str> {
    err["error"]["code"].as_str()
}

#[tokio::test]
async fn a_key_without_the_chat_scope_gets_403_and_leaves_no_row() {
    let (gw, up) = one_cloud(test_config(), "cloud", 1.0).await;
    let (_, models_only) = tenant_and_key(gw.store(), |k| k.scopes = vec!["models".into()]).await;
    let (status, err) = error_of(gw.chat(&models_only, &body(4)).await).await;
    assert_eq!((status, code(&err)), (403, Some("permission_denied")));
    assert_eq!(err["error"]["type"], "permission_error");
    // The same key may still list models: the scope is per endpoint.
    let r = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth(&models_only)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 0);
    assert_eq!(
        gw.state.ledger.enqueued(),
        0,
        "a refused key is not admitted"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_larger_than_every_context_gets_400_without_reaching_upstream() {
    let up = StandIn::start().await;
    let db = common::sqlite().await;
    let mut small = backend("small", &up.url, Zone::Cloud, 1.0);
    small.context_length = 64;
    db.store.add_backend(&small).await.unwrap();
    let gw = Gateway::start(db, test_config()).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    // Fits: a short prompt and 16 tokens out.
    assert_eq!(gw.chat(&key, &body(16)).await.status(), 200);
    // Asks for more output than the only backend's whole context.
    let r = gw.chat(&key, &body(100)).await;
    let ledger_id = header(&r, "x-gateway-ledger-id").to_owned();
    let (status, err) = error_of(r).await;
    assert_eq!((status, code(&err)), (400, Some("context_length_exceeded")));
    assert_eq!(err["error"]["param"], "messages");
    assert_eq!(up.count(), 1, "the refused request reached the upstream");
    let row = gw.row(&ledger_id).await;
    assert_eq!(row.status, LedgerStatus::Rejected);
    assert_eq!(row.error_code.as_deref(), Some("context_length_exceeded"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_cannot_keep_the_slo_serves_as_slo_fallback() {
    let (gw, _up) = one_cloud(test_config(), "cloud", 1.0).await;
    let (tenant, key) = tenant_and_key(gw.store(), |_| {}).await;
    let (_, relaxed) = tenant_and_key(gw.store(), |_| {}).await;
    // No backend can answer within a microsecond.
    let strict = Policy {
        latency_slo_ms: 0.001,
        ..Policy::default()
    };
    gw.store().set_policy(&tenant, &strict).await.unwrap();
    let r = gw.chat(&key, &body(4)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-route-reason"), "slo_fallback");
    let row = gw.row(header(&r, "x-gateway-ledger-id")).await;
    assert_eq!(row.route_reason.as_deref(), Some("slo_fallback"));
    // The default SLO is kept by the same backend: the reason says so.
    let r = gw.chat(&relaxed, &body(4)).await;
    assert_eq!(header(&r, "x-gateway-route-reason"), "only_candidate");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_upstream_sees_the_ledger_id_as_request_id_never_the_clients() {
    let (gw, up) = one_cloud(test_config(), "cloud", 1.0).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    for stream in [false, true] {
        let mut b = body(4);
        b["stream"] = json!(stream);
        let r = gw
            .chat_with(&key, &b, &[("x-request-id", "client-id-7")])
            .await;
        assert_eq!(r.status(), 200);
        // The client gets its own id back ...
        assert_eq!(header(&r, "x-request-id"), "client-id-7");
        let ledger_id = header(&r, "x-gateway-ledger-id").to_owned();
        let _ = r.bytes().await;
        // ... and the upstream the ledger's, so its logs join the ledger.
        let sent = up.headers().pop().unwrap();
        assert_eq!(sent["x-request-id"].to_str().unwrap(), ledger_id);
        assert_ne!(ledger_id, "client-id-7");
    }
    gw.shutdown().await;
}

/// The sum of `name`'s series labelled `backend="<backend>"`.
fn counter(metrics: &str, name: &str, backend: &str) -> f64 {
    let label = format!("backend=\"{backend}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_cost_counter_moves_by_the_cost_of_a_known_request() {
    // A backend name of its own: the recorder is shared by the process.
    let name = format!("priced-{}", uuid::Uuid::new_v4().simple());
    let (gw, _up) = one_cloud(test_config(), &name, 1.0).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    let cost = "gateway_cost_microusd_total";
    let before = counter(&gw.metrics().await, cost, &name);
    let r = gw.chat(&key, &body(4)).await;
    assert_eq!(r.status(), 200);
    let row = gw.row(header(&r, "x-gateway-ledger-id")).await;
    // The stand-in reports 3 prompt and 1 completion tokens; at 1 USD per
    // 1000 tokens each way that is 0.004 USD, 4000 micro-USD.
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens),
        (Some(3), Some(1))
    );
    assert!((row.usd.unwrap() - 0.004).abs() < 1e-12, "{:?}", row.usd);
    let after = counter(&gw.metrics().await, cost, &name);
    assert!(
        (after - before - 4000.0).abs() < 0.5,
        "{cost} moved by {}",
        after - before
    );
    assert!(gw.metrics().await.lines().any(|l| l.starts_with(cost)
        && l.contains(&format!("backend=\"{name}\""))
        && l.contains("zone=\"cloud\"")));
    gw.shutdown().await;
}

#[tokio::test]
async fn the_tenant_policys_default_class_raises_a_public_key() {
    let (gw, _up) = one_cloud(test_config(), "cloud", 1.0).await;
    let (tenant, key) = tenant_and_key(gw.store(), |k| k.default_class = Class::Public).await;
    let raised = Policy {
        default_class: Class::Internal,
        ..Policy::default()
    };
    gw.store().set_policy(&tenant, &raised).await.unwrap();
    let r = gw.chat(&key, &body(4)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-privacy-class"), "internal");
    let row = gw.row(header(&r, "x-gateway-ledger-id")).await;
    assert_eq!(row.privacy_class, Class::Internal);
    // A request's own tag cannot lower it.
    let r = gw
        .chat_with(&key, &body(4), &[("x-privacy-class", "public")])
        .await;
    assert_eq!(header(&r, "x-gateway-privacy-class"), "internal");

    // Confidential by policy: the cloud is out of reach for the tenant.
    let (tenant, key) = tenant_and_key(gw.store(), |_| {}).await;
    let sealed = Policy {
        default_class: Class::Confidential,
        ..Policy::default()
    };
    gw.store().set_policy(&tenant, &sealed).await.unwrap();
    let (status, err) = error_of(gw.chat(&key, &body(4)).await).await;
    assert_eq!(
        (status, code(&err)),
        (503, Some("privacy_route_unavailable"))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_expired_key_is_refused_even_from_the_key_cache() {
    // A minute-long key cache: only the expiry check explains a refusal.
    let config = Config {
        key_cache_ms: 60_000,
        ..test_config()
    };
    let (gw, up) = one_cloud(config, "cloud", 1.0).await;
    let (_, expired) = tenant_and_key(gw.store(), |k| k.expires_at = Some(now_ms() - 1)).await;
    let (status, err) = error_of(gw.chat(&expired, &body(4)).await).await;
    assert_eq!((status, code(&err)), (401, Some("invalid_api_key")));

    let deadline = now_ms() + 2_000;
    let (_, expiring) = tenant_and_key(gw.store(), |k| k.expires_at = Some(deadline)).await;
    assert_eq!(gw.chat(&expiring, &body(4)).await.status(), 200);
    // Waits for the key's own deadline, not for a cache.
    let left = u64::try_from(deadline + 20 - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(left)).await;
    let (status, err) = error_of(gw.chat(&expiring, &body(4)).await).await;
    assert_eq!((status, code(&err)), (401, Some("invalid_api_key")));
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn tokens_per_minute_give_429_with_retry_after() {
    let (gw, up) = one_cloud(test_config(), "cloud", 1.0).await;
    let (_, key) = tenant_and_key(gw.store(), |k| k.tokens_per_min = Some(100)).await;
    // About 60 tokens each (the prompt estimate plus max_tokens): the
    // first fits the minute's 100, the second does not.
    assert_eq!(gw.chat(&key, &body(60)).await.status(), 200);
    let r = gw.chat(&key, &body(60)).await;
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(r.headers().get("x-should-retry").is_none(), "waiting helps");
    let ledger_id = header(&r, "x-gateway-ledger-id").to_owned();
    let (status, err) = error_of(r).await;
    assert_eq!((status, code(&err)), (429, Some("rate_limit_exceeded")));
    assert_eq!(up.count(), 1);
    assert_eq!(gw.row(&ledger_id).await.status, LedgerStatus::Rejected);
    // A request that alone needs more than the whole minute's tokens can
    // never pass: no Retry-After, and the SDKs are told not to retry.
    let r = gw.chat(&key, &body(500)).await;
    assert!(r.headers().get("retry-after").is_none());
    assert_eq!(header(&r, "x-should-retry"), "false");
    let (status, err) = error_of(r).await;
    assert_eq!((status, code(&err)), (429, Some("rate_limit_exceeded")));
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

/// Sends `body` with `key` until the answer's status is `want`; fails
/// past [`WAIT`].
async fn until_status(gw: &Gateway, key: &str, want: u16) {
    let waited = tokio::time::timeout(WAIT, async {
        while gw.chat(key, &body(4)).await.status() != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never answered {want}");
}

#[tokio::test]
async fn key_revoke_and_backend_remove_through_the_cli_reach_a_running_gateway() {
    let db = common::postgres().await;
    let url = db.postgres_url().unwrap();
    let up = StandIn::start().await;
    db.store
        .add_backend(&backend("doomed", &up.url, Zone::Cloud, 1.0))
        .await
        .unwrap();
    let config = Config {
        key_cache_ms: 200,
        settings_cache_ms: 100,
        ..test_config()
    };
    let gw = Gateway::start(db, config).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    let (_, other) = tenant_and_key(gw.store(), |_| {}).await;
    let id = gw
        .store()
        .key_by_hash(&gateway::keys::hash(&key))
        .await
        .unwrap()
        .unwrap()
        .id;
    assert_eq!(gw.chat(&key, &body(4)).await.status(), 200);

    admin(&url, &["key", "revoke", &id]);
    until_status(&gw, &key, 401).await;
    // Only that key: the tenant's other key is still served.
    assert_eq!(gw.chat(&other, &body(4)).await.status(), 200);

    admin(&url, &["backend", "remove", "doomed"]);
    until_status(&gw, &other, 404).await;
    let served = up.count();
    let (status, err) = error_of(gw.chat(&other, &body(4)).await).await;
    assert_eq!((status, code(&err)), (404, Some("model_not_found")));
    assert_eq!(up.count(), served, "a removed backend was still sent to");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_graceful_shutdown_stores_a_row_for_every_request_in_flight() {
    const N: usize = 8;
    let (gw, up) = one_cloud(test_config(), "cloud", 1.0).await;
    up.set(Mode::Slow(Duration::from_millis(300)));
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    let url = gw.url("/v1/chat/completions");
    let requests: Vec<_> = (0..N)
        .map(|_| {
            let req = gw.client.post(&url).bearer_auth(&key).json(&body(4));
            tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
        })
        .collect();
    // Every request has reached the upstream: all are admitted and open.
    tokio::time::timeout(WAIT, async {
        while up.count() < N {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("requests never reached the upstream");
    let db = gw.shutdown().await;
    for r in requests {
        assert_eq!(r.await.unwrap(), 200, "an open request was cut");
    }
    let counts: Vec<(LedgerStatus, u64)> = db.store.count_ledger_by_status().await.unwrap();
    assert_eq!(counts, vec![(LedgerStatus::Ok, N as u64)]);
}

/// A budgeted request without `max_tokens` holds its worst case: an answer
/// running to the end of the context. So concurrent requests cannot spend
/// past the budget by more than one such worst case, and one that no longer
/// fits is told to set `max_tokens`.
#[tokio::test]
async fn a_budgeted_request_without_max_tokens_holds_the_whole_context() {
    // 1 USD per 1000 tokens each way and a context of 8192: the worst case
    // of an unbounded request is about 8.2 USD, of one with max_tokens 4
    // well under a cent.
    let (gw, up) = one_cloud(test_config(), "cloud", 1.0).await;
    let (_, key) = tenant_and_key(gw.store(), |k| k.budget_usd = Some(10.0)).await;
    let unbounded = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    // One unbounded request in flight holds ~8.2 of the 10 USD...
    up.set(Mode::StallAfterFirst);
    let mut first = gw
        .chat(
            &key,
            &json!({"model": "m", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(first.status(), 200);
    assert!(first.chunk().await.unwrap().is_some());
    up.set(Mode::Answer);
    // ...so a second unbounded one does not fit, and says why...
    let r = gw.chat(&key, &unbounded).await;
    assert_eq!(header(&r, "x-should-retry"), "false");
    let (status, err) = error_of(r).await;
    assert_eq!((status, code(&err)), (429, Some("insufficient_quota")));
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_tokens"), "{message}");
    // ...while a bounded one does.
    assert_eq!(gw.chat(&key, &body(4)).await.status(), 200);
    drop(first);
    // Once the first is settled (cancelled, a few tokens), its hold is
    // released and an unbounded request fits again.
    gw.ledger_counts(3).await;
    assert_eq!(gw.chat(&key, &unbounded).await.status(), 200);
    gw.shutdown().await;
}
