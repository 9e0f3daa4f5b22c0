//! The contract a migration implements: check its preconditions, estimate its size, run **one** batch.
//!
//! The engine owns the loop around it (leases, args, pause, progress, retries, throttling), so a migration never
//! sleeps, never loops over the whole table and never writes the control table itself.

use async_trait::async_trait;
use serde_json::Value;

use crate::args::{Args, DEFAULT_BATCH_SIZE};
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
pub enum MigrationError {
    /// The definition or the data does not allow this migration to run; fails it with this message.
    #[error("{0}")]
    Invalid(String),
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
            MigrationError::Invalid(_) | MigrationError::LeaseLost => false,
        }
    }
}

/// Writes a batch's checkpoint inside the batch's own transaction, fenced on the lease. Provided by the engine.
#[async_trait]
pub trait Checkpointer: Send + Sync {
    /// Whether a transaction of the store with this id can carry the checkpoint (the control table lives there).
    fn shares_store(&self, store_id: &str) -> bool;
    /// Writes the checkpoint in `tx`; fails with [`MigrationError::LeaseLost`] when the lease is gone.
    async fn write_in(
        &self,
        tx: &mut dyn SqlTx,
        outcome: &BatchOutcome,
    ) -> Result<(), MigrationError>;
}

/// One batch's inputs: where to start, how much to do, and how to commit.
pub struct Batch<'a> {
    /// The checkpoint to start from (`{}` before the first batch).
    pub state: &'a Value,
    /// The validated args, re-read before this batch.
    pub args: &'a Args,
    checkpointer: &'a dyn Checkpointer,
    checkpointed: bool,
}

impl<'a> Batch<'a> {
    /// Built by the engine for each batch.
    pub fn new(state: &'a Value, args: &'a Args, checkpointer: &'a dyn Checkpointer) -> Self {
        Self {
            state,
            args,
            checkpointer,
            checkpointed: false,
        }
    }

    /// Commits the batch's transaction in `store_id`. When that store also holds the control table, the checkpoint
    /// is written in the same transaction (exactly-once); otherwise the engine writes it right after the commit
    /// (at-least-once: the kind's writes must be idempotent).
    pub async fn commit(
        &mut self,
        store_id: &str,
        mut tx: Box<dyn SqlTx>,
        outcome: &BatchOutcome,
    ) -> Result<(), MigrationError> {
        if self.checkpointer.shares_store(store_id) {
            self.checkpointer.write_in(tx.as_mut(), outcome).await?;
            self.checkpointed = true;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether [`Batch::commit`] already wrote the checkpoint.
    pub fn checkpointed(&self) -> bool {
        self.checkpointed
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

    /// Runs one batch from `batch.state`, within `batch.args` limits, and commits it through [`Batch::commit`]
    /// (or commits nothing, for migrations without a SQL store).
    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError>;
}
