//! The catch-up pass that makes a copy in physical order exact on a table that is still being written.
//!
//! The walk reads each heap page once, in batches, each batch in its own snapshot. An `UPDATE` writes the row's new
//! version wherever the table has room, and an `INSERT` may fill a page the walk has passed: when that page lies
//! behind the walk while the row's old version lay ahead, the walk never sees the row. Every such version was
//! written by a transaction that had not finished when the walk began, so its `xmin` is at or after the walk's
//! *horizon* — the oldest transaction still running before the walk's first read
//! (`pg_snapshot_xmin(pg_current_snapshot())`). Every other row version still live at the end was committed before
//! the walk began and never moved, so the walk read it where it lay.
//!
//! So after the walk, one more pass reads every row whose `xmin` is at or after the horizon (`age(xmin) <=
//! age(horizon)`: both ages against the same reference, so the comparison holds across xid wraparound; a row
//! frozen long ago can look newer, and is merely sent again) and copies it again. The pass reads in one snapshot:
//! a holder transaction exports it (`pg_export_snapshot`) and each of the pass's reads imports it (`SET TRANSACTION
//! SNAPSHOT`), so a row moving while the pass runs is seen exactly once, where the snapshot has it. Rows sent twice
//! collapse in the ReplacingMergeTree, which keeps the last inserted: the newer version. The target then holds
//! every row of the snapshot, each in that version or a later one.
//!
//! A table rewritten meanwhile (`VACUUM FULL`, `CLUSTER`, pg_repack: a new relfilenode) keeps its rows' `xmin` but
//! not their places, so the pass then copies every row; so does the catch-up of a walk begun by an earlier version
//! (no horizon in its checkpoint), and one whose horizon is more than a billion transactions old.
//!
//! Cost: one more read of the table's pages (the filter is evaluated on each row), plus the rows written meanwhile.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::CopyPlan;
use super::batch::{Moved, Window, copy_batch};
use super::pages::{PageWindow, Tid, heap_pages, page_cuts};
use crate::args::Args;
use crate::clickhouse::ClickHouse;
use crate::migration::MigrationError;
use crate::store::{Dialect, StoreError};

/// Where a walk's writes start: rows written at or after `xid` may have moved behind the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteHorizon {
    /// The oldest transaction id still running before the walk's first read, as 32 bits (as `xmin` holds it).
    pub xid: u32,
    /// The table's relfilenode then: a rewrite of the table changes it.
    pub filenode: u32,
}

impl WriteHorizon {
    /// The horizon now, before a walk's first read of `table`.
    pub async fn read(pool: &PgPool, table: &str) -> Result<WriteHorizon, MigrationError> {
        let sql = "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::int8 % 4294967296), \
                   pg_relation_filenode($1::text::regclass)::int8";
        let (xid, filenode): (i64, i64) = sqlx::query_as(sql)
            .bind(Dialect::Postgres.quote_ident(table))
            .fetch_one(pool)
            .await
            .map_err(StoreError::sql(format!(
                "read the write horizon of {table}"
            )))?;
        Ok(WriteHorizon {
            xid: xid as u32,
            filenode: filenode as u32,
        })
    }

    /// The horizon of a walk split into ranges, from each range's: the oldest (transaction ids compare modulo
    /// 2^32, as Postgres compares them). `None` — copy every row — when a range has none, or when they name
    /// different relfilenodes (the table was rewritten between them).
    pub fn oldest(
        horizons: impl IntoIterator<Item = Option<WriteHorizon>>,
    ) -> Option<WriteHorizon> {
        let mut oldest: Option<WriteHorizon> = None;
        for horizon in horizons {
            let horizon = horizon?;
            oldest = Some(match oldest {
                None => horizon,
                Some(seen) if seen.filenode != horizon.filenode => return None,
                Some(seen) if (horizon.xid.wrapping_sub(seen.xid) as i32) < 0 => horizon,
                Some(seen) => seen,
            });
        }
        oldest
    }
}

/// What the catch-up pass reads: the rows at or after `since` (`None`: every row), in the snapshot `snapshot`.
#[derive(Debug, Clone, Copy)]
pub struct Changed<'a> {
    /// The window of pages, from the pass's cursor to the table's end.
    pub pages: PageWindow,
    /// The horizon's transaction id; `None` reads every row.
    pub since: Option<u32>,
    /// The snapshot the holder exported.
    pub snapshot: &'a str,
}

/// A horizon older than this many transactions is not trusted: ids compare modulo 2^32, so one more than 2^31
/// transactions old looks like the future (`age()` turns negative) and no row would look newer. Postgres freezes
/// rows long before (`autovacuum_freeze_max_age`, 200 million by default), so only a copy paused for ages meets it;
/// its pass then copies every row.
const MAX_HORIZON_AGE: i64 = 1_000_000_000;

/// At most this many reads of the catch-up pass run at once: each holds a connection of the source's pool (and a
/// second one while it streams a large value), beside the holder's.
const MAX_STREAMS: u64 = 4;

/// Copies again, in one snapshot, every row of `table` written at or after `since` (see the module's doc), in
/// inserts of at most `batchSize` rows and `maxBatchBytes` bytes, with up to `streams` reads at once (each a run of
/// the table's pages, all in the same snapshot; at most [`MAX_STREAMS`]). Idempotent: run again after a failure, it
/// copies the same rows or newer versions of them.
pub async fn catch_up(
    clickhouse: &ClickHouse,
    plan: &CopyPlan,
    (pool, table): (&PgPool, &str),
    (since, streams): (Option<WriteHorizon>, u64),
    args: &Args,
) -> Result<Moved, MigrationError> {
    let read =
        |context: &str| StoreError::sql(format!("{context} for the catch-up pass of {table}"));
    let mut holder = pool.begin().await.map_err(read("begin"))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *holder)
        .await
        .map_err(read("start a snapshot"))?;
    let sql = "SELECT pg_export_snapshot(), pg_relation_filenode($1::text::regclass)::int8, \
               age($2::text::xid)::int8";
    let (snapshot, filenode, age): (String, i64, Option<i64>) = sqlx::query_as(sql)
        .bind(Dialect::Postgres.quote_ident(table))
        .bind(since.map(|horizon| horizon.xid.to_string()))
        .fetch_one(&mut *holder)
        .await
        .map_err(read("export a snapshot"))?;
    let trusted = |horizon: &WriteHorizon| {
        i64::from(horizon.filenode) == filenode
            && age.is_some_and(|age| (0..=MAX_HORIZON_AGE).contains(&age))
    };
    let since = since.filter(trusted).map(|horizon| horizon.xid);
    // The snapshot sees no row beyond the pages the table has now.
    let end_page = heap_pages(pool, table).await? + 1;
    let start = Tid::page_start(0);
    let cuts = page_cuts(start, end_page, streams.clamp(1, MAX_STREAMS));
    let starts = std::iter::once(start).chain(cuts.iter().map(|&page| Tid::page_start(page)));
    let ends = cuts.iter().copied().chain(std::iter::once(end_page));
    let runs = starts.zip(ends).map(|(after, end_page)| {
        let changed = Changed {
            pages: PageWindow { after, end_page },
            since,
            snapshot: &snapshot,
        };
        copy_run(clickhouse, plan, changed, args)
    });
    let moved = futures_util::future::try_join_all(runs).await?;
    holder.rollback().await.map_err(read("end the snapshot"))?;
    Ok(Moved {
        rows: moved.iter().map(|m| m.rows).sum(),
        bytes: moved.iter().map(|m| m.bytes).sum(),
        complete: true,
        ..Moved::default()
    })
}

/// Copies the rows `changed` selects in its run of pages, insert after insert, until the run is read to its end.
async fn copy_run(
    clickhouse: &ClickHouse,
    plan: &CopyPlan,
    mut changed: Changed<'_>,
    args: &Args,
) -> Result<Moved, MigrationError> {
    let mut total = Moved {
        complete: true,
        ..Moved::default()
    };
    loop {
        let moved = copy_batch(clickhouse, plan, Window::Changed(changed), args).await?;
        total.rows += moved.rows;
        total.bytes += moved.bytes;
        match moved.last_tid {
            Some(last) if !moved.complete => changed.pages.after = last,
            _ => return Ok(total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(xid: u32) -> Option<WriteHorizon> {
        Some(WriteHorizon { xid, filenode: 7 })
    }

    #[test]
    fn the_oldest_horizon_is_taken_modulo_the_xid_space() {
        assert_eq!(WriteHorizon::oldest([at(900), at(500), at(700)]), at(500));
        assert_eq!(
            WriteHorizon::oldest([at(5), at(u32::MAX - 10)]),
            at(u32::MAX - 10),
            "an xid just before the wraparound is older than one just after it"
        );
        assert_eq!(
            WriteHorizon::oldest([at(5), None]),
            None,
            "a range without one"
        );
        let rewritten = Some(WriteHorizon {
            xid: 600,
            filenode: 8,
        });
        assert_eq!(WriteHorizon::oldest([at(500), rewritten]), None);
        assert_eq!(WriteHorizon::oldest([]), None);
    }
}
