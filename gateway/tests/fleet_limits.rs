//! Limits and budgets across a fleet: two real gateway processes on one
//! Postgres database and one Redis, in front of real edge workers. A key's
//! budget and its requests/min hold for the fleet as a whole, the settled
//! spend equals the ledger's, and with Redis gone requests keep flowing on
//! each gateway's share of the limit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown
)]

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::edge::EdgeWorker;
use common::harness::{chat_body, edge_backend, tenant_and_key};
use common::process::GatewayProcess;
use common::TestDb;
use gateway::limits::scripts::{self, Keys};
use gateway::limits::to_nusd;
use gateway::store::{KeyLimitsUpdate, NewKeySpec};
use sqlx::Connection;

/// USD per 1000 output tokens of the edge backends; input is free, so a
/// request's cost is exactly its output tokens at this price.
const PRICE_OUT: f64 = 1.0;

/// Output tokens per request: the worst case the budget holds.
const MAX_TOKENS: u32 = 8;

/// A prompt the bundled model answers at length, so every admitted request
/// uses all of `MAX_TOKENS` and costs exactly its worst case.
const LONG_ANSWER: &str = "Write a long story about a cat who sails around the world.";

fn redis_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// The shared Redis of these tests (`TEST_REDIS_URL`, default the local one).
fn shared_redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| redis_url(6379))
}

struct Fleet {
    db: TestDb,
    _edges: Vec<EdgeWorker>,
    gateways: Vec<GatewayProcess>,
    prefix: String,
    redis_url: String,
}

/// `edges` edge workers registered as backends at `price_out` USD per 1000
/// output tokens, then two gateway processes on the database and
/// `redis_url` under a prefix of this test's own; returns once both
/// gateways count each other.
async fn fleet(edges: usize, redis_url: &str, price_out: f64) -> Fleet {
    fleet_with(edges, redis_url, price_out, &[]).await
}

/// [`fleet`] with more settings for both gateways.
async fn fleet_with(
    edges: usize,
    redis_url: &str,
    price_out: f64,
    settings: &[(&str, &str)],
) -> Fleet {
    let db = common::postgres().await;
    let workers = futures::future::join_all((0..edges).map(|_| EdgeWorker::start(&[]))).await;
    for (i, w) in workers.iter().enumerate() {
        let mut backend = edge_backend(&format!("edge-{i}"), &w.base);
        backend.price_out_per_1k = price_out;
        db.store.add_backend(&backend).await.unwrap();
    }
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let db_url = db.postgres_url().unwrap();
    // The model runs on the same cores as the gateways here, so the 50 ms
    // default would send calls to the fallback under load; the fallback has
    // a test of its own.
    let mut env = vec![
        ("GATEWAY_DATABASE_URL", db_url.as_str()),
        ("GATEWAY_REDIS_URL", redis_url),
        ("GATEWAY_REDIS_PREFIX", prefix.as_str()),
        ("GATEWAY_REDIS_TIMEOUT_MS", "1000"),
    ];
    env.extend_from_slice(settings);
    let (a, b) = tokio::join!(GatewayProcess::start(&env), GatewayProcess::start(&env));
    for gw in [&a, &b] {
        gw.wait_metric("gateway_fleet_gateways", |n| n >= 2.0).await;
    }
    Fleet {
        db,
        _edges: workers,
        gateways: vec![a, b],
        prefix,
        redis_url: redis_url.to_owned(),
    }
}

/// Sends `n` requests at once, alternating between the gateways; returns
/// each response's status and `error.code` (or `None` for a 200), and the
/// `Retry-After` of the first 429 that has one.
async fn burst(
    fleet: &Fleet,
    key: &str,
    n: usize,
    body: &serde_json::Value,
) -> Vec<(u16, Option<String>)> {
    let calls = (0..n).map(|i| {
        let gw = &fleet.gateways[i % fleet.gateways.len()];
        async move {
            let r = gw.chat(key, body).await;
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            let code = v["error"]["code"].as_str().map(str::to_owned);
            (status, code)
        }
    });
    futures::future::join_all(calls).await
}

/// Decisions either gateway took on its fallback share instead of Redis.
async fn fallbacks(fleet: &Fleet) -> f64 {
    let mut n = 0.0;
    for gw in &fleet.gateways {
        let metrics = gw.metrics().await;
        for check in ["requests", "tokens", "budget"] {
            let name = format!("gateway_limits_fallback_total{{check=\"{check}\"}}");
            n += labelled(&metrics, &name);
        }
    }
    n
}

fn count(results: &[(u16, Option<String>)], status: u16, code: Option<&str>) -> usize {
    results
        .iter()
        .filter(|(s, c)| *s == status && c.as_deref() == code)
        .count()
}

/// Ledger rows and their summed cost for one key, once `n` rows are in.
async fn ledger_of(db_url: &str, key_id: &str, n: i64) -> (i64, f64) {
    let mut con = sqlx::PgConnection::connect(db_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rows, usd): (i64, f64) = sqlx::query_as(
            "SELECT count(*), COALESCE(SUM(usd), 0) FROM request_ledger WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_one(&mut con)
        .await
        .unwrap();
        if rows >= n {
            return (rows, usd);
        }
        assert!(
            Instant::now() < deadline,
            "ledger rows: wanted {n}, have {rows}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn key_id_and_spent(fleet: &Fleet, tenant: &str) -> (String, f64) {
    let keys = fleet.db.store.list_keys(Some(tenant)).await.unwrap();
    (keys[0].id.clone(), keys[0].spent_usd)
}

async fn redis_con(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must run for these tests (scripts/services.sh starts it)")
}

/// Polls until `f` holds, for state written by other processes.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_budget_for_ten_requests_admits_at_most_ten_across_two_gateways() {
    let fleet = fleet(2, &shared_redis_url(), PRICE_OUT).await;
    // The worst case of one request is its MAX_TOKENS at PRICE_OUT.
    let worst = f64::from(MAX_TOKENS) / 1000.0 * PRICE_OUT;
    let (tenant, key) = tenant_and_key(&fleet.db.store, |s: &mut NewKeySpec| {
        s.budget_usd = Some(10.0 * worst);
    })
    .await;

    let started = Instant::now();
    let results = burst(&fleet, &key, 200, &chat_body(LONG_ANSWER, MAX_TOKENS)).await;
    let ok = count(&results, 200, None);
    let refused = count(&results, 429, Some("insufficient_quota"));
    println!(
        "budget race: {ok} admitted, {refused} refused of 200 in {:?}",
        started.elapsed()
    );
    assert!(fallbacks(&fleet).await < 1.0, "every decision was Redis's");
    assert!(ok <= 10, "{ok} admitted on a budget for 10");
    assert_eq!(ok + refused, 200, "{results:?}");
    assert_eq!(ok, 10, "the budget pays for ten and nothing failed");

    // Every request left a row; the settled spend is the ledger's, in
    // Postgres (the durable figure) and in Redis (the shared one).
    let (key_id, _) = key_id_and_spent(&fleet, &tenant).await;
    let (rows, ledger_usd) = ledger_of(&fleet.db.postgres_url().unwrap(), &key_id, 200).await;
    assert_eq!(rows, 200);
    assert!((ledger_usd - 10.0 * worst).abs() < 1e-9, "{ledger_usd}");
    eventually("Postgres spend equal to the ledger's", || async {
        let (_, spent) = key_id_and_spent(&fleet, &tenant).await;
        (spent - ledger_usd).abs() < 1e-9
    })
    .await;
    let mut con = redis_con(&fleet.redis_url).await;
    let keys = Keys::new(&fleet.prefix);
    eventually("Redis spend settled to the ledger's", || {
        let (mut con, keys, key_id) = (con.clone(), keys.clone(), key_id.clone());
        async move {
            scripts::figures(&mut con, &keys, &key_id).await.unwrap()
                == Some((to_nusd(ledger_usd), 0))
        }
    })
    .await;
    let figures = scripts::figures(&mut con, &keys, &key_id).await.unwrap();
    println!("budget race: ledger {ledger_usd} USD, Redis (spent, held) {figures:?} nano-USD");
}

#[tokio::test]
async fn requests_per_minute_hold_across_two_gateways() {
    let fleet = fleet(2, &shared_redis_url(), PRICE_OUT).await;
    let (_, key) = tenant_and_key(&fleet.db.store, |s: &mut NewKeySpec| {
        s.requests_per_min = Some(10);
    })
    .await;

    let started = Instant::now();
    let results = burst(&fleet, &key, 200, &chat_body("Say hi.", 1)).await;
    let elapsed = started.elapsed();
    let ok = count(&results, 200, None);
    let limited = count(&results, 429, Some("rate_limit_exceeded"));
    println!("rate limit: {ok} admitted, {limited} limited of 200 in {elapsed:?}");
    // A burst of 10, then one more every 6 s.
    let allowed = 10 + (elapsed.as_secs() / 6) as usize;
    assert!(fallbacks(&fleet).await < 1.0, "every decision was Redis's");
    assert!(
        ok >= 10 && ok <= allowed,
        "{ok} admitted, at most {allowed} allowed"
    );
    assert_eq!(ok + limited, 200, "{results:?}");

    // Refusals say when to come back. A slow burst (a loaded machine) has
    // left a request's room for every 6 s it took, so the try after that
    // room is used up is refused.
    let room = (10 + started.elapsed().as_secs() / 6).saturating_sub(ok as u64) + 2;
    let mut r = fleet.gateways[1].chat(&key, &chat_body("Say hi.", 1)).await;
    for _ in 0..room {
        if r.status() != 200 {
            break;
        }
        r = fleet.gateways[1].chat(&key, &chat_body("Say hi.", 1)).await;
    }
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry), "{retry}");
}

/// A budget whose requests go to a free backend holds nothing per request,
/// whether each request holds in its own name or draws on its gateway's
/// lease. Releasing such a hold once failed in Redis (its negation, `-0`,
/// is not an integer to Redis), and every failure sent the admissions
/// after it to the gateway's local share.
#[tokio::test]
async fn free_requests_settle_in_redis_without_falling_back() {
    for lease_ms in ["0", "2000"] {
        let settings = [("GATEWAY_REDIS_LEASE_MS", lease_ms)];
        let fleet = fleet_with(1, &shared_redis_url(), 0.0, &settings).await;
        let (_, key) = tenant_and_key(&fleet.db.store, |s: &mut NewKeySpec| {
            s.budget_usd = Some(1.0);
        })
        .await;
        let key_id = fleet.db.store.list_keys(None).await.unwrap()[0].id.clone();
        let con = redis_con(&fleet.redis_url).await;
        let markers = format!("{}limits:settled:*", fleet.prefix);
        let holds = format!("{}limits:holds:{key_id}", fleet.prefix);
        for round in 1..=2_usize {
            let results = burst(&fleet, &key, 6, &chat_body("Say hi.", 1)).await;
            assert_eq!(count(&results, 200, None), 6, "{results:?}");
            eventually("every request settled in Redis", || {
                let (mut con, markers, holds) = (con.clone(), markers.clone(), holds.clone());
                async move {
                    let settled: Vec<String> = redis::cmd("KEYS")
                        .arg(&markers)
                        .query_async(&mut con)
                        .await
                        .unwrap();
                    let held: Vec<String> = redis::cmd("HKEYS")
                        .arg(&holds)
                        .query_async(&mut con)
                        .await
                        .unwrap();
                    // Without leases, one marker per request; with them,
                    // one per request that held in its own name and one per
                    // batch of those that drew on a lease. Either way no
                    // request's own hold is left.
                    let own_holds = held.iter().filter(|h| !h.starts_with("lease:")).count();
                    own_holds == 0
                        && if lease_ms == "0" {
                            settled.len() == 6 * round
                        } else {
                            settled.len() >= round
                        }
                }
            })
            .await;
        }
        // A settlement's answer reaches its gateway's metrics right after
        // the script ran.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut failed = 0.0;
        for gw in &fleet.gateways {
            failed += labelled(
                &gw.metrics().await,
                "gateway_limits_redis_errors_total{call=\"settle\"}",
            );
        }
        assert!(
            failed < 1.0,
            "leases {lease_ms} ms: {failed} settlements failed in Redis"
        );
        assert!(
            fallbacks(&fleet).await < 1.0,
            "leases {lease_ms} ms: every decision was Redis's"
        );
    }
}

/// A budget an admin lowers binds on both gateways within a second, though
/// each was admitting the key's requests from a lease of the old budget.
#[tokio::test]
async fn a_lowered_budget_binds_within_a_second_though_both_gateways_hold_leases() {
    let fleet = fleet(1, &shared_redis_url(), PRICE_OUT).await;
    let (_, key) = tenant_and_key(&fleet.db.store, |s: &mut NewKeySpec| {
        s.budget_usd = Some(1_000.0);
    })
    .await;
    let key_id = fleet.db.store.list_keys(None).await.unwrap()[0].id.clone();
    let body = chat_body("Say hi.", 1);
    // A key's first requests take the exact path while its lease is
    // granted; the later ones are admitted from it.
    for _ in 0..3 {
        let results = burst(&fleet, &key, 4, &body).await;
        assert_eq!(count(&results, 200, None), 4, "{results:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for gw in &fleet.gateways {
        let leased = labelled(&gw.metrics().await, "gateway_limits_leased_total");
        assert!(leased >= 1.0, "{} admitted nothing from a lease", gw.base);
    }
    let lowered = KeyLimitsUpdate {
        budget_usd: Some(Some(0.0)),
        ..KeyLimitsUpdate::default()
    };
    fleet
        .db
        .store
        .update_key_limits(&key_id, lowered)
        .await
        .unwrap();
    let since = Instant::now();
    for gw in &fleet.gateways {
        loop {
            let r = gw.chat(&key, &body).await;
            let status = r.status().as_u16();
            if status == 429 {
                let answer: serde_json::Value = r.json().await.unwrap();
                assert_eq!(answer["error"]["code"], "insufficient_quota");
                break;
            }
            assert_eq!(status, 200);
            assert!(
                since.elapsed() < Duration::from_secs(1),
                "{} still admits on the old budget after 1 s",
                gw.base
            );
        }
        println!(
            "lowered budget binds on {} after {:?}",
            gw.base,
            since.elapsed()
        );
    }
}

/// A Redis server of this test's own, so the test can stop it.
struct OwnRedis {
    child: Option<Child>,
    port: u16,
}

impl OwnRedis {
    async fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/services.sh installs it)");
        let url = redis_url(port);
        eventually("the test's Redis answering", || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                client.get_multiplexed_async_connection().await.is_ok()
            }
        })
        .await;
        OwnRedis {
            child: Some(child),
            port,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn labelled(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn with_redis_down_requests_flow_on_each_gateways_share() {
    let mut redis = OwnRedis::start(free_port()).await;
    let fleet = fleet(1, &redis_url(redis.port), PRICE_OUT).await;
    let (_, key) = tenant_and_key(&fleet.db.store, |s: &mut NewKeySpec| {
        s.requests_per_min = Some(20);
    })
    .await;
    let gw = &fleet.gateways[0];
    // Shared while Redis runs.
    let r = gw.chat(&key, &chat_body("Say hi.", 1)).await;
    assert_eq!(r.status(), 200);

    redis.kill();
    // Two gateways were alive: each may now admit 20 / 2 a minute on its
    // own, without waiting on Redis.
    let started = Instant::now();
    let mut ok = 0;
    let mut slowest_refusal = Duration::ZERO;
    for _ in 0..15 {
        let t = Instant::now();
        let r = gw.chat(&key, &chat_body("Say hi.", 1)).await;
        match r.status().as_u16() {
            200 => ok += 1,
            429 => slowest_refusal = slowest_refusal.max(t.elapsed()),
            s => panic!("unexpected status {s} with Redis down"),
        }
    }
    let elapsed = started.elapsed();
    let metrics = gw.metrics().await;
    let fallbacks = labelled(
        &metrics,
        "gateway_limits_fallback_total{check=\"requests\"}",
    );
    println!(
        "redis down: {ok} of 15 admitted in {elapsed:?}, slowest refusal {slowest_refusal:?}, \
         {fallbacks} fallback decisions"
    );
    let allowed = 10 + (elapsed.as_secs() / 6) as usize;
    assert!(
        ok >= 10 && ok <= allowed,
        "{ok} admitted, share allows {allowed}"
    );
    // Every admission, and the first refusal, was decided on the share;
    // the refusals after it by the refusal's known end, before the
    // limiter (`limits::Refusals`).
    assert!(
        fallbacks >= (ok + 1) as f64 && fallbacks <= 15.0,
        "{fallbacks} fallback decisions for {ok} admitted"
    );
    assert_eq!(gw.metric("gateway_limits_redis_up").await, Some(0.0));
    // No refusal waited on Redis; the bound is loose because the model
    // shares these cores.
    assert!(
        slowest_refusal < Duration::from_secs(2),
        "{slowest_refusal:?}"
    );

    // Back on the same port: the gateways share again within seconds.
    let _redis = OwnRedis::start(redis.port).await;
    for gw in &fleet.gateways {
        gw.wait_metric("gateway_limits_redis_up", |v| v > 0.5).await;
        gw.wait_metric("gateway_fleet_gateways", |n| n >= 2.0).await;
    }
    let r = fleet.gateways[1].chat(&key, &chat_body("Say hi.", 1)).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_killed_gateways_budget_holds_are_released_by_the_others() {
    let mut fleet = fleet(1, &shared_redis_url(), PRICE_OUT).await;
    // Long answers keep three requests in flight; the budget pays for three.
    let max_tokens = 400;
    let worst = f64::from(max_tokens) / 1000.0 * PRICE_OUT;
    let (tenant, key) = tenant_and_key(&fleet.db.store, |s: &mut NewKeySpec| {
        s.budget_usd = Some(3.0 * worst);
    })
    .await;
    let (key_id, _) = key_id_and_spent(&fleet, &tenant).await;
    let mut body = chat_body(LONG_ANSWER, max_tokens);
    body["stream"] = serde_json::json!(true);
    let victim = fleet.gateways.remove(0);
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let (client, url, key, body) = (
                victim.client.clone(),
                victim.url("/v1/chat/completions"),
                key.clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                let r = client.post(url).bearer_auth(key).json(&body).send().await;
                if let Ok(r) = r {
                    let _ = r.bytes().await;
                }
            })
        })
        .collect();
    let mut con = redis_con(&fleet.redis_url).await;
    let keys = Keys::new(&fleet.prefix);
    let held = to_nusd(3.0 * worst);
    eventually("three holds made", || {
        let (mut con, keys, key_id) = (con.clone(), keys.clone(), key_id.clone());
        async move {
            scripts::figures(&mut con, &keys, &key_id)
                .await
                .unwrap()
                .is_some_and(|(_, reserved)| reserved == held)
        }
    })
    .await;
    // The survivor refuses while the holds stand.
    let survivor = &fleet.gateways[0];
    let r = survivor
        .chat(&key, &chat_body(LONG_ANSWER, max_tokens))
        .await;
    assert_eq!(r.status(), 429);

    let mut victim = victim;
    let killed = Instant::now();
    victim.kill();
    eventually("the killed gateway's holds released", || {
        let (mut con, keys, key_id) = (con.clone(), keys.clone(), key_id.clone());
        async move {
            scripts::figures(&mut con, &keys, &key_id)
                .await
                .unwrap()
                .is_some_and(|(_, reserved)| reserved == 0)
        }
    })
    .await;
    let released_after = killed.elapsed();
    let figures = scripts::figures(&mut con, &keys, &key_id).await.unwrap();
    println!(
        "SIGKILL: holds released {released_after:?} after the kill; (spent, held) {figures:?}"
    );
    assert!(
        released_after < Duration::from_secs(10),
        "{released_after:?}"
    );
    for t in in_flight {
        let _ = t.await;
    }
    // The budget is free again for the surviving gateway.
    let r = survivor.chat(&key, &chat_body("Say hi.", 1)).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn one_gateway_without_redis_holds_budgets_in_process() {
    // The in-process book: the same budget race on a single gateway.
    let db = common::postgres().await;
    let mock = common::harness::mock_cloud().await;
    let mut cloud = common::harness::cloud_backend("cloud", &mock.base_url());
    cloud.price_in_per_1k = 0.0;
    cloud.price_out_per_1k = PRICE_OUT;
    db.store.add_backend(&cloud).await.unwrap();
    let gw = common::harness::Gateway::start(db, common::harness::test_config()).await;
    let worst = f64::from(MAX_TOKENS) / 1000.0 * PRICE_OUT;
    let (tenant, key) = tenant_and_key(gw.store(), |s: &mut NewKeySpec| {
        s.budget_usd = Some(10.0 * worst);
    })
    .await;
    let body = chat_body(LONG_ANSWER, MAX_TOKENS);
    let statuses = futures::future::join_all((0..200).map(|_| gw.chat(&key, &body)))
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect::<Vec<_>>();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 190);
    gw.ledger_counts(200).await;
    let spent = gw.store().list_keys(Some(&tenant)).await.unwrap()[0].spent_usd;
    assert!((spent - 10.0 * worst).abs() < 1e-9, "{spent}");
    gw.shutdown().await;
}
