//! Per-candidate predictions and the weighted score.

use serde::{Deserialize, Serialize};

use super::types::{Backend, Observed, Policy};

/// Rates below this are treated as this, so a misconfigured zero rate gives
/// a huge but finite latency (JSON has no infinity) instead of a division by
/// zero.
const MIN_RATE: f64 = 1e-3;

/// What the model predicts for one request on one backend, plus the inputs
/// it used, so the ledger can explain the choice later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub latency_ms: f64,
    /// The part of `latency_ms` spent waiting for a running slot.
    pub queue_ms: f64,
    pub energy_j: f64,
    pub cost_usd: f64,
    /// Rates used: live ones when a load report exists, nominal otherwise.
    pub prefill_tps: f64,
    pub decode_tps: f64,
    /// Joules per token used: measured at `running` when the worker has
    /// figures for that load, its averages or the nominal ones otherwise.
    #[serde(default)]
    pub joules_per_prompt_token: f64,
    #[serde(default)]
    pub joules_per_output_token: f64,
    /// Requests the worker would run with this one among them (itself
    /// included), as the energy figures were chosen; `None` without a
    /// live report.
    #[serde(default)]
    pub running: Option<u32>,
    /// Sequences running and waiting on the backend; `None` without a live
    /// report.
    pub active: Option<u32>,
    pub waiting: Option<u32>,
    /// Sequences predicted ahead of this request now (the report
    /// extrapolated by the load tracker); `None` without a queue model.
    #[serde(default)]
    pub ahead: Option<f64>,
    /// Prompt tokens predicted to come from the worker's prefix cache.
    #[serde(default)]
    pub cached_prompt_tokens: u32,
}

/// Token counts the prediction is made for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tokens {
    pub prompt: u32,
    /// The answer's length that latency is predicted for: its bound, so
    /// that the SLO holds for an answer that runs long.
    pub output: u32,
    /// The answer's expected length, at most `output`: what energy and
    /// money are predicted for.
    pub answer: u32,
    /// Leading prompt tokens a worker that recently saw them has cached.
    pub prefix: u32,
}

/// Predicts latency, energy and money for `tokens` on `obs`.
///
/// The worker's reported rates are taken as what a new sequence would get
/// now; the worker measures them under its current load. Queue wait only
/// starts once every running slot is busy: the request waits for the first
/// running one to finish and for everyone queued ahead of it
/// ([`wait_for_slot`](super::queue::wait_for_slot)). With a [`QueueModel`](super::QueueModel)
/// the counts are extrapolated to now (`queue.rs`). A worker that recently
/// served the request's leading prompt prefills that part from its cache.
/// Its energy is predicted from the joules per token the worker measured
/// at the number of requests it would run beside. Latency is predicted for
/// the answer's bound, energy and money for its expected length.
pub(super) fn predict(obs: &Observed<'_>, tokens: Tokens) -> Prediction {
    let b: &Backend = obs.backend;
    let (prefill, decode) = match obs.load {
        Some(l) => (
            positive_or(l.prefill_tokens_per_s, b.prefill_tps),
            positive_or(l.decode_tokens_per_s, b.decode_tps),
        ),
        None => (b.prefill_tps, b.decode_tps),
    };
    let (prefill, decode) = (prefill.max(MIN_RATE), decode.max(MIN_RATE));
    let prompt = f64::from(tokens.prompt);
    let output = f64::from(tokens.output);
    let answer = f64::from(tokens.answer.min(tokens.output));
    let cached = if obs.prefix_cached && obs.load.is_some() {
        tokens.prefix.min(tokens.prompt)
    } else {
        0
    };
    let computed = prompt - f64::from(cached);
    let prefill_ms =
        (computed + f64::from(cached) / super::queue::PREFIX_CACHE_SPEEDUP) / prefill * 1000.0;
    let service_ms = prefill_ms + output / decode * 1000.0;
    let (queue_ms, ahead) = match (obs.queue, obs.load) {
        (Some(q), Some(_)) => {
            let w = super::queue::predicted_wait(&q, service_ms);
            (w.ms, Some(w.ahead))
        }
        (None, Some(l)) => {
            let ahead = f64::from(l.active_sequences + l.waiting_sequences);
            let slots = f64::from(l.max_running_sequences);
            (super::queue::wait_for_slot(ahead, slots, service_ms), None)
        }
        (_, None) => (0.0, None),
    };
    // Energy at the load the request would run at: beside those running,
    // or, once it has waited for a slot, with every slot taken.
    let (j_prompt, j_output, running) = match obs.load {
        Some(l) => {
            let slots = l.max_running_sequences.max(1);
            let ahead = ahead.unwrap_or(f64::from(l.active_sequences + l.waiting_sequences));
            // `as` saturates; `ahead` is a non-negative count.
            let running = (ahead.round() as u32).saturating_add(1).min(slots);
            let j = l.joules_at(running);
            (
                j.prompt.unwrap_or(b.joules_per_prompt_token),
                j.output.unwrap_or(b.joules_per_output_token),
                Some(running),
            )
        }
        None => (b.joules_per_prompt_token, b.joules_per_output_token, None),
    };
    Prediction {
        latency_ms: b.rtt_ms.max(0.0) + queue_ms + service_ms,
        queue_ms,
        energy_j: prompt * j_prompt + answer * j_output,
        cost_usd: prompt / 1000.0 * b.price_in_per_1k + answer / 1000.0 * b.price_out_per_1k,
        prefill_tps: prefill,
        decode_tps: decode,
        joules_per_prompt_token: j_prompt,
        joules_per_output_token: j_output,
        running,
        active: obs.load.map(|l| l.active_sequences),
        waiting: obs.load.map(|l| l.waiting_sequences),
        ahead,
        cached_prompt_tokens: cached,
    }
}

fn positive_or(live: Option<f64>, nominal: f64) -> f64 {
    match live {
        Some(rate) if rate.is_finite() && rate > 0.0 => rate,
        _ => nominal,
    }
}

/// `w_lat·latency/SLO + w_energy·energy/E_ref + w_cost·money/C_ref`.
pub(super) fn score(p: &Prediction, policy: &Policy) -> f64 {
    let norm = |v: f64, reference: f64| v / reference.max(f64::MIN_POSITIVE);
    policy.w_latency * norm(p.latency_ms, policy.latency_slo_ms)
        + policy.w_energy * norm(p.energy_j, policy.energy_ref_j)
        + policy.w_cost * norm(p.cost_usd, policy.cost_ref_usd)
}
