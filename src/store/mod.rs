//! The contract between migration kinds and the SQL stores they read and write.
//!
//! A kind (e.g. [`crate::kinds::backfill`]) builds its SQL through a [`Dialect`] and runs it through [`SqlStore`] /
//! [`SqlTx`]; each store (Postgres, SQLite) implements these in its own module. Nothing here names a driver.

pub mod pg_copy;
pub mod postgres;
pub mod sqlite;
mod sqlx_tx;
mod used;
mod wal_checkpoint;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::clickhouse::ClickHouse;

pub use self::postgres::PgStore;
pub use self::sqlite::SqliteStore;
pub use self::used::{StoreUse, describe_uses};

/// A value bound to a statement. Keys travel as text and are cast back to their column type by the [`Dialect`].
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    /// A text value.
    Text(String),
    /// An integer value.
    Int(i64),
    /// A floating-point value.
    Float(f64),
    /// SQL `NULL`.
    Null,
    /// A list of texts (or NULLs): a `text[]` on Postgres; on SQLite, which has no arrays, its JSON text (read it
    /// with `json_each`).
    TextArray(Vec<Option<String>>),
}

impl SqlParam {
    /// A count, offset or page number as an integer parameter: both stores bind signed 64-bit integers, and a
    /// `u64` past `i64::MAX` (more rows than any table holds) is sent as `i64::MAX`.
    pub fn count(n: u64) -> SqlParam {
        SqlParam::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

/// A column as the store describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// The store's own type name, usable in a cast (e.g. `timestamp with time zone`).
    pub type_name: String,
    /// Whether the column accepts NULL.
    pub nullable: bool,
}

/// Which database a store (and each of its transactions) works in: host, port and database name, or a SQLite file's
/// absolute path. Two stores with the same identity share one database, so one transaction can carry a batch's
/// writes and its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatabaseId(String);

impl DatabaseId {
    /// An identity from its canonical text (see [`PgStore::id_for_url`] and [`SqliteStore::id_for_path`]).
    pub fn new(canonical: impl Into<String>) -> Self {
        Self(canonical.into())
    }

    /// The canonical text, for messages.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SQL flavour of a store: quoting, placeholders and casts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// SQLite (3.35 or later: row values, `RETURNING`).
    Sqlite,
}

impl Dialect {
    /// Quotes an identifier, part by part for `schema.table`.
    pub fn quote_ident(self, ident: &str) -> String {
        ident
            .split('.')
            .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The `n`th (1-based) placeholder, cast to `type_name` when the dialect needs it.
    ///
    /// Cursors travel as text: Postgres casts them to the column's type; SQLite casts them to the column's type
    /// affinity when that is numeric (a text `'10'` sorts before `'9'`, the integer does not).
    pub fn param(self, n: usize, type_name: &str) -> String {
        match self {
            Dialect::Postgres => self.cast(&format!("${n}"), type_name),
            Dialect::Sqlite => self.cast(&format!("?{n}"), type_name),
        }
    }

    /// A text expression cast back to `type_name` as [`Dialect::param`] casts a placeholder: to the type on
    /// Postgres, to the numeric affinity (if any) on SQLite.
    pub fn cast(self, text_expr: &str, type_name: &str) -> String {
        match self {
            Dialect::Postgres => format!("{text_expr}::{type_name}"),
            Dialect::Sqlite => match sqlite::affinity(type_name) {
                sqlite::Affinity::Integer => format!("CAST({text_expr} AS INTEGER)"),
                sqlite::Affinity::Real => format!("CAST({text_expr} AS REAL)"),
                sqlite::Affinity::Text | sqlite::Affinity::Blob | sqlite::Affinity::Numeric => {
                    text_expr.to_owned()
                }
            },
        }
    }

    /// An expression reading `column` as text (for cursors that survive JSON).
    pub fn as_text(self, quoted_column: &str) -> String {
        match self {
            Dialect::Postgres => format!("{quoted_column}::text"),
            Dialect::Sqlite => format!("CAST({quoted_column} AS TEXT)"),
        }
    }
}

/// Every column of `row` as text or NULL (the query casts them to text).
pub(crate) fn texts_of<R>(row: &R) -> Result<Vec<Option<String>>, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    (0..row.len()).map(|i| row.try_get(i)).collect()
}

/// The statement on one line, shortened, for error context.
pub(crate) fn short(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 120 {
        format!("{}…", flat.chars().take(120).collect::<String>())
    } else {
        flat
    }
}

/// A statement that runs this long or longer is logged, summarised (see [`log_if_slow`]).
pub const SLOW_STATEMENT: Duration = Duration::from_secs(1);

/// Logs a statement that took [`SLOW_STATEMENT`] or longer at WARN: which statement (on one line, shortened to
/// [`short`]'s length, never its whole text: a batch's statement can carry megabytes), how long, how many rows.
///
/// sqlx's own statement logging is switched off where the pools are opened: its slow-statement warning prints the
/// whole statement (a 200 KB line for a batch of the first copy's multi-row INSERTs).
pub(crate) fn log_if_slow(sql: &str, started: Instant, rows: u64) {
    let elapsed = started.elapsed();
    if elapsed >= SLOW_STATEMENT {
        tracing::warn!(
            statement = %short(sql),
            elapsed_ms = elapsed.as_millis() as u64,
            rows,
            "slow statement"
        );
    }
}

/// A target database that can read a source's tables itself, so a copy moves rows with one `INSERT ... SELECT` and
/// no row passes through the worker (see [`SqlStore::reach`]).
pub struct Reach {
    /// A store on the target's database whose transactions also see the source's tables.
    pub store: Arc<dyn SqlStore>,
    /// The schema that names the source's tables there; `None`: one database, the tables keep their names.
    pub schema: Option<&'static str>,
}

/// A store error, classified as transient (retry the batch) or persistent (fail the migration).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A driver error while doing `context`.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done, in words.
        context: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The store cannot be opened from the given URL.
    #[error("cannot use database URL {url}: {reason}")]
    BadUrl {
        /// The URL with its password removed.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    /// Wraps a driver error with what was being done.
    pub fn sql(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Sql { context, source }
    }

    /// Wraps a driver error from running `sql`, naming the statement (shortened). The context is built only when an
    /// error happens: formatting it for every statement run cost the worker more than the statement's own work for a
    /// `COPY` stream's one message per row.
    pub fn running(sql: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Sql {
            context: format!("run `{}`", short(sql)),
            source,
        }
    }

    /// True when one statement would write one row twice: Postgres's `ON CONFLICT DO UPDATE command cannot affect
    /// row a second time` (SQLSTATE 21000), which an upsert of rows with a repeated key raises.
    pub fn is_row_written_twice(&self) -> bool {
        match self {
            StoreError::Sql {
                source: sqlx::Error::Database(db),
                ..
            } => db.code().as_deref() == Some("21000"),
            _ => false,
        }
    }

    /// True for a unique-key violation (SQLSTATE 23505 on Postgres, a UNIQUE constraint on SQLite).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Sql {
                source: sqlx::Error::Database(db),
                ..
            } => db.is_unique_violation(),
            _ => false,
        }
    }

    /// True for errors that a retry may cure: lost connections, serialization failures, server restarts.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sql { source, .. } => {
                postgres::is_transient(source) || sqlite::is_transient(source)
            }
            StoreError::BadUrl { .. } => false,
        }
    }
}

/// One open transaction in a store.
#[async_trait]
pub trait SqlTx: Send {
    /// Runs a statement, returns the number of rows it affected.
    async fn execute(&mut self, sql: &str, params: &[SqlParam]) -> Result<u64, StoreError>;
    /// Runs a query whose columns are all text, returns its first row.
    async fn fetch_optional_text(
        &mut self,
        sql: &str,
        params: &[SqlParam],
    ) -> Result<Option<Vec<String>>, StoreError>;
    /// Runs a query whose columns are all text (or NULL), returns every row.
    async fn fetch_all_text(
        &mut self,
        sql: &str,
        params: &[SqlParam],
    ) -> Result<Vec<Vec<Option<String>>>, StoreError>;
    /// Runs a query returning one integer.
    async fn fetch_count(&mut self, sql: &str, params: &[SqlParam]) -> Result<i64, StoreError>;
    /// Runs several statements separated by `;` (a schema script), without parameters.
    async fn execute_script(&mut self, sql: &str) -> Result<(), StoreError>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
    /// Commits without waiting for the commit to reach the disk: Postgres with `synchronous_commit = off` for this
    /// transaction (its WAL writer flushes it within a fraction of a second); SQLite as [`SqlTx::commit`], which
    /// in WAL mode with `synchronous = NORMAL` does not wait for the disk either. A server crash may then lose the
    /// transaction, whole and with everything committed after it, never in part: only for a transaction that
    /// carries its own checkpoint (see [`crate::migration::Batch::commit`]).
    async fn commit_unflushed(self: Box<Self>) -> Result<(), StoreError>;
    /// The database this transaction works in: where it can also carry the control table's checkpoint.
    fn database(&self) -> &DatabaseId;
}

/// A SQL store a migration reads or writes.
#[async_trait]
pub trait SqlStore: Send + Sync {
    /// Identity of the database, used to know when a target and the control table share one database and so one
    /// transaction.
    fn id(&self) -> &DatabaseId;
    /// The SQL flavour.
    fn dialect(&self) -> Dialect;
    /// Opens a write transaction (on SQLite it takes the write lock at once: `BEGIN IMMEDIATE`).
    async fn begin(&self) -> Result<Box<dyn SqlTx>, StoreError>;
    /// Opens a transaction that only reads (on SQLite it takes no write lock, so readers never queue behind a
    /// batch).
    async fn begin_read(&self) -> Result<Box<dyn SqlTx>, StoreError>;
    /// Opens a write transaction whose first statements are `setup` (parameterless, `;`-separated, e.g. a batch's
    /// `SELECT set_config(...)`). Postgres sends them with its `BEGIN` in one round trip: a short batch pays its
    /// round trips as much as its rows.
    async fn begin_with_setup(&self, setup: &str) -> Result<Box<dyn SqlTx>, StoreError> {
        let mut tx = self.begin().await?;
        if !setup.is_empty() {
            tx.execute_script(setup).await?;
        }
        Ok(tx)
    }
    /// Runs one read-only query and returns its rows as text. A single statement reads one snapshot, so Postgres
    /// runs it without a transaction around it: one round trip where `begin_read`, the query and the commit take
    /// three (the engine reads its migration's row before every batch).
    async fn read_once(
        &self,
        sql: &str,
        params: &[SqlParam],
    ) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        let mut tx = self.begin_read().await?;
        let rows = tx.fetch_all_text(sql, params).await?;
        tx.commit().await?;
        Ok(rows)
    }
    /// The table's columns, or an empty list if the table does not exist.
    async fn columns(&self, table: &str) -> Result<Vec<ColumnInfo>, StoreError>;
    /// Whether a unique index or primary key covers exactly `columns`.
    async fn has_unique_index(&self, table: &str, columns: &[String]) -> Result<bool, StoreError>;
    /// A cheap row-count estimate from statistics (never a full `count(*)`).
    async fn estimate_rows(&self, table: &str) -> Result<Option<u64>, StoreError>;
    /// The output columns of a `SELECT` (name and type; `nullable` is always true, a catalog cannot tell), found
    /// without reading a row. A query that does not parse or names a missing column is an error; `None` when this
    /// store cannot describe a query.
    async fn query_columns(&self, query: &str) -> Result<Option<Vec<ColumnInfo>>, StoreError>;
    /// The health signals of this database for a migration writing `table` ([`crate::throttle`]); `None` where the
    /// store has none (an embedded SQLite file serves no one else).
    fn health_check(&self, table: &str) -> Option<Arc<dyn crate::throttle::HealthCheck>>;
    /// The planner's estimate of a `SELECT`'s result rows (never running it); `None` when the store has no such
    /// estimate.
    async fn estimate_query_rows(&self, query: &str) -> Result<Option<u64>, StoreError>;
    /// This database reaching `source`'s tables (see [`Reach`]): itself when both are one database; for two SQLite
    /// files, a connection on this one with `source` attached read-only. `None` when `source` is out of reach.
    async fn reach(&self, source: &dyn SqlStore) -> Result<Option<Reach>, StoreError>;
}

/// The named stores that definitions refer to (`store = "postgres"`, `store = "clickhouse"`).
#[derive(Clone, Default)]
pub struct Stores {
    sql: BTreeMap<String, Arc<dyn SqlStore>>,
    postgres: BTreeMap<String, PgStore>,
    sqlite: BTreeMap<String, SqliteStore>,
    clickhouse: BTreeMap<String, ClickHouse>,
}

impl Stores {
    /// An empty set of stores.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a SQL store under `name`.
    pub fn with_sql(mut self, name: impl Into<String>, store: Arc<dyn SqlStore>) -> Self {
        self.sql.insert(name.into(), store);
        self
    }

    /// The SQL store called `name`, if configured.
    pub fn sql(&self, name: &str) -> Option<Arc<dyn SqlStore>> {
        self.sql.get(name).cloned()
    }

    /// Names of the configured SQL stores, for error messages.
    pub fn sql_names(&self) -> Vec<String> {
        self.sql.keys().cloned().collect()
    }

    /// Adds a Postgres store under `name`, both as a SQL store and for kinds that stream from its pool (`copy`).
    pub fn with_postgres(mut self, name: impl Into<String>, store: PgStore) -> Self {
        let name = name.into();
        self.sql.insert(name.clone(), Arc::new(store.clone()));
        self.postgres.insert(name, store);
        self
    }

    /// The Postgres store called `name`, if configured.
    pub fn postgres(&self, name: &str) -> Option<PgStore> {
        self.postgres.get(name).cloned()
    }

    /// Adds a SQLite store under `name`, both as a SQL store and for kinds that read its values typed (`copy` into
    /// ClickHouse).
    pub fn with_sqlite(mut self, name: impl Into<String>, store: SqliteStore) -> Self {
        let name = name.into();
        self.sql.insert(name.clone(), Arc::new(store.clone()));
        self.sqlite.insert(name, store);
        self
    }

    /// The SQLite store called `name`, if configured.
    pub fn sqlite(&self, name: &str) -> Option<SqliteStore> {
        self.sqlite.get(name).cloned()
    }

    /// Adds (or replaces) a ClickHouse store under `name`.
    pub fn with_clickhouse(mut self, name: impl Into<String>, store: ClickHouse) -> Self {
        self.clickhouse.insert(name.into(), store);
        self
    }

    /// The ClickHouse store called `name`, if configured.
    pub fn clickhouse(&self, name: &str) -> Option<ClickHouse> {
        self.clickhouse.get(name).cloned()
    }

    /// Names of the configured ClickHouse stores, for error messages.
    pub fn clickhouse_names(&self) -> Vec<String> {
        self.clickhouse.keys().cloned().collect()
    }
}
