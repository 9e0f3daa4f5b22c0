//! Deployment stops through the real binary: a fast migration with `-- bgmigrate: requires_finished = [...]` holds
//! itself and the files after it back while a named background migration is unfinished; `bgmigrate finalize`
//! finishes it in the foreground (waiting for, or taking over from, a worker); then the same `migrate` applies.

mod clickhouse_common;
mod common;
mod web_support;

use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bgmigrate::Status;
use clickhouse_common::TestClickHouse;
use common::{TestDb, text};

const LEASE_FLAGS: [&str; 6] = [
    "--lease-ttl",
    "2s",
    "--heartbeat",
    "500ms",
    "--poll",
    "200ms",
];

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, hits int NOT NULL DEFAULT 0, payload text);\n\
                     INSERT INTO items (id, payload) SELECT g, 'x' FROM generate_series(1, 3000) g;\n";

const DROP_PAYLOAD: &str = "-- the backfill must have run before the column goes\n\
                            -- bgmigrate: requires_finished = [\"0001_hits\"]\n\
                            ALTER TABLE items DROP COLUMN payload;\n";

/// `items` (through fast migration 0001), a backfill `0001_hits` over it, the stop 0002 and a plain 0003.
fn release_with_a_stop(db: &TestDb, batch_size: u32, sleep_ms: u32) {
    db.fast_migration("0001_items.sql", ITEMS);
    db.fast_migration("0002_drop_payload.sql", DROP_PAYLOAD);
    db.fast_migration("0003_after.sql", "CREATE TABLE after_stop (id int);");
    db.define(
        "0001_hits",
        &format!(
            "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\n\
             set = {{ hits = \"hits + 1\" }}\n[args]\nbatchSize = {batch_size}\nsleepMs = {sleep_ms}\n"
        ),
    );
}

async fn applied_versions(db: &TestDb) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&db.pool().await)
        .await
        .unwrap_or_default()
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&db.pool().await)
        .await
        .expect(sql)
}

fn finalize_args<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["finalize"];
    args.extend(names);
    args.extend(LEASE_FLAGS);
    args
}

/// The stop refuses with exit 1, naming the file, the migration with its status and progress, and the finalize
/// command; the files before it apply and the migration is registered; after `finalize` the same `migrate` applies
/// the rest.
#[tokio::test]
async fn a_stop_holds_back_its_file_until_finalize_finishes_what_it_requires() {
    let db = TestDb::create("stop_until_finalize").await;
    release_with_a_stop(&db, 500, 0);

    for command in [&["migrate"][..], &["web", "--bind", "127.0.0.1:0"][..]] {
        let out = db.cli(command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {}", text(&out));
        for words in [
            "deployment stop",
            "0002_drop_payload.sql",
            "0001_hits (pending, 0 rows done)",
            "`bgmigrate finalize 0001_hits`",
        ] {
            assert!(
                stderr.contains(words),
                "{command:?}: no {words:?} in {stderr}"
            );
        }
    }
    assert_eq!(
        applied_versions(&db).await,
        vec![1],
        "only the file before the stop applies"
    );
    assert_eq!(
        db.status_of("0001_hits").await,
        Status::Pending,
        "registered despite the stop"
    );

    let out = db.cli(&finalize_args(&["0001_hits"]));
    assert!(out.status.success(), "finalize: {}", text(&out));
    assert_eq!(db.status_of("0001_hits").await, Status::Finished);
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM items WHERE hits <> 1").await,
        0
    );
    let out = db.cli(&finalize_args(&["0001_hits"]));
    assert!(out.status.success(), "finalize again: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already finished"));

    let out = db.cli(&["migrate"]);
    assert!(
        out.status.success(),
        "migrate after finalize: {}",
        text(&out)
    );
    assert_eq!(applied_versions(&db).await, vec![1, 2, 3]);
    let out = db.cli(&["migrate"]);
    assert!(out.status.success(), "a second migrate: {}", text(&out));
}

/// While the migration is running elsewhere, the message shows its status and progress.
#[tokio::test]
async fn the_refusal_shows_progress_of_a_partly_done_migration() {
    let db = TestDb::create("stop_progress").await;
    release_with_a_stop(&db, 1000, 0);
    assert_eq!(db.cli(&["migrate"]).status.code(), Some(1));
    db.pool()
        .await
        .execute_sql(
            "UPDATE background_migrations SET status = 'paused', rows_done = 1500, rows_total = 3000 \
             WHERE name = '0001_hits'",
        )
        .await;
    let out = db.cli(&["migrate"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0001_hits (paused, 50.0%, 1500 of 3000 rows)"),
        "{stderr}"
    );
    let out = db.cli(&finalize_args(&["0001_hits"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bgmigrate resume 0001_hits"),
        "{}",
        text(&out)
    );
}

trait ExecuteSql {
    async fn execute_sql(&self, sql: &str);
}

impl ExecuteSql for sqlx::PgPool {
    async fn execute_sql(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(self)
            .await
            .expect(sql);
    }
}

/// A malformed header exits 2 naming the file and the line, before anything is applied or registered.
#[tokio::test]
async fn a_malformed_header_exits_2_naming_the_file_and_line() {
    let db = TestDb::create("stop_bad_header").await;
    release_with_a_stop(&db, 500, 0);
    db.fast_migration(
        "0002_drop_payload.sql",
        "-- fine\n-- bgmigrate: requires_finished = 0001_hits\nALTER TABLE items DROP COLUMN payload;\n",
    );
    let out = db.cli(&["migrate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0002_drop_payload.sql, line 2"), "{stderr}");
    assert!(
        stderr.contains("requires_finished = [\"NAME\", ...]"),
        "{stderr}"
    );
    assert!(applied_versions(&db).await.is_empty(), "nothing applied");
}

/// A name that no background migration has exits 2 naming it, before anything is applied.
#[tokio::test]
async fn an_unknown_required_name_exits_2_naming_it() {
    let db = TestDb::create("stop_unknown").await;
    release_with_a_stop(&db, 500, 0);
    db.fast_migration(
        "0002_drop_payload.sql",
        "-- bgmigrate: requires_finished = [\"0001_hits\", \"0009_typo\"]\nSELECT 1;\n",
    );
    let out = db.cli(&["migrate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"0009_typo\""), "{stderr}");
    assert!(stderr.contains("0002_drop_payload.sql"), "{stderr}");
    assert!(applied_versions(&db).await.is_empty(), "nothing applied");

    let out = db.cli(&finalize_args(&["0009_typo"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// A named migration that cannot start because an earlier one waits on an operator ends `finalize` with exit 1,
/// naming what it waits on, instead of waiting forever.
#[tokio::test]
async fn finalize_names_the_paused_migration_that_keeps_its_migration_from_starting() {
    let db = TestDb::create("finalize_stuck").await;
    release_with_a_stop(&db, 500, 0);
    db.define(
        "0002_more_hits",
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\n\
         set = { hits = \"hits + 1\" }\n",
    );
    assert_eq!(db.cli(&["migrate"]).status.code(), Some(1));
    let out = db.cli(&["pause", "0001_hits"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = db.cli(&finalize_args(&["0002_more_hits"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0002_more_hits cannot start: it runs after 0001_hits (paused)"),
        "{stderr}"
    );
    assert_eq!(db.status_of("0002_more_hits").await, Status::Pending);
}

/// `finalize` waits while a worker holds the lease (showing it), and takes the migration over when that worker
/// dies, finishing it exactly once per row.
#[tokio::test]
async fn finalize_waits_for_a_workers_lease_and_takes_over_when_it_dies() {
    let db = TestDb::create("finalize_takeover").await;
    release_with_a_stop(&db, 100, 100);
    assert_eq!(db.cli(&["migrate"]).status.code(), Some(1));

    let worker_log = db.dir.path().join("worker.log");
    let mut worker = spawn(&db, &worker_log, &["worker", "--worker-id", "first"]);
    let connected = db.connect().await;
    common::wait_until("the worker runs it", Duration::from_secs(20), || async {
        let record = connected.control.get("0001_hits").await.unwrap();
        record.status == Status::Running && record.rows_done > 0
    })
    .await;

    let finalize_log = db.dir.path().join("finalize.log");
    let mut args = finalize_args(&["0001_hits"]);
    args.extend(["--worker-id", "finalizer"]);
    let mut finalize = spawn(&db, &finalize_log, &args);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(finalize.try_wait().unwrap().is_none(), "finalize waits");
    let record = connected.control.get("0001_hits").await.unwrap();
    assert_eq!(
        record.worker_id.as_deref(),
        Some("first"),
        "the worker keeps its lease"
    );
    assert!(
        std::fs::read_to_string(&finalize_log)
            .unwrap()
            .contains("run by worker first"),
        "finalize says whom it waits for"
    );

    worker.kill().expect("SIGKILL the worker");
    let _ = worker.wait();
    let status = exit_of(&mut finalize, &finalize_log, Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "finalize: {status:?}\n{}",
        log_of(&finalize_log)
    );
    let record = connected.control.get("0001_hits").await.unwrap();
    assert_eq!(record.status, Status::Finished);
    assert_eq!(record.worker_id, None, "finalize released the lease");
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM items WHERE hits <> 1").await,
        0
    );
    let events = db.events("0001_hits").await;
    assert!(
        events.iter().any(|(_, actor, _)| actor == "finalizer"),
        "the finalizer ran batches: {events:?}"
    );

    assert!(db.cli(&["migrate"]).status.success());
    assert_eq!(applied_versions(&db).await, vec![1, 2, 3]);
}

/// A ClickHouse fast migration with the header holds back the ClickHouse files from it on, and applies after
/// `finalize`.
#[tokio::test]
async fn a_clickhouse_stop_holds_back_clickhouse_files_until_finalize() {
    let db = TestDb::create("ch_stop").await;
    let ch = TestClickHouse::create("ch_stop").await;
    release_with_a_stop(&db, 1000, 0);
    std::fs::remove_file(db.migrations().join("postgres/0002_drop_payload.sql")).unwrap();
    let dir = db.migrations().join("clickhouse");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("0001_a.up.sql"),
        "CREATE TABLE IF NOT EXISTS a (id UInt64) ENGINE = MergeTree ORDER BY id;",
    )
    .unwrap();
    std::fs::write(
        dir.join("0002_b.up.sql"),
        "-- bgmigrate: requires_finished = [\"0001_hits\"]\n\
         CREATE TABLE IF NOT EXISTS b (id UInt64) ENGINE = MergeTree ORDER BY id;",
    )
    .unwrap();
    std::fs::write(
        dir.join("0003_c.up.sql"),
        "CREATE TABLE IF NOT EXISTS c (id UInt64) ENGINE = MergeTree ORDER BY id;",
    )
    .unwrap();
    let env = [("CLICKHOUSE_URL", ch.url.as_str())];

    let out = db.cli_with_env(&["migrate"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("clickhouse fast migration"), "{stderr}");
    assert!(stderr.contains("0002_b.up.sql"), "{stderr}");
    assert!(stderr.contains("bgmigrate finalize 0001_hits"), "{stderr}");
    assert_eq!(
        applied_versions(&db).await,
        vec![1, 3],
        "Postgres files have no stop"
    );
    let versions = "SELECT toString(groupArray(version)) FROM (SELECT version FROM schema_migrations ORDER BY version)";
    assert_eq!(ch.value(versions).await, "[1]");

    let out = db.cli_with_env(&finalize_args(&["0001_hits"]), &env);
    assert!(out.status.success(), "{}", text(&out));
    let out = db.cli_with_env(&["migrate"], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ch.value(versions).await, "[1,2,3]");

    std::fs::write(
        dir.join("0004_d.up.sql"),
        "-- ok\n--   bgmigrate: requires_finished = [1]\nSELECT 1",
    )
    .unwrap();
    let out = db.cli_with_env(&["migrate"], &env);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0004_d.up.sql: line 2"), "{stderr}");
}

fn spawn(db: &TestDb, log: &Path, args: &[&str]) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    db.command(args, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn bgmigrate")
}

async fn exit_of(child: &mut Child, log: &Path, timeout: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("did not exit within {timeout:?}; its log:\n{}", log_of(log));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_of(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The API and the list page name the fast migration that waits and the background migrations it needs, until
/// they are finished.
#[tokio::test]
async fn the_api_and_the_list_page_show_which_fast_migration_waits_on_what() {
    let db = TestDb::create("stop_web").await;
    release_with_a_stop(&db, 1000, 0);
    assert_eq!(db.cli(&["migrate"]).status.code(), Some(1));
    let connected = db.connect().await;
    let server =
        web_support::serve(web_support::admin_state(&connected).migrations_dir(db.migrations()))
            .await;
    let stops = web_support::get(&format!("{}/api/deployment-stops", server.base), &[])
        .await
        .json();
    assert_eq!(stops["problem"], serde_json::Value::Null);
    assert_eq!(stops["waiting"][0]["store"], "postgres");
    assert_eq!(
        stops["waiting"][0]["file"],
        "postgres/0002_drop_payload.sql"
    );
    assert_eq!(stops["waiting"][0]["waiting_on"][0]["name"], "0001_hits");
    assert_eq!(stops["waiting"][0]["waiting_on"][0]["status"], "pending");
    let page = web_support::get(&format!("{}/", server.base), &[]).await;
    for words in [
        "Deployment stop",
        "postgres/0002_drop_payload.sql",
        "bgmigrate finalize 0001_hits",
    ] {
        assert!(page.body.contains(words), "no {words:?} on the list page");
    }
    let openapi = web_support::get(&format!("{}/api/openapi.json", server.base), &[])
        .await
        .json();
    assert!(openapi["paths"].get("/api/deployment-stops").is_some());

    assert!(db.cli(&finalize_args(&["0001_hits"])).status.success());
    let stops = web_support::get(&format!("{}/api/deployment-stops", server.base), &[])
        .await
        .json();
    assert_eq!(stops["waiting"], serde_json::json!([]));
    let page = web_support::get(&format!("{}/", server.base), &[]).await;
    assert!(!page.body.contains("Deployment stop"));
}
