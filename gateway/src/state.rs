//! The serving state shared by every handler, and its background tasks.

use std::sync::{Arc, PoisonError};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::KeyCache;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::fleet::changes::Caches;
use crate::fleet::health::SharedLive;
use crate::fleet::registry::Registry;
use crate::fleet::{Redis, RedisCallError};
use crate::ledger::{Ledger, LedgerError, LedgerOptions};
use crate::limits::{InProcessLimiter, Limiter, SharedLimiter, SharedLimiterError};
use crate::live::load::LoadTracker;
use crate::live::poller::Poller;
use crate::live::retry::RetryBudget;
use crate::live::{InProcessLive, LiveView};
use crate::server::RuntimeThread;
use crate::store::Store;
use crate::upstream::Upstreams;

/// Cheap to clone: two `Arc`s.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
    /// The upstream HTTP clients. Each serving thread has clients of its
    /// own ([`AppState::with_own_clients`]): a pooled connection is driven
    /// by the runtime that opened it, so shared clients would hand every
    /// upstream answer from one thread to another.
    pub upstreams: Upstreams,
}

pub struct Inner {
    pub config: Config,
    pub store: Store,
    pub keys: KeyCache,
    pub catalog: Catalog,
    pub live: Arc<dyn LiveView>,
    /// Each edge worker's arrival and service rates (from the poller's
    /// reports) and this gateway's sends, for the predicted queue wait.
    pub load: Arc<LoadTracker>,
    /// What the privacy detectors found in long texts seen before
    /// (`privacy_memo`; `None`: every text is scanned each time).
    pub privacy_memo: Option<crate::privacy::Memo>,
    /// Which edge worker recently served which leading prompt.
    pub affinity: Arc<crate::live::affinity::Affinity>,
    /// How long each tenant's answers and prompts for each model turn out,
    /// on average.
    pub lengths: Arc<crate::live::lengths::Lengths>,
    /// Failover attempts this gateway may still make (see `live::retry`).
    pub retries: RetryBudget,
    /// Edge workers that registered themselves (shared through Redis when
    /// configured); the catalog lists the serving ones.
    pub registry: Registry,
    pub limiter: Arc<dyn Limiter>,
    /// Keys the limiter refused for requests/min, and until when.
    pub refusals: crate::limits::Refusals,
    pub ledger: Ledger,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The poller, the ledger writer, the worker registry's refresh, the
    /// health sync and the change feed run here, so shutdown can wait for
    /// every one of them.
    tasks: TaskTracker,
    /// Stops the poller; the ledger writer stops when its queue closes.
    stop: CancellationToken,
    /// Cancelled when shutdown's grace period is over: every stream still
    /// being relayed ends with an SSE error event and a `cancelled` row.
    pub streams_end: CancellationToken,
    /// One permit per request being handled (`max_in_flight`); a request
    /// that finds none gets 503 at once.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Scans of bodies over `classify_inline_bytes` running at once, one
    /// per CPU: beyond them a request waits for a slot without holding a
    /// thread.
    pub classify_slots: Arc<tokio::sync::Semaphore>,
    /// Each key's requests in flight (`max_in_flight_per_key`).
    pub key_in_flight: Arc<crate::limits::KeyInFlight>,
    /// The serving threads' runtimes (see `server`), ended last at
    /// shutdown: a database or Redis connection opened during a request is
    /// driven by the runtime that opened it, and the ledger's last rows may
    /// still go through it.
    serve_threads: std::sync::Mutex<Vec<RuntimeThread>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// Why the state cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot build the upstream HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot start the ledger")]
    Ledger(#[source] LedgerError),
    #[error("cannot set up the shared limits")]
    Limits(#[source] SharedLimiterError),
    #[error("invalid redis_url")]
    Redis(#[source] RedisCallError),
}

impl AppState {
    /// Builds the state over an opened, migrated store and starts the load
    /// poller and the ledger writer.
    pub fn start(config: Config, store: Store) -> Result<AppState, StartError> {
        let upstreams = Upstreams::new(&config).map_err(StartError::Client)?;
        crate::privacy::warm_up();
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let redis = Redis::from_config(&config).map_err(StartError::Redis)?;
        let registry = Registry::new(redis.clone(), Config::ms(config.worker_ttl_ms));
        tasks.spawn(registry.clone().run(stop.clone()));
        let catalog = Catalog::with_workers(
            store.clone(),
            Config::ms(config.settings_cache_ms),
            registry.watch(),
        );
        let cooldown = Config::ms(config.unhealthy_cooldown_ms);
        let live: Arc<dyn LiveView> = match redis {
            Some(redis) => {
                let (live, sync) = SharedLive::new(redis, config.unhealthy_after, cooldown);
                tasks.spawn(sync.run(stop.clone()));
                Arc::new(live)
            }
            None => Arc::new(InProcessLive::new(config.unhealthy_after, cooldown)),
        };
        let keys = KeyCache::new(
            store.clone(),
            Config::ms(config.key_cache_ms),
            config.auth_guesses_per_minute,
        );
        if let (Some(url), crate::store::Dialect::Postgres) =
            (&config.database_url, store.dialect())
        {
            let caches = Caches {
                keys: keys.clone(),
                catalog: catalog.clone(),
            };
            tasks.spawn(caches.follow(url.clone(), stop.clone()));
        }
        let ledger = Ledger::start(store.clone(), LedgerOptions::from_config(&config), &tasks)
            .map_err(StartError::Ledger)?;
        let load = Arc::new(LoadTracker::new());
        let poller = Poller {
            catalog: catalog.clone(),
            live: Arc::clone(&live),
            tracker: Arc::clone(&load),
            upstreams: upstreams.clone(),
            interval: Config::ms(config.poll_interval_ms),
            timeout: Config::ms(config.poll_timeout_ms),
        };
        tasks.spawn(poller.run(stop.clone()));
        // With Redis, limits and budget holds are shared by the fleet;
        // without it they are exact for this one gateway.
        let limiter: Arc<dyn Limiter> = match &config.redis_url {
            Some(url) => Arc::new(
                SharedLimiter::start(&config, url, &tasks, &stop).map_err(StartError::Limits)?,
            ),
            None => Arc::new(InProcessLimiter::new()),
        };
        Ok(AppState {
            upstreams,
            inner: Arc::new(Inner {
                keys,
                catalog,
                live,
                load,
                privacy_memo: config.privacy_memo.then(crate::privacy::Memo::default),
                affinity: Arc::new(crate::live::affinity::Affinity::new()),
                lengths: Arc::new(crate::live::lengths::Lengths::new()),
                registry,
                limiter,
                refusals: crate::limits::Refusals::new(),
                ledger,
                metrics: {
                    let handle = crate::telemetry::metrics_handle();
                    metrics::gauge!("gateway_grid_gco2_per_kwh").set(config.grid_gco2_per_kwh);
                    handle
                },
                tasks,
                stop,
                streams_end: CancellationToken::new(),
                in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
                classify_slots: Arc::new(tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
                )),
                key_in_flight: crate::limits::KeyInFlight::new(config.max_in_flight_per_key),
                serve_threads: std::sync::Mutex::default(),
                retries: RetryBudget::new(config.retry_budget_ratio, config.retry_budget_min_per_s),
                store,
                config,
            }),
        })
    }

    /// The same state with upstream clients of its own, for a serving
    /// thread (see [`AppState::upstreams`]).
    pub fn with_own_clients(&self) -> Result<AppState, StartError> {
        Ok(AppState {
            inner: Arc::clone(&self.inner),
            upstreams: Upstreams::new(&self.config).map_err(StartError::Client)?,
        })
    }

    /// Ends every stream still being relayed (see [`Inner::streams_end`]).
    pub fn end_streams(&self) {
        self.streams_end.cancel();
    }

    /// Keeps serving threads' runtimes until [`AppState::shutdown`].
    pub(crate) fn keep_until_shutdown(&self, threads: Vec<RuntimeThread>) {
        self.serve_threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(threads);
    }

    /// Stops the poller, closes the ledger queue and waits until every
    /// queued row is stored, then ends the serving threads. Call after the
    /// server stopped taking requests.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.ledger.close();
        self.tasks.close();
        self.tasks.wait().await;
        let threads = std::mem::take(
            &mut *self
                .serve_threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for thread in threads {
            thread.stop().await;
        }
    }
}
