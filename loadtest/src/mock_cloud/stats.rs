//! Counters of what reached the mock, for assertions such as "no request
//! reached the cloud". Only `POST /v1/chat/completions` is counted in the
//! totals, so health probes on `/v1/models` do not disturb them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// Distinct model names tracked before further names share one bucket, so a
/// client sending random names cannot grow the map without bound.
const MAX_MODELS: usize = 1024;
/// Bucket for model names past [`MAX_MODELS`] and for bodies with no model.
const OTHER_MODEL: &str = "(other)";

/// A snapshot of the counters, as `GET /mock/stats` returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockStats {
    /// Chat completion requests received, whatever became of them.
    pub requests_total: u64,
    /// Chat completion requests whose response (stream included) has not ended.
    pub in_flight: i64,
    /// Chat completion requests by the `model` of their body.
    pub by_model: BTreeMap<String, u64>,
    /// Chat completion responses by HTTP status (a stream counts once, at its headers).
    pub by_status: BTreeMap<u16, u64>,
    /// Streams that sent `[DONE]`.
    pub streams_completed: u64,
    /// Streams aborted on purpose (`drop_after_chunks`) or cut by the client.
    pub streams_aborted: u64,
    /// `GET /v1/models` requests.
    pub models_requests: u64,
}

/// Live counters shared by all handlers. Status counts are a fixed array of
/// atomics so that the hot path takes no lock; only the per-model map is
/// behind a mutex, held for one lookup.
pub(crate) struct Stats {
    requests_total: AtomicU64,
    in_flight: AtomicI64,
    by_model: Mutex<HashMap<String, u64>>,
    by_status: [AtomicU64; 600],
    streams_completed: AtomicU64,
    streams_aborted: AtomicU64,
    models_requests: AtomicU64,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            requests_total: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            by_model: Mutex::new(HashMap::new()),
            by_status: std::array::from_fn(|_| AtomicU64::new(0)),
            streams_completed: AtomicU64::new(0),
            streams_aborted: AtomicU64::new(0),
            models_requests: AtomicU64::new(0),
        }
    }

    /// Counts a new chat request; returns its sequence number (from 0),
    /// which seeds its random draws.
    pub(crate) fn begin(&self) -> u64 {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests_total.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn model(&self, model: &str) {
        let mut map = self.by_model.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(model) {
            *count += 1;
            return;
        }
        let key = if map.len() < MAX_MODELS {
            model
        } else {
            OTHER_MODEL
        };
        *map.entry(key.to_owned()).or_insert(0) += 1;
    }

    pub(crate) fn status(&self, status: u16) {
        if let Some(slot) = self.by_status.get(usize::from(status)) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn stream_completed(&self) {
        self.streams_completed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stream_aborted(&self) {
        self.streams_aborted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn models_request(&self) {
        self.models_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MockStats {
        let by_model = self
            .by_model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let by_status = self
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(status, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| (u16::try_from(status).unwrap_or(u16::MAX), n))
            })
            .collect();
        MockStats {
            requests_total: self.requests_total.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            by_model,
            by_status,
            streams_completed: self.streams_completed.load(Ordering::Relaxed),
            streams_aborted: self.streams_aborted.load(Ordering::Relaxed),
            models_requests: self.models_requests.load(Ordering::Relaxed),
        }
    }

    /// Zeroes every counter except `in_flight`, which describes requests
    /// still running and would go negative if cleared under them.
    pub(crate) fn reset(&self) {
        self.requests_total.store(0, Ordering::Relaxed);
        self.by_model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        for slot in &self.by_status {
            slot.store(0, Ordering::Relaxed);
        }
        self.streams_completed.store(0, Ordering::Relaxed);
        self.streams_aborted.store(0, Ordering::Relaxed);
        self.models_requests.store(0, Ordering::Relaxed);
    }
}

/// Keeps `in_flight` honest: created when a chat request arrives and dropped
/// when its response ends, however it ends (finished, aborted, or dropped by
/// a client that went away).
pub(crate) struct InFlight {
    stats: std::sync::Arc<Stats>,
}

impl InFlight {
    pub(crate) fn new(stats: std::sync::Arc<Stats>) -> (Self, u64) {
        let seq = stats.begin();
        (Self { stats }, seq)
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.end();
    }
}
