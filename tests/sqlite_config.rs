//! `DATABASE_URL=sqlite://path` through the real binary: the file is created when missing, the operator commands
//! work on it, and what cannot work is refused with exit 2 and a message that says what to use instead.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::text;

fn bgmigrate(dir: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
        .args(args)
        .current_dir(dir)
        .env("DATABASE_URL", url)
        .env("BGMIGRATE_MIGRATIONS_DIR", dir.join("migrations"))
        .env_remove("ENABLE_BACKGROUND_MIGRATIONS")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run bgmigrate")
}

/// A relative sqlite:// path that does not exist yet becomes a file with the control tables; status reads it.
#[test]
fn a_missing_sqlite_file_is_created_with_the_control_tables() {
    let dir = tempfile::tempdir().unwrap();
    let output = bgmigrate(dir.path(), "sqlite://control.db", &["status", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
    assert!(dir.path().join("control.db").is_file());
}

/// An unknown scheme, an in-memory database and a file in a missing directory are refused with exit 2, naming
/// what is allowed.
#[test]
fn unusable_database_urls_are_refused_with_what_to_use_instead() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "mysql://db/app",
            "use postgres://user@host:port/database or sqlite://path/to/file.db",
        ),
        ("sqlite::memory:", "name a file, e.g. sqlite://bgmigrate.db"),
        (
            "sqlite://no/such/dir/app.db",
            "the directory no/such/dir does not exist",
        ),
    ];
    for (url, message) in cases {
        let output = bgmigrate(dir.path(), url, &["status"]);
        assert_eq!(output.status.code(), Some(2), "{url}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{url}: {stderr}");
    }
    assert!(!dir.path().join("no").exists(), "nothing was created");
}

/// Postgres fast migrations cannot apply to a SQLite control store: `migrate` says so (exit 2) and registers nothing.
#[test]
fn postgres_fast_migrations_are_refused_on_a_sqlite_control_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("migrations/postgres")).unwrap();
    std::fs::write(
        dir.path().join("migrations/postgres/0001_init.sql"),
        "SELECT 1;",
    )
    .unwrap();
    let output = bgmigrate(dir.path(), "sqlite://app.db", &["migrate"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("holds Postgres fast migrations, but the control store is not Postgres"),
        "{stderr}"
    );
}

/// Several processes opening one brand-new file at once (each switching it to WAL) all succeed.
#[test]
fn processes_opening_a_new_file_together_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
                .args(["status"])
                .current_dir(dir.path())
                .env("DATABASE_URL", "sqlite://fresh.db")
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start bgmigrate")
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", text(&output));
    }
}

/// ClickHouse fast migrations are applied under a Postgres advisory lock: with a SQLite control store `migrate`
/// refuses them (exit 2) before anything is applied.
#[test]
fn clickhouse_fast_migrations_are_refused_on_a_sqlite_control_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("migrations/clickhouse")).unwrap();
    std::fs::write(
        dir.path().join("migrations/clickhouse/0001_traces.up.sql"),
        "CREATE TABLE IF NOT EXISTS traces (id String) ENGINE = Memory",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
        .arg("migrate")
        .current_dir(dir.path())
        .env("DATABASE_URL", "sqlite://app.db")
        .env("CLICKHOUSE_URL", "http://default@127.0.0.1:8123/default")
        .env("BGMIGRATE_MIGRATIONS_DIR", dir.path().join("migrations"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run bgmigrate");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("applied under a Postgres advisory lock"),
        "{stderr}"
    );
}

/// Named stores from `BGMIGRATE_STORE_<NAME>` or `--store NAME=URL`: a usable one lets a copy into it run under a
/// plain `worker`; a bad URL or a taken name exits 2 naming the variable or the flag.
#[test]
fn named_stores_come_from_the_environment_or_the_flag_and_bad_ones_exit_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("migrations/background")).unwrap();
    let output = bgmigrate(dir.path(), "sqlite://app.db", &["status"]);
    assert!(output.status.success(), "{}", text(&output));
    let sql = |file: &str, statements: &str| {
        let status = Command::new("sqlite3")
            .arg(dir.path().join(file))
            .arg(statements)
            .status();
        status.map(|s| s.success()).unwrap_or(false)
    };
    if !sql(
        "app.db",
        "CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, NULL);",
    ) || !sql(
        "analytics.db",
        "CREATE TABLE t (id integer PRIMARY KEY, v text);",
    ) {
        eprintln!("sqlite3 not installed: the worker part is skipped");
    } else {
        std::fs::write(
            dir.path()
                .join("migrations/background/20240101_0000_copy_t.toml"),
            "kind = \"copy\"\nfrom = { store = \"sqlite\", table = \"t\", key = [\"id\"] }\n\
             to = { store = \"analytics\", table = \"t\" }\n",
        )
        .unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
            .args(["worker", "--exit-when-done"])
            .current_dir(dir.path())
            .env("DATABASE_URL", "sqlite://app.db")
            .env("BGMIGRATE_STORE_ANALYTICS", "sqlite://analytics.db")
            .env("BGMIGRATE_MIGRATIONS_DIR", dir.path().join("migrations"))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
        let output = bgmigrate(dir.path(), "sqlite://app.db", &["status", "--json"]);
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("\"finished\""),
            "{}",
            text(&output)
        );
    }

    let flagged = bgmigrate(
        dir.path(),
        "sqlite://app.db",
        &["status", "--store", "warehouse=mysql://db/x"],
    );
    assert_eq!(flagged.status.code(), Some(2), "{}", text(&flagged));
    assert!(
        text(&flagged).contains("--store warehouse=mysql://db/x"),
        "{}",
        text(&flagged)
    );
    let output = Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
        .arg("status")
        .current_dir(dir.path())
        .env("DATABASE_URL", "sqlite://app.db")
        .env("BGMIGRATE_STORE_SQLITE", "sqlite://other.db")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("BGMIGRATE_STORE_SQLITE"),
        "{}",
        text(&output)
    );
}
