//! The HTML handlers: list, detail, action confirmation and the args form (login lives in `login`). Forms work without
//! JavaScript; every change goes through the same [`ControlStore`](crate::ControlStore) calls as the API.

use axum::Form;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::api::parse_action;
use super::auth::{self, Caller, Role};
use super::detail::{self, Detail, Notice, label};
use super::error::ApiError;
use super::forms::ArgsForm;
use super::input::check_name;
use super::layout::{Base, Frame, encode, encode_path, page};
use super::{Shared, list, metrics};
use crate::control::{ControlError, EventKind};
use crate::status::Action;

/// Events shown on the detail page.
const EVENTS: i64 = 50;
/// Batches charted on the detail page.
const BATCHES: i64 = 200;

/// An error rendered as a small HTML page.
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(err: ApiError) -> Self {
        PageError(err)
    }
}

impl From<ControlError> for PageError {
    fn from(err: ControlError) -> Self {
        PageError(err.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = html! {
            (maud::DOCTYPE)
            html lang="en" { head { meta charset="utf-8"; title { "Error · bgmigrate" } }
                body style="font-family:sans-serif;margin:2em" {
                    h1 { (self.0.status.as_u16()) " " (self.0.status.canonical_reason().unwrap_or("")) }
                    p.notice.err role="alert" { (self.0.message) }
                    p { a href="javascript:history.back()" { "Back" } }
                }
            }
        };
        (self.0.status, Html(body.into_string())).into_response()
    }
}

/// What a page handler returns.
pub type PageResult = Result<Response, PageError>;

/// Lets a reader in, or sends an anonymous one to the login form when a read token is required.
fn reader(
    state: &Shared,
    headers: &HeaderMap,
    base: &str,
    back: &str,
) -> Result<Option<Caller>, Box<Response>> {
    match state.access.require_read(headers) {
        Ok(caller) => Ok(caller),
        Err(err) if err.status == StatusCode::UNAUTHORIZED => Err(Box::new(
            Redirect::to(&format!("{base}/login?next={}", encode_path(back))).into_response(),
        )),
        Err(err) => Err(Box::new(PageError(err).into_response())),
    }
}

/// An admin for a form: the admin token or an admin session whose form carries its CSRF token.
fn admin_for_form(state: &Shared, headers: &HeaderMap, csrf: &str) -> Result<Caller, PageError> {
    let caller = state.access.require_admin(headers)?;
    if caller.by_cookie && !auth::Access::csrf_ok(&caller, csrf) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the form's CSRF token does not match your session; reload the page and try again",
        )
        .into());
    }
    Ok(caller)
}

/// The CSRF token to put in forms, for an admin session.
pub fn csrf_for(caller: Option<&Caller>) -> Option<String> {
    let caller = caller?;
    if caller.role != Role::Admin {
        return None;
    }
    Some(
        caller
            .session
            .as_ref()
            .map(|session| session.csrf.clone())
            .unwrap_or_default(),
    )
}

/// A page with the frame around `content`.
pub async fn render(
    state: &Shared,
    base: &str,
    caller: Option<&Caller>,
    title: &str,
    live: bool,
    content: Markup,
) -> Result<Markup, PageError> {
    let snapshot = state.snapshot().await?;
    let frame = Frame {
        title,
        base,
        indicator: &snapshot.indicator,
        caller,
        live,
    };
    Ok(page(state, &frame, content))
}

/// `GET /`: every migration.
pub async fn list(State(state): State<Shared>, Base(base): Base, headers: HeaderMap) -> PageResult {
    let caller = match reader(&state, &headers, &base, "/") {
        Ok(caller) => caller,
        Err(response) => return Ok(*response),
    };
    let records = state.control.list().await?;
    let stops = super::stops::of(state.migrations_dir.as_deref(), &records).await;
    let content = html! {
        h1 { "Background migrations" }
        (super::stops::notice(&base, &stops))
        (list::table(&base, &records))
        p.muted { "Updates live while this page is open. JSON: " a href={ (base) "/api/migrations" } { "/api/migrations" }
            " · " a href={ (base) "/api/openapi.json" } { "OpenAPI" } " · " a href={ (base) "/metrics" } { "metrics" }
            " · " a href={ (base) "/badge.svg" } { "badge" } }
    };
    let markup = render(
        &state,
        &base,
        caller.as_ref(),
        "Background migrations",
        true,
        content,
    )
    .await?;
    Ok(Html(markup.into_string()).into_response())
}

/// `?done=ACTION` after a redirect.
#[derive(Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

/// What the detail page shows beyond the stored migration: the editor as submitted, a notice, and the status code.
struct Shown {
    form: Option<ArgsForm>,
    notice: Option<Notice>,
    status: StatusCode,
}

async fn detail_page(
    state: &Shared,
    base: &str,
    caller: Option<&Caller>,
    name: &str,
    shown: Shown,
) -> PageResult {
    let record = state.control.get(name).await?;
    let events = state.control.events(name, EVENTS).await?;
    let advice = state.control.latest_event(name, EventKind::Advised).await?;
    let batches = state.control.batches(name, BATCHES).await?;
    let ranges = state.control.ranges(name).await?;
    let stores = state.stores.used_by(&record.definition);
    let detail = Detail {
        base,
        record: &record,
        stores: &stores,
        events: &events,
        advice: advice.as_ref(),
        batches: &batches,
        ranges: &ranges,
        form: shown
            .form
            .unwrap_or_else(|| ArgsForm::from_args(&record.args)),
        csrf: csrf_for(caller),
        admin_configured: state.access.admin_token().is_some(),
        notice: shown.notice,
    };
    let markup = render(state, base, caller, name, true, detail::content(&detail)).await?;
    Ok((shown.status, Html(markup.into_string())).into_response())
}

/// `GET /migrations/{name}`.
pub async fn detail(
    State(state): State<Shared>,
    Base(base): Base,
    Path(name): Path<String>,
    Query(query): Query<DoneQuery>,
    headers: HeaderMap,
) -> PageResult {
    check_name(&name)?;
    let caller = match reader(&state, &headers, &base, &format!("/migrations/{name}")) {
        Ok(caller) => caller,
        Err(response) => return Ok(*response),
    };
    let notice = match query.done.as_deref() {
        Some("args") => Some(Notice::Done(
            "Args saved; the worker uses them from its next batch.".into(),
        )),
        Some("args-unchanged") => Some(Notice::Done(
            "Nothing to save: the args are unchanged.".into(),
        )),
        Some(action) => match parse_action(action) {
            Ok(action) => {
                let status = state.control.get(&name).await?.status;
                Some(Notice::Done(format!(
                    "{} done; the migration is now {status}.",
                    label(action, false)
                )))
            }
            Err(_) => None,
        },
        None => None,
    };
    detail_page(
        &state,
        &base,
        caller.as_ref(),
        &name,
        Shown {
            form: None,
            notice,
            status: StatusCode::OK,
        },
    )
    .await
}

/// `GET /migrations/{name}/confirm/{action}`: asks before acting (and asks an anonymous visitor to log in first).
pub async fn confirm(
    State(state): State<Shared>,
    Base(base): Base,
    Path((name, action)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> PageResult {
    check_name(&name)?;
    let action = parse_action(&action)?;
    let from_start = action == Action::Retry && query.as_deref() == Some("from_start=true");
    let here = format!(
        "/migrations/{name}/confirm/{action}{}",
        if from_start { "?from_start=true" } else { "" }
    );
    let caller = match state.access.require_admin(&headers) {
        Ok(caller) => caller,
        Err(err) if err.status == StatusCode::UNAUTHORIZED => {
            return Ok(
                Redirect::to(&format!("{base}/login?next={}", encode_path(&here))).into_response(),
            );
        }
        Err(err) => return Err(err.into()),
    };
    let record = state.control.get(&name).await?;
    // Offer only what the status allows: a refused action gets no form to submit, just the reason.
    if let Err(refused) = record.status.apply(action) {
        return Err(ApiError::new(StatusCode::CONFLICT, refused.to_string()).into());
    }
    let consequence = match (action, from_start) {
        (Action::Retry, false) => {
            "It becomes pending and resumes from its checkpoint when a worker claims it."
        }
        (Action::Retry, true) => {
            "Its checkpoint and progress are cleared: it starts again from the beginning."
        }
        (Action::Pause, _) => {
            "The worker stops after its current batch; the checkpoint is kept until you resume."
        }
        (Action::Resume, _) => "It becomes pending and continues from its checkpoint.",
        (Action::Cancel, _) => "It stops for good, until someone retries it.",
    };
    let csrf = csrf_for(Some(&caller)).unwrap_or_default();
    let content = html! {
        h1 { (label(action, from_start)) " " code { (name) } "?" }
        p { "It is " span.badge.(record.status.as_str()) { (record.status) } " now. " (consequence) }
        form method="post" action={ (base) "/migrations/" (encode(&name)) "/action" } {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="action" value=(action.as_str());
            input type="hidden" name="from_start" value=(from_start);
            div.actions {
                button.primary.danger[action == Action::Cancel] #confirm type="submit" { "Yes, " (label(action, from_start).to_lowercase()) }
                a.button href={ (base) "/migrations/" (encode(&name)) } { "No, go back" }
            }
        }
    };
    let markup = render(&state, &base, Some(&caller), "Confirm", false, content).await?;
    Ok(Html(markup.into_string()).into_response())
}

/// The confirmation form's fields.
#[derive(Deserialize)]
pub struct ActionForm {
    action: String,
    #[serde(default)]
    from_start: bool,
    #[serde(default)]
    csrf: String,
}

/// `POST /migrations/{name}/action`: runs a confirmed action, then shows the result on the detail page.
pub async fn act(
    State(state): State<Shared>,
    Base(base): Base,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> PageResult {
    check_name(&name)?;
    let caller = admin_for_form(&state, &headers, &form.csrf)?;
    let action = parse_action(&form.action)?;
    match state
        .control
        .act(
            &name,
            action,
            form.from_start && action == Action::Retry,
            &caller.actor,
        )
        .await
    {
        Ok(_) => {
            metrics::count_action(action);
            Ok(Redirect::to(&format!(
                "{base}/migrations/{}?done={action}",
                encode(&name)
            ))
            .into_response())
        }
        Err(err) => {
            let err = ApiError::from(err);
            let notice = Notice::Refused(err.message.clone());
            detail_page(
                &state,
                &base,
                Some(&caller),
                &name,
                Shown {
                    form: None,
                    notice: Some(notice),
                    status: err.status,
                },
            )
            .await
        }
    }
}

/// `POST /migrations/{name}/args`: validates through `set_args`; an invalid value is shown next to its field.
pub async fn set_args(
    State(state): State<Shared>,
    Base(base): Base,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map_or("", |(_, v)| v.as_str());
    check_name(&name)?;
    let caller = admin_for_form(&state, &headers, csrf)?;
    let record = state.control.get(&name).await?;
    let form = ArgsForm::from_submission(&pairs);
    let patch = form.patch(&record.args);
    super::input::check_args(&patch)?;
    if patch.as_object().is_some_and(|p| p.is_empty()) {
        return Ok(Redirect::to(&format!(
            "{base}/migrations/{}?done=args-unchanged",
            encode(&name)
        ))
        .into_response());
    }
    match state.control.set_args(&name, &patch, &caller.actor).await {
        Ok(_) => Ok(
            Redirect::to(&format!("{base}/migrations/{}?done=args", encode(&name))).into_response(),
        ),
        Err(ControlError::InvalidArgs { source, .. }) => {
            let form = form.with_error(&source);
            let notice = Notice::Refused("The args were not saved: fix the marked value.".into());
            detail_page(
                &state,
                &base,
                Some(&caller),
                &name,
                Shown {
                    form: Some(form),
                    notice: Some(notice),
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                },
            )
            .await
        }
        Err(err) => Err(err.into()),
    }
}

/// Any other page address.
pub async fn not_found(uri: Uri) -> PageError {
    PageError(ApiError::not_found(format!("nothing at {}", uri.path())))
}
