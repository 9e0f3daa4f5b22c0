//! Postgres values read as text, turned into the `RowBinary` bytes of ClickHouse types that have no Postgres
//! wire counterpart: `Decimal` and the wide integers (exact, through [`BigDecimal`], never a float), `UUID`,
//! `Enum8/16`, `FixedString`, `IPv4/IPv6`, and `Map(K, V)` from a JSON object. Pure: unit-tested without a
//! database.
//!
//! Every refusal says why the value does not fit, so the batch's error can name key, column, value and type.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use bigdecimal::BigDecimal;
use bigdecimal::num_bigint::{BigInt, Sign};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::clickhouse::ChType;
use crate::clickhouse::types::decimal_width;

/// Up to 32 bytes of a fixed-width value, and how many are used.
pub type Fixed = ([u8; 32], usize);

/// `Decimal(P, S)` from decimal text: the value times 10^S, refused when it has more than S digits after the
/// point (trailing zeros aside: `numeric(65,30)` text is padded) or more than P digits in all.
pub fn decimal(text: &str, precision: u8, scale: u8) -> Result<Fixed, String> {
    let value = parse_decimal(text)?;
    let scaled = scaled_integer(&value, i64::from(scale)).ok_or_else(|| {
        format!("it has more than {scale} digits after the point (the copy never rounds)")
    })?;
    let digits = scaled.magnitude().to_string().len();
    if scaled.sign() != Sign::NoSign && digits > usize::from(precision) {
        return Err(format!(
            "it needs more than {precision} digits ({} before the point)",
            precision - scale
        ));
    }
    two_complement(&scaled, decimal_width(precision)).ok_or_else(|| "it is too large".to_owned())
}

/// `Int8` … `Int256` / `UInt8` … `UInt256` from integer text (`numeric` text with a zero fraction allowed).
pub fn integer(text: &str, bits: u16, signed: bool) -> Result<Fixed, String> {
    let value = parse_decimal(text)?;
    let int = scaled_integer(&value, 0).ok_or("it is not a whole number")?;
    let width = usize::from(bits) / 8;
    let kind = if signed { "Int" } else { "UInt" };
    let out_of_range = || format!("it is outside the range of {kind}{bits}");
    if signed {
        return two_complement(&int, width).ok_or_else(out_of_range);
    }
    if int.sign() == Sign::Minus {
        return Err(out_of_range());
    }
    let (_, bytes) = int.to_bytes_le();
    if bytes.len() > width {
        return Err(out_of_range());
    }
    let mut out = [0u8; 32];
    out[..bytes.len()].copy_from_slice(&bytes);
    Ok((out, width))
}

fn parse_decimal(text: &str) -> Result<BigDecimal, String> {
    let trimmed = text.trim();
    // BigDecimal also reads exponents; Postgres never prints them for numeric, JSON may (1e3): both are exact.
    BigDecimal::from_str(trimmed)
        .ok()
        .filter(|_| !trimmed.is_empty())
        .ok_or_else(|| "it is not a decimal number".to_owned())
}

/// `value` × 10^scale as an integer, `None` when digits would be lost.
fn scaled_integer(value: &BigDecimal, scale: i64) -> Option<BigInt> {
    let (digits, exponent) = value.normalized().as_bigint_and_exponent();
    // value = digits × 10^-exponent
    let shift = scale - exponent;
    if shift < 0 {
        return (digits.sign() == Sign::NoSign).then(BigInt::default);
    }
    Some(digits * BigInt::from(10u8).pow(u32::try_from(shift).ok()?))
}

/// Little-endian two's complement in `width` bytes, `None` when it does not fit.
fn two_complement(value: &BigInt, width: usize) -> Option<Fixed> {
    let bytes = value.to_signed_bytes_le();
    if bytes.len() > width {
        return None;
    }
    let fill = if value.sign() == Sign::Minus { 0xff } else { 0 };
    let mut out = [fill; 32];
    out[..bytes.len()].copy_from_slice(&bytes);
    Some((out, width))
}

/// `UUID` from `8-4-4-4-12` or 32 hex digits: ClickHouse stores it as two little-endian `u64` halves.
pub fn uuid(text: &str) -> Result<Fixed, String> {
    let text = text.trim();
    let canonical = text.len() == 36
        && text
            .char_indices()
            .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-'));
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let value = (canonical || text.len() == 32)
        .then(|| u128::from_str_radix(&hex, 16).ok())
        .flatten()
        .filter(|_| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("it is not a UUID (8-4-4-4-12 hex digits)")?;
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&((value >> 64) as u64).to_le_bytes());
    out[8..16].copy_from_slice(&(value as u64).to_le_bytes());
    Ok((out, 16))
}

/// `Enum8/16`: the number of the name.
pub fn enum_value(text: &str, bits: u8, values: &[(String, i16)]) -> Result<Fixed, String> {
    let (_, number) = values
        .iter()
        .find(|(name, _)| name == text)
        .ok_or("it is not one of the enum's names")?;
    let mut out = [0u8; 32];
    out[..2].copy_from_slice(&number.to_le_bytes());
    Ok((out, usize::from(bits) / 8))
}

/// `IPv4` (a little-endian `u32`) or `IPv6` (16 bytes, network order) from `inet` text; an address with a
/// network mask (`10.0.0.0/8`) would lose the mask and is refused.
pub fn ip(text: &str, v6: bool) -> Result<Fixed, String> {
    let (address, mask) = match text.trim().split_once('/') {
        Some((address, mask)) => (address, Some(mask)),
        None => (text.trim(), None),
    };
    let address: IpAddr = address.parse().map_err(|_| "it is not an IP address")?;
    let full = if address.is_ipv4() { "32" } else { "128" };
    if mask.is_some_and(|m| m != full) {
        return Err("it is a network with a mask, which the column would lose".into());
    }
    let mut out = [0u8; 32];
    match (address, v6) {
        (IpAddr::V4(v4), false) => {
            out[..4].copy_from_slice(&u32::from(v4).to_le_bytes());
            Ok((out, 4))
        }
        (IpAddr::V6(_), false) => Err("it is an IPv6 address".into()),
        (IpAddr::V4(v4), true) => {
            out[..16].copy_from_slice(&v4.to_ipv6_mapped().octets());
            Ok((out, 16))
        }
        (IpAddr::V6(v6), true) => {
            out[..16].copy_from_slice(&Ipv6Addr::octets(&v6));
            Ok((out, 16))
        }
    }
}

/// `FixedString(N)`: the bytes, zero-padded to N; longer text is refused.
pub fn fixed_string(text: &str, len: usize) -> Result<Vec<u8>, String> {
    if text.len() > len {
        return Err(format!("it has {} bytes, more than {len}", text.len()));
    }
    let mut out = text.as_bytes().to_vec();
    out.resize(len, 0);
    Ok(out)
}

/// Whether a `Map` value of this type can be written from JSON values.
pub fn map_value_supported(ty: &ChType) -> bool {
    matches!(
        ty.non_null(),
        ChType::String
            | ChType::Int(_)
            | ChType::UInt(_)
            | ChType::Float32
            | ChType::Float64
            | ChType::Decimal { .. }
            | ChType::Bool
    )
}

/// `Map(String, V)` from a JSON object, keys in the object's order: a string value is its text, any other value
/// its JSON text for a `String` V; numbers exactly as written for integers and decimals; JSON null only into
/// `Nullable(V)` (or as `null` into a `String` V).
pub fn map(text: &str, value_type: &ChType) -> Result<Vec<u8>, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let pairs = de
        .deserialize_any(PairsVisitor)
        .map_err(|e| format!("it is not a JSON object ({e})"))?;
    de.end()
        .map_err(|e| format!("it is not a JSON object ({e})"))?;
    let mut out = Vec::with_capacity(text.len() + 8);
    push_len(&mut out, pairs.len());
    for (key, value) in &pairs {
        push_len(&mut out, key.len());
        out.extend_from_slice(key.as_bytes());
        map_value(value.get(), value_type, &mut out)
            .map_err(|problem| format!("its key {key:?} holds {}: {problem}", value.get()))?;
    }
    Ok(out)
}

fn map_value(raw: &str, ty: &ChType, out: &mut Vec<u8>) -> Result<(), String> {
    let not = |what: &str| Err(format!("not {what}, as {ty} needs"));
    if let ChType::Nullable(inner) = ty {
        if raw == "null" {
            out.push(1);
            return Ok(());
        }
        out.push(0);
        return map_value(raw, inner, out);
    }
    let number = raw.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
    let (bytes, width) = match ty {
        ChType::String => {
            let text = if raw.starts_with('"') {
                serde_json::from_str::<String>(raw).map_err(|e| e.to_string())?
            } else {
                raw.to_owned()
            };
            push_len(out, text.len());
            out.extend_from_slice(text.as_bytes());
            return Ok(());
        }
        ChType::Bool => match raw {
            "true" => ([1; 32], 1),
            "false" => ([0; 32], 1),
            _ => return not("true or false"),
        },
        _ if !number => return not("a number"),
        ChType::Int(bits) => integer(raw, *bits, true)?,
        ChType::UInt(bits) => integer(raw, *bits, false)?,
        ChType::Decimal { precision, scale } => decimal(raw, *precision, *scale)?,
        ChType::Float64 => {
            let v: f64 = raw.parse().map_err(|_| "not a number")?;
            let mut b = [0; 32];
            b[..8].copy_from_slice(&v.to_le_bytes());
            (b, 8)
        }
        ChType::Float32 => {
            let v: f32 = raw.parse().map_err(|_| "not a number")?;
            let mut b = [0; 32];
            b[..4].copy_from_slice(&v.to_le_bytes());
            (b, 4)
        }
        _ => return Err(format!("{ty} is not a Map value the copy writes")),
    };
    out.extend_from_slice(&bytes[..width]);
    Ok(())
}

/// Appends a LEB128 length, as `RowBinary` prefixes strings and arrays.
pub fn push_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A JSON object's members in order, each value as its raw JSON text (numbers keep every digit).
struct PairsVisitor;

impl<'de> Visitor<'de> for PairsVisitor {
    type Value = Vec<(String, Box<RawValue>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut pairs = Vec::with_capacity(access.size_hint().unwrap_or(8));
        while let Some(pair) = access.next_entry::<String, Box<RawValue>>()? {
            pairs.push(pair);
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int_of(fixed: Fixed) -> i128 {
        let (bytes, width) = fixed;
        let mut wide = [if bytes[width - 1] & 0x80 != 0 {
            0xff
        } else {
            0
        }; 16];
        wide[..width.min(16)].copy_from_slice(&bytes[..width.min(16)]);
        i128::from_le_bytes(wide)
    }

    #[test]
    fn decimals_are_exact_and_refuse_what_does_not_fit() {
        assert_eq!(int_of(decimal("1.5", 18, 12).unwrap()), 1_500_000_000_000);
        assert_eq!(
            int_of(decimal("-0.000150000000000000000000000000", 18, 12).unwrap()),
            -150_000_000
        );
        assert_eq!(decimal("42", 9, 2).unwrap().1, 4);
        let max = "9".repeat(38);
        assert_eq!(
            int_of(decimal(&max, 38, 0).unwrap()),
            max.parse::<i128>().unwrap()
        );
        assert!(
            decimal("0.0000000000001", 18, 12)
                .unwrap_err()
                .contains("more than 12 digits after the point")
        );
        assert!(
            decimal("1234567", 18, 12)
                .unwrap_err()
                .contains("6 before the point")
        );
        assert!(decimal("NaN", 18, 2).is_err());
        let big = format!("-{}.{}", "9".repeat(56), "1".repeat(20));
        let (bytes, width) = decimal(&big, 76, 20).unwrap();
        assert_eq!(width, 32);
        assert_eq!(
            BigInt::from_signed_bytes_le(&bytes[..32]).to_string(),
            big.replace('.', "")
        );
    }

    #[test]
    fn wide_integers_check_their_range() {
        assert_eq!(int_of(integer("-128", 8, true).unwrap()), -128);
        assert!(integer("128", 8, true).is_err());
        assert!(integer("-1", 64, false).is_err());
        assert_eq!(
            integer("340282366920938463463374607431768211455", 128, false)
                .unwrap()
                .0[..16],
            [0xff; 16]
        );
        assert!(integer("340282366920938463463374607431768211456", 128, false).is_err());
        assert!(integer("1.5", 64, true).is_err());
        assert_eq!(int_of(integer("7.000", 32, true).unwrap()), 7);
    }

    #[test]
    fn uuids_are_two_little_endian_halves() {
        let (bytes, 16) = uuid("00112233-4455-6677-8899-aabbccddeeff").unwrap() else {
            panic!()
        };
        assert_eq!(
            bytes[..16],
            [
                0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa,
                0x99, 0x88
            ]
        );
        assert!(uuid("00112233445566778899AABBCCDDEEFF").is_ok());
        assert!(uuid("0011-2233-4455-6677-8899aabbccddeeff").is_err());
        assert!(uuid("not a uuid").is_err());
    }

    #[test]
    fn ips_enums_and_fixed_strings() {
        assert_eq!(ip("1.2.3.4", false).unwrap().0[..4], [4, 3, 2, 1]);
        assert_eq!(ip("1.2.3.4/32", false).unwrap().1, 4);
        assert!(ip("10.0.0.0/8", false).is_err());
        assert_eq!(ip("::1", true).unwrap().0[15], 1);
        assert_eq!(
            ip("1.2.3.4", true).unwrap().0[10..16],
            [0xff, 0xff, 1, 2, 3, 4]
        );
        let values = vec![("a".to_owned(), 1), ("b".to_owned(), -300)];
        assert_eq!(
            enum_value("b", 16, &values).unwrap().0[..2],
            (-300i16).to_le_bytes()
        );
        assert!(enum_value("c", 8, &values).is_err());
        assert_eq!(fixed_string("ab", 4).unwrap(), b"ab\0\0");
        assert!(fixed_string("abcde", 4).is_err());
    }

    #[test]
    fn maps_keep_order_and_digits_and_name_the_bad_member() {
        let bytes = map(r#"{"b": "x", "a": {"n": 1}, "c": null}"#, &ChType::String).unwrap();
        assert_eq!(bytes, b"\x03\x01b\x01x\x01a\x08{\"n\": 1}\x01c\x04null");
        let decimal_map = ChType::Decimal {
            precision: 18,
            scale: 12,
        };
        let bytes = map(r#"{"total": 0.000123456789}"#, &decimal_map).unwrap();
        assert_eq!(&bytes[7..15], &123_456_789i64.to_le_bytes()[..]);
        let err = map(r#"{"n": "x"}"#, &ChType::UInt(64)).unwrap_err();
        assert!(err.contains("key \"n\" holds \"x\""), "{err}");
        assert!(
            map("[1]", &ChType::String)
                .unwrap_err()
                .contains("not a JSON object")
        );
        let nullable = ChType::Nullable(Box::new(ChType::UInt(64)));
        assert_eq!(map(r#"{"a": null}"#, &nullable).unwrap(), b"\x01\x01a\x01");
    }
}
