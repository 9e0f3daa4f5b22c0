//! The built-in migration kinds, registered like any custom script.

pub mod backfill;
pub mod clickhouse_rewrite;
pub mod copy;

use crate::registry::Registry;

/// A registry with every built-in kind (`backfill`, `copy`, `clickhouse_rewrite`); add your own scripts to it.
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::empty();
    registry.register(backfill::KIND, backfill::Backfill::build);
    registry.register(copy::KIND, copy::Copy::build);
    registry.register(
        clickhouse_rewrite::KIND,
        clickhouse_rewrite::ClickHouseRewrite::build,
    );
    registry
}
