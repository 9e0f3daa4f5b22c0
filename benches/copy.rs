//! Copy throughput and memory, each beside its reference measured in the same run:
//!
//! 1. 1,000,000 rows of ~300 bytes, Postgres → ClickHouse, through the `copy` kind (default args; with the
//!    default `order` — auto, which says which walk it chose — with `order = "key"` and with `order = "physical"`)
//!    versus the raw pipe, once with random (md5) text keys and once with sequential ones
//!    `psql -c "COPY (SELECT ...) TO STDOUT" | curl -X POST -T - '...INSERT ... FORMAT TabSeparated'` (streamed).
//! 2. Peak resident memory (VmHWM) of a `bgmigrate worker` process copying rows of up to 50 MB each at default
//!    args, against the 128 MiB budget.
//!
//! Needs the machine's Postgres (127.0.0.1:5432) and ClickHouse (127.0.0.1:8123); `BENCH_ROWS` overrides the row
//! count, `BENCH_ARGS` the args (`BENCH_ARGS='batchSize = 50000'`), `BENCH_ONLY=memory` runs only the memory
//! measurement. Run with `cargo bench --bench copy`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bgmigrate::config;
use bgmigrate::{Runner, RunnerConfig, Status, builtin_registry};

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const CH: &str = "http://127.0.0.1:8123";

const PG_TABLE: &str = "CREATE TABLE traces (
    id text PRIMARY KEY, project_id text NOT NULL, name text, created_at timestamptz NOT NULL,
    input jsonb, latency float8, is_public boolean NOT NULL)";
const CH_TABLE: &str = "(id String, project_id String, name Nullable(String), created_at DateTime,
    input Nullable(String), latency Nullable(Float64), is_public UInt8) ENGINE = ReplacingMergeTree ORDER BY id";

fn psql(db: &str, sql: &str) {
    let status = Command::new("psql")
        .args([
            &format!("{PG}/{db}"),
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .status()
        .expect("psql");
    assert!(status.success(), "psql failed: {sql}");
}

fn clickhouse(sql: &str) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            &format!("{CH}/"),
            "--data-binary",
            sql,
        ])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn clickhouse_value(sql: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", &format!("{CH}/"), "--data-binary", sql])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A Postgres and a ClickHouse database of their own, dropped at the end.
struct Databases {
    name: String,
}

impl Databases {
    fn create(name: &str) -> Databases {
        let name = format!("bgm_bench_{name}_{}", std::process::id());
        psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        psql("postgres", &format!("CREATE DATABASE {name}"));
        clickhouse(&format!("DROP DATABASE IF EXISTS {name}"));
        clickhouse(&format!("CREATE DATABASE {name}"));
        Databases { name }
    }

    fn pg_url(&self) -> String {
        format!("{PG}/{}", self.name)
    }

    fn ch_url(&self) -> String {
        format!("{CH}/{}", self.name)
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        clickhouse(&format!("DROP DATABASE IF EXISTS {}", self.name));
    }
}

/// A copy definition at default args (or `BENCH_ARGS`, TOML lines such as `batchSize = 50000`); `from_extra` is
/// added to `from` (e.g. `, order = "physical"`), `top_extra` before it (e.g. `verify = true`).
fn definition(dir: &std::path::Path, table: &str, target: &str, from_extra: &str, top_extra: &str) {
    let background = dir.join("background");
    std::fs::create_dir_all(&background).unwrap();
    std::fs::write(
        background.join(format!("20241024_1730_copy_{target}.toml")),
        format!(
            "kind = \"copy\"\n{top_extra}\nfrom = {{ store = \"postgres\", table = \"{table}\", key = [\"id\"]{from_extra} }}\n\
             to = {{ store = \"clickhouse\", table = \"{target}\" }}\n[args]\n{}\n",
            std::env::var("BENCH_ARGS").unwrap_or_default()
        ),
    )
    .unwrap();
}

/// How the benchmark's text keys relate to the order rows were inserted in.
#[derive(Clone, Copy)]
enum Keys {
    /// `md5` ids (like uuid v4): key order is random in the heap, the worst case for a key-order walk.
    Random,
    /// Zero-padded counters (like time-ordered ids: cuid, uuid v7): key order follows the heap.
    Sequential,
}

impl Keys {
    fn expression(self) -> &'static str {
        match self {
            Keys::Random => "'tr-' || md5(g::text)",
            Keys::Sequential => "'tr-' || lpad(g::text, 12, '0')",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Keys::Random => "random md5 keys",
            Keys::Sequential => "sequential keys",
        }
    }
}

async fn throughput(rows: u64, keys: Keys) {
    let dbs = Databases::create("copy");
    psql(&dbs.name, PG_TABLE);
    psql(
        &dbs.name,
        &format!(
            "INSERT INTO traces SELECT {}, 'project-' || (g % 100),
                 'trace name ' || g, timestamptz '2024-10-24 12:00:00+00' + (g / 1000) * interval '1 second',
                 jsonb_build_object('prompt', repeat('lorem ipsum ', 12) || g, 'model', 'gpt-4o', 'tokens', g % 4000),
                 g * 0.001, g % 2 = 0
             FROM generate_series(1, {rows}) g",
            keys.expression()
        ),
    );
    psql(&dbs.name, "VACUUM ANALYZE traces");
    let avg: String = {
        let out = Command::new("psql")
            .args([
                &dbs.pg_url(),
                "-Atc",
                "SELECT avg(pg_column_size(t.*))::int FROM traces t",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    clickhouse(&format!("CREATE TABLE {}.traces_pipe {CH_TABLE}", dbs.name));

    // The reference: Postgres COPY text piped into ClickHouse's TabSeparated parser.
    let copy = "COPY (SELECT id, project_id, name, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
                input::text, latency, is_public::int FROM traces) TO STDOUT";
    let insert = format!(
        "{CH}/?query=INSERT%20INTO%20{}.traces_pipe%20FORMAT%20TabSeparated",
        dbs.name
    );
    let pipe_cpu = CpuSeconds::now();
    let started = Instant::now();
    let status = Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            &format!(
                // `-T -` streams (psql and ClickHouse work at once); `--data-binary @-` would read all of psql's
                // output into memory first.
                "psql '{}' -c \"{copy}\" | curl -sS --fail-with-body -X POST -T - '{insert}'",
                dbs.pg_url()
            ),
        ])
        .status()
        .unwrap();
    let pipe = started.elapsed();
    let pipe_cpu = CpuSeconds::now().since(pipe_cpu);
    assert!(status.success(), "the reference pipe failed");
    assert_eq!(
        clickhouse_value(&format!("SELECT count() FROM {}.traces_pipe", dbs.name)),
        rows.to_string()
    );

    // bgmigrate: the copy kind with default args, run by the library's runner, in key order (the default) and
    // in physical order.
    let physical_order = ", order = \"physical\"";
    let key_order = copy_with_bgmigrate(&dbs, "traces", ", order = \"key\"", "").await;
    let default_order = copy_with_bgmigrate(&dbs, "traces_default", "", "").await;
    let physical = copy_with_bgmigrate(&dbs, "traces_physical", physical_order, "").await;
    let verified =
        copy_with_bgmigrate(&dbs, "traces_verified", physical_order, "verify = true").await;

    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!(
        "copy {rows} rows (avg {avg} B/row in Postgres, {}) Postgres -> ClickHouse: reference psql COPY | \
         curl TabSeparated {:.2} s ({:.0} rows/s) | {pipe_cpu} (psql, curl and the COPY's Postgres backend exit before the sample: not counted)",
        keys.label(),
        pipe.as_secs_f64(),
        rate(pipe),
    );
    let chosen = match default_order.2 {
        Some(_) => "the default order (auto: it chose physical)",
        None => "the default order (auto: it chose key)",
    };
    for (label, (took, cpu, catch_up)) in [
        ("order = \"key\"", key_order),
        (chosen, default_order),
        ("order = \"physical\"", physical),
    ] {
        let catch_up = catch_up
            .map(|ms| {
                format!(
                    " (of which the catch-up pass {:.2} s)",
                    f64::from(ms) / 1000.0
                )
            })
            .unwrap_or_default();
        println!(
            "  bgmigrate copy, {label}: {:.2} s{catch_up} ({:.0} rows/s) | ratio {:.2}x the pipe's rows/s | {cpu}",
            took.as_secs_f64(),
            rate(took),
            rate(took) / rate(pipe)
        );
    }
    let (took, cpu, _) = verified;
    println!(
        "  bgmigrate copy, order = \"physical\" then verify = true (every row read again by key and compared): {:.2} s \
         in all | {cpu}",
        took.as_secs_f64()
    );
}

/// CPU seconds used so far by this process, by all `postgres` processes and by `clickhouse-server` (utime +
/// stime from `/proc`), to show where a copy's time goes on a small machine.
#[derive(Clone, Copy, Default)]
struct CpuSeconds {
    worker: f64,
    postgres: f64,
    clickhouse: f64,
}

impl CpuSeconds {
    fn now() -> CpuSeconds {
        let ticks = |stat: &str| -> f64 {
            // After the parenthesised command name, utime and stime are the 12th and 13th fields.
            let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (field(11) + field(12)) / 100.0
        };
        let mut cpu = CpuSeconds {
            worker: ticks(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default()),
            ..CpuSeconds::default()
        };
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if stat.contains("(postgres)") {
                cpu.postgres += ticks(&stat);
            } else if stat.contains("(clickhouse-serv") {
                cpu.clickhouse += ticks(&stat);
            }
        }
        cpu
    }

    fn since(self, before: CpuSeconds) -> String {
        format!(
            "CPU: worker {:.1} s, Postgres {:.1} s, ClickHouse {:.1} s",
            self.worker - before.worker,
            self.postgres - before.postgres,
            self.clickhouse - before.clickhouse
        )
    }
}

/// Copies `traces` into the ClickHouse table `target` with the `copy` kind at default args; returns the time taken
/// and the CPU it cost.
async fn copy_with_bgmigrate(
    dbs: &Databases,
    target: &str,
    from_extra: &str,
    top_extra: &str,
) -> (Duration, String, Option<i32>) {
    clickhouse(&format!("CREATE TABLE {}.{target} {CH_TABLE}", dbs.name));
    let dir = tempfile::tempdir().unwrap();
    definition(dir.path(), "traces", target, from_extra, top_extra);
    let connected = config::connect(&dbs.pg_url())
        .await
        .unwrap()
        .with_clickhouse(Some(&dbs.ch_url()))
        .unwrap();
    connected.control.ensure_schema().await.unwrap();
    let registrations = bgmigrate::definition::load_dir(&dir.path().join("background")).unwrap();
    connected
        .control
        .register(&registrations, &builtin_registry())
        .await
        .unwrap();
    let config = RunnerConfig {
        exit_when_done: true,
        poll_interval: Duration::from_millis(100),
        ..RunnerConfig::default()
    };
    let cpu = CpuSeconds::now();
    let started = Instant::now();
    Runner::new(
        connected.control.clone(),
        builtin_registry(),
        connected.stores.clone(),
        config,
    )
    .spawn()
    .join()
    .await
    .unwrap();
    let took = started.elapsed();
    let cpu = CpuSeconds::now().since(cpu);
    let name = format!("20241024_1730_copy_{target}");
    let record = connected.control.get(&name).await.unwrap();
    assert_eq!(
        record.status,
        Status::Finished,
        "{:?}",
        record.failed_reason
    );
    let source_rows = {
        let out = Command::new("psql")
            .args([&dbs.pg_url(), "-Atc", "SELECT count(*) FROM traces"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        clickhouse_value(&format!("SELECT count() FROM {}.{target} FINAL", dbs.name)),
        source_rows
    );
    let batches = connected.control.batches(&name, 100_000).await.unwrap();
    (took, cpu, catch_up_ms(&batches))
}

/// The duration of a physical walk's catch-up pass: the batch after the one that ended the walk (the first, in
/// time, whose checkpoint says `"walked": true`). `batches` are newest first.
fn catch_up_ms(batches: &[bgmigrate::control::BatchRecord]) -> Option<i32> {
    let walk_end = batches.iter().rposition(|b| b.state["walked"] == true)?;
    let pass = batches.get(walk_end.checked_sub(1)?)?;
    Some(pass.duration_ms)
}

fn peak_memory() {
    let dbs = Databases::create("copy_mem");
    psql(
        &dbs.name,
        "CREATE TABLE blobs (id text PRIMARY KEY, size_mb int NOT NULL, body text)",
    );
    // 40 rows of 1 to 50 MB: half random text (stored as large as it is), half repetitive text that Postgres
    // compresses to a few hundred KB (its stored size hides its size as text: the case that peaked at 174-195 MiB).
    psql(
        &dbs.name,
        "INSERT INTO blobs SELECT 'row-' || lpad(n::text, 2, '0'), mb,
             CASE WHEN n % 2 = 0 THEN repeat('compressible text ', mb * 58255)
                  ELSE (SELECT string_agg(md5(n::text || '-' || i), '') FROM generate_series(1, mb * 32768) i) END
         FROM (SELECT n, 1 + (n * 37) % 50 AS mb FROM generate_series(1, 40) n) s",
    );
    clickhouse(&format!(
        "CREATE TABLE {}.blobs (id String, size_mb Int32, body Nullable(String)) ENGINE = ReplacingMergeTree ORDER BY id",
        dbs.name
    ));
    let dir = tempfile::tempdir().unwrap();
    definition(dir.path(), "blobs", "blobs", "", "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bgmigrate"))
        .args(["worker", "--exit-when-done", "--poll", "100ms"])
        .env("DATABASE_URL", dbs.pg_url())
        .env("CLICKHOUSE_URL", dbs.ch_url())
        .env("BGMIGRATE_MIGRATIONS_DIR", dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the worker");
    let status_path = format!("/proc/{}/status", child.id());
    let started = Instant::now();
    let mut peak_kib = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            if let Some(hwm) = hwm {
                peak_kib = peak_kib.max(hwm);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success(), "the worker failed");
    let elapsed = started.elapsed();
    let copied = clickhouse_value(&format!("SELECT count() FROM {}.blobs FINAL", dbs.name));
    assert_eq!(copied, "40");
    println!(
        "peak RSS copying 40 rows of 1-50 MB (1,080 MB in all, half compressible) at default args: bgmigrate worker \
         VmHWM {:.1} MiB \
         | budget 128 MiB | {} ({:.1} s)",
        peak_kib as f64 / 1024.0,
        if peak_kib <= 128 * 1024 {
            "within budget"
        } else {
            "OVER BUDGET"
        },
        elapsed.as_secs_f64()
    );
}

fn main() {
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1_000_000);
    // BENCH_ONLY=memory runs the memory measurement alone.
    if std::env::var("BENCH_ONLY").as_deref() != Ok("memory") {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(throughput(rows, Keys::Random));
        runtime.block_on(throughput(rows, Keys::Sequential));
    }
    peak_memory();
}
