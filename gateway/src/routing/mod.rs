//! The cost model: which backend serves a request, and in which order to
//! fail over.
//!
//! Everything here is a pure function of its inputs (request view, tenant
//! policy, backend configs, the latest live load and health), so it is
//! tested without a network and the same inputs always give the same ranking.
//! The HTTP layer gathers those inputs, calls [`rank`], and stores
//! the [`Decision`] (serialised) in the ledger so any choice can be explained later.
//!
//! Placement beyond the score: the predicted queue wait of an edge worker
//! extrapolates its latest report with arrival and service rates
//! ([`QueueModel`], `queue.rs`), so overflow to the cloud starts before
//! the SLO breaks; among edge workers of near-equal score the request goes
//! to the one with the shorter predicted wait of two drawn at random
//! ([`PowerOfTwo`]); a worker that recently served the request's leading
//! prompt is predicted to prefill it from its prefix cache. Every decision
//! also carries the all-cloud counterfactual ([`AllCloud`]): what the best
//! cloud backend would have cost, privacy aside, for the savings report.
//!
//! Failures may eject at most `max_ejection_percent` of a pool at once
//! ([`cap_ejections`]); past that the soonest-rested backends are tried.
//!
//! Privacy is enforced here as a filter, before scoring: a confidential
//! request never gets a cloud-zone candidate, so no later step (failover,
//! retry) can pick one from the list. A property test states this.

mod counterfactual;
mod eject;
mod queue;
mod rank;
mod score;
#[cfg(test)]
pub(crate) mod tests;
mod types;
mod whatif;

pub use counterfactual::{AllCloud, CloudRates};
pub use eject::cap_ejections;
pub use queue::{PowerOfTwo, NEAR_EQUAL_SCORE, PREFIX_CACHE_SPEEDUP};
pub use rank::{
    rank, resolve_alias, Decision, Excluded, Exclusion, NoRoute, NoRouteCode, RouteReason, Scored,
};
pub use score::Prediction;
pub use types::{
    Alias, AliasTarget, Backend, BackendKind, Capabilities, Expected, InvalidPolicy, ModelMapping,
    Observed, Policy, PrefixKey, QueueModel, RequestView, WorkerLoad, Zone, ZoneMismatch,
};
pub use whatif::{rechoose, Rechosen};
