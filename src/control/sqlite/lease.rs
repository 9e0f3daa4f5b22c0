//! The worker's side: claim, renew, checkpoint and end a migration, every write fenced on the lease.

use std::time::Duration;

use chrono::SecondsFormat;
use serde_json::json;
use sqlx::{Row, SqliteConnection};

use super::{SqliteControlStore, insert_event};
use crate::control::{BATCHES_KEPT, BatchCommit, Claim, ControlError, EventKind, Lease};

/// The condition every worker write carries: same owner, same epoch, still running.
const FENCE: &str = "id = $1 AND worker_id = $2 AND lease_epoch = $3 AND status = 'running'";

/// Now, in the control tables' timestamp format (ISO-8601 UTC, milliseconds: text order is time order).
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// How a worker ends its hold on a migration.
pub(super) enum Ending<'a> {
    Finished,
    Failed(&'a str),
    Released,
}

/// Writes a batch's checkpoint and its batches-table row on `conn` (the batch's transaction or a fresh one).
pub(super) async fn checkpoint(
    conn: &mut SqliteConnection,
    lease: &Lease,
    commit: &BatchCommit,
) -> Result<(), ControlError> {
    let state = commit.state.to_string();
    let updated = sqlx::query(include_str!("sql/write_checkpoint.sql"))
        .bind(&lease.migration_id)
        .bind(&lease.worker_id)
        .bind(lease.epoch)
        .bind(&state)
        .bind(to_i64(commit.rows))
        .bind(to_i64(commit.bytes))
        .bind(to_i64(commit.batch_size))
        .bind(to_i64(commit.duration_ms))
        .bind(commit.rows_per_sec)
        .execute(&mut *conn)
        .await
        .map_err(SqliteControlStore::sql_err("write the checkpoint"))?;
    if updated.rows_affected() == 0 {
        return Err(ControlError::LeaseLost(lease.name.clone()));
    }
    sqlx::query(include_str!("sql/record_batch.sql"))
        .bind(&lease.name)
        .bind(
            commit
                .started_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        )
        .bind(to_i64(commit.duration_ms))
        .bind(to_i64(commit.rows))
        .bind(to_i64(commit.bytes))
        .bind(to_i64(commit.batch_size))
        .bind(&state)
        .bind(&lease.worker_id)
        .execute(&mut *conn)
        .await
        .map_err(SqliteControlStore::sql_err("record the batch"))?;
    sqlx::query(include_str!("sql/trim_batches.sql"))
        .bind(&lease.name)
        .bind(BATCHES_KEPT)
        .execute(&mut *conn)
        .await
        .map_err(SqliteControlStore::sql_err("trim the batches table"))?;
    Ok(())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqliteControlStore {
    pub(super) async fn claim(
        &self,
        worker_id: &str,
        ttl: Duration,
        scripts: &[String],
    ) -> Result<Option<Claim>, ControlError> {
        // BEGIN IMMEDIATE: from this read to the commit no other connection, in any process, can write.
        let mut tx = self.write_tx("begin a claim").await?;
        let scripts = serde_json::Value::from(scripts.to_vec()).to_string();
        let candidate = sqlx::query(include_str!("sql/claim_candidate.sql"))
            .bind(scripts)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Self::sql_err("find a migration to claim"))?;
        let Some(row) = candidate else {
            return Ok(None);
        };
        let read = |row: &sqlx::sqlite::SqliteRow| -> Result<(String, String, Option<String>), sqlx::Error> {
            Ok((row.try_get("id")?, row.try_get("name")?, row.try_get("took_over_from")?))
        };
        let (migration_id, name, took_over_from) =
            read(&row).map_err(Self::sql_err("read a claim"))?;
        let epoch: i64 = sqlx::query_scalar(include_str!("sql/claim.sql"))
            .bind(&migration_id)
            .bind(worker_id)
            .bind(ttl.as_secs_f64())
            .fetch_one(&mut *tx)
            .await
            .map_err(Self::sql_err("claim a migration"))?;
        let (kind, detail) = match &took_over_from {
            Some(previous) => (
                EventKind::LeaseTakenOver,
                json!({"previous_worker": previous, "epoch": epoch}),
            ),
            None => (EventKind::Claimed, json!({"epoch": epoch})),
        };
        insert_event(&mut tx, &name, kind, worker_id, &detail).await?;
        self.commit(tx, "commit a claim").await?;
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
            "UPDATE background_migrations SET locked_at = {NOW}, \
             lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || $4 || ' seconds') WHERE {FENCE}"
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
            "UPDATE background_migrations SET rows_total = $4, updated_at = {NOW} WHERE {FENCE}"
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
        let (set, kind, detail, reason) = match ending {
            Ending::Finished => (
                format!("status = 'finished', finished_at = {NOW}, rows_total = rows_done"),
                EventKind::Finished,
                json!({}),
                None,
            ),
            Ending::Failed(reason) => (
                format!("status = 'failed', failed_at = {NOW}, failed_reason = $4"),
                EventKind::Failed,
                json!({"reason": reason}),
                Some(reason),
            ),
            Ending::Released => (
                "status = 'pending'".to_owned(),
                EventKind::Released,
                json!({}),
                None,
            ),
        };
        let sql = format!(
            "UPDATE background_migrations SET {set}, worker_id = NULL, locked_at = NULL, lease_expires_at = NULL, \
             updated_at = {NOW} WHERE {FENCE}"
        );
        let mut tx = self.write_tx("begin").await?;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&lease.migration_id)
            .bind(&lease.worker_id)
            .bind(lease.epoch);
        if let Some(reason) = reason {
            query = query.bind(reason);
        }
        let done = query
            .execute(&mut *tx)
            .await
            .map_err(Self::sql_err("record the migration's outcome"))?;
        if done.rows_affected() == 0 {
            return Err(ControlError::LeaseLost(lease.name.clone()));
        }
        insert_event(&mut tx, &lease.name, kind, &lease.worker_id, &detail).await?;
        self.commit(tx, "commit the migration's outcome").await
    }
}
