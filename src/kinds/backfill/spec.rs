//! The parameters of a `backfill` definition, checked without touching a database.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `kind = "backfill"`: an in-place UPDATE of one table, batch by batch in keyset order (or in heap order).
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
    /// The order rows are updated in: by key (default) or by heap page (`"physical"`, Postgres).
    #[serde(default)]
    pub order: BackfillOrder,
}

/// `order`: the order a backfill updates rows in. Both update every row present when the walk (or its listing)
/// reaches it exactly once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackfillOrder {
    /// Key order, the key as the cursor. Rows inserted later with keys ahead of the cursor are updated too. Where
    /// the key is not correlated with the heap (random ids), each batch touches pages all over the table, and after
    /// every checkpoint each touched page costs a full-page image in the WAL.
    #[default]
    Key,
    /// Heap order: the keys are listed once, in page order, in a table beside the target (one statement at the
    /// start, under one snapshot), and each batch updates the next run of listed keys. Each page is changed by one
    /// batch, so the WAL is that of one plain `UPDATE`. Rows inserted after the listing are not updated. Postgres
    /// only: SQLite stores a table in rowid order already.
    Physical,
}

impl BackfillSpec {
    /// Parses and checks the definition's parameters.
    pub fn parse(params: &Value) -> Result<BackfillSpec, String> {
        let spec: BackfillSpec = serde_json::from_value(params.clone()).map_err(|e| {
            format!("backfill definition: {e} (allowed: store, table, key = [columns], set = {{ column = \"expression\" }}, where, order = \"key\"|\"physical\")")
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
