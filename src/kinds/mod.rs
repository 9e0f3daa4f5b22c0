//! The built-in migration kinds, registered like any custom script.

pub mod backfill;
pub mod copy;

use crate::registry::Registry;

/// A registry with every built-in kind (`backfill`, `copy`); add your own scripts to it.
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::empty();
    registry.register(backfill::KIND, backfill::Backfill::build);
    registry.register(copy::KIND, copy::Copy::build);
    registry
}
