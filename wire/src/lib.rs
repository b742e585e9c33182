//! Wire types that more than one binary speaks: the OpenAI error body, the
//! edge worker's load report and its registration heartbeat.
//!
//! Each shape is written once here so the gateway, the edge worker and the
//! mock cloud cannot drift apart. Nothing here does I/O.
//!
//! # Layout
//!
//! - [`error`]: `{"error":{"message","type","param","code"}}`, as JSON and as
//!   an SSE error event.
//! - [`load`]: `GET /v1/worker/load`, the report a gateway polls and routes
//!   on.
//! - [`fleet`]: `POST /fleet/workers`, the heartbeat by which an edge worker
//!   registers itself with the gateways.

pub mod error;
pub mod fleet;
pub mod load;

pub use error::ErrorBody;
pub use fleet::{plain_base_url, Heartbeat, HeartbeatAck};
pub use load::{Capabilities, LoadReport, PrefixCache};
