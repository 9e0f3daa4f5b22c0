//! The statements of a keyset backfill, generated for a dialect. Pure: unit-tested without a database.
//!
//! Each batch is an index range: read the batch's last key first (`... ORDER BY key LIMIT 1 OFFSET n-1`), then
//! `UPDATE ... WHERE key > $lo AND key <= $hi`. The CTE-join form (`WITH batch AS (SELECT ... LIMIT n) UPDATE ...
//! FROM batch`) switches to a hash join over a sequential scan around 10k rows per batch and runs several times
//! slower, so it is not used.

use crate::store::Dialect;

/// The statements for one table, key and `set`.
#[derive(Debug, Clone)]
pub struct BackfillSql {
    dialect: Dialect,
    table: String,
    keys: Vec<String>,
    key_types: Vec<String>,
    set: String,
    filter: Option<String>,
}

impl BackfillSql {
    /// `key_types` are the key columns' type names (for casting text cursors back).
    pub fn new(
        dialect: Dialect,
        table: &str,
        keys: &[String],
        key_types: &[String],
        set: &[(String, String)],
        filter: Option<&str>,
    ) -> Self {
        let set = set
            .iter()
            .map(|(column, expr)| format!("{} = ({expr})", dialect.quote_ident(column)))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            dialect,
            table: dialect.quote_ident(table),
            keys: keys.iter().map(|k| dialect.quote_ident(k)).collect(),
            key_types: key_types.to_vec(),
            set,
            filter: filter.map(|f| format!("({f})")),
        }
    }

    /// Number of key columns (and so of parameters per bound).
    pub fn arity(&self) -> usize {
        self.keys.len()
    }

    fn key_tuple(&self) -> String {
        format!("({})", self.keys.join(", "))
    }

    /// `($first::t1, $first+1::t2, ...)`.
    fn bound_tuple(&self, first: usize) -> String {
        let params: Vec<String> = self
            .key_types
            .iter()
            .enumerate()
            .map(|(i, ty)| self.dialect.param(first + i, ty))
            .collect();
        format!("({})", params.join(", "))
    }

    fn after_lower(&self, has_lower: bool) -> Option<String> {
        has_lower.then(|| format!("{} > {}", self.key_tuple(), self.bound_tuple(1)))
    }

    /// Selects the key of the batch's last row. Params: lower bound (if any), then the offset (`batchSize - 1`).
    pub fn upper_bound(&self, has_lower: bool) -> String {
        // Aliased: an output column named like the key would make `ORDER BY key` sort the text, not the key.
        let columns: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} AS cursor_{i}", self.dialect.as_text(k)))
            .collect();
        let offset = self
            .dialect
            .param(if has_lower { self.arity() + 1 } else { 1 }, "bigint");
        let filter = self
            .after_lower(has_lower)
            .map(|c| format!(" WHERE {c}"))
            .unwrap_or_default();
        format!(
            // LIMIT before OFFSET: the order both Postgres and SQLite accept.
            "SELECT {} FROM {}{filter} ORDER BY {} LIMIT 1 OFFSET {offset}",
            columns.join(", "),
            self.table,
            self.keys.join(", ")
        )
    }

    /// Updates the rows in (lower, upper]. Params: lower bound (if any), then upper bound.
    pub fn update_range(&self, has_lower: bool) -> String {
        let upper_first = if has_lower { self.arity() + 1 } else { 1 };
        let mut conditions: Vec<String> = self.after_lower(has_lower).into_iter().collect();
        conditions.push(format!(
            "{} <= {}",
            self.key_tuple(),
            self.bound_tuple(upper_first)
        ));
        self.update_where(conditions)
    }

    /// Updates every row after the lower bound (the last batch). Params: lower bound (if any).
    pub fn update_tail(&self, has_lower: bool) -> String {
        self.update_where(self.after_lower(has_lower).into_iter().collect())
    }

    /// Counts the rows after the lower bound (fewer than a batch, by construction). Params: lower bound (if any).
    pub fn count_tail(&self, has_lower: bool) -> String {
        let filter = self
            .after_lower(has_lower)
            .map(|c| format!(" WHERE {c}"))
            .unwrap_or_default();
        format!("SELECT count(*) FROM {}{filter}", self.table)
    }

    /// An UPDATE that touches nothing but makes the server check every column and expression (for `validate`).
    pub fn dry_run(&self) -> String {
        format!("EXPLAIN {}", self.update_where(vec!["false".to_owned()]))
    }

    fn update_where(&self, mut conditions: Vec<String>) -> String {
        conditions.extend(self.filter.clone());
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        format!("UPDATE {} SET {}{filter}", self.table, self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn composite() -> BackfillSql {
        BackfillSql::new(
            Dialect::Postgres,
            "public.events",
            &["created_at".into(), "id".into()],
            &["timestamp with time zone".into(), "text".into()],
            &[("total".into(), "a + b".into())],
            Some("kind = 'x'"),
        )
    }

    #[test]
    fn the_upper_bound_is_an_offset_into_the_key_order_after_the_cursor() {
        assert_eq!(
            composite().upper_bound(true),
            "SELECT \"created_at\"::text AS cursor_0, \"id\"::text AS cursor_1 FROM \"public\".\"events\" \
             WHERE (\"created_at\", \"id\") > ($1::timestamp with time zone, $2::text) \
             ORDER BY \"created_at\", \"id\" LIMIT 1 OFFSET $3::bigint"
        );
        assert!(
            composite()
                .upper_bound(false)
                .ends_with("ORDER BY \"created_at\", \"id\" LIMIT 1 OFFSET $1::bigint")
        );
    }

    #[test]
    fn a_range_update_is_bounded_on_both_sides_and_keeps_the_filter() {
        assert_eq!(
            composite().update_range(true),
            "UPDATE \"public\".\"events\" SET \"total\" = (a + b) \
             WHERE (\"created_at\", \"id\") > ($1::timestamp with time zone, $2::text) \
             AND (\"created_at\", \"id\") <= ($3::timestamp with time zone, $4::text) AND (kind = 'x')"
        );
        assert_eq!(
            composite().update_range(false),
            "UPDATE \"public\".\"events\" SET \"total\" = (a + b) \
             WHERE (\"created_at\", \"id\") <= ($1::timestamp with time zone, $2::text) AND (kind = 'x')"
        );
    }

    #[test]
    fn the_tail_update_has_only_a_lower_bound() {
        assert_eq!(
            composite().update_tail(false),
            "UPDATE \"public\".\"events\" SET \"total\" = (a + b) WHERE (kind = 'x')"
        );
        assert_eq!(
            composite().count_tail(false),
            "SELECT count(*) FROM \"public\".\"events\""
        );
    }

    #[test]
    fn the_upper_bound_orders_by_the_key_not_by_its_text() {
        let sql = BackfillSql::new(
            Dialect::Postgres,
            "t",
            &["id".into()],
            &["bigint".into()],
            &[("c".into(), "1".into())],
            None,
        );
        assert_eq!(
            sql.upper_bound(false),
            "SELECT \"id\"::text AS cursor_0 FROM \"t\" ORDER BY \"id\" LIMIT 1 OFFSET $1::bigint"
        );
    }

    #[test]
    fn identifiers_are_quoted_so_odd_names_stay_names() {
        let sql = BackfillSql::new(
            Dialect::Postgres,
            "we\"ird",
            &["id".into()],
            &["int".into()],
            &[("c".into(), "1".into())],
            None,
        );
        assert!(sql.update_tail(false).starts_with("UPDATE \"we\"\"ird\""));
    }

    #[test]
    fn sqlite_casts_text_cursors_back_to_integers_by_affinity() {
        let sql = BackfillSql::new(
            Dialect::Sqlite,
            "scores",
            &["tenant".into(), "id".into()],
            &["BIGINT".into(), "TEXT".into()],
            &[("doubled".into(), "v * 2".into())],
            None,
        );
        assert_eq!(
            sql.upper_bound(true),
            "SELECT CAST(\"tenant\" AS TEXT) AS cursor_0, CAST(\"id\" AS TEXT) AS cursor_1 FROM \"scores\" \
             WHERE (\"tenant\", \"id\") > (CAST(?1 AS INTEGER), ?2) \
             ORDER BY \"tenant\", \"id\" LIMIT 1 OFFSET CAST(?3 AS INTEGER)"
        );
        assert_eq!(
            sql.update_range(false),
            "UPDATE \"scores\" SET \"doubled\" = (v * 2) WHERE (\"tenant\", \"id\") <= (CAST(?1 AS INTEGER), ?2)"
        );
    }
}
