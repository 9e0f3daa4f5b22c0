//! `order = "physical"` backfills against a real Postgres: keys listed once with their pages, each listed row
//! updated exactly once while the application moves rows between pages and inserts new ones; in ranges across two
//! workers, and in one walk split mid-run; resumed after a SIGKILL; a lost list or a SQLite store refused with what
//! to do.

mod common;

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bgmigrate::Status;
use common::TestDb;

const NAME: &str = "0001_heap_order";

/// Short leases and polls for worker processes.
const FAST: [(&str, &str); 3] = [
    ("BGMIGRATE_LEASE_TTL", "2s"),
    ("BGMIGRATE_HEARTBEAT", "500ms"),
    ("BGMIGRATE_POLL", "200ms"),
];

async fn scalar(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect(sql)
}

/// `items`: `rows` md5-keyed rows (key order is not page order), `hits` 0.
async fn create_items(pool: &sqlx::PgPool, rows: i64) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE items (id text PRIMARY KEY, a int NOT NULL, b int NOT NULL, total int,
                             hits int NOT NULL DEFAULT 0, pad text NOT NULL DEFAULT '');
         INSERT INTO items (id, a, b) SELECT md5(g::text), g, g % 7 FROM generate_series(1, {rows}) g;
         ANALYZE items;"
    )))
    .execute(pool)
    .await
    .unwrap();
}

/// A heap-order backfill of `items`: `hits + 1` shows a row updated twice.
fn define(db: &TestDb, args: &str) {
    define_setting(db, "total = \"a + b\", hits = \"hits + 1\"", args);
}

/// A heap-order backfill of `items` that sets `set` (the body of its TOML table).
fn define_setting(db: &TestDb, set: &str, args: &str) {
    db.define(
        NAME,
        &format!(
            "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\norder = \"physical\"\n\
             set = {{ {set} }}\n[args]\n{args}"
        ),
    );
}

/// Runs a heap-order backfill of `items` that sets `set` with one worker until it stops.
async fn run_setting(db: &TestDb, set: &str, args: &str) {
    define_setting(db, set, args);
    common::run_registered(&connect_registered(db).await, "w1").await;
}

/// The heap-order backfill of `items` with `args`, registered (not run): its connection.
async fn registered(db: &TestDb, args: &str) -> bgmigrate::config::Connected {
    define(db, args);
    connect_registered(db).await
}

/// Connects to `db` and registers its migrations directory.
async fn connect_registered(db: &TestDb) -> bgmigrate::config::Connected {
    let connected = db.connect().await;
    common::register_dir(&connected, &db.migrations(), &bgmigrate::builtin_registry()).await;
    connected
}

/// Writes `state` as the migration's checkpoint, as a worker of some earlier moment left it.
async fn set_state(pool: &sqlx::PgPool, state: serde_json::Value) {
    sqlx::query("UPDATE background_migrations SET state = $2 WHERE name = $1")
        .bind(NAME)
        .bind(sqlx::types::Json(state))
        .execute(pool)
        .await
        .unwrap();
}

/// Key lists left in the database.
async fn lists_left(pool: &sqlx::PgPool) -> i64 {
    scalar(
        pool,
        "SELECT count(*) FROM pg_class WHERE relname LIKE 'bgmigrate\\_keys\\_%' AND relkind = 'r'",
    )
    .await
}

/// The migration's checkpoint.
async fn state(pool: &sqlx::PgPool) -> serde_json::Value {
    sqlx::query_scalar::<_, sqlx::types::Json<serde_json::Value>>(
        "SELECT state FROM background_migrations WHERE name = $1",
    )
    .bind(NAME)
    .fetch_one(pool)
    .await
    .unwrap()
    .0
}

/// While the backfill runs, the application grows random rows (so they move to other pages, ahead of the walk and
/// behind it) and inserts new ones. Every row listed is updated exactly once, however it moved; rows inserted after
/// the listing are not; the list is dropped at the end.
#[tokio::test]
async fn every_listed_row_is_updated_once_while_the_application_moves_and_inserts_rows() {
    let db = TestDb::create("heap_moves").await;
    let pool = db.pool().await;
    create_items(&pool, 20_000).await;
    // Free space in the second half only: rows the application grows in the first half move forward, past the
    // sweep (listed twice unless closed), and rows there move back behind it (missed unless closed).
    for sql in [
        "DELETE FROM items WHERE a > 10000 AND a % 2 = 0",
        "VACUUM items",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let rows = 15_000;
    define(&db, "batchSize = 100\nsleepMs = 20");

    let stop = Arc::new(AtomicBool::new(false));
    let (moved, inserted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let application = {
        let (pool, stop, moved, inserted) =
            (pool.clone(), stop.clone(), moved.clone(), inserted.clone());
        tokio::spawn(async move {
            let mut n: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let grown = sqlx::query(
                    "UPDATE items SET pad = pad || repeat('x', 200) WHERE id = md5(((($1 * 7919) % 20000) + 1)::text)",
                )
                .bind(n)
                .execute(&pool)
                .await
                .unwrap();
                moved.fetch_add(grown.rows_affected(), Ordering::Relaxed);
                if n % 5 == 0 {
                    sqlx::query("INSERT INTO items (id, a, b) VALUES ('new-' || $1, 1, 1)")
                        .bind(n)
                        .execute(&pool)
                        .await
                        .unwrap();
                    inserted.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    common::run_to_end(&db.connect().await, &db.migrations()).await;
    stop.store(true, Ordering::Relaxed);
    application.await.unwrap();

    assert_eq!(db.status_of(NAME).await, Status::Finished);
    assert!(
        moved.load(Ordering::Relaxed) > 100,
        "the application moved rows during the walk"
    );
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM items WHERE id NOT LIKE 'new-%' AND (hits <> 1 OR total IS DISTINCT FROM a + b)"
        )
        .await,
        0,
        "every row present before the listing is updated exactly once"
    );
    let listed = state(&pool).await;
    let after_listing = scalar(&pool, "SELECT count(*) FROM items").await - rows;
    assert_eq!(
        listed["listed"].as_i64().unwrap(),
        rows + scalar(
            &pool,
            "SELECT count(*) FROM items WHERE id LIKE 'new-%' AND hits = 1"
        )
        .await,
        "the rows listed are the rows updated: {listed}"
    );
    assert!(
        after_listing > 0
            && scalar(
                &pool,
                "SELECT count(*) FROM items WHERE id LIKE 'new-%' AND hits = 0"
            )
            .await
                > 0,
        "rows inserted after the listing are not updated ({} inserted)",
        inserted.load(Ordering::Relaxed)
    );
    assert_eq!(listed["walked"], listed["listed"]);
    assert_eq!(
        scalar(&pool, "SELECT rows_done FROM background_migrations").await,
        listed["listed"].as_i64().unwrap(),
        "progress counts each listed key once"
    );
    assert_eq!(
        lists_left(&pool).await,
        0,
        "the last batch dropped the list"
    );
}

/// `scores`: 12,000 rows keyed by `(tenant int, id uuid)`, and the heap-order backfill of those whose `v % 3 <> 0`
/// with `args`.
async fn scores(db: &TestDb, pool: &sqlx::PgPool, args: &str) {
    sqlx::raw_sql(
        "CREATE TABLE scores (tenant int NOT NULL, id uuid NOT NULL, v int NOT NULL, hits int NOT NULL DEFAULT 0,
                              PRIMARY KEY (tenant, id));
         INSERT INTO scores (tenant, id, v)
         SELECT g % 13, md5(g::text)::uuid, g FROM generate_series(1, 12000) g;
         ANALYZE scores;",
    )
    .execute(pool)
    .await
    .unwrap();
    db.define(
        NAME,
        &format!(
            "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"scores\"\nkey = [\"tenant\", \"id\"]\n\
             order = \"physical\"\nset = {{ hits = \"hits + 1\" }}\nwhere = \"v % 3 <> 0\"\n[args]\n{args}"
        ),
    );
}

/// Rows of `scores` not updated exactly once if they match the filter, or updated although they do not.
const SCORES_WRONG: &str =
    "SELECT count(*) FROM scores WHERE hits <> (CASE WHEN v % 3 <> 0 THEN 1 ELSE 0 END)";

/// Two workers, `parallelism = 2`, a composite key and a `where` filter: each range lists and walks its own keys;
/// together they update each matching row once and no other. A range's list holds half of each table page's
/// rows, so its walk looks its rows up by key rather than scanning their pages.
#[tokio::test]
async fn two_workers_list_and_walk_their_own_ranges_exactly_once() {
    let db = TestDb::create("heap_ranges").await;
    let pool = db.pool().await;
    scores(&db, &pool, "parallelism = 2\nbatchSize = 300\nsleepMs = 20").await;
    assert!(db.cli_with_env(&["migrate"], &FAST).status.success());
    db.run_workers(&["w1", "w2"], &FAST);

    assert_eq!(db.status_of(NAME).await, Status::Finished);
    assert_eq!(scalar(&pool, SCORES_WRONG).await, 0);
    let connected = db.connect().await;
    let ranges = connected.control.ranges(NAME).await.unwrap();
    assert!(
        ranges.len() >= 2 && ranges.iter().all(|r| r.done),
        "{ranges:?}"
    );
    assert!(
        ranges.iter().all(|r| r.state.get("in_place").is_none()),
        "{ranges:?}"
    );
    // Ranges walked at once take their turns two batches apart: two trail entries per later turn.
    assert!(
        ranges
            .iter()
            .all(|r| r.state["trail"].as_array().map(Vec::len) == Some(4)),
        "{ranges:?}"
    );
    assert_eq!(lists_left(&pool).await, 0);
}

/// One worker walking the whole table finds the rows on their pages; the rows the filter leaves alone come back
/// from that statement and are looked up by their composite key (`int`, `uuid`), filtered again, and left alone.
#[tokio::test]
async fn a_whole_table_walk_with_a_composite_key_and_a_filter_updates_each_matching_row_once() {
    let db = TestDb::create("heap_composite").await;
    let pool = db.pool().await;
    scores(&db, &pool, "batchSize = 1000").await;
    common::run_to_end(&db.connect().await, &db.migrations()).await;

    assert_eq!(db.status_of(NAME).await, Status::Finished);
    assert_eq!(scalar(&pool, SCORES_WRONG).await, 0);
    let state = state(&pool).await;
    assert_eq!(state["in_place"], true, "{state}");
    assert_eq!(state["walked"], 12_000, "{state}");
}

fn spawn_worker(db: &TestDb, id: &str) -> Child {
    db.command(&["worker", "--worker-id", id, "--exit-when-done"], &FAST)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a worker")
}

/// `rows` items and a heap-order backfill with `args`, walked by worker `w1` until 1,000 rows are done; returns
/// the database, a pool, the worker and the name of its key list.
async fn walking(test: &str, rows: i64, args: &str) -> (TestDb, sqlx::PgPool, Child, String) {
    let db = TestDb::create(test).await;
    let pool = db.pool().await;
    create_items(&pool, rows).await;
    define(&db, args);
    assert!(db.cli_with_env(&["migrate"], &FAST).status.success());
    let worker = spawn_worker(&db, "w1");
    common::wait_until("the walk is under way", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move { state(&pool).await["walked"].as_u64().unwrap_or(0) >= 1_000 }
    })
    .await;
    let list = state(&pool).await["list"].as_str().unwrap().to_owned();
    (db, pool, worker, list)
}

/// A worker SIGKILLed in the middle of the walk: the next one goes on from the checkpoint in the same list, and
/// no row is updated twice.
#[tokio::test]
async fn a_killed_worker_is_followed_in_the_same_list_without_repeats() {
    let (db, pool, mut first, list) =
        walking("heap_kill", 8_000, "batchSize = 100\nsleepMs = 30").await;
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = spawn_worker(&db, "w2");
    assert!(second.wait().unwrap().success());
    assert_eq!(db.status_of(NAME).await, Status::Finished);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM items WHERE hits <> 1").await,
        0
    );
    let last = state(&pool).await;
    assert_eq!(last["list"], list.as_str(), "the same list: {last}");
    assert_eq!(lists_left(&pool).await, 0);
}

/// `parallelism` raised while one worker walks the list: the walk's pages left are cut in two, a second worker
/// walks the second run in the same list, each listed row is updated once, and the list — walked by both ranges —
/// is dropped once the migration ends.
#[tokio::test]
async fn a_walk_split_mid_run_shares_its_list_and_the_end_drops_it() {
    let (db, pool, first, list) = walking(
        "heap_split_walk",
        12_000,
        "parallelism = 1\nbatchSize = 200\nsleepMs = 40",
    )
    .await;
    assert!(
        db.cli(&["set-args", NAME, r#"{"parallelism": 2}"#])
            .status
            .success()
    );
    let mut second = spawn_worker(&db, "w2");
    let mut first = first;
    assert!(first.wait().unwrap().success());
    assert!(second.wait().unwrap().success());

    assert_eq!(db.status_of(NAME).await, Status::Finished);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM items WHERE hits <> 1").await,
        0,
        "a row was skipped or updated twice"
    );
    let connected = db.connect().await;
    let ranges = connected.control.ranges(NAME).await.unwrap();
    assert!(ranges.len() >= 2, "{ranges:?}");
    assert!(
        ranges
            .iter()
            .all(|r| r.done && r.state["list"] == list.as_str()),
        "every range walked the one list: {ranges:?}"
    );
    assert!(
        ranges.iter().any(|r| r.state["shared"] == true),
        "{ranges:?}"
    );
    // The walk begun one batch apart went on two batches apart once `parallelism` was 2 (its trail redrawn).
    assert!(
        ranges
            .iter()
            .all(|r| r.state["trail"].as_array().map(Vec::len) == Some(4)),
        "{ranges:?}"
    );
    let walkers: std::collections::BTreeSet<_> =
        ranges.iter().filter_map(|r| r.worker_id.clone()).collect();
    assert_eq!(walkers.len(), 2, "both workers walked: {ranges:?}");
    assert_eq!(lists_left(&pool).await, 0);
}

/// A checkpoint whose list is gone cannot say which rows are left: the migration fails saying so and what to do,
/// having changed nothing; `retry --from-start` lists again and finishes.
#[tokio::test]
async fn a_lost_list_fails_saying_what_to_do_and_from_start_lists_again() {
    let db = TestDb::create("heap_lost").await;
    let pool = db.pool().await;
    create_items(&pool, 1_000).await;
    let connected = registered(&db, "batchSize = 100").await;
    sqlx::query(
        "UPDATE background_migrations SET state = '{\"cursor\": null, \"list\": \"bgmigrate_keys_00000000abcd\", \
         \"listed\": 1000, \"pages\": 10, \"page\": 3, \"walked\": 300}' WHERE name = $1",
    )
    .bind(NAME)
    .execute(&pool)
    .await
    .unwrap();
    common::run_registered(&connected, "w1").await;
    let record = connected.control.get(NAME).await.unwrap();
    assert_eq!(record.status, Status::Failed);
    let reason = record.failed_reason.unwrap_or_default();
    assert!(
        reason.contains(
            "the key list bgmigrate_keys_00000000abcd of this backfill is gone (1000 keys listed, 300 rows updated)"
        ) && reason.contains("retry --from-start"),
        "{reason}"
    );
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM items WHERE hits <> 0").await,
        0
    );

    let retried = db.cli(&["retry", NAME, "--from-start"]);
    assert!(retried.status.success(), "{}", common::text(&retried));
    common::run_registered(&connected, "w1").await;
    assert_eq!(db.status_of(NAME).await, Status::Finished);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM items WHERE hits <> 1").await,
        0
    );
}

/// SQLite stores tables in rowid order: a heap-order backfill there is refused before any row changes, naming the
/// order to use.
#[tokio::test]
async fn a_heap_order_backfill_on_sqlite_is_refused_naming_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let pool = bgmigrate::store::sqlite::connect_pool(&format!("sqlite://{}", file.display()), 2)
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, a int, total int); INSERT INTO items VALUES (1, 1, NULL);")
        .execute(&pool)
        .await
        .unwrap();
    let store = bgmigrate::store::SqliteStore::new(
        pool.clone(),
        bgmigrate::store::SqliteStore::id_for_path(&file),
    );
    let stores = bgmigrate::store::Stores::new().with_sqlite("app", store);
    let backfill = bgmigrate::kinds::backfill::Backfill::build(
        &serde_json::json!({"store": "app", "table": "items", "key": ["id"], "set": {"total": "a"}, "order": "physical"}),
        &stores,
    )
    .unwrap();
    let err = backfill.validate().await.unwrap_err().to_string();
    assert!(
        err.contains("order = \"physical\" is for Postgres tables")
            && err.contains("use order = \"key\""),
        "{err}"
    );
    let total: Option<i64> = sqlx::query_scalar("SELECT total FROM items")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, None);
}

/// Closing the list, made deterministic: a list left by a sweep that missed most keys (rows moved behind it) and
/// listed one twice, on the first page and the last (a row moved ahead of it: two windows would update it). The
/// close lists the missing keys and drops the second entry, so each row is updated exactly once.
#[tokio::test]
async fn closing_the_list_adds_the_keys_the_sweep_missed_and_drops_the_ones_it_listed_twice() {
    let db = TestDb::create("heap_close").await;
    let pool = db.pool().await;
    // The sweep "began" before the rows were written: all of them may have moved during it.
    let horizon = scalar(
        &pool,
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 % 4294967296",
    )
    .await;
    create_items(&pool, 3_000).await;
    let connected = registered(&db, "batchSize = 200").await;
    let list = "bgmigrate_keys_0000000c105e";
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {list} AS SELECT 0::int4 AS bgm_page, id AS bgm_k0 FROM items WITH NO DATA;
         INSERT INTO {list} SELECT (ctid::text::point)[0]::int4, id FROM items ORDER BY ctid LIMIT 500;
         INSERT INTO {list} SELECT 0, max(id) FROM items;
         INSERT INTO {list} SELECT (pg_relation_size('items') / 8192 - 1)::int4, max(id) FROM items;"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let pages = scalar(&pool, "SELECT (pg_relation_size('items') / 8192)::int8").await;
    set_state(
        &pool,
        serde_json::json!({"cursor": null, "list": list, "pages": pages, "sweep": pages, "horizon": horizon}),
    )
    .await;
    common::run_registered(&connected, "w1").await;

    assert_eq!(db.status_of(NAME).await, Status::Finished);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM items WHERE hits <> 1").await,
        0,
        "the keys missed are listed, the key listed twice once"
    );
    assert_eq!(state(&pool).await["listed"], 3_000);
    assert_eq!(lists_left(&pool).await, 0);
}

/// A walk in flight when bgmigrate was upgraded goes on as the earlier version walked it: its list was indexed on
/// the table page each key was listed on (`bgm_page`), and its checkpoint counts table pages, not the list's. Here
/// half the table was walked under the earlier version (those rows already show `hits = 1`); the rest is walked now,
/// each row once, and the list is dropped.
#[tokio::test]
async fn a_walk_closed_by_an_earlier_version_goes_on_by_table_page() {
    let db = TestDb::create("heap_earlier_walk").await;
    let pool = db.pool().await;
    create_items(&pool, 3_000).await;
    let connected = registered(&db, "batchSize = 200").await;
    let list = "bgmigrate_keys_0000000e411e";
    let pages = scalar(&pool, "SELECT (pg_relation_size('items') / 8192)::int8").await;
    let half = pages / 2;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {list} AS SELECT (ctid::text::point)[0]::int4 AS bgm_page, id AS bgm_k0 FROM items;
         CREATE INDEX {list}_bgm_page_idx ON {list} (bgm_page);
         ANALYZE {list};
         UPDATE items SET total = a + b, hits = hits + 1 WHERE (ctid::text::point)[0]::int8 < {half};"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let walked = scalar(&pool, "SELECT count(*) FROM items WHERE hits = 1").await;
    set_state(
        &pool,
        serde_json::json!({"cursor": null, "list": list, "listed": 3000, "pages": pages, "page": half, "walked": walked}),
    )
    .await;
    common::run_registered(&connected, "w1").await;

    assert_eq!(db.status_of(NAME).await, Status::Finished);
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM items WHERE hits = 1 AND total = a + b"
        )
        .await,
        3_000,
        "every row once"
    );
    assert_eq!(state(&pool).await["walked"], 3_000);
    assert_eq!(lists_left(&pool).await, 0);
}

/// A walk batch runs with JIT compilation off: a window of a large list planned for more rows than it holds was
/// priced past `jit_above_cost`, and each small batch spent longer compiling than updating. Each row records the
/// `jit` setting its batch's `UPDATE` saw.
#[tokio::test]
async fn walk_batches_run_without_jit() {
    let db = TestDb::create("heap_plan").await;
    let pool = db.pool().await;
    create_items(&pool, 2_000).await;
    sqlx::query("ALTER TABLE items ADD COLUMN planned text")
        .execute(&pool)
        .await
        .unwrap();
    run_setting(
        &db,
        "planned = \"current_setting('jit')\"",
        "batchSize = 300",
    )
    .await;

    assert_eq!(db.status_of(NAME).await, Status::Finished);
    let seen: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT planned, count(*) FROM items GROUP BY planned")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(seen, [(Some("off".to_owned()), 2_000)]);
}

/// Each walk batch takes the list's own pages holding about `batchSize` keys, wherever the rows are in the table:
/// here its live rows are bunched at the end of its heap (its first rows deleted and vacuumed away). The list holds
/// only the live rows' keys, in their page order, so every window but the last holds `batchSize` keys give or take
/// half a list page's, and no window walks the table's empty pages. The walk goes in parts (each batch updates one
/// part of its new window and the later parts of the windows before), so its first batches ramp up (one part,
/// then two) and its last ones down, and each batch in between updates about `batchSize` rows.
#[tokio::test]
async fn walk_windows_hold_about_the_batch_size_wherever_the_rows_are() {
    let db = TestDb::create("heap_windows").await;
    let pool = db.pool().await;
    create_items(&pool, 6_500).await;
    for sql in ["DELETE FROM items WHERE a <= 5000", "VACUUM items"] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let connected = registered(&db, "batchSize = 250").await;
    common::run_registered(&connected, "w1").await;

    assert_eq!(db.status_of(NAME).await, Status::Finished);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM items WHERE hits = 1").await,
        1_500
    );
    let walked: Vec<(i64, serde_json::Value)> =
        sqlx::query_as::<_, (i64, sqlx::types::Json<serde_json::Value>)>(
            "SELECT rows, state FROM background_migration_batches \
         WHERE migration_name = $1 AND (state->>'page')::bigint > 0 ORDER BY id",
        )
        .bind(NAME)
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(rows, state)| (rows, state.0))
        .collect();
    let rows: Vec<i64> = walked.iter().map(|(rows, _)| *rows).collect();
    assert_eq!(rows.iter().sum::<i64>(), 1_500, "{rows:?}");
    let state = &walked[0].1;
    assert_eq!(state["list_order"], true, "{state}");
    let parts = state["trail"].as_array().map_or(0, Vec::len) + 1;
    assert!(parts > 1, "a new walk goes in parts: {state}");
    let per_page = state["listed"].as_f64().unwrap() / state["pages"].as_f64().unwrap();
    let windows = rows.len() - (parts - 1);
    assert!(
        (6..=7).contains(&windows),
        "1,500 keys in windows of about 250, each {parts} parts: {rows:?}"
    );
    // Entries of one part: every `parts`-th of a window's, one more or fewer per list page.
    let part = 250.0 / parts as f64;
    assert!(
        (rows[0] as f64 - part).abs() <= (per_page / 2.0 + 2.0) / parts as f64 + 2.0,
        "the first batch: one part of a window ({part:.0} keys): {rows:?}"
    );
    let (last, full) = rows[parts - 1..].split_last().unwrap();
    assert!(
        full[..windows - parts]
            .iter()
            .all(|&n| (n as f64 - 250.0).abs() <= per_page / 2.0 + 2.0 * parts as f64),
        "each batch after the ramp up, until the last window: about 250 keys ({per_page:.0} keys a list page): {rows:?}"
    );
    assert!((1..250 + per_page as i64).contains(last), "{rows:?}");
}

/// Waits until the statistics of `items` show `count` of `what` (`n_tup_ins`, `n_tup_upd`). Sessions report
/// their statistics a while after their transactions, each all at once: once these show, so does the rest of
/// what those sessions did.
async fn statistics_show(pool: &sqlx::PgPool, what: &str, count: i64) {
    let reported = format!("SELECT {what} FROM pg_stat_user_tables WHERE relname = 'items'");
    for _ in 0..300 {
        if scalar(pool, &reported).await >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the statistics did not arrive: {what} {} reported, {count} made",
        scalar(pool, &reported).await
    );
}

/// A full table page cannot take a new version of its rows, so a walk in one turn moves every row to a new page
/// (and adds an index entry for it): the table doubles. The walk in parts moves only the first part of each page's
/// rows; the later parts' new versions fit in the room those left once their batch committed (heap-only updates),
/// so the table grows by about the first part's share. The walk finds the rows on the pages they were listed on,
/// not through the key's index: no row moved meanwhile, so the index is not read.
#[tokio::test]
async fn the_walk_updates_most_rows_in_place() {
    let db = TestDb::create("heap_in_place").await;
    let pool = db.pool().await;
    create_items(&pool, 30_000).await;
    sqlx::query("VACUUM items").execute(&pool).await.unwrap();
    let size = "SELECT pg_relation_size('items')";
    let before = scalar(&pool, size).await;
    let key_reads = "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'items_pkey'";
    let key_reads_before = scalar(&pool, key_reads).await;
    let connected = registered(&db, "batchSize = 1000").await;
    common::run_registered(&connected, "w1").await;

    assert_eq!(db.status_of(NAME).await, Status::Finished);
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM items WHERE hits <> 1 OR total <> a + b"
        )
        .await,
        0
    );
    let growth = (scalar(&pool, size).await - before) as f64 / before as f64;
    assert!(
        growth < 0.5,
        "the table grew by {:.0} % (a walk in one turn doubles it)",
        growth * 100.0
    );
    statistics_show(&pool, "n_tup_upd", 30_000).await;
    let key_reads_during = scalar(&pool, key_reads).await - key_reads_before;
    assert!(
        key_reads_during < 300,
        "30,000 rows walked with {key_reads_during} lookups through the key's index (one a row when looked up by key)"
    );
}

/// A walk batch hashes the rows of its pages' three windows, each with its key and the columns `set` reads:
/// 30,000 rows of about 300 bytes here, which the server's default `work_mem` (4 MB, 8 MB for a hash) spills to
/// temporary files. The batch sets its own.
#[tokio::test]
async fn an_in_place_walk_hashes_its_rows_in_memory() {
    let db = TestDb::create("heap_hash_memory").await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id text PRIMARY KEY, total int);
         INSERT INTO items (id) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 40000) g;
         ANALYZE items;",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Filling the table may write a temporary file of its own, counted once its session reports.
    statistics_show(&pool, "n_tup_ins", 40_000).await;
    let spilled = "SELECT temp_files FROM pg_stat_database WHERE datname = current_database()";
    let spilled_before = scalar(&pool, spilled).await;
    run_setting(&db, "total = \"length(id)\"", "batchSize = 10000").await;

    assert_eq!(db.status_of(NAME).await, Status::Finished);
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM items WHERE total IS DISTINCT FROM 256"
        )
        .await,
        0
    );
    statistics_show(&pool, "n_tup_upd", 40_000).await;
    assert_eq!(
        scalar(&pool, spilled).await - spilled_before,
        0,
        "temporary files written while walking"
    );
}
