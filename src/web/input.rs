//! Input the control store cannot hold, refused at the edge with a message naming the field: a migration name
//! with control characters (no definition file can produce one; Postgres refuses NUL in text), and args holding
//! the NUL character anywhere (Postgres's `jsonb` refuses `\u0000`), and numbers that could not be read back once
//! stored (`jsonb` keeps a number as exact decimal digits, so `-1.7976931348623157e308` comes back as 309 digits
//! that round past the largest f64). The CLI refuses the same input (exit 2).

use axum::http::StatusCode;
use serde_json::Value;

use super::error::ApiError;

/// Why `name` cannot be a migration name, if it cannot.
pub fn name_problem(name: &str) -> Option<String> {
    name.chars().any(char::is_control).then(|| {
        format!(
            "the migration name {name:?} contains control characters, which no migration name has"
        )
    })
}

/// `number` as exact decimal digits, the way Postgres's `numeric` prints it (`1.5e3` → `1500`, `1e-5` → `0.00001`).
fn plain_decimal(number: &str) -> String {
    let (mantissa, exponent) = match number.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => return number.to_owned(),
    };
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let point = whole.len() as i32 + exponent;
    if point <= 0 {
        format!(
            "{sign}0.{}{digits}",
            "0".repeat(point.unsigned_abs() as usize)
        )
    } else if point as usize >= digits.len() {
        format!(
            "{sign}{digits}{}",
            "0".repeat(point as usize - digits.len())
        )
    } else {
        let (a, b) = digits.split_at(point as usize);
        format!("{sign}{a}.{b}")
    }
}

/// Whether a number survives being stored and read back (see the module doc).
fn reads_back(number: &serde_json::Number) -> bool {
    number.is_i64()
        || number.is_u64()
        || serde_json::from_str::<Value>(&plain_decimal(&number.to_string())).is_ok()
}

/// Why `args` cannot be stored, if it cannot: the path of the first key or value holding a NUL character, or of a
/// number that could not be read back.
pub fn args_problem(args: &Value) -> Option<String> {
    if let Some(path) = unreadable_number(args, "args") {
        return Some(format!(
            "{path} is a number too close to the limits of a 64-bit float to be read back once stored; use a \
             smaller one"
        ));
    }
    fn walk(value: &Value, path: &str) -> Option<String> {
        match value {
            Value::String(text) if text.contains('\0') => Some(path.to_owned()),
            Value::Object(map) => map.iter().find_map(|(key, value)| {
                let here = format!("{path}.{}", key.replace('\0', "\\u0000"));
                if key.contains('\0') {
                    Some(here)
                } else {
                    walk(value, &here)
                }
            }),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item, &format!("{path}[{i}]"))),
            _ => None,
        }
    }
    walk(args, "args").map(|path| {
        format!("{path} contains the NUL character (\\u0000), which the control store cannot hold; remove it")
    })
}

fn unreadable_number(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::Number(number) if !reads_back(number) => Some(path.to_owned()),
        Value::Object(map) => map
            .iter()
            .find_map(|(key, value)| unreadable_number(value, &format!("{path}.{key}"))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| unreadable_number(item, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// 400 for a name no migration can have.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    match name_problem(name) {
        Some(problem) => Err(ApiError::bad_request(problem)),
        None => Ok(()),
    }
}

/// 422 for args the control store cannot hold.
pub fn check_args(args: &Value) -> Result<(), ApiError> {
    match args_problem(args) {
        Some(problem) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{problem}; nothing was changed"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_nul_anywhere_in_args_is_named_by_its_path() {
        assert_eq!(args_problem(&json!({"batchSize": 5, "x": ["ok"]})), None);
        let problem = args_problem(&json!({"nested": {"list": ["a", "b\u{0}"]}})).unwrap();
        assert!(
            problem.starts_with("args.nested.list[1] contains the NUL"),
            "{problem}"
        );
        assert!(
            args_problem(&json!({"k\u{0}": 1}))
                .unwrap()
                .starts_with("args.k\\u0000")
        );
    }

    #[test]
    fn numbers_that_would_not_read_back_are_named() {
        assert_eq!(plain_decimal("1.5e3"), "1500");
        assert_eq!(plain_decimal("-1e-5"), "-0.00001");
        assert_eq!(plain_decimal("4.25e1"), "42.5");
        assert_eq!(
            args_problem(&json!({"a": [1e-5, 4.8473123580108755e184, 1e300]})),
            None
        );
        let problem = args_problem(&json!({"r": {"x": [f64::MIN]}})).unwrap();
        assert!(
            problem.starts_with("args.r.x[0] is a number too close"),
            "{problem}"
        );
    }
}
