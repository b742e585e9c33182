//! The admin dashboard at `/admin`: server-rendered HTML (`maud`, which
//! escapes every interpolated value), one stylesheet and one small script
//! embedded in the binary, charts drawn as inline SVG on the server. No
//! build step, no third-party asset, nothing loaded from elsewhere (the
//! Content-Security-Policy allows only this origin, and no inline script
//! or style).
//!
//! # Sessions and CSRF
//!
//! The login form takes an admin token and opens a session stored in the
//! database (`admin_sessions`), so every gateway of a fleet serves it and
//! revoking the token ends it. The cookie is `HttpOnly`, `SameSite=Strict`,
//! scoped to `/admin`, and `Secure` when the request came over HTTPS (as
//! `X-Forwarded-Proto` says behind a TLS-terminating proxy). Every
//! state-changing request is a `POST` that must carry the session's CSRF
//! token as a form field and, when the browser sends them, an `Origin`
//! matching the `Host` and a same-origin `Sec-Fetch-Site`.
//!
//! Pages and actions are one table ([`protected`]); the router is built
//! from it and the tests enumerate it, so no page can be added without the
//! session check.

mod charts;
mod fleet;
mod format;
mod insight;
mod layout;
mod settings;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use maud::{html, Markup};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{check_token, AdminApiError};
use crate::auth::Peer;
use crate::keys;
use crate::limits::ceil_secs;
use crate::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "gw_admin_session";
/// How long a session lasts (12 hours).
const SESSION_MS: i64 = 12 * 3600 * 1000;
/// Largest form body read.
const MAX_FORM: usize = 64 << 10;

const CSS: &str = include_str!("static/admin.css");
const JS: &str = include_str!("static/admin.js");
const ICON: &str = include_str!("static/favicon.svg");

/// The logged-in session of a request (inserted by [`require_session`]).
#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
}

/// Every page and action that needs a session: method, path, handler.
fn protected() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/admin", get(home)),
        (Method::POST, "/admin/logout", post(logout)),
        (Method::GET, "/admin/fleet", get(fleet::page)),
        (Method::GET, "/admin/decisions", get(insight::decisions)),
        (Method::GET, "/admin/savings", get(insight::savings)),
        (Method::GET, "/admin/whatif", get(insight::whatif)),
        (Method::GET, "/admin/keys", get(settings::keys)),
        (
            Method::POST,
            "/admin/tenants",
            post(settings::create_tenant),
        ),
        (Method::POST, "/admin/keys", post(settings::create_key)),
        (
            Method::POST,
            "/admin/keys/{id}/revoke",
            post(settings::revoke_key),
        ),
        (
            Method::POST,
            "/admin/keys/{id}/limits",
            post(settings::key_limits),
        ),
        (Method::GET, "/admin/backends", get(settings::backends)),
        (Method::POST, "/admin/backends", post(settings::add_backend)),
        (
            Method::POST,
            "/admin/backends/{name}/enable",
            post(settings::enable_backend),
        ),
        (
            Method::POST,
            "/admin/backends/{name}/disable",
            post(settings::disable_backend),
        ),
        (
            Method::POST,
            "/admin/backends/{name}/remove",
            post(settings::remove_backend),
        ),
        (Method::POST, "/admin/aliases", post(settings::set_alias)),
        (
            Method::POST,
            "/admin/aliases/{name}/remove",
            post(settings::remove_alias),
        ),
        (Method::GET, "/admin/policies", get(settings::policies)),
        (
            Method::POST,
            "/admin/policies/{tenant}",
            post(settings::set_policy),
        ),
        (Method::GET, "/admin/privacy", get(settings::privacy)),
        (Method::POST, "/admin/privacy", post(settings::add_rule)),
        (
            Method::POST,
            "/admin/privacy/{id}/remove",
            post(settings::remove_rule),
        ),
    ]
}

/// The method and path of every page and action behind the login, for
/// tests that prove each refuses a request without a session.
#[must_use]
pub fn protected_routes() -> Vec<(Method, &'static str)> {
    protected().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The dashboard's routes: the login page and assets are open, the rest
/// is behind [`require_session`].
pub fn router(state: &AppState) -> Router<AppState> {
    let pages = protected()
        .into_iter()
        .fold(Router::new(), |r, (_, path, handler)| {
            r.route(path, handler)
        })
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/static/admin.css", get(css))
        .route("/admin/static/admin.js", get(js))
        .route("/admin/static/favicon.svg", get(icon))
        .merge(pages)
        .layer(middleware::map_response(security_headers))
}

/// Headers on every dashboard answer: only this origin's assets, no
/// framing, no caching (pages show secrets once and live figures).
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        // `no-referrer` would make browsers send `Origin: null` on this
        // origin's own form posts, which the CSRF check refuses.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

async fn icon() -> Response {
    asset(ICON, "image/svg+xml")
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Why a dashboard request is refused.
enum Refusal {
    /// No valid session: log in (a page) or 401 (an action).
    NoSession,
    /// A state change without this session's CSRF token or from another
    /// origin: 403.
    Forgery,
    /// The store failed (503 or 500), or was not asked: the peer has
    /// guessed too often (429).
    Store(AdminApiError),
}

impl Refusal {
    fn into_response(self, method: &Method) -> Response {
        match self {
            Refusal::NoSession if method == Method::GET => {
                Redirect::to("/admin/login").into_response()
            }
            Refusal::NoSession => AdminApiError::Unauthorized.into_response(),
            Refusal::Forgery => (
                StatusCode::FORBIDDEN,
                axum::Json(wire::ErrorBody::new(
                    "The form is stale or came from another site; reload the page.",
                    "permission_error",
                    None,
                    "csrf_check_failed",
                )),
            )
                .into_response(),
            Refusal::Store(e) => e.into_response(),
        }
    }
}

/// Lets a request through only with a live session; a `POST` must also
/// come from this origin (the CSRF token itself is checked where the form
/// is read, [`form`]).
async fn require_session(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let peer = request.extensions().get::<Peer>().copied();
    match session(&app, request.headers(), peer).await {
        Ok(s) => {
            if method == Method::POST && !same_origin(request.headers()) {
                return Refusal::Forgery.into_response(&method);
            }
            request.extensions_mut().insert(s);
            next.run(request).await
        }
        Err(r) => r.into_response(&method),
    }
}

/// The live session of the request's cookie. A cookie not of a session's
/// shape is none, without a store query; one that is but names no live
/// session counts as a guess of `peer`'s ([`crate::auth::Guesses`]), and a
/// peer past its guesses gets no query at all until its minute is over.
async fn session(
    app: &AppState,
    headers: &HeaderMap,
    peer: Option<Peer>,
) -> Result<Session, Refusal> {
    let cookie = cookie_value(headers)
        .filter(|c| keys::well_formed(c, keys::KEY_PREFIX))
        .ok_or(Refusal::NoSession)?;
    let guesses = &app.keys.guesses;
    guesses
        .check(peer)
        .map_err(|wait| Refusal::Store(AdminApiError::Guessing(ceil_secs(wait))))?;
    let found = app
        .store
        .admin_session(&keys::hash(cookie))
        .await
        .map_err(|e| Refusal::Store(e.into()))?;
    let Some(found) = found else {
        guesses.missed(peer);
        return Err(Refusal::NoSession);
    };
    Ok(Session { csrf: found.csrf })
}

/// A browser's `Origin` (sent on every cross-site POST) must name this
/// host, and `Sec-Fetch-Site`, where sent, must not say cross-site.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Compares by digest, in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let a: [u8; 32] = Sha256::digest(a.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(b.as_bytes()).into();
    a.iter().zip(&b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Form fields that are always text, even when they look like numbers.
const TEXT_FIELDS: &[&str] = &[
    "name",
    "url",
    "api_key_env",
    "tenant",
    "pattern",
    "zone",
    "kind",
    "class",
    "default_class",
];
/// Form fields that hold a list (comma- or space-separated).
const LIST_FIELDS: &[&str] = &["models", "scopes"];

/// One form value as JSON: lists split, checkboxes and `true`/`false`
/// selects as booleans, numbers as numbers, the rest as text. The result
/// is parsed into the same structs the admin API and CLI take.
fn json_value(key: &str, value: &str) -> serde_json::Value {
    use serde_json::Value;
    let value = value.trim();
    if LIST_FIELDS.contains(&key) {
        return Value::Array(
            value
                .split([',', ' ', '\n'])
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        );
    }
    if TEXT_FIELDS.contains(&key) {
        return Value::String(value.to_owned());
    }
    match value {
        "on" | "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(n) = value.parse::<u64>() {
        return Value::from(n);
    }
    match value.parse::<f64>() {
        Ok(f) if f.is_finite() => Value::from(f),
        _ => Value::String(value.to_owned()),
    }
}

/// A form's raw bytes, at most [`MAX_FORM`] of them.
async fn read_form(app: &AppState, body: Body) -> Result<Bytes, AdminApiError> {
    Ok(crate::http::body::read(body, MAX_FORM, app.config.body_read_timeout()).await?)
}

/// Reads a URL-encoded form, checks its `csrf` field against the session,
/// and parses the rest into `T`. Empty fields count as absent.
async fn form<T: DeserializeOwned>(
    app: &AppState,
    session: &Session,
    body: Body,
) -> Result<T, Response> {
    let bytes = read_form(app, body)
        .await
        .map_err(IntoResponse::into_response)?;
    let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes) else {
        return Err(AdminApiError::bad_body("The form could not be read.").into_response());
    };
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    if !csrf.is_some_and(|c| same_secret(c, &session.csrf)) {
        return Err(Refusal::Forgery.into_response(&Method::POST));
    }
    let fields: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .filter(|(k, v)| k != "csrf" && !v.trim().is_empty())
        .map(|(k, v)| (k.clone(), json_value(k, v)))
        .collect();
    serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| {
        AdminApiError::bad_body(format!("The form is not valid: {e}.")).into_response()
    })
}

async fn home() -> Redirect {
    Redirect::to("/admin/fleet")
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

async fn login_page(
    State(app): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    if session(&app, &headers, peer.map(|p| p.0)).await.is_ok() {
        return Redirect::to("/admin/fleet").into_response();
    }
    layout::bare("Sign in", &login_form(None)).into_response()
}

fn login_form(problem: Option<&str>) -> Markup {
    html! {
        main.login {
            form.card method="post" action="/admin/login" {
                div.brand { span.logo { "◆" } " Cloud-edge gateway" }
                h1 { "Operator sign-in" }
                p.muted { "Use an admin token from " code { "gateway admin-token create" } "." }
                @if let Some(p) = problem { p.error role="alert" { (p) } }
                label for="token" { "Admin token" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button.primary type="submit" { "Sign in" }
            }
        }
    }
}

/// Opens a session for a valid admin token. The login form is the one
/// POST without a session; it must still come from this origin.
async fn login(
    State(app): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !same_origin(&headers) {
        return Refusal::Forgery.into_response(&Method::POST);
    }
    let bytes = match read_form(&app, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let Ok(Login { token }) = serde_urlencoded::from_bytes::<Login>(&bytes) else {
        return refused_login();
    };
    let admin = match check_token(&app, token.trim(), peer.map(|p| p.0)).await {
        Ok(t) => t,
        Err(AdminApiError::Unauthorized) => {
            metrics::counter!("gateway_admin_refused_total").increment(1);
            return refused_login();
        }
        Err(AdminApiError::Guessing(secs)) => {
            metrics::counter!("gateway_admin_refused_total").increment(1);
            return guessing_login(secs);
        }
        Err(e) => return e.into_response(),
    };
    let created = match app.store.create_admin_session(&admin.id, SESSION_MS).await {
        Ok(c) => c,
        Err(e) => return AdminApiError::from(e).into_response(),
    };
    tracing::info!(admin = %admin.name, "dashboard sign-in");
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{COOKIE}={}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{}",
        created.cookie.expose_secret(),
        SESSION_MS / 1000,
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/admin/fleet").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The sign-in form again, for a peer that has guessed too often.
fn guessing_login(secs: u64) -> Response {
    let problem = format!("Too many unknown tokens from this address; try again in {secs} s.");
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, HeaderValue::from(secs))],
        layout::bare("Sign in", &login_form(Some(&problem))),
    )
        .into_response()
}

fn refused_login() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        layout::bare(
            "Sign in",
            &login_form(Some("That is not a valid admin token.")),
        ),
    )
        .into_response()
}

async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
    axum::Extension(s): axum::Extension<Session>,
    body: Body,
) -> Response {
    if let Err(r) = form::<std::collections::HashMap<String, String>>(&app, &s, body).await {
        return r;
    }
    if let Some(cookie) = cookie_value(&headers) {
        if let Err(e) = app.store.delete_admin_session(&keys::hash(cookie)).await {
            return AdminApiError::from(e).into_response();
        }
    }
    let mut response = Redirect::to("/admin/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "gw_admin_session=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(same_origin(&h(&[("host", "gw:8080")])));
        assert!(same_origin(&h(&[
            ("host", "gw:8080"),
            ("origin", "http://gw:8080")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "gw:8080"),
            ("origin", "http://evil:8080")
        ])));
        assert!(!same_origin(&h(&[("host", "gw:8080"), ("origin", "null")])));
        assert!(!same_origin(&h(&[
            ("host", "gw:8080"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(same_origin(&h(&[
            ("host", "gw:8080"),
            ("sec-fetch-site", "same-origin")
        ])));
    }

    #[test]
    fn form_values_become_typed_json() {
        use serde_json::json;
        assert_eq!(json_value("models", "a=b, c"), json!(["a=b", "c"]));
        assert_eq!(json_value("name", "42"), json!("42"));
        assert_eq!(json_value("rpm", "42"), json!(42));
        assert_eq!(json_value("budget", "2.5"), json!(2.5));
        assert_eq!(json_value("force_zone", "on"), json!(true));
        assert_eq!(json_value("allow_cloud", "false"), json!(false));
        assert_eq!(json_value("w_cost", "NaN"), json!("NaN"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut m = HeaderMap::new();
        m.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; gw_admin_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&m), Some("abc"));
        assert_eq!(cookie_value(&HeaderMap::new()), None);
    }
}
