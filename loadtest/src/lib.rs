//! Load-testing tools for the gateway.
//!
//! The gateway's promise is to add well under a millisecond to a request, so
//! measuring it needs two things no off-the-shelf tool gives together: an
//! upstream that costs almost nothing and can be told to misbehave, and a
//! load generator that keeps its schedule when responses slow down.
//!
//! # Layout
//!
//! - [`mock_cloud`]: a mock `OpenAI`-compatible cloud (library and the
//!   `mock-cloud` binary) with configurable latency, decode speed and
//!   failure modes, overridable per request by a header.
//! - [`loadgen`]: an open-loop load generator (library and the `loadgen`
//!   binary) with HDR histograms and an A/B mode that alternates two targets
//!   within one run, for measuring overhead on a noisy machine.

pub mod loadgen;
pub mod mock_cloud;
