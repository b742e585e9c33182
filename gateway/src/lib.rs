//! The gateway library: everything the `gateway` binary does, as modules
//! that tests can drive directly.
//!
//! # Layout
//!
//! - [`privacy`]: request classes (`public < internal < confidential`), the
//!   texts of a request, their normalisation, and the detectors that raise
//!   the class. Pure. Every builtin detector yields `confidential`.
//! - [`routing`]: the cost model over latency, energy, money and privacy that
//!   ranks backends for a request. Pure.
//! - [`limits`]: per-key requests/min, tokens/min and budget holds behind the
//!   async [`limits::Limiter`] trait: in process, or shared by a fleet
//!   through Redis Lua scripts with per-gateway shares as the fallback.
//! - [`keys`]: API key generation and hashing; only hashes are stored.
//! - [`ids`]: random ids (requests, ledger rows) without a system call each.
//! - [`store`]: the repository over Postgres or an embedded SQLite file
//!   (tenants, keys, backends, aliases, policies, privacy rules, ledger).
//! - [`admin_cli`]: the `migrate` and administration subcommands, executed
//!   against the store.
//! - [`report`]: `gateway report`, the savings against all-cloud per
//!   tenant and period, from the ledger's counterfactual columns.
//!
//! Serving (`gateway serve`):
//!
//! - [`config`]: the one documented config struct (TOML file + `GATEWAY_*`).
//! - [`server`]: start-up; the accept loop with header read timeout and
//!   connection cap; shutdown that drains, then ends open streams; ledger
//!   flush.
//! - [`state`]: [`state::AppState`], the handlers' shared state, and the
//!   background tasks it owns.
//! - [`http`]: the router ([`http::app`]), the OpenAI error type, and one
//!   module per endpoint (`models`, `health`, `openapi`); the chat feature
//!   is a folder, [`http::chat`]: the request and what is forwarded
//!   (`request`), executing a routing decision with failover (`relay`), the
//!   SSE relay (`stream`) over a bounded reader (`sse`).
//! - [`auth`]: bearer keys, looked up by hash through bounded caches (one
//!   for found keys, one for unknown ones); its own [`auth::AuthError`].
//! - [`catalog`]: short-lived cache of backends, aliases, policies, rules.
//! - [`live`]: live backend state (health, edge load, in-flight counts)
//!   behind [`live::LiveView`], and the poller that feeds it.
//! - [`fleet`]: what the gateways of a fleet share: the registry of edge
//!   workers that register themselves (`POST /fleet/workers`, in Redis or in
//!   process), backend health mirrored through Redis, and the Postgres
//!   change feed that drops the key and settings caches on admin changes.
//! - [`upstream`]: the shared HTTP client and what an attempt's failure
//!   means.
//! - [`ledger`]: the per-request row guard, the batching writer task (which
//!   retries while the store is unreachable) and the spill file rows wait
//!   in meanwhile.
//! - [`telemetry`]: logs, traces and the Prometheus recorder.
//! - [`traces`]: the spans of a chat request (OpenTelemetry, GenAI
//!   conventions; never content or credentials).
//!
//! # Invariants
//!
//! - A request's path: `http::chat` (auth, parse, admit, classify, route)
//!   → `http::chat::relay` (attempts, relay) → `ledger` (one row, always).
//! - Only `http` and `server` know axum or hyper; only `upstream`
//!   sends upstream requests, to URLs from the store only, following no
//!   redirects.
//! - Nothing reaches a cloud that the classifier has not seen: `http::chat`
//!   classifies the body as it will be forwarded (after the routing fields
//!   are stripped and the policy applied) plus the forwarded request id.
//! - The pure modules (`privacy`, `routing`, `keys`, and `limits` apart
//!   from its Redis side, `limits::shared` and `limits::scripts`) do no I/O.
//! - Only `store` knows SQL; its errors never carry SQL or connection text in
//!   their `Display`.
//! - Plaintext API keys exist only in [`keys::NewKey`], wrapped in a
//!   `SecretString`, and are shown once by the admin CLI.

// Product names (SQLite, OpenAI, Postgres) read better without backticks.
#![allow(clippy::doc_markdown)]

pub mod admin_cli;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod live;
pub mod privacy;
pub mod report;
pub mod routing;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod traces;
pub mod upstream;

pub use http::app;
pub use state::AppState;
