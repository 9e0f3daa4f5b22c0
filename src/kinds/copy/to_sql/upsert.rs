//! The statements of a copy into a SQL store. Pure: unit-tested without a database.
//!
//! The read: `SELECT <every column as text> FROM <table or (query)> AS bgm_src WHERE (<key>) > (<cursor>) [AND (<where>)]
//! ORDER BY bgm_src.<key> LIMIT <batchSize>`, in the source's dialect (the ORDER BY names the table's columns, so
//! a key read as text still sorts as its own type). The write: one multi-row `INSERT ... ON CONFLICT (<key>) DO
//! UPDATE SET <column> = excluded.<column>` per chunk of rows, each text value cast back to the target column's
//! type by the target's dialect, so a batch sent twice leaves one row per key.

use crate::kinds::keyset::Keyset;
use crate::store::Dialect;

/// Bound parameters per INSERT statement: under SQLite's 32766 and Postgres's 65535.
const MAX_PARAMS: usize = 30_000;

/// The statements for one source (table or query) and one target table.
#[derive(Debug, Clone)]
pub struct UpsertSql {
    target: Dialect,
    select: String,
    keyset: Keyset,
    insert_head: String,
    target_types: Vec<String>,
    on_conflict: String,
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
        let quoted: Vec<String> = columns.iter().map(|c| dst.quote_ident(c)).collect();
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
        Self {
            target: dst,
            select,
            keyset,
            insert_head: format!(
                "INSERT INTO {} ({}) VALUES ",
                dst.quote_ident(to.table),
                quoted.join(", ")
            ),
            target_types: target_types.to_vec(),
            on_conflict: format!(" ON CONFLICT ({}) {action}", conflict_keys.join(", ")),
        }
    }

    /// Reads the next batch as text. Params: the cursor (if any), one text per key column, then the row limit.
    pub fn read(&self, has_lower: bool) -> String {
        self.keyset.read(&self.select, has_lower)
    }

    /// The key walk: the source, its key columns, the check of each row's key.
    pub fn keyset(&self) -> &Keyset {
        &self.keyset
    }

    /// Rows per INSERT statement, so that its parameters stay under both stores' limits.
    pub fn rows_per_insert(&self) -> usize {
        (MAX_PARAMS / self.target_types.len().max(1)).max(1)
    }

    /// The upsert of `rows` rows. Params: each row's values as text (or NULL), row after row.
    pub fn upsert(&self, rows: usize) -> String {
        let width = self.target_types.len();
        let tuples: Vec<String> = (0..rows)
            .map(|row| {
                let values: Vec<String> = self
                    .target_types
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| self.target.param(row * width + i + 1, ty))
                    .collect();
                format!("({})", values.join(", "))
            })
            .collect();
        format!(
            "{}{}{}",
            self.insert_head,
            tuples.join(", "),
            self.on_conflict
        )
    }
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
            sql(Dialect::Postgres, Dialect::Postgres).read(true),
            "SELECT bgm_src.\"id\"::text, bgm_src.\"day\"::text, bgm_src.\"n\"::text FROM \"traces\" AS bgm_src \
             WHERE (bgm_src.\"day\", bgm_src.\"id\") > ($1::timestamp with time zone, $2::text) AND (n > 0) \
             ORDER BY bgm_src.\"day\", bgm_src.\"id\" LIMIT $3::bigint"
        );
        assert!(sql(Dialect::Sqlite, Dialect::Sqlite).read(false).ends_with(
            "WHERE (n > 0) ORDER BY bgm_src.\"day\", bgm_src.\"id\" LIMIT CAST(?1 AS INTEGER)"
        ));
    }

    #[test]
    fn the_upsert_casts_to_the_target_types_and_updates_the_other_columns() {
        assert_eq!(
            sql(Dialect::Sqlite, Dialect::Postgres).upsert(2),
            "INSERT INTO \"traces\" (\"id\", \"day\", \"n\") VALUES ($1::text, $2::timestamp with time zone, \
             $3::bigint), ($4::text, $5::timestamp with time zone, $6::bigint) ON CONFLICT (\"day\", \"id\") DO \
             UPDATE SET \"n\" = excluded.\"n\""
        );
        assert_eq!(
            sql(Dialect::Sqlite, Dialect::Sqlite).rows_per_insert(),
            10_000
        );
    }
}
