//! Parallel work inside one migration (`parallelism`): key ranges shared by several real `bgmigrate worker`
//! processes under range leases, exactly once, through SIGKILL, SIGSTOP and changes of `parallelism` mid-run.
//! Every test runs against the real Postgres in a database of its own; the backfill adds 1 to a counter, so a row
//! walked twice or skipped shows.

mod common;
mod web_support;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::TestDb;
use serde_json::Value;

const NAME: &str = "20240101_0000_hits";

/// Short leases, quick polling, so takeovers happen within seconds.
const WORKER_FLAGS: &[&str] = &[
    "worker",
    "--lease-ttl",
    "2s",
    "--heartbeat",
    "500ms",
    "--poll",
    "200ms",
    "--exit-when-done",
];

/// `items` with `rows` text-keyed rows (md5 keys: no insertion order), all `hits = 0`.
async fn create_items(pool: &sqlx::PgPool, rows: i64) {
    sqlx::query("CREATE TABLE items (id text PRIMARY KEY, hits int NOT NULL DEFAULT 0)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO items (id) SELECT md5(i::text) FROM generate_series(1, $1) i")
        .bind(rows)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE items").execute(pool).await.unwrap();
}

fn define_backfill(db: &TestDb, parallelism: u32, batch_size: u32, sleep_ms: u32) {
    db.define(
        NAME,
        &format!(
            r#"kind = "backfill"
store = "postgres"
table = "items"
key = ["id"]
set = {{ hits = "hits + 1" }}
[args]
parallelism = {parallelism}
batchSize = {batch_size}
sleepMs = {sleep_ms}
"#
        ),
    );
}

fn spawn_worker(db: &TestDb, id: &str) -> Child {
    let log = db.dir.path().join(format!("{id}.log"));
    let mut args = WORKER_FLAGS.to_vec();
    args.extend(["--worker-id", id]);
    db.command(&args, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .expect("spawn bgmigrate worker")
}

fn log_of(db: &TestDb, id: &str) -> String {
    std::fs::read_to_string(db.dir.path().join(format!("{id}.log"))).unwrap_or_default()
}

/// Waits for every worker to exit 0 within `timeout`.
async fn all_exit(db: &TestDb, workers: &mut [(&str, Child)], timeout: Duration) {
    let started = Instant::now();
    for (id, child) in workers.iter_mut() {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "worker {id} exited {status:?}:\n{}",
                    log_of(db, id)
                );
                break;
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                panic!(
                    "worker {id} did not exit within {timeout:?}:\n{}",
                    log_of(db, id)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `(status, rows_done)` of the migration.
async fn row(pool: &sqlx::PgPool) -> (String, i64) {
    sqlx::query_as("SELECT status, rows_done FROM background_migrations WHERE name = $1")
        .bind(NAME)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `(range_no, done, worker_id)` of every range.
async fn ranges(pool: &sqlx::PgPool) -> Vec<(i32, i32, Option<String>)> {
    sqlx::query_as(
        "SELECT r.range_no, r.done, r.worker_id FROM background_migration_ranges r \
         JOIN background_migrations m ON m.id = r.migration_id WHERE m.name = $1 ORDER BY r.range_no",
    )
    .bind(NAME)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Rows walked other than exactly once.
async fn not_once(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items WHERE hits <> 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The workers that claimed or split off a range, from the events.
async fn range_workers(db: &TestDb) -> Vec<String> {
    let mut workers: Vec<String> = db
        .events(NAME)
        .await
        .into_iter()
        .filter(|(kind, _, _)| kind == "range_claimed" || kind == "range_split")
        .map(|(_, actor, _)| actor)
        .collect();
    workers.sort();
    workers.dedup();
    workers
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three workers on one backfill with `parallelism = 3`: the key space is split into ranges that all three walk at
/// once, each row is updated exactly once, the migration finishes with every range done, and the progress adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_one_backfill_in_key_ranges_exactly_once() {
    let db = TestDb::create("three_workers_share_one_backfill").await;
    let pool = db.pool().await;
    create_items(&pool, 30_000).await;
    define_backfill(&db, 3, 500, 100);
    assert!(db.cli(&["migrate"]).status.success());

    let mut workers: Vec<(&str, Child)> = ["w1", "w2", "w3"]
        .into_iter()
        .map(|id| (id, spawn_worker(&db, id)))
        .collect();
    all_exit(&db, &mut workers, Duration::from_secs(120)).await;

    assert_eq!(row(&pool).await, ("finished".to_owned(), 30_000));
    assert_eq!(
        not_once(&pool).await,
        0,
        "a row was skipped or updated twice"
    );
    let ranges = ranges(&pool).await;
    assert!(ranges.len() >= 3, "{ranges:?}");
    assert!(ranges.iter().all(|(_, done, _)| *done == 1), "{ranges:?}");
    assert_eq!(
        range_workers(&db).await,
        ["w1", "w2", "w3"],
        "every worker walked a range"
    );
    let planned = db.events(NAME).await;
    assert!(
        planned
            .iter()
            .any(|(kind, _, detail)| kind == "ranges_planned" && detail["ranges"] == 3),
        "{planned:?}"
    );

    // Progress per range, for scripts and people.
    let shown = db.cli(&["show", NAME, "--json"]);
    assert!(shown.status.success());
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    let listed = shown["migration"]["ranges"]
        .as_array()
        .expect("ranges in show --json");
    assert_eq!(listed.len(), ranges.len());
    let walked: i64 = listed
        .iter()
        .map(|r| r["rows_done"].as_i64().unwrap())
        .sum();
    assert_eq!(walked, 30_000, "the ranges' rows add up to the migration's");
    assert!(
        listed
            .iter()
            .all(|r| r["done"] == true && r["percent"] == 100.0 && r["held"] == false)
    );
    let status: Value = serde_json::from_slice(&db.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        status[0]["ranges"].as_array().map(Vec::len),
        Some(ranges.len())
    );
    let text = String::from_utf8_lossy(&db.cli(&["show", NAME]).stdout).into_owned();
    assert!(
        text.contains("key ranges (parallelism):") && text.contains("done"),
        "{text}"
    );

    // The API and the detail page's range bar: one segment per range, each done.
    let connected = db.connect().await;
    let server = web_support::serve(web_support::admin_state(&connected)).await;
    let api = web_support::get(&format!("{}/api/migrations/{NAME}", server.base), &[]).await;
    assert_eq!(
        api.json()["ranges"].as_array().map(Vec::len),
        Some(ranges.len()),
        "{}",
        api.body
    );
    let page = web_support::get(&format!("{}/migrations/{NAME}", server.base), &[]).await;
    assert!(page.body.contains("Key ranges"), "{}", page.body);
    assert_eq!(
        page.body.matches("class=\"seg done\"").count(),
        ranges.len(),
        "{}",
        page.body
    );
}

/// A worker SIGKILLed mid-range and another SIGSTOPped mid-range: their ranges are taken over once their leases
/// expire (a worker frozen inside a transaction: once the server ends it), the frozen one writes nothing when it
/// wakes (its lease is fenced), and every row is updated exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_frozen_workers_lose_their_ranges_and_nothing_repeats() {
    let db = TestDb::create("killed_and_frozen_workers").await;
    let pool = db.pool().await;
    create_items(&pool, 30_000).await;
    define_backfill(&db, 3, 300, 150);
    assert!(db.cli(&["migrate"]).status.success());

    let mut killed = spawn_worker(&db, "killed");
    let frozen = spawn_worker(&db, "frozen");
    let survivor = spawn_worker(&db, "survivor");
    wait_for(
        "all three workers hold a range",
        Duration::from_secs(30),
        async || {
            let held = ranges(&pool).await;
            ["killed", "frozen", "survivor"].iter().all(|w| {
                held.iter()
                    .any(|(_, _, worker)| worker.as_deref() == Some(*w))
            })
        },
    )
    .await;
    killed.kill().unwrap();
    killed.wait().unwrap();
    let frozen_pid = frozen.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &frozen_pid])
            .status()
            .unwrap()
            .success()
    );

    // After the 2 s lease TTL, or, when the worker froze inside its batch's transaction (holding the migration row's
    // lock that claims take first), once the server ends that transaction: idle_in_transaction_session_timeout, 60 s.
    wait_for(
        "the survivor took over both ranges",
        Duration::from_secs(100),
        async || {
            let events = db.events(NAME).await;
            ["killed", "frozen"].iter().all(|gone| {
                events.iter().any(|(kind, actor, detail)| {
                    kind == "range_claimed"
                        && actor == "survivor"
                        && detail["previous_worker"] == *gone
                })
            })
        },
    )
    .await;
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &frozen_pid])
            .status()
            .unwrap()
            .success()
    );
    let mut rest = vec![("survivor", survivor), ("frozen", frozen)];
    all_exit(&db, &mut rest, Duration::from_secs(120)).await;

    assert_eq!(row(&pool).await, ("finished".to_owned(), 30_000));
    assert_eq!(
        not_once(&pool).await,
        0,
        "a row was skipped or updated twice"
    );
    assert!(
        log_of(&db, "frozen").contains("lease"),
        "the frozen worker noticed its lease was gone:\n{}",
        log_of(&db, "frozen")
    );
}

/// Work stealing: a worker that finishes its range while another worker still has half of its range left splits
/// that range and takes the second half (a `range_split` event says so), and nothing is walked twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_out_of_ranges_splits_the_largest_and_takes_its_second_half() {
    let db = TestDb::create("a_worker_out_of_ranges_splits").await;
    let pool = db.pool().await;
    create_items(&pool, 20_000).await;
    define_backfill(&db, 2, 200, 60);
    assert!(db.cli(&["migrate"]).status.success());

    let first = spawn_worker(&db, "early");
    // The second worker starts when the first is 3,000 rows into its 10,000-row range: it claims the other range,
    // and the first, done with its own range first, steals from it.
    wait_for(
        "the first range is under way",
        Duration::from_secs(30),
        async || row(&pool).await.1 >= 3_000,
    )
    .await;
    let second = spawn_worker(&db, "late");
    let mut workers = vec![("early", first), ("late", second)];
    all_exit(&db, &mut workers, Duration::from_secs(120)).await;

    assert_eq!(row(&pool).await, ("finished".to_owned(), 20_000));
    assert_eq!(
        not_once(&pool).await,
        0,
        "a row was skipped or updated twice"
    );
    let events = db.events(NAME).await;
    let split = events
        .iter()
        .find(|(kind, _, _)| kind == "range_split")
        .unwrap_or_else(|| panic!("no range was split: {events:?}"));
    assert_eq!(split.1, "early", "{split:?}");
    assert_eq!(
        split.2["range"], 1,
        "the late worker's range was split: {split:?}"
    );
    assert!(ranges(&pool).await.len() >= 3);
}

/// A migration started as one stream splits into key ranges when `parallelism` is raised mid-run, and goes back to
/// one range at a time when it is lowered: no row is lost or repeated through either change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_and_lowering_parallelism_mid_run_neither_loses_nor_repeats_a_row() {
    let db = TestDb::create("raising_and_lowering_parallelism").await;
    let pool = db.pool().await;
    create_items(&pool, 30_000).await;
    define_backfill(&db, 1, 300, 60);
    assert!(db.cli(&["migrate"]).status.success());

    let mut workers: Vec<(&str, Child)> = ["a", "b", "c"]
        .into_iter()
        .map(|id| (id, spawn_worker(&db, id)))
        .collect();
    wait_for(
        "one stream made progress",
        Duration::from_secs(30),
        async || row(&pool).await.1 > 2_000,
    )
    .await;
    assert!(
        ranges(&pool).await.is_empty(),
        "parallelism 1 runs as one stream"
    );
    let raised = db.cli(&["set-args", NAME, r#"{"parallelism": 3}"#]);
    assert!(
        raised.status.success(),
        "{}",
        String::from_utf8_lossy(&raised.stderr)
    );
    wait_for(
        "three workers walk ranges",
        Duration::from_secs(30),
        async || range_workers(&db).await.len() == 3,
    )
    .await;
    let lowered = db.cli(&["set-args", NAME, r#"{"parallelism": 1}"#]);
    assert!(lowered.status.success());
    all_exit(&db, &mut workers, Duration::from_secs(120)).await;

    assert_eq!(row(&pool).await, ("finished".to_owned(), 30_000));
    assert_eq!(
        not_once(&pool).await,
        0,
        "a row was skipped or updated twice"
    );
    let first: Value = sqlx::query_scalar(
        "SELECT r.state FROM background_migration_ranges r JOIN background_migrations m ON m.id = r.migration_id \
         WHERE m.name = $1 AND r.range_no = 0",
    )
    .bind(NAME)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(first["done"], true, "range 0 ran to its end: {first}");
}

/// `parallelism` beyond what a migration can walk in ranges is refused with the arg named, and out-of-range
/// values never reach the control table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallelism_outside_one_to_sixty_four_is_refused_naming_the_arg() {
    let db = TestDb::create("parallelism_refused").await;
    let pool = db.pool().await;
    create_items(&pool, 10).await;
    define_backfill(&db, 1, 300, 0);
    assert!(db.cli(&["migrate"]).status.success());
    let refused = db.cli(&["set-args", NAME, r#"{"parallelism": 0}"#]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("args.parallelism must be an integer from 1 to 64, got 0"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let args: Value = sqlx::query_scalar("SELECT args FROM background_migrations WHERE name = $1")
        .bind(NAME)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(args["parallelism"], 1);
}
