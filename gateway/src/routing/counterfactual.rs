//! The all-cloud counterfactual: what the same request would have cost had
//! every request gone to the cloud. The ledger stores it next to what the
//! request did cost, so the savings of running at the edge are sums over
//! rows, not claims.
//!
//! The counterfactual is hypothetical on purpose: it ignores privacy,
//! health and saturation (a confidential request's cloud cost is what
//! keeping it at home saved), and it never becomes a candidate.

use serde::{Deserialize, Serialize};

use super::score::{predict, score, Prediction, Tokens};
use super::types::{AliasTarget, Backend, Observed, Policy, Zone};

/// A cloud backend's figures, to price a request's actual tokens there.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CloudRates {
    pub rtt_ms: f64,
    pub prefill_tps: f64,
    pub decode_tps: f64,
    pub price_in_per_1k: f64,
    pub price_out_per_1k: f64,
    pub joules_per_prompt_token: f64,
    pub joules_per_output_token: f64,
}

impl CloudRates {
    fn of(b: &Backend) -> CloudRates {
        CloudRates {
            rtt_ms: b.rtt_ms.max(0.0),
            prefill_tps: b.prefill_tps.max(1e-3),
            decode_tps: b.decode_tps.max(1e-3),
            price_in_per_1k: b.price_in_per_1k,
            price_out_per_1k: b.price_out_per_1k,
            joules_per_prompt_token: b.joules_per_prompt_token,
            joules_per_output_token: b.joules_per_output_token,
        }
    }

    /// Latency (ms), energy (J) and cost (USD) of `prompt` and `completion`
    /// tokens on this backend, unloaded.
    #[must_use]
    pub fn price(&self, prompt: u32, completion: u32) -> (f64, f64, f64) {
        let (p, c) = (f64::from(prompt), f64::from(completion));
        let latency = self.rtt_ms + p / self.prefill_tps * 1000.0 + c / self.decode_tps * 1000.0;
        let joules = p * self.joules_per_prompt_token + c * self.joules_per_output_token;
        let usd = p / 1000.0 * self.price_in_per_1k + c / 1000.0 * self.price_out_per_1k;
        (latency, joules, usd)
    }
}

/// The cloud backend the request would have gone to in an all-cloud
/// deployment, and its prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllCloud {
    pub backend: String,
    pub rates: CloudRates,
    pub prediction: Prediction,
}

/// The best-scoring enabled cloud-zone backend serving `target`, whatever
/// the request's class; `None` when there is none.
pub(super) fn all_cloud(
    backends: &[Observed<'_>],
    target: &AliasTarget,
    policy: &Policy,
    tokens: Tokens,
) -> Option<AllCloud> {
    backends
        .iter()
        .filter(|o| o.backend.zone == Zone::Cloud && o.backend.enabled)
        .filter(|o| super::rank::serves(o, target).is_some())
        .map(|o| {
            // Unloaded and without a report: the cloud as configured.
            let plain = Observed {
                load: None,
                queue: None,
                prefix_cached: false,
                ..*o
            };
            let prediction = predict(&plain, tokens);
            (score(&prediction, policy), o.backend, prediction)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)))
        .map(|(_, b, prediction)| AllCloud {
            backend: b.name.clone(),
            rates: CloudRates::of(b),
            prediction,
        })
}
