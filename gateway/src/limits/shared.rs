//! Limits and budgets shared by every gateway on one Redis.
//!
//! A busy key's requests are admitted from this gateway's *lease* of it
//! ([`super::lease`]): a slice of each rate and of the budget that Redis
//! granted ahead of need and already counts against the key, renewed in
//! the background before it runs out, so that the request waits on no
//! round trip. A request the lease cannot admit (the key's first, a key
//! whose limits are too small to slice, a budget near its end) takes the
//! exact path: its admission (both rates and the budget hold, all or
//! nothing) is one Lua script ([`super::scripts`]), one round trip bounded
//! by `redis_timeout_ms`. What each admission waited on Redis (0 from a
//! lease) is the histogram `gateway_limits_redis_seconds`; admissions from
//! a lease count in `gateway_limits_leased_total`, renewals' round trips in
//! `gateway_limits_lease_seconds`. When a call times out or fails, the
//! gateway does not wait and does not fail the request: it decides from an
//! in-process limiter holding its *share* of each limit (the limit divided
//! by the number of gateways it last saw alive), which keeps the fleet's
//! total near the limit without any coordination. The first call that succeeds
//! again returns to Redis; settlements that could not be sent wait in a
//! bounded queue and are sent then. A call that timed out may still have
//! run (a stalled Redis runs what queued once it resumes), so a settlement
//! counts once however often it is sent (see [`scripts::SETTLED_TTL_MS`]).
//!
//! A background task ([`SharedLimiter::start`]) beats this gateway's
//! heartbeat, counts the live gateways, runs the reconciler (releasing the
//! holds of gateways whose heartbeat expired, i.e. killed ones, and of
//! holds past their deadline) and retries queued settlements, once a
//! second. Settlements arrive from `Drop` (a ledger record's), so they go
//! through a channel to a second task that sends them, those that arrive
//! within a few milliseconds of each other in one round trip.
//!
//! Logs and metrics name key ids at most, never key material.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lease::{Leases, Need, Terms};
use super::local::worst_nusd;
use super::scripts::{self, Admit, BudgetTerms, GiveBack, Hold, Keys, RateSlice, Slices, Verdict};
use super::{
    budget_nusd, ceil_secs, to_nusd, Admission, Book, BudgetAsk, BudgetHold, InProcessLimiter,
    KeyLimits, LimitExceeded, Limiter, Settle, Settlement,
};
use crate::config::Config;

/// How often the heartbeat, the reconciler and the settlement retry run.
const BEAT: Duration = Duration::from_secs(1);

/// A gateway is alive while its last beat is younger than this: three
/// missed beats. A killed gateway's holds are released within about this
/// long.
const GATEWAY_TTL: Duration = Duration::from_secs(3);

/// Heartbeats in a row Redis must answer before this gateway releases the
/// holds of gateways that stopped beating: more than a gateway's life
/// without a beat. When Redis itself stalls (paused, or too slow for the
/// calls' timeout) every gateway's mark can expire at once; the first
/// reconciler to run afterwards would take the live gateways for killed
/// ones and release the holds of requests still running, letting new
/// requests spend past the budget. Holds past their deadline are released
/// at every beat.
const STEADY_BEATS: u32 = (GATEWAY_TTL.as_millis() / BEAT.as_millis()) as u32 + 1;

/// Settlements kept while Redis is unreachable. Past it the oldest are
/// dropped: their holds are released by the reconciler at their deadline,
/// and their spend reaches Redis through the store's figure.
const MAX_PENDING: usize = 100_000;

/// How long the settler waits after a settlement for others to send with
/// it, and how many it sends at most in one round trip. A hold is released
/// that much later, which only delays room in a budget, never adds any.
const SETTLE_LINGER: Duration = Duration::from_millis(10);
const SETTLE_BATCH: usize = 64;

/// A lease's slices: each rate's is `LEASE_RATE_SECONDS` of the key's
/// limit shared among the live gateways, and none below
/// `MIN_RATE_SLICE` (requests) or `MIN_TOKEN_SLICES` requests' tokens;
/// the budget's is up to `MAX_BUDGET_SLICE` worst cases, at most an
/// eighth of each gateway's share of what is left, and none below
/// `MIN_BUDGET_SLICE` worst cases. So a key with small limits, or a budget
/// near its end, stays on the exact path, and what one gateway's lease can
/// strand is a second of each rate and an eighth of what the budget has
/// left.
const LEASE_RATE_SECONDS: u32 = 1;
const MIN_RATE_SLICE: u64 = 2;
const MIN_TOKEN_SLICES: u64 = 4;
const MAX_BUDGET_SLICE: i64 = 256;
const MIN_BUDGET_SLICE: i64 = 8;

/// Why the shared limiter cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SharedLimiterError {
    /// The URL does not parse; its text is not repeated (it may hold a
    /// password).
    #[error("invalid redis_url")]
    Url,
}

/// [`Limiter`] over Redis, with in-process shares as the fallback.
#[derive(Clone)]
pub struct SharedLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    con: ConnectionManager,
    keys: Keys,
    timeout: Duration,
    /// Names this process's holds and heartbeat; new on every start.
    gateway_id: String,
    /// How long a hold may outlive its request: the longest a request can
    /// run, plus a margin.
    hold_ttl: Duration,
    /// Gateways seen alive at the last heartbeat (at least 1): the divisor
    /// of the fallback shares.
    live_gateways: AtomicU32,
    /// Whether the last Redis call succeeded; logged when it changes.
    up: AtomicBool,
    /// Rate limits while Redis cannot be reached, with shared-out limits.
    fallback: InProcessLimiter,
    /// Holds made while Redis could not be reached, against this gateway's
    /// share of what was left of each budget. Cleared when Redis returns.
    fallback_book: Arc<Book>,
    /// Per key, `(spent, reserved)` as Redis last reported them: what the
    /// fallback shares out.
    last_seen: Mutex<HashMap<String, (i64, i64)>>,
    /// Settlements that could not be sent, oldest first.
    pending: Mutex<VecDeque<Settlement>>,
    /// This gateway's leases of each key's limits.
    leases: Leases,
    /// What goes back to Redis at the next beat, per key: the grants whose
    /// answer was lost (revoked: they may have run), and ended leases'
    /// unused budget that Redis did not take back yet, each named so that
    /// it counts once; sent again at every beat until Redis takes it.
    unreturned: Mutex<VecDeque<(String, GiveBack, Slices)>>,
    /// Numbers this gateway's give-backs and merged settlements.
    seq: AtomicU64,
    settlements: mpsc::UnboundedSender<Settlement>,
}

impl SharedLimiter {
    /// Builds the limiter (the Redis connection is made lazily, so a
    /// gateway starts while Redis is down) and starts its two tasks on
    /// `tasks`; they stop on `stop`.
    pub fn start(
        config: &Config,
        url: &secrecy::SecretString,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<SharedLimiter, SharedLimiterError> {
        let client =
            redis::Client::open(url.expose_secret()).map_err(|_| SharedLimiterError::Url)?;
        let timeout = Config::ms(config.redis_timeout_ms);
        // A small retry count: the manager reconnects in the background,
        // and every call is bounded by `timeout` anyway.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|_| SharedLimiterError::Url)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let limiter = SharedLimiter {
            inner: Arc::new(Inner {
                con,
                keys: Keys::new(&config.redis_prefix),
                timeout,
                gateway_id: uuid::Uuid::new_v4().simple().to_string(),
                hold_ttl: Config::ms(config.upstream_total_timeout_ms)
                    + Config::ms(config.body_read_timeout_ms)
                    + Duration::from_secs(60),
                live_gateways: AtomicU32::new(1),
                up: AtomicBool::new(true),
                fallback: InProcessLimiter::new(),
                fallback_book: Arc::new(Book::new()),
                last_seen: Mutex::new(HashMap::new()),
                pending: Mutex::new(VecDeque::new()),
                leases: Leases::new(Config::ms(config.redis_lease_ms)),
                unreturned: Mutex::new(VecDeque::new()),
                seq: AtomicU64::new(0),
                settlements: tx,
            }),
        };
        metrics::gauge!("gateway_limits_redis_up").set(1.0);
        tasks.spawn(settler(Arc::clone(&limiter.inner), rx, stop.clone()));
        tasks.spawn(beat(Arc::clone(&limiter.inner), stop.clone()));
        Ok(limiter)
    }

    /// Gateways seen alive at the last heartbeat.
    #[must_use]
    pub fn live_gateways(&self) -> u32 {
        self.inner.live_gateways.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Runs one Redis call within the timeout. `None` on timeout or error,
    /// and at once while Redis is known to be down: then only the
    /// heartbeat ([`Inner::probe`]) tries it, once a second, so an outage
    /// adds no wait to requests.
    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.up.load(Ordering::Acquire) {
            return None;
        }
        self.probe(what, f).await
    }

    /// Runs one Redis call within the timeout whether or not Redis was
    /// down, recording whether it answered.
    async fn probe<T, F, Fut>(&self, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let result = tokio::time::timeout(self.timeout, f(self.con.clone())).await;
        match result {
            Ok(Ok(v)) => {
                self.mark_up();
                Some(v)
            }
            Ok(Err(e)) => {
                // The server's message (a script's error, say): it names no
                // secret, and tells what failed better than its kind.
                self.mark_down(what, &e.to_string());
                None
            }
            Err(_) => {
                self.mark_down(what, "timeout");
                None
            }
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            // Holds made during the outage settle into nothing now; their
            // spend still reaches Redis through the settlement queue.
            self.fallback_book.clear();
            metrics::gauge!("gateway_limits_redis_up").set(1.0);
            tracing::info!("redis answers again; limits and budgets are shared again");
        }
    }

    fn mark_down(&self, what: &'static str, why: &str) {
        metrics::counter!("gateway_limits_redis_errors_total", "call" => what).increment(1);
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!("gateway_limits_redis_up").set(0.0);
            tracing::warn!(
                call = what,
                why,
                live_gateways = self.live_gateways.load(Ordering::Relaxed),
                "redis unavailable; limits fall back to this gateway's share"
            );
        }
    }

    fn share(&self) -> u32 {
        self.live_gateways.load(Ordering::Relaxed).max(1)
    }

    /// `key` with each limit divided among the live gateways (at least 1
    /// a minute, so requests keep flowing).
    fn shared_out(&self, key: &KeyLimits) -> KeyLimits {
        let n = self.share();
        KeyLimits {
            key_id: key.key_id.clone(),
            requests_per_min: key.requests_per_min.map(|l| (l / n).max(1)),
            tokens_per_min: key.tokens_per_min.map(|l| (l / n).max(1)),
        }
    }

    fn queue(&self, s: Settlement) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= MAX_PENDING {
            if let Some(old) = pending.pop_front() {
                metrics::counter!("gateway_budget_settlements_dropped_total").increment(1);
                tracing::warn!(key_id = %old.key_id, "settlement queue full; oldest dropped");
            }
        }
        pending.push_back(s);
        metrics::gauge!("gateway_budget_settlements_pending").set(pending.len() as f64);
    }

    /// Sends settlements in one round trip; queues them all when it fails
    /// (each counts once, so those that did land may be sent again).
    async fn send_settlements(&self, batch: Vec<Settlement>) {
        let batch = merge_drawn(batch, || format!("batch:{}", self.next_id()));
        if !self.settle_batch(&batch).await {
            for s in batch {
                self.queue(s);
            }
        }
    }

    /// A name of this gateway's own for one give-back or merged
    /// settlement: its marker in Redis makes it count once.
    fn next_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.gateway_id)
    }

    /// Whether Redis took `batch` (see [`scripts::settle_batch`]).
    async fn settle_batch(&self, batch: &[Settlement]) -> bool {
        let keys = &self.keys;
        self.call("settle", |mut con| async move {
            scripts::settle_batch(&mut con, keys, batch, &self.gateway_id).await
        })
        .await
        .is_some()
    }

    /// Sends queued settlements, oldest first and a batch at a time, until
    /// a batch fails; that one goes back to the front of the queue.
    async fn flush_pending(&self) {
        loop {
            let batch: Vec<Settlement> = {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let n = pending.len().min(SETTLE_BATCH);
                pending.drain(..n).collect()
            };
            if batch.is_empty() {
                metrics::gauge!("gateway_budget_settlements_pending").set(0.0);
                return;
            }
            if !self.settle_batch(&batch).await {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                for s in batch.into_iter().rev() {
                    pending.push_front(s);
                }
                return;
            }
        }
    }

    /// `ask`'s hold as Redis holds it: in its own name, or `drawn` from
    /// this gateway's lease. Settled in Redis.
    fn hold(self: &Arc<Self>, ask: &BudgetAsk<'_>, drawn: Option<i64>) -> BudgetHold {
        let settler: Arc<dyn Settle> = Arc::new(RedisSettle(Arc::clone(self)));
        BudgetHold::drawn(ask.key_id, ask.request_id, drawn, settler)
    }

    /// The terms of a hold or lease on a budget.
    fn terms(&self, budget_usd: f64, stored_spent_usd: f64) -> BudgetTerms<'_> {
        BudgetTerms {
            budget: budget_nusd(budget_usd),
            stored_spent: to_nusd(stored_spent_usd),
            gateway_id: &self.gateway_id,
            gateway_ttl_ms: GATEWAY_TTL.as_millis() as u64,
            hold_ttl_ms: self.hold_ttl.as_millis() as u64,
        }
    }

    /// Notes a key's budget figures as Redis reported them.
    fn seen(&self, key_id: &str, spent: i64, reserved: i64) {
        self.last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key_id.to_owned(), (spent, reserved));
    }

    /// The slices of a lease for requests like `a` (see
    /// `LEASE_RATE_SECONDS`), or `None` when a limit is too small, or a
    /// budget too near its end, to lease.
    fn lease_size(&self, a: &Admission<'_>, need: &Need) -> Option<Slices> {
        let n = u64::from(self.share());
        let rate = |limit: u32, min: u64| {
            let count = u64::from(limit) * u64::from(LEASE_RATE_SECONDS) / 60 / n;
            (count >= min.max(1)).then_some(RateSlice { limit, count })
        };
        let requests = match need.requests {
            Some(limit) => Some(rate(limit, MIN_RATE_SLICE)?),
            None => None,
        };
        let tokens = match (a.limits.tokens_per_min, need.tokens) {
            (Some(limit), Some(t)) => Some(rate(limit, MIN_TOKEN_SLICES * u64::from(t))?),
            _ => None,
        };
        let budget = match (a.budget, need.budget) {
            (Some(ask), Some(worst)) => {
                let left = self.budget_left(&ask);
                let slices = (left / (8 * n.cast_signed() * worst.max(1))).min(MAX_BUDGET_SLICE);
                if slices < MIN_BUDGET_SLICE {
                    return None;
                }
                Some(slices * worst)
            }
            _ => None,
        };
        Some(Slices {
            requests,
            tokens,
            budget,
        })
    }

    /// Renews `key_id`'s lease under `lease_terms` toward `size`, asking
    /// what it lacks.
    async fn renew(
        &self,
        key_id: &str,
        lease_terms: Terms,
        size: Slices,
        terms: Option<BudgetTerms<'_>>,
    ) {
        let ask = self.leases.lacking(key_id, lease_terms, &size);
        let keys = &self.keys;
        let grant = self.next_id();
        let started = Instant::now();
        let verdict = self
            .call("lease", |mut con| {
                let grant = &grant;
                async move { scripts::lease(&mut con, keys, key_id, grant, &ask, terms.as_ref()).await }
            })
            .await;
        metrics::histogram!("gateway_limits_lease_seconds").record(started.elapsed().as_secs_f64());
        let now = Instant::now();
        let Some(verdict) = verdict else {
            // The call failed or timed out, but may have run (or still
            // run): revoked at the next beat, so that a slice this gateway
            // never learnt of is not held for as long as it lives.
            self.leases.refused(key_id, lease_terms, now);
            self.owe(key_id.to_owned(), GiveBack::Revoke(grant), ask);
            return;
        };
        match verdict {
            Some((Verdict::Admitted { spent, reserved }, lost)) => {
                if terms.is_some() {
                    self.seen(key_id, spent, reserved);
                }
                // Redis had no lease hold (it restarted, say): what this
                // gateway thought was left of one is not held, so it goes.
                let lost = lost && terms.is_some();
                self.leases
                    .granted(key_id, lease_terms, &ask, size, lost, now);
            }
            Some((Verdict::Budget { spent, reserved }, _)) => {
                self.seen(key_id, spent, reserved);
                self.leases.refused(key_id, lease_terms, now);
            }
            // A rate refused (a grant is only revoked once its answer was
            // lost, as above).
            _ => self.leases.refused(key_id, lease_terms, now),
        }
    }

    /// Gives back the leases past their life (all of them on `stop`), and
    /// what earlier give-backs could not.
    async fn give_back(&self, stop: bool) {
        let ended = if stop {
            self.leases.drain()
        } else {
            self.leases.expired(Instant::now())
        };
        let mut todo: Vec<(String, GiveBack, Slices)> = self
            .unreturned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for (key_id, rest) in ended {
            todo.push((key_id, GiveBack::Rest(self.next_id()), rest));
        }
        let keys = &self.keys;
        let gateway_id = self.gateway_id.as_str();
        for (key_id, what, slices) in todo {
            let sent = self
                .call("unlease", |mut con| {
                    let (key_id, what) = (&key_id, &what);
                    async move {
                        scripts::unlease(&mut con, keys, key_id, &slices, gateway_id, what).await
                    }
                })
                .await;
            if sent.is_none() {
                self.owe(key_id, what, slices);
            }
        }
    }

    /// Queues a give-back Redis did not take for the next beat. Only the
    /// budget's part is kept (until Redis takes it, it stays held, which
    /// only withholds room); the rates' part, at most a second of each
    /// rate, is not: the buckets recover it by themselves as time passes.
    fn owe(&self, key_id: String, what: GiveBack, slices: Slices) {
        if slices.budget.is_none_or(|b| b <= 0) {
            return;
        }
        let budget_only = Slices {
            budget: slices.budget,
            ..Slices::default()
        };
        let mut unreturned = self
            .unreturned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if unreturned.len() >= MAX_PENDING {
            if let Some((key_id, ..)) = unreturned.pop_front() {
                tracing::warn!(%key_id, "lease give-back queue full; the oldest stays held");
            }
        }
        unreturned.push_back((key_id, what, budget_only));
    }

    /// What is left of `ask`'s budget as Redis last reported it (spend
    /// raised to the store's figure), never below 0: `budget - spent -
    /// reserved`.
    fn budget_left(&self, ask: &BudgetAsk<'_>) -> i64 {
        let (spent, reserved) = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ask.key_id)
            .copied()
            .unwrap_or((0, 0));
        budget_nusd(ask.budget_usd)
            .saturating_sub(spent.max(to_nusd(ask.stored_spent_usd)))
            .saturating_sub(reserved)
            .max(0)
    }

    /// A budget hold from this gateway's share of what Redis last said was
    /// left: `(budget - spent - reserved) / live gateways`.
    fn reserve_locally(&self, ask: &BudgetAsk<'_>) -> Result<(), LimitExceeded> {
        let share = self.budget_left(ask) / i64::from(self.share());
        self.fallback_book.reserve(
            ask.key_id,
            ask.request_id,
            share,
            0,
            worst_nusd(ask.worst_usd),
        )
    }
}

/// `batch` with the settlements of requests a lease admitted merged into
/// one per key (their costs and draws summed) under a name from `id`, so
/// that Redis runs one script and keeps one marker for them rather than one
/// per request. Settlements of holds of their own pass as they are.
fn merge_drawn(batch: Vec<Settlement>, mut id: impl FnMut() -> String) -> Vec<Settlement> {
    let mut out = Vec::with_capacity(batch.len());
    let mut merged: Vec<Settlement> = Vec::new();
    for s in batch {
        let Some(drawn) = s.drawn else {
            out.push(s);
            continue;
        };
        match merged.iter_mut().find(|m| m.key_id == s.key_id) {
            Some(m) => {
                m.actual_nusd = m.actual_nusd.saturating_add(s.actual_nusd);
                m.drawn = Some(m.drawn.unwrap_or(0).saturating_add(drawn));
            }
            None => merged.push(Settlement {
                request_id: id(),
                ..s
            }),
        }
    }
    out.extend(merged);
    out
}

/// A hold made in Redis: settled there.
struct RedisSettle(Arc<Inner>);

impl Settle for RedisSettle {
    fn settle(&self, s: Settlement) {
        if let Err(e) = self.0.settlements.send(s) {
            // Only after shutdown: the reconciler releases the hold at its
            // deadline.
            tracing::warn!(key_id = %e.0.key_id, "settlement after shutdown; left to the reconciler");
        }
    }
}

/// A hold made from the fallback share: released locally, and its spend
/// sent to Redis like any other.
struct FallbackSettle(Arc<Inner>);

impl Settle for FallbackSettle {
    fn settle(&self, s: Settlement) {
        self.0.fallback_book.release(&s);
        RedisSettle(Arc::clone(&self.0)).settle(s);
    }
}

#[async_trait::async_trait]
impl Limiter for SharedLimiter {
    async fn admit(&self, a: Admission<'_>) -> Result<Option<BudgetHold>, LimitExceeded> {
        let limits = a.limits;
        let requests_per_min = limits.requests_per_min.filter(|l| *l > 0);
        let tokens_per_min = limits.tokens_per_min.filter(|l| *l > 0 && a.tokens > 0);
        if tokens_per_min.is_some_and(|l| a.tokens > l) {
            return Err(LimitExceeded::TokensOverLimit);
        }
        if requests_per_min.is_none() && tokens_per_min.is_none() && a.budget.is_none() {
            return Ok(None);
        }
        let need = Need {
            requests: requests_per_min,
            tokens: tokens_per_min.map(|_| a.tokens),
            budget: a.budget.map(|b| worst_nusd(b.worst_usd)),
        };
        if self.admit_from_lease(&a, need) {
            return Ok(a.budget.map(|b| self.inner.hold(&b, need.budget)));
        }
        let inner = &self.inner;
        let ask = Admit {
            key_id: &limits.key_id,
            requests_per_min,
            tokens: tokens_per_min.map(|l| (l, a.tokens)),
            hold: a.budget.map(|b| Hold {
                request_id: b.request_id,
                worst: worst_nusd(b.worst_usd),
                terms: inner.terms(b.budget_usd, b.stored_spent_usd),
            }),
        };
        let keys = &inner.keys;
        let started = Instant::now();
        let verdict = inner
            .call("admit", |mut con| async move {
                scripts::admit(&mut con, keys, &ask).await
            })
            .await;
        metrics::histogram!("gateway_limits_redis_seconds").record(started.elapsed().as_secs_f64());
        let seen = |spent: i64, reserved: i64| {
            if let Some(b) = &a.budget {
                inner.seen(b.key_id, spent, reserved);
            }
        };
        match verdict {
            None => {
                let local = self.admit_locally(a);
                if let (Err(_), Some(b)) = (&local, a.budget) {
                    // The admission may have run in Redis all the same (or
                    // still run, once a stalled Redis resumes), holding in
                    // this request's name with no one to settle it: settled
                    // with nothing, which releases such a hold and keeps a
                    // late run from making one. (One admitted locally is
                    // settled in Redis when it ends, like any other.)
                    RedisSettle(Arc::clone(inner)).settle(Settlement {
                        key_id: b.key_id.to_owned(),
                        request_id: b.request_id.to_owned(),
                        actual_nusd: 0,
                        drawn: None,
                    });
                }
                local
            }
            Some(Verdict::Requests(wait)) => Err(LimitExceeded::Requests { wait }),
            Some(Verdict::Tokens(wait)) => Err(LimitExceeded::Tokens {
                retry_after_s: ceil_secs(wait),
            }),
            Some(Verdict::Budget { spent, reserved }) => {
                seen(spent, reserved);
                Err(LimitExceeded::Budget)
            }
            Some(Verdict::Admitted { spent, reserved }) => {
                seen(spent, reserved);
                Ok(a.budget.map(|b| inner.hold(&b, None)))
            }
        }
    }
}

impl SharedLimiter {
    /// Admission from this gateway's lease of the key, when it has enough
    /// of every part `need` asks for: no round trip. Starts the lease's
    /// renewal in the background when it runs low or old (or the key has
    /// none yet). Whether it admitted.
    fn admit_from_lease(&self, a: &Admission<'_>, need: Need) -> bool {
        let inner = &self.inner;
        if !inner.leases.enabled() {
            return false;
        }
        let now = Instant::now();
        let key_id = &a.limits.key_id;
        let lease_terms = Terms {
            requests_per_min: a.limits.requests_per_min,
            tokens_per_min: a.limits.tokens_per_min,
            budget: a.budget.map(|b| budget_nusd(b.budget_usd)),
        };
        let take = inner.leases.take(key_id, lease_terms, need, now);
        if take.renew {
            match inner.lease_size(a, &need) {
                Some(size) => {
                    let inner = Arc::clone(inner);
                    let key_id = key_id.clone();
                    let budget = a.budget.map(|b| (b.budget_usd, b.stored_spent_usd));
                    tokio::spawn(async move {
                        let terms = budget.map(|(budget, stored)| inner.terms(budget, stored));
                        inner.renew(&key_id, lease_terms, size, terms).await;
                    });
                }
                None => inner.leases.refused(key_id, lease_terms, now),
            }
        }
        if take.admitted {
            // Waited on Redis for nothing.
            metrics::histogram!("gateway_limits_redis_seconds").record(0.0);
            metrics::counter!("gateway_limits_leased_total").increment(1);
        }
        take.admitted
    }

    /// Admission while Redis cannot be reached: from this gateway's share
    /// of each limit and of what Redis last said was left of the budget.
    fn admit_locally(&self, a: Admission<'_>) -> Result<Option<BudgetHold>, LimitExceeded> {
        let inner = &self.inner;
        let fallback = |check: &'static str| {
            metrics::counter!("gateway_limits_fallback_total", "check" => check).increment(1);
        };
        let shared = inner.shared_out(a.limits);
        if shared.requests_per_min.is_some_and(|l| l > 0) {
            fallback("requests");
            inner.fallback.request(&shared)?;
        }
        if shared.tokens_per_min.is_some_and(|l| l > 0) && a.tokens > 0 {
            fallback("tokens");
            // More than this gateway's share but within the key's limit:
            // Redis may take it again in a moment.
            match inner.fallback.tokens(&shared, a.tokens) {
                Err(LimitExceeded::TokensOverLimit) => {
                    return Err(LimitExceeded::Tokens { retry_after_s: 1 })
                }
                other => other?,
            }
        }
        let Some(ask) = a.budget else {
            return Ok(None);
        };
        fallback("budget");
        inner.reserve_locally(&ask)?;
        let settler: Arc<dyn Settle> = Arc::new(FallbackSettle(Arc::clone(inner)));
        Ok(Some(BudgetHold::new(ask.key_id, ask.request_id, settler)))
    }
}

/// Sends settlements as they come; on stop, sends what is left once and
/// ends.
async fn settler(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Settlement>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            next = rx.recv() => match next {
                Some(s) => {
                    // Those that follow within the linger go in the same
                    // round trip.
                    tokio::time::sleep(SETTLE_LINGER).await;
                    let mut batch = vec![s];
                    while batch.len() < SETTLE_BATCH {
                        let Ok(s) = rx.try_recv() else { break };
                        batch.push(s);
                    }
                    inner.send_settlements(batch).await;
                }
                None => return,
            },
        }
    }
    let mut rest = Vec::new();
    while let Ok(s) = rx.try_recv() {
        rest.push(s);
    }
    for batch in rest.chunks(SETTLE_BATCH) {
        inner.send_settlements(batch.to_vec()).await;
    }
    inner.flush_pending().await;
}

/// Once a second: heartbeat and live count, reconciler, queued
/// settlements. On stop, leaves the live set.
async fn beat(inner: Arc<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keys = &inner.keys;
    let id = inner.gateway_id.as_str();
    // Heartbeats Redis answered in a row (see `STEADY_BEATS`).
    let mut answered = 0u32;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let ttl = GATEWAY_TTL.as_millis() as u64;
        let live = inner
            .probe("heartbeat", |mut con| async move {
                scripts::heartbeat(&mut con, keys, id, ttl).await
            })
            .await;
        let Some(live) = live else {
            answered = 0;
            continue;
        };
        answered = answered.saturating_add(1);
        let release_dead = answered >= STEADY_BEATS;
        inner.live_gateways.store(live.max(1), Ordering::Relaxed);
        metrics::gauge!("gateway_fleet_gateways").set(f64::from(live));
        let released = inner
            .call("reconcile", |mut con| async move {
                scripts::reconcile(&mut con, keys, release_dead).await
            })
            .await;
        if let Some(n) = released.filter(|n| *n > 0) {
            metrics::counter!("gateway_budget_holds_reconciled_total").increment(n.cast_unsigned());
            tracing::info!(released = n, "released budget holds of stopped requests");
        }
        inner.give_back(false).await;
        inner.flush_pending().await;
    }
    inner.give_back(true).await;
    let _ = inner
        .call("leave", |mut con| async move {
            scripts::leave(&mut con, keys, id).await
        })
        .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Admission with one check at a time.
    impl SharedLimiter {
        async fn check_request(&self, key: &KeyLimits) -> Result<(), LimitExceeded> {
            let only = KeyLimits {
                tokens_per_min: None,
                ..key.clone()
            };
            let a = Admission {
                limits: &only,
                tokens: 0,
                budget: None,
            };
            self.admit(a).await.map(drop)
        }

        async fn check_tokens(&self, key: &KeyLimits, tokens: u32) -> Result<(), LimitExceeded> {
            let only = KeyLimits {
                requests_per_min: None,
                ..key.clone()
            };
            let a = Admission {
                limits: &only,
                tokens,
                budget: None,
            };
            self.admit(a).await.map(drop)
        }

        async fn reserve(&self, ask: BudgetAsk<'_>) -> Result<BudgetHold, LimitExceeded> {
            let none = KeyLimits {
                key_id: ask.key_id.to_owned(),
                requests_per_min: None,
                tokens_per_min: None,
            };
            let a = Admission {
                limits: &none,
                tokens: 0,
                budget: Some(ask),
            };
            self.admit(a)
                .await
                .map(|h| h.expect("a budget ask is held"))
        }
    }

    /// A limiter whose Redis never answers (nothing listens on port 1), as
    /// one gateway of two.
    fn unreachable(tasks: &TaskTracker, stop: &CancellationToken) -> SharedLimiter {
        let url = secrecy::SecretString::from("redis://127.0.0.1:1".to_owned());
        let limiter = SharedLimiter::start(&Config::default(), &url, tasks, stop).unwrap();
        limiter.inner.live_gateways.store(2, Ordering::Relaxed);
        limiter
    }

    /// Two gateways on the real Redis (`TEST_REDIS_URL`), under a prefix
    /// of their own.
    fn pair(tasks: &TaskTracker, stop: &CancellationToken) -> (SharedLimiter, SharedLimiter, Keys) {
        let url =
            std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let config = Config {
            redis_prefix: format!("test:{}:", uuid::Uuid::new_v4().simple()),
            ..Config::default()
        };
        let url = secrecy::SecretString::from(url);
        let a = SharedLimiter::start(&config, &url, tasks, stop).unwrap();
        let b = SharedLimiter::start(&config, &url, tasks, stop).unwrap();
        for g in [&a, &b] {
            g.inner.live_gateways.store(2, Ordering::Relaxed);
        }
        (a, b, Keys::new(&config.redis_prefix))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_admit_without_round_trips_and_never_past_the_budget() {
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let (a, b, keys) = pair(&tasks, &stop);
        // Plenty of both rates; a budget for 2000 requests' worst case.
        let key = KeyLimits {
            key_id: "k".into(),
            requests_per_min: Some(6_000_000),
            tokens_per_min: Some(60_000_000),
        };
        let worst_usd = 1e-6;
        let ids: Vec<String> = (0..3000).map(|i| format!("r{i}")).collect();
        let mut holds = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let gateway = if i % 2 == 0 { &a } else { &b };
            let ask = Admission {
                limits: &key,
                tokens: 100,
                budget: Some(BudgetAsk {
                    key_id: "k",
                    request_id: id,
                    budget_usd: 2000.0 * worst_usd,
                    stored_spent_usd: 0.0,
                    worst_usd,
                }),
            };
            match gateway.admit(ask).await {
                Ok(hold) => holds.push(hold.expect("a budget ask is held")),
                Err(e) => assert_eq!(e, LimitExceeded::Budget),
            }
            // Other requests' turn, the leases' renewals among them.
            tokio::task::yield_now().await;
        }
        let admitted = holds.len();
        // Requests admitted on the exact path hold in their own name.
        let mut con = a.inner.con.clone();
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(keys.holds("k"))
            .query_async(&mut con)
            .await
            .unwrap();
        let exact = fields.iter().filter(|f| !f.starts_with("lease:")).count();
        println!("admitted {admitted} of 3000 on a budget for 2000, {exact} with a round trip");
        assert!(admitted <= 2000, "{admitted} admitted on a budget for 2000");
        // What the leases strand at the end is a few slices of the last,
        // smallest size.
        assert!(admitted >= 1900, "only {admitted} admitted");
        assert!(
            exact * 4 < admitted,
            "{exact} of {admitted} waited on Redis"
        );

        // Renewals under way finish (a lease granted after its gateway
        // stopped would be left to the reconciler).
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Each settles at half its worst case; once the gateways stop
        // (giving their leases back), Redis holds nothing and counts
        // exactly the spend.
        for h in holds {
            h.settle(worst_usd / 2.0);
        }
        stop.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();
        let figures = scripts::figures(&mut con, &keys, "k").await.unwrap();
        let spent = i64::try_from(admitted).unwrap() * 500;
        assert_eq!(figures, Some((spent, 0)));
    }

    #[test]
    fn settlements_from_a_lease_merge_per_key_and_the_others_stay_apart() {
        let s = |key: &str, req: &str, actual: i64, drawn: Option<i64>| Settlement {
            key_id: key.into(),
            request_id: req.into(),
            actual_nusd: actual,
            drawn,
        };
        let batch = vec![
            s("k1", "a", 5, Some(10)),
            s("k2", "b", 3, None),
            s("k1", "c", 7, Some(20)),
            s("k2", "d", 0, Some(5)),
            s("k2", "e", 4, None),
        ];
        let mut n = 0;
        let merged = merge_drawn(batch, || {
            n += 1;
            format!("m{n}")
        });
        assert_eq!(
            merged,
            vec![
                s("k2", "b", 3, None),
                s("k2", "e", 4, None),
                s("k1", "m1", 12, Some(30)),
                s("k2", "m2", 0, Some(5)),
            ]
        );
    }

    #[tokio::test]
    async fn a_give_back_redis_did_not_take_is_kept_for_the_budget_alone() {
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let limiter = unreachable(&tasks, &stop);
        let inner = &limiter.inner;
        let rest = Slices {
            requests: Some(RateSlice {
                limit: 600,
                count: 5,
            }),
            tokens: None,
            budget: Some(40),
        };
        inner
            .leases
            .granted("k", Terms::default(), &rest, rest, false, Instant::now());
        inner.give_back(true).await;
        inner.give_back(true).await;
        let kept: Vec<_> = inner.unreturned.lock().unwrap().iter().cloned().collect();
        // Kept once, under one id, without the rates' part.
        assert_eq!(kept.len(), 1, "{kept:?}");
        let (key_id, what, slices) = &kept[0];
        assert_eq!(key_id, "k");
        assert!(
            matches!(what, GiveBack::Rest(id) if id.starts_with(&inner.gateway_id)),
            "{what:?}"
        );
        assert_eq!(
            *slices,
            Slices {
                budget: Some(40),
                ..Slices::default()
            }
        );
        stop.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_redis_that_never_answers_costs_one_timeout_then_nothing() {
        // Accepts connections and never answers: a Redis too slow to use.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", silent.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let url = secrecy::SecretString::from(url);
        let limiter = SharedLimiter::start(&Config::default(), &url, &tasks, &stop).unwrap();
        let key = KeyLimits {
            key_id: "k".into(),
            requests_per_min: Some(10),
            tokens_per_min: None,
        };
        let first = std::time::Instant::now();
        assert_eq!(limiter.check_request(&key).await, Ok(()));
        let first = first.elapsed();
        // The first call waited for the 50 ms bound; the other ten (nine
        // admitted, one refused) would take 500 ms if they waited too.
        assert!(first >= Duration::from_millis(50), "{first:?}");
        assert!(first < Duration::from_millis(500), "{first:?}");
        let rest = std::time::Instant::now();
        for _ in 0..9 {
            assert_eq!(limiter.check_request(&key).await, Ok(()));
        }
        assert!(limiter.check_request(&key).await.is_err());
        assert!(
            rest.elapsed() < Duration::from_millis(200),
            "{:?}",
            rest.elapsed()
        );
        stop.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();
        held.abort();
    }

    #[tokio::test]
    async fn without_redis_each_gateway_admits_its_share_and_stops_cleanly() {
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let limiter = unreachable(&tasks, &stop);
        let key = KeyLimits {
            key_id: "k".into(),
            requests_per_min: Some(10),
            tokens_per_min: Some(1000),
        };
        // Half of 10 requests a minute, without waiting on Redis.
        let started = std::time::Instant::now();
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += usize::from(limiter.check_request(&key).await.is_ok());
        }
        assert_eq!(admitted, 5);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!limiter.inner.up.load(Ordering::Acquire));
        // Half of 1000 tokens; a request over the whole limit is refused
        // as such.
        assert_eq!(limiter.check_tokens(&key, 400).await, Ok(()));
        assert!(limiter.check_tokens(&key, 200).await.is_err());
        assert_eq!(
            limiter.check_tokens(&key, 1001).await,
            Err(LimitExceeded::TokensOverLimit)
        );
        // More than the share but within the limit: worth retrying.
        assert_eq!(
            limiter.check_tokens(&key, 600).await,
            Err(LimitExceeded::Tokens { retry_after_s: 1 })
        );

        // Half of what was left of a budget of 1 USD with 0.2 spent: 0.4,
        // so four holds of 0.1 and no fifth; a settled one frees its room
        // less what it cost.
        let ids: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
        let mut holds = Vec::new();
        for id in &ids {
            let ask = BudgetAsk {
                key_id: "k",
                request_id: id,
                budget_usd: 1.0,
                stored_spent_usd: 0.2,
                worst_usd: 0.1,
            };
            match limiter.reserve(ask).await {
                Ok(h) => holds.push(h),
                Err(e) => assert_eq!(e, LimitExceeded::Budget),
            }
        }
        assert_eq!(holds.len(), 4);
        // The refused one may have run in Redis all the same: it is settled
        // there with nothing once Redis answers.
        let refused = Settlement {
            key_id: "k".into(),
            request_id: "r4".into(),
            actual_nusd: 0,
            drawn: None,
        };
        let queued = || limiter.inner.pending.lock().unwrap().contains(&refused);
        for _ in 0..200 {
            if queued() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(queued(), "{:?}", limiter.inner.pending.lock().unwrap());
        holds.pop().unwrap().settle(0.05);
        assert_eq!(
            limiter.inner.fallback_book.figures("k"),
            Some((50_000_000, 300_000_000))
        );
        // The settlement waits for Redis.
        tokio::task::yield_now().await;
        drop(holds);

        stop.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();
    }
}
