//! The parameters of a `copy` definition, checked without touching a database.

use serde::Deserialize;
use serde_json::Value;

/// `kind = "copy"`: copy the rows of a table into a ClickHouse table or a SQL store's table, in keyset order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopySpec {
    /// Where the rows come from.
    pub from: Source,
    /// Where they go.
    pub to: Target,
    /// After the last batch, compare every key range on both sides (count and checksum); ClickHouse targets only.
    #[serde(default)]
    pub verify: bool,
}

/// `from = { store, table, key, columns, where }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A configured SQL store (`postgres`, `sqlite`); Postgres when the target is ClickHouse.
    pub store: String,
    /// The table, optionally schema-qualified.
    pub table: String,
    /// Columns of a unique key, walked in this order.
    pub key: Vec<String>,
    /// Columns to copy (default: every column of the table); each goes to the target column of that name.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Optional filter: only matching rows are copied.
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// The walk's order: by key (default) or physical (heap order, for tables no longer written).
    #[serde(default)]
    pub order: Order,
}

/// `from.order`: how the source is walked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// In key order, with the key as the cursor: safe while the table is written.
    #[default]
    Key,
    /// In heap order, a window of pages per batch, with `ctid` as the cursor: reads each page once, but may miss
    /// rows updated during the copy. Postgres sources into ClickHouse only.
    Physical,
}

/// `to = { store, table }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A configured ClickHouse store (`clickhouse`) or SQL store (e.g. `analytics`): it selects the writer.
    pub store: String,
    /// The table in that store's database.
    pub table: String,
}

impl CopySpec {
    /// Parses and checks the definition's parameters.
    pub fn parse(params: &Value) -> Result<CopySpec, String> {
        let spec: CopySpec = serde_json::from_value(params.clone()).map_err(|e| {
            format!(
                "copy definition: {e} (allowed: from = {{ store, table, key = [columns], columns = [...], where, \
                 order = \"key\"|\"physical\" }}, \
                 to = {{ store, table }}, verify = true|false)"
            )
        })?;
        if spec.from.key.is_empty() {
            return Err(
                "copy definition: from.key must name at least one column of a unique key".into(),
            );
        }
        if let Some(columns) = &spec.from.columns {
            if let Some(key) = spec.from.key.iter().find(|k| !columns.contains(k)) {
                return Err(format!(
                    "copy definition: from.columns must include the key column {key:?} (the target deduplicates on it)"
                ));
            }
            if let Some(dup) = columns
                .iter()
                .enumerate()
                .find_map(|(i, c)| columns[..i].contains(c).then_some(c))
            {
                return Err(format!("copy definition: from.columns lists {dup:?} twice"));
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_copy_definition_parses_with_defaults() {
        let spec = CopySpec::parse(&json!({
            "from": {"store": "postgres", "table": "traces", "key": ["id"]},
            "to": {"store": "clickhouse", "table": "traces"}
        }))
        .unwrap();
        assert_eq!(spec.from.columns, None);
    }

    #[test]
    fn columns_without_the_key_and_typos_are_refused() {
        let err = CopySpec::parse(&json!({
            "from": {"store": "postgres", "table": "t", "key": ["id"], "columns": ["name"]},
            "to": {"store": "clickhouse", "table": "t"}
        }))
        .unwrap_err();
        assert!(err.contains("must include the key column \"id\""), "{err}");
        let err = CopySpec::parse(&json!({
            "from": {"store": "postgres", "table": "t", "key": ["id"]},
            "to": {"store": "clickhouse", "tabel": "t"}
        }))
        .unwrap_err();
        assert!(err.contains("unknown field `tabel`"), "{err}");
    }
}
