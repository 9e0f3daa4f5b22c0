//! The JSON API: list, detail, status, operator actions and args, each behind the right token.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::auth::{Access, Caller};
use super::error::ApiError;
use super::input::{check_args, check_name};
use super::view::{MigrationView, RangeView, masked_event};
use super::{Shared, metrics};
use crate::control::EventKind;
use crate::status::Action;

/// Events and batches returned with one migration.
const DETAIL_EVENTS: i64 = 100;
const DETAIL_BATCHES: i64 = 200;

/// `GET /api/migrations`: every migration in run order.
pub async fn list(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Vec<MigrationView>>, ApiError> {
    state.access.require_read(&headers)?;
    let records = state.control.list().await?;
    Ok(Json(records.iter().map(MigrationView::new).collect()))
}

/// `GET /api/migrations/{name}`: the migration, the stores it uses, its recent events and batches (newest first),
/// and its latest advice (the newest `advised` event, or null).
pub async fn show(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.access.require_read(&headers)?;
    check_name(&name)?;
    let record = state.control.get(&name).await?;
    let events: Vec<_> = state
        .control
        .events(&name, DETAIL_EVENTS)
        .await?
        .iter()
        .map(masked_event)
        .collect();
    let advice = state
        .control
        .latest_event(&name, EventKind::Advised)
        .await?
        .as_ref()
        .map(masked_event);
    let batches = state.control.batches(&name, DETAIL_BATCHES).await?;
    let ranges = state.control.ranges(&name).await?;
    Ok(Json(json!({
        "migration": MigrationView::new(&record),
        "stores": state.stores.used_by(&record.definition),
        "events": events,
        "advice": advice,
        "batches": batches,
        "ranges": RangeView::all(&ranges),
    })))
}

/// The header a cookie-authenticated API change must carry, holding the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// An admin for an API change: the admin token, or an admin session that proves with [`CSRF_HEADER`] that the
/// request comes from a page of this origin (a page of another origin can neither read the token nor send a
/// custom header without a CORS preflight, which this server never grants).
fn admin_for_api(state: &Shared, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = state.access.require_admin(headers)?;
    if caller.by_cookie {
        let token = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !Access::csrf_ok(&caller, token) {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "a change made with the login cookie needs the session's CSRF token in the X-CSRF-Token \
                 header (GET /api/session gives it); scripts send `Authorization: Bearer <BGMIGRATE_ADMIN_TOKEN>` \
                 instead",
            ));
        }
    }
    Ok(caller)
}

/// `GET /api/session`: who the login cookie says you are, the CSRF token its changes need, and when it ends.
pub async fn session(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = state.access.require_read(&headers)?;
    let Some(Caller {
        role,
        actor,
        session: Some(session),
        ..
    }) = caller
    else {
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "no login session: log in at /login (API clients send a Bearer token and need no session)",
        ));
    };
    Ok(Json(json!({
        "role": if role == super::auth::Role::Admin { "admin" } else { "read" },
        "actor": actor,
        "csrf_token": if role == super::auth::Role::Admin { Some(session.csrf.as_str()) } else { None },
        "expires_in_seconds": session.remaining().as_secs(),
    })))
}

/// Parses an action name from the URL.
pub fn parse_action(text: &str) -> Result<Action, ApiError> {
    [Action::Retry, Action::Pause, Action::Resume, Action::Cancel]
        .into_iter()
        .find(|action| action.as_str() == text)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no action {text:?}: use retry, pause, resume or cancel"
            ))
        })
}

/// `from_start` from the query string: absent, `true` or `false`; allowed with retry only.
fn from_start(query: Option<&str>, action: Action) -> Result<bool, ApiError> {
    let mut from_start = false;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        if key != "from_start" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {key:?}: the only one is from_start=true|false (retry only)"
            )));
        }
        from_start = match value {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(ApiError::bad_request(format!(
                    "from_start must be true or false, got {other:?}"
                )));
            }
        };
    }
    if from_start && action != Action::Retry {
        return Err(ApiError::bad_request(format!(
            "from_start applies to retry only, not to {action}"
        )));
    }
    Ok(from_start)
}

/// `POST /api/migrations/{name}/{retry|pause|resume|cancel}` (`?from_start=true` for retry).
pub async fn act(
    State(state): State<Shared>,
    Path((name, action)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = admin_for_api(&state, &headers)?;
    check_name(&name)?;
    let action = parse_action(&action)?;
    let from_start = from_start(query.as_deref(), action)?;
    let record = state
        .control
        .act(&name, action, from_start, &caller.actor)
        .await?;
    metrics::count_action(action);
    Ok(Json(json!({
        "message": format!("{name}: {action} done; status is now {}", record.status),
        "migration": MigrationView::new(&record),
    })))
}

/// `PUT /api/migrations/{name}/args`: merges a JSON object into the args (null removes a key), validated first.
pub async fn set_args(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = admin_for_api(&state, &headers)?;
    check_name(&name)?;
    let patch: Value = serde_json::from_slice(&body).map_err(|err| {
        ApiError::bad_request(format!(
            "the body is not valid JSON ({err}); send an object like {{\"batchSize\": 2500}}"
        ))
    })?;
    check_args(&patch)?;
    let record = state.control.set_args(&name, &patch, &caller.actor).await?;
    Ok(Json(json!({
        "message": format!("{name}: args updated"),
        "migration": MigrationView::new(&record),
    })))
}

/// `GET /api/status`: the indicator.
pub async fn status(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<super::Indicator>, ApiError> {
    state.access.require_read(&headers)?;
    Ok(Json(state.snapshot().await?.indicator))
}

/// `GET /api/openapi.json`: the API's description.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// Any other `/api/` address.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no API route {method} {}; /api/openapi.json lists them",
        uri.path()
    ))
}
