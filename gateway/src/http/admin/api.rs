//! The admin API's handlers: what the CLI does, over HTTP and JSON.
//!
//! Bodies are the CLI's own argument structs (same fields, same defaults)
//! and every change goes through `admin_cli::ops`. A new key's secret is
//! in the answer to its creation and nowhere else; nothing answers with a
//! key hash, an admin token or an upstream credential (a cloud backend
//! names the environment variable that holds its key, never the key).

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{changed, AdminApiError, MAX_ADMIN_BODY};
use crate::admin_cli::{
    ops, BackendAddArgs, KeyCreateArgs, KeyUpdateArgs, PolicySetArgs, RuleAddArgs,
};
use crate::state::AppState;
use crate::store::{AdminToken, LedgerFilter, MAX_LEDGER_ROWS};

type ApiResult = Result<Response, AdminApiError>;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(update_key))
        .routes(routes!(revoke_key))
        .routes(routes!(list_backends, add_backend))
        .routes(routes!(remove_backend))
        .routes(routes!(enable_backend))
        .routes(routes!(disable_backend))
        .routes(routes!(list_aliases))
        .routes(routes!(set_alias, remove_alias))
        .routes(routes!(get_policy, set_policy))
        .routes(routes!(list_rules, add_rule))
        .routes(routes!(remove_rule))
        .routes(routes!(query_ledger))
        .routes(routes!(ledger_totals))
        .routes(routes!(ledger_series))
        .routes(routes!(ledger_row))
}

/// One path segment, percent-decoded. One that does not decode to UTF-8
/// (`%FF`) is a 400 in the API's shape, not axum's plain text.
struct Param(String);

impl<S: Send + Sync> FromRequestParts<S> for Param {
    type Rejection = AdminApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| Param(p.0))
            .map_err(|e| AdminApiError::BadRequest {
                message: format!("Invalid path: {}.", e.body_text()),
                code: "invalid_path",
            })
    }
}

/// Reads and parses a JSON body of at most [`MAX_ADMIN_BODY`] bytes.
async fn body<T: DeserializeOwned>(app: &AppState, body: Body) -> Result<T, AdminApiError> {
    let bytes =
        crate::http::body::read(body, MAX_ADMIN_BODY, app.config.body_read_timeout()).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AdminApiError::bad_body(format!("Invalid JSON body: {e}.")))
}

/// Parses the query string; a malformed one is a 400, not axum's text.
fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, AdminApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| AdminApiError::bad_query(format!("Invalid query: {}.", e.body_text())))
}

fn list<T: Serialize>(items: &[T]) -> Response {
    Json(json!({"object": "list", "data": items})).into_response()
}

fn created(value: &impl Serialize) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

fn audit(token: &AdminToken, action: &str, target: &str) {
    tracing::info!(admin = %token.name, action, target, "admin change");
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantCreate {
    name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AliasSet {
    /// Model ids, or `["any"]` for any model.
    models: Vec<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TenantFilter {
    /// Only this tenant's keys (name or id).
    tenant: Option<String>,
}

/// Which ledger rows; every parameter narrows.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LedgerQuery {
    /// Tenant name or id.
    tenant: Option<String>,
    /// Backend name.
    backend: Option<String>,
    /// Privacy class: public, internal or confidential.
    class: Option<String>,
    /// ok, error, cancelled, partial or rejected.
    status: Option<String>,
    /// Rows created at or after (unix ms).
    since: Option<i64>,
    /// Rows created before (unix ms).
    until: Option<i64>,
    /// Most rows returned (default 100, at most 1000).
    limit: Option<u32>,
    /// Series bucket width in ms (default 60000).
    bucket_ms: Option<i64>,
}

/// The store's filter for a query; a tenant name is resolved to its id.
pub(crate) async fn ledger_filter(
    app: &AppState,
    tenant: Option<&str>,
    backend: Option<&str>,
    class: Option<&str>,
    status: Option<&str>,
) -> Result<LedgerFilter, AdminApiError> {
    let nonempty = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_owned);
    let tenant_id = match nonempty(tenant) {
        Some(t) => Some(ops::tenant_of(&app.store, &t).await?.id),
        None => None,
    };
    if let Some(c) = nonempty(class) {
        c.parse::<crate::privacy::Class>().map_err(|_| {
            AdminApiError::bad_query("class must be public, internal or confidential.")
        })?;
    }
    if let Some(s) = nonempty(status) {
        if !crate::store::LedgerStatus::ALL
            .iter()
            .any(|v| v.as_str() == s)
        {
            return Err(AdminApiError::bad_query(
                "status must be ok, error, cancelled, partial or rejected.",
            ));
        }
    }
    Ok(LedgerFilter {
        tenant_id,
        backend: nonempty(backend),
        class: nonempty(class),
        status: nonempty(status),
        since: None,
        until: None,
    })
}

async fn filter_of(app: &AppState, q: &LedgerQuery) -> Result<LedgerFilter, AdminApiError> {
    let mut f = ledger_filter(
        app,
        q.tenant.as_deref(),
        q.backend.as_deref(),
        q.class.as_deref(),
        q.status.as_deref(),
    )
    .await?;
    f.since = q.since;
    f.until = q.until;
    Ok(f)
}

/// List tenants.
#[utoipa::path(get, path = "/admin/api/tenants", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error)))]
async fn list_tenants(State(app): State<AppState>) -> ApiResult {
    Ok(list(&app.store.list_tenants().await?))
}

/// Create a tenant.
#[utoipa::path(post, path = "/admin/api/tenants", tag = "admin", security(("admin_token" = [])),
    request_body = TenantCreate,
    responses((status = 201, body = Object), (status = 400, body = crate::http::openapi::Error),
        (status = 401, body = crate::http::openapi::Error), (status = 409, body = crate::http::openapi::Error)))]
async fn create_tenant(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    raw: Body,
) -> ApiResult {
    let b: TenantCreate = body(&app, raw).await?;
    let tenant = app.store.create_tenant(&b.name).await?;
    audit(&token, "tenant.create", &tenant.name);
    changed(&app);
    Ok(created(&tenant))
}

/// List keys (never their secrets or hashes).
#[utoipa::path(get, path = "/admin/api/keys", tag = "admin", security(("admin_token" = [])),
    params(TenantFilter),
    responses((status = 200, body = Object), (status = 400, body = crate::http::openapi::Error),
        (status = 401, body = crate::http::openapi::Error), (status = 404, body = crate::http::openapi::Error)))]
async fn list_keys(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let q: TenantFilter = query(&uri)?;
    Ok(list(
        &ops::list_keys(&app.store, q.tenant.as_deref()).await?,
    ))
}

/// Create a key. The answer's `api_key` is the secret, shown this once.
#[utoipa::path(post, path = "/admin/api/keys", tag = "admin", security(("admin_token" = [])),
    request_body = KeyCreateArgs,
    responses((status = 201, body = Object), (status = 400, body = crate::http::openapi::Error),
        (status = 401, body = crate::http::openapi::Error), (status = 404, body = crate::http::openapi::Error)))]
async fn create_key(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    raw: Body,
) -> ApiResult {
    let args: KeyCreateArgs = body(&app, raw).await?;
    let made = ops::create_key(&app.store, args).await?;
    audit(&token, "key.create", &made.key.id);
    changed(&app);
    Ok(created(&json!({
        "key": made.key,
        "api_key": made.plaintext.expose_secret(),
        "note": "shown once; store it now",
    })))
}

/// Change a key's limits and budget: an absent field is kept, `null`
/// removes the limit.
#[utoipa::path(patch, path = "/admin/api/keys/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path)), request_body = KeyUpdateArgs,
    responses((status = 200, body = Object), (status = 400, body = crate::http::openapi::Error),
        (status = 401, body = crate::http::openapi::Error), (status = 404, body = crate::http::openapi::Error)))]
async fn update_key(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    Param(id): Param,
    raw: Body,
) -> ApiResult {
    let mut args: KeyUpdateArgs = body(&app, raw).await?;
    args.id = id;
    let key = ops::update_key(&app.store, &args).await?;
    audit(&token, "key.update", &key.id);
    changed(&app);
    Ok(Json(key).into_response())
}

/// Revoke a key; it is refused from the next request on.
#[utoipa::path(post, path = "/admin/api/keys/{id}/revoke", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error),
        (status = 404, body = crate::http::openapi::Error)))]
async fn revoke_key(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    Param(id): Param,
) -> ApiResult {
    app.store.revoke_key(&id).await?;
    audit(&token, "key.revoke", &id);
    changed(&app);
    Ok(Json(json!({"revoked": id})).into_response())
}

/// List backends.
#[utoipa::path(get, path = "/admin/api/backends", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error)))]
async fn list_backends(State(app): State<AppState>) -> ApiResult {
    Ok(list(&app.store.list_backends().await?))
}

/// Register a backend, checked as `gateway backend add` checks it: an
/// on-prem backend must have a local host and no key, a cloud backend's
/// key is named by `api_key_env` (never a `GATEWAY_*` variable).
#[utoipa::path(post, path = "/admin/api/backends", tag = "admin", security(("admin_token" = [])),
    request_body = BackendAddArgs,
    responses((status = 201, body = Object), (status = 400, body = crate::http::openapi::Error),
        (status = 401, body = crate::http::openapi::Error), (status = 409, body = crate::http::openapi::Error)))]
async fn add_backend(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    raw: Body,
) -> ApiResult {
    let args: BackendAddArgs = body(&app, raw).await?;
    let backend = ops::add_backend(&app.store, args).await?;
    audit(&token, "backend.add", &backend.name);
    changed(&app);
    Ok(created(&backend))
}

/// Remove a backend.
#[utoipa::path(delete, path = "/admin/api/backends/{name}", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error),
        (status = 404, body = crate::http::openapi::Error)))]
async fn remove_backend(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    Param(name): Param,
) -> ApiResult {
    app.store.remove_backend(&name).await?;
    audit(&token, "backend.remove", &name);
    changed(&app);
    Ok(Json(json!({"removed": name})).into_response())
}

/// Let the router use a backend again.
#[utoipa::path(post, path = "/admin/api/backends/{name}/enable", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error),
        (status = 404, body = crate::http::openapi::Error)))]
async fn enable_backend(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    Param(name): Param,
) -> ApiResult {
    app.store.set_backend_enabled(&name, true).await?;
    audit(&token, "backend.enable", &name);
    changed(&app);
    Ok(Json(json!({"enabled": name})).into_response())
}

/// Stop routing to a backend without removing it.
#[utoipa::path(post, path = "/admin/api/backends/{name}/disable", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error),
        (status = 404, body = crate::http::openapi::Error)))]
async fn disable_backend(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    Param(name): Param,
) -> ApiResult {
    app.store.set_backend_enabled(&name, false).await?;
    audit(&token, "backend.disable", &name);
    changed(&app);
    Ok(Json(json!({"disabled": name})).into_response())
}

/// List aliases.
#[utoipa::path(get, path = "/admin/api/aliases", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error)))]
async fn list_aliases(State(app): State<AppState>) -> ApiResult {
    Ok(list(&app.store.list_aliases().await?))
}

/// Point an alias at model ids (or `["any"]`).
#[utoipa::path(put, path = "/admin/api/aliases/{name}", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path)), request_body = AliasSet,
    responses((status = 200, body = Object), (status = 400, body = crate::http::openapi::Error),
        (status = 401, body = crate::http::openapi::Error), (status = 404, body = crate::http::openapi::Error)))]
async fn set_alias(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    Param(name): Param,
    raw: Body,
) -> ApiResult {
    let b: AliasSet = body(&app, raw).await?;
    let alias = ops::set_alias(&app.store, name, b.models).await?;
    audit(&token, "alias.set", &alias.name);
    changed(&app);
    Ok(Json(alias).into_response())
}

/// Remove an alias.
#[utoipa::path(delete, path = "/admin/api/aliases/{name}", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error),
        (status = 404, body = crate::http::openapi::Error)))]
async fn remove_alias(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    Param(name): Param,
) -> ApiResult {
    app.store.remove_alias(&name).await?;
    audit(&token, "alias.remove", &name);
    changed(&app);
    Ok(Json(json!({"removed": name})).into_response())
}

/// A tenant's effective policy.
#[utoipa::path(get, path = "/admin/api/policies/{tenant}", tag = "admin", security(("admin_token" = [])),
    params(("tenant" = String, Path, description = "Tenant name or id")),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error),
        (status = 404, body = crate::http::openapi::Error)))]
async fn get_policy(State(app): State<AppState>, Param(tenant): Param) -> ApiResult {
    let (t, policy) = ops::get_policy(&app.store, &tenant).await?;
    Ok(Json(json!({"tenant": t.name, "policy": policy})).into_response())
}

/// Change fields of a tenant's policy; absent fields keep their value.
#[utoipa::path(patch, path = "/admin/api/policies/{tenant}", tag = "admin", security(("admin_token" = [])),
    params(("tenant" = String, Path, description = "Tenant name or id")), request_body = PolicySetArgs,
    responses((status = 200, body = Object), (status = 400, body = crate::http::openapi::Error),
        (status = 401, body = crate::http::openapi::Error), (status = 404, body = crate::http::openapi::Error)))]
async fn set_policy(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    Param(tenant): Param,
    raw: Body,
) -> ApiResult {
    let mut args: PolicySetArgs = body(&app, raw).await?;
    args.tenant = tenant;
    let (t, policy) = ops::set_policy(&app.store, &args).await?;
    audit(&token, "policy.set", &t.name);
    changed(&app);
    Ok(Json(json!({"tenant": t.name, "policy": policy})).into_response())
}

/// List privacy rules of every scope.
#[utoipa::path(get, path = "/admin/api/privacy-rules", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error)))]
async fn list_rules(State(app): State<AppState>) -> ApiResult {
    Ok(list(&app.store.list_privacy_rules().await?))
}

/// Add an operator regex or configure a builtin detector.
#[utoipa::path(post, path = "/admin/api/privacy-rules", tag = "admin", security(("admin_token" = [])),
    request_body = RuleAddArgs,
    responses((status = 201, body = Object), (status = 400, body = crate::http::openapi::Error),
        (status = 401, body = crate::http::openapi::Error), (status = 404, body = crate::http::openapi::Error),
        (status = 409, body = crate::http::openapi::Error)))]
async fn add_rule(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    raw: Body,
) -> ApiResult {
    let args: RuleAddArgs = body(&app, raw).await?;
    let rule = ops::add_rule(&app.store, args).await?;
    audit(&token, "privacy_rule.add", &rule.id);
    changed(&app);
    Ok(created(&rule))
}

/// Remove a privacy rule.
#[utoipa::path(delete, path = "/admin/api/privacy-rules/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error),
        (status = 404, body = crate::http::openapi::Error)))]
async fn remove_rule(
    State(app): State<AppState>,
    Extension(token): Extension<AdminToken>,
    Param(id): Param,
) -> ApiResult {
    app.store.remove_privacy_rule(&id).await?;
    audit(&token, "privacy_rule.remove", &id);
    changed(&app);
    Ok(Json(json!({"removed": id})).into_response())
}

/// Ledger rows, newest first, with their routing decisions.
#[utoipa::path(get, path = "/admin/api/ledger", tag = "admin", security(("admin_token" = [])),
    params(LedgerQuery),
    responses((status = 200, body = Object), (status = 400, body = crate::http::openapi::Error),
        (status = 401, body = crate::http::openapi::Error), (status = 404, body = crate::http::openapi::Error)))]
async fn query_ledger(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let q: LedgerQuery = query(&uri)?;
    let filter = filter_of(&app, &q).await?;
    let rows = app
        .store
        .query_ledger(&filter, q.limit.unwrap_or(100).min(MAX_LEDGER_ROWS))
        .await?;
    Ok(list(&rows))
}

/// Totals of the matching rows: requests, tokens, joules and USD, overall,
/// per zone and per status.
#[utoipa::path(get, path = "/admin/api/ledger/totals", tag = "admin", security(("admin_token" = [])),
    params(LedgerQuery),
    responses((status = 200, body = Object), (status = 400, body = crate::http::openapi::Error),
        (status = 401, body = crate::http::openapi::Error), (status = 404, body = crate::http::openapi::Error)))]
async fn ledger_totals(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let q: LedgerQuery = query(&uri)?;
    let filter = filter_of(&app, &q).await?;
    Ok(Json(app.store.ledger_totals(&filter).await?).into_response())
}

/// The same totals per zone in time buckets of `bucket_ms`.
#[utoipa::path(get, path = "/admin/api/ledger/series", tag = "admin", security(("admin_token" = [])),
    params(LedgerQuery),
    responses((status = 200, body = Object), (status = 400, body = crate::http::openapi::Error),
        (status = 401, body = crate::http::openapi::Error), (status = 404, body = crate::http::openapi::Error)))]
async fn ledger_series(State(app): State<AppState>, uri: Uri) -> ApiResult {
    let q: LedgerQuery = query(&uri)?;
    let bucket = q.bucket_ms.unwrap_or(60_000);
    if bucket < 1000 {
        return Err(AdminApiError::bad_query("bucket_ms must be at least 1000."));
    }
    let filter = filter_of(&app, &q).await?;
    Ok(list(&app.store.ledger_series(&filter, bucket).await?))
}

/// One ledger row by request id.
#[utoipa::path(get, path = "/admin/api/ledger/rows/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = crate::http::openapi::Error),
        (status = 404, body = crate::http::openapi::Error)))]
async fn ledger_row(State(app): State<AppState>, Param(id): Param) -> ApiResult {
    let row = app
        .store
        .ledger_entry(&id)
        .await?
        .ok_or_else(|| AdminApiError::NotFound("ledger row not found".to_owned()))?;
    Ok(Json(row).into_response())
}
