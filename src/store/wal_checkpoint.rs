//! WAL checkpoints of a SQLite store, run beside its writers instead of inside their commits.
//!
//! A connection that commits past `wal_autocheckpoint` pages copies the WAL into the database itself before its
//! commit returns: two fsyncs and the copy, on the writer's path. Measured on a 1,000,000-row backfill in 10,000-row
//! batches (the `sqlite_backfill` benchmark's table): the batches' own work took 0.69 s, and the checkpoints every
//! 12th commit 1.65 s more — the batched backfill ran at 0.72× one plain `UPDATE`, which pays for one checkpoint in
//! all. A passive checkpoint started on another pooled connection when a write transaction begins runs while that
//! transaction works, so the writer rarely finds enough un-copied pages to checkpoint at its commit (the same
//! experiment in Python: 0.86–0.96× without, 1.17–1.24× with). `PASSIVE` never waits for a lock and never blocks a
//! reader or writer; the commit-time checkpoint stays as the backstop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::SqlitePool;

/// At most one background checkpoint of a store at a time.
#[derive(Clone, Default)]
pub(super) struct BackgroundCheckpoint {
    running: Arc<AtomicBool>,
}

impl BackgroundCheckpoint {
    /// Starts a passive checkpoint on a connection of `pool`, unless one is running. Its failure is logged at debug
    /// level only: the commit-time checkpoint does the work instead.
    pub(super) fn start(&self, pool: &SqlitePool) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, running) = (pool.clone(), self.running.clone());
        tokio::spawn(async move {
            if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&pool)
                .await
            {
                tracing::debug!(error = %err, "background WAL checkpoint");
            }
            running.store(false, Ordering::Release);
        });
    }
}
