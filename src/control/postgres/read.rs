//! Reading the control tables: rows, events, batches.

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PgControlStore;
use crate::control::{BatchRecord, ControlError, EventRecord, MigrationRecord};

/// The columns of a [`MigrationRecord`]; the original system's timestamp columns may be `timestamp`, hence the casts.
const RECORD_COLUMNS: &str = "id::text AS id, name, script, args, state, status, definition, depends_on, \
    started_at, finished_at::timestamptz AS finished_at, failed_at::timestamptz AS failed_at, failed_reason, \
    worker_id, locked_at::timestamptz AS locked_at, lease_expires_at, attempts, rows_done, rows_total, bytes_done, \
    batch_size, last_batch_ms, rows_per_sec, updated_at";

/// Decodes one `background_migrations` row selected with [`RECORD_COLUMNS`].
fn decode(row: &PgRow) -> Result<MigrationRecord, ControlError> {
    let status: String = row
        .try_get("status")
        .map_err(PgControlStore::sql_err("read status"))?;
    let read = || -> Result<MigrationRecord, sqlx::Error> {
        Ok(MigrationRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            script: row.try_get("script")?,
            args: row.try_get("args")?,
            state: row.try_get("state")?,
            status: crate::status::Status::Pending,
            definition: row.try_get("definition")?,
            depends_on: row.try_get("depends_on")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            failed_at: row.try_get("failed_at")?,
            failed_reason: row.try_get("failed_reason")?,
            worker_id: row.try_get("worker_id")?,
            locked_at: row.try_get("locked_at")?,
            lease_expires_at: row.try_get("lease_expires_at")?,
            attempts: row.try_get("attempts")?,
            rows_done: row.try_get("rows_done")?,
            rows_total: row.try_get("rows_total")?,
            bytes_done: row.try_get("bytes_done")?,
            batch_size: row.try_get("batch_size")?,
            last_batch_ms: row.try_get("last_batch_ms")?,
            rows_per_sec: row.try_get("rows_per_sec")?,
            updated_at: row.try_get("updated_at")?,
        })
    };
    let mut record = read().map_err(PgControlStore::sql_err("read a background_migrations row"))?;
    record.status = status
        .parse()
        .map_err(|e: crate::status::UnknownStatus| ControlError::Corrupt(e.to_string()))?;
    Ok(record)
}

crate::control::record_queries::record_queries!(PgControlStore, sqlx::PgConnection);

impl PgControlStore {
    pub(super) async fn list_events(
        &self,
        name: &str,
        limit: i64,
    ) -> Result<Vec<EventRecord>, ControlError> {
        let rows = sqlx::query(
            "SELECT at, kind, actor, detail FROM background_migration_events \
             WHERE migration_name = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(name)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(Self::sql_err("read events"))?;
        rows.iter()
            .map(|row| {
                Ok(EventRecord {
                    at: row.try_get("at")?,
                    kind: row.try_get("kind")?,
                    actor: row.try_get("actor")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Self::sql_err("read events"))
    }

    pub(super) async fn list_batches(
        &self,
        name: &str,
        limit: i64,
    ) -> Result<Vec<BatchRecord>, ControlError> {
        let rows = sqlx::query(
            "SELECT started_at, duration_ms, rows, bytes, batch_size, state, worker_id \
             FROM background_migration_batches WHERE migration_name = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(name)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(Self::sql_err("read batches"))?;
        rows.iter()
            .map(|row| {
                Ok(BatchRecord {
                    started_at: row.try_get("started_at")?,
                    duration_ms: row.try_get("duration_ms")?,
                    rows: row.try_get("rows")?,
                    bytes: row.try_get("bytes")?,
                    batch_size: row.try_get("batch_size")?,
                    state: row.try_get("state")?,
                    worker_id: row.try_get("worker_id")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Self::sql_err("read batches"))
    }
}
