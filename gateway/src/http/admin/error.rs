//! The admin API's errors, in OpenAI's shape like every other answer.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use wire::ErrorBody;

use crate::admin_cli::AdminError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AdminApiError {
    /// 401 `invalid_admin_token`: no admin token, an unknown or revoked
    /// one, or a tenant key. The message never says which.
    #[error("An admin token is required.")]
    Unauthorized,
    /// 400 `invalid_request_body` (or `invalid_query`): the input is
    /// malformed or refused by the same checks as the CLI's.
    #[error("{message}")]
    BadRequest { message: String, code: &'static str },
    /// 404 `not_found`: the named tenant, key, backend, alias, rule or row.
    #[error("{0}")]
    NotFound(String),
    /// 409 `conflict`: the name is taken.
    #[error("{0}")]
    Conflict(String),
    /// 429 `rate_limit_exceeded` with `Retry-After`: this address
    /// presented too many unknown credentials (`auth_guesses_per_minute`).
    #[error("Too many unknown admin tokens from this address; retry after {0}s.")]
    Guessing(u64),
    /// 408 `request_timeout`: the body did not arrive in time.
    #[error("The request body was not received in time.")]
    BodyTimeout,
    /// 413 `request_too_large`.
    #[error("Request body is larger than {0} bytes.")]
    TooLarge(usize),
    /// 503 `service_unavailable`: the store cannot be reached.
    #[error("The gateway's database is unavailable; retry shortly.")]
    Unavailable,
    /// 500 `internal_error` (logged where it happened).
    #[error("Internal error.")]
    Internal,
}

impl From<crate::http::body::BodyError> for AdminApiError {
    fn from(e: crate::http::body::BodyError) -> AdminApiError {
        use crate::http::body::BodyError;
        match e {
            BodyError::TooLarge(limit) => AdminApiError::TooLarge(limit),
            BodyError::Timeout => AdminApiError::BodyTimeout,
            BodyError::Unreadable => AdminApiError::bad_body(e.to_string()),
        }
    }
}

impl AdminApiError {
    pub fn bad_body(message: impl Into<String>) -> AdminApiError {
        AdminApiError::BadRequest {
            message: message.into(),
            code: "invalid_request_body",
        }
    }

    pub fn bad_query(message: impl Into<String>) -> AdminApiError {
        AdminApiError::BadRequest {
            message: message.into(),
            code: "invalid_query",
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            AdminApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_admin_token",
            ),
            AdminApiError::BadRequest { code, .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", code)
            }
            AdminApiError::NotFound(_) => {
                (StatusCode::NOT_FOUND, "invalid_request_error", "not_found")
            }
            AdminApiError::Conflict(_) => {
                (StatusCode::CONFLICT, "invalid_request_error", "conflict")
            }
            AdminApiError::Guessing(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
            ),
            AdminApiError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
            ),
            AdminApiError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
            ),
            AdminApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "service_unavailable",
            ),
            AdminApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
            ),
        }
    }

    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

impl IntoResponse for AdminApiError {
    fn into_response(self) -> Response {
        let (status, kind, code) = self.parts();
        let body = ErrorBody::new(&self.to_string(), kind, None, code);
        let mut response = (status, Json(body)).into_response();
        match self {
            AdminApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AdminApiError::Guessing(secs) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for AdminApiError {
    fn from(e: StoreError) -> AdminApiError {
        match e {
            StoreError::Invalid(_) => AdminApiError::bad_body(e.to_string()),
            StoreError::NotFound(_) => AdminApiError::NotFound(e.to_string()),
            StoreError::Conflict(_) => AdminApiError::Conflict(e.to_string()),
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "admin API: store unavailable");
                AdminApiError::Unavailable
            }
            _ => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "admin API: store error");
                AdminApiError::Internal
            }
        }
    }
}

impl From<AdminError> for AdminApiError {
    fn from(e: AdminError) -> AdminApiError {
        match e {
            AdminError::Store(s) => s.into(),
            AdminError::UnknownTenant(_) => AdminApiError::NotFound(e.to_string()),
            AdminError::Usage(_) | AdminError::Zone(_) | AdminError::Rule(_) => {
                AdminApiError::bad_body(e.to_string())
            }
            AdminError::Io(_) => AdminApiError::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        for (error, status, code) in [
            (AdminApiError::Unauthorized, 401, "invalid_admin_token"),
            (AdminApiError::bad_body("x"), 400, "invalid_request_body"),
            (AdminApiError::BodyTimeout, 408, "request_timeout"),
            (AdminApiError::TooLarge(1), 413, "request_too_large"),
            (AdminApiError::Unavailable, 503, "service_unavailable"),
        ] {
            let (got_status, _, got_code) = error.parts();
            assert_eq!((got_status.as_u16(), got_code), (status, code), "{error:?}");
        }
    }
}
