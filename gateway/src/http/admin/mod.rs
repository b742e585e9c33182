//! The operators' surface: the admin API under `/admin/api` and the
//! dashboard under `/admin`.
//!
//! Both take an admin token (`gateway admin-token create`), never a tenant
//! key: the API as `Authorization: Bearer <token>` on every request, the
//! dashboard once at its login form, which opens a session (see
//! `dashboard`). Tokens are looked up by SHA-256 on every request, so a
//! revoked token stops working at once on every gateway.
//!
//! The API's routes are registered through `utoipa_axum`, so each route
//! and its OpenAPI entry come from one annotated handler: the document
//! cannot miss a route, and the test that proves every route refuses a
//! missing or tenant credential enumerates the routes from the document.
//! Changes go through `admin_cli::ops`, the same code as the CLI's, and
//! drop this gateway's key and settings caches at once (other gateways on
//! Postgres drop theirs on the change notification).

mod api;
pub mod dashboard;
mod error;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

pub use error::AdminApiError;

use crate::auth::Peer;
use crate::keys;
use crate::limits::ceil_secs;
use crate::state::AppState;
use crate::store::AdminToken;

/// Largest admin request body read.
pub(super) const MAX_ADMIN_BODY: usize = 256 << 10;

/// The admin API's routes (full paths), each behind [`require_token`],
/// and the dashboard's.
pub fn router(state: &AppState) -> Router<AppState> {
    let (api, _) = api::routes().split_for_parts();
    api.route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .merge(dashboard::router(state))
}

/// The admin API's part of the OpenAPI document.
#[must_use]
pub fn api_doc() -> OpenApi {
    let (_, mut doc) = api::routes().split_for_parts();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "admin_token",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    // Any route may answer 429 to an address guessing tokens.
    let guessing = ResponseBuilder::new()
        .description("Too many unknown admin tokens from this address")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .responses
                .responses
                .insert("429".into(), guessing.clone().into());
        }
    }
    doc
}

/// The admin token presented as a bearer credential, if it is valid.
pub(super) async fn admin_token(
    app: &AppState,
    headers: &HeaderMap,
    peer: Option<Peer>,
) -> Result<AdminToken, AdminApiError> {
    let presented = crate::auth::bearer(headers).ok_or(AdminApiError::Unauthorized)?;
    check_token(app, presented, peer).await
}

/// Looks a presented admin token up by hash. Tenant keys are never admin
/// tokens (another prefix, another table), so they fail here like any
/// unknown string; a string not of a token's shape is refused without a
/// store query, and so is any from a peer that has guessed too often
/// (the same count as tenant keys', [`crate::auth::Guesses`]).
pub(super) async fn check_token(
    app: &AppState,
    presented: &str,
    peer: Option<Peer>,
) -> Result<AdminToken, AdminApiError> {
    if !keys::well_formed(presented, keys::ADMIN_TOKEN_PREFIX) {
        return Err(AdminApiError::Unauthorized);
    }
    let guesses = &app.keys.guesses;
    guesses
        .check(peer)
        .map_err(|wait| AdminApiError::Guessing(ceil_secs(wait)))?;
    let found = app.store.active_admin_token(&keys::hash(presented)).await?;
    if found.is_none() {
        guesses.missed(peer);
    }
    found.ok_or(AdminApiError::Unauthorized)
}

/// Refuses every request without a valid admin token before its handler
/// (and so its body or query) is looked at.
async fn require_token(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Peer>().copied();
    match admin_token(&app, request.headers(), peer).await {
        Ok(token) => {
            request.extensions_mut().insert(token);
            next.run(request).await
        }
        Err(e) => {
            metrics::counter!("gateway_admin_refused_total").increment(1);
            e.into_response()
        }
    }
}

/// After an admin change: this gateway's caches are dropped now, so the
/// next request sees it even on SQLite, which has no change feed.
pub(super) fn changed(app: &AppState) {
    app.keys.invalidate_all();
    app.catalog.invalidate();
}
