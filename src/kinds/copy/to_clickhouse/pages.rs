//! `order = "physical"`: walk a Postgres table in heap order, a window of pages per batch, instead of in key order.
//!
//! A key-order walk over random keys (md5, uuid v4) reads one heap page per row; a physical walk reads each page
//! once, as `COPY` does (Postgres 14+ runs `ctid > $1 AND ctid < $2` as a TID range scan). The cursor is the
//! `ctid` of the last row sent: `(page,offset)`. A batch reads the window of pages after it, sized from the table's
//! average rows per page, and closes early at `batchSize` rows (`LIMIT`) or `maxBatchBytes`.
//!
//! An `UPDATE` moves a row to another page, where the walk can miss it; the [`super::catch_up`] pass after the walk
//! copies every row written since the walk began, so the copy is exact on a table that is still being written.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::CopyPlan;
use super::batch::{Walked, Window, copy_batch};
use super::catch_up::WriteHorizon;
use super::checkpoint::PageCursor;
use super::sql::CopySql;
use crate::args::Args;
use crate::clickhouse::ClickHouse;
use crate::migration::MigrationError;
use crate::store::{Dialect, StoreError};

/// Rows per page assumed when the table has no statistics yet.
const DEFAULT_ROWS_PER_PAGE: f64 = 50.0;

/// A heap tuple id, `(page,offset)`, as Postgres prints `ctid` (and as the checkpoint stores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tid {
    /// Block number.
    pub page: u64,
    /// Line pointer within the block (tuples start at 1; 0 marks "before the page's first tuple").
    pub offset: u32,
}

impl Tid {
    /// The position before the first tuple of `page`.
    pub fn page_start(page: u64) -> Tid {
        Tid { page, offset: 0 }
    }

    /// Parses `(12,3)`.
    pub fn parse(text: &str) -> Option<Tid> {
        let (page, offset) = text.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
        Some(Tid {
            page: page.trim().parse().ok()?,
            offset: offset.trim().parse().ok()?,
        })
    }
}

impl TryFrom<String> for Tid {
    type Error = String;

    fn try_from(text: String) -> Result<Tid, String> {
        Tid::parse(&text).ok_or_else(|| format!("the ctid {text:?} is not \"(page,offset)\""))
    }
}

impl From<Tid> for String {
    fn from(tid: Tid) -> String {
        tid.to_string()
    }
}

impl std::fmt::Display for Tid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({},{})", self.page, self.offset)
    }
}

/// The pages one batch reads: the tuples after `after`, before page `end_page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageWindow {
    /// The cursor: every tuple up to it was sent.
    pub after: Tid,
    /// The first page not in this window.
    pub end_page: u64,
}

impl PageWindow {
    /// The window after `after` covering enough pages for `batch_size` rows at `rows_per_page`.
    pub fn after(after: Tid, batch_size: u64, rows_per_page: f64) -> PageWindow {
        let pages = (batch_size as f64 / rows_per_page.max(1.0)).ceil().max(1.0) as u64;
        PageWindow {
            after,
            end_page: after.page + pages,
        }
    }

    /// The window cut at `range_end`, the first page of the next range (`None`: the walk has no end but the table's).
    pub fn within(self, range_end: Option<u64>) -> PageWindow {
        PageWindow {
            end_page: range_end.map_or(self.end_page, |end| self.end_page.min(end)),
            ..self
        }
    }
}

/// The pages at which the second and later of at most `parts` page ranges start, cutting the pages from the one
/// holding `after` up to `end_page` (exclusive) into runs of about equal length: each cut lies after `after`'s page
/// and before `end_page`, so no range is empty. Rows are about evenly spread over a heap's pages (the walk's batch
/// windows assume the same), so equal pages make about equal rows.
pub fn page_cuts(after: Tid, end_page: u64, parts: u64) -> Vec<u64> {
    let first = after.page;
    let span = end_page.saturating_sub(first);
    let parts = parts.min(span).max(1);
    let mut cuts: Vec<u64> = (1..parts).map(|i| first + span * i / parts).collect();
    cuts.dedup();
    cuts.retain(|&cut| cut > first && cut < end_page);
    cuts
}

/// What a walk in physical order needs: the table, its average rows per heap page to size the page windows, and its
/// size in pages as last read.
#[derive(Debug)]
pub struct PhysicalWalk {
    pool: PgPool,
    table: String,
    /// The copy's read with each row's `ctid`.
    sql: CopySql,
    rows_per_page: f64,
    /// The table's pages when last read: re-read only when a window reaches them, so that a batch in the middle of
    /// the table costs no extra query (a table only grows while it is walked; a VACUUM that truncates its end is
    /// seen when the walk gets there).
    known_pages: AtomicU64,
}

impl PhysicalWalk {
    /// Reads the table's shape for the walk; the caller has checked the server ([`check_server`]).
    pub async fn prepare(
        pool: &PgPool,
        table: &str,
        sql: &CopySql,
    ) -> Result<PhysicalWalk, MigrationError> {
        Ok(PhysicalWalk {
            pool: pool.clone(),
            table: table.to_owned(),
            sql: sql.clone().with_ctid(),
            rows_per_page: rows_per_page(pool, table).await?,
            known_pages: AtomicU64::new(heap_pages(pool, table).await?),
        })
    }

    /// The page ranges' cuts from `after` to `range_end` (`None`: the table's current end), for
    /// [`crate::migration::Migration::split`]: see [`page_cuts`].
    pub async fn split(
        &self,
        after: Tid,
        range_end: Option<u64>,
        parts: u64,
    ) -> Result<Vec<u64>, MigrationError> {
        let end_page = match range_end {
            Some(end) => end,
            None => {
                let pages = heap_pages(&self.pool, &self.table).await?;
                self.known_pages.store(pages, Ordering::Relaxed);
                pages
            }
        };
        Ok(page_cuts(after, end_page, parts))
    }

    /// The pool and the table, for the catch-up pass.
    pub fn source(&self) -> (&PgPool, &str) {
        (&self.pool, &self.table)
    }

    /// The copy's read with each row's `ctid` ([`CopySql::with_ctid`]), for page windows.
    pub fn sql(&self) -> &CopySql {
        &self.sql
    }

    /// The horizon of the walk at `cursor`: its own, or, before its first row, the horizon now (read before
    /// anything of the walk is). A walk that began without one (under an earlier version) has none: its catch-up
    /// copies every row.
    pub async fn horizon(
        &self,
        cursor: &PageCursor,
    ) -> Result<Option<WriteHorizon>, MigrationError> {
        match (cursor.ctid, cursor.since) {
            (_, Some(since)) => Ok(Some(since)),
            (None, None) => Ok(Some(WriteHorizon::read(&self.pool, &self.table).await?)),
            (Some(_), None) => Ok(None),
        }
    }

    /// Whether the table has pages at or after `page`.
    async fn has_pages_from(&self, page: u64) -> Result<bool, MigrationError> {
        if page < self.known_pages.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let pages = heap_pages(&self.pool, &self.table).await?;
        self.known_pages.store(pages, Ordering::Relaxed);
        Ok(page < pages)
    }
}

/// Copies the page window after the checkpoint's `ctid` cursor `after`, within the page range that ends before
/// `range_end` (`None`: the walk's only or last range). A range is exhausted when a window that reached its end was
/// read whole; the last range when that window reached the table's last page. The cursor keeps the walk's
/// horizon ([`PhysicalWalk::horizon`]).
pub async fn copy_page_batch(
    clickhouse: &ClickHouse,
    plan: &CopyPlan,
    walk: &PhysicalWalk,
    (cursor, range_end): (PageCursor, Option<u64>),
    args: &Args,
) -> Result<Walked<PageCursor>, MigrationError> {
    let since = walk.horizon(&cursor).await?;
    let after = cursor.after();
    let window = PageWindow::after(after, args.batch_size, walk.rows_per_page).within(range_end);
    let moved = copy_batch(clickhouse, plan, Window::Pages(window), args).await?;
    let next = if moved.complete {
        Tid::page_start(window.end_page)
    } else {
        moved.last_tid.unwrap_or(after)
    };
    let exhausted = moved.complete
        && match range_end {
            Some(end) => window.end_page >= end,
            None => !walk.has_pages_from(window.end_page).await?,
        };
    Ok(Walked {
        at: PageCursor::after_tid(next, since),
        moved,
        exhausted,
    })
}

/// The table's average rows per heap page, from the planner's statistics.
async fn rows_per_page(pool: &PgPool, table: &str) -> Result<f64, MigrationError> {
    let sql =
        "SELECT reltuples::float8, relpages::float8 FROM pg_class WHERE oid = $1::text::regclass";
    let (tuples, pages): (f64, f64) = sqlx::query_as(sql)
        .bind(Dialect::Postgres.quote_ident(table))
        .fetch_one(pool)
        .await
        .map_err(StoreError::sql(format!(
            "read the page statistics of {table}"
        )))?;
    Ok(if tuples > 0.0 && pages > 0.0 {
        tuples / pages
    } else {
        DEFAULT_ROWS_PER_PAGE
    })
}

/// The table's current number of heap pages (rows appended during the copy land at the end and are read).
pub(super) async fn heap_pages(pool: &PgPool, table: &str) -> Result<u64, MigrationError> {
    let sql =
        "SELECT (pg_relation_size($1::text::regclass) / current_setting('block_size')::int)::int8";
    let pages: i64 = sqlx::query_scalar(sql)
        .bind(Dialect::Postgres.quote_ident(table))
        .fetch_one(pool)
        .await
        .map_err(StoreError::sql(format!("read the size of {table}")))?;
    Ok(pages.max(0) as u64)
}

/// Postgres runs a `ctid` range as a TID range scan from this version; before, every batch would scan the table.
const TID_RANGE_SCANS_FROM: i32 = 140000;

/// The server's version: as a number (`server_version_num`) and as it names itself.
async fn server_version(pool: &PgPool) -> Result<(i32, String), MigrationError> {
    let sql =
        "SELECT current_setting('server_version_num')::int, current_setting('server_version')";
    Ok(sqlx::query_as(sql)
        .fetch_one(pool)
        .await
        .map_err(StoreError::sql("read the server version"))?)
}

/// Whether the server runs a `ctid` range as a TID range scan.
pub async fn server_supports(pool: &PgPool) -> Result<bool, MigrationError> {
    Ok(server_version(pool).await?.0 >= TID_RANGE_SCANS_FROM)
}

/// Refuses a server that does not run `ctid` ranges as TID range scans.
pub async fn check_server(pool: &PgPool) -> Result<(), MigrationError> {
    let (number, version) = server_version(pool).await?;
    if number < TID_RANGE_SCANS_FROM {
        return Err(MigrationError::Invalid(format!(
            "order = \"physical\" needs Postgres 14 or later (TID range scans); this server is version {version}; \
             use order = \"key\""
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tids_parse_print_and_order_by_page_then_offset() {
        let tid = Tid::parse("(12,3)").unwrap();
        assert_eq!(
            tid,
            Tid {
                page: 12,
                offset: 3
            }
        );
        assert_eq!(tid.to_string(), "(12,3)");
        assert!(Tid::page_start(12) < tid && tid < Tid::page_start(13));
        assert_eq!(Tid::parse("12,3"), None);
        assert_eq!(Tid::parse("(x,3)"), None);
    }

    #[test]
    fn a_window_covers_enough_pages_for_a_batch() {
        let window = PageWindow::after(Tid::page_start(100), 10_000, 24.0);
        assert_eq!(window.end_page, 100 + 417);
        assert_eq!(PageWindow::after(Tid::page_start(0), 10, 500.0).end_page, 1);
        assert_eq!(PageWindow::after(Tid::page_start(0), 10, 0.0).end_page, 10);
        assert_eq!(
            window.within(Some(300)).end_page,
            300,
            "cut at the range's end"
        );
        assert_eq!(window.within(Some(9_000)).end_page, 517);
        assert_eq!(window.within(None).end_page, 517);
    }

    #[test]
    fn page_cuts_split_the_pages_left_into_equal_nonempty_runs() {
        assert_eq!(page_cuts(Tid::page_start(0), 100, 4), [25, 50, 75]);
        let mid_page = Tid {
            page: 10,
            offset: 7,
        };
        assert_eq!(page_cuts(mid_page, 20, 2), [15], "from the cursor's page");
        assert_eq!(
            page_cuts(mid_page, 13, 8),
            [11, 12],
            "at most one range per page"
        );
        assert!(page_cuts(mid_page, 11, 2).is_empty(), "one page left");
        assert!(page_cuts(mid_page, 5, 2).is_empty(), "past the end");
        assert!(page_cuts(Tid::page_start(0), 100, 1).is_empty());
    }
}
