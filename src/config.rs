//! Opening the stores a process needs from its configuration (URLs, environment).

use std::sync::Arc;

use crate::clickhouse::{ClickHouse, ClickHouseError};
use crate::control::{ControlStore, PgControlStore};
use crate::store::{PgStore, StoreError, Stores, postgres};

/// What is wrong with the configuration, in words that say what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An unsupported URL scheme.
    #[error("DATABASE_URL {0:?} is not supported: use postgres://user@host:port/database")]
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
    /// Stores by name (`postgres` is the control database when it is Postgres).
    pub stores: Stores,
    /// The control database's pool, for fast migrations.
    pub pool: sqlx::PgPool,
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

/// Opens the control store at `database_url` and registers it as the `postgres` store.
pub async fn connect(database_url: &str) -> Result<Connected, ConfigError> {
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        return Err(ConfigError::UnsupportedUrl(postgres::redact(database_url)));
    }
    let pool = postgres::connect_pool(database_url, 8).await?;
    let store = PgStore::new(pool.clone(), PgStore::id_for_url(database_url));
    let control: Arc<dyn ControlStore> = Arc::new(PgControlStore::new(&store));
    Ok(Connected {
        control,
        stores: Stores::new().with_postgres("postgres", store),
        pool,
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
