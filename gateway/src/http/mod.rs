//! The HTTP surface: the router, its middleware, and one module per
//! endpoint group (the chat feature is the `chat` folder). Only this module
//! (and the accept loop in `server`) knows axum.
//!
//! Middleware, outermost first: a panic catcher that still answers in
//! OpenAI's shape, request ids (`x-request-id` kept when the client sends
//! a short, plain one, a UUID otherwise, returned on every answer), a trace
//! span per request, and on the API routes the in-flight cap (503 beyond
//! `max_in_flight`). Bodies are read by the handlers themselves, after
//! authentication, through [`body::read`], bounded in size and time.

pub mod admin;
mod body;
pub mod chat;
mod error;
mod fleet;
mod health;
mod models;
mod openapi;

use std::any::Any;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use error::ApiError;

use crate::privacy::Class;
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const BACKEND_HEADER: &str = "x-gateway-backend";
pub const REASON_HEADER: &str = "x-gateway-route-reason";
pub const CLASS_HEADER: &str = "x-gateway-privacy-class";
/// The ledger row's id, to look a request up in the ledger.
pub const LEDGER_HEADER: &str = "x-gateway-ledger-id";

/// Longest client request id kept; a longer or unusual one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The gateway's routes over `state`.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*model}", get(models::retrieve))
        .route_layer(middleware::from_fn_with_state(state.clone(), admit));
    Router::new()
        .merge(api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/fleet/workers", post(fleet::heartbeat))
        .merge(admin::router(&state))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(middleware::map_request(plain_request_id))
                .layer(SetRequestIdLayer::new(
                    REQUEST_ID,
                    crate::ids::MakeRandomRequestId,
                ))
                // Handlers log failures with context; a 503 for "no private
                // route" is an answer, not a gateway fault worth an error line.
                .layer(
                    TraceLayer::new_for_http()
                        .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
        .with_state(state)
}

/// Holds one of `max_in_flight` permits until the response body is done
/// (a stream counts until its last byte); without a free permit the
/// request gets 503 at once rather than queueing.
async fn admit(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(permit) = std::sync::Arc::clone(&app.in_flight).try_acquire_owned() else {
        metrics::counter!("gateway_rejected_total", "code" => "overloaded").increment(1);
        return ApiError::Overloaded.into_response();
    };
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let body = body.map_frame(move |frame| {
        let _held = &permit;
        frame
    });
    Response::from_parts(parts, axum::body::Body::new(body))
}

/// Drops a client `x-request-id` that is long or holds anything but
/// letters, digits and `-_.:`: it is logged, returned and forwarded, so it
/// must stay small and inert. A UUID replaces it.
async fn plain_request_id(mut request: Request) -> Request {
    let plain = request.headers().get(&REQUEST_ID).is_none_or(|v| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= MAX_REQUEST_ID
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    });
    if !plain {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

async fn method_not_allowed() -> Response {
    plain_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed for this endpoint.",
        "method_not_allowed",
    )
}

async fn not_found() -> Response {
    plain_error(StatusCode::NOT_FOUND, "Unknown endpoint.", "unknown_url")
}

/// An OpenAI-shaped `invalid_request_error` about the request's route.
fn plain_error(status: StatusCode, message: &str, code: &str) -> Response {
    (
        status,
        axum::Json(wire::ErrorBody::new(
            message,
            "invalid_request_error",
            None,
            code,
        )),
    )
        .into_response()
}

fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::Internal.into_response()
}

/// Where a request ran and why, for the response headers.
#[derive(Debug, Default)]
pub struct RouteHeaders {
    pub backend: Option<String>,
    pub reason: Option<&'static str>,
    pub class: Option<Class>,
    pub ledger_id: Option<String>,
}

/// Adds the `x-gateway-*` headers to a response.
#[must_use]
pub fn with_gateway_headers(mut response: Response, route: &RouteHeaders) -> Response {
    let headers = response.headers_mut();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    if let Some(b) = &route.backend {
        put(BACKEND_HEADER, b);
    }
    if let Some(r) = route.reason {
        put(REASON_HEADER, r);
    }
    if let Some(c) = route.class {
        put(CLASS_HEADER, c.as_str());
    }
    if let Some(id) = &route.ledger_id {
        put(LEDGER_HEADER, id);
    }
    response
}
