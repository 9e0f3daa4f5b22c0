//! What the Postgres benchmarks share: reading their environment, a small pool, running SQL, their own database.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

/// The server the benchmarks use: `BGMIGRATE_BENCH_PG` without a database (default the machine's Postgres).
fn server_url() -> String {
    std::env::var("BGMIGRATE_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// An optional positive integer from the environment; `_` and `,` may group digits (`3_000_000`).
pub fn env_u64(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            Ok(Some(v.replace(['_', ','], "").parse().with_context(
                || format!("{name}={v:?} is not a positive integer"),
            )?))
        }
        _ => Ok(None),
    }
}

/// A pool of two connections to `url`.
pub async fn pool(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("connect to {url}"))
}

/// Runs `sql` (one or more statements).
pub async fn exec(pool: &PgPool, sql: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .with_context(|| format!("run `{sql}`"))?;
    Ok(())
}

/// Drops `database` (ending its sessions) if it exists.
async fn drop_database(admin: &PgPool, database: &str) -> anyhow::Result<()> {
    exec(
        admin,
        &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
    )
    .await
}

/// Sets up tracing to stderr (`RUST_LOG`, default warnings only) and says whether this is a real benchmark run:
/// `cargo bench` passes `--bench`; `cargo test --benches` runs the binary too, and then it should do nothing.
pub fn start(name: &str) -> bool {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error,sqlx_core=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let real = std::env::args().any(|a| a == "--bench");
    if !real {
        eprintln!("{name} benchmark: run it with `cargo bench --bench {name}`");
    }
    real
}

/// Whether `BGMIGRATE_BENCH_KEEP=1` (or `true`) asks to keep what a run made, to look at by hand.
pub fn keep() -> bool {
    std::env::var("BGMIGRATE_BENCH_KEEP").is_ok_and(|v| v == "1" || v == "true")
}

/// Creates `database` afresh on the benchmark server, hands its URL to `run`, and drops it afterwards unless
/// `BGMIGRATE_BENCH_KEEP=1` (to look at the tables by hand).
pub async fn in_fresh_database<F, Fut>(database: &str, run: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let server = server_url();
    let keep = keep();
    let admin = pool(&format!("{server}/postgres")).await?;
    drop_database(&admin, database).await?;
    exec(&admin, &format!("CREATE DATABASE {database}")).await?;
    let result = run(format!("{server}/{database}")).await;
    if keep {
        eprintln!("kept database {database} (BGMIGRATE_BENCH_KEEP)");
    } else {
        drop_database(&admin, database).await?;
    }
    admin.close().await;
    result
}
