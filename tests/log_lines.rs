//! Log lines stay short: a slow statement carrying 200 KB of text is logged as a summary (the statement shortened,
//! its duration, its rows), on SQLite and on Postgres, and sqlx prints no statement of its own, even at TRACE.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bgmigrate::config;
use bgmigrate::store::SqlStore;
use common::TestDb;

/// Longest log line accepted: a few hundred characters.
const MAX_LINE: usize = 400;

/// Everything the global subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A statement that runs over a second (`sleep`: the dialect's way to pass the time) and carries 200 KB of text.
async fn run_slow_statement(store: &dyn SqlStore, sleep: &str) {
    let padding = "x".repeat(200_000);
    let sql = format!("SELECT count(*) FROM ({sleep}) AS slow WHERE '{padding}' <> ''");
    let mut tx = store.begin().await.expect("begin");
    let n = tx.fetch_count(&sql, &[]).await.expect("slow statement");
    assert_eq!(n, 1);
    tx.commit().await.expect("commit");
}

/// One test (the subscriber is global: sqlx's SQLite driver logs from its own worker thread).
#[tokio::test]
async fn a_slow_200_kb_statement_is_logged_as_a_short_summary_on_both_stores() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    let sqlite = config::connect(&format!("sqlite://{}", dir.path().join("app.db").display()))
        .await
        .expect("sqlite");
    let store = sqlite.stores.sql("sqlite").unwrap();
    // About 1.5 s of SQLite's own work (a recursive count), whatever the build.
    run_slow_statement(
        store.as_ref(),
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 6000000) \
         SELECT max(n) AS n FROM g",
    )
    .await;
    let db = TestDb::create("log_lines").await;
    let postgres = db.connect().await;
    let store = postgres.stores.sql("postgres").unwrap();
    run_slow_statement(store.as_ref(), "SELECT pg_sleep(1.1)").await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let long: Vec<&str> = text.lines().filter(|l| l.len() > MAX_LINE).collect();
    assert!(
        long.is_empty(),
        "{} lines over {MAX_LINE} characters, the first starts: {}",
        long.len(),
        &long[0][..MAX_LINE]
    );
    let slow: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("slow statement"))
        .collect();
    assert_eq!(slow.len(), 2, "{text}");
    for (line, sleep) in slow.iter().zip(["WITH RECURSIVE", "pg_sleep"]) {
        assert!(
            line.contains("statement=SELECT count(*) FROM (")
                && line.contains(sleep)
                && line.contains("elapsed_ms=")
                && line.contains("rows=1"),
            "{line}"
        );
    }
}
