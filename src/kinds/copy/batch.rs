//! One copy batch: stream rows from Postgres in key order straight into one ClickHouse insert, until the batch
//! has `batchSize` rows or `maxBatchBytes` bytes (a single larger row goes alone).
//!
//! Reading and writing overlap: rows are encoded into the insert's body as they arrive, so memory holds one row
//! and a few body chunks, whatever the batch size. The insert is acknowledged before the batch returns; only then
//! does the engine write the checkpoint.

use futures_util::StreamExt;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgArguments;
use sqlx::{AssertSqlSafe, Connection, PgPool, Postgres, Row};

use super::encode::{self, Cell};
use super::mapping::ColumnPlan;
use super::sql::{CopySql, SLICE_BYTES};
use super::{CopyPlan, ch_error};
use crate::args::Args;
use crate::clickhouse::ClickHouse;
use crate::clickhouse::rowbinary::{BodyClosed, BodyWriter};
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
    /// True when the source has no rows after this batch.
    pub exhausted: bool,
}

/// Why the reading side stopped.
enum ReadError {
    /// The insert went away; its own error says why.
    Closed,
    /// Reading or encoding failed.
    Failed(MigrationError),
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
    lower: Option<&[String]>,
    args: &Args,
) -> Result<Moved, MigrationError> {
    let mut connection = pool
        .acquire()
        .await
        .map_err(StoreError::sql("connect to read a copy batch"))?;
    let (writer, body) = BodyWriter::channel();
    let column_names = plan.column_names();
    let insert = clickhouse.insert_rowbinary(&plan.target_table, &column_names, body);
    let sql = plan.sql.read(lower.is_some());
    let mut query = sqlx::query::<Postgres>(AssertSqlSafe(sql));
    for bound in lower.unwrap_or_default() {
        query = query.bind(bound.as_str());
    }
    let query: sqlx::query::Query<'_, Postgres, PgArguments> =
        query.bind(i64::try_from(args.batch_size).unwrap_or(i64::MAX));
    let read = async {
        let mut writer = writer;
        let rows = query.fetch(&mut *connection);
        let mut large = LargeValues {
            pool,
            sql: &plan.sql,
            connection: None,
        };
        match stream_rows(rows, plan, args, &mut large, &mut writer).await {
            Ok(read) => {
                writer.finish().await?;
                Ok(read)
            }
            Err(err) => {
                writer.abort("the copy stopped reading Postgres").await;
                Err(err)
            }
        }
    };
    let (read, inserted) = tokio::join!(read, insert);
    let (moved, drained) = match (read, inserted) {
        (Ok(read), Ok(())) => read,
        (Err(ReadError::Failed(err)), _) => return Err(err),
        (_, Err(err)) => return Err(ch_error(err)),
        (Err(ReadError::Closed), Ok(())) => {
            return Err(MigrationError::Transient(
                "the ClickHouse insert ended before its body was sent".into(),
            ));
        }
    };
    if !drained {
        // Rows after the batch may still be in flight on this connection: close it rather than drain them.
        let _ = connection.detach().close_hard().await;
    }
    Ok(moved)
}

async fn stream_rows<'c>(
    mut rows: futures_util::stream::BoxStream<'c, Result<sqlx::postgres::PgRow, sqlx::Error>>,
    plan: &CopyPlan,
    args: &Args,
    large: &mut LargeValues<'_>,
    writer: &mut BodyWriter,
) -> Result<(Moved, bool), ReadError> {
    let key_start = plan.columns.len();
    let mut moved = Moved {
        rows: 0,
        bytes: 0,
        last_key: None,
        exhausted: false,
    };
    loop {
        let Some(row) = rows.next().await else {
            moved.exhausted = moved.rows < args.batch_size;
            return Ok((moved, true));
        };
        let row =
            row.map_err(|e| ReadError::Failed(StoreError::sql("read a copy batch")(e).into()))?;
        let key = (key_start..key_start + plan.sql_key_arity())
            .map(|i| row.try_get::<Option<String>, _>(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ReadError::Failed(StoreError::sql("read the key of a row")(e).into()))?;
        let key = plan.sql.keyset().next_key(moved.last_key.as_deref(), key);
        let key = key.map_err(ReadError::Failed)?;
        let mut cells: Vec<Cell<'_>> = Vec::with_capacity(plan.columns.len());
        let mut size = 0u64;
        let mut flag = key_start + plan.sql_key_arity();
        for (index, column) in plan.columns.iter().enumerate() {
            let is_large = column.sliced() && {
                flag += 1;
                row.try_get::<Option<bool>, _>(flag - 1)
                    .map_err(|e| ReadError::Failed(StoreError::sql("read a row")(e).into()))?
                    .unwrap_or(false)
            };
            let cell = if is_large {
                Cell::Large(
                    large
                        .length(column, &key)
                        .await
                        .map_err(ReadError::Failed)?,
                )
            } else {
                encode::read(&row, index, column).map_err(|e| {
                    ReadError::Failed(bad_value(column, &key, &format!("cannot be read: {e}")))
                })?
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
        moved.last_key = Some(key);
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
                .map_err(|e| {
                    ReadError::Failed(StoreError::sql("read a slice of a large value")(e).into())
                })?
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
    MigrationError::Invalid(format!(
        "the row with key ({}): column {} ({}) {problem}",
        key.join(", "),
        column.name,
        column.pg_type
    ))
}
