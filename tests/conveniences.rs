//! The conveniences users of migration tools expect: `bgmigrate add` writes templates that work once filled in,
//! `bgmigrate completions` prints a completion script, and `--log-format json` makes the logs JSON lines.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use bgmigrate::store::PgStore;
use bgmigrate::{Status, builtin_registry, config};
use common::{TestDb, text};

/// The CLI with no database configured, in `dir`.
fn bgmigrate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("BGMIGRATE_MIGRATIONS_DIR")
        .env_remove("BGMIGRATE_LOG_FORMAT")
        .env_remove("CLICKHOUSE_URL")
        .output()
        .expect("run bgmigrate")
}

/// Runs `bgmigrate add ARGS` in `dir` and returns the path it printed.
fn add(dir: &Path, args: &[&str]) -> std::path::PathBuf {
    let mut all = vec!["add"];
    all.extend_from_slice(args);
    let output = bgmigrate(dir, &all);
    assert!(output.status.success(), "{}", text(&output));
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    dir.join(printed)
}

/// Each background template is a definition as written (valid TOML, its kind, valid default args), and once its
/// TODO_ placeholders are filled in, its kind builds a migration from it with the stores it names.
#[tokio::test]
async fn each_background_template_parses_and_its_kind_accepts_it_once_filled_in() {
    let dir = tempfile::tempdir().unwrap();
    // The stores the templates name; building a migration opens no connection (the pool is lazy).
    let url = format!("{}/postgres", common::admin_url());
    let pool = sqlx::PgPool::connect_lazy(&url).unwrap();
    let clickhouse =
        bgmigrate::clickhouse::ClickHouse::from_url("http://127.0.0.1:8123/default").unwrap();
    let stores = bgmigrate::store::Stores::new()
        .with_postgres("postgres", PgStore::new(pool, PgStore::id_for_url(&url)))
        .with_clickhouse("clickhouse", clickhouse);
    for (kind, placeholders) in [
        (
            "backfill",
            vec![
                ("TODO_table", "items"),
                ("TODO_column", "total"),
                ("TODO_expression", "a + b"),
            ],
        ),
        (
            "copy",
            vec![
                ("TODO_source_table", "items"),
                ("TODO_target_table", "items"),
            ],
        ),
        (
            "clickhouse_rewrite",
            vec![("TODO_source_table", "old"), ("TODO_target_table", "new")],
        ),
    ] {
        let path = add(dir.path(), &[&format!("new {kind}"), "--kind", kind]);
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            name.len() > 14
                && name[..13].chars().all(|c| c.is_ascii_digit() || c == '_')
                && name.ends_with(&format!("_new_{kind}")),
            "YYYYMMDD_HHMM_description: {name}"
        );
        assert_eq!(
            path.parent().unwrap(),
            dir.path().join("migrations/background")
        );
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.starts_with(&format!("# new {kind}\n")), "{written}");
        let as_written =
            bgmigrate::definition::parse(&name, &written).expect("the template parses as written");
        assert_eq!(as_written.script, kind);

        let filled = placeholders
            .iter()
            .fold(written, |text, (from, to)| text.replace(from, to));
        assert!(
            !filled
                .lines()
                .any(|line| !line.starts_with('#') && line.contains("TODO_")),
            "{filled}"
        );
        let definition = bgmigrate::definition::parse(&name, &filled).unwrap();
        if let Err(err) = builtin_registry().build(&definition.script, &definition.params, &stores)
        {
            panic!("{kind}: the filled-in template is refused: {err}\n{filled}");
        }
    }
}

/// A backfill written by `bgmigrate add`, filled in, runs to the end with `bgmigrate worker` on a real SQLite file.
#[tokio::test]
async fn a_filled_in_backfill_template_runs_to_the_end_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = add(dir.path(), &["fill total", "--kind", "backfill"]);
    let filled = std::fs::read_to_string(&path)
        .unwrap()
        .replace("store = \"postgres\"", "store = \"sqlite\"")
        .replace("TODO_table", "items")
        .replace("TODO_column", "total")
        .replace("TODO_expression", "a + b");
    std::fs::write(&path, filled).unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let connected = config::connect(&url).await.unwrap();
    let store = connected.stores.sql("sqlite").unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.execute_script(
        "CREATE TABLE items (id integer PRIMARY KEY, a integer, b integer, total integer);
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 500)
         INSERT INTO items (id, a, b) SELECT n, n, 2 * n FROM g",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let worker = Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
        .args(["worker", "--exit-when-done"])
        .current_dir(dir.path())
        .env("DATABASE_URL", &url)
        .env_remove("BGMIGRATE_MIGRATIONS_DIR")
        .env_remove("CLICKHOUSE_URL")
        .output()
        .unwrap();
    assert!(worker.status.success(), "{}", text(&worker));
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        connected.control.get(&name).await.unwrap().status,
        Status::Finished
    );
    let mut tx = store.begin().await.unwrap();
    let wrong = tx
        .fetch_count("SELECT count(*) FROM items WHERE total IS NOT a + b", &[])
        .await
        .unwrap();
    assert_eq!(wrong, 0);
}

/// `add --fast postgres` writes the next `NNNN_description.sql`, which `bgmigrate migrate` applies on a real
/// Postgres; `add --fast clickhouse` the next `NNNN_description.up.sql`, which the ClickHouse loader accepts.
#[tokio::test]
async fn fast_templates_get_the_next_version_and_apply() {
    let db = TestDb::create("add_fast").await;
    let migrations = db.migrations();
    std::fs::write(
        migrations.join("postgres/0007_earlier.sql"),
        "CREATE TABLE earlier (id int);",
    )
    .unwrap();
    let parent = migrations.parent().unwrap();
    let postgres = add(parent, &["add release column", "--fast", "postgres"]);
    assert_eq!(
        postgres,
        migrations.join("postgres/0008_add_release_column.sql")
    );
    let migrate = db.cli(&["migrate"]);
    assert!(migrate.status.success(), "{}", text(&migrate));
    let pool = db.pool().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, 2, "both fast migrations are applied");

    let clickhouse = add(parent, &["traces release", "--fast", "clickhouse"]);
    assert_eq!(
        clickhouse,
        migrations.join("clickhouse/0001_traces_release.up.sql")
    );
    let loaded = bgmigrate::fast::clickhouse::load(&migrations.join("clickhouse")).expect("loads");
    assert_eq!(
        (loaded[0].version, loaded[0].name.as_str()),
        (1, "traces_release")
    );
    assert!(
        loaded[0].requires_finished.is_empty(),
        "the commented example is not a directive"
    );
}

/// A description that cannot be a file name is refused with exit 2 naming the character; an existing file is
/// never overwritten (exit 2 naming it, its content kept).
#[test]
fn a_bad_description_is_refused_and_an_existing_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let bad = bgmigrate(dir.path(), &["add", "../escape", "--kind", "backfill"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("'.' is not allowed"),
        "{}",
        text(&bad)
    );
    assert!(
        !dir.path().join("migrations").exists(),
        "nothing was written"
    );

    // The file `add "twice" --kind copy` writes now (or, should the minute turn, a moment later) exists already.
    let background = dir.path().join("migrations/background");
    std::fs::create_dir_all(&background).unwrap();
    let now = chrono::Utc::now();
    let taken: Vec<_> = [now, now + chrono::Duration::minutes(1)]
        .iter()
        .map(|at| background.join(format!("{}_twice.toml", at.format("%Y%m%d_%H%M"))))
        .collect();
    for path in &taken {
        std::fs::write(path, "# edited by hand\n").unwrap();
    }
    let again = bgmigrate(dir.path(), &["add", "twice", "--kind", "copy"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("_twice.toml already exists and is never overwritten"),
        "{stderr}"
    );
    for path in &taken {
        assert_eq!(std::fs::read_to_string(path).unwrap(), "# edited by hand\n");
    }
    assert_eq!(
        std::fs::read_dir(&background).unwrap().count(),
        2,
        "no other file was written"
    );
}

/// `bgmigrate completions bash|zsh|fish` prints a script that names the subcommands.
#[test]
fn completions_name_the_subcommands_in_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let output = bgmigrate(dir.path(), &["completions", shell]);
        assert!(output.status.success(), "{shell}: {}", text(&output));
        let script = String::from_utf8_lossy(&output.stdout);
        for subcommand in ["worker", "set-args", "finalize", "completions"] {
            assert!(
                script.contains(subcommand),
                "{shell} script lacks {subcommand}"
            );
        }
    }
}

/// A bad `--log-format` or `BGMIGRATE_LOG_FORMAT` exits 2 naming the flag, the variable and the allowed values.
#[test]
fn a_bad_log_format_names_the_flag_the_variable_and_the_allowed_values() {
    let dir = tempfile::tempdir().unwrap();
    let by_flag = bgmigrate(dir.path(), &["--log-format", "xml", "status"]);
    let by_var = Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
        .args(["status"])
        .env("BGMIGRATE_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    for output in [by_flag, by_var] {
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--log-format")
                && stderr.contains("BGMIGRATE_LOG_FORMAT")
                && stderr.contains("text and json"),
            "{stderr}"
        );
    }
}

/// A worker run with `--log-format json` writes only JSON lines on stderr, and the line of a claimed migration
/// carries the migration's name as a field of its own.
#[tokio::test]
async fn a_worker_with_json_logs_prints_json_lines_with_the_migration_field() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let connected = config::connect(&url).await.unwrap();
    let store = connected.stores.sql("sqlite").unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.execute_script("CREATE TABLE items (id integer PRIMARY KEY, a integer, total integer); INSERT INTO items (id, a) VALUES (1, 1), (2, 2)")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let background = dir.path().join("migrations/background");
    std::fs::create_dir_all(&background).unwrap();
    std::fs::write(
        background.join("20240101_0001_totals.toml"),
        "kind = \"backfill\"\nstore = \"sqlite\"\ntable = \"items\"\nkey = [\"id\"]\nset = { total = \"a\" }\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
        .args(["--log-format", "json", "worker", "--exit-when-done"])
        .current_dir(dir.path())
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "info,sqlx=warn")
        .env_remove("BGMIGRATE_MIGRATIONS_DIR")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(!lines.is_empty(), "{stderr}");
    let claimed = lines
        .iter()
        .find(|line| line["message"] == "claimed")
        .unwrap_or_else(|| panic!("no claimed line:\n{stderr}"));
    assert_eq!(claimed["migration"], "20240101_0001_totals");
    assert_eq!(claimed["level"], "INFO");
}
