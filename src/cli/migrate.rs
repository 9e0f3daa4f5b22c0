//! `bgmigrate migrate`: fast migrations, then registration of background definitions.

use std::path::Path;
use std::process::ExitCode;

use bgmigrate::config::Connected;
use bgmigrate::fast::stops::{Blocked, Gate, Stopped};
use bgmigrate::{builtin_registry, definition, fast};

use super::BadInput;

/// Applies fast migrations (each directory up to its deployment stop), then registers background definitions;
/// refuses (and changes nothing) on a bad definition or header. Ends with [`Stopped`] when a deployment stop held
/// files back: the background migrations are registered by then, so the workers (or `finalize`) can finish them.
///
/// Fast migrations apply before registration, so that a background migration a release ships is never claimed by
/// a running worker before the columns or tables it needs exist; a `requires_finished` naming a migration that
/// this run registers counts it as pending, so a release can ship the migration and its stop together.
pub async fn run(connected: &Connected, dir: &Path) -> anyhow::Result<ExitCode> {
    if !dir.is_dir() {
        // Most likely a typo: applying "nothing" and exiting 0 would hide it until the release misses its schema.
        return Err(BadInput(format!(
            "the migrations directory {} does not exist: point --migrations-dir (BGMIGRATE_MIGRATIONS_DIR, default \
             ./migrations) at the directory holding postgres/, clickhouse/ and background/, or create it",
            dir.display()
        ))
        .into());
    }
    let registrations = load_and_check(connected, dir)?;
    let clickhouse_dir = dir.join("clickhouse");
    let clickhouse_files = check_clickhouse(connected, &clickhouse_dir)?;
    let postgres_dir = dir.join("postgres");
    let Some(pool) = &connected.pool else {
        refuse_without_postgres(connected, &postgres_dir, &clickhouse_dir)?;
        register(connected, &registrations).await?;
        return Ok(ExitCode::SUCCESS);
    };
    let postgres_stops = fast::postgres::stop_headers(&postgres_dir)?;
    let gate = gate(connected, &registrations).await?;
    for (file, requires) in postgres_stops.iter().map(|h| (&h.file, &h.requires)).chain(
        clickhouse_files
            .iter()
            .map(|m| (&m.path, &m.requires_finished)),
    ) {
        gate.check_known(file, requires)?;
    }
    let postgres = fast::postgres::apply(pool, &postgres_dir, &postgres_stops, &gate).await?;
    tracing::info!(applied = postgres.count, "Postgres fast migrations applied");
    let mut blocked: Vec<Blocked> = postgres.blocked.into_iter().collect();
    if let Some(clickhouse) = &connected.clickhouse {
        let applied = fast::clickhouse::apply(pool, clickhouse, &clickhouse_dir, &gate).await?;
        tracing::info!(applied = applied.count, clickhouse = %clickhouse.id(), "ClickHouse fast migrations applied");
        blocked.extend(applied.blocked);
    }
    register(connected, &registrations).await?;
    if !blocked.is_empty() {
        return Err(Stopped { blocked }.into());
    }
    Ok(ExitCode::SUCCESS)
}

/// The background migrations' statuses, with those this run registers counted as pending.
async fn gate(
    connected: &Connected,
    registrations: &[definition::Registration],
) -> anyhow::Result<Gate> {
    connected.control.ensure_schema().await?;
    let records = connected.control.list().await?;
    let registering = registrations.iter().map(|r| r.name.clone()).collect();
    Ok(Gate::new(records, registering))
}

/// Reads `clickhouse/*.up.sql` (checking their names and headers) and refuses, before anything is applied, when
/// there are files but no ClickHouse is configured.
fn check_clickhouse(
    connected: &Connected,
    dir: &Path,
) -> anyhow::Result<Vec<fast::clickhouse::ClickHouseMigration>> {
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
    Ok(files)
}

/// Without a Postgres control store, refuses (before anything is applied) fast migrations that need Postgres: its
/// own SQL files, and ClickHouse files (applied under a Postgres advisory lock).
fn refuse_without_postgres(
    connected: &Connected,
    postgres_dir: &Path,
    clickhouse_dir: &Path,
) -> anyhow::Result<()> {
    if has_sql_files(postgres_dir) {
        return Err(BadInput(format!(
            "{} holds Postgres fast migrations, but the control store is not Postgres: set DATABASE_URL to \
             postgres://user@host:port/database, or remove the directory",
            postgres_dir.display()
        ))
        .into());
    }
    if connected.clickhouse.is_some() && !fast::clickhouse::load(clickhouse_dir)?.is_empty() {
        return Err(BadInput(format!(
            "{} holds ClickHouse fast migrations, which are applied under a Postgres advisory lock, but the control \
             store is not Postgres: set DATABASE_URL to postgres://user@host:port/database",
            clickhouse_dir.display()
        ))
        .into());
    }
    Ok(())
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
