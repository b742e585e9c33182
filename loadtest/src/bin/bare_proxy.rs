//! `bare-proxy`: the gateway's HTTP stack with nothing between its two
//! halves, for benchmarks. `POST /v1/chat/completions` is taken by axum
//! (hyper), its body forwarded by reqwest to the upstream as it came, with
//! the client's `Authorization`, and the answer relayed back chunk by chunk:
//! no authentication, classification, routing, metrics or ledger. Like the
//! gateway, it serves on one single-threaded runtime per CPU, each with an
//! upstream client of its own (here each thread has its own listener on the
//! same port, `SO_REUSEPORT`, and the kernel spreads the connections).
//!
//! What it costs per request is the floor under the gateway's own cost on
//! the same libraries: `scripts/bench-gateway.sh` with `BARE_PROXY=1`
//! measures the gateway against it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use clap::Parser;
use tokio::net::TcpSocket;

#[derive(Parser)]
#[command(
    version,
    about = "A bare reverse proxy on the gateway's HTTP stack, for benchmarks"
)]
struct Cli {
    /// Where to listen; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The upstream's OpenAI base URL, e.g. `http://127.0.0.1:9000/v1`.
    #[arg(long)]
    upstream: String,
    /// Serving threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The upstream client: `reqwest` (the gateway's) or `hyper`
    /// (hyper-util's pooled client alone, the layer reqwest is built on).
    #[arg(long, default_value = "reqwest")]
    client: Client,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Client {
    Reqwest,
    Hyper,
}

type HyperClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

struct Proxy {
    client: reqwest::Client,
    hyper: Option<HyperClient>,
    url: String,
    uri: axum::http::Uri,
}

fn listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn forward(State(proxy): State<Arc<Proxy>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(client) = &proxy.hyper {
        return forward_hyper(client, &proxy.uri, &headers, body).await;
    }
    let mut request = proxy
        .client
        .post(&proxy.url)
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(auth) = headers.get(AUTHORIZATION) {
        request = request.header(AUTHORIZATION, auth);
    }
    match request.send().await {
        Ok(answer) => relayed(
            answer.status(),
            answer.headers().get(CONTENT_TYPE).cloned(),
            Body::from_stream(answer.bytes_stream()),
        ),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

async fn forward_hyper(
    client: &HyperClient,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let mut request =
        axum::http::Request::post(uri.clone()).header(CONTENT_TYPE, "application/json");
    if let Some(auth) = headers.get(AUTHORIZATION) {
        request = request.header(AUTHORIZATION, auth);
    }
    let Ok(request) = request.body(http_body_util::Full::new(body)) else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    match client.request(request).await {
        Ok(answer) => relayed(
            answer.status(),
            answer.headers().get(CONTENT_TYPE).cloned(),
            Body::new(answer.into_body()),
        ),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// The upstream's answer as relayed: its status, content type and body.
fn relayed(status: StatusCode, kind: Option<axum::http::HeaderValue>, body: Body) -> Response {
    let mut response = Response::builder().status(status);
    if let Some(kind) = kind {
        response = response.header(CONTENT_TYPE, kind);
    }
    response
        .body(body)
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// Serves on `listener` until the process ends.
fn serve(listener: std::net::TcpListener, url: String, kind: Client) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .build()
            .map_err(std::io::Error::other)?;
        let hyper = matches!(kind, Client::Hyper).then(|| {
            let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
            connector.set_nodelay(true);
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector)
        });
        let uri = url.parse().map_err(std::io::Error::other)?;
        let app = Router::new()
            .route("/v1/chat/completions", post(forward))
            .with_state(Arc::new(Proxy {
                client,
                hyper,
                url,
                uri,
            }));
        let listener = tokio::net::TcpListener::from_std(listener)?.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        axum::serve(listener, app).await
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match cli.threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    let url = format!("{}/chat/completions", cli.upstream.trim_end_matches('/'));
    // The listeners are bound here, on a runtime only for that, so that the
    // first one fixes the port the others share.
    let bound = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .and_then(|rt| {
            rt.block_on(async {
                let first = listener(cli.listen)?;
                let addr = first.local_addr()?;
                let mut all = vec![first.into_std()?];
                for _ in 1..threads {
                    all.push(listener(addr)?.into_std()?);
                }
                Ok::<_, std::io::Error>((addr, all))
            })
        });
    let (addr, listeners) = match bound {
        Ok(bound) => bound,
        Err(error) => {
            eprintln!("bare-proxy: cannot listen on {}: {error}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    // Scripts read this line to learn the port when they asked for port 0.
    println!("bare-proxy listening on http://{addr}");
    let handles: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let url = url.clone();
            let kind = cli.client;
            std::thread::spawn(move || serve(l, url, kind))
        })
        .collect();
    for handle in handles {
        if let Ok(Err(error)) = handle.join() {
            eprintln!("bare-proxy: {error}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
