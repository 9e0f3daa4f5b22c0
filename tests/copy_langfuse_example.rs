//! The Langfuse v2 → v3 worked example end to end through the binary: fast migrations for both stores, generated
//! v2 data (equal timestamps, NULLs, unicode, a large row), the cost backfill, and the three copies.

mod clickhouse_common;
mod common;

#[path = "../examples/langfuse_v2_to_v3/generate.rs"]
#[allow(dead_code)]
mod generate;

use clickhouse_common::TestClickHouse;
use common::{TestDb, text};

/// `migrate` then `worker --exit-when-done` on the example's directory copies every v2 row into the v3 ClickHouse
/// tables, with the backfilled cost, and leaves no duplicate after deduplication.
#[tokio::test]
async fn the_langfuse_v2_to_v3_example_migrates_every_row_into_clickhouse() {
    let db = TestDb::create("langfuse_example").await;
    let ch = TestClickHouse::create("langfuse_example").await;
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/langfuse_v2_to_v3/migrations"
    );
    let env = [
        ("CLICKHOUSE_URL", ch.url.as_str()),
        ("BGMIGRATE_MIGRATIONS_DIR", dir),
    ];
    let out = db.cli_with_env(&["migrate"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let pool = db.pool().await;
    generate::generate(&pool, 3_000, 1, 3)
        .await
        .expect("generate");

    let out = db.cli_with_env(&["worker", "--exit-when-done", "--poll", "200ms"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let status = db.cli_with_env(&["status", "--json"], &env);
    let records: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let statuses: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["finished"; 4], "{}", text(&status));
    for name in [
        "20241024_1730_migrate_traces_from_pg_to_ch",
        "20241024_1737_migrate_observations_from_pg_to_ch",
        "20241024_1738_migrate_scores_from_pg_to_ch",
    ] {
        let shown = text(&db.cli_with_env(&["show", name], &env));
        assert!(
            shown.contains("\"mismatched\":0") && shown.contains("\"ctid\":"),
            "the copy walked the heap and verify found every range equal: {shown}"
        );
    }

    for (table, expected) in [
        ("traces", 3_000),
        ("observations", 3_001),
        ("scores", 3_000),
    ] {
        ch.optimize_final(table).await;
        assert_eq!(
            ch.value(&format!("SELECT count() FROM {table}")).await,
            expected.to_string()
        );
    }
    let pg_cost: f64 = sqlx::query_scalar("SELECT sum(total_cost)::float8 FROM observations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let ch_cost: f64 = ch
        .value("SELECT sum(total_cost) FROM observations")
        .await
        .parse()
        .unwrap();
    assert!(
        pg_cost > 0.0 && (pg_cost - ch_cost).abs() < 1e-6,
        "{pg_cost} vs {ch_cost}"
    );
    assert_eq!(
        ch.value("SELECT length(input) > 3000000 FROM observations WHERE id = 'obs-big-1'")
            .await,
        "1"
    );
}
