//! The key ranges of a migration run with `parallelism` > 1, on its detail page: a range bar (one segment per
//! range, as wide as its share of the rows, filled as far as it is done) and a table with each range's progress,
//! rate and worker.

use chrono::Utc;
use maud::{Markup, html};

use super::view::thousands;
use crate::control::RangeRecord;

/// The section, or nothing for a migration that runs as one stream.
pub fn section(ranges: &[RangeRecord]) -> Markup {
    if ranges.is_empty() {
        return html! {};
    }
    let now = Utc::now();
    let total: i64 = ranges.iter().map(weight).sum();
    html! {
        h2 { "Key ranges" }
        div.ranges role="img" aria-label=(format!("{} key ranges, {} done", ranges.len(), ranges.iter().filter(|r| r.done).count())) {
            @for range in ranges {
                @let state = state(range, now);
                span.seg.(state) data-range=(range.no)
                    style={ "flex-grow:" (weight(range) as f64 / total.max(1) as f64) }
                    title=(format!("range {}: {} — {}", range.no, state, range.worker_id.as_deref().unwrap_or("no worker"))) {
                    span.fill style={ "width:" (range.percent().unwrap_or(0.0)) "%" } {}
                }
            }
        }
        table.ranges-table {
            thead { tr { th { "Range" } th { "State" } th { "Progress" } th { "Rows done / total" } th { "Rate" } th { "Worker" } } }
            tbody {
                @for range in ranges {
                    tr data-range=(range.no) {
                        td.num { (range.no) }
                        td { (state(range, now)) }
                        td.num { (range.percent().map_or("–".into(), |p| format!("{p:.1}%"))) }
                        td.num { (thousands(range.rows_done)) " / " (range.rows_total.map_or("?".into(), thousands)) }
                        td.num { (range.rows_per_sec.filter(|_| range.is_held(now)).map_or("–".into(), |r| format!("{} rows/s", thousands(r as i64)))) }
                        td.time { (range.worker_id.as_deref().unwrap_or("–")) }
                    }
                }
            }
        }
    }
}

/// A range's share of the bar: its estimated rows (at least 1, so an unknown estimate still shows).
fn weight(range: &RangeRecord) -> i64 {
    range.rows_total.unwrap_or(0).max(range.rows_done).max(1)
}

fn state(range: &RangeRecord, now: chrono::DateTime<Utc>) -> &'static str {
    if range.done {
        "done"
    } else if range.is_held(now) {
        "running"
    } else {
        "waiting"
    }
}
