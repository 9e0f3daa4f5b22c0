//! Backfill throughput: the engine's batched `backfill` against one plain `UPDATE` of the same table.
//!
//! ```text
//! cargo bench --bench backfill
//! BGMIGRATE_BENCH_ROWS=200000 BGMIGRATE_BENCH_BATCH=5000 cargo bench --bench backfill
//! ```
//!
//! Environment:
//! * `BGMIGRATE_BENCH_PG`    server URL without a database (default `postgres://postgres@127.0.0.1:5432`);
//!   the benchmark creates and drops its own database `bgm_bench_backfill` there.
//! * `BGMIGRATE_BENCH_ROWS`  rows in the table (default 1,000,000).
//! * `BGMIGRATE_BENCH_BATCH` `batchSize` put in the migration's args (default: none, so the engine's default).
//! * `BGMIGRATE_BENCH_KEEP=1` keeps the database afterwards (to EXPLAIN the statements by hand).
//! * `RUST_LOG`              log filter (default `warn,sqlx=error,sqlx_core=error`).
//!
//! Two identical tables `ref` and `ours` (text primary key in non-sequential order, ~300-byte rows, autovacuum off
//! so neither run is disturbed by a vacuum of the other's dead rows) are built and vacuumed up front. `ref` gets one
//! `UPDATE ref SET total = a + b`; `ours` gets the same `set` as a registered backfill run by a [`Runner`] until it
//! drains. A `CHECKPOINT` precedes each timed run.

mod support;

use std::time::Instant;

use anyhow::{bail, ensure};
use bgmigrate::{Registration, Runner, RunnerConfig, builtin_registry};
use serde_json::json;
use sqlx::{AssertSqlSafe, PgPool, Row};
use support::{env_u64, exec, pool};

const DATABASE: &str = "bgm_bench_backfill";
const MIGRATION: &str = "bench_backfill_total";
/// The target: batching may cost at most 10% of a plain UPDATE's throughput, and no batch may hold its locks long.
const TARGET_RATIO: f64 = 0.9;
const TARGET_LONGEST_BATCH_MS: i64 = 1000;

/// Builds `ref` and `ours` with the same rows and the same physical layout.
async fn build_tables(db: &PgPool, rows: u64) -> anyhow::Result<()> {
    for table in ["ref", "ours"] {
        // md5 ids: key order is unrelated to insertion (heap) order, as with uuids or random trace ids.
        exec(
            db,
            &format!(
                "CREATE TABLE {table} (id text NOT NULL, a int NOT NULL, b int NOT NULL, payload text NOT NULL, \
                 total int) WITH (autovacuum_enabled = false);
                 INSERT INTO {table} (id, a, b, payload)
                 SELECT md5(g::text), g % 1000, (g * 7) % 1000, repeat(md5((g + 1)::text), 8)
                 FROM generate_series(1, {rows}) AS g;
                 ALTER TABLE {table} ADD PRIMARY KEY (id);"
            ),
        )
        .await?;
    }
    exec(db, "VACUUM ANALYZE ref").await?;
    exec(db, "VACUUM ANALYZE ours").await?;
    Ok(())
}

async fn mismatches(db: &PgPool, table: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE total IS DISTINCT FROM a + b"
    )))
    .fetch_one(db)
    .await?)
}

struct BatchStats {
    count: i64,
    rows: i64,
    longest_ms: i64,
    median_ms: f64,
    p95_ms: f64,
    total_ms: i64,
}

async fn batch_stats(db: &PgPool) -> anyhow::Result<BatchStats> {
    let row = sqlx::query(
        "SELECT count(*) AS count, coalesce(sum(rows), 0)::bigint AS rows, \
             coalesce(max(duration_ms), 0)::bigint AS longest, coalesce(sum(duration_ms), 0)::bigint AS total, \
             coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), 0) AS median, \
             coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms), 0) AS p95 \
         FROM background_migration_batches WHERE migration_name = $1",
    )
    .bind(MIGRATION)
    .fetch_one(db)
    .await?;
    Ok(BatchStats {
        count: row.try_get("count")?,
        rows: row.try_get("rows")?,
        longest_ms: row.try_get("longest")?,
        median_ms: row.try_get("median")?,
        p95_ms: row.try_get("p95")?,
        total_ms: row.try_get("total")?,
    })
}

async fn run(db_url: &str, rows: u64, batch: Option<u64>) -> anyhow::Result<()> {
    let db = pool(db_url).await?;
    let started = Instant::now();
    build_tables(&db, rows).await?;
    let (table_bytes,): (i64,) = sqlx::query_as("SELECT pg_table_size('ours')")
        .fetch_one(&db)
        .await?;
    eprintln!(
        "built ref and ours: {rows} rows, {:.0} MB each, in {:.1} s",
        table_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    // Reference: one plain UPDATE.
    exec(&db, "CHECKPOINT").await?;
    let started = Instant::now();
    let updated = sqlx::query("UPDATE ref SET total = a + b")
        .execute(&db)
        .await?
        .rows_affected();
    let ref_secs = started.elapsed().as_secs_f64();
    ensure!(
        updated == rows,
        "the reference UPDATE touched {updated} rows, not {rows}"
    );

    // Ours: the same change as a registered backfill, run by the engine until nothing is left.
    let connected = bgmigrate::config::connect(db_url).await?;
    let registry = builtin_registry();
    connected.control.ensure_schema().await?;
    let args = match batch {
        Some(size) => json!({ "batchSize": size }),
        None => json!({}),
    };
    connected
        .control
        .register(
            &[Registration {
                name: MIGRATION.into(),
                script: "backfill".into(),
                params: json!({
                    "store": "postgres", "table": "ours", "key": ["id"], "set": { "total": "a + b" }
                }),
                args,
                depends_on: None,
            }],
            &registry,
        )
        .await?;
    exec(&db, "CHECKPOINT").await?;
    let started = Instant::now();
    let runner = Runner::new(
        connected.control.clone(),
        registry,
        connected.stores.clone(),
        RunnerConfig {
            exit_when_done: true,
            ..Default::default()
        },
    );
    let summary = runner.spawn().join().await?;
    let ours_secs = started.elapsed().as_secs_f64();
    if !summary.failed.is_empty() {
        bail!("the backfill failed: {:?}", summary.failed);
    }
    ensure!(
        summary.finished == [MIGRATION],
        "the runner did not finish the backfill: {summary:?}"
    );

    let stats = batch_stats(&db).await?;
    let (rows_done, status, batch_size): (i64, String, Option<i32>) = sqlx::query_as(
        "SELECT rows_done, status, batch_size FROM background_migrations WHERE name = $1",
    )
    .bind(MIGRATION)
    .fetch_one(&db)
    .await?;
    let bad_ours = mismatches(&db, "ours").await?;
    let bad_ref = mismatches(&db, "ref").await?;
    ensure!(bad_ref == 0, "the reference left {bad_ref} rows wrong");
    ensure!(
        bad_ours == 0,
        "the backfill left {bad_ours} rows with total IS DISTINCT FROM a + b"
    );
    // Not `pool.close()`: the control store's change listener holds one of its connections until dropped.
    drop(connected);

    let ref_rate = rows as f64 / ref_secs;
    let ours_rate = rows as f64 / ours_secs;
    let ratio = ours_rate / ref_rate;
    let met = ratio >= TARGET_RATIO && stats.longest_ms <= TARGET_LONGEST_BATCH_MS;
    let batch_label = batch_size.map_or("?".to_owned(), |b| b.to_string());
    println!("backfill benchmark");
    println!("  rows:             {rows}");
    println!("  reference UPDATE: {ref_secs:>7.2} s  {ref_rate:>10.0} rows/s");
    println!(
        "  bgmigrate:        {ours_secs:>7.2} s  {ours_rate:>10.0} rows/s  (batchSize {batch_label}{})",
        if batch.is_none() {
            ", engine default"
        } else {
            ""
        }
    );
    println!("  ratio ours/ref:   {ratio:.3} (rows/s)");
    println!(
        "  batches:          {} recorded ({} rows), status {status}, rows_done {rows_done}",
        stats.count, stats.rows
    );
    println!(
        "  batch ms:         longest {}  median {:.0}  p95 {:.0}  sum {} ({:.0}% of the run)",
        stats.longest_ms,
        stats.median_ms,
        stats.p95_ms,
        stats.total_ms,
        stats.total_ms as f64 / 10.0 / ours_secs
    );
    println!("  correctness:      0 rows with total IS DISTINCT FROM a + b");
    println!(
        "target: ratio >= {TARGET_RATIO} and longest batch <= {TARGET_LONGEST_BATCH_MS} ms: {}",
        if met { "MET" } else { "NOT MET" }
    );
    db.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !support::start("backfill") {
        return Ok(());
    }
    let rows = env_u64("BGMIGRATE_BENCH_ROWS")?.unwrap_or(1_000_000);
    ensure!(rows > 0, "BGMIGRATE_BENCH_ROWS must be at least 1");
    let batch = env_u64("BGMIGRATE_BENCH_BATCH")?;
    support::in_fresh_database(DATABASE, |url| async move { run(&url, rows, batch).await }).await
}
