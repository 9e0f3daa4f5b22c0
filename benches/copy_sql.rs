//! Copies into SQL stores, each beside the store's own bulk path measured in the same run on the same rows
//! (500,000 traces-shaped rows of ~60-byte values, text key; `batchSize` 20,000, `sleepMs` 0):
//!
//! 1. SQLite → SQLite (source and control in one file, target in another, as in the demo) versus
//!    `ATTACH` + `INSERT INTO traces SELECT * FROM src.traces` into an empty copy of the target table.
//! 2. Postgres → Postgres (source in one database; target and control in another, so batch and checkpoint commit in
//!    one transaction) versus `psql -c "COPY traces TO STDOUT" | psql -c "COPY traces FROM STDIN"`.
//! 3. Postgres → SQLite and SQLite → Postgres, measured and reported (against the same two references).
//! 4. SQLite → ClickHouse (a `ReplacingMergeTree`; 100,000-row batches, the default into ClickHouse; `created_at`
//!    text parsed into `DateTime`) versus `sqlite3 -csv source.db 'SELECT ...' | curl -X POST -T -
//!    '.../?query=INSERT ... FORMAT CSV'` into an empty twin table, SQLite formatting the timestamp itself.
//!
//! Needs the machine's Postgres (127.0.0.1:5432, user postgres), and for part 4 its ClickHouse (127.0.0.1:8123) and
//! the `sqlite3` and `curl` commands. `BENCH_ROWS` overrides the row count, `BENCH_ONLY=sqlite|postgres|cross|
//! clickhouse` runs one part. Run with `cargo bench --bench copy_sql`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgmigrate::config::{self, Connected, SQLITE_STORE};
use bgmigrate::store::{PgStore, SqlParam, SqlStore, SqliteStore, postgres, sqlite};
use bgmigrate::{Registration, Runner, RunnerConfig, builtin_registry};
use serde_json::json;

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const CH: &str = "http://127.0.0.1:8123";
const BATCH: u64 = 20_000;

/// The ClickHouse twin of [`TABLE`]; `created_at` is a real timestamp there.
const CH_TABLE: &str = "(id String, project_id String, name Nullable(String), created_at DateTime, input String,
    output String, latency Nullable(Float64), is_public UInt8) ENGINE = ReplacingMergeTree ORDER BY id";

const TABLE: &str = "CREATE TABLE traces (id text NOT NULL PRIMARY KEY, project_id text NOT NULL, name text,
    created_at text NOT NULL, input text, output text, latency double precision, is_public integer NOT NULL)";

/// The rows, in SQL both dialects accept once `$1` is the row count and `SERIES` the row source.
const FILL: &str =
    "INSERT INTO traces (id, project_id, name, created_at, input, output, latency, is_public)
    SELECT 'trace-' || n, 'project-' || (n % 3), 'chat-' || (n % 17), '2024-10-24T12:00:00.000Z',
           '{\"messages\": [{\"role\": \"user\", \"content\": \"question ' || n || '\"}]}',
           '{\"role\": \"assistant\", \"content\": \"answer ' || (n * 7 % 1000) || '\"}',
           CASE WHEN n % 5 = 0 THEN NULL ELSE n * 0.25 END, n % 2
    FROM SERIES";

fn psql(db: &str, sql: &str) {
    let status = Command::new("psql")
        .args([
            &format!("{PG}/{db}"),
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .status()
        .expect("psql");
    assert!(status.success(), "psql failed: {sql}");
}

fn create_pg(db: &str) -> String {
    psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
    psql("postgres", &format!("CREATE DATABASE {db}"));
    format!("{PG}/{db}")
}

fn drop_pg(db: &str) {
    psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

async fn exec(store: &dyn SqlStore, sql: &str, params: &[SqlParam]) -> Duration {
    let started = Instant::now();
    let mut tx = store.begin().await.expect("begin");
    tx.execute(sql, params).await.expect(sql);
    tx.commit().await.expect("commit");
    started.elapsed()
}

async fn count(store: &dyn SqlStore) -> i64 {
    let mut tx = store.begin_read().await.expect("begin");
    let n = tx
        .fetch_count("SELECT count(*) FROM traces", &[])
        .await
        .expect("count");
    tx.commit().await.expect("commit");
    n
}

async fn sqlite_store(path: &Path) -> SqliteStore {
    let pool = sqlite::connect_pool(&format!("sqlite://{}", path.display()), 4)
        .await
        .expect("open");
    SqliteStore::new(pool, SqliteStore::id_for_path(path))
}

async fn pg_store(url: &str) -> PgStore {
    let pool = postgres::connect_pool(url, 4).await.expect("connect");
    PgStore::new(pool, PgStore::id_for_url(url))
}

async fn fill(store: &dyn SqlStore, rows: u64) {
    exec(store, TABLE, &[]).await;
    let series = match store.dialect() {
        bgmigrate::store::Dialect::Sqlite => {
            "(WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < $1) SELECT n FROM g) AS s"
        }
        bgmigrate::store::Dialect::Postgres => "generate_series(1, $1::bigint) AS s(n)",
    };
    exec(
        store,
        &FILL.replace("SERIES", series),
        &[SqlParam::Int(rows as i64)],
    )
    .await;
    if store.dialect() == bgmigrate::store::Dialect::Postgres {
        exec(store, "ANALYZE traces", &[]).await;
    }
}

/// Runs one copy of `traces` from store `from` into store `to` (both configured in `connected`) to its end, in
/// batches of `batch` rows.
async fn copy(connected: &Connected, from: &str, to: &str, batch: u64) -> Duration {
    connected.control.ensure_schema().await.expect("schema");
    let name = format!("0001_copy_{from}_to_{to}");
    let registration = Registration {
        name: name.clone(),
        script: "copy".into(),
        params: json!({
            "from": {"store": from, "table": "traces", "key": ["id"]},
            "to": {"store": to, "table": "traces"},
        }),
        args: json!({ "batchSize": batch, "sleepMs": 0 }),
        depends_on: None,
    };
    connected
        .control
        .register(&[registration], &builtin_registry())
        .await
        .expect("register");
    let started = Instant::now();
    let summary = Runner::new(
        connected.control.clone(),
        builtin_registry(),
        connected.stores.clone(),
        RunnerConfig {
            exit_when_done: true,
            poll_interval: Duration::from_millis(50),
            progress_log_interval: Duration::from_secs(3600),
            ..RunnerConfig::default()
        },
    )
    .spawn()
    .join()
    .await
    .expect("runner");
    assert_eq!(summary.finished, [name], "{summary:?}");
    started.elapsed()
}

fn line(what: &str, rows: u64, ours: Duration, reference: Option<(&str, Duration)>) {
    line_of(what, rows, BATCH, ours, reference);
}

fn line_of(what: &str, rows: u64, batch: u64, ours: Duration, reference: Option<(&str, Duration)>) {
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    let mut text = format!(
        "{what}, {rows} rows: bgmigrate {batch}-row batches {:.2} s ({:.0} rows/s)",
        ours.as_secs_f64(),
        rate(ours)
    );
    if let Some((name, reference)) = reference {
        text += &format!(
            "; reference {name} {:.2} s ({:.0} rows/s); speed ratio {:.2}",
            reference.as_secs_f64(),
            rate(reference),
            reference.as_secs_f64() / ours.as_secs_f64()
        );
    }
    println!("{text}");
}

/// `ATTACH` the source file to the target and `INSERT ... SELECT` every row: SQLite's own copy.
async fn sqlite_reference(source: &Path, target: &Path) -> Duration {
    let store = sqlite_store(target).await;
    exec(&store, TABLE, &[]).await;
    let mut conn = store.pool().acquire().await.expect("acquire");
    use sqlx::Executor;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "ATTACH DATABASE '{}' AS src",
        source.display()
    )))
    .await
    .expect("attach");
    let started = Instant::now();
    conn.execute("BEGIN IMMEDIATE; INSERT INTO traces SELECT * FROM src.traces; COMMIT")
        .await
        .expect("insert select");
    started.elapsed()
}

/// `sqlite3 -csv | curl ... FORMAT CSV` into `table` of ClickHouse `database`: the two tools' own bulk paths, SQLite
/// formatting the timestamp and `\N` for NULL.
fn clickhouse_reference(source: &Path, database: &str, table: &str) -> Duration {
    let started = Instant::now();
    let mut out = Command::new("sqlite3")
        // A busy timeout: the pool that filled the file may still be closing (checkpointing) its connections.
        .args(["-csv", "-nullvalue", "\\N", "-cmd", ".timeout 10000"])
        .arg(source)
        .arg(
            "SELECT id, project_id, name, datetime(created_at), input, output, latency, is_public FROM traces",
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("sqlite3");
    let query = format!("INSERT INTO {database}.{table} FORMAT CSV").replace(' ', "%20");
    let status = Command::new("curl")
        // `-T -` streams (both processes work at once); `--data-binary @-` would read everything first.
        .args(["-sS", "--fail", "-X", "POST", "-T", "-"])
        .arg(format!("{CH}/?query={query}"))
        .stdin(out.stdout.take().expect("pipe"))
        .status()
        .expect("curl");
    assert!(status.success() && out.wait().expect("wait").success());
    started.elapsed()
}

/// SQLite → ClickHouse beside `sqlite3 -csv | curl`, in a ClickHouse database of its own (dropped after).
async fn sqlite_to_clickhouse(source_file: &Path, rows: u64) {
    let database = format!("bgm_bench_sqlch_{}", std::process::id());
    let admin = bgmigrate::clickhouse::ClickHouse::from_url(&format!("{CH}/default")).expect("url");
    admin
        .execute(&format!("DROP DATABASE IF EXISTS {database}"))
        .await
        .expect("drop");
    admin
        .execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("create");
    for table in ["traces", "traces_ref"] {
        admin
            .execute(&format!("CREATE TABLE {database}.{table} {CH_TABLE}"))
            .await
            .expect("create table");
    }
    let reference = clickhouse_reference(source_file, &database, "traces_ref");
    let connected = config::connect(&format!("sqlite://{}", source_file.display()))
        .await
        .expect("control")
        .with_clickhouse(Some(&format!("{CH}/{database}")))
        .expect("clickhouse url");
    let batch = bgmigrate::kinds::copy::CLICKHOUSE_BATCH_SIZE;
    let ours = copy(&connected, SQLITE_STORE, "clickhouse", batch).await;
    for table in ["traces", "traces_ref"] {
        let copied = admin
            .query_value(&format!("SELECT count() FROM {database}.{table} FINAL"))
            .await
            .expect("count");
        assert_eq!(copied, rows.to_string(), "{table}");
    }
    line_of(
        "sqlite -> clickhouse",
        rows,
        batch,
        ours,
        Some(("sqlite3 -csv | curl INSERT ... FORMAT CSV", reference)),
    );
    admin
        .execute(&format!("DROP DATABASE IF EXISTS {database}"))
        .await
        .expect("drop");
}

/// `psql COPY TO STDOUT | psql COPY FROM STDIN` between two databases: Postgres's own copy.
fn postgres_reference(source: &str, target: &str) -> Duration {
    psql(target, TABLE);
    let started = Instant::now();
    let mut out = Command::new("psql")
        .args([
            &format!("{PG}/{source}"),
            "-q",
            "-c",
            "COPY traces TO STDOUT",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("psql out");
    let status = Command::new("psql")
        .args([
            &format!("{PG}/{target}"),
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "COPY traces FROM STDIN",
        ])
        .stdin(out.stdout.take().expect("pipe"))
        .status()
        .expect("psql in");
    assert!(status.success() && out.wait().expect("wait").success());
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only == part;
    let dir = tempfile::tempdir().expect("temp dir");
    let pid = std::process::id();
    let (pg_source, pg_target, pg_reference) = (
        format!("bgm_bench_sqlsrc_{pid}"),
        format!("bgm_bench_sqldst_{pid}"),
        format!("bgm_bench_sqlref_{pid}"),
    );
    let source_file = dir.path().join("source.db");
    fill(&sqlite_store(&source_file).await, rows).await;
    let mut sqlite_ref = None;
    if run("sqlite") || run("cross") {
        sqlite_ref = Some(sqlite_reference(&source_file, &dir.path().join("reference.db")).await);
    }
    if run("sqlite") {
        let connected = config::connect(&format!("sqlite://{}", source_file.display()))
            .await
            .expect("control");
        let target = sqlite_store(&dir.path().join("target.db")).await;
        exec(&target, TABLE, &[]).await;
        let connected = Connected {
            stores: connected
                .stores
                .clone()
                .with_sql("analytics", Arc::new(target.clone())),
            ..connected
        };
        let ours = copy(&connected, SQLITE_STORE, "analytics", BATCH).await;
        assert_eq!(count(&target).await, rows as i64);
        line(
            "sqlite -> sqlite",
            rows,
            ours,
            Some(("ATTACH + INSERT ... SELECT", sqlite_ref.expect("measured"))),
        );
    }
    let mut pg_ref = None;
    if run("postgres") || run("cross") {
        let source = pg_store(&create_pg(&pg_source)).await;
        fill(&source, rows).await;
        create_pg(&pg_reference);
        pg_ref = Some(postgres_reference(&pg_source, &pg_reference));
    }
    if run("postgres") {
        let target_url = create_pg(&pg_target);
        let connected = config::connect(&target_url).await.expect("control");
        let target = connected.stores.sql("postgres").expect("store");
        exec(target.as_ref(), TABLE, &[]).await;
        let source = pg_store(&format!("{PG}/{pg_source}")).await;
        let connected = Connected {
            stores: connected.stores.clone().with_postgres("source", source),
            ..connected
        };
        let ours = copy(&connected, "source", "postgres", BATCH).await;
        assert_eq!(count(target.as_ref()).await, rows as i64);
        line(
            "postgres -> postgres",
            rows,
            ours,
            Some((
                "psql COPY TO STDOUT | psql COPY FROM STDIN",
                pg_ref.expect("measured"),
            )),
        );
        drop_pg(&pg_target);
    }
    if run("cross") {
        // Postgres -> SQLite: the control table in the Postgres source.
        let connected = config::connect(&format!("{PG}/{pg_source}"))
            .await
            .expect("control");
        let target = sqlite_store(&dir.path().join("from_pg.db")).await;
        exec(&target, TABLE, &[]).await;
        let connected = Connected {
            stores: connected
                .stores
                .clone()
                .with_sql("analytics", Arc::new(target.clone())),
            ..connected
        };
        let ours = copy(&connected, "postgres", "analytics", BATCH).await;
        assert_eq!(count(&target).await, rows as i64);
        line(
            "postgres -> sqlite",
            rows,
            ours,
            Some((
                "sqlite ATTACH + INSERT ... SELECT",
                sqlite_ref.expect("measured"),
            )),
        );
        // SQLite -> Postgres: the control table in the SQLite source.
        let target_url = create_pg(&pg_target);
        let target = pg_store(&target_url).await;
        exec(&target, TABLE, &[]).await;
        let control_file = dir.path().join("source_for_pg.db");
        std::fs::copy(&source_file, &control_file).expect("copy source file");
        let connected = config::connect(&format!("sqlite://{}", control_file.display()))
            .await
            .expect("control");
        let connected = Connected {
            stores: connected
                .stores
                .clone()
                .with_postgres("warehouse", target.clone()),
            ..connected
        };
        let ours = copy(&connected, SQLITE_STORE, "warehouse", BATCH).await;
        assert_eq!(count(&target).await, rows as i64);
        line(
            "sqlite -> postgres",
            rows,
            ours,
            Some((
                "psql COPY TO STDOUT | psql COPY FROM STDIN",
                pg_ref.expect("measured"),
            )),
        );
        drop_pg(&pg_target);
    }
    if run("clickhouse") {
        sqlite_to_clickhouse(&source_file, rows).await;
    }
    for db in [&pg_source, &pg_reference] {
        if run("postgres") || run("cross") {
            drop_pg(db);
        }
    }
}
