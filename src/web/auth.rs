//! Access control: the admin token (every mutation), the optional read token (pages and read API), login
//! sessions in a signed cookie, and CSRF tokens for the HTML forms.
//!
//! API clients send `Authorization: Bearer <token>`. The login form checks a token once and sets a `Secure`,
//! `HttpOnly`, `SameSite=Strict` cookie signed with a key made at process start (so a restart logs everyone out);
//! forms carry a CSRF token derived from that cookie.

use axum::http::{HeaderMap, StatusCode, header};
use hmac::{KeyInit, Mac};
use sha2::Sha256;

use super::error::ApiError;

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
    /// Whether it came with the session cookie (and so must show a CSRF token on forms).
    pub by_cookie: bool,
}

/// The configured tokens and the session signing key.
pub struct Access {
    admin: Option<String>,
    read: Option<String>,
    key: [u8; 32],
}

fn non_empty(token: Option<String>) -> Option<String> {
    token.filter(|t| !t.trim().is_empty())
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

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
    /// Tokens as configured (empty counts as unset) and a fresh signing key.
    pub fn new(admin: Option<String>, read: Option<String>) -> Self {
        let mut key = [0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            // The key stays all zero, which `usable_key` refuses: logins fail rather than use a guessable key.
            tracing::error!(
                "no randomness for the session key; the login form will refuse to log in"
            );
        }
        Self {
            admin: non_empty(admin),
            read: non_empty(read),
            key,
        }
    }

    /// The admin token, if set.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin.as_deref()
    }

    /// The read token, if set.
    pub fn read_token(&self) -> Option<&str> {
        self.read.as_deref()
    }

    fn usable_key(&self) -> bool {
        self.key != [0u8; 32]
    }

    fn sign(&self, what: &str) -> String {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(what.as_bytes());
        hex::encode(mac.finalize().into_bytes())
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

    /// The cookie value for a logged-in `name` with `role`: `role.name.signature`.
    pub fn session_value(&self, role: Role, name: &str) -> Option<String> {
        if !self.usable_key() {
            return None;
        }
        let body = format!("{}.{}", role.as_str(), clean_name(name));
        Some(format!("{body}.{}", self.sign(&body)))
    }

    /// The role and name a cookie value carries, if its signature holds.
    fn session_role(&self, value: &str) -> Option<(Role, String)> {
        let (body, signature) = value.rsplit_once('.')?;
        if !self.usable_key() || !same(&self.sign(body), signature) {
            return None;
        }
        let (role, name) = body.split_once('.')?;
        let role = match role {
            "admin" => Role::Admin,
            "read" => Role::Read,
            _ => return None,
        };
        // An admin session is worth nothing once the admin token is unset.
        let still_valid = match role {
            Role::Admin => self.admin.is_some(),
            Role::Read => self.admin.is_some() || self.read.is_some(),
        };
        still_valid.then(|| (role, name.to_owned()))
    }

    /// The CSRF token that forms of this session must carry.
    pub fn csrf_for(&self, session: &str) -> String {
        self.sign(&format!("csrf:{session}"))
    }

    /// Whether `token` is the CSRF token of the request's session.
    pub fn csrf_ok(&self, headers: &HeaderMap, token: &str) -> bool {
        session_cookie(headers).is_some_and(|session| same(&self.csrf_for(session), token))
    }

    /// The caller, from a Bearer token or the session cookie; `None` for an anonymous request.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "the Authorization header must be `Bearer <token>`",
                    )
                })?;
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
            }));
        }
        Ok(session_cookie(headers)
            .and_then(|value| self.session_role(value))
            .map(|(role, name)| Caller {
                role,
                actor: format!("web:{name}"),
                by_cookie: true,
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
pub fn set_cookie(value: Option<&str>) -> String {
    match value {
        Some(value) => {
            format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=43200")
        }
        None => format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={value}")).unwrap(),
        );
        headers
    }

    #[test]
    fn a_signed_session_grants_its_role_and_a_tampered_one_grants_nothing() {
        let access = Access::new(Some("adm".into()), None);
        let value = access.session_value(Role::Admin, "alice").unwrap();
        let caller = access.caller(&with_cookie(&value)).unwrap().unwrap();
        assert_eq!(
            (caller.role, caller.actor.as_str()),
            (Role::Admin, "web:alice")
        );
        let forged = value.replacen("admin.alice", "admin.mallory", 1);
        assert_eq!(access.caller(&with_cookie(&forged)).unwrap(), None);
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let access = Access::new(Some("adm".into()), None);
        let one = access.session_value(Role::Admin, "a").unwrap();
        let two = access.session_value(Role::Admin, "b").unwrap();
        assert!(access.csrf_ok(&with_cookie(&one), &access.csrf_for(&one)));
        assert!(!access.csrf_ok(&with_cookie(&one), &access.csrf_for(&two)));
    }
}
