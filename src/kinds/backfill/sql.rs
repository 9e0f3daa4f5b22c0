//! The statements of a keyset backfill, generated for a dialect on the shared [`Keyset`]. Pure: unit-tested without
//! a database.
//!
//! Each batch is an index range: read the batch's last key first (`... ORDER BY key LIMIT 1 OFFSET n-1`), then
//! `UPDATE ... WHERE key > $lo AND key <= $hi`. The CTE-join form (`WITH batch AS (SELECT ... LIMIT n) UPDATE ...
//! FROM batch`) switches to a hash join over a sequential scan around 10k rows per batch and runs several times
//! slower, so it is not used.
//!
//! The heap-order walk's statements (`order = "physical"`) are in [`key_list`].

mod key_list;

use crate::kinds::keyset::Keyset;
use crate::store::Dialect;

/// The statements for one table, key and `set`.
#[derive(Debug, Clone)]
pub struct BackfillSql {
    keyset: Keyset,
    table: String,
    set: String,
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
            keyset: Keyset::table(dialect, table, keys, key_types, filter),
            table: dialect.quote_ident(table),
            set,
        }
    }

    /// The keyset walk the statements are built on.
    pub fn keyset(&self) -> &Keyset {
        &self.keyset
    }

    /// Number of key columns (and so of parameters per bound).
    pub fn arity(&self) -> usize {
        self.keyset.arity()
    }

    /// Selects the key of the batch's last row, within the key range's end if it has one. Params: lower bound (if
    /// any), the range's end (if any), then the offset (`batchSize - 1`).
    pub fn upper_bound(&self, has_lower: bool, has_end: bool) -> String {
        self.keyset.key_after_within(has_lower, has_end)
    }

    /// Updates the rows in (lower, upper]. Params: lower bound (if any), then upper bound.
    pub fn update_range(&self, has_lower: bool) -> String {
        self.update_where(self.keyset.key_bounds(has_lower, true).0)
    }

    /// Updates every row after the lower bound, up to the key range's end if it has one (the last batch). Params:
    /// lower bound (if any), then the range's end (if any).
    pub fn update_tail(&self, has_lower: bool, has_end: bool) -> String {
        self.update_where(self.keyset.key_bounds(has_lower, has_end).0)
    }

    /// Counts the rows after the lower bound up to the range's end (the last batch's, fewer than a batch by
    /// construction; or a range's, to split it), the filter aside: progress counts the rows walked. Params: lower
    /// bound (if any), then the range's end (if any).
    pub fn count_tail(&self, has_lower: bool, has_end: bool) -> String {
        let (bounds, _) = self.keyset.key_bounds(has_lower, has_end);
        self.keyset.select("count(*)", &bounds, "")
    }

    /// An UPDATE that touches nothing but makes the server check every column and expression (for `validate`).
    pub fn dry_run(&self) -> String {
        format!("EXPLAIN {}", self.update_where(vec!["false".to_owned()]))
    }

    fn update_where(&self, conditions: Vec<String>) -> String {
        let conditions = self.keyset.filtered(conditions);
        format!(
            "UPDATE {} SET {}{}",
            self.table,
            self.set,
            Keyset::where_clause(&conditions)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A composite key, a filter and a schema-qualified table: the fixture of this file's and [`key_list`]'s tests.
    pub(super) fn composite() -> BackfillSql {
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
            composite().upper_bound(true, false),
            "SELECT \"created_at\"::text AS cursor_0, \"id\"::text AS cursor_1 FROM \"public\".\"events\" \
             WHERE (\"created_at\", \"id\") > ($1::timestamp with time zone, $2::text) \
             ORDER BY \"created_at\", \"id\" LIMIT 1 OFFSET $3::bigint"
        );
        assert!(
            composite()
                .upper_bound(false, false)
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

    /// In a key range (parallelism), the batch's last key and the last batch stop at the range's end.
    #[test]
    fn in_a_key_range_the_last_key_and_the_tail_stop_at_the_ranges_end() {
        assert_eq!(
            composite().upper_bound(true, true),
            "SELECT \"created_at\"::text AS cursor_0, \"id\"::text AS cursor_1 FROM \"public\".\"events\" \
             WHERE (\"created_at\", \"id\") > ($1::timestamp with time zone, $2::text) \
             AND (\"created_at\", \"id\") <= ($3::timestamp with time zone, $4::text) \
             ORDER BY \"created_at\", \"id\" LIMIT 1 OFFSET $5::bigint"
        );
        assert_eq!(
            composite().update_tail(false, true),
            "UPDATE \"public\".\"events\" SET \"total\" = (a + b) \
             WHERE (\"created_at\", \"id\") <= ($1::timestamp with time zone, $2::text) AND (kind = 'x')"
        );
    }

    #[test]
    fn the_tail_update_has_only_a_lower_bound() {
        assert_eq!(
            composite().update_tail(false, false),
            "UPDATE \"public\".\"events\" SET \"total\" = (a + b) WHERE (kind = 'x')"
        );
        assert_eq!(
            composite().count_tail(false, false),
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
            sql.upper_bound(false, false),
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
        assert!(
            sql.update_tail(false, false)
                .starts_with("UPDATE \"we\"\"ird\"")
        );
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
            sql.upper_bound(true, false),
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
