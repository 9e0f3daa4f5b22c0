//! Key ranges on SQLite: the split covers the key space exactly once for random key distributions (integer, text
//! and composite keys, tables too small to split), and two runners in one process share a backfill on a SQLite
//! file exactly once. Real SQLite files, the migration built by the same registry the engine uses.

use std::time::Duration;

use bgmigrate::config::{self, Connected};
use bgmigrate::{Registration, Runner, RunnerConfig, Status, builtin_registry};
use serde_json::{Value, json};
use sqlx::SqlitePool;

/// A small deterministic generator (64-bit LCG): the same cases on every run, different in each case.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below.max(1)
    }
}

async fn connect(dir: &tempfile::TempDir) -> (Connected, SqlitePool) {
    let path = dir.path().join("app.db");
    let connected = config::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    connected.control.ensure_schema().await.expect("schema");
    let pool = SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    (connected, pool)
}

/// The cut keys of a backfill's checkpoints (`{"cursor": [...]}`), as text.
fn cut(state: &Value) -> Vec<String> {
    state["cursor"]
        .as_array()
        .expect("a cursor")
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

/// For random tables and numbers of parts: the cuts come in strictly increasing key order, there are fewer than
/// `parts`, and the ranges between them hold every row exactly once, about evenly (none empty).
#[tokio::test]
async fn split_points_cover_the_key_space_exactly_once_for_random_distributions() {
    let mut rng = Lcg(7);
    for case in 0..24 {
        let dir = tempfile::tempdir().unwrap();
        let (connected, pool) = connect(&dir).await;
        let composite = case % 3 == 2;
        let text_key = case % 3 == 1;
        let ddl = if composite {
            "CREATE TABLE t (tenant INTEGER NOT NULL, id TEXT NOT NULL, hits INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant, id))"
        } else if text_key {
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0)"
        } else {
            "CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0)"
        };
        sqlx::query(ddl).execute(&pool).await.unwrap();
        let rows = [0, 1, 5, 37, 500, 2_000][rng.next(6) as usize];
        // Skewed keys: most rows crowd into a narrow band, a few spread wide.
        let mut keys = std::collections::BTreeSet::new();
        while keys.len() < rows {
            let band = if rng.next(10) < 8 { 100 } else { 1_000_000 };
            keys.insert((rng.next(4) as i64, rng.next(band) as i64));
        }
        for (tenant, n) in &keys {
            let insert = if composite {
                sqlx::query("INSERT INTO t (tenant, id) VALUES (?1, ?2)")
                    .bind(tenant)
                    .bind(format!("k{n:07}"))
            } else if text_key {
                sqlx::query("INSERT OR IGNORE INTO t (id) VALUES (?1)")
                    .bind(format!("k{tenant}{n:07}"))
            } else {
                sqlx::query("INSERT OR IGNORE INTO t (id) VALUES (?1)")
                    .bind(tenant * 10_000_000 + n)
            };
            insert.execute(&pool).await.unwrap();
        }
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        let key = if composite {
            json!(["tenant", "id"])
        } else {
            json!(["id"])
        };
        let params =
            json!({"store": "sqlite", "table": "t", "key": key, "set": {"hits": "hits + 1"}});
        let migration = builtin_registry()
            .build("backfill", &params, &connected.stores)
            .unwrap();
        migration.validate().await.unwrap();
        let parts = 1 + rng.next(8);
        let hint = if rng.next(2) == 0 {
            None
        } else {
            Some(total as u64)
        };
        let cuts = migration
            .split(&json!({}), None, parts, hint)
            .await
            .unwrap();
        assert!(
            (cuts.len() as u64) < parts.max(1),
            "case {case}: {} cuts for {parts} parts",
            cuts.len()
        );
        // Count each range with SQL's own key order: (previous cut, cut], then the tail after the last cut.
        let keys_sql = if composite { "(tenant, id)" } else { "id" };
        let bound = |state: &Value| -> String {
            let k = cut(state);
            if composite {
                format!("({}, '{}')", k[0], k[1])
            } else if text_key {
                format!("'{}'", k[0])
            } else {
                k[0].clone()
            }
        };
        let mut covered = 0;
        let mut previous: Option<String> = None;
        for state in cuts.iter().map(Some).chain([None]) {
            let mut conditions = Vec::new();
            if let Some(lower) = &previous {
                conditions.push(format!("{keys_sql} > {lower}"));
            }
            if let Some(state) = state {
                conditions.push(format!("{keys_sql} <= {}", bound(state)));
            }
            let filter = if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            };
            let in_range: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM t{filter}"
            )))
            .fetch_one(&pool)
            .await
            .unwrap();
            assert!(
                in_range > 0 || total == 0,
                "case {case}: an empty range ({filter}) among {} cuts",
                cuts.len()
            );
            covered += in_range;
            previous = state.map(bound);
        }
        assert_eq!(
            covered, total,
            "case {case}: the ranges cover every row once"
        );
        if total as u64 >= parts * 2 {
            assert_eq!(
                cuts.len() as u64,
                parts - 1,
                "case {case}: {total} rows split into {parts} parts"
            );
        }
    }
}

/// Two runners share a backfill on one SQLite file in key ranges (SQLite serialises the writes; the work is still
/// split), while the application inserts rows all over the key space: every row there at the start is updated
/// exactly once, no inserted row twice, and the migration finishes with both ranges done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_share_a_sqlite_backfill_exactly_once_while_rows_are_inserted() {
    let dir = tempfile::tempdir().unwrap();
    let (connected, pool) = connect(&dir).await;
    sqlx::query(
        "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0, \
         late INTEGER NOT NULL DEFAULT 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
         INSERT INTO t (id) SELECT printf('%08x', (i * 2654435761) % 4294967296) FROM n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let name = "20240101_0000_hits";
    connected
        .control
        .register(
            &[Registration {
                name: name.into(),
                script: "backfill".into(),
                params: json!({"store": "sqlite", "table": "t", "key": ["id"], "set": {"hits": "hits + 1"}}),
                args: json!({"parallelism": 2, "batchSize": 250, "sleepMs": 5}),
                depends_on: None,
            }],
            &builtin_registry(),
        )
        .await
        .unwrap();
    let runners: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|id| {
            Runner::new(
                connected.control.clone(),
                builtin_registry(),
                connected.stores.clone(),
                RunnerConfig {
                    worker_id: id.into(),
                    exit_when_done: true,
                    poll_interval: Duration::from_millis(50),
                    ..RunnerConfig::default()
                },
            )
            .spawn()
        })
        .collect();
    // The application meanwhile: 20 rows every 20 ms, keys spread over the whole key space (other hashes).
    let inserting = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut inserted = 0u64;
            for round in 0..100i64 {
                let done = sqlx::query(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20) \
                     INSERT OR IGNORE INTO t (id, late) \
                     SELECT printf('%08x', ((i + 20 * $1) * 40503 + 7) % 4294967296), 1 FROM n",
                )
                .bind(round)
                .execute(&pool)
                .await
                .unwrap();
                inserted += done.rows_affected();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            inserted
        }
    });
    for runner in runners {
        runner.join().await.unwrap();
    }
    let inserted = inserting.await.unwrap();
    assert!(inserted > 0, "rows were inserted during the run");
    let record = connected.control.get(name).await.unwrap();
    assert_eq!(
        record.status,
        Status::Finished,
        "{:?}",
        record.failed_reason
    );
    assert!(record.rows_done >= 20_000, "{}", record.rows_done);
    let wrong: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE late = 0 AND hits <> 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        wrong, 0,
        "a row there from the start was skipped or updated twice"
    );
    let twice: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE late = 1 AND hits > 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(twice, 0, "an inserted row was updated twice");
    let ranges = connected.control.ranges(name).await.unwrap();
    assert!(
        ranges.len() >= 2 && ranges.iter().all(|r| r.done),
        "{ranges:?}"
    );
    let walkers: std::collections::BTreeSet<_> =
        ranges.iter().filter_map(|r| r.worker_id.clone()).collect();
    assert_eq!(walkers.len(), 2, "both runners walked a range: {ranges:?}");
}
