//! The keys page: tenants, keys, their limits and budgets.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::super::layout::{action, csrf};
use super::super::{form, format, Session};
use crate::admin_cli::{ops, KeyCreateArgs, KeyUpdateArgs, Limit};
use crate::http::admin::{changed, AdminApiError};
use crate::state::AppState;
use crate::store::now_ms;

use super::{done, failed, page, shown, Back, Empty, Notice};

fn keys_back(s: &Session) -> Back<'_> {
    Back {
        session: s,
        path: "/admin/keys",
        title: "Keys",
    }
}

pub async fn keys(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    uri: Uri,
) -> Response {
    page(
        &s,
        "/admin/keys",
        "Keys",
        keys_body(&app, &s, done(&uri), None).await,
    )
}

async fn keys_body(
    app: &AppState,
    s: &Session,
    notice_: Notice,
    secret: Option<&str>,
) -> Result<Markup, AdminApiError> {
    let tenants = app.store.list_tenants().await?;
    let keys = app.store.list_keys(None).await?;
    let name_of = |id: &str| {
        tenants
            .iter()
            .find(|t| t.id == id)
            .map_or("(removed)", |t| t.name.as_str())
    };
    let now = now_ms();
    Ok(html! {
        (shown(&notice_))
        @if let Some(secret) = secret {
            div.notice.secret role="status" {
                strong { "New key — copy it now, it is not shown again:" }
                code #new-key { (secret) }
            }
        }
        div.cols {
            form.card method="post" action="/admin/keys" {
                h2 { "Create a key" }
                (csrf(s))
                label { "Tenant" select name="tenant" required {
                    @for t in &tenants { option value=(t.name) { (t.name) } }
                } }
                label { "Lowest class" select name="class" {
                    option value="public" { "public" } option value="internal" { "internal" } option value="confidential" { "confidential" }
                } }
                div.row3 {
                    label { "Requests/min" input type="number" name="rpm" min="1" placeholder="unlimited"; }
                    label { "Tokens/min" input type="number" name="tpm" min="1" placeholder="unlimited"; }
                    label { "Budget (USD)" input type="number" name="budget" min="0" step="any" placeholder="unlimited"; }
                }
                label { "Expires in (days)" input type="number" name="expires_days" min="1" placeholder="never"; }
                button.primary type="submit" { "Create key" }
            }
            form.card method="post" action="/admin/tenants" {
                h2 { "Create a tenant" }
                (csrf(s))
                label { "Name" input type="text" name="name" required; }
                button type="submit" { "Create tenant" }
            }
        }
        h2 { "Keys" }
        @if keys.is_empty() { p.empty { "No keys yet." } }
        table.keys {
            thead { tr { th { "key" } th { "tenant" } th { "class" } th { "spent" } th { "limits (empty = unlimited)" } th { "status" } th {} } }
            tbody {
                @for k in &keys {
                    @let active = k.is_active(now);
                    tr data-key=(k.id) class=[(!active).then_some("inactive")] {
                        td { code { (k.display_prefix) "…" } br; small.muted { (k.id) } }
                        td { (name_of(&k.tenant_id)) }
                        td { span class={ "pill " (k.default_class.as_str()) } { (k.default_class.as_str()) } }
                        td { (format::usd(k.spent_usd)) }
                        td {
                            @if active {
                                form.limits method="post" action={ "/admin/keys/" (k.id) "/limits" } {
                                    (csrf(s))
                                    input type="number" name="rpm" min="1" value=[k.requests_per_min] placeholder="rpm" title="requests/min";
                                    input type="number" name="tpm" min="1" value=[k.tokens_per_min] placeholder="tpm" title="tokens/min";
                                    input type="number" name="budget" min="0" step="any" value=[k.budget_usd] placeholder="budget" title="budget (USD)";
                                    button type="submit" { "Save" }
                                }
                            } @else {
                                span.muted { "—" }
                            }
                        }
                        td {
                            @if k.revoked_at.is_some() { span.status.rejected { "revoked" } }
                            @else if !active { span.status.error { "expired" } }
                            @else { span.status.ok { "active" } }
                        }
                        td { @if k.revoked_at.is_none() {
                            (action(s, &format!("/admin/keys/{}/revoke", k.id), "Revoke", "danger", Some("Revoke this key? Requests with it are refused at once.")))
                        } }
                    }
                }
            }
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantForm {
    name: String,
}

pub async fn create_tenant(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    body: Body,
) -> Response {
    let f: TenantForm = match form(&app, &s, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match app.store.create_tenant(&f.name).await {
        Ok(_) => {
            changed(&app);
            Redirect::to("/admin/keys?done=tenant").into_response()
        }
        Err(e) => failed(e.into(), keys_back(&s), |n| keys_body(&app, &s, n, None)).await,
    }
}

pub async fn create_key(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    body: Body,
) -> Response {
    let args: KeyCreateArgs = match form(&app, &s, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match ops::create_key(&app.store, args).await {
        Ok(made) => {
            changed(&app);
            tracing::info!(key = %made.key.id, "key created from the dashboard");
            let body = keys_body(
                &app,
                &s,
                Some(("ok", "Key created.".to_owned())),
                Some(made.plaintext.expose_secret()),
            )
            .await;
            page(&s, "/admin/keys", "Keys", body)
        }
        Err(e) => failed(e.into(), keys_back(&s), |n| keys_body(&app, &s, n, None)).await,
    }
}

pub async fn revoke_key(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    if let Err(r) = form::<Empty>(&app, &s, body).await {
        return r;
    }
    match app.store.revoke_key(&id).await {
        Ok(()) => {
            changed(&app);
            tracing::info!(key = %id, "key revoked from the dashboard");
            Redirect::to("/admin/keys?done=revoked").into_response()
        }
        Err(e) => failed(e.into(), keys_back(&s), |n| keys_body(&app, &s, n, None)).await,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsForm {
    rpm: Option<u32>,
    tpm: Option<u32>,
    budget: Option<f64>,
}

pub async fn key_limits(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let f: LimitsForm = match form(&app, &s, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    // Every field is on the form: an empty one means unlimited.
    let args = KeyUpdateArgs {
        id,
        rpm: Some(Limit(f.rpm)),
        tpm: Some(Limit(f.tpm)),
        budget: Some(Limit(f.budget)),
    };
    match ops::update_key(&app.store, &args).await {
        Ok(_) => {
            changed(&app);
            Redirect::to("/admin/keys?done=limits").into_response()
        }
        Err(e) => failed(e.into(), keys_back(&s), |n| keys_body(&app, &s, n, None)).await,
    }
}
