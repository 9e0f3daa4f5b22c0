//! Scripts by name: how a control-table row (`script` + its definition) becomes a runnable [`Migration`].
//!
//! The built-in kinds register here exactly like a host application's own migrations do.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::migration::Migration;
use crate::store::Stores;

/// Builds a migration from its definition parameters; errors are sentences naming the bad parameter.
pub type Factory = dyn Fn(&Value, &Stores) -> Result<Arc<dyn Migration>, String> + Send + Sync;

/// The scripts this build knows.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Arc<Factory>>,
}

impl Registry {
    /// A registry with no scripts; see [`crate::kinds::builtin_registry`] for one with the built-in kinds.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Registers `factory` under `script` (replacing any earlier one of that name).
    pub fn register<F>(&mut self, script: impl Into<String>, factory: F) -> &mut Self
    where
        F: Fn(&Value, &Stores) -> Result<Arc<dyn Migration>, String> + Send + Sync + 'static,
    {
        self.factories.insert(script.into(), Arc::new(factory));
        self
    }

    /// Whether `script` is known.
    pub fn knows(&self, script: &str) -> bool {
        self.factories.contains_key(script)
    }

    /// The known script names.
    pub fn scripts(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    /// Builds the migration for a row; `Err` is a sentence for `failed_reason`.
    pub fn build(
        &self,
        script: &str,
        params: &Value,
        stores: &Stores,
    ) -> Result<Arc<dyn Migration>, String> {
        let factory = self
            .factories
            .get(script)
            .ok_or_else(|| unknown_script(script, self))?;
        factory(params, stores)
    }
}

/// The reason recorded for a row whose script this build does not have.
pub fn unknown_script(script: &str, registry: &Registry) -> String {
    format!(
        "no migration kind/script named {script:?} in this build (known: {}); deploy a build that has it, then retry",
        registry.scripts().join(", ")
    )
}
