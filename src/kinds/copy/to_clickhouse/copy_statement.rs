//! The `COPY (<read>) TO STDOUT (FORMAT binary)` that runs a copy batch's read.
//!
//! `COPY` takes no bind parameters, so the read's placeholders (`$1`, `$2`, ...) are replaced by literals here. The
//! read embeds the definition's own SQL (its `where` filter, its source query), where a `$1` may sit inside a string,
//! a quoted identifier, a dollar-quoted string or a comment, and must stay as written: the statement is scanned as
//! Postgres' lexer scans it, and only a `$n` outside all of those, not part of an identifier, is a placeholder.

use std::fmt::Write;

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// Text, written as an escape string (`E'...'`), whose meaning does not depend on `standard_conforming_strings`.
    Text(String),
    /// An integer.
    Int(i64),
}

/// A placeholder the statement names but no literal was given for: a bug in the caller, never user input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the read names parameter ${0}, but only {1} were given")]
pub struct MissingLiteral(usize, usize);

/// `COPY (<statement with its placeholders replaced by literals>) TO STDOUT (FORMAT binary)`.
pub fn copy_out_binary(statement: &str, literals: &[Literal]) -> Result<String, MissingLiteral> {
    Ok(format!(
        "COPY ({}) TO STDOUT (FORMAT binary)",
        inline(statement, literals)?
    ))
}

/// `statement` with each placeholder `$n` replaced by `literals[n - 1]`.
fn inline(statement: &str, literals: &[Literal]) -> Result<String, MissingLiteral> {
    let bytes = statement.as_bytes();
    let mut out = String::with_capacity(statement.len() + 64);
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        let after_word = at > 0 && is_word_byte(bytes[at - 1]);
        at = match bytes[at] {
            b'\'' => {
                let escapes = after_word
                    && matches!(bytes[at - 1], b'e' | b'E')
                    && !(at > 1 && is_word_byte(bytes[at - 2]));
                quoted_end(bytes, at, b'\'', escapes)
            }
            b'"' => quoted_end(bytes, at, b'"', false),
            b'-' if bytes.get(at + 1) == Some(&b'-') => line_end(bytes, at),
            b'/' if bytes.get(at + 1) == Some(&b'*') => comment_end(bytes, at),
            b'$' if !after_word => match placeholder(bytes, at) {
                Some((number, end)) => {
                    let literal = number
                        .checked_sub(1)
                        .and_then(|i| literals.get(i))
                        .ok_or(MissingLiteral(number, literals.len()))?;
                    out.push_str(&statement[copied..at]);
                    write_literal(&mut out, literal);
                    copied = end;
                    end
                }
                None => dollar_quoted_end(bytes, at),
            },
            _ => at + 1,
        };
    }
    out.push_str(&statement[copied..]);
    Ok(out)
}

/// Letters, digits, `_`, `$` and any non-ASCII byte continue an identifier or keyword (`a$1` is one identifier).
fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || !byte.is_ascii()
}

/// The end of the string or identifier opened by `quote` at `start`: a doubled quote stays inside, and in an escape
/// string a backslash takes the next byte with it.
fn quoted_end(bytes: &[u8], start: usize, quote: u8, escapes: bool) -> usize {
    let mut at = start + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' if escapes => at += 2,
            b if b == quote && bytes.get(at + 1) == Some(&quote) => at += 2,
            b if b == quote => return at + 1,
            _ => at += 1,
        }
    }
    bytes.len()
}

fn line_end(bytes: &[u8], start: usize) -> usize {
    bytes[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| start + i + 1)
}

/// The end of the block comment at `start`; Postgres nests them.
fn comment_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut at = start;
    while at + 1 < bytes.len() {
        match (bytes[at], bytes[at + 1]) {
            (b'/', b'*') => {
                depth += 1;
                at += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                at += 2;
                if depth == 0 {
                    return at;
                }
            }
            _ => at += 1,
        }
    }
    bytes.len()
}

/// `$n` at `start`: its number and the end of its digits.
fn placeholder(bytes: &[u8], start: usize) -> Option<(usize, usize)> {
    let digits = bytes[start + 1..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    let end = start + 1 + digits;
    let number = std::str::from_utf8(&bytes[start + 1..end])
        .ok()?
        .parse()
        .ok()?;
    Some((number, end))
}

/// The end of a dollar-quoted string opened at `start` (`$$...$$`, `$tag$...$tag$`); a lone `$` is one byte.
fn dollar_quoted_end(bytes: &[u8], start: usize) -> usize {
    let tag_len = bytes[start + 1..]
        .iter()
        .take_while(|&&b| b != b'$' && is_word_byte(b))
        .count();
    let close = start + 1 + tag_len;
    if bytes.get(close) != Some(&b'$') {
        return start + 1;
    }
    let tag = &bytes[start..=close];
    bytes[close + 1..]
        .windows(tag.len())
        .position(|window| window == tag)
        .map_or(bytes.len(), |i| close + 1 + i + tag.len())
}

fn write_literal(out: &mut String, literal: &Literal) {
    match literal {
        Literal::Int(value) => {
            let _ = write!(out, "({value})");
        }
        Literal::Text(text) => {
            out.push_str("E'");
            for c in text.chars() {
                match c {
                    '\'' => out.push_str("''"),
                    '\\' => out.push_str("\\\\"),
                    c => out.push(c),
                }
            }
            out.push('\'');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Literal {
        Literal::Text(s.into())
    }

    #[test]
    fn placeholders_become_literals_and_casts_stay() {
        let sql = "SELECT a FROM t WHERE (k) > ($1::text) AND ctid < $2::tid LIMIT $3::bigint";
        assert_eq!(
            inline(sql, &[text("o'k\\"), text("(5,0)"), Literal::Int(10)]).unwrap(),
            "SELECT a FROM t WHERE (k) > (E'o''k\\\\'::text) AND ctid < E'(5,0)'::tid LIMIT (10)::bigint"
        );
    }

    #[test]
    fn ten_placeholders_are_not_read_as_one_and_a_zero() {
        let literals: Vec<Literal> = (1..=10).map(Literal::Int).collect();
        assert_eq!(inline("$10 + $1", &literals).unwrap(), "(10) + (1)");
    }

    #[test]
    fn dollars_in_the_definitions_own_sql_stay_as_written() {
        let sql = "SELECT 'costs $1' AS \"col$2\", E'it\\'s $1', a$1, $$ $1 $$, $tag$ $1 $tag$ -- $1\n\
                   FROM t /* $1 /* $1 */ $1 */ WHERE x = $1";
        assert_eq!(
            inline(sql, &[text("v")]).unwrap(),
            "SELECT 'costs $1' AS \"col$2\", E'it\\'s $1', a$1, $$ $1 $$, $tag$ $1 $tag$ -- $1\n\
             FROM t /* $1 /* $1 */ $1 */ WHERE x = E'v'"
        );
    }

    #[test]
    fn a_placeholder_without_a_literal_is_an_error() {
        assert_eq!(inline("$1, $2", &[text("a")]), Err(MissingLiteral(2, 1)));
        assert_eq!(inline("$0", &[text("a")]), Err(MissingLiteral(0, 1)));
    }

    #[test]
    fn the_read_is_wrapped_in_a_binary_copy() {
        assert_eq!(
            copy_out_binary("SELECT $1::int", &[Literal::Int(-3)]).unwrap(),
            "COPY (SELECT (-3)::int) TO STDOUT (FORMAT binary)"
        );
    }
}
