//! `kind = "copy"`: copy a table (or a Postgres query's result) batch by batch in keyset order over a unique key
//! (single or composite; text ids allowed) — from Postgres or SQLite into ClickHouse, or from a SQL store into a SQL
//! store (SQLite or Postgres, either way). The target's store selects the writer: a ClickHouse store the `RowBinary`
//! stream of [`to_clickhouse`], a SQL store the upsert of [`to_sql`].
//!
//! Layout: this file is the factory (which writer, which stores); [`spec`] parses the definition; [`source`] checks
//! the source (table or query, its key) and estimates its rows, for both writers. [`to_clickhouse`]: the copy into
//! ClickHouse (its plan, the key-order, key-range and physical walks, the encoding, verify). [`to_sql`]: the copy
//! into a SQL store (the read and the upsert). The key walk itself is [`crate::kinds::keyset`].

mod source;
mod spec;
mod to_clickhouse;
mod to_sql;

use std::sync::Arc;

use serde_json::Value;

use crate::migration::Migration;
use crate::store::Stores;

use self::spec::Order;

pub use self::spec::CopySpec;
pub use self::to_clickhouse::{
    CLICKHOUSE_BATCH_SIZE, ClickHouseCopy, ColumnPlan, Reader, plan_column,
};
pub use self::to_sql::SqlCopy;

/// The name definitions use: `kind = "copy"`.
pub const KIND: &str = "copy";

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
        let pg_pair = stores
            .postgres(&spec.from.store)
            .zip(stores.postgres(&spec.to.store));
        let mut copy = SqlCopy::new(spec, source, target);
        if let Some((source, target)) = pg_pair {
            copy = copy.between_postgres(source, target);
        }
        return Ok(Arc::new(copy));
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
    let source = match (
        stores.postgres(&spec.from.store),
        stores.sqlite(&spec.from.store),
    ) {
        (Some(store), _) => Reader::Postgres(store),
        (None, Some(store)) => Reader::Sqlite(store),
        (None, None) => {
            return Err(format!(
                "copy definition: from.store {:?} is not a configured Postgres or SQLite store (configured SQL \
                 stores: {}); a copy into ClickHouse reads from one of them",
                spec.from.store,
                stores.sql_names().join(", ")
            ));
        }
    };
    Ok(Arc::new(ClickHouseCopy::new(spec, source, target)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_target_store_that_is_neither_clickhouse_nor_sql_is_refused_naming_both_kinds() {
        let err = build(
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
