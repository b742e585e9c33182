//! A mock `OpenAI`-compatible cloud.
//!
//! It stands in for a paid cloud account in two jobs: integration tests that
//! need a cloud which fails on command (a status, a dropped stream, a hang),
//! and benchmarks that measure the gateway's added latency, where the mock
//! must cost as little as possible. Both jobs share one server so that what
//! is benchmarked is what is tested.
//!
//! Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /mock/stats`,
//! `POST /mock/reset`. See [`Behaviour`] for what can be configured and
//! [`SCENARIO_HEADER`] for per-request overrides.

mod body;
mod chat;
mod config;
mod error;
mod stats;
mod stream;
mod text;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Behaviour, MockConfig, ScenarioError, SCENARIO_HEADER};
pub use error::MockError;
pub use stats::MockStats;
pub use text::{count_tokens, MAX_COMPLETION_TOKENS};

use stats::Stats;

/// Model listed by `GET /v1/models` when the mock accepts every name.
pub const DEFAULT_MODEL: &str = "mock-model";

/// Why the mock could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum MockCloudError {
    /// The configuration is out of range.
    #[error(transparent)]
    Config(#[from] ScenarioError),
    /// The listener could not be bound or inspected.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: io::Error,
    },
    /// The server ended with an I/O error.
    #[error("mock cloud server failed: {0}")]
    Serve(#[from] io::Error),
    /// The server task panicked or was cancelled.
    #[error("mock cloud server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// State shared by the handlers; a cheap clone around `Arc`s.
#[derive(Clone)]
pub(crate) struct AppState {
    behaviour: Arc<Behaviour>,
    seed: u64,
    stats: Arc<Stats>,
    /// Cancelled at shutdown; hanging and stalled requests wait on it so that
    /// graceful shutdown never waits for them forever.
    shutdown: CancellationToken,
}

/// A running mock. Dropping it stops the server without waiting; call
/// [`MockCloud::shutdown`] to wait for it.
pub struct MockCloud {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<io::Result<()>>>,
}

impl MockCloud {
    /// Binds `config.addr` and serves until shut down.
    pub async fn start(config: MockConfig) -> Result<Self, MockCloudError> {
        let addr = config.addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MockCloudError::Bind { addr, source })?;
        Self::start_on(listener, config)
    }

    /// Serves on an already bound listener (`config.addr` is ignored).
    pub fn start_on(listener: TcpListener, config: MockConfig) -> Result<Self, MockCloudError> {
        config.behaviour.validate()?;
        let addr = listener
            .local_addr()
            .map_err(|source| MockCloudError::Bind {
                addr: config.addr,
                source,
            })?;
        let shutdown = CancellationToken::new();
        let state = AppState {
            behaviour: Arc::new(config.behaviour),
            seed: config.seed,
            stats: Arc::new(Stats::new()),
            shutdown: shutdown.clone(),
        };
        let counters = state.stats.clone();
        // Streams are written chunk by chunk; without TCP_NODELAY, Nagle's
        // algorithm would hold small chunks back and distort every latency
        // measured through the mock.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let signal = shutdown.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(signal)
                .await
        });
        Ok(Self {
            addr,
            stats: counters,
            shutdown,
            server: Some(server),
        })
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL an `OpenAI` client is given, `http://ADDR/v1`.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn stats(&self) -> MockStats {
        self.stats.snapshot()
    }

    /// Zeroes the counters (except requests still in flight).
    pub fn reset(&self) {
        self.stats.reset();
    }

    /// Stops accepting, ends hanging and stalled requests, and waits for the
    /// open connections to finish.
    pub async fn shutdown(mut self) -> Result<(), MockCloudError> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(server) => Ok(server.await??),
            None => Ok(()),
        }
    }
}

impl Drop for MockCloud {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The mock's routes over `state`.
fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(models))
        .route("/mock/stats", get(mock_stats))
        .route("/mock/reset", post(mock_reset))
        .with_state(state)
}

async fn models(State(app): State<AppState>, headers: HeaderMap) -> Response {
    app.stats.models_request();
    if let Err(error) = chat::authorize(&app.behaviour, &headers) {
        return error.into_response();
    }
    let ids: Vec<&str> = if app.behaviour.models.is_empty() {
        vec![DEFAULT_MODEL]
    } else {
        app.behaviour.models.iter().map(String::as_str).collect()
    };
    let data: Vec<_> = ids
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock-cloud"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn mock_stats(State(app): State<AppState>) -> Json<MockStats> {
    Json(app.stats.snapshot())
}

async fn mock_reset(State(app): State<AppState>) -> Json<MockStats> {
    app.stats.reset();
    Json(app.stats.snapshot())
}
