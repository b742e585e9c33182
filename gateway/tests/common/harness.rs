//! The gateway served in-process on a loopback port over a test database,
//! with helpers to seed backends and keys, send requests, and wait for the
//! ledger and the live view.

#![allow(dead_code, clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use gateway::config::Config;
use gateway::live::BackendLive;
use gateway::privacy::Class;
use gateway::routing::{Backend, BackendKind, Capabilities, ModelMapping, Zone};
use gateway::store::{LedgerEntry, LedgerStatus, NewKeySpec, Store};
use gateway::AppState;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::edge::{EdgeWorker, MODEL, WORKER_TOKEN};
use super::TestDb;

/// How long any wait in these tests may take before it fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// Fast polling, generous poll timeouts (parallel tests share two cores)
/// and quick failure detection.
pub fn test_config() -> Config {
    Config {
        poll_interval_ms: 100,
        poll_timeout_ms: 5_000,
        unhealthy_after: 2,
        key_cache_ms: 200,
        settings_cache_ms: 100,
        upstream_connect_timeout_ms: 1_000,
        upstream_first_byte_timeout_ms: 30_000,
        upstream_idle_timeout_ms: 30_000,
        worker_token: Some(secrecy::SecretString::from(WORKER_TOKEN)),
        ..Config::default()
    }
}

/// An edge backend for the bundled model at `url`.
pub fn edge_backend(name: &str, url: &str) -> Backend {
    Backend {
        id: String::new(),
        name: name.to_owned(),
        kind: BackendKind::Edge,
        base_url: url.to_owned(),
        zone: Zone::OnPrem,
        api_key_env: None,
        models: vec![ModelMapping {
            public: MODEL.to_owned(),
            upstream: MODEL.to_owned(),
        }],
        price_in_per_1k: 0.0,
        price_out_per_1k: 0.0,
        joules_per_prompt_token: 0.2,
        joules_per_output_token: 0.2,
        rtt_ms: 1.0,
        prefill_tps: 200.0,
        decode_tps: 30.0,
        max_concurrency: 0,
        context_length: 8192,
        enabled: true,
        capabilities: Capabilities::default(),
    }
}

/// USD per 1000 prompt and output tokens of [`cloud_backend`]: dear enough
/// that an idle edge wins even when parallel tests slow it down.
pub const CLOUD_PRICE_IN: f64 = 0.5;
pub const CLOUD_PRICE_OUT: f64 = 1.5;

/// A priced cloud backend serving the same public model as `cloud-model`
/// (the mock is started to accept only that name, so a missing rewrite
/// shows up as a 404).
pub fn cloud_backend(name: &str, url: &str) -> Backend {
    Backend {
        kind: BackendKind::Cloud,
        zone: Zone::Cloud,
        models: vec![ModelMapping {
            public: MODEL.to_owned(),
            upstream: "cloud-model".to_owned(),
        }],
        price_in_per_1k: CLOUD_PRICE_IN,
        price_out_per_1k: CLOUD_PRICE_OUT,
        joules_per_prompt_token: 0.0,
        joules_per_output_token: 0.0,
        rtt_ms: 50.0,
        prefill_tps: 2_000.0,
        decode_tps: 80.0,
        ..edge_backend(name, url)
    }
}

/// A cloud so fast and free that the cost model prefers it to the edge
/// for any request allowed to leave.
pub fn preferred_cloud(name: &str, url: &str) -> Backend {
    Backend {
        price_in_per_1k: 0.0,
        price_out_per_1k: 0.0,
        rtt_ms: 1.0,
        prefill_tps: 1e6,
        decode_tps: 1e5,
        ..cloud_backend(name, url)
    }
}

/// Starts the in-process mock cloud that accepts only `cloud-model`.
pub async fn mock_cloud() -> loadtest::mock_cloud::MockCloud {
    use loadtest::mock_cloud::{Behaviour, MockCloud, MockConfig};
    MockCloud::start(MockConfig {
        behaviour: Behaviour {
            models: vec!["cloud-model".into()],
            ..Behaviour::default()
        },
        ..MockConfig::default()
    })
    .await
    .expect("start mock cloud")
}

/// A tenant with one key; returns (tenant id, plaintext key).
pub async fn tenant_and_key(store: &Store, spec: impl FnOnce(&mut NewKeySpec)) -> (String, String) {
    let name = format!("t-{}", uuid::Uuid::new_v4().simple());
    let tenant = store.create_tenant(&name).await.unwrap();
    let mut s = NewKeySpec {
        tenant_id: tenant.id.clone(),
        default_class: Class::Public,
        scopes: vec!["chat".into(), "models".into()],
        requests_per_min: None,
        tokens_per_min: None,
        budget_usd: None,
        expires_at: None,
    };
    spec(&mut s);
    let created = store.create_key(&s).await.unwrap();
    (tenant.id, created.plaintext.expose_secret().to_owned())
}

pub struct Gateway {
    pub db: TestDb,
    pub state: AppState,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub client: reqwest::Client,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), gateway::server::ServeError>>,
}

impl Gateway {
    /// Serves `app(state)` on `127.0.0.1:0` over the (seeded) database.
    pub async fn start(db: TestDb, config: Config) -> Gateway {
        let state = AppState::start(config, db.store.clone()).expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let signal = stop.clone().cancelled_owned();
        let server = tokio::spawn(gateway::server::serve_on(listener, state.clone(), signal));
        Gateway {
            db,
            state,
            base,
            client: reqwest::Client::new(),
            stop,
            server,
        }
    }

    pub fn store(&self) -> &Store {
        &self.db.store
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The Prometheus text of `/metrics`. The recorder is global to the
    /// test process, so counters include other tests' requests.
    pub async fn metrics(&self) -> String {
        let r = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    pub async fn chat(&self, key: &str, body: &Value) -> reqwest::Response {
        self.chat_with(key, body, &[]).await
    }

    pub async fn chat_with(
        &self,
        key: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// Waits until `n` ledger rows are stored in total (the writer's flush
    /// signal), then returns the counts by status.
    pub async fn ledger_counts(&self, n: u64) -> HashMap<LedgerStatus, u64> {
        let mut written = self.state.ledger.written();
        let reached = tokio::time::timeout(WAIT, written.wait_for(|w| *w >= n))
            .await
            .is_ok();
        let have = *self.state.ledger.written().borrow();
        assert!(reached, "ledger rows: wanted {n}, have {have}");
        assert_eq!(
            self.state.ledger.enqueued(),
            n,
            "more ledger rows than requests"
        );
        self.store()
            .count_ledger_by_status()
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    /// The ledger row of a response (by its `x-gateway-ledger-id`).
    pub async fn row(&self, ledger_id: &str) -> LedgerEntry {
        self.state.ledger.flush().await;
        self.store()
            .ledger_entry(ledger_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no ledger row {ledger_id}"))
    }

    /// Waits until the live view of `backend_id` satisfies `pred`.
    pub async fn wait_live(&self, backend_id: &str, pred: impl Fn(&BackendLive) -> bool) {
        let mut changes = self.state.live.changes();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if pred(&self.state.live.get(backend_id)) {
                    return;
                }
                changes.changed().await.unwrap();
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "live view of {backend_id} never matched: {:?}",
            self.state.live.get(backend_id)
        );
    }

    /// Stops serving and flushes the ledger.
    pub async fn shutdown(self) -> TestDb {
        self.stop.cancel();
        self.server
            .await
            .expect("server task")
            .expect("server ended cleanly");
        self.state.shutdown().await;
        self.db
    }
}

/// A bounded greedy request for the bundled model.
pub fn chat_body(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

/// Reads an SSE body into its `data:` payloads.
pub async fn sse_data(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

/// Status and OpenAI error body of a response, checking the shape.
pub async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    for field in ["message", "type", "param", "code"] {
        assert!(
            body["error"].get(field).is_some(),
            "{field} missing in {body}"
        );
    }
    (status, body)
}

/// A real edge worker and the mock cloud, both registered as backends of a
/// started gateway whose poller has already seen the edge's load, plus a
/// tenant and its key: the common set-up of the edge routing and failure
/// tests. `cloud` builds the cloud backend from the mock's base URL.
pub struct EdgeSetup {
    pub edge: EdgeWorker,
    pub mock: loadtest::mock_cloud::MockCloud,
    pub gw: Gateway,
    pub edge_id: String,
    pub tenant: String,
    pub key: String,
}

pub async fn edge_and_cloud(
    db: TestDb,
    edge_args: &[&str],
    cloud: impl FnOnce(&str) -> Backend,
    config: Config,
) -> EdgeSetup {
    let edge = EdgeWorker::start(edge_args).await;
    let mock = mock_cloud().await;
    let e = db
        .store
        .add_backend(&edge_backend("edge", &edge.base))
        .await
        .unwrap();
    db.store
        .add_backend(&cloud(&mock.base_url()))
        .await
        .unwrap();
    let gw = Gateway::start(db, config).await;
    gw.wait_live(&e.id, |l| l.load.is_some()).await;
    let (tenant, key) = tenant_and_key(gw.store(), |_| {}).await;
    EdgeSetup {
        edge,
        mock,
        gw,
        edge_id: e.id,
        tenant,
        key,
    }
}

/// The sum of the samples of `name` (a counter, gauge, or a histogram's
/// `_count`/`_sum`/`_bucket`) in Prometheus text whose labels include all
/// of `labels`; 0 when none matches.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let (found, tail) = match rest.strip_prefix('{') {
                Some(inner) => inner.split_once('}')?,
                None => ("", rest),
            };
            let all = labels
                .iter()
                .all(|(k, v)| found.split(',').any(|l| l == format!("{k}=\"{v}\"")));
            (tail.is_empty() && all).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
