//! The HTTP clients for upstreams, with the timeouts of the config, and the
//! rules for what an attempt's failure means.
//!
//! Upstream URLs come only from the store's backend rows, never from the
//! client. Three pooled clients:
//! - plain HTTP to on-prem backends (edge workers, the common path), and
//!   to cloud backends when no proxy environment variable applies to plain
//!   HTTP: hyper-util's client alone, a fifth to a quarter cheaper a
//!   request than reqwest on top of it (docs/benchmarks.md, "What reqwest
//!   costs of that floor");
//! - reqwest for HTTPS to on-prem backends, ignoring proxy environment
//!   variables (LAN traffic must not detour through a proxy);
//! - reqwest for HTTPS (or proxied HTTP) to cloud backends, honouring them.
//!
//! None follows redirects: an upstream cannot send the gateway, with the
//! upstream's credentials, to another address.
//!
//! Credentials: a cloud backend's key is read from the environment variable
//! its row names, at send time, and goes only into the `Authorization`
//! header; an edge worker gets the fleet's worker token instead. Neither is
//! ever logged. The client's own `Authorization` header (a gateway key) is
//! never forwarded.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyDataStream, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::redirect;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::Span;

use crate::config::Config;
use crate::routing::{Backend, BackendKind, WorkerLoad, Zone};

/// Timeouts applied by the proxy around the client's own.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To response headers (and, for streams, the first token).
    pub first_byte: Duration,
    /// Between two body chunks.
    pub idle: Duration,
    /// Send to last byte.
    pub total: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream answer's body, as chunks of bytes.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// An upstream's answer, whichever client fetched it.
pub struct UpstreamResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: BodyStream,
}

impl UpstreamResponse {
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The next chunk of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BoxError> {
        self.body.next().await.transpose()
    }

    #[must_use]
    pub fn into_body(self) -> BodyStream {
        self.body
    }
}

/// A body that fails once its request's total time is up: reqwest's
/// per-request timeout, for the hyper-util client, which has none.
struct Deadline<S> {
    body: S,
    at: Pin<Box<tokio::time::Sleep>>,
    over: bool,
}

impl<S: Stream<Item = Result<Bytes, BoxError>> + Unpin> Stream for Deadline<S> {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.over {
            return Poll::Ready(None);
        }
        if self.at.as_mut().poll(cx).is_ready() {
            self.over = true;
            return Poll::Ready(Some(Err("the upstream's total time is up".into())));
        }
        self.body.poll_next_unpin(cx)
    }
}

type DirectClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// The shared clients. Cheap to clone (each is an `Arc` inside).
#[derive(Clone)]
pub struct Upstreams {
    direct: DirectClient,
    /// No proxy environment variable applies to a cloud backend's plain
    /// HTTP, so the direct client may carry it.
    cloud_direct: bool,
    on_prem: reqwest::Client,
    cloud: reqwest::Client,
    worker_token: Option<SecretString>,
    pub timeouts: Timeouts,
    pub max_body_bytes: usize,
    pub max_error_bytes: usize,
    pub max_event_bytes: usize,
}

/// How one attempt failed before anything reached the client.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("connect failed")]
    Connect,
    #[error("timed out")]
    Timeout,
    /// The upstream answered with this status; `body` is its error body,
    /// cut at `max_upstream_error_bytes`.
    #[error("upstream status {status}")]
    Status { status: u16, body: Bytes },
    /// The upstream is rate-limited or at capacity (429): another backend
    /// may serve, and if none does the client is told when to come back
    /// (the upstream's `Retry-After`, in seconds, if it gave one).
    #[error("upstream busy (429)")]
    Busy { retry_after_s: Option<u32> },
    /// The upstream said the prompt does not fit its context (a 400 or an
    /// error event): a backend with a larger context may still serve it.
    #[error("context length exceeded upstream")]
    ContextLength,
    /// The stream reported an error, or broke, before its first token.
    #[error("upstream failed before the first token")]
    Failed,
    #[error("upstream body unreadable")]
    Body,
    /// The upstream key's environment variable is not set.
    #[error("upstream key not configured")]
    NoKey,
    /// Not sent: a confidential request and a cloud-zone backend. Routing
    /// never pairs them; this is the last check before a send.
    #[error("confidential request refused for a cloud backend")]
    PrivacyBlocked,
}

impl AttemptError {
    /// Whether the next candidate may be tried. Connection failures,
    /// timeouts, 5xx, 429 and answers that are about *our* configuration
    /// (401, 403, 404, 407: a bad key, a wrong model mapping) are the
    /// upstream's problem; 400, 413, 415 and 422 are about the request and
    /// would fail everywhere, unless their code is about our credential or
    /// account (`invalid_api_key`, `insufficient_quota`): then the client
    /// is not at fault, another backend may serve, and if none does the
    /// client gets 502, not a code that says its own key is bad.
    #[must_use]
    pub fn retryable(&self) -> bool {
        match self {
            AttemptError::Status { status, body } => {
                !matches!(status, 400 | 413 | 415 | 422) || about_our_account(body)
            }
            _ => true,
        }
    }

    /// Whether it says the backend is unwell (feeds passive health): it did
    /// not answer, answered 5xx, or broke off.
    #[must_use]
    pub fn backend_down(&self) -> bool {
        match self {
            AttemptError::Connect
            | AttemptError::Timeout
            | AttemptError::Body
            | AttemptError::Failed => true,
            AttemptError::Status { status, .. } => *status >= 500,
            AttemptError::Busy { .. }
            | AttemptError::ContextLength
            | AttemptError::NoKey
            | AttemptError::PrivacyBlocked => false,
        }
    }

    /// Low-cardinality label for metrics.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            AttemptError::Connect => "connect",
            AttemptError::Timeout => "timeout",
            AttemptError::Status { status, .. } if *status >= 500 => "5xx",
            AttemptError::Status { status: 429, .. } | AttemptError::Busy { .. } => "429",
            AttemptError::Status {
                status: 401 | 403 | 407,
                ..
            } => "auth",
            AttemptError::Status { .. } => "4xx",
            AttemptError::ContextLength => "context_length",
            AttemptError::Failed => "stream_failed",
            AttemptError::Body => "body",
            AttemptError::NoKey => "no_key",
            AttemptError::PrivacyBlocked => "privacy_blocked",
        }
    }
}

/// The OpenAI base URL of a backend: its stored URL, with `/v1` added when
/// the URL has no path (an edge worker prints `http://host:port`).
#[must_use]
pub fn api_base(base_url: &str) -> String {
    let trimmed = base_url.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    if after_scheme.contains('/') {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1")
    }
}

/// Whether an upstream's error body names a problem with the gateway's own
/// credential or account rather than with the request.
fn about_our_account(body: &[u8]) -> bool {
    error_code(body).is_some_and(|code| {
        let code = code.to_ascii_lowercase();
        [
            "key",
            "auth",
            "permission",
            "quota",
            "billing",
            "account",
            "organization",
        ]
        .iter()
        .any(|w| code.contains(w))
    })
}

/// An upstream's `Retry-After` in whole seconds (the HTTP-date form is
/// not used by model APIs and is ignored).
fn retry_after(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| s.ceil().min(f64::from(u32::MAX)) as u32)
}

/// The `error.code` of an OpenAI error body, if it is one.
#[must_use]
pub fn error_code(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        code: Option<String>,
    }
    serde_json::from_slice::<Outer>(body).ok()?.error.code
}

/// How long a plain-HTTP connection (an edge worker's) may sit idle in the
/// pool: under the edge worker's default header read timeout (10 s), which
/// is also how long it keeps an idle connection open.
const DIRECT_POOL_IDLE: Duration = Duration::from_secs(4);

impl Upstreams {
    pub fn new(config: &Config) -> Result<Upstreams, reqwest::Error> {
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Config::ms(config.upstream_connect_timeout_ms))
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .redirect(redirect::Policy::none())
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Config::ms(config.upstream_connect_timeout_ms)));
        // An edge worker closes a connection left idle for its header read
        // timeout; a request written onto it as it closes fails, and is not
        // retried (the worker may have read it). The pool lets idle
        // connections go first.
        let direct = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(DIRECT_POOL_IDLE)
            .build(connector);
        // reqwest's cloud client sends plain HTTP through the proxy these
        // name; without any, it connects directly, as the direct client does.
        let cloud_direct = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
            .iter()
            .all(|v| std::env::var_os(v).is_none_or(|p| p.is_empty()));
        Ok(Upstreams {
            direct,
            cloud_direct,
            on_prem: builder().no_proxy().build()?,
            cloud: builder().build()?,
            worker_token: config.worker_token.clone(),
            timeouts: Timeouts {
                first_byte: Config::ms(config.upstream_first_byte_timeout_ms),
                idle: Config::ms(config.upstream_idle_timeout_ms),
                total: Config::ms(config.upstream_total_timeout_ms),
            },
            max_body_bytes: config.max_upstream_body_bytes,
            max_error_bytes: config.max_upstream_error_bytes,
            max_event_bytes: config.max_sse_event_bytes,
        })
    }

    /// Whether `backend` is reached by the direct client: plain HTTP, on
    /// the premises or with no proxy in the way.
    fn direct(&self, backend: &Backend) -> bool {
        let http = backend
            .base_url
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("http://"));
        http && (backend.zone == Zone::OnPrem || self.cloud_direct)
    }

    fn client(&self, backend: &Backend) -> &reqwest::Client {
        match backend.zone {
            Zone::OnPrem => &self.on_prem,
            Zone::Cloud => &self.cloud,
        }
    }

    /// The `Authorization` value for `backend`: the key from the named
    /// variable if it has one, else the worker token for an edge worker on
    /// the premises. An edge worker in the cloud zone never gets the token:
    /// whoever runs it could present it to `/fleet/workers`, register an
    /// address of their own as an on-prem worker and be sent confidential
    /// requests.
    fn credential(&self, backend: &Backend) -> Result<Option<HeaderValue>, AttemptError> {
        let secret = match (&backend.api_key_env, backend.kind, backend.zone) {
            (Some(var), _, _) => std::env::var(var).map_err(|_| {
                tracing::error!(backend = %backend.name, env = %var, "upstream key variable is not set");
                AttemptError::NoKey
            })?,
            (None, BackendKind::Edge, Zone::OnPrem) => match &self.worker_token {
                Some(token) => token.expose_secret().to_owned(),
                None => return Ok(None),
            },
            (None, _, _) => return Ok(None),
        };
        let mut value =
            HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| AttemptError::NoKey)?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// Sends a chat completion body and waits for the response headers, at
    /// most `first_byte`. A non-2xx answer is returned as an error with its
    /// (bounded) body.
    ///
    /// An on-prem backend gets the attempt's trace context (`traceparent`)
    /// so its spans join the request's trace; a cloud backend gets none:
    /// every trace context and baggage header is removed from the headers
    /// sent (neither client adds one of its own).
    pub async fn send_chat(
        &self,
        backend: &Backend,
        body: Vec<u8>,
        request_id: &str,
        first_byte: Duration,
        trace: &Span,
    ) -> Result<UpstreamResponse, AttemptError> {
        let url = format!("{}/chat/completions", api_base(&backend.base_url));
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let request_id = HeaderValue::from_str(request_id).map_err(|_| AttemptError::Connect)?;
        headers.insert("x-request-id", request_id);
        if let Some(credential) = self.credential(backend)? {
            headers.insert(AUTHORIZATION, credential);
        }
        match backend.zone {
            Zone::OnPrem => otel::inject(trace, &mut headers),
            Zone::Cloud => otel::strip(&mut headers),
        }
        let response = if self.direct(backend) {
            self.send_direct(url, headers, body, first_byte).await?
        } else {
            self.send_reqwest(backend, url, headers, body, first_byte)
                .await?
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let retry_after_s = retry_after(response.headers());
        let body = self.bounded_body(response).await;
        if status == 429 {
            return Err(AttemptError::Busy { retry_after_s });
        }
        if status == 400 && error_code(&body).as_deref() == Some("context_length_exceeded") {
            return Err(AttemptError::ContextLength);
        }
        Err(AttemptError::Status { status, body })
    }

    /// [`Upstreams::send_chat`] through the direct client.
    async fn send_direct(
        &self,
        url: String,
        headers: HeaderMap,
        body: Vec<u8>,
        first_byte: Duration,
    ) -> Result<UpstreamResponse, AttemptError> {
        let deadline = tokio::time::Instant::now() + self.timeouts.total;
        let mut req = http::Request::post(url)
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| AttemptError::Connect)?;
        *req.headers_mut() = headers;
        let response = tokio::time::timeout(first_byte, self.direct.request(req))
            .await
            .map_err(|_| AttemptError::Timeout)?
            .map_err(|_| AttemptError::Connect)?;
        let (parts, body) = response.into_parts();
        let body = BodyDataStream::new(body).map(|r| r.map_err(BoxError::from));
        Ok(UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body: Box::pin(Deadline {
                body,
                at: Box::pin(tokio::time::sleep_until(deadline)),
                over: false,
            }),
        })
    }

    /// [`Upstreams::send_chat`] through reqwest.
    async fn send_reqwest(
        &self,
        backend: &Backend,
        url: String,
        headers: HeaderMap,
        body: Vec<u8>,
        first_byte: Duration,
    ) -> Result<UpstreamResponse, AttemptError> {
        let send = self
            .client(backend)
            .post(url)
            .timeout(self.timeouts.total)
            .headers(headers)
            .body(body)
            .send();
        let mut response = tokio::time::timeout(first_byte, send)
            .await
            .map_err(|_| AttemptError::Timeout)?
            .map_err(|e| {
                if e.is_timeout() {
                    AttemptError::Timeout
                } else {
                    AttemptError::Connect
                }
            })?;
        Ok(UpstreamResponse {
            status: response.status(),
            headers: std::mem::take(response.headers_mut()),
            body: Box::pin(response.bytes_stream().map(|r| r.map_err(BoxError::from))),
        })
    }

    /// Reads at most `max_error_bytes` of an error body, waiting at most
    /// the idle timeout for each chunk; the rest is dropped unread.
    async fn bounded_body(&self, mut response: UpstreamResponse) -> Bytes {
        let mut buf = Vec::new();
        while buf.len() < self.max_error_bytes {
            match tokio::time::timeout(self.timeouts.idle, response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    let room = self.max_error_bytes - buf.len();
                    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                _ => break,
            }
        }
        Bytes::from(buf)
    }

    /// One edge worker's load report, or `None` when it cannot be had
    /// within `timeout`.
    pub async fn load_report(&self, backend: &Backend, timeout: Duration) -> Option<WorkerLoad> {
        let url = format!("{}/worker/load", api_base(&backend.base_url));
        let mut req = self.client(backend).get(url);
        if let Ok(Some(credential)) = self.credential(backend) {
            req = req.header(AUTHORIZATION, credential);
        }
        let fetched = async {
            let response = req.send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            response.json::<WorkerLoad>().await.ok()
        };
        tokio::time::timeout(timeout, fetched).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_token_goes_only_to_edge_workers_on_the_premises() {
        let config = Config {
            worker_token: Some(SecretString::from("fleet-token".to_owned())),
            ..Config::default()
        };
        let upstreams = Upstreams::new(&config).unwrap();
        let sent = |kind, zone| {
            let mut b = crate::routing::tests::backend("w", kind);
            b.zone = zone;
            upstreams
                .credential(&b)
                .unwrap()
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            sent(BackendKind::Edge, Zone::OnPrem).as_deref(),
            Some("Bearer fleet-token")
        );
        assert_eq!(sent(BackendKind::Edge, Zone::Cloud), None);
        assert_eq!(sent(BackendKind::Cloud, Zone::Cloud), None);
    }

    #[test]
    fn api_base_adds_v1_only_without_a_path() {
        let cases = [
            ("http://127.0.0.1:8081", "http://127.0.0.1:8081/v1"),
            ("http://127.0.0.1:8081/", "http://127.0.0.1:8081/v1"),
            ("http://127.0.0.1:9000/v1", "http://127.0.0.1:9000/v1"),
            (
                "https://api.example.com/openai/v1/",
                "https://api.example.com/openai/v1",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(api_base(input), want);
        }
    }

    #[test]
    fn retry_and_health_rules() {
        let status = |s| AttemptError::Status {
            status: s,
            body: Bytes::new(),
        };
        for retryable in [
            AttemptError::Connect,
            AttemptError::Timeout,
            AttemptError::Failed,
            AttemptError::ContextLength,
            status(503),
            status(429),
            AttemptError::Busy {
                retry_after_s: Some(2),
            },
            status(401),
            status(403),
            status(404),
        ] {
            assert!(retryable.retryable(), "{retryable:?}");
        }
        for final_ in [status(400), status(413), status(422)] {
            assert!(!final_.retryable(), "{final_:?}");
        }
        // A 400 about our own key or account is not the request's fault.
        for code in [
            "invalid_api_key",
            "insufficient_quota",
            "account_deactivated",
        ] {
            let ours = AttemptError::Status {
                status: 400,
                body: Bytes::from(format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#)),
            };
            assert!(ours.retryable(), "{code}");
        }
        assert!(status(502).backend_down());
        assert!(AttemptError::Timeout.backend_down());
        assert!(!status(401).backend_down());
        assert!(!AttemptError::ContextLength.backend_down());
        assert!(!AttemptError::Busy {
            retry_after_s: None
        }
        .backend_down());
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let of = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&h)
        };
        assert_eq!(of("7"), Some(7));
        assert_eq!(of(" 1.2 "), Some(2));
        assert_eq!(of("0"), Some(0));
        assert_eq!(of("-3"), None);
        assert_eq!(of("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn error_codes_are_read_from_openai_bodies_only() {
        assert_eq!(
            error_code(br#"{"error":{"code":"context_length_exceeded","message":"m"}}"#).as_deref(),
            Some("context_length_exceeded")
        );
        assert_eq!(error_code(b"not json"), None);
        assert_eq!(error_code(br#"{"error":"flat"}"#), None);
    }
}
