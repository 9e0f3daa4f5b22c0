//! A copy from one Postgres database into another at `COPY` speed: each batch streams `COPY (SELECT ... WHERE
//! (<key>) > <cursor> AND (<key>) <= <end>) TO STDOUT` from the source into `COPY bgm_stage FROM STDIN` (a
//! temporary table dropped at commit) in the target's transaction, then upserts `INSERT INTO <target> SELECT ...
//! FROM bgm_stage ON CONFLICT (<key>) DO UPDATE ...` there, with the checkpoint when the target holds the control
//! table ([`crate::store::pg_copy`]). Values travel in Postgres's text format, each read back by the target column's
//! own input function: the same conversion as the rows path's `::text` and `::<type>` casts, at `COPY` speed.
//!
//! Measured on 500,000 traces-shaped rows (`cargo bench --bench copy_sql`): the rows path (text arrays through
//! `unnest`) ran at 0.38× `psql COPY ... TO STDOUT | psql COPY ... FROM STDIN`; see the README for this path's
//! figure.
//!
//! `maxBatchBytes` bounds the rows a worker holds; here the rows stream through in 256 KiB chunks, so a batch
//! closes at `batchSize` rows. The bytes reported are those of the stream.

use super::range::{batch_end, outcome};
use super::upsert::{Side, insert_into, on_conflict};
use crate::kinds::keyset::Keyset;
use crate::migration::{Batch, BatchOutcome, MigrationError};
use crate::store::{Dialect, PgStore, SqlTx, pg_copy};

/// The staging table of a batch, in the target's session: created in the batch's transaction, dropped at its end.
const STAGE: &str = "bgm_stage";

/// The copy's statements on both sides.
pub(super) struct PgPipe {
    source: PgStore,
    target: PgStore,
    /// The source walked in key order (`bgm_src`): the batches' ends, and the `FROM` and filter of the `COPY`.
    walk: Keyset,
    /// The source's key types, to cast the bounds back from their settings.
    key_types: Vec<String>,
    /// `bgm_src.<column>, ...`.
    select: String,
    /// Creates the staging table: the copied columns with the target's types.
    stage: String,
    /// `COPY bgm_stage (<columns>) FROM STDIN`.
    copy_in: String,
    /// The upsert from the staging table.
    merge: String,
}

impl PgPipe {
    /// The copy of `columns` from `walk`'s source in `source` into `to` in `target`.
    pub fn new(
        source: PgStore,
        target: PgStore,
        walk: Keyset,
        key_types: &[String],
        to: Side<'_>,
        columns: &[String],
        keys: &[String],
    ) -> Self {
        let quote = |c: &String| Dialect::Postgres.quote_ident(c);
        let quoted = columns.iter().map(quote).collect::<Vec<_>>().join(", ");
        let select = columns
            .iter()
            .map(|c| format!("bgm_src.{}", quote(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let table = Dialect::Postgres.quote_ident(to.table);
        Self {
            source,
            target,
            walk,
            key_types: key_types.to_vec(),
            select,
            stage: format!(
                "CREATE TEMPORARY TABLE {STAGE} ON COMMIT DROP AS SELECT {quoted} FROM {table} WITH NO DATA"
            ),
            copy_in: format!("COPY {STAGE} ({quoted}) FROM STDIN"),
            merge: format!(
                "{} SELECT {quoted} FROM {STAGE} {}",
                insert_into(to, columns),
                on_conflict(Dialect::Postgres, columns, keys)
            ),
        }
    }

    /// `COPY (SELECT ... FROM <source> WHERE <bounds> AND <filter>) TO STDOUT`, the bounds read from the settings
    /// of [`pg_copy::setting`]: the lower bound's first, then the upper bound's.
    pub fn copy_out(&self, has_lower: bool, has_upper: bool) -> String {
        let keys = self.walk.keys().join(", ");
        let mut bounds = Vec::new();
        let mut next = 1;
        for (wanted, op) in [(has_lower, ">"), (has_upper, "<=")] {
            if wanted {
                let values: Vec<String> = self
                    .key_types
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| Dialect::Postgres.cast(&pg_copy::setting(next + i), ty))
                    .collect();
                bounds.push(format!("({keys}) {op} ({})", values.join(", ")));
                next += self.key_types.len();
            }
        }
        let select = self
            .walk
            .select(&self.select, &self.walk.filtered(bounds), "");
        format!("COPY ({select}) TO STDOUT")
    }

    /// Streams the rows after the checkpoint's key up to the batch's end into the target, upserts them, and commits
    /// them with the checkpoint.
    pub async fn run_batch(
        &self,
        batch: &mut Batch<'_>,
        lower: Option<&[String]>,
    ) -> Result<BatchOutcome, MigrationError> {
        let upper = batch_end(&self.source, &self.walk, lower, batch.args.batch_size).await?;
        let params: Vec<String> = lower
            .unwrap_or_default()
            .iter()
            .chain(upper.as_deref().unwrap_or_default())
            .cloned()
            .collect();
        let mut tx = self.target.begin_pg("BEGIN").await?;
        tx.execute_script(&self.stage).await?;
        let (rows, bytes) = pg_copy::pipe(
            &self.source,
            &params,
            &self.copy_out(lower.is_some(), upper.is_some()),
            &mut tx,
            &self.copy_in,
        )
        .await?;
        tx.execute_script(&self.merge).await?;
        let outcome = outcome(lower, upper, rows, bytes);
        batch.commit(Box::new(tx), &outcome).await?;
        Ok(outcome)
    }
}
