//! The backends page: backends and aliases.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;

use super::super::layout::{action, csrf};
use super::super::{form, format, Session};
use crate::admin_cli::{ops, BackendAddArgs};
use crate::http::admin::{changed, AdminApiError};
use crate::routing::{AliasTarget, Zone};
use crate::state::AppState;

use super::{done, failed, page, shown, Back, Empty, Notice};

fn backends_back(s: &Session) -> Back<'_> {
    Back {
        session: s,
        path: "/admin/backends",
        title: "Backends",
    }
}

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
