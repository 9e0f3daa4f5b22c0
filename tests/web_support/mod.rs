//! Shared by the web tests: the router served on a free loopback port, a plain HTTP client, and the sample
//! migrations the tests look at.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bgmigrate::config::Connected;
use bgmigrate::web::{self, WebState};
use bgmigrate::{ControlStore, builtin_registry};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::common::{TestDb, register_dir};

/// The admin token the tests configure.
pub const ADMIN: &str = "admin-secret-token";
/// The read token the tests configure where they need one.
pub const READER: &str = "read-only-token";

/// A server on 127.0.0.1 with a free port, running until the test ends.
pub struct Server {
    /// `http://127.0.0.1:PORT` plus the mount prefix.
    pub base: String,
}

/// Serves `app` on a free loopback port.
pub async fn serve_app(app: Router, prefix: &str) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        base: format!("http://{addr}{prefix}"),
    }
}

/// Serves bgmigrate's router at the root.
pub async fn serve(state: WebState) -> Server {
    serve_app(web::router(state), "").await
}

/// A state over the test's control store with the admin token set.
pub fn admin_state(connected: &Connected) -> WebState {
    WebState::new(connected.control.clone())
        .app_version("testapp 9.9.9")
        .admin_token(Some(ADMIN.into()))
}

/// One HTTP response, body read whole.
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.body))
            .to_owned()
    }
}

/// Sends one request; `headers` are name/value pairs. Fails only when the server cannot be reached.
pub async fn try_request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Sends one request, which must reach the server.
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    try_request(method, url, headers, body)
        .await
        .expect("HTTP request")
}

/// `GET url`.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::GET, url, headers, "").await
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// Creates `items(id text, a, b, total)` with `rows` rows keyed `k000001`, ...
pub async fn items(db: &TestDb, rows: i64) {
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id text PRIMARY KEY, a int NOT NULL, b int NOT NULL, total int)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO items (id, a, b) SELECT 'k' || lpad(i::text, 6, '0'), i, 2 * i FROM generate_series(1, $1) i",
    )
    .bind(rows)
    .execute(&pool)
    .await
    .unwrap();
    // Fresh statistics, so the row estimate (and the percentage) is close to the truth.
    sqlx::raw_sql("ANALYZE items").execute(&pool).await.unwrap();
    pool.close().await;
}

/// A backfill of `total = a + b` over `table`, with the TOML body of its `[args]`.
pub fn backfill(table: &str, args: &str) -> String {
    format!(
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"{table}\"\nkey = [\"id\"]\n\
         set = {{ total = \"a + b\" }}\n[args]\n{args}\n"
    )
}

/// Registers the test directory's definitions.
pub async fn register(db: &TestDb, connected: &Connected) {
    register_dir(connected, &db.migrations(), &builtin_registry()).await;
}

/// Sets a row's status (and reason) directly, as a worker would have left it.
pub async fn force_status(db: &TestDb, name: &str, status: &str, reason: Option<&str>) {
    let pool = db.pool().await;
    sqlx::query(
        "UPDATE background_migrations SET status = $2, failed_reason = $3, \
         failed_at = CASE WHEN $2 = 'failed' THEN now() END, \
         finished_at = CASE WHEN $2 = 'finished' THEN now() END, \
         worker_id = CASE WHEN $2 = 'running' THEN 'test-worker' END WHERE name = $1",
    )
    .bind(name)
    .bind(status)
    .bind(reason)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// The control store as a trait object.
pub fn control(connected: &Connected) -> Arc<dyn ControlStore> {
    connected.control.clone()
}

/// Logs in through the form with `token` and `name`; the `name=value` of the session cookie.
pub async fn login(server: &Server, token: &str, name: &str) -> String {
    let reply = request(
        Method::POST,
        &format!("{}/login", server.base),
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("token={token}&name={name}&next=/"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    reply.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// The CSRF token of a logged-in admin session, from `GET /api/session`.
pub async fn csrf_token(server: &Server, cookie: &str) -> String {
    let session = get(
        &format!("{}/api/session", server.base),
        &[("cookie", cookie)],
    )
    .await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.body);
    session.json()["csrf_token"].as_str().unwrap().to_owned()
}
