//! The pages that view and edit settings: keys (and tenants), backends
//! (and aliases), policies and privacy rules. Every change goes through
//! `admin_cli::ops`, as the admin API's and the CLI's do, and drops this
//! gateway's caches. After a change the page is shown again with a notice
//! (a new key's secret is shown in that one answer and never again).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::layout::{self, action, csrf, notice};
use super::{form, format, Session};
use crate::admin_cli::{
    ops, BackendAddArgs, KeyCreateArgs, KeyUpdateArgs, Limit, PolicySetArgs, RuleAddArgs,
};
use crate::http::admin::{changed, AdminApiError};
use crate::privacy::RuleSpec;
use crate::routing::{AliasTarget, Zone};
use crate::state::AppState;
use crate::store::now_ms;

/// What to show above a page after an action.
type Notice = Option<(&'static str, String)>;

/// The notice for a `?done=` redirect: fixed texts only, nothing from the
/// query is echoed.
fn done(uri: &Uri) -> Notice {
    let q = uri.query().unwrap_or("");
    let text = match q.strip_prefix("done=")? {
        "tenant" => "Tenant created.",
        "revoked" => "Key revoked. It is refused from the next request on.",
        "limits" => "Limits saved. They apply from the next request on.",
        "backend" => "Backend saved.",
        "enabled" => "Backend enabled.",
        "disabled" => "Backend disabled.",
        "removed" => "Removed.",
        "alias" => "Alias saved.",
        "policy" => "Policy saved. The next request is routed with it.",
        "rule" => "Rule added. The next request is classified with it.",
        _ => return None,
    };
    Some(("ok", text.to_owned()))
}

/// Where a failed change is shown: the page it came from.
struct Back<'a> {
    session: &'a Session,
    path: &'static str,
    title: &'static str,
}

/// Shows a failed change on the page it came from, with its status.
async fn failed<F, Fut>(e: AdminApiError, back: Back<'_>, render: F) -> Response
where
    F: FnOnce(Notice) -> Fut,
    Fut: std::future::Future<Output = Result<Markup, AdminApiError>>,
{
    let status = e.status();
    if status.is_server_error() {
        return e.into_response();
    }
    match render(Some(("error", e.to_string()))).await {
        Ok(m) => {
            let mut r = layout::page(back.session, back.path, back.title, &m);
            *r.status_mut() = status;
            r
        }
        Err(e) => e.into_response(),
    }
}

fn keys_back(s: &Session) -> Back<'_> {
    Back {
        session: s,
        path: "/admin/keys",
        title: "Keys",
    }
}

fn backends_back(s: &Session) -> Back<'_> {
    Back {
        session: s,
        path: "/admin/backends",
        title: "Backends",
    }
}

fn policies_back(s: &Session) -> Back<'_> {
    Back {
        session: s,
        path: "/admin/policies",
        title: "Routing policies",
    }
}

fn privacy_back(s: &Session) -> Back<'_> {
    Back {
        session: s,
        path: "/admin/privacy",
        title: "Privacy rules",
    }
}

fn page(s: &Session, path: &str, title: &str, body: Result<Markup, AdminApiError>) -> Response {
    match body {
        Ok(b) => layout::page(s, path, title, &b),
        Err(e) => e.into_response(),
    }
}

fn shown(notice_: &Notice) -> Markup {
    html! { @if let Some((kind, text)) = notice_ { (notice(kind, text)) } }
}

// ---- Keys and tenants ---------------------------------------------------

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

#[derive(Deserialize, Default)]
pub struct Empty {}

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

// ---- Backends and aliases -----------------------------------------------

pub async fn backends(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    uri: Uri,
) -> Response {
    page(
        &s,
        "/admin/backends",
        "Backends",
        backends_body(&app, &s, done(&uri)).await,
    )
}

async fn backends_body(
    app: &AppState,
    s: &Session,
    notice_: Notice,
) -> Result<Markup, AdminApiError> {
    let backends = app.store.list_backends().await?;
    let aliases = app.store.list_aliases().await?;
    Ok(html! {
        (shown(&notice_))
        table.backends {
            thead { tr { th { "name" } th { "kind / zone" } th { "url" } th { "models" } th { "price in/out per 1k" } th { "J per token in/out" } th { "key from" } th { "state" } th {} } }
            tbody {
                @for b in &backends {
                    tr data-backend=(b.name) class=[(!b.enabled).then_some("inactive")] {
                        td { strong { (b.name) } }
                        td { (b.kind.as_str()) " / " span class={ "pill " (if b.zone == Zone::OnPrem { "on-prem" } else { "cloud" }) } { (if b.zone == Zone::OnPrem { "on-prem" } else { "cloud" }) } }
                        td { code { (b.base_url) } }
                        td { @for m in &b.models { code { (m.public) @if m.public != m.upstream { "→" (m.upstream) } } " " } }
                        td { (format::usd(b.price_in_per_1k)) " / " (format::usd(b.price_out_per_1k)) }
                        td { (b.joules_per_prompt_token) " / " (b.joules_per_output_token) }
                        td { @if let Some(v) = &b.api_key_env { code { "$" (v) } } @else { span.muted { "—" } } }
                        td { @if b.enabled { span.status.ok { "enabled" } } @else { span.status.rejected { "disabled" } } }
                        td.actions {
                            @if b.enabled {
                                (action(s, &format!("/admin/backends/{}/disable", b.name), "Disable", "", None))
                            } @else {
                                (action(s, &format!("/admin/backends/{}/enable", b.name), "Enable", "", None))
                            }
                            (action(s, &format!("/admin/backends/{}/remove", b.name), "Remove", "danger", Some("Remove this backend?")))
                        }
                    }
                }
            }
        }
        div.cols {
            form.card method="post" action="/admin/backends" {
                h2 { "Add a backend" }
                (csrf(s))
                div.row3 {
                    label { "Name" input type="text" name="name" required; }
                    label { "Kind" select name="kind" { option value="edge" { "edge" } option value="cloud" { "cloud" } } }
                    label { "Zone" select name="zone" { option value="" { "by kind" } option value="on-prem" { "on-prem" } option value="cloud" { "cloud" } } }
                }
                label { "Base URL" input type="url" name="url" required placeholder="http://10.0.0.5:8081"; }
                label { "Models (public=upstream, comma-separated)" input type="text" name="models" required placeholder="smollm2=smollm2-135m-instruct"; }
                div.row3 {
                    label { "USD/1k in" input type="number" step="any" min="0" name="price_in"; }
                    label { "USD/1k out" input type="number" step="any" min="0" name="price_out"; }
                    label { "RTT (ms)" input type="number" step="any" min="0" name="rtt_ms"; }
                    label { "J/token in" input type="number" step="any" min="0" name="j_prompt"; }
                    label { "J/token out" input type="number" step="any" min="0" name="j_output"; }
                    label { "Context" input type="number" min="1" name="context_length"; }
                }
                label { "Upstream key: environment variable name" input type="text" name="api_key_env" placeholder="OPENAI_API_KEY" pattern="[A-Z0-9_]+"; }
                p.muted { "The key itself is never stored: the gateway reads it from this variable of its own environment." }
                label.check { input type="checkbox" name="force_zone"; " Keep the zone even if it looks wrong" }
                button.primary type="submit" { "Add backend" }
            }
            div.card {
                h2 { "Model aliases" }
                ul.aliases {
                    @for a in &aliases {
                        li {
                            code { (a.name) } " → "
                            @match &a.target { AliasTarget::Any => { "any model" } AliasTarget::Models(m) => { (m.join(", ")) } }
                            (action(s, &format!("/admin/aliases/{}/remove", a.name), "Remove", "link danger", None))
                        }
                    }
                }
                form method="post" action="/admin/aliases" {
                    (csrf(s))
                    div.row3 {
                        label { "Alias" input type="text" name="name" required placeholder="auto"; }
                        label { "Models (or any)" input type="text" name="models" required; }
                    }
                    button type="submit" { "Save alias" }
                }
            }
        }
    })
}

pub async fn add_backend(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    body: Body,
) -> Response {
    let args: BackendAddArgs = match form(&app, &s, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match ops::add_backend(&app.store, args).await {
        Ok(_) => {
            changed(&app);
            Redirect::to("/admin/backends?done=backend").into_response()
        }
        Err(e) => failed(e.into(), backends_back(&s), |n| backends_body(&app, &s, n)).await,
    }
}

async fn backend_change(
    app: AppState,
    s: Session,
    body: Body,
    name: String,
    what: &'static str,
) -> Response {
    if let Err(r) = form::<Empty>(&app, &s, body).await {
        return r;
    }
    let result = match what {
        "enabled" => app.store.set_backend_enabled(&name, true).await,
        "disabled" => app.store.set_backend_enabled(&name, false).await,
        _ => app.store.remove_backend(&name).await,
    };
    match result {
        Ok(()) => {
            changed(&app);
            Redirect::to(&format!("/admin/backends?done={what}")).into_response()
        }
        Err(e) => failed(e.into(), backends_back(&s), |n| backends_body(&app, &s, n)).await,
    }
}

pub async fn enable_backend(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    backend_change(app, s, body, name, "enabled").await
}

pub async fn disable_backend(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    backend_change(app, s, body, name, "disabled").await
}

pub async fn remove_backend(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    backend_change(app, s, body, name, "removed").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasForm {
    name: String,
    models: Vec<String>,
}

pub async fn set_alias(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    body: Body,
) -> Response {
    let f: AliasForm = match form(&app, &s, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match ops::set_alias(&app.store, f.name, f.models).await {
        Ok(_) => {
            changed(&app);
            Redirect::to("/admin/backends?done=alias").into_response()
        }
        Err(e) => failed(e.into(), backends_back(&s), |n| backends_body(&app, &s, n)).await,
    }
}

pub async fn remove_alias(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    if let Err(r) = form::<Empty>(&app, &s, body).await {
        return r;
    }
    match app.store.remove_alias(&name).await {
        Ok(()) => {
            changed(&app);
            Redirect::to("/admin/backends?done=removed").into_response()
        }
        Err(e) => failed(e.into(), backends_back(&s), |n| backends_body(&app, &s, n)).await,
    }
}

// ---- Policies -------------------------------------------------------------

pub async fn policies(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    uri: Uri,
) -> Response {
    page(
        &s,
        "/admin/policies",
        "Routing policies",
        policies_body(&app, &s, done(&uri)).await,
    )
}

async fn policies_body(
    app: &AppState,
    s: &Session,
    notice_: Notice,
) -> Result<Markup, AdminApiError> {
    let tenants = app.store.list_tenants().await?;
    let mut rows = Vec::new();
    for t in tenants {
        let p = app.store.get_policy(&t.id).await?;
        rows.push((t, p.is_some(), p.unwrap_or_default()));
    }
    let bool_select = |name: &str, v: bool| {
        html! {
            select name=(name) {
                option value="true" selected[v] { "yes" }
                option value="false" selected[!v] { "no" }
            }
        }
    };
    Ok(html! {
        (shown(&notice_))
        p.muted {
            "score = w_latency · latency / SLO + w_energy · energy / E_ref + w_cost · cost / C_ref. "
            "The lowest score among candidates that keep the SLO wins. Changes apply from the next request."
        }
        @if rows.is_empty() { p.empty { "No tenants yet: create one on the Keys page." } }
        @for (t, own, p) in &rows {
            form.card.policy method="post" action={ "/admin/policies/" (t.name) } data-tenant=(t.name) {
                h2 { (t.name) @if !*own { " " small.muted { "(defaults)" } } }
                (csrf(s))
                div.row3 {
                    label { "w latency" input type="number" step="any" min="0" name="w_latency" value=(p.w_latency); }
                    label { "w energy" input type="number" step="any" min="0" name="w_energy" value=(p.w_energy); }
                    label { "w cost" input type="number" step="any" min="0" name="w_cost" value=(p.w_cost); }
                    label { "SLO (ms)" input type="number" step="any" min="0" name="slo_ms" value=(p.latency_slo_ms); }
                    label { "E_ref (J)" input type="number" step="any" min="0" name="energy_ref_j" value=(p.energy_ref_j); }
                    label { "C_ref (USD)" input type="number" step="any" min="0" name="cost_ref_usd" value=(p.cost_ref_usd); }
                    label { "Default class" select name="default_class" {
                        @for c in ["public", "internal", "confidential"] {
                            option value=(c) selected[p.default_class.as_str() == c] { (c) }
                        }
                    } }
                    label { "Cloud allowed" (bool_select("allow_cloud", p.allow_cloud)) }
                    label { "Forward store: true" (bool_select("allow_store", p.allow_store)) }
                    label { "Expected output tokens" input type="number" min="1" name="expected_output_tokens" value=(p.expected_output_tokens); }
                }
                button.primary type="submit" { "Save policy" }
            }
        }
    })
}

pub async fn set_policy(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    Path(tenant): Path<String>,
    body: Body,
) -> Response {
    let mut args: PolicySetArgs = match form(&app, &s, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    args.tenant = tenant;
    match ops::set_policy(&app.store, &args).await {
        Ok((t, _)) => {
            changed(&app);
            tracing::info!(tenant = %t.name, "policy changed from the dashboard");
            Redirect::to("/admin/policies?done=policy").into_response()
        }
        Err(e) => failed(e.into(), policies_back(&s), |n| policies_body(&app, &s, n)).await,
    }
}

// ---- Privacy rules ----------------------------------------------------------

pub async fn privacy(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    uri: Uri,
) -> Response {
    page(
        &s,
        "/admin/privacy",
        "Privacy rules",
        privacy_body(&app, &s, done(&uri)).await,
    )
}

async fn privacy_body(
    app: &AppState,
    s: &Session,
    notice_: Notice,
) -> Result<Markup, AdminApiError> {
    let rules = app.store.list_privacy_rules().await?;
    let tenants = app.store.list_tenants().await?;
    let name_of = |id: &Option<String>| {
        id.as_ref().map_or("all tenants", |id| {
            tenants
                .iter()
                .find(|t| &t.id == id)
                .map_or("(removed)", |t| t.name.as_str())
        })
    };
    Ok(html! {
        (shown(&notice_))
        p.muted {
            "Every builtin detector (email, phone, card, iban, ip_address, secret) makes a request confidential "
            "unless a rule lowers it. Operator patterns raise a request to their class. A tenant's rule wins over a global one."
        }
        table.rules {
            thead { tr { th { "rule" } th { "scope" } th { "kind" } th { "pattern" } th { "class" } th {} } }
            tbody {
                @for r in &rules {
                    tr {
                        @match &r.spec {
                            RuleSpec::Builtin { detector, enabled, class } => {
                                td { strong { (detector) } }
                                td { (name_of(&r.tenant_id)) }
                                td { "builtin" }
                                td { @if *enabled { span.muted { "—" } } @else { span.status.rejected { "switched off" } } }
                                td { (class.map_or("confidential (default)", |c| c.as_str())) }
                            }
                            RuleSpec::Regex { name, pattern, class } => {
                                td { strong { (name) } }
                                td { (name_of(&r.tenant_id)) }
                                td { "pattern" }
                                td { code { (pattern) } }
                                td { (class.as_str()) }
                            }
                        }
                        td { (action(s, &format!("/admin/privacy/{}/remove", r.id), "Remove", "danger", Some("Remove this rule?"))) }
                    }
                }
            }
        }
        @if rules.is_empty() { p.empty { "No rules: the builtin detectors apply as they are." } }
        form.card method="post" action="/admin/privacy" {
            h2 { "Add a rule" }
            (csrf(s))
            div.row3 {
                label { "Name (or builtin detector)" input type="text" name="name" required; }
                label { "Pattern (regex)" input type="text" name="pattern" placeholder="leave empty for a builtin"; }
                label { "Class" select name="class" {
                    option value="" { "—" }
                    option value="public" { "public" } option value="internal" { "internal" } option value="confidential" { "confidential" }
                } }
                label { "Tenant (empty: all)" input type="text" name="tenant"; }
            }
            label.check { input type="checkbox" name="builtin"; " Configure a builtin detector" }
            label.check { input type="checkbox" name="disable"; " Switch that detector off" }
            button.primary type="submit" { "Add rule" }
        }
    })
}

pub async fn add_rule(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    body: Body,
) -> Response {
    let args: RuleAddArgs = match form(&app, &s, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match ops::add_rule(&app.store, args).await {
        Ok(_) => {
            changed(&app);
            Redirect::to("/admin/privacy?done=rule").into_response()
        }
        Err(e) => failed(e.into(), privacy_back(&s), |n| privacy_body(&app, &s, n)).await,
    }
}

pub async fn remove_rule(
    State(app): State<AppState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    if let Err(r) = form::<Empty>(&app, &s, body).await {
        return r;
    }
    match app.store.remove_privacy_rule(&id).await {
        Ok(()) => {
            changed(&app);
            Redirect::to("/admin/privacy?done=removed").into_response()
        }
        Err(e) => failed(e.into(), privacy_back(&s), |n| privacy_body(&app, &s, n)).await,
    }
}
