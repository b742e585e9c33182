//! Arrival and service rates per edge worker, for the predicted queue wait
//! (`routing::QueueModel`).
//!
//! A worker serves one model, so per worker is per worker and model. Its
//! load report counts every gateway's requests: the sequences running and
//! waiting, and `admitted_total`, the requests it ever admitted. Two
//! successive reports give the arrival rate from the whole fleet (admitted
//! difference over the interval) and the departures (admitted difference
//! less the growth of the queue); busy slots over departures is the mean
//! service time (Little's law). Both are exponentially weighted over
//! [`HALF_LIFE`], so a change of load shows within seconds and one odd
//! interval does not swing them. This gateway's own sends are counted as
//! they happen, so a request routed between two reports sees the requests
//! routed before it.
//!
//! No request path waits on anything here: a mutex held for a few
//! arithmetic operations, fed by the poller and the relay.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::routing::{QueueModel, WorkerLoad};

/// Half-life of the rate averages.
pub const HALF_LIFE_S: f64 = 5.0;

/// What is tracked of one worker.
#[derive(Debug, Clone)]
struct Track {
    /// When it last reported or was sent a request.
    touched: Instant,
    /// The latest report's counts and when it arrived.
    last: Option<Sample>,
    /// Arrival rate from every gateway (requests/s).
    arrivals: Option<f64>,
    /// Decayed sums of busy slot-seconds and departures: their ratio is
    /// the mean service time.
    busy_s: f64,
    departed: f64,
    /// This gateway's sends since the latest report.
    sent_since: u32,
    /// This gateway's decayed send rate, and when it was last updated.
    local_rate: f64,
    local_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    in_system: u32,
    running: u32,
    slots: u32,
    admitted: Option<u64>,
}

/// Departures below this (decayed) count leave the service time unknown.
const MIN_DEPARTURES: f64 = 0.5;

/// Workers tracked at most. Workers come and go under new ids (a restarted
/// pod registers under its new name), so past this bound those neither
/// reported nor sent anything for [`FORGET_AFTER`] are forgotten.
const WORKERS: usize = 1_024;
const FORGET_AFTER: Duration = Duration::from_secs(120);

/// Per-worker arrival and service rates. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct LoadTracker {
    tracks: Mutex<HashMap<String, Track>>,
}

/// The weight the past keeps after `dt_s` seconds.
fn decay(dt_s: f64) -> f64 {
    (-dt_s * std::f64::consts::LN_2 / HALF_LIFE_S).exp()
}

impl LoadTracker {
    #[must_use]
    pub fn new() -> LoadTracker {
        LoadTracker::default()
    }

    /// Runs `f` on the track of `backend_id`, started at `now` if new.
    fn with<T>(&self, backend_id: &str, now: Instant, f: impl FnOnce(&mut Track) -> T) -> T {
        let mut map = self.tracks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(track) = map.get_mut(backend_id) {
            track.touched = track.touched.max(now);
            return f(track);
        }
        super::make_room(&mut map, WORKERS, |t| {
            now.saturating_duration_since(t.touched) < FORGET_AFTER
        });
        f(map
            .entry(backend_id.to_owned())
            .or_insert_with(|| Track::new(now)))
    }

    /// A load report of `backend_id`, received at `now`.
    pub fn observe(&self, backend_id: &str, report: &WorkerLoad, now: Instant) {
        let sample = Sample {
            at: now,
            in_system: report
                .active_sequences
                .saturating_add(report.waiting_sequences),
            running: report.active_sequences,
            slots: report.max_running_sequences,
            admitted: report.admitted_total,
        };
        self.with(backend_id, now, |t| {
            if let Some(prev) = t.last {
                t.learn(prev, sample);
            }
            t.last = Some(sample);
            t.sent_since = 0;
        });
    }

    /// This gateway sends a request to `backend_id` at `now`.
    pub fn sent(&self, backend_id: &str, now: Instant) {
        self.with(backend_id, now, |t| {
            t.sent_since = t.sent_since.saturating_add(1);
            let kept = t.local_at.map_or(0.0, |at| {
                decay(now.saturating_duration_since(at).as_secs_f64())
            });
            // A decayed count over its mean lifetime is a rate.
            t.local_rate = t.local_rate * kept + std::f64::consts::LN_2 / HALF_LIFE_S;
            t.local_at = Some(now);
        });
    }

    /// The queue model of `backend_id` as of `now`; `None` before its first
    /// report.
    #[must_use]
    pub fn model(&self, backend_id: &str, now: Instant) -> Option<QueueModel> {
        let map = self.tracks.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(backend_id).and_then(|t| {
            let last = t.last?;
            let local_rate = t.local_at.map_or(0.0, |at| {
                t.local_rate * decay(now.saturating_duration_since(at).as_secs_f64())
            });
            Some(QueueModel {
                in_system: last.in_system,
                slots: last.slots,
                age_ms: now.saturating_duration_since(last.at).as_secs_f64() * 1000.0,
                sent_since: t.sent_since,
                arrival_rate: t.arrivals,
                local_rate,
                service_ms: (t.departed >= MIN_DEPARTURES).then(|| t.busy_s / t.departed * 1000.0),
            })
        })
    }
}

impl Track {
    fn new(now: Instant) -> Track {
        Track {
            touched: now,
            last: None,
            arrivals: None,
            busy_s: 0.0,
            departed: 0.0,
            sent_since: 0,
            local_rate: 0.0,
            local_at: None,
        }
    }

    /// Updates the rates from two successive reports.
    fn learn(&mut self, prev: Sample, now: Sample) {
        let dt = now.at.saturating_duration_since(prev.at).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let kept = decay(dt);
        // Mean running slots over the interval, by the trapezoid rule.
        let busy = f64::from(prev.running + now.running) / 2.0 * dt;
        self.busy_s = self.busy_s * kept + busy;
        let (Some(a0), Some(a1)) = (prev.admitted, now.admitted) else {
            self.departed *= kept;
            return;
        };
        // A restarted worker counts from zero again: skip that interval.
        let Some(arrived) = a1.checked_sub(a0) else {
            self.departed *= kept;
            return;
        };
        // Exact below 2^53 admissions.
        #[allow(clippy::cast_precision_loss)]
        let arrived = arrived as f64;
        let departed = (arrived + f64::from(prev.in_system) - f64::from(now.in_system)).max(0.0);
        self.departed = self.departed * kept + departed;
        let rate = arrived / dt;
        self.arrivals = Some(match self.arrivals {
            Some(old) => old * kept + rate * (1.0 - kept),
            None => rate,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn report(running: u32, waiting: u32, admitted: u64) -> WorkerLoad {
        serde_json::from_value(serde_json::json!({
            "model": "m", "context_length": 2048,
            "active_sequences": running, "waiting_sequences": waiting,
            "max_running_sequences": 2, "max_waiting_sequences": 16,
            "admitted_total": admitted,
            "prefill_tokens_per_s": 300.0, "decode_tokens_per_s": 30.0,
            "joules_per_prompt_token": null, "joules_per_output_token": null,
            "ready": true, "draining": false
        }))
        .unwrap()
    }

    #[test]
    fn rates_come_from_successive_reports_of_every_gateway() {
        let t = LoadTracker::new();
        let t0 = Instant::now();
        assert!(t.model("w", t0).is_none());
        // Two slots always busy; 4 requests a second arrive and leave: the
        // mean service time is 2 slots / 4 per second = 500 ms.
        let mut admitted = 0;
        for i in 0..40 {
            t.observe(
                "w",
                &report(2, 3, admitted),
                t0 + Duration::from_millis(250 * i),
            );
            admitted += 1;
        }
        let now = t0 + Duration::from_millis(250 * 39);
        let m = t.model("w", now).unwrap();
        assert!((m.arrival_rate.unwrap() - 4.0).abs() < 1e-6, "{m:?}");
        assert!((m.service_ms.unwrap() - 500.0).abs() < 1e-6, "{m:?}");
        assert_eq!((m.in_system, m.slots, m.sent_since), (5, 2, 0));
        // This gateway's own sends count until the next report.
        t.sent("w", now);
        t.sent("w", now);
        let m = t.model("w", now).unwrap();
        assert_eq!(m.sent_since, 2);
        assert!(m.local_rate > 0.0);
        t.observe(
            "w",
            &report(2, 3, admitted),
            now + Duration::from_millis(250),
        );
        assert_eq!(t.model("w", now).unwrap().sent_since, 0);
    }

    #[test]
    fn a_worker_without_counters_or_a_restart_leaves_rates_unknown() {
        let t = LoadTracker::new();
        let t0 = Instant::now();
        let mut old = report(1, 0, 0);
        old.admitted_total = None;
        t.observe("w", &old, t0);
        t.observe("w", &old, t0 + Duration::from_secs(1));
        let m = t.model("w", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!((m.arrival_rate, m.service_ms), (None, None));
        // Counting from zero again after a restart is not a negative rate.
        t.observe("w", &report(1, 0, 100), t0 + Duration::from_secs(2));
        t.observe("w", &report(1, 0, 3), t0 + Duration::from_secs(3));
        assert_eq!(t.model("w", t0).unwrap().arrival_rate, None);
    }

    /// Workers that leave (a restarted pod under a new id) do not
    /// accumulate: past the bound, those silent for `FORGET_AFTER` go, and
    /// asking for a model tracks nothing.
    #[test]
    fn workers_that_left_are_forgotten_past_the_bound() {
        let t = LoadTracker::new();
        let now = Instant::now();
        assert!(t.model("never-seen", now).is_none());
        for i in 0..WORKERS {
            t.sent(&format!("gone-{i}"), now);
        }
        let tracked = || t.tracks.lock().unwrap().len();
        assert_eq!(tracked(), WORKERS);
        t.observe("live", &report(1, 0, 5), now + FORGET_AFTER / 2);
        assert_eq!(tracked(), WORKERS, "all live: one made room");
        t.sent("new", now + FORGET_AFTER);
        assert_eq!(tracked(), 2);
        assert!(t.model("live", now + FORGET_AFTER).is_some());
    }
}
