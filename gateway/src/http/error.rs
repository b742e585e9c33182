//! The one error type of the HTTP boundary, rendered in OpenAI's shape
//! `{"error":{"message","type","param","code"}}`.
//!
//! Every variant's message is written for the client and never includes
//! store, driver or upstream-internal text; those go to the log through
//! `tracing` where the error is raised.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use wire::ErrorBody;

use crate::limits::LimitExceeded;
use crate::routing::{NoRoute, NoRouteCode};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401 `invalid_api_key`: no bearer key, or one that is unknown, revoked
    /// or expired. The message never says which.
    #[error("Incorrect API key provided.")]
    InvalidKey,
    /// 403 `permission_denied`: the key lacks the scope for this endpoint.
    #[error("This API key is not allowed to use {0}.")]
    Forbidden(&'static str),
    /// 400 with a specific code: the body or a header is malformed.
    #[error("{message}")]
    BadRequest {
        message: String,
        code: &'static str,
        param: Option<&'static str>,
    },
    /// 413 `request_too_large`: the body is over `max_body_bytes`.
    #[error("Request body is larger than {0} bytes.")]
    TooLarge(usize),
    /// 408 `request_timeout`: the body did not arrive within
    /// `body_read_timeout_ms`.
    #[error("The request body was not received in time.")]
    BodyTimeout,
    /// 429 (`rate_limit_exceeded` with `Retry-After`, or
    /// `insufficient_quota`).
    #[error("{0}")]
    Limited(LimitExceeded),
    /// 404, 400 or 503 by routing code.
    #[error("{}", no_route_message(.0.code))]
    NoRoute(NoRoute),
    /// 502 `upstream_error`: every candidate failed before answering.
    #[error("All upstream backends failed to answer.")]
    Upstream,
    /// 503 `upstream_busy` with `Retry-After`: the last candidate tried was
    /// rate-limited or at capacity (its own 429, whose `Retry-After` in
    /// seconds is passed on, at most [`MAX_UPSTREAM_RETRY_AFTER_S`]).
    #[error("Every backend that may serve this request is busy; retry after the time Retry-After gives.")]
    UpstreamBusy(Option<u32>),
    /// 503 `service_unavailable`: the store cannot be reached, or the ledger
    /// writes are a full queue behind.
    #[error("The gateway's database is unavailable; retry shortly.")]
    Unavailable,
    /// 503 `service_unavailable`: `max_in_flight` requests are already
    /// being handled.
    #[error("The gateway is at capacity; retry shortly.")]
    Overloaded,
    /// 503 `server_shutting_down`: the request was still waiting for its
    /// answer when the server's shutdown grace ran out; retrying it (on
    /// another gateway) is safe.
    #[error("The gateway is shutting down; retry the request.")]
    ShuttingDown,
    /// 500 `internal_error`: a bug or an unexpected store failure.
    #[error("Internal error.")]
    Internal,
}

/// The longest wait an upstream's `Retry-After` is passed on as: a client
/// told to wait longer would rather try again, another backend may be free.
pub const MAX_UPSTREAM_RETRY_AFTER_S: u32 = 60;

fn no_route_message(code: NoRouteCode) -> &'static str {
    match code {
        NoRouteCode::ModelNotFound => "The model does not exist or this key cannot use it.",
        NoRouteCode::PrivacyRouteUnavailable => {
            "The request is confidential and no on-premises backend can serve it now."
        }
        NoRouteCode::ContextLengthExceeded => {
            "The prompt plus max_tokens exceed every backend's context length."
        }
        NoRouteCode::NoBackendAvailable => "No backend can serve this model right now.",
        NoRouteCode::UnsupportedCapability => {
            "No backend this request may use supports what it asks for (tools, response_format, or n above 1)."
        }
    }
}

impl From<super::body::BodyError> for ApiError {
    fn from(e: super::body::BodyError) -> ApiError {
        use super::body::BodyError;
        match e {
            BodyError::TooLarge(limit) => ApiError::TooLarge(limit),
            BodyError::Timeout => ApiError::BodyTimeout,
            BodyError::Unreadable => {
                ApiError::bad_request(e.to_string(), "invalid_request_body", None)
            }
        }
    }
}

impl ApiError {
    /// A 400 with `code` and optional `param`.
    pub fn bad_request(
        message: impl Into<String>,
        code: &'static str,
        param: Option<&'static str>,
    ) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            code,
            param,
        }
    }

    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidKey => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoRoute(r) => match r.code {
                NoRouteCode::ModelNotFound => StatusCode::NOT_FOUND,
                NoRouteCode::ContextLengthExceeded | NoRouteCode::UnsupportedCapability => {
                    StatusCode::BAD_REQUEST
                }
                NoRouteCode::PrivacyRouteUnavailable | NoRouteCode::NoBackendAvailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
            ApiError::Upstream => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamBusy(_)
            | ApiError::Unavailable
            | ApiError::Overloaded
            | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `code`; also the low-cardinality metric label.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidKey => "invalid_api_key",
            ApiError::Forbidden(_) => "permission_denied",
            ApiError::BadRequest { code, .. } => code,
            ApiError::TooLarge(_) => "request_too_large",
            ApiError::BodyTimeout => "request_timeout",
            ApiError::Limited(l) => l.code(),
            ApiError::NoRoute(r) => r.code.as_str(),
            ApiError::Upstream => "upstream_error",
            ApiError::UpstreamBusy(_) => "upstream_busy",
            ApiError::Unavailable | ApiError::Overloaded => "service_unavailable",
            ApiError::ShuttingDown => "server_shutting_down",
            ApiError::Internal => "internal_error",
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidKey => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::BadRequest { .. } | ApiError::TooLarge(_) | ApiError::BodyTimeout => {
                "invalid_request_error"
            }
            ApiError::NoRoute(r) => match r.code {
                NoRouteCode::ModelNotFound
                | NoRouteCode::ContextLengthExceeded
                | NoRouteCode::UnsupportedCapability => "invalid_request_error",
                _ => "service_unavailable",
            },
            ApiError::Limited(l) if l.code() == "insufficient_quota" => "insufficient_quota",
            ApiError::Limited(_) => "rate_limit_error",
            ApiError::Upstream => "upstream_error",
            ApiError::UpstreamBusy(_)
            | ApiError::Unavailable
            | ApiError::Overloaded
            | ApiError::ShuttingDown
            | ApiError::Internal => "server_error",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::BadRequest { param, .. } => *param,
            ApiError::NoRoute(r) if r.code == NoRouteCode::ModelNotFound => Some("model"),
            ApiError::NoRoute(r) if r.code == NoRouteCode::ContextLengthExceeded => {
                Some("messages")
            }
            _ => None,
        }
    }

    /// The error object, also used as an SSE error event's payload.
    #[must_use]
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(&self.to_string(), self.kind(), self.param(), self.code())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        if let ApiError::Limited(l) = &self {
            let h = response.headers_mut();
            match l.retry_after_s() {
                Some(secs) => {
                    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                // Waiting cannot help a spent budget or a request larger
                // than the whole tokens/min limit: the OpenAI SDKs read this
                // header and do not retry, instead of trying twice more.
                None => {
                    h.insert("x-should-retry", HeaderValue::from_static("false"));
                }
            }
        }
        if let ApiError::UpstreamBusy(after) = self {
            let secs = after.unwrap_or(1).clamp(1, MAX_UPSTREAM_RETRY_AFTER_S);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::InvalidKey) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> ApiError {
        use crate::auth::AuthError;
        match e {
            AuthError::InvalidKey => ApiError::InvalidKey,
            AuthError::MissingScope(scope) => ApiError::Forbidden(scope),
            AuthError::StoreUnavailable => ApiError::Unavailable,
            AuthError::StoreFailed => ApiError::Internal,
            AuthError::Guessing { wait } => ApiError::Limited(LimitExceeded::Guesses { wait }),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        tracing::error!(error = %e, source = ?std::error::Error::source(&e), "store error");
        match e {
            crate::store::StoreError::Unavailable(_) => ApiError::Unavailable,
            _ => ApiError::Internal,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let no_route = |code| {
            ApiError::NoRoute(NoRoute {
                code,
                excluded: vec![],
            })
        };
        let cases = [
            (ApiError::InvalidKey, 401, "invalid_api_key"),
            (ApiError::TooLarge(10), 413, "request_too_large"),
            (
                ApiError::Limited(LimitExceeded::Budget),
                429,
                "insufficient_quota",
            ),
            (no_route(NoRouteCode::ModelNotFound), 404, "model_not_found"),
            (
                no_route(NoRouteCode::PrivacyRouteUnavailable),
                503,
                "privacy_route_unavailable",
            ),
            (ApiError::Upstream, 502, "upstream_error"),
            (ApiError::UpstreamBusy(Some(3)), 503, "upstream_busy"),
            (ApiError::BodyTimeout, 408, "request_timeout"),
            (ApiError::Overloaded, 503, "service_unavailable"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status);
            assert_eq!(err.code(), code);
            assert_eq!(err.body().error.code.as_deref(), Some(code));
        }
        let limited = ApiError::Limited(LimitExceeded::Requests {
            wait: std::time::Duration::from_millis(6_200),
        })
        .into_response();
        assert_eq!(limited.headers()[header::RETRY_AFTER], "7");
        // An upstream's wait is passed on, within 1 s to a minute.
        for (given, sent) in [
            (Some(3), "3"),
            (None, "1"),
            (Some(0), "1"),
            (Some(86_400), "60"),
        ] {
            let busy = ApiError::UpstreamBusy(given).into_response();
            assert_eq!(busy.headers()[header::RETRY_AFTER], sent, "{given:?}");
        }
    }
}
