//! The keyset read both copy writers share: `SELECT <select> FROM <table> AS bgm_src WHERE (<key>) > (<cursor>)
//! [AND (<where>)] ORDER BY bgm_src.<key> LIMIT <batchSize>`, in the source's dialect. Pure.

use crate::store::Dialect;

/// A source table walked in key order.
#[derive(Debug, Clone)]
pub struct Keyset {
    dialect: Dialect,
    table: String,
    keys: Vec<String>,
    key_types: Vec<String>,
    filter: Option<String>,
}

impl Keyset {
    /// `keys` are column names; `key_types` their types in the source (to cast the text cursor back).
    pub fn new(
        dialect: Dialect,
        table: &str,
        keys: &[String],
        key_types: &[String],
        filter: Option<&str>,
    ) -> Self {
        Self {
            dialect,
            table: dialect.quote_ident(table),
            keys: keys
                .iter()
                .map(|k| format!("bgm_src.{}", dialect.quote_ident(k)))
                .collect(),
            key_types: key_types.to_vec(),
            filter: filter.map(|f| format!("({f})")),
        }
    }

    /// The key columns, qualified (`bgm_src."id"`).
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The `where` filter, parenthesised.
    pub fn filter(&self) -> Option<&str> {
        self.filter.as_deref()
    }

    /// The quoted table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// `(<param first>, ...)`: one key bound as text parameters cast to the key's types.
    pub fn bound(&self, first: usize) -> String {
        let params: Vec<String> = self
            .key_types
            .iter()
            .enumerate()
            .map(|(i, ty)| self.dialect.param(first + i, ty))
            .collect();
        format!("({})", params.join(", "))
    }

    /// The read of the next batch. Params: the cursor (if any), one text per key column, then the row limit.
    pub fn read(&self, select: &str, has_lower: bool) -> String {
        let mut conditions = Vec::new();
        let mut next = 1;
        if has_lower {
            conditions.push(format!("({}) > {}", self.keys.join(", "), self.bound(1)));
            next += self.keys.len();
        }
        conditions.extend(self.filter.clone());
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        format!(
            "SELECT {select} FROM {} AS bgm_src{filter} ORDER BY {} LIMIT {}",
            self.table,
            self.keys.join(", "),
            self.dialect.param(next, "bigint")
        )
    }
}
