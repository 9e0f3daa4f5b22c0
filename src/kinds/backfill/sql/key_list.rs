//! The statements of a heap-order backfill (`order = "physical"`, Postgres): a key list beside the table, written
//! once in page order, then walked by its position.
//!
//! The list holds `bgm_n` (the row's place in page order at listing time) and the key columns as `bgm_k0..`, so
//! `set` and `where` expressions naming the table's columns stay unambiguous in the walk's `UPDATE ... FROM`. A
//! BRIN index on `bgm_n` is enough: the list is written in `bgm_n` order and never changed.

use super::BackfillSql;

/// The alias of the key list in the walk's `UPDATE ... FROM`.
const LIST_ALIAS: &str = "bgm_list";

impl BackfillSql {
    /// Creates the key list `list` (quoted) from the rows after the lower bound, up to the key range's end if it
    /// has one, numbered in page order. Params: lower bound (if any), then the range's end (if any).
    pub fn create_key_list(&self, list: &str, has_lower: bool, has_end: bool) -> String {
        let (bounds, _) = self.keyset.key_bounds(has_lower, has_end);
        let listed = self
            .keyset
            .keys()
            .iter()
            .enumerate()
            .map(|(i, key)| format!("{key} AS bgm_k{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let select = format!("row_number() OVER (ORDER BY ctid) AS bgm_n, {listed}");
        format!(
            "CREATE TABLE {list} AS {}",
            self.keyset.select(&select, &bounds, "")
        )
    }

    /// Indexes the list's positions (its heap is in position order, so a BRIN index finds a run in a few pages).
    pub fn index_key_list(list: &str) -> String {
        format!("CREATE INDEX ON {list} USING brin (bgm_n)")
    }

    /// Gives the planner the list's size, so that a run of it is joined to the table by the key's index.
    pub fn analyze_key_list(list: &str) -> String {
        format!("ANALYZE {list}")
    }

    /// Updates the rows whose listed positions are in ($1, $2], found through the key's unique index; the `where`
    /// filter is checked now, as in the key walk. Run with hash and merge joins off: a hash join over a sequential
    /// scan of the table is what the planner picks for large runs, and it reads the whole table per batch.
    pub fn update_listed(&self, list: &str) -> String {
        let listed: Vec<String> = (0..self.arity())
            .map(|i| format!("{LIST_ALIAS}.bgm_k{i}"))
            .collect();
        let conditions = self.keyset.filtered(vec![
            format!("{LIST_ALIAS}.bgm_n > $1::bigint"),
            format!("{LIST_ALIAS}.bgm_n <= $2::bigint"),
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

    /// Turns hash and merge joins off for the rest of the transaction (see [`BackfillSql::update_listed`]).
    pub fn join_by_index() -> &'static str {
        "SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"
    }

    /// Drops the list (the walk's last batch, in its transaction).
    pub fn drop_key_list(list: &str) -> String {
        format!("DROP TABLE IF EXISTS {list}")
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
    fn the_list_numbers_the_keys_of_a_range_in_page_order() {
        assert_eq!(
            composite().create_key_list("\"public\".\"bgmigrate_keys_0a\"", true, true),
            "CREATE TABLE \"public\".\"bgmigrate_keys_0a\" AS SELECT row_number() OVER (ORDER BY ctid) AS bgm_n, \
             \"created_at\" AS bgm_k0, \"id\" AS bgm_k1 FROM \"public\".\"events\" \
             WHERE (\"created_at\", \"id\") > ($1::timestamp with time zone, $2::text) \
             AND (\"created_at\", \"id\") <= ($3::timestamp with time zone, $4::text)"
        );
        assert!(
            composite()
                .create_key_list("l", false, false)
                .ends_with("FROM \"public\".\"events\""),
            "the whole table, the filter aside: rows are filtered when updated"
        );
    }

    #[test]
    fn a_run_of_the_list_is_joined_on_the_key_and_keeps_the_filter() {
        assert_eq!(
            composite().update_listed("\"bgmigrate_keys_0a\""),
            "UPDATE \"public\".\"events\" SET \"total\" = (a + b) FROM \"bgmigrate_keys_0a\" AS bgm_list \
             WHERE bgm_list.bgm_n > $1::bigint AND bgm_list.bgm_n <= $2::bigint \
             AND (\"created_at\", \"id\") = (bgm_list.bgm_k0, bgm_list.bgm_k1) AND (kind = 'x')"
        );
    }
}
