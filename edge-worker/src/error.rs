//! The HTTP boundary's one error type. Every failure a client can see is an
//! [`ApiError`] rendered in OpenAI's shape,
//! `{"error":{"message","type","param","code"}}` (the shared
//! [`wire::ErrorBody`]), so the official SDKs raise their typed exceptions;
//! a stream that fails after its headers carries the same body as its last
//! event. Internal details (paths, engine messages) are logged, never sent.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use wire::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not valid JSON (axum's message says so).
    #[error("{0}")]
    InvalidJson(String),
    /// 400: valid JSON of the wrong shape (a missing field, a wrong type).
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// 400: a parameter with a value the worker does not accept.
    #[error("{message}")]
    InvalidParam {
        param: String,
        code: &'static str,
        message: String,
    },
    /// 401: a `/v1/*` request without the worker's token, or with another.
    #[error("this worker requires `Authorization: Bearer <worker token>`; the request had none or a wrong one")]
    InvalidWorkerToken,
    /// 400: prompt plus requested output do not fit the model's context.
    #[error("{0}")]
    ContextLength(String),
    /// 404: the request names a model this worker does not serve.
    #[error("the model `{0}` does not exist on this worker")]
    ModelNotFound(String),
    /// 404: no such route.
    #[error("unknown route {0}")]
    NotFound(String),
    /// 405: the route exists with another method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 408: the body did not arrive within the time allowed.
    #[error("the request body was not received in time")]
    BodyTimeout,
    /// 413: the body is larger than the configured limit.
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    /// 415: the body was not sent as `application/json`.
    #[error("expected a request with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// 429: every running slot and queue place is taken.
    #[error("the worker is at capacity; retry after {0} s")]
    Busy(u64),
    /// 503: the model is still loading.
    #[error("the model is still loading")]
    NotReady,
    /// 503: the worker is shutting down and takes no new work.
    #[error("the worker is draining and accepts no new requests")]
    Draining,
    /// 504: the request ran past its time limit.
    #[error("the request exceeded its time limit")]
    Timeout,
    /// 500: the engine failed; details are in the worker's log only.
    #[error("internal error while generating")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_)
            | Self::InvalidBody(_)
            | Self::InvalidParam { .. }
            | Self::ContextLength(_) => StatusCode::BAD_REQUEST,
            Self::InvalidWorkerToken => StatusCode::UNAUTHORIZED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ModelNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NotReady | Self::Draining => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidBody(_) => "invalid_request_body",
            Self::InvalidParam { code, .. } => code,
            Self::ContextLength(_) => "context_length_exceeded",
            Self::InvalidWorkerToken => "invalid_worker_token",
            Self::ModelNotFound(_) => "model_not_found",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BodyTimeout => "request_timeout",
            Self::TooLarge(_) => "request_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Busy(_) => "worker_busy",
            Self::NotReady => "model_loading",
            Self::Draining => "worker_draining",
            Self::Timeout => "timeout",
            Self::Internal => "internal_error",
        }
    }

    /// OpenAI's `error.type`: what the SDKs and the gateway key on.
    fn kind(&self) -> &'static str {
        let status = self.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limit_error"
        } else if status == StatusCode::UNAUTHORIZED {
            "authentication_error"
        } else if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidParam { param, .. } => Some(param),
            Self::ModelNotFound(_) => Some("model"),
            Self::ContextLength(_) => Some("messages"),
            _ => None,
        }
    }

    /// The error in OpenAI's shape, as the JSON body of a response or as the
    /// last event of a stream whose headers already went out.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(&self.to_string(), self.kind(), self.param(), self.code())
    }

    pub fn invalid(
        param: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::InvalidParam {
            param: param.into(),
            code,
            message: message.into(),
        }
    }

    /// Maps axum's JSON extractor rejection onto our error codes. A body
    /// over the limit surfaces here as a buffering failure with status 413.
    pub fn from_json_rejection(rejection: &JsonRejection, body_limit: usize) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => Self::InvalidJson(e.body_text()),
            JsonRejection::JsonDataError(e) => Self::InvalidBody(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::TooLarge(body_limit),
            other => Self::InvalidBody(other.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body().to_json(),
        )
            .into_response();
        match self {
            Self::Busy(secs) => {
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            // Loading ends by itself; a draining worker does not come back,
            // so its 503 carries no hint to retry here.
            Self::NotReady => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::InvalidWorkerToken => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_openai_whether_sent_as_json_or_in_a_stream() {
        for (error, kind, code) in [
            (ApiError::Internal, "server_error", "internal_error"),
            (ApiError::Timeout, "server_error", "timeout"),
            (ApiError::NotReady, "server_error", "model_loading"),
            (ApiError::Busy(1), "rate_limit_error", "worker_busy"),
            (
                ApiError::InvalidWorkerToken,
                "authentication_error",
                "invalid_worker_token",
            ),
            (
                ApiError::BodyTimeout,
                "invalid_request_error",
                "request_timeout",
            ),
            (
                ApiError::ModelNotFound("x".into()),
                "invalid_request_error",
                "model_not_found",
            ),
        ] {
            let body = error.body();
            assert_eq!(body.error.kind, kind, "{error:?}");
            assert_eq!(body.error.code.as_deref(), Some(code));
            assert_eq!(body.error.message, error.to_string());
        }
    }

    #[test]
    fn a_refused_token_asks_for_bearer_auth() {
        let response = ApiError::InvalidWorkerToken.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
