//! Where ClickHouse is and who we are there: `CLICKHOUSE_URL` (`http://user:pass@host:8123/db`), optionally
//! completed or overridden by `CLICKHOUSE_USER`, `CLICKHOUSE_PASSWORD`, `CLICKHOUSE_DB` and `CLICKHOUSE_CLUSTER`.

use reqwest::Url;

use super::ClickHouseError;

/// A parsed ClickHouse connection.
#[derive(Clone, PartialEq, Eq)]
pub struct ClickHouseConfig {
    /// `http(s)://host:port/`, without credentials or path.
    pub endpoint: Url,
    /// User name (`default` when unset).
    pub user: String,
    /// Password (empty when unset).
    pub password: String,
    /// The database queries run in (`default` when unset).
    pub database: String,
    /// Cluster name for `ON CLUSTER` DDL in fast migrations, when the deployment is clustered.
    pub cluster: Option<String>,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("endpoint", &self.endpoint.as_str())
            .field("user", &self.user)
            .field("database", &self.database)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl ClickHouseConfig {
    /// Parses `url`; variables from `env` (e.g. `|name| std::env::var(name).ok()`) override its parts.
    pub fn parse(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ClickHouseError> {
        let bad = |reason: String| ClickHouseError::BadUrl {
            url: redact(url),
            reason,
        };
        let parsed = Url::parse(url)
            .map_err(|e| bad(format!("{e}; use http://user:password@host:8123/database")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad(format!(
                "scheme {:?} is not supported; use http:// or https:// (ClickHouse's HTTP interface, port 8123 by default)",
                parsed.scheme()
            )));
        }
        parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host; use http://host:8123/database".into()))?;
        if parsed.query().is_some() {
            return Err(bad(
                "query parameters are not supported; put the database in the path".into(),
            ));
        }
        let path = parsed.path().trim_matches('/');
        if path.contains('/') {
            return Err(bad(format!("path {path:?} must be a single database name")));
        }
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| bad(format!("{s:?} is not valid percent-encoding")))
        };
        let mut endpoint = parsed.clone();
        endpoint.set_path("/");
        let _ = endpoint.set_username("");
        let _ = endpoint.set_password(None);
        let non_empty = |value: String| Some(value).filter(|v| !v.is_empty());
        let user = env("CLICKHOUSE_USER")
            .and_then(non_empty)
            .or(non_empty(decode(parsed.username())?))
            .unwrap_or_else(|| "default".into());
        let password = match env("CLICKHOUSE_PASSWORD") {
            Some(password) => password,
            None => decode(parsed.password().unwrap_or_default())?,
        };
        let database = env("CLICKHOUSE_DB")
            .and_then(non_empty)
            .or(non_empty(decode(path)?))
            .unwrap_or_else(|| "default".into());
        Ok(Self {
            endpoint,
            user,
            password,
            database,
            cluster: env("CLICKHOUSE_CLUSTER").and_then(non_empty),
        })
    }

    /// `host:port`, for messages and store identity.
    pub fn host_port(&self) -> String {
        format!(
            "{}:{}",
            self.endpoint.host_str().unwrap_or_default(),
            self.endpoint.port_or_known_default().unwrap_or(8123)
        )
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => crate::store::postgres::redact(url),
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn user_password_and_database_come_from_the_url() {
        let config =
            ClickHouseConfig::parse("http://app:p%40ss@ch:8123/analytics", no_env).unwrap();
        assert_eq!(config.user, "app");
        assert_eq!(config.password, "p@ss");
        assert_eq!(config.database, "analytics");
        assert_eq!(config.endpoint.as_str(), "http://ch:8123/");
        assert_eq!(config.host_port(), "ch:8123");
    }

    #[test]
    fn separate_variables_complete_a_bare_url() {
        let env = |name: &str| match name {
            "CLICKHOUSE_USER" => Some("langfuse".to_owned()),
            "CLICKHOUSE_PASSWORD" => Some("secret".to_owned()),
            "CLICKHOUSE_DB" => Some("lf".to_owned()),
            "CLICKHOUSE_CLUSTER" => Some("main".to_owned()),
            _ => None,
        };
        let config = ClickHouseConfig::parse("http://ch:8123", env).unwrap();
        assert_eq!(
            (
                config.user.as_str(),
                config.password.as_str(),
                config.database.as_str()
            ),
            ("langfuse", "secret", "lf")
        );
        assert_eq!(config.cluster.as_deref(), Some("main"));
        let defaults = ClickHouseConfig::parse("http://ch:8123/", no_env).unwrap();
        assert_eq!(
            (defaults.user.as_str(), defaults.database.as_str()),
            ("default", "default")
        );
    }

    #[test]
    fn a_wrong_scheme_is_refused_with_what_is_allowed_and_no_password() {
        let err = ClickHouseConfig::parse("tcp://u:hunter2@ch:9000/db", no_env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("use http://"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
