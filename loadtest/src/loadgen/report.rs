//! Recording samples and turning them into reports.
//!
//! Latencies go into HDR histograms in microseconds (3 significant digits),
//! so percentiles up to p99.9 stay exact enough for sub-millisecond overhead
//! without keeping every sample. Only successful requests are recorded in the
//! latency histograms; failures are counted by kind.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records; longer ones are clamped to it.
const MAX_US: u64 = 3_600_000_000;

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// The result of driving one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The URL requests went to.
    pub target: String,
    /// Whether responses were read as SSE streams.
    pub stream: bool,
    /// Requested rate, requests per second.
    pub rate: f64,
    /// Seconds of schedule measured.
    pub duration_s: f64,
    /// Requests the schedule called for.
    pub scheduled: u64,
    /// Requests actually sent.
    pub sent: u64,
    /// Requests answered with a 2xx (and, streaming, a complete stream).
    pub ok: u64,
    /// Requests not sent because `max_in_flight` requests were outstanding.
    pub dropped: u64,
    /// Failed requests by kind: an HTTP status, or `timeout`, `connect`,
    /// `request`, `body`, `incomplete_stream`.
    pub errors: BTreeMap<String, u64>,
    /// Requests sent per second of schedule.
    pub sent_rate: f64,
    /// Successful responses per second, from the first scheduled send to the last response.
    pub achieved_rate: f64,
    /// Latency from each request's *scheduled* send time to its last byte.
    pub latency: Percentiles,
    /// Streaming only: from the scheduled send time to the first SSE event.
    pub ttft: Option<Percentiles>,
    /// How late the generator actually sent, against the schedule: if this is
    /// large the generator itself was the bottleneck.
    pub send_lag: Percentiles,
}

/// Accumulates samples from many request tasks. The lock is held for one
/// histogram update, far below the cost of a request.
pub(crate) struct Recorder {
    inner: Mutex<Inner>,
}

struct Inner {
    latency: Histogram<u64>,
    ttft: Histogram<u64>,
    lag: Histogram<u64>,
    scheduled: u64,
    sent: u64,
    ok: u64,
    dropped: u64,
    errors: BTreeMap<String, u64>,
    duration: Duration,
    elapsed: Duration,
    /// Each successful request's due time and latency in microseconds,
    /// when asked for (`LoadConfig::series`).
    series: Option<Vec<(Instant, u64)>>,
}

/// What a gateway's response headers say about where a request ran
/// (`x-gateway-backend`, `x-gateway-ledger-id`); empty for other targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Route {
    pub backend: Option<Box<str>>,
    pub ledger_id: Option<Box<str>>,
}

/// The outcome of one request.
pub(crate) enum Outcome {
    /// A complete, successful response.
    Ok {
        latency: Duration,
        ttft: Option<Duration>,
        /// Where a gateway says it ran the request.
        route: Route,
    },
    /// A failure of the given kind.
    Failed(String),
}

fn histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, MAX_US, 3)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_US)
}

impl Recorder {
    pub(crate) fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            inner: Mutex::new(Inner {
                latency: histogram()?,
                ttft: histogram()?,
                lag: histogram()?,
                scheduled: 0,
                sent: 0,
                ok: 0,
                dropped: 0,
                errors: BTreeMap::new(),
                duration: Duration::ZERO,
                elapsed: Duration::ZERO,
                series: None,
            }),
        })
    }

    /// A recorder that also keeps every successful request's due time and
    /// latency ([`Recorder::series`]).
    pub(crate) fn with_series() -> Result<Self, hdrhistogram::CreationError> {
        let r = Self::new()?;
        r.with(|i| i.series = Some(Vec::new()));
        Ok(r)
    }

    /// The due times and latencies (µs) kept so far, in completion order;
    /// the recorder keeps an empty series after.
    pub(crate) fn take_series(&self) -> Vec<(Instant, u64)> {
        self.with(|i| i.series.as_mut().map(std::mem::take).unwrap_or_default())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn dropped(&self) {
        self.with(|i| {
            i.scheduled += 1;
            i.dropped += 1;
        });
    }

    pub(crate) fn record(&self, due: Instant, lag: Duration, outcome: Outcome) {
        self.with(|i| {
            i.scheduled += 1;
            i.sent += 1;
            i.lag.saturating_record(micros(lag));
            match outcome {
                Outcome::Ok { latency, ttft, .. } => {
                    i.ok += 1;
                    i.latency.saturating_record(micros(latency));
                    if let Some(series) = &mut i.series {
                        series.push((due, micros(latency)));
                    }
                    if let Some(ttft) = ttft {
                        i.ttft.saturating_record(micros(ttft));
                    }
                }
                Outcome::Failed(kind) => *i.errors.entry(kind).or_insert(0) += 1,
            }
        });
    }

    /// Adds one finished phase: `duration` of schedule, `elapsed` until its
    /// last response.
    pub(crate) fn phase(&self, duration: Duration, elapsed: Duration) {
        self.with(|i| {
            i.duration += duration;
            i.elapsed += elapsed;
        });
    }

    pub(crate) fn report(&self, target: &str, stream: bool, rate: f64) -> RunReport {
        self.with(|i| {
            let per_sec = |n: u64, d: Duration| {
                if d.is_zero() {
                    0.0
                } else {
                    n as f64 / d.as_secs_f64()
                }
            };
            RunReport {
                target: target.to_owned(),
                stream,
                rate,
                duration_s: i.duration.as_secs_f64(),
                scheduled: i.scheduled,
                sent: i.sent,
                ok: i.ok,
                dropped: i.dropped,
                errors: i.errors.clone(),
                sent_rate: per_sec(i.sent, i.duration),
                achieved_rate: per_sec(i.ok, i.elapsed),
                latency: Percentiles::of(&i.latency),
                ttft: stream.then(|| Percentiles::of(&i.ttft)),
                send_lag: Percentiles::of(&i.lag),
            }
        })
    }
}

/// Two targets driven with the same schedule in alternating rounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// Rounds run against each target.
    pub rounds: u32,
    /// The baseline, e.g. the mock cloud called directly.
    pub a: RunReport,
    /// The candidate, e.g. the gateway in front of the same mock.
    pub b: RunReport,
    /// Latency B added over A (B − A, may be negative from noise).
    pub added: Added,
    /// Streaming only: TTFT B added over A.
    pub ttft_added: Option<Added>,
}

/// Differences of percentiles, B − A, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Added {
    /// Mean difference.
    pub mean_us: f64,
    /// Median difference.
    pub p50_us: i64,
    /// 90th-percentile difference.
    pub p90_us: i64,
    /// 99th-percentile difference.
    pub p99_us: i64,
    /// 99.9th-percentile difference.
    pub p999_us: i64,
}

impl Added {
    pub(crate) fn between(a: &Percentiles, b: &Percentiles) -> Self {
        let d = |a: u64, b: u64| {
            i64::try_from(b).unwrap_or(i64::MAX) - i64::try_from(a).unwrap_or(i64::MAX)
        };
        Self {
            mean_us: b.mean_us - a.mean_us,
            p50_us: d(a.p50_us, b.p50_us),
            p90_us: d(a.p90_us, b.p90_us),
            p99_us: d(a.p99_us, b.p99_us),
            p999_us: d(a.p999_us, b.p999_us),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_and_percentiles() {
        let r = Recorder::new().unwrap();
        for ms in 1..=100 {
            r.record(
                Instant::now(),
                Duration::from_micros(5),
                Outcome::Ok {
                    latency: Duration::from_millis(ms),
                    ttft: None,
                    route: Route::default(),
                },
            );
        }
        r.record(
            Instant::now(),
            Duration::ZERO,
            Outcome::Failed("503".into()),
        );
        r.dropped();
        r.phase(Duration::from_secs(2), Duration::from_secs(2));
        let report = r.report("http://x", false, 51.0);
        assert_eq!(
            (report.scheduled, report.sent, report.ok, report.dropped),
            (102, 101, 100, 1)
        );
        assert_eq!(report.errors.get("503"), Some(&1));
        assert!(report.latency.p50_us.abs_diff(50_000) < 100);
        assert!(report.latency.max_us.abs_diff(100_000) < 100);
        assert!((report.achieved_rate - 50.0).abs() < 1e-9);
        assert!(report.ttft.is_none());
        assert!(report.to_string().contains("503: 1"));
    }

    #[test]
    fn added_is_b_minus_a() {
        let a = Percentiles {
            p50_us: 100,
            p99_us: 300,
            ..Percentiles::default()
        };
        let b = Percentiles {
            p50_us: 150,
            p99_us: 250,
            ..Percentiles::default()
        };
        let added = Added::between(&a, &b);
        assert_eq!((added.p50_us, added.p99_us), (50, -50));
    }
}
