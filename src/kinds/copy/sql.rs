//! The keyset read of a copy batch. Pure: unit-tested without a database.
//!
//! `SELECT <columns>, <key>::text ... FROM <table> AS bgm_src WHERE (<key>) > (<cursor>) [AND (<where>)]
//! ORDER BY bgm_src.<key> LIMIT <batchSize>`, streamed. Output columns are aliased and the ORDER BY names the
//! table's columns, so a key read as text still sorts as its own type.

use crate::store::Dialect;

/// The read statements for one source table.
#[derive(Debug, Clone)]
pub struct CopySql {
    select: String,
    table: String,
    keys: Vec<String>,
    key_types: Vec<String>,
    filter: Option<String>,
}

const DIALECT: Dialect = Dialect::Postgres;

impl CopySql {
    /// `selects` are the columns' select expressions; the key columns' cursors are appended after them.
    pub fn new(
        table: &str,
        selects: &[String],
        keys: &[String],
        key_types: &[String],
        filter: Option<&str>,
    ) -> Self {
        let keys: Vec<String> = keys
            .iter()
            .map(|k| format!("bgm_src.{}", DIALECT.quote_ident(k)))
            .collect();
        let columns = selects
            .iter()
            .enumerate()
            .map(|(i, expr)| format!("{expr} AS bgm_c{i}"))
            .chain(
                keys.iter()
                    .enumerate()
                    .map(|(i, k)| format!("{} AS bgm_cursor_{i}", DIALECT.as_text(k))),
            )
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            select: columns,
            table: DIALECT.quote_ident(table),
            keys,
            key_types: key_types.to_vec(),
            filter: filter.map(|f| format!("({f})")),
        }
    }

    /// Reads the next batch. Params: the cursor (if any), one text per key column, then the row limit.
    pub fn read(&self, has_lower: bool) -> String {
        let mut conditions = Vec::new();
        let mut next_param = 1;
        if has_lower {
            let bounds: Vec<String> = self
                .key_types
                .iter()
                .enumerate()
                .map(|(i, ty)| DIALECT.param(i + 1, ty))
                .collect();
            conditions.push(format!(
                "({}) > ({})",
                self.keys.join(", "),
                bounds.join(", ")
            ));
            next_param += self.keys.len();
        }
        conditions.extend(self.filter.clone());
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        format!(
            "SELECT {} FROM {} AS bgm_src{filter} ORDER BY {} LIMIT {}",
            self.select,
            self.table,
            self.keys.join(", "),
            DIALECT.param(next_param, "bigint")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_walks_the_key_after_the_cursor_and_keeps_the_filter() {
        let sql = CopySql::new(
            "public.traces",
            &["\"id\"".into(), "\"input\"::text".into()],
            &["created_at".into(), "id".into()],
            &["timestamp with time zone".into(), "text".into()],
            Some("project_id = 'p'"),
        );
        assert_eq!(
            sql.read(true),
            "SELECT \"id\" AS bgm_c0, \"input\"::text AS bgm_c1, bgm_src.\"created_at\"::text AS bgm_cursor_0, \
             bgm_src.\"id\"::text AS bgm_cursor_1 FROM \"public\".\"traces\" AS bgm_src \
             WHERE (bgm_src.\"created_at\", bgm_src.\"id\") > ($1::timestamp with time zone, $2::text) \
             AND (project_id = 'p') ORDER BY bgm_src.\"created_at\", bgm_src.\"id\" LIMIT $3::bigint"
        );
        assert!(sql.read(false).ends_with("AS bgm_src WHERE (project_id = 'p') ORDER BY bgm_src.\"created_at\", bgm_src.\"id\" LIMIT $1::bigint"));
    }
}
