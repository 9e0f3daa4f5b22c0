//! Postgres values in their binary form (as a binary `COPY` sends them) turned into [`Cell`]s, borrowing text from
//! the row. Each [`PgRead`] has one wire form, fixed by the type the select list gives the column (see
//! [`super::mapping`]): big-endian integers and floats, one byte for `bool`, microseconds since 2000-01-01 for
//! timestamps, days since 2000-01-01 for dates, UTF-8 bytes for text, and one-dimensional arrays of those; and the
//! `ctid` of a physical walk.

use std::borrow::Cow;

use super::encode::Cell;
use super::mapping::PgRead;
use super::pages::Tid;

/// Seconds from 1970-01-01 (the Unix epoch) to 2000-01-01 (Postgres' epoch).
const POSTGRES_EPOCH_SECS: i64 = 946_684_800;
/// Days from 1970-01-01 to 2000-01-01.
const POSTGRES_EPOCH_DAYS: i64 = 10_957;

/// A value whose bytes are not what its type sends, or that has no ClickHouse counterpart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A fixed-width value of the wrong width.
    #[error("a {ty} value of {len} bytes (it takes {want})")]
    Width {
        /// The type read.
        ty: &'static str,
        /// The bytes received.
        len: usize,
        /// The bytes the type takes.
        want: usize,
    },
    /// Text that is not UTF-8.
    #[error("text that is not valid UTF-8")]
    NotUtf8,
    /// `infinity` or `-infinity`, which no ClickHouse date or time type holds.
    #[error("{0} is infinite, which no ClickHouse date or time type holds")]
    Infinite(&'static str),
    /// An array of more than one dimension.
    #[error("an array of {0} dimensions (only one-dimensional arrays are copied)")]
    Dimensions(i32),
    /// An array whose bytes end early or disagree with its header.
    #[error("a malformed array")]
    Array,
}

/// Field bytes as text.
pub fn text(bytes: &[u8]) -> Result<&str, ValueError> {
    std::str::from_utf8(bytes).map_err(|_| ValueError::NotUtf8)
}

/// A `bool` field.
pub fn boolean(bytes: &[u8]) -> Result<bool, ValueError> {
    Ok(fixed::<1>(bytes, "boolean")?[0] != 0)
}

/// A `tid` field: the block (`uint32`) and the line pointer (`uint16`).
pub fn tid(bytes: &[u8]) -> Result<Tid, ValueError> {
    let bytes = fixed::<6>(bytes, "tid")?;
    Ok(Tid {
        page: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).into(),
        offset: u16::from_be_bytes([bytes[4], bytes[5]]).into(),
    })
}

/// Reads a field (`None`: NULL) as the column's plan says.
pub fn cell(bytes: Option<&[u8]>, read: PgRead, array: bool) -> Result<Cell<'_>, ValueError> {
    match bytes {
        None => Ok(Cell::Null),
        Some(bytes) if array => elements(bytes, read).map(Cell::Array),
        Some(bytes) => scalar(bytes, read),
    }
}

fn fixed<'a, const N: usize>(bytes: &'a [u8], ty: &'static str) -> Result<&'a [u8; N], ValueError> {
    bytes.try_into().map_err(|_| ValueError::Width {
        ty,
        len: bytes.len(),
        want: N,
    })
}

fn scalar(bytes: &[u8], read: PgRead) -> Result<Cell<'_>, ValueError> {
    Ok(match read {
        PgRead::Text => Cell::Text(Cow::Borrowed(text(bytes)?)),
        PgRead::Int2 => Cell::Int(i16::from_be_bytes(*fixed(bytes, "smallint")?).into()),
        PgRead::Int4 => Cell::Int(i32::from_be_bytes(*fixed(bytes, "integer")?).into()),
        PgRead::Int8 => Cell::Int(i64::from_be_bytes(*fixed(bytes, "bigint")?)),
        PgRead::Float4 => Cell::Float(f32::from_be_bytes(*fixed(bytes, "real")?).into()),
        PgRead::Float8 => Cell::Float(f64::from_be_bytes(*fixed(bytes, "double precision")?)),
        PgRead::Bool => Cell::Bool(boolean(bytes)?),
        PgRead::Timestamp => time(bytes, "timestamp")?,
        PgRead::TimestampTz => time(bytes, "timestamp with time zone")?,
        PgRead::Date => {
            let days = i32::from_be_bytes(*fixed(bytes, "date")?);
            if days == i32::MAX || days == i32::MIN {
                return Err(ValueError::Infinite("date"));
            }
            Cell::Date(i64::from(days) + POSTGRES_EPOCH_DAYS)
        }
    })
}

/// Microseconds since 2000-01-01 (UTC for `timestamptz`; a `timestamp` is taken as UTC).
fn time(bytes: &[u8], ty: &'static str) -> Result<Cell<'static>, ValueError> {
    let micros = i64::from_be_bytes(*fixed(bytes, ty)?);
    if micros == i64::MAX || micros == i64::MIN {
        return Err(ValueError::Infinite(ty));
    }
    let secs = micros.div_euclid(1_000_000) + POSTGRES_EPOCH_SECS;
    let nanos = micros.rem_euclid(1_000_000) * 1_000;
    Ok(Cell::Time(secs, nanos as u32))
}

/// A one-dimensional array: dimensions, a has-nulls flag, the element type, per dimension its length and lower
/// bound, then each element as a field.
fn elements(bytes: &[u8], read: PgRead) -> Result<Vec<Cell<'_>>, ValueError> {
    let word = |at: usize| -> Result<i32, ValueError> {
        let four = bytes.get(at..at + 4).ok_or(ValueError::Array)?;
        Ok(i32::from_be_bytes(four.try_into().expect("four bytes")))
    };
    let dimensions = word(0)?;
    match dimensions {
        0 => return Ok(Vec::new()),
        1 => {}
        n => return Err(ValueError::Dimensions(n)),
    }
    let len = usize::try_from(word(12)?).map_err(|_| ValueError::Array)?;
    let mut at = 20;
    let mut items = Vec::with_capacity(len.min(bytes.len() / 4));
    for _ in 0..len {
        let item_len = word(at)?;
        at += 4;
        if item_len == -1 {
            items.push(Cell::Null);
            continue;
        }
        let item_len = usize::try_from(item_len).map_err(|_| ValueError::Array)?;
        let item = bytes.get(at..at + item_len).ok_or(ValueError::Array)?;
        items.push(scalar(item, read)?);
        at += item_len;
    }
    if at != bytes.len() {
        return Err(ValueError::Array);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_dates_count_from_postgres_epoch_into_unix_time() {
        // 2000-01-01 00:00:00.5 and one microsecond before the epoch.
        assert_eq!(
            cell(Some(&500_000i64.to_be_bytes()), PgRead::TimestampTz, false),
            Ok(Cell::Time(946_684_800, 500_000_000))
        );
        assert_eq!(
            cell(Some(&(-1i64).to_be_bytes()), PgRead::Timestamp, false),
            Ok(Cell::Time(946_684_799, 999_999_000))
        );
        assert_eq!(
            cell(Some(&(-10_957i32).to_be_bytes()), PgRead::Date, false),
            Ok(Cell::Date(0))
        );
        assert_eq!(
            cell(Some(&i64::MAX.to_be_bytes()), PgRead::TimestampTz, false),
            Err(ValueError::Infinite("timestamp with time zone"))
        );
    }

    #[test]
    fn a_tid_is_its_block_then_its_line_pointer() {
        assert_eq!(
            tid(&[0, 1, 0, 2, 0, 7]),
            Ok(Tid {
                page: 65_538,
                offset: 7
            })
        );
        assert!(tid(&[0, 1]).is_err());
    }

    #[test]
    fn fixed_width_values_are_checked_for_their_width() {
        assert_eq!(
            cell(Some(&[0, 0, 1, 0]), PgRead::Int4, false),
            Ok(Cell::Int(256))
        );
        assert_eq!(
            cell(Some(&[0, 1]), PgRead::Int8, false),
            Err(ValueError::Width {
                ty: "bigint",
                len: 2,
                want: 8
            })
        );
        assert_eq!(
            cell(Some(&1.5f64.to_be_bytes()), PgRead::Float8, false),
            Ok(Cell::Float(1.5))
        );
        assert_eq!(cell(None, PgRead::Bool, false), Ok(Cell::Null));
        assert_eq!(
            cell(Some(&[0xff, 0xfe]), PgRead::Text, false),
            Err(ValueError::NotUtf8)
        );
    }

    fn array(dimensions: i32, items: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [dimensions, 1, 25, items.len() as i32, 1] {
            out.extend(word.to_be_bytes());
        }
        super::super::binary_rows::tests::put_fields(&mut out, items);
        out
    }

    #[test]
    fn arrays_hold_their_elements_and_nulls_and_refuse_more_dimensions() {
        let bytes = array(1, &[Some(b"a"), None, Some(b"")]);
        assert_eq!(
            cell(Some(&bytes), PgRead::Text, true),
            Ok(Cell::Array(vec![
                Cell::Text("a".into()),
                Cell::Null,
                Cell::Text("".into())
            ]))
        );
        assert_eq!(
            cell(Some(&0i32.to_be_bytes().repeat(3)), PgRead::Int4, true),
            Ok(Cell::Array(Vec::new()))
        );
        assert_eq!(
            cell(Some(&array(2, &[])), PgRead::Int4, true),
            Err(ValueError::Dimensions(2))
        );
        let cut = array(1, &[Some(b"abc")]);
        assert_eq!(
            cell(Some(&cut[..cut.len() - 1]), PgRead::Text, true),
            Err(ValueError::Array)
        );
    }
}
