//! Edge worker: a quantized GGUF model served with mistralrs behind the
//! OpenAI chat-completions API, reporting its live load and energy so the
//! gateway can route to it.
//!
//! # Layout
//! - [`config`]: flags and environment.
//! - [`auth`]: the worker token that guards `/v1/*`.
//! - [`gguf`]: checks a model file and reads its header before loading.
//! - [`requantize`]: converts weights without SIMD kernels (Q5_0, Q5_1) to Q8_0, cached.
//! - [`engine`]: loads the model with `mistralrs-core` and starts generations.
//! - [`pool`]: makes mistralrs's engine thread a rayon worker (decode speed).
//! - [`admission`]: running slots and a bounded queue (429 beyond it).
//! - [`generation`]: drives one generation; TTFT, token timing, energy, cancel.
//! - [`chat`]: `POST /v1/chat/completions`, JSON and SSE; its `validate`
//!   checks requests (including `response_format`) before admission.
//! - [`routes`]: models, health, readiness, load report, metrics, fallbacks.
//! - [`register`]: with `--gateway-url`, registers with the gateway fleet and
//!   heartbeats the load report.
//! - [`energy`]: RAPL or CPU-time joules, split among concurrent requests.
//! - [`stats`]: moving averages of speed and joules per token.
//! - [`server`]: start-up, model loading in the background, SIGTERM drain.
//! - [`error`]: the OpenAI-shaped error type of the HTTP boundary.
//! - [`trace`]: the spans of a chat completion (queue wait, prefill,
//!   decode), continuing the gateway's trace; never message text.
//! - [`openai`]: OpenAI chat wire types. The load report and the error body
//!   are the shared `wire` crate's, which the gateway parses.

pub mod admission;
pub mod auth;
pub mod chat;
pub mod config;
pub mod energy;
pub mod engine;
pub mod error;
pub mod generation;
pub mod gguf;
pub mod openai;
pub mod pool;
pub mod register;
pub mod requantize;
pub mod routes;
pub mod server;
pub mod stats;
pub mod trace;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::admission::Admission;
use crate::auth::WorkerToken;
use crate::config::Config;
use crate::engine::Engine;
use crate::generation::Reporters;

pub use crate::routes::app;
pub use crate::server::run;

/// Static facts about the loaded model, published by the load report.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    /// The model file's quantization.
    pub quantization: String,
    /// The quantization the engine computes with, after re-quantization;
    /// set once the model has loaded.
    pub served_quantization: OnceLock<String>,
    /// The prefix cache's capacity, when it is on and its size is known.
    pub prefix_cache: Option<wire::PrefixCache>,
}

/// Shared state of all handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub config: Config,
    /// When set, `/v1/*` requires it (see [`auth`]).
    pub token: Option<WorkerToken>,
    /// Set once the model has loaded; until then chat requests get 503 and
    /// `/readyz` says not ready, while `/healthz` already answers.
    pub engine: OnceLock<Arc<Engine>>,
    pub facts: ModelFacts,
    pub admission: Arc<Admission>,
    pub reporters: Reporters,
    /// Set on SIGTERM: readiness fails and new requests get 503 while
    /// in-flight ones finish.
    pub draining: AtomicBool,
    /// Ids for the energy accountant's running set.
    pub next_energy_id: AtomicU64,
    pub metrics: PrometheusHandle,
}

impl AppState {
    pub fn new(
        config: Config,
        token: Option<WorkerToken>,
        facts: ModelFacts,
        reporters: Reporters,
        metrics: PrometheusHandle,
    ) -> Self {
        let admission = Admission::new(config.max_running, config.max_waiting);
        Self(Arc::new(Shared {
            config,
            token,
            engine: OnceLock::new(),
            facts,
            admission,
            reporters,
            draining: AtomicBool::new(false),
            next_energy_id: AtomicU64::new(1),
            metrics,
        }))
    }
}
