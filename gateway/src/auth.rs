//! Bearer-key authentication with a bounded cache.
//!
//! A presented key not of the generated shape (`keys::well_formed`) is
//! refused at once. Any other is hashed (SHA-256) and looked up by hash; the
//! plaintext is never stored, logged or kept past the hash. Found keys are
//! cached for `key_cache_ms` in a size-bounded cache (`moka`, TinyLFU), so
//! revocation takes effect within that time. A key in use past that time is
//! served once more while one background task reads it again, so no request
//! waits for a routine refresh; a key unused for [`STALE_FACTOR`] lifetimes
//! is read before it is served. Revocation thus takes effect within
//! `key_cache_ms` plus one store read. Unknown hashes go to a second,
//! separate cache: a flood of random keys can neither evict valid keys nor
//! make the same key cost a query twice within the window, and concurrent
//! lookups of one hash share one query. Expiry is checked on every request
//! against the clock, not the cache. On Postgres the caches are also dropped
//! whenever an admin change to keys commits ([`KeyCache::invalidate_all`],
//! driven by `fleet::changes`), so a revocation takes effect on every
//! gateway at once; the TTL remains the bound when no notification comes.
//!
//! A credential that is neither cached nor known costs a store query, so
//! guessing is counted per peer ([`Guesses`]): a peer (an IPv4 address, an
//! IPv6 /64) whose lookups came back unknown `auth_guesses_per_minute`
//! times gets no store query for a credential the caches do not know until
//! its minute is over ([`AuthError::Guessing`], 429 with `Retry-After`).
//! Keys already cached still work from it; admin tokens, dashboard session
//! cookies and the worker token are counted the same way. Behind reverse
//! proxies named in `trusted_proxies`, the peer is the client their
//! `X-Forwarded-For` names ([`Proxies`]).
//!
//! This module knows no HTTP status: it returns [`AuthError`], which the
//! HTTP layer renders.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{header, HeaderMap};
use moka::future::Cache;

use crate::catalog::STALE_FACTOR;
use crate::keys;
use crate::store::{now_ms, ApiKey, Store, StoreError};

/// Entries kept in each cache.
const MAX_ENTRIES: u64 = 100_000;

/// Why a request is not authenticated (or not authorised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer key, or one that is unknown, revoked or expired. Callers
    /// must not say which.
    #[error("invalid key")]
    InvalidKey,
    /// The key lacks the scope.
    #[error("key lacks scope {0}")]
    MissingScope(&'static str),
    /// The key store cannot be reached.
    #[error("key store unavailable")]
    StoreUnavailable,
    /// The key store failed otherwise (logged where it happened).
    #[error("key store failed")]
    StoreFailed,
    /// The peer has guessed too often ([`Guesses`]); `wait` is what is
    /// left of its minute.
    #[error("too many unknown credentials from this address")]
    Guessing { wait: Duration },
}

/// Where a request comes from, as far as guessing goes: its IPv4 address,
/// or its IPv6 /64 (what one host is usually given). The server sets it
/// on every request; a request without one (the app driven in process)
/// counts as one peer of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer(IpAddr);

impl Peer {
    #[must_use]
    pub fn of(addr: IpAddr) -> Peer {
        Peer(match addr.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 @ IpAddr::V4(_) => v4,
        })
    }
}

/// The reverse proxies in front of the gateway (`trusted_proxies`): a
/// request that came through one is the peer its `X-Forwarded-For` names,
/// read from the right, skipping the proxies' own addresses. What a client
/// writes there itself stands further left and is never reached, unless
/// the client is a trusted proxy too. No proxies: the connection's peer,
/// whatever the header says.
#[derive(Debug, Clone, Default)]
pub struct Proxies(Vec<ipnet::IpNet>);

impl Proxies {
    /// Comma-separated addresses and CIDR ranges (`10.0.0.0/8, ::1`).
    pub fn parse(list: &str) -> Result<Proxies, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("trusted_proxies: {s:?} is not an address or a range"))
            })
            .collect::<Result<_, _>>()
            .map(Proxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The peer of a request that came over a connection from `socket`.
    #[must_use]
    pub fn peer(&self, socket: IpAddr, headers: &HeaderMap) -> Peer {
        if !self.trusts(socket) {
            return Peer::of(socket);
        }
        let mut last = socket;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let hop = hop.trim();
            let Some(ip) = hop
                .parse::<IpAddr>()
                .ok()
                .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
            else {
                break;
            };
            last = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        Peer::of(last)
    }
}

/// How long a peer's guesses are counted together.
const GUESS_WINDOW: Duration = Duration::from_secs(60);

/// Unknown credentials per peer (see the module's documentation): a count
/// per peer, kept for [`GUESS_WINDOW`] from the peer's first guess in it.
/// Bounded like the key caches; a peer evicted early only starts afresh.
#[derive(Clone)]
pub struct Guesses {
    /// 0: not counted.
    limit: u32,
    counts: moka::sync::Cache<Option<Peer>, Arc<(AtomicU32, Instant)>>,
}

impl Guesses {
    #[must_use]
    pub fn new(per_minute: u32) -> Guesses {
        Guesses {
            limit: per_minute,
            counts: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(GUESS_WINDOW)
                .build(),
        }
    }

    /// Whether `peer` may have a store lookup now; if not, how long until
    /// it may.
    pub fn check(&self, peer: Option<Peer>) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        match self.counts.get(&peer) {
            Some(count) if count.0.load(Ordering::Relaxed) >= self.limit => {
                Err(GUESS_WINDOW.saturating_sub(count.1.elapsed()))
            }
            _ => Ok(()),
        }
    }

    /// Counts a lookup of `peer`'s that found nothing.
    pub fn missed(&self, peer: Option<Peer>) {
        if self.limit == 0 {
            return;
        }
        let count = self
            .counts
            .get_with(peer, || Arc::new((AtomicU32::new(0), Instant::now())));
        if count.0.fetch_add(1, Ordering::Relaxed) + 1 == self.limit {
            metrics::counter!("gateway_auth_guessing_peers_total").increment(1);
            tracing::warn!("a peer's unknown credentials reached the limit; lookups paused");
        }
    }
}

impl From<&StoreError> for AuthError {
    fn from(e: &StoreError) -> AuthError {
        tracing::error!(error = %e, "key lookup failed");
        match e {
            StoreError::Unavailable(_) => AuthError::StoreUnavailable,
            _ => AuthError::StoreFailed,
        }
    }
}

/// Why a shared lookup produced no key; not cached by `moka`.
#[derive(Debug)]
enum Miss {
    Unknown,
    Failed(AuthError),
}

/// A found key and when it was read.
struct Found {
    key: Arc<ApiKey>,
    at: Instant,
}

#[derive(Clone)]
pub struct KeyCache {
    store: Store,
    ttl: Duration,
    /// Kept for [`STALE_FACTOR`] lifetimes; older than `ttl`, refreshed
    /// behind the request.
    found: Cache<String, Arc<Found>>,
    unknown: Cache<String, ()>,
    /// Unknown credentials per peer, admin tokens' too.
    pub guesses: Guesses,
    /// Hashes a background task is reading again.
    refreshing: Arc<Mutex<HashSet<String>>>,
    /// Bumped by [`KeyCache::invalidate_all`]: a lookup that started
    /// before a change may have read the old row, so its answer is used
    /// once but not kept.
    generation: Arc<AtomicU64>,
}

impl KeyCache {
    #[must_use]
    pub fn new(store: Store, ttl: Duration, guesses_per_minute: u32) -> KeyCache {
        KeyCache {
            store,
            ttl,
            guesses: Guesses::new(guesses_per_minute),
            found: Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(ttl * STALE_FACTOR)
                .build(),
            unknown: Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(ttl)
                .build(),
            refreshing: Arc::new(Mutex::new(HashSet::new())),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Forgets every cached answer: the next request of each key reads
    /// the store again.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.found.invalidate_all();
        self.unknown.invalidate_all();
    }

    /// The active key behind the request's `Authorization: Bearer` header,
    /// sent from `peer`.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<Peer>,
    ) -> Result<Arc<ApiKey>, AuthError> {
        let presented = bearer(headers)
            .filter(|k| keys::well_formed(k, keys::KEY_PREFIX))
            .ok_or(AuthError::InvalidKey)?;
        let hash = keys::hash(presented);
        let key = self
            .lookup(hash, peer)
            .await?
            .ok_or(AuthError::InvalidKey)?;
        if !key.is_active(now_ms()) {
            return Err(AuthError::InvalidKey);
        }
        Ok(key)
    }

    async fn lookup(
        &self,
        hash: String,
        peer: Option<Peer>,
    ) -> Result<Option<Arc<ApiKey>>, AuthError> {
        if let Some(found) = self.found.get(&hash).await {
            if found.at.elapsed() >= self.ttl {
                self.refresh_behind(hash);
            }
            return Ok(Some(Arc::clone(&found.key)));
        }
        if self.unknown.contains_key(&hash) {
            return Ok(None);
        }
        self.guesses
            .check(peer)
            .map_err(|wait| AuthError::Guessing { wait })?;
        let generation = self.generation.load(Ordering::Acquire);
        let store = self.store.clone();
        let query_hash = hash.clone();
        let looked_up = self
            .found
            .try_get_with(hash.clone(), async move {
                match store.key_by_hash(&query_hash).await {
                    Ok(Some(key)) => Ok(Arc::new(Found {
                        key: Arc::new(key),
                        at: Instant::now(),
                    })),
                    Ok(None) => Err(Miss::Unknown),
                    Err(e) => Err(Miss::Failed(AuthError::from(&e))),
                }
            })
            .await;
        let changed = self.generation.load(Ordering::Acquire) != generation;
        match looked_up {
            Ok(found) => {
                if changed {
                    self.found.invalidate(&hash).await;
                }
                Ok(Some(Arc::clone(&found.key)))
            }
            Err(miss) => match *miss {
                Miss::Unknown => {
                    self.guesses.missed(peer);
                    if !changed {
                        self.unknown.insert(hash, ()).await;
                    }
                    Ok(None)
                }
                Miss::Failed(e) => Err(e),
            },
        }
    }
}

impl KeyCache {
    /// Reads a cached key again in a background task, unless one already
    /// does: replaced when found, dropped when gone (revoked keys are not
    /// found), kept when the store fails (until it is too old to serve).
    fn refresh_behind(&self, hash: String) {
        let mut refreshing = self
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !refreshing.insert(hash.clone()) {
            return;
        }
        drop(refreshing);
        let this = self.clone();
        tokio::spawn(async move {
            let generation = this.generation.load(Ordering::Acquire);
            let read = this.store.key_by_hash(&hash).await;
            let changed = this.generation.load(Ordering::Acquire) != generation;
            match read {
                Ok(Some(key)) if !changed => {
                    let found = Found {
                        key: Arc::new(key),
                        at: Instant::now(),
                    };
                    this.found.insert(hash.clone(), Arc::new(found)).await;
                }
                Ok(_) => this.found.invalidate(&hash).await,
                Err(e) => tracing::warn!(error = %e, "key refresh failed; serving the cached key"),
            }
            this.refreshing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&hash);
        });
    }
}

/// The bearer credential of `headers`: one `Authorization` header, scheme
/// `Bearer` in any case, a token after it. Two `Authorization` headers are
/// no credential at all: a proxy in front may read the other one, so
/// which caller this is would depend on who is asked.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether the key may use an endpoint: keys without scopes may use all.
pub fn require_scope(key: &ApiKey, scope: &'static str) -> Result<(), AuthError> {
    if key.scopes.is_empty() || key.scopes.iter().any(|s| s == scope) {
        Ok(())
    } else {
        Err(AuthError::MissingScope(scope))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderValue;

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
        // Two headers, whichever comes first: refused.
        let mut two = HeaderMap::new();
        two.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        two.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(bearer(&two), None);
    }

    /// Behind trusted proxies, the client is the last address in
    /// `X-Forwarded-For` that is not a proxy's; what the client wrote
    /// itself is never reached.
    #[test]
    fn a_trusted_proxys_client_is_read_from_the_right() {
        let proxies = Proxies::parse(" 10.0.0.0/8, ::1 ,").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let with = |xff: &[&str]| {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let peer = |socket: &str, xff: &[&str]| proxies.peer(ip(socket), &with(xff));
        let client = Peer::of(ip("192.0.2.1"));
        // A proxy's client, through one proxy or two, over IPv4 or IPv6.
        assert_eq!(peer("10.0.0.1", &["192.0.2.1"]), client);
        assert_eq!(peer("10.0.0.1", &["6.6.6.6, 192.0.2.1, 10.9.9.9"]), client);
        assert_eq!(peer("::1", &["6.6.6.6", "192.0.2.1:5555"]), client);
        assert_eq!(peer("::ffff:10.0.0.1", &["192.0.2.1"]), client);
        // Not through a proxy: the header is the client's own word.
        assert_eq!(peer("192.0.2.1", &["10.0.0.7"]), client);
        assert_eq!(peer("192.0.2.1", &[]), client);
        // Only proxies, or nothing readable: the last proxy seen.
        assert_eq!(peer("10.0.0.1", &["10.0.0.2"]), Peer::of(ip("10.0.0.2")));
        assert_eq!(peer("10.0.0.1", &["junk"]), Peer::of(ip("10.0.0.1")));
        assert_eq!(peer("10.0.0.1", &[]), Peer::of(ip("10.0.0.1")));
        assert!(Proxies::parse("10.0.0.0/8, example.com").is_err());
        assert!(Proxies::parse("").unwrap().0.is_empty());
    }

    /// An IPv6 peer is its /64, an IPv4-mapped one its IPv4 address.
    #[test]
    fn peers_are_addresses_and_ipv6_prefixes() {
        let peer = |s: &str| Peer::of(s.parse().unwrap());
        assert_eq!(peer("2001:db8::1"), peer("2001:db8::ffff:ffff:ffff:ffff"));
        assert_ne!(peer("2001:db8::1"), peer("2001:db8:0:1::1"));
        assert_eq!(peer("::ffff:192.0.2.7"), peer("192.0.2.7"));
        assert_ne!(peer("192.0.2.7"), peer("192.0.2.8"));
    }

    #[test]
    fn a_peer_past_its_guesses_waits_out_its_minute_alone() {
        let guesses = Guesses::new(2);
        let (a, b) = (
            Some(Peer::of([192, 0, 2, 1].into())),
            Some(Peer::of([192, 0, 2, 2].into())),
        );
        assert_eq!(guesses.check(a), Ok(()));
        guesses.missed(a);
        assert_eq!(guesses.check(a), Ok(()));
        guesses.missed(a);
        let wait = guesses.check(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(50) && wait <= GUESS_WINDOW,
            "{wait:?}"
        );
        assert_eq!(guesses.check(b), Ok(()));
        assert_eq!(guesses.check(None), Ok(()));
        // 0: not counted.
        let off = Guesses::new(0);
        for _ in 0..10 {
            off.missed(a);
        }
        assert_eq!(off.check(a), Ok(()));
    }

    /// With the store gone, a key of the generated shape cannot be checked
    /// (503), but one of any other shape is refused without asking it.
    #[tokio::test]
    async fn a_key_not_of_the_generated_shape_is_refused_without_a_store_query() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(None, &dir.path().join("gateway.db"))
            .await
            .unwrap();
        store.close().await;
        let cache = KeyCache::new(store, Duration::from_secs(60), 0);
        let with = |key: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
            );
            h
        };
        let shaped = format!("gw-{}", "ab".repeat(32));
        assert_eq!(
            cache.authenticate(&with(&shaped), None).await.err(),
            Some(AuthError::StoreUnavailable)
        );
        for junk in [
            "gw-abc",
            &format!("{shaped}0"),
            &shaped.to_uppercase(),
            "sk-proj-123",
        ] {
            assert_eq!(
                cache.authenticate(&with(junk), None).await.err(),
                Some(AuthError::InvalidKey),
                "{junk}"
            );
        }
    }
}
