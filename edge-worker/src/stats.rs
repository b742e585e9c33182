//! Live performance figures for the load report: exponentially weighted
//! moving averages of prefill and decode speed and of joules per token,
//! updated from every finished request. Joules per token are also kept per
//! number of requests running: on a CPU a request's share of the energy
//! depends on how many run beside it, and the gateway predicts a new
//! request's energy at the load it would run at.

use std::sync::Mutex;

use wire::load::JoulesPerToken;

/// Weight of the newest observation. High enough to follow a change of load
/// within a few requests, low enough that one odd request does not swing
/// the gateway's routing.
const ALPHA: f64 = 0.3;

#[derive(Debug, Default, Clone)]
pub struct Rates {
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub joules_per_prompt_token: Option<f64>,
    pub joules_per_output_token: Option<f64>,
    /// Entry `i`: joules per token of requests that ran with `i + 1`
    /// running on average (rounded), one entry per running slot.
    pub joules_at_running: Vec<JoulesPerToken>,
}

/// One finished request's measurements.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub joules: f64,
    /// Requests running while it ran, itself included (time-weighted).
    pub mean_running: f64,
}

impl Observation {
    /// A finished sequence's counts and timings, with its energy share.
    #[must_use]
    pub fn of(done: &crate::engine::Done, share: crate::energy::Share) -> Self {
        Self {
            prompt_tokens: done.prompt_tokens,
            completion_tokens: done.completion_tokens,
            prefill_seconds: done.prefill_seconds,
            decode_seconds: done.decode_seconds,
            joules: share.joules,
            mean_running: share.mean_running,
        }
    }
}

#[derive(Debug)]
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
    /// Figures for a worker that runs up to `max_running` requests at once.
    #[must_use]
    pub fn new(max_running: usize) -> Self {
        Self {
            rates: Mutex::new(Rates {
                joules_at_running: vec![JoulesPerToken::default(); max_running.max(1)],
                ..Rates::default()
            }),
        }
    }

    pub fn snapshot(&self) -> Rates {
        self.rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
            // `as` saturates (NaN to 0); the clamp keeps it within the slots.
            let slots = r.joules_at_running.len().max(1);
            let at = (o.mean_running.round() as usize).clamp(1, slots) - 1;
            let mut load = r.joules_at_running.get(at).copied().unwrap_or_default();
            if prompt > 0.0 {
                r.joules_per_prompt_token = ewma(r.joules_per_prompt_token, prefill_j / prompt);
                load.prompt = ewma(load.prompt, prefill_j / prompt);
            }
            if output > 0.0 {
                r.joules_per_output_token = ewma(r.joules_per_output_token, decode_j / output);
                load.output = ewma(load.output, decode_j / output);
            }
            if let Some(j) = r.joules_at_running.get_mut(at) {
                *j = load;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_observation_sets_then_ewma_follows() {
        let s = LiveStats::new(2);
        assert!(s.snapshot().decode_tokens_per_s.is_none());
        let obs = Observation {
            prompt_tokens: 100,
            completion_tokens: 50,
            prefill_seconds: 0.5,
            decode_seconds: 1.0,
            joules: 3.0,
            mean_running: 1.0,
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
        let s = LiveStats::new(2);
        s.observe(&Observation {
            prompt_tokens: 0,
            completion_tokens: 0,
            prefill_seconds: 0.0,
            decode_seconds: 0.0,
            joules: 0.0,
            mean_running: f64::NAN,
        });
        let r = s.snapshot();
        assert!(r.prefill_tokens_per_s.is_none() && r.joules_per_output_token.is_none());
        assert_eq!(r.joules_at_running, vec![JoulesPerToken::default(); 2]);
    }

    #[test]
    fn joules_are_kept_apart_by_how_many_ran() {
        let s = LiveStats::new(2);
        let alone = Observation {
            prompt_tokens: 10,
            completion_tokens: 10,
            prefill_seconds: 0.5,
            decode_seconds: 0.5,
            joules: 2.0,
            mean_running: 1.2,
        };
        s.observe(&alone);
        // With two running each gets half the time's energy but runs longer.
        s.observe(&Observation {
            joules: 3.0,
            mean_running: 1.7,
            ..alone
        });
        // More running than slots (the admission bounds it; clamped all
        // the same) counts as every slot taken.
        s.observe(&Observation {
            joules: 3.0,
            mean_running: 5.0,
            ..alone
        });
        let r = s.snapshot();
        let [one, two] = r.joules_at_running[..] else {
            panic!("{:?}", r.joules_at_running)
        };
        assert_eq!((one.prompt, one.output), (Some(0.1), Some(0.1)));
        assert_eq!((two.prompt, two.output), (Some(0.15), Some(0.15)));
        // The average over every load follows all three.
        let all = r.joules_per_output_token.unwrap();
        assert!(all > 0.1 && all < 0.15, "{all}");
    }
}
