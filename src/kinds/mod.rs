//! The built-in migration kinds, registered like any custom script.
//!
//! Layout: [`backfill`] updates a table in place; [`copy`] streams rows from one store into another;
//! [`clickhouse_rewrite`] rewrites a ClickHouse table partition by partition. What they share: [`keyset`], the key
//! walk (bounds, the next batch's last key, the key-order read) in either SQL dialect; [`checkpoint`], each kind's
//! typed checkpoint and the one error for a checkpoint that cannot be read.

pub mod backfill;
pub mod checkpoint;
pub mod clickhouse_rewrite;
pub mod copy;
pub mod keyset;

use crate::clickhouse::ClickHouseError;
use crate::migration::MigrationError;
use crate::registry::Registry;

/// A registry with every built-in kind (`backfill`, `copy`, `clickhouse_rewrite`); add your own scripts to it.
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::empty();
    registry.register(backfill::KIND, backfill::Backfill::build);
    registry.register(copy::KIND, copy::build);
    registry.register(
        clickhouse_rewrite::KIND,
        clickhouse_rewrite::ClickHouseRewrite::build,
    );
    registry
}

/// A ClickHouse failure as a migration error: transient ones retry the batch.
pub(crate) fn ch_error(err: ClickHouseError) -> MigrationError {
    if err.is_transient() {
        MigrationError::Transient(err.to_string())
    } else {
        MigrationError::Permanent(err.to_string())
    }
}
