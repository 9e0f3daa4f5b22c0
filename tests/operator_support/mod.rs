//! Fixtures of the operator tests (`operator_*.rs`): the `items` table and its backfill, the CLI against a test
//! database, and worker processes.
#![allow(dead_code)]

use std::process::{Output, Stdio};

use std::time::Duration;

use super::common::{TestDb, wait_until};

// ---------------------------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------------------------

/// Creates `items` with `rows` rows keyed `k000001`, `k000002`, ... (text keys, keyset order = numeric order).
pub async fn items(db: &TestDb, rows: i64) {
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id text PRIMARY KEY, a int NOT NULL, b int NOT NULL, total int, \
         hits int NOT NULL DEFAULT 0)",
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
    pool.close().await;
}

/// The backfill over `items` that the tests run; `args` is the TOML body of its `[args]` table.
pub fn backfill(args: &str) -> String {
    format!(
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\n\
         set = {{ total = \"a + b\", hits = \"hits + 1\" }}\n[args]\n{args}\n"
    )
}

/// How many rows of `items` were updated 0 times, once, and more than once; also checks `total` on updated rows.
pub async fn hits(db: &TestDb) -> (i64, i64, i64) {
    let pool = db.pool().await;
    let (zero, once, more, wrong_total): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE hits = 0), count(*) FILTER (WHERE hits = 1), \
         count(*) FILTER (WHERE hits > 1), count(*) FILTER (WHERE hits > 0 AND total IS DISTINCT FROM a + b) \
         FROM items",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(wrong_total, 0, "every updated row must have total = a + b");
    (zero, once, more)
}

/// The control-table row as plain values.
pub async fn row(db: &TestDb, name: &str) -> bgmigrate::control::MigrationRecord {
    db.connect().await.control.get(name).await.expect("row")
}

/// Runs one SQL statement on the test database.
pub async fn exec(db: &TestDb, sql: &str) {
    let pool = db.pool().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
}

/// Runs the CLI without blocking the test's runtime (a library runner may share it).
pub async fn cli(db: &TestDb, args: &[&str]) -> Output {
    cli_env(db, args, &[]).await
}

pub async fn cli_env(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Output {
    let command = tokio::process::Command::from(db.command(args, env)).output();
    tokio::time::timeout(Duration::from_secs(30), command)
        .await
        .unwrap_or_else(|_| panic!("bgmigrate {args:?} did not end within 30 s"))
        .expect("run bgmigrate")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `worker --exit-when-done` process with short leases and polling.
pub fn spawn_worker(db: &TestDb) -> tokio::process::Child {
    let mut command = tokio::process::Command::from(db.command(
        &[
            "worker",
            "--exit-when-done",
            "--lease-ttl",
            "5s",
            "--heartbeat",
            "1s",
            "--poll",
            "200ms",
        ],
        &[],
    ));
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command.spawn().expect("spawn the worker")
}

pub async fn finish(child: tokio::process::Child) -> Output {
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the worker did not exit within 30 s")
        .expect("worker output")
}

pub async fn run_worker(db: &TestDb) -> Output {
    finish(spawn_worker(db)).await
}

/// Starts a worker on `name` (slow batches expected), lets it commit a few batches, then breaks its args by SQL the
/// way an operator's typo would; returns the worker's output once it has exited.
pub async fn fail_midway_with_bad_args(db: &TestDb, name: &str) -> Output {
    let worker = spawn_worker(db);
    wait_until(
        "a few batches are committed",
        Duration::from_secs(15),
        move || async move { db.batches(name).await.len() >= 2 },
    )
    .await;
    exec(
        db,
        &format!(
            "UPDATE background_migrations SET args = '{{\"batchSize\": \"lots\"}}' WHERE name = '{name}'"
        ),
    )
    .await;
    finish(worker).await
}
