//! The cost model: which backend serves a request, and in which order to
//! fail over.
//!
//! Everything here is a pure function of its inputs (request view, tenant
//! policy, backend configs, the latest live load and health), so it is
//! tested without a network and the same inputs always give the same ranking.
//! The HTTP layer gathers those inputs, calls [`rank`], and stores
//! [`Decision::to_json`] in the ledger so any choice can be explained later.
//!
//! Privacy is enforced here as a filter, before scoring: a confidential
//! request never gets a cloud-zone candidate, so no later step (failover,
//! retry) can pick one from the list. A property test states this.

mod rank;
mod score;
#[cfg(test)]
mod tests;
mod types;

pub use rank::{
    rank, resolve_alias, Decision, Excluded, Exclusion, NoRoute, NoRouteCode, RouteReason, Scored,
};
pub use score::Prediction;
pub use types::{
    Alias, AliasTarget, Backend, BackendKind, Capabilities, InvalidPolicy, ModelMapping, Observed,
    Policy, RequestView, WorkerLoad, Zone, ZoneMismatch,
};
