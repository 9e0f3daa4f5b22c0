//! Parallel key ranges (`parallelism`): 1 vs 2 vs 4 workers on one migration, each beside its reference measured
//! in the same run on the same rows.
//!
//! ```text
//! cargo bench --bench parallel
//! BGMIGRATE_BENCH_ROWS=10000000 BGMIGRATE_BENCH_WORKERS=1,2 cargo bench --bench parallel
//! ```
//!
//! * **backfill**: `SET total = a + b` on a table with a random text key (~300-byte rows), against one plain
//!   `UPDATE` of an identical table. Each worker count gets its own freshly built, vacuumed table. Under each run
//!   and its `UPDATE`: the WAL, full-page images and checkpoints the server wrote meanwhile (what grows with the
//!   table), and for a heap-order run its listing and walking time and heap-only share.
//! * **copy into ClickHouse** (random md5 keys, key order): against the raw pipe `psql COPY … TO STDOUT | curl
//!   INSERT … FORMAT TabSeparated` into an identical ClickHouse table, and for N > 1 also against that pipe cut
//!   into N stretches of the heap run at once (what the raw tools gain from the same cores).
//! * **clickhouse_rewrite** of a table of one partition (so N workers need key ranges inside it): against one
//!   plain `INSERT INTO … SELECT … FROM` of the whole table into an identical target.
//!
//! Each comparison runs `BGMIGRATE_BENCH_ROUNDS` rounds (default 3), each round the reference and then every worker
//! count on fresh tables (the targets dropped after each run, so no run shares the server with an earlier run's
//! merges), and compares medians: on this machine one run of the reference alone varied by 1.6×.
//!
//! N workers are N runners in this process (each its own worker id and connections), with `parallelism = N` in
//! the migration's args; the first claims the migration and splits its key space, the others join. Environment:
//! `BGMIGRATE_BENCH_PG` (server URL without a database), `BGMIGRATE_BENCH_CH` (ClickHouse HTTP URL),
//! `BGMIGRATE_BENCH_ROWS` (default 1,000,000), `BGMIGRATE_BENCH_WORKERS` (default `1,2,4`),
//! `BGMIGRATE_BENCH_ONLY=backfill|copy|rewrite`, `BGMIGRATE_BENCH_BACKFILL_ORDER=key|physical` (the backfill's
//! `order`), `BGMIGRATE_BENCH_COPY_ORDER=key|physical` (the copy's `from.order`), both default key, and
//! `BGMIGRATE_BENCH_ARGS` (a JSON object of args every migration gets besides `parallelism`; default `{}`).

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

/// The args of a run on `workers` workers: `BGMIGRATE_BENCH_ARGS` (checked like any migration's) and `parallelism`.
fn bench_args(workers: u64) -> Value {
    let text = env_or("BGMIGRATE_BENCH_ARGS", "{}");
    let mut args: Value = serde_json::from_str(&text).expect("BGMIGRATE_BENCH_ARGS: a JSON object");
    args["parallelism"] = json!(workers);
    bgmigrate::Args::parse(&args).expect("BGMIGRATE_BENCH_ARGS: valid args");
    args
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
        args: bench_args(workers),
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

/// The times of one comparison: the reference's and each worker count's, one per round.
struct Timings {
    reference: Vec<Duration>,
    /// The reference split into N parts run at once, where the comparison has such a split (N > 1 only).
    split: Vec<(u64, Vec<Duration>)>,
    ours: Vec<(u64, Vec<Duration>)>,
}

/// The median of `times` (the upper one of an even count).
fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// `times` as "a–b s" (fastest–slowest), or one time.
fn spread(times: &[Duration]) -> String {
    let (min, max) = (times.iter().min(), times.iter().max());
    match (min, max) {
        (Some(min), Some(max)) if times.len() > 1 => {
            format!("{:.2}–{:.2} s", min.as_secs_f64(), max.as_secs_f64())
        }
        _ => format!("{:.2} s", median(times).as_secs_f64()),
    }
}

/// Measures `rounds` rounds, each the reference and then every worker count, so a slow moment of the machine
/// touches both sides of the comparison; the medians are compared. `reference(round)` and `ours(round, n)` each
/// run once on fresh tables and return the time of the work itself; `split(n)`, where it returns a time, is the
/// reference cut into `n` parts run at once, timed before `ours(round, n)`.
async fn measure(
    rounds: usize,
    workers: &[u64],
    mut reference: impl FnMut(usize) -> Duration,
    split: &mut dyn FnMut(u64) -> Option<Duration>,
    mut ours: impl AsyncFnMut(usize, u64) -> Duration,
) -> Timings {
    let mut timings = Timings {
        reference: Vec::new(),
        split: Vec::new(),
        ours: workers.iter().map(|&n| (n, Vec::new())).collect(),
    };
    for round in 0..rounds {
        timings.reference.push(reference(round));
        for (n, times) in &mut timings.ours {
            if *n > 1
                && let Some(took) = split(*n)
            {
                match timings.split.iter_mut().find(|(parts, _)| parts == n) {
                    Some((_, split_times)) => split_times.push(took),
                    None => timings.split.push((*n, vec![took])),
                }
            }
            times.push(ours(round, *n).await);
        }
    }
    timings
}

/// Prints the reference (`what`) and each worker count: median time and rate, the ratio of rates against the
/// reference's median, and the spread of the rounds.
fn print_timings(what: &str, rows: u64, timings: &Timings) {
    let rate = |times: &[Duration]| rows as f64 / median(times).as_secs_f64();
    let reference = rate(&timings.reference);
    println!(
        "{what}: {:.2} s ({reference:.0} rows/s; {} rounds: {})",
        median(&timings.reference).as_secs_f64(),
        timings.reference.len(),
        spread(&timings.reference)
    );
    let labelled = timings
        .split
        .iter()
        .map(|(n, times)| (format!("the reference in {n} parts at once"), times))
        .chain(
            timings
                .ours
                .iter()
                .map(|(n, times)| (format!("bgmigrate, {n} worker(s)"), times)),
        );
    for (label, times) in labelled {
        println!(
            "  {label:<33} {:>5.2} s {:>10.0} rows/s   {:.2}x the reference   (rounds: {})",
            median(times).as_secs_f64(),
            rate(times),
            rate(times) / reference,
            spread(times)
        );
    }
}

/// Builds the backfill's table `name`: a random text key and ~300-byte rows, vacuumed and analysed.
fn backfill_table(server: &str, name: &str, rows: u64) {
    psql(server, DATABASE, &format!(
        "CREATE TABLE {name} (id text PRIMARY KEY, a int NOT NULL, b int NOT NULL, total int, pad text) \
         WITH (autovacuum_enabled = false);
         INSERT INTO {name} SELECT md5(g::text), g % 1000, g % 7, NULL, repeat('x', 250) FROM generate_series(1, {rows}) g"
    ));
    psql(server, DATABASE, &format!("VACUUM ANALYZE {name}"));
    psql(server, DATABASE, "CHECKPOINT");
}

/// Prints where a heap-order backfill's time went, from its batches (each batch's state is its checkpoint after
/// it): listing the keys until the list closed (the first batch whose checkpoint has a `page`; that batch is the
/// close), then walking the list; and the share of the table's updates that were heap-only. Why the rate at
/// 10,000,000 rows falls behind the one at 1,000,000 is in which of these grows.
fn print_walk_phases(server: &str, table: &str, migration: &str) {
    let phases = psql(
        server,
        DATABASE,
        &format!(
            "WITH b AS (SELECT started_at, started_at + duration_ms * interval '1 ms' AS ended, \
                               state->>'page' IS NOT NULL AS walking \
                          FROM background_migration_batches WHERE migration_name = '{migration}'), \
                  closed AS (SELECT min(ended) AS at FROM b WHERE walking) \
             SELECT round(extract(epoch FROM closed.at - min(b.started_at))::numeric, 2) || ' s listing (' || \
                    count(*) FILTER (WHERE NOT walking) || ' sweep batches), ' || \
                    round(extract(epoch FROM max(b.ended) - closed.at)::numeric, 2) || ' s walking (' || \
                    count(*) FILTER (WHERE walking) || ' batches)' \
               FROM b, closed GROUP BY closed.at"
        ),
    );
    let hot = psql(
        server,
        DATABASE,
        &format!(
            "SELECT round(100.0 * n_tup_hot_upd / greatest(n_tup_upd, 1)) || ' % of ' || n_tup_upd || ' updates heap-only' \
               FROM pg_stat_user_tables WHERE relname = '{table}'"
        ),
    );
    println!("    {migration}: {phases}; {hot}");
}

/// Prints the advice the run was given (`advised` events: checkpoints forced by the WAL's volume), if any.
fn print_advice(server: &str, migration: &str) {
    let advice = psql(
        server,
        DATABASE,
        &format!(
            "SELECT string_agg(detail->>'advice', E'\\n      ' ORDER BY id) FROM background_migration_events \
              WHERE migration_name = '{migration}' AND kind = 'advised'"
        ),
    );
    if !advice.is_empty() {
        println!("    {migration} was advised: {advice}");
    }
}

/// What the server wrote while one run went on, from its cumulative statistics read before and after it: the WAL
/// (its position, exact), the full-page images in it (a page's first change after a checkpoint logs the whole
/// page: a run that outlasts the WAL between checkpoints logs its pages again, which is one way its cost per row
/// grows with the table), the checkpoints, and the temporary files (sorts and hashes that did not fit
/// `work_mem`). The counters other than the WAL position are what sessions have reported so far (a session
/// reports when its transaction ends or it disconnects, at most once a second).
struct ServerActivity {
    wal_bytes: f64,
    full_page_images: f64,
    checkpoints: f64,
    temp_bytes: f64,
}

impl ServerActivity {
    fn read(server: &str) -> Self {
        let row = psql(
            server,
            DATABASE,
            "SELECT pg_current_wal_lsn() - '0/0', w.wal_fpi, \
                    c.checkpoints_timed + c.checkpoints_req, d.temp_bytes \
               FROM pg_stat_wal w, pg_stat_bgwriter c, pg_stat_database d \
              WHERE d.datname = current_database()",
        );
        let fields: Vec<f64> = row
            .split('|')
            .map(|field| field.parse().expect("server activity: a number"))
            .collect();
        let [wal_bytes, full_page_images, checkpoints, temp_bytes] = fields[..] else {
            panic!("server activity: four numbers, not {row:?}");
        };
        Self {
            wal_bytes,
            full_page_images,
            checkpoints,
            temp_bytes,
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            wal_bytes: self.wal_bytes - before.wal_bytes,
            full_page_images: self.full_page_images - before.full_page_images,
            checkpoints: self.checkpoints - before.checkpoints,
            temp_bytes: self.temp_bytes - before.temp_bytes,
        }
    }

    fn describe(&self, rows: u64) -> String {
        let per_row = |value: f64| value / rows.max(1) as f64;
        format!(
            "{:.2} GB of WAL ({:.0} bytes a row), {:.0} full-page images ({:.2} a row), {:.0} checkpoints, \
             {:.1} MB of temporary files",
            self.wal_bytes / 1e9,
            per_row(self.wal_bytes),
            self.full_page_images,
            per_row(self.full_page_images),
            self.checkpoints,
            self.temp_bytes / 1e6
        )
    }
}

async fn backfill(server: &str, rows: u64, workers: &[u64], order: &str, rounds: usize) {
    let reference = |_round| {
        backfill_table(server, "ref", rows);
        let before = ServerActivity::read(server);
        let started = Instant::now();
        psql(server, DATABASE, "UPDATE ref SET total = a + b");
        let took = started.elapsed();
        println!(
            "    one plain UPDATE: {}",
            ServerActivity::read(server).since(&before).describe(rows)
        );
        psql(server, DATABASE, "DROP TABLE ref");
        took
    };
    let ours = async |round: usize, n: u64| {
        let name = format!("ours_{n}");
        backfill_table(server, &name, rows);
        let before = ServerActivity::read(server);
        let params = json!({
            "store": "postgres", "table": name, "key": ["id"], "order": order, "set": {"total": "a + b"},
        });
        let took = run_with_workers(
            &format!("{server}/{DATABASE}"),
            None,
            &format!("backfill_{n}_{round}"),
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
        let migration = format!("backfill_{n}_{round}");
        println!(
            "    {migration}: {}",
            ServerActivity::read(server).since(&before).describe(rows)
        );
        if order == "physical" {
            print_walk_phases(server, &name, &migration);
        }
        print_advice(server, &migration);
        psql(server, DATABASE, &format!("DROP TABLE {name}"));
        took
    };
    let timings = measure(rounds, workers, reference, &mut |_| None, ours).await;
    print_timings(
        &format!("backfill of {rows} rows (random text key, {order} order): one plain UPDATE"),
        rows,
        &timings,
    );
}

async fn copy(server: &str, ch: &str, rows: u64, workers: &[u64], order: &str, rounds: usize) {
    psql(server, DATABASE, &format!(
        "CREATE TABLE traces (id text PRIMARY KEY, project_id text NOT NULL, payload text, latency double precision);
         INSERT INTO traces SELECT md5(g::text), 'project-' || (g % 100), repeat('lorem ipsum ', 12) || g, g * 0.001
         FROM generate_series(1, {rows}) g"
    ));
    psql(server, DATABASE, "VACUUM ANALYZE traces");
    clickhouse(ch, &format!("DROP DATABASE IF EXISTS {DATABASE}"));
    clickhouse(ch, &format!("CREATE DATABASE {DATABASE}"));
    let targets = Targets { server, ch, rows };
    let insert = format!("{ch}/?query=INSERT%20INTO%20{DATABASE}.pipe%20FORMAT%20TabSeparated");
    // `-T -` streams: `--data-binary @-` would read all of psql's output into memory before sending it (out of
    // memory at 10,000,000 rows) and keep psql and ClickHouse from working at the same time.
    // `source`: what `COPY` reads, a table or a parenthesised query.
    let pipe = |source: &str| {
        let source = source.replace('\'', "'\\''");
        Command::new("bash")
            .args(["-o", "pipefail", "-c", &format!(
                "psql '{server}/{DATABASE}' -c 'COPY {source} TO STDOUT' | curl -sS --fail-with-body -X POST -T - '{insert}'"
            )])
            .spawn()
            .expect("pipe")
    };
    let reference = |_round| {
        targets.reference("pipe", || {
            let status = pipe("traces").wait().expect("pipe");
            assert!(status.success(), "the reference pipe failed");
        })
    };
    // The pipe in `n` parts at once, each a stretch of the heap (a TID range scan, as the physical order reads):
    // what the raw tools gain from the same cores.
    let pages: u64 = psql(
        server,
        DATABASE,
        "SELECT relpages FROM pg_class WHERE relname = 'traces'",
    )
    .parse()
    .expect("relpages");
    let mut split = |n: u64| {
        Some(targets.reference("pipe", || {
            let parts: Vec<_> = (0..n)
                .map(|i| {
                    let (from, to) = (pages * i / n, pages * (i + 1) / n);
                    let upper = if i + 1 == n {
                        String::new()
                    } else {
                        format!(" AND ctid < '({to},0)'")
                    };
                    pipe(&format!(
                        "(SELECT * FROM traces WHERE ctid >= '({from},0)'{upper})"
                    ))
                })
                .collect();
            for mut part in parts {
                assert!(
                    part.wait().expect("pipe").success(),
                    "a part of the pipe failed"
                );
            }
        }))
    };
    let ours = async |round: usize, n: u64| {
        targets
            .run("copy", round, n, |target| {
                json!({
                    "from": {"store": "postgres", "table": "traces", "key": ["id"], "order": order},
                    "to": {"store": "clickhouse", "table": target},
                })
            })
            .await
    };
    let timings = measure(rounds, workers, reference, &mut split, ours).await;
    clickhouse(ch, &format!("DROP DATABASE IF EXISTS {DATABASE}"));
    print_timings(
        &format!(
            "copy of {rows} rows (random md5 keys, {order} order) into ClickHouse: raw psql COPY | curl pipe"
        ),
        rows,
        &timings,
    );
}

async fn rewrite(server: &str, ch: &str, rows: u64, workers: &[u64], rounds: usize) {
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
    let targets = Targets { server, ch, rows };
    let reference = |_round| {
        targets.reference("plain", || {
            clickhouse(
                ch,
                &format!("INSERT INTO {DATABASE}.plain SELECT * FROM {DATABASE}.src"),
            );
        })
    };
    let ours = async |round: usize, n: u64| {
        targets
            .run(
                "clickhouse_rewrite",
                round,
                n,
                |target| json!({"store": "clickhouse", "from": "src", "to": target}),
            )
            .await
    };
    let timings = measure(rounds, workers, reference, &mut |_| None, ours).await;
    clickhouse(ch, &format!("DROP DATABASE IF EXISTS {DATABASE}"));
    print_timings(
        &format!("rewrite of {rows} rows in one partition: one plain INSERT ... SELECT"),
        rows,
        &timings,
    );
}

/// The ClickHouse tables a comparison writes, one per run: each is created empty before its run and dropped
/// after it (once its rows are counted), so no run shares the server with an earlier run's background merges.
struct Targets<'a> {
    server: &'a str,
    ch: &'a str,
    rows: u64,
}

impl Targets<'_> {
    /// Creates the empty target `name` after a Postgres `CHECKPOINT`, so no run inherits the dirty pages of the
    /// one before.
    fn fresh(&self, name: &str) {
        psql(self.server, DATABASE, "CHECKPOINT");
        clickhouse(
            self.ch,
            &format!("CREATE TABLE {DATABASE}.{name} {CH_TABLE}"),
        );
    }

    /// Checks that `name` holds every row once (read with `modifier`, e.g. `FINAL`), then drops it.
    fn check_and_drop(&self, name: &str, modifier: &str) {
        assert_eq!(
            clickhouse(
                self.ch,
                &format!("SELECT count() FROM {DATABASE}.{name} {modifier}")
            ),
            self.rows.to_string(),
            "{name}: every row written once"
        );
        clickhouse(self.ch, &format!("DROP TABLE {DATABASE}.{name}"));
    }

    /// Times `fill` writing the reference's rows into a fresh target `name`, which is then checked and dropped.
    fn reference(&self, name: &str, fill: impl FnOnce()) -> Duration {
        self.fresh(name);
        let started = Instant::now();
        fill();
        let took = started.elapsed();
        self.check_and_drop(name, "");
        took
    }

    /// Runs `kind` with the params `params(target)` on `n` workers into a fresh target; its time.
    async fn run(
        &self,
        kind: &str,
        round: usize,
        n: u64,
        params: impl Fn(&str) -> Value,
    ) -> Duration {
        let target = format!("ours_{n}");
        self.fresh(&target);
        let took = run_with_workers(
            &format!("{}/{DATABASE}", self.server),
            Some(&format!("{}/{DATABASE}", self.ch)),
            &format!("{kind}_{n}_{round}"),
            kind,
            params(&target),
            n,
        )
        .await;
        self.check_and_drop(&target, "FINAL");
        took
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
    let rounds: usize = env_or("BGMIGRATE_BENCH_ROUNDS", "3")
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .expect("BGMIGRATE_BENCH_ROUNDS: a positive count");
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
        backfill(&server, rows, &workers, &order, rounds).await;
    }
    if only.is_empty() || only == "copy" {
        let order = env_or("BGMIGRATE_BENCH_COPY_ORDER", "key");
        copy(&server, &ch, rows, &workers, &order, rounds).await;
    }
    if only.is_empty() || only == "rewrite" {
        rewrite(&server, &ch, rows, &workers, rounds).await;
    }
    psql(
        &server,
        "postgres",
        &format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"),
    );
}
