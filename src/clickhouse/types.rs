//! ClickHouse column types, parsed from `system.columns.type`, as far as the copy writes them.

/// A column type the `RowBinary` writer supports. `LowCardinality(T)` reads as `T` (same wire format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChType {
    /// `String`.
    String,
    /// `Int8` … `Int64` (bits).
    Int(u8),
    /// `UInt8` … `UInt64` (bits).
    UInt(u8),
    /// `Float32`.
    Float32,
    /// `Float64`.
    Float64,
    /// `Bool` (current servers; written as one byte, like `UInt8`).
    Bool,
    /// `Date`: days since 1970-01-01 as `UInt16`.
    Date,
    /// `DateTime` (optionally with a time zone): seconds since the epoch as `UInt32`.
    DateTime,
    /// `DateTime64(p)`: ticks of 10^-p seconds as `Int64` (not on 18.16).
    DateTime64(u8),
    /// `Nullable(T)`.
    Nullable(Box<ChType>),
    /// `Array(T)`.
    Array(Box<ChType>),
}

impl ChType {
    /// Parses a type as the server spells it; `None` for types the writer does not support.
    pub fn parse(text: &str) -> Option<ChType> {
        let text = text.trim();
        if let Some(inner) = wrapped(text, "Nullable") {
            return Some(ChType::Nullable(Box::new(ChType::parse(inner)?)));
        }
        if let Some(inner) = wrapped(text, "Array") {
            return Some(ChType::Array(Box::new(ChType::parse(inner)?)));
        }
        if let Some(inner) = wrapped(text, "LowCardinality") {
            return ChType::parse(inner);
        }
        if let Some(args) = wrapped(text, "DateTime64") {
            let precision = args.split(',').next()?.trim().parse().ok()?;
            return (precision <= 9).then_some(ChType::DateTime64(precision));
        }
        if wrapped(text, "DateTime").is_some() {
            return Some(ChType::DateTime);
        }
        Some(match text {
            "String" => ChType::String,
            "Int8" => ChType::Int(8),
            "Int16" => ChType::Int(16),
            "Int32" => ChType::Int(32),
            "Int64" => ChType::Int(64),
            "UInt8" => ChType::UInt(8),
            "UInt16" => ChType::UInt(16),
            "UInt32" => ChType::UInt(32),
            "UInt64" => ChType::UInt(64),
            "Float32" => ChType::Float32,
            "Float64" => ChType::Float64,
            "Bool" => ChType::Bool,
            "Date" => ChType::Date,
            "DateTime" => ChType::DateTime,
            _ => return None,
        })
    }

    /// The type without an outer `Nullable`.
    pub fn non_null(&self) -> &ChType {
        match self {
            ChType::Nullable(inner) => inner,
            other => other,
        }
    }
}

fn wrapped<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.strip_prefix(name)?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_parameterised_types_parse() {
        assert_eq!(
            ChType::parse("Array(Nullable(String))"),
            Some(ChType::Array(Box::new(ChType::Nullable(Box::new(
                ChType::String
            )))))
        );
        assert_eq!(ChType::parse("DateTime('UTC')"), Some(ChType::DateTime));
        assert_eq!(
            ChType::parse("DateTime64(3, 'UTC')"),
            Some(ChType::DateTime64(3))
        );
        assert_eq!(
            ChType::parse("LowCardinality(String)"),
            Some(ChType::String)
        );
        assert_eq!(ChType::parse("Map(String, String)"), None);
        assert_eq!(ChType::parse("Decimal(18, 4)"), None);
    }
}
