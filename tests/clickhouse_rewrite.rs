//! The `clickhouse_rewrite` kind against the real ClickHouse: one partition per batch, tracked in the checkpoint,
//! resumable and idempotent.

mod clickhouse_common;
mod common;

use bgmigrate::{Status, builtin_registry};
use clickhouse_common::TestClickHouse;
use common::{TestDb, register_dir, run_registered, text};

const NAME: &str = "20241101_0001_rewrite_events";

async fn setup(test: &str) -> (TestDb, TestClickHouse) {
    let db = TestDb::create(test).await;
    let ch = TestClickHouse::create(test).await;
    ch.exec("CREATE TABLE events_v1 (id String, ts DateTime, name String) ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY id").await;
    ch.exec("CREATE TABLE events (id String, ts DateTime, name String, name_length UInt64) ENGINE = ReplacingMergeTree ORDER BY id").await;
    ch.exec(
        "INSERT INTO events_v1 SELECT concat('e', toString(number)), toDateTime('2024-09-01 00:00:00') + number * 3600, \
         concat('événement ', toString(number)) FROM system.numbers LIMIT 2000",
    )
    .await;
    db.define(
        NAME,
        "kind = \"clickhouse_rewrite\"\nstore = \"clickhouse\"\nfrom = \"events_v1\"\nto = \"events\"\n\
         columns = [\"id\", \"ts\", \"name\", \"name_length\"]\nselect = \"id, ts, upperUTF8(name), lengthUTF8(name)\"\n",
    );
    (db, ch)
}

/// Every partition of the source is rewritten, one batch each, with the select's transformation applied.
#[tokio::test]
async fn a_rewrite_inserts_every_partition_once_with_its_transformation() {
    let (db, ch) = setup("ch_rewrite").await;
    let connected = db.connect_with_clickhouse(&ch.url).await;
    register_dir(&connected, &db.migrations(), &builtin_registry()).await;
    run_registered(&connected, "w1").await;
    let record = connected.control.get(NAME).await.unwrap();
    assert_eq!(
        record.status,
        Status::Finished,
        "{:?}",
        record.failed_reason
    );
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
