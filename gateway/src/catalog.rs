//! A short-lived cache of the operator's settings (backends, aliases, and
//! per tenant the routing policy and compiled privacy rules), so the request
//! path reads the store at most once per `settings_cache_ms` instead of
//! several times per request.
//!
//! A refresh that fails keeps serving the previous snapshot (logged): a
//! database blip should not stop routing to backends that are still there.
//! Refreshes are serialised by a mutex so a burst of requests after expiry
//! causes one read, not one per request.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::privacy::{RuleSet, RuleSpec};
use crate::routing::{Alias, Backend, Policy};
use crate::store::{Store, StoreError};

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
    pub rules: RuleSet,
}

struct Cached<T> {
    value: Arc<T>,
    at: Instant,
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
    #[must_use]
    pub fn new(store: Store, ttl: Duration) -> Catalog {
        Catalog {
            inner: Arc::new(Inner {
                store,
                ttl,
                snapshot: RwLock::new(None),
                tenants: RwLock::new(HashMap::new()),
                refresh: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn fresh<T>(&self, c: &Cached<T>) -> bool {
        c.at.elapsed() < self.inner.ttl
    }

    /// Backends and aliases, at most `ttl` old (or older if the store fails).
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, CatalogError> {
        if let Some(c) = read(&self.inner.snapshot).as_ref() {
            if self.fresh(c) {
                return Ok(Arc::clone(&c.value));
            }
        }
        let _guard = self.inner.refresh.lock().await;
        let stale = match read(&self.inner.snapshot).as_ref() {
            Some(c) if self.fresh(c) => return Ok(Arc::clone(&c.value)),
            Some(c) => Some(Arc::clone(&c.value)),
            None => None,
        };
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
            if self.fresh(c) {
                return Ok(Arc::clone(&c.value));
            }
        }
        let _guard = self.inner.refresh.lock().await;
        if let Some(c) = read(&self.inner.tenants).get(tenant_id) {
            if self.fresh(c) {
                return Ok(Arc::clone(&c.value));
            }
        }
        let store = &self.inner.store;
        let policy = store.get_policy(tenant_id).await?.unwrap_or_default();
        let specs: Vec<RuleSpec> = store
            .privacy_rules_for(Some(tenant_id))
            .await?
            .into_iter()
            .map(|r| r.spec)
            .collect();
        let rules = RuleSet::compile(&specs).map_err(|e| {
            tracing::error!(error = %e, tenant_id, "stored privacy rules do not compile");
            CatalogError::Rules
        })?;
        let value = Arc::new(TenantSettings { policy, rules });
        write(&self.inner.tenants).insert(
            tenant_id.to_owned(),
            Cached {
                value: Arc::clone(&value),
                at: Instant::now(),
            },
        );
        Ok(value)
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
