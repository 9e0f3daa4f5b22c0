//! Input the control store cannot hold, refused at the edge with a message naming the field: a migration name
//! with control characters (no definition file can produce one; Postgres refuses NUL in text), and args holding
//! the NUL character anywhere (Postgres's `jsonb` refuses `\u0000`). The CLI refuses the same input (exit 2).

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

/// Why `args` cannot be stored, if it cannot: the path of the first key or value holding a NUL character.
pub fn args_problem(args: &Value) -> Option<String> {
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
}
