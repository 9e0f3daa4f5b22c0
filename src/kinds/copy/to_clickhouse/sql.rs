//! The statements of a copy batch. Pure: unit-tested without a database.
//!
//! The keyset read: `SELECT <columns>, <key>::text ..., <large flags> FROM <table or (query)> AS bgm_src WHERE (<key>) >
//! (<cursor>) [AND (<where>)] ORDER BY bgm_src.<key> LIMIT <batchSize>`, streamed. Output columns are aliased and
//! the ORDER BY names the table's columns, so a key read as text still sorts as its own type. Where each part of
//! such a row sits is [`RowLayout`]'s to say, and no one else's.
//!
//! Large text values (over [`LARGE_VALUE_BYTES`] as text, see [`large_value`]) are left out of the row (`NULL` plus a
//! flag) and read afterwards in slices of [`SLICE_BYTES`] by key: a 50 MB value never becomes one 50 MB protocol
//! message, which the driver would buffer two or three times over.

use std::ops::Range;

use super::mapping::ColumnPlan;
use crate::kinds::copy::spec::Relation;
use crate::kinds::keyset::Keyset;
use crate::store::Dialect;

/// Stored size (`pg_column_size`) above which a text value is read in slices.
pub const LARGE_VALUE_BYTES: i64 = 1024 * 1024;
/// Stored size above which a value that is not plain text (jsonb, json, ...) is measured as text too: compressed
/// storage can hide a large value behind a small stored size.
const MEASURED_BYTES: i64 = 64 * 1024;
/// Bytes per slice of a large value.
pub const SLICE_BYTES: i64 = 4 * 1024 * 1024;

const DIALECT: Dialect = Dialect::Postgres;

/// Where each part of a row read by [`CopySql`] sits: the copied values in column order, then the key as text (the
/// row's cursor), then, when a column is read in slices, one flag that says some sliced value of the row was left out
/// as large, then, in a physical walk, the row's `ctid` (binary).
///
/// One flag per row, not one per sliced column: each extra output column costs Postgres its own send per row, and
/// three flags took a third of a 1M-row `COPY`'s server time (measured: 0.95 s against 0.59 s with one). A flagged
/// row's left-out values are told from real NULLs by asking for their lengths, which a large value needs anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLayout {
    key: Range<usize>,
    large: Option<usize>,
    ctid: Option<usize>,
}

impl RowLayout {
    fn new(columns: &[ColumnPlan], key_columns: usize) -> Self {
        let key = columns.len()..columns.len() + key_columns;
        let large = columns.iter().any(ColumnPlan::sliced).then_some(key.end);
        Self {
            key,
            large,
            ctid: None,
        }
    }

    /// The position of copied column `column`'s value.
    pub fn value(&self, column: usize) -> usize {
        column
    }

    /// The positions of the key's texts.
    pub fn key(&self) -> Range<usize> {
        self.key.clone()
    }

    /// The position of the flag that says a sliced value of the row was left out (NULL in its place), if any column
    /// is read in slices.
    pub fn large_flag(&self) -> Option<usize> {
        self.large
    }

    /// The position of the row's `ctid`, in a read [`CopySql::with_ctid`].
    pub fn ctid(&self) -> Option<usize> {
        self.ctid
    }

    /// The position after the flag.
    fn end(&self) -> usize {
        self.large.map_or(self.key.end, |flag| flag + 1)
    }
}

/// Whether a value is large, by its size as the text the copy sends. For text columns `octet_length` is that size
/// and costs no reading: Postgres takes it from the value's (TOAST) header, compressed or not. `pg_column_size` is
/// not enough: it is the *stored* size, and 50 MB of repetitive text compresses to a few hundred KB, which then
/// arrived whole in one protocol message (a copy of 40 such 1–50 MB rows peaked at 174–195 MiB). Other types are
/// measured as text when their stored size is over [`MEASURED_BYTES`].
fn large_value(c: &ColumnPlan) -> String {
    if c.text_source() {
        return format!("octet_length({}) > {LARGE_VALUE_BYTES}", c.quoted);
    }
    format!(
        "(pg_column_size({q}) > {LARGE_VALUE_BYTES} OR (pg_column_size({q}) > {MEASURED_BYTES} AND \
         octet_length({s}) > {LARGE_VALUE_BYTES}))",
        q = c.quoted,
        s = c.select
    )
}

/// The statements for one source table or query.
#[derive(Debug, Clone)]
pub struct CopySql {
    select: String,
    keyset: Keyset,
    layout: RowLayout,
}

impl CopySql {
    /// The read of `columns`, laid out as [`RowLayout`] says.
    pub fn new(
        source: &Relation,
        columns: &[ColumnPlan],
        keys: &[String],
        key_types: &[String],
        filter: Option<&str>,
    ) -> Self {
        let keyset = Keyset::aliased(DIALECT, &source.sql(DIALECT), keys, key_types, filter);
        let layout = RowLayout::new(columns, keys.len());
        let values = columns.iter().enumerate().map(|(i, c)| {
            if c.sliced() {
                format!(
                    "CASE WHEN {} THEN NULL ELSE {} END AS bgm_c{i}",
                    large_value(c),
                    c.select
                )
            } else {
                format!("{} AS bgm_c{i}", c.select)
            }
        });
        let cursors = keyset
            .keys()
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} AS bgm_cursor_{i}", DIALECT.as_text(k)));
        let large = columns
            .iter()
            .filter(|c| c.sliced())
            .map(large_value)
            .collect::<Vec<_>>();
        let flag = (!large.is_empty()).then(|| format!("({}) AS bgm_large", large.join(" OR ")));
        Self {
            select: values
                .chain(cursors)
                .chain(flag)
                .collect::<Vec<_>>()
                .join(", "),
            keyset,
            layout,
        }
    }

    /// Where each part of a row read sits.
    pub fn layout(&self) -> &RowLayout {
        &self.layout
    }

    /// Reads the next batch. Params: the cursor (if any), one text per key column, then the row limit.
    pub fn read(&self, has_lower: bool) -> String {
        self.keyset.read(&self.select, has_lower)
    }

    /// Reads the next batch within a key range's end. Params: the cursor (if any), the end (if any), then the row
    /// limit.
    pub fn read_within(&self, has_lower: bool, has_upper: bool) -> String {
        self.keyset.read_within(&self.select, has_lower, has_upper)
    }

    /// Reads the rows after the cursor up to an upper key, in any order. Params: the cursor (if any), the upper key,
    /// then the row limit.
    pub fn read_range(&self, has_lower: bool) -> String {
        self.keyset.read_range(&self.select, has_lower)
    }

    /// The key `n` rows after the cursor, as text, within a key range's end if it has one. Params: the cursor (if
    /// any), the end (if any), then `n - 1`.
    pub fn key_after(&self, has_lower: bool, has_upper: bool) -> String {
        self.keyset.key_after_within(has_lower, has_upper)
    }

    /// The same columns plus each row's `ctid` (last, as the 6 bytes of its binary form), for a walk in physical
    /// order.
    pub fn with_ctid(mut self) -> Self {
        self.select.push_str(", bgm_src.ctid AS bgm_ctid");
        self.layout.ctid = Some(self.layout.end());
        self
    }

    /// Reads the next batch in physical order (see [`super::pages`]), from a [`CopySql::with_ctid`]. Params: the
    /// `ctid` cursor, the window's end `(page,0)`, then the row limit. Without `ORDER BY`: a TID range scan
    /// returns the tuples in `ctid` order.
    pub fn read_pages(&self) -> String {
        self.read_changed_pages(false)
    }

    /// Reads the next rows of the catch-up pass ([`super::catch_up`]): as [`CopySql::read_pages`], and when
    /// `changed_only`, only rows written at or after a transaction id, given as text after the window's end (the
    /// row limit comes last).
    pub fn read_changed_pages(&self, changed_only: bool) -> String {
        let mut window = vec![
            "bgm_src.ctid > $1::tid".to_owned(),
            "bgm_src.ctid < $2::tid".to_owned(),
        ];
        if changed_only {
            window.push("age(bgm_src.xmin) <= age($3::text::xid)".to_owned());
        }
        let limit = format!(" LIMIT ${}::bigint", window.len() + 1);
        let keyset = &self.keyset;
        keyset.select(&self.select, &keyset.filtered(window), &limit)
    }

    /// The key walk: the source, its key columns, the check of each row's key.
    pub fn keyset(&self) -> &Keyset {
        &self.keyset
    }

    fn by_key(&self, what: &str) -> String {
        let key = format!(
            "({}) = {}",
            self.keyset.keys().join(", "),
            self.keyset.bound(1)
        );
        self.keyset.select(what, &[key], "")
    }

    /// The byte length of a large value. Params: the row's key.
    pub fn value_length(&self, column: &ColumnPlan) -> String {
        self.by_key(&format!("octet_length({})", column.select))
    }

    /// A slice of a large value as bytes. Params: the row's key, then the 1-based offset and the length.
    pub fn value_slice(&self, column: &ColumnPlan) -> String {
        let first = self.keyset.keys().len() + 1;
        self.by_key(&format!(
            "substring(convert_to({}, 'UTF8') FROM {} FOR {})",
            column.select,
            DIALECT.param(first, "int"),
            DIALECT.param(first + 1, "int")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::mapping::plan_column;
    use super::*;

    fn sql() -> CopySql {
        CopySql::new(
            &Relation::Table("public.traces".into()),
            &[
                plan_column("id", "text", "String").unwrap(),
                plan_column("n", "integer", "Int32").unwrap(),
            ],
            &["created_at".into(), "id".into()],
            &["timestamp with time zone".into(), "text".into()],
            Some("project_id = 'p'"),
        )
    }

    #[test]
    fn the_read_walks_the_key_after_the_cursor_and_keeps_the_filter() {
        assert_eq!(
            sql().read(true),
            "SELECT CASE WHEN octet_length(\"id\") > 1048576 THEN NULL ELSE \"id\"::text END AS bgm_c0, \
             \"n\" AS bgm_c1, bgm_src.\"created_at\"::text AS bgm_cursor_0, bgm_src.\"id\"::text AS bgm_cursor_1, \
             (octet_length(\"id\") > 1048576) AS bgm_large FROM \"public\".\"traces\" AS bgm_src \
             WHERE (bgm_src.\"created_at\", bgm_src.\"id\") > ($1::timestamp with time zone, $2::text) \
             AND (project_id = 'p') ORDER BY bgm_src.\"created_at\", bgm_src.\"id\" LIMIT $3::bigint"
        );
        assert!(sql().read(false).ends_with(
            "AS bgm_src WHERE (project_id = 'p') ORDER BY bgm_src.\"created_at\", bgm_src.\"id\" LIMIT $1::bigint"
        ));
    }

    #[test]
    fn the_physical_read_takes_a_ctid_window_with_the_filter_and_a_limit() {
        let read = sql().with_ctid().read_pages();
        assert!(
            read.ends_with(
                "(octet_length(\"id\") > 1048576) AS bgm_large, bgm_src.ctid AS bgm_ctid FROM \
                 \"public\".\"traces\" AS bgm_src WHERE bgm_src.ctid > $1::tid AND bgm_src.ctid < $2::tid AND \
                 (project_id = 'p') LIMIT $3::bigint"
            ),
            "{read}"
        );
    }

    #[test]
    fn the_catch_up_read_adds_the_horizon_before_the_limit_unless_every_row_is_read() {
        let sql = sql().with_ctid();
        let changed = sql.read_changed_pages(true);
        assert!(
            changed.ends_with(
                "WHERE bgm_src.ctid > $1::tid AND bgm_src.ctid < $2::tid AND age(bgm_src.xmin) <= \
                 age($3::text::xid) AND (project_id = 'p') LIMIT $4::bigint"
            ),
            "{changed}"
        );
        assert_eq!(sql.read_changed_pages(false), sql.read_pages());
    }

    #[test]
    fn a_row_holds_the_values_then_the_key_then_one_large_flag_then_the_ctid() {
        let sql = CopySql::new(
            &Relation::Table("t".into()),
            &[
                plan_column("a", "text", "String").unwrap(),
                plan_column("n", "integer", "Int32").unwrap(),
                plan_column("b", "jsonb", "String").unwrap(),
            ],
            &["n".into(), "a".into()],
            &["integer".into(), "text".into()],
            None,
        );
        let layout = sql.layout().clone();
        assert_eq!((layout.value(1), layout.key()), (1, 3..5));
        assert_eq!(layout.large_flag(), Some(5));
        assert!(sql.read(false).contains(
            "(octet_length(\"a\") > 1048576 OR (pg_column_size(\"b\") > 1048576 OR (pg_column_size(\"b\") > \
             65536 AND octet_length(\"b\"::text) > 1048576))) AS bgm_large FROM"
        ));
        assert_eq!(layout.ctid(), None);
        assert_eq!(sql.with_ctid().layout().ctid(), Some(6));
    }

    #[test]
    fn large_values_are_measured_and_sliced_by_key() {
        let column = plan_column("input", "jsonb", "String").unwrap();
        assert_eq!(
            sql().value_slice(&column),
            "SELECT substring(convert_to(\"input\"::text, 'UTF8') FROM $3::int FOR $4::int) FROM \
             \"public\".\"traces\" AS bgm_src WHERE (bgm_src.\"created_at\", bgm_src.\"id\") = \
             ($1::timestamp with time zone, $2::text)"
        );
    }

    #[test]
    fn large_values_of_a_query_source_are_sliced_from_the_same_query() {
        let sql = CopySql::new(
            &Relation::Query(
                "SELECT t.id, t.input || p.name AS input FROM t JOIN p USING (pid)".into(),
            ),
            &[
                plan_column("id", "bigint", "Int64").unwrap(),
                plan_column("input", "text", "String").unwrap(),
            ],
            &["id".into()],
            &["bigint".into()],
            None,
        );
        let column = plan_column("input", "text", "String").unwrap();
        assert_eq!(
            sql.value_length(&column),
            "SELECT octet_length(\"input\"::text) FROM (\nSELECT t.id, t.input || p.name AS input FROM t JOIN p USING \
             (pid)\n) AS bgm_src WHERE (bgm_src.\"id\") = ($1::bigint)"
        );
        assert!(sql.read(true).contains(
            "FROM (\nSELECT t.id, t.input || p.name AS input FROM t JOIN p USING (pid)\n) AS bgm_src WHERE \
             (bgm_src.\"id\") > ($1::bigint) ORDER BY bgm_src.\"id\" LIMIT $2::bigint"
        ));
    }
}
