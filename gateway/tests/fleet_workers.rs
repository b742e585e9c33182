//! A fleet of two gateway processes on one Postgres and one Redis: edge
//! workers that register themselves are served by both within seconds,
//! leave both within seconds when killed, and rejoin when restarted; a key
//! revoked through the admin CLI is refused by both within one second; and
//! the registration route takes nothing but a worker with the fleet's token
//! at an on-prem address. Each test has its own database and Redis prefix.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown
)]

use crate::common;

use std::time::{Duration, Instant};

use common::edge::{EdgeWorker, MODEL, WORKER_TOKEN};
use common::harness::{chat_body, test_config, Gateway};
use common::process::{admin, GatewayProcess};
use gateway::privacy::Class;
use gateway::store::{NewKeySpec, Store};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Heartbeats every 300 ms; a registration lasts 1.5 s without one.
const HEARTBEAT_MS: &str = "300";
const WORKER_TTL_MS: &str = "1500";

/// A tenant and a key for chat and models; returns (key id, plaintext).
async fn key(store: &Store) -> (String, String) {
    let tenant = store
        .create_tenant(&format!("t-{}", uuid::Uuid::new_v4().simple()))
        .await
        .unwrap();
    let created = store
        .create_key(&NewKeySpec {
            tenant_id: tenant.id,
            default_class: Class::Public,
            scopes: vec!["chat".into(), "models".into()],
            requests_per_min: None,
            tokens_per_min: None,
            budget_usd: None,
            expires_at: None,
        })
        .await
        .unwrap();
    (created.key.id, created.plaintext.expose_secret().to_owned())
}

/// Two gateway processes on `url`, sharing a Redis prefix of their own.
async fn two_gateways(url: &str, extra: &[(&str, &str)]) -> (GatewayProcess, GatewayProcess) {
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let mut env = vec![
        ("GATEWAY_DATABASE_URL", url),
        ("GATEWAY_REDIS_URL", REDIS_URL),
        ("GATEWAY_REDIS_PREFIX", prefix.as_str()),
        ("GATEWAY_WORKER_TTL_MS", WORKER_TTL_MS),
    ];
    env.extend_from_slice(extra);
    let a = GatewayProcess::start(&env).await;
    let b = GatewayProcess::start(&env).await;
    (a, b)
}

/// Whether `/v1/models` of `gw` lists the bundled model.
async fn lists_model(gw: &GatewayProcess, key: &str) -> bool {
    let r = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == MODEL)
}

/// Polls every 20 ms until `lists_model(gw)` is `want`; the time it took.
async fn until_listed(gw: &GatewayProcess, key: &str, want: bool) -> Duration {
    let start = Instant::now();
    while lists_model(gw, key).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}: model listed is not {want} after 30 s",
            gw.base
        );
        // The gateways push nothing to clients; polling is the only signal.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// One short greedy request through `gw`; status and backend header.
async fn one_chat(gw: &GatewayProcess, key: &str) -> (u16, String) {
    let r = gw.chat(key, &chat_body("Say hi.", 2)).await;
    let status = r.status().as_u16();
    let backend = r
        .headers()
        .get("x-gateway-backend")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = r.bytes().await;
    (status, backend)
}

/// Sends a request every 20 ms until `gw` answers one from `backend`;
/// the time it took. Before the worker is listed the answer is a quick 404,
/// while its circuit is still open from an earlier life a quick 503.
async fn until_served(gw: &GatewayProcess, key: &str, backend: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (status, from) = one_chat(gw, key).await;
        if status == 200 && from == backend {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}: not served by {backend} after 30 s (last: {status} from {from:?})",
            gw.base
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn port_of(base: &str) -> u16 {
    base.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn workers_join_leave_and_rejoin_on_both_gateways() {
    let db = common::postgres().await;
    let url = db.postgres_url().unwrap();
    let (_, key) = key(&db.store).await;
    let (a, b) = two_gateways(&url, &[]).await;
    assert!(!lists_model(&a, &key).await && !lists_model(&b, &key).await);
    let (status, _) = one_chat(&b, &key).await;
    assert_eq!(status, 404, "no worker yet: the model is unknown");

    // The worker knows only gateway A (as it would know a load balancer);
    // B learns of it through Redis.
    let a_url = a.base.clone();
    let args = [
        "--gateway-url",
        a_url.as_str(),
        "--heartbeat-ms",
        HEARTBEAT_MS,
    ];
    let mut worker = EdgeWorker::start(&args).await;
    let name = format!("worker:127.0.0.1:{}", port_of(&worker.base));
    let joined_a = until_served(&a, &key, &name).await;
    let joined_b = until_served(&b, &key, &name).await + joined_a;
    println!(
        "join (from model loaded): gateway A {} ms, gateway B {} ms",
        joined_a.as_millis(),
        joined_b.as_millis()
    );

    worker.kill();
    let killed = Instant::now();
    let left_a = until_listed(&a, &key, false).await;
    let left_b = until_listed(&b, &key, false).await + left_a;
    for gw in [&a, &b] {
        // Unlisted: refused at routing, never sent to the dead address.
        let (status, backend) = one_chat(gw, &key).await;
        assert_eq!((status, backend.as_str()), (404, ""), "{}", gw.base);
    }
    println!(
        "leave (from SIGKILL): gateway A {} ms, gateway B {} ms",
        left_a.as_millis(),
        left_b.as_millis()
    );
    assert!(killed.elapsed() < Duration::from_secs(10));

    // Restarted on the same address, registering through B this time.
    let b_url = b.base.clone();
    let listen = format!("127.0.0.1:{}", port_of(&worker.base));
    let args = [
        "--gateway-url",
        b_url.as_str(),
        "--heartbeat-ms",
        HEARTBEAT_MS,
    ];
    let _worker = EdgeWorker::start_on(&listen, &args).await;
    let rejoined_b = until_served(&b, &key, &name).await;
    let rejoined_a = until_served(&a, &key, &name).await + rejoined_b;
    println!(
        "rejoin (from model loaded): gateway A {} ms, gateway B {} ms",
        rejoined_a.as_millis(),
        rejoined_b.as_millis()
    );
    for d in [joined_a, joined_b, left_a, left_b, rejoined_a, rejoined_b] {
        assert!(d < Duration::from_secs(5), "{d:?}");
    }
}

/// Polls `/v1/models` of `gateways` in turn, every 5 ms, until each
/// answers as `done` says; the time from `since` to each one's answer.
/// Fails past one second.
async fn within_a_second(
    gateways: [&GatewayProcess; 2],
    key: &str,
    since: Instant,
    done: impl Fn(u16, &Value) -> bool,
) -> Vec<Duration> {
    let mut times = Vec::new();
    for gw in gateways {
        loop {
            let r = gw
                .client
                .get(gw.url("/v1/models"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if done(status, &body) {
                times.push(since.elapsed());
                break;
            }
            assert!(
                since.elapsed() < Duration::from_secs(1),
                "{} has not seen the change after 1 s",
                gw.base
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    times
}

#[tokio::test]
async fn admin_changes_through_the_cli_reach_the_other_gateway_within_a_second() {
    let db = common::postgres().await;
    let url = db.postgres_url().unwrap();
    let (id, key) = key(&db.store).await;
    // Minute-long caches: only the change notification can explain a
    // change seen within a second.
    let caches = [
        ("GATEWAY_KEY_CACHE_MS", "60000"),
        ("GATEWAY_SETTINGS_CACHE_MS", "60000"),
    ];
    let (a, b) = two_gateways(&url, &caches).await;
    let lists = |body: &Value, model: &str| {
        body["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|m| m["id"] == model))
    };
    let before = within_a_second([&a, &b], &key, Instant::now(), |s, body| {
        s == 200 && !lists(body, "hot-model")
    })
    .await;
    assert_eq!(before.len(), 2);

    // A backend added on the shared database is used by both.
    admin(
        &url,
        &[
            "backend",
            "add",
            "--name",
            "hot",
            "--kind",
            "edge",
            "--url",
            "http://127.0.0.1:9",
            "--model",
            "hot-model",
        ],
    );
    let added = within_a_second([&b, &a], &key, Instant::now(), |s, body| {
        s == 200 && lists(body, "hot-model")
    })
    .await;
    println!(
        "backend added (from CLI exit): gateway B {} ms, gateway A {} ms",
        added[0].as_millis(),
        added[1].as_millis()
    );

    // A revoked key is refused by both.
    admin(&url, &["key", "revoke", id.as_str()]);
    let refused = within_a_second([&b, &a], &key, Instant::now(), |s, _| s == 401).await;
    println!(
        "revocation refused (from CLI exit): gateway B {} ms, gateway A {} ms",
        refused[0].as_millis(),
        refused[1].as_millis()
    );
}

#[tokio::test]
async fn only_the_fleets_workers_at_on_prem_addresses_may_register() {
    let db = common::sqlite().await;
    let (_, api_key) = key(&db.store).await;
    let gw = Gateway::start(db, test_config()).await;
    let url = gw.url("/fleet/workers");
    let beat = |worker_url: &str| {
        json!({"url": worker_url, "load": {
            "model": MODEL, "context_length": 2048,
            "active_sequences": 0, "waiting_sequences": 0,
            "max_running_sequences": 4, "max_waiting_sequences": 16,
            "prefill_tokens_per_s": null, "decode_tokens_per_s": null,
            "joules_per_prompt_token": null, "joules_per_output_token": null,
            "ready": true, "draining": false}})
    };
    let send = |token: Option<&str>, body: Value| {
        let mut req = gw.client.post(&url).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let local = beat("http://127.0.0.1:9");
    // No token, a wrong one, or a client's API key: refused before the body
    // is looked at.
    for token in [None, Some("wrong"), Some(api_key.as_str())] {
        let r = send(token, local.clone()).await.unwrap();
        assert_eq!(r.status(), 401, "{token:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_worker_token");
    }
    // The token, but a public address or a decorated URL: refused.
    for bad in [
        "http://8.8.8.8:8081",
        "https://api.openai.com",
        "http://127.0.0.1:9/v1",
        "http://user:pw@127.0.0.1:9",
    ] {
        let r = send(Some(WORKER_TOKEN), beat(bad)).await.unwrap();
        assert_eq!(r.status(), 403, "{bad}");
    }
    let r = send(Some(WORKER_TOKEN), json!({"url": 1})).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(gw.state.registry.list().await.unwrap().is_empty());

    // The token and a loopback address: listed as an on-prem edge backend.
    let r = send(Some(WORKER_TOKEN), local).await.unwrap();
    assert_eq!(r.status(), 200);
    let ack: Value = r.json().await.unwrap();
    assert_eq!(ack["backend"], "worker:127.0.0.1:9");
    gw.state.registry.refresh().await;
    let snapshot = gw.state.catalog.snapshot().await.unwrap();
    let listed = snapshot
        .backends
        .iter()
        .find(|b| b.name == "worker:127.0.0.1:9")
        .expect("listed");
    assert_eq!(listed.zone, gateway::routing::Zone::OnPrem);

    // A gateway without a worker token takes no registrations at all.
    let db = common::sqlite().await;
    let closed = Gateway::start(
        db,
        gateway::config::Config {
            worker_token: None,
            ..test_config()
        },
    )
    .await;
    let r = closed
        .client
        .post(closed.url("/fleet/workers"))
        .bearer_auth(WORKER_TOKEN)
        .json(&beat("http://127.0.0.1:9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A gateway served in process on its own SQLite, sharing `redis_url` and
/// `prefix` with the others of a test.
async fn in_process(redis_url: &str, prefix: &str) -> Gateway {
    let config = gateway::config::Config {
        redis_url: Some(secrecy::SecretString::from(redis_url.to_owned())),
        redis_prefix: prefix.to_owned(),
        unhealthy_cooldown_ms: 5_000,
        ..test_config()
    };
    Gateway::start(common::sqlite().await, config).await
}

#[tokio::test]
async fn one_gateways_failures_open_the_circuit_on_the_other() {
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let a = in_process(REDIS_URL, &prefix).await;
    let b = in_process(REDIS_URL, &prefix).await;
    let id = "cloud-backend-id";
    a.state.live.failure(id);
    a.state.live.failure(id);
    let start = Instant::now();
    b.wait_live(id, |l| l.failures >= 2 && l.retry_at.is_some())
        .await;
    let opened = start.elapsed();
    assert!(!b.state.live.get(id).usable(2, Instant::now()));
    assert!(!b.state.live.claim_trial(id), "B rests too");
    // A recovery seen by A closes the circuit on B as well.
    a.state.live.success(id);
    let start = Instant::now();
    b.wait_live(id, |l| l.failures == 0).await;
    let closed = start.elapsed();
    println!(
        "shared health: opened on B {} ms, closed on B {} ms after A saw it",
        opened.as_millis(),
        closed.as_millis()
    );
    assert!(opened < Duration::from_secs(1) && closed < Duration::from_secs(1));
}

#[tokio::test]
async fn without_redis_the_gateway_keeps_its_own_view_within_bounded_time() {
    // Nothing listens on port 1: every Redis call fails.
    let gw = in_process("redis://127.0.0.1:1", "test-down:").await;
    let start = Instant::now();
    for _ in 0..100 {
        gw.state.live.failure("b");
    }
    assert_eq!(gw.state.live.get("b").failures, 100);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let r = gw
        .client
        .post(gw.url("/fleet/workers"))
        .bearer_auth(WORKER_TOKEN)
        .json(&json!({"url": "http://127.0.0.1:9", "load": {
            "model": MODEL, "context_length": 2048,
            "active_sequences": 0, "waiting_sequences": 0,
            "max_running_sequences": 4, "max_waiting_sequences": 16,
            "prefill_tokens_per_s": null, "decode_tokens_per_s": null,
            "joules_per_prompt_token": null, "joules_per_output_token": null,
            "ready": true, "draining": false}}))
        .send()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(r.status(), 503);
    println!("heartbeat with Redis down: 503 in {} ms", took.as_millis());
    assert!(took < Duration::from_secs(1), "{took:?}");
}
