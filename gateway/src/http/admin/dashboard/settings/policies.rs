//! The routing policies page.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};

use super::super::layout::csrf;
use super::super::{form, Session};
use crate::admin_cli::{ops, PolicySetArgs};
use crate::http::admin::{changed, AdminApiError};
use crate::state::AppState;

use super::{done, failed, page, shown, Back, Notice};

fn policies_back(s: &Session) -> Back<'_> {
    Back {
        session: s,
        path: "/admin/policies",
        title: "Routing policies",
    }
}

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
                    label title="Start the request in the cloud too when the edge has not answered by its predicted time plus this margin; none turns it off" {
                        "Hedge margin (ms)" input type="text" inputmode="decimal" name="hedge_margin_ms" value=(optional(p.hedge_margin_ms)) placeholder="off";
                    }
                    label title="Ask the cloud instead when an edge answer's mean token log-probability is below this; none turns it off" {
                        "Cascade below log-prob" input type="text" inputmode="decimal" name="cascade_min_logprob" value=(optional(p.cascade_min_logprob)) placeholder="off";
                    }
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

/// A policy number that may be off: the number, or `none`.
fn optional(v: Option<f64>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}
