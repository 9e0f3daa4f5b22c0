//! The `copy` kind against real Postgres and real ClickHouse: exact copies (counts and per-row checksums) with
//! NULLs, unicode, arrays, equal timestamps and 20 MB rows; crash and outage recovery; validation before any row
//! moves.

mod clickhouse_common;
mod common;

use std::time::Duration;

use serde_json::json;

use bgmigrate::config::Connected;
use bgmigrate::control::EventKind;
use bgmigrate::control::MigrationRecord;
use bgmigrate::{Runner, Status, builtin_registry};
use clickhouse_common::{PrivateServer, TestClickHouse};
use common::{TestDb, fast_config, register_dir, run_registered, text, wait_until};

const PG_TRACES: &str = "
CREATE TABLE traces (
    id         text PRIMARY KEY,
    project_id text NOT NULL,
    name       varchar(200),
    created_at timestamptz NOT NULL,
    input      jsonb,
    tags       text[],
    scores     int8[],
    latency    float8,
    cost       numeric(12, 4),
    is_public  boolean NOT NULL,
    day        date
)";

const CH_TRACES: &str = "
CREATE TABLE traces (
    id String, project_id String, name Nullable(String), created_at DateTime, input Nullable(String),
    tags Array(Nullable(String)), scores Array(Nullable(Int64)), latency Nullable(Float64), cost Nullable(Float64),
    is_public UInt8, day Nullable(Date)
) ENGINE = ReplacingMergeTree ORDER BY id";

/// `rows` traces: unicode in ids and names, NULLs in every nullable column, arrays with NULL elements, and
/// 1,000 rows sharing each `created_at`.
fn insert_traces(rows: u32) -> String {
    format!(
        "INSERT INTO traces
         SELECT 'tr-' || lpad(g::text, 7, '0') || CASE WHEN g % 3 = 0 THEN '-é' ELSE '' END,
                'p' || (g % 5),
                CASE WHEN g % 7 = 0 THEN NULL ELSE 'naïve 名前 ' || g END,
                timestamptz '2024-10-24 12:00:00+00' + (g / 1000) * interval '1 second',
                CASE WHEN g % 11 = 0 THEN NULL ELSE jsonb_build_object('g', g, 'text', 'ünïcödé ✓ \"q\" ' || g) END,
                CASE WHEN g % 17 = 0 THEN NULL ELSE ARRAY['a' || g, NULL, 'b\tc'] END,
                ARRAY[g::bigint, NULL],
                CASE WHEN g % 13 = 0 THEN NULL ELSE g * 0.5 END,
                g * 0.25,
                g % 2 = 0,
                CASE WHEN g % 19 = 0 THEN NULL ELSE date '2024-01-01' + g % 100 END
         FROM generate_series(1, {rows}) g"
    )
}

/// Every row of both sides, as comparable text fields (large values as md5), sorted by id.
async fn both_sides(
    pool: &sqlx::PgPool,
    ch: &TestClickHouse,
) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let pg_rows: Vec<(String,)> = sqlx::query_as(
        "SELECT concat_ws(E'\\x1f', id, project_id, coalesce(name, 'NULL'),
                extract(epoch FROM created_at)::bigint::text, coalesce(md5(input::text), 'NULL'),
                coalesce(array_to_string(tags, '|', 'NULL'), ''), array_to_string(scores, '|', 'NULL'),
                coalesce(latency::text, 'NULL'), coalesce((cost * 4)::bigint::text, 'NULL'),
                is_public::int::text, coalesce(day::text, 'NULL'))
         FROM traces",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut pg: Vec<Vec<String>> = pg_rows
        .into_iter()
        .map(|(row,)| row.split('\u{1f}').map(str::to_owned).collect())
        .collect();
    let mut clickhouse = ch
        .client
        .query_rows(
            "SELECT id, project_id, ifNull(name, 'NULL'), toString(toUInt32(created_at)),
                    ifNull(lower(hex(MD5(input))), 'NULL'),
                    arrayStringConcat(arrayMap(x -> ifNull(x, 'NULL'), tags), '|'),
                    arrayStringConcat(arrayMap(x -> ifNull(toString(x), 'NULL'), scores), '|'),
                    ifNull(toString(latency), 'NULL'), ifNull(toString(toInt64(cost * 4)), 'NULL'),
                    toString(is_public), ifNull(toString(day), 'NULL')
             FROM traces FINAL",
        )
        .await
        .unwrap();
    pg.sort();
    clickhouse.sort();
    (pg, clickhouse)
}

fn copy_definition(key: &str, args: &str) -> String {
    format!(
        "kind = \"copy\"\nfrom = {{ store = \"postgres\", table = \"traces\", key = {key} }}\n\
         to = {{ store = \"clickhouse\", table = \"traces\" }}\n[args]\n{args}\n"
    )
}

/// A test's own Postgres and ClickHouse databases: `rows` traces in Postgres, an empty ClickHouse table created by
/// `ch_table`.
struct Traces {
    db: TestDb,
    ch: TestClickHouse,
    pool: sqlx::PgPool,
}

impl Traces {
    async fn create(test: &str, rows: u32, ch_table: &str) -> Traces {
        let db = TestDb::create(test).await;
        let ch = TestClickHouse::create(test).await;
        let pool = db.pool().await;
        sqlx::query(PG_TRACES).execute(&pool).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(insert_traces(rows)))
            .execute(&pool)
            .await
            .unwrap();
        ch.exec(ch_table).await;
        Traces { db, ch, pool }
    }

    /// Runs `sql` on the Postgres side.
    async fn pg(&self, sql: &str) {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// Makes the `input` of the traces `ids` (an SQL list) a 20 MB JSON value.
    async fn make_20_mb(&self, ids: &str) {
        self.pg(&format!(
            "UPDATE traces SET input = jsonb_build_object('blob', (
                 SELECT string_agg(md5(traces.id || i), '') FROM generate_series(1, 20 * 32768) i))
             WHERE id IN ({ids})"
        ))
        .await;
    }

    /// Registers `definition` as `name`, runs a worker until nothing is left, and returns the connection and the
    /// migration's record.
    async fn run(&self, name: &str, definition: &str) -> (Connected, MigrationRecord) {
        self.db.define(name, definition);
        let connected = self.db.connect_with_clickhouse(&self.ch.url).await;
        register_dir(&connected, &self.db.migrations(), &builtin_registry()).await;
        run_registered(&connected, "w1").await;
        let record = connected.control.get(name).await.unwrap();
        (connected, record)
    }

    /// Asserts that ClickHouse holds exactly the Postgres rows, and how many.
    async fn assert_exact(&self, rows: usize) {
        let (pg, clickhouse) = both_sides(&self.pool, &self.ch).await;
        assert_eq!(clickhouse.len(), rows);
        let differing: Vec<_> = pg
            .iter()
            .zip(&clickhouse)
            .filter(|(p, c)| p != c)
            .take(2)
            .collect();
        assert!(
            differing.is_empty(),
            "the copy differs from the source: {differing:?}"
        );
    }
}

fn assert_finished(record: &MigrationRecord) {
    assert_eq!(
        record.status,
        Status::Finished,
        "{:?}",
        record.failed_reason
    );
}

/// Every row arrives exactly — NULLs, unicode, arrays with NULL elements, equal timestamps, and two 20 MB rows
/// that exceed the byte budget and so travel alone.
#[tokio::test]
async fn a_copy_moves_every_row_exactly_including_nulls_unicode_arrays_and_20_mb_rows() {
    let traces = Traces::create("copy_exact", 5_000, CH_TRACES).await;
    // tr-0002492's name is NULL: its row comes flagged as holding a large value, with NULL for the large `input`
    // and for `name`, and only `input` may be read in slices.
    traces.make_20_mb("'tr-0002492', 'tr-0002501'").await;
    let name = "20241024_1730_copy_traces";
    let (connected, record) = traces
        .run(
            name,
            &copy_definition("[\"id\"]", "batchSize = 700\nmaxBatchBytes = 8388608"),
        )
        .await;

    assert_finished(&record);
    assert_eq!(record.rows_done, 5_000);
    traces.assert_exact(5_000).await;
    let batches = connected.control.batches(name, 100).await.unwrap();
    assert!(
        batches
            .iter()
            .any(|b| b.rows == 1 && b.bytes > 20 * 1024 * 1024),
        "a 20 MB row travels alone: {:?}",
        batches
            .iter()
            .map(|b| (b.rows, b.bytes))
            .collect::<Vec<_>>()
    );
    assert!(batches.iter().all(|b| b.rows <= 700));
}

/// A key range cannot close at the byte budget (its rows come in heap order), so when `batchSize` rows outgrow
/// `maxBatchBytes` the first range is read again in key order up to the budget, and every later range is cut to
/// the rows that fit three quarters of it at the size just measured — instead of the whole copy turning to key
/// order, as adaptive batch sizes past the budget once made it do. The copy is exact.
#[tokio::test]
async fn key_ranges_are_cut_to_the_rows_that_fit_max_batch_bytes_and_the_copy_is_exact() {
    let traces = Traces::create("copy_range_budget", 3_000, CH_TRACES).await;
    traces
        .pg("UPDATE traces SET input = jsonb_build_object('pad', repeat('x', 2000) || id)")
        .await;
    traces.pg("VACUUM ANALYZE traces").await;
    let name = "20241024_1730_copy_traces";
    let budget: i64 = 1024 * 1024;
    let (connected, record) = traces
        .run(
            name,
            &copy_definition(
                "[\"id\"]",
                &format!("batchSize = 1000\nmaxBatchBytes = {budget}"),
            ),
        )
        .await;

    assert_finished(&record);
    traces.assert_exact(3_000).await;
    let mut batches = connected.control.batches(name, 100).await.unwrap();
    batches.sort_by_key(|b| b.started_at);
    let sizes: Vec<(i64, i64)> = batches.iter().map(|b| (b.rows, b.bytes)).collect();
    assert!(sizes.len() >= 5, "several batches: {sizes:?}");
    let (first, ranges) = (sizes[0], &sizes[1..sizes.len() - 1]);
    assert!(
        first.1 > budget * 9 / 10 && first.1 <= budget && first.0 < 1000,
        "the first range outgrew the budget and was read again in key order, up to it: {sizes:?}"
    );
    assert!(
        ranges
            .iter()
            .all(|&(_, bytes)| bytes > budget * 6 / 10 && bytes < budget * 85 / 100),
        "later batches are whole ranges of the rows that fit three quarters of the budget: {sizes:?}"
    );
}

/// A composite key whose first column repeats 1,000 times per value (the original system's endless loop) walks
/// to the end with batches smaller than a group of equal timestamps.
#[tokio::test]
async fn a_composite_key_with_thousands_of_equal_timestamps_copies_every_row_and_terminates() {
    let ch_table = CH_TRACES.replace("ORDER BY id", "ORDER BY (created_at, id)");
    let traces = Traces::create("copy_equal_ts", 3_000, &ch_table).await;
    traces
        .pg("CREATE UNIQUE INDEX traces_created_id ON traces (created_at, id)")
        .await;
    let (_, record) = traces
        .run(
            "20241024_1730_copy_traces",
            &copy_definition("[\"created_at\", \"id\"]", "batchSize = 300"),
        )
        .await;
    assert_finished(&record);
    traces.assert_exact(3_000).await;
}

/// A worker killed with SIGKILL in the middle of a copy is taken over by another worker after its lease expires;
/// the result is exact and, after deduplication, has no duplicate.
#[tokio::test]
async fn sigkill_mid_copy_then_resume_leaves_an_exact_copy_without_duplicates() {
    let traces = Traces::create("copy_sigkill", 4_000, CH_TRACES).await;
    let (db, ch) = (&traces.db, &traces.ch);
    db.define(
        "20241024_1730_copy_traces",
        &copy_definition("[\"id\"]", "batchSize = 100\nsleepMs = 20"),
    );
    let env = [
        ("CLICKHOUSE_URL", ch.url.as_str()),
        ("BGMIGRATE_LEASE_TTL", "2s"),
        ("BGMIGRATE_HEARTBEAT", "500ms"),
        ("BGMIGRATE_POLL", "200ms"),
    ];
    let mut first = db
        .command(&["worker"], &env)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let connected = db.connect_with_clickhouse(&ch.url).await;
    wait_until(
        "the first worker copied some batches",
        Duration::from_secs(60),
        || async {
            connected
                .control
                .get("20241024_1730_copy_traces")
                .await
                .is_ok_and(|r| r.rows_done >= 1_000)
        },
    )
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let before = connected
        .control
        .get("20241024_1730_copy_traces")
        .await
        .unwrap();
    assert_eq!(before.status, Status::Running, "killed mid-copy");
    assert!(before.rows_done < 4_000, "killed before the end");

    let out = db.cli_with_env(&["worker", "--exit-when-done"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let record = connected
        .control
        .get("20241024_1730_copy_traces")
        .await
        .unwrap();
    assert_eq!(
        record.status,
        Status::Finished,
        "{:?}",
        record.failed_reason
    );
    // Deduplicated at read time (FINAL) rather than by OPTIMIZE ... FINAL, which a busy server may refuse while
    // background merges run.
    assert_eq!(ch.value("SELECT count() FROM traces FINAL").await, "4000");
    assert_eq!(ch.value("SELECT uniqExact(id) FROM traces").await, "4000");
    traces.assert_exact(4_000).await;
}

/// Two workers copy one table in key ranges (`parallelism = 2`): both walk ranges, every range ends done, and the
/// copy is exact — no row missing, none left twice once deduplicated.
#[tokio::test]
async fn two_workers_copy_in_key_ranges_and_the_copy_is_exact() {
    let traces = Traces::create("copy_parallel", 6_000, CH_TRACES).await;
    let definition = copy_definition("[\"id\"]", "batchSize = 200\nsleepMs = 10\nparallelism = 2");
    two_workers_copy_exactly(&traces, &definition, 6_000).await;
}

/// `order = "physical"` splits the heap into page ranges (`parallelism = 2`): two workers each walk a run of pages,
/// and every row arrives exactly once — rows deleted before the copy leave holes the ranges skip.
#[tokio::test]
async fn two_workers_copy_in_page_ranges_and_the_copy_is_exact() {
    let traces = Traces::create("copy_parallel_pages", 6_400, CH_TRACES).await;
    traces
        .pg("DELETE FROM traces WHERE id >= 'tr-0003000' AND id < 'tr-0003400'")
        .await;
    traces.pg("VACUUM ANALYZE traces").await;
    let definition = "kind = \"copy\"\n\
         from = { store = \"postgres\", table = \"traces\", key = [\"id\"], order = \"physical\" }\n\
         to = { store = \"clickhouse\", table = \"traces\" }\n[args]\nbatchSize = 200\nsleepMs = 10\nparallelism = 2\n";
    let ranges = two_workers_copy_exactly(&traces, definition, 6_000).await;
    assert!(
        ranges.iter().all(|r| r.state["ctid"].is_string()),
        "page ranges carry ctid checkpoints: {ranges:?}"
    );
}

/// Runs `definition` with two workers sharing it and checks that both walked ranges, every range ended done, and
/// ClickHouse holds exactly the `rows` of the source. Returns the ranges.
async fn two_workers_copy_exactly(
    traces: &Traces,
    definition: &str,
    rows: usize,
) -> Vec<bgmigrate::control::RangeRecord> {
    let (db, ch) = (&traces.db, &traces.ch);
    let name = "20241024_1730_copy_traces";
    db.define(name, definition);
    let (_, ranges) = db.two_workers_finish_in_ranges(&ch.url, name).await;
    assert_eq!(
        ch.value("SELECT count() FROM traces FINAL").await,
        rows.to_string()
    );
    traces.assert_exact(rows).await;
    ranges
}

/// `verify = true` in key ranges: each range, once copied, compares its own keys on both sides — from its start up
/// to its end — so the ranges together verify every row once and the copy finishes.
#[tokio::test]
async fn two_workers_copy_and_verify_in_key_ranges() {
    let traces = Traces::create("copy_parallel_verify", 6_000, CH_TRACES).await;
    let definition = format!(
        "verify = true\n{}",
        copy_definition("[\"id\"]", "batchSize = 200\nsleepMs = 10\nparallelism = 2")
    );
    let ranges = two_workers_copy_exactly(&traces, &definition, 6_000).await;
    let verified: u64 = ranges
        .iter()
        .map(|r| {
            assert_eq!(r.state["verify"]["mismatched"], 0, "{r:?}");
            r.state["verify"]["rows"].as_u64().expect("verified rows")
        })
        .sum();
    assert_eq!(verified, 6_000, "every row verified once: {ranges:?}");
}

/// A physical-order copy that verifies runs as one stream (verify compares key ranges, its ranges are pages):
/// `parallelism` above 1 fails it with a message naming the arg and what to set instead, before any row moves.
#[tokio::test]
async fn parallelism_with_verify_in_physical_order_fails_naming_the_arg() {
    let traces = Traces::create("copy_parallel_verify_physical", 100, CH_TRACES).await;
    let (db, ch) = (&traces.db, &traces.ch);
    let name = "20241024_1730_copy_traces";
    db.define(
        name,
        "kind = \"copy\"\nverify = true\n\
         from = { store = \"postgres\", table = \"traces\", key = [\"id\"], order = \"physical\" }\n\
         to = { store = \"clickhouse\", table = \"traces\" }\n[args]\nparallelism = 2\n",
    );
    let env = [("CLICKHOUSE_URL", ch.url.as_str())];
    let out = db.cli_with_env(&["worker", "--exit-when-done"], &env);
    assert!(!out.status.success());
    let record = db
        .connect_with_clickhouse(&ch.url)
        .await
        .control
        .get(name)
        .await
        .unwrap();
    assert_eq!(record.status, Status::Failed);
    let reason = record.failed_reason.unwrap_or_default();
    assert!(
        reason.contains("args.parallelism above 1 with verify = true needs a copy in key order"),
        "{reason}"
    );
    assert_eq!(
        ch.value("SELECT count() FROM traces").await,
        "0",
        "no row moved"
    );
}

/// ClickHouse going away mid-copy makes the batch retry with backoff, then fail with a reason naming ClickHouse;
/// once it is back, `retry` resumes from the checkpoint (rows already copied are not sent again).
#[tokio::test]
async fn clickhouse_stopped_mid_copy_retries_then_fails_with_a_reason_and_retry_resumes() {
    let mut server = PrivateServer::start();
    let db = TestDb::create("copy_ch_down").await;
    let ch = TestClickHouse::create_on(&server.url(), "copy_ch_down").await;
    let pool = db.pool().await;
    sqlx::query(PG_TRACES).execute(&pool).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(insert_traces(3_000)))
        .execute(&pool)
        .await
        .unwrap();
    ch.exec(CH_TRACES).await;
    let name = "20241024_1730_copy_traces";
    db.define(
        name,
        &copy_definition("[\"id\"]", "batchSize = 100\nsleepMs = 30"),
    );
    let connected = db.connect_with_clickhouse(&ch.url).await;
    register_dir(&connected, &db.migrations(), &builtin_registry()).await;
    let handle = Runner::new(
        connected.control.clone(),
        builtin_registry(),
        connected.stores.clone(),
        fast_config("w1"),
    )
    .spawn();
    wait_until(
        "some batches were copied",
        Duration::from_secs(60),
        || async {
            connected
                .control
                .get(name)
                .await
                .is_ok_and(|r| r.rows_done >= 500)
        },
    )
    .await;
    server.stop();
    handle.join().await.unwrap();
    let failed = connected.control.get(name).await.unwrap();
    assert_eq!(failed.status, Status::Failed);
    let reason = failed.failed_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("ClickHouse at 127.0.0.1:") && reason.contains("unreachable"),
        "{reason}"
    );
    let events = connected.control.events(name, 100).await.unwrap();
    let retries = events
        .iter()
        .filter(|e| e.kind == EventKind::BatchRetried.as_str())
        .count();
    assert_eq!(
        retries, 3,
        "retried with backoff before failing: {events:?}"
    );

    server.resume();
    let out = db.cli_with_env(&["retry", name], &[("CLICKHOUSE_URL", &ch.url)]);
    assert!(out.status.success(), "{}", text(&out));
    run_registered(&connected, "w2").await;
    let record = connected.control.get(name).await.unwrap();
    assert_eq!(
        record.status,
        Status::Finished,
        "{:?}",
        record.failed_reason
    );
    let raw: u64 = ch
        .value("SELECT count() FROM traces")
        .await
        .parse()
        .unwrap();
    assert!(
        raw <= 3_000 + 100,
        "resumed from the checkpoint: at most one batch re-sent, but {raw} rows were inserted"
    );
    let (pg, clickhouse) = both_sides(&pool, &ch).await;
    assert!(pg == clickhouse, "the copy differs from the source");
}

/// A column whose Postgres type cannot go into its ClickHouse column fails validation with a message naming the
/// column and both types, before any row moves.
#[tokio::test]
async fn an_unmappable_column_fails_validation_naming_column_and_types_before_any_row_moves() {
    let db = TestDb::create("copy_bad_type").await;
    let ch = TestClickHouse::create("copy_bad_type").await;
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE payments (id text PRIMARY KEY, amount bigint NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO payments SELECT 'p' || g, g FROM generate_series(1, 100) g")
        .execute(&pool)
        .await
        .unwrap();
    ch.exec(
        "CREATE TABLE payments (id String, amount Int32) ENGINE = ReplacingMergeTree ORDER BY id",
    )
    .await;
    ch.exec("CREATE TABLE payments_plain (id String, amount Int64) ENGINE = MergeTree ORDER BY id")
        .await;
    db.define(
        "20240101_0001_bad_type",
        "kind = \"copy\"\nfrom = { store = \"postgres\", table = \"payments\", key = [\"id\"] }\n\
         to = { store = \"clickhouse\", table = \"payments\" }\n",
    );
    db.define(
        "20240101_0002_not_replacing",
        "kind = \"copy\"\nfrom = { store = \"postgres\", table = \"payments\", key = [\"id\"] }\n\
         to = { store = \"clickhouse\", table = \"payments_plain\" }\n",
    );
    let connected = db.connect_with_clickhouse(&ch.url).await;
    register_dir(&connected, &db.migrations(), &builtin_registry()).await;
    run_registered(&connected, "w1").await;

    let bad_type = connected
        .control
        .get("20240101_0001_bad_type")
        .await
        .unwrap();
    assert_eq!(bad_type.status, Status::Failed);
    assert_eq!(
        bad_type.failed_reason.as_deref(),
        Some(
            "validation failed: column amount: Postgres type bigint cannot be copied into ClickHouse type Int32 \
             (allowed: Int64..Int256, UInt64..UInt256, Decimal, Enum, FixedString, String; each may be Nullable)"
        )
    );
    let plain = connected
        .control
        .get("20240101_0002_not_replacing")
        .await
        .unwrap();
    assert_eq!(plain.status, Status::Failed);
    assert!(
        plain
            .failed_reason
            .as_deref()
            .unwrap_or_default()
            .contains("needs a ReplacingMergeTree"),
        "{:?}",
        plain.failed_reason
    );
    assert_eq!(ch.value("SELECT count() FROM payments").await, "0");
    assert_eq!(ch.value("SELECT count() FROM payments_plain").await, "0");
    assert_eq!(bad_type.rows_done + plain.rows_done, 0);
}

/// With `verify = true` the copy walks the source a second time and compares every key range on both sides —
/// NULLs, unicode, arrays and a 20 MB row included — then finishes, its progress counting both passes.
#[tokio::test]
async fn a_verified_copy_compares_every_key_range_on_both_sides_and_finishes() {
    let traces = Traces::create("copy_verified", 3_000, CH_TRACES).await;
    traces.make_20_mb("'tr-0001500'").await;
    let definition = copy_definition("[\"id\"]", "batchSize = 700\nmaxBatchBytes = 8388608");
    let (_, record) = traces
        .run(
            "20241024_1730_copy_traces_verified",
            &format!("verify = true\n{definition}"),
        )
        .await;

    assert_finished(&record);
    let verify = &record.state["verify"];
    assert_eq!(verify["rows"], 3_000, "{}", record.state);
    assert_eq!(verify["mismatched"], 0, "{}", record.state);
    assert!(verify["ranges"].as_u64().unwrap() >= 5, "{}", record.state);
    assert_eq!(record.rows_done, 6_000, "both passes count as progress");
    traces.assert_exact(3_000).await;
}

/// A row that differs in ClickHouse (here a newer version already in the target, which wins the
/// ReplacingMergeTree's deduplication over the copied row) is found by verify: the migration fails naming the key
/// range, and the checkpoint lists it for `show`.
#[tokio::test]
async fn verify_names_the_key_range_that_differs_and_fails_the_migration() {
    let versioned = CH_TRACES.replace(
        "\n) ENGINE = ReplacingMergeTree ORDER BY id",
        ", ver UInt64 DEFAULT 0\n) ENGINE = ReplacingMergeTree(ver) ORDER BY id",
    );
    assert_ne!(versioned, CH_TRACES);
    let traces = Traces::create("copy_verify_mismatch", 2_000, &versioned).await;
    traces
        .ch
        .exec(
            "INSERT INTO traces (id, project_id, created_at, is_public, ver)
             VALUES ('tr-0001900', 'tampered', '2024-10-24 12:00:01', 0, 1)",
        )
        .await;
    let definition = copy_definition("[\"id\"]", "batchSize = 500");
    let (_, record) = traces
        .run(
            "20241024_1730_copy_traces_verify_mismatch",
            &format!("verify = true\n{definition}"),
        )
        .await;

    assert_eq!(record.status, Status::Failed);
    let reason = record.failed_reason.clone().unwrap_or_default();
    assert!(
        reason.contains(
            "verify: 1 of 4 key ranges differ between Postgres and ClickHouse table traces"
        ) && reason.contains("500 rows on both sides, checksums differ"),
        "{reason}"
    );
    let mismatch = &record.state["verify"]["mismatches"][0];
    let (from, to) = (mismatch["from"][0].as_str(), mismatch["to"][0].as_str());
    assert!(
        from.is_some_and(|f| f <= "tr-0001900") && to.is_some_and(|t| t >= "tr-0001900"),
        "the listed range holds the tampered key: {mismatch}"
    );
    assert_eq!(
        traces.ch.value("SELECT count() FROM traces FINAL").await,
        "2000",
        "every row was copied before verify ran"
    );
}

/// `order = "physical"` walks the heap a window of pages per batch with a `ctid` cursor: every row arrives exactly
/// (deleted rows leave holes, 20 MB rows close a window early and travel alone), batches keep to `batchSize`, and
/// the verify pass — which walks by key — finds both sides equal.
#[tokio::test]
async fn a_physical_order_copy_moves_every_row_exactly_window_by_window() {
    let traces = Traces::create("copy_physical", 5_000, CH_TRACES).await;
    traces
        .pg("DELETE FROM traces WHERE id BETWEEN 'tr-0001000' AND 'tr-0001800'")
        .await;
    traces.make_20_mb("'tr-0002500', 'tr-0004000'").await;
    traces.pg("VACUUM ANALYZE traces").await;
    let name = "20241024_1730_copy_traces_physical";
    let (connected, record) = traces
        .run(
            name,
            "kind = \"copy\"\nverify = true\n\
             from = { store = \"postgres\", table = \"traces\", key = [\"id\"], order = \"physical\" }\n\
             to = { store = \"clickhouse\", table = \"traces\" }\n[args]\nbatchSize = 700\nmaxBatchBytes = 8388608\n",
        )
        .await;

    assert_finished(&record);
    let source_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM traces")
        .fetch_one(&traces.pool)
        .await
        .unwrap();
    assert!(
        record.state["ctid"]
            .as_str()
            .is_some_and(|c| c.starts_with('(')),
        "{}",
        record.state
    );
    assert_eq!(record.state["verify"]["rows"], source_rows);
    assert_eq!(record.state["verify"]["mismatched"], 0);
    traces.assert_exact(source_rows as usize).await;
    let batches = connected.control.batches(name, 1_000).await.unwrap();
    assert!(batches.iter().all(|b| b.rows <= 700));
    assert!(
        batches
            .iter()
            .any(|b| b.rows == 1 && b.bytes > 20 * 1024 * 1024),
        "a 20 MB row travels alone"
    );
}

/// A physical-order copy of a table that is written while it runs: rows updated or inserted into pages the walk has
/// already passed (the space that deleted rows left at the table's start) are not seen by the walk, and the
/// catch-up pass after it copies them, in one stream (as its last batch: exactly the rows written since the walk
/// began) and in page ranges (after every range is done).
#[tokio::test]
async fn a_physical_order_copy_of_a_table_written_meanwhile_catches_up_with_rows_moved_behind_it() {
    let traces = Traces::create("copy_physical_live", 6_000, CH_TRACES).await;
    let (connected, name) = copy_while_rows_move_behind_the_walk(&traces, 1).await;
    let batches = connected.control.batches(name, 1_000).await.unwrap();
    let last = batches.first().expect("batches (newest first)");
    assert!(last.state["walked"] == true, "{:?}", last.state);
    // At least those rows: the horizon is the oldest transaction running anywhere on the server, so another test's
    // transaction open since before this table was filled makes the pass copy its first rows again too.
    assert!(
        last.rows >= MOVED_ROWS,
        "the catch-up batch copies the rows written since the walk began: {batches:?}"
    );
}

#[tokio::test]
async fn a_physical_order_copy_in_page_ranges_catches_up_after_every_range_is_done() {
    let traces = Traces::create("copy_physical_live_ranges", 6_000, CH_TRACES).await;
    let (connected, name) = copy_while_rows_move_behind_the_walk(&traces, 2).await;
    let ranges = connected.control.ranges(name).await.unwrap();
    assert!(
        ranges.len() >= 2
            && ranges
                .iter()
                .all(|r| r.done && r.state["since"]["xid"].is_u64()),
        "page ranges, each with the walk's horizon: {ranges:?}"
    );
    let events = traces.db.events(name).await;
    let kinds: Vec<&str> = events.iter().map(|(kind, _, _)| kind.as_str()).collect();
    let closing = kinds.iter().position(|k| *k == "ranges_done");
    let finished = kinds.iter().position(|k| *k == "finished");
    assert!(
        closing.is_some() && closing < finished,
        "the closing step is announced before the migration finishes: {kinds:?}"
    );
}

/// `order = "auto"`, the default, reads the planner's statistics when a copy starts: a table whose key is scattered
/// over its heap (here the same rows inserted in md5 order) is walked in heap order, one whose key follows the heap
/// by key; both copies are exact.
#[tokio::test]
async fn the_default_order_walks_a_scattered_key_in_heap_order_and_a_sequential_one_by_key() {
    let traces = Traces::create("copy_auto_order", 100_000, CH_TRACES).await;
    traces
        .pg("CREATE TABLE shuffled (LIKE traces INCLUDING ALL)")
        .await;
    traces
        .pg("INSERT INTO shuffled SELECT * FROM traces ORDER BY md5(id)")
        .await;
    traces.pg("ANALYZE traces").await;
    traces.pg("ANALYZE shuffled").await;
    traces
        .ch
        .exec(&CH_TRACES.replace("CREATE TABLE traces", "CREATE TABLE shuffled"))
        .await;
    let definition = |table: &str| {
        format!(
            "kind = \"copy\"\nfrom = {{ store = \"postgres\", table = \"{table}\", key = [\"id\"] }}\n\
             to = {{ store = \"clickhouse\", table = \"{table}\" }}\n"
        )
    };
    traces
        .db
        .define("20241024_1731_copy_shuffled", &definition("shuffled"));
    let (connected, sequential) = traces
        .run("20241024_1730_copy_traces", &definition("traces"))
        .await;
    let scattered = connected
        .control
        .get("20241024_1731_copy_shuffled")
        .await
        .unwrap();
    assert_finished(&sequential);
    assert_finished(&scattered);
    assert!(
        sequential.state.get("cursor").is_some() && sequential.state.get("ctid").is_none(),
        "a key that follows the heap is walked by key: {}",
        sequential.state
    );
    assert!(
        scattered.state["ctid"].is_string() && scattered.state["since"].is_object(),
        "a scattered key is walked in heap order: {}",
        scattered.state
    );
    traces.assert_exact(100_000).await;
    assert_eq!(
        traces.ch.value("SELECT count() FROM shuffled FINAL").await,
        "100000"
    );
}

/// The catch-up pass copies only the rows written since the walk's horizon, unless it cannot trust it: the table
/// was rewritten (another relfilenode), the walk began without one (an earlier version), or the horizon is over a
/// billion transactions old (ids compare modulo 2^32). Each case starts from a walk already at the table's end.
#[tokio::test]
async fn the_catch_up_pass_copies_every_row_when_it_cannot_trust_the_walks_horizon() {
    let traces = Traces::create("copy_catch_up_horizon", 2_000, CH_TRACES).await;
    // The next transaction id: every row of the table is older (the engine's own horizon, the oldest transaction
    // running on the whole server, can be older than the table when other tests run).
    let (xid, filenode): (i64, i64) = sqlx::query_as(
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8 % 4294967296, \
         pg_relation_filenode('traces')::int8",
    )
    .fetch_one(&traces.pool)
    .await
    .unwrap();
    // A horizon more than 2^31 transactions old compares as the future: `age()` is negative.
    let wrapped = (xid + 1_000) % 4_294_967_296;
    let cases = [
        (
            "20241024_1730_fresh",
            json!({"xid": xid, "filenode": filenode}),
            0,
        ),
        (
            "20241024_1731_rewritten",
            json!({"xid": xid, "filenode": filenode + 1}),
            2_000,
        ),
        (
            "20241024_1732_wrapped",
            json!({"xid": wrapped, "filenode": filenode}),
            2_000,
        ),
        ("20241024_1733_no_horizon", serde_json::Value::Null, 2_000),
    ];
    let definition = "kind = \"copy\"\n\
         from = { store = \"postgres\", table = \"traces\", key = [\"id\"], order = \"physical\" }\n\
         to = { store = \"clickhouse\", table = \"traces\" }\n";
    for (name, _, _) in &cases {
        traces.db.define(name, definition);
    }
    let connected = traces.db.connect_with_clickhouse(&traces.ch.url).await;
    register_dir(&connected, &traces.db.migrations(), &builtin_registry()).await;
    for (name, since, _) in &cases {
        let mut state = json!({"ctid": "(100000,0)", "walked": true});
        if !since.is_null() {
            state["since"] = since.clone();
        }
        sqlx::query("UPDATE background_migrations SET state = $1 WHERE name = $2")
            .bind(&state)
            .bind(name)
            .execute(&traces.pool)
            .await
            .unwrap();
    }
    run_registered(&connected, "w1").await;
    for (name, _, rows) in cases {
        let record = connected.control.get(name).await.unwrap();
        assert_finished(&record);
        let batches = connected.control.batches(name, 10).await.unwrap();
        assert_eq!(batches.len(), 1, "{name}: the catch-up batch alone");
        assert_eq!(batches[0].rows, rows, "{name}: rows copied again");
    }
    traces.assert_exact(2_000).await;
}

/// Rows the live-copy tests update (200) and insert (100) while the walk runs.
const MOVED_ROWS: i64 = 300;

/// Deletes the table's first 600 rows (room at its start, behind the walk), copies it in physical order in
/// `parallelism` page ranges with one runner, and once the walk (its first range) is past that room, updates 200
/// rows at the table's end to larger values and inserts 100 rows: at least some land behind the walk. Then checks
/// the copy is exact.
async fn copy_while_rows_move_behind_the_walk(
    traces: &Traces,
    parallelism: u32,
) -> (Connected, &'static str) {
    traces
        .pg("DELETE FROM traces WHERE id < 'tr-0000601'")
        .await;
    traces.pg("VACUUM ANALYZE traces").await;
    let room: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT (ctid::text::point)[0]) FROM traces WHERE id < 'tr-0000700'",
    )
    .fetch_one(&traces.pool)
    .await
    .unwrap();
    let name = "20241024_1730_copy_traces_live";
    traces.db.define(
        name,
        &format!(
            "kind = \"copy\"\n\
             from = {{ store = \"postgres\", table = \"traces\", key = [\"id\"], order = \"physical\" }}\n\
             to = {{ store = \"clickhouse\", table = \"traces\" }}\n\
             [args]\nbatchSize = 200\nsleepMs = 150\nparallelism = {parallelism}\n"
        ),
    );
    let connected = traces.db.connect_with_clickhouse(&traces.ch.url).await;
    register_dir(&connected, &traces.db.migrations(), &builtin_registry()).await;
    let runner = common::spawn_runner(&connected, "w1");
    let first_walk_page = |connected: &Connected| {
        let control = connected.control.clone();
        async move {
            let ranges = control.ranges(name).await.unwrap();
            let state = match ranges.iter().find(|r| r.no == 0) {
                Some(first) => first.state.clone(),
                None => control.get(name).await.unwrap().state,
            };
            state["ctid"]
                .as_str()
                .and_then(|ctid| {
                    ctid.trim_matches(['(', ')'])
                        .split(',')
                        .next()?
                        .parse::<i64>()
                        .ok()
                })
                .unwrap_or(0)
        }
    };
    wait_until(
        "the walk is past the room at the start",
        Duration::from_secs(60),
        || async { first_walk_page(&connected).await > room + 10 },
    )
    .await;
    traces
        .pg(
            "UPDATE traces SET input = jsonb_build_object('moved', repeat('x', 100)) \
             WHERE id > 'tr-0005800' AND id < 'tr-0006001'",
        )
        .await;
    traces
        .pg(&format!(
            "INSERT INTO traces (id, project_id, created_at, is_public, scores) \
             SELECT 'tr-9' || lpad(g::text, 6, '0'), 'late', timestamptz '2024-10-25 00:00:00+00', true, '{{}}' FROM generate_series(1, {}) g",
            MOVED_ROWS - 200
        ))
        .await;
    let behind: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM traces WHERE (ctid::text::point)[0] < $1 \
         AND (id > 'tr-0005800' OR id LIKE 'tr-9%')",
    )
    .bind(room as f64)
    .fetch_one(&traces.pool)
    .await
    .unwrap();
    assert!(
        first_walk_page(&connected).await > room,
        "the walk had passed the room"
    );
    assert!(behind >= 30, "rows landed behind the walk: {behind}");
    runner.join().await.expect("runner");
    let record = connected.control.get(name).await.unwrap();
    assert_finished(&record);
    traces.assert_exact(6_000 - 600 + 100).await;
    (connected, name)
}

/// A verify batch of 55,000 keys (the default batch size is 100,000) is more than a ClickHouse query may name as
/// literals (`max_ast_elements`: 50,000), so the keys travel as an external table: an untouched copy verifies, and a
/// row changed near the end of the batch is found.
#[tokio::test]
async fn a_verify_batch_beyond_clickhouses_ast_limit_sends_its_keys_as_a_table() {
    let versioned = CH_TRACES
        .replace("CREATE TABLE traces", "CREATE TABLE traces_versioned")
        .replace(
            "\n) ENGINE = ReplacingMergeTree ORDER BY id",
            ", ver UInt64 DEFAULT 0\n) ENGINE = ReplacingMergeTree(ver) ORDER BY id",
        );
    let traces = Traces::create("copy_verify_chunks", 55_000, CH_TRACES).await;
    traces.ch.exec(&versioned).await;
    traces
        .ch
        .exec(
            "INSERT INTO traces_versioned (id, project_id, created_at, is_public, ver)
             VALUES ('tr-0054001', 'tampered', '2024-10-24 12:00:54', 1, 1)",
        )
        .await;
    let tampered = "kind = \"copy\"\nverify = true\n\
                    from = { store = \"postgres\", table = \"traces\", key = [\"id\"] }\n\
                    to = { store = \"clickhouse\", table = \"traces_versioned\" }\n";
    traces.db.define("20241024_1731_copy_tampered", tampered);
    let definition = copy_definition("[\"id\"]", "");
    let (connected, record) = traces
        .run(
            "20241024_1730_copy_untouched",
            &format!("verify = true\n{definition}"),
        )
        .await;

    assert_finished(&record);
    assert_eq!(record.state["verify"]["rows"], 55_000, "{}", record.state);
    assert_eq!(record.state["verify"]["ranges"], 1, "{}", record.state);
    assert_eq!(record.state["verify"]["mismatched"], 0, "{}", record.state);
    let tampered = connected
        .control
        .get("20241024_1731_copy_tampered")
        .await
        .unwrap();
    assert_eq!(tampered.status, Status::Failed);
    let reason = tampered.failed_reason.unwrap_or_default();
    assert!(
        reason.contains("verify: 1 of 1 key ranges differ")
            && reason.contains("55000 rows on both sides, checksums differ"),
        "{reason}"
    );
}
