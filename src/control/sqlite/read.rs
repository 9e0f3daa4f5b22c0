//! Reading the control tables: rows, events, batches (JSON columns parsed from TEXT).

use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteControlStore;
use crate::control::{BatchRecord, ControlError, EventRecord, MigrationRecord};

/// The columns of a [`MigrationRecord`].
const RECORD_COLUMNS: &str = "id, name, script, args, state, status, definition, depends_on, started_at, \
    finished_at, failed_at, failed_reason, worker_id, locked_at, lease_expires_at, attempts, rows_done, rows_total, \
    bytes_done, batch_size, last_batch_ms, rows_per_sec, updated_at";

/// A JSON column stored as TEXT.
fn json(row: &SqliteRow, column: &str) -> Result<Value, ControlError> {
    let text: String = row
        .try_get(column)
        .map_err(SqliteControlStore::sql_err("read a JSON column"))?;
    serde_json::from_str(&text)
        .map_err(|err| ControlError::Corrupt(format!("{column} is not JSON ({err}): {text}")))
}

/// Decodes one `background_migrations` row selected with [`RECORD_COLUMNS`].
fn decode(row: &SqliteRow) -> Result<MigrationRecord, ControlError> {
    let status: String = row
        .try_get("status")
        .map_err(SqliteControlStore::sql_err("read status"))?;
    let depends_on: Option<String> = row
        .try_get("depends_on")
        .map_err(SqliteControlStore::sql_err("read depends_on"))?;
    let depends_on = depends_on
        .map(|text| {
            serde_json::from_str::<Vec<String>>(&text).map_err(|err| {
                ControlError::Corrupt(format!("depends_on is not a list of names ({err}): {text}"))
            })
        })
        .transpose()?;
    let read = || -> Result<MigrationRecord, sqlx::Error> {
        Ok(MigrationRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            script: row.try_get("script")?,
            args: Value::Null,
            state: Value::Null,
            status: crate::status::Status::Pending,
            definition: Value::Null,
            depends_on: None,
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
    let mut record = read().map_err(SqliteControlStore::sql_err(
        "read a background_migrations row",
    ))?;
    record.args = json(row, "args")?;
    record.state = json(row, "state")?;
    record.definition = json(row, "definition")?;
    record.depends_on = depends_on;
    record.status = status
        .parse()
        .map_err(|e: crate::status::UnknownStatus| ControlError::Corrupt(e.to_string()))?;
    Ok(record)
}

crate::control::record_queries::record_queries!(SqliteControlStore, sqlx::SqliteConnection);

impl SqliteControlStore {
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
                    at: row.try_get("at").map_err(Self::sql_err("read events"))?,
                    kind: row.try_get("kind").map_err(Self::sql_err("read events"))?,
                    actor: row.try_get("actor").map_err(Self::sql_err("read events"))?,
                    detail: json(row, "detail")?,
                })
            })
            .collect()
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
                let read = || -> Result<BatchRecord, sqlx::Error> {
                    Ok(BatchRecord {
                        started_at: row.try_get("started_at")?,
                        duration_ms: row.try_get("duration_ms")?,
                        rows: row.try_get("rows")?,
                        bytes: row.try_get("bytes")?,
                        batch_size: row.try_get("batch_size")?,
                        state: Value::Null,
                        worker_id: row.try_get("worker_id")?,
                    })
                };
                let mut batch = read().map_err(Self::sql_err("read batches"))?;
                batch.state = json(row, "state")?;
                Ok(batch)
            })
            .collect()
    }
}
