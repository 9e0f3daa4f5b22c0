//! The rows of the control tables as Rust values.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::status::Status;

/// One row of `background_migrations`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationRecord {
    /// Row id.
    pub id: String,
    /// Unique name; name order is run order.
    pub name: String,
    /// Kind or custom script.
    pub script: String,
    /// Operator-tunable parameters.
    pub args: Value,
    /// Checkpoint.
    pub state: Value,
    /// Lifecycle status.
    pub status: Status,
    /// The kind's parameters from the definition file.
    pub definition: Value,
    /// Explicit dependencies (`None`: after every earlier migration).
    pub depends_on: Option<Vec<String>>,
    /// When a worker first started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// When it failed.
    pub failed_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub failed_reason: Option<String>,
    /// Lease owner.
    pub worker_id: Option<String>,
    /// Last heartbeat of the lease owner.
    pub locked_at: Option<DateTime<Utc>>,
    /// When the lease expires unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// How many times a worker claimed it.
    pub attempts: i32,
    /// Rows walked so far.
    pub rows_done: i64,
    /// Estimated rows in all.
    pub rows_total: Option<i64>,
    /// Bytes moved so far.
    pub bytes_done: i64,
    /// Rows per batch of the last batch.
    pub batch_size: Option<i32>,
    /// Duration of the last batch.
    pub last_batch_ms: Option<i32>,
    /// Smoothed recent rate.
    pub rows_per_sec: Option<f64>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Why the migration is holding back now (a health signal past its threshold), `None` when it is not.
    pub throttled: Option<String>,
    /// Why part of this row could not be read (e.g. a number in `args` beyond what JSON readers hold, written by
    /// hand), and how to fix it; the fields it names hold marker strings in the meantime. `None` for a sound row.
    pub unreadable: Option<String>,
}

impl MigrationRecord {
    /// Completion in percent, if the total is known (capped below 100 until finished).
    pub fn percent(&self) -> Option<f64> {
        if self.status == Status::Finished {
            return Some(100.0);
        }
        let total = self.rows_total.filter(|t| *t > 0)?;
        Some((self.rows_done as f64 * 100.0 / total as f64).min(99.9))
    }

    /// Seconds left at the recent rate, if both are known.
    pub fn eta_seconds(&self) -> Option<f64> {
        if self.status != Status::Running {
            return None;
        }
        let rate = self.rows_per_sec.filter(|r| *r > 0.0)?;
        let left = (self.rows_total? - self.rows_done).max(0);
        Some(left as f64 / rate)
    }
}

/// The right to write a migration's row: owner plus an epoch that every claim increments (the fencing token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Row id.
    pub migration_id: String,
    /// Migration name (for messages and the batches table).
    pub name: String,
    /// Owner.
    pub worker_id: String,
    /// Fencing token: a write succeeds only while the row still carries this epoch.
    pub epoch: i64,
}

impl Lease {
    /// The parameters of the fence predicate (`$1` id, `$2` worker, `$3` epoch), which every worker write carries.
    pub(crate) fn fence_params(&self) -> Vec<crate::store::SqlParam> {
        use crate::store::SqlParam;
        vec![
            SqlParam::Text(self.migration_id.clone()),
            SqlParam::Text(self.worker_id.clone()),
            SqlParam::Int(self.epoch),
        ]
    }
}

/// A successful claim.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The row as claimed.
    pub record: MigrationRecord,
    /// The lease to write with.
    pub lease: Lease,
    /// The worker whose expired lease this claim took over, if any.
    pub took_over_from: Option<String>,
}

/// The checkpoint and progress of one committed batch.
#[derive(Debug, Clone)]
pub struct BatchCommit {
    /// New checkpoint.
    pub state: Value,
    /// Rows walked.
    pub rows: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// The batch size used.
    pub batch_size: u64,
    /// When the batch started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: u64,
    /// Smoothed rate after this batch.
    pub rows_per_sec: f64,
}

/// One row of the batches table.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRecord {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: i32,
    /// Rows walked.
    pub rows: i64,
    /// Bytes moved.
    pub bytes: i64,
    /// Batch size in force.
    pub batch_size: i32,
    /// Checkpoint after it.
    pub state: Value,
    /// Who ran it.
    pub worker_id: String,
}

/// One row of the events table.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// When.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: String,
    /// Who did it (a worker id, or `cli:user@host` for operators).
    pub actor: String,
    /// Details (before/after args, reasons, ...).
    pub detail: Value,
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The row was inserted from a definition.
    Registered,
    /// A worker claimed it.
    Claimed,
    /// A worker claimed it after the previous owner's lease expired.
    LeaseTakenOver,
    /// A worker gave it back (shutdown).
    Released,
    /// It finished.
    Finished,
    /// It failed.
    Failed,
    /// A batch failed transiently and will be retried.
    BatchRetried,
    /// An operator action (pause, resume, cancel, retry).
    Operator(crate::status::Action),
    /// An operator changed args.
    ArgsChanged,
    /// The batch size in force changed (operator edit or tuning).
    BatchSizeChanged,
    /// The migration started holding back on a health signal.
    Throttled,
    /// It stopped holding back.
    Unthrottled,
}

impl EventKind {
    /// The name stored in the events table.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Registered => "registered",
            EventKind::Claimed => "claimed",
            EventKind::LeaseTakenOver => "lease_taken_over",
            EventKind::Released => "released",
            EventKind::Finished => "finished",
            EventKind::Failed => "failed",
            EventKind::BatchRetried => "batch_retried",
            EventKind::Operator(action) => action.as_str(),
            EventKind::ArgsChanged => "args_changed",
            EventKind::BatchSizeChanged => "batch_size_changed",
            EventKind::Throttled => "throttled",
            EventKind::Unthrottled => "unthrottled",
        }
    }
}
