//! `POST /fleet/workers`: an edge worker's heartbeat, by which it registers
//! itself (see `fleet::registry`).
//!
//! This is the one route through which a caller names a place the gateway
//! will connect to, so it is closed unless the gateway has a worker token,
//! and open only to callers presenting that token (compared by SHA-256
//! digest in constant time; wrong ones count as guesses of the caller's
//! address, `auth::Guesses`). API keys mean nothing here and the chat API
//! never calls it. The body is read only after the token matched, bounded
//! in size and time, and checked like an admin's `backend add`: on-prem
//! only, a loopback, private or LAN host, no credentials or path in the URL.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use wire::{ErrorBody, Heartbeat, HeartbeatAck};

use super::body::BodyError;
use crate::auth::Peer;
use crate::fleet::registry::{listing, Refused};
use crate::state::AppState;

/// Largest heartbeat body read; a load report is well under 2 KiB.
const MAX_BODY: usize = 16 << 10;

/// Why a heartbeat is not taken, each with its status.
#[derive(Debug, thiserror::Error)]
enum FleetError {
    /// 404: the gateway has no worker token, so registration is off.
    #[error("Unknown endpoint.")]
    Disabled,
    /// 401 `invalid_worker_token`.
    #[error("A valid worker token is required.")]
    Token,
    /// 429 `rate_limit_exceeded`: this address presented too many unknown
    /// credentials ([`crate::auth::Guesses`]); the seconds left.
    #[error("Too many unknown credentials from this address; retry after {0}s.")]
    Guessing(u64),
    /// 413, 408 or 400: the body could not be read.
    #[error(transparent)]
    Read(BodyError),
    /// 400 `invalid_heartbeat`: not a heartbeat.
    #[error("The body is not a worker heartbeat.")]
    Body,
    /// 403 `registration_refused`: a URL or model the fleet will not list.
    #[error("Registration refused: {0}.")]
    Refused(Refused),
    /// 503 `service_unavailable`: the shared registry cannot be written.
    #[error("The worker registry is unavailable; retry shortly.")]
    Unavailable,
}

impl IntoResponse for FleetError {
    fn into_response(self) -> Response {
        let (status, kind, code) = match &self {
            FleetError::Read(e) => (
                e.status(),
                "invalid_request_error",
                e.code().unwrap_or("invalid_heartbeat"),
            ),
            FleetError::Disabled => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
            ),
            FleetError::Token => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_worker_token",
            ),
            FleetError::Guessing(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
            ),
            FleetError::Body => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_heartbeat",
            ),
            FleetError::Refused(_) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "registration_refused",
            ),
            FleetError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "service_unavailable",
            ),
        };
        let outcome = code;
        metrics::counter!("gateway_worker_heartbeats_total", "outcome" => outcome).increment(1);
        let body = ErrorBody::new(&self.to_string(), kind, None, code);
        let mut response = (status, Json(body)).into_response();
        if let FleetError::Guessing(secs) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Registers or refreshes the calling worker.
pub async fn heartbeat(
    State(app): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match accept(&app, peer.map(|p| p.0), &headers, body).await {
        Ok(ack) => {
            metrics::counter!("gateway_worker_heartbeats_total", "outcome" => "ok").increment(1);
            Json(ack).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn accept(
    app: &AppState,
    peer: Option<Peer>,
    headers: &HeaderMap,
    body: Body,
) -> Result<HeartbeatAck, FleetError> {
    let token = app
        .config
        .worker_token
        .as_ref()
        .ok_or(FleetError::Disabled)?;
    let presented = crate::auth::bearer(headers).ok_or(FleetError::Token)?;
    // A token an operator chose may be short: guessing it is counted with
    // the keys' and tokens' guesses of the same address.
    let guesses = &app.keys.guesses;
    guesses
        .check(peer)
        .map_err(|wait| FleetError::Guessing(crate::limits::ceil_secs(wait)))?;
    if !same_secret(presented, token.expose_secret()) {
        tracing::debug!("heartbeat refused: no valid worker token");
        guesses.missed(peer);
        return Err(FleetError::Token);
    }
    let bytes = super::body::read(body, MAX_BODY, app.config.body_read_timeout())
        .await
        .map_err(FleetError::Read)?;
    let beat: Heartbeat = serde_json::from_slice(&bytes).map_err(|_| FleetError::Body)?;
    let registered = listing(&beat).map_err(|e| {
        tracing::warn!(problem = %e, "worker registration refused");
        FleetError::Refused(e)
    })?;
    let backend = registered.backend.name.clone();
    app.registry.beat(registered).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot record a worker heartbeat");
        FleetError::Unavailable
    })?;
    Ok(HeartbeatAck {
        backend,
        ttl_ms: u64::try_from(app.registry.ttl().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Compares two secrets by their SHA-256 digests, every byte whatever the
/// earlier ones were, so the time taken says nothing about the token.
fn same_secret(presented: &str, expected: &str) -> bool {
    let a: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
    a.iter().zip(&b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_themselves() {
        assert!(same_secret("tok-123", "tok-123"));
        for wrong in ["", "tok-12", "tok-1234", "TOK-123", " tok-123"] {
            assert!(!same_secret(wrong, "tok-123"), "{wrong:?}");
        }
    }
}
