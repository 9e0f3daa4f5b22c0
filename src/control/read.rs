//! Reading the control tables: every column travels as text (the dialect says how each kind of column reads as
//! text) and is decoded here, in the order of the column lists below. [`HistoryStore`] lives here too.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;
use tokio::sync::Notify;

use super::dialect::ControlSql;
use super::lenient_json::{Unreadable, parse_lenient};
use super::{
    BatchRecord, ControlError, EventKind, EventRecord, HistoryStore, Lease, MigrationRecord,
    RangeRecord, SqlControlStore,
};
use crate::status::Status;
use crate::store::{SqlParam, SqlTx};

/// How a column reads back as text.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// Text, or a number (read as its decimal text).
    Plain,
    /// A JSON document.
    Json,
    /// A timestamp (RFC 3339 UTC).
    Timestamp,
    /// `depends_on`: a JSON array of names, or NULL.
    Names,
}

/// The columns of a [`MigrationRecord`], in the order [`decode_record`] reads them.
pub(super) const RECORD_COLUMNS: &[(&str, Kind)] = &[
    ("id", Kind::Plain),
    ("name", Kind::Plain),
    ("script", Kind::Plain),
    ("args", Kind::Json),
    ("state", Kind::Json),
    ("status", Kind::Plain),
    ("definition", Kind::Json),
    ("depends_on", Kind::Names),
    ("started_at", Kind::Timestamp),
    ("finished_at", Kind::Timestamp),
    ("failed_at", Kind::Timestamp),
    ("failed_reason", Kind::Plain),
    ("worker_id", Kind::Plain),
    ("locked_at", Kind::Timestamp),
    ("lease_expires_at", Kind::Timestamp),
    ("attempts", Kind::Plain),
    ("rows_done", Kind::Plain),
    ("rows_total", Kind::Plain),
    ("bytes_done", Kind::Plain),
    ("batch_size", Kind::Plain),
    ("last_batch_ms", Kind::Plain),
    ("rows_per_sec", Kind::Plain),
    ("updated_at", Kind::Timestamp),
    ("throttled", Kind::Plain),
];

/// The columns of an [`EventRecord`], in the order [`decode_event`] reads them.
const EVENT_COLUMNS: &[(&str, Kind)] = &[
    ("at", Kind::Timestamp),
    ("kind", Kind::Plain),
    ("actor", Kind::Plain),
    ("detail", Kind::Json),
];

/// The columns of a [`BatchRecord`], in the order [`decode_batch`] reads them.
const BATCH_COLUMNS: &[(&str, Kind)] = &[
    ("started_at", Kind::Timestamp),
    ("duration_ms", Kind::Plain),
    ("rows", Kind::Plain),
    ("bytes", Kind::Plain),
    ("batch_size", Kind::Plain),
    ("state", Kind::Json),
    ("worker_id", Kind::Plain),
];

/// The columns of a [`RangeRecord`] (of `background_migration_ranges r`), in the order [`decode_range`] reads them.
pub(super) const RANGE_COLUMNS: &[(&str, Kind)] = &[
    ("r.range_no", Kind::Plain),
    ("r.state", Kind::Json),
    ("r.upper_state", Kind::Plain),
    ("r.done", Kind::Plain),
    ("r.splits", Kind::Plain),
    ("r.worker_id", Kind::Plain),
    ("r.lease_epoch", Kind::Plain),
    ("r.lease_expires_at", Kind::Timestamp),
    ("r.rows_done", Kind::Plain),
    ("r.rows_total", Kind::Plain),
    ("r.rows_per_sec", Kind::Plain),
    ("r.batch_size", Kind::Plain),
    ("r.updated_at", Kind::Timestamp),
];

/// A `SELECT` list reading `columns` as text in this dialect.
pub(super) fn select_list(sql: ControlSql, columns: &[(&str, Kind)]) -> String {
    columns
        .iter()
        .map(|&(column, kind)| match kind {
            Kind::Plain | Kind::Json => format!("CAST({column} AS TEXT)"),
            Kind::Timestamp => sql.timestamp_text(column),
            Kind::Names => sql.names_text(column),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One row's text columns, read front to back.
struct Fields<'r> {
    values: std::slice::Iter<'r, Option<String>>,
    table: &'static str,
}

impl<'r> Fields<'r> {
    fn new(row: &'r [Option<String>], table: &'static str) -> Self {
        Self {
            values: row.iter(),
            table,
        }
    }

    fn corrupt(&self, column: &str, what: impl std::fmt::Display) -> ControlError {
        ControlError::Corrupt(format!("{}.{column}: {what}", self.table))
    }

    fn optional(&mut self, column: &str) -> Result<Option<&'r str>, ControlError> {
        match self.values.next() {
            Some(value) => Ok(value.as_deref()),
            None => Err(self.corrupt(column, "missing from the query")),
        }
    }

    fn text(&mut self, column: &str) -> Result<String, ControlError> {
        self.optional_text(column)?
            .ok_or_else(|| self.corrupt(column, "is NULL"))
    }

    fn optional_text(&mut self, column: &str) -> Result<Option<String>, ControlError> {
        Ok(self.optional(column)?.map(str::to_owned))
    }

    fn number<T: FromStr>(&mut self, column: &str) -> Result<T, ControlError> {
        self.optional_number(column)?
            .ok_or_else(|| self.corrupt(column, "is NULL"))
    }

    fn optional_number<T: FromStr>(&mut self, column: &str) -> Result<Option<T>, ControlError> {
        self.optional(column)?
            .map(|text| {
                text.parse()
                    .map_err(|_| self.corrupt(column, format!("{text:?} is not a number")))
            })
            .transpose()
    }

    fn timestamp(&mut self, column: &str) -> Result<DateTime<Utc>, ControlError> {
        self.optional_timestamp(column)?
            .ok_or_else(|| self.corrupt(column, "is NULL"))
    }

    fn optional_timestamp(&mut self, column: &str) -> Result<Option<DateTime<Utc>>, ControlError> {
        self.optional(column)?
            .map(|text| {
                parse_timestamp(text)
                    .ok_or_else(|| self.corrupt(column, format!("{text:?} is not a timestamp")))
            })
            .transpose()
    }

    /// A JSON column; a document no JSON reader accepts in full (a number beyond ±1.8e308) is read with that
    /// number as a marker string, and the problem reported in `unreadable` instead of failing the whole read.
    fn json(
        &mut self,
        column: &'static str,
        unreadable: &mut Vec<Unreadable>,
    ) -> Result<Value, ControlError> {
        let text = self
            .optional(column)?
            .ok_or_else(|| self.corrupt(column, "is NULL"))?;
        let (value, problems) =
            parse_lenient(column, text).map_err(|err| self.corrupt(column, err))?;
        unreadable.extend(problems);
        Ok(value)
    }
}

/// RFC 3339, or the space-separated form without a zone (UTC), as SQLite's own functions write it.
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

fn decode_record(row: &[Option<String>]) -> Result<MigrationRecord, ControlError> {
    let mut f = Fields::new(row, "background_migrations");
    let mut unreadable = Vec::new();
    let id = f.text("id")?;
    let name = f.text("name")?;
    let script = f.text("script")?;
    let args = f.json("args", &mut unreadable)?;
    let state = f.json("state", &mut unreadable)?;
    let status: Status = f
        .text("status")?
        .parse()
        .map_err(|e: crate::status::UnknownStatus| ControlError::Corrupt(e.to_string()))?;
    let definition = f.json("definition", &mut unreadable)?;
    let depends_on = f
        .optional("depends_on")?
        .map(|text| {
            serde_json::from_str::<Vec<String>>(text)
                .map_err(|err| f.corrupt("depends_on", format!("not a list of names ({err})")))
        })
        .transpose()?;
    Ok(MigrationRecord {
        id,
        script,
        args,
        state,
        status,
        definition,
        depends_on,
        started_at: f.optional_timestamp("started_at")?,
        finished_at: f.optional_timestamp("finished_at")?,
        failed_at: f.optional_timestamp("failed_at")?,
        failed_reason: f.optional_text("failed_reason")?,
        worker_id: f.optional_text("worker_id")?,
        locked_at: f.optional_timestamp("locked_at")?,
        lease_expires_at: f.optional_timestamp("lease_expires_at")?,
        attempts: f.number("attempts")?,
        rows_done: f.number("rows_done")?,
        rows_total: f.optional_number("rows_total")?,
        bytes_done: f.number("bytes_done")?,
        batch_size: f.optional_number("batch_size")?,
        last_batch_ms: f.optional_number("last_batch_ms")?,
        rows_per_sec: f.optional_number("rows_per_sec")?,
        updated_at: f.timestamp("updated_at")?,
        throttled: f.optional_text("throttled")?,
        unreadable: Unreadable::explain(&unreadable, &name),
        name,
    })
}

fn decode_event(row: &[Option<String>]) -> Result<EventRecord, ControlError> {
    let mut f = Fields::new(row, "background_migration_events");
    let mut unreadable = Vec::new();
    Ok(EventRecord {
        at: f.timestamp("at")?,
        kind: f.text("kind")?,
        actor: f.text("actor")?,
        detail: f.json("detail", &mut unreadable)?,
    })
}

fn decode_batch(row: &[Option<String>]) -> Result<BatchRecord, ControlError> {
    let mut f = Fields::new(row, "background_migration_batches");
    let mut unreadable = Vec::new();
    Ok(BatchRecord {
        started_at: f.timestamp("started_at")?,
        duration_ms: f.number("duration_ms")?,
        rows: f.number("rows")?,
        bytes: f.number("bytes")?,
        batch_size: f.number("batch_size")?,
        state: f.json("state", &mut unreadable)?,
        worker_id: f.text("worker_id")?,
    })
}

pub(super) fn decode_range(row: &[Option<String>]) -> Result<RangeRecord, ControlError> {
    let mut f = Fields::new(row, "background_migration_ranges");
    let mut unreadable = Vec::new();
    let no = f.number("range_no")?;
    let state = f.json("state", &mut unreadable)?;
    let upper = f
        .optional("upper_state")?
        .map(|text| serde_json::from_str(text).map_err(|err| f.corrupt("upper_state", err)))
        .transpose()?;
    Ok(RangeRecord {
        no,
        state,
        upper,
        done: f.number::<i64>("done")? != 0,
        splits: f.number("splits")?,
        worker_id: f.optional_text("worker_id")?,
        lease_epoch: f.number("lease_epoch")?,
        lease_expires_at: f.optional_timestamp("lease_expires_at")?,
        rows_done: f.number("rows_done")?,
        rows_total: f.optional_number("rows_total")?,
        rows_per_sec: f.optional_number("rows_per_sec")?,
        batch_size: f.optional_number("batch_size")?,
        updated_at: f.timestamp("updated_at")?,
    })
}

impl SqlControlStore {
    /// Runs one read-only query on its own ([`crate::store::SqlStore::read_once`]).
    pub(super) async fn read_rows(
        &self,
        sql: &str,
        params: &[SqlParam],
    ) -> Result<Vec<Vec<Option<String>>>, ControlError> {
        Ok(self.store.read_once(sql, params).await?)
    }

    /// One row by name, read in `tx` (e.g. inside the transaction that just changed it).
    pub(super) async fn record_in(
        &self,
        tx: &mut dyn SqlTx,
        name: &str,
    ) -> Result<MigrationRecord, ControlError> {
        let rows = tx
            .fetch_all_text(
                &self.statements.record_by_name,
                &[SqlParam::Text(name.to_owned())],
            )
            .await?;
        match rows.first() {
            Some(row) => decode_record(row),
            None => Err(ControlError::NotFound(name.to_owned())),
        }
    }

    /// The row while `lease` still holds it.
    pub(super) async fn held_record(&self, lease: &Lease) -> Result<MigrationRecord, ControlError> {
        let rows = self
            .read_rows(&self.statements.held_record, &lease.fence_params())
            .await?;
        match rows.first() {
            Some(row) => decode_record(row),
            None => Err(ControlError::LeaseLost(lease.name.clone())),
        }
    }

    /// The newest `limit` rows of `name` in `table`, only those of event kind `kind` when given.
    async fn history(
        &self,
        table: &str,
        columns: &[(&str, Kind)],
        (name, kind): (&str, Option<EventKind>),
        limit: i64,
    ) -> Result<Vec<Vec<Option<String>>>, ControlError> {
        let of_kind = if kind.is_some() { " AND kind = $3" } else { "" };
        let sql = format!(
            "SELECT {} FROM {table} WHERE migration_name = $1{of_kind} ORDER BY id DESC LIMIT $2",
            select_list(self.sql, columns)
        );
        let mut params = vec![SqlParam::Text(name.to_owned()), SqlParam::Int(limit)];
        params.extend(kind.map(|kind| SqlParam::Text(kind.as_str().to_owned())));
        self.read_rows(&sql, &params).await
    }
}

#[async_trait]
impl HistoryStore for SqlControlStore {
    async fn list(&self) -> Result<Vec<MigrationRecord>, ControlError> {
        let rows = self.read_rows(&self.statements.list_records, &[]).await?;
        rows.iter().map(|row| decode_record(row)).collect()
    }

    async fn get(&self, name: &str) -> Result<MigrationRecord, ControlError> {
        let mut tx = self.store.begin_read().await?;
        let record = self.record_in(tx.as_mut(), name).await;
        tx.commit().await?;
        record
    }

    async fn events(&self, name: &str, limit: i64) -> Result<Vec<EventRecord>, ControlError> {
        let rows = self
            .history(
                "background_migration_events",
                EVENT_COLUMNS,
                (name, None),
                limit,
            )
            .await?;
        rows.iter().map(|row| decode_event(row)).collect()
    }

    async fn latest_event(
        &self,
        name: &str,
        kind: EventKind,
    ) -> Result<Option<EventRecord>, ControlError> {
        let rows = self
            .history(
                "background_migration_events",
                EVENT_COLUMNS,
                (name, Some(kind)),
                1,
            )
            .await?;
        rows.first().map(|row| decode_event(row)).transpose()
    }

    async fn batches(&self, name: &str, limit: i64) -> Result<Vec<BatchRecord>, ControlError> {
        let rows = self
            .history(
                "background_migration_batches",
                BATCH_COLUMNS,
                (name, None),
                limit,
            )
            .await?;
        rows.iter().map(|row| decode_batch(row)).collect()
    }

    async fn ranges(&self, name: &str) -> Result<Vec<RangeRecord>, ControlError> {
        let rows = self
            .read_rows(
                &self.statements.ranges.by_name,
                &[SqlParam::Text(name.to_owned())],
            )
            .await?;
        rows.iter().map(|row| decode_range(row)).collect()
    }

    async fn changes(&self) -> Result<Arc<Notify>, ControlError> {
        self.changes.signal().await
    }
}
