//! The one keyset walk every key-ordered kind builds its statements on (`backfill`, `copy` into ClickHouse or a SQL
//! store): the key columns and their types, the bounds `(key) > cursor` and `(key) <= upper`, the key of the row
//! `n` rows after the cursor, the read of the next batch, and the check that the rows read have a non-NULL key that
//! strictly increases. In either SQL dialect; the statements are pure, unit-tested without a database (and once
//! against SQLite). Beside them, the checks a keyset walk needs before it starts: [`key_types`] (the key exists,
//! NOT NULL in a table) and [`check_unique_key`].
//!
//! Cursors travel as text (they are stored in the JSON checkpoint) and are cast back to the key's types by
//! [`Dialect::param`], so an integer key sorts as an integer, not as text. Never `OFFSET` over the rows done: the
//! only `OFFSET` is inside one batch, after the cursor, on the key's index.

use serde_json::Value;

use super::checkpoint::{KeyPosition, range_end};
use crate::migration::MigrationError;
use crate::store::{ColumnInfo, Dialect, SqlParam, SqlStore};

/// The alias a copy gives its source (a table or a parenthesised query) in `FROM`.
const SOURCE_ALIAS: &str = "bgm_src";

/// A table (or query) walked in key order.
#[derive(Debug, Clone)]
pub struct Keyset {
    dialect: Dialect,
    /// The `FROM` item: `"table"`, or `<table or (query)> AS bgm_src`.
    from: String,
    /// The key columns' names, for messages.
    key_names: Vec<String>,
    /// The key columns, quoted (and qualified by the alias, if any).
    keys: Vec<String>,
    /// The key columns' types in the source, to cast the text cursor back.
    key_types: Vec<String>,
    /// The definition's `where` filter, parenthesised.
    filter: Option<String>,
}

impl Keyset {
    /// A table walked under its own name (a backfill's `UPDATE` names the table, so its keys are unqualified).
    /// `key_types` are the key columns' types in the table.
    pub fn table(
        dialect: Dialect,
        table: &str,
        keys: &[String],
        key_types: &[String],
        filter: Option<&str>,
    ) -> Self {
        let quoted = keys.iter().map(|k| dialect.quote_ident(k)).collect();
        Self::build(
            dialect,
            dialect.quote_ident(table),
            keys,
            quoted,
            key_types,
            filter,
        )
    }

    /// A `FROM` item (a quoted table or a parenthesised query, see `copy`'s `Relation::sql`) walked under the
    /// alias `bgm_src`, its keys qualified by it: a query's output columns are only reachable that way.
    pub fn aliased(
        dialect: Dialect,
        from_item: &str,
        keys: &[String],
        key_types: &[String],
        filter: Option<&str>,
    ) -> Self {
        let qualified = keys
            .iter()
            .map(|k| format!("{SOURCE_ALIAS}.{}", dialect.quote_ident(k)))
            .collect();
        let from = format!("{from_item} AS {SOURCE_ALIAS}");
        Self::build(dialect, from, keys, qualified, key_types, filter)
    }

    fn build(
        dialect: Dialect,
        from: String,
        key_names: &[String],
        keys: Vec<String>,
        key_types: &[String],
        filter: Option<&str>,
    ) -> Self {
        Self {
            dialect,
            from,
            key_names: key_names.to_vec(),
            keys,
            key_types: key_types.to_vec(),
            filter: filter.map(|f| format!("({f})")),
        }
    }

    /// The key columns, quoted (`"id"`, or `bgm_src."id"` when aliased).
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Number of key columns, and so of parameters per bound.
    pub fn arity(&self) -> usize {
        self.keys.len()
    }

    /// The source's dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
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

    /// `(<text 0>::<key type 0>, ...)`: one key read back from text expressions, one per key column.
    pub fn typed(&self, texts: &[String]) -> String {
        let typed: Vec<String> = texts
            .iter()
            .zip(&self.key_types)
            .map(|(text, ty)| self.dialect.cast(text, ty))
            .collect();
        format!("({})", typed.join(", "))
    }

    /// `(key) > cursor` and/or `(key) <= upper`, bound from parameter 1 on; returns them and the next parameter.
    pub fn key_bounds(&self, has_lower: bool, has_upper: bool) -> (Vec<String>, usize) {
        let keys = self.keys.join(", ");
        let mut bounds = Vec::new();
        let mut next = 1;
        for (wanted, op) in [(has_lower, ">"), (has_upper, "<=")] {
            if wanted {
                bounds.push(format!("({keys}) {op} {}", self.bound(next)));
                next += self.keys.len();
            }
        }
        (bounds, next)
    }

    /// The read of the next batch in key order. Params: the cursor (if any), one text per key column, then the
    /// row limit.
    pub fn read(&self, select: &str, has_lower: bool) -> String {
        self.read_within(select, has_lower, false)
    }

    /// The same within a key range that ends at an upper key, inclusive. Params: the cursor (if any), the upper
    /// key (if any), then the row limit.
    pub fn read_within(&self, select: &str, has_lower: bool, has_upper: bool) -> String {
        let (bounds, next) = self.key_bounds(has_lower, has_upper);
        let tail = format!(
            " ORDER BY {} LIMIT {}",
            self.keys.join(", "),
            self.dialect.param(next, "bigint")
        );
        self.select(select, &self.filtered(bounds), &tail)
    }

    /// The rows after the cursor up to an upper key, inclusive, in no particular order (Postgres may read them in
    /// heap order). Params: the cursor (if any), the upper key, then the row limit.
    pub fn read_range(&self, select: &str, has_lower: bool) -> String {
        let (bounds, next) = self.key_bounds(has_lower, true);
        let tail = format!(" LIMIT {}", self.dialect.param(next, "bigint"));
        self.select(select, &self.filtered(bounds), &tail)
    }

    /// The key `n` rows after the cursor (the filter ignored: every key bounds a range), one text per key column.
    /// Params: the cursor (if any), then `n - 1`.
    pub fn key_after(&self, has_lower: bool) -> String {
        self.key_after_within(has_lower, false)
    }

    /// The same within a key range that ends at an upper key, inclusive (none past it). Params: the cursor (if
    /// any), the upper key (if any), then `n - 1`.
    pub fn key_after_within(&self, has_lower: bool, has_upper: bool) -> String {
        let (bounds, next) = self.key_bounds(has_lower, has_upper);
        // Aliased: an output column named like the key would make an unqualified `ORDER BY key` sort the text.
        let texts: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} AS cursor_{i}", self.dialect.as_text(k)))
            .collect();
        let tail = format!(
            // LIMIT before OFFSET: the order both Postgres and SQLite accept (SQLite rejects `OFFSET n LIMIT 1`).
            " ORDER BY {} LIMIT 1 OFFSET {}",
            self.keys.join(", "),
            self.dialect.param(next, "bigint")
        );
        self.select(&texts.join(", "), &bounds, &tail)
    }

    /// `conditions` and the definition's `where` filter.
    pub fn filtered(&self, mut conditions: Vec<String>) -> Vec<String> {
        conditions.extend(self.filter.clone());
        conditions
    }

    /// ` WHERE <conditions, joined by AND>`, or nothing.
    pub fn where_clause(conditions: &[String]) -> String {
        if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        }
    }

    /// `SELECT <select> FROM <source>[ WHERE <conditions, joined by AND>]<tail>`.
    pub fn select(&self, select: &str, conditions: &[String], tail: &str) -> String {
        format!(
            "SELECT {select} FROM {}{}{tail}",
            self.from,
            Self::where_clause(conditions)
        )
    }

    /// The key of a row just read (as text, `None` for NULL), checked against the previous row's key: it must have
    /// no NULL and differ from the previous key (rows arrive in key order, so a duplicate arrives right after its
    /// twin). A table's unique NOT NULL key always passes; a query's result is only known to comply when read.
    pub fn next_key(
        &self,
        previous: Option<&[String]>,
        key: Vec<Option<String>>,
    ) -> Result<Vec<String>, MigrationError> {
        let after = || {
            previous
                .map(|p| format!(" (after the key ({}))", p.join(", ")))
                .unwrap_or_default()
        };
        let key = key
            .into_iter()
            .zip(&self.key_names)
            .map(|(value, name)| {
                value.ok_or_else(|| {
                    MigrationError::Permanent(format!(
                        "the source has a row whose key column {name} is NULL{}; the copy needs a NOT NULL \
                         key: filter such rows out (where = \"{name} IS NOT NULL\") or choose another key",
                        after()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if previous == Some(key.as_slice()) {
            return Err(MigrationError::Permanent(format!(
                "the source has two rows with the key ({}) = ({}); the copy needs a key unique in the source (for \
                 from.query: in the query's result)",
                self.key_names.join(", "),
                key.join(", ")
            )));
        }
        Ok(key)
    }
}

/// Keys that cut the walk after `lower` up to `upper` (inclusive; `None`: the end), about `rows` rows (counted
/// when unknown), into at most `parts` ranges of about equal rows: each `rows / parts` rows after the previous, found
/// on the key's index with one `OFFSET` walk over its own share. Fewer when fewer rows are left. For
/// `parallelism` > 1 and work stealing; each kind turns the keys into its checkpoints.
async fn split_keys(
    store: &dyn SqlStore,
    keyset: &Keyset,
    lower: Option<Vec<String>>,
    upper: Option<&[String]>,
    parts: u64,
    rows: Option<u64>,
) -> Result<Vec<Vec<String>>, MigrationError> {
    let texts = |keys: Option<&[String]>| -> Vec<SqlParam> {
        keys.unwrap_or_default()
            .iter()
            .cloned()
            .map(SqlParam::Text)
            .collect()
    };
    let mut tx = store.begin_read().await?;
    let rows = match rows.filter(|r| *r > 0) {
        Some(rows) => rows,
        None => {
            let (bounds, _) = keyset.key_bounds(lower.is_some(), upper.is_some());
            let mut params = texts(lower.as_deref());
            params.extend(texts(upper));
            let count = keyset.select("count(*)", &bounds, "");
            tx.fetch_count(&count, &params).await?.max(0) as u64
        }
    };
    let step = rows / parts.max(1);
    let mut lower = lower;
    let mut cuts = Vec::new();
    while step > 0 && (cuts.len() as u64) + 1 < parts {
        let mut params = texts(lower.as_deref());
        params.extend(texts(upper));
        params.push(SqlParam::count(step - 1));
        let sql = keyset.key_after_within(lower.is_some(), upper.is_some());
        let Some(key) = tx.fetch_optional_text(&sql, &params).await? else {
            break;
        };
        cuts.push(key.clone());
        lower = Some(key);
    }
    tx.commit().await?;
    Ok(cuts)
}

/// [`Migration::split`](crate::migration::Migration::split) for a key walk whose checkpoint is `C`: the keys of
/// [`split_keys`] between checkpoints `from` and `upper`, as the checkpoints at which the later ranges start.
pub async fn split_states<C: KeyPosition>(
    store: &dyn SqlStore,
    keyset: &Keyset,
    (from, upper): (&Value, Option<&Value>),
    parts: u64,
    rows: Option<u64>,
) -> Result<Vec<Value>, MigrationError> {
    let arity = keyset.arity();
    let start = C::read(from)?;
    let lower = start.cursor().keys(arity, from)?.map(<[String]>::to_vec);
    let end = range_end::<C>(upper, arity)?;
    let cuts = split_keys(store, keyset, lower, end.as_deref(), parts, rows).await?;
    Ok(cuts
        .into_iter()
        .map(|key| C::after_key(key).to_state())
        .collect())
}

/// The key columns' types, found among the source's `columns`: each key column must be one of them and, in a
/// table, NOT NULL (a query's result is checked row by row, see [`Keyset::next_key`]). `source` names the source in
/// messages (`t`, `the result of from.query`); `table` is the table, if the source is one.
pub fn key_types(
    columns: &[ColumnInfo],
    keys: &[String],
    source: &dyn std::fmt::Display,
    table: Option<&str>,
) -> Result<Vec<String>, MigrationError> {
    let invalid = MigrationError::Invalid;
    keys.iter()
        .map(|key| {
            let info = columns.iter().find(|c| &c.name == key).ok_or_else(|| {
                let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                invalid(format!(
                    "key column {key} does not exist in {source} (its columns: {})",
                    names.join(", ")
                ))
            })?;
            match table {
                Some(table) if info.nullable => Err(invalid(format!(
                    "key column {key} of {table} is nullable; a keyset walk needs NOT NULL key columns"
                ))),
                _ => Ok(info.type_name.clone()),
            }
        })
        .collect()
}

/// Checks that a unique index or primary key of `table` covers exactly `keys`: a walk over a key that repeats
/// would skip the repeats at a batch's edge.
pub async fn check_unique_key(
    store: &dyn SqlStore,
    table: &str,
    keys: &[String],
) -> Result<(), MigrationError> {
    if store.has_unique_index(table, keys).await? {
        return Ok(());
    }
    Err(MigrationError::Invalid(format!(
        "no unique index or primary key on exactly ({}) of {table}; the keyset walk needs a unique key (add the \
         index, or name the columns of an existing unique index)",
        keys.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyset() -> Keyset {
        Keyset::aliased(
            Dialect::Postgres,
            "(\nSELECT t.id, t.n FROM t\n)",
            &["id".into()],
            &["bigint".into()],
            None,
        )
    }

    #[test]
    fn a_query_source_is_read_as_a_subquery_in_key_order() {
        assert_eq!(
            keyset().read("bgm_src.\"n\"", true),
            "SELECT bgm_src.\"n\" FROM (\nSELECT t.id, t.n FROM t\n) AS bgm_src WHERE (bgm_src.\"id\") > \
             ($1::bigint) ORDER BY bgm_src.\"id\" LIMIT $2::bigint"
        );
    }

    #[test]
    fn a_key_range_is_read_in_any_order_and_its_end_comes_from_the_key_alone() {
        assert_eq!(
            keyset().read_range("x", true),
            "SELECT x FROM (\nSELECT t.id, t.n FROM t\n) AS bgm_src WHERE (bgm_src.\"id\") > ($1::bigint) AND \
             (bgm_src.\"id\") <= ($2::bigint) LIMIT $3::bigint"
        );
        // Was `... ORDER BY bgm_src."id" OFFSET $1::bigint LIMIT 1`, which SQLite rejects.
        assert_eq!(
            keyset().key_after(false),
            "SELECT bgm_src.\"id\"::text AS cursor_0 FROM (\nSELECT t.id, t.n FROM t\n) AS bgm_src ORDER BY \
             bgm_src.\"id\" LIMIT 1 OFFSET $1::bigint"
        );
    }

    #[test]
    fn a_null_or_repeated_key_is_refused_naming_the_key() {
        let keyset = keyset();
        let first = keyset.next_key(None, vec![Some("7".into())]).unwrap();
        assert_eq!(first, vec!["7".to_owned()]);
        assert!(
            keyset
                .next_key(Some(&first), vec![Some("8".into())])
                .is_ok()
        );
        let twice = keyset
            .next_key(Some(&first), vec![Some("7".into())])
            .unwrap_err()
            .to_string();
        assert!(
            twice.contains("two rows with the key (id) = (7)"),
            "{twice}"
        );
        let null = keyset
            .next_key(Some(&first), vec![None])
            .unwrap_err()
            .to_string();
        assert!(
            null.contains(
                "key column id is NULL (after the key (7)); the copy needs a NOT NULL key"
            ),
            "{null}"
        );
        let first_null = keyset.next_key(None, vec![None]).unwrap_err().to_string();
        assert!(
            first_null.contains("key column id is NULL; the copy needs"),
            "{first_null}"
        );
    }

    /// The statement that finds a batch's last key runs on SQLite too (it once put `OFFSET` before `LIMIT`, which
    /// SQLite refuses), and orders an integer key as an integer.
    #[tokio::test]
    async fn the_key_n_rows_after_the_cursor_is_found_on_sqlite() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        sqlx::query(
            "CREATE TABLE t (tenant INTEGER NOT NULL, id TEXT NOT NULL, PRIMARY KEY (tenant, id))",
        )
        .execute(&pool)
        .await
        .unwrap();
        for tenant in [1, 2, 9, 10] {
            sqlx::query("INSERT INTO t VALUES (?1, 'a'), (?1, 'b')")
                .bind(tenant)
                .execute(&pool)
                .await
                .unwrap();
        }
        let keys = ["tenant".to_owned(), "id".to_owned()];
        let types = ["INTEGER".to_owned(), "TEXT".to_owned()];
        for keyset in [
            Keyset::aliased(Dialect::Sqlite, "\"t\"", &keys, &types, None),
            Keyset::table(Dialect::Sqlite, "t", &keys, &types, None),
        ] {
            let sql = keyset.key_after(true);
            let found: (String, String) = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind("2")
                .bind("a")
                .bind(3i64)
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|err| panic!("{sql}: {err}"));
            assert_eq!(found, ("10".to_owned(), "a".to_owned()), "{sql}");
        }
    }
}
