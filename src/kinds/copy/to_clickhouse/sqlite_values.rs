//! SQLite → ClickHouse values. SQLite types values, not columns: any column may hold an INTEGER, a REAL, a TEXT, a
//! BLOB or NULL whatever its declared type. So a SQLite column may go into any ClickHouse column type the copy
//! writes (checked when the copy starts: only the ClickHouse type), and each value is turned into that type by its
//! own storage class as it is read, or fails the batch naming key, column, value and type. Pure: unit-tested
//! without a database.
//!
//! | ClickHouse | from INTEGER | from REAL | from TEXT | from BLOB |
//! |---|---|---|---|---|
//! | `String` | its digits | shortest text that reads back the same | as is | its bytes |
//! | `FixedString(N)` | its digits | as for `String` | zero-padded to N bytes | zero-padded |
//! | `Int*`, `UInt*` (to 256 bits) | range-checked | a whole number, range-checked | integer text | — |
//! | `Float32`, `Float64` | converted | as is | a number | — |
//! | `Decimal(P, S)` | exact | its shortest text, exact from there | exact, never rounded | — |
//! | `Bool` | 0 or 1 | 0 or 1 | `true`/`false`/`t`/`f`/`1`/`0` | — |
//! | `Date`, `Date32` | unix seconds at midnight | the same | `YYYY-MM-DD` (or a timestamp at midnight) | — |
//! | `DateTime`, `DateTime64(p)` | unix seconds | unix seconds and fraction | `YYYY-MM-DD[ T]HH:MM[:SS[.f]]`, an offset or `Z` optional | — |
//! | `UUID` | — | — | 8-4-4-4-12 or 32 hex digits | 16 bytes |
//! | `IPv4`, `IPv6`, `Enum8/16`, `Map(String, V)` | — | — | as from Postgres text ([`super::from_text`]) | — |
//! | `Array(T)` | — | — | a JSON array, each element into T | — |
//!
//! Each also into `Nullable(...)`; `LowCardinality(T)` counts as `T`. NULL into a column that is not `Nullable`
//! fails (into an `Array`: an empty array, as from Postgres). A timestamp text without an offset is UTC, as
//! SQLite's own date functions write and read it (`datetime('now')`), whatever zone the ClickHouse column shows.
//! Numbers as timestamps are unix seconds (`unixepoch()`), not Julian day numbers. A REAL into `Decimal` goes
//! through its shortest decimal text (`0.1`, not `0.1000000000000000055…`): store exact decimals as TEXT.

use std::borrow::Cow;
use std::fmt;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use serde_json::value::RawValue;

use super::encode::{Cell, EncodeError, prepare};
use super::from_text;
use super::mapping::{ColumnPlan, PgRead, map_refusal, parse_target, quote};
use crate::clickhouse::ChType;

/// A value as SQLite stored it.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored<'r> {
    /// NULL.
    Null,
    /// A 64-bit integer.
    Integer(i64),
    /// An IEEE double.
    Real(f64),
    /// UTF-8 text (owned for the elements of a JSON array).
    Text(Cow<'r, str>),
    /// Bytes.
    Blob(&'r [u8]),
}

impl fmt::Display for Stored<'_> {
    /// The value as an error message shows it: text quoted and cut at 200 characters, a REAL with its point.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stored::Null => f.write_str("NULL"),
            Stored::Integer(v) => write!(f, "{v}"),
            Stored::Real(v) => write!(f, "{v:?}"),
            Stored::Text(text) => write!(f, "{}", Cell::Text(Cow::Borrowed(text))),
            Stored::Blob(bytes) => write!(f, "a BLOB of {} bytes", bytes.len()),
        }
    }
}

/// Plans the copy of SQLite column `name` (declared `declared`, maybe empty) into a ClickHouse column of type
/// `ch_type`: every type the copy writes is allowed (values are checked one by one, see the module doc).
pub fn plan_column(name: &str, declared: &str, ch_type: &str) -> Result<ColumnPlan, String> {
    let target = parse_target(name, ch_type)?;
    let mut inner = target.non_null();
    while let ChType::Array(element) = inner {
        inner = element.non_null();
    }
    if let Some(reason) = map_refusal(inner) {
        return Err(format!("column {name}: {reason}"));
    }
    let quoted = quote(name);
    let declared = declared.trim();
    Ok(ColumnPlan {
        name: name.to_owned(),
        source_type: if declared.is_empty() {
            "SQLite, no declared type".to_owned()
        } else {
            format!("SQLite {declared}")
        },
        select: quoted.clone(),
        quoted,
        read: PgRead::Text,
        array: false,
        target,
    })
}

/// `value` as a cell of ClickHouse type `ty`, ready to measure and write; the error names the value, the type and
/// why it does not fit.
pub fn cell<'r>(value: Stored<'r>, ty: &ChType) -> Result<Cell<'r>, EncodeError> {
    prepare(convert(value, ty)?, ty)
}

/// The value as the cell [`prepare`] turns into `ty`'s bytes.
fn convert<'r>(value: Stored<'r>, ty: &ChType) -> Result<Cell<'r>, EncodeError> {
    let invalid = |reason: &str| EncodeError::Invalid {
        value: value.to_string(),
        ty: ty.clone(),
        reason: reason.to_owned(),
    };
    let text_of = |value: &Stored<'r>| -> Option<Cow<'r, str>> {
        match value {
            Stored::Integer(v) => Some(Cow::Owned(v.to_string())),
            Stored::Real(v) => Some(Cow::Owned(real_text(*v))),
            Stored::Text(text) => Some(text.clone()),
            Stored::Null | Stored::Blob(_) => None,
        }
    };
    Ok(match (&value, ty) {
        (Stored::Null, _) => Cell::Null,
        (_, ChType::Nullable(inner)) => return convert(value, inner),
        (Stored::Blob(bytes), ChType::String) => {
            let mut out = Vec::with_capacity(bytes.len() + 5);
            from_text::push_len(&mut out, bytes.len());
            out.extend_from_slice(bytes);
            Cell::Bytes(out)
        }
        (Stored::Blob(bytes), ChType::FixedString(len)) => {
            if bytes.len() > *len {
                return Err(invalid(&format!("it has more than {len} bytes")));
            }
            let mut out = bytes.to_vec();
            out.resize(*len, 0);
            Cell::Bytes(out)
        }
        (Stored::Blob(bytes), ChType::Uuid) if bytes.len() == 16 => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let (fixed, width) = from_text::uuid(&hex).map_err(|e| invalid(&e))?;
            Cell::Fixed(fixed, width)
        }
        (Stored::Blob(_), _) => {
            return Err(invalid(
                "a BLOB goes only into String, FixedString or (16 bytes) UUID",
            ));
        }
        (Stored::Integer(v), ChType::Int(bits) | ChType::UInt(bits)) if *bits <= 64 => {
            Cell::Int(*v)
        }
        (Stored::Integer(v), ChType::Float32 | ChType::Float64) => Cell::Int(*v),
        (Stored::Real(v), ChType::Float32 | ChType::Float64) => Cell::Float(*v),
        (Stored::Text(text), ChType::Float32 | ChType::Float64) => Cell::Float(
            text.trim()
                .parse()
                .map_err(|_| invalid("it is not a number"))?,
        ),
        (_, ChType::Bool) => {
            Cell::Bool(boolean(&value).ok_or_else(|| {
                invalid("a Bool is 0 or 1, or the text true, false, t, f, 1 or 0")
            })?)
        }
        (_, ChType::Date | ChType::Date32) => date(&value).map_err(|e| invalid(&e))?,
        (_, ChType::DateTime(_) | ChType::DateTime64(..)) => {
            time(&value).map_err(|e| invalid(&e))?
        }
        (Stored::Text(text), ChType::Array(element)) => {
            let items = json_array(text).map_err(|e| invalid(&e))?;
            Cell::Array(
                items
                    .into_iter()
                    .map(|item| convert(item, element))
                    .collect::<Result<_, _>>()?,
            )
        }
        (_, ChType::Array(_)) => return Err(invalid("an Array is read from a JSON array text")),
        (Stored::Text(_), ChType::Uuid | ChType::Ipv4 | ChType::Ipv6 | ChType::Map(..)) => {
            Cell::Text(text_of(&value).expect("text"))
        }
        (_, ChType::Uuid | ChType::Ipv4 | ChType::Ipv6 | ChType::Map(..)) => {
            return Err(invalid(&format!("a {ty} is read from text")));
        }
        // String, FixedString, Enum, wide integers, Decimal: from the value's text (exact, checked by `prepare`).
        _ => Cell::Text(text_of(&value).expect("neither NULL nor a BLOB")),
    })
}

/// A REAL's shortest text that reads back as the same double (`0.1`, `1e300` written out, `NaN`).
fn real_text(v: f64) -> String {
    let text = v.to_string();
    text.strip_suffix(".0").map(str::to_owned).unwrap_or(text)
}

fn boolean(value: &Stored<'_>) -> Option<bool> {
    match value {
        Stored::Integer(0) => Some(false),
        Stored::Integer(1) => Some(true),
        Stored::Real(v) if *v == 0.0 || *v == 1.0 => Some(*v == 1.0),
        Stored::Text(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" => Some(true),
            "false" | "f" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Seconds and nanoseconds since the epoch from a number (unix seconds) or a timestamp text (UTC unless it has an
/// offset).
fn instant(value: &Stored<'_>) -> Result<(i64, u32), String> {
    match value {
        Stored::Integer(secs) => Ok((*secs, 0)),
        Stored::Real(v) if v.is_finite() && v.abs() < 1e15 => {
            let secs = v.floor();
            let nanos = ((v - secs) * 1e9).round().min(999_999_999.0) as u32;
            Ok((secs as i64, nanos))
        }
        Stored::Real(_) => Err("it is not a unix time in seconds".into()),
        Stored::Text(text) => {
            let t = parse_timestamp(text.trim()).ok_or(
                "it is not a timestamp (YYYY-MM-DD HH:MM:SS[.fff], a T instead of the space, an offset or Z \
                 optional) nor a date (YYYY-MM-DD)",
            )?;
            Ok((
                t.and_utc().timestamp(),
                t.and_utc().timestamp_subsec_nanos(),
            ))
        }
        Stored::Null | Stored::Blob(_) => Err("it is not a time".into()),
    }
}

/// A timestamp or date text as a UTC time: `YYYY-MM-DD`, then optionally a space or `T`, `HH:MM`, `:SS`, `.` and
/// up to nine digits of the second (more are dropped), then `Z` or an offset `±HH[:MM]`; without an offset it is
/// UTC. Parsed by hand: trying chrono's format strings one by one cost a third of the copy's time on timestamp
/// columns.
fn parse_timestamp(text: &str) -> Option<NaiveDateTime> {
    let b = text.as_bytes();
    let num = |from: usize, to: usize| -> Option<u32> {
        b.get(from..to)?.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(num(0, 4)?).ok()?, num(5, 7)?, num(8, 10)?)?;
    if b.len() == 10 {
        return Some(date.and_time(NaiveTime::MIN));
    }
    if !matches!(b[10], b' ' | b'T' | b't') || b.get(13) != Some(&b':') {
        return None;
    }
    let (hour, minute) = (num(11, 13)?, num(14, 16)?);
    let (mut second, mut nanos, mut at) = (0, 0, 16);
    if b.get(at) == Some(&b':') {
        second = num(17, 19)?;
        at = 19;
        if b.get(at) == Some(&b'.') {
            let digits = b[at + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            let kept = digits.min(9);
            if digits == 0 {
                return None;
            }
            nanos = num(at + 1, at + 1 + kept)? * 10u32.pow(9 - kept as u32);
            at += 1 + digits;
        }
    }
    let local = date.and_time(NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?);
    let offset_minutes = match &b[at..] {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest.len() {
                2 => (num(at + 1, at + 3)?, 0),
                4 => (num(at + 1, at + 3)?, num(at + 3, at + 5)?),
                5 if rest[2] == b':' => (num(at + 1, at + 3)?, num(at + 4, at + 6)?),
                _ => return None,
            };
            let minutes = i64::from(h * 60 + m);
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return None,
    };
    local.checked_sub_signed(chrono::Duration::minutes(offset_minutes))
}

fn time(value: &Stored<'_>) -> Result<Cell<'static>, String> {
    let (secs, nanos) = instant(value)?;
    Ok(Cell::Time(secs, nanos))
}

/// A day: its time must be midnight (UTC), or the `Date` would lose it.
fn date(value: &Stored<'_>) -> Result<Cell<'static>, String> {
    let (secs, nanos) = instant(value)?;
    if secs.rem_euclid(86_400) != 0 || nanos != 0 {
        return Err("it has a time of day, which a Date would lose".into());
    }
    Ok(Cell::Date(secs.div_euclid(86_400)))
}

/// A JSON array's elements: a string as its text, any other member as its JSON text (numbers keep every digit;
/// a nested array is read again for a nested `Array`), `null` as NULL.
fn json_array(text: &str) -> Result<Vec<Stored<'static>>, String> {
    let items: Vec<Box<RawValue>> =
        serde_json::from_str(text).map_err(|e| format!("it is not a JSON array ({e})"))?;
    items
        .into_iter()
        .map(|item| {
            let raw = item.get();
            Ok(match raw.as_bytes().first() {
                Some(b'n') => Stored::Null,
                Some(b'"') => Stored::Text(Cow::Owned(
                    serde_json::from_str::<String>(raw).map_err(|e| e.to_string())?,
                )),
                _ => Stored::Text(Cow::Owned(raw.to_owned())),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::rowbinary::len_of_len;

    fn ty(text: &str) -> ChType {
        ChType::parse(text).unwrap()
    }

    fn text(value: &str) -> Stored<'_> {
        Stored::Text(Cow::Borrowed(value))
    }

    #[test]
    fn each_storage_class_goes_into_strings_and_numbers() {
        assert_eq!(
            cell(Stored::Integer(42), &ty("String")),
            Ok(Cell::Text("42".into()))
        );
        assert_eq!(
            cell(Stored::Real(0.1), &ty("String")),
            Ok(Cell::Text("0.1".into()))
        );
        assert_eq!(
            cell(Stored::Real(2.0), &ty("String")),
            Ok(Cell::Text("2".into()))
        );
        assert_eq!(
            cell(Stored::Blob(b"ab"), &ty("String")),
            Ok(Cell::Bytes(b"\x02ab".to_vec()))
        );
        assert_eq!(cell(Stored::Integer(-7), &ty("Int8")), Ok(Cell::Int(-7)));
        assert!(matches!(
            cell(text("123"), &ty("UInt16")),
            Ok(Cell::Fixed(_, 2))
        ));
        assert!(matches!(
            cell(Stored::Integer(5), &ty("Int128")),
            Ok(Cell::Fixed(_, 16))
        ));
        assert_eq!(cell(text(" 1.5 "), &ty("Float64")), Ok(Cell::Float(1.5)));
        assert_eq!(cell(Stored::Integer(1), &ty("Bool")), Ok(Cell::Bool(true)));
        assert_eq!(cell(text("f"), &ty("Bool")), Ok(Cell::Bool(false)));
        assert_eq!(cell(Stored::Null, &ty("Nullable(Int32)")), Ok(Cell::Null));
        assert_eq!(len_of_len(3), 1);
    }

    #[test]
    fn decimals_are_exact_from_integers_texts_and_the_shortest_text_of_reals() {
        let decimal = ty("Decimal(18, 4)");
        let scaled = |value: Stored<'_>| match cell(value, &decimal) {
            Ok(Cell::Fixed(bytes, 8)) => i64::from_le_bytes(bytes[..8].try_into().unwrap()),
            other => panic!("{other:?}"),
        };
        assert_eq!(scaled(Stored::Integer(3)), 30_000);
        assert_eq!(scaled(text("12.3456")), 123_456);
        assert_eq!(scaled(Stored::Real(0.1)), 1_000);
        let err = cell(text("0.00001"), &decimal).unwrap_err().to_string();
        assert!(
            err.contains("\"0.00001\"") && err.contains("more than 4 digits"),
            "{err}"
        );
    }

    #[test]
    fn times_come_from_timestamp_texts_and_unix_seconds() {
        let dt = ty("DateTime64(3)");
        assert_eq!(
            cell(text("2024-10-24 17:30:00.250"), &dt),
            Ok(Cell::Time(1_729_791_000, 250_000_000))
        );
        assert_eq!(
            cell(text("2024-10-24T19:30:00+02:00"), &dt),
            Ok(Cell::Time(1_729_791_000, 0))
        );
        assert_eq!(
            cell(text("2024-10-24T17:30:00Z"), &dt),
            Ok(Cell::Time(1_729_791_000, 0))
        );
        assert_eq!(
            cell(
                Stored::Integer(1_729_791_000),
                &ty("DateTime('Europe/Berlin')")
            ),
            Ok(Cell::Time(1_729_791_000, 0))
        );
        assert_eq!(cell(Stored::Real(1.5), &dt), Ok(Cell::Time(1, 500_000_000)));
        assert_eq!(
            cell(text("2024-10-24"), &ty("Date")),
            Ok(Cell::Date(20_020))
        );
        let err = cell(text("2024-10-24 12:00:00"), &ty("Date"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("time of day"), "{err}");
        assert_eq!(
            cell(text("2024-10-24 12:00-05:30"), &dt),
            Ok(Cell::Time(1_729_791_000, 0))
        );
        assert_eq!(
            cell(text("2024-10-24T17:30:00.1234567891"), &dt),
            Ok(Cell::Time(1_729_791_000, 123_456_789))
        );
        for bad in [
            "yesterday",
            "2024-10-24 12",
            "2024-10-24T17:30:00.",
            "2024-13-01",
            "2024-10-24 17:30:00 UTC",
        ] {
            assert!(cell(text(bad), &dt).is_err(), "{bad}");
        }
    }

    #[test]
    fn uuids_arrays_and_maps_come_from_their_texts_and_blobs() {
        let from_text = cell(text("00112233-4455-6677-8899-aabbccddeeff"), &ty("UUID"));
        let bytes: Vec<u8> = (0..16u8).map(|i| i * 0x11).collect();
        assert_eq!(cell(Stored::Blob(&bytes), &ty("UUID")), from_text);
        let int64 = |v: i64| {
            let mut bytes = [0; 32];
            bytes[..8].copy_from_slice(&v.to_le_bytes());
            Cell::Fixed(bytes, 8)
        };
        assert_eq!(
            cell(text(r#"[1, null, "3"]"#), &ty("Array(Nullable(Int64))")),
            Ok(Cell::Array(vec![int64(1), Cell::Null, int64(3)]))
        );
        assert_eq!(
            cell(text("[[\"a\"], []]"), &ty("Array(Array(String))")),
            Ok(Cell::Array(vec![
                Cell::Array(vec![Cell::Text("a".into())]),
                Cell::Array(vec![])
            ]))
        );
        assert!(matches!(
            cell(text(r#"{"a": 1}"#), &ty("Map(String, UInt8)")),
            Ok(Cell::Bytes(_))
        ));
        assert!(cell(text("[1, 2.5]"), &ty("Array(Int32)")).is_err());
    }

    #[test]
    fn a_value_that_does_not_fit_is_named_with_the_type_and_the_reason() {
        let err = cell(text("lots"), &ty("Int32")).unwrap_err().to_string();
        assert_eq!(
            err,
            "holds \"lots\", which does not fit the ClickHouse type Int32: it is not a decimal number"
        );
        let err = cell(Stored::Blob(b"xyz"), &ty("Int32"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a BLOB of 3 bytes") && err.contains("Int32"),
            "{err}"
        );
        let err = cell(Stored::Real(1.5), &ty("Int64"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1.5") && err.contains("not a whole number"),
            "{err}"
        );
        let err = cell(Stored::Integer(2), &ty("Bool"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds 2") && err.contains("Bool"), "{err}");
    }

    #[test]
    fn any_clickhouse_type_is_planned_but_maps_need_string_keys() {
        let plan = plan_column("meta", "", "Map(String, Nullable(String))").unwrap();
        assert_eq!(plan.source_type, "SQLite, no declared type");
        assert!(plan_column("n", "TEXT", "Int32").is_ok());
        let err = plan_column("m", "TEXT", "Map(UInt8, String)").unwrap_err();
        assert!(
            err.contains("column m: a Map's keys must be String"),
            "{err}"
        );
        let err = plan_column("x", "TEXT", "Tuple(String)").unwrap_err();
        assert!(
            err.starts_with("column x: ") && err.contains("supported:"),
            "{err}"
        );
    }
}
