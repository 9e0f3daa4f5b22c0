//! Operator actions and outcomes against a real Postgres: unknown scripts, pause / resume / cancel, `wait`, and
//! the engine's handling of transient errors and cursors that do not move.

mod common;
mod operator_support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bgmigrate::engine::RunnerState;
use bgmigrate::{Batch, BatchOutcome, Migration, MigrationError, Registry, Runner, Status};
use common::{TestDb, fast_config, text, wait_until};
use operator_support::*;
use serde_json::{Value, json};

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
