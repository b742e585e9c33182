//! What the gateway knows about its backends right now: health, the edge
//! workers' latest load reports, and its own in-flight counts.
//!
//! [`LiveView`] is a trait so a Redis-backed view can share this state
//! between gateway replicas later; [`InProcessLive`] keeps it in this
//! process. The [`poller`] fills it from each edge worker's
//! `/v1/worker/load`; request handlers add passive evidence (a connection
//! refused counts like a failed poll) and their in-flight counts.

pub mod poller;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::routing::WorkerLoad;

/// One backend's live state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendLive {
    /// Consecutive failed polls or connections since the last success.
    pub failures: u32,
    /// The latest successful load report (edge workers only).
    pub load: Option<WorkerLoad>,
}

/// Shared live state of all backends, keyed by backend id.
pub trait LiveView: Send + Sync {
    /// The backend's state; a backend never seen yet has the default (no
    /// failures, no report), so a fresh gateway tries it.
    fn get(&self, backend_id: &str) -> BackendLive;
    /// A successful poll: resets failures and stores the report.
    fn report(&self, backend_id: &str, load: WorkerLoad);
    /// A failed poll or connection.
    fn failure(&self, backend_id: &str);
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

/// The single-gateway [`LiveView`].
pub struct InProcessLive {
    states: RwLock<HashMap<String, BackendLive>>,
    counters: RwLock<HashMap<String, Arc<AtomicU32>>>,
    version: watch::Sender<u64>,
}

impl Default for InProcessLive {
    fn default() -> Self {
        InProcessLive {
            states: RwLock::default(),
            counters: RwLock::default(),
            version: watch::Sender::new(0),
        }
    }
}

impl InProcessLive {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
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
            },
        );
        self.version.send_modify(|v| *v += 1);
    }

    fn failure(&self, backend_id: &str) {
        let mut map = write(&self.states);
        let state = map.entry(backend_id.to_owned()).or_default();
        state.failures = state.failures.saturating_add(1);
        drop(map);
        self.version.send_modify(|v| *v += 1);
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
    fn failures_count_until_a_report_and_in_flight_follows_guards() {
        let live = InProcessLive::new();
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
