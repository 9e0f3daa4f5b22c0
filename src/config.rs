//! Opening the stores a process needs from its configuration (URLs, environment).

use std::sync::Arc;

use crate::clickhouse::{ClickHouse, ClickHouseConfig, ClickHouseError};
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
    /// A named store's setting (`BGMIGRATE_STORE_<NAME>=URL` or `--store NAME=URL`) is unusable.
    #[error("{origin}: {reason}")]
    BadStore {
        /// The variable or flag, as the user wrote it (`BGMIGRATE_STORE_ANALYTICS`, `--store analytics=...`).
        origin: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

impl ConfigError {
    /// Whether the fix is in the configuration (exit code 2) rather than in the environment (a server down).
    pub fn is_bad_input(&self) -> bool {
        match self {
            ConfigError::UnsupportedUrl(_)
            | ConfigError::NotABool { .. }
            | ConfigError::BadStore { .. } => true,
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

/// The prefix of the environment variables that name extra stores: `BGMIGRATE_STORE_ANALYTICS=sqlite://a.db` adds
/// the store `analytics`.
pub const STORE_ENV_PREFIX: &str = "BGMIGRATE_STORE_";

/// One named store from the configuration: `BGMIGRATE_STORE_<NAME>=URL` or `--store NAME=URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSetting {
    /// The store's name as definitions write it (lower case).
    pub name: String,
    /// Its URL: `postgres://`, `sqlite://` or `http(s)://` (ClickHouse).
    pub url: String,
    /// Where it was set, for messages: the variable's name or the flag.
    pub origin: String,
}

impl StoreSetting {
    /// Parses a `--store NAME=URL` flag.
    pub fn from_flag(text: &str) -> Result<StoreSetting, ConfigError> {
        let (name, url) = text.split_once('=').unwrap_or((text, ""));
        let setting = StoreSetting {
            name: name.trim().to_ascii_lowercase(),
            url: url.trim().to_owned(),
            origin: format!("--store {}", redact_any(text)),
        };
        setting.check_name()?;
        Ok(setting)
    }

    /// Every `BGMIGRATE_STORE_<NAME>` variable of `vars` (the process's environment: [`std::env::vars`]), in name
    /// order.
    pub fn from_env(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vec<StoreSetting>, ConfigError> {
        let mut settings: Vec<StoreSetting> = vars
            .into_iter()
            .filter_map(|(var, url)| {
                let name = var.strip_prefix(STORE_ENV_PREFIX)?.to_ascii_lowercase();
                Some(StoreSetting {
                    name,
                    url: url.trim().to_owned(),
                    origin: var,
                })
            })
            .collect();
        settings.sort_by(|a, b| a.name.cmp(&b.name));
        for setting in &settings {
            setting.check_name()?;
        }
        Ok(settings)
    }

    fn bad(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::BadStore {
            origin: self.origin.clone(),
            reason: reason.into(),
        }
    }

    fn check_name(&self) -> Result<(), ConfigError> {
        let valid = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            Ok(())
        } else {
            Err(self.bad(
                "name a store with letters, digits and _, and give its URL: NAME=postgres://..., NAME=sqlite://path                  or NAME=http://host:8123/db (ClickHouse)",
            ))
        }
    }
}

/// A URL (or `NAME=URL`) without its password, for messages.
fn redact_any(text: &str) -> String {
    postgres::redact(text)
}

impl Connected {
    /// Adds the named stores of `settings` (see [`StoreSetting`]): a `postgres://` URL as a Postgres store, a
    /// `sqlite://` one as a SQLite file (created if missing), an `http(s)://` one as a ClickHouse store. A store
    /// named like one already configured (`postgres` or `sqlite` for the control database, `clickhouse`), a
    /// repeated name, or an unusable URL is refused, naming the variable or flag.
    pub async fn with_stores(mut self, settings: &[StoreSetting]) -> Result<Self, ConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        for setting in settings {
            let taken = self.stores.sql(&setting.name).is_some()
                || self.stores.clickhouse(&setting.name).is_some()
                || seen.contains(&setting.name.as_str());
            if taken {
                return Err(setting.bad(format!(
                    "the store name {:?} is already taken (the control database is store postgres or sqlite,                      CLICKHOUSE_URL is store clickhouse); choose another name",
                    setting.name
                )));
            }
            seen.push(&setting.name);
            let url = setting.url.as_str();
            let opened = |err: StoreError| match err {
                StoreError::BadUrl { reason, .. } => setting.bad(reason),
                err => ConfigError::Store(err),
            };
            self.stores = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                let pool = postgres::connect_pool(url, 4).await.map_err(opened)?;
                let store = PgStore::new(pool, PgStore::id_for_url(url));
                self.stores.clone().with_postgres(&setting.name, store)
            } else if url.starts_with("sqlite:") {
                let pool = sqlite::connect_pool(url, 4).await.map_err(opened)?;
                let path = sqlite::file_of(url).unwrap_or_default();
                let store = SqliteStore::new(pool, SqliteStore::id_for_path(&path));
                self.stores.clone().with_sqlite(&setting.name, store)
            } else if url.starts_with("http://") || url.starts_with("https://") {
                let config = ClickHouseConfig::parse(url, |_| None).map_err(|err| match err {
                    ClickHouseError::BadUrl { reason, .. } => setting.bad(reason),
                    err => ConfigError::ClickHouse(err),
                })?;
                let clickhouse = ClickHouse::new(config)?;
                self.stores
                    .clone()
                    .with_clickhouse(&setting.name, clickhouse)
            } else {
                return Err(setting.bad(format!(
                    "{:?} is not a store URL: use postgres://user@host:port/database, sqlite://path/to/file.db or                      http://user:pass@host:8123/db (ClickHouse)",
                    redact_any(url)
                )));
            };
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
        stores: Stores::new().with_sqlite(SQLITE_STORE, store),
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
