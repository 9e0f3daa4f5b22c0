//! Editing args while a migration runs, failing with a reason and retrying from the checkpoint, refused
//! args edits, and the original system's troubleshooting steps verbatim — against a real Postgres through the real
//! binary.

mod common;
mod operator_support;

use std::time::Duration;

use bgmigrate::Status;
use common::{TestDb, text, wait_until};
use operator_support::*;
use serde_json::{Value, json};

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

/// A number beyond what JSON readers hold (±1.8e308), written into one row's args by hand in SQL — Postgres' jsonb
/// takes it — takes nothing else down: `status` lists every migration and names the key, the worker fails only that
/// migration (naming the key and the fix) and runs the next, `set-args` refuses a patch that leaves the number and
/// accepts one that replaces it, and a retry then finishes the migration exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_beyond_f64_in_one_rows_args_is_isolated_named_and_repairable() {
    let db = TestDb::create("unreadable_args").await;
    items(&db, 300).await;
    db.define("0001_total", &backfill("batchSize = 100"));
    db.define(
        "0002_other",
        "kind = \"backfill\"\nstore = \"postgres\"\ntable = \"items\"\nkey = [\"id\"]\n\
         set = { b = \"b\" }\n[args]\nbatchSize = 100\n",
    );
    assert!(cli(&db, &["migrate"]).await.status.success());
    exec(
        &db,
        "UPDATE background_migrations SET args = '{\"batchSize\": 1e400, \"note\": \"kept\"}' \
         WHERE name = '0001_total'",
    )
    .await;

    let status = cli(&db, &["status", "--json"]).await;
    assert!(status.status.success(), "{}", stderr(&status));
    let listed: Value = serde_json::from_str(&stdout(&status)).unwrap();
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 2, "every migration is listed");
    let unreadable = rows[0]["unreadable"].as_str().unwrap_or_default();
    assert!(
        unreadable.contains("args.batchSize holds 1000000000")
            && unreadable.contains("set-args 0001_total"),
        "{unreadable}"
    );
    assert!(rows[1]["unreadable"].is_null());

    let worker = run_worker(&db).await;
    let failed = row(&db, "0001_total").await;
    assert_eq!(failed.status, Status::Failed, "{}", stderr(&worker));
    assert!(
        failed
            .failed_reason
            .as_deref()
            .unwrap_or_default()
            .contains("args.batchSize"),
        "{:?}",
        failed.failed_reason
    );
    assert_eq!(row(&db, "0002_other").await.status, Status::Finished);
    assert_eq!(
        hits(&db).await,
        (300, 0, 0),
        "the broken migration changed no row"
    );

    let refused = cli(&db, &["set-args", "0001_total", "{\"note\": \"x\"}"]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("args.batchSize holds a number"),
        "{}",
        stderr(&refused)
    );
    let repaired = cli(&db, &["set-args", "0001_total", "{\"batchSize\": 50}"]).await;
    assert!(repaired.status.success(), "{}", stderr(&repaired));
    let record = row(&db, "0001_total").await;
    assert_eq!(record.unreadable, None);
    assert_eq!(record.args, json!({"batchSize": 50, "note": "kept"}));

    assert!(cli(&db, &["retry", "0001_total"]).await.status.success());
    run_worker(&db).await;
    assert_eq!(row(&db, "0001_total").await.status, Status::Finished);
    assert_eq!(hits(&db).await, (0, 300, 0));
}
