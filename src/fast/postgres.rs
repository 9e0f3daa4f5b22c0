//! `migrations/postgres/*.sql`, applied with sqlx's migrator: in version order, once, checksummed (an edited
//! applied file is refused), under an advisory lock held on a dedicated connection.

use std::path::Path;

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};

/// A fast migration that could not be applied; the process must not start.
#[derive(Debug, thiserror::Error)]
#[error("Postgres fast migrations in {dir}: {source}{hint}")]
pub struct FastMigrationError {
    /// The directory.
    pub dir: String,
    /// sqlx's error.
    #[source]
    pub source: MigrateError,
    hint: &'static str,
}

impl FastMigrationError {
    fn new(dir: &Path, source: MigrateError) -> Self {
        let hint = match source {
            MigrateError::VersionMismatch(_) => {
                "; an applied migration file was edited: restore it and put the change in a new file"
            }
            MigrateError::VersionMissing(_) => {
                "; the database has a migration this directory lacks: deploy the release that has it"
            }
            MigrateError::Execute(_) | MigrateError::ExecuteMigration(..) => {
                "; fix the SQL in a new release (nothing of the failing file was kept)"
            }
            _ => "",
        };
        Self {
            dir: dir.display().to_string(),
            source,
            hint,
        }
    }
}

impl FastMigrationError {
    /// True when the migrations directory itself must be fixed (an edited or missing file), not the server.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self.source,
            MigrateError::VersionMismatch(_) | MigrateError::VersionMissing(_)
        )
    }
}

/// Applies the pending migrations in `dir` (a missing directory means none); returns how many were applied.
pub async fn apply(pool: &PgPool, dir: &Path) -> Result<usize, FastMigrationError> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let migrator = Migrator::new(dir)
        .await
        .map_err(|e| FastMigrationError::new(dir, e))?;
    let before = applied_count(pool).await;
    migrator
        .run(pool)
        .await
        .map_err(|e| FastMigrationError::new(dir, e))?;
    let after = applied_count(pool).await;
    Ok(after.saturating_sub(before))
}

async fn applied_count(pool: &PgPool) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map(|n| n as usize)
        .unwrap_or(0)
}
