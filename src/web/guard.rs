//! The checks every request passes before a handler sees it, and what every response gets on the way out:
//!
//! * the `Host` header must name this server (an IP address, `localhost`, or a configured name), so a DNS-rebinding
//!   page cannot read an open UI through a name of its own;
//! * a change (any method but GET, HEAD, OPTIONS) that is not Bearer-authenticated must come from this origin:
//!   `Sec-Fetch-Site` (when the browser sends it) is `same-origin` or `none`, and `Origin` (when sent) names the host
//!   the request went to. This is on top of the session's CSRF token, which every cookie-authenticated change needs;
//! * the request body is read whole here, at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`] (413 / 408), so a body
//!   trickled byte by byte cannot hold a handler;
//! * every response forbids framing (`X-Frame-Options: DENY`, CSP `frame-ancestors 'none'`) and sniffing;
//! * an error the framework answers by itself (405 with no body, 413/415/422 as plain text) becomes
//!   `{"error": "..."}` like every other error.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Shared;
use super::auth::bearer_token;
use super::error::ApiError;

/// The largest request body accepted (an args patch is a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The CSP every response carries: no framing, no plugins, no `<base>` tricks, forms only to this origin.
const CSP: &str = "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

/// Which `Host` names the server answers to, beyond IP addresses and `localhost`.
#[derive(Debug, Clone, Default)]
pub enum AllowedHosts {
    /// IP addresses and `localhost` only (the default).
    #[default]
    Local,
    /// Also these names (lower case; `.example.com` allows every subdomain).
    Names(Vec<String>),
    /// Any name: the check is off (a proxy in front checks it instead).
    Any,
}

impl AllowedHosts {
    /// Parses `BGMIGRATE_ALLOWED_HOSTS`: comma-separated names, `*` for any; empty for the default.
    pub fn parse(text: &str) -> Self {
        let names: Vec<String> = text
            .split(',')
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        if names.iter().any(|n| n == "*") {
            AllowedHosts::Any
        } else if names.is_empty() {
            AllowedHosts::Local
        } else {
            AllowedHosts::Names(names)
        }
    }

    /// Whether a request with this `Host` header (name and optional port) may be answered.
    pub fn allows(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        let local = name == "localhost"
            || name.parse::<IpAddr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<IpAddr>().is_ok());
        local
            || match self {
                AllowedHosts::Local => false,
                AllowedHosts::Any => true,
                AllowedHosts::Names(names) => names.iter().any(|allowed| {
                    *allowed == name || allowed.starts_with('.') && name.ends_with(allowed.as_str())
                }),
            }
    }
}

/// `host:port` → `host` (IPv6 literals keep their brackets).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Refuses a browser request that another origin made: `Sec-Fetch-Site` other than `same-origin`/`none`, or an
/// `Origin` that does not name the host the request was sent to.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |why: String| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{why}: changes through the login cookie must come from bgmigrate's own pages (scripts send \
                 `Authorization: Bearer <BGMIGRATE_ADMIN_TOKEN>` instead)"
            ),
        ))
    };
    if let Some(site) = header_str(headers, "sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return refuse(format!("the browser says this request is {site}"));
    }
    let Some(origin) = header_str(headers, header::ORIGIN) else {
        return Ok(());
    };
    let authority = origin.split_once("://").map(|(_, a)| a);
    let hosts = [
        header_str(headers, header::HOST),
        header_str(headers, "x-forwarded-host").and_then(|h| h.split(',').next().map(str::trim)),
    ];
    match authority {
        Some(authority)
            if hosts
                .into_iter()
                .flatten()
                .any(|host| host.eq_ignore_ascii_case(authority)) =>
        {
            Ok(())
        }
        _ => refuse(format!("the request comes from another origin ({origin})")),
    }
}

/// The middleware: host check, origin check for changes, body read, then the response headers and JSON errors.
pub async fn check(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let mut response = match admit(&state, request).await {
        Ok(request) => json_errors(&method, next.run(request).await).await,
        Err(err) => err.into_response(),
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

async fn admit(state: &Shared, request: Request) -> Result<Request, ApiError> {
    let (parts, body) = request.into_parts();
    if let Some(host) = header_str(&parts.headers, header::HOST)
        && !state.allowed_hosts.allows(host)
    {
        return Err(ApiError::bad_request(format!(
            "this server does not answer to the host name {:?}: add it to BGMIGRATE_ALLOWED_HOSTS (or \
             WebState::allowed_hosts) if it is yours; only IP addresses and localhost are allowed by default, \
             which keeps DNS-rebinding pages out",
            host_name(host)
        )));
    }
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && bearer_token(&parts.headers).ok().flatten().is_none() {
        same_origin(&parts.headers)?;
    }
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, to_bytes(body, MAX_BODY)).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {MAX_BODY} bytes (or could not be read)"),
            ));
        }
        Ok(Ok(bytes)) => bytes,
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Turns the framework's own error answers (no body, or plain text) into `{"error": "..."}`.
async fn json_errors(method: &Method, response: Response) -> Response {
    let status = response.status();
    let is_json_or_html = header_str(response.headers(), header::CONTENT_TYPE)
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json_or_html {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = to_bytes(body, MAX_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => match header_str(&parts.headers, header::ALLOW) {
            Some(allow) => format!("this address does not take {method}; it takes {allow}"),
            None => format!(
                "this address does not take {method}; /api/openapi.json lists what each address takes"
            ),
        },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => format!(
            "{text}; forms are sent as application/x-www-form-urlencoded, API bodies as application/json"
        ),
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned(),
        _ => text,
    };
    let mut json = ApiError::new(status, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        json.headers_mut().insert(header::ALLOW, allow.clone());
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_addresses_localhost_and_listed_names_are_answered() {
        let local = AllowedHosts::default();
        for host in ["127.0.0.1:8080", "localhost", "[::1]:80", "10.0.0.2"] {
            assert!(local.allows(host), "{host}");
        }
        assert!(!local.allows("rebind.attacker.example:8080"));
        let named = AllowedHosts::parse("ops.example.com, .internal");
        assert!(named.allows("OPS.example.com:443") && named.allows("a.internal"));
        assert!(!named.allows("example.com"));
        assert!(AllowedHosts::parse("*").allows("anything"));
    }
}
