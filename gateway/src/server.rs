//! `gateway serve`: open the store, start the state's background tasks,
//! serve until a shutdown signal, then drain and flush the ledger.

use std::future::{Future, IntoFuture};

use axum::serve::ListenerExt;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::{AppState, StartError};
use crate::store::{Store, StoreError};

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
/// waits up to `shutdown_grace_ms` for open requests after the signal and
/// flushes the ledger before returning.
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
    let grace = Config::ms(config.shutdown_grace_ms);
    let state = AppState::start(config, store.clone())?;
    println!("gateway listening on http://{addr}");
    tracing::info!(%addr, "gateway listening");
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let mut server = Box::pin(
        axum::serve(listener.tap_io(no_delay), crate::http::app(state.clone()))
            .with_graceful_shutdown(signal)
            .into_future(),
    );
    // After the signal, open streams get `grace` to finish; then the server
    // future is dropped, which drops their bodies (cancelled rows).
    let result = tokio::select! {
        r = &mut server => r,
        () = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("shutdown grace elapsed; closing open requests");
            Ok(())
        }
    };
    drop(server);
    state.shutdown().await;
    store.close().await;
    result.map_err(ServeError::Serve)
}

/// SSE sends many small writes; with Nagle's algorithm on, each waits for
/// the client's delayed ACK (about 40 ms on Linux).
fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}
