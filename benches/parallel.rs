//! Parallel key ranges (`parallelism`): 1 vs 2 vs 4 workers on one migration, each beside its reference measured
//! in the same run on the same rows.
//!
//! ```text
//! cargo bench --bench parallel
//! BGMIGRATE_BENCH_ROWS=10000000 BGMIGRATE_BENCH_WORKERS=1,2 cargo bench --bench parallel
//! ```
//!
//! * **backfill**: `SET total = a + b` on a table with a random text key (~300-byte rows), against one plain
//!   `UPDATE` of an identical table. Each worker count gets its own freshly built, vacuumed table.
//! * **copy into ClickHouse** (random md5 keys, key order): against the raw pipe `psql COPY … TO STDOUT | curl
//!   INSERT … FORMAT TabSeparated` into an identical ClickHouse table.
//! * **clickhouse_rewrite** of a table of one partition (so N workers need key ranges inside it): against one
//!   plain `INSERT INTO … SELECT … FROM` of the whole table into an identical target.
//!
//! N workers are N runners in this process (each its own worker id and connections), with `parallelism = N` in
//! the migration's args; the first claims the migration and splits its key space, the others join. Environment:
//! `BGMIGRATE_BENCH_PG` (server URL without a database), `BGMIGRATE_BENCH_CH` (ClickHouse HTTP URL),
//! `BGMIGRATE_BENCH_ROWS` (default 1,000,000), `BGMIGRATE_BENCH_WORKERS` (default `1,2,4`),
//! `BGMIGRATE_BENCH_ONLY=backfill|copy|rewrite`, `BGMIGRATE_BENCH_BACKFILL_ORDER=key|physical` (the backfill's
//! `order`) and `BGMIGRATE_BENCH_COPY_ORDER=key|physical` (the copy's `from.order`), both default key.

use std::process::Command;
use std::time::{Duration, Instant};

use bgmigrate::{Registration, Runner, RunnerConfig, Status, builtin_registry};
use serde_json::{Value, json};

const DATABASE: &str = "bgm_bench_parallel";
const CH_TABLE: &str = "(id String, project_id String, payload String, latency Float64) \
                        ENGINE = ReplacingMergeTree ORDER BY id";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Runs `sql` with psql against database `db` of the bench server, failing loudly.
fn psql(server: &str, db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            &format!("{server}/{db}"),
            "-v",
            "ON_ERROR_STOP=1",
            "-Atqc",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql `{sql}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `sql` on ClickHouse over HTTP with curl, returning the answer.
fn clickhouse(ch: &str, sql: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--data-binary", sql, ch])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "clickhouse `{sql}`: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Registers `params` as migration `name` of `script` with `parallelism = workers`, runs `workers` runners until
/// it finishes, and returns how long that took.
async fn run_with_workers(
    url: &str,
    ch: Option<&str>,
    name: &str,
    script: &str,
    params: Value,
    workers: u64,
) -> Duration {
    let mut connected = bgmigrate::config::connect(url).await.expect("connect");
    if let Some(ch) = ch {
        connected = connected.with_clickhouse(Some(ch)).expect("clickhouse url");
    }
    connected.control.ensure_schema().await.expect("schema");
    let registration = Registration {
        name: name.to_owned(),
        script: script.to_owned(),
        params,
        args: json!({ "parallelism": workers }),
        depends_on: None,
    };
    connected
        .control
        .register(&[registration], &builtin_registry())
        .await
        .expect("register");
    let started = Instant::now();
    let handles: Vec<_> = (1..=workers)
        .map(|n| {
            Runner::new(
                connected.control.clone(),
                builtin_registry(),
                connected.stores.clone(),
                RunnerConfig {
                    worker_id: format!("bench-{n}"),
                    exit_when_done: true,
                    poll_interval: Duration::from_millis(100),
                    ..RunnerConfig::default()
                },
            )
            .spawn()
        })
        .collect();
    for handle in handles {
        handle.join().await.expect("runner");
    }
    let took = started.elapsed();
    let record = connected.control.get(name).await.expect("record");
    assert_eq!(
        record.status,
        Status::Finished,
        "{name}: {:?}",
        record.failed_reason
    );
    took
}

fn print_row(label: &str, rows: u64, took: Duration, reference: Duration) {
    let rate = rows as f64 / took.as_secs_f64();
    let ref_rate = rows as f64 / reference.as_secs_f64();
    println!(
        "  {label:<28} {:>8.2} s {:>10.0} rows/s   {:.2}x the reference",
        took.as_secs_f64(),
        rate,
        rate / ref_rate
    );
}

async fn backfill(server: &str, rows: u64, workers: &[u64], order: &str) {
    let table = |name: &str| {
        psql(server, DATABASE, &format!(
            "CREATE TABLE {name} (id text PRIMARY KEY, a int NOT NULL, b int NOT NULL, total int, pad text) \
             WITH (autovacuum_enabled = false);
             INSERT INTO {name} SELECT md5(g::text), g % 1000, g % 7, NULL, repeat('x', 250) FROM generate_series(1, {rows}) g"
        ));
        psql(server, DATABASE, &format!("VACUUM ANALYZE {name}"));
    };
    table("ref");
    psql(server, DATABASE, "CHECKPOINT");
    let started = Instant::now();
    psql(server, DATABASE, "UPDATE ref SET total = a + b");
    let reference = started.elapsed();
    println!(
        "backfill of {rows} rows (random text key, {order} order): one plain UPDATE {:.2} s ({:.0} rows/s)",
        reference.as_secs_f64(),
        rows as f64 / reference.as_secs_f64()
    );
    for &n in workers {
        let name = format!("ours_{n}");
        table(&name);
        psql(server, DATABASE, "CHECKPOINT");
        let params = json!({
            "store": "postgres", "table": name, "key": ["id"], "order": order, "set": {"total": "a + b"},
        });
        let took = run_with_workers(
            &format!("{server}/{DATABASE}"),
            None,
            &format!("backfill_{n}"),
            "backfill",
            params,
            n,
        )
        .await;
        let wrong = psql(
            server,
            DATABASE,
            &format!("SELECT count(*) FROM {name} WHERE total IS DISTINCT FROM a + b"),
        );
        assert_eq!(wrong, "0", "{name}: rows left wrong");
        print_row(&format!("bgmigrate, {n} worker(s)"), rows, took, reference);
    }
}

async fn copy(server: &str, ch: &str, rows: u64, workers: &[u64], order: &str) {
    psql(server, DATABASE, &format!(
        "CREATE TABLE traces (id text PRIMARY KEY, project_id text NOT NULL, payload text, latency double precision);
         INSERT INTO traces SELECT md5(g::text), 'project-' || (g % 100), repeat('lorem ipsum ', 12) || g, g * 0.001
         FROM generate_series(1, {rows}) g"
    ));
    psql(server, DATABASE, "VACUUM ANALYZE traces");
    clickhouse(ch, &format!("DROP DATABASE IF EXISTS {DATABASE}"));
    clickhouse(ch, &format!("CREATE DATABASE {DATABASE}"));
    clickhouse(ch, &format!("CREATE TABLE {DATABASE}.pipe {CH_TABLE}"));
    let insert = format!("{ch}/?query=INSERT%20INTO%20{DATABASE}.pipe%20FORMAT%20TabSeparated");
    let started = Instant::now();
    let status = Command::new("bash")
        .args(["-o", "pipefail", "-c", &format!(
            // `-T -` streams: `--data-binary @-` would read all of psql's output into memory before sending it
            // (out of memory at 10,000,000 rows) and keep psql and ClickHouse from working at the same time.
            "psql '{server}/{DATABASE}' -c 'COPY traces TO STDOUT' | curl -sS --fail-with-body -X POST -T - '{insert}'"
        )])
        .status()
        .expect("pipe");
    let reference = started.elapsed();
    assert!(status.success(), "the reference pipe failed");
    assert_eq!(
        clickhouse(ch, &format!("SELECT count() FROM {DATABASE}.pipe")),
        rows.to_string(),
        "the reference pipe moved every row"
    );
    let into = ClickHouseRuns::after(
        (server, ch, rows),
        reference,
        &format!(
            "copy of {rows} rows (random md5 keys, {order} order) into ClickHouse: raw psql COPY | curl pipe"
        ),
    );
    into.run(workers, "copy", |target| {
        json!({
            "from": {"store": "postgres", "table": "traces", "key": ["id"], "order": order},
            "to": {"store": "clickhouse", "table": target},
        })
    })
    .await;
}

async fn rewrite(server: &str, ch: &str, rows: u64, workers: &[u64]) {
    clickhouse(ch, &format!("DROP DATABASE IF EXISTS {DATABASE}"));
    clickhouse(ch, &format!("CREATE DATABASE {DATABASE}"));
    clickhouse(
        ch,
        &format!(
            "CREATE TABLE {DATABASE}.src (id String, project_id String, payload String, latency Float64) \
             ENGINE = MergeTree ORDER BY id"
        ),
    );
    clickhouse(
        ch,
        &format!(
            "INSERT INTO {DATABASE}.src SELECT hex(MD5(toString(number))), concat('project-', toString(number % 100)), \
             concat('lorem ipsum lorem ipsum lorem ipsum lorem ipsum ', toString(number)), number * 0.001 \
             FROM system.numbers LIMIT {rows}"
        ),
    );
    clickhouse(ch, &format!("OPTIMIZE TABLE {DATABASE}.src FINAL"));
    let partitions = clickhouse(
        ch,
        &format!("SELECT uniqExact(_partition_id) FROM {DATABASE}.src"),
    );
    assert_eq!(partitions, "1", "the source is one partition");
    clickhouse(ch, &format!("CREATE TABLE {DATABASE}.plain {CH_TABLE}"));
    let started = Instant::now();
    clickhouse(
        ch,
        &format!("INSERT INTO {DATABASE}.plain SELECT * FROM {DATABASE}.src"),
    );
    let reference = started.elapsed();
    let into = ClickHouseRuns::after(
        (server, ch, rows),
        reference,
        &format!("rewrite of {rows} rows in one partition: one plain INSERT ... SELECT"),
    );
    into.run(
        workers,
        "clickhouse_rewrite",
        |target| json!({"store": "clickhouse", "from": "src", "to": target}),
    )
    .await;
}

/// Runs of a migration that writes a fresh ClickHouse table per worker count, beside one reference.
struct ClickHouseRuns<'a> {
    server: &'a str,
    ch: &'a str,
    rows: u64,
    reference: Duration,
}

impl<'a> ClickHouseRuns<'a> {
    /// Prints the reference (`what`, its time and rate) and returns the runs to measure beside it.
    fn after((server, ch, rows): (&'a str, &'a str, u64), reference: Duration, what: &str) -> Self {
        println!(
            "{what} {:.2} s ({:.0} rows/s)",
            reference.as_secs_f64(),
            rows as f64 / reference.as_secs_f64()
        );
        ClickHouseRuns {
            server,
            ch,
            rows,
            reference,
        }
    }

    /// For each worker count: creates `ours_N`, runs `kind` with the params `params(target)` on N workers, checks
    /// that every row arrived once (`FINAL`) and prints the row; then drops the benchmark's ClickHouse database.
    async fn run(&self, workers: &[u64], kind: &str, params: impl Fn(&str) -> Value) {
        let (ch, rows) = (self.ch, self.rows);
        for &n in workers {
            let target = format!("ours_{n}");
            clickhouse(ch, &format!("CREATE TABLE {DATABASE}.{target} {CH_TABLE}"));
            let took = run_with_workers(
                &format!("{}/{DATABASE}", self.server),
                Some(&format!("{ch}/{DATABASE}")),
                &format!("{kind}_{n}"),
                kind,
                params(&target),
                n,
            )
            .await;
            let written = clickhouse(
                ch,
                &format!("SELECT count() FROM {DATABASE}.{target} FINAL"),
            );
            assert_eq!(written, rows.to_string(), "{target}: rows written");
            print_row(
                &format!("bgmigrate, {n} worker(s)"),
                rows,
                took,
                self.reference,
            );
        }
        clickhouse(ch, &format!("DROP DATABASE IF EXISTS {DATABASE}"));
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: there, do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("parallel benchmark: run it with `cargo bench --bench parallel`");
        return;
    }
    let server = env_or("BGMIGRATE_BENCH_PG", "postgres://postgres@127.0.0.1:5432");
    let ch = env_or("BGMIGRATE_BENCH_CH", "http://127.0.0.1:8123");
    let rows: u64 = env_or("BGMIGRATE_BENCH_ROWS", "1000000")
        .replace('_', "")
        .parse()
        .expect("BGMIGRATE_BENCH_ROWS");
    let workers: Vec<u64> = env_or("BGMIGRATE_BENCH_WORKERS", "1,2,4")
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("BGMIGRATE_BENCH_WORKERS: a list like 1,2,4")
        })
        .collect();
    let only = env_or("BGMIGRATE_BENCH_ONLY", "");
    psql(
        &server,
        "postgres",
        &format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"),
    );
    psql(&server, "postgres", &format!("CREATE DATABASE {DATABASE}"));
    println!(
        "parallel benchmark on {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if only.is_empty() || only == "backfill" {
        let order = env_or("BGMIGRATE_BENCH_BACKFILL_ORDER", "key");
        backfill(&server, rows, &workers, &order).await;
    }
    if only.is_empty() || only == "copy" {
        let order = env_or("BGMIGRATE_BENCH_COPY_ORDER", "key");
        copy(&server, &ch, rows, &workers, &order).await;
    }
    if only.is_empty() || only == "rewrite" {
        rewrite(&server, &ch, rows, &workers).await;
    }
    psql(
        &server,
        "postgres",
        &format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"),
    );
}
