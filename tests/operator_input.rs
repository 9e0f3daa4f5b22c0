//! Bad input and configuration, refused with exit code 2 and nothing changed: malformed definitions and URLs,
//! hostile CLI input and secrets, `ENABLE_BACKGROUND_MIGRATIONS=false`, and fast migrations applied once.

mod common;
mod operator_support;

use std::time::Duration;

use bgmigrate::Status;
use common::{TestDb, text};
use operator_support::*;
use serde_json::{Value, json};

/// Bad definitions and bad control-store URLs are refused with exit code 2 and a message naming the file and what
/// to fix; a directory with one bad definition registers none of them and applies no fast migration.
#[tokio::test]
async fn malformed_definitions_and_urls_are_refused_with_exit_code_two() {
    let db = TestDb::create("malformed_definitions").await;
    items(&db, 10).await;
    db.define("0001_good", &backfill("batchSize = 10"));
    db.fast_migration(
        "0001_widgets.sql",
        "CREATE TABLE widgets (id int PRIMARY KEY);",
    );

    let cases = [
        (
            "kind = \"backfill\"\nstore = \"postgres\nkey = [",
            "not valid TOML",
        ),
        (
            "store = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\nset = { total = \"a\" }\n",
            "missing kind",
        ),
        (
            "kind = \"backfill\"\nstore = \"postgres\"\ntabel = \"items\"\nkey = [\"id\"]\nset = { total = \"a\" }\n",
            "unknown field `tabel`",
        ),
        (
            "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\nset = { total = \"a\" }\n[args]\nbatchSize = -1\n",
            "args.batchSize",
        ),
    ];
    for (toml, expected) in cases {
        db.define("0002_bad", toml);
        for command in ["migrate", "worker"] {
            let args: &[&str] = if command == "worker" {
                &["worker", "--exit-when-done"]
            } else {
                &["migrate"]
            };
            let out = cli(&db, args).await;
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} {expected}: {}",
                text(&out)
            );
            let message = stderr(&out);
            assert!(message.contains("0002_bad.toml"), "{command}: {message}");
            assert!(message.contains(expected), "{command}: {message}");
        }
    }
    let status = cli(&db, &["status", "--json"]).await;
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let listed: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(listed, json!([]), "nothing may be registered");
    let pool = db.pool().await;
    let widgets: Option<String> = sqlx::query_scalar("SELECT to_regclass('widgets')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(widgets, None, "no fast migration may be applied");

    let mysql = cli_env(&db, &["status"], &[("DATABASE_URL", "mysql://x")]).await;
    assert_eq!(mysql.status.code(), Some(2), "{}", text(&mysql));
    assert!(stderr(&mysql).contains("mysql://x"), "{}", text(&mysql));
    assert!(stderr(&mysql).contains("postgres://"), "{}", text(&mysql));

    let mut without = db.command(&["status"], &[]);
    without.env_remove("DATABASE_URL");
    let missing = tokio::process::Command::from(without)
        .output()
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        stderr(&missing).contains("DATABASE_URL"),
        "{}",
        text(&missing)
    );
}

/// With `ENABLE_BACKGROUND_MIGRATIONS=false` a worker runs nothing, exits cleanly when asked to, and warns naming
/// what stays pending; a value that is not a boolean is refused (exit 2) rather than guessed.
#[tokio::test]
async fn disabled_background_migrations_run_nothing_and_name_the_pending_ones() {
    let db = TestDb::create("disabled_worker").await;
    items(&db, 100).await;
    let name = "0001_totals";
    db.define(name, &backfill("batchSize = 10"));

    let out = cli_env(
        &db,
        &["worker", "--exit-when-done"],
        &[("ENABLE_BACKGROUND_MIGRATIONS", "false")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let message = stderr(&out);
    assert!(message.contains("disabled"), "{message}");
    assert!(message.contains(name), "{message}");
    let record = row(&db, name).await;
    assert_eq!(record.status, Status::Pending);
    assert_eq!(record.attempts, 0);
    assert_eq!(hits(&db).await, (100, 0, 0));

    let maybe = cli_env(
        &db,
        &["worker", "--exit-when-done"],
        &[("ENABLE_BACKGROUND_MIGRATIONS", "maybe")],
    )
    .await;
    assert_eq!(maybe.status.code(), Some(2), "{}", text(&maybe));
    assert!(
        stderr(&maybe).contains("ENABLE_BACKGROUND_MIGRATIONS=\"maybe\""),
        "{}",
        text(&maybe)
    );
    assert!(stderr(&maybe).contains("true or false"), "{}", text(&maybe));
    assert_eq!(row(&db, name).await.status, Status::Pending);
    assert_eq!(hits(&db).await, (100, 0, 0));
}

/// Fast migrations apply once (a second `migrate` applies nothing), and an applied file that was edited afterwards
/// is refused with a message saying so, instead of being silently re-run or ignored.
#[tokio::test]
async fn fast_migrations_apply_once_and_an_edited_applied_file_is_refused() {
    let db = TestDb::create("fast_once").await;
    db.fast_migration(
        "0001_widgets.sql",
        "CREATE TABLE widgets (id int PRIMARY KEY);\nINSERT INTO widgets VALUES (1);",
    );
    for _ in 0..2 {
        let out = cli(&db, &["migrate"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let pool = db.pool().await;
    let (applied, widgets): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM _sqlx_migrations), (SELECT count(*) FROM widgets)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((applied, widgets), (1, 1), "applied exactly once");

    db.fast_migration(
        "0001_widgets.sql",
        "CREATE TABLE widgets (id int PRIMARY KEY, name text);\nINSERT INTO widgets VALUES (1);",
    );
    let edited = cli(&db, &["migrate"]).await;
    assert_eq!(edited.status.code(), Some(2), "{}", text(&edited));
    assert!(
        stderr(&edited).contains("an applied migration file was edited"),
        "{}",
        text(&edited)
    );
    let name_column: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'widgets' AND column_name = 'name'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(name_column, 0, "the edited file was not run");
}

/// Hostile or mistaken CLI input is refused with exit 2 and a message naming what to fix: a NUL character in
/// args, control characters in a name, a migrations directory that does not exist, a short admin token; a
/// database that refuses connections is reported as such at once, each sentence once; secret-looking args never
/// reach the terminal.
#[tokio::test]
async fn the_cli_refuses_hostile_input_and_keeps_secrets_out_of_its_output() {
    const NAME: &str = "20240101_0001_hostile";
    let db = TestDb::create("cli_hostile").await;
    items(&db, 10).await;
    db.define(NAME, &backfill("batchSize = 10"));
    let migrate = cli(&db, &["migrate"]).await;
    assert!(migrate.status.success(), "{}", text(&migrate));

    let nul = cli(&db, &["set-args", NAME, r#"{"note": "a\u0000b"}"#]).await;
    assert_eq!(nul.status.code(), Some(2), "{}", text(&nul));
    assert!(
        stderr(&nul).contains("args.note contains the NUL character"),
        "{}",
        stderr(&nul)
    );
    let name = cli(&db, &["pause", "bad\u{1}name"]).await;
    assert_eq!(name.status.code(), Some(2), "{}", text(&name));
    assert!(
        stderr(&name).contains("control characters"),
        "{}",
        stderr(&name)
    );
    assert_eq!(row(&db, NAME).await.args, json!({"batchSize": 10}));

    let missing = cli_env(
        &db,
        &["migrate"],
        &[("BGMIGRATE_MIGRATIONS_DIR", "/nonexistent/migrations")],
    )
    .await;
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(stderr(&missing).contains("/nonexistent/migrations does not exist"));
    let short = cli_env(
        &db,
        &["web", "--bind", "127.0.0.1:0"],
        &[("BGMIGRATE_ADMIN_TOKEN", "x")],
    )
    .await;
    assert_eq!(short.status.code(), Some(2), "{}", text(&short));
    assert!(
        stderr(&short).contains("BGMIGRATE_ADMIN_TOKEN has 1 characters"),
        "{}",
        stderr(&short)
    );

    let started = std::time::Instant::now();
    let refused = cli_env(
        &db,
        &["status"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing")],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let message = stderr(&refused);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(message.contains("refused"), "{message}");
    assert!(!message.contains("pool timed out"), "{message}");
    assert_eq!(
        message.matches("error communicating with database").count(),
        1,
        "{message}"
    );

    let set = cli(&db, &["set-args", NAME, r#"{"apiToken": "hunter2"}"#]).await;
    assert!(set.status.success(), "{}", text(&set));
    for args in [
        &["set-args", NAME, r#"{"sleepMs": 1}"#][..],
        &["show", NAME][..],
        &["show", NAME, "--json"][..],
        &["status", "--json"][..],
    ] {
        let out = cli(&db, args).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            !text(&out).contains("hunter2"),
            "{args:?} printed the secret: {}",
            text(&out)
        );
    }
    assert!(
        stdout(&set).contains("\"apiToken\":\"********\""),
        "{}",
        stdout(&set)
    );
}
