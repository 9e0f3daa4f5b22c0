//! Data generator for the Langfuse v2 → v3 worked example: fills the v2 Postgres tables `traces`, `observations`
//! and `scores` with a given number of rows each (text ids, jsonb payloads, 100 rows per `created_at`, NULLs,
//! unicode), plus a few observations of tens of MB.
//!
//! ```text
//! DATABASE_URL=postgres://... cargo run --release --example langfuse_generate -- 1000000 [BIG_ROWS] [BIG_MB]
//! ```
//!
//! Run `bgmigrate migrate` first (it creates the tables), then this, then `bgmigrate worker --exit-when-done`.

use std::time::Instant;

/// Rows generated per statement, so progress shows and no transaction grows huge.
const CHUNK: u64 = 100_000;

/// Inserts `rows` rows into each v2 table (ids `1..=rows`; idempotent), then `big_rows` observations of `big_mb`
/// MB each.
pub async fn generate(
    pool: &sqlx::PgPool,
    rows: u64,
    big_rows: u32,
    big_mb: u32,
) -> Result<(), sqlx::Error> {
    let mut start = 1;
    while start <= rows {
        let count = CHUNK.min(rows - start + 1);
        for statement in statements(include_str!("generate.sql")) {
            sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
                .bind(count as i64)
                .bind(start as i64)
                .execute(pool)
                .await?;
        }
        start += count;
    }
    for statement in statements(include_str!("big_rows.sql")) {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .bind(big_rows as i32)
            .bind(big_mb as i32)
            .execute(pool)
            .await?;
    }
    sqlx::query("ANALYZE traces, observations, scores")
        .execute(pool)
        .await?;
    Ok(())
}

/// The statements of a generator file (they contain no `;` but their terminators).
fn statements(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(';').map(str::trim).filter(|s| {
        s.lines()
            .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with("--"))
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: langfuse_generate ROWS [BIG_ROWS (default 3)] [BIG_MB (default 20)] with DATABASE_URL set";
    let rows: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!(usage))?;
    let big_rows: u32 = args
        .next()
        .map_or(Ok(3), |a| a.parse())
        .map_err(|_| anyhow::anyhow!(usage))?;
    let big_mb: u32 = args
        .next()
        .map_or(Ok(20), |a| a.parse())
        .map_err(|_| anyhow::anyhow!(usage))?;
    let url = std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!(usage))?;
    let pool = sqlx::PgPool::connect(&url).await?;
    let started = Instant::now();
    generate(&pool, rows, big_rows, big_mb).await?;
    println!(
        "generated {rows} traces, observations and scores (+{big_rows} observations of {big_mb} MB) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
