//! The ejection cap: failures may keep at most a share of a pool out of
//! routing at once.
//!
//! A pool is the enabled backends of one zone that serve the requested
//! model. When more of a pool is ejected (unhealthy, resting) than
//! `max_percent` allows (at least one backend may always be ejected), the
//! surplus is readmitted, those whose rest ends soonest first: they are
//! the ones the circuit breaker was about to try anyway. The point is the
//! failure the breaker cannot tell apart from a dead backend: a fault on
//! the gateway's own side (its network, a DNS hiccup, a full socket
//! table) that fails every backend at once would otherwise empty the pool
//! and leave on-prem requests with nowhere to go. Envoy's outlier detection
//! has the same cap (`max_ejection_percent`).

use std::time::Instant;

use super::rank::serves;
use super::types::{AliasTarget, Observed, Zone};

/// Readmits the ejected backends of each pool beyond `max_percent` of the
/// pool, marking them healthy in `observed`, and returns their indices.
/// `rest_ends[i]` is when backend `i`'s rest ends (`None` when unknown,
/// which sorts last). Healthy backends, disabled ones and those that do not
/// serve `target` are left as they are.
pub fn cap_ejections(
    observed: &mut [Observed<'_>],
    rest_ends: &[Option<Instant>],
    target: &AliasTarget,
    max_percent: u32,
) -> Vec<usize> {
    let mut readmitted = Vec::new();
    if observed.iter().all(|o| o.healthy) {
        return readmitted;
    }
    for zone in [Zone::OnPrem, Zone::Cloud] {
        let pool: Vec<usize> = observed
            .iter()
            .enumerate()
            .filter(|(_, o)| {
                o.backend.zone == zone && o.backend.enabled && serves(o, target).is_some()
            })
            .map(|(i, _)| i)
            .collect();
        let mut ejected: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| !observed[i].healthy)
            .collect();
        let allowed = (pool.len() * max_percent.min(100) as usize / 100).max(1);
        if ejected.len() <= allowed {
            continue;
        }
        ejected.sort_by_key(|&i| {
            let end = rest_ends.get(i).copied().flatten();
            (end.is_none(), end)
        });
        for &i in &ejected[..ejected.len() - allowed] {
            observed[i].healthy = true;
            readmitted.push(i);
        }
    }
    readmitted
}
