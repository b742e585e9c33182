//! Predicted queue wait, and the power-of-two choice among near-equal edge
//! workers.
//!
//! A load report is a snapshot: by the time a request is routed it is up to
//! a poll interval old, and every request routed meanwhile saw the same
//! counts. Taken as they are, the counts send a burst to one worker until
//! the next report shows its queue, and the edge is found over its SLO only
//! once requests already wait there. The model here extrapolates the
//! report to now: sequences in the system then, plus what this gateway sent
//! since, plus what the other gateways sent since (the worker's arrival
//! rate from every gateway, less this gateway's own), less what the worker
//! finished since (its busy slots over the mean service time). A request
//! sent now waits until all but `slots − 1` of those ahead of it are done
//! ([`wait_for_slot`]): the first slot frees up after the shortest of the
//! running requests' remaining times, `service / (slots + 1)` on average
//! for requests caught at random points of their service, and each one
//! queued ahead adds `service / slots`.

use serde::{Deserialize, Serialize};

use super::rank::Scored;
use super::types::{BackendKind, QueueModel};

/// Edge candidates whose scores are within this fraction of the best one
/// are near-equal: the power-of-two choice picks among them by predicted
/// wait. Score differences this small are within the noise of the
/// measured rates.
pub const NEAR_EQUAL_SCORE: f64 = 0.10;

/// How much faster a prompt prefix is prefilled from the edge worker's
/// prefix cache than computed (about 8× measured for a shared 240-token
/// system prompt; see the README).
pub const PREFIX_CACHE_SPEEDUP: f64 = 8.0;

/// A predicted wait for a running slot, and the sequences predicted ahead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Wait {
    pub ms: f64,
    pub ahead: f64,
}

/// The wait of a request sent now to a worker described by `q`, whose
/// requests take `fallback_service_ms` each when the worker has not
/// measured its service time yet.
pub(super) fn predicted_wait(q: &QueueModel, fallback_service_ms: f64) -> Wait {
    let slots = f64::from(q.slots.max(1));
    let measured = q.service_ms.filter(|s| s.is_finite() && *s > 0.0);
    let service_ms = measured.unwrap_or(fallback_service_ms).max(1e-3);
    let age_s = (q.age_ms / 1000.0).clamp(0.0, MAX_EXTRAPOLATION_S);
    let others = q
        .arrival_rate
        .map_or(0.0, |total| (total - q.local_rate).max(0.0) * age_s);
    let in_system = f64::from(q.in_system);
    let arrived = in_system + f64::from(q.sent_since) + others;
    // Busy slots finish one request each per service time. Only a measured
    // service time says how long the requests already there take (the new
    // request's own may be much shorter): without one, none are assumed
    // gone.
    let departed = measured.map_or(0.0, |s| {
        (in_system.min(slots) * age_s * 1000.0 / s).min(arrived)
    });
    let ahead = (arrived - departed).max(0.0);
    let ms = wait_for_slot(ahead, slots, service_ms);
    Wait { ms, ahead }
}

/// The mean wait for a running slot behind `ahead` requests (running and
/// queued) on a worker with `slots` slots, each request taking
/// `service_ms`. With every slot busy and none queued the first frees up
/// after the least of the running requests' remaining times: for requests
/// at uniformly random points of their service, the least of `slots`
/// remainders is `service / (slots + 1)` on average (not the `service /
/// slots` between departures, which over-predicted the waits the worker
/// measured by 15-42% in the overload benchmark). Each request queued
/// beyond adds `service / slots`. Linear in between, so that an
/// extrapolated (fractional) count moves it smoothly.
pub(super) fn wait_for_slot(ahead: f64, slots: f64, service_ms: f64) -> f64 {
    let slots = slots.max(1.0);
    let first = service_ms / (slots + 1.0);
    let queued = ahead - slots;
    if queued >= 0.0 {
        first + queued * service_ms / slots
    } else {
        (queued + 1.0).max(0.0) * first
    }
}

/// Reports older than this are not extrapolated further: rates measured
/// seconds ago say little about now, and the counts then are the best
/// guess left.
const MAX_EXTRAPOLATION_S: f64 = 5.0;

/// Which two near-equal edge workers were compared and which was taken,
/// recorded in the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerOfTwo {
    pub compared: [String; 2],
    pub picked: String,
}

/// Moves the winner of a power-of-two choice to the front of `ranked`
/// (sorted best first), keeping the order of the rest. Only applies when
/// the best candidate is an edge worker and at least one other edge worker
/// is near-equal to it (same side of the SLO, score within
/// [`NEAR_EQUAL_SCORE`]); of two of them drawn by `seed`, the one with the
/// shorter predicted wait wins, then the one with fewer sequences predicted
/// ahead (fewer sequences sharing the CPU decode faster), then either, by
/// `seed`: ties must not all go to the same worker while reports are stale.
pub(super) fn power_of_two(ranked: &mut [Scored], seed: u64) -> Option<PowerOfTwo> {
    let best = ranked.first()?;
    if best.kind != BackendKind::Edge {
        return None;
    }
    let bound = best.score + best.score.abs() * NEAR_EQUAL_SCORE;
    let near: Vec<usize> = ranked
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.kind == BackendKind::Edge && s.meets_slo == best.meets_slo && s.score <= bound
        })
        .map(|(i, _)| i)
        .collect();
    let n = near.len() as u64;
    if n < 2 {
        return None;
    }
    // Two distinct draws from the near-equal set (both below `n`, a
    // `usize`).
    let first = seed % n;
    let second = (first + 1 + (seed >> 32) % (n - 1)) % n;
    let (a, b) = (
        usize::try_from(first).unwrap_or(0),
        usize::try_from(second).unwrap_or(0),
    );
    let (a, b) = (near[a.min(b)], near[a.max(b)]);
    let load = |s: &Scored| (s.prediction.queue_ms, s.prediction.ahead.unwrap_or(0.0));
    let winner = match load(&ranked[b]).partial_cmp(&load(&ranked[a])) {
        Some(std::cmp::Ordering::Less) => b,
        Some(std::cmp::Ordering::Equal) if (seed >> 16) & 1 == 1 => b,
        _ => a,
    };
    let choice = PowerOfTwo {
        compared: [ranked[a].backend.clone(), ranked[b].backend.clone()],
        picked: ranked[winner].backend.clone(),
    };
    ranked[..=winner].rotate_right(1);
    Some(choice)
}
