//! The worker's side: claim, renew, checkpoint and end a migration, every write fenced on the lease.

use std::time::Duration;

use serde_json::json;
use sqlx::{PgConnection, Row};

use super::{PgControlStore, insert_event};
use crate::control::{BATCHES_KEPT, BatchCommit, Claim, ControlError, EventKind, Lease};

/// The condition every worker write carries: same owner, same epoch, still running.
const FENCE: &str = "id = $1 AND worker_id = $2 AND lease_epoch = $3 AND status = 'running'";

/// How a worker ends its hold on a migration.
pub(super) enum Ending<'a> {
    Finished,
    Failed(&'a str),
    Released,
}

/// Writes a batch's checkpoint and its batches-table row on `conn` (the batch's transaction or a fresh one).
pub(super) async fn checkpoint(
    conn: &mut PgConnection,
    lease: &Lease,
    commit: &BatchCommit,
) -> Result<(), ControlError> {
    let updated = sqlx::query(include_str!("sql/write_checkpoint.sql"))
        .bind(&lease.migration_id)
        .bind(&lease.worker_id)
        .bind(lease.epoch)
        .bind(&commit.state)
        .bind(to_i64(commit.rows))
        .bind(to_i64(commit.bytes))
        .bind(to_i32(commit.batch_size))
        .bind(to_i32(commit.duration_ms))
        .bind(commit.rows_per_sec)
        .execute(&mut *conn)
        .await
        .map_err(PgControlStore::sql_err("write the checkpoint"))?;
    if updated.rows_affected() == 0 {
        return Err(ControlError::LeaseLost(lease.name.clone()));
    }
    sqlx::query(include_str!("sql/record_batch.sql"))
        .bind(&lease.name)
        .bind(commit.started_at)
        .bind(to_i32(commit.duration_ms))
        .bind(to_i64(commit.rows))
        .bind(to_i64(commit.bytes))
        .bind(to_i32(commit.batch_size))
        .bind(&commit.state)
        .bind(&lease.worker_id)
        .bind(BATCHES_KEPT)
        .execute(&mut *conn)
        .await
        .map_err(PgControlStore::sql_err("record the batch"))?;
    Ok(())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_i32(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl PgControlStore {
    pub(super) async fn claim(
        &self,
        worker_id: &str,
        ttl: Duration,
        scripts: &[String],
    ) -> Result<Option<Claim>, ControlError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Self::sql_err("begin a claim"))?;
        let claimed = sqlx::query(include_str!("sql/claim_next.sql"))
            .bind(worker_id)
            .bind(ttl.as_secs_f64())
            .bind(scripts)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Self::sql_err("claim a migration"))?;
        let Some(row) = claimed else {
            return Ok(None);
        };
        let read =
            |row: &sqlx::postgres::PgRow| -> Result<(String, i64, Option<String>), sqlx::Error> {
                Ok((
                    row.try_get("id")?,
                    row.try_get("lease_epoch")?,
                    row.try_get("took_over_from")?,
                ))
            };
        let (migration_id, epoch, took_over_from) =
            read(&row).map_err(Self::sql_err("read a claim"))?;
        let name: String =
            sqlx::query_scalar("SELECT name FROM background_migrations WHERE id = $1")
                .bind(&migration_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(Self::sql_err("read a claim"))?;
        let (kind, detail) = match &took_over_from {
            Some(previous) => (
                EventKind::LeaseTakenOver,
                json!({"previous_worker": previous, "epoch": epoch}),
            ),
            None => (EventKind::Claimed, json!({"epoch": epoch})),
        };
        insert_event(&mut *tx, &name, kind, worker_id, &detail).await?;
        tx.commit().await.map_err(Self::sql_err("commit a claim"))?;
        let lease = Lease {
            migration_id,
            name,
            worker_id: worker_id.to_owned(),
            epoch,
        };
        let record = self.held_record(&lease).await?;
        Ok(Some(Claim {
            record,
            lease,
            took_over_from,
        }))
    }

    pub(super) async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, ControlError> {
        let sql = format!(
            "UPDATE background_migrations SET locked_at = now(), lease_expires_at = now() + make_interval(secs => $4) \
             WHERE {FENCE}"
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&lease.migration_id)
            .bind(&lease.worker_id)
            .bind(lease.epoch)
            .bind(ttl.as_secs_f64())
            .execute(&self.pool)
            .await
            .map_err(Self::sql_err("renew the lease"))?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn fenced_set_rows_total(
        &self,
        lease: &Lease,
        rows_total: Option<u64>,
    ) -> Result<(), ControlError> {
        let sql = format!(
            "UPDATE background_migrations SET rows_total = $4, updated_at = now() WHERE {FENCE}"
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&lease.migration_id)
            .bind(&lease.worker_id)
            .bind(lease.epoch)
            .bind(rows_total.map(to_i64))
            .execute(&self.pool)
            .await
            .map_err(Self::sql_err("record the row estimate"))?;
        if done.rows_affected() == 0 {
            return Err(ControlError::LeaseLost(lease.name.clone()));
        }
        Ok(())
    }

    pub(super) async fn end(&self, lease: &Lease, ending: Ending<'_>) -> Result<(), ControlError> {
        let (set, kind, detail) = match ending {
            Ending::Finished => (
                "status = 'finished', finished_at = now(), rows_total = rows_done",
                EventKind::Finished,
                json!({}),
            ),
            Ending::Failed(reason) => (
                "status = 'failed', failed_at = now(), failed_reason = $4",
                EventKind::Failed,
                json!({"reason": reason}),
            ),
            Ending::Released => ("status = 'pending'", EventKind::Released, json!({})),
        };
        let sql = format!(
            "UPDATE background_migrations SET {set}, worker_id = NULL, locked_at = NULL, lease_expires_at = NULL, \
             updated_at = now() WHERE {FENCE}"
        );
        let mut tx = self.pool.begin().await.map_err(Self::sql_err("begin"))?;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&lease.migration_id)
            .bind(&lease.worker_id)
            .bind(lease.epoch);
        if let Ending::Failed(reason) = ending {
            query = query.bind(reason);
        }
        let done = query
            .execute(&mut *tx)
            .await
            .map_err(Self::sql_err("record the migration's outcome"))?;
        if done.rows_affected() == 0 {
            return Err(ControlError::LeaseLost(lease.name.clone()));
        }
        insert_event(&mut *tx, &lease.name, kind, &lease.worker_id, &detail).await?;
        tx.commit()
            .await
            .map_err(Self::sql_err("commit the migration's outcome"))
    }
}
