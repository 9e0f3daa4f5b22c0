//! `bgmigrate add DESCRIPTION --kind KIND | --fast STORE`: writes a commented template for a new migration, named so
//! that it runs after the ones already there, and never over an existing file.
//!
//! Background definitions are named `YYYYMMDD_HHMM_description.toml` (UTC: name order is run order); fast
//! migrations `NNNN_description.sql` (Postgres) or `NNNN_description.up.sql` (ClickHouse), one version after the
//! highest in their directory.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::BadInput;

/// Options of `bgmigrate add`: exactly one of `--kind` and `--fast`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["kind", "fast"])))]
pub struct AddArgs {
    /// What the migration does, in a few words: it becomes the file name (`add total cost` →
    /// `20241024_1730_add_total_cost.toml`). Letters, digits, spaces, '_' and '-'.
    description: String,
    /// A background migration of this built-in kind, in <migrations-dir>/background/.
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// A fast migration (schema change applied when web or migrate starts), in <migrations-dir>/postgres/ or
    /// <migrations-dir>/clickhouse/.
    #[arg(long, value_enum)]
    fast: Option<FastStore>,
}

/// The built-in kinds a template exists for.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    /// An in-place UPDATE, batch by batch.
    Backfill,
    /// Rows from one store into another.
    Copy,
    /// INSERT ... SELECT inside ClickHouse, partition by partition.
    #[value(name = "clickhouse_rewrite")]
    ClickhouseRewrite,
}

/// The stores fast migrations are written for.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FastStore {
    /// migrations/postgres/NNNN_description.sql
    Postgres,
    /// migrations/clickhouse/NNNN_description.up.sql
    Clickhouse,
}

/// Writes the template and prints its path.
pub fn run(dir: &Path, args: AddArgs) -> anyhow::Result<ExitCode> {
    let slug = file_name_part(&args.description)?;
    let (path, template) = match (args.kind, args.fast) {
        (Some(kind), _) => {
            let stamp = chrono::Utc::now().format("%Y%m%d_%H%M");
            let template = match kind {
                Kind::Backfill => include_str!("templates/backfill.toml"),
                Kind::Copy => include_str!("templates/copy.toml"),
                Kind::ClickhouseRewrite => include_str!("templates/clickhouse_rewrite.toml"),
            };
            let path = dir.join("background").join(format!("{stamp}_{slug}.toml"));
            (path, template)
        }
        (None, Some(FastStore::Postgres)) => {
            let folder = dir.join("postgres");
            let version = next_version(&folder)?;
            let path = folder.join(format!("{version:04}_{slug}.sql"));
            (path, include_str!("templates/postgres.sql"))
        }
        (None, Some(FastStore::Clickhouse)) => {
            let folder = dir.join("clickhouse");
            let version = next_version(&folder)?;
            let path = folder.join(format!("{version:04}_{slug}.up.sql"));
            (path, include_str!("templates/clickhouse.sql"))
        }
        (None, None) => unreachable!("clap requires --kind or --fast"),
    };
    let title = args
        .description
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let text = template.replace("{description}", &title);
    write_new(&path, &text)?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// The description as part of a file name: lower case, runs of spaces as one `_`. Anything that is not a letter,
/// digit, space, `_` or `-` is refused (a `/` would leave the directory, a `.` would change the extension).
fn file_name_part(description: &str) -> Result<String, BadInput> {
    const LONGEST: usize = 80;
    let words: Vec<&str> = description.split_whitespace().collect();
    let slug = words.join("_").to_ascii_lowercase();
    if slug.is_empty() {
        return Err(BadInput(
            "the description is empty: say in a few words what the migration does, e.g. `bgmigrate add \"fill total cost\" --kind backfill`".into(),
        ));
    }
    if let Some(bad) = slug
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(BadInput(format!(
            "the description {description:?} cannot become a file name: {bad:?} is not allowed; use letters, \
             digits, spaces, '_' and '-'"
        )));
    }
    if slug.len() > LONGEST {
        return Err(BadInput(format!(
            "the description is {} characters long as a file name; keep it to {LONGEST}",
            slug.len()
        )));
    }
    Ok(slug)
}

/// One more than the highest `NNNN_` version in `folder` (1 for an empty or missing folder).
fn next_version(folder: &Path) -> anyhow::Result<u64> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(1),
        Err(err) => return Err(err).with_context(|| format!("read {}", folder.display())),
    };
    let highest = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.split_once('_')?.0.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0);
    Ok(highest + 1)
}

/// Creates `path` (and its folder) with `text`; an existing file is refused, never overwritten.
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).with_context(|| format!("create {}", folder.display()))?;
    }
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(BadInput(format!(
                "{} already exists and is never overwritten: choose another description (or edit that file)",
                path.display()
            ))
            .into());
        }
        Err(err) => return Err(err).with_context(|| format!("create {}", path.display())),
    };
    file.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_becomes_a_lower_case_file_name_part() {
        assert_eq!(
            file_name_part("  Fill total-cost  now ").unwrap(),
            "fill_total-cost_now"
        );
    }

    #[test]
    fn a_description_that_would_leave_the_directory_or_change_the_extension_is_refused() {
        for bad in ["../etc/passwd", "a.b", "", "   ", "émoji"] {
            assert!(file_name_part(bad).is_err(), "{bad:?}");
        }
        assert!(file_name_part(&"x".repeat(81)).is_err());
    }
}
