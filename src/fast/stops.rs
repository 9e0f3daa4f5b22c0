//! Deployment stops: a fast-migration file (Postgres or ClickHouse) whose first lines carry
//! `-- bgmigrate: requires_finished = ["NAME", ...]` is not applied, nor any file after it in its directory, while
//! a named background migration is unfinished.
//!
//! Layout: [`requires_finished`] reads a file's header (a malformed one names the file and line); [`Gate`] holds
//! the background migrations' statuses and says which of a file's requirements are unfinished; [`Stopped`] is the
//! error `migrate` and `web` end with, naming each unfinished migration and `bgmigrate finalize NAME`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::control::MigrationRecord;
use crate::status::Status;

/// How a header line starts.
pub const HEADER_PREFIX: &str = "-- bgmigrate:";

/// The only key a header line may set.
const REQUIRES_FINISHED: &str = "requires_finished";

/// A malformed `-- bgmigrate:` line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}, line {line}: {reason}", file.display())]
pub struct HeaderError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what to write instead.
    pub reason: String,
}

/// The background migrations that must be finished before `sql` (the text of `file`) applies: the
/// `-- bgmigrate: requires_finished = [...]` lines among its leading comment lines (several lines add up). Empty
/// when there is none.
pub fn requires_finished(file: &Path, sql: &str) -> Result<Vec<String>, HeaderError> {
    let error = |line: usize, reason: String| HeaderError {
        file: file.to_owned(),
        line,
        reason,
    };
    let mut names = Vec::new();
    let mut in_header = true;
    for (index, line) in sql.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let Some(comment) = trimmed.strip_prefix("--") else {
            in_header = false;
            continue;
        };
        let Some(directive) = comment.trim_start().strip_prefix("bgmigrate") else {
            continue;
        };
        // A comment that merely mentions bgmigrate is prose; one that sets requires_finished is a directive.
        let setting = match directive.strip_prefix(':') {
            Some(setting) => setting,
            None if directive.contains(REQUIRES_FINISHED) => {
                return Err(error(
                    number,
                    format!("write `{HEADER_PREFIX} {REQUIRES_FINISHED} = [\"NAME\", ...]`"),
                ));
            }
            None => continue,
        };
        // A directive after the first statement would be silently ignored by a reader who expects it to hold.
        if !in_header {
            return Err(error(
                number,
                format!(
                    "a `{HEADER_PREFIX}` line must come before any SQL: move it to the top of the file"
                ),
            ));
        }
        names.extend(parse_setting(setting).map_err(|reason| error(number, reason))?);
    }
    Ok(names)
}

/// `requires_finished = ["a", "b"]` → the names.
fn parse_setting(setting: &str) -> Result<Vec<String>, String> {
    let expected = format!("expected `{REQUIRES_FINISHED} = [\"NAME\", ...]`");
    let table: toml::Table =
        toml::from_str(setting.trim()).map_err(|e| format!("{expected}: {}", e.message()))?;
    let mut names = Vec::new();
    for (key, value) in table {
        if key != REQUIRES_FINISHED {
            return Err(format!("unknown setting {key:?}: {expected}"));
        }
        let items = value
            .as_array()
            .ok_or_else(|| format!("{REQUIRES_FINISHED} must be a list of names: {expected}"))?;
        if items.is_empty() {
            return Err(format!(
                "{REQUIRES_FINISHED} lists no migration: name at least one, or remove the line"
            ));
        }
        for item in items {
            match item.as_str().map(str::trim) {
                Some(name) if !name.is_empty() => names.push(name.to_owned()),
                _ => {
                    return Err(format!(
                        "{REQUIRES_FINISHED} must hold background migration names as strings, got {item}"
                    ));
                }
            }
        }
    }
    if names.is_empty() {
        return Err(expected);
    }
    Ok(names)
}

/// A fast-migration file with a `requires_finished` header.
#[derive(Debug, Clone, PartialEq)]
pub struct StopHeader {
    /// The file's version (its leading number).
    pub version: u64,
    /// The file.
    pub file: PathBuf,
    /// The background migrations it requires.
    pub requires: Vec<String>,
}

/// What applying one directory of fast migrations did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied {
    /// Files applied now.
    pub count: usize,
    /// The file held back at a deployment stop (nothing after it was applied either), if any.
    pub blocked: Option<Blocked>,
}

/// A required background migration that is not finished yet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unfinished {
    /// Its name.
    pub name: String,
    /// Its status (`pending` when it is being registered by this very run).
    pub status: Status,
    /// Rows done so far.
    pub rows_done: i64,
    /// Estimated rows in all, if known.
    pub rows_total: Option<i64>,
    /// Completion in percent, if known.
    pub percent: Option<f64>,
}

impl fmt::Display for Unfinished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.name, self.status)?;
        if let Some(percent) = self.percent {
            write!(f, ", {percent:.1}%")?;
        }
        match self.rows_total {
            Some(total) => write!(f, ", {} of {total} rows", self.rows_done)?,
            None => write!(f, ", {} rows done", self.rows_done)?,
        }
        write!(f, ")")
    }
}

/// A fast migration held back, and what it waits on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocked {
    /// `postgres` or `clickhouse`.
    pub store: &'static str,
    /// The file, as a path.
    pub file: String,
    /// The unfinished background migrations it requires, in the order it names them.
    pub waiting_on: Vec<Unfinished>,
}

/// A required name that no background migration has.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{}: requires_finished names {name:?}, but no background migration has that name (neither registered nor in \
     background/): fix the name, or ship its definition in this release",
    file.display()
)]
pub struct UnknownRequirement {
    /// The fast-migration file.
    pub file: PathBuf,
    /// The name it requires.
    pub name: String,
}

/// The statuses of the background migrations, against which fast migrations' requirements are checked.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    records: Vec<MigrationRecord>,
    /// Names being registered by this run, not in the control table yet: pending, nothing done.
    registering: Vec<String>,
}

impl Gate {
    /// A gate over the control table's rows, plus names that this run registers (they count as pending).
    pub fn new(records: Vec<MigrationRecord>, registering: Vec<String>) -> Self {
        Self {
            records,
            registering,
        }
    }

    /// Refuses a requirement that names no background migration.
    pub fn check_known(&self, file: &Path, requires: &[String]) -> Result<(), UnknownRequirement> {
        match requires.iter().find(|name| !self.knows(name)) {
            Some(name) => Err(UnknownRequirement {
                file: file.to_owned(),
                name: name.clone(),
            }),
            None => Ok(()),
        }
    }

    fn knows(&self, name: &str) -> bool {
        self.records.iter().any(|r| r.name == name) || self.registering.iter().any(|n| n == name)
    }

    /// The requirements of `file` that are not finished; `None` when it may apply.
    pub fn blocked(
        &self,
        store: &'static str,
        file: &Path,
        requires: &[String],
    ) -> Option<Blocked> {
        let waiting_on: Vec<Unfinished> = requires
            .iter()
            .filter_map(|name| self.unfinished(name))
            .collect();
        (!waiting_on.is_empty()).then(|| Blocked {
            store,
            file: file.display().to_string(),
            waiting_on,
        })
    }

    fn unfinished(&self, name: &str) -> Option<Unfinished> {
        match self.records.iter().find(|r| r.name == name) {
            Some(record) if record.status == Status::Finished => None,
            Some(record) => Some(Unfinished {
                name: name.to_owned(),
                status: record.status,
                rows_done: record.rows_done,
                rows_total: record.rows_total,
                percent: record.percent(),
            }),
            None => Some(Unfinished {
                name: name.to_owned(),
                status: Status::Pending,
                rows_done: 0,
                rows_total: None,
                percent: None,
            }),
        }
    }
}

/// Every deployment-stop header of the migrations directory `dir` (its `postgres/` and `clickhouse/`), with its
/// store, in application order per directory.
pub fn declared(dir: &Path) -> Result<Vec<(&'static str, StopHeader)>, String> {
    let postgres =
        super::postgres::stop_headers(&dir.join("postgres")).map_err(|e| e.to_string())?;
    let clickhouse = super::clickhouse::load(&dir.join("clickhouse")).map_err(|e| e.to_string())?;
    let clickhouse = clickhouse
        .into_iter()
        .filter(|m| !m.requires_finished.is_empty())
        .map(|m| StopHeader {
            version: m.version,
            file: m.path,
            requires: m.requires_finished,
        });
    Ok(postgres
        .into_iter()
        .map(|h| ("postgres", h))
        .chain(clickhouse.map(|h| ("clickhouse", h)))
        .collect())
}

/// The declared stops that wait now: those naming a background migration that is not finished. (A stop already
/// applied names finished migrations, so it does not show, unless one was retried from the start since.)
pub fn waiting(
    declared: &[(&'static str, StopHeader)],
    records: &[MigrationRecord],
) -> Vec<Blocked> {
    let gate = Gate::new(records.to_vec(), Vec::new());
    declared
        .iter()
        .filter_map(|(store, header)| gate.blocked(store, &header.file, &header.requires))
        .collect()
}

/// `migrate` and `web` stop here: fast migrations wait on unfinished background migrations.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct Stopped {
    /// Each held-back file (at most one per directory) and what it waits on.
    pub blocked: Vec<Blocked>,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deployment stop")?;
        for (i, blocked) in self.blocked.iter().enumerate() {
            let names: Vec<String> = blocked.waiting_on.iter().map(ToString::to_string).collect();
            write!(
                f,
                "{} {} fast migration {} (and the files after it) waits until these background migrations are \
                 finished: {}",
                if i == 0 { ":" } else { ";" },
                blocked.store,
                blocked.file,
                names.join(", ")
            )?;
        }
        let mut names: Vec<&str> = self
            .blocked
            .iter()
            .flat_map(|b| b.waiting_on.iter().map(|u| u.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        write!(
            f,
            "; the files before it were applied. Finish them with `bgmigrate finalize {}` (or let the workers \
             finish them), then run this again",
            names.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(sql: &str) -> Result<Vec<String>, HeaderError> {
        requires_finished(Path::new("0002_x.sql"), sql)
    }

    #[test]
    fn a_header_lists_the_required_migrations_and_several_lines_add_up() {
        let sql = "-- drops the old column\n-- bgmigrate: requires_finished = [\"a\", \"b\"]\n\
                   --bgmigrate: requires_finished = ['c']\nALTER TABLE t DROP COLUMN x;\n";
        assert_eq!(header(sql).unwrap(), vec!["a", "b", "c"]);
        assert_eq!(
            header("ALTER TABLE t ADD c int;").unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_malformed_header_names_the_line_and_what_to_write() {
        let cases = [
            ("\n-- bgmigrate: requires_finished = a\n", 2, "expected"),
            ("-- bgmigrate requires_finished = [\"a\"]\n", 1, "write"),
            ("-- bgmigrate: requires = [\"a\"]\n", 1, "unknown setting"),
            (
                "-- bgmigrate: requires_finished = []\n",
                1,
                "lists no migration",
            ),
            ("-- bgmigrate: requires_finished = [1]\n", 1, "as strings"),
            ("-- bgmigrate: requires_finished = \"a\"\n", 1, "a list"),
            (
                "SELECT 1;\n-- bgmigrate: requires_finished = [\"a\"]\n",
                2,
                "before any SQL",
            ),
        ];
        for (sql, line, words) in cases {
            let err = header(sql).unwrap_err();
            assert_eq!(err.line, line, "{sql}");
            assert!(err.to_string().contains(words), "{sql}: {err}");
            assert!(err.to_string().starts_with("0002_x.sql, line"), "{err}");
        }
    }
}
