//! One copy batch: stream rows from the source in key order straight into one ClickHouse insert, until the batch
//! has `batchSize` rows or `maxBatchBytes` bytes (a single larger row goes alone).
//!
//! Reading and writing overlap: rows are encoded into the insert's body as they arrive, so memory holds one row
//! and a few body chunks, whatever the batch size. The insert is acknowledged before the batch returns; only then
//! does the engine write the checkpoint.
//!
//! The encoder contract is here, once: a reader ([`super::pg_rows`] for Postgres, [`super::sqlite_rows`] for
//! SQLite) turns each row into its key and its [`Cell`]s, and feeds them to an [`Encoder`], which checks the key,
//! measures the row against the byte budget, writes it as `RowBinary`, counts it, and ends the body (or aborts it,
//! so that ClickHouse writes nothing of a batch that failed).

use super::catch_up::Changed;
use super::encode::{self, Cell};
use super::mapping::ColumnPlan;
use super::pages::{PageWindow, Tid};
use super::{CopyPlan, ReadSql, pg_rows, sqlite_rows};
use crate::args::Args;
use crate::clickhouse::ClickHouse;
use crate::clickhouse::rowbinary::{BodyClosed, BodyWriter};
use crate::kinds::ch_error;
use crate::migration::MigrationError;
use crate::store::StoreError;

/// What a batch moved.
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// The rows of a page window written since a horizon, in one exported snapshot: the catch-up pass.
    Changed(Changed<'a>),
}

/// Why the reading side stopped.
pub(super) enum ReadError {
    /// The insert went away; its own error says why.
    Closed,
    /// Reading or encoding failed.
    Failed(MigrationError),
}

impl ReadError {
    /// A failed store call while `context`, as a `map_err` argument.
    pub(super) fn sql(context: &'static str) -> impl Fn(sqlx::Error) -> ReadError {
        move |err| ReadError::Failed(StoreError::sql(context)(err).into())
    }
}

impl From<BodyClosed> for ReadError {
    fn from(_: BodyClosed) -> Self {
        ReadError::Closed
    }
}

/// Copies one batch of `window` from the plan's source into its table.
pub async fn copy_batch(
    clickhouse: &ClickHouse,
    plan: &CopyPlan,
    window: Window<'_>,
    args: &Args,
) -> Result<Moved, MigrationError> {
    let (writer, body) = BodyWriter::channel();
    let column_names = plan.column_names();
    let insert = clickhouse.insert_rowbinary(&plan.target_table, &column_names, body);
    let read = encode_batch(plan, window, args, writer, None);
    match tokio::join!(read, insert) {
        (Ok(moved), Ok(())) => Ok(moved),
        (Err(ReadError::Failed(err)), _) => Err(err),
        (_, Err(err)) => Err(ch_error(err)),
        (Err(ReadError::Closed), Ok(())) => Err(MigrationError::Transient(
            "the ClickHouse insert ended before its body was sent".into(),
        )),
    }
}

/// Reads the batch of `window` from the plan's source and writes its rows into `writer` as `RowBinary`, ending the
/// body (or aborting it on an error). `keys`, when given, receives every row's key in order.
pub(super) async fn encode_batch(
    plan: &CopyPlan,
    window: Window<'_>,
    args: &Args,
    writer: BodyWriter,
    keys: Option<&mut Vec<Vec<String>>>,
) -> Result<Moved, ReadError> {
    let encoder = Encoder::new(plan, args, writer, keys);
    match &plan.sql {
        ReadSql::Postgres(pool, sql) => {
            let sql = match (window, &plan.physical) {
                (Window::Pages(_) | Window::Changed(_), Some(walk)) => walk.sql(),
                _ => sql,
            };
            pg_rows::encode(pool, sql, plan, window, encoder).await
        }
        ReadSql::Sqlite(pool, sql) => sqlite_rows::encode(pool, sql, plan, window, encoder).await,
    }
}

/// What the encoder says after a row: read the next one, or stop at a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// The batch has room for more.
    More,
    /// `batchSize` rows were written.
    RowsReached,
    /// `maxBatchBytes` bytes were written.
    BytesReached,
}

/// The encoder both readers feed, one row at a time: [`Encoder::key`], [`Encoder::measure`], [`Encoder::put`]
/// for each cell, [`Encoder::end_row`]; then [`Encoder::finish`].
pub(super) struct Encoder<'p, 'k> {
    plan: &'p CopyPlan,
    args: &'p Args,
    writer: BodyWriter,
    keys: Option<&'k mut Vec<Vec<String>>>,
    moved: Moved,
}

impl<'p, 'k> Encoder<'p, 'k> {
    fn new(
        plan: &'p CopyPlan,
        args: &'p Args,
        writer: BodyWriter,
        keys: Option<&'k mut Vec<Vec<String>>>,
    ) -> Self {
        Self {
            plan,
            args,
            writer,
            keys,
            moved: Moved::default(),
        }
    }

    /// The batch's row limit.
    pub fn batch_size(&self) -> u64 {
        self.args.batch_size
    }

    /// What was written so far.
    pub fn moved(&self) -> &Moved {
        &self.moved
    }

    /// The row's key (text, `None` for NULL), checked: no NULL, and not the previous row's key.
    pub fn key(&self, key: Vec<Option<String>>) -> Result<Vec<String>, ReadError> {
        self.plan
            .keyset()
            .next_key(self.moved.last_key.as_deref(), key)
            .map_err(ReadError::Failed)
    }

    /// The row's size as `RowBinary`, each value checked against its column (the error names key, column, value
    /// and type); `None` when the row no longer fits the batch's byte budget (the first row always fits).
    pub fn measure(&self, key: &[String], cells: &[Cell<'_>]) -> Result<Option<u64>, ReadError> {
        let mut size = 0u64;
        for (cell, column) in cells.iter().zip(&self.plan.columns) {
            size += encode::encoded_len(cell, &column.target)
                .map_err(|e| ReadError::Failed(bad_value(column, key, &e.to_string())))?
                as u64;
        }
        let over = self.moved.rows > 0 && self.moved.bytes + size > self.args.max_batch_bytes;
        Ok((!over).then_some(size))
    }

    /// Writes the cell of column `index` (measured first).
    pub async fn put(&mut self, index: usize, cell: &Cell<'_>) -> Result<(), BodyClosed> {
        encode::write(cell, &self.plan.columns[index].target, &mut self.writer).await
    }

    /// The body, to stream a [`Cell::Large`] value's bytes after [`Encoder::put`] wrote its length.
    pub fn writer(&mut self) -> &mut BodyWriter {
        &mut self.writer
    }

    /// Counts the row just written (`size` from [`Encoder::measure`]) and says whether the batch has room for more.
    pub async fn end_row(
        &mut self,
        key: Vec<String>,
        size: u64,
        tid: Option<Tid>,
    ) -> Result<Next, ReadError> {
        self.writer.flush_full().await?;
        self.moved.rows += 1;
        self.moved.bytes += size;
        if let Some(keys) = self.keys.as_deref_mut() {
            keys.push(key.clone());
        }
        self.moved.last_key = Some(key);
        self.moved.last_tid = tid;
        Ok(if self.moved.rows >= self.args.batch_size {
            Next::RowsReached
        } else if self.moved.bytes >= self.args.max_batch_bytes {
            Next::BytesReached
        } else {
            Next::More
        })
    }

    /// The read ended: every row of the window was written, unless the row limit was reached with the last one.
    pub fn source_ended(&mut self) {
        self.moved.complete = self.moved.rows < self.args.batch_size;
    }

    /// Ends the body after a successful read, or aborts it (ClickHouse then writes nothing of the batch), saying
    /// which `source` stopped.
    pub async fn finish(
        self,
        read: Result<(), ReadError>,
        source: &str,
    ) -> Result<Moved, ReadError> {
        match read {
            Ok(()) => {
                self.writer.finish().await?;
                Ok(self.moved)
            }
            Err(err) => {
                self.writer
                    .abort(&format!("the copy stopped reading {source}"))
                    .await;
                Err(err)
            }
        }
    }
}

/// A value of the row with `key` that cannot go into `column`: the batch fails naming key, column, source type and
/// `problem` (the value and the ClickHouse type).
pub(super) fn bad_value(column: &ColumnPlan, key: &[String], problem: &str) -> MigrationError {
    MigrationError::Permanent(format!(
        "the row with key ({}): column {} ({}) {problem}",
        key.join(", "),
        column.name,
        column.source_type
    ))
}
