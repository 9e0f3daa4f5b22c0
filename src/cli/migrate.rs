//! `bgmigrate migrate`: fast migrations, then registration of background definitions.

use std::path::Path;
use std::process::ExitCode;

use bgmigrate::config::Connected;
use bgmigrate::{builtin_registry, definition, fast};

/// Applies fast migrations and registers background definitions; refuses (and changes nothing) on a bad definition.
pub async fn run(connected: &Connected, dir: &Path) -> anyhow::Result<ExitCode> {
    let registrations = load_and_check(connected, dir)?;
    let clickhouse_dir = dir.join("clickhouse");
    check_clickhouse(connected, &clickhouse_dir)?;
    let applied = fast::postgres::apply(&connected.pool, &dir.join("postgres")).await?;
    tracing::info!(applied, "Postgres fast migrations applied");
    if let Some(clickhouse) = &connected.clickhouse {
        let applied = fast::clickhouse::apply(&connected.pool, clickhouse, &clickhouse_dir).await?;
        tracing::info!(applied, clickhouse = %clickhouse.id(), "ClickHouse fast migrations applied");
    }
    register(connected, &registrations).await?;
    Ok(ExitCode::SUCCESS)
}

/// Reads `clickhouse/*.up.sql` (checking their names) and refuses, before anything is applied, when there are
/// files but no ClickHouse is configured.
fn check_clickhouse(connected: &Connected, dir: &Path) -> anyhow::Result<()> {
    let files = fast::clickhouse::load(dir)?;
    if connected.clickhouse.is_none() && !files.is_empty() {
        return Err(super::BadInput(format!(
            "{} holds {} ClickHouse fast migrations but no ClickHouse is configured: set CLICKHOUSE_URL or \
             --clickhouse-url (http://user:password@host:8123/database)",
            dir.display(),
            files.len()
        ))
        .into());
    }
    Ok(())
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
