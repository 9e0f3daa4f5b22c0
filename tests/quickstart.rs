//! The README's quick start works as written: `migrate`, then `worker --exit-when-done`, then `status`.

mod common;

use common::{TestDb, text};

/// The example migrations directory applies, registers and backfills to the end through the real binary.
#[tokio::test]
async fn the_quickstart_directory_migrates_and_backfills_to_the_end() {
    let db = TestDb::create("quickstart").await;
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart/migrations"
    );
    for command in [
        &["migrate"][..],
        &["worker", "--exit-when-done"],
        &["wait", "--timeout", "5s"],
    ] {
        let output = db.cli_with_env(command, &[("BGMIGRATE_MIGRATIONS_DIR", dir)]);
        assert!(output.status.success(), "{command:?}: {}", text(&output));
    }
    let status = db.cli_with_env(&["status", "--json"], &[("BGMIGRATE_MIGRATIONS_DIR", dir)]);
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(
        rows[0]["name"],
        "20241024_1216_add_generations_cost_backfill"
    );
    assert_eq!(rows[0]["status"], "finished");
    assert_eq!(rows[0]["rows_done"], 200000);
    let pool = db.pool().await;
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM observations WHERE type = 'GENERATION'
         AND total_cost IS DISTINCT FROM coalesce(input_cost, 0) + coalesce(output_cost, 0)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(wrong, 0);
}
