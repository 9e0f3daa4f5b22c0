//! What batching costs on SQLite: a backfill of 1,000,000 rows (text key, ~300-byte rows) run by bgmigrate in
//! 10,000-row batches — each batch and its checkpoint one `BEGIN IMMEDIATE` transaction — beside the reference, one
//! plain `UPDATE` of the whole table, measured in the same run on a copy of the same file.
//!
//! `cargo bench --bench sqlite_backfill` (BENCH_ROWS overrides the row count).

use std::path::Path;
use std::time::{Duration, Instant};

use bgmigrate::config::{self, Connected, SQLITE_STORE};
use bgmigrate::store::SqlParam;
use bgmigrate::{Registration, Runner, RunnerConfig, builtin_registry};
use serde_json::json;

const BATCH: u64 = 10_000;

async fn open(path: &Path) -> Connected {
    config::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open")
}

async fn exec(connected: &Connected, sql: &str, params: &[SqlParam]) -> Duration {
    let store = connected.stores.sql(SQLITE_STORE).expect("store");
    let started = Instant::now();
    let mut tx = store.begin().await.expect("begin");
    tx.execute(sql, params).await.expect(sql);
    tx.commit().await.expect("commit");
    started.elapsed()
}

async fn fill(connected: &Connected, rows: u64) {
    exec(
        connected,
        "CREATE TABLE items (id text NOT NULL PRIMARY KEY, a integer NOT NULL, b integer NOT NULL, total integer,
                             payload text NOT NULL)",
        &[],
    )
    .await;
    exec(
        connected,
        "INSERT INTO items (id, a, b, payload)
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < $1)
         SELECT 'item-' || n, n, n * 3, printf('%.260c', 'x') FROM g",
        &[SqlParam::Int(rows as i64)],
    )
    .await;
}

async fn backfill(connected: &Connected) -> Duration {
    connected.control.ensure_schema().await.expect("schema");
    let registration = Registration {
        name: "0001_total".into(),
        script: "backfill".into(),
        params: json!({"store": SQLITE_STORE, "table": "items", "key": ["id"], "set": {"total": "a + b"}}),
        args: json!({ "batchSize": BATCH }),
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
    assert_eq!(summary.finished, ["0001_total"], "{summary:?}");
    started.elapsed()
}

/// Rounds of (reference, ours), alternating, each on fresh copies: one round on a shared 2-core machine moved the
/// ratio between 0.82 and 0.97, so the figure reported is the median round's.
const ROUNDS: usize = 3;

#[tokio::main]
async fn main() {
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ours, reference) = (dir.path().join("ours.db"), dir.path().join("reference.db"));
        for path in [&ours, &reference] {
            fill(&open(path).await, rows).await;
        }
        let plain = exec(
            &open(&reference).await,
            "UPDATE items SET total = a + b",
            &[],
        )
        .await;
        let batched = backfill(&open(&ours).await).await;
        let rate = |d: Duration| rows as f64 / d.as_secs_f64();
        let ratio = plain.as_secs_f64() / batched.as_secs_f64();
        println!(
            "sqlite backfill, {rows} rows, round {round}/{ROUNDS}: bgmigrate {BATCH}-row batches {:.2} s ({:.0} rows/s); reference one plain UPDATE {:.2} s ({:.0} rows/s); speed ratio {ratio:.2}",
            batched.as_secs_f64(),
            rate(batched),
            plain.as_secs_f64(),
            rate(plain),
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "sqlite backfill, {rows} rows: median speed ratio {:.2} over {ROUNDS} rounds (each: {})",
        ratios[ROUNDS / 2],
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
