//! Admin changes reach every gateway at once: each gateway on Postgres
//! follows the store's change feed and drops its caches of keys and
//! settings when a change commits, so a revoked key is refused, and a new
//! backend or policy used, by every gateway within the time a notification
//! takes (milliseconds), not after a cache TTL.
//!
//! The TTLs stay as the fallback: while the feed is down (Postgres
//! restarting) caches expire as before, and on every (re)connection the
//! caches are dropped once, since changes may have been missed meanwhile.
//! A single gateway on SQLite has no feed and relies on the TTLs alone.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::auth::KeyCache;
use crate::catalog::Catalog;
use crate::store::changes::{Change, ChangeFeed};

/// Wait before reconnecting after the feed failed.
const RETRY: Duration = Duration::from_secs(1);

/// The caches a change invalidates.
pub struct Caches {
    pub keys: KeyCache,
    pub catalog: Catalog,
}

impl Caches {
    fn drop_all(&self, why: &str) {
        self.keys.invalidate_all();
        self.catalog.invalidate();
        metrics::counter!("gateway_cache_invalidations_total").increment(1);
        tracing::debug!(why, "caches dropped");
    }

    fn apply(&self, change: &Change) {
        match change {
            Change::Table(table) if table == "api_keys" || table == "tenants" => {
                self.keys.invalidate_all();
                // A tenant's removal also removes its policy and rules.
                if table == "tenants" {
                    self.catalog.invalidate();
                }
                metrics::counter!("gateway_cache_invalidations_total").increment(1);
            }
            Change::Table(_) => {
                self.catalog.invalidate();
                metrics::counter!("gateway_cache_invalidations_total").increment(1);
            }
            Change::Reconnected => self.drop_all("change feed reconnected"),
        }
    }

    /// Follows the change feed of the Postgres at `url` until `stop` fires.
    pub async fn follow(self, url: SecretString, stop: CancellationToken) {
        loop {
            let connected = tokio::select! {
                () = stop.cancelled() => return,
                c = ChangeFeed::connect(url.expose_secret()) => c,
            };
            let mut feed = match connected {
                Ok(feed) => feed,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow admin changes; caches expire by TTL");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(RETRY) => continue,
                    }
                }
            };
            self.drop_all("change feed connected");
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    n = feed.next() => n,
                };
                match next {
                    Ok(change) => self.apply(&change),
                    Err(e) => {
                        // The caches are kept: the feed usually fails
                        // because Postgres went away, and dropped caches
                        // would make every request read the store that is
                        // gone. Changes missed meanwhile are covered by the
                        // drop on reconnection, and the TTLs until then.
                        tracing::warn!(error = %e, "admin change feed failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}
