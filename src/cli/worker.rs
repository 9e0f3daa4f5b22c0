//! `bgmigrate worker`: run background migrations until stopped (or drained with --exit-when-done).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bgmigrate::config::{self, Connected};
use bgmigrate::{Runner, RunnerConfig, RunnerHandle, builtin_registry, web};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{Failed, migrate, parse_duration, progress};

/// Options of `bgmigrate worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Exit when nothing is left to run (exit 1 if a migration this worker ran failed).
    #[arg(long)]
    exit_when_done: bool,
    /// Serve `/metrics` (Prometheus text: batch durations, sizes, rows, retries, throttling, lease takeovers, and
    /// every migration's status) on this address, e.g. 127.0.0.1:9187. BGMIGRATE_READ_TOKEN, when set, is required
    /// as a Bearer token.
    #[arg(long, env = "BGMIGRATE_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,
    #[command(flatten)]
    lease: LeaseArgs,
}

/// How a process that runs migrations (`worker`, `finalize`) holds leases.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// Lease duration without renewal before another worker takes over.
    #[arg(long, env = "BGMIGRATE_LEASE_TTL", default_value = "30s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// Lease renewal interval.
    #[arg(long, env = "BGMIGRATE_HEARTBEAT", default_value = "10s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Poll interval when no change notification arrives.
    #[arg(long, env = "BGMIGRATE_POLL", default_value = "5s", value_parser = parse_duration)]
    poll: Duration,
    /// This worker's id (default host:pid:nonce).
    #[arg(long, env = "BGMIGRATE_WORKER_ID")]
    worker_id: Option<String>,
}

impl LeaseArgs {
    /// The runner configuration these options give (checked: the heartbeat must be shorter than the lease).
    pub fn config(self) -> anyhow::Result<RunnerConfig> {
        if self.heartbeat >= self.lease_ttl {
            return Err(super::BadInput(format!(
                "--heartbeat ({:?}) must be shorter than --lease-ttl ({:?}), or leases expire between renewals",
                self.heartbeat, self.lease_ttl
            ))
            .into());
        }
        let defaults = RunnerConfig::default();
        Ok(RunnerConfig {
            worker_id: self.worker_id.unwrap_or(defaults.worker_id),
            lease_ttl: self.lease_ttl,
            heartbeat_interval: self.heartbeat,
            poll_interval: self.poll,
            ..defaults
        })
    }
}

/// Registers definitions (so a worker never waits for `web`), then runs migrations until stopped.
pub async fn run(connected: &Connected, dir: &Path, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let config = RunnerConfig {
        exit_when_done: args.exit_when_done,
        enabled: config::background_migrations_enabled("")?,
        ..args.lease.config()?
    };
    let metrics = match args.metrics_bind {
        Some(address) => Some(serve_metrics(connected, address).await?),
        None => None,
    };
    let registrations = migrate::load_and_check(connected, dir)?;
    migrate::register(connected, &registrations).await?;
    tracing::info!(worker = %config.worker_id, "worker started");
    let handle = spawn_runner(connected, config);
    let bars = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(progress::draw(handle.subscribe())));
    stop_on_signals(handle.shutdown_token());
    let summary = handle.join().await?;
    if let Some(bars) = bars {
        bars.abort();
    }
    if let Some(metrics) = metrics {
        metrics.cancel();
    }
    tracing::info!(
        finished = summary.finished.len(),
        failed = summary.failed.len(),
        "worker stopped"
    );
    if let Some((name, reason)) = summary.failed.first() {
        return Err(Failed(format!("background migration {name} failed: {reason}")).into());
    }
    Ok(ExitCode::SUCCESS)
}

/// A runner of the built-in kinds over the connected stores, started.
pub(super) fn spawn_runner(connected: &Connected, config: RunnerConfig) -> RunnerHandle {
    Runner::new(
        connected.control.clone(),
        builtin_registry(),
        connected.stores.clone(),
        config,
    )
    .spawn()
}

/// Serves `/metrics` on `address` until the returned token is cancelled; the recorder is installed before the
/// runner starts, so the first batch is counted.
async fn serve_metrics(
    connected: &Connected,
    address: SocketAddr,
) -> anyhow::Result<CancellationToken> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|err| {
        super::BadInput(format!(
            "cannot listen on {address} for /metrics: {err}; choose another address with --metrics-bind"
        ))
    })?;
    let bound = listener.local_addr().unwrap_or(address);
    let state = web::WebState::new(connected.control.clone())
        .read_token(super::web::token("BGMIGRATE_READ_TOKEN")?);
    // Built here, not inside the spawned task: building it installs the recorder, which must happen before the
    // runner starts (a task spawned now may first run after the first batches, whose counts would be lost).
    let router = web::metrics_router(state);
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let served = web::serve(listener, router, async move { stopped.cancelled().await });
        if let Err(err) = served.await {
            tracing::warn!(error = %err, "the /metrics server stopped");
        }
    });
    tracing::info!(address = %format!("http://{bound}/metrics"), "serving worker metrics");
    Ok(stop)
}

/// First SIGTERM / Ctrl-C: finish the current batch, release the lease, exit. Second: exit at once.
pub(super) fn stop_on_signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            wait_for_signal().await;
            count += 1;
            if count == 1 {
                tracing::info!("stopping after the current batch (signal again to exit at once)");
                shutdown.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}

/// Resolves on the first SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
