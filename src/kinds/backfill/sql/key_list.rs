//! The statements of a heap-order backfill (`order = "physical"`, Postgres): a key list beside the table, filled in
//! key ranges (each key once), then walked by the page each row was on when it was listed.
//!
//! The list holds `bgm_page` and the key columns as `bgm_k0..`, so `set` and `where` expressions naming the table's
//! columns stay unambiguous in the walk's `UPDATE ... FROM`. A b-tree on `bgm_page` finds a window of pages.

use super::BackfillSql;

/// The alias of the key list in the walk's `UPDATE ... FROM`.
const LIST_ALIAS: &str = "bgm_list";

impl BackfillSql {
    /// Creates the empty key list `list` (quoted), its key columns typed as the table's.
    pub fn create_key_list(&self, list: &str) -> String {
        let select = format!("0::int4 AS bgm_page, {}", self.listed_keys());
        format!(
            "CREATE TABLE {list} AS {} WITH NO DATA",
            self.keyset.select(&select, &[], "")
        )
    }

    /// Indexes the list by page, for the walk's windows.
    pub fn index_key_list(list: &str) -> String {
        format!("CREATE INDEX ON {list} (bgm_page)")
    }

    /// Lists the keys after the lower bound up to the upper one (a batch's last key, or the key range's end), each
    /// with the page its row is on now; returns how many, and the highest page (-1 for none), as text. Params:
    /// lower bound (if any), then upper bound (if any).
    pub fn list_keys(&self, list: &str, has_lower: bool, has_upper: bool) -> String {
        let (bounds, _) = self.keyset.key_bounds(has_lower, has_upper);
        let select = format!(
            "(ctid::text::point)[0]::int4, {}",
            self.keyset.keys().join(", ")
        );
        format!(
            "WITH listed AS (INSERT INTO {list} {} RETURNING bgm_page) \
             SELECT count(*)::text, coalesce(max(bgm_page), -1)::text FROM listed",
            self.keyset.select(&select, &bounds, "")
        )
    }

    /// Counts the listed keys in the window of pages [$1, $2).
    pub fn count_window(list: &str) -> String {
        format!(
            "SELECT count(*) FROM {list} WHERE bgm_page >= $1::bigint AND bgm_page < $2::bigint"
        )
    }

    /// Updates the rows listed in the window of pages [$1, $2), found through the key's unique index wherever they
    /// are now; the `where` filter is checked now, as in the key walk. Run with hash and merge joins off: a hash
    /// join over a sequential scan of the table is what the planner picks for large windows, and it reads the whole
    /// table per batch.
    pub fn update_window(&self, list: &str) -> String {
        let listed: Vec<String> = (0..self.arity())
            .map(|i| format!("{LIST_ALIAS}.bgm_k{i}"))
            .collect();
        let conditions = self.keyset.filtered(vec![
            format!("{LIST_ALIAS}.bgm_page >= $1::bigint"),
            format!("{LIST_ALIAS}.bgm_page < $2::bigint"),
            format!(
                "({}) = ({})",
                self.keyset.keys().join(", "),
                listed.join(", ")
            ),
        ]);
        format!(
            "UPDATE {} SET {} FROM {list} AS {LIST_ALIAS}{}",
            self.table,
            self.set,
            crate::kinds::keyset::Keyset::where_clause(&conditions)
        )
    }

    /// Turns hash and merge joins off for the rest of the transaction (see [`BackfillSql::update_window`]).
    pub fn join_by_index() -> &'static str {
        "SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"
    }

    /// Drops the list (the walk's last batch, in its transaction).
    pub fn drop_key_list(list: &str) -> String {
        format!("DROP TABLE IF EXISTS {list}")
    }

    /// `"key" AS bgm_k0, ...`
    fn listed_keys(&self) -> String {
        self.keyset
            .keys()
            .iter()
            .enumerate()
            .map(|(i, key)| format!("{key} AS bgm_k{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Dialect;

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
    fn the_list_takes_the_key_columns_types_from_the_table() {
        assert_eq!(
            composite().create_key_list("\"public\".\"bgmigrate_keys_0a\""),
            "CREATE TABLE \"public\".\"bgmigrate_keys_0a\" AS SELECT 0::int4 AS bgm_page, \
             \"created_at\" AS bgm_k0, \"id\" AS bgm_k1 FROM \"public\".\"events\" WITH NO DATA"
        );
    }

    #[test]
    fn a_key_range_is_listed_with_each_rows_page_and_the_filter_aside() {
        assert_eq!(
            composite().list_keys("l", true, true),
            "WITH listed AS (INSERT INTO l SELECT (ctid::text::point)[0]::int4, \"created_at\", \"id\" \
             FROM \"public\".\"events\" \
             WHERE (\"created_at\", \"id\") > ($1::timestamp with time zone, $2::text) \
             AND (\"created_at\", \"id\") <= ($3::timestamp with time zone, $4::text) RETURNING bgm_page) \
             SELECT count(*)::text, coalesce(max(bgm_page), -1)::text FROM listed"
        );
        assert!(
            composite()
                .list_keys("l", false, false)
                .contains("FROM \"public\".\"events\" RETURNING"),
            "rows are filtered when updated, not when listed"
        );
    }

    #[test]
    fn a_window_of_the_list_is_joined_on_the_key_and_keeps_the_filter() {
        assert_eq!(
            composite().update_window("\"bgmigrate_keys_0a\""),
            "UPDATE \"public\".\"events\" SET \"total\" = (a + b) FROM \"bgmigrate_keys_0a\" AS bgm_list \
             WHERE bgm_list.bgm_page >= $1::bigint AND bgm_list.bgm_page < $2::bigint \
             AND (\"created_at\", \"id\") = (bgm_list.bgm_k0, bgm_list.bgm_k1) AND (kind = 'x')"
        );
    }
}
