//! How long requests turn out to be, per tenant and requested model, for
//! the energy and money (and prefill time) a request is predicted to cost.
//!
//! Two things are learned from each successful request:
//!
//! - **The answer's length.** A request's `max_tokens` bounds its answer,
//!   but most answers end before it: predicting every answer at its bound
//!   over-predicted the edge's joules by a fifth to a quarter in the
//!   overload benchmark (docs/benchmarks.md, "The answer's expected
//!   length"). Routing caps the mean by the request's own bound and uses it
//!   for energy and money; latency is still predicted for the bound, so the
//!   SLO holds for an answer that runs long.
//! - **The prompt's overhead.** The gateway estimates a prompt's tokens
//!   from its text (`http::chat::request`), but the backend counts what its
//!   chat template makes of it, a default system prompt included. The mean
//!   difference between the tokens reported and the estimate is added to
//!   the estimate for predictions only; the context check and the
//!   admission limits keep the estimate, which is conservative by design.
//!
//! Each is a running mean: plain over the first [`WINDOW`] requests, then
//! exponentially weighted over about that many. Per gateway, in process: a
//! mean that starts afresh after a restart costs a few requests' worth of
//! the old prediction.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::routing::Expected;

/// Requests over which the means are weighted.
pub const WINDOW: u32 = 32;

/// Tenants, and models per tenant, tracked at most; past these bounds
/// those without a request for [`FORGET_AFTER`] are forgotten first.
const TENANTS: usize = 4_096;
const MODELS: usize = 64;
const FORGET_AFTER: Duration = Duration::from_secs(3_600);

/// A prompt overhead beyond this many tokens either way is taken for a
/// backend's miscount and not learned: one absurd report would otherwise
/// weigh on the tenant's predictions for hundreds of requests. Chat
/// templates add tens of tokens, a long system prompt a few thousand.
pub const MAX_PROMPT_OVERHEAD: f64 = 16_384.0;

/// What a finished request showed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    pub completion_tokens: u32,
    /// The prompt tokens the backend reported less the gateway's estimate;
    /// `None` when the backend reported none.
    pub prompt_overhead: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Running {
    mean: f64,
    count: u32,
}

impl Running {
    fn add(&mut self, x: f64) {
        self.count = self.count.saturating_add(1);
        self.mean += (x - self.mean) / f64::from(self.count.min(WINDOW));
    }

    fn get(self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }
}

#[derive(Debug, Clone, Copy)]
struct Means {
    answer: Running,
    prompt_overhead: Running,
    touched: Instant,
}

#[derive(Debug)]
struct Models {
    means: HashMap<String, Means>,
    touched: Instant,
}

/// The running means per tenant and requested model. Maps of maps, so
/// that a lookup by `&str` allocates nothing.
#[derive(Debug, Default)]
pub struct Lengths {
    tenants: Mutex<HashMap<String, Models>>,
}

impl Lengths {
    #[must_use]
    pub fn new() -> Lengths {
        Lengths::default()
    }

    /// A request of `tenant` for `model` that finished with `seen`.
    pub fn observe(&self, tenant: &str, model: &str, seen: Seen, now: Instant) {
        let fresh = |t: Instant| now.saturating_duration_since(t) < FORGET_AFTER;
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if !tenants.contains_key(tenant) {
            super::make_room(&mut tenants, TENANTS, |m| fresh(m.touched));
            tenants.insert(
                tenant.to_owned(),
                Models {
                    means: HashMap::new(),
                    touched: now,
                },
            );
        }
        let Some(models) = tenants.get_mut(tenant) else {
            return;
        };
        models.touched = now;
        if !models.means.contains_key(model) {
            super::make_room(&mut models.means, MODELS, |m| fresh(m.touched));
        }
        let m = models.means.entry(model.to_owned()).or_insert(Means {
            answer: Running::default(),
            prompt_overhead: Running::default(),
            touched: now,
        });
        m.touched = now;
        m.answer.add(f64::from(seen.completion_tokens));
        if let Some(overhead) = seen
            .prompt_overhead
            .filter(|o| o.is_finite() && o.abs() <= MAX_PROMPT_OVERHEAD)
        {
            m.prompt_overhead.add(overhead);
        }
    }

    /// What the requests of `tenant` for `model` so far lead to expect.
    #[must_use]
    pub fn expected(&self, tenant: &str, model: &str) -> Expected {
        let tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants
            .get(tenant)
            .and_then(|t| t.means.get(model))
            .map_or_else(Expected::default, |m| Expected {
                answer_tokens: m.answer.get(),
                prompt_overhead: m.prompt_overhead.get(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(completion_tokens: u32, prompt_overhead: Option<f64>) -> Seen {
        Seen {
            completion_tokens,
            prompt_overhead,
        }
    }

    #[test]
    fn the_means_are_plain_over_the_first_requests_then_weighted() {
        let l = Lengths::new();
        let now = Instant::now();
        assert_eq!(l.expected("t", "m"), Expected::default());
        l.observe("t", "m", seen(10, Some(20.0)), now);
        l.observe("t", "m", seen(20, None), now);
        l.observe("t", "m", seen(30, Some(-4.0)), now);
        let e = l.expected("t", "m");
        assert_eq!(e.answer_tokens, Some(20.0));
        // Only the requests that reported their prompt count for it.
        assert_eq!(e.prompt_overhead, Some(8.0));
        // Another tenant's or model's requests are means of their own.
        l.observe("t", "other", seen(500, Some(100.0)), now);
        l.observe("u", "m", seen(500, None), now);
        assert_eq!(l.expected("t", "m"), e);
        assert_eq!(l.expected("u", "m").prompt_overhead, None);
        // Past the window, each request moves the mean by 1/WINDOW of its
        // distance: 29 more answers of 20 keep it at 20, then one of 52
        // moves it by (52 - 20) / 32 = 1.
        for _ in 0..29 {
            l.observe("t", "m", seen(20, None), now);
        }
        l.observe("t", "m", seen(52, Some(f64::NAN)), now);
        let e = l.expected("t", "m");
        assert!(
            (e.answer_tokens.unwrap_or(0.0) - 21.0).abs() < 1e-9,
            "{e:?}"
        );
        assert_eq!(e.prompt_overhead, Some(8.0));
        // A miscount of the prompt is not learned either.
        l.observe("t", "m", seen(21, Some(4e9)), now);
        l.observe("t", "m", seen(21, Some(-MAX_PROMPT_OVERHEAD - 1.0)), now);
        assert_eq!(l.expected("t", "m").prompt_overhead, Some(8.0));
        l.observe("t", "m", seen(21, Some(MAX_PROMPT_OVERHEAD)), now);
        assert!(l.expected("t", "m").prompt_overhead > Some(8.0));
    }

    #[test]
    fn the_maps_stay_bounded() {
        let l = Lengths::new();
        let now = Instant::now();
        for i in 0..MODELS + 10 {
            l.observe("t", &format!("m{i}"), seen(1, None), now);
        }
        for i in 0..TENANTS + 10 {
            l.observe(&format!("t{i}"), "m", seen(2, None), now);
        }
        let tenants = l.tenants.lock().expect("lock");
        assert!(tenants.len() <= TENANTS, "{}", tenants.len());
        assert!(tenants.values().all(|m| m.means.len() <= MODELS));
        drop(tenants);
        // The newest are kept.
        let newest = l.expected(&format!("t{}", TENANTS + 9), "m");
        assert_eq!(newest.answer_tokens, Some(2.0));
    }
}
