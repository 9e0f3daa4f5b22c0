//! `bgmigrate migrate`: fast migrations, then registration of background definitions.

use std::path::Path;
use std::process::ExitCode;

use bgmigrate::config::Connected;
use bgmigrate::{builtin_registry, definition, fast};

use super::BadInput;

/// Applies fast migrations and registers background definitions; refuses (and changes nothing) on a bad definition.
pub async fn run(connected: &Connected, dir: &Path) -> anyhow::Result<ExitCode> {
    let registrations = load_and_check(connected, dir)?;
    let postgres_dir = dir.join("postgres");
    match &connected.pool {
        Some(pool) => {
            let applied = fast::postgres::apply(pool, &postgres_dir).await?;
            tracing::info!(applied, "Postgres fast migrations applied");
        }
        None if has_sql_files(&postgres_dir) => {
            return Err(BadInput(format!(
                "{} holds Postgres fast migrations, but the control store is not Postgres: set DATABASE_URL to \
                 postgres://user@host:port/database, or remove the directory",
                postgres_dir.display()
            ))
            .into());
        }
        None => {}
    }
    register(connected, &registrations).await?;
    Ok(ExitCode::SUCCESS)
}

fn has_sql_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|entry| entry.path().extension().is_some_and(|ext| ext == "sql"))
    })
}

/// Reads `background/*.toml` and checks each against the kinds of this build, before anything is written.
pub fn load_and_check(
    connected: &Connected,
    dir: &Path,
) -> anyhow::Result<Vec<definition::Registration>> {
    let background = dir.join("background");
    let registrations = definition::load_dir(&background)?;
    let registry = builtin_registry();
    for registration in &registrations {
        if registry.knows(&registration.script) {
            registry
                .build(
                    &registration.script,
                    &registration.params,
                    &connected.stores,
                )
                .map_err(|message| definition::DefinitionError {
                    path: background.join(format!("{}.toml", registration.name)),
                    message,
                })?;
        }
    }
    Ok(registrations)
}

/// Creates the control tables if needed and inserts new definitions (existing rows and their args are kept).
pub async fn register(
    connected: &Connected,
    registrations: &[definition::Registration],
) -> anyhow::Result<()> {
    connected.control.ensure_schema().await?;
    let inserted = connected
        .control
        .register(registrations, &builtin_registry())
        .await?;
    for name in &inserted {
        tracing::info!(migration = %name, "registered background migration");
    }
    Ok(())
}
