//! The operator's side of bgmigrate, against a real Postgres: editing args while a migration runs, failing with a
//! reason and retrying from the checkpoint, pause / resume / cancel, `wait`, refusing bad input with exit code 2,
//! `ENABLE_BACKGROUND_MIGRATIONS=false`, fast migrations, and the engine's handling of transient errors and cursors
//! that do not move. CLI behaviour goes through the real binary; timing-sensitive parts use the library's runner.

mod common;

use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bgmigrate::engine::RunnerState;
use bgmigrate::{Batch, BatchOutcome, Migration, MigrationError, Registry, Runner, Status};
use common::{TestDb, fast_config, text, wait_until};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------------------------

/// Creates `items` with `rows` rows keyed `k000001`, `k000002`, ... (text keys, keyset order = numeric order).
async fn items(db: &TestDb, rows: i64) {
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id text PRIMARY KEY, a int NOT NULL, b int NOT NULL, total int, \
         hits int NOT NULL DEFAULT 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO items (id, a, b) SELECT 'k' || lpad(i::text, 6, '0'), i, 2 * i FROM generate_series(1, $1) i",
    )
    .bind(rows)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// The backfill over `items` that the tests run; `args` is the TOML body of its `[args]` table.
fn backfill(args: &str) -> String {
    format!(
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\n\
         set = {{ total = \"a + b\", hits = \"hits + 1\" }}\n[args]\n{args}\n"
    )
}

/// How many rows of `items` were updated 0 times, once, and more than once; also checks `total` on updated rows.
async fn hits(db: &TestDb) -> (i64, i64, i64) {
    let pool = db.pool().await;
    let (zero, once, more, wrong_total): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE hits = 0), count(*) FILTER (WHERE hits = 1), \
         count(*) FILTER (WHERE hits > 1), count(*) FILTER (WHERE hits > 0 AND total IS DISTINCT FROM a + b) \
         FROM items",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(wrong_total, 0, "every updated row must have total = a + b");
    (zero, once, more)
}

/// The control-table row as plain values.
async fn row(db: &TestDb, name: &str) -> bgmigrate::control::MigrationRecord {
    db.connect().await.control.get(name).await.expect("row")
}

/// Runs one SQL statement on the test database.
async fn exec(db: &TestDb, sql: &str) {
    let pool = db.pool().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
}

/// Runs the CLI without blocking the test's runtime (a library runner may share it).
async fn cli(db: &TestDb, args: &[&str]) -> Output {
    cli_env(db, args, &[]).await
}

async fn cli_env(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Output {
    let command = tokio::process::Command::from(db.command(args, env)).output();
    tokio::time::timeout(Duration::from_secs(30), command)
        .await
        .unwrap_or_else(|_| panic!("bgmigrate {args:?} did not end within 30 s"))
        .expect("run bgmigrate")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `worker --exit-when-done` process with short leases and polling.
fn spawn_worker(db: &TestDb) -> tokio::process::Child {
    let mut command = tokio::process::Command::from(db.command(
        &[
            "worker",
            "--exit-when-done",
            "--lease-ttl",
            "5s",
            "--heartbeat",
            "1s",
            "--poll",
            "200ms",
        ],
        &[],
    ));
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command.spawn().expect("spawn the worker")
}

async fn finish(child: tokio::process::Child) -> Output {
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the worker did not exit within 30 s")
        .expect("worker output")
}

async fn run_worker(db: &TestDb) -> Output {
    finish(spawn_worker(db)).await
}

/// Starts a worker on `name` (slow batches expected), lets it commit a few batches, then breaks its args by SQL the
/// way an operator's typo would; returns the worker's output once it has exited.
async fn fail_midway_with_bad_args(db: &TestDb, name: &str) -> Output {
    let worker = spawn_worker(db);
    wait_until(
        "a few batches are committed",
        Duration::from_secs(15),
        move || async move { db.batches(name).await.len() >= 2 },
    )
    .await;
    exec(
        db,
        &format!(
            "UPDATE background_migrations SET args = '{{\"batchSize\": \"lots\"}}' WHERE name = '{name}'"
        ),
    )
    .await;
    finish(worker).await
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

/// An operator's `set-args` on a running migration is picked up before the very next batch: the batches after it
/// use the new size, the change is in the event history with the operator as actor, and no row is done twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_args_edit_takes_effect_on_the_next_batch() {
    let db = TestDb::create("args_edit_next_batch").await;
    items(&db, 6000).await;
    let name = "0001_totals";
    db.define(name, &backfill("batchSize = 1000\nsleepMs = 250"));

    let worker = spawn_worker(&db);
    let dbr = &db;
    wait_until(
        "two batches are committed",
        Duration::from_secs(15),
        move || async move { dbr.batches(name).await.len() >= 2 },
    )
    .await;
    let set = cli(&db, &["set-args", name, r#"{"batchSize":250}"#]).await;
    assert_eq!(set.status.code(), Some(0), "{}", text(&set));
    assert!(stdout(&set).contains("250"), "{}", text(&set));
    let out = finish(worker).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let record = row(&db, name).await;
    assert_eq!(record.status, Status::Finished);
    assert_eq!(record.args, json!({"batchSize": 250, "sleepMs": 250}));
    let all = db.batches(name).await;
    let first_small = all
        .iter()
        .position(|(size, _, _)| *size == 250)
        .unwrap_or_else(|| panic!("no batch used the new size: {all:?}"));
    assert!(first_small >= 2, "{all:?}");
    assert!(
        all[..first_small]
            .iter()
            .all(|(size, rows, _)| *size == 1000 && *rows == 1000),
        "batches before the edit use the old size: {all:?}"
    );
    let after = &all[first_small..];
    assert!(
        after.iter().all(|(size, _, _)| *size == 250),
        "every batch after the edit uses the new size: {all:?}"
    );
    assert!(after.len() >= 4, "{all:?}");
    let (last, full) = after.split_last().unwrap();
    assert!(full.iter().all(|(_, rows, _)| *rows == 250), "{all:?}");
    assert!(last.1 <= 250, "{all:?}");
    assert_eq!(hits(&db).await, (0, 6000, 0));

    let events = db.events(name).await;
    let changed = events
        .iter()
        .find(|(kind, _, _)| kind == "args_changed")
        .unwrap_or_else(|| panic!("no args_changed event: {events:?}"));
    assert!(changed.1.starts_with("cli:"), "actor {:?}", changed.1);
    assert_eq!(changed.2["before"]["batchSize"], json!(1000));
    assert_eq!(changed.2["after"]["batchSize"], json!(250));
    let resized = events
        .iter()
        .find(|(kind, _, _)| kind == "batch_size_changed")
        .unwrap_or_else(|| panic!("no batch_size_changed event: {events:?}"));
    assert_eq!(resized.2, json!({"before": 1000, "after": 250}));
}

/// Args broken behind bgmigrate's back (plain SQL) fail the migration before its next batch, with a reason that
/// names the key; what was committed stays committed, exactly once, and the checkpoint is kept for a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_args_fail_the_migration_with_a_reason_and_keep_committed_batches() {
    let db = TestDb::create("bad_args_fail").await;
    items(&db, 10_000).await;
    let name = "0001_totals";
    db.define(name, &backfill("batchSize = 1000\nsleepMs = 200"));

    let out = fail_midway_with_bad_args(&db, name).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains(name), "{}", text(&out));

    let record = row(&db, name).await;
    assert_eq!(record.status, Status::Failed);
    let reason = record.failed_reason.clone().unwrap_or_default();
    assert!(reason.contains("batchSize"), "{reason}");
    assert!(reason.contains("\"lots\""), "{reason}");
    assert!(record.failed_at.is_some());
    assert_eq!(record.worker_id, None);

    let (zero, once, more) = hits(&db).await;
    assert_eq!(more, 0, "no row may be updated twice");
    assert!((2000..10_000).contains(&once), "updated {once}");
    assert_eq!(zero + once, 10_000);
    assert_eq!(
        once, record.rows_done,
        "rows_done counts the committed rows"
    );

    let cursor = record.state["cursor"][0]
        .as_str()
        .unwrap_or_else(|| panic!("the checkpoint was lost: {}", record.state))
        .to_owned();
    let pool = db.pool().await;
    let misplaced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM items WHERE (id <= $1 AND hits <> 1) OR (id > $1 AND hits <> 0)",
    )
    .bind(&cursor)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        misplaced, 0,
        "rows up to the checkpoint {cursor} are done, the rest untouched"
    );
}

/// `set-args` validates before it writes: text that is not JSON, an out-of-range batch size and a JSON array are
/// refused with exit code 2 and a message saying what is wrong; the args and the event history stay as they were.
#[tokio::test]
async fn set_args_refuses_invalid_json_and_values_and_changes_nothing() {
    let db = TestDb::create("set_args_refuses").await;
    items(&db, 10).await;
    let name = "0001_totals";
    db.define(name, &backfill("batchSize = 1000"));
    let migrate = cli(&db, &["migrate"]).await;
    assert_eq!(migrate.status.code(), Some(0), "{}", text(&migrate));

    let cases = [
        ("not json", "not valid JSON"),
        (
            r#"{"batchSize": 0}"#,
            "args.batchSize must be an integer from 1",
        ),
        (r#"{"batchSize": "2500"}"#, "args.batchSize"),
        ("[1]", "must be a JSON object"),
    ];
    for (patch, expected) in cases {
        let out = cli(&db, &["set-args", name, patch]).await;
        assert_eq!(out.status.code(), Some(2), "{patch}: {}", text(&out));
        assert!(stderr(&out).contains(expected), "{patch}: {}", text(&out));
        assert!(stderr(&out).contains(name), "{patch}: {}", text(&out));
        assert!(
            stderr(&out).contains("nothing was changed"),
            "{patch}: {}",
            text(&out)
        );
    }
    assert_eq!(row(&db, name).await.args, json!({"batchSize": 1000}));

    let unknown = cli(&db, &["set-args", "0099_nope", r#"{"batchSize": 10}"#]).await;
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(
        stderr(&unknown).contains("no background migration named \"0099_nope\""),
        "{}",
        text(&unknown)
    );
    assert!(
        !db.events(name)
            .await
            .iter()
            .any(|(kind, _, _)| kind == "args_changed"),
        "a refused edit must not be recorded as a change"
    );
}

/// A row whose script this build lacks is failed with a reason naming the missing script, and (as in the original
/// system) it does not block the migrations after it.
#[tokio::test]
async fn an_unknown_script_fails_its_row_while_later_migrations_still_run() {
    let db = TestDb::create("unknown_script").await;
    items(&db, 500).await;
    db.define("0001_custom", "script = \"does_not_exist\"\n");
    db.define("0002_totals", &backfill("batchSize = 100"));

    let out = run_worker(&db).await;
    // `--exit-when-done` exits 1 only for a migration *this worker ran* that failed; the unknown script was failed at
    // registration, before any worker could run it.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let custom = row(&db, "0001_custom").await;
    assert_eq!(custom.status, Status::Failed, "{}", text(&out));
    let reason = custom.failed_reason.unwrap_or_default();
    assert!(
        reason.contains("no migration kind/script named \"does_not_exist\""),
        "{reason}"
    );
    assert!(
        reason.contains("backfill"),
        "the reason lists the known kinds: {reason}"
    );
    assert_eq!(
        row(&db, "0002_totals").await.status,
        Status::Finished,
        "{}",
        text(&out)
    );
    assert_eq!(hits(&db).await, (0, 500, 0));
}

/// `retry` after fixing the args resumes at the checkpoint: every row ends up updated exactly once. Retrying a
/// finished migration is an illegal transition, refused with exit code 2 and the allowed states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_resumes_from_the_checkpoint() {
    let db = TestDb::create("retry_resumes").await;
    items(&db, 10_000).await;
    let name = "0001_totals";
    db.define(name, &backfill("batchSize = 1000\nsleepMs = 200"));
    let failed = fail_midway_with_bad_args(&db, name).await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let before = row(&db, name).await;
    assert_eq!(before.status, Status::Failed);
    let (_, done_before, _) = hits(&db).await;
    assert!(done_before > 0 && done_before < 10_000);

    exec(
        &db,
        &format!("UPDATE background_migrations SET args = '{{\"batchSize\": 1000}}' WHERE name = '{name}'"),
    )
    .await;
    let retry = cli(&db, &["retry", name]).await;
    assert_eq!(retry.status.code(), Some(0), "{}", text(&retry));
    assert!(
        stdout(&retry).contains("status is now pending"),
        "{}",
        text(&retry)
    );
    let pending = row(&db, name).await;
    assert_eq!(pending.status, Status::Pending);
    assert_eq!(pending.failed_reason, None);
    assert_eq!(pending.state, before.state, "retry keeps the checkpoint");
    assert_eq!(pending.rows_done, before.rows_done);

    let out = run_worker(&db).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let record = row(&db, name).await;
    assert_eq!(record.status, Status::Finished);
    assert_eq!(
        hits(&db).await,
        (0, 10_000, 0),
        "no row skipped, no row done twice"
    );
    assert_eq!(record.rows_done, 10_000);
    let history = db.events(name).await;
    assert!(
        history
            .iter()
            .any(|(kind, actor, _)| kind == "retry" && actor.starts_with("cli:")),
        "{history:?}"
    );

    let again = cli(&db, &["retry", "--from-start", name]).await;
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(
        stderr(&again).contains("cannot retry a migration that is finished"),
        "{}",
        text(&again)
    );
    let after = row(&db, name).await;
    assert_eq!(after.status, Status::Finished);
    assert_eq!(after.state, record.state, "a refused retry clears nothing");
}

/// The original system's runbook, typed verbatim: set `args` with a plain UPDATE on the failed migration, then
/// retry. It resumes from the checkpoint with 2500-row batches, which `show` and `show --json` display.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_troubleshooting_steps_work_verbatim() {
    let db = TestDb::create("original_runbook").await;
    items(&db, 10_000).await;
    let name = "20241024_1730_migrate_totals";
    db.define(name, &backfill("batchSize = 1000"));
    // A row that makes its batch fail (think: a statement timeout on one huge batch); batches before it commit.
    exec(
        &db,
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.id = 'k005500' THEN RAISE EXCEPTION 'row k005500 is poisoned'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER poison BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION poison();",
    )
    .await;
    let out = run_worker(&db).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failed = row(&db, name).await;
    assert_eq!(failed.status, Status::Failed);
    assert!(
        failed
            .failed_reason
            .as_deref()
            .unwrap_or_default()
            .contains("poisoned"),
        "{:?}",
        failed.failed_reason
    );
    assert_eq!(
        hits(&db).await,
        (5000, 5000, 0),
        "batches 1-5 committed, 6 rolled back"
    );
    assert_eq!(failed.state, json!({"cursor": ["k005000"]}));

    exec(&db, "DROP TRIGGER poison ON items").await;
    exec(
        &db,
        &format!(
            "UPDATE background_migrations SET args = '{{\"batchSize\": 2500}}' WHERE name = '{name}';"
        ),
    )
    .await;
    let retry = cli(&db, &["retry", name]).await;
    assert_eq!(retry.status.code(), Some(0), "{}", text(&retry));
    let out = run_worker(&db).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(row(&db, name).await.status, Status::Finished);
    assert_eq!(hits(&db).await, (0, 10_000, 0), "resumed, not restarted");

    let show = cli(&db, &["show", name]).await;
    assert_eq!(show.status.code(), Some(0), "{}", text(&show));
    let printed = stdout(&show);
    assert!(printed.contains(r#""batchSize":2500"#), "{printed}");
    let batch_lines: Vec<Vec<&str>> = printed
        .lines()
        .skip_while(|line| !line.starts_with("recent batches"))
        .skip(2)
        .take_while(|line| !line.trim().is_empty())
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert!(
        batch_lines
            .iter()
            .filter(|fields| fields.get(2) == Some(&"2500") && fields.get(3) == Some(&"2500"))
            .count()
            == 2,
        "two full 2500-row batches after the retry:\n{printed}"
    );
    assert!(
        batch_lines
            .iter()
            .any(|fields| fields.get(3) == Some(&"1000")),
        "{printed}"
    );

    let json_out = cli(&db, &["show", name, "--json"]).await;
    assert_eq!(json_out.status.code(), Some(0), "{}", text(&json_out));
    let view: Value = serde_json::from_slice(&json_out.stdout).expect("show --json prints JSON");
    assert_eq!(view["migration"]["status"], json!("finished"));
    assert_eq!(view["migration"]["args"], json!({"batchSize": 2500}));
    let shown = view["batches"].as_array().expect("batches array");
    // Newest first: the tail batch, then the two 2500-row batches, then the five from before the failure.
    let sizes: Vec<(i64, i64)> = shown
        .iter()
        .map(|b| {
            (
                b["batch_size"].as_i64().unwrap(),
                b["rows"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sizes,
        vec![
            (2500, 0),
            (2500, 2500),
            (2500, 2500),
            (1000, 1000),
            (1000, 1000),
            (1000, 1000),
            (1000, 1000),
            (1000, 1000)
        ]
    );
    assert_eq!(shown[2]["state"], json!({"cursor": ["k007500"]}));
}

/// Pause stops a running migration after its current batch and frees the lease; nothing runs while paused; resume
/// lets a worker finish it; a cancelled migration is never run; pausing a finished one is refused (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_cancel_follow_the_allowed_transitions() {
    let db = TestDb::create("pause_resume_cancel").await;
    items(&db, 10_000).await;
    exec(
        &db,
        "CREATE TABLE others (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); \
         INSERT INTO others (id) SELECT generate_series(1, 100);",
    )
    .await;
    let (a, b) = ("0001_totals", "0002_others");
    db.define(a, &backfill("batchSize = 500\nsleepMs = 150"));
    db.define(
        b,
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"others\"\nkey = [\"id\"]\nset = { v = \"v + 1\" }\n",
    );
    let migrate = cli(&db, &["migrate"]).await;
    assert_eq!(migrate.status.code(), Some(0), "{}", text(&migrate));

    let connected = db.connect().await;
    let handle = Runner::new(
        connected.control.clone(),
        bgmigrate::builtin_registry(),
        connected.stores.clone(),
        bgmigrate::RunnerConfig {
            exit_when_done: false,
            ..fast_config("pauser")
        },
    )
    .spawn();

    let dbr = &db;
    wait_until(
        "a few batches are committed",
        Duration::from_secs(15),
        move || async move { dbr.batches(a).await.len() >= 2 },
    )
    .await;
    let pause = cli(&db, &["pause", a]).await;
    assert_eq!(pause.status.code(), Some(0), "{}", text(&pause));
    assert!(
        stdout(&pause).contains("status is now paused"),
        "{}",
        text(&pause)
    );
    let at_pause = db.batches(a).await.len();
    wait_until("the runner lets go", Duration::from_secs(5), || {
        let state = handle.state();
        async move { state != RunnerState::Running(a.to_owned()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let paused = row(&db, a).await;
    assert_eq!(paused.status, Status::Paused);
    assert_eq!(paused.worker_id, None);
    assert_eq!(paused.lease_expires_at, None);
    assert_eq!(
        db.batches(a).await.len(),
        at_pause,
        "no batch may commit while paused"
    );
    let (_, once, more) = hits(&db).await;
    assert_eq!(more, 0);
    assert!(once < 10_000, "paused before the end");
    assert_eq!(
        once, paused.rows_done,
        "the checkpoint matches the committed rows"
    );
    assert_eq!(
        row(&db, b).await.status,
        Status::Pending,
        "the next one waits"
    );

    let cancel = cli(&db, &["cancel", b]).await;
    assert_eq!(cancel.status.code(), Some(0), "{}", text(&cancel));
    assert_eq!(row(&db, b).await.status, Status::Cancelled);

    let resume = cli(&db, &["resume", a]).await;
    assert_eq!(resume.status.code(), Some(0), "{}", text(&resume));
    assert!(
        stdout(&resume).contains("status is now pending"),
        "{}",
        text(&resume)
    );
    wait_until(
        "the resumed migration finishes",
        Duration::from_secs(15),
        move || async move { dbr.status_of(a).await == Status::Finished },
    )
    .await;
    assert_eq!(hits(&db).await, (0, 10_000, 0));

    // The runner stays up; it must not pick the cancelled migration.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(row(&db, b).await.status, Status::Cancelled);
    assert_eq!(db.batches(b).await.len(), 0);
    let pool = db.pool().await;
    let touched: i64 = sqlx::query_scalar("SELECT count(*) FROM others WHERE v <> 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(touched, 0);

    let summary = tokio::time::timeout(Duration::from_secs(10), handle.shutdown())
        .await
        .expect("the runner stops")
        .expect("runner result");
    assert_eq!(summary.finished, vec![a.to_owned()]);
    assert!(summary.failed.is_empty(), "{summary:?}");

    let refused = cli(&db, &["pause", a]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        stderr(&refused).contains("cannot pause a migration that is finished"),
        "{}",
        text(&refused)
    );
    let history = db.events(a).await;
    for action in ["pause", "resume"] {
        assert!(
            history
                .iter()
                .any(|(kind, actor, _)| kind == action && actor.starts_with("cli:")),
            "{action}: {history:?}"
        );
    }
}

/// `wait` is the deployment pipeline's gate: 0 once the named migrations are finished (waiting while they run), 1
/// when one failed or the timeout passed (naming it), and 2 for a name that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exits_zero_when_finished_one_on_failure_or_timeout_and_two_for_unknown_names() {
    let db = TestDb::create("wait_exit_codes").await;
    items(&db, 3000).await;
    let (good, bad) = ("0001_totals", "0002_missing_table");
    db.define(good, &backfill("batchSize = 500\nsleepMs = 100"));
    db.define(
        bad,
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"missing_table\"\nkey = [\"id\"]\nset = { v = \"1\" }\n",
    );
    let migrate = cli(&db, &["migrate"]).await;
    assert_eq!(migrate.status.code(), Some(0), "{}", text(&migrate));

    let timed_out = cli(&db, &["wait", good, "--timeout", "1s"]).await;
    assert_eq!(timed_out.status.code(), Some(1), "{}", text(&timed_out));
    assert!(
        stderr(&timed_out).contains("timed out"),
        "{}",
        text(&timed_out)
    );
    assert!(
        stderr(&timed_out).contains(&format!("{good} (pending")),
        "{}",
        text(&timed_out)
    );

    let unknown = cli(&db, &["wait", good, "0099_nope", "--timeout", "5s"]).await;
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(stderr(&unknown).contains("0099_nope"), "{}", text(&unknown));

    let waiter =
        tokio::process::Command::from(db.command(&["wait", good, "--timeout", "25s"], &[]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let worker = run_worker(&db).await;
    assert_eq!(
        worker.status.code(),
        Some(1),
        "the second one fails: {}",
        text(&worker)
    );
    let waited = finish(waiter).await;
    assert_eq!(waited.status.code(), Some(0), "{}", text(&waited));
    assert_eq!(row(&db, good).await.status, Status::Finished);

    let failed = cli(&db, &["wait", bad, "--timeout", "5s"]).await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let message = stderr(&failed);
    assert!(
        message.contains(bad) && message.contains("failed"),
        "{message}"
    );
    assert!(
        message.contains("missing_table does not exist"),
        "{message}"
    );
    assert!(
        message.contains(&format!("bgmigrate retry {bad}")),
        "{message}"
    );

    let all = cli(&db, &["wait", "--timeout", "5s"]).await;
    assert_eq!(all.status.code(), Some(1), "{}", text(&all));
    let finished = cli(&db, &["wait", good]).await;
    assert_eq!(finished.status.code(), Some(0), "{}", text(&finished));
}

/// Bad definitions and bad control-store URLs are refused with exit code 2 and a message naming the file and what
/// to fix; a directory with one bad definition registers none of them and applies no fast migration.
#[tokio::test]
async fn malformed_definitions_and_urls_are_refused_with_exit_code_two() {
    let db = TestDb::create("malformed_definitions").await;
    items(&db, 10).await;
    db.define("0001_good", &backfill("batchSize = 10"));
    db.fast_migration(
        "0001_widgets.sql",
        "CREATE TABLE widgets (id int PRIMARY KEY);",
    );

    let cases = [
        (
            "kind = \"backfill\"\nstore = \"postgres\nkey = [",
            "not valid TOML",
        ),
        (
            "store = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\nset = { total = \"a\" }\n",
            "missing kind",
        ),
        (
            "kind = \"backfill\"\nstore = \"postgres\"\ntabel = \"items\"\nkey = [\"id\"]\nset = { total = \"a\" }\n",
            "unknown field `tabel`",
        ),
        (
            "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\nset = { total = \"a\" }\n[args]\nbatchSize = -1\n",
            "args.batchSize",
        ),
    ];
    for (toml, expected) in cases {
        db.define("0002_bad", toml);
        for command in ["migrate", "worker"] {
            let args: &[&str] = if command == "worker" {
                &["worker", "--exit-when-done"]
            } else {
                &["migrate"]
            };
            let out = cli(&db, args).await;
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} {expected}: {}",
                text(&out)
            );
            let message = stderr(&out);
            assert!(message.contains("0002_bad.toml"), "{command}: {message}");
            assert!(message.contains(expected), "{command}: {message}");
        }
    }
    let status = cli(&db, &["status", "--json"]).await;
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let listed: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(listed, json!([]), "nothing may be registered");
    let pool = db.pool().await;
    let widgets: Option<String> = sqlx::query_scalar("SELECT to_regclass('widgets')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(widgets, None, "no fast migration may be applied");

    let mysql = cli_env(&db, &["status"], &[("DATABASE_URL", "mysql://x")]).await;
    assert_eq!(mysql.status.code(), Some(2), "{}", text(&mysql));
    assert!(stderr(&mysql).contains("mysql://x"), "{}", text(&mysql));
    assert!(stderr(&mysql).contains("postgres://"), "{}", text(&mysql));

    let mut without = db.command(&["status"], &[]);
    without.env_remove("DATABASE_URL");
    let missing = tokio::process::Command::from(without)
        .output()
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        stderr(&missing).contains("DATABASE_URL"),
        "{}",
        text(&missing)
    );
}

/// With `ENABLE_BACKGROUND_MIGRATIONS=false` a worker runs nothing, exits cleanly when asked to, and warns naming
/// what stays pending; a value that is not a boolean is refused (exit 2) rather than guessed.
#[tokio::test]
async fn disabled_background_migrations_run_nothing_and_name_the_pending_ones() {
    let db = TestDb::create("disabled_worker").await;
    items(&db, 100).await;
    let name = "0001_totals";
    db.define(name, &backfill("batchSize = 10"));

    let out = cli_env(
        &db,
        &["worker", "--exit-when-done"],
        &[("ENABLE_BACKGROUND_MIGRATIONS", "false")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let message = stderr(&out);
    assert!(message.contains("disabled"), "{message}");
    assert!(message.contains(name), "{message}");
    let record = row(&db, name).await;
    assert_eq!(record.status, Status::Pending);
    assert_eq!(record.attempts, 0);
    assert_eq!(hits(&db).await, (100, 0, 0));

    let maybe = cli_env(
        &db,
        &["worker", "--exit-when-done"],
        &[("ENABLE_BACKGROUND_MIGRATIONS", "maybe")],
    )
    .await;
    assert_eq!(maybe.status.code(), Some(2), "{}", text(&maybe));
    assert!(
        stderr(&maybe).contains("ENABLE_BACKGROUND_MIGRATIONS=\"maybe\""),
        "{}",
        text(&maybe)
    );
    assert!(stderr(&maybe).contains("true or false"), "{}", text(&maybe));
    assert_eq!(row(&db, name).await.status, Status::Pending);
    assert_eq!(hits(&db).await, (100, 0, 0));
}

/// Fast migrations apply once (a second `migrate` applies nothing), and an applied file that was edited afterwards
/// is refused with a message saying so, instead of being silently re-run or ignored.
#[tokio::test]
async fn fast_migrations_apply_once_and_an_edited_applied_file_is_refused() {
    let db = TestDb::create("fast_once").await;
    db.fast_migration(
        "0001_widgets.sql",
        "CREATE TABLE widgets (id int PRIMARY KEY);\nINSERT INTO widgets VALUES (1);",
    );
    for _ in 0..2 {
        let out = cli(&db, &["migrate"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let pool = db.pool().await;
    let (applied, widgets): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM _sqlx_migrations), (SELECT count(*) FROM widgets)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((applied, widgets), (1, 1), "applied exactly once");

    db.fast_migration(
        "0001_widgets.sql",
        "CREATE TABLE widgets (id int PRIMARY KEY, name text);\nINSERT INTO widgets VALUES (1);",
    );
    let edited = cli(&db, &["migrate"]).await;
    assert_eq!(edited.status.code(), Some(2), "{}", text(&edited));
    assert!(
        stderr(&edited).contains("an applied migration file was edited"),
        "{}",
        text(&edited)
    );
    let name_column: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'widgets' AND column_name = 'name'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(name_column, 0, "the edited file was not run");
}

/// A custom migration that fails twice transiently, then succeeds; a custom migration whose cursor never moves.
struct Flaky {
    calls: Arc<AtomicU32>,
}

#[async_trait]
impl Migration for Flaky {
    async fn validate(&self) -> Result<(), MigrationError> {
        Ok(())
    }

    async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
        Ok(Some(3))
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < 2 {
            return Err(MigrationError::Transient("connection reset by peer".into()));
        }
        let n = batch.state.get("n").and_then(Value::as_u64).unwrap_or(0) + 1;
        Ok(BatchOutcome {
            state: json!({ "n": n }),
            done: n >= 3,
            rows: 1,
            bytes: 0,
        })
    }
}

struct Stuck;

#[async_trait]
impl Migration for Stuck {
    async fn validate(&self) -> Result<(), MigrationError> {
        Ok(())
    }

    async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
        Ok(None)
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        Ok(BatchOutcome {
            state: batch.state.clone(),
            done: false,
            rows: 10,
            bytes: 0,
        })
    }
}

/// The engine retries a batch that failed transiently (recording each retry) and finishes the migration; it fails
/// a migration whose cursor does not advance instead of looping forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_batch_error_is_retried_and_a_cursor_that_does_not_advance_fails() {
    let db = TestDb::create("transient_and_stuck").await;
    db.define("0001_flaky", "script = \"flaky\"\n");
    db.define("0002_stuck", "script = \"stuck\"\n");
    let calls = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::empty();
    let flaky_calls = calls.clone();
    registry.register("flaky", move |_, _| {
        Ok(Arc::new(Flaky {
            calls: flaky_calls.clone(),
        }) as Arc<dyn Migration>)
    });
    registry.register("stuck", |_, _| Ok(Arc::new(Stuck) as Arc<dyn Migration>));
    let connected = db.connect().await;
    common::register_dir(&connected, &db.migrations(), &registry).await;

    let summary = tokio::time::timeout(
        Duration::from_secs(20),
        Runner::new(
            connected.control.clone(),
            registry,
            connected.stores.clone(),
            fast_config("tester"),
        )
        .spawn()
        .join(),
    )
    .await
    .expect("the runner drains within 20 s")
    .expect("runner result");

    assert_eq!(summary.finished, vec!["0001_flaky".to_owned()]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "2 failed attempts + 3 batches"
    );
    let flaky = row(&db, "0001_flaky").await;
    assert_eq!(flaky.status, Status::Finished);
    assert_eq!(flaky.state, json!({"n": 3}));
    assert_eq!(flaky.rows_done, 3);
    let dbr = &db;
    wait_until(
        "both retries are recorded",
        Duration::from_secs(5),
        move || async move {
            dbr.events("0001_flaky")
                .await
                .iter()
                .filter(|(kind, _, _)| kind == "batch_retried")
                .count()
                == 2
        },
    )
    .await;
    let retried = db.events("0001_flaky").await;
    let retry = retried
        .iter()
        .find(|(kind, _, _)| kind == "batch_retried")
        .unwrap();
    assert!(
        retry.2["error"]
            .as_str()
            .unwrap_or_default()
            .contains("connection reset"),
        "{retry:?}"
    );

    assert_eq!(summary.failed.len(), 1, "{summary:?}");
    assert_eq!(summary.failed[0].0, "0002_stuck");
    let stuck = row(&db, "0002_stuck").await;
    assert_eq!(stuck.status, Status::Failed);
    let reason = stuck.failed_reason.unwrap_or_default();
    assert!(reason.contains("did not advance"), "{reason}");
    assert_eq!(stuck.rows_done, 0, "the stuck batch was not counted");
    assert_eq!(db.batches("0002_stuck").await.len(), 0);
}

/// Hostile or mistaken CLI input is refused with exit 2 and a message naming what to fix: a NUL character in
/// args, control characters in a name, a migrations directory that does not exist, a short admin token; a
/// database that refuses connections is reported as such at once, each sentence once; secret-looking args never
/// reach the terminal.
#[tokio::test]
async fn the_cli_refuses_hostile_input_and_keeps_secrets_out_of_its_output() {
    const NAME: &str = "20240101_0001_hostile";
    let db = TestDb::create("cli_hostile").await;
    items(&db, 10).await;
    db.define(NAME, &backfill("batchSize = 10"));
    let migrate = cli(&db, &["migrate"]).await;
    assert!(migrate.status.success(), "{}", text(&migrate));

    let nul = cli(&db, &["set-args", NAME, r#"{"note": "a\u0000b"}"#]).await;
    assert_eq!(nul.status.code(), Some(2), "{}", text(&nul));
    assert!(
        stderr(&nul).contains("args.note contains the NUL character"),
        "{}",
        stderr(&nul)
    );
    let name = cli(&db, &["pause", "bad\u{1}name"]).await;
    assert_eq!(name.status.code(), Some(2), "{}", text(&name));
    assert!(
        stderr(&name).contains("control characters"),
        "{}",
        stderr(&name)
    );
    assert_eq!(row(&db, NAME).await.args, json!({"batchSize": 10}));

    let missing = cli_env(
        &db,
        &["migrate"],
        &[("BGMIGRATE_MIGRATIONS_DIR", "/nonexistent/migrations")],
    )
    .await;
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(stderr(&missing).contains("/nonexistent/migrations does not exist"));
    let short = cli_env(
        &db,
        &["web", "--bind", "127.0.0.1:0"],
        &[("BGMIGRATE_ADMIN_TOKEN", "x")],
    )
    .await;
    assert_eq!(short.status.code(), Some(2), "{}", text(&short));
    assert!(
        stderr(&short).contains("BGMIGRATE_ADMIN_TOKEN has 1 characters"),
        "{}",
        stderr(&short)
    );

    let started = std::time::Instant::now();
    let refused = cli_env(
        &db,
        &["status"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing")],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let message = stderr(&refused);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(message.contains("refused"), "{message}");
    assert!(!message.contains("pool timed out"), "{message}");
    assert_eq!(
        message.matches("error communicating with database").count(),
        1,
        "{message}"
    );

    let set = cli(&db, &["set-args", NAME, r#"{"apiToken": "hunter2"}"#]).await;
    assert!(set.status.success(), "{}", text(&set));
    for args in [
        &["set-args", NAME, r#"{"sleepMs": 1}"#][..],
        &["show", NAME][..],
        &["show", NAME, "--json"][..],
        &["status", "--json"][..],
    ] {
        let out = cli(&db, args).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            !text(&out).contains("hunter2"),
            "{args:?} printed the secret: {}",
            text(&out)
        );
    }
    assert!(
        stdout(&set).contains("\"apiToken\":\"********\""),
        "{}",
        stdout(&set)
    );
}
