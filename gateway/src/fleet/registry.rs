//! Edge workers that registered themselves: a worker started with the
//! fleet's address sends a [`wire::Heartbeat`] about once a second; the
//! gateway that receives it checks it ([`listing`]) and records it for
//! `worker_ttl_ms`. Every gateway refreshes its list of live registrations
//! a few times a second, and the [`Catalog`](crate::catalog::Catalog) adds
//! them to the routing snapshot next to the stored backends, where the
//! poller and routing treat them like any configured edge backend.
//!
//! With Redis the registrations are shared: each is a key
//! `<prefix>worker:<name>` that expires `worker_ttl_ms` after its last
//! heartbeat, indexed by the set `<prefix>workers`, so a worker that stops
//! beating drops out of every gateway's list within that time plus one
//! refresh. Without Redis they live in this process.
//!
//! A registration names where the gateway will connect, so it is trusted
//! no further than an admin's `backend add`: only callers holding the
//! fleet's worker token may send one (checked in `http::fleet`), the zone
//! is always on-prem, and the URL must pass the same zone check (a
//! loopback, private or LAN host) with no credentials, path or query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use wire::{Heartbeat, LoadReport};

use super::{Redis, RedisCallError};
use crate::routing::{Backend, BackendKind, Capabilities, ModelMapping, Zone, ZoneMismatch};

/// Longest URL or model id accepted in a heartbeat.
const MAX_FIELD: usize = 256;

/// How often each gateway re-reads the registrations.
pub const REFRESH: Duration = Duration::from_millis(250);

/// Rates assumed until the worker has measured its own (tokens/s), low so
/// that an unmeasured worker is not preferred over a measured one.
const NOMINAL_PREFILL_TPS: f64 = 100.0;
const NOMINAL_DECODE_TPS: f64 = 10.0;

/// Why a heartbeat is refused. The messages name the rule, never echo the
/// value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("url must be http(s)://host:port with no credentials, path, query or fragment")]
    BadUrl,
    #[error("a self-registered worker is on-prem: {0}")]
    Zone(ZoneMismatch),
    #[error("the model id must be 1 to 256 printable characters without spaces")]
    BadModel,
}

/// One live registration, as stored and shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// The backend routing sees; `id` and `name` are both
    /// `worker:<host:port>`.
    pub backend: Backend,
    /// The report sent with the latest heartbeat.
    pub load: LoadReport,
}

impl Registered {
    /// Whether routing may use the worker now: its model is loaded and it
    /// is not draining. A loading or draining worker stays registered but
    /// unlisted.
    #[must_use]
    pub fn serving(&self) -> bool {
        self.load.ready && !self.load.draining && self.load.model.is_some()
    }
}

/// Checks a heartbeat and turns it into the backend it registers.
pub fn listing(beat: &Heartbeat) -> Result<Registered, Refused> {
    let base_url = plain_base_url(&beat.url).ok_or(Refused::BadUrl)?;
    let name = format!(
        "worker:{}",
        base_url.split_once("://").map_or("", |(_, rest)| rest)
    );
    let model = beat.load.model.clone().unwrap_or_default();
    if beat.load.model.is_some()
        && (model.is_empty()
            || model.len() > MAX_FIELD
            || !model.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Refused::BadModel);
    }
    let load = &beat.load;
    let backend = Backend {
        id: name.clone(),
        name,
        kind: BackendKind::Edge,
        base_url,
        zone: Zone::OnPrem,
        api_key_env: None,
        models: if model.is_empty() {
            Vec::new()
        } else {
            vec![ModelMapping {
                public: model.clone(),
                upstream: model,
            }]
        },
        price_in_per_1k: 0.0,
        price_out_per_1k: 0.0,
        joules_per_prompt_token: positive(load.joules_per_prompt_token).unwrap_or(0.0),
        joules_per_output_token: positive(load.joules_per_output_token).unwrap_or(0.0),
        rtt_ms: 1.0,
        prefill_tps: positive(load.prefill_tokens_per_s).unwrap_or(NOMINAL_PREFILL_TPS),
        decode_tps: positive(load.decode_tokens_per_s).unwrap_or(NOMINAL_DECODE_TPS),
        max_concurrency: 0,
        context_length: load.context_length.unwrap_or(0),
        enabled: true,
        capabilities: Capabilities {
            json_schema: load.capabilities.json_schema,
            tools: load.capabilities.tools,
        },
    };
    backend.check_zone().map_err(Refused::Zone)?;
    Ok(Registered {
        backend,
        load: beat.load.clone(),
    })
}

fn positive(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite() && *v > 0.0)
}

/// The plain form of a heartbeat's URL (`wire::plain_base_url`), for a URL
/// of a sane length.
fn plain_base_url(url: &str) -> Option<String> {
    if url.len() > MAX_FIELD {
        return None;
    }
    wire::plain_base_url(url)
}

/// Where registrations are kept.
enum Records {
    /// One gateway: name → (registration, expiry).
    Local(Mutex<HashMap<String, (Registered, Instant)>>),
    Redis(Redis),
}

/// Every registered edge worker: receives heartbeats, and publishes the
/// serving ones for the catalog. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    records: Records,
    ttl: Duration,
    /// The latest list of serving workers' backends, by name.
    serving: watch::Sender<Arc<Vec<Backend>>>,
    /// Wakes the refresh task when this gateway registered a new worker,
    /// so it is listed here without waiting for the next tick.
    joined: Notify,
}

/// Drops index entries whose registration expired and returns the rest.
/// Single-instance Redis: keys are built from the prefix in the script.
const LIST_SCRIPT: &str = r"
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. name)
  if v then table.insert(out, v) else redis.call('SREM', KEYS[1], name) end
end
return out
";

impl Registry {
    /// A registry in Redis when `redis` is given, else in this process.
    #[must_use]
    pub fn new(redis: Option<Redis>, ttl: Duration) -> Registry {
        let records = match redis {
            Some(r) => Records::Redis(r),
            None => Records::Local(Mutex::default()),
        };
        Registry {
            inner: Arc::new(Inner {
                records,
                ttl,
                serving: watch::Sender::new(Arc::new(Vec::new())),
                joined: Notify::new(),
            }),
        }
    }

    /// How long a registration lasts without a heartbeat.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The serving workers' backends, updated by [`Registry::run`].
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<Arc<Vec<Backend>>> {
        self.inner.serving.subscribe()
    }

    /// Records one heartbeat for `ttl`.
    pub async fn beat(&self, reg: Registered) -> Result<(), RedisCallError> {
        let name = reg.backend.name.clone();
        let is_new = !self.inner.serving.borrow().iter().any(|b| b.name == name);
        match &self.inner.records {
            Records::Local(map) => {
                let expires = Instant::now() + self.inner.ttl;
                lock(map).insert(name, (reg, expires));
            }
            Records::Redis(redis) => {
                let json = serde_json::to_string(&reg)
                    .map_err(|e| RedisCallError::Failed(e.to_string()))?;
                let key = redis.key(&format!("worker:{name}"));
                let index = redis.key("workers");
                let ttl = u64::try_from(self.inner.ttl.as_millis()).unwrap_or(u64::MAX);
                redis
                    .run("worker_beat", |mut c| async move {
                        redis::pipe()
                            .atomic()
                            .pset_ex(&key, json, ttl)
                            .ignore()
                            .sadd(&index, &name)
                            .ignore()
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await?;
            }
        }
        if is_new {
            self.inner.joined.notify_one();
        }
        Ok(())
    }

    /// Every live registration, serving or not.
    pub async fn list(&self) -> Result<Vec<Registered>, RedisCallError> {
        match &self.inner.records {
            Records::Local(map) => {
                let now = Instant::now();
                let mut map = lock(map);
                map.retain(|_, (_, expires)| *expires > now);
                Ok(map.values().map(|(r, _)| r.clone()).collect())
            }
            Records::Redis(redis) => {
                let index = redis.key("workers");
                let prefix = redis.key("worker:");
                let raw: Vec<String> = redis
                    .run("worker_list", |mut c| async move {
                        redis::Script::new(LIST_SCRIPT)
                            .key(index)
                            .arg(prefix)
                            .invoke_async(&mut c)
                            .await
                    })
                    .await?;
                Ok(raw
                    .iter()
                    .filter_map(|s| serde_json::from_str::<Registered>(s).ok())
                    .collect())
            }
        }
    }

    /// One refresh: publishes the serving workers if they changed. On a
    /// Redis failure the previous list stays.
    pub async fn refresh(&self) {
        let Ok(all) = self.list().await else {
            return;
        };
        let mut serving: Vec<Backend> = all
            .into_iter()
            .filter(Registered::serving)
            .map(|r| r.backend)
            .collect();
        serving.sort_by(|a, b| a.name.cmp(&b.name));
        metrics::gauge!("gateway_registered_workers").set(serving.len() as f64);
        self.inner.serving.send_if_modified(|current| {
            if **current == serving {
                return false;
            }
            let before: Vec<&str> = current.iter().map(|b| b.name.as_str()).collect();
            let after: Vec<&str> = serving.iter().map(|b| b.name.as_str()).collect();
            if before != after {
                tracing::info!(workers = ?after, "registered edge workers changed");
            }
            *current = Arc::new(serving);
            true
        });
    }

    /// Refreshes every [`REFRESH`] (and at once when a new worker joins
    /// through this gateway) until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
                () = self.inner.joined.notified() => {}
            }
            self.refresh().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report(model: Option<&str>) -> LoadReport {
        serde_json::from_value(serde_json::json!({
            "model": model, "context_length": 2048,
            "active_sequences": 0, "waiting_sequences": 0,
            "max_running_sequences": 4, "max_waiting_sequences": 16,
            "prefill_tokens_per_s": 300.0, "decode_tokens_per_s": null,
            "joules_per_prompt_token": null, "joules_per_output_token": null,
            "capabilities": {"json_schema": true, "tools": false},
            "ready": true, "draining": false
        }))
        .unwrap()
    }

    fn beat(url: &str) -> Heartbeat {
        Heartbeat {
            url: url.to_owned(),
            load: report(Some("smollm2")),
        }
    }

    #[test]
    fn a_local_worker_is_listed_as_an_on_prem_edge_backend() {
        let r = listing(&beat("http://10.0.0.7:8081/")).unwrap();
        let b = &r.backend;
        assert_eq!(b.name, "worker:10.0.0.7:8081");
        assert_eq!(b.base_url, "http://10.0.0.7:8081");
        assert_eq!((b.kind, b.zone), (BackendKind::Edge, Zone::OnPrem));
        assert_eq!(b.upstream_for("smollm2"), Some("smollm2"));
        assert!((b.prefill_tps - 300.0).abs() < 1e-9);
        assert!((b.decode_tps - NOMINAL_DECODE_TPS).abs() < 1e-9);
        assert!(b.capabilities.json_schema && !b.capabilities.tools);
        assert!(r.serving());
        for ok in [
            "http://127.0.0.1:9",
            "http://edge-1:8081",
            "http://[::1]:80",
        ] {
            assert!(listing(&beat(ok)).is_ok(), "{ok}");
        }
        // Another notation of a loopback address is stored in the plain one.
        let r = listing(&beat("http://2130706433:8081")).unwrap();
        assert_eq!(r.backend.base_url, "http://127.0.0.1:8081");
    }

    #[test]
    fn public_hosts_and_decorated_urls_are_refused() {
        let zone = Err(Refused::Zone(ZoneMismatch::OnPremPublicHost));
        let cases = [
            ("http://8.8.8.8:8081", zone.clone()),
            ("https://api.openai.com", zone.clone()),
            ("http://0x8.8.8.8:80", zone),
            ("http://user:pw@127.0.0.1:1", Err(Refused::BadUrl)),
            ("http://127.0.0.1:1/v1", Err(Refused::BadUrl)),
            ("http://127.0.0.1:1/?x=1", Err(Refused::BadUrl)),
            ("http://127.0.0.1:1/#f", Err(Refused::BadUrl)),
            ("file:///etc/passwd", Err(Refused::BadUrl)),
            ("not a url", Err(Refused::BadUrl)),
        ];
        for (url, want) in cases {
            assert_eq!(listing(&beat(url)).map(|_| ()), want, "{url}");
        }
        let mut b = beat("http://127.0.0.1:1");
        b.load.model = Some("two words".into());
        assert_eq!(listing(&b).map(|_| ()), Err(Refused::BadModel));
    }

    #[test]
    fn loading_or_draining_workers_are_registered_but_not_serving() {
        let mut b = beat("http://127.0.0.1:1");
        b.load.model = None;
        b.load.ready = false;
        assert!(!listing(&b).unwrap().serving());
        let mut b = beat("http://127.0.0.1:1");
        b.load.draining = true;
        assert!(!listing(&b).unwrap().serving());
    }

    #[tokio::test]
    async fn local_registrations_expire_after_the_ttl() {
        let registry = Registry::new(None, Duration::from_millis(60));
        registry
            .beat(listing(&beat("http://127.0.0.1:1")).unwrap())
            .await
            .unwrap();
        registry.refresh().await;
        assert_eq!(registry.watch().borrow().len(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        registry.refresh().await;
        assert!(registry.watch().borrow().is_empty());
    }
}
