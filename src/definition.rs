//! Background migration definitions: `migrations/background/*.toml`, one file per migration, run in name order.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::args::Args;

/// A background migration to register in the control table.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// Unique name; name order is run order.
    pub name: String,
    /// The kind (`backfill`) or custom script that runs it.
    pub script: String,
    /// The kind's parameters (table, key, ...), stored with the row.
    pub params: Value,
    /// Default `args`; an operator's later edits win.
    pub args: Value,
    /// Explicit dependencies; `None` means "after every migration before it in name order".
    pub depends_on: Option<Vec<String>>,
}

/// A definition file that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct DefinitionError {
    /// The file concerned.
    pub path: PathBuf,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Reads every `*.toml` in `dir`, sorted by name. A missing directory means no background migrations.
pub fn load_dir(dir: &Path) -> Result<Vec<Registration>, DefinitionError> {
    let err = |path: &Path, message: String| DefinitionError {
        path: path.to_owned(),
        message,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(dir, format!("cannot read the directory: {e}"))),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    let registrations = paths
        .iter()
        .map(|path| {
            let text =
                fs::read_to_string(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
            parse(&name_of(path), &text).map_err(|message| err(path, message))
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_dependencies(&registrations).map_err(|message| err(dir, message))?;
    Ok(registrations)
}

fn name_of(path: &Path) -> String {
    path.file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Parses one definition; `name` comes from the file name.
pub fn parse(name: &str, text: &str) -> Result<Registration, String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(format!(
            "the file name {name:?} must use only letters, digits, '_', '-' and '.' (it becomes the migration name)"
        ));
    }
    let table: toml::Table = toml::from_str(text).map_err(|e| format!("not valid TOML: {e}"))?;
    let Value::Object(mut params) = serde_json::to_value(table).map_err(|e| e.to_string())? else {
        unreachable!("a TOML table converts to a JSON object")
    };
    let script = take_script(&mut params)?;
    let args = params
        .remove("args")
        .unwrap_or_else(|| Value::Object(Map::new()));
    Args::parse(&args).map_err(|e| format!("[args]: {e}"))?;
    let depends_on = match params.remove("depends_on") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    other => Err(format!(
                        "depends_on must list migration names (strings), got {other}"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => {
            return Err(format!(
                "depends_on must be a list of migration names, got {other}"
            ));
        }
    };
    Ok(Registration {
        name: name.to_owned(),
        script,
        params: Value::Object(params),
        args,
        depends_on,
    })
}

fn take_script(params: &mut Map<String, Value>) -> Result<String, String> {
    match (params.remove("kind"), params.remove("script")) {
        (Some(Value::String(kind)), None) => Ok(kind),
        (None, Some(Value::String(script))) => Ok(script),
        (Some(_), Some(_)) => {
            Err("set either kind (a built-in) or script (a custom migration), not both".into())
        }
        (None, None) => Err(
            "missing kind: set kind = \"backfill\" (built-in) or script = \"NAME\" (custom)".into(),
        ),
        _ => Err("kind and script must be strings".into()),
    }
}

fn check_dependencies(registrations: &[Registration]) -> Result<(), String> {
    for registration in registrations {
        for dependency in registration.depends_on.iter().flatten() {
            if !registrations.iter().any(|r| &r.name == dependency) {
                return Err(format!(
                    "{} depends on {dependency:?}, which is not a migration in this directory",
                    registration.name
                ));
            }
            if dependency >= &registration.name {
                return Err(format!(
                    "{} depends on {dependency:?}, which sorts after it; a migration may depend only on earlier ones",
                    registration.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_backfill_definition_splits_into_script_params_and_args() {
        let reg = parse(
            "20241024_1216_cost",
            r#"
kind = "backfill"
store = "postgres"
table = "observations"
key = ["id"]
set = { total_cost = "coalesce(input_cost, 0)" }
[args]
batchSize = 5000
"#,
        )
        .unwrap();
        assert_eq!(reg.script, "backfill");
        assert_eq!(reg.args, json!({"batchSize": 5000}));
        assert_eq!(reg.params["table"], json!("observations"));
        assert!(reg.params.get("kind").is_none());
        assert_eq!(reg.depends_on, None);
    }

    #[test]
    fn a_definition_without_kind_says_what_to_add() {
        let err = parse("x", "table = \"t\"").unwrap_err();
        assert!(err.contains("missing kind"), "{err}");
    }

    #[test]
    fn bad_default_args_name_the_key() {
        let err = parse("x", "kind = \"backfill\"\n[args]\nbatchSize = \"many\"").unwrap_err();
        assert!(err.contains("args.batchSize"), "{err}");
    }

    #[test]
    fn a_dependency_must_be_an_earlier_migration() {
        let a = parse("a", "kind = \"k\"\ndepends_on = [\"b\"]").unwrap();
        let b = parse("b", "kind = \"k\"").unwrap();
        assert!(
            check_dependencies(&[a, b.clone()])
                .unwrap_err()
                .contains("sorts after")
        );
        let c = parse("c", "kind = \"k\"\ndepends_on = [\"zz\"]").unwrap();
        assert!(
            check_dependencies(&[b, c])
                .unwrap_err()
                .contains("not a migration")
        );
    }
}
