//! The parameters of a `copy` definition, checked without touching a database.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::store::Dialect;

/// `kind = "copy"`: copy the rows of a table (or of a query) into a ClickHouse table or a SQL store's table, in
/// keyset order.
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

/// `from = { store, table | query, key, columns, where }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawSource")]
pub struct Source {
    /// A configured SQL store (`postgres`, `sqlite`); Postgres when the target is ClickHouse.
    pub store: String,
    /// What is read: a table or a query (exactly one of `table` and `query`).
    pub relation: Relation,
    /// Columns of a unique key, walked in this order.
    pub key: Vec<String>,
    /// Columns to copy (default: every column of the table or of the query's result); each goes to the target
    /// column of that name.
    pub columns: Option<Vec<String>>,
    /// Optional filter on the table's (or the query's output) columns: only matching rows are copied.
    pub filter: Option<String>,
    /// The walk's order: chosen per table (default), by key, or physical (heap order, closed by a catch-up pass).
    pub order: Order,
}

/// `from.order`: how the source is walked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Physical order for a Postgres table into ClickHouse whose key is scattered over its heap, key order
    /// otherwise; decided when the copy starts and kept by its checkpoint (see `to_clickhouse::order`).
    #[default]
    Auto,
    /// In key order, with the key as the cursor.
    Key,
    /// In heap order, a window of pages per batch, with `ctid` as the cursor: reads each page once; a catch-up pass
    /// after the walk copies the rows written meanwhile. Postgres sources into ClickHouse only.
    Physical,
}

/// The rows a copy walks: a table, or the result of a query. The keyset read puts either in its `FROM` under the
/// alias `bgm_src`.
#[derive(Debug, Clone, PartialEq)]
pub enum Relation {
    /// `table = "..."`: a table, optionally schema-qualified.
    Table(String),
    /// `query = "SELECT ..."`: a query whose result has the key among its columns (no trailing `;`).
    Query(String),
}

impl Relation {
    /// The `FROM` item in `dialect`: the quoted table, or the parenthesised query (on lines of its own, so that a
    /// trailing `--` comment in the query cannot swallow the closing parenthesis).
    pub fn sql(&self, dialect: Dialect) -> String {
        match self {
            Relation::Table(table) => dialect.quote_ident(table),
            Relation::Query(query) => format!("(\n{query}\n)"),
        }
    }
}

impl fmt::Display for Relation {
    /// `table traces` or `the result of from.query`, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Relation::Table(table) => write!(f, "table {table}"),
            Relation::Query(_) => f.write_str("the result of from.query"),
        }
    }
}

/// `from` as written, before `table` and `query` are resolved into a [`Relation`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    store: String,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    query: Option<String>,
    key: Vec<String>,
    #[serde(default)]
    columns: Option<Vec<String>>,
    #[serde(default, rename = "where")]
    filter: Option<String>,
    #[serde(default)]
    order: Order,
}

impl TryFrom<RawSource> for Source {
    type Error = String;

    fn try_from(raw: RawSource) -> Result<Self, String> {
        let relation = match (raw.table, raw.query) {
            (Some(table), None) => Relation::Table(table),
            (None, Some(query)) => {
                let query = query.trim().trim_end_matches(';').trim_end();
                if query.is_empty() {
                    return Err(
                        "from.query is empty; write a SELECT whose result has the key columns"
                            .into(),
                    );
                }
                Relation::Query(query.to_owned())
            }
            (Some(_), Some(_)) => {
                return Err(
                    "from has both table and query; give exactly one (table = \"...\" or query = \"SELECT ...\")"
                        .into(),
                );
            }
            (None, None) => {
                return Err(
                    "from needs a table (table = \"...\") or a query (query = \"SELECT ...\")"
                        .into(),
                );
            }
        };
        Ok(Source {
            store: raw.store,
            relation,
            key: raw.key,
            columns: raw.columns,
            filter: raw.filter,
            order: raw.order,
        })
    }
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
                "copy definition: {e} (allowed: from = {{ store, table | query, key = [columns], columns = [...], \
                 where, order = \"auto\"|\"key\"|\"physical\" }}, to = {{ store, table }}, verify = true|false)"
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
        assert_eq!(spec.from.relation, Relation::Table("traces".into()));
    }

    #[test]
    fn a_query_source_parses_without_its_trailing_semicolon() {
        let spec = CopySpec::parse(&json!({
            "from": {"store": "postgres", "query": " SELECT t.id, lower(t.name) AS name FROM traces t; ",
                     "key": ["id"], "where": "name <> ''"},
            "to": {"store": "clickhouse", "table": "traces"}
        }))
        .unwrap();
        let query = Relation::Query("SELECT t.id, lower(t.name) AS name FROM traces t".into());
        assert_eq!(spec.from.relation, query);
        assert_eq!(
            query.sql(Dialect::Postgres),
            "(\nSELECT t.id, lower(t.name) AS name FROM traces t\n)"
        );
        assert_eq!(spec.from.filter.as_deref(), Some("name <> ''"));
        assert_eq!(query.to_string(), "the result of from.query");
    }

    #[test]
    fn a_source_with_both_or_neither_of_table_and_query_is_refused() {
        let parse = |from: Value| {
            CopySpec::parse(&json!({"from": from, "to": {"store": "clickhouse", "table": "t"}}))
                .unwrap_err()
        };
        let both = parse(
            json!({"store": "postgres", "table": "t", "query": "SELECT 1 AS id", "key": ["id"]}),
        );
        assert!(
            both.contains("from has both table and query; give exactly one"),
            "{both}"
        );
        let neither = parse(json!({"store": "postgres", "key": ["id"]}));
        assert!(
            neither.contains("from needs a table (table = \"...\") or a query"),
            "{neither}"
        );
        let empty = parse(json!({"store": "postgres", "query": " ; ", "key": ["id"]}));
        assert!(empty.contains("from.query is empty"), "{empty}");
        let typo = parse(json!({"store": "postgres", "querry": "SELECT 1 AS id", "key": ["id"]}));
        assert!(typo.contains("unknown field `querry`"), "{typo}");
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
