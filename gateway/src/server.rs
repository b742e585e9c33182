//! `gateway serve`: open the store, start the state's background tasks,
//! serve until a shutdown signal, then drain and flush the ledger.
//!
//! The accept loop is hyper's own (through `hyper-util`) rather than
//! `axum::serve`, for three things `axum::serve` does not offer: a timeout
//! on reading request headers (a client that trickles them, slowloris, is
//! closed), a cap on open connections, and a shutdown that can end the
//! connections still open after the grace period, so that none outlives the
//! server.
//!
//! Shutdown, in order: stop accepting; let open requests finish for up to
//! `shutdown_grace_ms`; then end the streams still running with an SSE
//! error event (their ledger rows say `cancelled`), give them a moment to
//! send it, and close what is left; finally flush the ledger.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::state::{AppState, StartError};
use crate::store::{Store, StoreError};

/// How long streams ended by shutdown get to send their last event.
const STREAM_END_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the database")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed")]
    Serve(#[source] std::io::Error),
}

/// Opens and migrates the configured store.
pub async fn open_store(config: &Config) -> Result<Store, StoreError> {
    let url = config
        .database_url
        .as_ref()
        .map(|u| u.expose_secret().to_owned());
    let store = Store::connect(url.as_deref(), &config.sqlite_path).await?;
    store.migrate().await?;
    Ok(store)
}

/// Serves until `shutdown` resolves. Prints `gateway listening on
/// http://ADDR` on stdout once bound (scripts read the port from it), then
/// drains (see the module docs) and flushes the ledger before returning.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = open_store(&config).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    let state = AppState::start(config, store.clone())?;
    println!("gateway listening on http://{addr}");
    tracing::info!(%addr, "gateway listening");
    serve_on(listener, state.clone(), shutdown).await;
    state.shutdown().await;
    store.close().await;
    Ok(())
}

/// The accept loop over `listener` for `state`'s app, until `shutdown`
/// resolves and the connections are drained or closed. Does not flush the
/// ledger (the caller does, with [`AppState::shutdown`]).
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let config = &state.config;
    let grace = Config::ms(config.shutdown_grace_ms);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Config::ms(config.header_read_timeout_ms));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let service = TowerToHyperService::new(crate::http::app(state.clone()));
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Reap finished connection tasks so the set stays small.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // SSE sends many small writes; with Nagle's algorithm on, each
        // waits for the client's delayed ACK (about 40 ms on Linux).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
            .into_owned();
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining open requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace elapsed; ending open streams");
        state.end_streams();
        let _ = tokio::time::timeout(STREAM_END_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
    }
    connections.shutdown().await;
}
