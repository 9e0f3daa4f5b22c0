//! The engine: a background task that claims migrations and runs their batches.
//!
//! Layout: this file holds the [`Runner`] (claim loop, wake-ups, drain) and its [`RunnerHandle`]; [`execute`] the
//! batch loop of one migration; [`ranges`] parallel work in key ranges; [`heartbeat`] the lease renewal; [`backoff`] transient retries; [`progress`] rate,
//! ETA and the log line; [`sizing`] adaptive batch sizes; [`throttling`] holding back on health signals. Nothing
//! here is specific to a store.

pub mod backoff;
mod execute;
#[cfg(test)]
mod fake_leases;
mod heartbeat;
pub mod progress;
mod ranges;
mod sizing;
mod throttling;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::control::{ControlError, ControlStore, LeaseStore};
use crate::registry::Registry;
use crate::status::Status;
use crate::store::Stores;

pub use self::backoff::RetryPolicy;
pub use self::execute::Ending;
pub use self::progress::ProgressUpdate;

/// Tuning of a worker.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This worker's identity in `worker_id` (default `host:pid:nonce`).
    pub worker_id: String,
    /// How long a lease lasts without renewal; after that any worker may take the migration over.
    pub lease_ttl: Duration,
    /// How often the lease is renewed.
    pub heartbeat_interval: Duration,
    /// How often to look for work when no change notification arrives.
    pub poll_interval: Duration,
    /// Exit when nothing is left to run instead of waiting for new work.
    pub exit_when_done: bool,
    /// `ENABLE_BACKGROUND_MIGRATIONS`: when false, run nothing and warn about pending migrations.
    pub enabled: bool,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Minimum interval between progress log lines of one migration.
    pub progress_log_interval: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            worker_id: default_worker_id(),
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            poll_interval: Duration::from_secs(5),
            exit_when_done: false,
            enabled: true,
            retry: RetryPolicy::default(),
            progress_log_interval: Duration::from_secs(5),
        }
    }
}

/// `host:pid:nonce`, unique per process start.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 100_000)
        .unwrap_or_default();
    format!("{host}:{}:{nonce:05}", std::process::id())
}

/// What the runner is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerState {
    /// Preparing the control store.
    Starting,
    /// Waiting for work.
    Idle,
    /// Running this migration.
    Running(String),
    /// `ENABLE_BACKGROUND_MIGRATIONS=false`.
    Disabled,
    /// The task has ended.
    Stopped,
}

/// What one runner did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Migrations it finished.
    pub finished: Vec<String>,
    /// Migrations it failed, with reasons.
    pub failed: Vec<(String, String)>,
}

/// What the batch loop of one claimed migration needs: the worker's side of the control store only.
pub(crate) struct EngineContext {
    pub(crate) leases: Arc<dyn LeaseStore>,
    pub(crate) registry: Registry,
    pub(crate) stores: Stores,
    pub(crate) config: RunnerConfig,
    pub(crate) progress: broadcast::Sender<ProgressUpdate>,
}

/// Runs background migrations; build one, then [`Runner::spawn`] it beside the host's own work.
pub struct Runner {
    control: Arc<dyn ControlStore>,
    ctx: EngineContext,
}

/// A spawned runner: watch it, subscribe to its progress, stop it.
pub struct RunnerHandle {
    shutdown: CancellationToken,
    state: watch::Receiver<RunnerState>,
    progress: broadcast::Sender<ProgressUpdate>,
    task: JoinHandle<Result<RunSummary, ControlError>>,
}

impl Runner {
    /// A runner over `control`, running the scripts of `registry` against `stores`.
    pub fn new(
        control: Arc<dyn ControlStore>,
        registry: Registry,
        stores: Stores,
        config: RunnerConfig,
    ) -> Self {
        let (progress, _) = broadcast::channel(256);
        Self {
            ctx: EngineContext {
                leases: control.clone(),
                registry,
                stores,
                config,
                progress,
            },
            control,
        }
    }

    /// Starts the runner as a background task.
    pub fn spawn(self) -> RunnerHandle {
        let shutdown = CancellationToken::new();
        let (state_tx, state) = watch::channel(RunnerState::Starting);
        let progress = self.ctx.progress.clone();
        let task = tokio::spawn(claim_loop(
            self.control,
            self.ctx,
            shutdown.clone(),
            state_tx,
        ));
        RunnerHandle {
            shutdown,
            state,
            progress,
            task,
        }
    }
}

impl RunnerHandle {
    /// What the runner is doing now.
    pub fn state(&self) -> RunnerState {
        self.state.borrow().clone()
    }

    /// Progress snapshots after every batch.
    pub fn subscribe(&self) -> broadcast::Receiver<ProgressUpdate> {
        self.progress.subscribe()
    }

    /// A token that stops the runner when cancelled (e.g. from a signal handler).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Asks the runner to stop after the current batch (releasing its lease) and waits for it.
    pub async fn shutdown(self) -> Result<RunSummary, RunnerError> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Waits until the runner stops by itself (`exit_when_done`) or is shut down.
    pub async fn join(self) -> Result<RunSummary, RunnerError> {
        match self.task.await {
            Ok(result) => Ok(result?),
            Err(join_error) => Err(RunnerError::Panicked(join_error.to_string())),
        }
    }
}

/// Why a runner stopped without finishing its work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The control store failed persistently (transient failures are retried for as long as the runner runs).
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The runner's task panicked: a bug in bgmigrate or in a custom migration, not a problem of the data.
    #[error(
        "internal error: the runner task panicked ({0}); the lease it held expires and another worker resumes"
    )]
    Panicked(String),
}

/// Retries `op` while the control store is unreachable: a worker never gives up because the database is restarting.
async fn patiently<T, F, Fut>(
    ctx: &EngineContext,
    shutdown: &CancellationToken,
    what: &str,
    op: F,
) -> Option<Result<T, ControlError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ControlError>>,
{
    let forever = RetryPolicy {
        max_attempts: u32::MAX,
        ..ctx.config.retry.clone()
    };
    let on_retry = |_: u32, err: &ControlError, wait: Duration| {
        tracing::warn!(error = %err, wait_ms = wait.as_millis() as u64, "{what}: control store unavailable; retrying");
    };
    match backoff::with_retries(&forever, shutdown, on_retry, op).await {
        Err(err) if err.is_transient() && shutdown.is_cancelled() => None,
        other => Some(other),
    }
}

async fn claim_loop(
    control: Arc<dyn ControlStore>,
    ctx: EngineContext,
    shutdown: CancellationToken,
    state: watch::Sender<RunnerState>,
) -> Result<RunSummary, ControlError> {
    let result = claim_until_done(&*control, &ctx, &shutdown, &state).await;
    let _ = state.send(RunnerState::Stopped);
    result
}

async fn claim_until_done(
    control: &dyn ControlStore,
    ctx: &EngineContext,
    shutdown: &CancellationToken,
    state: &watch::Sender<RunnerState>,
) -> Result<RunSummary, ControlError> {
    let mut summary = RunSummary::default();
    let Some(schema) = patiently(ctx, shutdown, "preparing the control tables", || {
        control.ensure_schema()
    })
    .await
    else {
        return Ok(summary);
    };
    schema?;
    let changes = match control.changes().await {
        Ok(changes) => Some(changes),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for changes; polling only");
            None
        }
    };
    let fallback = Arc::new(tokio::sync::Notify::new());
    let changes = changes.unwrap_or(fallback);
    let scripts = ctx.registry.scripts();
    let mut warned_disabled = false;
    while !shutdown.is_cancelled() {
        // Armed before looking, so a change that lands while we look still wakes us.
        let notified = changes.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        if !ctx.config.enabled {
            let _ = state.send(RunnerState::Disabled);
            if !warned_disabled {
                warn_disabled(control).await;
                warned_disabled = true;
            }
            if ctx.config.exit_when_done {
                break;
            }
        } else {
            let claimed = patiently(ctx, shutdown, "claiming", || {
                control.claim_next(&ctx.config.worker_id, ctx.config.lease_ttl, &scripts)
            })
            .await;
            match claimed {
                None => break,
                Some(Err(err)) => return Err(err),
                Some(Ok(Some(claim))) => {
                    let name = claim.lease.name.clone();
                    match &claim.took_over_from {
                        Some(previous) => {
                            metrics::counter!("bgmigrate_lease_takeovers_total", "migration" => name.clone())
                                .increment(1);
                            tracing::info!(migration = %name, previous_worker = %previous, "took over an expired lease")
                        }
                        None => {
                            tracing::info!(migration = %name, worker = %ctx.config.worker_id, "claimed")
                        }
                    }
                    let _ = state.send(RunnerState::Running(name.clone()));
                    match execute::run_claimed(ctx, claim, shutdown).await {
                        Ending::Finished => summary.finished.push(name),
                        Ending::Failed(reason) => summary.failed.push((name, reason)),
                        Ending::Released | Ending::LeaseLost => {}
                    }
                    continue;
                }
                Some(Ok(None)) => {
                    // No migration to claim: join one that runs in key ranges, if it has a free one.
                    let joined = patiently(ctx, shutdown, "claiming a key range", || {
                        control.claim_range(
                            &ctx.config.worker_id,
                            ctx.config.lease_ttl,
                            &scripts,
                            None,
                        )
                    })
                    .await;
                    match joined {
                        None => break,
                        Some(Err(err)) => return Err(err),
                        Some(Ok(Some(claim))) => {
                            let name = claim.lease.name.clone();
                            tracing::info!(migration = %name, worker = %ctx.config.worker_id, "joined to walk key ranges");
                            let _ = state.send(RunnerState::Running(name.clone()));
                            if let Ending::Failed(reason) =
                                ranges::run_joined(ctx, claim, shutdown).await
                            {
                                summary.failed.push((name, reason));
                            }
                            continue;
                        }
                        Some(Ok(None)) => {}
                    }
                    let _ = state.send(RunnerState::Idle);
                    if ctx.config.exit_when_done
                        && !work_in_flight(control, ctx, &scripts, shutdown).await?
                    {
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut notified => {}
            _ = tokio::time::sleep(ctx.config.poll_interval) => {}
        }
    }
    Ok(summary)
}

/// Whether another worker still runs something or is claiming it (a drain waits for it: what follows may become
/// runnable, and a migration in key ranges may have a range free for this worker).
async fn work_in_flight(
    control: &dyn ControlStore,
    ctx: &EngineContext,
    scripts: &[String],
    shutdown: &CancellationToken,
) -> Result<bool, ControlError> {
    // A claim of another worker's may be in flight: the row it locked reads as pending until that claim commits, and
    // exiting then would leave a migration that runs in key ranges to that one worker. Asked before the list, so
    // that a claim committing in between shows in the list as running.
    let Some(claimable) = patiently(ctx, shutdown, "listing", || control.claimable(scripts)).await
    else {
        return Ok(false);
    };
    if claimable? {
        return Ok(true);
    }
    let Some(records) = patiently(ctx, shutdown, "listing", || control.list()).await else {
        return Ok(false);
    };
    let records = records?;
    let running = records.iter().any(|r| r.status == Status::Running);
    if !running {
        let waiting: Vec<&str> = records
            .iter()
            .filter(|r| r.status == Status::Pending)
            .map(|r| r.name.as_str())
            .collect();
        if !waiting.is_empty() {
            tracing::warn!(pending = ?waiting, "nothing runnable is left, but these migrations are pending: they wait on a failed, paused or cancelled dependency, or on a script this worker does not have");
        }
    }
    Ok(running)
}

async fn warn_disabled(control: &dyn ControlStore) {
    let pending: Vec<String> = match control.list().await {
        Ok(records) => records
            .into_iter()
            .filter(|r| !r.status.is_terminal())
            .map(|r| r.name)
            .collect(),
        Err(err) => {
            tracing::warn!(error = %err, "background migrations are disabled; could not list the pending ones");
            return;
        }
    };
    if pending.is_empty() {
        tracing::warn!(
            "background migrations are disabled (ENABLE_BACKGROUND_MIGRATIONS=false); none is pending"
        );
    } else {
        tracing::warn!(
            pending = ?pending,
            "background migrations are disabled (ENABLE_BACKGROUND_MIGRATIONS=false) while some are pending: the data may be inconsistent until they run"
        );
    }
}
