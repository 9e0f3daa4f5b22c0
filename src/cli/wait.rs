//! `bgmigrate wait`: block until the named migrations (default: all) are finished.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bgmigrate::Status;
use bgmigrate::config::Connected;
use clap::Args;

use super::{BadInput, Failed, control, parse_duration};

/// Options of `bgmigrate wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Migrations to wait for (default: all).
    names: Vec<String>,
    /// Give up after this long (exit 1), e.g. 10m.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
}

impl WaitArgs {
    /// The names waited for.
    pub fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }
}

const POLL: Duration = Duration::from_millis(500);

/// Exit 0 when all are finished; 1 when one failed or was cancelled, or on timeout; 2 for an unknown name.
pub async fn run(connected: &Connected, args: WaitArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    control(connected).ensure_schema().await?;
    loop {
        let records = control(connected).list().await?;
        if let Some(unknown) = args
            .names
            .iter()
            .find(|n| !records.iter().any(|r| &r.name == *n))
        {
            return Err(BadInput(format!(
                "no background migration named {unknown:?}; `bgmigrate status` lists them"
            ))
            .into());
        }
        let watched: Vec<_> = records
            .iter()
            .filter(|r| args.names.is_empty() || args.names.contains(&r.name))
            .collect();
        if let Some(stopped) = watched
            .iter()
            .find(|r| matches!(r.status, Status::Failed | Status::Cancelled))
        {
            let reason = stopped
                .failed_reason
                .as_deref()
                .unwrap_or("cancelled by an operator");
            return Err(Failed(format!(
                "{} is {}: {reason} (fix it, then `bgmigrate retry {}`)",
                stopped.name, stopped.status, stopped.name
            ))
            .into());
        }
        let open: Vec<String> = watched
            .iter()
            .filter(|r| r.status != Status::Finished)
            .map(|r| {
                format!(
                    "{} ({}{})",
                    r.name,
                    r.status,
                    r.percent().map(|p| format!(" {p:.1}%")).unwrap_or_default()
                )
            })
            .collect();
        if open.is_empty() {
            println!("all {} background migrations are finished", watched.len());
            return Ok(ExitCode::SUCCESS);
        }
        if args.timeout.is_some_and(|t| started.elapsed() >= t) {
            return Err(Failed(format!(
                "timed out after {}; not finished: {}",
                humantime::format_duration(args.timeout.unwrap_or_default()),
                open.join(", ")
            ))
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
}
