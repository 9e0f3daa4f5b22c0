//! The contract a migration implements: check its preconditions, estimate its size, run **one** batch.
//!
//! The engine owns the loop around it (leases, args, pause, progress, retries, throttling), so a migration never
//! sleeps, never loops over the whole table and never writes the control table itself.

use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::args::{Args, DEFAULT_BATCH_SIZE};
use crate::control::{BatchCommit, ControlError, Lease, LeaseStore};
use crate::store::{SqlTx, StoreError};

/// What a batch reports back to the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    /// The checkpoint after this batch; the next batch starts from it. It must differ from the one the batch
    /// started from unless `done` is true, or the engine fails the migration (no endless loops).
    pub state: Value,
    /// True when this was the last batch.
    pub done: bool,
    /// Rows this batch walked (progress counts these against `rows_total`).
    pub rows: u64,
    /// Bytes this batch moved, where the kind knows (0 otherwise).
    pub bytes: u64,
}

/// Why a batch (or validation) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The definition does not allow this migration to run (a missing table or column, a key without a unique
    /// index, a type that cannot be mapped): found by validation, before any row changes.
    #[error("{0}")]
    Invalid(String),
    /// A batch failed in a way a retry will not cure (a value that does not fit its target, a NULL or repeated key,
    /// a cursor that did not move, unreadable args or checkpoint); fails the migration with this message.
    #[error("{0}")]
    Permanent(String),
    /// A store error; transient ones retry the batch, others fail the migration.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A condition that may clear by itself (the batch is retried with backoff).
    #[error("{0}")]
    Transient(String),
    /// The worker no longer holds the lease: another worker or an operator took over; nothing was committed.
    #[error(
        "the lease on this migration was lost (taken over, paused or cancelled); the batch was rolled back"
    )]
    LeaseLost,
}

impl MigrationError {
    /// Whether retrying the batch may help.
    pub fn is_transient(&self) -> bool {
        match self {
            MigrationError::Transient(_) => true,
            MigrationError::Store(err) => err.is_transient(),
            MigrationError::Invalid(_)
            | MigrationError::Permanent(_)
            | MigrationError::LeaseLost => false,
        }
    }
}

/// What a control-store error means to a batch: a lost lease, a store error (transient or not), or a permanent
/// failure.
impl From<ControlError> for MigrationError {
    fn from(err: ControlError) -> Self {
        match err {
            ControlError::LeaseLost(_) => MigrationError::LeaseLost,
            ControlError::Store(err) => MigrationError::Store(err),
            other => MigrationError::Permanent(other.to_string()),
        }
    }
}

/// How one batch's checkpoint is built and where it is written; the engine builds one for each batch.
pub struct Checkpointer<'a> {
    control: &'a dyn LeaseStore,
    lease: &'a Lease,
    previous_state: &'a Value,
    batch_size: u64,
    started_at: DateTime<Utc>,
    started: Instant,
    rate_after: &'a (dyn Fn(u64) -> f64 + Send + Sync),
}

impl<'a> Checkpointer<'a> {
    /// The checkpoint of a batch of up to `batch_size` rows run under `lease`, starting now from
    /// `previous_state`; `rate_after(rows)` gives the smoothed rate once the batch's rows are counted.
    pub fn new(
        control: &'a dyn LeaseStore,
        lease: &'a Lease,
        previous_state: &'a Value,
        batch_size: u64,
        rate_after: &'a (dyn Fn(u64) -> f64 + Send + Sync),
    ) -> Self {
        Self {
            control,
            lease,
            previous_state,
            batch_size,
            started_at: Utc::now(),
            started: Instant::now(),
            rate_after,
        }
    }

    /// The checkpoint for `outcome`, refusing a cursor that did not move (the original system's endless loop).
    fn commit_for(&self, outcome: &BatchOutcome) -> Result<BatchCommit, MigrationError> {
        if !outcome.done && &outcome.state == self.previous_state {
            return Err(MigrationError::Permanent(format!(
                "the cursor did not advance (still at {}); the key is not unique or the migration does not move its \
                 checkpoint — fix the definition, then retry",
                self.previous_state
            )));
        }
        Ok(BatchCommit {
            previous: self.previous_state.clone(),
            state: outcome.state.clone(),
            rows: outcome.rows,
            bytes: outcome.bytes,
            batch_size: self.batch_size,
            started_at: self.started_at,
            duration: self.started.elapsed(),
            rows_per_sec: (self.rate_after)(outcome.rows),
            done: outcome.done,
        })
    }
}

/// A batch's checkpoint, and whether it is already written.
#[derive(Debug, Clone)]
pub enum Checkpoint {
    /// Written in the batch's own transaction (its store holds the control table): exactly-once.
    Written(BatchCommit),
    /// Still to be written, after the batch's effects committed elsewhere: at-least-once, so the kind's writes are
    /// idempotent.
    Pending(BatchCommit),
}

/// One batch's inputs: where to start, how much to do, and how to commit.
pub struct Batch<'a> {
    /// The checkpoint to start from (`{}` before the first batch).
    pub state: &'a Value,
    /// The validated args, re-read before this batch.
    pub args: &'a Args,
    /// Where the batch's key range ends, for a migration run in ranges (`parallelism` > 1): the checkpoint at which
    /// the next range starts (rows up to and including its key belong to this range). `None`: the end of the key
    /// space. Only migrations that implement [`Migration::split`] get one.
    pub upper: Option<&'a Value>,
    /// Whether the engine yields to the foreground for this batch (the store's health check found other sessions
    /// busy, or blocked by our batches): a kind may then trade speed for the foreground's latency in ways only it
    /// can (a Postgres backfill has the kernel write its dirty pages as it goes, see `flushAfterKb`).
    pub yielding: bool,
    /// Whether this batch walks one range of a migration run in ranges (`parallelism` > 1): the end of its walk is
    /// then the range's, and what must follow the whole walk waits for [`Migration::ranges_done`].
    pub in_range: bool,
    checkpointer: &'a Checkpointer<'a>,
    checkpoint: Option<Checkpoint>,
    sizing_rows: Option<u64>,
}

impl<'a> Batch<'a> {
    /// Built by the engine for each batch.
    pub fn new(
        state: &'a Value,
        upper: Option<&'a Value>,
        args: &'a Args,
        checkpointer: &'a Checkpointer<'a>,
    ) -> Self {
        Self {
            state,
            args,
            upper,
            yielding: false,
            in_range: false,
            checkpointer,
            checkpoint: None,
            sizing_rows: None,
        }
    }

    /// Says that this batch did `rows` batch rows' worth of work, for a batch whose work grows with `batchSize`
    /// but which walks no rows (a heap-order backfill's sweep lists about sixteen keys per batch row and
    /// updates none): adaptive sizing then learns from it as from a batch of `rows` rows, where by default it learns only
    /// from [`BatchOutcome::rows`] — and a batch of 0 rows teaches it nothing, so such batches would keep whatever
    /// size they started with, however long they take.
    pub fn count_for_sizing(&mut self, rows: u64) {
        self.sizing_rows = Some(rows);
    }

    /// The rows adaptive sizing learns from once the batch returned `outcome`.
    pub(crate) fn sizing_rows(&self, outcome: &BatchOutcome) -> u64 {
        self.sizing_rows.unwrap_or(outcome.rows)
    }

    /// Commits the batch's transaction `tx`. When `tx`'s database also holds the control table, the checkpoint is
    /// written in the same transaction (exactly-once); otherwise the engine writes it right after the commit
    /// (at-least-once: the kind's writes must be idempotent). The one place that asks where a checkpoint goes.
    ///
    /// A transaction that carries its checkpoint commits without waiting for the disk ([`SqlTx::commit_unflushed`]):
    /// a server crash can only lose it whole, batch and checkpoint together, and the engine reads the checkpoint
    /// again before every batch, so the lost batch is simply done again (any later commit that waits for the disk,
    /// such as the next lease renewal, flushes it too). Waiting for each batch's WAL flush cost an idle
    /// 3,000,000-row backfill 4–7 % of its time. Two commits still wait: the last batch's, because the migration
    /// is marked finished on it, and one whose checkpoint is written elsewhere after it, which needs the batch on
    /// disk first.
    pub async fn commit(
        &mut self,
        mut tx: Box<dyn SqlTx>,
        outcome: &BatchOutcome,
    ) -> Result<(), MigrationError> {
        let commit = self.checkpointer.commit_for(outcome)?;
        let cp = self.checkpointer;
        let checkpoint = if tx.database() == cp.control.database() {
            cp.control
                .write_checkpoint_in(tx.as_mut(), cp.lease, &commit)
                .await?;
            if outcome.done {
                tx.commit().await?;
            } else {
                tx.commit_unflushed().await?;
            }
            Checkpoint::Written(commit)
        } else {
            tx.commit().await?;
            Checkpoint::Pending(commit)
        };
        self.checkpoint = Some(checkpoint);
        Ok(())
    }

    /// The batch's checkpoint once it returned `outcome`: what [`Batch::commit`] wrote or left to write, or, for a
    /// batch that committed nothing through it (a ClickHouse target), the checkpoint still to be written.
    pub fn into_checkpoint(self, outcome: &BatchOutcome) -> Result<Checkpoint, MigrationError> {
        match self.checkpoint {
            Some(checkpoint) => Ok(checkpoint),
            None => Ok(Checkpoint::Pending(self.checkpointer.commit_for(outcome)?)),
        }
    }
}

/// A background migration: implemented by the built-in kinds and by host applications.
#[async_trait]
pub trait Migration: Send + Sync {
    /// Checks preconditions before the first batch (tables, columns, keys); an error fails the migration with its
    /// message before any row changes.
    async fn validate(&self) -> Result<(), MigrationError>;

    /// A cheap estimate of the rows the migration will walk (`None` when unknown). Never a blocking full count.
    async fn estimate(&self) -> Result<Option<u64>, MigrationError>;

    /// Rows per batch when `args` do not set `batchSize`: [`DEFAULT_BATCH_SIZE`] unless the kind knows better (a
    /// copy into ClickHouse wants fewer, larger inserts).
    fn default_batch_size(&self) -> u64 {
        DEFAULT_BATCH_SIZE
    }

    /// The batch duration adaptive sizing aims for when `args` set no `targetBatchMs`:
    /// [`DEFAULT_TARGET_BATCH_MS`](crate::args::DEFAULT_TARGET_BATCH_MS) unless the kind knows better (a copy into
    /// ClickHouse wants fewer, larger inserts).
    fn default_target_batch_ms(&self) -> u64 {
        crate::args::DEFAULT_TARGET_BATCH_MS
    }

    /// The health signals of the stores this migration writes, read before every batch ([`crate::throttle`]);
    /// none by default. Called once per run, so a check may keep state (averages) between batches.
    fn health_checks(&self) -> Vec<std::sync::Arc<dyn crate::throttle::HealthCheck>> {
        Vec::new()
    }

    /// Cuts the key space from checkpoint `from` to `upper` (`None`: the end), about `rows` rows, into at most
    /// `parts` ranges of about equal rows, for `parallelism` > 1 and for work stealing: returns the checkpoints at
    /// which the second and later ranges start, in key order, each after `from` and before `upper`; fewer, or
    /// none, when fewer rows are left. A range then runs from its start to the next one's (see [`Batch::upper`]).
    ///
    /// The default refuses, naming the arg: a migration that cannot walk a bounded key range runs as one stream.
    async fn split(
        &self,
        from: &Value,
        upper: Option<&Value>,
        parts: u64,
        rows: Option<u64>,
    ) -> Result<Vec<Value>, MigrationError> {
        let _ = (from, upper, parts, rows);
        Err(MigrationError::Permanent(
            "args.parallelism above 1 needs a migration that can walk key ranges, and this one cannot; set \
             parallelism to 1"
                .into(),
        ))
    }

    /// Called once every range of a parallel migration is done, before the migration is marked finished, with each
    /// range's last checkpoint: releases what ranges shared (a heap-order backfill's key list, walked by the ranges
    /// a steal cut its walk into), or does what must follow the whole walk (a heap-order copy's catch-up pass). Must be idempotent: a coordinator that stops before marking the migration
    /// finished leaves it to the next. `args` are the migration's, read again. Default: nothing.
    async fn ranges_done(&self, states: &[Value], args: &Args) -> Result<(), MigrationError> {
        let _ = (states, args);
        Ok(())
    }

    /// Runs one batch from `batch.state`, within `batch.args` limits, and commits it through [`Batch::commit`]
    /// (or commits nothing, for migrations without a SQL store).
    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError>;
}
