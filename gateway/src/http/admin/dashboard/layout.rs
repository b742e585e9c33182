//! The page shell: navigation, header, sign-out form.

use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::Session;

/// The pages in the navigation, in order: path and label.
const NAV: &[(&str, &str)] = &[
    ("/admin/fleet", "Fleet"),
    ("/admin/decisions", "Decisions"),
    ("/admin/savings", "Savings"),
    ("/admin/whatif", "What-if"),
    ("/admin/keys", "Keys"),
    ("/admin/backends", "Backends"),
    ("/admin/policies", "Policies"),
    ("/admin/privacy", "Privacy rules"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Gateway admin" }
            link rel="icon" href="/admin/static/favicon.svg" type="image/svg+xml";
            link rel="stylesheet" href="/admin/static/admin.css";
            script src="/admin/static/admin.js" defer {}
        }
    }
}

/// A page without navigation (the sign-in form).
pub fn bare(title: &str, body: &Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" { (head(title)) body.bare { (body) } }
        }
        .into_string(),
    )
}

/// A dashboard page: `active` is its path in [`NAV`].
pub fn page(session: &Session, active: &str, title: &str, body: &Markup) -> Response {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    aside.sidebar {
                        div.brand { span.logo { "◆" } " Cloud-edge gateway" }
                        nav {
                            @for (path, label) in NAV {
                                a href=(path) class=[(*path == active).then_some("active")] { (label) }
                            }
                        }
                        form.signout method="post" action="/admin/logout" {
                            (csrf(session))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                    main.content {
                        header.pagehead { h1 { (title) } }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
    .into_response()
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A one-button form posting to `action` (enable, revoke, remove…).
pub fn action(
    session: &Session,
    action: &str,
    label: &str,
    class: &str,
    confirm: Option<&str>,
) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf(session))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A notice at the top of a page after an action.
pub fn notice(kind: &str, text: &str) -> Markup {
    html! { div class={ "notice " (kind) } role="status" { (text) } }
}

/// A headline figure.
pub fn stat(label: &str, value: &str, sub: Option<&str>) -> Markup {
    html! {
        div.stat {
            div.label { (label) }
            div.value { (value) }
            @if let Some(s) = sub { div.sub { (s) } }
        }
    }
}
