//! The Postgres reader of a copy batch: runs the plan's read for the batch's window as a binary `COPY`
//! ([`copy_statement`], [`BinaryRows`]), turns each row into its key and [`Cell`]s ([`binary_values`],
//! [`encode::prepare`]) and feeds them to the batch's [`Encoder`]. Text values too large to read with their row
//! arrive as [`Cell::Large`] and are streamed in slices, by key, on a second connection.

use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Connection, PgPool, Postgres};

use super::CopyPlan;
use super::batch::{Encoder, Moved, Next, ReadError, Window, bad_value};
use super::binary_rows::{BinaryRow, BinaryRows, CopyOutError};
use super::binary_values;
use super::copy_statement::{Literal, copy_out_binary};
use super::encode::{self, Cell};
use super::mapping::ColumnPlan;
use super::pages::Tid;
use super::sql::{CopySql, SLICE_BYTES};
use crate::clickhouse::rowbinary::BodyWriter;
use crate::migration::MigrationError;
use crate::store::StoreError;

/// Reads the batch of `window` from Postgres with `sql` into `encoder`, then ends (or aborts) its body.
pub(super) async fn encode(
    pool: &PgPool,
    sql: &CopySql,
    plan: &CopyPlan,
    window: Window<'_>,
    mut encoder: Encoder<'_, '_>,
) -> Result<Moved, ReadError> {
    let mut connection = match pool.acquire().await {
        Ok(connection) => connection,
        Err(err) => {
            let err = ReadError::sql("connect to read a copy batch")(err);
            return encoder.finish(Err(err), "Postgres").await;
        }
    };
    let (statement, bounds, tid_column) = match window {
        Window::Keys { after, upto } => (
            sql.read_within(after.is_some(), upto.is_some()),
            [after.unwrap_or_default(), upto.unwrap_or_default()].concat(),
            None,
        ),
        Window::KeyRange { after, upto } => (
            sql.read_range(after.is_some()),
            [after.unwrap_or_default(), upto].concat(),
            None,
        ),
        Window::Pages(pages) => (
            sql.read_pages(),
            vec![
                pages.after.to_string(),
                Tid::page_start(pages.end_page).to_string(),
            ],
            sql.layout().ctid(),
        ),
        Window::Changed(changed) => {
            if let Err(err) = in_snapshot(&mut connection, changed.snapshot).await {
                let err = ReadError::sql("read in the catch-up pass's snapshot")(err);
                let _ = connection.detach().close_hard().await;
                return encoder.finish(Err(err), "Postgres").await;
            }
            let pages = changed.pages;
            let bounds = [
                pages.after.to_string(),
                Tid::page_start(pages.end_page).to_string(),
            ]
            .into_iter()
            .chain(changed.since.map(|xid| xid.to_string()))
            .collect();
            (
                sql.read_changed_pages(changed.since.is_some()),
                bounds,
                sql.layout().ctid(),
            )
        }
    };
    let snapshot = matches!(window, Window::Changed(_));
    let literals: Vec<Literal> = bounds
        .into_iter()
        .map(Literal::Text)
        .chain([Literal::Int(
            i64::try_from(encoder.batch_size()).unwrap_or(i64::MAX),
        )])
        .collect();
    let copy = match copy_out_binary(&statement, &literals) {
        Ok(copy) => copy,
        Err(err) => {
            let err = ReadError::Failed(MigrationError::Permanent(err.to_string()));
            return encoder.finish(Err(err), "Postgres").await;
        }
    };
    let streamed = match connection.copy_out_raw(&copy).await {
        Ok(chunks) => {
            let mut rows = BinaryRows::new(chunks);
            let mut large = LargeValues {
                pool,
                sql,
                connection: None,
            };
            stream_rows(&mut rows, sql, plan, &mut large, &mut encoder, tid_column).await
        }
        Err(err) => Err(ReadError::sql("read a copy batch")(err)),
    };
    let drained = matches!(streamed, Ok(true));
    let ended = encoder.finish(streamed.map(|_| ()), "Postgres").await;
    let reusable = drained
        && ended.is_ok()
        && (!snapshot
            || sqlx::raw_sql("COMMIT")
                .execute(&mut *connection)
                .await
                .is_ok());
    if !reusable {
        // Rows after the batch may still be in flight on this connection (or its snapshot's transaction is still
        // open): close it rather than drain them.
        let _ = connection.detach().close_hard().await;
    }
    ended
}

/// Starts a read-only transaction on `connection` in the snapshot `snapshot` exported by another transaction.
async fn in_snapshot(
    connection: &mut PoolConnection<Postgres>,
    snapshot: &str,
) -> Result<(), sqlx::Error> {
    let literal = snapshot.replace('\'', "''");
    let start = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{literal}'"
    );
    sqlx::raw_sql(AssertSqlSafe(start))
        .execute(&mut **connection)
        .await
        .map(|_| ())
}

/// A part of a row that is not what its type sends: the read is broken, not the value (values say which column).
fn unreadable(what: impl std::fmt::Display, err: binary_values::ValueError) -> ReadError {
    ReadError::Failed(MigrationError::Permanent(format!(
        "{what} cannot be read: {err}"
    )))
}

fn copy_error(err: CopyOutError) -> ReadError {
    match err {
        CopyOutError::Sql(err) => ReadError::sql("read a copy batch")(err),
        malformed => ReadError::Failed(MigrationError::Permanent(malformed.to_string())),
    }
}

/// Feeds the rows to the encoder until the read ends or a limit is reached; true when the result was read to its
/// end (the connection is then reusable).
async fn stream_rows(
    rows: &mut BinaryRows<'_>,
    sql: &CopySql,
    plan: &CopyPlan,
    large: &mut LargeValues<'_>,
    encoder: &mut Encoder<'_, '_>,
    tid_column: Option<usize>,
) -> Result<bool, ReadError> {
    let layout = sql.layout();
    loop {
        let Some(row) = rows.next().await.map_err(copy_error)? else {
            encoder.source_ended();
            return Ok(true);
        };
        let tid = match tid_column {
            Some(index) => Some(next_tid(row, index, encoder.moved().last_tid)?),
            None => None,
        };
        let key = layout
            .key()
            .map(|i| {
                row.field(i)
                    .map(|bytes| binary_values::text(bytes).map(str::to_owned))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unreadable("the key of a row", e))?;
        let key = encoder.key(key)?;
        let left_out = match layout.large_flag().and_then(|flag| row.field(flag)) {
            Some(flag) => binary_values::boolean(flag).map_err(|e| {
                unreadable(
                    format_args!(
                        "the large-value flag of the row with key ({})",
                        key.join(", ")
                    ),
                    e,
                )
            })?,
            None => false,
        };
        let mut cells: Vec<Cell<'_>> = Vec::with_capacity(plan.columns.len());
        for (index, column) in plan.columns.iter().enumerate() {
            let field = row.field(layout.value(index));
            let cell = if left_out && field.is_none() && column.sliced() {
                // NULL in a flagged row: either left out as large or NULL in the table; its length tells.
                match large
                    .length(column, &key)
                    .await
                    .map_err(ReadError::Failed)?
                {
                    Some(len) => Cell::Large(len),
                    None => Cell::Null,
                }
            } else {
                let cell = binary_values::cell(field, column.read, column.array).map_err(|e| {
                    ReadError::Failed(bad_value(column, &key, &format!("cannot be read: {e}")))
                })?;
                encode::prepare(cell, &column.target)
                    .map_err(|e| ReadError::Failed(bad_value(column, &key, &e.to_string())))?
            };
            cells.push(cell);
        }
        let Some(size) = encoder.measure(&key, &cells)? else {
            return Ok(false);
        };
        for (index, (cell, column)) in cells.iter().zip(&plan.columns).enumerate() {
            encoder.put(index, cell).await?;
            if let Cell::Large(len) = cell {
                large.stream(column, &key, *len, encoder.writer()).await?;
            }
        }
        drop(cells);
        match encoder.end_row(key, size, tid).await? {
            Next::More => {}
            // The LIMIT is reached: reading the end of the result keeps the connection reusable.
            Next::RowsReached => {
                return Ok(rows.next().await.map_err(copy_error)?.is_none());
            }
            Next::BytesReached => return Ok(false),
        }
    }
}

/// The row's `ctid`, which must come after the previous row's: the cursor of a physical walk relies on it.
fn next_tid(row: BinaryRow<'_>, index: usize, previous: Option<Tid>) -> Result<Tid, ReadError> {
    let bytes = row.field(index).ok_or_else(|| {
        ReadError::Failed(MigrationError::Permanent("a row's ctid is NULL".into()))
    })?;
    let tid = binary_values::tid(bytes).map_err(|e| unreadable("a row's ctid", e))?;
    if let Some(previous) = previous
        && previous >= tid
    {
        return Err(ReadError::Failed(MigrationError::Permanent(format!(
            "rows arrived out of physical order (ctid {tid} after {previous}); this Postgres does not scan ctid \
             ranges in order: use the default key order"
        ))));
    }
    Ok(tid)
}

/// Reads large text values by key, in slices, on a second connection (the batch's read is paused meanwhile).
struct LargeValues<'a> {
    pool: &'a PgPool,
    sql: &'a CopySql,
    connection: Option<PoolConnection<Postgres>>,
}

impl LargeValues<'_> {
    async fn connection(&mut self) -> Result<&mut PoolConnection<Postgres>, MigrationError> {
        if self.connection.is_none() {
            let connection = self
                .pool
                .acquire()
                .await
                .map_err(StoreError::sql("connect to read a large value"))?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("just set"))
    }

    /// The value's length in bytes, `None` when it is NULL.
    async fn length(
        &mut self,
        column: &ColumnPlan,
        key: &[String],
    ) -> Result<Option<usize>, MigrationError> {
        let sql = self.sql.value_length(column);
        let connection = self.connection().await?;
        let mut query = sqlx::query_scalar::<Postgres, Option<i32>>(AssertSqlSafe(sql));
        for part in key {
            query = query.bind(part.as_str());
        }
        let length = query
            .fetch_optional(&mut **connection)
            .await
            .map_err(StoreError::sql("measure a large value"))?
            .ok_or_else(|| changed(column, key))?;
        Ok(length.and_then(|l| usize::try_from(l).ok()))
    }

    /// Writes the value's `len` bytes, slice by slice.
    async fn stream(
        &mut self,
        column: &ColumnPlan,
        key: &[String],
        len: usize,
        writer: &mut BodyWriter,
    ) -> Result<(), ReadError> {
        let sql = self.sql.value_slice(column);
        let mut done = 0usize;
        while done < len {
            let want = (len - done).min(SLICE_BYTES as usize);
            let connection = self.connection().await.map_err(ReadError::Failed)?;
            let mut query = sqlx::query_scalar::<Postgres, Vec<u8>>(AssertSqlSafe(sql.clone()));
            for part in key {
                query = query.bind(part.as_str());
            }
            let slice = query
                .bind((done + 1) as i32)
                .bind(want as i32)
                .fetch_optional(&mut **connection)
                .await
                .map_err(ReadError::sql("read a slice of a large value"))?
                .filter(|slice| slice.len() == want)
                .ok_or_else(|| ReadError::Failed(changed(column, key)))?;
            writer.put_raw(&slice).await?;
            done += want;
        }
        Ok(())
    }
}

fn changed(column: &ColumnPlan, key: &[String]) -> MigrationError {
    MigrationError::Transient(format!(
        "the large value of column {} in the row with key ({}) changed while it was read; the batch is retried",
        column.name,
        key.join(", ")
    ))
}
