//! The demo's sample data: Langfuse-like traces, observations and scores, generated in the demo's store by portable
//! SQL (Postgres and SQLite).

use std::time::Instant;

use bgmigrate::store::{SqlParam, SqlStore};

use super::DEMO_DIR;

/// The statements of the demo's application schema, one by one.
pub(super) fn schema_statements() -> impl Iterator<Item = &'static str> {
    include_str!("../sql/demo_schema.sql")
        .split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
}

/// Creates and fills the sample tables, unless they exist (a second run reuses the data).
pub(super) async fn sample_data(store: &dyn SqlStore, observations: u64) -> anyhow::Result<()> {
    if !store.columns("traces").await?.is_empty() {
        println!("demo: sample data already present; delete {DEMO_DIR}/ to start over");
        return Ok(());
    }
    let started = Instant::now();
    let traces = (observations / 4).max(1);
    let scores = (observations / 2).max(1);
    let mut tx = store.begin().await?;
    for statement in schema_statements() {
        tx.execute(statement, &[]).await?;
    }
    tx.execute(
        include_str!("../sql/demo_traces.sql"),
        &[SqlParam::count(traces)],
    )
    .await?;
    tx.execute(
        include_str!("../sql/demo_observations.sql"),
        &[SqlParam::count(observations), SqlParam::count(traces)],
    )
    .await?;
    tx.execute(
        include_str!("../sql/demo_scores.sql"),
        &[SqlParam::count(scores), SqlParam::count(traces)],
    )
    .await?;
    // A few large rows (256 KiB of input each): batches must carry them without trouble.
    let large = format!(
        "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}",
        "a long pasted document ".repeat(11_400)
    );
    for n in [1, observations / 3, observations / 2, observations - 1] {
        tx.execute(
            "UPDATE observations SET input = $1 WHERE id = $2",
            &[
                SqlParam::Text(large.clone()),
                SqlParam::Text(format!("obs-{n}")),
            ],
        )
        .await?;
    }
    tx.commit().await?;
    println!(
        "demo: generated {traces} traces, {observations} observations and {scores} scores in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
