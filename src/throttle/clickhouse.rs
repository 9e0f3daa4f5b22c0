//! ClickHouse health: active parts of the target table's busiest partition against the server's
//! `parts_to_delay_insert` (past it, ClickHouse slows every insert; at `parts_to_throw_insert` it refuses them), the
//! merge backlog (merges running against the server's background merge pool), and the server's memory.
//!
//! Every figure comes from one query whose tables and columns exist on 18.16 and on current servers
//! (`system.parts`, `system.merges`, `system.metrics`, `system.settings`, `system.merge_tree_settings`); the memory
//! limit comes from `system.server_settings`, which only 22.x and later have — read once, and on older servers the
//! memory signal needs `maxServerMemoryBytes`.
//!
//! An unreadable signal lets go: these system tables are readable by every user, so a failure here means the
//! server is in trouble, and the insert that follows will say so with a real error.

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{Health, HealthCheck, Limits, bytes};
use crate::clickhouse::{ClickHouse, quote_literal};

/// The ClickHouse signals for one table.
pub struct ChHealth {
    clickhouse: ClickHouse,
    table: String,
    /// `max_server_memory_usage`, when the server publishes it.
    memory_limit: OnceCell<Option<u64>>,
}

/// One reading of the server and table.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Reading {
    /// `parts_to_delay_insert`.
    pub(crate) delay_at: u64,
    /// Active parts in the table's busiest partition.
    pub(crate) parts: u64,
    /// Merges running on the table.
    pub(crate) table_merges: u64,
    /// Merges running on the server.
    pub(crate) merges: u64,
    /// The merge pool: `BackgroundMergesAndMutationsPoolSize` (current servers), else `background_pool_size`.
    pub(crate) merge_pool: u64,
    /// `MemoryTracking`.
    pub(crate) memory: u64,
    /// `max_server_memory_usage`, if published.
    pub(crate) memory_limit: Option<u64>,
}

impl ChHealth {
    /// Checks on `table` (in the connection's database unless qualified).
    pub fn new(clickhouse: ClickHouse, table: impl Into<String>) -> Self {
        Self {
            clickhouse,
            table: table.into(),
            memory_limit: OnceCell::new(),
        }
    }

    fn database_and_table(&self) -> (String, String) {
        match self.table.split_once('.') {
            Some((db, t)) => (db.to_owned(), t.to_owned()),
            None => (self.clickhouse.database().to_owned(), self.table.clone()),
        }
    }

    async fn read(&self) -> Result<Reading, String> {
        let (database, table) = self.database_and_table();
        let metric = |name: &str| {
            format!("(SELECT toInt64(sum(value)) FROM system.metrics WHERE metric = '{name}')")
        };
        let sql = format!(
            "SELECT (SELECT toUInt64(value) FROM system.merge_tree_settings WHERE name = 'parts_to_delay_insert'), \
                    (SELECT max(c) FROM (SELECT count() AS c FROM system.parts \
                        WHERE active AND database = {db} AND table = {t} GROUP BY partition)), \
                    (SELECT count() FROM system.merges WHERE database = {db} AND table = {t}), \
                    {merges}, {pool}, \
                    (SELECT toUInt64OrZero(value) FROM system.settings WHERE name = 'background_pool_size'), \
                    {memory}",
            db = quote_literal(&database),
            t = quote_literal(&table),
            merges = metric("Merge"),
            pool = metric("BackgroundMergesAndMutationsPoolSize"),
            memory = metric("MemoryTracking"),
        );
        let rows = self
            .clickhouse
            .query_rows(&sql)
            .await
            .map_err(|err| format!("ClickHouse health unreadable: {err}"))?;
        let number = |i: usize| -> u64 {
            rows.first()
                .and_then(|row| row.get(i))
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
                .max(0) as u64
        };
        let pool = match number(4) {
            0 => number(5),
            pool => pool,
        };
        let memory_limit = *self
            .memory_limit
            .get_or_init(|| async {
                // 18.x has no system.server_settings: the query fails, and there is no server-wide limit to read.
                self.clickhouse
                    .query_value(
                        "SELECT toUInt64(value) FROM system.server_settings WHERE name = 'max_server_memory_usage'",
                    )
                    .await
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .filter(|limit| *limit > 0)
            })
            .await;
        Ok(Reading {
            delay_at: number(0),
            parts: number(1),
            table_merges: number(2),
            merges: number(3),
            merge_pool: pool,
            memory: number(6),
            memory_limit,
        })
    }
}

/// What a reading means under `limits`: the first signal past its threshold holds.
pub(crate) fn judge(reading: &Reading, limits: &Limits, table: &str) -> Health {
    let parts_limit = reading.delay_at * limits.max_parts_percent / 100;
    if limits.max_parts_percent > 0 && reading.delay_at > 0 && reading.parts > parts_limit {
        return Health::Hold {
            signal: "clickhouse_parts",
            reason: format!(
                "ClickHouse table {table} has {} active parts in one partition > {parts_limit} ({}% of \
                 parts_to_delay_insert {}, maxPartsPercent); {} merges running on it",
                reading.parts, limits.max_parts_percent, reading.delay_at, reading.table_merges
            ),
        };
    }
    let merges_limit = reading.merge_pool * limits.max_merge_pool_percent / 100;
    if limits.max_merge_pool_percent > 0
        && reading.merge_pool > 0
        && reading.merges >= merges_limit.max(1)
    {
        return Health::Hold {
            signal: "clickhouse_merges",
            reason: format!(
                "ClickHouse runs {} merges >= {} ({}% of its merge pool of {}, maxMergePoolPercent)",
                reading.merges,
                merges_limit.max(1),
                limits.max_merge_pool_percent,
                reading.merge_pool
            ),
        };
    }
    let from_percent = reading
        .memory_limit
        .filter(|_| limits.max_server_memory_percent > 0)
        .map(|limit| {
            (
                limit / 100 * limits.max_server_memory_percent,
                "maxServerMemoryPercent",
            )
        });
    let from_bytes = (limits.max_server_memory_bytes > 0)
        .then_some((limits.max_server_memory_bytes, "maxServerMemoryBytes"));
    let memory_limit = [from_percent, from_bytes]
        .into_iter()
        .flatten()
        .min_by_key(|(limit, _)| *limit);
    if let Some((limit, key)) = memory_limit
        && reading.memory > limit
    {
        return Health::Hold {
            signal: "clickhouse_memory",
            reason: format!(
                "ClickHouse tracks {} of memory > {} ({key})",
                bytes(reading.memory),
                bytes(limit)
            ),
        };
    }
    Health::Fine
}

#[async_trait]
impl HealthCheck for ChHealth {
    async fn check(&self, limits: &Limits) -> Result<Health, String> {
        let off = limits.max_parts_percent == 0
            && limits.max_merge_pool_percent == 0
            && limits.max_server_memory_percent == 0
            && limits.max_server_memory_bytes == 0;
        if off {
            return Ok(Health::Fine);
        }
        let reading = self.read().await?;
        let (database, table) = self.database_and_table();
        Ok(judge(&reading, limits, &format!("{database}.{table}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        Reading {
            delay_at: 150,
            parts: 10,
            table_merges: 1,
            merges: 2,
            merge_pool: 16,
            memory: 1 << 30,
            memory_limit: Some(8 << 30),
        }
    }

    fn signal(health: Health) -> Option<&'static str> {
        match health {
            Health::Hold { signal, .. } => Some(signal),
            _ => None,
        }
    }

    #[test]
    fn a_quiet_server_lets_the_migration_run() {
        assert_eq!(judge(&reading(), &Limits::default(), "db.t"), Health::Fine);
    }

    #[test]
    fn a_merge_pool_three_quarters_busy_holds() {
        let busy = Reading {
            merges: 12,
            ..reading()
        };
        let Health::Hold { reason, .. } = judge(&busy, &Limits::default(), "db.t") else {
            panic!("not held")
        };
        assert_eq!(
            reason,
            "ClickHouse runs 12 merges >= 12 (75% of its merge pool of 16, maxMergePoolPercent)"
        );
        let off = Limits {
            max_merge_pool_percent: 0,
            ..Limits::default()
        };
        assert_eq!(judge(&busy, &off, "db.t"), Health::Fine);
    }

    #[test]
    fn memory_holds_past_the_percent_of_the_servers_limit_or_the_absolute_bytes() {
        let full = Reading {
            memory: 7 << 30,
            ..reading()
        };
        assert_eq!(
            signal(judge(&full, &Limits::default(), "db.t")),
            Some("clickhouse_memory")
        );
        let old_server = Reading {
            memory_limit: None,
            ..full
        };
        assert_eq!(
            judge(&old_server, &Limits::default(), "db.t"),
            Health::Fine,
            "18.x publishes no limit: only maxServerMemoryBytes applies"
        );
        let bytes = Limits {
            max_server_memory_bytes: 1 << 30,
            ..Limits::default()
        };
        let Health::Hold { reason, .. } = judge(&old_server, &bytes, "db.t") else {
            panic!("not held")
        };
        assert_eq!(
            reason,
            "ClickHouse tracks 7.0 GiB of memory > 1.0 GiB (maxServerMemoryBytes)"
        );
    }

    #[test]
    fn parts_past_their_share_of_parts_to_delay_insert_hold_first() {
        let crowded = Reading {
            parts: 91,
            merges: 16,
            ..reading()
        };
        assert_eq!(
            signal(judge(&crowded, &Limits::default(), "db.t")),
            Some("clickhouse_parts")
        );
    }
}
