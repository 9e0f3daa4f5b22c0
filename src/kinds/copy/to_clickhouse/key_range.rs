//! A key-order batch from a table, read as a key range in whatever order Postgres likes.
//!
//! The batch's last key is found first on the key's index (`ORDER BY key LIMIT 1 OFFSET n - 1`, an index-only scan
//! on a vacuumed table, as the backfill does); then the rows `(cursor, last]` are read without `ORDER BY`, so
//! Postgres may fetch them with a bitmap heap scan — in heap order, each page once per batch — instead of one heap
//! page per row in key order. ClickHouse sorts each insert itself, so the order does not matter to it, and the
//! checkpoint is the range's last key. On random keys (md5, uuid v4) this cut Postgres' CPU for a copy by ~20 % in
//! the benchmark.
//!
//! Within the range the byte budget cannot close the batch at a key (rows are not in key order), so a range is cut
//! to the rows that fit three quarters of `maxBatchBytes` at the average size of the rows measured in the batch
//! before (`n` is the smaller of that and `batchSize`). A range that still outgrows the budget (its rows are larger
//! than the ones before) is abandoned: what was sent collapses with the rows sent again, the batch is read again in
//! key order, which closes at the budget exactly, and the next range is cut to the sizes just measured. Before this
//! sizing, adaptive batch sizes past the budget (500,000 rows of 200 bytes against 64 MiB) turned every copy over
//! to key order for good, at half the speed. A range that got more rows than it had when it was cut (inserted
//! meanwhile) turns the copy over to key order for good: its writers may keep doing that. The last, partial batch
//! (fewer than `n` rows left) is read in key order too, and so is every batch while fewer than 100 rows fit the
//! budget (large rows: key order fills it). Query sources always are: their key may have no index to find the
//! range's end on; and so are SQLite sources (see [`super::sqlite_rows`]).

use std::sync::atomic::Ordering;

use sqlx::{AssertSqlSafe, Postgres, Row};

use super::batch::{Moved, Walked, Window, copy_batch};
use super::{CopyPlan, ReadSql};
use crate::args::Args;
use crate::clickhouse::ClickHouse;
use crate::kinds::checkpoint::KeyCursor;
use crate::migration::MigrationError;
use crate::store::StoreError;

/// Copies the batch after the checkpoint's key cursor `lower`, up to `end` (a key range's last key, parallelism):
/// as a key range while the plan allows, else in key order. Stops reading ranges for good when rows were added to
/// one while it was read.
pub async fn copy_key_batch(
    clickhouse: &ClickHouse,
    plan: &CopyPlan,
    lower: Option<&[String]>,
    end: Option<&[String]>,
    args: &Args,
) -> Result<Walked<KeyCursor>, MigrationError> {
    // The batch's last key, or, in a key range with less than a batch left, the range's own end.
    let range = match range_rows(plan, args) {
        Some(rows) if plan.ranged.load(Ordering::Relaxed) => key_after(plan, lower, end, rows)
            .await?
            .map(|last| (rows, last, false))
            .or_else(|| end.map(|end| (rows, end.to_vec(), true))),
        _ => None,
    };
    if let Some((rows, last, ends_range)) = range {
        // One more than the range can hold: reading it to its end then reports it complete. More rows than that
        // (inserted meanwhile) stop it at the limit, incomplete.
        let mut range_args = args.clone();
        range_args.batch_size = rows.saturating_add(1);
        let window = Window::KeyRange {
            after: lower,
            upto: &last,
        };
        let moved = copy_batch(clickhouse, plan, window, &range_args).await?;
        measured(plan, &moved);
        if moved.complete {
            return Ok(Walked {
                at: KeyCursor::after(Some(last)),
                moved,
                exhausted: ends_range,
            });
        }
        if moved.rows > rows {
            tracing::info!(
                table = %plan.target_table,
                "rows were added to a key range while it was read; reading in key order from now on"
            );
            plan.ranged.store(false, Ordering::Relaxed);
        } else {
            tracing::info!(
                table = %plan.target_table,
                rows = moved.rows,
                bytes = moved.bytes,
                "a key range outgrew maxBatchBytes; reading this batch in key order, the next range sized to its rows"
            );
        }
    }
    let window = Window::Keys {
        after: lower,
        upto: end,
    };
    let moved = copy_batch(clickhouse, plan, window, args).await?;
    measured(plan, &moved);
    let cursor = moved
        .last_key
        .clone()
        .or_else(|| lower.map(<[String]>::to_vec));
    Ok(Walked {
        at: KeyCursor::after(cursor),
        exhausted: moved.complete,
        moved,
    })
}

/// Below this many rows a key range gains nothing over key order (Postgres reads so few rows by key either way),
/// while key order closes at the byte budget exactly, so batches of large rows fill it: 40 rows of 1–50 MB took
/// 18 s in one-row ranges against 12 s in key order.
const MIN_RANGE_ROWS: u64 = 100;

/// The rows of the next key range: `batchSize`, or fewer where the rows measured so far would not fit three
/// quarters of `maxBatchBytes` (the rest is room for rows larger than those); `None` (read in key order) when
/// fewer than [`MIN_RANGE_ROWS`] would.
fn range_rows(plan: &CopyPlan, args: &Args) -> Option<u64> {
    let rows = match plan.row_bytes.load(Ordering::Relaxed) {
        0 => args.batch_size,
        row_bytes => (args.max_batch_bytes / 4 * 3 / row_bytes).clamp(1, args.batch_size.max(1)),
    };
    (rows >= MIN_RANGE_ROWS.min(args.batch_size)).then_some(rows)
}

/// Remembers the average row size of a batch that moved rows, for [`range_rows`].
fn measured(plan: &CopyPlan, moved: &Moved) {
    if let Some(row_bytes) = moved.bytes.checked_div(moved.rows) {
        plan.row_bytes.store(row_bytes.max(1), Ordering::Relaxed);
    }
}

/// The key `n` rows after `lower`, up to `end` if given (the `where` filter aside: any key bounds a range), `None`
/// when fewer remain, or when the source is not Postgres (only a Postgres source is read as key ranges).
async fn key_after(
    plan: &CopyPlan,
    lower: Option<&[String]>,
    end: Option<&[String]>,
    n: u64,
) -> Result<Option<Vec<String>>, MigrationError> {
    let ReadSql::Postgres(pool, sql) = &plan.sql else {
        return Ok(None);
    };
    let sql = sql.key_after(lower.is_some(), end.is_some());
    let mut query = sqlx::query::<Postgres>(AssertSqlSafe(sql));
    for part in [lower.unwrap_or_default(), end.unwrap_or_default()].concat() {
        query = query.bind(part);
    }
    let row = query
        .bind(i64::try_from(n.saturating_sub(1)).unwrap_or(i64::MAX))
        .fetch_optional(pool)
        .await
        .map_err(StoreError::sql("find the last key of a batch"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let key = (0..plan.key.len())
        .map(|i| row.try_get::<String, _>(i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::sql("read the last key of a batch"))?;
    Ok(Some(key))
}
