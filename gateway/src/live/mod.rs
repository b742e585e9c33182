//! What the gateway knows about its backends right now: health, the edge
//! workers' latest load reports, and its own in-flight counts.
//!
//! [`LiveView`] is a trait so a Redis-backed view can share this state
//! between gateway replicas later; [`InProcessLive`] keeps it in this
//! process. The [`poller`] fills it from each edge worker's
//! `/v1/worker/load`; request handlers add passive evidence (a refused
//! connection, a timeout, a 5xx or a broken stream counts like a failed
//! poll; an answer counts as a success) and their in-flight counts.
//!
//! [`load::LoadTracker`] keeps each edge worker's arrival and service
//! rates from the same reports, for the predicted queue wait;
//! [`lengths::Lengths`] the mean answer and prompt overhead per tenant and
//! model, for the predicted energy and money.
//!
//! Recovery: after `unhealthy_after` consecutive failures a backend rests
//! for a cool-down that doubles with each further failure (up to 32 times
//! the base). When it is over, the backend is *half-open*: one caller
//! claims the trial ([`LiveView::claim_trial`]) and the rest keep waiting;
//! a success closes the circuit, a failure starts a longer rest. Cloud
//! backends, which are not polled, recover this way too.

pub mod affinity;
pub mod lengths;
pub mod load;
pub mod poller;
pub mod retry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::routing::WorkerLoad;

/// Makes room in a map bounded to `cap` entries for one new key: entries
/// `live` rejects go first, and if every entry is live, an arbitrary one.
/// For the per-worker and per-prefix maps, whose keys come and go (a
/// restarted pod registers under a new name).
pub(crate) fn make_room<K, V>(map: &mut HashMap<K, V>, cap: usize, mut live: impl FnMut(&V) -> bool)
where
    K: Clone + Eq + std::hash::Hash,
{
    if map.len() < cap {
        return;
    }
    map.retain(|_, v| live(v));
    if map.len() >= cap {
        if let Some(k) = map.keys().next().cloned() {
            map.remove(&k);
        }
    }
}

/// One backend's live state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendLive {
    /// Consecutive failed polls or connections since the last success.
    pub failures: u32,
    /// The latest successful load report (edge workers only).
    pub load: Option<WorkerLoad>,
    /// While unhealthy: when the next trial may be made.
    pub retry_at: Option<Instant>,
}

impl BackendLive {
    /// Whether routing may consider the backend: fewer than
    /// `unhealthy_after` failures, or its rest is over (half-open).
    #[must_use]
    pub fn usable(&self, unhealthy_after: u32, now: Instant) -> bool {
        self.failures < unhealthy_after || self.retry_at.is_some_and(|t| t <= now)
    }
}

/// Shared live state of all backends, keyed by backend id.
pub trait LiveView: Send + Sync {
    /// The backend's state; a backend never seen yet has the default (no
    /// failures, no report), so a fresh gateway tries it.
    fn get(&self, backend_id: &str) -> BackendLive;
    /// A successful poll: resets failures and stores the report.
    fn report(&self, backend_id: &str, load: WorkerLoad);
    /// A failed poll or attempt.
    fn failure(&self, backend_id: &str);
    /// A successful attempt: closes the circuit, keeps the load report.
    fn success(&self, backend_id: &str);
    /// Before sending to a backend: `true` if it is healthy, or if it is
    /// half-open and this caller won the one trial (the next trial is then
    /// pushed a cool-down ahead); `false` if another caller has the trial
    /// or the rest is not over.
    fn claim_trial(&self, backend_id: &str) -> bool;
    /// Requests this gateway has in flight to the backend.
    fn in_flight(&self, backend_id: &str) -> u32;
    /// Counts one request in flight until the returned guard drops.
    fn begin(&self, backend_id: &str) -> InFlight;
    /// A counter bumped on every report or failure, to wait for the view
    /// to change instead of polling it.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// Decrements a backend's in-flight count when dropped, so every exit path
/// of a request (error, cancellation, panic) gives its slot back.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Longest rest, as a multiple of the base cool-down (2^5).
pub(crate) const MAX_BACKOFF_DOUBLINGS: u32 = 5;

/// The single-gateway [`LiveView`].
pub struct InProcessLive {
    states: RwLock<HashMap<String, BackendLive>>,
    counters: RwLock<HashMap<String, Arc<AtomicU32>>>,
    version: watch::Sender<u64>,
    unhealthy_after: u32,
    cooldown: Duration,
}

impl InProcessLive {
    /// A view in which `unhealthy_after` consecutive failures open a
    /// backend's circuit for `cooldown` (doubling on each further failure).
    #[must_use]
    pub fn new(unhealthy_after: u32, cooldown: Duration) -> Self {
        InProcessLive {
            states: RwLock::default(),
            counters: RwLock::default(),
            version: watch::Sender::new(0),
            unhealthy_after: unhealthy_after.max(1),
            cooldown,
        }
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Takes another gateway's verdict on a backend (see
    /// [`crate::fleet::health`]): its failure count and, while the circuit
    /// is open, when the next trial may be made. The load report is kept.
    pub fn adopt(&self, backend_id: &str, failures: u32, retry_at: Option<Instant>) {
        let mut map = write(&self.states);
        let state = map.entry(backend_id.to_owned()).or_default();
        if state.failures == failures && state.retry_at == retry_at {
            return;
        }
        state.failures = failures;
        state.retry_at = retry_at;
        drop(map);
        self.changed();
    }

    fn counter(&self, backend_id: &str) -> Arc<AtomicU32> {
        if let Some(c) = read(&self.counters).get(backend_id) {
            return Arc::clone(c);
        }
        let mut map = write(&self.counters);
        Arc::clone(map.entry(backend_id.to_owned()).or_default())
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LiveView for InProcessLive {
    fn get(&self, backend_id: &str) -> BackendLive {
        read(&self.states)
            .get(backend_id)
            .cloned()
            .unwrap_or_default()
    }

    fn report(&self, backend_id: &str, load: WorkerLoad) {
        write(&self.states).insert(
            backend_id.to_owned(),
            BackendLive {
                failures: 0,
                load: Some(load),
                retry_at: None,
            },
        );
        self.changed();
    }

    fn failure(&self, backend_id: &str) {
        let mut map = write(&self.states);
        let state = map.entry(backend_id.to_owned()).or_default();
        state.failures = state.failures.saturating_add(1);
        if state.failures >= self.unhealthy_after {
            let doublings = (state.failures - self.unhealthy_after).min(MAX_BACKOFF_DOUBLINGS);
            state.retry_at = Some(Instant::now() + self.cooldown * (1 << doublings));
        }
        drop(map);
        self.changed();
    }

    fn success(&self, backend_id: &str) {
        // The common case, a healthy backend, takes only the read lock.
        if read(&self.states)
            .get(backend_id)
            .is_none_or(|s| s.failures == 0)
        {
            return;
        }
        let mut map = write(&self.states);
        let Some(state) = map.get_mut(backend_id) else {
            return;
        };
        if state.failures == 0 {
            return;
        }
        state.failures = 0;
        state.retry_at = None;
        drop(map);
        self.changed();
    }

    fn claim_trial(&self, backend_id: &str) -> bool {
        if read(&self.states)
            .get(backend_id)
            .is_none_or(|s| s.failures < self.unhealthy_after)
        {
            return true;
        }
        let mut map = write(&self.states);
        let Some(state) = map.get_mut(backend_id) else {
            return true;
        };
        if state.failures < self.unhealthy_after {
            return true;
        }
        let now = Instant::now();
        match state.retry_at {
            Some(at) if at <= now => {
                state.retry_at = Some(now + self.cooldown);
                true
            }
            _ => false,
        }
    }

    fn in_flight(&self, backend_id: &str) -> u32 {
        read(&self.counters)
            .get(backend_id)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    fn begin(&self, backend_id: &str) -> InFlight {
        let c = self.counter(backend_id);
        c.fetch_add(1, Ordering::AcqRel);
        InFlight(c)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_circuit_rests_then_allows_one_trial() {
        let cooldown = Duration::from_millis(40);
        let live = InProcessLive::new(2, cooldown);
        assert!(live.claim_trial("cloud"));
        live.failure("cloud");
        assert!(live.get("cloud").usable(2, Instant::now()));
        live.failure("cloud");
        let state = live.get("cloud");
        assert!(!state.usable(2, Instant::now()));
        assert!(!live.claim_trial("cloud"));
        std::thread::sleep(cooldown);
        assert!(live.get("cloud").usable(2, Instant::now()));
        // One caller wins the trial; the next waits another cool-down.
        assert!(live.claim_trial("cloud"));
        assert!(!live.claim_trial("cloud"));
        // The trial fails: the rest doubles.
        live.failure("cloud");
        let rest = live.get("cloud").retry_at.unwrap() - Instant::now();
        assert!(rest > cooldown, "{rest:?}");
        // A success closes the circuit.
        live.success("cloud");
        assert_eq!(live.get("cloud").failures, 0);
        assert!(live.claim_trial("cloud"));
    }

    #[test]
    fn failures_count_until_a_report_and_in_flight_follows_guards() {
        let live = InProcessLive::new(2, Duration::from_secs(5));
        assert_eq!(live.get("a"), BackendLive::default());
        live.failure("a");
        live.failure("a");
        assert_eq!(live.get("a").failures, 2);
        let g1 = live.begin("a");
        let g2 = live.begin("a");
        assert_eq!(live.in_flight("a"), 2);
        drop(g1);
        assert_eq!(live.in_flight("a"), 1);
        drop(g2);
        assert_eq!(live.in_flight("a"), 0);
        assert_eq!(live.in_flight("b"), 0);
    }
}
