//! `/metrics` in Prometheus text.
//!
//! The engine records `bgmigrate_rows_processed_total`, `bgmigrate_batch_duration_seconds` (histogram),
//! `bgmigrate_batch_size`, `bgmigrate_batch_retries_total`, `bgmigrate_lease_takeovers_total` and
//! `bgmigrate_throttled_seconds_total` through the `metrics` facade wherever it runs (a web process, or a worker
//! with `--metrics-bind`, see [`super::metrics_router`]). Every scrape also reads the control table, so a web process shows the status,
//! progress and batch size of migrations that workers in other processes run.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::Shared;
use super::error::ApiError;
use crate::status::{Action, Status};

/// Bucket bounds of the batch duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as this process's `metrics` recorder, once; `None` when the host application
/// installed another recorder first (then `/metrics` says so, and the host exports bgmigrate's metrics itself).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("bgmigrate_batch_duration_seconds".into()),
                    &DURATION_BUCKETS,
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "another metrics recorder is installed; /metrics is off");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "bgmigrate_rows_processed_total",
        "Rows walked by committed batches"
    );
    describe_histogram!(
        "bgmigrate_batch_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of committed batches"
    );
    describe_gauge!("bgmigrate_batch_size", "Rows per batch in force");
    describe_counter!(
        "bgmigrate_batch_retries_total",
        "Batches retried after a transient error"
    );
    describe_counter!(
        "bgmigrate_lease_takeovers_total",
        "Claims that took over an expired lease"
    );
    describe_counter!(
        "bgmigrate_throttled_seconds_total",
        metrics::Unit::Seconds,
        "Time migrations held back on a health signal, by reason"
    );
    describe_gauge!(
        "bgmigrate_migration_status",
        "1 for the status each migration is in, 0 for the others"
    );
    describe_gauge!("bgmigrate_migration_rows_done", "Rows walked so far");
    describe_gauge!(
        "bgmigrate_ranges",
        "Key ranges of a migration run with parallelism > 1, by state (running, waiting, done)"
    );
    describe_gauge!(
        "bgmigrate_range_rows_done",
        "Rows walked in each key range of a migration run with parallelism > 1"
    );
    describe_gauge!("bgmigrate_migration_rows_total", "Estimated rows in all");
    describe_counter!(
        "bgmigrate_operator_actions_total",
        "Operator actions taken through the web API and pages"
    );
}

/// Counts one operator action.
pub fn count_action(action: Action) {
    metrics::counter!("bgmigrate_operator_actions_total", "action" => action.as_str()).increment(1);
}

/// The key ranges of a running migration: how many are running, waiting and done, and each one's rows.
fn range_gauges(name: &str, ranges: &[crate::control::RangeRecord]) {
    let now = chrono::Utc::now();
    let mut counts = [("running", 0), ("waiting", 0), ("done", 0)];
    for range in ranges {
        let slot = if range.done {
            2
        } else if range.is_held(now) {
            0
        } else {
            1
        };
        counts[slot].1 += 1;
        metrics::gauge!("bgmigrate_range_rows_done", "migration" => name.to_owned(), "range" => range.no.to_string())
            .set(range.rows_done as f64);
    }
    for (state, count) in counts {
        metrics::gauge!("bgmigrate_ranges", "migration" => name.to_owned(), "state" => state)
            .set(f64::from(count));
    }
}

/// `GET /metrics`.
pub async fn endpoint(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    state.access.require_read(&headers)?;
    let handle = install().ok_or_else(|| {
        ApiError::not_found(
            "metrics are off: the host application installed its own metrics recorder, which exports them",
        )
    })?;
    for record in state.control.list().await? {
        let name = record.name.clone();
        for status in Status::ALL {
            let value = if status == record.status { 1.0 } else { 0.0 };
            metrics::gauge!("bgmigrate_migration_status", "migration" => name.clone(), "status" => status.as_str())
                .set(value);
        }
        metrics::gauge!("bgmigrate_migration_rows_done", "migration" => name.clone())
            .set(record.rows_done as f64);
        if let Some(total) = record.rows_total {
            metrics::gauge!("bgmigrate_migration_rows_total", "migration" => name.clone())
                .set(total as f64);
        }
        if let Some(size) = record.batch_size {
            metrics::gauge!("bgmigrate_batch_size", "migration" => name.clone())
                .set(f64::from(size));
        }
        if record.status == Status::Running {
            range_gauges(&name, &state.control.ranges(&name).await?);
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    ))
}
