//! Postgres as a source and target of migrations: the [`SqlStore`] implementation over an sqlx pool.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{
    AssertSqlSafe, Column, Executor, PgPool, Postgres, Row, SqlSafeStr, Statement, Transaction,
};

use super::{ColumnInfo, DatabaseId, Dialect, Reach, SqlParam, SqlStore, SqlTx, StoreError};

/// SQLSTATE classes and codes that a retry may cure.
const TRANSIENT_SQLSTATES: &[&str] = &[
    "40001", // serialization_failure
    "40P01", // deadlock_detected
    "57P01", // admin_shutdown
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now
    "53300", // too_many_connections
    "55P03", // lock_not_available
];

/// How long a connection may sit idle inside an open transaction before the server ends it.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";

/// True for driver errors that a retry may cure.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || TRANSIENT_SQLSTATES.contains(&code.as_ref())
        }),
        _ => false,
    }
}

/// Opens a pool for `url`, checking the URL before any connection is made.
pub async fn connect_pool(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|err| StoreError::BadUrl {
            url: redact(url),
            reason: err.to_string(),
        })?
        // A worker that stalls inside a batch (paused process, lost network) must not hold its row locks forever:
        // the server ends such a session, the batch rolls back, and the lease's successor can proceed.
        .options([(
            "idle_in_transaction_session_timeout",
            IDLE_IN_TRANSACTION_TIMEOUT,
        )])
        // Health checks leave bgmigrate's own sessions out of the foreground activity they measure.
        .application_name(crate::throttle::postgres::APPLICATION_NAME)
        // sqlx would log every slow statement whole (megabytes for a batch): the stores log a summary instead.
        .disable_statement_logging();
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(StoreError::sql(format!("connect to {}", redact(url))))
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..scheme_end + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// A Postgres database used as a migration source or target.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    id: DatabaseId,
}

impl PgStore {
    /// Wraps a pool; `id` names the database (see [`SqlStore::id`]).
    pub fn new(pool: PgPool, id: DatabaseId) -> Self {
        Self { pool, id }
    }

    /// The identity of the database a URL names: `postgres://host:port/database`.
    pub fn id_for_url(url: &str) -> DatabaseId {
        DatabaseId::new(match PgConnectOptions::from_str(url) {
            Ok(opts) => format!(
                "postgres://{}:{}/{}",
                opts.get_host(),
                opts.get_port(),
                opts.get_database().unwrap_or_default()
            ),
            Err(_) => redact(url),
        })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_with(&self, statement: &'static str) -> Result<Box<dyn SqlTx>, StoreError> {
        Ok(Box::new(self.begin_pg(statement).await?))
    }

    /// Opens a transaction with `statement` (`BEGIN`, `BEGIN READ ONLY`, or `BEGIN` followed by more statements) as
    /// the concrete type, for what only Postgres has (`COPY`, see [`super::pg_copy`]).
    pub async fn begin_pg(&self, statement: impl Into<String>) -> Result<PgTx, StoreError> {
        let tx = self
            .pool
            .begin_with(AssertSqlSafe(statement.into()))
            .await
            .map_err(StoreError::sql("begin a transaction"))?;
        Ok(PgTx {
            tx,
            database: self.id.clone(),
        })
    }

    /// The planner's row estimate of `select` (`EXPLAIN`, which does not run it).
    async fn plan_rows(&self, select: &str, context: &str) -> Result<Option<u64>, StoreError> {
        let sql = format!("EXPLAIN (FORMAT JSON) {select}\n");
        let plan: serde_json::Value = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::sql(context))?;
        Ok(plan[0]["Plan"]["Plan Rows"]
            .as_f64()
            .map(|rows| rows as u64))
    }
}

/// An open Postgres transaction.
pub struct PgTx {
    tx: Transaction<'static, Postgres>,
    database: DatabaseId,
}

impl PgTx {
    /// The transaction's connection, for `COPY`.
    pub fn connection(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }
}

super::sqlx_tx::sql_tx_over_sqlx!(
    PgTx,
    Postgres,
    sqlx::postgres::PgArguments,
    bind_text_array,
    Some("SET LOCAL synchronous_commit = off")
);

/// Binds a list of texts as one `text[]` parameter.
fn bind_text_array<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    values: &'q [Option<String>],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    query.bind(values)
}

#[async_trait]
impl SqlStore for PgStore {
    fn id(&self) -> &DatabaseId {
        &self.id
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn begin(&self) -> Result<Box<dyn SqlTx>, StoreError> {
        self.begin_with("BEGIN").await
    }

    async fn begin_read(&self) -> Result<Box<dyn SqlTx>, StoreError> {
        self.begin_with("BEGIN READ ONLY").await
    }

    async fn begin_with_setup(&self, setup: &str) -> Result<Box<dyn SqlTx>, StoreError> {
        if setup.is_empty() {
            return self.begin().await;
        }
        Ok(Box::new(self.begin_pg(format!("BEGIN; {setup}")).await?))
    }

    async fn read_once(
        &self,
        sql: &str,
        params: &[SqlParam],
    ) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        fetch_all_text_on(&self.pool, sql, params).await
    }

    async fn columns(&self, table: &str) -> Result<Vec<ColumnInfo>, StoreError> {
        let rows = sqlx::query(include_str!("sql/pg_columns.sql"))
            .bind(table)
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

    async fn query_columns(&self, query: &str) -> Result<Option<Vec<ColumnInfo>>, StoreError> {
        // Preparing a statement makes Postgres parse and type-check it without running it, and works on a
        // read-only standby. Wrapped as the keyset read wraps it, so only what may stand in a FROM passes.
        let select = format!("SELECT * FROM (\n{query}\n) AS bgm_src");
        let statement = (&self.pool)
            .prepare(AssertSqlSafe(select).into_sql_str())
            .await
            .map_err(StoreError::sql("describe the query"))?;
        let mut oids = Vec::with_capacity(statement.columns().len());
        for column in statement.columns() {
            let oid = column.type_info().oid().ok_or_else(|| {
                StoreError::sql("describe the query")(sqlx::Error::Protocol(format!(
                    "no type OID for column {}",
                    column.name()
                )))
            })?;
            oids.push(i64::from(oid.0));
        }
        let types: Vec<String> = sqlx::query_scalar(
            "SELECT format_type(t.oid::oid, NULL) FROM unnest($1::bigint[]) WITH ORDINALITY AS t(oid, n) ORDER BY t.n",
        )
        .bind(&oids)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::sql("name the types of the query's columns"))?;
        Ok(Some(
            statement
                .columns()
                .iter()
                .zip(types)
                .map(|(column, type_name)| ColumnInfo {
                    name: column.name().to_owned(),
                    type_name,
                    nullable: true,
                })
                .collect(),
        ))
    }

    async fn has_unique_index(&self, table: &str, columns: &[String]) -> Result<bool, StoreError> {
        sqlx::query_scalar(include_str!("sql/pg_has_unique_index.sql"))
            .bind(table)
            .bind(columns)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::sql(format!(
                "read the unique indexes of {table}"
            )))
    }

    async fn estimate_rows(&self, table: &str) -> Result<Option<u64>, StoreError> {
        // From statistics after ANALYZE, from the table's size before; never a count(*).
        let select = format!("SELECT 1 FROM {}", self.dialect().quote_ident(table));
        self.plan_rows(&select, &format!("estimate the rows of {table}"))
            .await
    }

    fn health_check(
        &self,
        table: &str,
    ) -> Option<std::sync::Arc<dyn crate::throttle::HealthCheck>> {
        Some(std::sync::Arc::new(
            crate::throttle::postgres::PgHealth::new(self.pool.clone(), Some(table.to_owned())),
        ))
    }

    async fn estimate_query_rows(&self, query: &str) -> Result<Option<u64>, StoreError> {
        self.plan_rows(query, "estimate the rows of the query")
            .await
    }

    async fn reach(&self, source: &dyn SqlStore) -> Result<Option<Reach>, StoreError> {
        // Another Postgres database is out of a transaction's reach (without dblink or a foreign server).
        Ok((source.id() == &self.id).then(|| Reach {
            store: std::sync::Arc::new(self.clone()),
            schema: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_the_password_only() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/prod"),
            "postgres://app@db:5432/prod"
        );
        assert_eq!(redact("postgres://db/prod"), "postgres://db/prod");
    }
}
