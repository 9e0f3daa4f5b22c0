//! The detail page of one migration: summary, actions, args editor, state, chart, batches and event history.

use maud::{Markup, html};
use serde_json::Value;

use super::chart::batch_chart;
use super::forms::ArgsForm;
use super::layout::href;
use super::list::progress;
use super::view::{MigrationView, mask_secrets, thousands, when};
use crate::control::{BatchRecord, EventRecord, MigrationRecord, RangeRecord};
use crate::status::{Action, Status};
use crate::store::{StoreUse, describe_uses};

/// Recent batches listed under the chart.
const BATCH_ROWS: usize = 10;

/// A message shown above the page after an action.
pub enum Notice {
    /// It worked.
    Done(String),
    /// It was refused.
    Refused(String),
}

/// Everything the detail page shows.
pub struct Detail<'a> {
    /// Mount prefix.
    pub base: &'a str,
    /// The migration.
    pub record: &'a MigrationRecord,
    /// The stores its definition names, as this process knows them.
    pub stores: &'a [StoreUse],
    /// Its latest events, newest first.
    pub events: &'a [EventRecord],
    /// Its newest `advised` event, shown as a standing notice until the migration finishes.
    pub advice: Option<&'a EventRecord>,
    /// Its latest batches, newest first.
    pub batches: &'a [BatchRecord],
    /// Its key ranges (`parallelism` > 1), in range order.
    pub ranges: &'a [RangeRecord],
    /// The args editor (as stored, or as submitted with errors).
    pub form: ArgsForm,
    /// The CSRF token for forms, when an admin session is looking.
    pub csrf: Option<String>,
    /// Whether an admin token is configured at all.
    pub admin_configured: bool,
    /// Result of the last action.
    pub notice: Option<Notice>,
}

/// The label of an action button.
pub fn label(action: Action, from_start: bool) -> &'static str {
    match (action, from_start) {
        (Action::Retry, true) => "Retry from start",
        (Action::Retry, false) => "Retry",
        (Action::Pause, _) => "Pause",
        (Action::Resume, _) => "Resume",
        (Action::Cancel, _) => "Cancel",
    }
}

/// The page's content.
pub fn content(detail: &Detail) -> Markup {
    let record = detail.record;
    let view = MigrationView::new(record);
    let cells = view.cells();
    html! {
        p { a href=(href(detail.base, "/")) { "← all migrations" } }
        @match &detail.notice {
            Some(Notice::Done(message)) => { p.notice.ok role="status" { (message) } }
            Some(Notice::Refused(message)) => { p.notice.err role="alert" { (message) } }
            None => {}
        }
        div data-migration=(record.name) {
            h1 { code.name { (record.name) } " " span.badge.(cells.status) data-field="status" { (cells.status) } }
            div.grid {
                div { span.k { "Script" } (record.script) }
                div { span.k { "Stores" } span data-field="stores" { (describe_uses(detail.stores)) } }
                div { span.k { "Progress" } (progress(&view)) }
                div { span.k { "Rows done / total" } span data-field="rows" { (cells.rows) } }
                div { span.k { "Rate" } span data-field="rate" { (cells.rate) } }
                div { span.k { "ETA" } span data-field="eta" { (cells.eta) } }
                div { span.k { "Batch size" } span data-field="batch" { (cells.batch) } }
                div { span.k { "Last batch" } (record.last_batch_ms.map_or("–".into(), |ms| format!("{ms} ms"))) }
                div { span.k { "Attempts" } (record.attempts) }
                div { span.k { "Started" } (when(record.started_at)) }
                div { span.k { "Finished" } (when(record.finished_at)) }
                div { span.k { "Failed" } (when(record.failed_at)) }
                div { span.k { "Worker" } span data-field="worker" { (cells.worker) } }
                div { span.k { "Lease expires" } (when(record.lease_expires_at)) }
                div { span.k { "Updated" } (when(Some(record.updated_at))) }
                div { span.k { "Runs after" } (record.depends_on.as_ref().map_or("every earlier migration".into(), |d| d.join(", "))) }
            }
            @if let Some(reason) = &record.failed_reason {
                p.notice.err { strong { "Failed reason: " } (reason) }
            }
            @if let Some(reason) = &record.throttled {
                p.notice { strong { "Holding back: " } (reason) }
            }
            @if let Some((message, at)) = standing_advice(detail) {
                p.notice.advice data-field="advice" { strong { "Advice: " } (message) " (" (when(Some(at))) ")" }
            }
            @if let Some(reason) = &record.unreadable {
                p.notice.err { strong { "This row cannot be read in full: " } (reason) }
            }
        }
        h2 { "Actions" }
        (actions(detail))
        div.two {
            div { h2 { "Args" } (args_form(detail)) }
            div { h2 { "State (checkpoint)" } pre #state { (pretty(&record.state)) } }
        }
        (super::ranges::section(detail.ranges))
        h2 { "Batches over time" }
        (batch_chart(detail.batches))
        @if !detail.batches.is_empty() {
            h2 { "Recent batches" }
            table {
                thead { tr { th { "Started" } th { "Duration" } th { "Rows" } th { "Batch size" } th { "Bytes" } th { "Worker" } th { "Cursor after" } } }
                tbody {
                    @for batch in detail.batches.iter().take(BATCH_ROWS) {
                        tr {
                            td.time { (when(Some(batch.started_at))) }
                            td.num { (batch.duration_ms) " ms" }
                            td.num { (thousands(batch.rows)) }
                            td.num { (thousands(batch.batch_size.into())) }
                            td.num { (thousands(batch.bytes)) }
                            td.time { (batch.worker_id) }
                            td { code { (batch.state) } }
                        }
                    }
                }
            }
        }
        h2 { "Event history" }
        (events(detail.events))
    }
}

/// The latest advice and when it came, while the migration may still run: advice on a server setting that costs
/// it (checkpoints forced by its WAL) holds until it is done, whatever events came after it.
fn standing_advice<'a>(detail: &Detail<'a>) -> Option<(&'a str, chrono::DateTime<chrono::Utc>)> {
    if matches!(detail.record.status, Status::Finished | Status::Cancelled) {
        return None;
    }
    let advice = detail.advice?;
    Some((advice.detail.get("advice")?.as_str()?, advice.at))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn actions(detail: &Detail) -> Markup {
    let record = detail.record;
    let allowed: Vec<(Action, bool)> = [
        (Action::Retry, false),
        (Action::Retry, true),
        (Action::Pause, false),
        (Action::Resume, false),
        (Action::Cancel, false),
    ]
    .into_iter()
    .filter(|(action, _)| record.status.apply(*action).is_ok())
    .collect();
    html! {
        @if !detail.admin_configured {
            p.muted { "Changes are disabled: no admin token is configured. Set BGMIGRATE_ADMIN_TOKEN in the web process's environment and restart it to retry, pause, resume, cancel or edit args here." }
        } @else if allowed.is_empty() {
            p.muted { "No action applies to a " (record.status) " migration." }
        } @else {
            div.actions {
                @for (action, from_start) in allowed {
                    a.button.danger[action == Action::Cancel]
                        href={ (detail.base) "/migrations/" (super::layout::encode(&record.name)) "/confirm/" (action.as_str()) @if from_start { "?from_start=true" } }
                        { (label(action, from_start)) }
                }
            }
            @if detail.csrf.is_none() { p.muted { "Actions ask for the admin token (log in) before they run." } }
        }
    }
}

fn args_form(detail: &Detail) -> Markup {
    let form = &detail.form;
    let disabled = detail.csrf.is_none();
    html! {
        form.args method="post" action={ (detail.base) "/migrations/" (super::layout::encode(&detail.record.name)) "/args" } {
            @if let Some(csrf) = &detail.csrf { input type="hidden" name="csrf" value=(csrf); }
            @if let Some(error) = &form.error { p.field-error role="alert" { (error) } }
            @for field in &form.fields {
                div.field {
                    label for={ "arg-" (field.key) } { code { (field.key) } }
                    @if field.secret {
                        input id={ "arg-" (field.key) } name={ "k." (field.key) } type="password" value=""
                            placeholder="unchanged (secret)" autocomplete="off" disabled[disabled];
                    } @else {
                        input.invalid[field.error.is_some()] id={ "arg-" (field.key) } name={ "k." (field.key) }
                            type="text" value=(field.value) placeholder="unset" disabled[disabled];
                    }
                    span.field-error data-error-for=(field.key) { (field.error.as_deref().unwrap_or("")) }
                }
            }
            div.field {
                input name="new_key" type="text" value=(form.new_key) placeholder="new key" disabled[disabled];
                input.invalid[form.new_error.is_some()] name="new_value" type="text" value=(form.new_value) placeholder="value (JSON or text)" disabled[disabled];
                span.field-error { (form.new_error.as_deref().unwrap_or("")) }
            }
            p.muted { "Values are JSON (bare words are text); empty removes a key; secret keys stay unchanged when left empty. The worker reads args before every batch." }
            @if !detail.admin_configured {
                p.muted { "Editing is disabled: no admin token is configured (BGMIGRATE_ADMIN_TOKEN)." }
            } @else if disabled {
                p.muted { a href={ (detail.base) "/login?next=" (super::layout::encode_path(&format!("/migrations/{}", detail.record.name))) } { "Log in" } " with the admin token to edit args." }
            } @else {
                button.primary type="submit" { "Save args" }
            }
        }
    }
}

fn events(events: &[EventRecord]) -> Markup {
    if events.is_empty() {
        return html! { p.muted { "No events yet." } };
    }
    html! {
        table #events {
            thead { tr { th { "When" } th { "What" } th { "Who" } th { "Before" } th { "After / detail" } } }
            tbody {
                @for event in events {
                    @let detail = mask_secrets(&event.detail);
                    @let (before, after) = before_after(&detail);
                    tr {
                        td.time { (when(Some(event.at))) }
                        td { (event.kind) }
                        td.who { code { (event.actor) } }
                        td { @if let Some(before) = before { code { (before) } } }
                        td { code { (after) } }
                    }
                }
            }
        }
    }
}

/// `before`/`after` (args edits, batch size changes) or `from`/`to` (status changes); otherwise the whole detail.
fn before_after(detail: &Value) -> (Option<String>, String) {
    for (old, new) in [("before", "after"), ("from", "to")] {
        if let (Some(before), Some(after)) = (detail.get(old), detail.get(new)) {
            return (Some(before.to_string()), after.to_string());
        }
    }
    (None, detail.to_string())
}
