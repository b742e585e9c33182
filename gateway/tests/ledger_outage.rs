//! Postgres down or restarted: nothing the gateway admitted is lost or
//! counted twice. Each test runs its own Postgres cluster (see
//! `common::pg_cluster`), which it stops and starts under the gateway.
//!
//! What is checked after every fault: the ledger rows are exactly the
//! admitted requests (the ids the responses carried in
//! `x-gateway-ledger-id`, no more, no fewer, none twice), and the key's
//! spend is the sum of the rows' costs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss
)]

use crate::common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::harness::{tenant_and_key, test_config, Gateway, WAIT};
use common::pg_cluster::PgCluster;
use common::stand_in::{backend, StandIn};
use common::TestDb;
use gateway::config::Config;
use gateway::ledger::spill::SPILL_FILE;
use gateway::routing::Zone;
use gateway::store::Store;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Cost of one stand-in answer (3 prompt + 1 completion tokens at 1 USD
/// per 1000 each way).
const USD_PER_REQUEST: f64 = 0.004;

struct Setup {
    pg: PgCluster,
    store: Store,
    tenant: String,
    key: String,
    _upstream: StandIn,
}

async fn setup() -> Setup {
    let pg = PgCluster::start().await;
    let store = Store::connect(Some(&pg.url()), Path::new("unused"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let upstream = StandIn::start().await;
    store
        .add_backend(&backend("cloud", &upstream.url, Zone::Cloud, 1.0))
        .await
        .unwrap();
    let (tenant, key) = tenant_and_key(&store, |_| {}).await;
    Setup {
        pg,
        store,
        tenant,
        key,
        _upstream: upstream,
    }
}

/// Keys and settings are served from the caches while the database is
/// down (a lookup would fail with 503), and rows go to `spill`.
fn config(spill: &Path) -> Config {
    Config {
        key_cache_ms: 600_000,
        settings_cache_ms: 600_000,
        ledger_spill_dir: Some(spill.to_owned()),
        ..test_config()
    }
}

fn body() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
}

/// One request's outcome as the client saw it.
#[derive(Debug, Clone)]
struct Outcome {
    sent: Instant,
    took: Duration,
    status: u16,
    ledger_id: Option<String>,
    /// `error.code` of an answer that is not a 200.
    code: Option<String>,
}

async fn send(client: &reqwest::Client, base: &str, key: &str) -> Outcome {
    let sent = Instant::now();
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body())
        .send()
        .await
        .expect("the gateway answers");
    let ledger_id = r
        .headers()
        .get("x-gateway-ledger-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    let code = (status != 200)
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    Outcome {
        sent,
        took: sent.elapsed(),
        status,
        ledger_id,
        code,
    }
}

/// How many answers were not a 200, and their (status, code) counts.
fn non_200(outcomes: &[Outcome]) -> (usize, std::collections::BTreeMap<(u16, String), usize>) {
    let mut by = std::collections::BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.status != 200) {
        *by.entry((o.status, o.code.clone().unwrap_or_default()))
            .or_insert(0) += 1;
    }
    (by.values().sum(), by)
}

/// The requests sent in one stretch of a run.
struct Window {
    sent: usize,
    errors: usize,
    p50_ms: f64,
    p99_ms: f64,
}

fn window(outcomes: &[Outcome], from: Instant, to: Instant) -> Window {
    let inside: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.sent >= from && o.sent < to)
        .collect();
    let mut ms: Vec<f64> = inside
        .iter()
        .map(|o| o.took.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = (ms.len() as f64 * q).ceil() as usize;
        ms.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
    };
    Window {
        sent: inside.len(),
        errors: inside.iter().filter(|o| o.status != 200).count(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent, {} errors, p50 {:.1} ms, p99 {:.1} ms",
            self.sent, self.errors, self.p50_ms, self.p99_ms
        )
    }
}

/// Open-loop load: one request every `1/rate` s whatever the answers do,
/// until stopped.
struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Outcome>>,
}

impl Load {
    fn start(base: String, key: String, rate: f64) -> Load {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let outcomes = Arc::new(Mutex::new(Vec::new()));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut running = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let (client, base, key) = (client.clone(), base.clone(), key.clone());
                let outcomes = Arc::clone(&outcomes);
                running.spawn(async move {
                    let o = send(&client, &base, &key).await;
                    outcomes.lock().unwrap().push(o);
                });
                while running.try_join_next().is_some() {}
            }
            while running.join_next().await.is_some() {}
            let done = outcomes.lock().unwrap().clone();
            done
        });
        Load { stop, task }
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// Waits until every row handed to (or recovered by) `gw`'s ledger is
/// stored: the writer's own signal, no sleeping.
async fn drained(gw: &Gateway) {
    let target = gw.state.ledger.enqueued() + gw.state.ledger.recovered();
    let mut written = gw.state.ledger.written();
    let reached = tokio::time::timeout(WAIT, written.wait_for(|w| *w >= target)).await;
    assert!(
        reached.is_ok(),
        "ledger not drained: {:?}",
        gw.state.ledger.backlog()
    );
}

/// The tenant's ledger ids (checked unique) and the key's spend, read
/// through a pool of the test's own: the one the gateways shared may hold
/// connections opened on a stopped gateway's serving runtimes, whose
/// reactors are gone ("a Tokio 1.x context was found, but it is being
/// shutdown").
async fn ledger_of(s: &Setup) -> (HashSet<String>, f64, f64) {
    let store = Store::connect(Some(&s.pg.url()), Path::new("unused"))
        .await
        .unwrap();
    let rows = store
        .recent_ledger(Some(&s.tenant), 1_000_000)
        .await
        .unwrap();
    let ids: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), rows.len(), "a ledger row is duplicated");
    let cost: f64 = rows.iter().filter_map(|r| r.usd).sum();
    let key = store
        .key_by_hash(&gateway::keys::hash(&s.key))
        .await
        .unwrap()
        .unwrap();
    store.close().await;
    (ids, cost, key.spent_usd)
}

fn admitted(outcomes: &[Outcome]) -> HashSet<String> {
    let ids: HashSet<String> = outcomes
        .iter()
        .filter_map(|o| o.ledger_id.clone())
        .collect();
    let with_id = outcomes.iter().filter(|o| o.ledger_id.is_some()).count();
    assert_eq!(ids.len(), with_id, "two responses carried one ledger id");
    ids
}

fn assert_exact(admitted: &HashSet<String>, stored: &HashSet<String>) {
    let lost: Vec<_> = admitted.difference(stored).take(5).collect();
    let extra: Vec<_> = stored.difference(admitted).take(5).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "ledger differs from the admitted requests: {} admitted, {} stored; lost {lost:?}, unexpected {extra:?}",
        admitted.len(),
        stored.len()
    );
}

fn assert_spend(cost: f64, spent: f64, rows: usize) {
    assert!(
        (cost - spent).abs() < 1e-9,
        "key spend {spent} differs from the rows' cost {cost}"
    );
    assert!(
        (cost - rows as f64 * USD_PER_REQUEST).abs() < 1e-9,
        "rows cost {cost}, expected {rows} × {USD_PER_REQUEST}"
    );
}

fn spill_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(SPILL_FILE)).map_or(0, |t| t.lines().count())
}

/// The backlog sampled every 20 ms.
struct Sample {
    at: Instant,
    spill_rows: u64,
    memory_rows: u64,
    reachable: Option<bool>,
}

fn monitor(gw: &Gateway, stop: CancellationToken) -> tokio::task::JoinHandle<Vec<Sample>> {
    let ledger = gw.state.ledger.clone();
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.is_cancelled() {
            let b = ledger.backlog();
            samples.push(Sample {
                at: Instant::now(),
                spill_rows: b.spill_rows,
                memory_rows: b.memory_rows,
                reachable: b.store_reachable,
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples
    })
}

/// How long after `from` the spill file was first empty again.
fn drained_after(samples: &[Sample], from: Instant) -> Option<Duration> {
    samples
        .iter()
        .find(|s| s.at >= from && s.spill_rows == 0)
        .map(|s| s.at.duration_since(from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_under_load_loses_nothing() {
    let s = setup().await;
    let spill = tempfile::tempdir().unwrap();
    // A small memory bound, so the outage reaches the spill file.
    let config = Config {
        ledger_queue: 20,
        ..config(spill.path())
    };
    let gw = Gateway::start(TestDb::external(s.store.clone()), config).await;
    let warm = send(&gw.client, &gw.base, &s.key).await;
    assert_eq!(warm.status, 200);
    drained(&gw).await;

    let watching = CancellationToken::new();
    let watch = monitor(&gw, watching.clone());
    let start = Instant::now();
    let load = Load::start(gw.base.clone(), s.key.clone(), 60.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Long enough for the writer to fail several attempts (each waits out
    // the pool's 5 s connect timeout) on rows from memory and from the
    // spill file.
    s.pg.stop().await;
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let during = gw.state.ledger.backlog();
    let (_, ready) = readyz(&gw).await;
    s.pg.resume().await;
    let up = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // A restart mid-run: connections are cut, the server is back at once.
    s.pg.stop().await;
    let restart = Instant::now();
    s.pg.resume().await;
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let outcomes = load.finish().await;
    drained(&gw).await;
    watching.cancel();
    let samples = watch.await.unwrap();

    let mut all = outcomes.clone();
    all.push(warm);
    let admitted = admitted(&all);
    let (stored, cost, spent) = ledger_of(&s).await;
    let before = window(&outcomes, start, down);
    let outage = window(&outcomes, down, up);
    let restarting = window(&outcomes, restart, restarted + Duration::from_secs(1));
    let max_spill = samples.iter().map(|s| s.spill_rows).max().unwrap_or(0);
    let max_memory = samples.iter().map(|s| s.memory_rows).max().unwrap_or(0);
    let seen_down = samples
        .iter()
        .any(|s| s.at >= down && s.at < up && s.reachable == Some(false));
    let recovery = drained_after(&samples, up);
    let (failed, failed_by) = non_200(&outcomes);
    println!(
        "postgres outage under load: {} requests, {} admitted, {} ledger rows, {} non-200 \
         answers {:?}; before the fault: {before}; stopped {:.1} s: {outage}; restart ({:.1} s \
         down) and the second after: {restarting}; backlog at the end of the outage {:?}; most \
         rows in the spill file {max_spill}, in memory {max_memory}; spill file empty {:.2} s \
         after postgres was back; spend {spent:.3} USD = rows {cost:.3} USD",
        outcomes.len(),
        admitted.len(),
        stored.len(),
        failed,
        failed_by,
        up.duration_since(down).as_secs_f64(),
        restarted.duration_since(restart).as_secs_f64(),
        during,
        recovery.map_or(f64::NAN, |d| d.as_secs_f64()),
    );

    assert!(
        seen_down,
        "the backlog never said the store was unreachable"
    );
    assert!(max_spill > 0, "the outage never reached the spill file");
    assert_eq!(ready["status"], "ready", "{ready}");
    assert!(
        ready["ledger"]["spill_rows"].as_u64().unwrap() > 0,
        "{ready}"
    );
    assert!(
        outage.sent > 300,
        "too few requests during the outage to prove anything"
    );
    assert_eq!(outage.errors, 0, "requests failed while postgres was down");
    assert_exact(&admitted, &stored);
    assert_eq!(gw.state.ledger.enqueued() as usize, stored.len());
    assert_spend(cost, spent, stored.len());
    assert!(recovery.is_some(), "the spill file never drained");
    assert_eq!(spill_lines(spill.path()), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_while_postgres_is_down_replays_its_spill_exactly_once() {
    let s = setup().await;
    let spill = tempfile::tempdir().unwrap();
    let gw = Gateway::start(TestDb::external(s.store.clone()), config(spill.path())).await;
    let mut outcomes = vec![send(&gw.client, &gw.base, &s.key).await];
    drained(&gw).await;

    s.pg.stop().await;
    for _ in 0..40 {
        outcomes.push(send(&gw.client, &gw.base, &s.key).await);
    }
    assert!(outcomes.iter().all(|o| o.status == 200));
    // A graceful stop that cannot reach the database leaves the rows on
    // disk.
    let db = gw.shutdown().await;
    let on_disk = spill_lines(spill.path());
    assert_eq!(on_disk, 40, "rows in the spill file after shutdown");
    let kept: PathBuf = spill.path().join("copy");
    std::fs::copy(spill.path().join(SPILL_FILE), &kept).unwrap();
    // A torn last line, as a machine crash in the middle of an append
    // would leave: cut off at start, the rows before it kept.
    append(spill.path(), br#"{"id":"torn-row","tenant_id":"#);

    s.pg.resume().await;
    let started = Instant::now();
    let gw = Gateway::start(db, config(spill.path())).await;
    assert_eq!(gw.state.ledger.recovered(), 40);
    drained(&gw).await;
    let replay = started.elapsed();
    let (stored, cost, spent) = ledger_of(&s).await;
    let admitted = admitted(&outcomes);
    assert_exact(&admitted, &stored);
    assert_spend(cost, spent, stored.len());
    assert_eq!(spill_lines(spill.path()), 0, "the spill file is emptied");

    // The same rows once more, as after a crash between storing them and
    // emptying the file: skipped, spend unchanged.
    let db = gw.shutdown().await;
    std::fs::copy(&kept, spill.path().join(SPILL_FILE)).unwrap();
    let gw = Gateway::start(db, config(spill.path())).await;
    assert_eq!(gw.state.ledger.recovered(), 40);
    drained(&gw).await;
    let (again, cost_again, spent_again) = ledger_of(&s).await;
    assert_eq!(again, stored);
    assert_spend(cost_again, spent_again, again.len());
    assert!((spent_again - spent).abs() < 1e-12, "spend added twice");
    println!(
        "graceful stop while postgres was down: 41 admitted, {on_disk} rows in the spill file, \
         replayed in {:.2} s after start, {} ledger rows; replayed again: {} rows, spend \
         {spent_again:.3} USD unchanged",
        replay.as_secs_f64(),
        stored.len(),
        again.len()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spill_refuses_new_requests_until_postgres_returns() {
    let s = setup().await;
    let spill = tempfile::tempdir().unwrap();
    // Memory large enough that it is the small spill file that fills:
    // rows move to it at every retry once the outage has lasted a second.
    let config = Config {
        ledger_queue: 5_000,
        ledger_spill_max_bytes: 8 << 10,
        ..config(spill.path())
    };
    let gw = Gateway::start(TestDb::external(s.store.clone()), config.clone()).await;
    let mut outcomes = vec![send(&gw.client, &gw.base, &s.key).await];
    drained(&gw).await;

    s.pg.stop().await;
    let mut refused = None;
    for i in 0..4_000 {
        let o = send(&gw.client, &gw.base, &s.key).await;
        let status = o.status;
        outcomes.push(o);
        if status == 503 {
            refused = Some(i);
            break;
        }
        // Give the writer a moment to move rows to the file.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused.is_some(), "a full spill never refused a request");
    // Refused before admission: no ledger id, no row (checked below), and
    // before the body is read, so even a body that does not parse gets 503.
    assert_eq!(outcomes.last().unwrap().ledger_id, None);
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&s.key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("x-gateway-ledger-id").is_none());
    let refusal: Value = r.json().await.unwrap();
    assert_eq!(refusal["error"]["code"], "service_unavailable", "{refusal}");
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 503);
    assert_eq!(ready["ledger"]["full"], true, "{ready}");
    assert!(
        ready["ledger"]["spill_bytes"].as_u64().unwrap() >= config.ledger_spill_max_bytes,
        "{ready}"
    );
    let text = gw.metrics().await;
    for name in [
        "gateway_ledger_spill_rows",
        "gateway_ledger_spill_bytes",
        "gateway_ledger_memory_rows",
        "gateway_ledger_oldest_age_seconds",
        "gateway_ledger_backlog_full 1",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }

    s.pg.resume().await;
    drained(&gw).await;
    assert_eq!(readyz(&gw).await.0, 200);
    let after = send(&gw.client, &gw.base, &s.key).await;
    assert_eq!(after.status, 200);
    outcomes.push(after);
    drained(&gw).await;
    let (stored, cost, spent) = ledger_of(&s).await;
    assert_exact(&admitted(&outcomes), &stored);
    assert_spend(cost, spent, stored.len());
    println!(
        "full spill: refused after {} requests during the outage, {} rows stored after it",
        refused.unwrap_or(0),
        stored.len()
    );
    gw.shutdown().await;
}

/// `/readyz`: its status and JSON body.
async fn readyz(gw: &Gateway) -> (u16, Value) {
    let r = gw.client.get(gw.url("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn append(dir: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(SPILL_FILE))
        .unwrap();
    f.write_all(bytes).unwrap();
}
