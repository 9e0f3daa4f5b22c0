//! `order = "auto"`, the default: which walk a copy of a Postgres table into ClickHouse takes.
//!
//! A key-order walk over a key scattered across the heap (md5, uuid v4, random cuids) reads each key range's rows
//! from all over the table, so every range visits most of its pages again: at 10,000,000 rows it ran at 0.42× the
//! raw pipe. The physical walk reads each page once and keeps its rate at that size, and its catch-up pass makes it
//! exact while the table is written ([`super::catch_up`]). Where the key follows the heap (serials, time-ordered
//! ids), key ranges are runs of pages already, and the key walk is as fast without the catch-up's extra read.
//!
//! So a copy that starts (an empty checkpoint) walks the heap when the planner's statistics show a table of at
//! least [`MIN_ROWS`] rows whose first key column's `correlation` with the heap order is below
//! [`SCATTERED_CORRELATION`] in absolute value; by key otherwise, and without statistics. Once it ran a batch, its
//! checkpoint says which walk it is on (`ctid` or `cursor`), so a copy begun by an earlier version, or on other
//! statistics, goes on as it began.

use serde_json::Value;
use sqlx::PgPool;

use crate::migration::MigrationError;
use crate::store::{Dialect, StoreError};

/// Below this many rows the walks differ by little; the key walk's checkpoint is the simpler to read.
pub const MIN_ROWS: f64 = 100_000.0;

/// A key whose order correlates less than this (in absolute value) with the heap's is scattered over it.
pub const SCATTERED_CORRELATION: f64 = 0.5;

/// The walk a copy is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// By key: `{"cursor": ...}`.
    Keys,
    /// In heap order: `{"ctid": ...}`.
    Pages,
}

impl Walk {
    /// The walk a checkpoint is on; `None` before the first batch.
    pub fn of(state: &Value) -> Option<Walk> {
        if state.get("ctid").is_some() {
            Some(Walk::Pages)
        } else if state.get("cursor").is_some() {
            Some(Walk::Keys)
        } else {
            None
        }
    }

    /// The walk for a table of `rows` rows (the planner's estimate) whose first key column correlates with the heap
    /// order by `correlation` (`None`: no statistics).
    pub fn for_table(rows: f64, correlation: Option<f64>) -> Walk {
        match correlation {
            Some(c) if rows >= MIN_ROWS && c.abs() < SCATTERED_CORRELATION => Walk::Pages,
            _ => Walk::Keys,
        }
    }
}

/// The walk for `table`, from its statistics: see [`Walk::for_table`].
pub async fn choose(pool: &PgPool, table: &str, key_column: &str) -> Result<Walk, MigrationError> {
    let sql = "SELECT c.reltuples::float8, s.correlation::float8 FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = $2 \
               WHERE c.oid = $1::text::regclass";
    let (rows, correlation): (f64, Option<f64>) = sqlx::query_as(sql)
        .bind(Dialect::Postgres.quote_ident(table))
        .bind(key_column)
        .fetch_one(pool)
        .await
        .map_err(StoreError::sql(format!("read the statistics of {table}")))?;
    let walk = Walk::for_table(rows, correlation);
    tracing::info!(
        table,
        rows,
        correlation,
        order = if walk == Walk::Pages {
            "physical"
        } else {
            "key"
        },
        "order = auto: the copy walks the table in this order"
    );
    Ok(walk)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_checkpoint_keeps_the_walk_it_began() {
        assert_eq!(Walk::of(&json!({"ctid": "(3,1)"})), Some(Walk::Pages));
        assert_eq!(Walk::of(&json!({"cursor": null})), Some(Walk::Keys));
        assert_eq!(
            Walk::of(&json!({"cursor": ["7"], "verify": {}})),
            Some(Walk::Keys)
        );
        assert_eq!(Walk::of(&json!({})), None);
    }

    #[test]
    fn only_a_large_table_with_a_scattered_key_is_walked_in_heap_order() {
        assert_eq!(Walk::for_table(1e6, Some(0.003)), Walk::Pages);
        assert_eq!(Walk::for_table(1e6, Some(-0.2)), Walk::Pages);
        assert_eq!(
            Walk::for_table(1e6, Some(0.98)),
            Walk::Keys,
            "time-ordered ids"
        );
        assert_eq!(
            Walk::for_table(1e6, Some(-0.9)),
            Walk::Keys,
            "descending ids"
        );
        assert_eq!(Walk::for_table(5e4, Some(0.0)), Walk::Keys, "small table");
        assert_eq!(Walk::for_table(1e6, None), Walk::Keys, "no statistics");
        assert_eq!(Walk::for_table(-1.0, None), Walk::Keys, "never analyzed");
    }
}
