//! Foreground impact: how much a backfill at default settings slows a fixed-rate point-update load on the table it
//! walks, and how much of its idle speed it keeps while it shares the database.
//!
//! ```text
//! cargo bench --bench foreground
//! BGMIGRATE_BENCH_ROWS=1000000 BGMIGRATE_BENCH_RATES=400 cargo bench --bench foreground
//! ```
//!
//! Environment:
//! * `BGMIGRATE_BENCH_PG`         server URL without a database (default `postgres://postgres@127.0.0.1:5432`);
//!   the benchmark creates and drops its own database `bgm_bench_foreground` there.
//! * `BGMIGRATE_BENCH_ROWS`       rows in the table (default 3,000,000; 1,000,000 for a quicker run).
//! * `BGMIGRATE_BENCH_RATES`      load levels in transactions per second (default `100,400,800`; `none`: idle only).
//! * `BGMIGRATE_BENCH_LOAD_SECS`  how long the load runs alone (each time) and beside each writer at each level
//!   (default 20).
//! * `BGMIGRATE_BENCH_ARGS`       the backfill's `args` as JSON (default `{}`: the engine's defaults).
//! * `BGMIGRATE_BENCH_ORDER`      the backfill definition's `order`: `physical` (default: what a table with random
//!   keys calls for) or `key`.
//! * `BGMIGRATE_BENCH_KEEP=1`     keeps the database and pgbench's logs afterwards.
//! * `RUST_LOG`                   log filter (default `warn,sqlx=error,sqlx_core=error`).
//!
//! One table `items` (`md5` text key, so key order is not heap order; ~340-byte rows; autovacuum off so that no
//! vacuum lands in one run and not another — each run is followed by a `VACUUM`). The load is `pgbench` at a fixed
//! rate (`--rate`, 4 clients, 2 threads) updating one random row's `hits` by key; its per-transaction log gives
//! latencies measured from each transaction's *scheduled* start, so a stalled database is not hidden by clients
//! that stopped sending (no coordinated omission). Each backfill sets a fresh column to `a + b`.
//!
//! Measured in one run: one plain `UPDATE` of all rows and the backfill on the idle database (the references); then
//! per load level the load alone (twice: before the backfill and after the writers below; the run with the lower
//! p99 is the baseline, so one stall of the disk while the load ran alone cannot pass a target), and the load
//! during a backfill — run in 5-second pgbench segments until the
//! backfill finishes, keeping only transactions that completed before it did. Beside each, the cores that the
//! server, the worker and pgbench kept busy (`cores a/d`: alone / during; from `/proc`, so other processes on a
//! shared machine do not count): how much of the machine the load leaves to the backfill.
//!
//! The reference for the p99 is not only the load alone: at each level the same load runs again beside a plain
//! writer doing the backfill's work without bgmigrate — small `UPDATE`s by `ctid`, walking the heap, paced evenly
//! by `pgbench`, in sessions with the settings the backfill's batches take while yielding — once at the
//! backfill's own speed under that load and once at the target share of its idle speed. What that writer costs
//! the load is what any writer that fast costs it on this server and disk. The load's p99 during the backfill is
//! also split by the backfill's phase (`list`, `walk`), read from its checkpoint every 100 ms. And for the backfill
//! and each writer it prints how the load met their writes: the share of the time they ran (`busy`), the share of
//! the load's transactions that ran at the same time as a batch or statement, and the p99 of those and of the rest
//! — so that a gap to the writer reads as meeting writes more often, or paying more for each one met.
//!
//! Last, the machine's floor at each level: the same load beside a thread of this process that spins as often as
//! the backfill's batches ran, in bursts of their mean duration, and writes nothing. On a machine whose cores the
//! server, pgbench and the worker share, a transaction that becomes ready while every core is taken waits for one;
//! what the spinning thread costs the load is what any work in pieces that long and that often costs it here.

#[path = "support/cpu.rs"]
mod cpu;
mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use bgmigrate::config::Connected;
use bgmigrate::{Registration, Runner, RunnerConfig, builtin_registry};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgPool, Row};
use support::{env_u64, exec, pool};

const DATABASE: &str = "bgm_bench_foreground";
/// The load's p99 during the backfill may be at most this many times its p99 alone.
const TARGET_P99_RATIO: f64 = 2.0;
/// The backfill must keep at least this share of its idle-database speed under load.
const TARGET_SPEED_SHARE: f64 = 0.35;
/// On the idle database the backfill must reach this share of one plain `UPDATE`'s speed.
const TARGET_IDLE_RATIO: f64 = 0.9;
/// Clients of the load (two to a pgbench thread).
const CLIENTS: u32 = 4;
/// Length of one load segment during a backfill.
const SEGMENT_SECS: u64 = 5;

/// Per-transaction latencies of one load run, in microseconds.
struct Load {
    latencies_us: Vec<u64>,
    /// When each transaction of `latencies_us` completed (µs since the epoch), in the same order.
    done_us: Vec<u128>,
    seconds: f64,
    /// Cores the server and this process (worker, pgbench) kept busy meanwhile, on average.
    cores: f64,
}

/// The `p` quantile of `latencies_us`, in ms.
fn percentile_ms(latencies_us: &[u64], p: f64) -> f64 {
    let mut sorted = latencies_us.to_vec();
    sorted.sort_unstable();
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).copied().unwrap_or(0) as f64 / 1000.0
}

impl Load {
    fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies_us, p)
    }

    /// The load's transactions split by the backfill's phase when each completed (`phases`: when each phase
    /// began, in order): per phase its seconds, transactions and p99 in ms.
    fn by_phase(
        &self,
        phases: &[(u128, &'static str)],
        ended: u128,
    ) -> Vec<(&'static str, f64, usize, f64)> {
        let mut split: Vec<(&'static str, f64, Vec<u64>)> = Vec::new();
        for (i, &(began, phase)) in phases.iter().enumerate() {
            let until = phases.get(i + 1).map_or(ended, |next| next.0);
            let seconds = until.saturating_sub(began) as f64 / 1e6;
            let latencies = self
                .done_us
                .iter()
                .zip(&self.latencies_us)
                .filter(|(done, _)| (began..until).contains(*done))
                .map(|(_, latency)| *latency);
            match split.iter_mut().find(|(name, ..)| *name == phase) {
                Some((_, secs, all)) => {
                    *secs += seconds;
                    all.extend(latencies);
                }
                None => split.push((phase, seconds, latencies.collect())),
            }
        }
        split
            .into_iter()
            .map(|(phase, seconds, latencies)| {
                (
                    phase,
                    seconds,
                    latencies.len(),
                    percentile_ms(&latencies, 0.99),
                )
            })
            .collect()
    }

    fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.seconds.max(0.001)
    }

    /// The load's transactions within the span `writes` cover, split by whether each ran at the same time as a
    /// write: the share that did, and the p99 in ms of those that did and of those that did not. What sets the
    /// foreground's tail apart from one writer to another at the same speed is read here: how often the load
    /// meets a write, and how much a write it meets costs it.
    fn overlap(&self, writes: &[Span]) -> (f64, f64, f64) {
        let (Some(first), Some(last)) = (writes.first(), writes.last()) else {
            return (0.0, 0.0, 0.0);
        };
        let (mut met, mut clear) = (Vec::new(), Vec::new());
        for (&done, &latency) in self.done_us.iter().zip(&self.latencies_us) {
            let start = done.saturating_sub(latency as u128);
            if done < first.0 || start > last.1 {
                continue;
            }
            // Writes do not overlap each other (one stream each), so the transaction met one if and only if the
            // last write that started before it ended was still running when it started.
            let started = writes.partition_point(|w| w.0 <= done);
            let meets = started > 0 && writes[started - 1].1 >= start;
            if meets { &mut met } else { &mut clear }.push(latency);
        }
        let share = met.len() as f64 / (met.len() + clear.len()).max(1) as f64;
        (
            share,
            percentile_ms(&met, 0.99),
            percentile_ms(&clear, 0.99),
        )
    }
}

/// One backfill's figures.
struct Backfill {
    seconds: f64,
    /// Cores the server and this process kept busy meanwhile (load included), on average.
    cores: f64,
    /// WAL the server wrote per second during the backfill (all sessions).
    wal_mib_per_sec: f64,
    batches: i64,
    median_batch_ms: f64,
    /// The batches' longer durations and their average rows, as one line.
    batch_tail: String,
    /// When its batches ran, as far as the batches table keeps them (the last 1,000).
    writes: Vec<Span>,
    throttled: Option<String>,
    /// When each phase of the walk began (µs since the epoch), in order: `list` (a heap-order walk's key sweep
    /// and its close, and the first batch of any walk), then `walk`.
    phases: Vec<(u128, &'static str)>,
    /// When the backfill ended (µs since the epoch).
    ended: u128,
}

/// Builds `items` and freezes its layout.
async fn build_table(db: &PgPool, rows: u64) -> anyhow::Result<()> {
    exec(
        db,
        &format!(
            "CREATE TABLE items (id text NOT NULL, a int NOT NULL, b int NOT NULL, hits int NOT NULL DEFAULT 0, \
             payload text NOT NULL) WITH (autovacuum_enabled = false);
             INSERT INTO items (id, a, b, payload)
             SELECT md5(g::text), g % 1000, (g * 7) % 1000, repeat(md5((g + 1)::text), 8)
             FROM generate_series(1, {rows}) AS g;
             ALTER TABLE items ADD PRIMARY KEY (id);"
        ),
    )
    .await?;
    exec(db, "VACUUM ANALYZE items").await
}

/// One `pgbench` run: `clients` clients (half as many threads, at least one) at `rate` tx/s for `seconds`.
struct Pgbench<'a> {
    script: &'a Path,
    clients: u32,
    rate: u64,
    seconds: u64,
    /// Logs each transaction under this prefix.
    log: Option<&'a Path>,
    /// Session settings (`PGOPTIONS`), e.g. `-c synchronous_commit=off`.
    options: &'a str,
}

impl Pgbench<'_> {
    /// The fixed load: `CLIENTS` clients at `rate` for `seconds`, logged under `prefix`.
    fn load<'a>(script: &'a Path, rate: u64, seconds: u64, prefix: &'a Path) -> Pgbench<'a> {
        Pgbench {
            script,
            clients: CLIENTS,
            rate,
            seconds,
            log: Some(prefix),
            options: "",
        }
    }

    async fn run(&self, url: &str) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new("pgbench");
        command
            .args(["-n", "-c", &self.clients.to_string()])
            .args(["-j", &(self.clients / 2).max(1).to_string()])
            .args([
                "-R",
                &self.rate.to_string(),
                "-T",
                &self.seconds.to_string(),
            ])
            .arg("-f")
            .arg(self.script)
            .env("PGOPTIONS", self.options);
        if let Some(prefix) = self.log {
            command
                .arg("--log")
                .arg(format!("--log-prefix={}", prefix.display()));
        }
        let out = command
            .arg(url)
            .output()
            .await
            .context("run pgbench (Debian: it comes with the postgresql server package)")?;
        if !out.status.success() {
            bail!(
                "pgbench failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Latencies of the transactions logged in `dir` under `prefix`, completed before `until` (µs since the epoch).
fn read_latencies(
    dir: &Path,
    prefix: &str,
    until: Option<u128>,
) -> anyhow::Result<(Vec<u64>, Vec<u128>)> {
    let (mut latencies, mut done_at) = (Vec::new(), Vec::new());
    for_each_logged(dir, prefix, |line, fields| {
        let (Some(time), Some(epoch), Some(us)) = (fields.get(2), fields.get(4), fields.get(5))
        else {
            return Ok(());
        };
        let done = epoch.parse::<u128>()? * 1_000_000 + us.parse::<u128>()?;
        if until.is_none_or(|until| done <= until) {
            latencies.push(
                time.parse()
                    .with_context(|| format!("pgbench log line {line:?}"))?,
            );
            done_at.push(done);
        }
        Ok(())
    })?;
    Ok((latencies, done_at))
}

/// Calls `each` with every transaction line pgbench logged in `dir` under `prefix`, split into its fields:
/// client_id transaction_no time script_no time_epoch time_us [schedule_lag].
fn for_each_logged(
    dir: &Path,
    prefix: &str,
    mut each: impl FnMut(&str, &[&str]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        for line in std::fs::read_to_string(entry.path())?.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            each(line, &fields)?;
        }
    }
    Ok(())
}

/// When the transactions logged in `dir` under `prefix` ran (µs since the epoch, in order of their start): each
/// one's latency less its schedule lag (the wait for its turn, which pgbench counts in the latency at a fixed rate).
fn logged_spans(dir: &Path, prefix: &str) -> anyhow::Result<Vec<Span>> {
    let mut spans = Vec::new();
    for_each_logged(dir, prefix, |line, fields| {
        if let (Some(time), Some(epoch), Some(us), Some(lag)) =
            (fields.get(2), fields.get(4), fields.get(5), fields.get(6))
        {
            let parse = |field: &str| {
                field
                    .parse::<u128>()
                    .with_context(|| format!("pgbench log line {line:?}"))
            };
            let done = parse(epoch)? * 1_000_000 + parse(us)?;
            spans.push((
                done - parse(time)?.saturating_sub(parse(lag)?).min(done),
                done,
            ));
        }
        Ok(())
    })?;
    spans.sort_unstable();
    Ok(spans)
}

/// When a write ran (a batch, or a statement of the plain writer): start and end, µs since the epoch.
type Span = (u128, u128);

/// The share of the time `writes` (in order of their start) ran, over the span from the first's start to the
/// last's end.
fn busy_share(writes: &[Span]) -> f64 {
    let (Some(first), Some(last)) = (writes.first(), writes.last()) else {
        return 0.0;
    };
    let running: u128 = writes.iter().map(|(start, end)| end - start).sum();
    running as f64 / (last.1 - first.0).max(1) as f64
}

/// The mean duration of `writes` (at least 0.1 ms).
fn mean_write(writes: &[Span]) -> Duration {
    let running: u128 = writes.iter().map(|(start, end)| end - start).sum();
    Duration::from_micros((running / writes.len().max(1) as u128).max(100) as u64)
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// The fixed load at `rate` for `seconds`, logged under `prefix`, while `beside` runs (the plain writer, or
/// nothing for the load alone).
async fn fixed_load(
    db: &PgPool,
    (url, script, logs): (&str, &Path, &Path),
    (rate, seconds): (u64, u64),
    (prefix, postmaster): (&str, u32),
    beside: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<Load> {
    // As before each backfill: no checkpoint of earlier writes lands in this run.
    exec(db, "CHECKPOINT").await?;
    let (started, cpu_before) = (Instant::now(), cpu::seconds(postmaster));
    let log = logs.join(prefix);
    let load = Pgbench::load(script, rate, seconds, &log);
    let (loaded, besides) = tokio::join!(load.run(url), beside);
    let elapsed = started.elapsed().as_secs_f64();
    let cores = (cpu::seconds(postmaster) - cpu_before) / elapsed;
    loaded?;
    besides?;
    let (latencies_us, done_us) = read_latencies(logs, prefix, None)?;
    Ok(Load {
        latencies_us,
        done_us,
        seconds: elapsed,
        cores,
    })
}

/// Rows one statement of the plain writer updates (about 5 heap pages of this table). Small statements paced
/// evenly were the gentlest plain writer found at 400 tx/s on 3,000,000 rows, all at ~22,000 rows/s with the
/// settings below: 5 pages a statement left the load's p99 at 4.4 ms, 20 pages 6.2 ms, 100 pages 7.2 ms (without
/// those settings: 50.6 ms).
const WRITER_ROWS: u64 = 120;

/// What the reference writer did: the load's latencies meanwhile, the rows it updated per second, and when its
/// statements ran (their share of the run reads beside the backfill's `busy`: at the same speed, a writer busy half
/// as long writes its rows twice as fast while it runs).
struct PlainWriter {
    load: Load,
    rows_per_sec: f64,
    writes: Vec<Span>,
}

/// The reference beside each load level: the same load, for `seconds`, while a plain writer does the backfill's
/// work at the backfill's own speed (`rows_per_sec`) — `UPDATE items SET <fresh column> = a + b` over runs of heap
/// pages holding [`WRITER_ROWS`] rows a statement, walking the heap in order, paced evenly by `pgbench`, in
/// sessions with the settings the backfill's batches take while yielding (`wal_compression` lz4 where the server
/// has it, `backend_flush_after` 256 kB, `synchronous_commit` off). What it costs the load is what any writer this
/// fast costs it here; the backfill's p99 is read against it.
async fn plain_writer(
    db: &PgPool,
    (url, script, logs): (&str, &Path, &Path),
    (rate, seconds): (u64, u64),
    (name, rows_per_sec): (&str, f64),
    postmaster: u32,
) -> anyhow::Result<PlainWriter> {
    let column = format!("total_{name}_{rate}");
    // Earlier runs moved rows around and VACUUM freed the pages they left, so rows per page vary along the heap:
    // the writer's statements are cut by rows, each a run of whole pages holding about WRITER_ROWS rows.
    exec(
        db,
        &format!(
            "ALTER TABLE items ADD COLUMN {column} int; DROP TABLE IF EXISTS writer_chunks; \
             DROP SEQUENCE IF EXISTS writer_next; \
             CREATE TABLE writer_chunks AS SELECT chunk AS n, min(page) AS lo, max(page) + 1 AS hi \
             FROM (SELECT page, floor((sum(rows) OVER (ORDER BY page) - rows) / {WRITER_ROWS})::int8 AS chunk \
                   FROM (SELECT (ctid::text::point)[0]::int8 AS page, count(*) AS rows FROM items GROUP BY 1) AS pages) \
                  AS chunks \
             GROUP BY chunk; \
             ALTER TABLE writer_chunks ADD PRIMARY KEY (n); CREATE SEQUENCE writer_next MINVALUE 0 START 0"
        ),
    )
    .await?;
    let compression: String = sqlx::query_scalar(
        "SELECT CASE WHEN 'lz4' = ANY (enumvals) THEN 'lz4' ELSE 'on' END FROM pg_settings \
         WHERE name = 'wal_compression'",
    )
    .fetch_one(db)
    .await?;
    let statements = (rows_per_sec / WRITER_ROWS as f64).ceil().max(1.0) as u64;
    let writer_script = logs.join(format!("{column}.sql"));
    let writer_prefix = format!("writer_{column}");
    let writer_log = logs.join(&writer_prefix);
    std::fs::write(
        &writer_script,
        format!(
            "SELECT nextval('writer_next') AS chunk \\gset\n\
             SELECT coalesce(min(lo), 0) AS lo, coalesce(max(hi), 0) AS hi FROM writer_chunks WHERE n = :chunk \\gset\n\
             UPDATE items SET {column} = a + b WHERE ctid >= ('(' || :lo || ',0)')::tid \
             AND ctid < ('(' || :hi || ',0)')::tid;\n"
        ),
    )?;
    let options = format!(
        "-c wal_compression={compression} -c backend_flush_after=256kB -c synchronous_commit=off"
    );
    let writer = Pgbench {
        script: &writer_script,
        clients: 1,
        rate: statements,
        seconds,
        log: Some(&writer_log),
        options: &options,
    };
    let load = fixed_load(
        db,
        (url, script, logs),
        (rate, seconds),
        (&format!("load_{column}"), postmaster),
        writer.run(url),
    )
    .await?;
    let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM items WHERE {column} IS NOT NULL"
    )))
    .fetch_one(db)
    .await?;
    exec(db, "VACUUM items").await?;
    Ok(PlainWriter {
        rows_per_sec: rows as f64 / load.seconds,
        writes: logged_spans(logs, &writer_prefix)?,
        load,
    })
}

/// The machine's floor beside each load level: the same load, for `seconds`, while a thread of this process
/// spins in bursts of `burst` (the backfill's mean batch) for `busy` of the time (the share its batches ran),
/// sleeping between them — no database work at all. The server, pgbench and the worker share this machine's cores,
/// and a transaction that becomes ready while every core is taken waits for one: what this costs the load is what
/// any writer busy as often, in pieces as long, costs it here before it writes a byte. By hand on a 2-core machine
/// of this kind, 37 % of the time in bursts of 2.5 ms took a 400 tx/s load's p99 from 1.5-1.7 to 4.9-5.1 ms, in
/// bursts of 1 ms to 2.5-2.7 ms, in bursts of 0.5 ms to 2.0-2.1 ms.
async fn cpu_floor(
    db: &PgPool,
    (url, script, logs): (&str, &Path, &Path),
    (rate, seconds): (u64, u64),
    (busy, burst): (f64, Duration),
    postmaster: u32,
) -> anyhow::Result<Load> {
    let rest = burst.mul_f64((1.0 - busy.clamp(0.01, 1.0)) / busy.clamp(0.01, 1.0));
    let spin = tokio::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < until {
            let started = Instant::now();
            while started.elapsed() < burst {
                std::hint::spin_loop();
            }
            std::thread::sleep(rest);
        }
    });
    fixed_load(
        db,
        (url, script, logs),
        (rate, seconds),
        (&format!("cpu_floor_{rate}"), postmaster),
        async { spin.await.context("the spinning thread") },
    )
    .await
}

/// What the backfill is given: its definition's `order` and its `args`.
struct Walk {
    order: String,
    args: Value,
}

/// Registers a backfill of `column` and runs it to the end; with `load` = (rate, script, logs), the load runs in
/// segments meanwhile and its latencies up to the backfill's end are returned too.
async fn backfill(
    connected: &Connected,
    (db, url, postmaster): (&PgPool, &str, u32),
    column: &str,
    walk: &Walk,
    load: Option<(u64, &Path, &Path)>,
) -> anyhow::Result<(Backfill, Option<Load>)> {
    exec(db, &format!("ALTER TABLE items ADD COLUMN {column} int")).await?;
    let registry = builtin_registry();
    connected
        .control
        .register(
            &[Registration {
                name: column.to_owned(),
                script: "backfill".into(),
                params: json!({
                    "store": "postgres", "table": "items", "key": ["id"], "set": { column: "a + b" },
                    "order": walk.order
                }),
                args: walk.args.clone(),
                depends_on: None,
            }],
            &registry,
        )
        .await?;
    exec(db, "CHECKPOINT").await?;
    let wal_before = wal_position(db).await?;
    let runner = Runner::new(
        connected.control.clone(),
        registry,
        connected.stores.clone(),
        RunnerConfig {
            exit_when_done: true,
            ..Default::default()
        },
    );
    let (started, cpu_before) = (Instant::now(), cpu::seconds(postmaster));
    // The backfill's end is read where it ends, not after the load segment running then: the segment runs to its
    // end, up to 5 s later, and until this release that was taken for the backfill's end, so every loaded run
    // read as a whole number of segments (1,000,000 rows in ~25 s, 39,700-39,800 rows/s in six runs on two
    // machines) and counted the load's transactions after the backfill (lighter) in its p99.
    let wal_db = db.clone();
    let run = tokio::spawn(async move {
        let summary = runner.spawn().join().await;
        let end = Ended {
            seconds: started.elapsed().as_secs_f64(),
            at_us: now_us(),
            cpu_seconds: cpu::seconds(postmaster),
            wal: wal_position(&wal_db).await,
        };
        (summary, end)
    });
    let phases = Arc::new(Mutex::new(Vec::new()));
    let watcher = tokio::spawn(watch_phases(db.clone(), column.to_owned(), phases.clone()));
    let mut segments = 0;
    if let Some((rate, script, logs)) = load {
        while !run.is_finished() {
            let prefix = logs.join(format!("during_{rate}_{segments}"));
            Pgbench::load(script, rate, SEGMENT_SECS, &prefix)
                .run(url)
                .await?;
            segments += 1;
        }
    }
    let (summary, end) = run.await?;
    let summary = summary?;
    let (seconds, ended) = (end.seconds, end.at_us);
    if watcher.is_finished() {
        watcher.await??;
        bail!("the phase watcher stopped before the backfill ended");
    }
    watcher.abort();
    let phases = std::mem::take(&mut *phases.lock().expect("poisoned"));
    let cores = (end.cpu_seconds - cpu_before) / seconds;
    let wal_mib_per_sec = (end.wal? - wal_before) / seconds / 1024.0 / 1024.0;
    if !summary.failed.is_empty() {
        bail!("the backfill failed: {:?}", summary.failed);
    }
    ensure!(
        summary.finished == [column],
        "the runner did not finish {column}: {summary:?}"
    );
    let wrong: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM items WHERE {column} IS DISTINCT FROM a + b"
    )))
    .fetch_one(db)
    .await?;
    ensure!(
        wrong == 0,
        "the backfill of {column} left {wrong} rows wrong"
    );
    let stats = sqlx::query(
        "SELECT count(*) AS batches, \
             coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), 0) AS median, \
             format('batches kept: p90 %s ms, p99 %s ms, max %s ms; %s rows a batch on average', \
                    round(percentile_cont(0.9) WITHIN GROUP (ORDER BY duration_ms)::numeric), \
                    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms)::numeric), \
                    max(duration_ms), round(avg(rows))) AS tail \
         FROM background_migration_batches WHERE migration_name = $1",
    )
    .bind(column)
    .fetch_one(db)
    .await?;
    let writes: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (extract(epoch FROM started_at) * 1e6)::int8 AS start, \
                (extract(epoch FROM started_at) * 1e6 + duration_ms * 1000)::int8 AS end \
         FROM background_migration_batches WHERE migration_name = $1 ORDER BY started_at",
    )
    .bind(column)
    .fetch_all(db)
    .await?;
    let throttled: Option<String> = sqlx::query_scalar(
        "SELECT string_agg(DISTINCT detail->>'signal', ', ') FROM background_migration_events \
         WHERE migration_name = $1 AND kind = 'throttled'",
    )
    .bind(column)
    .fetch_one(db)
    .await?;
    exec(db, "VACUUM items").await?;
    let load = match load {
        Some((rate, _, logs)) => {
            let (latencies_us, done_us) =
                read_latencies(logs, &format!("during_{rate}_"), Some(ended))?;
            Some(Load {
                latencies_us,
                done_us,
                seconds,
                cores,
            })
        }
        None => None,
    };
    Ok((
        Backfill {
            seconds,
            cores,
            wal_mib_per_sec,
            batches: stats.try_get("batches")?,
            median_batch_ms: stats.try_get("median")?,
            batch_tail: stats.try_get("tail")?,
            writes: writes
                .into_iter()
                .map(|(start, end)| (start.max(0) as u128, end.max(0) as u128))
                .collect(),
            throttled,
            phases,
            ended,
        },
        load,
    ))
}

/// What was read the moment a backfill ended: its duration, the time (µs since the epoch), the server's CPU
/// seconds and the WAL position.
struct Ended {
    seconds: f64,
    at_us: u128,
    cpu_seconds: f64,
    wal: anyhow::Result<f64>,
}

/// Polls the checkpoint of backfill `name` every 100 ms and appends to `phases` when its phase changes: `list`
/// until a heap-order walk has listed its keys (its checkpoint then names a `page`), `walk` after; a key-order
/// walk is `walk` from its first checkpoint.
async fn watch_phases(
    db: PgPool,
    name: String,
    phases: Arc<Mutex<Vec<(u128, &'static str)>>>,
) -> anyhow::Result<()> {
    loop {
        let state: Option<Value> =
            sqlx::query_scalar("SELECT state FROM background_migrations WHERE name = $1")
                .bind(&name)
                .fetch_optional(&db)
                .await?;
        let listing = state.as_ref().is_none_or(|state| {
            state.get("page").is_none()
                && (state.get("list").is_some() || state.as_object().is_none_or(|o| o.is_empty()))
        });
        let phase = if listing { "list" } else { "walk" };
        {
            let mut phases = phases.lock().expect("poisoned");
            if phases.last().is_none_or(|(_, last)| *last != phase) {
                phases.push((now_us(), phase));
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The server's WAL position in bytes.
async fn wal_position(db: &PgPool) -> anyhow::Result<f64> {
    Ok(
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
            .fetch_one(db)
            .await?,
    )
}

/// The load levels from `BGMIGRATE_BENCH_RATES` (`none`: only the idle comparison).
fn rates() -> anyhow::Result<Vec<u64>> {
    let text = std::env::var("BGMIGRATE_BENCH_RATES").unwrap_or_else(|_| "100,400,800".into());
    if text.trim() == "none" {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|r| {
            r.trim()
                .parse::<u64>()
                .ok()
                .filter(|r| *r > 0)
                .with_context(|| format!("BGMIGRATE_BENCH_RATES={text:?}: expected positive integers like 100,400,800"))
        })
        .collect()
}

async fn run(url: &str, rows: u64, walk: &Walk, logs: &Path) -> anyhow::Result<()> {
    let rates = rates()?;
    let alone_secs = env_u64("BGMIGRATE_BENCH_LOAD_SECS")?.unwrap_or(20);
    let db = pool(url).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&db)
        .await?;
    let postmaster = cpu::postmaster_of(backend as u32).context(
        "the benchmark reads the server's CPU time from /proc: run it on the server's machine",
    )?;
    let started = Instant::now();
    build_table(&db, rows).await?;
    eprintln!(
        "built items: {rows} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let script = logs.join("update.sql");
    std::fs::write(
        &script,
        format!(
            "\\set n random(1, {rows})\nUPDATE items SET hits = hits + 1 WHERE id = md5(:n::text);\n"
        ),
    )?;

    // References: one plain UPDATE, then the backfill on the idle database.
    exec(
        &db,
        "ALTER TABLE items ADD COLUMN total_ref int; CHECKPOINT",
    )
    .await?;
    let started = Instant::now();
    exec(&db, "UPDATE items SET total_ref = a + b").await?;
    let update_secs = started.elapsed().as_secs_f64();
    exec(&db, "VACUUM items").await?;
    let connected = bgmigrate::config::connect(url).await?;
    connected.control.ensure_schema().await?;
    let (idle, _) = backfill(&connected, (&db, url, postmaster), "total_idle", walk, None).await?;
    eprintln!(
        "idle backfill {:.1} s, plain UPDATE {update_secs:.1} s",
        idle.seconds
    );

    let load_alone = |rate: u64, prefix: String| {
        let (db, script) = (&db, &script);
        async move {
            fixed_load(
                db,
                (url, script, logs),
                (rate, alone_secs),
                (&prefix, postmaster),
                std::future::ready(Ok(())),
            )
            .await
        }
    };
    let mut lines = Vec::new();
    for &rate in &rates {
        let alone = load_alone(rate, format!("alone_{rate}")).await?;
        let column = format!("total_r{rate}");
        let (during_backfill, during) = backfill(
            &connected,
            (&db, url, postmaster),
            &column,
            walk,
            Some((rate, &script, logs)),
        )
        .await?;
        let during = during.expect("load ran");
        eprintln!(
            "{rate} tx/s: p99 {:.1} ms alone, {:.1} ms during; backfill {:.1} s",
            alone.percentile_ms(0.99),
            during.percentile_ms(0.99),
            during_backfill.seconds
        );
        let mut writers = Vec::new();
        for (name, speed) in [
            ("same", rows as f64 / during_backfill.seconds),
            ("target", TARGET_SPEED_SHARE * rows as f64 / idle.seconds),
        ] {
            let writer = plain_writer(
                &db,
                (url, &script, logs),
                (rate, alone_secs),
                (name, speed),
                postmaster,
            )
            .await?;
            eprintln!(
                "    ({rate} tx/s, plain writer at {:.0} rows/s, busy {:.0}%: p99 {:.1} ms; {:.2} cores)",
                writer.rows_per_sec,
                busy_share(&writer.writes) * 100.0,
                writer.load.percentile_ms(0.99),
                writer.load.cores
            );
            writers.push(writer);
        }
        let floor = cpu_floor(
            &db,
            (url, &script, logs),
            (rate, alone_secs),
            (
                busy_share(&during_backfill.writes),
                mean_write(&during_backfill.writes),
            ),
            postmaster,
        )
        .await?;
        eprintln!(
            "    ({rate} tx/s, a spinning thread busy as often as the batches: p99 {:.1} ms; {:.2} cores)",
            floor.percentile_ms(0.99),
            floor.cores
        );
        let alone_after = load_alone(rate, format!("alone_after_{rate}")).await?;
        let (before_p99, after_p99) = (alone.percentile_ms(0.99), alone_after.percentile_ms(0.99));
        eprintln!(
            "    ({rate} tx/s, the load alone again: p99 {after_p99:.1} ms, against {before_p99:.1} ms before; the lower is the baseline)"
        );
        let alone = if after_p99 < before_p99 {
            alone_after
        } else {
            alone
        };
        lines.push((rate, alone, during, during_backfill, writers, floor));
    }
    drop(connected);

    let idle_rate = rows as f64 / idle.seconds;
    let update_rate = rows as f64 / update_secs;
    let idle_ratio = idle_rate / update_rate;
    let args_label = if walk.args.as_object().is_some_and(|a| a.is_empty()) {
        "defaults".to_owned()
    } else {
        walk.args.to_string()
    };
    println!(
        "foreground-impact benchmark: {rows} rows, backfill order {:?}, args {args_label}, load {CLIENTS} clients",
        walk.order
    );
    println!(
        "  idle: plain UPDATE {update_secs:.2} s ({update_rate:.0} rows/s); backfill {:.2} s ({idle_rate:.0} rows/s, \
         {} batches, median {:.0} ms, WAL {:.0} MiB/s, {:.2} cores, throttled by {}); ratio {idle_ratio:.2} (target >= \
         {TARGET_IDLE_RATIO}: {})",
        idle.seconds,
        idle.batches,
        idle.median_batch_ms,
        idle.wal_mib_per_sec,
        idle.cores,
        idle.throttled.as_deref().unwrap_or("-"),
        if idle_ratio >= TARGET_IDLE_RATIO {
            "MET"
        } else {
            "NOT MET"
        }
    );
    println!(
        "  {:>6} | {:>9} | {:>9} | {:>9} | {:>9} | {:>6} | {:>11} | {:>7} | {:>6} | {:>5} | {:>11} | throttled by",
        "tx/s",
        "p50 alone",
        "p99 alone",
        "p50 durng",
        "p99 durng",
        "ratio",
        "backfill/s",
        "of idle",
        "median",
        "busy",
        "cores a/d"
    );
    let mut met = idle_ratio >= TARGET_IDLE_RATIO;
    for (rate, alone, during, backfill, writers, _) in &lines {
        let ratio = during.percentile_ms(0.99) / alone.percentile_ms(0.99).max(0.001);
        let speed = rows as f64 / backfill.seconds;
        let share = speed / idle_rate;
        met &= ratio <= TARGET_P99_RATIO && share >= TARGET_SPEED_SHARE;
        println!(
            "  {rate:>6} | {:>6.1} ms | {:>6.1} ms | {:>6.1} ms | {:>6.1} ms | {ratio:>5.2}x | {speed:>11.0} | {:>6.0}% | {:>3.0} ms | {:>4.0}% | {:>4.2}/{:>4.2} | {}",
            alone.percentile_ms(0.5),
            alone.percentile_ms(0.99),
            during.percentile_ms(0.5),
            during.percentile_ms(0.99),
            share * 100.0,
            backfill.median_batch_ms,
            busy_share(&backfill.writes) * 100.0,
            alone.cores,
            during.cores,
            backfill.throttled.as_deref().unwrap_or("-")
        );
        eprintln!(
            "    ({rate} tx/s: load ran at {:.0} tx/s alone, {:.0} tx/s during; {} batches; WAL {:.0} MiB/s; {})",
            alone.rate(),
            during.rate(),
            backfill.batches,
            backfill.wal_mib_per_sec,
            backfill.batch_tail
        );
        let phases: Vec<String> = during
            .by_phase(&backfill.phases, backfill.ended)
            .into_iter()
            .map(|(phase, seconds, count, p99)| {
                format!("{phase} {seconds:.1} s, {count} tx, p99 {p99:.1} ms")
            })
            .collect();
        println!(
            "  {:>6}   by the backfill's phase: {}",
            "",
            phases.join("; ")
        );
        let met_writes: Vec<String> = std::iter::once(("backfill", &backfill.writes, during))
            .chain(
                writers
                    .iter()
                    .zip(["writer at the same speed", "writer at the target speed"])
                    .map(|(writer, name)| (name, &writer.writes, &writer.load)),
            )
            .map(|(name, writes, load)| {
                let (share, met, clear) = load.overlap(writes);
                format!(
                    "{name} {:.0}% of them, p99 {met:.1} / {clear:.1} ms",
                    share * 100.0
                )
            })
            .collect();
        println!(
            "  {:>6}   load transactions meeting a write / not: {}",
            "",
            met_writes.join("; ")
        );
    }
    println!(
        "  the reference at each level: a plain writer under the same load (UPDATEs of {WRITER_ROWS} rows by ctid in \
         heap order, paced, with the backfill's session settings), at the backfill's speed and at {:.0}% of its idle \
         speed",
        TARGET_SPEED_SHARE * 100.0
    );
    println!(
        "  {:>6} | {:>9} | {:>13} | {:>4} | {:>9} | {:>6} | {:>13} | {:>4} | {:>9} | {:>6}",
        "tx/s",
        "p99 durng",
        "writer rows/s",
        "busy",
        "p99 writr",
        "ratio",
        "writer rows/s",
        "busy",
        "p99 writr",
        "ratio"
    );
    for (rate, alone, during, _, writers, _) in &lines {
        let base = alone.percentile_ms(0.99).max(0.001);
        let mut line = format!("  {rate:>6} | {:>6.1} ms", during.percentile_ms(0.99));
        for writer in writers {
            let p99 = writer.load.percentile_ms(0.99);
            line.push_str(&format!(
                " | {:>13.0} | {:>3.0}% | {p99:>6.1} ms | {:>5.2}x",
                writer.rows_per_sec,
                busy_share(&writer.writes) * 100.0,
                p99 / base
            ));
        }
        println!("{line}");
    }
    println!(
        "  the machine's floor at each level: the same load beside a thread of this process that spins as often as the \
         backfill's batches ran, in bursts of their mean duration, and writes nothing"
    );
    println!(
        "  {:>6} | {:>9} | {:>6} | {:>5} | {:>9} | {:>6}",
        "tx/s", "p99 durng", "ratio", "busy", "p99 spin", "ratio"
    );
    for (rate, alone, during, backfill, _, floor) in &lines {
        let base = alone.percentile_ms(0.99).max(0.001);
        println!(
            "  {rate:>6} | {:>6.1} ms | {:>5.2}x | {:>4.0}% | {:>6.1} ms | {:>5.2}x (bursts of {:.1} ms)",
            during.percentile_ms(0.99),
            during.percentile_ms(0.99) / base,
            busy_share(&backfill.writes) * 100.0,
            floor.percentile_ms(0.99),
            floor.percentile_ms(0.99) / base,
            mean_write(&backfill.writes).as_secs_f64() * 1000.0
        );
    }
    println!(
        "target: p99 during <= {TARGET_P99_RATIO}x alone, backfill >= {:.0}% of idle speed, idle >= {TARGET_IDLE_RATIO}x \
         UPDATE: {}{}",
        TARGET_SPEED_SHARE * 100.0,
        if met { "MET" } else { "NOT MET" },
        if lines.is_empty() {
            " (idle only: no load level was run)"
        } else {
            ""
        }
    );
    db.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !support::start("foreground") {
        return Ok(());
    }
    let rows = env_u64("BGMIGRATE_BENCH_ROWS")?.unwrap_or(3_000_000);
    ensure!(rows > 0, "BGMIGRATE_BENCH_ROWS must be at least 1");
    let args: Value = match std::env::var("BGMIGRATE_BENCH_ARGS") {
        Ok(text) if !text.trim().is_empty() => serde_json::from_str(&text)
            .with_context(|| format!("BGMIGRATE_BENCH_ARGS={text:?} is not JSON"))?,
        _ => json!({}),
    };
    bgmigrate::Args::parse(&args).context("BGMIGRATE_BENCH_ARGS")?;
    let order = std::env::var("BGMIGRATE_BENCH_ORDER").unwrap_or_else(|_| "physical".into());
    ensure!(
        order == "physical" || order == "key",
        "BGMIGRATE_BENCH_ORDER={order:?}: allowed are physical and key"
    );
    let walk = Walk { order, args };
    let logs: PathBuf = tempfile::tempdir()?.keep();
    let result = support::in_fresh_database(DATABASE, |url| {
        let (walk, logs) = (&walk, &logs);
        async move { run(&url, rows, walk, logs).await }
    })
    .await;
    if support::keep() {
        eprintln!(
            "kept pgbench's logs in {} (BGMIGRATE_BENCH_KEEP)",
            logs.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&logs);
    }
    result
}
