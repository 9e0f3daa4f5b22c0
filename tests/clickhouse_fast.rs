//! ClickHouse fast migrations through `bgmigrate migrate`, against the real Postgres (lock, control store) and the
//! real ClickHouse (a database per test).

mod clickhouse_common;
mod common;

use clickhouse_common::TestClickHouse;
use common::{TestDb, text};

fn write(db: &TestDb, file: &str, sql: &str) {
    let dir = db.migrations().join("clickhouse");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file), sql).unwrap();
}

const TRACES: &str = "-- two statements in one file\n\
    CREATE TABLE IF NOT EXISTS traces (id String, name String) ENGINE = ReplacingMergeTree ORDER BY id;\n\
    INSERT INTO traces (id, name) VALUES ('seed', 'it''s; here');\n";
const SCORES: &str =
    "CREATE TABLE IF NOT EXISTS scores (id String, value Float64) ENGINE = MergeTree ORDER BY id;";

/// Files apply in version order, each statement of a multi-statement file runs, and each file is recorded so a
/// second `migrate` changes nothing.
#[tokio::test]
async fn clickhouse_fast_migrations_apply_in_order_once_and_are_recorded() {
    let db = TestDb::create("ch_fast_once").await;
    let ch = TestClickHouse::create("ch_fast_once").await;
    write(&db, "0002_scores.up.sql", SCORES);
    write(&db, "0001_traces.up.sql", TRACES);
    write(&db, "0001_traces.down.sql", "DROP TABLE traces");
    for _ in 0..2 {
        let out = db.cli_with_env(&["migrate"], &[("CLICKHOUSE_URL", &ch.url)]);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(ch.value("SELECT count() FROM traces").await, "1");
    assert_eq!(ch.value("SELECT name FROM traces").await, "it's; here");
    assert_eq!(
        ch.value(
            "SELECT groupArray(name) FROM (SELECT name FROM schema_migrations ORDER BY version)"
        )
        .await,
        "['traces','scores']"
    );
    assert_eq!(ch.value("SELECT count() FROM scores").await, "0");
}

/// A failing statement stops `migrate` with exit 1, naming the file and the statement; the file is not recorded,
/// so a fixed release applies it.
#[tokio::test]
async fn a_failing_clickhouse_migration_refuses_to_start_and_names_file_and_statement() {
    let db = TestDb::create("ch_fast_fail").await;
    let ch = TestClickHouse::create("ch_fast_fail").await;
    write(&db, "0001_traces.up.sql", TRACES);
    write(
        &db,
        "0002_broken.up.sql",
        "CREATE TABLE IF NOT EXISTS ok_table (a Int8) ENGINE = Memory;\nALTER TABLE no_such_table ADD COLUMN x Int8;",
    );
    let out = db.cli_with_env(&["migrate"], &[("CLICKHOUSE_URL", &ch.url)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0002_broken.up.sql, statement 2"),
        "{stderr}"
    );
    assert!(stderr.contains("no_such_table"), "{stderr}");
    assert_eq!(ch.value("SELECT count() FROM schema_migrations").await, "1");
}

/// Editing a file that was already applied is refused with exit 2 and a message that says what to do.
#[tokio::test]
async fn an_edited_applied_clickhouse_migration_is_refused_with_exit_2() {
    let db = TestDb::create("ch_fast_edit").await;
    let ch = TestClickHouse::create("ch_fast_edit").await;
    write(&db, "0001_traces.up.sql", TRACES);
    let out = db.cli_with_env(&["migrate"], &[("CLICKHOUSE_URL", &ch.url)]);
    assert!(out.status.success(), "{}", text(&out));
    write(&db, "0001_traces.up.sql", &format!("{TRACES}\n-- edited"));
    let out = db.cli_with_env(&["migrate"], &[("CLICKHOUSE_URL", &ch.url)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was edited after it was applied"),
        "{}",
        text(&out)
    );
}

/// ClickHouse files without a ClickHouse configured exit 2 before the Postgres fast migrations run.
#[tokio::test]
async fn clickhouse_files_without_clickhouse_url_exit_2_and_change_nothing() {
    let db = TestDb::create("ch_fast_nourl").await;
    db.fast_migration("0001_pg.sql", "CREATE TABLE pg_marker (id int);");
    write(&db, "0001_traces.up.sql", TRACES);
    let out = db.cli_with_env(&["migrate"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CLICKHOUSE_URL"),
        "{}",
        text(&out)
    );
    let pool = db.pool().await;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('pg_marker') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        !exists,
        "the Postgres fast migration ran although migrate refused"
    );
}

/// Several processes starting at once apply each file exactly once: the Postgres advisory lock serializes them.
#[tokio::test]
async fn concurrent_migrate_processes_apply_each_clickhouse_file_once() {
    let db = TestDb::create("ch_fast_lock").await;
    let ch = TestClickHouse::create("ch_fast_lock").await;
    write(&db, "0001_traces.up.sql", TRACES);
    write(
        &db,
        "0002_slow.up.sql",
        "INSERT INTO traces (id, name) SELECT 'slow', toString(sleep(1));",
    );
    let children: Vec<_> = (0..3)
        .map(|_| {
            db.command(&["migrate"], &[("CLICKHOUSE_URL", &ch.url)])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(ch.value("SELECT count() FROM traces").await, "2");
    assert_eq!(ch.value("SELECT count() FROM schema_migrations").await, "2");
}
