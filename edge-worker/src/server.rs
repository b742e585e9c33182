//! Start-up and shutdown. The listener is bound before the model loads, so
//! liveness answers at once while readiness waits for the weights; a model
//! that fails to load ends the process with one error line. SIGTERM (or
//! Ctrl-C) drains: readiness fails, new work gets 503, in-flight requests
//! run up to the drain timeout, and the process exits 0.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, TokenError};
use crate::config::Config;
use crate::energy::{Accountant, Meter};
use crate::engine::{
    self, Engine, EngineError, EngineOptions, GenerateParams, ModelSource, OutputFormat, Piece,
};
use crate::generation::Reporters;
use crate::gguf::{self, GgufError};
use crate::register::{RegisterError, Registrar};
use crate::requantize::{self, Requantize};
use crate::stats::{LiveStats, Observation};
use crate::{AppState, ModelFacts};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Model(#[from] GgufError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot set up metrics: {0}")]
    Metrics(String),
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// Runs the worker until it is told to stop.
pub async fn run(config: Config) -> Result<(), StartError> {
    // First, so that an exposed address without a token fails at once.
    let token = auth::configure(&config)?;
    let token_text = if config.gateway_url.is_some() {
        auth::read(&config)?
    } else {
        None
    };
    let (source, model_id, quantization) = resolve_source(&config)?;
    let metrics = install_metrics()?;
    let meter = Meter::detect(&config.powercap_dir, config.watts_per_core);
    let reporters = Reporters {
        energy: Arc::new(Accountant::new(meter)),
        stats: Arc::new(LiveStats::new(config.max_running)),
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(StartError::Serve)?;
    let registrar = Registrar::from_config(&config, addr, token_text.as_deref())?;
    drop(token_text);
    let options = EngineOptions {
        source,
        model_id,
        max_running: config.max_running,
        // The global pool's size: --threads, else RAYON_NUM_THREADS, else
        // one per core (set by `configure_threads` before anything ran).
        threads: rayon::current_num_threads(),
        prefix_cache_sequences: config.prefix_cache_sequences,
        prefix_cache_bytes: config.prefix_cache_mib.saturating_mul(1 << 20),
    };
    let drain_timeout = config.drain_timeout();
    let facts = ModelFacts {
        quantization,
        served_quantization: std::sync::OnceLock::new(),
        prefix_cache: prefix_cache_capacity(&options),
    };
    let requant = (config.requantize, config.cache_dir.clone());
    let state = AppState::new(config, token, facts, reporters, metrics);
    tracing::info!(%addr, "listening; loading the model");
    // One line on stdout tells scripts and tests the bound address (the
    // port may have been 0) without parsing logs.
    println!("edge-worker listening on http://{addr}");

    // `draining`: a signal came; `shutdown`: stop accepting connections.
    let draining = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
    let loader = tokio::spawn(load_model(state.clone(), options, requant, failed_tx));
    let signals = tokio::spawn(watch_signals(
        state.clone(),
        draining.clone(),
        shutdown.clone(),
    ));
    let heartbeats = registrar.map(|r| tokio::spawn(r.run(state.clone())));

    let limits = (
        Duration::from_millis(state.config.header_read_timeout_ms),
        state.config.max_connections.max(1),
    );
    let serve = serve(listener, crate::app(state), limits, shutdown.clone());
    let drain_deadline = async {
        draining.cancelled().await;
        tokio::time::sleep(drain_timeout).await;
    };
    let result = tokio::select! {
        r = serve => r.map_err(StartError::Serve),
        () = drain_deadline => {
            tracing::warn!(?drain_timeout, "drain timeout passed; abandoning in-flight requests");
            Ok(())
        }
        Ok(e) = failed_rx => Err(StartError::Engine(e)),
    };
    loader.abort();
    signals.abort();
    if let Some(h) = heartbeats {
        h.abort();
    }
    if result.is_ok() {
        tracing::info!("stopped");
    }
    result
}

/// The prefix cache's capacity in sequences and tokens, for the load report
/// (the gateway's prefix affinity judges by it what the cache still holds).
/// Unknown for a hub model, whose header is read only by the engine.
fn prefix_cache_capacity(options: &EngineOptions) -> Option<wire::PrefixCache> {
    let ModelSource::File(info) = &options.source else {
        return None;
    };
    let per_token = info.kv_bytes_per_token.filter(|&b| b > 0)?;
    (options.prefix_cache_sequences > 0).then(|| wire::PrefixCache {
        sequences: u32::try_from(options.prefix_cache_sequences).unwrap_or(u32::MAX),
        tokens: options.prefix_cache_bytes as u64 / per_token,
    })
}

/// Checks the model file (or names the hub repository) and settles the id.
fn resolve_source(config: &Config) -> Result<(ModelSource, String, String), StartError> {
    if let Some(path) = &config.model_path {
        let info = gguf::inspect(path)?;
        let id = config
            .model_id
            .clone()
            .unwrap_or_else(|| gguf::model_id_from_path(path));
        let quantization = info.quantization.clone();
        return Ok((ModelSource::File(info), id, quantization));
    }
    let repo = config.hf_model.clone().unwrap_or_default();
    let file = config.hf_file.clone().unwrap_or_default();
    let id = config
        .model_id
        .clone()
        .unwrap_or_else(|| gguf::model_id_from_name(repo.rsplit('/').next().unwrap_or(&repo)));
    let quantization = file
        .rsplit(['.', '-'])
        .nth(1)
        .map_or_else(|| "unknown".to_string(), str::to_uppercase);
    Ok((ModelSource::Hub { repo, file }, id, quantization))
}

fn install_metrics() -> Result<PrometheusHandle, StartError> {
    let seconds = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let joules = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("edge_request_joules".into()), &joules)
        })
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| StartError::Metrics(e.to_string()))
}

async fn load_model(
    state: AppState,
    mut options: EngineOptions,
    (mode, cache_dir): (Requantize, std::path::PathBuf),
    failed: tokio::sync::oneshot::Sender<EngineError>,
) {
    let started = std::time::Instant::now();
    if let ModelSource::File(info) = &mut options.source {
        let src = info.path.clone();
        let converted =
            tokio::task::spawn_blocking(move || requantize::prepare(&src, mode, &cache_dir)).await;
        match converted {
            Ok(Ok(path)) => {
                if path != info.path {
                    tracing::info!(from = %info.path.display(), to = %path.display(), "using re-quantized weights");
                }
                let served = match gguf::inspect(&path) {
                    Ok(i) => i.quantization,
                    Err(e) => {
                        let _ = failed.send(EngineError::Load(e.to_string()));
                        return;
                    }
                };
                let _ = state.facts.served_quantization.set(served);
                info.path = path;
            }
            Ok(Err(e)) => {
                let _ = failed.send(EngineError::Load(e.to_string()));
                return;
            }
            Err(e) => {
                let _ = failed.send(EngineError::Load(format!("re-quantization panicked: {e}")));
                return;
            }
        }
    }
    let threads = options.threads;
    let engine = match Engine::load(options).await {
        Ok(e) => Arc::new(e),
        Err(e) => {
            let _ = failed.send(e);
            return;
        }
    };
    if let Err(e) = warm_up(&engine, &state).await {
        let _ = failed.send(e);
        return;
    }
    if threads >= 2 && !crate::pool::engine_attached() {
        // The warm-up sampled on the engine thread without enrolling it:
        // mistralrs no longer runs logits processors there (see `pool`).
        tracing::warn!(
            threads,
            "the engine thread is not in the compute pool; decoding will be slower"
        );
    }
    tracing::info!(
        model = %engine.model_id,
        context = engine.context_length,
        secs = started.elapsed().as_secs_f64(),
        "model loaded and warmed up; ready"
    );
    let _ = state.engine.set(engine);
}

/// One short generation before declaring readiness: the first pass through
/// the model is slow (allocation, caches), and the gateway needs measured
/// speed and energy figures from the first load report on.
async fn warm_up(engine: &Engine, state: &AppState) -> Result<(), EngineError> {
    let energy = &state.reporters.energy;
    energy.begin(0);
    let mut stream = engine
        .generate(GenerateParams {
            messages: vec![engine::message("user", "Say hello.".to_string())],
            max_tokens: 8,
            temperature: Some(0.0),
            top_p: None,
            stop: Vec::new(),
            frequency_penalty: None,
            presence_penalty: None,
            seed: None,
            format: OutputFormat::Text,
            logprobs: None,
        })
        .await?;
    while let Some(piece) = stream.recv().await {
        match piece {
            Piece::Chunk {
                done: Some(done), ..
            } => {
                state
                    .reporters
                    .stats
                    .observe(&Observation::of(&done, energy.end(0)));
                return Ok(());
            }
            Piece::Chunk { done: None, .. } => {}
            Piece::Failed(e) => {
                energy.end(0);
                return Err(EngineError::Rejected(e));
            }
        }
    }
    energy.end(0);
    Err(EngineError::Closed)
}

/// On SIGTERM or Ctrl-C: drain. Readiness fails and new requests get 503
/// `worker_draining` while the listener stays open, so a load balancer sees
/// the worker leave instead of connections refused; once nothing is running
/// or waiting, the server stops (the drain timeout in `run` ends it sooner).
async fn watch_signals(state: AppState, draining: CancellationToken, shutdown: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!(
        in_flight = state.admission.running() + state.admission.waiting(),
        "draining"
    );
    state.draining.store(true, Ordering::Release);
    draining.cancel();
    while state.admission.running() + state.admission.waiting() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    shutdown.cancel();
}

/// Sets the compute thread count for candle and rayon. Must run before the
/// model loads, because both size their pools on first use.
pub fn configure_threads(threads: usize) {
    if threads == 0 {
        return;
    }
    // candle reads RAYON_NUM_THREADS for its own kernels.
    // rayon's global pool reads the same variable when it first starts.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}

/// Serves `app` on `listener` until `shutdown`, then waits for the open
/// connections' requests to finish (the caller bounds that wait). Unlike
/// `axum::serve`, a connection that sends no headers, or a byte at a time,
/// is closed after `header_read_timeout`, and at most `max_connections`
/// are open at once, so whoever can reach the port cannot hold the
/// worker's sockets and descriptors before the token is even checked.
/// HTTP/1 only: the gateway speaks nothing else to a worker.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    (header_read_timeout, max_connections): (Duration, usize),
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // SSE sends many small writes; with Nagle's algorithm on, each
        // waits for the client's delayed ACK (about 40 ms on Linux).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
