//! A copy whose target database can read the source's table itself (one Postgres database, one SQLite file, or a
//! second SQLite file attached to the target's connection, see [`crate::store::SqlStore::reach`]): each batch is one
//! `INSERT INTO <target> (...) SELECT ... FROM <source> WHERE (<key>) > <cursor> AND (<key>) <= <end> ON CONFLICT
//! (<key>) DO UPDATE ...`, so no row passes through the worker and every value keeps its type (a SQLite blob stays a
//! blob). The batch's end comes from the source's key index ([`super::range`]).
//!
//! Measured on 500,000 traces-shaped rows between two SQLite files (`cargo bench --bench copy_sql`): the rows path
//! (read as text, upsert from JSON) ran at 0.13× SQLite's own `ATTACH` + `INSERT ... SELECT`; see the README for
//! this path's figure.
//!
//! `maxBatchBytes` bounds the rows a worker holds; here it holds none, so a batch closes at `batchSize` rows (and
//! the adaptive size keeps its duration near `targetBatchMs`). Bytes are not counted (reported as 0, as by the
//! backfill).

use std::sync::Arc;

use super::range::{batch_end, outcome, texts};
use super::upsert::{Side, insert_into, on_conflict};
use crate::kinds::keyset::Keyset;
use crate::migration::{Batch, BatchOutcome, MigrationError};
use crate::store::{Reach, SqlStore};

/// The copy's statements on the target's connection, and where the batches' ends are found.
pub(super) struct InDatabase {
    source: Arc<dyn SqlStore>,
    /// The source walked on its own connection: the batches' ends.
    walk: Keyset,
    /// The target's database, reaching the source.
    target: Arc<dyn SqlStore>,
    /// The source as the target's connection names it (in the source's schema there, if any).
    reached: Keyset,
    /// `INSERT INTO <target> (<columns>)`.
    into: String,
    /// `bgm_src.<column>, ...`.
    select: String,
    /// `ON CONFLICT ...`.
    conflict: String,
}

/// What the in-database copy is built from.
pub(super) struct Parts<'a> {
    /// The source walked on its own connection.
    pub walk: Keyset,
    /// The source's store.
    pub source: Arc<dyn SqlStore>,
    /// The target database reaching the source.
    pub reach: Reach,
    /// The source table or `(query)`, unqualified.
    pub relation: &'a str,
    /// The key columns and their types in the source.
    pub keys: &'a [String],
    /// The source's key types.
    pub key_types: &'a [String],
    /// The definition's `where` filter.
    pub filter: Option<&'a str>,
    /// The target table.
    pub to: Side<'a>,
    /// The copied columns.
    pub columns: &'a [String],
}

impl InDatabase {
    /// The copy of `parts.columns` from the source (in the reach's schema, if any) into `parts.to`.
    pub fn new(parts: Parts<'_>) -> Self {
        let dialect = parts.to.dialect;
        let from = match parts.reach.schema {
            Some(schema) => format!("{}.{}", dialect.quote_ident(schema), parts.relation),
            None => parts.relation.to_owned(),
        };
        let select = parts
            .columns
            .iter()
            .map(|c| format!("bgm_src.{}", dialect.quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            source: parts.source,
            walk: parts.walk,
            target: parts.reach.store,
            reached: Keyset::aliased(dialect, &from, parts.keys, parts.key_types, parts.filter),
            into: insert_into(parts.to, parts.columns),
            select,
            conflict: on_conflict(dialect, parts.columns, parts.keys),
        }
    }

    /// The insert of the rows in (lower, upper] (either bound may be absent). Params: lower, then upper.
    pub fn insert(&self, has_lower: bool, has_upper: bool) -> String {
        let (bounds, _) = self.reached.key_bounds(has_lower, has_upper);
        let mut conditions = self.reached.filtered(bounds);
        if conditions.is_empty() {
            // SQLite needs a WHERE before an upsert's ON CONFLICT (its parser would read ON as a join).
            conditions.push("true".to_owned());
        }
        format!(
            "{} {} {}",
            self.into,
            self.reached.select(&self.select, &conditions, ""),
            self.conflict
        )
    }

    /// Moves the rows after the checkpoint's key up to the batch's end, and commits them with the checkpoint.
    pub async fn run_batch(
        &self,
        batch: &mut Batch<'_>,
        lower: Option<&[String]>,
    ) -> Result<BatchOutcome, MigrationError> {
        let upper = batch_end(
            self.source.as_ref(),
            &self.walk,
            lower,
            batch.args.batch_size,
        )
        .await?;
        let mut params = texts(lower.unwrap_or_default());
        params.extend(texts(upper.as_deref().unwrap_or_default()));
        let mut tx = self.target.begin().await?;
        let rows = tx
            .execute(&self.insert(lower.is_some(), upper.is_some()), &params)
            .await?;
        let outcome = outcome(lower, upper, rows, 0);
        batch.commit(tx, &outcome).await?;
        Ok(outcome)
    }
}
