//! Opening the stores a process needs from its configuration (URLs, environment).

use std::sync::Arc;

use crate::clickhouse::{ClickHouse, ClickHouseError};
use crate::control::{ControlStore, SqlControlStore};
use crate::store::{PgStore, SqliteStore, StoreError, Stores, postgres, sqlite};

/// What is wrong with the configuration, in words that say what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An unsupported URL scheme.
    #[error(
        "DATABASE_URL {0:?} is not supported: use postgres://user@host:port/database or sqlite://path/to/file.db"
    )]
    UnsupportedUrl(String),
    /// A boolean setting with a value that is not a boolean.
    #[error("{name}={value:?} is not a boolean: use true or false")]
    NotABool {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ClickHouse connection settings are unusable.
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
}

impl ConfigError {
    /// Whether the fix is in the configuration (exit code 2) rather than in the environment (a server down).
    pub fn is_bad_input(&self) -> bool {
        match self {
            ConfigError::UnsupportedUrl(_) | ConfigError::NotABool { .. } => true,
            ConfigError::Store(err) => matches!(err, StoreError::BadUrl { .. }),
            ConfigError::ClickHouse(err) => matches!(err, ClickHouseError::BadUrl { .. }),
        }
    }
}

/// The stores of one process: the control store and the named stores definitions refer to.
pub struct Connected {
    /// The control table's store.
    pub control: Arc<dyn ControlStore>,
    /// Stores by name: the control database is also the `postgres` or the `sqlite` store.
    pub stores: Stores,
    /// The control database's pool when it is Postgres, for fast migrations (and the lock of ClickHouse's).
    pub pool: Option<sqlx::PgPool>,
    /// ClickHouse, when `CLICKHOUSE_URL` is set (also registered as the `clickhouse` store).
    pub clickhouse: Option<ClickHouse>,
}

impl Connected {
    /// Adds ClickHouse from `url` (`CLICKHOUSE_URL`; `CLICKHOUSE_USER`, `CLICKHOUSE_PASSWORD`, `CLICKHOUSE_DB`
    /// override its parts) as the `clickhouse` store; `None` leaves the process without ClickHouse.
    pub fn with_clickhouse(mut self, url: Option<&str>) -> Result<Self, ConfigError> {
        if let Some(url) = url.filter(|u| !u.trim().is_empty()) {
            let clickhouse = ClickHouse::from_url(url)?;
            self.stores = self
                .stores
                .with_clickhouse("clickhouse", clickhouse.clone());
            self.clickhouse = Some(clickhouse);
        }
        Ok(self)
    }
}

/// The SQL store name under which a SQLite control database is also a migration store (`store = "sqlite"`).
pub const SQLITE_STORE: &str = "sqlite";

/// Opens the control store at `database_url` (`postgres://...` or `sqlite://path`, the file created if missing) and
/// registers it as the `postgres` or `sqlite` store.
pub async fn connect(database_url: &str) -> Result<Connected, ConfigError> {
    if database_url.starts_with("sqlite:") {
        return connect_sqlite(database_url).await;
    }
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        return Err(ConfigError::UnsupportedUrl(postgres::redact(database_url)));
    }
    refuse_unreachable(database_url).await?;
    let pool = postgres::connect_pool(database_url, 8).await?;
    let store = PgStore::new(pool.clone(), PgStore::id_for_url(database_url));
    let control: Arc<dyn ControlStore> = Arc::new(SqlControlStore::postgres(&store));
    Ok(Connected {
        control,
        stores: Stores::new().with_postgres("postgres", store),
        pool: Some(pool),
        clickhouse: None,
    })
}

/// One plain connection first, so that a server that is down or refuses the login is reported as such at once (the
/// pool would retry for its acquire timeout and then say only "pool timed out"). A URL that does not parse is left
/// to the pool, which explains it.
async fn refuse_unreachable(database_url: &str) -> Result<(), ConfigError> {
    use sqlx::ConnectOptions;
    let Ok(options) = database_url.parse::<sqlx::postgres::PgConnectOptions>() else {
        return Ok(());
    };
    let context = || format!("connect to {}", postgres::redact(database_url));
    match tokio::time::timeout(std::time::Duration::from_secs(10), options.connect()).await {
        Ok(Ok(connection)) => {
            let _ = sqlx::Connection::close(connection).await;
            Ok(())
        }
        Ok(Err(err)) => Err(StoreError::sql(context())(err).into()),
        Err(_) => Err(
            StoreError::sql(context())(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the server did not answer within 10 s",
            )))
            .into(),
        ),
    }
}

async fn connect_sqlite(database_url: &str) -> Result<Connected, ConfigError> {
    let pool = sqlite::connect_pool(database_url, 8).await?;
    let path = sqlite::file_of(database_url).unwrap_or_default();
    let store = SqliteStore::new(pool, SqliteStore::id_for_path(&path));
    let control: Arc<dyn ControlStore> = Arc::new(SqlControlStore::sqlite(&store));
    Ok(Connected {
        control,
        stores: Stores::new().with_sql(SQLITE_STORE, Arc::new(store)),
        pool: None,
        clickhouse: None,
    })
}

/// Reads `{prefix}ENABLE_BACKGROUND_MIGRATIONS` (default true).
pub fn background_migrations_enabled(prefix: &str) -> Result<bool, ConfigError> {
    let name = format!("{prefix}ENABLE_BACKGROUND_MIGRATIONS");
    match std::env::var(&name) {
        Err(_) => Ok(true),
        Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
            "" | "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::NotABool { name, value }),
        },
    }
}
