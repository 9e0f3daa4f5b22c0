//! `bgmigrate demo` as a newcomer runs it: the real binary in an empty directory, no configuration at all.

mod clickhouse_common;
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bgmigrate::Status;
use bgmigrate::config;
use bgmigrate::store::{SqlParam, SqlStore, SqliteStore, sqlite};
use clickhouse_common::TestClickHouse;
use common::{TestDb, text};

/// `bgmigrate demo --exit-when-done --rows 20000` in `dir` with no configuration, the web UI on `bind`.
fn demo_command(dir: &Path, bind: &str) -> Command {
    demo_of(dir, bind, 20_000)
}

/// `bgmigrate demo --exit-when-done --rows ROWS` in `dir` with no configuration, the web UI on `bind`.
fn demo_of(dir: &Path, bind: &str, rows: u64) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bgmigrate"));
    command
        .args(["demo", "--exit-when-done", "--rows"])
        .arg(rows.to_string())
        .args(["--bind", bind])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("CLICKHOUSE_URL")
        .env_remove("BGMIGRATE_STORE_ANALYTICS")
        .env_remove("BGMIGRATE_MIGRATIONS_DIR")
        .env_remove("BGMIGRATE_ADMIN_TOKEN")
        .env_remove("ENABLE_BACKGROUND_MIGRATIONS")
        .env("RUST_LOG", "info,sqlx=warn");
    command
}

/// Port 0: the system picks a free one, so tests never collide.
const FREE_PORT: &str = "127.0.0.1:0";

fn demo(dir: &Path) -> Output {
    demo_command(dir, FREE_PORT)
        .output()
        .expect("run bgmigrate demo")
}

/// A plain HTTP/1.0 GET (the response ends when the server closes the connection).
fn http_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to the demo's web UI");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}

async fn scalar(connected: &config::Connected, sql: &str) -> i64 {
    let store = connected
        .stores
        .sql(config::SQLITE_STORE)
        .expect("sqlite store");
    let mut tx = store.begin().await.expect("begin");
    tx.fetch_count(sql, &[]).await.expect(sql)
}

/// Every trace, every column as text, in id order.
async fn traces_of(store: &dyn SqlStore) -> Vec<Vec<Option<String>>> {
    let mut tx = store.begin().await.expect("begin");
    let rows = tx
        .fetch_all_text(
            "SELECT id, project_id, name, created_at, created_day, input, output, metadata FROM traces ORDER BY id",
            &[],
        )
        .await
        .expect("read traces");
    tx.commit().await.expect("commit");
    rows
}

/// With no configuration the demo creates bgmigrate-demo/ with a SQLite file of sample data, runs every demo
/// migration to the end, exits 0, and leaves the data migrated exactly: the backfilled tables, and the traces
/// copied into bgmigrate-demo/analytics.db.
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
    assert_eq!(records.len(), 4, "{records:?}");
    assert!(
        records
            .iter()
            .any(|r| r.name == "20241024_1730_copy_traces_to_analytics"),
        "{records:?}"
    );
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

    let analytics_file = dir.path().join("bgmigrate-demo/analytics.db");
    let pool = sqlite::connect_pool(&format!("sqlite://{}", analytics_file.display()), 1)
        .await
        .unwrap();
    let analytics = SqliteStore::new(pool, SqliteStore::id_for_path(&analytics_file));
    let app = connected.stores.sql(config::SQLITE_STORE).unwrap();
    let traces = traces_of(app.as_ref()).await;
    assert_eq!(traces.len(), 5000);
    assert!(
        traces_of(&analytics).await == traces,
        "analytics.db holds exactly the traces"
    );
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

/// While the demo runs, its web UI answers at the address it printed: the status API and the list page.
#[test]
fn the_demos_web_ui_answers_while_the_migrations_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = demo_command(dir.path(), FREE_PORT)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bgmigrate demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("demo: web UI at http://")
                .map(|rest| rest.trim_end_matches('/').to_owned())
        })
        .expect("the demo prints the web UI's URL");
    let status = http_get(&address, "/api/status");
    assert!(
        status.starts_with("HTTP/1.0 200") || status.starts_with("HTTP/1.1 200"),
        "{status}"
    );
    assert!(
        status.contains("20241024_1216_add_generations_cost_backfill"),
        "{status}"
    );
    let page = http_get(&address, "/");
    assert!(
        page.contains("20241024_1300_traces_created_day_backfill"),
        "{page}"
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().unwrap();
    assert!(
        exit.success(),
        "exit {exit:?}; stdout after the URL:\n{}",
        rest.join("\n")
    );
}

/// A busy web port is refused with exit 2 before any sample data is generated.
#[tokio::test]
async fn a_busy_web_port_is_refused_before_any_data_is_generated() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let output = demo_command(dir.path(), &address).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!("cannot listen on {address}"))
    );
    let file = dir.path().join("bgmigrate-demo/app.db");
    let connected = config::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let store = connected.stores.sql(config::SQLITE_STORE).unwrap();
    assert!(
        store.columns("traces").await.unwrap().is_empty(),
        "no data was generated"
    );
}

const COPY: &str = "20241024_1730_copy_traces_to_analytics";

/// The variables of the worker command the demo printed: `(NAME, VALUE)` pairs.
fn printed_worker_variables(stdout: &str) -> Vec<(String, String)> {
    let line = stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("demo: a worker of your own runs these migrations too: ")
        })
        .unwrap_or_else(|| panic!("the demo prints a worker command:\n{stdout}"));
    let command = line
        .strip_suffix(" bgmigrate worker")
        .expect("the command ends with bgmigrate worker");
    command
        .split(' ')
        .map(|pair| {
            let (name, value) = pair.split_once('=').expect("NAME=VALUE");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// The demo prints the command of a worker of one's own, and a plain `bgmigrate worker` given those variables runs
/// the demo's copy into the analytics store (here: the copy retried from the start after its target was emptied).
#[tokio::test]
async fn a_plain_worker_with_the_printed_variables_runs_the_demos_copy() {
    let dir = tempfile::tempdir().unwrap();
    let output = demo_of(dir.path(), FREE_PORT, 400).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let variables = printed_worker_variables(&String::from_utf8_lossy(&output.stdout));
    assert!(
        variables.contains(&(
            "BGMIGRATE_STORE_ANALYTICS".into(),
            "sqlite://bgmigrate-demo/analytics.db".into()
        )),
        "{variables:?}"
    );

    let file = dir.path().join("bgmigrate-demo/app.db");
    let connected = config::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let analytics_file = dir.path().join("bgmigrate-demo/analytics.db");
    let pool = sqlite::connect_pool(&format!("sqlite://{}", analytics_file.display()), 1)
        .await
        .unwrap();
    let analytics = SqliteStore::new(pool, SqliteStore::id_for_path(&analytics_file));
    let mut tx = analytics.begin().await.unwrap();
    tx.execute("DELETE FROM traces", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let app = connected.stores.sql(config::SQLITE_STORE).unwrap();
    let mut tx = app.begin().await.unwrap();
    let failed = tx
        .execute(
            "UPDATE background_migrations SET status = 'failed', failed_reason = 'emptied by the test' WHERE name = $1",
            &[SqlParam::Text(COPY.into())],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(failed, 1);

    for args in [
        &["retry", COPY, "--from-start"][..],
        &["worker", "--exit-when-done"][..],
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bgmigrate"));
        command
            .args(args)
            .current_dir(dir.path())
            .env_remove("CLICKHOUSE_URL")
            .env_remove("BGMIGRATE_STORE_ANALYTICS")
            .env("RUST_LOG", "info,sqlx=warn");
        for (name, value) in &variables {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", text(&output));
    }
    assert_eq!(
        connected.control.get(COPY).await.unwrap().status,
        Status::Finished
    );
    let traces = traces_of(app.as_ref()).await;
    assert_eq!(traces.len(), 100);
    assert!(
        traces_of(&analytics).await == traces,
        "the worker copied every trace again"
    );
}

/// With CLICKHOUSE_URL set and the sample data in Postgres (DATABASE_URL), the demo creates its traces table in ClickHouse and
/// copies every trace into it, the backfilled day included.
#[tokio::test]
async fn with_clickhouse_url_the_demo_copies_the_traces_into_clickhouse() {
    let db = TestDb::create("demo_clickhouse").await;
    let clickhouse = TestClickHouse::create("demo_clickhouse").await;
    let dir = tempfile::tempdir().unwrap();
    let output = demo_of(dir.path(), FREE_PORT, 400)
        .env("DATABASE_URL", &db.url)
        .env("CLICKHOUSE_URL", &clickhouse.url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let variables = printed_worker_variables(&stdout);
    assert!(
        variables.contains(&("CLICKHOUSE_URL".into(), clickhouse.url.clone())),
        "the worker command carries CLICKHOUSE_URL (it has no password): {variables:?}"
    );

    let connected = db.connect().await;
    let records = connected.control.list().await.unwrap();
    let copy = records
        .iter()
        .find(|r| r.name == "20241024_1730_copy_traces_to_clickhouse")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(copy.status, Status::Finished, "{copy:?}");
    assert!(
        !records.iter().any(|r| r.name == COPY),
        "no copy into analytics.db"
    );
    let count = |sql: &str| {
        let client = clickhouse.client.clone();
        let sql = sql.to_owned();
        async move { client.query_value(&sql).await.expect(&sql) }
    };
    assert_eq!(count("SELECT count() FROM traces FINAL").await, "100");
    assert_eq!(
        count("SELECT count() FROM traces FINAL WHERE created_day = substring(created_at, 1, 10) AND input LIKE '{%'").await,
        "100"
    );
    let pool = db.pool().await;
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM traces ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let copied = clickhouse
        .client
        .query_rows("SELECT id FROM traces FINAL ORDER BY id")
        .await
        .unwrap();
    let copied: Vec<String> = copied.into_iter().map(|row| row[0].clone()).collect();
    assert_eq!(copied, ids);
}

/// With CLICKHOUSE_URL set and no DATABASE_URL (the newcomer's default: the sample data in the demo's SQLite file),
/// the demo creates its traces table in ClickHouse and copies every trace into it from SQLite, the backfilled day
/// included; the worker command it prints carries CLICKHOUSE_URL.
#[tokio::test]
async fn with_clickhouse_url_and_the_default_sqlite_data_the_demo_copies_the_traces_into_clickhouse()
 {
    let clickhouse = TestClickHouse::create("demo_sqlite_clickhouse").await;
    let dir = tempfile::tempdir().unwrap();
    let output = demo_of(dir.path(), FREE_PORT, 400)
        .env("CLICKHOUSE_URL", &clickhouse.url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let variables = printed_worker_variables(&stdout);
    assert!(
        variables.contains(&("CLICKHOUSE_URL".into(), clickhouse.url.clone())),
        "the worker command carries CLICKHOUSE_URL (it has no password): {variables:?}"
    );

    let file = dir.path().join("bgmigrate-demo/app.db");
    let connected = config::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let records = connected.control.list().await.unwrap();
    let copy = records
        .iter()
        .find(|r| r.name == "20241024_1730_copy_traces_to_clickhouse")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(copy.status, Status::Finished, "{copy:?}");
    assert!(
        !records.iter().any(|r| r.name == COPY),
        "no copy into analytics.db"
    );
    let client = bgmigrate::clickhouse::ClickHouse::from_url(&clickhouse.url).unwrap();
    assert_eq!(
        client
            .query_value(
                "SELECT count() FROM traces FINAL WHERE created_day = substring(created_at, 1, 10) \
                 AND input LIKE '{%'"
            )
            .await
            .unwrap(),
        "100"
    );
    let store = connected.stores.sql(config::SQLITE_STORE).unwrap();
    let mut tx = store.begin_read().await.unwrap();
    let ids = tx
        .fetch_all_text("SELECT id FROM traces ORDER BY id", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<String> = ids.into_iter().filter_map(|row| row[0].clone()).collect();
    let copied = client
        .query_rows("SELECT id FROM traces FINAL ORDER BY id")
        .await
        .unwrap();
    let copied: Vec<String> = copied.into_iter().map(|row| row[0].clone()).collect();
    assert_eq!(copied.len(), 100);
    assert_eq!(copied, ids);
}
