//! Postgres → ClickHouse type mapping: which Postgres column may go into which ClickHouse column, how to read it,
//! and the message when it may not. Pure: unit-tested without a database.
//!
//! | Postgres | ClickHouse |
//! |---|---|
//! | any scalar type (text, varchar, json, jsonb, uuid, numeric, enums, ...) | `String` (read as `::text`) |
//! | `smallint` | `Int16`, `Int32`, `Int64`, `Float32`, `Float64` |
//! | `integer` | `Int32`, `Int64`, `Float64` |
//! | `bigint` | `Int64` |
//! | `real` | `Float32`, `Float64` |
//! | `double precision`, `numeric` | `Float64` |
//! | `boolean` | `UInt8`, `Bool` |
//! | `timestamp`, `timestamptz` | `DateTime`, `DateTime64(p)` (UTC) |
//! | `date` | `Date` |
//! | `T[]` | `Array(U)` where `T` → `U` |
//!
//! Each also into `Nullable(...)` of the same; `LowCardinality(T)` counts as `T`. A NULL into a column that is not
//! `Nullable` fails the batch naming the row's key and the column; a NULL array arrives as an empty array
//! (ClickHouse has no NULL arrays).

use crate::clickhouse::ChType;

/// How a value is read from the Postgres row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgRead {
    /// As text (the select list casts to `text` when needed).
    Text,
    /// `int2`.
    Int2,
    /// `int4`.
    Int4,
    /// `int8`.
    Int8,
    /// `float4`.
    Float4,
    /// `float8` (also `numeric`, cast in the select list).
    Float8,
    /// `bool`.
    Bool,
    /// `timestamp` (taken as UTC).
    Timestamp,
    /// `timestamptz`.
    TimestampTz,
    /// `date`.
    Date,
}

/// One copied column: how to select it, read it and write it.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPlan {
    /// The column name (same on both sides).
    pub name: String,
    /// The Postgres type, as `format_type` spells it.
    pub pg_type: String,
    /// The quoted column name.
    pub quoted: String,
    /// The value expression (`"col"` or `"col"::text`), unaliased.
    pub select: String,
    /// How the value is read.
    pub read: PgRead,
    /// Whether the value is an array.
    pub array: bool,
    /// The ClickHouse column's type.
    pub target: ChType,
}

impl ColumnPlan {
    /// Whether a large value of this column is read in slices rather than with its row (scalar text).
    pub fn sliced(&self) -> bool {
        self.read == PgRead::Text && !self.array
    }
}

/// The base type name without type modifiers: `character varying(255)[]` → `character varying[]`.
fn normalise(pg_type: &str) -> String {
    let mut out = String::with_capacity(pg_type.len());
    let mut depth = 0;
    for c in pg_type.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The read for a scalar Postgres type into a ClickHouse scalar type, or `None` when not allowed.
fn scalar_read(pg_base: &str, target: &ChType) -> Option<(PgRead, bool)> {
    use ChType::*;
    let read = match (pg_base, target) {
        (_, String) => return Some((PgRead::Text, true)),
        ("smallint", Int(16 | 32 | 64) | Float32 | Float64) => PgRead::Int2,
        ("integer", Int(32 | 64) | Float64) => PgRead::Int4,
        ("bigint", Int(64)) => PgRead::Int8,
        ("real", Float32 | Float64) => PgRead::Float4,
        ("double precision", Float64) => PgRead::Float8,
        ("numeric", Float64) => return Some((PgRead::Float8, true)),
        ("boolean", UInt(8) | Bool) => PgRead::Bool,
        ("timestamp without time zone", DateTime | DateTime64(_)) => PgRead::Timestamp,
        ("timestamp with time zone", DateTime | DateTime64(_)) => PgRead::TimestampTz,
        ("date", Date) => PgRead::Date,
        _ => return None,
    };
    Some((read, false))
}

/// The ClickHouse types a Postgres scalar type may go into, for messages.
fn allowed_targets(pg_base: &str) -> &'static str {
    match pg_base {
        "smallint" => "Int16, Int32, Int64, Float32, Float64, String",
        "integer" => "Int32, Int64, Float64, String",
        "bigint" => "Int64, String",
        "real" => "Float32, Float64, String",
        "double precision" | "numeric" => "Float64, String",
        "boolean" => "UInt8, Bool, String",
        "timestamp without time zone" | "timestamp with time zone" => {
            "DateTime, DateTime64(p), String"
        }
        "date" => "Date, String",
        _ => "String",
    }
}

/// Plans the copy of column `name` of Postgres type `pg_type` into a ClickHouse column of type `ch_type`; the
/// error names the column, both types and what is allowed.
pub fn plan_column(name: &str, pg_type: &str, ch_type: &str) -> Result<ColumnPlan, String> {
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let Some(target) = ChType::parse(ch_type) else {
        return Err(format!(
            "column {name}: the ClickHouse type {ch_type} is not one the copy can write (supported: String, \
             Int8..Int64, UInt8..UInt64, Float32, Float64, Bool, Date, DateTime, DateTime64, Nullable, Array, \
             LowCardinality)"
        ));
    };
    let base = normalise(pg_type);
    let (element, array) = match base.strip_suffix("[]") {
        Some(element) => (element.to_owned(), true),
        None => (base.clone(), false),
    };
    let target_element = match (array, target.non_null()) {
        (true, ChType::Array(inner)) => inner.non_null().clone(),
        (false, ChType::Array(_)) | (true, _) => {
            return Err(format!(
                "column {name}: Postgres type {pg_type} cannot be copied into ClickHouse type {ch_type} (an array \
                 goes into Array(...), a scalar into a scalar type)"
            ));
        }
        (false, scalar) => scalar.clone(),
    };
    let (read, cast) = scalar_read(&element, &target_element).ok_or_else(|| {
        let allowed = allowed_targets(&element);
        let allowed = if array {
            format!("Array of: {allowed} (String only for scalars)")
        } else {
            allowed.to_owned()
        };
        format!(
            "column {name}: Postgres type {pg_type} cannot be copied into ClickHouse type {ch_type} (allowed: \
             {allowed}; each may be Nullable)"
        )
    })?;
    let select = match (cast, read, array) {
        (false, _, _) => quoted.clone(),
        (true, PgRead::Float8, false) => format!("{quoted}::float8"),
        (true, PgRead::Float8, true) => format!("{quoted}::float8[]"),
        (true, _, false) => format!("{quoted}::text"),
        (true, _, true) => format!("{quoted}::text[]"),
    };
    Ok(ColumnPlan {
        name: name.to_owned(),
        pg_type: pg_type.to_owned(),
        quoted,
        select,
        read,
        array,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usual_types_map_and_casts_are_added_where_needed() {
        let jsonb = plan_column("input", "jsonb", "Nullable(String)").unwrap();
        assert_eq!(
            (jsonb.select.as_str(), jsonb.read),
            ("\"input\"::text", PgRead::Text)
        );
        let ts = plan_column("ts", "timestamp(3) with time zone", "DateTime64(3)").unwrap();
        assert_eq!(
            (ts.select.as_str(), ts.read),
            ("\"ts\"", PgRead::TimestampTz)
        );
        let cost = plan_column("cost", "numeric(12,4)", "Nullable(Float64)").unwrap();
        assert_eq!(cost.select, "\"cost\"::float8");
        let tags = plan_column("tags", "character varying(20)[]", "Array(String)").unwrap();
        assert_eq!(
            (tags.select.as_str(), tags.array),
            ("\"tags\"::text[]", true)
        );
        let ids = plan_column("ids", "bigint[]", "Array(Nullable(Int64))").unwrap();
        assert_eq!((ids.read, ids.array), (PgRead::Int8, true));
        assert!(plan_column("n", "integer", "LowCardinality(String)").is_ok());
    }

    #[test]
    fn an_unmappable_column_is_named_with_both_types_and_the_allowed_targets() {
        let err = plan_column("amount", "bigint", "Int32").unwrap_err();
        assert_eq!(
            err,
            "column amount: Postgres type bigint cannot be copied into ClickHouse type Int32 (allowed: Int64, \
             String; each may be Nullable)"
        );
        let err = plan_column("tags", "text[]", "String").unwrap_err();
        assert!(err.contains("an array goes into Array(...)"), "{err}");
        let err = plan_column("meta", "jsonb", "Map(String, String)").unwrap_err();
        assert!(
            err.contains("column meta: the ClickHouse type Map(String, String)"),
            "{err}"
        );
    }
}
