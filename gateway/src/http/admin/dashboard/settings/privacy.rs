//! The privacy rules page.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};

use super::super::layout::{action, csrf};
use super::super::{form, Session};
use crate::admin_cli::{ops, RuleAddArgs};
use crate::http::admin::{changed, AdminApiError};
use crate::privacy::RuleSpec;
use crate::state::AppState;

use super::{done, failed, page, shown, Back, Empty, Notice};

fn privacy_back(s: &Session) -> Back<'_> {
    Back {
        session: s,
        path: "/admin/privacy",
        title: "Privacy rules",
    }
}

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
            "Every builtin detector (email, phone, card, iban, ip_address, secret, media) makes a request confidential "
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
