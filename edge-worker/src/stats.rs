//! Live performance figures for the load report: exponentially weighted
//! moving averages of prefill and decode speed and of joules per token,
//! updated from every finished request.

use std::sync::Mutex;

/// Weight of the newest observation. High enough to follow a change of load
/// within a few requests, low enough that one odd request does not swing
/// the gateway's routing.
const ALPHA: f64 = 0.3;

#[derive(Debug, Default, Clone, Copy)]
pub struct Rates {
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub joules_per_prompt_token: Option<f64>,
    pub joules_per_output_token: Option<f64>,
}

/// One finished request's measurements.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub joules: f64,
}

impl Observation {
    /// A finished sequence's counts and timings, with the joules charged to it.
    #[must_use]
    pub fn of(done: &crate::engine::Done, joules: f64) -> Self {
        Self {
            prompt_tokens: done.prompt_tokens,
            completion_tokens: done.completion_tokens,
            prefill_seconds: done.prefill_seconds,
            decode_seconds: done.decode_seconds,
            joules,
        }
    }
}

#[derive(Debug, Default)]
pub struct LiveStats {
    rates: Mutex<Rates>,
}

fn ewma(old: Option<f64>, new: f64) -> Option<f64> {
    if !new.is_finite() || new < 0.0 {
        return old;
    }
    Some(old.map_or(new, |o| o + ALPHA * (new - o)))
}

impl LiveStats {
    pub fn snapshot(&self) -> Rates {
        *self
            .rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn observe(&self, o: &Observation) {
        let mut r = self
            .rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prompt = o.prompt_tokens as f64;
        let output = o.completion_tokens as f64;
        if o.prefill_seconds > 0.0 && prompt > 0.0 {
            r.prefill_tokens_per_s = ewma(r.prefill_tokens_per_s, prompt / o.prefill_seconds);
        }
        if o.decode_seconds > 0.0 && output > 0.0 {
            r.decode_tokens_per_s = ewma(r.decode_tokens_per_s, output / o.decode_seconds);
        }
        // Energy is split between the phases by their share of the time.
        let total = o.prefill_seconds + o.decode_seconds;
        if total > 0.0 && o.joules > 0.0 {
            let prefill_j = o.joules * o.prefill_seconds / total;
            let decode_j = o.joules - prefill_j;
            if prompt > 0.0 {
                r.joules_per_prompt_token = ewma(r.joules_per_prompt_token, prefill_j / prompt);
            }
            if output > 0.0 {
                r.joules_per_output_token = ewma(r.joules_per_output_token, decode_j / output);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_observation_sets_then_ewma_follows() {
        let s = LiveStats::default();
        assert!(s.snapshot().decode_tokens_per_s.is_none());
        let obs = Observation {
            prompt_tokens: 100,
            completion_tokens: 50,
            prefill_seconds: 0.5,
            decode_seconds: 1.0,
            joules: 3.0,
        };
        s.observe(&obs);
        let r = s.snapshot();
        assert_eq!(r.prefill_tokens_per_s, Some(200.0));
        assert_eq!(r.decode_tokens_per_s, Some(50.0));
        // 1 J of 3 goes to prefill (a third of the time), 2 J to decode.
        assert!((r.joules_per_prompt_token.unwrap() - 0.01).abs() < 1e-12);
        assert!((r.joules_per_output_token.unwrap() - 0.04).abs() < 1e-12);
        s.observe(&Observation {
            decode_seconds: 0.5,
            ..obs
        });
        // 50 + 0.3 * (100 - 50)
        assert!((s.snapshot().decode_tokens_per_s.unwrap() - 65.0).abs() < 1e-9);
    }

    #[test]
    fn empty_or_broken_observations_change_nothing() {
        let s = LiveStats::default();
        s.observe(&Observation {
            prompt_tokens: 0,
            completion_tokens: 0,
            prefill_seconds: 0.0,
            decode_seconds: 0.0,
            joules: 0.0,
        });
        let r = s.snapshot();
        assert!(r.prefill_tokens_per_s.is_none() && r.joules_per_output_token.is_none());
    }
}
