//! `bgmigrate worker`: run background migrations until stopped (or drained with --exit-when-done).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bgmigrate::config::{self, Connected};
use bgmigrate::{Runner, RunnerConfig, builtin_registry};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{Failed, migrate, parse_duration, progress};

/// Options of `bgmigrate worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Exit when nothing is left to run (exit 1 if a migration this worker ran failed).
    #[arg(long)]
    exit_when_done: bool,
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

/// Registers definitions (so a worker never waits for `web`), then runs migrations until stopped.
pub async fn run(connected: &Connected, dir: &Path, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    if args.heartbeat >= args.lease_ttl {
        return Err(super::BadInput(format!(
            "--heartbeat ({:?}) must be shorter than --lease-ttl ({:?}), or leases expire between renewals",
            args.heartbeat, args.lease_ttl
        ))
        .into());
    }
    let registrations = migrate::load_and_check(connected, dir)?;
    migrate::register(connected, &registrations).await?;
    let defaults = RunnerConfig::default();
    let config = RunnerConfig {
        worker_id: args.worker_id.unwrap_or(defaults.worker_id),
        lease_ttl: args.lease_ttl,
        heartbeat_interval: args.heartbeat,
        poll_interval: args.poll,
        exit_when_done: args.exit_when_done,
        enabled: config::background_migrations_enabled("")?,
        ..defaults
    };
    tracing::info!(worker = %config.worker_id, "worker started");
    let handle = Runner::new(
        connected.control.clone(),
        builtin_registry(),
        connected.stores.clone(),
        config,
    )
    .spawn();
    let bars = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(progress::draw(handle.subscribe())));
    stop_on_signals(handle.shutdown_token());
    let summary = handle.join().await?;
    if let Some(bars) = bars {
        bars.abort();
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
