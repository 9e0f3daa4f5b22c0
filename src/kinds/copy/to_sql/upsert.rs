//! The statements of a copy into a SQL store. Pure: unit-tested without a database.
//!
//! The read: `SELECT <every column as text> FROM <table or (query)> AS bgm_src WHERE (<key>) > (<cursor>) [AND (<where>)]
//! ORDER BY bgm_src.<key> LIMIT <batchSize>`, in the source's dialect (the ORDER BY names the table's columns, so
//! a key read as text still sorts as its own type).
//!
//! The write: one `INSERT ... SELECT ... ON CONFLICT (<key>) DO UPDATE SET <column> = excluded.<column>` per batch,
//! whatever its size, each text value cast back to the target column's type by the target's dialect, so a batch
//! sent twice leaves one row per key. The rows travel in a fixed number of parameters, so the statement is prepared
//! once and the database unpacks the rows in C:
//!
//! * Postgres: one `text[]` per column, `FROM unnest($1::text[], $2::text[], ...) AS bgm_row(c1, c2, ...)`;
//! * SQLite: one JSON text holding an array per row, `FROM json_each(?1) AS bgm_row`, column `i` read as
//!   `bgm_row.value ->> i` (`WHERE true` before `ON CONFLICT` is SQLite's rule for an upsert from a `SELECT`).
//!
//! Why not one multi-row `VALUES` list (the first version): a 20,000-row batch made a statement of 30,000
//! placeholders, parsed and planned afresh for every batch (about a second each, 3,600 rows/s, where SQLite's own
//! `INSERT ... SELECT` moves 437,000); nor a prepared single-row statement per row: each execution is a round trip
//! to the driver's worker, tens of microseconds a row.

use crate::kinds::keyset::Keyset;
use crate::store::{Dialect, SqlParam};

/// The statements for one source (table or query) and one target table.
#[derive(Debug, Clone)]
pub struct UpsertSql {
    target: Dialect,
    select: String,
    keyset: Keyset,
    width: usize,
    upsert: String,
}

/// The target of the copy: its dialect and its table.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// The store's SQL flavour.
    pub dialect: Dialect,
    /// The table, optionally schema-qualified.
    pub table: &'a str,
}

impl UpsertSql {
    /// Reads `columns` from `keyset`'s source and writes them by name; `target_types` are the target's types of
    /// `columns`.
    pub fn new(
        keyset: Keyset,
        to: Side<'_>,
        columns: &[String],
        keys: &[String],
        target_types: &[String],
    ) -> Self {
        let (src, dst) = (keyset.dialect(), to.dialect);
        let select = columns
            .iter()
            .map(|c| src.as_text(&format!("bgm_src.{}", src.quote_ident(c))))
            .collect::<Vec<_>>()
            .join(", ");
        let values: Vec<String> = target_types
            .iter()
            .enumerate()
            .map(|(i, ty)| match dst {
                Dialect::Postgres => dst.cast(&format!("bgm_row.c{}", i + 1), ty),
                Dialect::Sqlite => dst.cast(&format!("(bgm_row.value ->> {i})"), ty),
            })
            .collect();
        let rows = match dst {
            Dialect::Postgres => {
                let arrays: Vec<String> = (1..=target_types.len())
                    .map(|n| format!("${n}::text[]"))
                    .collect();
                let names: Vec<String> =
                    (1..=target_types.len()).map(|n| format!("c{n}")).collect();
                format!(
                    "unnest({}) AS bgm_row({})",
                    arrays.join(", "),
                    names.join(", ")
                )
            }
            Dialect::Sqlite => "json_each(?1) AS bgm_row WHERE true".to_owned(),
        };
        let upsert = format!(
            "{} SELECT {} FROM {rows} {}",
            insert_into(to, columns),
            values.join(", "),
            on_conflict(dst, columns, keys)
        );
        Self {
            target: dst,
            select,
            keyset,
            width: columns.len(),
            upsert,
        }
    }

    /// Reads the next batch as text, within a key range's end if it has one. Params: the cursor (if any), then the
    /// end (if any), one text per key column each, then the row limit.
    pub fn read(&self, has_lower: bool, has_end: bool) -> String {
        self.keyset.read_within(&self.select, has_lower, has_end)
    }

    /// The key walk: the source, its key columns, the check of each row's key.
    pub fn keyset(&self) -> &Keyset {
        &self.keyset
    }

    /// The upsert of a batch, whatever its number of rows. Params: [`UpsertSql::params`].
    pub fn upsert(&self) -> &str {
        &self.upsert
    }

    /// The parameters of [`UpsertSql::upsert`] for `rows` (each the copied columns' values as text, or NULL).
    pub fn params(&self, rows: Vec<Vec<Option<String>>>) -> Vec<SqlParam> {
        match self.target {
            Dialect::Postgres => {
                let mut columns: Vec<Vec<Option<String>>> = (0..self.width)
                    .map(|_| Vec::with_capacity(rows.len()))
                    .collect();
                for row in rows {
                    for (column, value) in columns.iter_mut().zip(row) {
                        column.push(value);
                    }
                }
                columns.into_iter().map(SqlParam::TextArray).collect()
            }
            Dialect::Sqlite => vec![SqlParam::Text(
                serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into()),
            )],
        }
    }
}

/// `INSERT INTO <table> (<columns>)`, in the target's dialect.
pub(super) fn insert_into(to: Side<'_>, columns: &[String]) -> String {
    let quoted: Vec<String> = columns.iter().map(|c| to.dialect.quote_ident(c)).collect();
    format!(
        "INSERT INTO {} ({})",
        to.dialect.quote_ident(to.table),
        quoted.join(", ")
    )
}

/// `ON CONFLICT (<key>) DO UPDATE SET <column> = excluded.<column>, ...` (`DO NOTHING` when every column is in the
/// key): a row sent twice is written once.
pub(super) fn on_conflict(dst: Dialect, columns: &[String], keys: &[String]) -> String {
    let updates: Vec<String> = columns
        .iter()
        .filter(|c| !keys.contains(c))
        .map(|c| format!("{0} = excluded.{0}", dst.quote_ident(c)))
        .collect();
    let conflict_keys: Vec<String> = keys.iter().map(|k| dst.quote_ident(k)).collect();
    let action = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    format!("ON CONFLICT ({}) {action}", conflict_keys.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(from: Dialect, to: Dialect) -> UpsertSql {
        let keys = ["day".to_owned(), "id".to_owned()];
        UpsertSql::new(
            Keyset::aliased(
                from,
                &from.quote_ident("traces"),
                &keys,
                &["timestamp with time zone".into(), "text".into()],
                Some("n > 0"),
            ),
            Side {
                dialect: to,
                table: "traces",
            },
            &["id".into(), "day".into(), "n".into()],
            &keys,
            &[
                "text".into(),
                "timestamp with time zone".into(),
                "bigint".into(),
            ],
        )
    }

    #[test]
    fn the_read_walks_the_key_after_the_cursor_with_every_value_as_text() {
        assert_eq!(
            sql(Dialect::Postgres, Dialect::Postgres).read(true, false),
            "SELECT bgm_src.\"id\"::text, bgm_src.\"day\"::text, bgm_src.\"n\"::text FROM \"traces\" AS bgm_src \
             WHERE (bgm_src.\"day\", bgm_src.\"id\") > ($1::timestamp with time zone, $2::text) AND (n > 0) \
             ORDER BY bgm_src.\"day\", bgm_src.\"id\" LIMIT $3::bigint"
        );
        assert!(sql(Dialect::Sqlite, Dialect::Sqlite).read(false, false).ends_with(
            "WHERE (n > 0) ORDER BY bgm_src.\"day\", bgm_src.\"id\" LIMIT CAST(?1 AS INTEGER)"
        ));
    }

    #[test]
    fn the_postgres_upsert_unnests_one_text_array_per_column_cast_to_the_target_types() {
        let sql = sql(Dialect::Sqlite, Dialect::Postgres);
        assert_eq!(
            sql.upsert(),
            "INSERT INTO \"traces\" (\"id\", \"day\", \"n\") SELECT bgm_row.c1::text, \
             bgm_row.c2::timestamp with time zone, bgm_row.c3::bigint \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS bgm_row(c1, c2, c3) \
             ON CONFLICT (\"day\", \"id\") DO UPDATE SET \"n\" = excluded.\"n\""
        );
        let rows = vec![
            vec![Some("a".into()), Some("2024-01-01".into()), None],
            vec![
                Some("b".into()),
                Some("2024-01-02".into()),
                Some("7".into()),
            ],
        ];
        assert_eq!(
            sql.params(rows),
            [
                SqlParam::TextArray(vec![Some("a".into()), Some("b".into())]),
                SqlParam::TextArray(vec![Some("2024-01-01".into()), Some("2024-01-02".into())]),
                SqlParam::TextArray(vec![None, Some("7".into())]),
            ]
        );
    }

    #[test]
    fn the_sqlite_upsert_reads_one_json_array_per_row() {
        let sql = sql(Dialect::Postgres, Dialect::Sqlite);
        assert_eq!(
            sql.upsert(),
            "INSERT INTO \"traces\" (\"id\", \"day\", \"n\") SELECT (bgm_row.value ->> 0), \
             (bgm_row.value ->> 1), CAST((bgm_row.value ->> 2) AS INTEGER) \
             FROM json_each(?1) AS bgm_row WHERE true \
             ON CONFLICT (\"day\", \"id\") DO UPDATE SET \"n\" = excluded.\"n\""
        );
        let rows = vec![vec![Some("it's \"q\"".into()), None, Some("7".into())]];
        assert_eq!(
            sql.params(rows),
            [SqlParam::Text(r#"[["it's \"q\"",null,"7"]]"#.into())]
        );
    }
}
