//! `kind = "copy"`: copy a table (or a Postgres query's result) batch by batch in keyset order over a unique key
//! (single or composite; text ids allowed) — from Postgres into ClickHouse, or from a SQL store into a SQL store
//! (SQLite or Postgres, either way).
//! The target's store selects the writer: a ClickHouse store the `RowBinary` stream below, a SQL store the upsert
//! of [`to_sql`].
//!
//! Into ClickHouse, idempotent under retries and crashes: the target must be a `ReplacingMergeTree` whose `ORDER BY` includes the
//! key, so a batch sent twice (a crash after ClickHouse acknowledged the insert but before the checkpoint was
//! written) collapses into one row per key on merge (`SELECT ... FINAL` reads it deduplicated at once). The
//! checkpoint advances only after ClickHouse acknowledged the batch's insert.
//!
//! Layout: [`spec`] parses the definition; [`keyset`] builds the keyset read both writers share. Into ClickHouse:
//! [`mapping`] maps and checks types; [`sql`] adds the large-value reads; [`encode`] turns Postgres values into
//! `RowBinary`; [`batch`] streams one batch. Into a SQL store: [`upsert`] builds the statements; [`to_sql`] runs a
//! batch.

mod batch;
mod encode;
mod key_range;
mod keyset;
mod mapping;
mod pages;
mod spec;
mod sql;
mod to_sql;
mod upsert;
mod verify;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::clickhouse::{ClickHouse, ClickHouseError};
use crate::migration::{Batch, BatchOutcome, Migration, MigrationError};
use crate::store::{ColumnInfo, PgStore, SqlStore, StoreError, Stores};

pub use self::mapping::{ColumnPlan, plan_column};
pub use self::spec::CopySpec;
pub use self::to_sql::SqlCopy;

use self::batch::Walked;
use self::pages::PhysicalWalk;
use self::spec::Order;
use self::spec::Relation;
use self::sql::CopySql;
use self::verify::VerifyState;

/// The name definitions use: `kind = "copy"`.
pub const KIND: &str = "copy";

/// Rows per batch into ClickHouse unless `args.batchSize` says otherwise. Each insert becomes a part the server
/// merges later, so fewer, larger inserts cost it less (ClickHouse's own advice: 10k–100k+ rows, about one insert
/// per second); `maxBatchBytes` still bounds a batch, and memory does not grow with it (rows stream).
pub const CLICKHOUSE_BATCH_SIZE: u64 = 100_000;

/// A copy bound to its stores.
pub struct Copy {
    spec: CopySpec,
    source: PgStore,
    target: ClickHouse,
    plan: OnceCell<CopyPlan>,
}

/// What validation established: the columns with their mapping, and the read statement.
#[derive(Debug)]
pub struct CopyPlan {
    columns: Vec<ColumnPlan>,
    sql: CopySql,
    key: Vec<String>,
    target_table: String,
    /// Set for a walk in physical order.
    physical: Option<PhysicalWalk>,
    /// Whether key-order batches are read as key ranges: a table source (its key has an index to find a range's
    /// end on), until a range could not be read whole (see [`key_range`]).
    ranged: AtomicBool,
}

impl CopyPlan {
    fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    fn sql_key_arity(&self) -> usize {
        self.key.len()
    }

    /// The position of `ctid` in a physical walk's rows: after the values, the key cursors and the large flags.
    fn ctid_column(&self) -> usize {
        self.columns.len() + self.key.len() + self.columns.iter().filter(|c| c.sliced()).count()
    }

    /// The key columns' plans, in key order (the spec requires the copied columns to include the key).
    fn key_columns(&self) -> Vec<&ColumnPlan> {
        self.key
            .iter()
            .filter_map(|k| self.columns.iter().find(|c| &c.name == k))
            .collect()
    }
}

/// A ClickHouse failure as a migration error: transient ones retry the batch.
pub(crate) fn ch_error(err: ClickHouseError) -> MigrationError {
    if err.is_transient() {
        MigrationError::Transient(err.to_string())
    } else {
        MigrationError::Invalid(err.to_string())
    }
}

impl Copy {
    /// The registry factory: parses the definition and finds its stores.
    ///
    /// A `to.store` naming a ClickHouse store selects the ClickHouse writer; one naming a SQL store, the upsert.
    pub fn build(params: &Value, stores: &Stores) -> Result<Arc<dyn Migration>, String> {
        let spec = CopySpec::parse(params)?;
        if stores.clickhouse(&spec.to.store).is_none()
            && let Some(target) = stores.sql(&spec.to.store)
        {
            let source = stores.sql(&spec.from.store).ok_or_else(|| {
                format!(
                    "copy definition: from.store {:?} is not a configured SQL store (configured: {})",
                    spec.from.store,
                    stores.sql_names().join(", ")
                )
            })?;
            if spec.from.order == Order::Physical {
                return Err(format!(
                    "copy definition: order = \"physical\" is for copies into ClickHouse; a copy into the SQL \
                     store {:?} walks in key order, so remove it",
                    spec.to.store
                ));
            }
            if spec.verify {
                return Err(format!(
                    "copy definition: verify = true is for copies into ClickHouse; a copy into the SQL store {:?} \
                     upserts each batch in a transaction, so remove verify",
                    spec.to.store
                ));
            }
            return Ok(Arc::new(SqlCopy::new(spec, source, target)));
        }
        let target = stores.clickhouse(&spec.to.store).ok_or_else(|| {
            format!(
                "copy definition: to.store {:?} is neither a configured ClickHouse store (configured: {}; set \
                 CLICKHOUSE_URL) nor a configured SQL store (configured: {})",
                spec.to.store,
                stores.clickhouse_names().join(", "),
                stores.sql_names().join(", ")
            )
        })?;
        let source = stores.postgres(&spec.from.store).ok_or_else(|| {
            format!(
                "copy definition: from.store {:?} is not a configured Postgres store (configured SQL stores: {}); a copy into \
                 ClickHouse reads from Postgres",
                spec.from.store,
                stores.sql_names().join(", ")
            )
        })?;
        Ok(Arc::new(Copy {
            spec,
            source,
            target,
            plan: OnceCell::new(),
        }))
    }

    async fn plan(&self) -> Result<&CopyPlan, MigrationError> {
        self.plan.get_or_try_init(|| self.prepare()).await
    }

    /// Checks both tables and maps every column, before any row moves.
    async fn prepare(&self) -> Result<CopyPlan, MigrationError> {
        let (from, to) = (&self.spec.from, &self.spec.to);
        let invalid = MigrationError::Invalid;
        let SourceShape {
            columns: source_columns,
            key_types,
            names,
        } = SourceShape::check(&self.source, from).await?;
        let source_column = |name: &str| source_columns.iter().find(|c| c.name == name);
        self.check_target().await?;
        let target_columns = self.target.columns(&to.table).await.map_err(ch_error)?;
        let mut columns = Vec::with_capacity(names.len());
        for name in &names {
            let source = source_column(name).ok_or_else(|| {
                invalid(format!(
                    "column {name} does not exist in {} of store {} (its columns: {})",
                    from.relation,
                    from.store,
                    names_of(&source_columns)
                ))
            })?;
            let target = target_columns.iter().find(|c| &c.name == name).ok_or_else(|| {
                invalid(format!(
                    "column {name}: the ClickHouse table {} has no column of that name (columns are copied by name)",
                    to.table
                ))
            })?;
            columns.push(plan_column(name, &source.type_name, &target.type_name).map_err(invalid)?);
        }
        let sql = CopySql::new(
            &from.relation,
            &columns,
            &from.key,
            &key_types,
            from.filter.as_deref(),
        );
        let explain = format!("EXPLAIN {}", sql.read(false));
        sqlx::query(sqlx::AssertSqlSafe(explain))
            .bind(1i64)
            .execute(self.source.pool())
            .await
            .map_err(|err| {
                invalid(format!(
                    "the columns or the where filter do not work on {}: {err}",
                    from.relation
                ))
            })?;
        let (sql, physical) = match (from.order, &from.relation) {
            (Order::Key, _) => (sql, None),
            (Order::Physical, Relation::Query(_)) => {
                return Err(invalid(
                    "order = \"physical\" walks a table's heap; a query source is walked in key order, so remove \
                     order or copy from.table"
                        .into(),
                ));
            }
            (Order::Physical, Relation::Table(table)) => {
                let walk = PhysicalWalk::prepare(self.source.pool(), table).await?;
                (sql.with_ctid(), Some(walk))
            }
        };
        let plan = CopyPlan {
            columns,
            sql,
            key: from.key.clone(),
            target_table: to.table.clone(),
            physical,
            ranged: AtomicBool::new(matches!(from.relation, Relation::Table(_))),
        };
        if self.spec.verify
            && let Some(column) = plan
                .key_columns()
                .into_iter()
                .find(|c| !verify::key_type_supported(&c.target))
        {
            return Err(invalid(format!(
                "verify = true needs key columns copied into String or integer ClickHouse columns; key column {} \
                 is {:?}",
                column.name, column.target
            )));
        }
        Ok(plan)
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
}

/// The source as validation found it: its columns, its key's types, and the columns to copy.
struct SourceShape {
    columns: Vec<ColumnInfo>,
    key_types: Vec<String>,
    names: Vec<String>,
}

impl SourceShape {
    /// Checks the source before any row moves: a table must exist with a NOT NULL unique key; a query must run
    /// and have the key among its output columns (its uniqueness is checked as rows are read, see
    /// [`keyset::Keyset::next_key`]).
    async fn check(
        store: &dyn SqlStore,
        from: &spec::Source,
    ) -> Result<SourceShape, MigrationError> {
        let invalid = MigrationError::Invalid;
        let source_columns = match &from.relation {
            Relation::Table(table) => {
                let columns = store.columns(table).await?;
                if columns.is_empty() {
                    return Err(invalid(format!(
                        "table {table} does not exist in store {}",
                        from.store
                    )));
                }
                columns
            }
            Relation::Query(query) => query_columns(store, from, query).await?,
        };
        let source_column = |name: &str| source_columns.iter().find(|c| c.name == name);
        let mut key_types = Vec::new();
        for key in &from.key {
            let info = source_column(key).ok_or_else(|| {
                invalid(format!(
                    "key column {key} does not exist in {} (its columns: {})",
                    from.relation,
                    names_of(&source_columns)
                ))
            })?;
            if let Relation::Table(table) = &from.relation
                && info.nullable
            {
                return Err(invalid(format!(
                    "key column {key} of {table} is nullable; a keyset walk needs NOT NULL key columns"
                )));
            }
            key_types.push(info.type_name.clone());
        }
        if let Relation::Table(table) = &from.relation
            && !store.has_unique_index(table, &from.key).await?
        {
            return Err(invalid(format!(
                "no unique index or primary key on exactly ({}) of {table}; the keyset walk needs a unique key",
                from.key.join(", "),
            )));
        }
        let names: Vec<String> = match &from.columns {
            Some(columns) => columns.clone(),
            None => source_columns.iter().map(|c| c.name.clone()).collect(),
        };
        Ok(SourceShape {
            columns: source_columns,
            key_types,
            names,
        })
    }
}

/// The output columns of `from.query`: the query must compile on its store (a Postgres store) and name each of
/// its columns, once.
async fn query_columns(
    store: &dyn SqlStore,
    from: &spec::Source,
    query: &str,
) -> Result<Vec<ColumnInfo>, MigrationError> {
    let described = store.query_columns(query).await.map_err(|err| {
        if err.is_transient() {
            MigrationError::Store(err)
        } else {
            MigrationError::Invalid(format!(
                "from.query does not run on store {}: {err}",
                from.store
            ))
        }
    })?;
    let columns = described.ok_or_else(|| {
        MigrationError::Invalid(format!(
            "from.query needs a Postgres source, but store {} cannot describe a query's columns; copy from a \
             table (from.table) instead",
            from.store
        ))
    })?;
    if let Some(unnamed) = columns.iter().find(|c| c.name == "?column?") {
        return Err(MigrationError::Invalid(format!(
            "from.query has an unnamed output column ({}); name every computed column with AS",
            unnamed.type_name
        )));
    }
    if let Some(twice) = columns
        .iter()
        .enumerate()
        .find_map(|(i, c)| columns[..i].iter().any(|d| d.name == c.name).then_some(c))
    {
        return Err(MigrationError::Invalid(format!(
            "from.query has two output columns named {}; rename one with AS (columns are copied by name)",
            twice.name
        )));
    }
    Ok(columns)
}

/// `a, b, c`: the column names, for messages.
fn names_of(columns: &[ColumnInfo]) -> String {
    columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The source's row estimate for progress and ETA: the store's statistics for a table, the planner's estimate
/// of the query's result for a query; never a count.
async fn estimate(store: &dyn SqlStore, from: &spec::Source) -> Result<Option<u64>, StoreError> {
    match &from.relation {
        Relation::Table(table) => store.estimate_rows(table).await,
        Relation::Query(query) => store.estimate_query_rows(query).await,
    }
}

/// The cursor in a checkpoint: the last key copied, as text, one entry per key column.
fn cursor_of(state: &Value, arity: usize) -> Result<Option<Vec<String>>, MigrationError> {
    let bad = || {
        MigrationError::Invalid(format!(
            "the checkpoint {state} is not a copy cursor (expected {{\"cursor\": [\"key\", ...]}}); fix state or \
             retry --from-start"
        ))
    };
    match state.get("cursor") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.len() == arity => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

#[async_trait]
impl Migration for Copy {
    async fn validate(&self) -> Result<(), MigrationError> {
        self.plan().await.map(|_| ())
    }

    fn default_batch_size(&self) -> u64 {
        CLICKHOUSE_BATCH_SIZE
    }

    /// The source's estimated rows; twice that with `verify`, which reads every row a second time.
    async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
        let rows = estimate(&self.source, &self.spec.from).await?;
        let passes = if self.spec.verify { 2 } else { 1 };
        Ok(rows.map(|rows| rows * passes))
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        let plan = self.plan().await?;
        if let Some(verified) = VerifyState::of(batch.state)? {
            return self.verify_batch(plan, batch, verified).await;
        }
        let (pool, target, state, args) =
            (self.source.pool(), &self.target, batch.state, batch.args);
        let Walked {
            mut state,
            moved,
            exhausted,
        } = match &plan.physical {
            None => key_range::copy_key_batch(pool, target, plan, state, args).await?,
            Some(walk) => pages::copy_page_batch(pool, target, plan, walk, state, args).await?,
        };
        let verify_next = exhausted && self.spec.verify;
        if verify_next {
            state["verify"] = json!(VerifyState::default());
        }
        Ok(BatchOutcome {
            state,
            done: exhausted && !verify_next,
            rows: moved.rows,
            bytes: moved.bytes,
        })
    }
}

impl Copy {
    /// One verify batch: compares the next key range on both sides. Once every range was compared, the next call
    /// fails the migration if any range differed.
    async fn verify_batch(
        &self,
        plan: &CopyPlan,
        batch: &Batch<'_>,
        mut verified: VerifyState,
    ) -> Result<BatchOutcome, MigrationError> {
        if verified.complete
            && let Some(failure) = verified.failure(&plan.target_table)
        {
            return Err(failure);
        }
        let checked = verify::verify_batch(
            self.source.pool(),
            &self.target,
            plan,
            verified.cursor.as_deref(),
            batch.args,
        )
        .await?;
        let (rows, exhausted) = (checked.source.rows, checked.exhausted);
        verified.record(checked);
        verified.complete = exhausted && verified.mismatched > 0;
        let mut state = batch.state.clone();
        state["verify"] = json!(verified);
        Ok(BatchOutcome {
            state,
            done: exhausted && !verified.complete,
            rows,
            bytes: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_store_that_is_neither_clickhouse_nor_sql_is_refused_naming_both_kinds() {
        let err = Copy::build(
            &json!({
                "from": {"store": "sqlite", "table": "traces", "key": ["id"]},
                "to": {"store": "analytics", "table": "traces"}
            }),
            &Stores::new(),
        )
        .err()
        .expect("refused");
        assert!(
            err.contains("to.store \"analytics\" is neither a configured ClickHouse store")
                && err.contains("nor a configured SQL store"),
            "{err}"
        );
    }
}
