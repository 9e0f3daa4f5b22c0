//! Access control: the admin token (every mutation), the optional read token (pages and read API), login
//! sessions (`session`), and the CSRF proof that a cookie-authenticated change must carry.
//!
//! API clients send `Authorization: Bearer <token>` (scheme in any case); a header of another scheme (a proxy's
//! Basic credentials) is ignored rather than refused. The login form checks a token once and sets a `Secure`,
//! `HttpOnly`, `SameSite=Strict` cookie holding a random session id; a change made with that cookie needs the
//! session's CSRF token, in the form (`csrf` field) or in the `X-CSRF-Token` header (JSON API).

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};

use super::error::ApiError;
use super::session::{Session, Sessions};

/// Name of the session cookie.
pub const COOKIE: &str = "bgmigrate_session";

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read pages and the read API.
    Read,
    /// Everything, including mutations.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// Who a request comes from, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// What it may do.
    pub role: Role,
    /// How it is recorded in the events table: `api:token` or `web:NAME`.
    pub actor: String,
    /// Whether it came with the session cookie (and so must show a CSRF token for changes).
    pub by_cookie: bool,
    /// The session it came with, if any.
    pub session: Option<Session>,
}

/// The configured tokens and the live sessions.
pub struct Access {
    admin: Option<String>,
    read: Option<String>,
    sessions: Sessions,
}

fn non_empty(token: Option<String>) -> Option<String> {
    token.filter(|t| !t.trim().is_empty())
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Tokens shorter than this are accepted by the library with a warning, and refused by `bgmigrate web`.
pub const MIN_TOKEN_LEN: usize = 16;

/// Keeps a login name printable and short, so it can go into a cookie and the events table as is.
pub fn clean_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "operator".into()
    } else {
        cleaned
    }
}

impl Access {
    /// Tokens as configured (empty counts as unset), no sessions yet.
    pub fn new(admin: Option<String>, read: Option<String>) -> Self {
        let mut access = Self {
            admin: None,
            read: None,
            sessions: Sessions::new(super::session::DEFAULT_LIFETIME),
        };
        access.set_admin(admin);
        access.set_read(read);
        access
    }

    /// Sets the admin token (empty counts as unset).
    pub fn set_admin(&mut self, token: Option<String>) {
        self.admin = non_empty(token);
        warn_if_short("admin", self.admin.as_deref());
    }

    /// Sets the read token (empty counts as unset).
    pub fn set_read(&mut self, token: Option<String>) {
        self.read = non_empty(token);
        warn_if_short("read", self.read.as_deref());
    }

    /// Sets how long a login session lasts (existing sessions are dropped).
    pub fn set_session_lifetime(&mut self, lifetime: Duration) {
        self.sessions = Sessions::new(lifetime);
    }

    /// The admin token, if set.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin.as_deref()
    }

    /// The read token, if set.
    pub fn read_token(&self) -> Option<&str> {
        self.read.as_deref()
    }

    /// The live sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The role a token grants, if any.
    pub fn role_for_token(&self, token: &str) -> Option<Role> {
        if self
            .admin
            .as_deref()
            .is_some_and(|admin| same(admin, token))
        {
            Some(Role::Admin)
        } else if self.read.as_deref().is_some_and(|read| same(read, token)) {
            Some(Role::Read)
        } else {
            None
        }
    }

    /// The session a cookie value names, if it is live and its role still means something (an admin session is
    /// worth nothing once the admin token is unset).
    fn session(&self, id: &str) -> Option<Session> {
        let session = self.sessions.get(id)?;
        let still_valid = match session.role {
            Role::Admin => self.admin.is_some(),
            Role::Read => self.admin.is_some() || self.read.is_some(),
        };
        still_valid.then_some(session)
    }

    /// Whether `token` is the CSRF token of the caller's session.
    pub fn csrf_ok(caller: &Caller, token: &str) -> bool {
        caller
            .session
            .as_ref()
            .is_some_and(|session| same(&session.csrf, token))
    }

    /// The caller, from a Bearer token or the session cookie; `None` for an anonymous request.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
        if let Some(token) = bearer_token(headers)? {
            let role = self.role_for_token(token).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "the Bearer token is neither BGMIGRATE_ADMIN_TOKEN nor BGMIGRATE_READ_TOKEN",
                )
            })?;
            return Ok(Some(Caller {
                role,
                actor: format!("api:{}-token", role.as_str()),
                by_cookie: false,
                session: None,
            }));
        }
        Ok(session_cookie(headers)
            .and_then(|id| self.session(id))
            .map(|session| Caller {
                role: session.role,
                actor: format!("web:{}", session.name),
                by_cookie: true,
                session: Some(session),
            }))
    }

    /// Lets the request read when no read token is set, or when it carries either token or a session.
    pub fn require_read(&self, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
        let caller = self.caller(headers)?;
        if self.read.is_some() && caller.is_none() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "reading needs a token: send `Authorization: Bearer <BGMIGRATE_READ_TOKEN>` or log in at /login",
            ));
        }
        Ok(caller)
    }

    /// Lets the request mutate only with the admin token (or an admin session).
    pub fn require_admin(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.admin.is_none() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "changes are disabled because no admin token is configured: set BGMIGRATE_ADMIN_TOKEN to a \
                 secret in the web process's environment, restart it, and send `Authorization: Bearer <secret>` \
                 (or log in with it at /login)",
            ));
        }
        match self.caller(headers)? {
            Some(caller) if caller.role == Role::Admin => Ok(caller),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the read token cannot change anything: use BGMIGRATE_ADMIN_TOKEN",
            )),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this change needs the admin token: send `Authorization: Bearer <BGMIGRATE_ADMIN_TOKEN>` or log \
                 in at /login",
            )),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any case); `None` without one or for another
/// scheme (e.g. Basic credentials a proxy adds), which counts as no token at all.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let Ok(value) = value.to_str() else {
        return Ok(None);
    };
    let value = value.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the Authorization header must be `Bearer <token>`; the token is missing",
        ));
    }
    Ok(Some(token))
}

fn warn_if_short(which: &str, token: Option<&str>) {
    if let Some(token) = token
        && token.chars().count() < MIN_TOKEN_LEN
    {
        tracing::warn!(
            "the {which} token has {} characters, fewer than {MIN_TOKEN_LEN}: use a long random one, e.g. \
             `openssl rand -hex 24`",
            token.chars().count()
        );
    }
}

/// The session cookie's value, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// `Set-Cookie` for a session (`value`) or for logging out (`None`).
pub fn set_cookie(value: Option<&str>, lifetime: Duration) -> String {
    match value {
        Some(value) => format!(
            "{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
            lifetime.as_secs().max(1)
        ),
        None => format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_live_session_grants_its_role_and_an_unknown_id_grants_nothing() {
        let access = Access::new(Some("adm".into()), None);
        let id = access
            .sessions()
            .start(Role::Admin, clean_name("alice"))
            .unwrap();
        let cookie = |id: &str| with(header::COOKIE, &format!("other=1; {COOKIE}={id}"));
        let caller = access.caller(&cookie(&id)).unwrap().unwrap();
        assert_eq!(
            (caller.role, caller.actor.as_str()),
            (Role::Admin, "web:alice")
        );
        assert_eq!(access.caller(&cookie("admin.mallory")).unwrap(), None);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_other_schemes_are_ignored() {
        let access = Access::new(Some("adm".into()), None);
        for value in ["Bearer adm", "bearer adm", "BEARER  adm "] {
            let caller = access.caller(&with(header::AUTHORIZATION, value)).unwrap();
            assert_eq!(caller.map(|c| c.role), Some(Role::Admin), "{value}");
        }
        let basic = with(header::AUTHORIZATION, "Basic dXNlcjpwYXNz");
        assert_eq!(access.caller(&basic).unwrap(), None);
        assert!(
            access
                .caller(&with(header::AUTHORIZATION, "Bearer"))
                .is_err()
        );
    }
}
