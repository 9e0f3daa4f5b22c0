//! The SQLite reader of a copy batch: the next `batchSize` rows after the cursor in key order (the one keyset walk,
//! in SQLite's dialect), each value turned into its ClickHouse column's type by its own storage class
//! ([`super::sqlite_values`]) and fed to the batch's [`Encoder`].
//!
//! Always in key order: a SQLite file is read in-process, so reading a key range in heap order (what
//! [`super::key_range`] does for Postgres) would save no round trips, and SQLite has no physical walk. Values are
//! read whole with their row (no large-value slicing): the file is local and `maxBatchBytes` still closes a batch.

use std::borrow::Cow;

use futures_util::StreamExt;
use sqlx::sqlite::{SqliteRow, SqliteValueRef};
use sqlx::{AssertSqlSafe, Decode, Row, Sqlite, SqlitePool, TypeInfo, ValueRef};

use super::CopyPlan;
use super::batch::{Encoder, Moved, Next, ReadError, Window, bad_value};
use super::encode::Cell;
use super::mapping::ColumnPlan;
use super::sqlite_values::{Stored, cell};
use crate::kinds::copy::spec::Relation;
use crate::kinds::keyset::Keyset;
use crate::migration::MigrationError;
use crate::store::{Dialect, StoreError};

/// Rows that may wait between SQLite's thread and the encoder (so memory holds up to this many rows of a batch).
/// Measured on the benchmark's 500,000 rows: sqlx's default, 50, ran at 0.51× the `sqlite3 | curl` reference (the
/// two threads took turns on the channel's lock for nearly every row), 256 at 0.67–0.73×, 4,096 at 0.57–0.60×.
const ROW_BUFFER: usize = 256;

/// A pool of one connection on the source file for the copy's reads, with a [`ROW_BUFFER`]-row channel.
pub async fn reading_pool(pool: &SqlitePool) -> Result<SqlitePool, MigrationError> {
    let options = (*pool.connect_options())
        .clone()
        .row_buffer_size(ROW_BUFFER);
    Ok(sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(StoreError::sql(
            "open the SQLite source for the copy's reads",
        ))?)
}

/// The read of a SQLite source: every copied column, then the key as text (the cursor).
#[derive(Debug, Clone)]
pub struct SqliteSql {
    select: String,
    keyset: Keyset,
    width: usize,
}

impl SqliteSql {
    /// The read of `columns` of `source`, walked over `keys` (of declared `key_types`).
    pub fn new(
        source: &Relation,
        columns: &[ColumnPlan],
        keys: &[String],
        key_types: &[String],
        filter: Option<&str>,
    ) -> Self {
        let dialect = Dialect::Sqlite;
        let keyset = Keyset::aliased(dialect, &source.sql(dialect), keys, key_types, filter);
        let values = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("bgm_src.{} AS bgm_c{i}", c.quoted));
        let cursors = keyset
            .keys()
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} AS bgm_cursor_{i}", dialect.as_text(k)));
        Self {
            select: values.chain(cursors).collect::<Vec<_>>().join(", "),
            keyset,
            width: columns.len(),
        }
    }

    /// The key walk.
    pub fn keyset(&self) -> &Keyset {
        &self.keyset
    }

    /// Runs the read for no rows: the columns and the `where` filter must work on the source.
    pub async fn check(
        &self,
        pool: &SqlitePool,
        relation: &Relation,
    ) -> Result<(), MigrationError> {
        sqlx::query(AssertSqlSafe(self.keyset.read(&self.select, false)))
            .bind(0i64)
            .fetch_all(pool)
            .await
            .map(|_| ())
            .map_err(|err| {
                MigrationError::Invalid(format!(
                    "the columns or the where filter do not work on {relation}: {err}"
                ))
            })
    }
}

/// Reads the batch of `window` from SQLite with `sql` into `encoder`, then ends (or aborts) its body.
pub(super) async fn encode(
    pool: &SqlitePool,
    sql: &SqliteSql,
    plan: &CopyPlan,
    window: Window<'_>,
    mut encoder: Encoder<'_, '_>,
) -> Result<Moved, ReadError> {
    let read = stream_rows(pool, sql, plan, window, &mut encoder).await;
    encoder.finish(read, "SQLite").await
}

async fn stream_rows(
    pool: &SqlitePool,
    sql: &SqliteSql,
    plan: &CopyPlan,
    window: Window<'_>,
    encoder: &mut Encoder<'_, '_>,
) -> Result<(), ReadError> {
    let (after, upto) = match window {
        Window::Keys { after, upto } => (after, upto),
        Window::KeyRange { after, upto } => (after, Some(upto)),
        Window::Pages(_) | Window::Changed(_) => {
            return Err(ReadError::Failed(MigrationError::Permanent(
                "a SQLite source is walked in key order, not in pages".into(),
            )));
        }
    };
    let statement = sql
        .keyset
        .read_within(&sql.select, after.is_some(), upto.is_some());
    let mut query = sqlx::query::<Sqlite>(AssertSqlSafe(statement));
    for bound in [after.unwrap_or_default(), upto.unwrap_or_default()].concat() {
        query = query.bind(bound);
    }
    let query = query.bind(i64::try_from(encoder.batch_size()).unwrap_or(i64::MAX));
    let mut connection = pool.acquire().await.map_err(ReadError::sql(
        "open the SQLite source to read a copy batch",
    ))?;
    let mut rows = query.fetch(&mut *connection);
    while let Some(row) = rows.next().await {
        let row = row.map_err(ReadError::sql("read a copy batch from SQLite"))?;
        let key = (sql.width..sql.width + sql.keyset.arity())
            .map(|i| row.try_get::<Option<String>, _>(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ReadError::sql("read the key of a row"))?;
        let key = encoder.key(key)?;
        let cells = plan
            .columns
            .iter()
            .enumerate()
            .map(|(index, column)| {
                let stored = stored(&row, index)
                    .map_err(|e| bad_value(column, &key, &format!("cannot be read: {e}")))?;
                cell(stored, &column.target).map_err(|e| bad_value(column, &key, &e.to_string()))
            })
            .collect::<Result<Vec<Cell<'_>>, _>>()
            .map_err(ReadError::Failed)?;
        let Some(size) = encoder.measure(&key, &cells)? else {
            return Ok(());
        };
        for (index, cell) in cells.iter().enumerate() {
            encoder.put(index, cell).await?;
        }
        drop(cells);
        if encoder.end_row(key, size, None).await? != Next::More {
            return Ok(());
        }
    }
    encoder.source_ended();
    Ok(())
}

/// Column `index` of `row` as SQLite stored it.
fn stored(row: &SqliteRow, index: usize) -> Result<Stored<'_>, sqlx::error::BoxDynError> {
    let value: SqliteValueRef<'_> = row.try_get_raw(index)?;
    if value.is_null() {
        return Ok(Stored::Null);
    }
    let class = match value.type_info().name() {
        "INTEGER" => Class::Integer,
        "REAL" => Class::Real,
        "BLOB" => Class::Blob,
        _ => Class::Text,
    };
    Ok(match class {
        Class::Integer => Stored::Integer(<i64 as Decode<Sqlite>>::decode(value)?),
        Class::Real => Stored::Real(<f64 as Decode<Sqlite>>::decode(value)?),
        Class::Blob => Stored::Blob(<&[u8] as Decode<Sqlite>>::decode(value)?),
        Class::Text => Stored::Text(Cow::Borrowed(<&str as Decode<Sqlite>>::decode(value)?)),
    })
}

/// A non-NULL value's storage class.
enum Class {
    Integer,
    Real,
    Text,
    Blob,
}
