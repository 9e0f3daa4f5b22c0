//! JSON columns that an operator may have written by hand (the README's troubleshooting SQL): Postgres' `jsonb`
//! accepts numbers such as `1e400` that no JSON reader here can hold. Such a row must not take every list, page and
//! worker down with it, so it is read with each such number replaced by a marker string, and the row says which key
//! holds what and how to fix it.

use serde_json::Value;

/// Marker strings start with this, so a repair can tell them from real values.
const MARKER: &str = "\u{fffd}unreadable number ";

/// At most this many numbers are replaced in one document (each replacement re-parses it).
const MAX_REPLACED: usize = 64;

/// One number that could not be read, and where it stood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unreadable {
    /// The JSON column (`args`, `state`, ...).
    pub(super) column: &'static str,
    /// The key path inside the document, e.g. `batchSize` or `cursor.0`.
    pub(super) path: String,
    /// The number as written (shortened when long).
    pub(super) number: String,
}

impl Unreadable {
    /// A sentence naming every unreadable number of migration `name` and how to fix it; `None` when all was read.
    pub(super) fn explain(all: &[Unreadable], name: &str) -> Option<String> {
        if all.is_empty() {
            return None;
        }
        let parts: Vec<String> = all
            .iter()
            .map(|u| {
                let fix = match u.column {
                    "args" => format!(
                        "fix it with `bgmigrate set-args {name} '{{\"{}\": ...}}'`",
                        u.path
                    ),
                    "state" => format!(
                        "fix the state, or run `bgmigrate retry {name} --from-start` to start over"
                    ),
                    _ => "fix it with SQL".to_owned(),
                };
                format!(
                    "{}.{} holds {}, a number outside what can be read (about ±1.8e308): {fix}",
                    u.column, u.path, u.number
                )
            })
            .collect();
        Some(parts.join("; "))
    }
}

/// Parses `text`; numbers beyond the f64 range become marker strings, reported beside the value. Any other
/// syntax error is returned as it is.
pub(super) fn parse_lenient(
    column: &'static str,
    text: &str,
) -> Result<(Value, Vec<Unreadable>), serde_json::Error> {
    let mut text = std::borrow::Cow::Borrowed(text);
    let mut replaced = Vec::new();
    loop {
        match serde_json::from_str::<Value>(&text) {
            Ok(value) => {
                let mut found = Vec::new();
                collect_markers(&value, column, String::new(), &mut found);
                return Ok((value, found));
            }
            Err(err) if replaced.len() < MAX_REPLACED && is_out_of_range(&err) => {
                let Some((start, end)) = number_at(&text, &err) else {
                    return Err(err);
                };
                let number = text[start..end].to_owned();
                let marker = format!("\"{MARKER}{}\"", shorten(&number));
                text =
                    std::borrow::Cow::Owned(format!("{}{marker}{}", &text[..start], &text[end..]));
                replaced.push(number);
            }
            Err(err) => return Err(err),
        }
    }
}

/// Whether `value` is a marker left by [`parse_lenient`] (a value an operator has not repaired yet).
pub(super) fn is_unreadable_marker(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.starts_with(MARKER))
}

fn is_out_of_range(err: &serde_json::Error) -> bool {
    err.to_string().starts_with("number out of range")
}

/// The byte range of the number token where `err` was detected.
fn number_at(text: &str, err: &serde_json::Error) -> Option<(usize, usize)> {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(err.line().saturating_sub(1))
        .map(str::len)
        .sum();
    let at = (line_start + err.column().saturating_sub(1)).min(text.len());
    let bytes = text.as_bytes();
    let in_number = |b: u8| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    // The reader stops at or just after the number's last character.
    let mut end = at;
    while end < bytes.len() && in_number(bytes[end]) {
        end += 1;
    }
    let mut start = end;
    while start > 0 && in_number(bytes[start - 1]) {
        start -= 1;
    }
    (start < end).then_some((start, end))
}

fn shorten(number: &str) -> String {
    if number.len() > 24 {
        format!("{}… ({} characters)", &number[..20], number.len())
    } else {
        number.to_owned()
    }
}

fn collect_markers(value: &Value, column: &'static str, path: String, found: &mut Vec<Unreadable>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                collect_markers(item, column, join(key), found);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_markers(item, column, join(&i.to_string()), found);
            }
        }
        Value::String(s) if s.starts_with(MARKER) => found.push(Unreadable {
            column,
            path,
            number: s[MARKER.len()..].to_owned(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_readable_document_is_read_as_it_is() {
        let (value, problems) = parse_lenient("args", r#"{"batchSize": 2500}"#).unwrap();
        assert_eq!(value, json!({"batchSize": 2500}));
        assert!(problems.is_empty());
    }

    #[test]
    fn numbers_beyond_f64_become_markers_named_by_their_key_path() {
        let text = "{\"a\": 1, \"batchSize\": 1e400, \"n\": {\"deep\": [2, -1e999]}}";
        let (value, problems) = parse_lenient("args", text).unwrap();
        assert_eq!(value["a"], json!(1));
        assert!(is_unreadable_marker(&value["batchSize"]));
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["batchSize", "n.deep.1"]);
        assert_eq!(problems[1].number, "-1e999");
        let reason = Unreadable::explain(&problems, "0001_x").unwrap();
        assert!(reason.contains("args.batchSize holds 1e400"), "{reason}");
        assert!(reason.contains("bgmigrate set-args 0001_x"), "{reason}");
    }

    #[test]
    fn a_401_digit_integer_as_postgres_prints_1e400_is_shortened() {
        let text = format!("{{\"batchSize\": 1{}}}", "0".repeat(400));
        let (_, problems) = parse_lenient("state", &text).unwrap();
        assert_eq!(problems[0].number, "10000000000000000000… (401 characters)");
    }

    #[test]
    fn other_syntax_errors_are_still_errors() {
        assert!(parse_lenient("args", "{\"a\": }").is_err());
    }
}
