//! The OpenAI surface against the in-process mock cloud (no model needed):
//! auth, errors, limits, models, request ids, metrics, and the ledger's one
//! row per admitted request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown
)]

use crate::common;

use common::edge::MODEL;
use common::harness::{
    chat_body, cloud_backend, error_of, header, mock_cloud, tenant_and_key, test_config, Gateway,
    CLOUD_PRICE_IN, CLOUD_PRICE_OUT,
};
use gateway::config::Config;
use gateway::http::LEDGER_HEADER;
use gateway::privacy::{Class, RuleSpec};
use gateway::routing::{Alias, AliasTarget};
use gateway::store::LedgerStatus;
use loadtest::mock_cloud::MockCloud;
use serde_json::{json, Value};

/// A gateway with the mock cloud as its only backend, on `db`.
async fn with_cloud(db: common::TestDb, mock: &MockCloud) -> Gateway {
    db.store
        .add_backend(&cloud_backend("cloud", &mock.base_url()))
        .await
        .unwrap();
    Gateway::start(db, test_config()).await
}

async fn chat_and_ledger_round_trip(db: common::TestDb) {
    let mock = mock_cloud().await;
    let gw = with_cloud(db, &mock).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;

    let r = gw.chat(&key, &chat_body("hello there", 8)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-gateway-backend"), "cloud");
    assert_eq!(header(&r, "x-gateway-route-reason"), "only_candidate");
    assert_eq!(header(&r, "x-gateway-privacy-class"), "public");
    let id = header(&r, "x-gateway-ledger-id").to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 8);

    let row = gw.row(&id).await;
    assert_eq!(row.status, LedgerStatus::Ok);
    assert_eq!(row.backend.as_deref(), Some("cloud"));
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens),
        (Some(4), Some(8))
    );
    let usd = row.usd.unwrap();
    assert!(
        (usd - (4.0 * CLOUD_PRICE_IN + 8.0 * CLOUD_PRICE_OUT) / 1000.0).abs() < 1e-12,
        "{usd}"
    );
    assert!(row.predicted_latency_ms.is_some() && row.latency_ms.is_some());
    assert_eq!(
        row.decision.as_ref().unwrap().value().unwrap()["chosen"]["backend"],
        "cloud"
    );

    let r = gw
        .chat(
            &key,
            &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    let (status, body) = error_of(r).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );

    let counts = gw.ledger_counts(2).await;
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&1));
    assert_eq!(counts.get(&LedgerStatus::Rejected), Some(&1));
    // The spend reached the key once the writer ran.
    let keys = gw.store().list_keys(None).await.unwrap();
    assert!((keys[0].spent_usd - usd).abs() < 1e-12);
    assert_eq!(mock.stats().requests_total, 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn chat_and_ledger_round_trip_on_sqlite() {
    chat_and_ledger_round_trip(common::sqlite().await).await;
}

#[tokio::test]
async fn chat_and_ledger_round_trip_on_postgres() {
    chat_and_ledger_round_trip(common::postgres().await).await;
}

#[tokio::test]
async fn auth_errors_are_401_and_leave_no_row() {
    let mock = mock_cloud().await;
    let db = common::sqlite().await;
    db.store
        .add_backend(&cloud_backend("cloud", &mock.base_url()))
        .await
        .unwrap();
    // No key cache: the revocation below takes effect on the next request.
    let config = Config {
        key_cache_ms: 0,
        ..test_config()
    };
    let gw = Gateway::start(db, config).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    let body = chat_body("hi", 4);

    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(r).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let last = if key.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &key[..key.len() - 1]);
    let (status, err) = error_of(gw.chat(&wrong, &body).await).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    assert!(!err.to_string().contains(&wrong), "the key is echoed");

    // Revocation takes effect on the next request (with a key cache, once
    // its entry expires or a change notification drops it).
    assert_eq!(gw.chat(&key, &body).await.status(), 200);
    let id = gw.store().list_keys(None).await.unwrap()[0].id.clone();
    gw.store().revoke_key(&id).await.unwrap();
    assert_eq!(gw.chat(&key, &body).await.status(), 401);

    let counts = gw.ledger_counts(1).await;
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&1));
    gw.shutdown().await;
}

/// An address that presented `auth_guesses_per_minute` unknown keys gets
/// 429 for any credential not cached, tenant key or admin token, without
/// a store query; keys cached before still work from it.
#[tokio::test]
async fn guessed_credentials_are_429_per_address() {
    let mock = mock_cloud().await;
    let db = common::sqlite().await;
    db.store
        .add_backend(&cloud_backend("cloud", &mock.base_url()))
        .await
        .unwrap();
    let config = Config {
        auth_guesses_per_minute: 3,
        key_cache_ms: 60_000,
        ..test_config()
    };
    let gw = Gateway::start(db, config).await;
    let (_, cached) = tenant_and_key(gw.store(), |_| {}).await;
    let (_, not_yet) = tenant_and_key(gw.store(), |_| {}).await;
    let body = chat_body("hi", 4);
    assert_eq!(gw.chat(&cached, &body).await.status(), 200);

    let guess = |i: u32| format!("gw-{i:064x}");
    for i in 0..3 {
        let (status, err) = error_of(gw.chat(&guess(i), &body).await).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (401, Some("invalid_api_key")),
            "guess {i}"
        );
    }
    // The limit reached, neither another guess nor a real key the cache
    // has not seen is looked up.
    for key in [guess(3), not_yet.clone()] {
        let r = gw.chat(&key, &body).await;
        let wait: u64 = header(&r, "retry-after").parse().unwrap();
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
        let (status, err) = error_of(r).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (429, Some("rate_limit_exceeded")),
            "{err}"
        );
        assert!(!err.to_string().contains(&key), "the key is echoed");
    }
    // A guess already known to be wrong costs no query: still 401. A key
    // cached before is served.
    assert_eq!(gw.chat(&guess(0), &body).await.status(), 401);
    assert_eq!(gw.chat(&cached, &body).await.status(), 200);

    // Admin tokens from the same address are counted with the keys.
    let r = gw
        .client
        .get(gw.url("/admin/api/tenants"))
        .bearer_auth(format!("gwadmin-{:064x}", 7))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "retry-after").parse::<u64>().is_ok());
    let (status, err) = error_of(r).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded"))
    );
    let r = gw
        .client
        .post(gw.url("/admin/login"))
        .form(&[("token", format!("gwadmin-{:064x}", 8))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap().contains("Too many unknown tokens"));
    // So are dashboard session cookies and the fleet's worker token.
    let r = gw
        .client
        .get(gw.url("/admin/fleet"))
        .header("cookie", format!("gw_admin_session={}", guess(9)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let r = gw
        .client
        .post(gw.url("/fleet/workers"))
        .bearer_auth("not-the-worker-token")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "retry-after").parse::<u64>().is_ok());
    let (status, err) = error_of(r).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded"))
    );

    let counts = gw.ledger_counts(2).await;
    assert_eq!(counts.values().sum::<u64>(), 2, "{counts:?}");
    gw.shutdown().await;
}

/// Behind a trusted proxy, guesses are counted per client that the proxy
/// names in `X-Forwarded-For`, not for the proxy as a whole.
#[tokio::test]
async fn behind_a_trusted_proxy_guesses_are_counted_per_client() {
    let db = common::sqlite().await;
    let config = Config {
        auth_guesses_per_minute: 2,
        trusted_proxies: "127.0.0.0/8".into(),
        ..test_config()
    };
    let gw = Gateway::start(db, config).await;
    let body = chat_body("hi", 4);
    let guess = |i: u32, client: &str| {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(format!("gw-{i:064x}"))
            .header("x-forwarded-for", format!("203.0.113.9, {client}"))
            .json(&body)
            .send()
    };
    for i in 0..2 {
        assert_eq!(guess(i, "192.0.2.1").await.unwrap().status(), 401);
    }
    assert_eq!(guess(2, "192.0.2.1").await.unwrap().status(), 429);
    // Another client of the same proxy, and the proxy itself, guess on.
    assert_eq!(guess(3, "192.0.2.2").await.unwrap().status(), 401);
    assert_eq!(
        gw.chat(&format!("gw-{:064x}", 4), &body).await.status(),
        401
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let mock = mock_cloud().await;
    let db = common::sqlite().await;
    db.store
        .add_backend(&cloud_backend("cloud", &mock.base_url()))
        .await
        .unwrap();
    let mut config = test_config();
    config.max_body_bytes = 2048;
    let gw = Gateway::start(db, config).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    let send = |body: String| {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        ("{not json".to_owned(), 400, "invalid_json"),
        (r#"{"model":"m"}"#.to_owned(), 400, "invalid_messages"),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(4096)}]})
                .to_string(),
            413,
            "request_too_large",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
                .to_string(),
            400,
            "invalid_max_tokens",
        ),
    ];
    for (body, want_status, want_code) in cases {
        let (status, err) = error_of(send(body).await.unwrap()).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (want_status, Some(want_code))
        );
    }
    // A declared length over the limit, nothing sent after the headers:
    // refused at once (and `Expect: 100-continue` not answered first).
    let addr = gw
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 10485760\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut raw, head.as_bytes())
        .await
        .unwrap();
    // The connection closes after the answer: the body was never read.
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer),
    )
    .await
    .expect("not answered and closed within 5 s")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");
    let r = gw
        .chat_with(
            &key,
            &chat_body("x", 4),
            &[("x-privacy-class", "top-secret")],
        )
        .await;
    let (status, err) = error_of(r).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_privacy_class"))
    );
    assert_eq!(mock.stats().requests_total, 0);
    assert_eq!(
        gw.state.ledger.enqueued(),
        0,
        "malformed requests are not admitted"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn rate_limit_and_budget_are_429() {
    let mock = mock_cloud().await;
    let db = common::sqlite().await;
    // A code name that is internal: it may still go to the cloud, so a
    // request that names it is refused by the limiter, not by routing.
    let codename = RuleSpec::Regex {
        name: "codename".into(),
        pattern: r"(?i)\bproject bluebird\b".into(),
        class: Class::Internal,
    };
    db.store.add_privacy_rule(None, &codename).await.unwrap();
    let gw = with_cloud(db, &mock).await;
    let (_, limited) = tenant_and_key(gw.store(), |k| k.requests_per_min = Some(2)).await;
    let (_, broke) = tenant_and_key(gw.store(), |k| k.budget_usd = Some(0.0)).await;
    let body = chat_body("hi", 4);
    assert_eq!(gw.chat(&limited, &body).await.status(), 200);
    assert_eq!(gw.chat(&limited, &body).await.status(), 200);
    // The third is scanned, routed and refused by the limiter; the fourth
    // is refused before its body is scanned, since the limiter said when
    // the key's next request may come. Both name the code name.
    let named = chat_body("Tell me about Project Bluebird", 4);
    let mut rows = Vec::new();
    for _ in 0..2 {
        let r = gw.chat(&limited, &named).await;
        let retry: u64 = header(&r, "retry-after").parse().unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
        rows.push(header(&r, LEDGER_HEADER).to_owned());
        let (status, err) = error_of(r).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (429, Some("rate_limit_exceeded"))
        );
    }
    let scanned = gw.row(&rows[0]).await;
    assert_eq!(scanned.status, LedgerStatus::Rejected);
    assert_eq!(scanned.privacy_class, Class::Internal);
    assert_eq!(scanned.detectors, ["codename"]);
    let unscanned = gw.row(&rows[1]).await;
    assert_eq!(unscanned.status, LedgerStatus::Rejected);
    assert_eq!(
        (unscanned.privacy_class, unscanned.detectors.len()),
        (Class::Public, 0),
        "the key's default class, no detector run"
    );

    let (status, err) = error_of(gw.chat(&broke, &body).await).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("insufficient_quota"))
    );

    let counts = gw.ledger_counts(5).await;
    assert_eq!(counts.get(&LedgerStatus::Ok), Some(&2));
    assert_eq!(counts.get(&LedgerStatus::Rejected), Some(&3));
    assert_eq!(mock.stats().requests_total, 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn models_list_ids_and_aliases_the_key_may_use() {
    let mock = mock_cloud().await;
    let db = common::sqlite().await;
    let mut cloud_only = cloud_backend("cloud", &mock.base_url());
    cloud_only.models[0].public = "cloud-only".into();
    db.store.add_backend(&cloud_only).await.unwrap();
    db.store
        .set_alias(&Alias {
            name: "auto".into(),
            target: AliasTarget::Any,
        })
        .await
        .unwrap();
    let gw = Gateway::start(db, test_config()).await;
    let (_, public) = tenant_and_key(gw.store(), |_| {}).await;
    let (_, confidential) = tenant_and_key(gw.store(), |k| {
        k.default_class = Class::Confidential;
    })
    .await;
    let list = |key: String| {
        let gw = &gw;
        async move {
            let r = gw
                .client
                .get(gw.url("/v1/models"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            let mut ids: Vec<String> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(list(public.clone()).await, vec!["auto", "cloud-only"]);
    assert!(
        list(confidential.clone()).await.is_empty(),
        "a confidential key may not use the cloud"
    );
    let r = gw.client.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // One model (`models.retrieve`): what the list holds, nothing more.
    let retrieve = |key: Option<&str>, path: &str| {
        let mut r = gw.client.get(gw.url(&format!("/v1/models/{path}")));
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, model) = retrieve(Some(&public), "cloud-only").await;
    assert_eq!(status, 200);
    assert_eq!(
        (model["id"].as_str(), model["object"].as_str()),
        (Some("cloud-only"), Some("model"))
    );
    assert_eq!(retrieve(Some(&public), "auto").await.0, 200);
    let not_found = [
        (Some(confidential.as_str()), "cloud-only"),
        (Some(public.as_str()), "no-such-model"),
        (Some(public.as_str()), "org/cloud-only"),
    ];
    for (key, path) in not_found {
        let (status, err) = retrieve(key, path).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (404, Some("model_not_found")),
            "{path}"
        );
    }
    let (status, err) = retrieve(Some(&public), "").await;
    assert_eq!(status, 404, "{err}");
    assert!(err["error"]["code"].is_string(), "{err}");
    let long = "m".repeat(8 << 10);
    let (status, err) = retrieve(Some(&public), &long).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (status, err) = retrieve(Some(&public), "%FF").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_path"))
    );
    let (status, err) = retrieve(None, "cloud-only").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (status, _) = retrieve(None, "%FF").await;
    assert_eq!(status, 401, "the key is checked before the path");
    gw.shutdown().await;
}

#[tokio::test]
async fn request_ids_health_and_metrics() {
    let mock = mock_cloud().await;
    let gw = with_cloud(common::sqlite().await, &mock).await;
    let (_, key) = tenant_and_key(gw.store(), |_| {}).await;
    let r = gw
        .chat_with(
            &key,
            &chat_body("hi", 4),
            &[("x-request-id", "client-id-7")],
        )
        .await;
    assert_eq!(header(&r, "x-request-id"), "client-id-7");
    let r = gw.chat(&key, &chat_body("hi", 4)).await;
    assert_eq!(header(&r, "x-request-id").len(), 36, "a UUID is generated");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            gw.client.get(gw.url(path)).send().await.unwrap().status(),
            200
        );
    }
    gw.ledger_counts(2).await;
    let text = gw.metrics().await;
    for name in [
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_ttft_seconds_bucket",
        "gateway_ledger_queue_depth",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(!text.contains(&key[3..]), "a key leaked into metrics");
    let (status, _) = error_of(gw.client.get(gw.url("/v1/nothing")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    // A known endpoint with the wrong method: 405, in OpenAI's shape.
    let (status, body) = error_of(
        gw.client
            .get(gw.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    gw.shutdown().await;
}
