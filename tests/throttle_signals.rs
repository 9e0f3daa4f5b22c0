//! The health signals added beside replication lag, each against its real store: the rate Postgres generates WAL
//! at, the memory a ClickHouse server tracks, and foreground sessions blocked by a backfill's batch. Each throttles a
//! migration while past its threshold, says so in the row, and lets it finish exact once an operator lifts it.
//! Beside them, advice that holds nothing back: checkpoints forced by the WAL's volume, on a private server.

mod clickhouse_common;
mod common;
mod private_postgres;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bgmigrate::config::{self, Connected};
use bgmigrate::{Status, builtin_registry};
use clickhouse_common::TestClickHouse;
use common::{TestDb, register_builtin, register_dir, run_registered, spawn_runner, wait_until};
use private_postgres::PrivateServer;
use serde_json::{Value, json};

/// Runs the registered migration `name` with one worker; waits until its row says it holds back for a reason that
/// contains `needle`, checks that no batch runs meanwhile, applies `lift` with `set_args` and waits for the end.
/// Returns the rows done while it held.
async fn hold_then_lift(connected: &Connected, name: &str, needle: &str, lift: Value) -> i64 {
    let runner = spawn_runner(connected, "w1");
    let control = connected.control.clone();
    wait_until(
        &format!("the migration holds back on {needle}"),
        Duration::from_secs(60),
        || {
            let control = control.clone();
            async move {
                let row = control.get(name).await.unwrap();
                row.throttled.is_some_and(|t| t.contains(needle))
            }
        },
    )
    .await;
    let held = connected.control.get(name).await.unwrap();
    assert_eq!(
        held.status,
        Status::Running,
        "a held migration stays running"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = connected.control.get(name).await.unwrap();
    assert_eq!(still.rows_done, held.rows_done, "no batch ran while held");
    connected
        .control
        .set_args(name, &lift, "test")
        .await
        .expect("lift the threshold");
    let summary = tokio::time::timeout(Duration::from_secs(120), runner.join())
        .await
        .expect("the migration finishes once the threshold is lifted")
        .expect("runner");
    assert_eq!(summary.finished, vec![name.to_owned()]);
    assert_eq!(connected.control.get(name).await.unwrap().throttled, None);
    held.rows_done
}

/// While another session writes WAL at several MiB/s, a backfill whose `maxWalBytesPerSecond` is 1 MiB holds back,
/// saying "WAL generated at ... > 1.0 MiB/s", and finishes every row exactly once after the threshold is turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_rate_past_max_wal_bytes_per_second_holds_a_backfill_until_lifted() {
    let db = TestDb::create("wal_rate").await;
    let connected = db.connect().await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, pad text NOT NULL, v int, hits int NOT NULL DEFAULT 0); \
         INSERT INTO items (id, pad) SELECT i, repeat('x', 200) FROM generate_series(1, 100000) i; \
         CREATE TABLE noise (pad text NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    // The foreground: about 250 KB of rows every 50 ms, i.e. several MiB/s of WAL.
    let noise = {
        let pool = pool.clone();
        tokio::spawn(async move {
            loop {
                sqlx::query(
                    "INSERT INTO noise SELECT repeat('n', 250) FROM generate_series(1, 1000)",
                )
                .execute(&pool)
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    db.define(
        "0001_v",
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\n\
         set = { v = \"id * 2\", hits = \"hits + 1\" }\n\
         [args]\nbatchSize = 500\nsleepMs = 100\nmaxWalBytesPerSecond = 1048576\nthrottleCheckMs = 100\n",
    );
    register_dir(&connected, &db.migrations(), &builtin_registry()).await;
    let held = hold_then_lift(
        &connected,
        "0001_v",
        "> 1.0 MiB/s (maxWalBytesPerSecond)",
        json!({"maxWalBytesPerSecond": 0}),
    )
    .await;
    noise.abort();
    assert!(held < 100_000, "it held before the end: {held}");
    let (wrong,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM items WHERE hits <> 1 OR v IS DISTINCT FROM id * 2")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(wrong, 0, "every row updated exactly once");
}

/// A ClickHouse rewrite holds back while the server tracks more memory than `maxServerMemoryBytes` (on 18.16,
/// which publishes no server-wide limit, the only way to set one), before its first partition, and rewrites every
/// row once the limit is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_memory_past_max_server_memory_bytes_holds_a_clickhouse_rewrite_until_lifted() {
    let db = TestDb::create("ch_memory").await;
    let ch = TestClickHouse::create("ch_memory").await;
    ch.exec("CREATE TABLE events_v1 (id String, ts DateTime) ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY id").await;
    ch.exec("CREATE TABLE events (id String, ts DateTime) ENGINE = ReplacingMergeTree ORDER BY id")
        .await;
    ch.exec(
        "INSERT INTO events_v1 SELECT concat('e', toString(number)), \
         toDateTime('2024-09-01 00:00:00') + number * 3600 FROM system.numbers LIMIT 2000",
    )
    .await;
    db.define(
        "0001_rewrite",
        "kind = \"clickhouse_rewrite\"\nstore = \"clickhouse\"\nfrom = \"events_v1\"\nto = \"events\"\n\
         [args]\nmaxServerMemoryBytes = 1\nthrottleCheckMs = 100\n",
    );
    let connected = db.connect_with_clickhouse(&ch.url).await;
    register_dir(&connected, &db.migrations(), &builtin_registry()).await;
    let held = hold_then_lift(
        &connected,
        "0001_rewrite",
        "of memory > 1.0 B (maxServerMemoryBytes)",
        json!({"maxServerMemoryBytes": 0}),
    )
    .await;
    assert_eq!(held, 0, "it held before the first partition");
    assert_eq!(ch.value("SELECT count() FROM events").await, "2000");
}

/// Foreground sessions updating random rows of the table a backfill walks wait for the rows its (slow) batch has
/// locked; the samples taken while the batch runs see them, so the migration yields — saying "our batches blocked
/// foreground sessions" — and its next batches are shorter. With `yieldOnBlockedSessions` set to 0 it finishes,
/// every row backfilled once and not one foreground update lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_sessions_blocked_by_a_batch_make_the_backfill_yield_with_shorter_batches() {
    let db = TestDb::create("blocked_by_batch").await;
    let connected = db.connect().await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, v int, hits int NOT NULL DEFAULT 0); \
         INSERT INTO items (id) SELECT i FROM generate_series(1, 3000) i; \
         CREATE FUNCTION slow(x int) RETURNS int LANGUAGE plpgsql VOLATILE AS \
           $$ BEGIN PERFORM pg_sleep(0.001); RETURN x; END $$",
    )
    .execute(&pool)
    .await
    .unwrap();
    // The foreground: two sessions, each updating one row every 2 ms.
    let (updates, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let foreground: Vec<_> = (0..2)
        .map(|_| {
            let (pool, updates, stop) = (pool.clone(), updates.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // Scattered over the table (7919 is prime to 3000), one row per statement.
                    let n = updates.fetch_add(1, Ordering::Relaxed);
                    let id = (n * 7919 % 3000 + 1) as i32;
                    let updated = sqlx::query("UPDATE items SET hits = hits + 1 WHERE id = $1")
                        .bind(id)
                        .execute(&pool)
                        .await
                        .unwrap();
                    assert_eq!(updated.rows_affected(), 1);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    // About 1 ms a row, 300 rows (300 ms) a batch until it yields; the load signal is off, so only blocking counts.
    db.define(
        "0001_v",
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\n\
         set = { v = \"slow(id * 2)\" }\n\
         [args]\nminBatchSize = 10\nmaxBatchSize = 300\ntargetBatchMs = 300\nforegroundActivePercent = 0\n",
    );
    register_dir(&connected, &db.migrations(), &builtin_registry()).await;
    let runner = spawn_runner(&connected, "w1");
    let control = connected.control.clone();
    wait_until(
        "the backfill yields to the foreground sessions it blocked",
        Duration::from_secs(60),
        || {
            let control = control.clone();
            async move {
                let row = control.get("0001_v").await.unwrap();
                row.throttled
                    .is_some_and(|t| t.contains("our batches blocked foreground sessions (>= 1 at once, yieldOnBlockedSessions)"))
            }
        },
    )
    .await;
    assert_eq!(
        connected.control.get("0001_v").await.unwrap().status,
        Status::Running
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    connected
        .control
        .set_args("0001_v", &json!({"yieldOnBlockedSessions": 0}), "test")
        .await
        .expect("lift the threshold");
    let summary = tokio::time::timeout(Duration::from_secs(120), runner.join())
        .await
        .expect("the backfill finishes once the signal is off")
        .expect("runner");
    stop.store(true, Ordering::Relaxed);
    for task in foreground {
        task.await.unwrap();
    }
    assert_eq!(summary.finished, vec!["0001_v".to_owned()]);
    assert_eq!(
        connected.control.get("0001_v").await.unwrap().throttled,
        None
    );

    let throttled: Vec<_> = db
        .events("0001_v")
        .await
        .into_iter()
        .filter(|(kind, ..)| kind == "throttled")
        .collect();
    assert!(
        throttled
            .iter()
            .any(|(.., detail)| detail["signal"] == "blocked_by_batch"),
        "{throttled:?}"
    );
    let sizes: Vec<i32> = db
        .batches("0001_v")
        .await
        .into_iter()
        .map(|b| b.0)
        .collect();
    assert_eq!(sizes.first(), Some(&300), "{sizes:?}");
    assert!(
        sizes.iter().skip(1).any(|size| *size < 100),
        "batches after the blocking one are shorter: {sizes:?}"
    );
    let (wrong, hits): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE v IS DISTINCT FROM id * 2), sum(hits) FROM items",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(wrong, 0, "every row backfilled");
    assert_eq!(
        hits as u64,
        updates.load(Ordering::Relaxed),
        "no foreground update lost"
    );
}

/// Backfills every row of `items` with `column = id * factor` as migration `name` (batches of 5,000 rows, 200 ms
/// apart, so the run spans several of the checks' 5-second readings); returns the kinds and details of its events,
/// after checking every row was updated exactly once.
async fn backfill_and_read_events(
    connected: &Connected,
    name: &str,
    column: &str,
    factor: i64,
) -> Vec<(String, Value)> {
    register_builtin(
        connected,
        name,
        "backfill",
        json!({"store": "postgres", "table": "items", "key": ["id"],
               "set": {column: format!("id * {factor}"), "hits": "hits + 1"}}),
        json!({"batchSize": 5000, "sleepMs": 200}),
    )
    .await;
    run_registered(connected, "w1").await;
    let record = connected.control.get(name).await.unwrap();
    assert_eq!(record.status, Status::Finished, "{name}: {record:?}");
    assert_eq!(record.throttled, None, "advice holds nothing back");
    let pool = connected.pool.clone().expect("a Postgres control store");
    let (wrong,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM items WHERE (CASE $1 WHEN 'v' THEN v ELSE w END) IS DISTINCT FROM id * $2",
    )
    .bind(column)
    .bind(factor)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(wrong, 0, "{name}: every row updated");
    connected
        .control
        .events(name, 500)
        .await
        .unwrap()
        .into_iter()
        .map(|event| (event.kind, event.detail))
        .collect()
}

/// On a server whose `max_wal_size` is 32 MB (the least it takes), a backfill of 300,000 rows forces checkpoints
/// seconds apart: an `advised` event names them, the `max_wal_size` in force and the one to raise it towards, and
/// the backfill still runs to the end, every row once. After `max_wal_size` is raised to 8 GB the same backfill
/// of another column is given no advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_forced_by_the_wal_are_advice_naming_max_wal_size() {
    let server =
        PrivateServer::start("max_wal_size = 32MB\nmin_wal_size = 32MB\ncheckpoint_timeout = 300");
    let connected = config::connect(&server.url()).await.expect("server");
    connected.control.ensure_schema().await.expect("schema");
    let pool = connected.pool.clone().expect("a Postgres control store");
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, pad text NOT NULL, v bigint, w bigint, hits int NOT NULL DEFAULT 0); \
         INSERT INTO items (id, pad) SELECT i, repeat('x', 200) FROM generate_series(1, 300000) i; \
         CHECKPOINT",
    )
    .execute(&pool)
    .await
    .unwrap();

    let events = backfill_and_read_events(&connected, "0001_v", "v", 2).await;
    let advised: Vec<&Value> = events
        .iter()
        .filter(|(kind, _)| kind == "advised")
        .map(|(_, detail)| detail)
        .collect();
    assert_eq!(
        advised.len(),
        1,
        "one piece of advice in the hour: {events:?}"
    );
    let advice = advised[0];
    assert_eq!(advice["topic"], "checkpoints");
    let text = advice["advice"].as_str().unwrap();
    assert!(
        text.contains("(max_wal_size 32.0 MiB, checkpoint_timeout 300 s)")
            && text.contains("raise max_wal_size towards"),
        "{text}"
    );
    let figures = &advice["figures"];
    assert!(
        figures["requested_checkpoints"].as_u64().unwrap() >= 3,
        "{figures}"
    );
    assert_eq!(figures["max_wal_size_bytes"], 32 * 1024 * 1024);
    assert!(
        figures["suggested_max_wal_size_bytes"].as_u64().unwrap() > 32 * 1024 * 1024,
        "{figures}"
    );
    let hits: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT hits::bigint FROM items")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(hits, vec![1], "every row updated exactly once");

    for statement in [
        "ALTER SYSTEM SET max_wal_size = '8GB'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let events = backfill_and_read_events(&connected, "0002_w", "w", 3).await;
    assert!(
        events.iter().all(|(kind, _)| kind != "advised"),
        "no advice once the WAL fits: {events:?}"
    );
}
