//! SQLite as a source and target of migrations: the [`SqlStore`] implementation over an sqlx pool on one file.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`: SQLite has one writer at a time, and a deferred
//! transaction that reads first and writes later can fail with `SQLITE_BUSY` instead of waiting. Taking the write
//! lock up front lets `busy_timeout` queue writers — several worker processes sharing one file included.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::error::DatabaseError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteError, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Row, Sqlite, SqlitePool, Transaction};

use super::wal_checkpoint::BackgroundCheckpoint;
use super::{ColumnInfo, DatabaseId, Dialect, Reach, SqlStore, SqlTx, StoreError};

/// How long a connection waits for another writer (this process or another) before giving up with `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// WAL pages (4 KiB each by default) after which a commit checkpoints the WAL into the database file.
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// The statement that opens every transaction: take the write lock now, waiting up to [`BUSY_TIMEOUT`].
pub const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";

/// `SQLITE_BUSY` and `SQLITE_LOCKED` (primary result codes): another writer held the lock too long.
const TRANSIENT_PRIMARY_CODES: &[i32] = &[5, 6];

/// True for SQLite errors that a retry may cure (the database was locked by another writer).
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.try_downcast_ref::<SqliteError>().is_some_and(|e| {
            e.code()
                .and_then(|code| code.parse::<i32>().ok())
                .is_some_and(|code| TRANSIENT_PRIMARY_CODES.contains(&(code & 0xff)))
        }),
        _ => false,
    }
}

/// The schema a SQLite database attaches another file under, read-only, to copy from it (see [`SqlStore::reach`]).
pub const SOURCE_SCHEMA: &str = "bgm_source";

/// SQLite's type affinity of a declared column type (the rules of "Datatypes In SQLite", §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// Declared type contains `INT`.
    Integer,
    /// Contains `CHAR`, `CLOB` or `TEXT`.
    Text,
    /// Contains `BLOB`, or no type at all.
    Blob,
    /// Contains `REAL`, `FLOA` or `DOUB`.
    Real,
    /// Anything else (`NUMERIC`, `DECIMAL`, `DATETIME`, `BOOLEAN`, ...).
    Numeric,
}

/// The affinity of a declared type, e.g. `BIGINT` → [`Affinity::Integer`], `VARCHAR(20)` → [`Affinity::Text`].
pub fn affinity(declared: &str) -> Affinity {
    let ty = declared.to_ascii_uppercase();
    if ty.contains("INT") {
        Affinity::Integer
    } else if ["CHAR", "CLOB", "TEXT"].iter().any(|s| ty.contains(s)) {
        Affinity::Text
    } else if ty.is_empty() || ty.contains("BLOB") {
        Affinity::Blob
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|s| ty.contains(s)) {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// Opens a pool on the file named by `url` (`sqlite://path`), creating the file if missing, in WAL mode.
pub async fn connect_pool(url: &str, max_connections: u32) -> Result<SqlitePool, StoreError> {
    let bad_url = |reason: String| StoreError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let path = file_of(url).ok_or_else(|| {
        bad_url("name a file, e.g. sqlite://bgmigrate.db or sqlite:///var/lib/app/app.db (in-memory databases cannot be shared by a worker and its operators)".into())
    })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(bad_url(format!(
            "the directory {} does not exist",
            parent.display()
        )));
    }
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|err| bad_url(err.to_string()))?
        .create_if_missing(true)
        // WAL: readers (status, the UI) never block the writer, and the writer never blocks them.
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        // Checkpoint the WAL into the database every ~40 MB instead of SQLite's 4 MB: a checkpoint costs two fsyncs
        // (~5 ms each on the benchmark machine), and at 4 MB a backfill's 10,000-row batch of 300-byte rows paid one
        // nearly every batch, where one plain UPDATE pays one in all.
        .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
        .busy_timeout(BUSY_TIMEOUT)
        // sqlx would log every slow statement whole (megabytes for a batch): the stores log a summary instead.
        .disable_statement_logging();
    // Switching a brand-new file to WAL needs its exclusive lock, and SQLite answers SQLITE_BUSY at once (without
    // the busy handler) to one of several processes doing so together: such an open is tried again.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        let opened = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await;
        match opened {
            Err(err) if is_busy(&err) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            opened => return opened.map_err(StoreError::sql(format!("open {url}"))),
        }
    }
}

/// SQLITE_BUSY, in any of its extended forms (the primary code is the low byte).
fn is_busy(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == 5)
}

/// The file a `sqlite://` URL names, or `None` for in-memory databases and other schemes.
pub fn file_of(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:" && !url.contains("mode=memory")).then(|| path.into())
}

/// A SQLite database file used as a migration source or target (and, through the same pool, as the control store).
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    id: DatabaseId,
    /// Checkpoints started beside the writers (not on a pool of one connection, where it would only queue).
    checkpoint: Option<BackgroundCheckpoint>,
}

impl SqliteStore {
    /// Wraps a pool; `id` names the database file (see [`SqlStore::id`] and [`SqliteStore::id_for_path`]).
    pub fn new(pool: SqlitePool, id: DatabaseId) -> Self {
        let checkpoint =
            (pool.options().get_max_connections() > 1).then(BackgroundCheckpoint::default);
        Self {
            pool,
            id,
            checkpoint,
        }
    }

    /// The identity of a database file: `sqlite://` and its absolute path, so two spellings of one file agree.
    pub fn id_for_path(path: &Path) -> DatabaseId {
        let absolute = std::fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .unwrap_or_else(|_| path.to_owned());
        DatabaseId::new(format!("sqlite://{}", absolute.display()))
    }

    async fn begin_with(&self, statement: &'static str) -> Result<Box<dyn SqlTx>, StoreError> {
        let tx = self
            .pool
            .begin_with(statement)
            .await
            .map_err(StoreError::sql("begin a transaction"))?;
        Ok(Box::new(SqliteTx {
            tx,
            database: self.id.clone(),
        }))
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A store on this file whose one connection also has the file `source` attached read-only as
    /// [`SOURCE_SCHEMA`]. A pool of its own: `ATTACH` holds for a connection, and the shared pool's connections
    /// must not see another file's tables. Read-only, so that `BEGIN IMMEDIATE` takes no write lock on the source
    /// (often the application's own database) and a copy can never write it.
    async fn attaching(&self, source: &Path) -> Result<SqliteStore, StoreError> {
        let uri = attach_uri(source);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(BUSY_TIMEOUT)
            .after_connect(move |conn, _| {
                let uri = uri.clone();
                Box::pin(async move {
                    sqlx::query(AssertSqlSafe(format!(
                        "ATTACH DATABASE ?1 AS {SOURCE_SCHEMA}"
                    )))
                    .bind(uri)
                    .execute(conn)
                    .await
                    .map(|_| ())
                })
            })
            .connect_with((*self.pool.connect_options()).clone())
            .await
            .map_err(StoreError::sql(format!(
                "attach {} to {}",
                source.display(),
                self.id
            )))?;
        Ok(SqliteStore::new(pool, self.id.clone()))
    }
}

/// The file a store identity names (see [`SqliteStore::id_for_path`]); `None` for a store of another kind.
fn file_of_id(id: &DatabaseId) -> Option<&Path> {
    id.as_str().strip_prefix("sqlite://").map(Path::new)
}

/// `file:<path>?mode=ro`, the path's `%`, `?` and `#` escaped as a URI filename requires.
fn attach_uri(path: &Path) -> String {
    let escaped = path
        .display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23");
    format!("file:{escaped}?mode=ro")
}

/// An open SQLite transaction (`BEGIN IMMEDIATE` for writes, a deferred `BEGIN` for reads).
pub struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    database: DatabaseId,
}

super::sqlx_tx::sql_tx_over_sqlx!(
    SqliteTx,
    Sqlite,
    sqlx::sqlite::SqliteArguments,
    bind_text_array,
    None
);

/// Binds a list of texts as its JSON text (SQLite has no arrays; `json_each(?n)` reads it in C, one parameter
/// however many values).
fn bind_text_array<'q>(
    query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    values: &'q [Option<String>],
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
    query.bind(serde_json::to_string(values).unwrap_or_else(|_| "[]".into()))
}

/// `schema.table` split for the pragma functions (`main` when unqualified).
fn schema_and_table(table: &str) -> (&str, &str) {
    table.split_once('.').unwrap_or(("main", table))
}

#[async_trait]
impl SqlStore for SqliteStore {
    fn id(&self) -> &DatabaseId {
        &self.id
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn begin(&self) -> Result<Box<dyn SqlTx>, StoreError> {
        // The WAL the previous write transactions left is copied into the database while this one works.
        if let Some(checkpoint) = &self.checkpoint {
            checkpoint.start(&self.pool);
        }
        self.begin_with(BEGIN_IMMEDIATE).await
    }

    async fn begin_read(&self) -> Result<Box<dyn SqlTx>, StoreError> {
        self.begin_with("BEGIN").await
    }

    fn health_check(
        &self,
        _table: &str,
    ) -> Option<std::sync::Arc<dyn crate::throttle::HealthCheck>> {
        None
    }

    async fn columns(&self, table: &str) -> Result<Vec<ColumnInfo>, StoreError> {
        let (schema, name) = schema_and_table(table);
        let rows = sqlx::query(include_str!("sql/sqlite_columns.sql"))
            .bind(name)
            .bind(schema)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::sql(format!("read the columns of {table}")))?;
        rows.into_iter()
            .map(|row| {
                Ok(ColumnInfo {
                    name: row.try_get("name")?,
                    type_name: row.try_get("type_name")?,
                    nullable: row.try_get("nullable")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::sql(format!("read the columns of {table}")))
    }

    async fn has_unique_index(&self, table: &str, columns: &[String]) -> Result<bool, StoreError> {
        let (schema, name) = schema_and_table(table);
        let wanted = serde_json::to_string(columns).unwrap_or_else(|_| "[]".into());
        sqlx::query_scalar(include_str!("sql/sqlite_has_unique_index.sql"))
            .bind(name)
            .bind(schema)
            .bind(wanted)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::sql(format!(
                "read the unique indexes of {table}"
            )))
    }

    async fn query_columns(&self, _query: &str) -> Result<Option<Vec<ColumnInfo>>, StoreError> {
        // SQLite knows the declared types of table columns only, not of expressions: a text cursor could not be
        // cast back to a computed key's type, so queries are not described (a copy then asks for a table).
        Ok(None)
    }

    async fn estimate_query_rows(&self, _query: &str) -> Result<Option<u64>, StoreError> {
        // SQLite's planner keeps no row estimates.
        Ok(None)
    }

    async fn reach(&self, source: &dyn SqlStore) -> Result<Option<Reach>, StoreError> {
        if source.id() == &self.id {
            return Ok(Some(Reach {
                store: std::sync::Arc::new(self.clone()),
                schema: None,
            }));
        }
        match file_of_id(source.id()) {
            Some(file) if source.dialect() == Dialect::Sqlite => Ok(Some(Reach {
                store: std::sync::Arc::new(self.attaching(file).await?),
                schema: Some(SOURCE_SCHEMA),
            })),
            _ => Ok(None),
        }
    }

    async fn estimate_rows(&self, table: &str) -> Result<Option<u64>, StoreError> {
        // The largest rowid: one step down the table's b-tree, never a scan (an overestimate after deletes).
        let sql = format!(
            "SELECT max(rowid) FROM {}",
            self.dialect().quote_ident(table)
        );
        match sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
        {
            Ok(max) => Ok(Some(max.unwrap_or(0).max(0) as u64)),
            // WITHOUT ROWID tables have no rowid: use ANALYZE's figure, if there is one.
            Err(sqlx::Error::Database(_)) => {
                let (schema, name) = schema_and_table(table);
                let stat = format!(
                    "SELECT stat FROM {}.sqlite_stat1 WHERE tbl = ?1 ORDER BY idx IS NOT NULL LIMIT 1",
                    self.dialect().quote_ident(schema)
                );
                let stat: Option<String> = sqlx::query_scalar(AssertSqlSafe(stat))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .unwrap_or(None);
                Ok(stat.and_then(|s| s.split_whitespace().next()?.parse().ok()))
            }
            Err(err) => Err(StoreError::sql(format!("estimate the rows of {table}"))(
                err,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_follows_sqlites_rules() {
        assert_eq!(affinity("BIGINT"), Affinity::Integer);
        assert_eq!(affinity("integer"), Affinity::Integer);
        assert_eq!(affinity("VARCHAR(20)"), Affinity::Text);
        assert_eq!(affinity(""), Affinity::Blob);
        assert_eq!(affinity("DOUBLE PRECISION"), Affinity::Real);
        assert_eq!(affinity("DATETIME"), Affinity::Numeric);
        // The documented surprise: "POINT" contains "INT".
        assert_eq!(affinity("FLOATING POINT"), Affinity::Integer);
    }

    #[test]
    fn a_url_names_a_file_or_nothing() {
        assert_eq!(file_of("sqlite://demo.db"), Some(PathBuf::from("demo.db")));
        assert_eq!(
            file_of("sqlite:///var/app.db?mode=rwc"),
            Some(PathBuf::from("/var/app.db"))
        );
        assert_eq!(file_of("sqlite::memory:"), None);
        assert_eq!(file_of("postgres://db/x"), None);
    }

    /// Every connection of a store's pool checkpoints its WAL at the store's figure, not SQLite's 1,000 pages.
    #[tokio::test]
    async fn a_pool_checkpoints_the_wal_every_ten_thousand_pages() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("wal.db").display());
        let pool = connect_pool(&url, 1).await.unwrap();
        let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(pages, i64::from(WAL_AUTOCHECKPOINT_PAGES));
    }

    #[test]
    fn a_source_file_is_attached_read_only_by_a_uri_that_keeps_odd_names_whole() {
        assert_eq!(
            attach_uri(Path::new("/data/a?b#c%d.db")),
            "file:/data/a%3fb%23c%25d.db?mode=ro"
        );
        let id = SqliteStore::id_for_path(Path::new("/data/app.db"));
        assert_eq!(file_of_id(&id), Some(Path::new("/data/app.db")));
        assert_eq!(file_of_id(&DatabaseId::new("postgres://h:5432/db")), None);
    }
}
