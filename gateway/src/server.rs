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
//! Connections are served on `serve_threads` threads (one per CPU by
//! default), each running a single-threaded runtime with upstream clients
//! of its own. The accept loop hands each new connection to the thread with
//! the fewest open ones, and the connection stays there: its requests, their
//! upstream calls and their answers run on one thread, as in an event loop
//! per core, instead of waking another runtime worker at each step (on a
//! work-stealing runtime a request's parts cross threads several times, a
//! futex wake-up and a context switch each). The background tasks (the
//! poller, the worker registry, the change feed) stay on the main runtime
//! and the ledger writer on a thread of its own; a cache refresh that a
//! request starts runs on that request's thread.
//!
//! Shutdown, in order: stop accepting; let open requests finish for up to
//! `shutdown_grace_ms`; then end the streams still running with an SSE
//! error event (their ledger rows say `cancelled`), give them a moment to
//! send it, and close what is left; finally flush the ledger.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use secrecy::ExposeSecret;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::auth::Proxies;
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
    #[error("cannot start a serving thread")]
    Thread(#[source] std::io::Error),
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
    let served = serve_on(listener, state.clone(), shutdown).await;
    state.shutdown().await;
    store.close().await;
    served
}

/// The accept loop over `listener` for `state`'s app, until `shutdown`
/// resolves and the connections are drained or closed. Does not flush the
/// ledger (the caller does, with [`AppState::shutdown`]).
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let config = &state.config;
    let grace = Config::ms(config.shutdown_grace_ms);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Config::ms(config.header_read_timeout_ms));
    // An HTTP/2 connection whose peer stops answering pings (gone, or a
    // socket that sent the preface and nothing else) is closed, giving its
    // slot back; HTTP/1's idle connections end at the header read timeout.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_INTERVAL);
    let first_bytes_within = Config::ms(config.header_read_timeout_ms);
    let threads = ServeThreads::start(&state)?;
    // Checked when the configuration was loaded.
    let proxies = Arc::new(Proxies::parse(&config.trusted_proxies).unwrap_or_default());
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
        let (stream, peer) =
            match accepted.and_then(|(stream, addr)| Ok((stream.into_std()?, addr.ip()))) {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
        let thread = threads.least_busy();
        let open = thread.open_guard();
        // Each request knows its peer (for counting credential guesses,
        // `auth::Guesses`): the connection's, or the client a trusted
        // proxy names.
        let proxies = Arc::clone(&proxies);
        let service = TowerToHyperService::new(thread.app.clone().map_request(
            move |mut request: http::Request<hyper::body::Incoming>| {
                let peer = proxies.peer(peer, request.headers());
                request.extensions_mut().insert(peer);
                request
            },
        ));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let conn = async move {
            // Registered with the serving thread's own reactor.
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot serve an accepted connection");
                    return;
                }
            };
            // SSE sends many small writes; with Nagle's algorithm on, each
            // waits for the client's delayed ACK (about 40 ms on Linux).
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            if !protocol_known(&stream, first_bytes_within).await {
                drop((slot, open));
                return;
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop((slot, open));
        };
        connections.spawn_on(conn, &thread.runtime);
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
    state.keep_until_shutdown(threads.into_runtimes());
    Ok(())
}

/// How often an HTTP/2 connection is pinged, and how long the answer may
/// take before the connection is closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `stream` sent, within `limit`, enough to tell HTTP/1 from
/// HTTP/2: a byte that does not begin the HTTP/2 preface, or the whole
/// preface. hyper's version detection waits for that without a timer, so
/// a connection that sends nothing (or a preface cut short) would hold its
/// slot forever; it is closed instead. Peeks, so hyper reads the same
/// bytes afterwards.
async fn protocol_known(stream: &TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    let known = async {
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == buf.len() || buf[..n] != H2_PREFACE[..n] => return true,
                // A preface in part: peek answers at once while those bytes
                // wait unread, so look again shortly.
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(limit, known).await.unwrap_or(false)
}

/// The serving threads (see the module docs): never empty.
struct ServeThreads {
    first: ServeThread,
    rest: Vec<ServeThread>,
}

struct ServeThread {
    runtime: tokio::runtime::Handle,
    /// The app over this thread's own upstream clients.
    app: axum::Router,
    /// Connections open on this thread.
    open: Arc<AtomicUsize>,
    thread: RuntimeThread,
}

/// A thread running a single-threaded runtime until told to stop.
pub(crate) struct RuntimeThread {
    /// Dropped to end the runtime.
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl RuntimeThread {
    fn start(name: String) -> std::io::Result<(RuntimeThread, tokio::runtime::Handle)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // Dropping the runtime afterwards ends the tasks still on it.
            runtime.block_on(async {
                tokio::select! {
                    _ = stopped => {}
                    () = keep_a_timer_pending() => {}
                }
            });
        })?;
        Ok((RuntimeThread { stop, thread }, handle))
    }

    /// Ends the runtime and waits for the thread.
    pub(crate) async fn stop(self) {
        drop(self.stop);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// How often a serving thread's standing timer fires.
const TIMER_HEARTBEAT: Duration = Duration::from_secs(1);

/// Keeps a timer pending on the runtime at all times. Tokio's timer wakes
/// its own driver (an eventfd write, then a turn of epoll for nothing)
/// when a timer is filed while none is pending, or one sooner than all
/// that are. A request files several (hyper's header read timeout, the
/// upstream's first-byte and idle timeouts), so a thread that went idle
/// between requests paid that wake-up on each. With this one pending, the
/// longer timers a request files are never the soonest, and filing them
/// wakes nothing; it costs one wake-up a second.
async fn keep_a_timer_pending() {
    loop {
        tokio::time::sleep(TIMER_HEARTBEAT).await;
    }
}

/// Counts a connection as open on its thread until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServeThread {
    fn open_guard(&self) -> OpenGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(Arc::clone(&self.open))
    }
}

impl ServeThreads {
    /// Starts `serve_threads` threads (0: one per CPU).
    fn start(state: &AppState) -> Result<ServeThreads, ServeError> {
        let count = match state.config.serve_threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        };
        let start = |index: usize| -> Result<ServeThread, ServeError> {
            let (thread, runtime) =
                RuntimeThread::start(format!("serve-{index}")).map_err(ServeError::Thread)?;
            Ok(ServeThread {
                runtime,
                app: crate::http::app(state.with_own_clients()?),
                open: Arc::new(AtomicUsize::new(0)),
                thread,
            })
        };
        Ok(ServeThreads {
            first: start(0)?,
            rest: (1..count).map(start).collect::<Result<_, _>>()?,
        })
    }

    /// The thread with the fewest open connections.
    fn least_busy(&self) -> &ServeThread {
        let open = |t: &ServeThread| t.open.load(Ordering::Relaxed);
        self.rest.iter().fold(
            &self.first,
            |best, t| if open(t) < open(best) { t } else { best },
        )
    }

    fn into_runtimes(self) -> Vec<RuntimeThread> {
        std::iter::once(self.first)
            .chain(self.rest)
            .map(|t| t.thread)
            .collect()
    }
}
