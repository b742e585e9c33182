//! Errors the mock returns, always in `OpenAI`'s shape
//! (`{"error":{"message","type","param","code"}}`), so that clients under test
//! (the gateway, the `OpenAI` SDK) meet the same bodies a real cloud sends.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use wire::error::{ErrorBody, ErrorObject};

/// A refused chat or models request.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// 401 `invalid_api_key`: the bearer key was missing or wrong.
    #[error("Incorrect API key provided.")]
    InvalidApiKey,
    /// 400: the body or the scenario header could not be read.
    #[error("{message}")]
    BadRequest {
        /// What was wrong, for the client.
        message: String,
        /// The offending parameter, when one can be named.
        param: Option<&'static str>,
    },
    /// 404 `model_not_found`: the model is not in the accepted set.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// An injected failure with the configured status (and, for a 429, the
    /// `Retry-After` it is sent with).
    #[error("{}", injected_message(*.0))]
    Injected(StatusCode, u32),
    /// 500: the mock could not encode its own answer.
    #[error("The mock cloud could not encode its answer: {0}")]
    Internal(String),
    /// 503: the mock is shutting down while the request waited.
    #[error("The mock cloud is shutting down.")]
    ShuttingDown,
}

impl MockError {
    /// The HTTP status this error is sent with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Self::Injected(status, _) => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::InvalidApiKey => ("invalid_request_error", Some("invalid_api_key")),
            Self::BadRequest { .. } => ("invalid_request_error", None),
            Self::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            Self::Injected(status, _) => injected_kind(*status),
            Self::Internal(_) => ("server_error", None),
            Self::ShuttingDown => ("server_error", Some("service_unavailable")),
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Self::BadRequest { param, .. } => *param,
            _ => None,
        }
    }
}

/// Type and code of an injected failure, chosen to match what `OpenAI` sends
/// for the same status.
fn injected_kind(status: StatusCode) -> (&'static str, Option<&'static str>) {
    match status.as_u16() {
        429 => ("requests", Some("rate_limit_exceeded")),
        503 => ("server_error", Some("service_unavailable")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    }
}

fn injected_message(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "Rate limit reached for requests (injected by the mock cloud).",
        503 => "The server is overloaded (injected by the mock cloud).",
        500..=599 => {
            "The server had an error while processing your request (injected by the mock cloud)."
        }
        _ => "The request was refused (injected by the mock cloud).",
    }
}

impl IntoResponse for MockError {
    fn into_response(self) -> Response {
        let (kind, code) = self.kind();
        let body = ErrorBody {
            error: ErrorObject {
                message: self.to_string(),
                kind: kind.to_owned(),
                param: self.param().map(str::to_owned),
                code: code.map(str::to_owned),
            },
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Self::Injected(StatusCode::TOO_MANY_REQUESTS, after) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(after));
        }
        response
    }
}
