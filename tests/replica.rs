//! Holding back on a real streaming standby: a primary and a standby of their own (`pg_basebackup -R`), replay
//! paused on the standby, a backfill on the primary.

mod common;
mod private_postgres;

use std::time::Duration;

use bgmigrate::Status;
use bgmigrate::config;
use common::{register_builtin, spawn_runner, wait_until};
use private_postgres::Replicated;
use serde_json::json;

/// While the standby's replay is paused the backfill holds back after the lag passes its threshold — the row says
/// why, no batch runs, the migration stays `running` — and once replay resumes it finishes by itself, every row
/// updated exactly once, with a throttled and an unthrottled event in its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_standby_holds_the_backfill_back_until_replay_resumes() {
    let cluster = Replicated::start();
    let connected = config::connect(&cluster.primary_url())
        .await
        .expect("primary");
    connected.control.ensure_schema().await.expect("schema");
    let primary = connected.pool.clone().expect("a Postgres control store");
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, pad text NOT NULL, v int, hits int NOT NULL DEFAULT 0); \
         INSERT INTO items (id, pad) SELECT i, repeat('x', 200) FROM generate_series(1, 20000) i",
    )
    .execute(&primary)
    .await
    .unwrap();
    let standby = sqlx::PgPool::connect(&cluster.standby_url())
        .await
        .expect("standby");
    wait_until("the standby has the table", Duration::from_secs(30), || {
        let standby = standby.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM items")
                .fetch_one(&standby)
                .await
                .is_ok_and(|n| n == 20000)
        }
    })
    .await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby)
        .await
        .unwrap();

    let name = "0001_v";
    register_builtin(
        &connected,
        name,
        "backfill",
        json!({"store": "postgres", "table": "items", "key": ["id"],
               "set": {"v": "id * 2", "hits": "hits + 1"}}),
        json!({"batchSize": 1000, "maxReplicationLagBytes": 65536, "throttleCheckMs": 100}),
    )
    .await;
    let runner = spawn_runner(&connected, "w1");

    let control = connected.control.clone();
    wait_until(
        "the backfill holds back on the lag",
        Duration::from_secs(30),
        || {
            let control = control.clone();
            async move {
                let row = control.get(name).await.unwrap();
                row.throttled.is_some_and(|t| t.contains("replication lag"))
            }
        },
    )
    .await;
    let held = connected.control.get(name).await.unwrap();
    assert_eq!(held.status, Status::Running);
    assert!(
        held.rows_done < 20000,
        "it held before the end: {}",
        held.rows_done
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = connected.control.get(name).await.unwrap();
    assert_eq!(still.rows_done, held.rows_done, "no batch ran while held");
    assert!(still.throttled.unwrap().contains("standby1"));

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby)
        .await
        .unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(120), runner.join())
        .await
        .expect("the backfill finishes once replay resumes")
        .expect("runner");
    assert_eq!(summary.finished, vec![name.to_owned()]);
    let (wrong,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM items WHERE hits <> 1 OR v IS DISTINCT FROM id * 2")
            .fetch_one(&primary)
            .await
            .unwrap();
    assert_eq!(wrong, 0, "every row updated exactly once");
    let record = connected.control.get(name).await.unwrap();
    assert_eq!(record.throttled, None);
    let kinds: Vec<String> = connected
        .control
        .events(name, 200)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"throttled".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"unthrottled".to_owned()), "{kinds:?}");
}
