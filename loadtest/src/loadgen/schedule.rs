//! The open-loop schedule.
//!
//! Request `i` is due at `start + i / rate`, whatever happened to earlier
//! requests, and its latency is measured from that due time. A closed-loop
//! client (send, wait, send) would quietly stop sending while the server
//! stalls and so hide the stall from its percentiles ("coordinated
//! omission"); this one keeps sending and charges the stall to every request
//! that was due during it.
//!
//! Due times are kept by a dedicated thread (see `sleep_until`), which is
//! on time within microseconds, instead of tokio's timer, whose
//! millisecond ticks would add up to a millisecond of false latency to
//! every request: too coarse to measure sub-millisecond overhead. The
//! thread hands each due request to the runtime, which sends it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use super::report::{Outcome, Recorder};
use super::request::{send, RequestSpec};

/// Lead time before the first due request, so it is not late by the time
/// the dispatch thread has started.
const LEAD: Duration = Duration::from_millis(2);

/// How long before a due time the dispatch thread stops sleeping and starts
/// yielding: a little more than `thread::sleep`'s usual overshoot.
const SPIN_WINDOW: Duration = Duration::from_micros(100);

/// One stretch of schedule against one target.
pub(crate) struct Phase {
    /// Requests per second.
    pub rate: f64,
    /// How long the schedule runs.
    pub duration: Duration,
}

impl Phase {
    fn count(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }
}

/// What a phase drives and where results go.
pub(crate) struct Driver {
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    pub spec: Arc<RequestSpec>,
    /// Requests already outstanding past which new ones are dropped (and
    /// counted) rather than queued, so a dead target cannot grow memory.
    pub max_in_flight: usize,
}

/// Counts a request as outstanding until dropped.
struct Outstanding(Arc<AtomicUsize>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a dispatch reports each scheduled request.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Request `index` of the plan was not sent: `max_in_flight` requests
    /// were outstanding.
    fn dropped(&self, index: usize);
    /// Request `index` of the plan, due at `due`, left `lag` after it and
    /// ended with `outcome`.
    fn record(&self, index: usize, due: Instant, lag: Duration, outcome: Outcome);
}

impl Sink for Recorder {
    fn dropped(&self, _: usize) {
        Recorder::dropped(self);
    }

    fn record(&self, _: usize, due: Instant, lag: Duration, outcome: Outcome) {
        Recorder::record(self, due, lag, outcome);
    }
}

/// Runs `phase` against the driver's target, recording into `recorder`, and
/// waits for every sent request to finish.
pub(crate) async fn run_phase(
    driver: &Arc<Driver>,
    phase: &Phase,
    recorder: &Arc<Recorder>,
) -> Result<(), tokio::task::JoinError> {
    let interval = Duration::from_secs_f64(1.0 / phase.rate);
    let plan = (0..phase.count()).map(move |i| (interval.mul_f64(i as f64), 0));
    let started = dispatch(vec![driver.clone()], plan, recorder.clone()).await?;
    recorder.phase(phase.duration, started.elapsed());
    Ok(())
}

/// Sends each planned request `(offset from the start, driver)` at its due
/// time whatever happened to the earlier ones, reports it to `sink` by its
/// position in the plan, waits for every sent request to finish, and
/// returns when the schedule started. The plan must be in time order.
pub(crate) async fn dispatch<P>(
    drivers: Vec<Arc<Driver>>,
    plan: P,
    sink: Arc<impl Sink>,
) -> Result<Instant, tokio::task::JoinError>
where
    P: Iterator<Item = (Duration, usize)> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let handle = Handle::current();
    let start = Instant::now() + LEAD;

    let dispatch = {
        let tracker = tracker.clone();
        tokio::task::spawn_blocking(move || {
            for (index, (offset, d)) in plan.enumerate() {
                let due = start + offset;
                sleep_until(due);
                let driver = drivers[d].clone();
                if in_flight.load(Ordering::Acquire) >= driver.max_in_flight {
                    sink.dropped(index);
                    continue;
                }
                in_flight.fetch_add(1, Ordering::AcqRel);
                let outstanding = Outstanding(in_flight.clone());
                let sink = sink.clone();
                tracker.spawn_on(
                    async move {
                        let (lag, outcome) =
                            send(&driver.client, &driver.url, &driver.spec, due).await;
                        sink.record(index, due, lag, outcome);
                        drop(outstanding);
                    },
                    &handle,
                );
            }
        })
    };
    dispatch.await?;
    tracker.close();
    tracker.wait().await;
    Ok(start)
}

/// Waits until `due`: sleeps until shortly before it, then yields the CPU in
/// a loop for the rest. A plain `thread::sleep` overshoots by the kernel's
/// timer slack plus the wake-up (about 80 µs measured on the 2-core dev
/// machine), which would show up as false latency; the final stretch of
/// yielding costs a few percent of a core at a few thousand requests per
/// second and brings the overshoot to a few microseconds.
fn sleep_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        match due.saturating_duration_since(now).checked_sub(SPIN_WINDOW) {
            Some(sleep) if !sleep.is_zero() => std::thread::sleep(sleep),
            _ => std::thread::yield_now(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn count_rounds_rate_times_duration() {
        let phase = |rate, ms| Phase {
            rate,
            duration: Duration::from_millis(ms),
        };
        assert_eq!(phase(200.0, 1000).count(), 200);
        assert_eq!(phase(1000.0, 250).count(), 250);
        assert_eq!(phase(3.0, 500).count(), 2);
    }
}
