//! Key ranges inside one partition, for chunks that did not fit in `maxMemoryUsage` as a whole partition: rows are
//! ordered by the source's sorting key (a tuple of expressions), a range is `key > after AND key <= upto`, and its
//! upper bound is the key `rows` rows on — read with only the key columns, so finding it costs little memory.
//!
//! Ranges are closed on the key, not on a row count: rows that share a key (a MergeTree key is not unique) always
//! land in the same range, so every row is rewritten exactly once. Keys travel through the checkpoint as text and
//! come back as `CAST('text', 'Type')` literals — quoted, never spliced — in the server's own text format.

use crate::clickhouse::{ClickHouse, ClickHouseError, quote_ident, quote_literal};

/// The source's sorting key: its expressions and their types.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KeyOrder {
    expressions: Vec<String>,
    types: Vec<String>,
}

/// Splits a sorting key (`toDate(ts), intHash32(a, b)`) at its top-level commas.
pub(super) fn split_key(sorting_key: &str) -> Vec<String> {
    let (mut parts, mut current, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, None);
    for c in sorting_key.chars() {
        match (quoted, c) {
            (Some(q), c) if c == q => quoted = None,
            (Some(_), _) => {}
            (None, '\'' | '`' | '"') => quoted = Some(c),
            (None, '(' | '[') => depth += 1,
            (None, ')' | ']') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(std::mem::take(&mut current).trim().to_owned());
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current.trim().to_owned());
    parts.retain(|p| !p.is_empty());
    parts
}

impl KeyOrder {
    /// The sorting key of `table` with the types of its expressions; `None` when the table has none (`tuple()`).
    pub(super) async fn of(
        clickhouse: &ClickHouse,
        table: &str,
        sorting_key: &str,
    ) -> Result<Option<KeyOrder>, ClickHouseError> {
        let expressions = split_key(sorting_key);
        if expressions.is_empty() {
            return Ok(None);
        }
        let types: Vec<String> = expressions
            .iter()
            .map(|e| format!("toTypeName({e})"))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} LIMIT 1",
            types.join(", "),
            quote_ident(table)
        );
        let row = clickhouse.query_rows(&sql).await?.into_iter().next();
        Ok(row.map(|types| KeyOrder { expressions, types }))
    }

    fn tuple(&self) -> String {
        format!("({})", self.expressions.join(", "))
    }

    fn literal(&self, key: &[String]) -> String {
        let values: Vec<String> = key
            .iter()
            .zip(&self.types)
            .map(|(value, ty)| format!("CAST({}, {})", quote_literal(value), quote_literal(ty)))
            .collect();
        format!("({})", values.join(", "))
    }

    /// ` AND key > after AND key <= upto`, each part only when given.
    pub(super) fn condition(&self, after: Option<&[String]>, upto: Option<&[String]>) -> String {
        let mut out = String::new();
        if let Some(after) = after {
            out += &format!(" AND {} > {}", self.tuple(), self.literal(after));
        }
        if let Some(upto) = upto {
            out += &format!(" AND {} <= {}", self.tuple(), self.literal(upto));
        }
        out
    }

    /// The key `rows` rows after `after` (up to `upto`) in `partition` of `table`: the range's upper bound, `None`
    /// when fewer rows are left (the range runs to the partition's end, or to `upto`).
    pub(super) fn bound_query(
        &self,
        table: &str,
        partition: &str,
        after: Option<&[String]>,
        upto: Option<&[String]>,
        rows: u64,
    ) -> String {
        format!(
            "SELECT {} FROM {} WHERE _partition_id = {}{} ORDER BY {} LIMIT 1 OFFSET {}",
            self.expressions.join(", "),
            quote_ident(table),
            quote_literal(partition),
            self.condition(after, upto),
            self.expressions.join(", "),
            rows.saturating_sub(1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sorting_key_splits_at_top_level_commas_only() {
        assert_eq!(split_key("id"), ["id"]);
        assert_eq!(
            split_key("toDate(ts), intHash32(a, b), `we,ird`"),
            ["toDate(ts)", "intHash32(a, b)", "`we,ird`"]
        );
        assert!(split_key("").is_empty());
    }

    #[test]
    fn a_range_compares_the_key_tuple_with_quoted_typed_literals() {
        let order = KeyOrder {
            expressions: vec!["project".into(), "id".into()],
            types: vec!["UInt64".into(), "String".into()],
        };
        let after = ["7".to_owned(), "it's".to_owned()];
        let upto = ["9".to_owned(), "z".to_owned()];
        assert_eq!(
            order.condition(Some(&after), Some(&upto)),
            " AND (project, id) > (CAST('7', 'UInt64'), CAST('it\\'s', 'String')) \
             AND (project, id) <= (CAST('9', 'UInt64'), CAST('z', 'String'))"
        );
        assert_eq!(
            order.bound_query("t", "202409", None, None, 1000),
            "SELECT project, id FROM `t` WHERE _partition_id = '202409' ORDER BY project, id LIMIT 1 OFFSET 999"
        );
        assert!(
            order
                .bound_query("t", "202409", Some(&after), Some(&upto), 10)
                .contains(&order.condition(Some(&after), Some(&upto))),
            "within a range that ends inside the partition"
        );
    }
}
