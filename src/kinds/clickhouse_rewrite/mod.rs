//! `kind = "clickhouse_rewrite"`: an in-place rewrite inside ClickHouse, `INSERT INTO to SELECT ... FROM from`, one
//! source partition per batch (`WHERE _partition_id = '...'`, which 18.16 and current servers both have).
//!
//! The checkpoint is the last partition id done; partitions are walked in id order, so a retry resumes after it.
//! Idempotent like `copy`: the target must be a `ReplacingMergeTree`, so a partition inserted twice (a crash after
//! ClickHouse acknowledged it, before the checkpoint) collapses on merge.
//!
//! Bounded in memory: every statement carries `max_memory_usage`, `max_threads`, `max_block_size` (and
//! `max_insert_threads` where the server knows it) from the args ([`QueryLimits`]). A partition that fails on
//! memory (code 241) is split along the source's sorting key into ranges of half its rows, then half again, until
//! a range fits; the rest of that partition goes on in ranges of that size, one per batch, the range's upper key
//! in the checkpoint. Another error — or a range of one key that still does not fit — fails the batch with that
//! first real error.
//!
//! With `parallelism` > 1 (and for work stealing) the rows are dealt into ranges of about equal rows
//! ([`ranges`]): runs of consecutive partitions where a partition boundary lies near a share's end, key ranges inside
//! a partition elsewhere — so a table of one partition splits too. A range ends where its next range starts: after
//! a partition, or at a key inside one, where its last chunk stops.
//!
//! Layout: this file — the definition ([`RewriteSpec`]), the checkpoint ([`RewriteCheckpoint`]), the statement and
//! the batch; [`key_range`] the key ranges inside a partition; [`ranges`] the cuts between ranges. Partitions are
//! not keys: the shared keyset does not apply, the shared checkpoint error does.

mod key_range;
mod ranges;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use tokio::sync::OnceCell;

use self::key_range::KeyOrder;
use self::ranges::{RangeEnd, plan_cuts};
use super::ch_error;
use super::checkpoint::Checkpoint;
use crate::clickhouse::limits::QueryLimits;
use crate::clickhouse::{ClickHouse, ClickHouseError, quote_ident, quote_literal};
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

/// A rewrite's checkpoint: `{"partition": "<last partition id done>", "done": true|false}`, with `split` while a
/// partition goes in key ranges.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RewriteCheckpoint {
    /// The last partition rewritten; `None` (written `null`) before the first.
    #[serde(default)]
    pub partition: Option<String>,
    /// True after the last partition.
    #[serde(default)]
    pub done: bool,
    /// The partition in progress in key ranges, when a whole one did not fit in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// A partition rewritten in key ranges: `{"partition": "202409", "after": ["e1042"], "rows": 5000}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// The partition in progress.
    pub partition: String,
    /// The sorting key of the last row done (as text, one value per key expression); `None` before the first range.
    #[serde(default)]
    pub after: Option<Vec<String>>,
    /// Rows per range: the size that fit.
    pub rows: u64,
}

impl Checkpoint for RewriteCheckpoint {
    const SHAPE: &'static str = "{\"partition\": \"partition id\", \"done\": true|false, \"split\": \
                                 {\"partition\": \"id\", \"after\": [\"key\"], \"rows\": 5000} (optional)}";
}

/// A rewrite bound to its store.
pub struct ClickHouseRewrite {
    spec: RewriteSpec,
    clickhouse: ClickHouse,
    /// Whether the server knows `max_insert_threads` (not 18.x), asked once.
    insert_threads: OnceCell<bool>,
    /// The source's sorting key, read at the first split.
    key_order: OnceCell<Option<KeyOrder>>,
}

/// What one chunk did: rows read, the upper key of a range that did not reach the partition's end, and whether
/// that key is where the migration's range ends.
struct Chunk {
    rows: u64,
    upto: Option<Vec<String>>,
    ends_range: bool,
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
        Ok(Arc::new(ClickHouseRewrite {
            spec,
            clickhouse,
            insert_threads: OnceCell::new(),
            key_order: OnceCell::new(),
        }))
    }

    /// The query settings for `limits` on this server.
    async fn settings(
        &self,
        limits: &QueryLimits,
    ) -> Result<Vec<(&'static str, String)>, MigrationError> {
        let known = self
            .insert_threads
            .get_or_try_init(|| async {
                let sql = "SELECT count() FROM system.settings WHERE name = 'max_insert_threads'";
                Ok::<_, ClickHouseError>(self.clickhouse.query_value(sql).await? != "0")
            })
            .await
            .map_err(ch_error)?;
        Ok(limits.settings(*known))
    }

    async fn key_order(&self) -> Result<Option<&KeyOrder>, ClickHouseError> {
        let order = self
            .key_order
            .get_or_try_init(|| async {
                let sorting_key = self
                    .clickhouse
                    .table(&self.spec.from)
                    .await?
                    .map(|t| t.sorting_key)
                    .unwrap_or_default();
                KeyOrder::of(&self.clickhouse, &self.spec.from, &sorting_key).await
            })
            .await?;
        Ok(order.as_ref())
    }

    /// One chunk: the whole partition (`split` = None) or the next key range of `split.rows` rows, up to `end`
    /// (the key the migration's range ends at in this partition, if it does).
    async fn chunk(
        &self,
        partition: &str,
        whole_rows: u64,
        split: Option<&Split>,
        end: Option<&[String]>,
        settings: &[(&str, String)],
    ) -> Result<Chunk, ClickHouseError> {
        let statement =
            self.statement(partition)
                .await
                .map_err(|err| ClickHouseError::Protocol {
                    context: format!("read the columns of {}", self.spec.to),
                    detail: err.to_string(),
                })?;
        let Some(split) = split else {
            self.clickhouse.execute_with(&statement, settings).await?;
            return Ok(Chunk {
                rows: whole_rows,
                upto: None,
                ends_range: false,
            });
        };
        let Some(order) = self.key_order().await? else {
            return Err(ClickHouseError::Protocol {
                context: format!("split partition {partition} of {}", self.spec.from),
                detail: "the table has no sorting key to split along".into(),
            });
        };
        let after = split.after.as_deref();
        let bound = order.bound_query(&self.spec.from, partition, after, end, split.rows);
        let found = self
            .clickhouse
            .query_rows_with(&bound, settings)
            .await?
            .into_iter()
            .next();
        // Fewer rows than a chunk left before the range's end: this chunk reaches it.
        let ends_range = end.is_some() && (found.is_none() || found.as_deref() == end);
        let upto = found.or_else(|| end.map(<[String]>::to_vec));
        let range = order.condition(after, upto.as_deref());
        let rows = self.count_in(partition, &range, settings).await?;
        self.clickhouse
            .execute_with(&format!("{statement}{range}"), settings)
            .await?;
        Ok(Chunk {
            rows,
            upto,
            ends_range,
        })
    }

    /// The source's rows in `partition` that satisfy `range` (` AND ...`, from [`KeyOrder::condition`]).
    async fn count_in(
        &self,
        partition: &str,
        range: &str,
        settings: &[(&str, String)],
    ) -> Result<u64, ClickHouseError> {
        let count = format!(
            "SELECT count() FROM {} WHERE _partition_id = {}{range}",
            quote_ident(&self.spec.from),
            quote_literal(partition)
        );
        let rows = self.clickhouse.query_rows_with(&count, settings).await?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
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

    fn health_checks(&self) -> Vec<Arc<dyn crate::throttle::HealthCheck>> {
        vec![Arc::new(crate::throttle::clickhouse::ChHealth::new(
            self.clickhouse.clone(),
            self.spec.to.clone(),
        ))]
    }

    /// Cuts the rows after `from` up to `upper` into ranges of about equal rows: at partition boundaries near a
    /// share's end, else at keys inside a partition (see [`ranges`]).
    async fn split(
        &self,
        from: &Value,
        upper: Option<&Value>,
        parts: u64,
        _rows: Option<u64>,
    ) -> Result<Vec<Value>, MigrationError> {
        let from = RewriteCheckpoint::read(from)?;
        let end = RangeEnd::of(upper)?;
        let partitions = self.partitions().await?;
        let segments = self.segments(&partitions, &from, end.as_ref()).await?;
        let keyed = self.key_order().await.map_err(ch_error)?.is_some();
        let cuts = plan_cuts(&segments, parts, keyed);
        Ok(self
            .cut_checkpoints(&segments, &cuts)
            .await?
            .iter()
            .map(RewriteCheckpoint::to_state)
            .collect())
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        let checkpoint = RewriteCheckpoint::read(batch.state)?;
        let end = RangeEnd::of(batch.upper)?;
        let mut partitions = self.partitions().await?;
        if let Some(end) = &end {
            partitions.retain(|(id, _)| end.admits(id));
        }
        let next = match &checkpoint.split {
            Some(split) => partitions.iter().find(|(id, _)| *id == split.partition),
            None => partitions
                .iter()
                .find(|(id, _)| checkpoint.partition.as_ref().is_none_or(|done| id > done)),
        };
        let Some((partition, whole_rows)) = next.cloned() else {
            let last = RewriteCheckpoint {
                partition: checkpoint.partition,
                done: true,
                split: None,
            };
            return Ok(BatchOutcome {
                state: last.to_state(),
                done: true,
                rows: 0,
                bytes: 0,
            });
        };
        let settings = self.settings(&batch.args.clickhouse).await?;
        // A range that ends inside this partition goes through it by key, up to that key.
        let end_key = end.as_ref().and_then(|end| end.key_in(&partition));
        let mut split = checkpoint.split.clone().or_else(|| {
            end_key.map(|_| Split {
                partition: partition.clone(),
                after: None,
                rows: whole_rows,
            })
        });
        let mut first_memory_error = None;
        let chunk = loop {
            let err = match self
                .chunk(&partition, whole_rows, split.as_ref(), end_key, &settings)
                .await
            {
                Ok(chunk) => break chunk,
                Err(err) if err.is_memory_limit() => err,
                Err(err) => return Err(ch_error(err)),
            };
            let rows = split.as_ref().map_or(whole_rows, |s| s.rows) / 2;
            let first = first_memory_error.get_or_insert(err);
            if rows == 0 {
                return Err(MigrationError::Permanent(format!(
                    "{first}; even a range of one key of partition {partition} does not fit in maxMemoryUsage {} \
                     bytes: raise it with `bgmigrate set-args NAME '{{\"maxMemoryUsage\": ...}}'`",
                    batch.args.clickhouse.max_memory_usage
                )));
            }
            tracing::info!(partition = %partition, rows, "a chunk did not fit in maxMemoryUsage; splitting it by key range");
            split = Some(Split {
                partition: partition.clone(),
                after: split.and_then(|s| s.after),
                rows,
            });
        };
        // The last partition listed (of the range) ends the rewrite (the range); partitions created after the
        // listing are not its business.
        let last = !partitions.iter().any(|(id, _)| *id > partition);
        let next = match (split, chunk.upto) {
            (Some(split), Some(upto)) => RewriteCheckpoint {
                partition: checkpoint.partition,
                done: chunk.ends_range,
                split: Some(Split {
                    after: Some(upto),
                    ..split
                }),
            },
            _ => RewriteCheckpoint {
                partition: Some(partition),
                done: last,
                split: None,
            },
        };
        Ok(BatchOutcome {
            done: next.done,
            state: next.to_state(),
            rows: chunk.rows,
            bytes: 0,
        })
    }
}
