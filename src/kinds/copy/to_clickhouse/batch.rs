//! One copy batch: stream rows from Postgres in key order straight into one ClickHouse insert, until the batch
//! has `batchSize` rows or `maxBatchBytes` bytes (a single larger row goes alone).
//!
//! Reading and writing overlap: rows are encoded into the insert's body as they arrive, so memory holds one row
//! and a few body chunks, whatever the batch size. The insert is acknowledged before the batch returns; only then
//! does the engine write the checkpoint.

use futures_util::StreamExt;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{AssertSqlSafe, Connection, PgPool, Postgres, Row};

use super::CopyPlan;
use super::encode::{self, Cell};
use super::mapping::ColumnPlan;
use super::pages::{PageWindow, Tid};
use super::sql::{CopySql, SLICE_BYTES};
use crate::args::Args;
use crate::clickhouse::ClickHouse;
use crate::clickhouse::rowbinary::{BodyClosed, BodyWriter};
use crate::kinds::ch_error;
use crate::migration::MigrationError;
use crate::store::StoreError;

/// What a batch moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    /// Rows inserted.
    pub rows: u64,
    /// `RowBinary` bytes inserted.
    pub bytes: u64,
    /// The key of the last row inserted (the next cursor), `None` when no row was.
    pub last_key: Option<Vec<String>>,
    /// The `ctid` of the last row inserted, in a physical-order walk.
    pub last_tid: Option<Tid>,
    /// True when the read ended before any limit: every row after the cursor (in the page window) was sent.
    pub complete: bool,
}

/// What a copy batch did, however it walked the source; `W` is the walk's position.
#[derive(Debug, Clone, PartialEq)]
pub struct Walked<W> {
    /// The walk's new position.
    pub at: W,
    /// Rows and bytes moved, each row counted once.
    pub moved: Moved,
    /// True when the source has no rows after the checkpoint.
    pub exhausted: bool,
}

/// Which rows a batch reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum Window<'a> {
    /// The rows after `after` (`None`: from the first), up to `upto` if given (a key range's end, inclusive), in
    /// key order.
    Keys {
        /// The lower key, exclusive.
        after: Option<&'a [String]>,
        /// The upper key, inclusive.
        upto: Option<&'a [String]>,
    },
    /// The rows after `after` up to `upto` (inclusive), in any order.
    KeyRange {
        /// The lower key, exclusive (`None`: from the first).
        after: Option<&'a [String]>,
        /// The upper key, inclusive.
        upto: &'a [String],
    },
    /// The rows of a page window, in physical order (the plan's statement carries `ctid`).
    Pages(PageWindow),
}

/// Why the reading side stopped.
pub(super) enum ReadError {
    /// The insert went away; its own error says why.
    Closed,
    /// Reading or encoding failed.
    Failed(MigrationError),
}

impl ReadError {
    /// A failed Postgres call while `context`, as a `map_err` argument.
    fn sql(context: &'static str) -> impl Fn(sqlx::Error) -> ReadError {
        move |err| ReadError::Failed(StoreError::sql(context)(err).into())
    }
}

impl From<BodyClosed> for ReadError {
    fn from(_: BodyClosed) -> Self {
        ReadError::Closed
    }
}

/// Copies one batch after `lower`.
pub async fn copy_batch(
    pool: &PgPool,
    clickhouse: &ClickHouse,
    plan: &CopyPlan,
    window: Window<'_>,
    args: &Args,
) -> Result<Moved, MigrationError> {
    let (writer, body) = BodyWriter::channel();
    let column_names = plan.column_names();
    let insert = clickhouse.insert_rowbinary(&plan.target_table, &column_names, body);
    let read = encode_batch(pool, plan, window, args, writer, None);
    match tokio::join!(read, insert) {
        (Ok(moved), Ok(())) => Ok(moved),
        (Err(ReadError::Failed(err)), _) => Err(err),
        (_, Err(err)) => Err(ch_error(err)),
        (Err(ReadError::Closed), Ok(())) => Err(MigrationError::Transient(
            "the ClickHouse insert ended before its body was sent".into(),
        )),
    }
}

/// Reads the batch of `window` from Postgres and writes its rows into `writer` as `RowBinary`, ending the body
/// (or aborting it on an error). `keys`, when given, receives every row's key in order.
pub(super) async fn encode_batch(
    pool: &PgPool,
    plan: &CopyPlan,
    window: Window<'_>,
    args: &Args,
    mut writer: BodyWriter,
    keys: Option<&mut Vec<Vec<String>>>,
) -> Result<Moved, ReadError> {
    let mut connection = pool
        .acquire()
        .await
        .map_err(ReadError::sql("connect to read a copy batch"))?;
    let (sql, bounds, tid_column) = match window {
        Window::Keys { after, upto } => (
            plan.sql.read_within(after.is_some(), upto.is_some()),
            [after.unwrap_or_default(), upto.unwrap_or_default()].concat(),
            None,
        ),
        Window::KeyRange { after, upto } => (
            plan.sql.read_range(after.is_some()),
            [after.unwrap_or_default(), upto].concat(),
            None,
        ),
        Window::Pages(pages) => (
            plan.sql.read_pages(),
            vec![
                pages.after.to_string(),
                Tid::page_start(pages.end_page).to_string(),
            ],
            plan.sql.layout().ctid(),
        ),
    };
    let mut query = sqlx::query::<Postgres>(AssertSqlSafe(sql));
    for bound in bounds {
        query = query.bind(bound);
    }
    let query: sqlx::query::Query<'_, Postgres, PgArguments> =
        query.bind(i64::try_from(args.batch_size).unwrap_or(i64::MAX));
    let rows = query.fetch(&mut *connection);
    let mut large = LargeValues {
        pool,
        sql: &plan.sql,
        connection: None,
    };
    let streamed = stream_rows(rows, plan, args, &mut large, &mut writer, keys, tid_column).await;
    let ended = match streamed {
        Ok((moved, drained)) => writer
            .finish()
            .await
            .map(|()| (moved, drained))
            .map_err(ReadError::from),
        Err(err) => {
            writer.abort("the copy stopped reading Postgres").await;
            Err(err)
        }
    };
    if !matches!(ended, Ok((_, true))) {
        // Rows after the batch may still be in flight on this connection: close it rather than drain them.
        let _ = connection.detach().close_hard().await;
    }
    ended.map(|(moved, _)| moved)
}

async fn stream_rows<'c>(
    mut rows: futures_util::stream::BoxStream<'c, Result<sqlx::postgres::PgRow, sqlx::Error>>,
    plan: &CopyPlan,
    args: &Args,
    large: &mut LargeValues<'_>,
    writer: &mut BodyWriter,
    mut keys: Option<&mut Vec<Vec<String>>>,
    tid_column: Option<usize>,
) -> Result<(Moved, bool), ReadError> {
    let layout = plan.sql.layout();
    let mut moved = Moved {
        rows: 0,
        bytes: 0,
        last_key: None,
        last_tid: None,
        complete: false,
    };
    loop {
        let Some(row) = rows.next().await else {
            moved.complete = moved.rows < args.batch_size;
            return Ok((moved, true));
        };
        let row = row.map_err(ReadError::sql("read a copy batch"))?;
        let tid = match tid_column {
            Some(index) => Some(next_tid(&row, index, moved.last_tid)?),
            None => None,
        };
        let key = layout
            .key()
            .map(|i| row.try_get::<Option<String>, _>(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ReadError::sql("read the key of a row"))?;
        let key = plan.sql.keyset().next_key(moved.last_key.as_deref(), key);
        let key = key.map_err(ReadError::Failed)?;
        let mut cells: Vec<Cell<'_>> = Vec::with_capacity(plan.columns.len());
        let mut size = 0u64;
        for (index, column) in plan.columns.iter().enumerate() {
            let is_large = match layout.large_flag(index) {
                Some(flag) => row
                    .try_get::<Option<bool>, _>(flag)
                    .map_err(ReadError::sql("read a row"))?
                    .unwrap_or(false),
                None => false,
            };
            let cell = if is_large {
                Cell::Large(
                    large
                        .length(column, &key)
                        .await
                        .map_err(ReadError::Failed)?,
                )
            } else {
                let cell = encode::read(&row, layout.value(index), column).map_err(|e| {
                    ReadError::Failed(bad_value(column, &key, &format!("cannot be read: {e}")))
                })?;
                encode::prepare(cell, &column.target)
                    .map_err(|e| ReadError::Failed(bad_value(column, &key, &e.to_string())))?
            };
            size += encode::encoded_len(&cell, &column.target)
                .map_err(|e| ReadError::Failed(bad_value(column, &key, &e.to_string())))?
                as u64;
            cells.push(cell);
        }
        if moved.rows > 0 && moved.bytes + size > args.max_batch_bytes {
            return Ok((moved, false));
        }
        for (cell, column) in cells.iter().zip(&plan.columns) {
            encode::write(cell, &column.target, writer).await?;
            if let Cell::Large(len) = cell {
                large.stream(column, &key, *len, writer).await?;
            }
        }
        writer.flush_full().await?;
        drop(cells);
        moved.rows += 1;
        moved.bytes += size;
        if let Some(keys) = keys.as_deref_mut() {
            keys.push(key.clone());
        }
        moved.last_key = Some(key);
        moved.last_tid = tid;
        if moved.rows >= args.batch_size {
            // The LIMIT is reached: reading the end of the result keeps the connection reusable.
            let drained = rows.next().await.is_none();
            return Ok((moved, drained));
        }
        if moved.bytes >= args.max_batch_bytes {
            return Ok((moved, false));
        }
    }
}

/// The row's `ctid`, which must come after the previous row's: the cursor of a physical walk relies on it.
fn next_tid(row: &PgRow, index: usize, previous: Option<Tid>) -> Result<Tid, ReadError> {
    let text: &str = row
        .try_get(index)
        .map_err(ReadError::sql("read the ctid of a row"))?;
    let tid = Tid::parse(text).ok_or_else(|| {
        ReadError::Failed(MigrationError::Permanent(format!(
            "a row's ctid {text:?} is not (page,offset)"
        )))
    })?;
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

    /// The value's length in bytes.
    async fn length(
        &mut self,
        column: &ColumnPlan,
        key: &[String],
    ) -> Result<usize, MigrationError> {
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
            .flatten();
        length
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| changed(column, key))
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

fn bad_value(column: &ColumnPlan, key: &[String], problem: &str) -> MigrationError {
    MigrationError::Permanent(format!(
        "the row with key ({}): column {} ({}) {problem}",
        key.join(", "),
        column.name,
        column.pg_type
    ))
}
