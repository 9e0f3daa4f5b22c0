//! The batch loop for one claimed migration: read args, run a batch, commit it with its checkpoint, report
//! progress, throttle, repeat; stop on finish, failure, lease loss or shutdown.

use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::backoff::with_retries;
use super::progress::ProgressTracker;
use super::{EngineContext, heartbeat};
use crate::args::Args;
use crate::control::{BatchCommit, Claim, ControlError, EventKind, Lease};
use crate::migration::{Batch, BatchOutcome, Checkpointer, Migration, MigrationError};
use crate::store::SqlTx;

/// How a worker's hold on one migration ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every batch is done.
    Finished,
    /// Failed with this reason.
    Failed(String),
    /// Given back on shutdown; another worker resumes it from the checkpoint.
    Released,
    /// The lease was lost (takeover, pause, cancel); nothing more was written.
    LeaseLost,
}

fn from_control(err: ControlError) -> MigrationError {
    match err {
        ControlError::LeaseLost(_) => MigrationError::LeaseLost,
        ControlError::Store(err) => MigrationError::Store(err),
        other => MigrationError::Invalid(other.to_string()),
    }
}

/// Runs `claim` until it ends.
pub(crate) async fn run_claimed(
    ctx: &EngineContext,
    claim: Claim,
    shutdown: &CancellationToken,
) -> Ending {
    let lease = claim.lease.clone();
    let beat = heartbeat::start(
        ctx.control.clone(),
        lease.clone(),
        ctx.config.lease_ttl,
        ctx.config.heartbeat_interval,
    );
    // Either signal stops the loop between batches; a batch in flight still commits or rolls back as a whole.
    let stop = CancellationToken::new();
    let stop_on_signal = {
        let (stop, lost, shutdown) = (stop.clone(), beat.lost.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! { _ = lost.cancelled() => {}, _ = shutdown.cancelled() => {} }
            stop.cancel();
        })
    };
    let result = batch_loop(ctx, &claim, &stop).await;
    stop_on_signal.abort();
    let ending = match result {
        Ok(ending) => ending,
        Err(MigrationError::LeaseLost) => Ending::LeaseLost,
        Err(_) if shutdown.is_cancelled() && !beat.lost.is_cancelled() => Ending::Released,
        Err(err) => Ending::Failed(err.to_string()),
    };
    let ending = match ending {
        Ending::Released if beat.lost.is_cancelled() => Ending::LeaseLost,
        other => other,
    };
    record_ending(ctx, &lease, ending).await
}

/// Writes the outcome (finished / failed / released); a lost lease writes nothing.
async fn record_ending(ctx: &EngineContext, lease: &Lease, ending: Ending) -> Ending {
    let written = match &ending {
        Ending::Finished => ctx.control.finish(lease).await,
        Ending::Failed(reason) => ctx.control.fail(lease, reason).await,
        Ending::Released => ctx.control.release(lease).await,
        Ending::LeaseLost => Ok(()),
    };
    match (written, &ending) {
        (Err(ControlError::LeaseLost(_)), _) => {
            tracing::warn!(migration = %lease.name, "lease lost before the outcome could be written");
            Ending::LeaseLost
        }
        (Err(err), _) => {
            tracing::error!(migration = %lease.name, error = %err, "could not record the outcome; the lease will expire");
            ending
        }
        (Ok(()), Ending::Finished) => {
            tracing::info!(migration = %lease.name, "finished");
            ending
        }
        (Ok(()), Ending::Failed(reason)) => {
            tracing::error!(migration = %lease.name, reason = %reason, "failed");
            ending
        }
        (Ok(()), Ending::Released) => {
            tracing::info!(migration = %lease.name, "released on shutdown; the next worker resumes from the checkpoint");
            ending
        }
        (Ok(()), Ending::LeaseLost) => {
            tracing::warn!(migration = %lease.name, "stopped: the lease was taken over, or it was paused or cancelled");
            ending
        }
    }
}

async fn batch_loop(
    ctx: &EngineContext,
    claim: &Claim,
    stop: &CancellationToken,
) -> Result<Ending, MigrationError> {
    let lease = &claim.lease;
    let record = &claim.record;
    let migration = match ctx
        .registry
        .build(&record.script, &record.definition, &ctx.stores)
    {
        Ok(migration) => migration,
        Err(reason) => return Ok(Ending::Failed(reason)),
    };
    let retry_log = |what: &'static str| {
        let name = lease.name.clone();
        move |attempt: u32, err: &MigrationError, wait: std::time::Duration| {
            tracing::warn!(migration = %name, attempt, error = %err, wait_ms = wait.as_millis() as u64, "{what} failed; retrying");
        }
    };
    let policy = &ctx.config.retry;
    with_retries(policy, stop, retry_log("validation"), || {
        migration.validate()
    })
    .await
    .map_err(|err| match err {
        MigrationError::Invalid(reason) => {
            MigrationError::Invalid(format!("validation failed: {reason}"))
        }
        other => other,
    })?;
    let mut tracker = ProgressTracker::new(
        &lease.name,
        record.rows_done.max(0) as u64,
        record.rows_total.map(|t| t.max(0) as u64),
        ctx.config.progress_log_interval,
    );
    if record.rows_total.is_none() {
        let estimate =
            with_retries(policy, stop, retry_log("estimate"), || migration.estimate()).await?;
        ctx.control
            .set_rows_total(lease, estimate)
            .await
            .map_err(from_control)?;
        tracker.set_total(estimate);
    }
    let mut previous_batch_size = record.batch_size.map(|b| b as u64);
    loop {
        if stop.is_cancelled() {
            return Ok(Ending::Released);
        }
        let current = with_retries(
            policy,
            stop,
            retry_log("re-reading the migration"),
            || async { ctx.control.current(lease).await.map_err(from_control) },
        )
        .await?;
        let args = Args::parse_with_default(&current.args, migration.default_batch_size()).map_err(|err| {
            MigrationError::Invalid(format!(
                "invalid args: {err}; fix them with `bgmigrate set-args {} '{{...}}'`, then `bgmigrate retry {}`",
                lease.name, lease.name
            ))
        })?;
        if previous_batch_size.is_some_and(|size| size != args.batch_size) {
            let detail = json!({"before": previous_batch_size, "after": args.batch_size});
            ctx.control
                .record_event(
                    &lease.name,
                    EventKind::BatchSizeChanged,
                    &lease.worker_id,
                    detail,
                )
                .await
                .map_err(from_control)?;
            tracing::info!(migration = %lease.name, batch_size = args.batch_size, "batch size changed");
        }
        previous_batch_size = Some(args.batch_size);

        let (outcome, commit, checkpointed) = run_one_batch(
            ctx,
            &*migration,
            lease,
            &current.state,
            &args,
            &tracker,
            stop,
        )
        .await?;
        if !checkpointed {
            with_retries(policy, stop, retry_log("checkpoint"), || async {
                ctx.control
                    .write_checkpoint(lease, &commit)
                    .await
                    .map_err(from_control)
            })
            .await?;
        }
        let name = lease.name.clone();
        metrics::counter!("bgmigrate_rows_processed_total", "migration" => name.clone())
            .increment(outcome.rows);
        metrics::histogram!("bgmigrate_batch_duration_seconds", "migration" => name.clone())
            .record(commit.duration_ms as f64 / 1000.0);
        metrics::gauge!("bgmigrate_batch_size", "migration" => name).set(args.batch_size as f64);
        tracker.record(outcome.rows, args.batch_size, commit.rows_per_sec);
        if outcome.done {
            tracker.finish();
        }
        let _ = ctx.progress.send(tracker.snapshot().clone());
        if let Some(line) = tracker.due_log_line() {
            tracing::info!("{line}");
        }
        if outcome.done {
            return Ok(Ending::Finished);
        }
        if args.sleep_ms > 0 {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(args.sleep_ms)) => {}
            }
        }
    }
}

/// One batch with transient retries. Returns the outcome, its checkpoint, and whether the checkpoint was already
/// written inside the batch's transaction.
async fn run_one_batch(
    ctx: &EngineContext,
    migration: &dyn Migration,
    lease: &Lease,
    state: &Value,
    args: &Args,
    tracker: &ProgressTracker,
    stop: &CancellationToken,
) -> Result<(BatchOutcome, BatchCommit, bool), MigrationError> {
    let name = lease.name.clone();
    let control = ctx.control.clone();
    let on_retry = move |attempt: u32, err: &MigrationError, wait: std::time::Duration| {
        tracing::warn!(migration = %name, attempt, error = %err, wait_ms = wait.as_millis() as u64, "batch failed; retrying");
        metrics::counter!("bgmigrate_batch_retries_total", "migration" => name.clone())
            .increment(1);
        let (control, name, detail) = (
            control.clone(),
            name.clone(),
            json!({"attempt": attempt, "error": err.to_string()}),
        );
        tokio::spawn(async move {
            let _ = control
                .record_event(&name, EventKind::BatchRetried, "engine", detail)
                .await;
        });
    };
    with_retries(&ctx.config.retry, stop, on_retry, || async {
        let checkpointer = EngineCheckpointer {
            ctx,
            lease,
            previous_state: state,
            batch_size: args.batch_size,
            started_at: Utc::now(),
            started: std::time::Instant::now(),
            tracker,
            written: Mutex::new(None),
        };
        let mut batch = Batch::new(state, args, &checkpointer);
        let outcome = migration.run_batch(&mut batch).await?;
        let checkpointed = batch.checkpointed();
        let commit = match checkpointer.written.lock().expect("poisoned").take() {
            Some(commit) => commit,
            None => checkpointer.commit_for(&outcome)?,
        };
        Ok((outcome, commit, checkpointed))
    })
    .await
}

/// The engine's [`Checkpointer`]: builds the batch's [`BatchCommit`] and writes it in the batch's transaction when
/// the batch's store holds the control table.
struct EngineCheckpointer<'a> {
    ctx: &'a EngineContext,
    lease: &'a Lease,
    previous_state: &'a Value,
    batch_size: u64,
    started_at: DateTime<Utc>,
    started: std::time::Instant,
    tracker: &'a ProgressTracker,
    written: Mutex<Option<BatchCommit>>,
}

impl EngineCheckpointer<'_> {
    /// The checkpoint for `outcome`, refusing a cursor that did not move (the original system's endless loop).
    fn commit_for(&self, outcome: &BatchOutcome) -> Result<BatchCommit, MigrationError> {
        if !outcome.done && &outcome.state == self.previous_state {
            return Err(MigrationError::Invalid(format!(
                "the cursor did not advance (still at {}); the key is not unique or the migration does not move its \
                 checkpoint — fix the definition, then retry",
                self.previous_state
            )));
        }
        Ok(BatchCommit {
            state: outcome.state.clone(),
            rows: outcome.rows,
            bytes: outcome.bytes,
            batch_size: self.batch_size,
            started_at: self.started_at,
            duration_ms: self.started.elapsed().as_millis() as u64,
            rows_per_sec: self.tracker.rate_after(outcome.rows),
        })
    }
}

#[async_trait]
impl Checkpointer for EngineCheckpointer<'_> {
    fn shares_store(&self, store_id: &str) -> bool {
        self.ctx.control.store_id() == store_id
    }

    async fn write_in(
        &self,
        tx: &mut dyn SqlTx,
        outcome: &BatchOutcome,
    ) -> Result<(), MigrationError> {
        let commit = self.commit_for(outcome)?;
        self.ctx
            .control
            .write_checkpoint_in(tx, self.lease, &commit)
            .await
            .map_err(from_control)?;
        *self.written.lock().expect("poisoned") = Some(commit);
        Ok(())
    }
}
