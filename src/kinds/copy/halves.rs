//! A large key-order batch read as two halves at once, on two Postgres connections into two ClickHouse inserts.
//!
//! Reading rows in key order over random keys (md5, uuid v4) costs Postgres one heap page per row: one backend, one
//! core, is the bottleneck of such a copy. When a batch is large enough ([`SPLIT_MIN_ROWS`]), the key half-way
//! through it is found on the key's index (`OFFSET n/2 - 1 LIMIT 1`, an index-only scan on a vacuumed table) and the
//! two halves run concurrently: `(cursor, mid]` and `(mid, ...] LIMIT n/2`, each with half the byte budget.
//!
//! The checkpoint stays one key: after both inserts were acknowledged it is the second half's last key when the
//! first half was read to `mid`; if the byte budget closed the first half early, it is the first half's last key,
//! and the second half's rows are sent again by the next batch (they collapse in the `ReplacingMergeTree`, as any
//! re-sent batch does). That wastes the second half, so the copy then stops splitting: its rows are too large for
//! half a byte budget.

use sqlx::{AssertSqlSafe, PgPool, Postgres, Row};

use super::CopyPlan;
use super::batch::{Moved, Window, copy_batch};
use crate::args::Args;
use crate::clickhouse::ClickHouse;
use crate::migration::MigrationError;
use crate::store::StoreError;

/// Batches from this many rows are split in two.
pub const SPLIT_MIN_ROWS: u64 = 20_000;

/// What a batch moved, and where the walk goes on.
#[derive(Debug, Clone, PartialEq)]
pub struct Walked {
    /// Rows and bytes moved (of rows that will be re-sent: not counted).
    pub rows: u64,
    /// `RowBinary` bytes of those rows.
    pub bytes: u64,
    /// The next cursor (`None`: still before the first key).
    pub cursor: Option<Vec<String>>,
    /// True when the source has no rows after the cursor.
    pub exhausted: bool,
    /// True when the byte budget closed the first half early, so the second half's work will be redone: rows are
    /// too large for split batches, and the caller stops splitting.
    pub split_wasted: bool,
}

/// Copies the batch after `lower`: in two concurrent halves when `split` allows, the batch is large and the
/// source has that many rows left; else in one stream.
pub async fn copy_key_batch(
    pool: &PgPool,
    clickhouse: &ClickHouse,
    plan: &CopyPlan,
    lower: Option<&[String]>,
    args: &Args,
    split: bool,
) -> Result<Walked, MigrationError> {
    let half = args.batch_size / 2;
    let mid = if split && args.batch_size >= SPLIT_MIN_ROWS && plan.splittable {
        key_after(pool, plan, lower, half).await?
    } else {
        None
    };
    let Some(mid) = mid else {
        let moved = copy_batch(pool, clickhouse, plan, Window::Keys(lower), args).await?;
        return Ok(Walked {
            rows: moved.rows,
            bytes: moved.bytes,
            cursor: moved.last_key.or_else(|| lower.map(<[String]>::to_vec)),
            exhausted: moved.complete,
            split_wasted: false,
        });
    };
    // The first half holds at most `half` rows (up to `mid`); its limit stays the whole batch so that reading it
    // to the end reports it complete. The second half is limited to `half` rows.
    let mut first_args = args.clone();
    first_args.max_batch_bytes = (args.max_batch_bytes / 2).max(1);
    let mut second_args = first_args.clone();
    second_args.batch_size = half;
    let first = Window::KeyRange {
        after: lower,
        upto: &mid,
    };
    let second = Window::Keys(Some(&mid));
    let (first, second) = tokio::join!(
        copy_batch(pool, clickhouse, plan, first, &first_args),
        copy_batch(pool, clickhouse, plan, second, &second_args)
    );
    Ok(combine(lower, &mid, first?, second?))
}

/// The two halves as one batch (see the module docs for the cursor).
fn combine(lower: Option<&[String]>, mid: &[String], first: Moved, second: Moved) -> Walked {
    if !first.complete {
        return Walked {
            rows: first.rows,
            bytes: first.bytes,
            cursor: first.last_key.or_else(|| lower.map(<[String]>::to_vec)),
            exhausted: false,
            split_wasted: true,
        };
    }
    Walked {
        rows: first.rows + second.rows,
        bytes: first.bytes + second.bytes,
        cursor: Some(second.last_key.unwrap_or_else(|| mid.to_vec())),
        exhausted: second.complete,
        split_wasted: false,
    }
}

/// The key `n` rows after `lower`, `None` when fewer remain.
async fn key_after(
    pool: &PgPool,
    plan: &CopyPlan,
    lower: Option<&[String]>,
    n: u64,
) -> Result<Option<Vec<String>>, MigrationError> {
    let sql = plan.sql.key_after(lower.is_some());
    let mut query = sqlx::query::<Postgres>(AssertSqlSafe(sql));
    for part in lower.unwrap_or_default() {
        query = query.bind(part.as_str());
    }
    let row = query
        .bind(i64::try_from(n.saturating_sub(1)).unwrap_or(i64::MAX))
        .fetch_optional(pool)
        .await
        .map_err(StoreError::sql("find the middle key of a batch"))?;
    row.map(|row| {
        (0..plan.key.len())
            .map(|i| row.try_get::<String, _>(i))
            .collect::<Result<Vec<_>, _>>()
    })
    .transpose()
    .map_err(|e| StoreError::sql("read the middle key of a batch")(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(rows: u64, last: Option<&str>, complete: bool) -> Moved {
        Moved {
            rows,
            bytes: rows * 10,
            last_key: last.map(|k| vec![k.to_owned()]),
            last_tid: None,
            complete,
        }
    }

    #[test]
    fn both_halves_read_whole_move_the_cursor_to_the_second_halfs_last_key() {
        let mid = vec!["m".to_owned()];
        let walked = combine(
            None,
            &mid,
            moved(5, Some("m"), true),
            moved(5, Some("z"), false),
        );
        assert_eq!(walked.cursor, Some(vec!["z".to_owned()]));
        assert_eq!(
            (walked.rows, walked.bytes, walked.exhausted),
            (10, 100, false)
        );
        let end = combine(None, &mid, moved(5, Some("m"), true), moved(0, None, true));
        assert_eq!((end.cursor, end.exhausted), (Some(mid.clone()), true));
    }

    #[test]
    fn a_first_half_closed_early_keeps_the_cursor_there_and_counts_only_its_rows() {
        let lower = vec!["a".to_owned()];
        let walked = combine(
            Some(&lower),
            &["m".to_owned()],
            moved(2, Some("c"), false),
            moved(5, Some("z"), true),
        );
        assert_eq!(walked.cursor, Some(vec!["c".to_owned()]));
        assert_eq!(
            (walked.rows, walked.exhausted, walked.split_wasted),
            (2, false, true)
        );
    }
}
