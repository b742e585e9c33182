//! The HTTP client for upstreams: one pooled `reqwest` client for every
//! backend, with the timeouts of the config, and the rules for what an
//! attempt's failure means.
//!
//! Upstream URLs come only from the store's backend rows, never from the
//! client. A cloud backend's key is read from the environment variable its
//! row names, at send time, and goes only into the `Authorization` header;
//! it is never logged. The client's own `Authorization` header (a gateway
//! key) is never forwarded.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};

use crate::config::Config;
use crate::routing::Backend;

/// Timeouts applied by the proxy around the client's own.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To response headers (and, for streams, the first event).
    pub first_byte: Duration,
    /// Between two body chunks.
    pub idle: Duration,
    /// Send to last byte.
    pub total: Duration,
}

/// The shared client. Cheap to clone (reqwest's client is an `Arc`).
#[derive(Clone)]
pub struct Upstreams {
    client: reqwest::Client,
    pub timeouts: Timeouts,
    pub max_body_bytes: usize,
}

/// How one attempt failed before anything reached the client.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("connect failed")]
    Connect,
    #[error("timed out")]
    Timeout,
    /// The upstream answered with this status; `body` is its (bounded)
    /// error body, passed on to the client when no failover applies.
    #[error("upstream status {status}")]
    Status { status: u16, body: Bytes },
    #[error("upstream body unreadable")]
    Body,
    /// The upstream key's environment variable is not set.
    #[error("upstream key not configured")]
    NoKey,
}

impl AttemptError {
    /// Whether the next candidate may be tried: connection failures,
    /// timeouts, 5xx and 429 are the upstream's problem; another 4xx is the
    /// request's and would fail everywhere.
    #[must_use]
    pub fn retryable(&self) -> bool {
        match self {
            AttemptError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => true,
        }
    }

    /// Whether it says the backend is down (feeds passive health).
    #[must_use]
    pub fn backend_down(&self) -> bool {
        matches!(self, AttemptError::Connect | AttemptError::Timeout)
    }

    /// Low-cardinality label for metrics.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            AttemptError::Connect => "connect",
            AttemptError::Timeout => "timeout",
            AttemptError::Status { status, .. } if *status >= 500 => "5xx",
            AttemptError::Status { status: 429, .. } => "429",
            AttemptError::Status { .. } => "4xx",
            AttemptError::Body => "body",
            AttemptError::NoKey => "no_key",
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

impl Upstreams {
    pub fn new(config: &Config) -> Result<Upstreams, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Config::ms(config.upstream_connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        Ok(Upstreams {
            client,
            timeouts: Timeouts {
                first_byte: Config::ms(config.upstream_first_byte_timeout_ms),
                idle: Config::ms(config.upstream_idle_timeout_ms),
                total: Config::ms(config.upstream_total_timeout_ms),
            },
            max_body_bytes: config.max_upstream_body_bytes,
        })
    }

    #[must_use]
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends a chat completion body and waits for the response headers.
    /// A non-2xx answer is returned as [`AttemptError::Status`].
    pub async fn send_chat(
        &self,
        backend: &Backend,
        body: Vec<u8>,
        request_id: &str,
    ) -> Result<reqwest::Response, AttemptError> {
        let url = format!("{}/chat/completions", api_base(&backend.base_url));
        let mut req = self
            .client
            .post(url)
            .timeout(self.timeouts.total)
            .header(CONTENT_TYPE, "application/json")
            .header("x-request-id", request_id)
            .body(body);
        if let Some(var) = &backend.api_key_env {
            let key = std::env::var(var).map_err(|_| {
                tracing::error!(backend = %backend.name, env = %var, "upstream key variable is not set");
                AttemptError::NoKey
            })?;
            let mut value =
                HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| AttemptError::NoKey)?;
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
        }
        let response = tokio::time::timeout(self.timeouts.first_byte, req.send())
            .await
            .map_err(|_| AttemptError::Timeout)?
            .map_err(|e| {
                if e.is_timeout() {
                    AttemptError::Timeout
                } else {
                    AttemptError::Connect
                }
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = tokio::time::timeout(self.timeouts.first_byte, response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Err(AttemptError::Status { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn only_upstream_side_failures_are_retryable() {
        let status = |s| AttemptError::Status {
            status: s,
            body: Bytes::new(),
        };
        assert!(AttemptError::Connect.retryable());
        assert!(status(503).retryable());
        assert!(status(429).retryable());
        assert!(!status(400).retryable());
        assert!(!status(404).retryable());
    }
}
