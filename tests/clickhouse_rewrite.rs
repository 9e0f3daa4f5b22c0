//! The `clickhouse_rewrite` kind against the real ClickHouse: one partition per batch, tracked in the checkpoint,
//! resumable and idempotent.

mod clickhouse_common;
mod common;

use bgmigrate::config::Connected;
use bgmigrate::control::MigrationRecord;
use bgmigrate::{Status, builtin_registry};
use clickhouse_common::TestClickHouse;
use common::{TestDb, register_dir, run_registered, text};

const NAME: &str = "20241101_0001_rewrite_events";

async fn setup(test: &str) -> (TestDb, TestClickHouse) {
    setup_partitioned(test, "toYYYYMM(ts)", 2_000, "").await
}

/// `rows` hourly events from 2024-09-01 in `events_v1`, partitioned by `partition_by`, the empty `events`, and the
/// rewrite between them defined with `args` (TOML lines after `[args]`, or none).
async fn setup_partitioned(
    test: &str,
    partition_by: &str,
    rows: u32,
    args: &str,
) -> (TestDb, TestClickHouse) {
    let db = TestDb::create(test).await;
    let ch = TestClickHouse::create(test).await;
    ch.exec(&format!("CREATE TABLE events_v1 (id String, ts DateTime, name String) ENGINE = MergeTree PARTITION BY {partition_by} ORDER BY id")).await;
    ch.exec("CREATE TABLE events (id String, ts DateTime, name String, name_length UInt64) ENGINE = ReplacingMergeTree ORDER BY id").await;
    ch.exec(&format!(
        "INSERT INTO events_v1 SELECT concat('e', toString(number)), toDateTime('2024-09-01 00:00:00') + number * 3600, \
         concat('événement ', toString(number)) FROM system.numbers LIMIT {rows}",
    ))
    .await;
    let args = if args.is_empty() {
        String::new()
    } else {
        format!("[args]\n{args}\n")
    };
    db.define(
        NAME,
        &format!(
            "kind = \"clickhouse_rewrite\"\nstore = \"clickhouse\"\nfrom = \"events_v1\"\nto = \"events\"\n\
             columns = [\"id\", \"ts\", \"name\", \"name_length\"]\nselect = \"id, ts, upperUTF8(name), lengthUTF8(name)\"\n{args}"
        ),
    );
    (db, ch)
}

/// Registers the rewrite and runs it with one library runner until it stops.
async fn run_once(db: &TestDb, ch: &TestClickHouse) -> Connected {
    let connected = db.connect_with_clickhouse(&ch.url).await;
    register_dir(&connected, &db.migrations(), &builtin_registry()).await;
    run_registered(&connected, "w1").await;
    connected
}

/// [`run_once`], asserting the rewrite finished.
async fn rewrite_to_end(db: &TestDb, ch: &TestClickHouse) -> (Connected, MigrationRecord) {
    let connected = run_once(db, ch).await;
    let record = connected.control.get(NAME).await.unwrap();
    assert_eq!(
        record.status,
        Status::Finished,
        "{:?}",
        record.failed_reason
    );
    (connected, record)
}

/// Every partition of the source is rewritten, one batch each, with the select's transformation applied.
#[tokio::test]
async fn a_rewrite_inserts_every_partition_once_with_its_transformation() {
    let (db, ch) = setup("ch_rewrite").await;
    let (connected, record) = rewrite_to_end(&db, &ch).await;
    assert_eq!(record.rows_done, 2000);
    assert_eq!(ch.value("SELECT count() FROM events FINAL").await, "2000");
    assert_eq!(
        ch.value("SELECT name FROM events WHERE id = 'e7'").await,
        "ÉVÉNEMENT 7"
    );
    assert_eq!(
        ch.value("SELECT sum(name_length) FROM events").await,
        ch.value("SELECT sum(lengthUTF8(name)) FROM events_v1")
            .await
    );
    let batches = connected.control.batches(NAME, 100).await.unwrap();
    let partitions = ch
        .value("SELECT uniqExact(_partition_id) FROM events_v1")
        .await;
    assert_eq!(
        batches.len().to_string(),
        partitions,
        "one batch per partition"
    );
}

/// `parallelism = 2` deals the partitions out as two runs of about equal rows: two worker processes each rewrite
/// one, every range ends done, and every row arrives once with its transformation.
#[tokio::test]
async fn two_workers_rewrite_runs_of_partitions_exactly() {
    let (db, ch) = setup_partitioned(
        "ch_rewrite_parallel",
        "toYYYYMMDD(ts)",
        960,
        "parallelism = 2\nsleepMs = 50",
    )
    .await;
    let (connected, _) = db.two_workers_finish_in_ranges(&ch.url, NAME).await;
    let record = connected.control.get(NAME).await.unwrap();
    assert_eq!(record.rows_done, 960);
    assert_eq!(ch.value("SELECT count() FROM events FINAL").await, "960");
    assert_eq!(
        ch.value("SELECT name FROM events WHERE id = 'e7'").await,
        "ÉVÉNEMENT 7"
    );
}

/// `retry --from-start` rewrites everything again: the ReplacingMergeTree target collapses the repeats, and a
/// checkpoint in the middle makes the rewrite resume after that partition.
#[tokio::test]
async fn a_rewrite_resumes_after_its_checkpoint_and_repeats_collapse() {
    let (db, ch) = setup("ch_rewrite_resume").await;
    let connected = db.connect_with_clickhouse(&ch.url).await;
    register_dir(&connected, &db.migrations(), &builtin_registry()).await;
    // Pretend the first two partitions were done by an earlier worker.
    let pool = db.pool().await;
    sqlx::query(
        "UPDATE background_migrations SET state = '{\"partition\": \"202409\"}' WHERE name = $1",
    )
    .bind(NAME)
    .execute(&pool)
    .await
    .unwrap();
    run_registered(&connected, "w1").await;
    assert_eq!(
        connected.control.get(NAME).await.unwrap().status,
        Status::Finished
    );
    assert_eq!(
        ch.value("SELECT count() FROM events").await,
        ch.value("SELECT count() FROM events_v1 WHERE toYYYYMM(ts) > 202409")
            .await,
        "resumed after the checkpoint's partition"
    );
    let out = db.cli_with_env(
        &["retry", NAME, "--from-start"],
        &[("CLICKHOUSE_URL", &ch.url)],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a finished migration cannot be retried: {}",
        text(&out)
    );
    sqlx::query(
        "UPDATE background_migrations SET status = 'failed', failed_at = now() WHERE name = $1",
    )
    .bind(NAME)
    .execute(&pool)
    .await
    .unwrap();
    let out = db.cli_with_env(
        &["retry", NAME, "--from-start"],
        &[("CLICKHOUSE_URL", &ch.url)],
    );
    assert!(out.status.success(), "{}", text(&out));
    run_registered(&connected, "w2").await;
    ch.optimize_final("events").await;
    assert_eq!(ch.value("SELECT count() FROM events").await, "2000");
}

/// 40,000 rows of ~900 bytes in one partition, and a rewrite whose `maxMemoryUsage` (40 MB) holds about 10,000 of
/// them at a time (measured on 18.16: 20,000 need 45 MB); `args`: more TOML lines under `[args]`.
async fn setup_wide(test: &str, select: &str, args: &str) -> (TestDb, TestClickHouse) {
    let db = TestDb::create(test).await;
    let ch = TestClickHouse::create(test).await;
    ch.exec("CREATE TABLE wide_v1 (id String, payload String) ENGINE = MergeTree ORDER BY id")
        .await;
    ch.exec("CREATE TABLE wide (id String, payload String, payload_length UInt64) ENGINE = ReplacingMergeTree ORDER BY id").await;
    ch.exec(
        "INSERT INTO wide_v1 SELECT concat('k', toString(number)), \
         concat(toString(number), replaceRegexpAll(toString(range(250)), '.', 'x')) FROM system.numbers LIMIT 40000",
    )
    .await;
    db.define(
        NAME,
        &format!(
            "kind = \"clickhouse_rewrite\"\nstore = \"clickhouse\"\nfrom = \"wide_v1\"\nto = \"wide\"\n\
             columns = [\"id\", \"payload\", \"payload_length\"]\nselect = \"{select}\"\n\
             [args]\nmaxMemoryUsage = 40000000\n{args}\n"
        ),
    );
    (db, ch)
}

/// A partition that does not fit in `maxMemoryUsage` is split by key range, halved until a range fits, and the rest
/// of it goes in ranges of that size: every row is rewritten exactly once, in several batches of one partition.
#[tokio::test]
async fn a_partition_too_big_for_max_memory_usage_is_split_by_key_range_and_rewritten_exactly() {
    let (db, ch) = setup_wide("ch_rewrite_split", "id, payload, length(payload)", "").await;
    let (connected, record) = rewrite_to_end(&db, &ch).await;
    assert_eq!(record.rows_done, 40000);
    assert_eq!(
        ch.value("SELECT count() FROM wide").await,
        "40000",
        "no row twice, none missing (before any merge)"
    );
    assert_eq!(ch.value("SELECT uniqExact(id) FROM wide").await, "40000");
    assert_eq!(
        ch.value("SELECT sum(payload_length) FROM wide").await,
        ch.value("SELECT sum(length(payload)) FROM wide_v1").await
    );
    let batches = connected.control.batches(NAME, 100).await.unwrap();
    assert!(
        batches.len() >= 4,
        "one partition in ranges of at most 10,000 rows: {} batches",
        batches.len()
    );
    assert!(
        batches.iter().all(|b| b.rows <= 20_000),
        "{:?}",
        batches.iter().map(|b| b.rows).collect::<Vec<_>>()
    );
    assert_eq!(record.state.get("split"), None, "{}", record.state);
}

/// When a range fails for a reason other than memory, splitting stops and that error — the first real one — is the
/// migration's failed reason.
#[tokio::test]
async fn a_range_that_fails_for_another_reason_fails_the_rewrite_with_that_error() {
    let (db, ch) = setup_wide(
        "ch_rewrite_split_error",
        "id, payload, length(payload) + throwIf(id = 'k39999')",
        "",
    )
    .await;
    let connected = run_once(&db, &ch).await;
    let record = connected.control.get(NAME).await.unwrap();
    assert_eq!(record.status, Status::Failed);
    let reason = record.failed_reason.unwrap_or_default();
    assert!(reason.contains("throwIf"), "{reason}");
    assert!(!reason.contains("Memory limit"), "{reason}");
}

/// A table of one partition still splits for `parallelism`: the ranges are cut at keys inside the partition, each
/// range stops at its end key (here also halving on memory, in chunks of at most 10,000 rows), two workers walk
/// them, and every row arrives once.
#[tokio::test]
async fn two_workers_rewrite_one_partition_in_key_ranges_exactly() {
    let (db, ch) = setup_wide(
        "ch_rewrite_key_ranges",
        "id, payload, length(payload)",
        "parallelism = 2\nsleepMs = 100",
    )
    .await;
    assert_eq!(
        ch.value("SELECT uniqExact(_partition_id) FROM wide_v1")
            .await,
        "1"
    );
    let (connected, ranges) = db.two_workers_finish_in_ranges(&ch.url, NAME).await;
    let inside: Vec<_> = ranges
        .iter()
        .filter_map(|r| r.upper.as_ref()?.get("split")?.get("after").cloned())
        .collect();
    assert!(!inside.is_empty(), "a range ends at a key: {ranges:?}");
    let record = connected.control.get(NAME).await.unwrap();
    assert!(record.rows_done >= 40_000, "{}", record.rows_done);
    assert_eq!(ch.value("SELECT count() FROM wide FINAL").await, "40000");
    assert_eq!(ch.value("SELECT uniqExact(id) FROM wide").await, "40000");
    assert_eq!(
        ch.value("SELECT sum(payload_length) FROM wide FINAL").await,
        ch.value("SELECT sum(length(payload)) FROM wide_v1").await
    );
}

/// Each range of a one-partition table stops at its end key: one worker walking three ranges in turn (no stealing,
/// nothing redone) writes every row exactly once, before any merge.
#[tokio::test]
async fn ranges_inside_one_partition_stop_at_their_end_keys() {
    let (db, ch) =
        setup_partitioned("ch_rewrite_end_keys", "tuple()", 3_000, "parallelism = 3").await;
    let (connected, record) = rewrite_to_end(&db, &ch).await;
    let ranges = connected.control.ranges(NAME).await.unwrap();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert!(
        ranges.iter().all(|r| r.done && r.rows_done == 1_000),
        "{ranges:?}"
    );
    assert_eq!(record.rows_done, 3_000);
    assert_eq!(ch.value("SELECT count() FROM events").await, "3000");
    assert_eq!(ch.value("SELECT uniqExact(id) FROM events").await, "3000");
}
