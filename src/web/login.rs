//! Logging in and out: the form takes a token (and a name for the events table) and sets the session cookie.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::Shared;
use super::auth;
use super::layout::{Base, href};
use super::pages::{PageResult, render};

/// `?next=PATH` on the login form.
#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Only a path inside this router, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next) if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') => {
            next
        }
        _ => "/",
    }
}

async fn login_page(
    state: &Shared,
    base: &str,
    next: &str,
    error: Option<&str>,
    status: StatusCode,
) -> PageResult {
    let configured = state.access.admin_token().is_some() || state.access.read_token().is_some();
    let content = html! {
        h1 { "Log in" }
        @if !configured {
            p.notice.err { "No token is configured, so there is nothing to log in with. Set BGMIGRATE_ADMIN_TOKEN (changes) and optionally BGMIGRATE_READ_TOKEN (reading) in the web process's environment and restart it." }
        }
        @if let Some(error) = error { p.notice.err role="alert" { (error) } }
        form.login method="post" action={ (base) "/login" } {
            input type="hidden" name="next" value=(next);
            label for="token" { "Token" }
            input #token name="token" type="password" autocomplete="current-password" required;
            label for="name" { "Your name (recorded with your actions)" }
            input #name name="name" type="text" placeholder="e.g. alice";
            p { button.primary #login type="submit" { "Log in" } }
            p.muted { "BGMIGRATE_ADMIN_TOKEN allows changes; BGMIGRATE_READ_TOKEN allows reading only. The session cookie is Secure and HttpOnly: use HTTPS, or localhost." }
        }
    };
    let markup = render(state, base, None, "Log in", false, content).await?;
    Ok((status, Html(markup.into_string())).into_response())
}

/// `GET /login`.
pub async fn form(
    State(state): State<Shared>,
    Base(base): Base,
    Query(query): Query<NextQuery>,
) -> PageResult {
    login_page(
        &state,
        &base,
        safe_next(query.next.as_deref()),
        None,
        StatusCode::OK,
    )
    .await
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    name: String,
    next: Option<String>,
}

/// `POST /login`: checks the token, sets the session cookie, goes on to `next`.
pub async fn login(
    State(state): State<Shared>,
    Base(base): Base,
    Form(form): Form<LoginForm>,
) -> PageResult {
    let next = safe_next(form.next.as_deref());
    let session = state
        .access
        .role_for_token(form.token.trim())
        .and_then(|role| state.access.session_value(role, &form.name));
    let Some(session) = session else {
        return login_page(
            &state,
            &base,
            next,
            Some("That token is neither the admin token nor the read token."),
            StatusCode::UNAUTHORIZED,
        )
        .await;
    };
    let mut response = Redirect::to(&href(&base, next)).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&auth::set_cookie(Some(&session))) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// `POST /logout`.
pub async fn logout(Base(base): Base) -> Response {
    let mut response = Redirect::to(&href(&base, "/")).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&auth::set_cookie(None)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}
