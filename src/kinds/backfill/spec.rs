//! The parameters of a `backfill` definition, checked without touching a database.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `kind = "backfill"`: an in-place UPDATE of one table, batch by batch in keyset order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillSpec {
    /// Which configured store holds the table (`postgres`).
    pub store: String,
    /// The table, optionally schema-qualified.
    pub table: String,
    /// Columns of a unique key, walked in this order.
    pub key: Vec<String>,
    /// Column → SQL expression (trusted, from the release).
    pub set: BTreeMap<String, String>,
    /// Optional filter: only matching rows are updated (every key is still walked).
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
}

impl BackfillSpec {
    /// Parses and checks the definition's parameters.
    pub fn parse(params: &Value) -> Result<BackfillSpec, String> {
        let spec: BackfillSpec = serde_json::from_value(params.clone()).map_err(|e| {
            format!("backfill definition: {e} (allowed: store, table, key = [columns], set = {{ column = \"expression\" }}, where)")
        })?;
        if spec.key.is_empty() {
            return Err(
                "backfill definition: key must name at least one column of a unique key".into(),
            );
        }
        if spec.set.is_empty() {
            return Err("backfill definition: set must assign at least one column".into());
        }
        if let Some(column) = spec.set.keys().find(|c| spec.key.contains(c)) {
            return Err(format!(
                "backfill definition: set assigns the key column {column:?}; a backfill must not change the key it walks"
            ));
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_typo_in_a_parameter_is_named() {
        let err = BackfillSpec::parse(&json!({
            "store": "postgres", "table": "t", "key": ["id"], "set": {"a": "1"}, "wher": "x"
        }))
        .unwrap_err();
        assert!(err.contains("unknown field `wher`"), "{err}");
    }

    #[test]
    fn updating_the_key_is_refused() {
        let err = BackfillSpec::parse(
            &json!({"store": "postgres", "table": "t", "key": ["id"], "set": {"id": "1"}}),
        )
        .unwrap_err();
        assert!(err.contains("must not change the key"), "{err}");
    }
}
