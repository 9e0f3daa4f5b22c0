//! `kind = "clickhouse_rewrite"`: an in-place rewrite inside ClickHouse, `INSERT INTO to SELECT ... FROM from`, one
//! source partition per batch (`WHERE _partition_id = '...'`, which 18.16 and current servers both have).
//!
//! The checkpoint is the last partition id done; partitions are walked in id order, so a retry resumes after it.
//! Idempotent like `copy`: the target must be a `ReplacingMergeTree`, so a partition inserted twice (a crash after
//! ClickHouse acknowledged it, before the checkpoint) collapses on merge.
//!
//! Layout: one file — the definition ([`RewriteSpec`]), the checkpoint ([`RewriteCheckpoint`]), the statement and
//! the batch. Partitions are not keys: the shared keyset does not apply, the shared checkpoint error does.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ch_error;
use super::checkpoint::Checkpoint;
use crate::clickhouse::{ClickHouse, quote_ident, quote_literal};
use crate::migration::{Batch, BatchOutcome, Migration, MigrationError};
use crate::store::Stores;

/// The name definitions use: `kind = "clickhouse_rewrite"`.
pub const KIND: &str = "clickhouse_rewrite";

/// The definition's parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    /// A configured ClickHouse store (`clickhouse`).
    pub store: String,
    /// The source table.
    pub from: String,
    /// The target table (a ReplacingMergeTree).
    pub to: String,
    /// The target columns to fill (default: all the target's columns without a default expression).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// The select list producing them, in order (trusted SQL from the release; default: the same column names).
    #[serde(default)]
    pub select: Option<String>,
    /// Optional filter on source rows.
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
}

/// A rewrite's checkpoint: `{"partition": "<last partition id done>", "done": true|false}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RewriteCheckpoint {
    /// The last partition rewritten; `None` (written `null`) before the first.
    #[serde(default)]
    pub partition: Option<String>,
    /// True after the last partition.
    #[serde(default)]
    pub done: bool,
}

impl Checkpoint for RewriteCheckpoint {
    const SHAPE: &'static str = "{\"partition\": \"partition id\", \"done\": true|false}";
}

/// A rewrite bound to its store.
pub struct ClickHouseRewrite {
    spec: RewriteSpec,
    clickhouse: ClickHouse,
}

impl ClickHouseRewrite {
    /// The registry factory: parses the definition and finds its store.
    pub fn build(params: &Value, stores: &Stores) -> Result<Arc<dyn Migration>, String> {
        let spec: RewriteSpec = serde_json::from_value(params.clone()).map_err(|e| {
            format!(
                "clickhouse_rewrite definition: {e} (allowed: store, from, to, columns = [...], select = \"...\", where)"
            )
        })?;
        let clickhouse = stores.clickhouse(&spec.store).ok_or_else(|| {
            format!(
                "clickhouse_rewrite definition: store {:?} is not a configured ClickHouse store (configured: {}); set \
                 CLICKHOUSE_URL",
                spec.store,
                stores.clickhouse_names().join(", ")
            )
        })?;
        Ok(Arc::new(ClickHouseRewrite { spec, clickhouse }))
    }

    /// Active partitions of the source with their row counts, in partition id order.
    async fn partitions(&self) -> Result<Vec<(String, u64)>, MigrationError> {
        let sql = format!(
            "SELECT partition_id, sum(rows) FROM system.parts WHERE database = {} AND table = {} AND active \
             GROUP BY partition_id ORDER BY partition_id",
            quote_literal(self.clickhouse.database()),
            quote_literal(&self.spec.from)
        );
        let rows = self.clickhouse.query_rows(&sql).await.map_err(ch_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|row| Some((row.first()?.clone(), row.get(1)?.parse().ok()?)))
            .collect())
    }

    /// The `INSERT ... SELECT` for one partition.
    async fn statement(&self, partition: &str) -> Result<String, MigrationError> {
        let columns = match &self.spec.columns {
            Some(columns) => columns.clone(),
            None => self
                .clickhouse
                .columns(&self.spec.to)
                .await
                .map_err(ch_error)?
                .into_iter()
                .filter(|c| !c.has_default)
                .map(|c| c.name)
                .collect(),
        };
        let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let select = self
            .spec
            .select
            .clone()
            .unwrap_or_else(|| quoted.join(", "));
        let filter = self
            .spec
            .filter
            .as_ref()
            .map(|f| format!(" AND ({f})"))
            .unwrap_or_default();
        Ok(format!(
            "INSERT INTO {} ({}) SELECT {select} FROM {} WHERE _partition_id = {}{filter}",
            quote_ident(&self.spec.to),
            quoted.join(", "),
            quote_ident(&self.spec.from),
            quote_literal(partition)
        ))
    }
}

#[async_trait]
impl Migration for ClickHouseRewrite {
    async fn validate(&self) -> Result<(), MigrationError> {
        let invalid = MigrationError::Invalid;
        let missing = |table: &str| {
            invalid(format!(
                "the ClickHouse table {table} does not exist in database {}",
                self.clickhouse.database()
            ))
        };
        self.clickhouse
            .table(&self.spec.from)
            .await
            .map_err(ch_error)?
            .ok_or_else(|| missing(&self.spec.from))?;
        let target = self
            .clickhouse
            .table(&self.spec.to)
            .await
            .map_err(ch_error)?
            .ok_or_else(|| missing(&self.spec.to))?;
        if !target.engine.contains("ReplacingMergeTree") {
            return Err(invalid(format!(
                "the ClickHouse table {} is {}; a rewrite needs a ReplacingMergeTree target so that a partition \
                 inserted twice after a crash or retry collapses",
                self.spec.to, target.engine
            )));
        }
        // The statement must compile: run it on no partition at all.
        let check = self.statement("").await?;
        self.clickhouse
            .execute(&format!("{check} AND 0"))
            .await
            .map_err(|err| invalid(format!("the rewrite's SELECT does not work: {err}")))
    }

    async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
        Ok(Some(
            self.partitions().await?.iter().map(|(_, rows)| rows).sum(),
        ))
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        let after = RewriteCheckpoint::read(batch.state)?.partition;
        let mut remaining = self
            .partitions()
            .await?
            .into_iter()
            .filter(|(id, _)| after.as_ref().is_none_or(|done| id > done));
        let Some((partition, rows)) = remaining.next() else {
            let last = RewriteCheckpoint {
                partition: after,
                done: true,
            };
            return Ok(BatchOutcome {
                state: last.to_state(),
                done: true,
                rows: 0,
                bytes: 0,
            });
        };
        let statement = self.statement(&partition).await?;
        self.clickhouse
            .execute(&statement)
            .await
            .map_err(ch_error)?;
        // The last partition listed ends the rewrite; partitions created after the listing are not its business.
        let done = remaining.next().is_none();
        let next = RewriteCheckpoint {
            partition: Some(partition),
            done,
        };
        Ok(BatchOutcome {
            state: next.to_state(),
            done,
            rows,
            bytes: 0,
        })
    }
}
