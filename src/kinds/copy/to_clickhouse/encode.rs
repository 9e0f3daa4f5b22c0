//! The cells both readers produce ([`Cell`]: [`super::binary_values`] makes them from a Postgres row,
//! [`super::sqlite_values`] from SQLite values) and writing them as ClickHouse `RowBinary`.
//!
//! Text read for a type without a Postgres counterpart (`Decimal`, `UUID`, `Map`, ...) is first turned into its
//! bytes by [`prepare`] (see [`super::from_text`]). Sizes are computed before anything is written
//! ([`encoded_len`]), so a batch can decide whether a row still fits its byte budget; then [`write`] streams the
//! row into the request body. Text is borrowed from the row, never copied whole: a 50 MB value goes out in chunks.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate};

use super::from_text;
use crate::clickhouse::ChType;
use crate::clickhouse::rowbinary::{BodyClosed, BodyWriter, len_of_len};

/// A value read from the source.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'r> {
    /// SQL NULL.
    Null,
    /// Text, borrowed from the row where possible.
    Text(Cow<'r, str>),
    /// Any integer.
    Int(i64),
    /// Any float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A point in time (UTC): seconds and nanoseconds since the epoch.
    Time(i64, u32),
    /// A date: days since 1970-01-01.
    Date(i64),
    /// An array.
    Array(Vec<Cell<'r>>),
    /// Text of this many bytes that was too large to read with the row; [`write`] writes its length prefix and
    /// the caller streams the bytes.
    Large(usize),
    /// A fixed-width value already in its `RowBinary` form (the first `.1` bytes), made by [`prepare`].
    Fixed([u8; 32], usize),
    /// A value already in its `RowBinary` form (`FixedString`, `Map`), made by [`prepare`].
    Bytes(Vec<u8>),
}

impl std::fmt::Display for Cell<'_> {
    /// The value as an error message shows it: text quoted and cut at 200 characters.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Null => write!(f, "NULL"),
            Cell::Text(text) if text.chars().count() > 200 => {
                let head: String = text.chars().take(200).collect();
                write!(f, "{head:?}... ({} bytes)", text.len())
            }
            Cell::Text(text) => write!(f, "{text:?}"),
            Cell::Int(v) => write!(f, "{v}"),
            Cell::Float(v) => write!(f, "{v}"),
            Cell::Bool(v) => write!(f, "{v}"),
            Cell::Time(secs, nanos) => match DateTime::from_timestamp(*secs, *nanos) {
                Some(t) => write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S%.f UTC")),
                None => write!(f, "{secs} s after the epoch"),
            },
            Cell::Date(days) => match NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|e| e.checked_add_signed(chrono::Duration::days(*days)))
            {
                Some(date) => write!(f, "{date}"),
                None => write!(f, "{days} days after 1970-01-01"),
            },
            Cell::Array(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    write!(f, "{}{item}", if i > 0 { ", " } else { "" })?;
                }
                write!(f, "]")
            }
            Cell::Large(len) => write!(f, "a text of {len} bytes"),
            Cell::Fixed(..) | Cell::Bytes(_) => write!(f, "an encoded value"),
        }
    }
}

/// A value that does not fit its ClickHouse column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// NULL into a column that is not Nullable.
    #[error(
        "is NULL, but the ClickHouse column is {0} (not Nullable): make it Nullable or filter the rows"
    )]
    Null(ChType),
    /// A value outside the column type's range.
    #[error("holds {value}, which does not fit the ClickHouse type {ty}")]
    OutOfRange {
        /// The value, as text.
        value: String,
        /// The column type.
        ty: ChType,
    },
    /// A text that is not a value of the type (not a number, an unknown enum name, ...).
    #[error("holds {value}, which does not fit the ClickHouse type {ty}: {reason}")]
    Invalid {
        /// The value, as text.
        value: String,
        /// The column type.
        ty: ChType,
        /// Why not.
        reason: String,
    },
    /// A value of an unexpected kind (a mapping bug).
    #[error("holds {value}, which cannot be written as {ty}")]
    Mismatch {
        /// The value, as text.
        value: String,
        /// The column type.
        ty: ChType,
    },
}

/// Turns text read for a ClickHouse type without a Postgres counterpart into its `RowBinary` bytes
/// ([`Cell::Fixed`], [`Cell::Bytes`]), inside `Nullable` and `Array` too; other cells pass unchanged. The error
/// names the value, the type and why it does not fit.
pub fn prepare<'r>(cell: Cell<'r>, ty: &ChType) -> Result<Cell<'r>, EncodeError> {
    match (cell, ty) {
        (Cell::Null, _) => Ok(Cell::Null),
        (cell, ChType::Nullable(inner)) => prepare(cell, inner),
        (Cell::Array(items), ChType::Array(inner)) => items
            .into_iter()
            .map(|item| prepare(item, inner))
            .collect::<Result<_, _>>()
            .map(Cell::Array),
        (Cell::Text(text), ty) if *ty != ChType::String => {
            let invalid = |reason: String| EncodeError::Invalid {
                value: Cell::Text(Cow::Borrowed(&*text)).to_string(),
                ty: ty.clone(),
                reason,
            };
            let (bytes, width) = match ty {
                ChType::Decimal { precision, scale } => {
                    from_text::decimal(&text, *precision, *scale)
                }
                ChType::Int(bits) => from_text::integer(&text, *bits, true),
                ChType::UInt(bits) => from_text::integer(&text, *bits, false),
                ChType::Uuid => from_text::uuid(&text),
                ChType::Enum { bits, values } => from_text::enum_value(&text, *bits, values),
                ChType::Ipv4 => from_text::ip(&text, false),
                ChType::Ipv6 => from_text::ip(&text, true),
                ChType::FixedString(len) => {
                    return from_text::fixed_string(&text, *len)
                        .map(Cell::Bytes)
                        .map_err(invalid);
                }
                ChType::Map(_, value) => {
                    return from_text::map(&text, value)
                        .map(Cell::Bytes)
                        .map_err(invalid);
                }
                _ => {
                    return Err(EncodeError::Mismatch {
                        value: Cell::Text(text).to_string(),
                        ty: ty.clone(),
                    });
                }
            }
            .map_err(invalid)?;
            Ok(Cell::Fixed(bytes, width))
        }
        (cell, _) => Ok(cell),
    }
}

/// The bytes of a scalar value: fixed-width little-endian, or a string.
enum Scalar<'a> {
    Fixed([u8; 32], usize),
    Bytes(&'a [u8]),
    Raw(&'a [u8]),
    Deferred(usize),
}

/// `Date32` and `DateTime64` hold 1900-01-01 to 2299-12-31: days since the epoch.
const FIRST_DAY: i64 = -25_567;
const LAST_DAY: i64 = 120_529;

fn fixed<const N: usize>(bytes: [u8; N]) -> Scalar<'static> {
    let mut out = [0; 32];
    out[..N].copy_from_slice(&bytes);
    Scalar::Fixed(out, N)
}

fn scalar<'a>(cell: &'a Cell<'_>, ty: &ChType) -> Result<Scalar<'a>, EncodeError> {
    let out_of_range = || EncodeError::OutOfRange {
        value: cell.to_string(),
        ty: ty.clone(),
    };
    let int = |v: i64, bits: u16, signed: bool| -> Result<Scalar<'static>, EncodeError> {
        Ok(match (bits, signed) {
            (8, true) => fixed(i8::try_from(v).map_err(|_| out_of_range())?.to_le_bytes()),
            (16, true) => fixed(i16::try_from(v).map_err(|_| out_of_range())?.to_le_bytes()),
            (32, true) => fixed(i32::try_from(v).map_err(|_| out_of_range())?.to_le_bytes()),
            (64, true) => fixed(v.to_le_bytes()),
            (8, false) => fixed(u8::try_from(v).map_err(|_| out_of_range())?.to_le_bytes()),
            (16, false) => fixed(u16::try_from(v).map_err(|_| out_of_range())?.to_le_bytes()),
            (32, false) => fixed(u32::try_from(v).map_err(|_| out_of_range())?.to_le_bytes()),
            (64, false) => fixed(u64::try_from(v).map_err(|_| out_of_range())?.to_le_bytes()),
            // Wider integers are read as text (`prepare`).
            _ => return Err(out_of_range()),
        })
    };
    match (cell, ty) {
        (Cell::Null, _) => Err(EncodeError::Null(ty.clone())),
        (Cell::Fixed(bytes, n), _) => Ok(Scalar::Fixed(*bytes, *n)),
        (Cell::Bytes(bytes), _) => Ok(Scalar::Raw(bytes)),
        (Cell::Text(text), ChType::String) => Ok(Scalar::Bytes(text.as_bytes())),
        (Cell::Large(len), ChType::String) => Ok(Scalar::Deferred(*len)),
        (Cell::Int(v), ChType::Int(bits)) => int(*v, *bits, true),
        (Cell::Int(v), ChType::UInt(bits)) => int(*v, *bits, false),
        (Cell::Bool(b), ChType::UInt(8) | ChType::Bool) => Ok(fixed([u8::from(*b)])),
        (Cell::Int(v), ChType::Float32) => Ok(fixed((*v as f32).to_le_bytes())),
        (Cell::Int(v), ChType::Float64) => Ok(fixed((*v as f64).to_le_bytes())),
        (Cell::Float(v), ChType::Float32) => Ok(fixed((*v as f32).to_le_bytes())),
        (Cell::Float(v), ChType::Float64) => Ok(fixed(v.to_le_bytes())),
        (Cell::Date(d), ChType::Date) => Ok(fixed(
            u16::try_from(*d).map_err(|_| out_of_range())?.to_le_bytes(),
        )),
        (Cell::Date(d), ChType::Date32) if (FIRST_DAY..=LAST_DAY).contains(d) => {
            Ok(fixed((*d as i32).to_le_bytes()))
        }
        (Cell::Date(_), ChType::Date32) => Err(out_of_range()),
        (Cell::Time(secs, _), ChType::DateTime(_)) => Ok(fixed(
            u32::try_from(*secs)
                .map_err(|_| out_of_range())?
                .to_le_bytes(),
        )),
        (Cell::Time(secs, nanos), ChType::DateTime64(precision, _)) => {
            if !(FIRST_DAY * 86_400..(LAST_DAY + 1) * 86_400).contains(secs) {
                return Err(out_of_range());
            }
            let scale = 10i64.pow(u32::from(*precision));
            let ticks = secs
                .checked_mul(scale)
                .and_then(|t| t.checked_add(i64::from(*nanos) / (1_000_000_000 / scale)))
                .ok_or_else(out_of_range)?;
            Ok(fixed(ticks.to_le_bytes()))
        }
        _ => Err(EncodeError::Mismatch {
            value: cell.to_string(),
            ty: ty.clone(),
        }),
    }
}

/// The `RowBinary` size of `cell` as `ty`, checking that it fits.
pub fn encoded_len(cell: &Cell<'_>, ty: &ChType) -> Result<usize, EncodeError> {
    match (cell, ty) {
        (Cell::Null, ChType::Nullable(_)) => Ok(1),
        // ClickHouse has no NULL array: a NULL array arrives empty.
        (Cell::Null, ChType::Array(_)) => Ok(1),
        (_, ChType::Nullable(inner)) => Ok(1 + encoded_len(cell, inner)?),
        (Cell::Array(items), ChType::Array(inner)) => {
            items.iter().try_fold(len_of_len(items.len()), |sum, item| {
                Ok(sum + encoded_len(item, inner)?)
            })
        }
        _ => Ok(match scalar(cell, ty)? {
            Scalar::Fixed(_, n) => n,
            Scalar::Bytes(bytes) => len_of_len(bytes.len()) + bytes.len(),
            Scalar::Raw(bytes) => bytes.len(),
            Scalar::Deferred(len) => len_of_len(len) + len,
        }),
    }
}

/// Writes `cell` as `ty` (checked by [`encoded_len`] first).
pub async fn write(cell: &Cell<'_>, ty: &ChType, out: &mut BodyWriter) -> Result<(), BodyClosed> {
    match (cell, ty) {
        (Cell::Null, ChType::Nullable(_)) => out.put(&[1]),
        (Cell::Null, ChType::Array(_)) => out.put_len(0),
        (_, ChType::Nullable(inner)) => {
            out.put(&[0]);
            Box::pin(write(cell, inner, out)).await?;
        }
        (Cell::Array(items), ChType::Array(inner)) => {
            out.put_len(items.len());
            for item in items {
                Box::pin(write(item, inner, out)).await?;
            }
        }
        _ => match scalar(cell, ty) {
            Ok(Scalar::Fixed(bytes, n)) => out.put(&bytes[..n]),
            Ok(Scalar::Bytes(bytes)) => out.put_string(bytes).await?,
            Ok(Scalar::Raw(bytes)) => out.put_raw(bytes).await?,
            Ok(Scalar::Deferred(len)) => out.put_len(len),
            Err(_) => unreachable!("encoded_len checked this value before it was written"),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_rowbinary() {
        let nullable_text = ChType::Nullable(Box::new(ChType::String));
        assert_eq!(encoded_len(&Cell::Null, &nullable_text), Ok(1));
        assert_eq!(
            encoded_len(&Cell::Text("héllo".into()), &nullable_text),
            Ok(1 + 1 + 6)
        );
        let ints = ChType::Array(Box::new(ChType::Nullable(Box::new(ChType::Int(32)))));
        let cell = Cell::Array(vec![Cell::Int(1), Cell::Null]);
        assert_eq!(encoded_len(&cell, &ints), Ok(1 + (1 + 4) + 1));
        assert_eq!(
            encoded_len(&Cell::Time(1, 5_000_000), &ChType::DateTime64(3, None)),
            Ok(8)
        );
    }

    #[test]
    fn nulls_into_plain_columns_and_out_of_range_values_are_refused() {
        assert_eq!(
            encoded_len(&Cell::Null, &ChType::String),
            Err(EncodeError::Null(ChType::String))
        );
        assert!(matches!(
            encoded_len(&Cell::Time(-1, 0), &ChType::DateTime(None)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encoded_len(&Cell::Int(300), &ChType::Int(8)),
            Err(EncodeError::OutOfRange { .. })
        ));
    }

    #[test]
    fn datetime64_counts_ticks_of_its_precision() {
        match scalar(&Cell::Time(2, 345_678_901), &ChType::DateTime64(3, None)) {
            Ok(Scalar::Fixed(bytes, 8)) => {
                assert_eq!(i64::from_le_bytes(bytes[..8].try_into().unwrap()), 2345)
            }
            _ => panic!("not a fixed 8-byte value"),
        }
    }
}
