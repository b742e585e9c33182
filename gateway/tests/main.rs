//! The gateway's integration tests, built as one binary: one link of the
//! whole dependency tree instead of one per file. Each module is a file of
//! its own, as it would be under `tests/`; a test runs alone with
//! `cargo test --release --workspace --test integration <module>::`.
//!
//! Tests share this process: the metrics recorder, the log subscriber
//! (`common::logs`) and the environment. A test that reads a counter uses
//! backend names of its own, and a variable a test sets is named for it.

#[macro_use]
mod common;

mod admin_api;
mod admin_cli;
mod api;
mod catalog;
mod collab;
mod edge_failures;
mod edge_routing;
mod fail_safe;
mod failover_paths;
mod fleet_faults;
mod fleet_limits;
mod fleet_workers;
mod fuzz_corpus;
mod ledger_outage;
mod loadgen_report;
mod placement;
mod privacy_property;
mod promises;
mod proxy;
mod secrets;
mod store;
mod traces;
