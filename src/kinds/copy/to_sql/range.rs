//! The key range of one batch of the copies that move rows without reading them into the worker
//! ([`super::in_database`], [`super::pg_pipe`]): after the cursor, up to the key `batchSize` rows on in the source's
//! key order (within the walk's key range, with `parallelism`), found on the key's index alone, as the backfill finds its ranges (the `where` filter aside: every key
//! bounds a range, and a range may hold fewer matching rows).

use crate::kinds::checkpoint::{Checkpoint, KeyCursor};
use crate::kinds::keyset::Keyset;
use crate::migration::{BatchOutcome, MigrationError};
use crate::store::{SqlParam, SqlStore, StoreError};

/// Where a batch ends: the last key it takes, and whether it is the walk's (the key range's) last batch.
pub(super) struct BatchEnd {
    /// The batch's last key; `None` for the last batch of a walk without an end (every row after the cursor).
    pub upper: Option<Vec<String>>,
    /// No batch follows this one.
    pub last: bool,
}

/// The end of the batch after `lower`, within the key range that ends at `end` (inclusive; `None`: the source's
/// end): the key `size` rows on, or, when fewer rows remain, the range's end. Read in a read transaction of the
/// source's own.
pub(super) async fn batch_end(
    source: &dyn SqlStore,
    walk: &Keyset,
    lower: Option<&[String]>,
    end: Option<&[String]>,
    size: u64,
) -> Result<BatchEnd, MigrationError> {
    let mut params = texts(lower.unwrap_or_default());
    params.extend(texts(end.unwrap_or_default()));
    params.push(SqlParam::Int(
        i64::try_from(size.saturating_sub(1)).unwrap_or(i64::MAX),
    ));
    let mut tx = source.begin_read().await?;
    let upper = tx
        .fetch_optional_text(
            &walk.key_after_within(lower.is_some(), end.is_some()),
            &params,
        )
        .await?;
    tx.commit().await?;
    Ok(match upper {
        Some(upper) => BatchEnd {
            upper: Some(upper),
            last: false,
        },
        None => BatchEnd {
            upper: end.map(<[String]>::to_vec),
            last: true,
        },
    })
}

/// The bounds as parameters: `lower` (if any), then `upper` (if any), one text per key column.
pub(super) fn texts(keys: &[String]) -> Vec<SqlParam> {
    keys.iter().cloned().map(SqlParam::Text).collect()
}

/// The outcome of a batch that moved `rows` (`bytes`) in (`lower`, `end.upper`]: the cursor at its upper key (where
/// it was, for a last batch without one), done after the last batch.
pub(super) fn outcome(
    lower: Option<&[String]>,
    end: BatchEnd,
    rows: u64,
    bytes: u64,
) -> BatchOutcome {
    let at = end.upper.or_else(|| lower.map(<[String]>::to_vec));
    BatchOutcome {
        state: KeyCursor::after(at).to_state(),
        done: end.last,
        rows,
        bytes,
    }
}

/// A batch's write error, a key that repeats in the range said as such: the upsert of one range then writes one
/// target row twice. Only a query's result can repeat a key (a table's key has a unique index, checked first).
pub(super) fn key_repeated(
    err: StoreError,
    lower: Option<&[String]>,
    upper: Option<&[String]>,
) -> MigrationError {
    if !err.is_row_written_twice() {
        return err.into();
    }
    let bound = |key: Option<&[String]>, none: &str| {
        key.map_or_else(|| none.to_owned(), |k| format!("({})", k.join(", ")))
    };
    MigrationError::Permanent(format!(
        "the source has two rows with one key after {} up to {}; the copy needs a key unique in the source (for \
         from.query: in the query's result)",
        bound(lower, "the start"),
        bound(upper, "the end")
    ))
}
