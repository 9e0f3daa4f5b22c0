//! `migrations/clickhouse/NNNN_name.up.sql`: applied in version order, once, each file's statements one by one,
//! recorded in a `schema_migrations` table in ClickHouse, serialized across processes by a Postgres advisory lock
//! held on a dedicated connection.
//!
//! ClickHouse DDL is not transactional: when a statement fails, the earlier statements of that file stay applied
//! and the file is not recorded, so it runs again, whole, on the next start. Write idempotent DDL
//! (`CREATE TABLE IF NOT EXISTS`, `ADD COLUMN IF NOT EXISTS`). A file may write `{on_cluster}` where an
//! `ON CLUSTER` clause belongs; it becomes `` ON CLUSTER `name` `` when `CLICKHOUSE_CLUSTER` is set, and nothing
//! otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sqlx::{Connection, PgConnection, PgPool};

use super::stops::{Applied, Gate, requires_finished};
use crate::clickhouse::{ClickHouse, ClickHouseError, quote_ident, quote_literal, statements};

/// Where `{on_cluster}` may appear in a migration file.
const ON_CLUSTER_PLACEHOLDER: &str = "{on_cluster}";

/// A ClickHouse fast migration that could not be applied; the process must not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClickHouseMigrateError {
    /// The directory or a file cannot be read, or a file name does not follow the pattern.
    #[error("ClickHouse fast migrations: {path}: {reason}")]
    BadFile {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// An applied migration's file changed since it was applied.
    #[error(
        "ClickHouse fast migration {version} ({name}) was edited after it was applied: restore the file and put the \
         change in a new migration"
    )]
    Edited {
        /// Its version.
        version: u64,
        /// Its name.
        name: String,
    },
    /// ClickHouse records a migration this directory lacks.
    #[error(
        "ClickHouse has fast migration {version} ({name}) applied, but {dir} lacks it: deploy the release that has it"
    )]
    Missing {
        /// Its version.
        version: u64,
        /// Its name.
        name: String,
        /// The directory.
        dir: String,
    },
    /// The advisory lock in the control database could not be taken.
    #[error("ClickHouse fast migrations: cannot take the lock in the control database: {0}")]
    Lock(#[source] sqlx::Error),
    /// A statement failed (or ClickHouse is unreachable).
    #[error("ClickHouse fast migration {file}, statement {statement}: {source}")]
    Statement {
        /// The file.
        file: String,
        /// 1-based index of the statement in the file (0 for bookkeeping).
        statement: usize,
        /// ClickHouse's error.
        #[source]
        source: ClickHouseError,
    },
}

impl ClickHouseMigrateError {
    /// True when the migrations directory must be fixed (a bad name, an edited or missing file).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ClickHouseMigrateError::BadFile { .. }
                | ClickHouseMigrateError::Edited { .. }
                | ClickHouseMigrateError::Missing { .. }
        )
    }
}

/// One `NNNN_name.up.sql` file.
#[derive(Debug, Clone, PartialEq)]
pub struct ClickHouseMigration {
    /// `NNNN` as a number.
    pub version: u64,
    /// The `name` part.
    pub name: String,
    /// The file's text.
    pub sql: String,
    /// Hex FNV-1a 64 of the text: an edited file is refused.
    pub checksum: String,
    /// The file.
    pub path: PathBuf,
    /// Background migrations that must be finished before it applies (its deployment-stop header).
    pub requires_finished: Vec<String>,
}

/// Reads the migrations in `dir` (a missing directory means none), sorted by version.
pub fn load(dir: &Path) -> Result<Vec<ClickHouseMigration>, ClickHouseMigrateError> {
    let bad = |path: &Path, reason: String| ClickHouseMigrateError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(bad(dir, format!("cannot read the directory: {e}"))),
    };
    let mut by_version = BTreeMap::new();
    for entry in entries {
        let path = entry
            .map_err(|e| bad(dir, format!("cannot read the directory: {e}")))?
            .path();
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if file.ends_with(".down.sql") || !file.ends_with(".sql") {
            continue;
        }
        let (version, name) = parse_file_name(&file).ok_or_else(|| {
            bad(
                &path,
                "the name must look like 0001_create_traces.up.sql (a version number, '_', a name, .up.sql)".into(),
            )
        })?;
        let sql =
            std::fs::read_to_string(&path).map_err(|e| bad(&path, format!("cannot read: {e}")))?;
        let requires_finished = requires_finished(&path, &sql)
            .map_err(|e| bad(&path, format!("line {}: {}", e.line, e.reason)))?;
        let migration = ClickHouseMigration {
            version,
            name,
            checksum: format!("{:016x}", fnv1a(sql.as_bytes())),
            sql,
            path: path.clone(),
            requires_finished,
        };
        if let Some(other) = by_version.insert(version, migration) {
            return Err(bad(
                &path,
                format!("version {version} is also used by {}", other.name),
            ));
        }
    }
    Ok(by_version.into_values().collect())
}

fn parse_file_name(file: &str) -> Option<(u64, String)> {
    let stem = file.strip_suffix(".up.sql")?;
    let (version, name) = stem.split_once('_')?;
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (version.chars().all(|c| c.is_ascii_digit()) && valid_name)
        .then(|| Some((version.parse().ok()?, name.to_owned())))
        .flatten()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The SQL of a migration with `{on_cluster}` expanded for `cluster`.
pub fn expand(sql: &str, cluster: Option<&str>) -> String {
    let clause = cluster.map_or(String::new(), |name| {
        format!(" ON CLUSTER {}", quote_ident(name))
    });
    sql.replace(ON_CLUSTER_PLACEHOLDER, &clause)
}

/// A session advisory lock held on its own connection; dropping the guard closes that connection, which releases
/// the lock even on an early return.
struct LockGuard {
    connection: PgConnection,
    key: i64,
}

impl LockGuard {
    async fn acquire(pool: &PgPool, key: i64) -> Result<LockGuard, sqlx::Error> {
        let mut connection = pool.acquire().await?.detach();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut connection)
            .await?;
        Ok(LockGuard { connection, key })
    }

    async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.connection)
            .await;
        let _ = self.connection.close().await;
    }
}

/// Applies the pending migrations of `dir` to `clickhouse` in order, under a lock in the control database
/// `lock_pool`, up to the first pending file whose `requires_finished` the `gate` holds back (that file and those
/// after it are not applied).
pub async fn apply(
    lock_pool: &PgPool,
    clickhouse: &ClickHouse,
    dir: &Path,
    gate: &Gate,
) -> Result<Applied, ClickHouseMigrateError> {
    let migrations = load(dir)?;
    if migrations.is_empty() {
        return Ok(Applied::default());
    }
    let key = fnv1a(format!("bgmigrate clickhouse {}", clickhouse.id()).as_bytes()) as i64;
    let guard = LockGuard::acquire(lock_pool, key)
        .await
        .map_err(ClickHouseMigrateError::Lock)?;
    let result = apply_locked(clickhouse, dir, &migrations, gate).await;
    guard.release().await;
    result
}

async fn apply_locked(
    clickhouse: &ClickHouse,
    dir: &Path,
    migrations: &[ClickHouseMigration],
    gate: &Gate,
) -> Result<Applied, ClickHouseMigrateError> {
    let cluster = clickhouse.config().cluster.as_deref();
    let bookkeeping = |source| ClickHouseMigrateError::Statement {
        file: "schema_migrations".into(),
        statement: 0,
        source,
    };
    clickhouse
        .execute(&expand(
            "CREATE TABLE IF NOT EXISTS schema_migrations{on_cluster} \
             (version UInt64, name String, checksum String, applied_at DateTime DEFAULT now()) \
             ENGINE = MergeTree ORDER BY version",
            cluster,
        ))
        .await
        .map_err(bookkeeping)?;
    let applied = clickhouse
        .query_rows("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        .await
        .map_err(bookkeeping)?;
    let mut applied_versions = Vec::new();
    for row in applied {
        let [version, name, checksum] = <[String; 3]>::try_from(row).map_err(|row| {
            bookkeeping(ClickHouseError::Protocol {
                context: "read schema_migrations".into(),
                detail: format!("unexpected row {row:?}"),
            })
        })?;
        let version: u64 = version.parse().unwrap_or_default();
        match migrations.iter().find(|m| m.version == version) {
            None => {
                return Err(ClickHouseMigrateError::Missing {
                    version,
                    name,
                    dir: dir.display().to_string(),
                });
            }
            Some(file) if file.checksum != checksum => {
                return Err(ClickHouseMigrateError::Edited { version, name });
            }
            Some(_) => applied_versions.push(version),
        }
    }
    let mut count = 0;
    for migration in migrations
        .iter()
        .filter(|m| !applied_versions.contains(&m.version))
    {
        if let Some(blocked) =
            gate.blocked("clickhouse", &migration.path, &migration.requires_finished)
        {
            return Ok(Applied {
                count,
                blocked: Some(blocked),
            });
        }
        let file = format!("{:04}_{}.up.sql", migration.version, migration.name);
        for (index, statement) in statements::split(&expand(&migration.sql, cluster))
            .iter()
            .enumerate()
        {
            clickhouse.execute(statement).await.map_err(|source| {
                ClickHouseMigrateError::Statement {
                    file: file.clone(),
                    statement: index + 1,
                    source,
                }
            })?;
        }
        clickhouse
            .execute(&format!(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ({}, {}, {})",
                migration.version,
                quote_literal(&migration.name),
                quote_literal(&migration.checksum)
            ))
            .await
            .map_err(bookkeeping)?;
        tracing::info!(migration = %file, "applied ClickHouse fast migration");
        count += 1;
    }
    Ok(Applied {
        count,
        blocked: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_carry_a_version_and_a_name() {
        assert_eq!(
            parse_file_name("0003_add_scores.up.sql"),
            Some((3, "add_scores".into()))
        );
        assert_eq!(parse_file_name("0003.up.sql"), None);
        assert_eq!(parse_file_name("x3_a.up.sql"), None);
        assert_eq!(parse_file_name("0003_a.sql"), None);
    }

    #[test]
    fn the_cluster_placeholder_expands_only_when_a_cluster_is_set() {
        let sql = "CREATE TABLE t{on_cluster} (a Int8) ENGINE = Memory";
        assert_eq!(expand(sql, None), "CREATE TABLE t (a Int8) ENGINE = Memory");
        assert_eq!(
            expand(sql, Some("main")),
            "CREATE TABLE t ON CLUSTER `main` (a Int8) ENGINE = Memory"
        );
    }
}
