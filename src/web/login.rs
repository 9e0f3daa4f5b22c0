//! Logging in and out: the form takes a token (and a name for the events table), starts a session and sets its
//! cookie; logging out ends the session on the server. Wrong tokens are throttled process-wide.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
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

/// Wrong tokens allowed per [`WINDOW`] before the form refuses every attempt until the window ends.
const MAX_FAILURES: u32 = 5;
/// The window wrong tokens are counted in.
const WINDOW: Duration = Duration::from_secs(60);

/// Counts wrong tokens given to the login form, for the whole process: a guesser gets [`MAX_FAILURES`] tries a
/// minute, whoever they are (the Bearer API is not throttled: its callers hold the token already, and a guess
/// there is a guess at a 16+ character random secret).
#[derive(Default)]
pub struct Throttle {
    window: Mutex<Option<(Instant, u32)>>,
}

impl Throttle {
    fn window(&self) -> std::sync::MutexGuard<'_, Option<(Instant, u32)>> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(wait)` while the form is closed to further attempts.
    fn closed_for(&self) -> Option<Duration> {
        let window = self.window();
        let (started, failures) = (*window)?;
        let left = WINDOW.saturating_sub(started.elapsed());
        (failures >= MAX_FAILURES && !left.is_zero()).then_some(left)
    }

    fn failed(&self) {
        let mut window = self.window();
        match &mut *window {
            Some((started, failures)) if started.elapsed() < WINDOW => *failures += 1,
            other => *other = Some((Instant::now(), 1)),
        }
    }
}

/// Only a path inside this router, never another site: it starts with one `/`, and has no backslash, white space
/// or control character (browsers drop those, so `/\t/evil.example` would become `//evil.example`). Bytes
/// outside ASCII are percent-encoded so the `Location` header stays plain.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if next.starts_with('/')
                && !next.starts_with("//")
                && !next.contains('\\')
                && !next.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            next.bytes()
                .map(|b| {
                    if b.is_ascii() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        }
        _ => "/".into(),
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
        &safe_next(query.next.as_deref()),
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
    if let Some(wait) = state.logins.closed_for() {
        let message = format!(
            "Too many wrong tokens: logging in is closed for {} s. Bearer-token API calls still work.",
            wait.as_secs() + 1
        );
        let mut response = login_page(
            &state,
            &base,
            &next,
            Some(&message),
            StatusCode::TOO_MANY_REQUESTS,
        )
        .await?;
        if let Ok(after) = HeaderValue::from_str(&(wait.as_secs() + 1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, after);
        }
        return Ok(response);
    }
    let session = state
        .access
        .role_for_token(form.token.trim())
        .and_then(|role| {
            state
                .access
                .sessions()
                .start(role, auth::clean_name(&form.name))
        });
    let Some(session) = session else {
        state.logins.failed();
        return login_page(
            &state,
            &base,
            &next,
            Some("That token is neither the admin token nor the read token."),
            StatusCode::UNAUTHORIZED,
        )
        .await;
    };
    let mut response = Redirect::to(&href(&base, &next)).into_response();
    let cookie = auth::set_cookie(Some(&session), state.access.sessions().lifetime());
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// `POST /logout`: ends the session on the server (the cookie stops working even where a copy survives).
pub async fn logout(State(state): State<Shared>, Base(base): Base, headers: HeaderMap) -> Response {
    if let Some(id) = auth::session_cookie(&headers) {
        state.access.sessions().end(id);
    }
    let mut response = Redirect::to(&href(&base, "/")).into_response();
    let cookie = auth::set_cookie(None, state.access.sessions().lifetime());
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_a_path_on_this_site() {
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil",
            "https://evil",
            "/ /x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(Some("/migrations/a?x=1")), "/migrations/a?x=1");
        assert_eq!(safe_next(Some("/é")), "/%C3%A9");
    }
}
