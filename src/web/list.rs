//! The list page: every migration that ever ran, with its status, progress and outcome.

use maud::{Markup, html};

use super::view::{MigrationView, when, when_short};
use crate::control::MigrationRecord;

/// The progress bar with its percentage, both filled in by live updates.
pub fn progress(view: &MigrationView) -> Markup {
    let cells = view.cells();
    html! {
        span.bar { span.fill data-field="percent" style={ "width:" (cells.percent) "%" } {} }
        " "
        span data-field="percent_text" { (cells.percent_text) }
    }
}

/// The table of all migrations.
pub fn table(base: &str, records: &[MigrationRecord]) -> Markup {
    if records.is_empty() {
        return html! {
            p.muted { "No background migrations are registered yet. `bgmigrate migrate` (or starting `bgmigrate web` or a worker) registers the definitions in migrations/background/." }
        };
    }
    html! {
        table #migrations {
            thead { tr {
                th { "Name" } th { "Script" } th { "Status" } th { "Progress" } th { "Rows done / total" }
                th { "Rate" } th { "ETA" } th { "Batch" } th { "Started (UTC)" } th { "Finished" } th { "Failed" }
                th { "Worker" }
            } }
            tbody {
                @for record in records {
                    @let view = MigrationView::new(record);
                    @let cells = view.cells();
                    tr data-migration=(record.name) {
                        td.name { a href={ (base) "/migrations/" (super::layout::encode(&record.name)) } { code { (record.name) } } }
                        td { (record.script) }
                        td { span.badge.(cells.status) data-field="status" { (cells.status) } }
                        td.nowrap { (progress(&view)) }
                        td.num data-field="rows" { (cells.rows) }
                        td.num data-field="rate" { (cells.rate) }
                        td.num data-field="eta" { (cells.eta) }
                        td.num data-field="batch" { (cells.batch) }
                        td.time title=(when(record.started_at)) { (when_short(record.started_at)) }
                        td.time title=(when(record.finished_at)) { (when_short(record.finished_at)) }
                        td.time title=(when(record.failed_at)) {
                            (when_short(record.failed_at))
                            @if let Some(reason) = &record.failed_reason { div.reason { (reason) } }
                            @if let Some(reason) = &record.throttled { div.reason.throttled { "Holding back: " (reason) } }
                            @if let Some(reason) = &record.unreadable { div.reason.err { "Unreadable: " (reason) } }
                        }
                        td.time data-field="worker" { (cells.worker) }
                    }
                }
            }
        }
    }
}
