//! The built-in migration kinds, registered like any custom script.

pub mod backfill;

use crate::registry::Registry;

/// A registry with every built-in kind (`backfill`); add your own scripts to it.
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::empty();
    registry.register(backfill::KIND, backfill::Backfill::build);
    registry
}
