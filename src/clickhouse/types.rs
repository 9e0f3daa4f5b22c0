//! ClickHouse column types, parsed from `system.columns.type` as 18.16 and current servers spell them
//! (`DateTime64(3, 'UTC')`, `Map(LowCardinality(String), Decimal(18, 12))`, `Enum8('a' = 1, 'b' = 2)`), as far as
//! the copy writes them. [`ChType`]'s `Display` spells a type back the way current servers do.

use std::fmt;

/// A column type the `RowBinary` writer supports. `LowCardinality(T)` reads as `T`: its `RowBinary` form is `T`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChType {
    /// `String`.
    String,
    /// `FixedString(N)`: exactly N bytes, zero-padded.
    FixedString(usize),
    /// `Int8` … `Int256` (bits).
    Int(u16),
    /// `UInt8` … `UInt256` (bits).
    UInt(u16),
    /// `Float32`.
    Float32,
    /// `Float64`.
    Float64,
    /// `Bool` (current servers; one byte).
    Bool,
    /// `Decimal(P, S)` (and `Decimal32(S)` … `Decimal256(S)`): the value times 10^S as a little-endian integer of
    /// 4, 8, 16 or 32 bytes by precision.
    Decimal {
        /// Total digits, 1..=76.
        precision: u8,
        /// Digits after the point, 0..=precision.
        scale: u8,
    },
    /// `UUID`: two little-endian `u64` halves.
    Uuid,
    /// `IPv4`: the address as a little-endian `u32`.
    Ipv4,
    /// `IPv6`: 16 bytes in network order.
    Ipv6,
    /// `Enum8(...)` (bits 8) or `Enum16(...)` (bits 16): the name → number pairs.
    Enum {
        /// 8 or 16.
        bits: u8,
        /// Each name and its number.
        values: Vec<(String, i16)>,
    },
    /// `Date`: days since 1970-01-01 as `UInt16`.
    Date,
    /// `Date32`: days since 1970-01-01 as `Int32` (current servers).
    Date32,
    /// `DateTime([zone])`: seconds since the epoch as `UInt32`; the zone only changes how it is shown.
    DateTime(Option<String>),
    /// `DateTime64(p[, zone])`: ticks of 10^-p seconds since the epoch as `Int64`.
    DateTime64(u8, Option<String>),
    /// `Nullable(T)`.
    Nullable(Box<ChType>),
    /// `Array(T)`.
    Array(Box<ChType>),
    /// `Map(K, V)`: like `Array(Tuple(K, V))`.
    Map(Box<ChType>, Box<ChType>),
}

impl ChType {
    /// Parses a type as the server spells it; the error says why the writer does not support it.
    pub fn parse(text: &str) -> Result<ChType, String> {
        let text = text.trim();
        let (name, args) = match text.find('(') {
            Some(open) if text.ends_with(')') => (
                text[..open].trim(),
                Some(split_args(&text[open + 1..text.len() - 1])?),
            ),
            _ => (text, None),
        };
        let one = |args: &Option<Vec<&str>>| -> Result<ChType, String> {
            match args.as_deref() {
                Some([inner]) => ChType::parse(inner),
                _ => Err(format!("{text} should have one type argument")),
            }
        };
        let number = |arg: Option<&&str>| -> Result<u32, String> {
            arg.and_then(|a| a.trim().parse().ok())
                .ok_or_else(|| format!("{text} has no number where one is expected"))
        };
        Ok(match (name, &args) {
            ("Nullable", _) => ChType::Nullable(Box::new(one(&args)?)),
            ("Array", _) => ChType::Array(Box::new(one(&args)?)),
            ("LowCardinality", _) => one(&args)?,
            ("Map", Some(kv)) if kv.len() == 2 => ChType::Map(
                Box::new(ChType::parse(kv[0])?),
                Box::new(ChType::parse(kv[1])?),
            ),
            ("FixedString", Some(a)) => ChType::FixedString(number(a.first())? as usize),
            ("Decimal", Some(a)) => {
                let precision = number(a.first())?;
                let scale = if a.len() > 1 { number(a.get(1))? } else { 0 };
                decimal(text, precision, scale)?
            }
            ("Decimal32" | "Decimal64" | "Decimal128" | "Decimal256", Some(a)) => {
                let precision = match name {
                    "Decimal32" => 9,
                    "Decimal64" => 18,
                    "Decimal128" => 38,
                    _ => 76,
                };
                decimal(text, precision, number(a.first())?)?
            }
            ("Enum8" | "Enum16", Some(a)) => ChType::Enum {
                bits: if name == "Enum8" { 8 } else { 16 },
                values: a
                    .iter()
                    .map(|pair| {
                        enum_pair(pair).ok_or_else(|| format!("{text}: cannot read {pair}"))
                    })
                    .collect::<Result<_, _>>()?,
            },
            ("DateTime", Some(a)) => ChType::DateTime(zone(a.first()).map(str::to_owned)),
            ("DateTime64", Some(a)) => {
                let precision = number(a.first())?;
                if precision > 9 {
                    return Err(format!("{text}: precision above 9"));
                }
                ChType::DateTime64(precision as u8, zone(a.get(1)).map(str::to_owned))
            }
            ("JSON" | "Object", _) => {
                return Err(format!(
                    "the ClickHouse type {text} is not written by the copy: its RowBinary form depends on the \
                     server's version and settings, so it could not be checked to arrive unchanged; copy json/jsonb \
                     into String, or into Map(String, V) for flat objects"
                ));
            }
            (_, Some(_)) => {
                return Err(format!(
                    "the ClickHouse type {text} is not one the copy can write"
                ));
            }
            (scalar, None) => match scalar {
                "String" => ChType::String,
                "Int8" => ChType::Int(8),
                "Int16" => ChType::Int(16),
                "Int32" => ChType::Int(32),
                "Int64" => ChType::Int(64),
                "Int128" => ChType::Int(128),
                "Int256" => ChType::Int(256),
                "UInt8" => ChType::UInt(8),
                "UInt16" => ChType::UInt(16),
                "UInt32" => ChType::UInt(32),
                "UInt64" => ChType::UInt(64),
                "UInt128" => ChType::UInt(128),
                "UInt256" => ChType::UInt(256),
                "Float32" => ChType::Float32,
                "Float64" => ChType::Float64,
                "Bool" => ChType::Bool,
                "UUID" => ChType::Uuid,
                "IPv4" => ChType::Ipv4,
                "IPv6" => ChType::Ipv6,
                "Date" => ChType::Date,
                "Date32" => ChType::Date32,
                "DateTime" => ChType::DateTime(None),
                _ => {
                    return Err(format!(
                        "the ClickHouse type {text} is not one the copy can write"
                    ));
                }
            },
        })
    }

    /// The type without an outer `Nullable`.
    pub fn non_null(&self) -> &ChType {
        match self {
            ChType::Nullable(inner) => inner,
            other => other,
        }
    }

    /// Bytes of a fixed-width value of this type, `None` for strings, arrays, maps and `Nullable`.
    pub fn fixed_width(&self) -> Option<usize> {
        Some(match self {
            ChType::Int(bits) | ChType::UInt(bits) => usize::from(*bits) / 8,
            ChType::Bool => 1,
            ChType::Enum { bits, .. } => usize::from(*bits) / 8,
            ChType::Date => 2,
            ChType::Float32 | ChType::DateTime(_) | ChType::Date32 | ChType::Ipv4 => 4,
            ChType::Float64 | ChType::DateTime64(..) => 8,
            ChType::Uuid | ChType::Ipv6 => 16,
            ChType::Decimal { precision, .. } => decimal_width(*precision),
            ChType::FixedString(n) => *n,
            ChType::String | ChType::Nullable(_) | ChType::Array(_) | ChType::Map(..) => {
                return None;
            }
        })
    }
}

/// The bytes of a `Decimal` of this precision.
pub fn decimal_width(precision: u8) -> usize {
    match precision {
        0..=9 => 4,
        10..=18 => 8,
        19..=38 => 16,
        _ => 32,
    }
}

fn decimal(text: &str, precision: u32, scale: u32) -> Result<ChType, String> {
    if !(1..=76).contains(&precision) || scale > precision {
        return Err(format!(
            "{text}: precision must be 1..76 and scale at most the precision"
        ));
    }
    Ok(ChType::Decimal {
        precision: precision as u8,
        scale: scale as u8,
    })
}

/// A zone argument `'UTC'`, unquoted.
fn zone<'a>(arg: Option<&&'a str>) -> Option<&'a str> {
    let arg = arg?.trim();
    arg.strip_prefix('\'')?.strip_suffix('\'')
}

/// `'name' = 1` → (name, 1), with `\'` and `\\` unescaped.
fn enum_pair(pair: &str) -> Option<(String, i16)> {
    let (quoted, number) = pair.trim().rsplit_once('=')?;
    let quoted = quoted.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    let mut name = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        name.push(if c == '\\' { chars.next()? } else { c });
    }
    Some((name, number.trim().parse().ok()?))
}

/// Splits type arguments at top-level commas, respecting parentheses and quoted strings.
fn split_args(args: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0);
    for (i, c) in args.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(args[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 || quoted {
        return Err(format!("unbalanced type arguments: {args}"));
    }
    parts.push(args[start..].trim());
    Ok(parts)
}

impl fmt::Display for ChType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChType::String => write!(f, "String"),
            ChType::FixedString(n) => write!(f, "FixedString({n})"),
            ChType::Int(bits) => write!(f, "Int{bits}"),
            ChType::UInt(bits) => write!(f, "UInt{bits}"),
            ChType::Float32 => write!(f, "Float32"),
            ChType::Float64 => write!(f, "Float64"),
            ChType::Bool => write!(f, "Bool"),
            ChType::Decimal { precision, scale } => write!(f, "Decimal({precision}, {scale})"),
            ChType::Uuid => write!(f, "UUID"),
            ChType::Ipv4 => write!(f, "IPv4"),
            ChType::Ipv6 => write!(f, "IPv6"),
            ChType::Enum { bits, values } => {
                write!(f, "Enum{bits}(")?;
                for (i, (name, n)) in values.iter().enumerate() {
                    let sep = if i > 0 { ", " } else { "" };
                    let name = name.replace('\\', "\\\\").replace('\'', "\\'");
                    write!(f, "{sep}'{name}' = {n}")?;
                }
                write!(f, ")")
            }
            ChType::Date => write!(f, "Date"),
            ChType::Date32 => write!(f, "Date32"),
            ChType::DateTime(None) => write!(f, "DateTime"),
            ChType::DateTime(Some(zone)) => write!(f, "DateTime('{zone}')"),
            ChType::DateTime64(p, None) => write!(f, "DateTime64({p})"),
            ChType::DateTime64(p, Some(zone)) => write!(f, "DateTime64({p}, '{zone}')"),
            ChType::Nullable(inner) => write!(f, "Nullable({inner})"),
            ChType::Array(inner) => write!(f, "Array({inner})"),
            ChType::Map(k, v) => write!(f, "Map({k}, {v})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> String {
        ChType::parse(text).unwrap().to_string()
    }

    #[test]
    fn nested_and_parameterised_types_parse() {
        assert_eq!(
            ChType::parse("Array(Nullable(String))"),
            Ok(ChType::Array(Box::new(ChType::Nullable(Box::new(
                ChType::String
            )))))
        );
        assert_eq!(parsed("DateTime('UTC')"), "DateTime('UTC')");
        assert_eq!(parsed("DateTime64(3, 'UTC')"), "DateTime64(3, 'UTC')");
        assert_eq!(parsed("DateTime64(6)"), "DateTime64(6)");
        assert_eq!(parsed("LowCardinality(String)"), "String");
        assert_eq!(
            parsed("LowCardinality(Nullable(String))"),
            "Nullable(String)"
        );
        assert_eq!(parsed("Decimal(18, 12)"), "Decimal(18, 12)");
        assert_eq!(parsed("Decimal64(12)"), "Decimal(18, 12)");
        assert_eq!(parsed("Decimal256(20)"), "Decimal(76, 20)");
        assert_eq!(
            parsed("Map(LowCardinality(String), Decimal(18, 12))"),
            "Map(String, Decimal(18, 12))"
        );
        assert_eq!(parsed("Int256"), "Int256");
        assert_eq!(parsed("UUID"), "UUID");
        assert_eq!(parsed("FixedString(16)"), "FixedString(16)");
    }

    #[test]
    fn enum_names_may_hold_commas_quotes_and_parentheses() {
        let ty = ChType::parse(r"Enum8('a, b' = 1, 'it\'s (x)' = -2, 'DEBUG' = 3)").unwrap();
        assert_eq!(
            ty,
            ChType::Enum {
                bits: 8,
                values: vec![
                    ("a, b".into(), 1),
                    ("it's (x)".into(), -2),
                    ("DEBUG".into(), 3)
                ]
            }
        );
        assert_eq!(
            ty.to_string(),
            r"Enum8('a, b' = 1, 'it\'s (x)' = -2, 'DEBUG' = 3)"
        );
    }

    #[test]
    fn json_and_unknown_types_are_refused_with_a_reason() {
        let err = ChType::parse("JSON").unwrap_err();
        assert!(err.contains("copy json/jsonb into String"), "{err}");
        assert!(ChType::parse("Object('json')").is_err());
        assert!(ChType::parse("Tuple(String, UInt8)").is_err());
        assert!(ChType::parse("Decimal(80, 2)").is_err());
    }
}
