//! The keyset read both copy writers share: `SELECT <select> FROM <table or (query)> AS bgm_src WHERE (<key>) >
//! (<cursor>) [AND (<where>)] ORDER BY bgm_src.<key> LIMIT <batchSize>`, in the source's dialect, and the check
//! that the rows read have a non-NULL key that strictly increases. Pure.

use super::spec::Relation;
use crate::migration::MigrationError;
use crate::store::Dialect;

/// A source table (or query) walked in key order.
#[derive(Debug, Clone)]
pub struct Keyset {
    dialect: Dialect,
    source: String,
    /// The key columns' names, for messages.
    key_names: Vec<String>,
    /// The key columns, qualified and quoted.
    keys: Vec<String>,
    key_types: Vec<String>,
    filter: Option<String>,
}

impl Keyset {
    /// `keys` are column names; `key_types` their types in the source (to cast the text cursor back).
    pub fn new(
        dialect: Dialect,
        source: &Relation,
        keys: &[String],
        key_types: &[String],
        filter: Option<&str>,
    ) -> Self {
        Self {
            dialect,
            source: source.sql(dialect),
            key_names: keys.to_vec(),
            keys: keys
                .iter()
                .map(|k| format!("bgm_src.{}", dialect.quote_ident(k)))
                .collect(),
            key_types: key_types.to_vec(),
            filter: filter.map(|f| format!("({f})")),
        }
    }

    /// The key columns, qualified (`bgm_src."id"`).
    pub fn keys(&self) -> &[String] {
        &self.keys
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

    /// The read of the next batch. Params: the cursor (if any), one text per key column, then the row limit.
    pub fn read(&self, select: &str, has_lower: bool) -> String {
        let (bounds, next) = self.key_bounds(has_lower, false);
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

    /// The key `n` rows after the cursor (the filter ignored), as text. Params: the cursor (if any), then `n - 1`.
    pub fn key_after(&self, has_lower: bool) -> String {
        let (bounds, next) = self.key_bounds(has_lower, false);
        let texts: Vec<String> = self.keys.iter().map(|k| self.dialect.as_text(k)).collect();
        let tail = format!(
            " ORDER BY {} OFFSET {} LIMIT 1",
            self.keys.join(", "),
            self.dialect.param(next, "bigint")
        );
        self.select(&texts.join(", "), &bounds, &tail)
    }

    /// `(key) > cursor` and/or `(key) <= upper`, bound from parameter 1 on; returns them and the next parameter.
    fn key_bounds(&self, has_lower: bool, has_upper: bool) -> (Vec<String>, usize) {
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

    /// `conditions` and the definition's `where` filter.
    pub fn filtered(&self, mut conditions: Vec<String>) -> Vec<String> {
        conditions.extend(self.filter.clone());
        conditions
    }

    /// `SELECT <select> FROM <source> AS bgm_src [WHERE <conditions, joined by AND>]<tail>`.
    pub fn select(&self, select: &str, conditions: &[String], tail: &str) -> String {
        let clause = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        format!(
            "SELECT {select} FROM {} AS bgm_src{clause}{tail}",
            self.source
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
                    MigrationError::Invalid(format!(
                        "the source has a row whose key column {name} is NULL{}; the copy needs a NOT NULL \
                         key: filter such rows out (where = \"{name} IS NOT NULL\") or choose another key",
                        after()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if previous == Some(key.as_slice()) {
            return Err(MigrationError::Invalid(format!(
                "the source has two rows with the key ({}) = ({}); the copy needs a key unique in the source (for \
                 from.query: in the query's result)",
                self.key_names.join(", "),
                key.join(", ")
            )));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyset() -> Keyset {
        Keyset::new(
            Dialect::Postgres,
            &Relation::Query("SELECT t.id, t.n FROM t".into()),
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
        assert_eq!(
            keyset().key_after(false),
            "SELECT bgm_src.\"id\"::text FROM (\nSELECT t.id, t.n FROM t\n) AS bgm_src ORDER BY bgm_src.\"id\" \
             OFFSET $1::bigint LIMIT 1"
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
}
