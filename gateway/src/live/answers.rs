//! How long answers run, per tenant and requested model, for the energy
//! and money a request is predicted to cost.
//!
//! A request's `max_tokens` bounds its answer, but most answers end before
//! it: predicting every answer at its bound over-predicted the edge's
//! joules by a fifth to a quarter in the overload benchmark
//! (docs/benchmarks.md, "The answer's expected length").
//! Each finished answer's completion tokens feed a running mean (the plain
//! mean over the first [`WINDOW`] answers, then an exponentially weighted
//! one over about that many), which routing caps by the request's own
//! bound. Latency is still predicted for the bound: the SLO must hold for
//! an answer that runs long.
//!
//! Per gateway, in process: a mean that starts afresh after a restart costs
//! nothing but a few answers' worth of over-prediction.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Answers over which the mean is weighted.
pub const WINDOW: u32 = 32;

/// Tenants, and models per tenant, tracked at most; past these bounds
/// those without an answer for [`FORGET_AFTER`] are forgotten first.
const TENANTS: usize = 4_096;
const MODELS: usize = 64;
const FORGET_AFTER: Duration = Duration::from_secs(3_600);

#[derive(Debug, Clone, Copy)]
struct Mean {
    tokens: f64,
    answers: u32,
    touched: Instant,
}

/// Mean completion tokens per tenant and requested model. Maps of maps,
/// so that a lookup by `&str` allocates nothing.
#[derive(Debug, Default)]
pub struct AnswerLengths {
    tenants: Mutex<HashMap<String, Models>>,
}

#[derive(Debug)]
struct Models {
    means: HashMap<String, Mean>,
    touched: Instant,
}

impl AnswerLengths {
    #[must_use]
    pub fn new() -> AnswerLengths {
        AnswerLengths::default()
    }

    /// A finished answer of `tokens` completion tokens.
    pub fn observe(&self, tenant: &str, model: &str, tokens: u32, now: Instant) {
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
        let tokens = f64::from(tokens);
        if let Some(m) = models.means.get_mut(model) {
            m.answers = m.answers.saturating_add(1);
            m.tokens += (tokens - m.tokens) / f64::from(m.answers.min(WINDOW));
            m.touched = now;
            return;
        }
        super::make_room(&mut models.means, MODELS, |m| fresh(m.touched));
        models.means.insert(
            model.to_owned(),
            Mean {
                tokens,
                answers: 1,
                touched: now,
            },
        );
    }

    /// The mean answer of `tenant` for `model`; `None` before its first.
    #[must_use]
    pub fn mean(&self, tenant: &str, model: &str) -> Option<f64> {
        let tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants.get(tenant)?.means.get(model).map(|m| m.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_is_plain_over_the_first_answers_then_weighted() {
        let a = AnswerLengths::new();
        let now = Instant::now();
        assert_eq!(a.mean("t", "m"), None);
        for tokens in [10, 20, 30] {
            a.observe("t", "m", tokens, now);
        }
        assert_eq!(a.mean("t", "m"), Some(20.0));
        // Another tenant's or model's answers are another mean.
        a.observe("t", "other", 500, now);
        a.observe("u", "m", 500, now);
        assert_eq!(a.mean("t", "m"), Some(20.0));
        // Past the window, each answer moves the mean by 1/WINDOW of its
        // distance: 29 more answers of 20 keep it at 20, then one of 52
        // moves it by (52 - 20) / 32 = 1.
        for _ in 0..29 {
            a.observe("t", "m", 20, now);
        }
        a.observe("t", "m", 52, now);
        let mean = a.mean("t", "m").expect("a mean");
        assert!((mean - 21.0).abs() < 1e-9, "{mean}");
    }

    #[test]
    fn the_maps_stay_bounded() {
        let a = AnswerLengths::new();
        let now = Instant::now();
        for i in 0..MODELS + 10 {
            a.observe("t", &format!("m{i}"), 1, now);
        }
        for i in 0..TENANTS + 10 {
            a.observe(&format!("t{i}"), "m", 2, now);
        }
        let tenants = a.tenants.lock().expect("lock");
        assert!(tenants.len() <= TENANTS, "{}", tenants.len());
        assert!(tenants.values().all(|m| m.means.len() <= MODELS));
        drop(tenants);
        // The newest are kept.
        assert_eq!(a.mean(&format!("t{}", TENANTS + 9), "m"), Some(2.0));
    }
}
