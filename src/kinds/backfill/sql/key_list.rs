//! The statements of a heap-order backfill (`order = "physical"`, Postgres): a key list beside the table, filled by
//! a sweep of the heap in page windows, closed by listing the keys the sweep missed and dropping the keys it listed
//! twice (only rows written since the sweep began can be either), then walked by the page each row was on when it
//! was listed.
//!
//! The list holds `bgm_page` and the key columns as `bgm_k0..`, so `set` and `where` expressions naming the table's
//! columns stay unambiguous in the walk's `UPDATE ... FROM`. The sweep appends the list in the table's page order,
//! so the walk reads it in its own page order (TID range scans of the list) and needs no index on it. Lists closed
//! by earlier versions were indexed on `bgm_page` and are walked through that index ([`BackfillSql::update_window`]):
//! the index build and the `ANALYZE` after it were most of the close, and under a foreground load the close's
//! long statements cost it more than the rest of the listing (README, foreground benchmark).

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

    /// The table's size in pages and its rows per page as last analysed (0 if never), as text. Param: the table's
    /// quoted name.
    pub fn table_shape() -> &'static str {
        "SELECT (pg_relation_size(c.oid) / current_setting('block_size')::int8)::text, \
         coalesce(floor(c.reltuples / nullif(c.relpages, 0)), 0)::int8::text \
         FROM pg_class c WHERE c.oid = $1::text::regclass"
    }

    /// Lists the keys of the rows on the pages [`(a,0)`, `(b,0)`) (a TID range scan), within the key range if it
    /// has bounds, each with its page. Params: lower bound (if any), the range's end (if any), then the two tids.
    pub fn sweep_keys(&self, list: &str, has_lower: bool, has_end: bool) -> String {
        let (mut conditions, next) = self.keyset.key_bounds(has_lower, has_end);
        conditions.push(format!("ctid >= ${next}::tid"));
        conditions.push(format!("ctid < ${}::tid", next + 1));
        format!(
            "INSERT INTO {list} {}",
            self.keyset.select(&self.page_and_keys(), &conditions, "")
        )
    }

    /// The oldest transaction still running now, as a 32-bit xid in text: row versions written by older ones were
    /// in place before the sweep began, so the sweep saw each of them once.
    pub fn sweep_horizon() -> &'static str {
        "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::int8 % 4294967296)::text"
    }

    /// Collects, into a temporary table dropped at commit, the range's rows written since the sweep began (their
    /// `xmin` no older than the horizon): only these can have moved during the sweep, so only these can be listed
    /// twice or not at all. A sequential read; no WAL. Params: lower bound (if any), the range's end (if any), then
    /// the horizon.
    pub fn collect_moved(&self, has_lower: bool, has_end: bool) -> String {
        let (mut conditions, next) = self.keyset.key_bounds(has_lower, has_end);
        conditions.push(format!("age(xmin) <= age(${next}::text::xid)"));
        format!(
            "CREATE TEMPORARY TABLE bgm_moved ON COMMIT DROP AS {}",
            self.keyset
                .select(&self.page_and_keys_named(), &conditions, "")
        )
    }

    /// Collects the list's entries for those rows' keys (one read of the list against the few keys moved).
    pub fn collect_seen(&self, list: &str) -> String {
        let keys = self.list_keys();
        format!(
            "CREATE TEMPORARY TABLE bgm_seen ON COMMIT DROP AS SELECT ctid AS bgm_entry, {keys} FROM {list} \
             WHERE ({keys}) IN (SELECT {keys} FROM bgm_moved)"
        )
    }

    /// Lists the moved rows whose keys the sweep missed (moved from a page it had not reached to one it had passed),
    /// in their pages' order: the walk scans the table pages a window's entries name.
    pub fn list_missed(list: &str, arity: usize) -> String {
        let keys = Self::list_keys_of(arity);
        format!(
            "INSERT INTO {list} SELECT bgm_page, {keys} FROM bgm_moved \
             WHERE ({keys}) NOT IN (SELECT {keys} FROM bgm_seen) ORDER BY bgm_page"
        )
    }

    /// Drops the second and later entries of a key the sweep listed twice (moved from a page it had passed to one it
    /// had not reached). Each key then has one entry, so its row is updated once.
    pub fn drop_listed_twice(list: &str, arity: usize) -> String {
        let keys = Self::list_keys_of(arity);
        format!(
            "DELETE FROM {list} WHERE ctid IN (SELECT bgm_entry FROM (SELECT bgm_entry, row_number() OVER \
             (PARTITION BY {keys} ORDER BY bgm_entry) AS bgm_nth FROM bgm_seen) AS bgm_ranked WHERE bgm_nth > 1)"
        )
    }

    /// How many keys the list holds and its own size in pages, as text. Param: the list's quoted name.
    pub fn list_extent(list: &str) -> String {
        format!(
            "SELECT count(*)::text, (pg_relation_size($1::text::regclass) / current_setting('block_size')::int8)::text \
             FROM {list}"
        )
    }

    /// Updates the rows listed on the list's own pages [`$1`, `$2`) (text tids `(p,0)`; a TID range scan of the
    /// list, which the sweep appended in the table's page order) and returns, as text, how many keys it read
    /// (the rows walked, counted whatever the filter says), then, per key column, an array of the keys whose rows
    /// it did not update (`{}` when none: see below). With `parts` > 1, an entry belongs to part `q` = its line
    /// pointer modulo `parts`, and `$3`, `$4`, ... (`2 × (parts - 1)` text tids, descending) cut the pages into
    /// segments: part 0's entries are read from `$3` on, none between `$4` and `$3` (the pages a later part
    /// reaches a batch or more later, when turns come more than one batch apart; none when `$4` = `$3`), part
    /// 1's between `$5` and `$4`, none between `$6` and `$5`, and so on, part `parts - 1`'s below the last (down
    /// to `$1`). The sweep listed a table page's rows side by side, so each part holds about a `parts`-th of
    /// every table page's rows (see `heap_walk`).
    ///
    /// The rows are updated where they were listed: a TID range scan of the table pages the entries name, hashed
    /// and joined with the entries on the key. That reads those pages once, in order, where a lookup through the
    /// key's index per row reads the index's pages at random (on 10,000,000 rows, whose index does not fit in
    /// `shared_buffers`, the walk took 1.3–1.5x as long that way), and the scan prunes each page as it reads it,
    /// so a later turn's rows still find the room the first turn freed. The pages scanned are bounded by the
    /// entries' count: entries that name pages far apart (the close appends the rows the sweep missed after the
    /// rest) are not all found there. Neither is a row the application moved since it was listed (our turns move a
    /// row only when they update it), nor one it moved while this statement ran; and the `where` filter leaves
    /// some rows alone. Those keys are returned, and only in a batch that has any does the anti-join that finds
    /// them run: [`BackfillSql::update_missing`] looks them up by key. One statement (the `UPDATE` in a `WITH`,
    /// which runs to completion whether or not it is read), run with nested loops and merge joins off
    /// ([`BackfillSql::ENTRY_WALK_SETTINGS`]): with no statistics on the entries, the planner would look each row
    /// up by key.
    pub fn update_entries(&self, list: &str, parts: usize) -> String {
        let window = Self::entries_window(parts);
        let keys = self.list_keys();
        let entry_keys = self.list_keys_in("bgm_entries").join(", ");
        let on_their_pages = self.keyset.filtered(vec![
            format!("{}.ctid >= (SELECT bgm_from FROM bgm_pages)", self.table),
            format!("{}.ctid < (SELECT bgm_to FROM bgm_pages)", self.table),
            self.joined_on_key("bgm_entries"),
        ]);
        let missing: Vec<String> = (0..self.arity())
            .map(|i| format!("coalesce(array_agg(bgm_k{i}::text), '{{}}')::text"))
            .collect();
        format!(
            "WITH bgm_entries AS MATERIALIZED (SELECT bgm_page, {keys} FROM {list} AS {LIST_ALIAS} WHERE {window}), \
             bgm_pages AS (SELECT format('(%s,0)', coalesce(min(bgm_page), 0))::tid AS bgm_from, \
             format('(%s,0)', coalesce(least(max(bgm_page) + 1, min(bgm_page) + count(*)), 0))::tid AS bgm_to \
             FROM bgm_entries), \
             bgm_updated AS (UPDATE {} SET {} FROM bgm_entries{} RETURNING {entry_keys}), \
             bgm_missing AS (SELECT {keys} FROM bgm_entries \
             WHERE (SELECT count(*) FROM bgm_updated) < (SELECT count(*) FROM bgm_entries) \
             AND ({keys}) NOT IN (SELECT {keys} FROM bgm_updated)) \
             SELECT (SELECT count(*) FROM bgm_entries)::text, {} FROM bgm_missing",
            self.table,
            self.set,
            crate::kinds::keyset::Keyset::where_clause(&on_their_pages),
            missing.join(", ")
        )
    }

    /// The entries a walk batch reads from the list's own pages: those on [`$1`, `$2`), and with `parts` > 1 only
    /// each segment's own part (see [`BackfillSql::update_entries`]; -1, between segments, is no part).
    fn entries_window(parts: usize) -> String {
        let mut window = format!("{LIST_ALIAS}.ctid >= $1::tid AND {LIST_ALIAS}.ctid < $2::tid");
        if parts > 1 {
            let parts_from_the_bounds = (0..parts - 1).flat_map(|q| [q as i64, -1]);
            let segments: String = parts_from_the_bounds
                .enumerate()
                .map(|(n, part)| format!("WHEN {LIST_ALIAS}.ctid >= ${}::tid THEN {part} ", n + 3))
                .collect();
            window.push_str(&format!(
                " AND ({LIST_ALIAS}.ctid::text::point)[1]::int8 % {parts} = CASE {segments}ELSE {} END",
                parts - 1
            ));
        }
        window
    }

    /// Updates the rows of the same entries as [`BackfillSql::update_entries`] (same params), each looked up
    /// through the key's unique index wherever it is now, and returns, as text, how many keys it read. For a key
    /// range's list, which holds only that range's share of each table page's rows (so a scan of the pages would
    /// read the other ranges' rows too), and for a list the release before closed. The `where` filter is checked
    /// now, as in the key walk. Run with hash and merge joins off, like [`BackfillSql::update_window`].
    pub fn update_entries_by_key(&self, list: &str, parts: usize) -> String {
        let window = Self::entries_window(parts);
        let conditions = self
            .keyset
            .filtered(vec![window.clone(), self.joined_on_key(LIST_ALIAS)]);
        format!(
            "WITH bgm_updated AS (UPDATE {} SET {} FROM {list} AS {LIST_ALIAS}{}) \
             SELECT count(*)::text FROM {list} AS {LIST_ALIAS} WHERE {window}",
            self.table,
            self.set,
            crate::kinds::keyset::Keyset::where_clause(&conditions)
        )
    }

    /// Updates the rows of the keys a walk batch did not find in place (see [`BackfillSql::update_entries`]),
    /// through the key's index, wherever they are now; the `where` filter is checked then, as in the key walk. A
    /// later statement than the one that missed them: it sees the rows as they are now (one the application moved
    /// while that one ran included). Params: one text array per key column. Run with hash joins off and nested
    /// loops on ([`BackfillSql::KEY_LOOKUP_SETTINGS`]).
    pub fn update_missing(&self) -> String {
        let arrays: Vec<String> = (1..=self.arity())
            .map(|n| format!("${n}::text[]"))
            .collect();
        let conditions = self.keyset.filtered(vec![format!(
            "({}) = {}",
            self.keyset.keys().join(", "),
            self.keyset.typed(&self.list_keys_in("bgm_missing"))
        )]);
        format!(
            "UPDATE {} SET {} FROM unnest({}) AS bgm_missing({}){}",
            self.table,
            self.set,
            arrays.join(", "),
            self.list_keys(),
            crate::kinds::keyset::Keyset::where_clause(&conditions)
        )
    }

    /// The walk of a list closed by an earlier version, indexed on `bgm_page`: updates the rows listed in the next
    /// window of table pages and returns, as text, how many keys it lists (the rows walked, counted whatever the
    /// filter says) and the page after it. The window starts at page $1 and takes
    /// whole pages up to the one that holds the next batch's last key (offset $3, `batchSize - 1`, into the list
    /// from $1), ending by page $2: `batchSize` keys and the rest of the last page's, so the batch sizer, which
    /// learns only from full batches, learns from each, and pages that list no key are skipped rather than walked
    /// by batches of their own. It is sized by the list, not by the list's average keys per page: on a table
    /// whose live rows are bunched into part of the heap (after a full-table `UPDATE` and a `VACUUM`, say) windows
    /// sized by the average were empty or held several batches' rows, and the long ones held their rows' locks and
    /// flushed their WAL well past the batch's target. Each row is found through the key's unique index wherever it
    /// is now, and the `where` filter is checked now, as in the key walk. One statement (the `UPDATE` in a `WITH`,
    /// which runs to completion whether or not it is read): a batch of a few milliseconds pays for each round trip.
    /// Run with hash and merge joins off: a hash join over a sequential scan of the table is what the planner picks
    /// for large windows, and it reads the whole table per batch.
    pub fn update_window(&self, list: &str) -> String {
        let to = "(SELECT bgm_to FROM bgm_window)";
        let window =
            format!("{LIST_ALIAS}.bgm_page >= $1::bigint AND {LIST_ALIAS}.bgm_page < {to}");
        let conditions = self
            .keyset
            .filtered(vec![window.clone(), self.joined_on_key(LIST_ALIAS)]);
        format!(
            "WITH bgm_window AS (SELECT least(coalesce((SELECT bgm_page FROM {list} \
             WHERE bgm_page >= $1::bigint ORDER BY bgm_page OFFSET $3::bigint LIMIT 1) + 1, $2::bigint), \
             $2::bigint) AS bgm_to), \
             bgm_updated AS (UPDATE {} SET {} FROM {list} AS {LIST_ALIAS}{}) \
             SELECT count(*)::text, {to}::text FROM {list} AS {LIST_ALIAS} WHERE {window}",
            self.table,
            self.set,
            crate::kinds::keyset::Keyset::where_clause(&conditions)
        )
    }

    /// The settings of a walk batch that looks its rows up by key (a key range's list, or one closed by an earlier
    /// version), set with the batch's others in one statement: hash and merge joins off (see
    /// [`BackfillSql::update_window`]), and JIT compilation off. A window is a few hundred to a few thousand
    /// rows, and compiling its plan cost more than running it: with the list not yet analysed, the planner took a
    /// window of 3,000,000 keys for 15,000 rows, priced the plan past `jit_above_cost`, and each 120-row batch
    /// spent 10 ms compiling for a 5 ms update (the foreground benchmark's 3,000,000 rows under load: 17 % of the
    /// idle speed).
    pub const WALK_SETTINGS: &'static [(&'static str, &'static str)] = &[
        ("enable_hashjoin", "off"),
        ("enable_mergejoin", "off"),
        ("jit", "off"),
    ];

    /// The settings of a walk batch over a list in its own order ([`BackfillSql::update_entries`]): nested loops
    /// and merge joins off, so the rows are found in place by a hash join of the table pages' scan with the
    /// entries, and JIT compilation off (see [`BackfillSql::WALK_SETTINGS`]).
    pub const ENTRY_WALK_SETTINGS: &'static [(&'static str, &'static str)] = &[
        ("enable_nestloop", "off"),
        ("enable_mergejoin", "off"),
        ("jit", "off"),
    ];

    /// The settings that turn a walk batch's from [`BackfillSql::ENTRY_WALK_SETTINGS`] to lookups by key
    /// ([`BackfillSql::update_missing`]): nested loops on, hash joins off.
    pub const KEY_LOOKUP_SETTINGS: &'static [(&'static str, &'static str)] =
        &[("enable_nestloop", "on"), ("enable_hashjoin", "off")];

    /// Drops the list (the walk's last batch, in its transaction).
    pub fn drop_key_list(list: &str) -> String {
        format!("DROP TABLE IF EXISTS {list}")
    }

    /// `("key", ...) = (<alias>.bgm_k0, ...)`: a table row and its list entry (or a row of entries read from it).
    fn joined_on_key(&self, alias: &str) -> String {
        format!(
            "({}) = ({})",
            self.keyset.keys().join(", "),
            self.list_keys_in(alias).join(", ")
        )
    }

    /// `<alias>.bgm_k0`, `<alias>.bgm_k1`, ...: the list's key columns under `alias`.
    fn list_keys_in(&self, alias: &str) -> Vec<String> {
        (0..self.arity())
            .map(|i| format!("{alias}.bgm_k{i}"))
            .collect()
    }

    /// `bgm_k0, bgm_k1, ...`: the list's key columns.
    fn list_keys(&self) -> String {
        Self::list_keys_of(self.arity())
    }

    fn list_keys_of(arity: usize) -> String {
        (0..arity)
            .map(|i| format!("bgm_k{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A row's page and key under the list's column names.
    fn page_and_keys_named(&self) -> String {
        format!(
            "(ctid::text::point)[0]::int4 AS bgm_page, {}",
            self.listed_keys()
        )
    }

    /// A row's page and key, as the list stores them.
    fn page_and_keys(&self) -> String {
        format!(
            "(ctid::text::point)[0]::int4, {}",
            self.keyset.keys().join(", ")
        )
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
    use super::super::tests::composite;
    use super::*;

    /// The entries of the window are read once; their rows are updated on the table pages they name (bounded by
    /// their count), joined on the key, the filter checked; the keys of the rows not updated there are returned,
    /// the anti-join that finds them run only when there are some; the count is of the entries.
    #[test]
    fn a_window_of_the_lists_own_pages_is_updated_in_place_keeps_the_filter_and_returns_the_keys_missed()
     {
        assert_eq!(
            composite().update_entries("\"bgmigrate_keys_0a\"", 1),
            "WITH bgm_entries AS MATERIALIZED (SELECT bgm_page, bgm_k0, bgm_k1 FROM \"bgmigrate_keys_0a\" AS bgm_list \
             WHERE bgm_list.ctid >= $1::tid AND bgm_list.ctid < $2::tid), \
             bgm_pages AS (SELECT format('(%s,0)', coalesce(min(bgm_page), 0))::tid AS bgm_from, \
             format('(%s,0)', coalesce(least(max(bgm_page) + 1, min(bgm_page) + count(*)), 0))::tid AS bgm_to \
             FROM bgm_entries), \
             bgm_updated AS (UPDATE \"public\".\"events\" SET \"total\" = (a + b) FROM bgm_entries \
             WHERE \"public\".\"events\".ctid >= (SELECT bgm_from FROM bgm_pages) \
             AND \"public\".\"events\".ctid < (SELECT bgm_to FROM bgm_pages) \
             AND (\"created_at\", \"id\") = (bgm_entries.bgm_k0, bgm_entries.bgm_k1) AND (kind = 'x') \
             RETURNING bgm_entries.bgm_k0, bgm_entries.bgm_k1), \
             bgm_missing AS (SELECT bgm_k0, bgm_k1 FROM bgm_entries \
             WHERE (SELECT count(*) FROM bgm_updated) < (SELECT count(*) FROM bgm_entries) \
             AND (bgm_k0, bgm_k1) NOT IN (SELECT bgm_k0, bgm_k1 FROM bgm_updated)) \
             SELECT (SELECT count(*) FROM bgm_entries)::text, coalesce(array_agg(bgm_k0::text), '{}')::text, \
             coalesce(array_agg(bgm_k1::text), '{}')::text FROM bgm_missing"
        );
    }

    /// A key range's list: each entry's row is looked up by key; the count reads the same entries.
    #[test]
    fn a_key_range_s_window_is_joined_on_the_key_keeps_the_filter_and_counts_the_keys() {
        assert_eq!(
            composite().update_entries_by_key("\"bgmigrate_keys_0a\"", 1),
            "WITH bgm_updated AS (UPDATE \"public\".\"events\" SET \"total\" = (a + b) FROM \"bgmigrate_keys_0a\" \
             AS bgm_list WHERE bgm_list.ctid >= $1::tid AND bgm_list.ctid < $2::tid \
             AND (\"created_at\", \"id\") = (bgm_list.bgm_k0, bgm_list.bgm_k1) AND (kind = 'x')) \
             SELECT count(*)::text FROM \"bgmigrate_keys_0a\" AS bgm_list \
             WHERE bgm_list.ctid >= $1::tid AND bgm_list.ctid < $2::tid"
        );
        let sql = composite().update_entries_by_key("l", 3);
        assert!(
            sql.ends_with(
                "SELECT count(*)::text FROM l AS bgm_list WHERE bgm_list.ctid >= $1::tid AND bgm_list.ctid < $2::tid \
                 AND (bgm_list.ctid::text::point)[1]::int8 % 3 = \
                 CASE WHEN bgm_list.ctid >= $3::tid THEN 0 WHEN bgm_list.ctid >= $4::tid THEN -1 \
                 WHEN bgm_list.ctid >= $5::tid THEN 1 WHEN bgm_list.ctid >= $6::tid THEN -1 ELSE 2 END"
            ),
            "{sql}"
        );
    }

    #[test]
    fn the_keys_missed_are_updated_through_the_key_with_the_filter() {
        assert_eq!(
            composite().update_missing(),
            "UPDATE \"public\".\"events\" SET \"total\" = (a + b) \
             FROM unnest($1::text[], $2::text[]) AS bgm_missing(bgm_k0, bgm_k1) \
             WHERE (\"created_at\", \"id\") = (bgm_missing.bgm_k0::timestamp with time zone, bgm_missing.bgm_k1::text) \
             AND (kind = 'x')"
        );
    }

    /// In three parts, each entry is read in the segment of its part: part 0 from `$3` on, none between `$4` and
    /// `$3`, part 1 between `$5` and `$4`, none between `$6` and `$5`, part 2 below `$6`; the rows found and the
    /// count are those entries'.
    #[test]
    fn a_walk_in_parts_reads_each_segment_s_own_part() {
        let window = "bgm_list.ctid >= $1::tid AND bgm_list.ctid < $2::tid \
                      AND (bgm_list.ctid::text::point)[1]::int8 % 3 = \
                      CASE WHEN bgm_list.ctid >= $3::tid THEN 0 WHEN bgm_list.ctid >= $4::tid THEN -1 \
                      WHEN bgm_list.ctid >= $5::tid THEN 1 WHEN bgm_list.ctid >= $6::tid THEN -1 ELSE 2 END";
        let sql = composite().update_entries("l", 3);
        assert!(
            sql.starts_with(&format!(
                "WITH bgm_entries AS MATERIALIZED (SELECT bgm_page, bgm_k0, bgm_k1 FROM l AS bgm_list WHERE {window}), "
            )),
            "{sql}"
        );
        assert_eq!(sql.matches("FROM l ").count(), 1, "{sql}");
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
    fn the_sweep_lists_a_window_of_pages_within_the_key_range_and_the_filter_aside() {
        assert_eq!(
            composite().sweep_keys("l", true, true),
            "INSERT INTO l SELECT (ctid::text::point)[0]::int4, \"created_at\", \"id\" FROM \"public\".\"events\" \
             WHERE (\"created_at\", \"id\") > ($1::timestamp with time zone, $2::text) \
             AND (\"created_at\", \"id\") <= ($3::timestamp with time zone, $4::text) \
             AND ctid >= $5::tid AND ctid < $6::tid"
        );
        assert!(
            composite()
                .sweep_keys("l", false, false)
                .ends_with("FROM \"public\".\"events\" WHERE ctid >= $1::tid AND ctid < $2::tid"),
            "rows are filtered when updated, not when listed"
        );
    }

    #[test]
    fn closing_the_list_looks_only_at_rows_written_since_the_sweep_began() {
        assert_eq!(
            composite().collect_moved(false, true),
            "CREATE TEMPORARY TABLE bgm_moved ON COMMIT DROP AS SELECT (ctid::text::point)[0]::int4 AS bgm_page, \
             \"created_at\" AS bgm_k0, \"id\" AS bgm_k1 FROM \"public\".\"events\" \
             WHERE (\"created_at\", \"id\") <= ($1::timestamp with time zone, $2::text) \
             AND age(xmin) <= age($3::text::xid)"
        );
        assert_eq!(
            composite().collect_seen("l"),
            "CREATE TEMPORARY TABLE bgm_seen ON COMMIT DROP AS SELECT ctid AS bgm_entry, bgm_k0, bgm_k1 FROM l \
             WHERE (bgm_k0, bgm_k1) IN (SELECT bgm_k0, bgm_k1 FROM bgm_moved)"
        );
        assert_eq!(
            BackfillSql::list_missed("l", 2),
            "INSERT INTO l SELECT bgm_page, bgm_k0, bgm_k1 FROM bgm_moved \
             WHERE (bgm_k0, bgm_k1) NOT IN (SELECT bgm_k0, bgm_k1 FROM bgm_seen) ORDER BY bgm_page"
        );
        assert!(BackfillSql::drop_listed_twice("l", 1).starts_with(
            "DELETE FROM l WHERE ctid IN (SELECT bgm_entry FROM (SELECT bgm_entry, row_number() OVER \
             (PARTITION BY bgm_k0 ORDER BY bgm_entry)"
        ));
    }

    #[test]
    fn a_window_of_the_list_is_sized_by_the_list_joined_on_the_key_keeps_the_filter_and_counts_the_keys()
     {
        assert_eq!(
            composite().update_window("\"bgmigrate_keys_0a\""),
            "WITH bgm_window AS (SELECT least(coalesce((SELECT bgm_page FROM \"bgmigrate_keys_0a\" \
             WHERE bgm_page >= $1::bigint ORDER BY bgm_page OFFSET $3::bigint LIMIT 1) + 1, $2::bigint), \
             $2::bigint) AS bgm_to), \
             bgm_updated AS (UPDATE \"public\".\"events\" SET \"total\" = (a + b) FROM \"bgmigrate_keys_0a\" \
             AS bgm_list WHERE bgm_list.bgm_page >= $1::bigint AND bgm_list.bgm_page < (SELECT bgm_to FROM bgm_window) \
             AND (\"created_at\", \"id\") = (bgm_list.bgm_k0, bgm_list.bgm_k1) AND (kind = 'x')) \
             SELECT count(*)::text, (SELECT bgm_to FROM bgm_window)::text FROM \"bgmigrate_keys_0a\" AS bgm_list \
             WHERE bgm_list.bgm_page >= $1::bigint AND bgm_list.bgm_page < (SELECT bgm_to FROM bgm_window)"
        );
    }
}
