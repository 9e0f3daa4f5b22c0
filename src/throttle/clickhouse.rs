//! ClickHouse health: active parts of the target table's busiest partition against the server's
//! `parts_to_delay_insert` (past it, ClickHouse slows every insert; at `parts_to_throw_insert` it refuses them),
//! and the merge backlog on the table.
//!
//! An unreadable signal lets go: `system.parts` is readable by every user, so a failure here means the server is
//! in trouble, and the insert that follows will say so with a real error.

use async_trait::async_trait;

use super::{Health, HealthCheck, Limits};
use crate::clickhouse::{ClickHouse, quote_literal};

/// The parts signal for one table.
pub struct ChHealth {
    clickhouse: ClickHouse,
    table: String,
}

impl ChHealth {
    /// Checks on `table` (in the connection's database unless qualified).
    pub fn new(clickhouse: ClickHouse, table: impl Into<String>) -> Self {
        Self {
            clickhouse,
            table: table.into(),
        }
    }
}

#[async_trait]
impl HealthCheck for ChHealth {
    async fn check(&self, limits: &Limits) -> Result<Health, String> {
        if limits.max_parts_percent == 0 {
            return Ok(Health::Fine);
        }
        let (database, table) = match self.table.split_once('.') {
            Some((db, t)) => (db.to_owned(), t.to_owned()),
            None => (self.clickhouse.database().to_owned(), self.table.clone()),
        };
        let sql = format!(
            "SELECT (SELECT toUInt64(value) FROM system.merge_tree_settings WHERE name = 'parts_to_delay_insert'), \
                    (SELECT max(c) FROM (SELECT count() AS c FROM system.parts \
                        WHERE active AND database = {db} AND table = {t} GROUP BY partition)), \
                    (SELECT count() FROM system.merges WHERE database = {db} AND table = {t})",
            db = quote_literal(&database),
            t = quote_literal(&table)
        );
        let rows = self
            .clickhouse
            .query_rows(&sql)
            .await
            .map_err(|err| format!("ClickHouse parts unreadable: {err}"))?;
        let number = |i: usize| -> u64 {
            rows.first()
                .and_then(|row| row.get(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let (delay_at, parts, merges) = (number(0), number(1), number(2));
        let limit = delay_at * limits.max_parts_percent / 100;
        if delay_at > 0 && parts > limit {
            return Ok(Health::Hold {
                signal: "clickhouse_parts",
                reason: format!(
                    "ClickHouse table {database}.{table} has {parts} active parts in one partition > {limit} \
                     ({}% of parts_to_delay_insert {delay_at}, maxPartsPercent); {merges} merges running",
                    limits.max_parts_percent
                ),
            });
        }
        Ok(Health::Fine)
    }
}
