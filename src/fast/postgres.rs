//! `migrations/postgres/*.sql`, applied with sqlx's migrator: in version order, once, checksummed (an edited
//! applied file is refused), under an advisory lock held on a dedicated connection.

use std::path::Path;

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};

use super::stops::{Applied, Gate, HeaderError, StopHeader, requires_finished};

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

/// The files of `dir` (`VERSION_name.sql`, `.up.sql`) that carry a deployment-stop header, by version; a missing
/// directory has none. Files whose name has no version are left to sqlx, which names them.
pub fn stop_headers(dir: &Path) -> Result<Vec<StopHeader>, HeaderError> {
    let unreadable = |reason: String| HeaderError {
        file: dir.to_owned(),
        line: 0,
        reason,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(unreadable(format!("cannot read the directory: {e}"))),
    };
    let mut headers = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| unreadable(format!("cannot read the directory: {e}")))?
            .path();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        if !file.ends_with(".sql") || file.ends_with(".down.sql") {
            continue;
        }
        let Some(version) = file
            .split_once('_')
            .and_then(|(version, _)| version.parse::<u64>().ok())
        else {
            continue;
        };
        let sql = std::fs::read_to_string(&path).map_err(|e| HeaderError {
            file: path.clone(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        let requires = requires_finished(&path, &sql)?;
        if !requires.is_empty() {
            headers.push(StopHeader {
                version,
                file: path,
                requires,
            });
        }
    }
    headers.sort_by_key(|h| h.version);
    Ok(headers)
}

/// Applies the pending migrations in `dir` (a missing directory means none) in order, up to the first pending file
/// whose `requires_finished` the `gate` holds back (that file and those after it are not applied).
pub async fn apply(
    pool: &PgPool,
    dir: &Path,
    headers: &[StopHeader],
    gate: &Gate,
) -> Result<Applied, FastMigrationError> {
    if !dir.is_dir() {
        return Ok(Applied::default());
    }
    let migrator = Migrator::new(dir)
        .await
        .map_err(|e| FastMigrationError::new(dir, e))?;
    let applied = applied_versions(pool).await;
    let blocked = headers
        .iter()
        .filter(|h| !applied.contains(&(h.version as i64)))
        .find_map(|h| {
            gate.blocked("postgres", &h.file, &h.requires)
                .map(|b| (h.version, b))
        });
    let before = applied.len();
    let result = match &blocked {
        // sqlx applies every version up to and including the target; versions are integers.
        Some((version, _)) => migrator.run_to(*version as i64 - 1, pool).await,
        None => migrator.run(pool).await,
    };
    result.map_err(|e| FastMigrationError::new(dir, e))?;
    let after = applied_versions(pool).await.len();
    Ok(Applied {
        count: after.saturating_sub(before),
        blocked: blocked.map(|(_, b)| b),
    })
}

/// The versions applied so far (none before the first run created the table).
async fn applied_versions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}
