//! A host application's worker with its own background migration, written in Rust.
//!
//! `NormalizeEmails` lowercases `users.email` (table `users(id bigint primary key, email text)`) in keyset batches.
//! The engine owns the loop (args, checkpoint, progress, pause/cancel, retries); the migration only runs one batch
//! and commits it through [`Batch::commit`], so the UPDATE and its checkpoint commit in one transaction.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/app cargo run --example custom_migration
//! DATABASE_URL=... EXIT_WHEN_DONE=1 cargo run --example custom_migration   # CI: stop once nothing is left to run
//! ```
//!
//! Without `EXIT_WHEN_DONE=1` the runner keeps polling for new work beside the host's own task until Ctrl-C, which
//! lets the batch in flight commit, releases the lease and exits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bgmigrate::engine::RunnerState;
use bgmigrate::{
    Batch, BatchOutcome, Migration, MigrationError, Registration, Runner, RunnerConfig,
};
use bgmigrate::{RunnerHandle, SqlStore, builtin_registry, store::SqlParam};
use serde_json::json;

struct NormalizeEmails {
    store: Arc<dyn SqlStore>,
}

#[async_trait]
impl Migration for NormalizeEmails {
    async fn validate(&self) -> Result<(), MigrationError> {
        let columns = self.store.columns("users").await?;
        match columns.iter().any(|c| c.name == "email") {
            true => Ok(()),
            false => Err(MigrationError::Invalid("users.email does not exist".into())),
        }
    }

    async fn estimate(&self) -> Result<Option<u64>, MigrationError> {
        Ok(self.store.estimate_rows("users").await?)
    }

    async fn run_batch(&self, batch: &mut Batch<'_>) -> Result<BatchOutcome, MigrationError> {
        // The checkpoint is {"after": last id done}; `{}` before the first batch.
        let after = batch.state["after"].as_i64().unwrap_or(i64::MIN);
        let size = batch.args.batch_size as i64;
        let mut tx = self.store.begin().await?;
        // The batch's key range: the next `size` ids (an index-only scan), then one range UPDATE over them.
        let range = tx
            .fetch_optional_text(
                "SELECT count(*)::text, coalesce(max(id), $1::bigint)::text \
                 FROM (SELECT id FROM users WHERE id > $1::bigint ORDER BY id LIMIT $2) AS next",
                &[SqlParam::Int(after), SqlParam::Int(size)],
            )
            .await?
            .unwrap_or_default();
        let number = |i: usize| range.get(i).and_then(|v| v.parse::<i64>().ok());
        let (rows, upper) = (number(0).unwrap_or(0), number(1).unwrap_or(after));
        tx.execute(
            "UPDATE users SET email = lower(email) \
             WHERE id > $1::bigint AND id <= $2::bigint AND email IS DISTINCT FROM lower(email)",
            &[SqlParam::Int(after), SqlParam::Int(upper)],
        )
        .await?;
        let outcome = BatchOutcome {
            state: json!({ "after": upper }),
            done: rows < size, // a short batch was the last one
            rows: rows as u64,
            bytes: 0,
        };
        batch.commit(tx, &outcome).await?;
        Ok(outcome)
    }
}

/// Resolves once the runner has stopped by itself (with `exit_when_done`, when nothing is left to run).
async fn stopped(runner: &RunnerHandle) {
    while runner.state() != RunnerState::Stopped {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info,sqlx=warn")
        .init();
    let url =
        std::env::var("DATABASE_URL").context("set DATABASE_URL=postgres://user@host:port/db")?;
    let connected = bgmigrate::config::connect(&url).await?;

    // The built-in kinds plus our script, under the name the control-table row refers to.
    let mut registry = builtin_registry();
    registry.register("normalize_emails", |_params, stores| {
        let store = stores
            .sql("postgres")
            .ok_or("no postgres store configured")?;
        Ok(Arc::new(NormalizeEmails { store }) as Arc<dyn Migration>)
    });

    // Register the row once (a no-op on later starts; operators' edits to its args are kept).
    connected.control.ensure_schema().await?;
    let registration = Registration {
        name: "20250101_0000_normalize_emails".into(),
        script: "normalize_emails".into(),
        params: json!({}),
        args: json!({ "batchSize": 1000 }),
        depends_on: None,
    };
    connected
        .control
        .register(&[registration], &registry)
        .await?;

    let exit_when_done = std::env::var("EXIT_WHEN_DONE").is_ok_and(|v| v == "1" || v == "true");
    let config = RunnerConfig {
        exit_when_done,
        ..Default::default()
    };
    let runner = Runner::new(
        connected.control.clone(),
        registry,
        connected.stores.clone(),
        config,
    )
    .spawn();

    // The host's own work, running alongside the migrations.
    let host = tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            tracing::info!("host: still serving requests");
        }
    });

    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: letting the current batch commit, then stopping"),
        _ = stopped(&runner) => tracing::info!("nothing left to run"),
    }
    // Cancels (a no-op if already stopped), waits for the in-flight batch, releases the lease.
    let summary = runner.shutdown().await?;
    host.abort();
    tracing::info!(finished = ?summary.finished, failed = ?summary.failed, "worker stopped");
    anyhow::ensure!(summary.failed.is_empty(), "a migration failed");
    Ok(())
}
