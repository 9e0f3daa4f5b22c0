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
        Some(left as f64 / rate).filter(|secs| *secs <= MAX_ETA_SECS)
    }
}

/// An ETA beyond this (100 years) comes from a rate decayed toward zero by batches that walk no rows: unknown.
const MAX_ETA_SECS: f64 = 100.0 * 365.0 * 86_400.0;

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
    /// Set when the lease is on one key range of the migration (`parallelism` > 1) rather than on its row: the
    /// writes then go to that range, fenced on the range's own owner and epoch (and the migration still running).
    pub range: Option<RangeHold>,
}

/// The hold on one key range: its number, the range's own fencing epoch, and how often it had been split when
/// last read (a checkpoint is written only if no thief cut the range meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeHold {
    /// The range's number within the migration.
    pub no: i64,
    /// Fencing token of the range's lease.
    pub epoch: i64,
    /// The range's split count when its row was last read.
    pub splits: i64,
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

    /// The parameters of the range fence (`$1` migration id, `$2` range, `$3` worker, `$4` range epoch).
    pub(crate) fn range_fence_params(&self, range: &RangeHold) -> Vec<crate::store::SqlParam> {
        use crate::store::SqlParam;
        vec![
            SqlParam::Text(self.migration_id.clone()),
            SqlParam::Int(range.no),
            SqlParam::Text(self.worker_id.clone()),
            SqlParam::Int(range.epoch),
        ]
    }
}

/// One key range of a migration run with `parallelism` > 1 (a row of `background_migration_ranges`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangeRecord {
    /// Its number within the migration (ranges split off later get the next free numbers).
    pub no: i64,
    /// Its checkpoint: where its next batch starts.
    pub state: Value,
    /// The checkpoint at which the next range starts (`None`: the end of the key space).
    pub upper: Option<Value>,
    /// Every row of the range is done.
    pub done: bool,
    /// How often a thief cut it short.
    pub splits: i64,
    /// Its lease holder (kept after it is done: who finished it).
    pub worker_id: Option<String>,
    /// Its lease's epoch.
    pub lease_epoch: i64,
    /// When its lease expires unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Rows walked in it.
    pub rows_done: i64,
    /// Its estimated rows.
    pub rows_total: Option<i64>,
    /// Its holder's recent rate.
    pub rows_per_sec: Option<f64>,
    /// Its last batch size.
    pub batch_size: Option<i32>,
    /// Its last change.
    pub updated_at: DateTime<Utc>,
}

impl RangeRecord {
    /// Whether a worker holds it now: not done, with a lease that has not expired.
    pub fn is_held(&self, now: DateTime<Utc>) -> bool {
        !self.done && self.worker_id.is_some() && self.lease_expires_at.is_some_and(|t| t >= now)
    }

    /// Completion in percent, if its estimate is known (100 once done).
    pub fn percent(&self) -> Option<f64> {
        if self.done {
            return Some(100.0);
        }
        let total = self.rows_total.filter(|t| *t > 0)?;
        Some((self.rows_done as f64 * 100.0 / total as f64).min(99.9))
    }

    /// Rows still to walk, by its estimate (0 when unknown or passed).
    pub fn rows_left(&self) -> u64 {
        self.rows_total
            .map_or(0, |total| (total - self.rows_done).max(0) as u64)
    }
}

/// A key range to create: its starting checkpoint, where it ends, and its estimated rows.
#[derive(Debug, Clone, PartialEq)]
pub struct RangePlan {
    /// Its starting checkpoint.
    pub state: Value,
    /// The checkpoint at which the next range starts (`None`: the end).
    pub upper: Option<Value>,
    /// Its estimated rows.
    pub rows_total: Option<u64>,
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
    /// The checkpoint the batch started from: on Postgres the write is refused unless the row still holds it (or
    /// already holds `state`, when a write that landed is retried). A batch committed with `synchronous_commit` off
    /// can be lost by a server crash after the worker read its checkpoint; the next batch, run from that lost
    /// checkpoint, must not commit, or the lost batch's rows would be skipped.
    pub previous: Value,
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
    /// How long it took, to the microsecond: the batch sizer and the rest after a batch read it, and at the few
    /// milliseconds of a batch that yields to the foreground a whole millisecond is a quarter of the batch.
    pub duration: std::time::Duration,
    /// Smoothed rate after this batch.
    pub rows_per_sec: f64,
    /// Whether this was the last batch (of the migration, or of its key range).
    pub done: bool,
}

impl BatchCommit {
    /// The duration as the control table keeps it: whole milliseconds, rounded.
    pub fn duration_ms(&self) -> u64 {
        ((self.duration.as_micros() + 500) / 1000) as u64
    }
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
    /// A health check advised the operator on a server setting that costs the migration (nothing held back).
    Advised,
    /// Its key space was split into ranges for `parallelism` > 1.
    RangesPlanned,
    /// A worker claimed one of its key ranges (a takeover when the previous holder's lease had expired).
    RangeClaimed,
    /// A worker out of work split another worker's range and took its second half.
    RangeSplit,
    /// Every range is done: the migration's closing step runs (a heap-order copy's catch-up pass), then it finishes.
    RangesDone,
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
            EventKind::Advised => "advised",
            EventKind::RangesPlanned => "ranges_planned",
            EventKind::RangeClaimed => "range_claimed",
            EventKind::RangeSplit => "range_split",
            EventKind::RangesDone => "ranges_done",
        }
    }
}
