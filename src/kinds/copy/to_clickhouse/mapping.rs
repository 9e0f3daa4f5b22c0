//! Postgres → ClickHouse type mapping: which Postgres column may go into which ClickHouse column, how to read it,
//! and the message when it may not. Pure: unit-tested without a database.
//!
//! | Postgres | ClickHouse |
//! |---|---|
//! | any scalar type (text, varchar, json, jsonb, uuid, numeric, enums, ...) | `String` (read as `::text`) |
//! | `smallint` | `Int16`, `Int32`, `Int64`, `Float32`, `Float64` |
//! | `integer` | `Int32`, `Int64`, `Float64` |
//! | `bigint` | `Int64` |
//! | `smallint`, `integer`, `bigint` | `Int*`/`UInt*` at least as wide, up to 256 bits (a negative value into `UInt*` fails) |
//! | `numeric` | any `Int*`/`UInt*` (each value range-checked) |
//! | `smallint`, `integer`, `bigint`, `numeric` | `Decimal(P, S)`: exact, via text; a value that does not fit fails |
//! | `real` | `Float32`, `Float64` |
//! | `double precision`, `numeric` | `Float64` |
//! | `boolean` | `UInt8`, `Bool` |
//! | `uuid`, text | `UUID` |
//! | `inet`, text | `IPv4`, `IPv6` (a host address; a network mask is refused) |
//! | `json`, `jsonb`, text | `Map(String, V)`, V one of `String`, integers, floats, `Decimal`, `Bool`, each maybe `Nullable` |
//! | any scalar type (its text) | `Enum8`, `Enum16` (by name), `FixedString(N)` (zero-padded) |
//! | `timestamp`, `timestamptz`, `date` | `DateTime([zone])`, `DateTime64(p[, zone])` |
//! | `date` | `Date`, `Date32` |
//! | `T[]` | `Array(U)` where `T` → `U` |
//!
//! Each also into `Nullable(...)` of the same; `LowCardinality(T)` counts as `T`. A NULL into a column that is not
//! `Nullable` fails the batch naming the row's key and the column; a NULL array arrives as an empty array
//! (ClickHouse has no NULL arrays). A `timestamp` (without zone) or `date` into a column with a zone other than UTC
//! is read as that zone's wall-clock time (`AT TIME ZONE`), as ClickHouse reads a text timestamp; elsewhere it is
//! taken as UTC. `DateTime64(p)` keeps p digits of the second and drops the rest, as ClickHouse's own casts do.

use super::from_text;
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
    /// The source column's type, for messages: the Postgres type as `format_type` spells it, or `SQLite` and the
    /// declared type.
    pub source_type: String,
    /// The quoted column name.
    pub quoted: String,
    /// The value expression (`"col"` or `"col"::text`), unaliased.
    pub select: String,
    /// How the Postgres reader reads the value (the SQLite reader reads each value by its storage class instead,
    /// see [`super::sqlite_values`]).
    pub read: PgRead,
    /// Whether the Postgres value is an array.
    pub array: bool,
    /// The ClickHouse column's type.
    pub target: ChType,
}

impl ColumnPlan {
    /// Whether the Postgres column is plain text (`text`, `varchar`, `char`), whose byte length is its size as
    /// sent.
    pub fn text_source(&self) -> bool {
        TEXT_TYPES.contains(&normalise(&self.source_type).as_str())
    }

    /// Whether a large value of this column is read in slices rather than with its row (scalar text into String).
    pub fn sliced(&self) -> bool {
        self.read == PgRead::Text && !self.array && *self.target.non_null() == ChType::String
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

/// How the select list reads a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Select<'z> {
    /// The column as it is.
    Plain,
    /// Cast to text.
    Text,
    /// Cast to float8.
    Float8,
    /// A date cast to timestamp (midnight).
    Timestamp,
    /// A `timestamp` (or a date at midnight) taken as wall-clock time in this zone: a `timestamptz`.
    Zoned(&'z str),
}

const TEXT_TYPES: [&str; 3] = ["text", "character varying", "character"];
const INTEGER_TYPES: [&str; 4] = ["smallint", "integer", "bigint", "numeric"];

/// The bits of a Postgres integer type (`numeric`: any size, 0).
fn integer_bits(pg_base: &str) -> Option<u16> {
    match pg_base {
        "smallint" => Some(16),
        "integer" => Some(32),
        "bigint" => Some(64),
        "numeric" => Some(0),
        _ => None,
    }
}

/// The zone a naive timestamp must be read in for this column, if not UTC.
fn zone_of(target: &ChType) -> Option<&str> {
    match target {
        ChType::DateTime(Some(zone)) | ChType::DateTime64(_, Some(zone)) if zone != "UTC" => {
            Some(zone)
        }
        _ => None,
    }
}

/// The read for a scalar Postgres type into a ClickHouse scalar type, or `None` when not allowed.
fn scalar_read<'t>(pg_base: &str, target: &'t ChType) -> Option<(PgRead, Select<'t>)> {
    use ChType::*;
    let texty = TEXT_TYPES.contains(&pg_base);
    let read = match (pg_base, target) {
        (_, String | Enum { .. } | FixedString(_)) => return Some((PgRead::Text, Select::Text)),
        ("smallint", Int(16 | 32 | 64) | Float32 | Float64) => PgRead::Int2,
        ("integer", Int(32 | 64) | Float64) => PgRead::Int4,
        ("bigint", Int(64)) => PgRead::Int8,
        (_, Decimal { .. }) if INTEGER_TYPES.contains(&pg_base) => {
            return Some((PgRead::Text, Select::Text));
        }
        // Through text, exact: every integer into one at least as wide (a negative value into UInt* fails the
        // batch naming it), numeric into any (each value range-checked).
        (_, Int(bits) | UInt(bits)) if integer_bits(pg_base).is_some_and(|b| *bits >= b) => {
            return Some((PgRead::Text, Select::Text));
        }
        ("real", Float32 | Float64) => PgRead::Float4,
        ("double precision", Float64) => PgRead::Float8,
        ("numeric", Float64) => return Some((PgRead::Float8, Select::Float8)),
        ("boolean", UInt(8) | Bool) => PgRead::Bool,
        ("uuid", Uuid) | ("inet", Ipv4 | Ipv6) | ("json" | "jsonb", Map(..)) => {
            return Some((PgRead::Text, Select::Text));
        }
        (_, Uuid | Ipv4 | Ipv6 | Map(..)) if texty => return Some((PgRead::Text, Select::Text)),
        ("timestamp without time zone", DateTime(_) | DateTime64(..)) => match zone_of(target) {
            Some(zone) => return Some((PgRead::TimestampTz, Select::Zoned(zone))),
            None => PgRead::Timestamp,
        },
        ("date", DateTime(_) | DateTime64(..)) => {
            return Some(match zone_of(target) {
                Some(zone) => (PgRead::TimestampTz, Select::Zoned(zone)),
                None => (PgRead::Timestamp, Select::Timestamp),
            });
        }
        ("timestamp with time zone", DateTime(_) | DateTime64(..)) => PgRead::TimestampTz,
        ("date", Date | Date32) => PgRead::Date,
        _ => return None,
    };
    Some((read, Select::Plain))
}

/// The ClickHouse types a Postgres scalar type may go into, for messages.
fn allowed_targets(pg_base: &str) -> &'static str {
    match pg_base {
        "smallint" => {
            "Int16..Int256, UInt16..UInt256, Float32, Float64, Decimal, Enum, FixedString, String"
        }
        "integer" => "Int32..Int256, UInt32..UInt256, Float64, Decimal, Enum, FixedString, String",
        "bigint" => "Int64..Int256, UInt64..UInt256, Decimal, Enum, FixedString, String",
        "numeric" => "Float64, any Int/UInt, Decimal, Enum, FixedString, String",
        "real" => "Float32, Float64, Enum, FixedString, String",
        "double precision" => "Float64, Enum, FixedString, String",
        "boolean" => "UInt8, Bool, Enum, FixedString, String",
        "timestamp without time zone" | "timestamp with time zone" => {
            "DateTime, DateTime64(p), Enum, FixedString, String"
        }
        "date" => "Date, Date32, DateTime, DateTime64(p), Enum, FixedString, String",
        "uuid" => "UUID, Enum, FixedString, String",
        "inet" => "IPv4, IPv6, Enum, FixedString, String",
        "json" | "jsonb" => "Map(String, V), Enum, FixedString, String",
        "text" | "character varying" | "character" => {
            "UUID, IPv4, IPv6, Map(String, V), Enum, FixedString, String"
        }
        _ => "Enum, FixedString, String",
    }
}

/// Why a `Map` target cannot be written, if it cannot.
pub(super) fn map_refusal(target: &ChType) -> Option<String> {
    match target {
        ChType::Map(key, value) => {
            if **key != ChType::String {
                Some(format!(
                    "a Map's keys must be String (JSON object keys), not {key}"
                ))
            } else if !from_text::map_value_supported(value) {
                Some(format!(
                    "a Map's values must be String, an integer, a float, Decimal or Bool (maybe Nullable), not                      {value}"
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// `"name"`, quoted for a select list.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The ClickHouse column type `ch_type` of column `name`; the error names the column and the supported types.
pub(super) fn parse_target(name: &str, ch_type: &str) -> Result<ChType, String> {
    ChType::parse(ch_type).map_err(|reason| {
        format!(
            "column {name}: {reason} (supported: String, FixedString, Int8..Int256, UInt8..UInt256, Float32, \
             Float64, Decimal, Bool, UUID, IPv4, IPv6, Enum8, Enum16, Date, Date32, DateTime, DateTime64, Map, \
             Nullable, Array, LowCardinality)"
        )
    })
}

/// Plans the copy of column `name` of Postgres type `pg_type` into a ClickHouse column of type `ch_type`; the
/// error names the column, both types and what is allowed.
pub fn plan_column(name: &str, pg_type: &str, ch_type: &str) -> Result<ColumnPlan, String> {
    let quoted = quote(name);
    let target = parse_target(name, ch_type)?;
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
    if let Some(reason) = map_refusal(&target_element) {
        return Err(format!("column {name}: {reason}"));
    }
    let (read, select) = scalar_read(&element, &target_element).ok_or_else(|| {
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
    let brackets = if array { "[]" } else { "" };
    let select = match select {
        Select::Plain => quoted.clone(),
        Select::Text => format!("{quoted}::text{brackets}"),
        Select::Float8 => format!("{quoted}::float8{brackets}"),
        Select::Timestamp => format!("{quoted}::timestamp{brackets}"),
        Select::Zoned(_) if array => {
            return Err(format!(
                "column {name}: an array of {element} into {ch_type} would need each element read in the zone \
                 of the column; copy it into a column without a zone, or in UTC"
            ));
        }
        Select::Zoned(zone) => format!(
            "({quoted}::timestamp AT TIME ZONE '{}')",
            zone.replace('\'', "''")
        ),
    };
    Ok(ColumnPlan {
        name: name.to_owned(),
        source_type: pg_type.to_owned(),
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
        let cost = plan_column("cost", "numeric(65,30)", "Nullable(Decimal(18, 12))").unwrap();
        assert_eq!(
            (cost.select.as_str(), cost.read),
            ("\"cost\"::text", PgRead::Text)
        );
        assert!(!cost.sliced());
        let meta = plan_column("m", "jsonb", "Map(LowCardinality(String), String)").unwrap();
        assert_eq!(meta.select, "\"m\"::text");
        let local = plan_column(
            "t",
            "timestamp(3) without time zone",
            "DateTime64(3, 'Europe/Berlin')",
        )
        .unwrap();
        assert_eq!(
            (local.select.as_str(), local.read),
            (
                "(\"t\"::timestamp AT TIME ZONE 'Europe/Berlin')",
                PgRead::TimestampTz
            )
        );
        let day = plan_column("d", "date", "DateTime('UTC')").unwrap();
        assert_eq!(
            (day.select.as_str(), day.read),
            ("\"d\"::timestamp", PgRead::Timestamp)
        );
        assert!(plan_column("id", "uuid", "UUID").is_ok());
        assert!(plan_column("ip", "inet", "Nullable(IPv6)").is_ok());
        assert!(plan_column("n", "bigint", "UInt256").is_ok());
        assert!(plan_column("kind", "observation_type", "Enum8('SPAN' = 1)").is_ok());
    }

    #[test]
    fn an_unmappable_column_is_named_with_both_types_and_the_allowed_targets() {
        let err = plan_column("amount", "bigint", "Int32").unwrap_err();
        assert_eq!(
            err,
            "column amount: Postgres type bigint cannot be copied into ClickHouse type Int32 (allowed: \
             Int64..Int256, UInt64..UInt256, Decimal, Enum, FixedString, String; each may be Nullable)"
        );
        let err = plan_column("tags", "text[]", "String").unwrap_err();
        assert!(err.contains("an array goes into Array(...)"), "{err}");
        let err = plan_column("meta", "jsonb", "JSON").unwrap_err();
        assert!(
            err.contains("column meta: the ClickHouse type JSON"),
            "{err}"
        );
        let err = plan_column("meta", "jsonb", "Map(UInt8, String)").unwrap_err();
        assert!(err.contains("keys must be String"), "{err}");
    }
}
