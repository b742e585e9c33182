//! A short-lived cache of the operator's settings (backends, aliases, and
//! per tenant the routing policy and compiled privacy rules), so the request
//! path reads the store at most once per `settings_cache_ms` instead of
//! several times per request.
//!
//! An entry older than `settings_cache_ms` is still served while one
//! background task reads the store again (stale-while-revalidate), so no
//! request waits for a routine refresh: waiting for it was the gateway's
//! slowest percentile. A stale entry is served for at most
//! [`STALE_FACTOR`] lifetimes; after that, and whenever the entry was
//! invalidated or the lifetime is 0, the request reads the store itself.
//! Reads are serialised by a mutex so a burst of requests causes one read,
//! not one per request.
//!
//! A refresh that fails keeps serving the previous snapshot (logged): a
//! database blip should not stop routing to backends that are still there.
//!
//! [`Catalog::invalidate`] drops everything at once (an admin change was
//! notified, see `fleet::changes`); a read that was under way when it
//! happened is served but not kept, and the next request reads the store
//! before it is served, so a privacy rule just added is never missed once
//! its notification arrived. Edge workers that registered
//! themselves (`fleet::registry`) are added to each snapshot after the
//! stored backends; a stored backend with the same URL wins.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::privacy::{RuleSet, RuleSpec};
use crate::routing::{Alias, Backend, Policy};
use crate::store::{Store, StoreError};

/// How many lifetimes old an entry may be and still be served while a
/// background read refreshes it.
pub const STALE_FACTOR: u32 = 4;

/// Backends and aliases as of one read.
#[derive(Debug)]
pub struct Snapshot {
    /// Every backend, enabled or not, ordered by name.
    pub backends: Vec<Backend>,
    pub aliases: Vec<Alias>,
}

/// One tenant's routing policy and privacy detectors.
#[derive(Debug)]
pub struct TenantSettings {
    pub policy: Policy,
    pub rules: Arc<RuleSet>,
    /// The rows `rules` was compiled from: a refresh that reads the same
    /// rows keeps the compiled set instead of building its regexes again.
    specs: Vec<RuleSpec>,
}

struct Cached<T> {
    value: Arc<T>,
    at: Instant,
    /// [`Inner::generation`] when the read started.
    generation: u64,
}

/// Cheap to clone; all clones share the cache.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    ttl: Duration,
    snapshot: RwLock<Option<Cached<Snapshot>>>,
    tenants: RwLock<HashMap<String, Cached<TenantSettings>>>,
    /// Held while reading the store, so concurrent misses share one read.
    refresh: tokio::sync::Mutex<()>,
    /// A background refresh of the snapshot is under way.
    refreshing_snapshot: AtomicBool,
    /// Tenants whose settings a background task is refreshing.
    refreshing_tenants: std::sync::Mutex<HashSet<String>>,
    /// Bumped by [`Catalog::invalidate`]; entries of an older generation
    /// are stale whatever their age.
    generation: AtomicU64,
    /// The serving self-registered workers, when there is a registry.
    workers: Option<watch::Receiver<Arc<Vec<Backend>>>>,
    /// The last stored snapshot merged with the workers, and what it was
    /// merged from, so requests share one merge until either changes.
    merged: RwLock<Option<Merged>>,
}

struct Merged {
    stored: Arc<Snapshot>,
    workers: Arc<Vec<Backend>>,
    value: Arc<Snapshot>,
}

/// Why settings cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored privacy rule does not compile (it was validated when added,
    /// so this means a manual edit); requests fail closed.
    #[error("stored privacy rules do not compile")]
    Rules,
}

impl Catalog {
    /// Stored settings only.
    #[must_use]
    pub fn new(store: Store, ttl: Duration) -> Catalog {
        Catalog::build(store, ttl, None)
    }

    /// Stored settings, plus the self-registered workers that `workers`
    /// publishes (see `fleet::registry::Registry::watch`).
    #[must_use]
    pub fn with_workers(
        store: Store,
        ttl: Duration,
        workers: watch::Receiver<Arc<Vec<Backend>>>,
    ) -> Catalog {
        Catalog::build(store, ttl, Some(workers))
    }

    fn build(
        store: Store,
        ttl: Duration,
        workers: Option<watch::Receiver<Arc<Vec<Backend>>>>,
    ) -> Catalog {
        Catalog {
            inner: Arc::new(Inner {
                store,
                ttl,
                snapshot: RwLock::new(None),
                tenants: RwLock::new(HashMap::new()),
                refresh: tokio::sync::Mutex::new(()),
                refreshing_snapshot: AtomicBool::new(false),
                refreshing_tenants: std::sync::Mutex::new(HashSet::new()),
                generation: AtomicU64::new(0),
                workers,
                merged: RwLock::new(None),
            }),
        }
    }

    /// Makes every cached setting stale: the next request reads the
    /// store (and falls back to the stale backends if that fails).
    pub fn invalidate(&self) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    fn fresh<T>(&self, c: &Cached<T>) -> bool {
        self.age(c) == Age::Fresh
    }

    fn age<T>(&self, c: &Cached<T>) -> Age {
        let ttl = self.inner.ttl;
        let age = c.at.elapsed();
        if c.generation != self.generation() {
            Age::Expired
        } else if age < ttl {
            Age::Fresh
        } else if age < ttl * STALE_FACTOR {
            Age::Stale
        } else {
            Age::Expired
        }
    }

    /// Backends (stored, then self-registered) and aliases; the stored part
    /// at most `ttl` old (or older if the store fails).
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, CatalogError> {
        let stored = self.stored_snapshot().await?;
        let Some(workers) = &self.inner.workers else {
            return Ok(stored);
        };
        let workers = Arc::clone(&*workers.borrow());
        if workers.is_empty() {
            return Ok(stored);
        }
        if let Some(m) = read(&self.inner.merged).as_ref() {
            if Arc::ptr_eq(&m.stored, &stored) && Arc::ptr_eq(&m.workers, &workers) {
                return Ok(Arc::clone(&m.value));
            }
        }
        let mut backends = stored.backends.clone();
        backends.extend(
            workers
                .iter()
                .filter(|w| !stored.backends.iter().any(|b| b.base_url == w.base_url))
                .cloned(),
        );
        let value = Arc::new(Snapshot {
            backends,
            aliases: stored.aliases.clone(),
        });
        *write(&self.inner.merged) = Some(Merged {
            stored,
            workers,
            value: Arc::clone(&value),
        });
        Ok(value)
    }

    async fn stored_snapshot(&self) -> Result<Arc<Snapshot>, CatalogError> {
        if let Some(c) = read(&self.inner.snapshot).as_ref() {
            match self.age(c) {
                Age::Fresh => return Ok(Arc::clone(&c.value)),
                Age::Stale => {
                    self.refresh_snapshot_behind();
                    return Ok(Arc::clone(&c.value));
                }
                Age::Expired => {}
            }
        }
        self.read_snapshot().await
    }

    /// Starts one background read of the snapshot unless one is running.
    fn refresh_snapshot_behind(&self) {
        if self.inner.refreshing_snapshot.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // A failure is logged and the stale value kept by the read.
            let _ = this.read_snapshot().await;
            this.inner
                .refreshing_snapshot
                .store(false, Ordering::Release);
        });
    }

    /// Reads the snapshot from the store unless a fresh one appeared while
    /// waiting for the refresh lock.
    async fn read_snapshot(&self) -> Result<Arc<Snapshot>, CatalogError> {
        let _guard = self.inner.refresh.lock().await;
        let stale = match read(&self.inner.snapshot).as_ref() {
            Some(c) if self.fresh(c) => return Ok(Arc::clone(&c.value)),
            Some(c) => Some(Arc::clone(&c.value)),
            None => None,
        };
        let generation = self.generation();
        let loaded = async {
            Ok::<_, StoreError>(Snapshot {
                backends: self.inner.store.list_backends().await?,
                aliases: self.inner.store.list_aliases().await?,
            })
        }
        .await;
        match (loaded, stale) {
            (Ok(s), _) => {
                let value = Arc::new(s);
                *write(&self.inner.snapshot) = Some(Cached {
                    value: Arc::clone(&value),
                    at: Instant::now(),
                    generation,
                });
                Ok(value)
            }
            (Err(e), Some(stale)) => {
                tracing::warn!(error = %e, "settings refresh failed; serving the previous snapshot");
                Ok(stale)
            }
            (Err(e), None) => Err(e.into()),
        }
    }

    /// The tenant's policy (the default when it has none) and compiled rules.
    pub async fn tenant(&self, tenant_id: &str) -> Result<Arc<TenantSettings>, CatalogError> {
        if let Some(c) = read(&self.inner.tenants).get(tenant_id) {
            match self.age(c) {
                Age::Fresh => return Ok(Arc::clone(&c.value)),
                Age::Stale => {
                    self.refresh_tenant_behind(tenant_id);
                    return Ok(Arc::clone(&c.value));
                }
                Age::Expired => {}
            }
        }
        self.read_tenant(tenant_id).await
    }

    /// Starts one background read of a tenant's settings unless one is
    /// running.
    fn refresh_tenant_behind(&self, tenant_id: &str) {
        if !lock(&self.inner.refreshing_tenants).insert(tenant_id.to_owned()) {
            return;
        }
        let this = self.clone();
        let tenant_id = tenant_id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = this.read_tenant(&tenant_id).await {
                tracing::warn!(error = %e, tenant_id, "tenant settings refresh failed; serving the previous ones");
            }
            lock(&this.inner.refreshing_tenants).remove(&tenant_id);
        });
    }

    /// Reads a tenant's settings from the store unless fresh ones appeared
    /// while waiting for the refresh lock.
    async fn read_tenant(&self, tenant_id: &str) -> Result<Arc<TenantSettings>, CatalogError> {
        let _guard = self.inner.refresh.lock().await;
        if let Some(c) = read(&self.inner.tenants).get(tenant_id) {
            if self.fresh(c) {
                return Ok(Arc::clone(&c.value));
            }
        }
        let generation = self.generation();
        let store = &self.inner.store;
        let policy = store.get_policy(tenant_id).await?.unwrap_or_default();
        let specs: Vec<RuleSpec> = store
            .privacy_rules_for(Some(tenant_id))
            .await?
            .into_iter()
            .map(|r| r.spec)
            .collect();
        let unchanged = read(&self.inner.tenants)
            .get(tenant_id)
            .filter(|c| c.value.specs == specs)
            .map(|c| Arc::clone(&c.value.rules));
        let rules = match unchanged {
            Some(rules) => rules,
            None => Arc::new(RuleSet::compile(&specs).map_err(|e| {
                tracing::error!(error = %e, tenant_id, "stored privacy rules do not compile");
                CatalogError::Rules
            })?),
        };
        let value = Arc::new(TenantSettings {
            policy,
            rules,
            specs,
        });
        write(&self.inner.tenants).insert(
            tenant_id.to_owned(),
            Cached {
                value: Arc::clone(&value),
                at: Instant::now(),
                generation,
            },
        );
        Ok(value)
    }
}

/// How an entry stands against the lifetime and the last invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Age {
    Fresh,
    /// Past its lifetime: served while a background read replaces it.
    Stale,
    /// Invalidated, or too old to serve: the request reads the store.
    Expired,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
