//! The health signals added beside replication lag, each against its real store: the rate Postgres generates WAL
//! at, the memory a ClickHouse server tracks, and foreground sessions blocked by a backfill's batch. Each throttles a
//! migration while past its threshold, says so in the row, and lets it finish exact once an operator lifts it.

mod clickhouse_common;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bgmigrate::config::Connected;
use bgmigrate::{Status, builtin_registry};
use clickhouse_common::TestClickHouse;
use common::{TestDb, register_dir, spawn_runner, wait_until};
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
