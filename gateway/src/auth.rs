//! Bearer-key authentication with a short cache.
//!
//! The presented key is hashed (SHA-256) and looked up by hash; the
//! plaintext is never stored, logged or kept past the hash. Lookups are
//! cached for `key_cache_ms`, misses included (so a client hammering with a
//! bad key costs one query per window), which bounds how long a revoked key
//! keeps working. Expiry is checked on every request against the clock, not
//! the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};

use crate::http::ApiError;
use crate::keys;
use crate::store::{now_ms, ApiKey, Store};

/// Entries kept before the whole cache is cleared; a crude bound that keeps
/// memory finite under a flood of random keys without an LRU.
const MAX_ENTRIES: usize = 100_000;

/// Key hash → when it was looked up and what was found (misses too).
type Entries = HashMap<String, (Instant, Option<Arc<ApiKey>>)>;

#[derive(Clone)]
pub struct KeyCache {
    store: Store,
    ttl: Duration,
    entries: Arc<Mutex<Entries>>,
}

impl KeyCache {
    #[must_use]
    pub fn new(store: Store, ttl: Duration) -> KeyCache {
        KeyCache {
            store,
            ttl,
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The active key behind the request's `Authorization: Bearer` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<ApiKey>, ApiError> {
        let presented = bearer(headers).ok_or(ApiError::InvalidKey)?;
        let hash = keys::hash(presented);
        let key = self.lookup(hash).await?.ok_or(ApiError::InvalidKey)?;
        if !key.is_active(now_ms()) {
            return Err(ApiError::InvalidKey);
        }
        Ok(key)
    }

    async fn lookup(&self, hash: String) -> Result<Option<Arc<ApiKey>>, ApiError> {
        {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, key)) = entries.get(&hash) {
                if at.elapsed() < self.ttl {
                    return Ok(key.clone());
                }
            }
        }
        let key = self.store.key_by_hash(&hash).await?.map(Arc::new);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (Instant::now(), key.clone()));
        Ok(key)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether the key may use an endpoint: keys without scopes may use all.
pub fn require_scope(key: &ApiKey, scope: &'static str) -> Result<(), ApiError> {
    if key.scopes.is_empty() || key.scopes.iter().any(|s| s == scope) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(scope))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn bearer_parsing() {
        let cases = [
            ("Bearer gw-abc", Some("gw-abc")),
            ("bearer  gw-abc ", Some("gw-abc")),
            ("Basic gw-abc", None),
            ("Bearer ", None),
            ("gw-abc", None),
        ];
        for (value, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&h), want, "{value:?}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
