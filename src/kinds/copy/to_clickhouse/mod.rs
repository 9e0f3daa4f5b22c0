//! The copy from Postgres or SQLite into ClickHouse, idempotent under retries and crashes: the target must be a
//! `ReplacingMergeTree` whose `ORDER BY` includes the key, so a batch sent twice (a crash after ClickHouse
//! acknowledged the insert but before the checkpoint was written) collapses into one row per key on merge
//! (`SELECT ... FINAL` reads it deduplicated at once). The checkpoint advances only after ClickHouse acknowledged the
//! batch's insert.
//!
//! Layout: this file checks both tables and builds the [`CopyPlan`], then runs a batch of the walk the plan chose;
//! [`checkpoint`] is the checkpoint. [`batch`] streams one batch through the one encoder contract ([`encode`]
//! writes cells as `RowBinary`, [`from_text`] turns text into types Postgres and SQLite lack), fed by a reader per
//! source store: [`pg_rows`] ([`mapping`] maps and checks Postgres types, [`sql`] builds the reads with the
//! large-value reads) and [`sqlite_rows`] ([`sqlite_values`] turns SQLite's dynamically typed values into the
//! column's type). The walks: [`key_range`] (key order, as key ranges while it can), [`pages`] (physical order,
//! Postgres, closed by the [`catch_up`] pass); [`order`] chooses between them. [`verify`] compares both sides after
//! the last batch.

mod batch;
mod binary_rows;
mod binary_values;
mod catch_up;
mod checkpoint;
mod copy_statement;
mod encode;
mod from_text;
mod key_range;
mod mapping;
mod order;
mod pages;
mod pg_rows;
mod sql;
mod sqlite_rows;
mod sqlite_values;
mod verify;

use std::sync::atomic::{AtomicBool, AtomicU64};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use super::source::{SourceShape, estimate, names_of};
use super::spec::{CopySpec, Order, Relation};
use crate::args::Args;
use crate::clickhouse::ClickHouse;
use crate::kinds::ch_error;
use crate::kinds::checkpoint::{Checkpoint, KeyCursor, range_end};
use crate::kinds::keyset::{self, Keyset};
use crate::migration::{Batch, BatchOutcome, Migration, MigrationError};
use crate::store::{PgStore, SqlStore, SqliteStore};
use serde_json::Value;
use sqlx::{PgPool, SqlitePool};

pub use self::mapping::{ColumnPlan, plan_column};

use self::batch::Walked;
use self::catch_up::WriteHorizon;
use self::checkpoint::{CopyCheckpoint, PageCursor};
use self::order::Walk;
use self::pages::{PhysicalWalk, Tid};
use self::sql::CopySql;
use self::sqlite_rows::SqliteSql;
use self::verify::VerifyState;

/// Rows per batch into ClickHouse unless `args.batchSize` says otherwise. Each insert becomes a part the server
/// merges later, so fewer, larger inserts cost it less (ClickHouse's own advice: 10k–100k+ rows, about one insert
/// per second); `maxBatchBytes` still bounds a batch, and memory does not grow with it (rows stream).
pub const CLICKHOUSE_BATCH_SIZE: u64 = 100_000;

/// The batch duration adaptive sizing aims for into ClickHouse: longer than the engine's 500 ms, because shrinking
/// batches to half a second multiplies the parts the server must merge — measured on 1,000,000 random-key rows,
/// 500 ms batches ran at 0.62× the raw pipe, 100,000-row batches at 0.81×. A copy holds no locks in the source,
/// so a longer batch costs the foreground little.
pub const CLICKHOUSE_TARGET_BATCH_MS: u64 = 2_000;

/// The first page of the next page range, from the checkpoint `upper` at which it starts (`None`: no end). Cuts are
/// always at a page's start ([`pages::page_cuts`]).
fn page_range_end(upper: Option<&Value>) -> Result<Option<u64>, MigrationError> {
    upper
        .map(|upper| Ok(CopyCheckpoint::<PageCursor>::read(upper)?.walk.after().page))
        .transpose()
}

/// The store a copy into ClickHouse reads: each has its reader feeding the one encoder ([`batch`]).
#[derive(Clone)]
pub enum Reader {
    /// A Postgres database: typed values, large text streamed in slices, key ranges, physical order.
    Postgres(PgStore),
    /// A SQLite file: dynamically typed values, in key order.
    Sqlite(SqliteStore),
}

impl Reader {
    fn store(&self) -> &dyn SqlStore {
        match self {
            Reader::Postgres(store) => store,
            Reader::Sqlite(store) => store,
        }
    }
}

/// A copy from Postgres or SQLite into ClickHouse, bound to its stores.
pub struct ClickHouseCopy {
    spec: CopySpec,
    source: Reader,
    target: ClickHouse,
    plan: OnceCell<CopyPlan>,
}

/// The read statements of a plan, in the source's dialect, with the pool they run on.
enum ReadSql {
    /// Postgres: typed reads, large-value slices, key ranges and pages.
    Postgres(PgPool, CopySql),
    /// SQLite: the key-order read.
    Sqlite(SqlitePool, SqliteSql),
}

impl std::fmt::Debug for ReadSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadSql::Postgres(_, sql) => f.debug_tuple("Postgres").field(sql).finish(),
            ReadSql::Sqlite(_, sql) => f.debug_tuple("Sqlite").field(sql).finish(),
        }
    }
}

/// What validation established: the columns with their mapping, and the read statement.
#[derive(Debug)]
pub struct CopyPlan {
    columns: Vec<ColumnPlan>,
    sql: ReadSql,
    key: Vec<String>,
    target_table: String,
    /// Set when the copy may walk in physical order: asked for, or `order = "auto"` on a Postgres table.
    physical: Option<PhysicalWalk>,
    /// The walk `order = "auto"` chose for a copy that starts, from the table's statistics (read once).
    chosen: OnceCell<Walk>,
    /// Whether key-order batches are read as key ranges: a Postgres table source (its key has an index to find a
    /// range's end on), until rows were added to a range while it was read (see [`key_range`]).
    ranged: AtomicBool,
    /// The average `RowBinary` size of a row in the last key-order batch (0 before the first): key ranges are cut
    /// to the rows that fit `maxBatchBytes` at that size (see [`key_range`]).
    row_bytes: AtomicU64,
}

impl CopyPlan {
    fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// The key columns' plans, in key order (the spec requires the copied columns to include the key).
    fn key_columns(&self) -> Vec<&ColumnPlan> {
        self.key
            .iter()
            .filter_map(|k| self.columns.iter().find(|c| &c.name == k))
            .collect()
    }

    /// The source's kind of store, for messages.
    fn source_name(&self) -> &'static str {
        match &self.sql {
            ReadSql::Postgres(..) => "Postgres",
            ReadSql::Sqlite(..) => "SQLite",
        }
    }

    /// The key walk of the source.
    fn keyset(&self) -> &Keyset {
        match &self.sql {
            ReadSql::Postgres(_, sql) => sql.keyset(),
            ReadSql::Sqlite(_, sql) => sql.keyset(),
        }
    }
}

impl ClickHouseCopy {
    /// Binds a parsed definition to its source (Postgres or SQLite) and ClickHouse target.
    pub fn new(spec: CopySpec, source: Reader, target: ClickHouse) -> Self {
        Self {
            spec,
            source,
            target,
            plan: OnceCell::new(),
        }
    }

    async fn plan(&self) -> Result<&CopyPlan, MigrationError> {
        self.plan.get_or_try_init(|| self.prepare()).await
    }

    /// Checks both tables and maps every column, before any row moves.
    async fn prepare(&self) -> Result<CopyPlan, MigrationError> {
        let (from, to) = (&self.spec.from, &self.spec.to);
        let invalid = MigrationError::Invalid;
        let shape = SourceShape::check(self.source.store(), from).await?;
        self.check_target().await?;
        let target_columns = self.target.columns(&to.table).await.map_err(ch_error)?;
        let mut columns = Vec::with_capacity(shape.names.len());
        for name in &shape.names {
            let source = shape.column(name).ok_or_else(|| {
                invalid(format!(
                    "column {name} does not exist in {} of store {} (its columns: {})",
                    from.relation,
                    from.store,
                    names_of(&shape.columns)
                ))
            })?;
            let target = target_columns.iter().find(|c| &c.name == name).ok_or_else(|| {
                invalid(format!(
                    "column {name}: the ClickHouse table {} has no column of that name (columns are copied by name)",
                    to.table
                ))
            })?;
            let planned = match &self.source {
                Reader::Postgres(_) => plan_column(name, &source.type_name, &target.type_name),
                Reader::Sqlite(_) => {
                    sqlite_values::plan_column(name, &source.type_name, &target.type_name)
                }
            };
            columns.push(planned.map_err(invalid)?);
        }
        let (sql, physical) = match &self.source {
            Reader::Postgres(store) => self.postgres_reads(store, &columns, &shape).await?,
            Reader::Sqlite(store) => {
                if from.order == Order::Physical {
                    return Err(invalid(
                        "order = \"physical\" walks a Postgres table's heap; a SQLite source is walked in key \
                         order, so remove order"
                            .into(),
                    ));
                }
                let sql = SqliteSql::new(
                    &from.relation,
                    &columns,
                    &from.key,
                    &shape.key_types,
                    from.filter.as_deref(),
                );
                let pool = sqlite_rows::reading_pool(store.pool()).await?;
                sql.check(&pool, &from.relation).await?;
                (ReadSql::Sqlite(pool, sql), None)
            }
        };
        let plan = CopyPlan {
            columns,
            sql,
            key: from.key.clone(),
            target_table: to.table.clone(),
            physical,
            chosen: OnceCell::new(),
            ranged: AtomicBool::new(
                matches!(self.source, Reader::Postgres(_))
                    && matches!(from.relation, Relation::Table(_)),
            ),
            row_bytes: AtomicU64::new(0),
        };
        if self.spec.verify
            && let Some(column) = plan
                .key_columns()
                .into_iter()
                .find(|c| !verify::key_type_supported(&c.target))
        {
            return Err(invalid(format!(
                "verify = true needs key columns copied into String, integer or UUID ClickHouse columns; key column \
                 {} is {}",
                column.name, column.target
            )));
        }
        Ok(plan)
    }

    /// The reads from a Postgres source, checked with `EXPLAIN`: in key order, or in physical order when the
    /// definition asks for it (a table only).
    async fn postgres_reads(
        &self,
        store: &PgStore,
        columns: &[ColumnPlan],
        shape: &SourceShape,
    ) -> Result<(ReadSql, Option<PhysicalWalk>), MigrationError> {
        let from = &self.spec.from;
        let invalid = MigrationError::Invalid;
        let sql = CopySql::new(
            &from.relation,
            columns,
            &from.key,
            &shape.key_types,
            from.filter.as_deref(),
        );
        let explain = format!("EXPLAIN {}", sql.read(false));
        sqlx::query(sqlx::AssertSqlSafe(explain))
            .bind(1i64)
            .execute(store.pool())
            .await
            .map_err(|err| {
                invalid(format!(
                    "the columns or the where filter do not work on {}: {err}",
                    from.relation
                ))
            })?;
        let pool = store.pool().clone();
        Ok(match (from.order, &from.relation) {
            (Order::Key, _) | (Order::Auto, Relation::Query(_)) => {
                (ReadSql::Postgres(pool, sql), None)
            }
            // Verify compares key ranges: a copy that verifies walks by key unless told otherwise.
            (Order::Auto, Relation::Table(table)) => {
                let walk = if !self.spec.verify && pages::server_supports(&pool).await? {
                    Some(PhysicalWalk::prepare(&pool, table, &sql).await?)
                } else {
                    None
                };
                (ReadSql::Postgres(pool, sql), walk)
            }
            (Order::Physical, Relation::Query(_)) => {
                return Err(invalid(
                    "order = \"physical\" walks a table's heap; a query source is walked in key order, so remove \
                     order or copy from.table"
                        .into(),
                ));
            }
            (Order::Physical, Relation::Table(table)) => {
                pages::check_server(&pool).await?;
                let walk = PhysicalWalk::prepare(&pool, table, &sql).await?;
                (ReadSql::Postgres(pool, sql), Some(walk))
            }
        })
    }

    /// The target must be a ReplacingMergeTree whose sorting key includes every key column.
    async fn check_target(&self) -> Result<(), MigrationError> {
        let (from, to) = (&self.spec.from, &self.spec.to);
        let table = self.target.table(&to.table).await.map_err(ch_error)?.ok_or_else(|| {
            MigrationError::Invalid(format!(
                "the ClickHouse table {} does not exist in database {}; create it in a ClickHouse fast migration \
                 (migrations/clickhouse/)",
                to.table,
                self.target.database()
            ))
        })?;
        let sorting: Vec<String> = table
            .sorting_key
            .split(',')
            .map(|part| part.trim().trim_matches('`').to_owned())
            .collect();
        let missing: Vec<&String> = from.key.iter().filter(|k| !sorting.contains(k)).collect();
        if !table.engine.contains("ReplacingMergeTree") || !missing.is_empty() {
            return Err(MigrationError::Invalid(format!(
                "the ClickHouse table {} is {} ORDER BY ({}); the copy needs a ReplacingMergeTree whose ORDER BY \
                 includes the key ({}), so that a batch sent twice after a crash or retry collapses into one row \
                 per key",
                to.table,
                table.engine,
                table.sorting_key,
                from.key.join(", ")
            )));
        }
        Ok(())
    }

    /// The checkpoint after a copy batch from `before`: the walk's new position, and the verify phase's start
    /// once the source (the key range) is exhausted, when the definition asks for it — at the range's start.
    fn walked<W: Serialize + DeserializeOwned>(
        &self,
        before: &CopyCheckpoint<W>,
        walked: Walked<W>,
    ) -> BatchOutcome {
        let verify_next = walked.exhausted && self.spec.verify;
        let verify = verify_next.then(|| VerifyState {
            cursor: before.range_start.clone(),
            ..VerifyState::default()
        });
        let checkpoint = before.walked_to(walked.at, verify);
        BatchOutcome {
            state: checkpoint.to_state(),
            done: walked.exhausted && !verify_next,
            rows: walked.moved.rows,
            bytes: walked.moved.bytes,
        }
    }

    /// The heap walk of the copy at checkpoint `state` (in a range ending at `upper`), or `None` when it walks by
    /// key: as the definition says, else as its checkpoint — or the next range's, for a range that has not run a
    /// batch yet — began, else as [`order`] chooses for the table.
    async fn heap_walk<'p>(
        &self,
        plan: &'p CopyPlan,
        (state, upper): (&Value, Option<&Value>),
    ) -> Result<Option<&'p PhysicalWalk>, MigrationError> {
        let Some(walk) = &plan.physical else {
            return Ok(None);
        };
        let began = Walk::of(state).or_else(|| upper.and_then(Walk::of));
        let pages = match (self.spec.from.order, began) {
            (Order::Physical, _) => true,
            (_, Some(began)) => began == Walk::Pages,
            (_, None) => {
                let (pool, table) = walk.source();
                let choose = || order::choose(pool, table, &plan.key[0]);
                *plan.chosen.get_or_try_init(choose).await? == Walk::Pages
            }
        };
        Ok(pages.then_some(walk))
    }

    /// One verify batch: compares the next key range on both sides. Once every range was compared, the next call
    /// fails the migration if any range differed.
    async fn verify_batch<W: Serialize + DeserializeOwned>(
        &self,
        plan: &CopyPlan,
        (args, end): (&Args, Option<&[String]>),
        mut checkpoint: CopyCheckpoint<W>,
        mut verified: VerifyState,
    ) -> Result<BatchOutcome, MigrationError> {
        if verified.complete
            && let Some(failure) = verified.failure(plan.source_name(), &plan.target_table)
        {
            return Err(failure);
        }
        let checked =
            verify::verify_batch(&self.target, plan, (verified.cursor.as_deref(), end), args)
                .await?;
        let (rows, exhausted) = (checked.source.rows, checked.exhausted);
        verified.record(checked);
        verified.complete = exhausted && verified.mismatched > 0;
        let done = exhausted && !verified.complete;
        checkpoint.verify = Some(verified);
        Ok(BatchOutcome {
            state: checkpoint.to_state(),
            done,
            rows,
            bytes: 0,
        })
    }
}

#[async_trait]
impl Migration for ClickHouseCopy {
    async fn validate(&self) -> Result<(), MigrationError> {
        self.plan().await.map(|_| ())
    }

    fn health_checks(&self) -> Vec<std::sync::Arc<dyn crate::throttle::HealthCheck>> {
        vec![std::sync::Arc::new(
            crate::throttle::clickhouse::ChHealth::new(
                self.target.clone(),
                self.spec.to.table.clone(),
            ),
        )]
    }

    fn default_batch_size(&self) -> u64 {
        CLICKHOUSE_BATCH_SIZE
    }

    fn default_target_batch_ms(&self) -> u64 {
        CLICKHOUSE_TARGET_BATCH_MS
    }

    /// The source's estimated rows; twice that with `verify`, which reads every row a second time.
    async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
        let rows = estimate(self.source.store(), &self.spec.from).await?;
        let passes = if self.spec.verify { 2 } else { 1 };
        Ok(rows.map(|rows| rows * passes))
    }

    /// Cuts a key-order walk at keys `rows / parts` apart on the source key's index, and a physical walk at pages
    /// equally far apart. Each key range verifies its own keys; a physical walk with `verify` runs as one stream
    /// (its verify pass walks the whole table by key).
    async fn split(
        &self,
        from: &Value,
        upper: Option<&Value>,
        parts: u64,
        rows: Option<u64>,
    ) -> Result<Vec<Value>, MigrationError> {
        let plan = self.plan().await?;
        let heap_walk = self.heap_walk(plan, (from, upper)).await?;
        if self.spec.verify && heap_walk.is_some() {
            return Err(MigrationError::Permanent(
                "args.parallelism above 1 with verify = true needs a copy in key order (verify compares key \
                 ranges, and order = \"physical\" ranges are runs of pages); set parallelism to 1 or remove order"
                    .into(),
            ));
        }
        let Some(walk) = heap_walk else {
            return keyset::split_states::<CopyCheckpoint<KeyCursor>>(
                self.source.store(),
                plan.keyset(),
                (from, upper),
                parts,
                rows,
            )
            .await;
        };
        let cursor = CopyCheckpoint::<PageCursor>::read(from)?.walk;
        let since = walk.horizon(&cursor).await?;
        let cuts = walk
            .split(cursor.after(), page_range_end(upper)?, parts)
            .await?;
        Ok(cuts
            .into_iter()
            .map(|page| {
                let walk = PageCursor::after_tid(Tid::page_start(page), since);
                CopyCheckpoint {
                    walk,
                    verify: None,
                    range_start: None,
                }
                .to_state()
            })
            .collect())
    }

    /// A copy in physical order ends with its catch-up pass once every page range is walked, from the oldest of
    /// the ranges' horizons, in as many concurrent reads as `parallelism` asks.
    async fn ranges_done(&self, states: &[Value], args: &Args) -> Result<(), MigrationError> {
        let plan = self.plan().await?;
        let walked_pages = states.iter().any(|s| Walk::of(s) == Some(Walk::Pages));
        let (Some(walk), true) = (&plan.physical, walked_pages) else {
            return Ok(());
        };
        let horizons = states
            .iter()
            .map(|state| Ok(CopyCheckpoint::<PageCursor>::read(state)?.walk.since))
            .collect::<Result<Vec<_>, MigrationError>>()?;
        let since = WriteHorizon::oldest(horizons);
        let streams = (since, args.parallelism);
        let moved = catch_up::catch_up(&self.target, plan, walk.source(), streams, args).await?;
        tracing::info!(
            table = %self.spec.to.table,
            rows = moved.rows,
            every_row = since.is_none(),
            "catch-up pass after the page ranges copied the rows written meanwhile"
        );
        Ok(())
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        let plan = self.plan().await?;
        let (target, state, args) = (&self.target, batch.state, batch.args);
        match self.heap_walk(plan, (state, batch.upper)).await? {
            None => {
                let mut checkpoint = CopyCheckpoint::<KeyCursor>::read(state)?;
                let end = range_end::<CopyCheckpoint<KeyCursor>>(batch.upper, plan.key.len())?;
                if let Some(verified) = checkpoint.verify.take() {
                    return self
                        .verify_batch(plan, (args, end.as_deref()), checkpoint, verified)
                        .await;
                }
                let lower = checkpoint.walk.keys(plan.key.len(), state)?;
                let walked =
                    key_range::copy_key_batch(target, plan, lower, end.as_deref(), args).await?;
                Ok(self.walked(&checkpoint, walked))
            }
            Some(walk) => {
                let mut checkpoint = CopyCheckpoint::<PageCursor>::read(state)?;
                if let Some(verified) = checkpoint.verify.take() {
                    // One stream only (split refuses verify in physical order): the whole table, by key.
                    return self
                        .verify_batch(plan, (args, None), checkpoint, verified)
                        .await;
                }
                if checkpoint.walk.walked {
                    let since = (checkpoint.walk.since, 1);
                    let moved =
                        catch_up::catch_up(target, plan, walk.source(), since, args).await?;
                    let at = checkpoint.walk;
                    let walked = Walked {
                        at,
                        moved,
                        exhausted: true,
                    };
                    return Ok(self.walked(&checkpoint, walked));
                }
                let range = (checkpoint.walk, page_range_end(batch.upper)?);
                let mut walked = pages::copy_page_batch(target, plan, walk, range, args).await?;
                if walked.exhausted && !batch.in_range {
                    // One stream: the catch-up pass is its next batch. In ranges it follows them all.
                    walked.at.walked = true;
                    walked.exhausted = false;
                }
                Ok(self.walked(&checkpoint, walked))
            }
        }
    }
}
