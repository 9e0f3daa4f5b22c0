//! A copy whose target is a SQL store (SQLite or Postgres, from a SQLite or Postgres source), upserted on the
//! target's unique key in keyset order, by the fastest of three movers the two stores allow:
//!
//! * in the database ([`in_database`]): the target's database reads the source table itself (one database, or a
//!   SQLite source file attached to a SQLite target): one `INSERT ... SELECT ... ON CONFLICT` per key range;
//! * piped ([`pg_pipe`]): between two Postgres databases, `COPY ... TO STDOUT` streamed into `COPY ... FROM STDIN`;
//! * through the worker (the rows path, here; across dialects): each batch reads up to `batchSize` rows as text,
//!   keeps them while they fit in `maxBatchBytes` (a single larger row goes alone), and upserts them.
//!
//! When the target is the control database, the batch and the checkpoint commit in one transaction (exactly once);
//! otherwise the engine writes the checkpoint after the target committed, and a batch re-sent after a crash upserts
//! the same rows again (at least once, made exact by the upsert). Every mover writes the same checkpoint
//! (`{"cursor": [key, ...]}`), so a copy resumes whichever mover wrote it.
//!
//! Layout: this file checks both tables, picks the mover, and runs the rows path (read, fit to the byte budget,
//! upsert, checkpoint); [`upsert`] builds the rows path's statements and the upsert clauses all movers share;
//! [`range`] finds a batch's key range for the two movers that read no rows.

mod in_database;
mod pg_pipe;
mod range;
mod upsert;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::OnceCell;

use self::in_database::{InDatabase, RangeInsert, Reached};
use self::pg_pipe::{PgPipe, PipeSql};
use self::upsert::{Side, UpsertSql};
use super::source::{SourceShape, estimate};
use super::spec::{CopySpec, Relation};
use crate::args::Args;
use crate::kinds::checkpoint::{Checkpoint, KeyCursor, range_end};
use crate::kinds::keyset::{self, Keyset};
use crate::migration::{Batch, BatchOutcome, Migration, MigrationError};
use crate::store::{Dialect, PgStore, SqlParam, SqlStore};

/// A copy between two SQL stores.
pub struct SqlCopy {
    spec: CopySpec,
    source: Arc<dyn SqlStore>,
    target: Arc<dyn SqlStore>,
    /// Both stores, when both are Postgres: the piped mover's.
    postgres: Option<(PgStore, PgStore)>,
    plan: OnceCell<Mover>,
}

/// How the rows move, as validation chose.
enum Mover {
    /// One `INSERT ... SELECT` per batch in the target's database.
    InDatabase(InDatabase),
    /// `COPY` from one Postgres database into another.
    Piped(PgPipe),
    /// Through the worker, as text.
    Rows(SqlPlan),
}

/// The rows path's statements.
struct SqlPlan {
    sql: UpsertSql,
    /// Positions of the key columns among the copied columns (the next cursor is read from the row).
    key_positions: Vec<usize>,
}

impl SqlCopy {
    /// Binds a parsed definition to its source and target stores.
    pub fn new(spec: CopySpec, source: Arc<dyn SqlStore>, target: Arc<dyn SqlStore>) -> Self {
        Self {
            spec,
            source,
            target,
            postgres: None,
            plan: OnceCell::new(),
        }
    }

    /// Both stores as Postgres stores, so that the copy can pipe `COPY` between two databases.
    pub fn between_postgres(mut self, source: PgStore, target: PgStore) -> Self {
        self.postgres = Some((source, target));
        self
    }

    async fn plan(&self) -> Result<&Mover, MigrationError> {
        self.plan.get_or_try_init(|| self.prepare()).await
    }

    /// Checks both tables before any row moves (the source's key, the target's unique key and columns), then picks
    /// the mover.
    async fn prepare(&self) -> Result<Mover, MigrationError> {
        let (from, to) = (&self.spec.from, &self.spec.to);
        let invalid = MigrationError::Invalid;
        let shape = SourceShape::check(self.source.as_ref(), from).await?;
        let target_columns = self.target.columns(&to.table).await?;
        if target_columns.is_empty() {
            return Err(invalid(format!(
                "the target table {} does not exist in store {}; create it (with a unique key on ({})) first",
                to.table,
                to.store,
                from.key.join(", ")
            )));
        }
        let mut target_types = Vec::with_capacity(shape.names.len());
        for name in &shape.names {
            let column = target_columns.iter().find(|c| &c.name == name).ok_or_else(|| {
                invalid(format!(
                    "column {name}: the target table {} in store {} has no column of that name (columns are copied \
                     by name)",
                    to.table, to.store
                ))
            })?;
            target_types.push(column.type_name.clone());
        }
        if !self.target.has_unique_index(&to.table, &from.key).await? {
            return Err(invalid(format!(
                "the target table {} in store {} has no unique index or primary key on exactly ({}); the copy \
                 upserts on the key, so that a batch sent twice after a crash or retry leaves one row per key",
                to.table,
                to.store,
                from.key.join(", ")
            )));
        }
        let dialect = self.source.dialect();
        let keyset = Keyset::aliased(
            dialect,
            &from.relation.sql(dialect),
            &from.key,
            &shape.key_types,
            from.filter.as_deref(),
        );
        let sql = UpsertSql::new(
            keyset,
            Side {
                dialect: self.target.dialect(),
                table: &to.table,
            },
            &shape.names,
            &from.key,
            &target_types,
        );
        let mut tx = self.source.begin_read().await?;
        let dry_run = tx
            .fetch_all_text(&sql.read(false, false), &[SqlParam::Int(0)])
            .await;
        tx.commit().await?;
        dry_run.map_err(|err| {
            invalid(format!(
                "the columns or the where filter do not work on {}: {err}",
                from.relation
            ))
        })?;
        let to_side = Side {
            dialect: self.target.dialect(),
            table: &to.table,
        };
        if let Some(reach) = self.reach(&shape, &target_types).await? {
            let insert = RangeInsert::new(
                Reached {
                    schema: reach.schema,
                    relation: &from.relation.sql(dialect),
                    keys: &from.key,
                    key_types: &shape.key_types,
                    filter: from.filter.as_deref(),
                },
                to_side,
                &shape.names,
            );
            let walk = sql.keyset().clone();
            return Ok(Mover::InDatabase(InDatabase::new(
                self.source.clone(),
                walk,
                reach,
                insert,
            )));
        }
        if let Some((source, target)) = &self.postgres {
            let pipe = PipeSql::new(
                sql.keyset().clone(),
                &shape.key_types,
                to_side,
                &shape.names,
                &from.key,
            );
            return Ok(Mover::Piped(PgPipe::new(
                source.clone(),
                target.clone(),
                pipe,
            )));
        }
        let key_positions = from
            .key
            .iter()
            .filter_map(|k| shape.names.iter().position(|n| n == k))
            .collect();
        Ok(Mover::Rows(SqlPlan { sql, key_positions }))
    }

    /// The target's database reaching the source's table, when an `INSERT ... SELECT` there copies exactly what the
    /// rows path would: in one Postgres database the columns must have the same types on both sides (the rows path
    /// casts through text, an `INSERT` only by assignment); a SQLite target applies its column's affinity either
    /// way. Through an attached file the source must be a table not qualified by a schema, and a `where` filter
    /// must not query other tables (their unqualified names would find the target's tables first).
    async fn reach(
        &self,
        shape: &SourceShape,
        target_types: &[String],
    ) -> Result<Option<crate::store::Reach>, MigrationError> {
        let from = &self.spec.from;
        let same_types = shape.names.iter().zip(target_types).all(|(name, ty)| {
            shape
                .column(name)
                .is_some_and(|c| c.type_name.eq_ignore_ascii_case(ty))
        });
        if self.target.dialect() == Dialect::Postgres && !same_types {
            return Ok(None);
        }
        let Some(reach) = self.target.reach(self.source.as_ref()).await? else {
            return Ok(None);
        };
        let plain_table = matches!(&from.relation, Relation::Table(t) if !t.contains('.'));
        let filter_queries = from
            .filter
            .as_deref()
            .is_some_and(|f| f.to_ascii_lowercase().contains("select"));
        if reach.schema.is_some() && (!plain_table || filter_queries) {
            return Ok(None);
        }
        Ok(Some(reach))
    }

    /// Reads the rows after `lower` up to `end` (a key range's last key, if any; as text, in key order) and keeps
    /// those that fit the batch's limits. Returns them with whether the source (the range) has no rows after them.
    async fn read(
        &self,
        plan: &SqlPlan,
        (lower, end): (Option<&[String]>, Option<&[String]>),
        args: &Args,
    ) -> Result<(Vec<Vec<Option<String>>>, u64, bool), MigrationError> {
        let mut params: Vec<SqlParam> = lower
            .unwrap_or_default()
            .iter()
            .chain(end.unwrap_or_default())
            .cloned()
            .map(SqlParam::Text)
            .collect();
        params.push(SqlParam::Int(
            i64::try_from(args.batch_size).unwrap_or(i64::MAX),
        ));
        let mut tx = self.source.begin_read().await?;
        let mut rows = tx
            .fetch_all_text(&plan.sql.read(lower.is_some(), end.is_some()), &params)
            .await?;
        // A read transaction (no write lock on SQLite), ended before the target's write begins.
        tx.commit().await?;
        let fetched = rows.len();
        let (kept, bytes) = fits(&rows, args.max_batch_bytes);
        rows.truncate(kept);
        let exhausted = kept == fetched && (fetched as u64) < args.batch_size;
        Ok((rows, bytes, exhausted))
    }
}

/// How many leading rows fit in `max_bytes` (sum of the values' lengths; the first row always fits), and their size.
fn fits(rows: &[Vec<Option<String>>], max_bytes: u64) -> (usize, u64) {
    let mut bytes = 0u64;
    for (taken, row) in rows.iter().enumerate() {
        let size: u64 = row.iter().flatten().map(|v| v.len() as u64).sum();
        if taken > 0 && bytes + size > max_bytes {
            return (taken, bytes);
        }
        bytes += size;
        if bytes >= max_bytes {
            return (taken + 1, bytes);
        }
    }
    (rows.len(), bytes)
}

#[async_trait]
impl Migration for SqlCopy {
    async fn validate(&self) -> Result<(), MigrationError> {
        self.plan().await.map(|_| ())
    }

    fn health_checks(&self) -> Vec<Arc<dyn crate::throttle::HealthCheck>> {
        self.target
            .health_check(&self.spec.to.table)
            .into_iter()
            .collect()
    }

    async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
        Ok(estimate(self.source.as_ref(), &self.spec.from).await?)
    }

    /// Cuts the key space at keys `rows / parts` apart on the source key's index, whichever mover runs.
    async fn split(
        &self,
        from: &Value,
        upper: Option<&Value>,
        parts: u64,
        rows: Option<u64>,
    ) -> Result<Vec<Value>, MigrationError> {
        let walk = match self.plan().await? {
            Mover::InDatabase(mover) => mover.walk(),
            Mover::Piped(mover) => mover.walk(),
            Mover::Rows(plan) => plan.sql.keyset(),
        };
        keyset::split_states::<KeyCursor>(self.source.as_ref(), walk, (from, upper), parts, rows)
            .await
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        let arity = self.spec.from.key.len();
        let checkpoint = KeyCursor::read(batch.state)?;
        let lower = checkpoint.keys(arity, batch.state)?;
        let end = range_end::<KeyCursor>(batch.upper, arity)?;
        let range = (lower, end.as_deref());
        let plan = match self.plan().await? {
            Mover::InDatabase(mover) => return mover.run_batch(batch, range).await,
            Mover::Piped(mover) => return mover.run_batch(batch, range).await,
            Mover::Rows(plan) => plan,
        };
        let (rows, bytes, exhausted) = self.read(plan, range, batch.args).await?;
        let mut last_key: Option<Vec<String>> = None;
        for row in &rows {
            let key = plan.key_positions.iter().map(|&i| row[i].clone()).collect();
            last_key = Some(plan.sql.keyset().next_key(last_key.as_deref(), key)?);
        }
        let outcome = BatchOutcome {
            state: KeyCursor::after(last_key.or_else(|| lower.map(<[String]>::to_vec))).to_state(),
            done: exhausted,
            rows: rows.len() as u64,
            bytes,
        };
        let mut tx = self.target.begin().await?;
        if !rows.is_empty() {
            tx.execute(plan.sql.upsert(), &plan.sql.params(rows))
                .await?;
        }
        batch.commit(tx, &outcome).await?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::fits;

    fn row(len: usize) -> Vec<Option<String>> {
        vec![Some("x".repeat(len)), None]
    }

    #[test]
    fn a_batch_closes_at_max_bytes_but_a_single_larger_row_goes_alone() {
        assert_eq!(fits(&[row(4), row(4), row(4)], 10), (2, 8));
        assert_eq!(fits(&[row(50), row(1)], 10), (1, 50));
        assert_eq!(fits(&[row(5), row(5), row(1)], 10), (2, 10));
        assert_eq!(fits(&[row(1), row(1)], 10), (2, 2));
    }
}
