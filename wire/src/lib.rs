//! Wire types that more than one binary speaks: the OpenAI error body and
//! the edge worker's load report.
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

pub mod error;
pub mod load;

pub use error::ErrorBody;
pub use load::{Capabilities, LoadReport};
