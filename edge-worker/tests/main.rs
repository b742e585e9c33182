//! The edge worker's integration tests, built as one binary: one link of
//! the whole dependency tree (mistralrs included) instead of one per file.
//! Each module is a file of its own; a test runs alone with
//! `cargo test --release --workspace --test integration <module>::`.

mod common;

mod auth;
mod capacity;
mod energy;
mod errors;
mod generation;
mod gguf_header;
mod kernels;
mod lifecycle;
mod load_report;
mod logprobs;
mod requantize;
mod response_format;
mod slow_clients;
