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

use super::range::{batch_end, key_repeated, outcome, texts};
use super::upsert::{Side, insert_into, on_conflict};
use crate::kinds::keyset::Keyset;
use crate::migration::{Batch, BatchOutcome, MigrationError};
use crate::store::{Reach, SqlStore};

/// The copy's stores and its statement.
pub(super) struct InDatabase {
    source: Arc<dyn SqlStore>,
    /// The source walked on its own connection: the batches' ends.
    walk: Keyset,
    /// The target's database, reaching the source.
    target: Arc<dyn SqlStore>,
    insert: RangeInsert,
}

impl InDatabase {
    /// The source's key walk (to cut key ranges on).
    pub fn walk(&self) -> &Keyset {
        &self.walk
    }

    /// The copy from `source` (walked by `walk`) by `insert`, run on the database of `reach`.
    pub fn new(source: Arc<dyn SqlStore>, walk: Keyset, reach: Reach, insert: RangeInsert) -> Self {
        Self {
            source,
            walk,
            target: reach.store,
            insert,
        }
    }

    /// Moves the rows after the checkpoint's key up to the batch's end, and commits them with the checkpoint.
    pub async fn run_batch(
        &self,
        batch: &mut Batch<'_>,
        (lower, end): (Option<&[String]>, Option<&[String]>),
    ) -> Result<BatchOutcome, MigrationError> {
        let end = batch_end(
            self.source.as_ref(),
            &self.walk,
            lower,
            end,
            batch.args.batch_size,
        )
        .await?;
        let upper = end.upper.as_deref();
        let mut params = texts(lower.unwrap_or_default());
        params.extend(texts(upper.unwrap_or_default()));
        let mut tx = self.target.begin().await?;
        let rows = tx
            .execute(&self.insert.sql(lower.is_some(), upper.is_some()), &params)
            .await
            .map_err(|err| key_repeated(err, lower, upper))?;
        let outcome = outcome(lower, end, rows, 0);
        batch.commit(tx, &outcome).await?;
        Ok(outcome)
    }
}

/// The source as the target's connection reads it.
pub(super) struct Reached<'a> {
    /// The schema that names the source's tables there (`None`: their own names).
    pub schema: Option<&'a str>,
    /// The source table or `(query)`, quoted, unqualified.
    pub relation: &'a str,
    /// The key columns.
    pub keys: &'a [String],
    /// Their types in the source.
    pub key_types: &'a [String],
    /// The definition's `where` filter.
    pub filter: Option<&'a str>,
}

/// The statement of a batch: `INSERT INTO <target> (...) SELECT ... FROM <source> AS bgm_src WHERE <key range>
/// [AND <filter>] ON CONFLICT ...`. Pure: unit-tested without a database.
#[derive(Debug, Clone)]
pub(super) struct RangeInsert {
    reached: Keyset,
    /// `INSERT INTO <target> (<columns>)`.
    into: String,
    /// `bgm_src.<column>, ...`.
    select: String,
    /// `ON CONFLICT ...`.
    conflict: String,
}

impl RangeInsert {
    /// The insert of `columns` from `from` into `to` (both in `to`'s dialect: one kind of database).
    pub fn new(from: Reached<'_>, to: Side<'_>, columns: &[String]) -> Self {
        let dialect = to.dialect;
        let relation = match from.schema {
            Some(schema) => format!("{}.{}", dialect.quote_ident(schema), from.relation),
            None => from.relation.to_owned(),
        };
        let select = columns
            .iter()
            .map(|c| format!("bgm_src.{}", dialect.quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            reached: Keyset::aliased(dialect, &relation, from.keys, from.key_types, from.filter),
            into: insert_into(to, columns),
            select,
            conflict: on_conflict(dialect, columns, from.keys),
        }
    }

    /// The insert of the rows in (lower, upper] (either bound may be absent). Params: lower, then upper.
    pub fn sql(&self, has_lower: bool, has_upper: bool) -> String {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Dialect;

    fn insert(dialect: Dialect, schema: Option<&str>, filter: Option<&str>) -> RangeInsert {
        RangeInsert::new(
            Reached {
                schema,
                relation: "\"events\"",
                keys: &["grp".into(), "id".into()],
                key_types: &["TEXT".into(), "INTEGER".into()],
                filter,
            },
            Side {
                dialect,
                table: "events_copy",
            },
            &["grp".into(), "id".into(), "body".into()],
        )
    }

    #[test]
    fn a_batch_inserts_the_key_range_from_the_attached_source_and_upserts_on_the_key() {
        assert_eq!(
            insert(Dialect::Sqlite, Some("bgm_source"), Some("body <> ''")).sql(true, true),
            "INSERT INTO \"events_copy\" (\"grp\", \"id\", \"body\") SELECT bgm_src.\"grp\", bgm_src.\"id\", \
             bgm_src.\"body\" FROM \"bgm_source\".\"events\" AS bgm_src \
             WHERE (bgm_src.\"grp\", bgm_src.\"id\") > (?1, CAST(?2 AS INTEGER)) \
             AND (bgm_src.\"grp\", bgm_src.\"id\") <= (?3, CAST(?4 AS INTEGER)) AND (body <> '') \
             ON CONFLICT (\"grp\", \"id\") DO UPDATE SET \"body\" = excluded.\"body\""
        );
    }

    #[test]
    fn a_single_unfiltered_batch_still_has_the_where_an_sqlite_upsert_needs() {
        assert!(
            insert(Dialect::Sqlite, None, None)
                .sql(false, false)
                .contains("FROM \"events\" AS bgm_src WHERE true ON CONFLICT")
        );
        assert!(
            insert(Dialect::Postgres, None, None)
                .sql(false, true)
                .contains(
                    "WHERE (bgm_src.\"grp\", bgm_src.\"id\") <= ($1::TEXT, $2::INTEGER) ON CONFLICT"
                )
        );
    }
}
