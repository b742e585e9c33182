//! The pages that view and edit settings: keys (and tenants), backends
//! (and aliases), policies and privacy rules. Every change goes through
//! `admin_cli::ops`, as the admin API's and the CLI's do, and drops this
//! gateway's caches. After a change the page is shown again with a notice
//! (a new key's secret is shown in that one answer and never again).

mod backends;
mod keys;
mod policies;
mod privacy;

pub use backends::{
    add_backend, backends, disable_backend, enable_backend, remove_alias, remove_backend, set_alias,
};
pub use keys::{create_key, create_tenant, key_limits, keys, revoke_key};
pub use policies::{policies, set_policy};
pub use privacy::{add_rule, privacy, remove_rule};

use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, notice};
use super::Session;
use crate::http::admin::AdminApiError;

/// What to show above a page after an action.
pub(super) type Notice = Option<(&'static str, String)>;

/// The notice for a `?done=` redirect: fixed texts only, nothing from the
/// query is echoed.
pub(super) fn done(uri: &Uri) -> Notice {
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
pub(super) struct Back<'a> {
    pub(super) session: &'a Session,
    pub(super) path: &'static str,
    pub(super) title: &'static str,
}

/// Shows a failed change on the page it came from, with its status.
pub(super) async fn failed<F, Fut>(e: AdminApiError, back: Back<'_>, render: F) -> Response
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

pub(super) fn page(
    s: &Session,
    path: &str,
    title: &str,
    body: Result<Markup, AdminApiError>,
) -> Response {
    match body {
        Ok(b) => layout::page(s, path, title, &b),
        Err(e) => e.into_response(),
    }
}

pub(super) fn shown(notice_: &Notice) -> Markup {
    html! { @if let Some((kind, text)) = notice_ { (notice(kind, text)) } }
}

/// A form with nothing but its CSRF field.
#[derive(Deserialize, Default)]
pub struct Empty {}
