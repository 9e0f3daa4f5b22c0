//! `bgmigrate demo` as a newcomer runs it: the real binary in an empty directory, no configuration at all.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use bgmigrate::Status;
use bgmigrate::config;
use common::text;

/// Runs `bgmigrate demo --exit-when-done --rows 20000` in `dir` with no DATABASE_URL.
fn demo(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
        .args(["demo", "--exit-when-done", "--rows", "20000"])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("BGMIGRATE_MIGRATIONS_DIR")
        .env_remove("ENABLE_BACKGROUND_MIGRATIONS")
        .env("RUST_LOG", "info,sqlx=warn")
        .output()
        .expect("run bgmigrate demo")
}

async fn scalar(connected: &config::Connected, sql: &str) -> i64 {
    let store = connected
        .stores
        .sql(config::SQLITE_STORE)
        .expect("sqlite store");
    let mut tx = store.begin().await.expect("begin");
    tx.fetch_count(sql, &[]).await.expect(sql)
}

/// With no configuration the demo creates bgmigrate-demo/ with a SQLite file of sample data, runs every demo
/// migration to the end, exits 0, and leaves the data migrated exactly.
#[tokio::test]
async fn the_demo_runs_every_migration_to_the_end_with_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let output = demo(dir.path());
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("sqlite://bgmigrate-demo/app.db"),
        "it says where the data is:\n{stdout}"
    );

    let file = dir.path().join("bgmigrate-demo/app.db");
    assert!(file.is_file(), "the demo's SQLite file exists");
    let connected = config::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let records = connected.control.list().await.unwrap();
    assert_eq!(records.len(), 3, "{records:?}");
    for record in &records {
        assert_eq!(record.status, Status::Finished, "{}", record.name);
        assert!(record.rows_done > 0, "{}", record.name);
    }
    let checks = [
        ("SELECT count(*) FROM observations", 20000),
        (
            "SELECT count(*) FROM observations WHERE type = 'GENERATION' \
             AND total_cost IS NOT coalesce(input_cost, 0) + coalesce(output_cost, 0)",
            0,
        ),
        (
            "SELECT count(*) FROM observations WHERE type <> 'GENERATION' AND total_cost IS NOT NULL",
            0,
        ),
        (
            "SELECT count(*) FROM traces WHERE created_day IS NOT substr(created_at, 1, 10)",
            0,
        ),
        (
            "SELECT count(*) FROM scores WHERE normalized_value IS NOT value / 100.0",
            0,
        ),
        (
            "SELECT count(*) FROM observations WHERE length(input) > 200000",
            4,
        ),
    ];
    for (sql, expected) in checks {
        assert_eq!(scalar(&connected, sql).await, expected, "{sql}");
    }
}

/// Running the demo again reuses its data and its finished migrations: nothing is generated or run twice.
#[tokio::test]
async fn a_second_demo_run_reuses_the_data_and_finds_nothing_left_to_do() {
    let dir = tempfile::tempdir().unwrap();
    assert!(demo(dir.path()).status.success());
    let again = demo(dir.path());
    assert!(again.status.success(), "{}", text(&again));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("sample data already present"), "{stdout}");
    assert!(
        stdout.contains("0 background migrations finished in this run"),
        "{stdout}"
    );
    let file = dir.path().join("bgmigrate-demo/app.db");
    let connected = config::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    assert_eq!(
        scalar(&connected, "SELECT count(*) FROM observations").await,
        20000
    );
    for record in connected.control.list().await.unwrap() {
        assert_eq!(
            (record.status, record.attempts),
            (Status::Finished, 1),
            "{}",
            record.name
        );
    }
}
