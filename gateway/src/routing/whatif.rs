//! What-if: a recorded decision re-ranked under other policy weights.
//!
//! The ledger keeps every decision's scored candidates with their
//! predictions (the [`Decision`] as serialised). Re-scoring those predictions with
//! another policy's weights and references, in the order [`rank`] uses
//! (candidates that keep the SLO first, then the lowest score, then the
//! name), says which backend that policy would have chosen and what it
//! predicted for it, without replaying any request. Backends that were
//! excluded stay excluded: a policy cannot change health or privacy.
//!
//! [`rank`]: super::rank

use std::cmp::Ordering;

use serde::Serialize;

use super::rank::{Decision, Scored};
use super::score::{score, Prediction};
use super::types::{BackendKind, Policy, Zone};

/// The candidate a policy would have chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rechosen {
    pub backend: String,
    pub kind: BackendKind,
    pub zone: Zone,
    pub prediction: Prediction,
    /// Its score under the policy asked about.
    pub score: f64,
    pub meets_slo: bool,
}

fn rescored(s: &Scored, policy: &Policy) -> Rechosen {
    Rechosen {
        backend: s.backend.clone(),
        kind: s.kind,
        zone: s.zone,
        score: score(&s.prediction, policy),
        meets_slo: s.prediction.latency_ms <= policy.latency_slo_ms,
        prediction: s.prediction.clone(),
    }
}

/// `rank`'s order: SLO keepers first, then lower scores, then names.
fn order(a: &Rechosen, b: &Rechosen) -> Ordering {
    b.meets_slo
        .cmp(&a.meets_slo)
        .then(a.score.total_cmp(&b.score))
        .then_with(|| a.backend.cmp(&b.backend))
}

/// The candidate of `decision` that `policy` ranks first.
#[must_use]
pub fn rechoose(decision: &Decision, policy: &Policy) -> Rechosen {
    let chosen = rescored(&decision.chosen, policy);
    decision
        .fallbacks
        .iter()
        .map(|s| rescored(s, policy))
        .fold(chosen, |best, next| {
            if order(&next, &best) == Ordering::Less {
                next
            } else {
                best
            }
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A decision between a slow free edge worker and a fast dear cloud,
    /// as the ledger stores it.
    fn decision() -> Decision {
        let candidate =
            |name: &str, kind: &str, zone: &str, latency: f64, joules: f64, usd: f64| {
                serde_json::json!({
                    "backend_id": format!("id-{name}"), "backend": name, "kind": kind, "zone": zone,
                    "model": "m", "upstream_model": "m", "score": 0.0, "meets_slo": true,
                    "reason": "failover",
                    "prediction": {"latency_ms": latency, "queue_ms": 0.0, "energy_j": joules,
                        "cost_usd": usd, "prefill_tps": 100.0, "decode_tps": 10.0,
                        "active": null, "waiting": null}
                })
            };
        serde_json::from_value(serde_json::json!({
            "requested_model": "m", "class": "public", "prompt_tokens": 10, "output_tokens": 10,
            "policy": Policy::default(),
            "chosen": candidate("edge", "edge", "on_prem", 2000.0, 5.0, 0.0),
            "fallbacks": [candidate("cloud", "cloud", "cloud", 300.0, 20.0, 0.01)],
            "excluded": []
        }))
        .unwrap()
    }

    #[test]
    fn weights_decide_the_winner() {
        let d = decision();
        let cost_first = Policy {
            w_latency: 0.0,
            w_energy: 0.0,
            w_cost: 1.0,
            ..Policy::default()
        };
        let latency_first = Policy {
            w_latency: 1.0,
            w_energy: 0.0,
            w_cost: 0.0,
            ..Policy::default()
        };
        assert_eq!(rechoose(&d, &cost_first).backend, "edge");
        let fast = rechoose(&d, &latency_first);
        assert_eq!((fast.backend.as_str(), fast.zone), ("cloud", Zone::Cloud));
        assert!((fast.prediction.latency_ms - 300.0).abs() < 1e-9);
    }

    #[test]
    fn a_candidate_that_keeps_the_slo_beats_a_cheaper_one_that_breaks_it() {
        let d = decision();
        let tight = Policy {
            w_latency: 0.0,
            w_energy: 0.0,
            w_cost: 1.0,
            latency_slo_ms: 1000.0,
            ..Policy::default()
        };
        let r = rechoose(&d, &tight);
        assert_eq!(r.backend, "cloud");
        assert!(r.meets_slo);
    }
}
