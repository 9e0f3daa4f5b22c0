//! ClickHouse over its HTTP interface: queries, DDL, streamed `RowBinary` inserts, and table introspection.
//!
//! Plain HTTP (reqwest) rather than the `clickhouse` crate: every request here is one `POST` whose SQL works on
//! ClickHouse 18.16 (Debian's package) and on current servers alike — no server-side query parameters, no
//! validating `RowBinaryWithNamesAndTypes`; literals are quoted client-side by [`quote_literal`].
//!
//! Layout: [`config`] parses the connection; [`error`] classifies failures; [`types`] reads column types;
//! [`limits`] holds the resource limits sent as query settings; [`rowbinary`] writes the insert format; [`digest`] counts and checksums rows in it; [`external`] sends a table beside a query; [`statements`] splits multi-statement files.

pub mod config;
pub mod digest;
pub mod error;
pub mod external;
pub mod limits;
pub mod rowbinary;
pub mod statements;
pub mod types;

use std::time::Duration;

use futures_util::TryStreamExt;
use reqwest::{Body, Client, Url};
use tokio::io::AsyncRead;
use tokio_util::io::StreamReader;

pub use self::config::ClickHouseConfig;
pub use self::error::ClickHouseError;
pub use self::external::ExternalTable;
pub use self::types::ChType;

/// How long a single request may take before it counts as a (transient) failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled connection is kept for reuse: below the server's `keep_alive_timeout` (3 s on 18.x, the
/// shortest default), so a request never goes out on a connection the server is closing. With reqwest's 90 s
/// default, a query after a few idle seconds failed with "error sending request" (seen once in a CI run).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A column of a ClickHouse table, from `system.columns`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChColumn {
    /// Column name.
    pub name: String,
    /// Its type as the server spells it (`Nullable(String)`).
    pub type_name: String,
    /// Whether it has a DEFAULT / MATERIALIZED / ALIAS expression.
    pub has_default: bool,
}

/// What `system.tables` says about a table's engine and sorting key.
#[derive(Debug, Clone, PartialEq)]
pub struct ChTable {
    /// Engine name (`ReplacingMergeTree`).
    pub engine: String,
    /// The `ORDER BY` expression list (`project_id, id`).
    pub sorting_key: String,
}

/// A ClickHouse server and database, reached over HTTP. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ClickHouse {
    http: Client,
    config: ClickHouseConfig,
}

impl ClickHouse {
    /// A client for `config` (no connection is made until the first request).
    pub fn new(config: ClickHouseConfig) -> Result<Self, ClickHouseError> {
        let http = Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| ClickHouseError::BadUrl {
                url: config.endpoint.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self { http, config })
    }

    /// Parses `url` (with `CLICKHOUSE_USER`, `CLICKHOUSE_PASSWORD`, `CLICKHOUSE_DB`, `CLICKHOUSE_CLUSTER` from the
    /// environment overriding its parts) and builds a client.
    pub fn from_url(url: &str) -> Result<Self, ClickHouseError> {
        Self::new(ClickHouseConfig::parse(url, |name| {
            std::env::var(name).ok()
        })?)
    }

    /// The same server, another database.
    pub fn with_database(&self, database: &str) -> Self {
        let mut config = self.config.clone();
        config.database = database.to_owned();
        Self {
            http: self.http.clone(),
            config,
        }
    }

    /// The connection settings.
    pub fn config(&self) -> &ClickHouseConfig {
        &self.config
    }

    /// The database queries run in.
    pub fn database(&self) -> &str {
        &self.config.database
    }

    /// `clickhouse://host:port/database`: identity of this store in logs and checkpoints.
    pub fn id(&self) -> String {
        format!(
            "clickhouse://{}/{}",
            self.config.host_port(),
            self.config.database
        )
    }

    fn url(&self, query: Option<&str>) -> Url {
        let mut url = self.config.endpoint.clone();
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("database", &self.config.database);
            if let Some(query) = query {
                pairs.append_pair("query", query);
            }
        }
        url
    }

    async fn send(
        &self,
        context: &str,
        url: Url,
        body: Body,
    ) -> Result<reqwest::Response, ClickHouseError> {
        self.send_typed(context, url, body, None).await
    }

    async fn send_typed(
        &self,
        context: &str,
        url: Url,
        body: Body,
        content_type: Option<&str>,
    ) -> Result<reqwest::Response, ClickHouseError> {
        let unreachable = |source| ClickHouseError::Unreachable {
            endpoint: self.config.host_port(),
            context: context.to_owned(),
            source,
        };
        let mut request = self
            .http
            .post(url)
            .basic_auth(&self.config.user, Some(&self.config.password));
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        let response = request.body(body).send().await.map_err(unreachable)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.map_err(unreachable)?;
        Err(ClickHouseError::from_response(
            context,
            status.as_u16(),
            &text,
        ))
    }

    /// Runs a statement (DDL, `INSERT ... SELECT`, `OPTIMIZE`), discarding any output.
    pub async fn execute(&self, sql: &str) -> Result<(), ClickHouseError> {
        self.execute_with(sql, &[]).await
    }

    /// Runs a statement with query `settings` (`max_memory_usage`, ...), discarding any output.
    pub async fn execute_with(
        &self,
        sql: &str,
        settings: &[(&str, String)],
    ) -> Result<(), ClickHouseError> {
        let context = format!("run `{}`", short(sql));
        let mut url = self.url(None);
        url.query_pairs_mut().extend_pairs(settings);
        self.send(&context, url, Body::from(sql.to_owned())).await?;
        Ok(())
    }

    /// Runs a query and returns its rows as `TabSeparated` fields, unescaped. Append no `FORMAT` clause.
    pub async fn query_rows(&self, sql: &str) -> Result<Vec<Vec<String>>, ClickHouseError> {
        self.query_rows_with(sql, &[]).await
    }

    /// [`ClickHouse::query_rows`] with query `settings`.
    pub async fn query_rows_with(
        &self,
        sql: &str,
        settings: &[(&str, String)],
    ) -> Result<Vec<Vec<String>>, ClickHouseError> {
        let context = format!("run `{}`", short(sql));
        let body = format!("{sql}\nFORMAT TabSeparated");
        let mut url = self.url(None);
        url.query_pairs_mut().extend_pairs(settings);
        let response = self.send(&context, url, Body::from(body)).await?;
        let text = response
            .text()
            .await
            .map_err(|source| ClickHouseError::Unreachable {
                endpoint: self.config.host_port(),
                context: context.clone(),
                source,
            })?;
        Ok(text
            .lines()
            .map(|line| line.split('\t').map(unescape_tsv).collect())
            .collect())
    }

    /// Runs a query expected to return one value.
    pub async fn query_value(&self, sql: &str) -> Result<String, ClickHouseError> {
        let rows = self.query_rows(sql).await?;
        rows.into_iter()
            .next()
            .and_then(|row| row.into_iter().next())
            .ok_or_else(|| ClickHouseError::Protocol {
                context: format!("run `{}`", short(sql)),
                detail: "no row returned".into(),
            })
    }

    /// Inserts `body` (rows in `RowBinary`, streamed) into `table (columns)`. The insert is one request: it is
    /// acknowledged only when the server has written every row.
    pub async fn insert_rowbinary(
        &self,
        table: &str,
        columns: &[String],
        body: Body,
    ) -> Result<(), ClickHouseError> {
        let columns: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let query = format!(
            "INSERT INTO {} ({}) FORMAT RowBinary",
            quote_ident(table),
            columns.join(", ")
        );
        let context = format!("insert into {table}");
        self.send(&context, self.url(Some(&query)), body).await?;
        Ok(())
    }

    /// Runs a `SELECT` (without a `FORMAT` clause) that names the external table `external` and returns its rows
    /// as a `RowBinary` stream, read as it arrives. The table travels as data beside the query (see [`external`]).
    pub async fn select_rowbinary_with(
        &self,
        sql: &str,
        external: &ExternalTable,
    ) -> Result<impl AsyncRead + Send + Unpin + 'static, ClickHouseError> {
        let context = format!("run `{}`", short(sql));
        let mut url = self.url(Some(&format!("{sql}\nFORMAT RowBinary")));
        url.query_pairs_mut().extend_pairs(external.url_params());
        let (body, content_type) = external.multipart(random_boundary());
        let response = self
            .send_typed(&context, url, Body::from(body), Some(&content_type))
            .await?;
        let chunks = response.bytes_stream().map_err(std::io::Error::other);
        Ok(StreamReader::new(Box::pin(chunks)))
    }

    /// The server's version, e.g. `18.16.1`.
    pub async fn version(&self) -> Result<String, ClickHouseError> {
        self.query_value("SELECT version()").await
    }

    /// The columns of `table` in this database (empty when the table does not exist).
    pub async fn columns(&self, table: &str) -> Result<Vec<ChColumn>, ClickHouseError> {
        let sql = format!(
            "SELECT name, type, default_kind FROM system.columns WHERE database = {} AND table = {}",
            quote_literal(self.database()),
            quote_literal(table)
        );
        Ok(self
            .query_rows(&sql)
            .await?
            .into_iter()
            .filter(|row| row.len() == 3)
            .map(|mut row| ChColumn {
                has_default: !row[2].is_empty(),
                type_name: std::mem::take(&mut row[1]),
                name: std::mem::take(&mut row[0]),
            })
            .collect())
    }

    /// Engine and sorting key of `table` in this database, if it exists.
    pub async fn table(&self, table: &str) -> Result<Option<ChTable>, ClickHouseError> {
        let sql = format!(
            "SELECT engine, sorting_key FROM system.tables WHERE database = {} AND name = {}",
            quote_literal(self.database()),
            quote_literal(table)
        );
        Ok(self
            .query_rows(&sql)
            .await?
            .into_iter()
            .find(|row| row.len() == 2)
            .map(|mut row| ChTable {
                sorting_key: std::mem::take(&mut row[1]),
                engine: std::mem::take(&mut row[0]),
            }))
    }
}

/// A multipart boundary that no one can predict (so no data can be crafted to contain it).
fn random_boundary() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness the fixed fallback is still safe: `ExternalTable::multipart` lengthens a boundary that
    // occurs in the data.
    let _ = getrandom::fill(&mut bytes);
    format!("bgmigrate-{}", hex::encode(bytes))
}

/// A string literal for ClickHouse SQL (`'it\'s'`), safe for any text.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A quoted identifier (`` `name` ``), part by part for `database.table`.
pub fn quote_ident(ident: &str) -> String {
    ident
        .split('.')
        .map(|part| format!("`{}`", part.replace('\\', "\\\\").replace('`', "\\`")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Undoes `TabSeparated` escaping (`\t`, `\n`, `\\`, ...).
fn unescape_tsv(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The first part of a statement, flattened, for error context.
fn short(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 120 {
        format!("{}…", flat.chars().take(120).collect::<String>())
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_escaped() {
        assert_eq!(quote_literal(r"it's a \ test"), r"'it\'s a \\ test'");
        assert_eq!(quote_ident("db.we`ird"), r"`db`.`we\`ird`");
    }

    #[test]
    fn tab_separated_escapes_are_undone() {
        assert_eq!(unescape_tsv(r"a\tb\nc\\d\'e"), "a\tb\nc\\d'e");
    }
}
