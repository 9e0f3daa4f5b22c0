//! `bgmigrate finalize NAME...`: finish these background migrations in the foreground, for a deployment stop.
//!
//! This process runs the library's [`Runner`] (the same claim loop, leases and fencing as any worker) and watches
//! the named migrations through the control store; once all of them are finished it shuts the runner down (which
//! releases any lease it holds) and exits 0. A migration that another worker runs is waited for, with its progress
//! shown; if that worker dies, the runner's claim loop takes the expired lease over. A named migration that fails,
//! is paused or cancelled, or cannot start, ends the command with exit 1 and the reason.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use bgmigrate::config::Connected;
use bgmigrate::control::MigrationRecord;
use bgmigrate::engine::RunnerState;
use bgmigrate::{RunnerConfig, Status};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::worker::{LeaseArgs, spawn_runner, wait_for_signal};
use super::{BadInput, Failed, control};

/// Options of `bgmigrate finalize`.
#[derive(Debug, Args)]
pub struct FinalizeArgs {
    /// The background migrations to finish. Migrations run in name order, so unfinished ones before these (and,
    /// for a migration with depends_on, the ones it depends on) run first, here or on any worker.
    #[arg(required = true)]
    names: Vec<String>,
    #[command(flatten)]
    lease: LeaseArgs,
}

impl FinalizeArgs {
    /// The names to finish.
    pub fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }
}

/// How often the named migrations' rows are read.
const WATCH: Duration = Duration::from_millis(300);

/// Polls in a row, with this runner idle and nothing running anywhere, after which a pending migration is stuck.
const STUCK_AFTER_POLLS: u32 = 3;

/// Runs a worker in this process until every named migration is finished.
pub async fn run(connected: &Connected, args: FinalizeArgs) -> anyhow::Result<ExitCode> {
    // Explicitly asked for: ENABLE_BACKGROUND_MIGRATIONS=false, which keeps workers idle, does not apply here.
    let config = RunnerConfig {
        exit_when_done: false,
        enabled: true,
        ..args.lease.config()?
    };
    let poll = config.poll_interval;
    control(connected).ensure_schema().await?;
    let records = control(connected).list().await?;
    if let Some(unknown) = args
        .names
        .iter()
        .find(|n| !records.iter().any(|r| &r.name == *n))
    {
        return Err(BadInput(format!(
            "no background migration named {unknown:?}; `bgmigrate status` lists them (`bgmigrate migrate` \
             registers new definitions)"
        ))
        .into());
    }
    if let Some(problem) = problem(&records, &args.names) {
        return Err(Failed(problem).into());
    }
    if all_finished(&records, &args.names) {
        println!("already finished: {}", args.names.join(", "));
        return Ok(ExitCode::SUCCESS);
    }
    tracing::info!(worker = %config.worker_id, migrations = ?args.names, "finalizing");
    let worker_id = config.worker_id.clone();
    let handle = spawn_runner(connected, config);
    let mut bars = Bars::new(&args.names);
    let mut idle_polls = 0;
    // Listening from here on, so a signal between two looks is not missed.
    let signal = wait_for_signal();
    tokio::pin!(signal);
    let outcome = loop {
        let records = match control(connected).list().await {
            Ok(records) => records,
            // Ends here rather than returning, so the runner still releases its lease below.
            Err(err) => break Err(format!("cannot read the control table: {err}")),
        };
        bars.draw(&records, &worker_id);
        if let Some(problem) = problem(&records, &args.names) {
            break Err(problem);
        }
        if all_finished(&records, &args.names) {
            break Ok(());
        }
        // A pending migration that nothing runs while this runner looks for work and finds none cannot start:
        // something before it waits on an operator.
        let nobody_runs = !records.iter().any(|r| r.status == Status::Running);
        idle_polls = match handle.state() {
            RunnerState::Idle if nobody_runs => idle_polls + 1,
            RunnerState::Stopped => break Err("the runner stopped".into()),
            _ => 0,
        };
        if idle_polls * WATCH.as_millis() as u32 >= STUCK_AFTER_POLLS * poll.as_millis() as u32 {
            break Err(stuck(&records, &args.names));
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH) => {}
            _ = &mut signal => break Err("interrupted; what was done so far is kept (run it again to go on)".into()),
        }
    };
    bars.clear();
    // Stops after the current batch and releases the lease, so a worker resumes at once.
    let summary = handle.shutdown().await;
    match (outcome, summary) {
        (Ok(()), Ok(_)) => {
            println!("finished: {}", args.names.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        (Err(problem), Ok(_)) => Err(Failed(problem).into()),
        (Err(problem), Err(err)) => Err(Failed(format!("{problem}: {err}")).into()),
        (Ok(()), Err(err)) => Err(err.into()),
    }
}

fn all_finished(records: &[MigrationRecord], names: &[String]) -> bool {
    names.iter().all(|name| {
        records
            .iter()
            .any(|r| &r.name == name && r.status == Status::Finished)
    })
}

/// Why a named migration will not finish without an operator: failed, cancelled or paused.
fn problem(records: &[MigrationRecord], names: &[String]) -> Option<String> {
    let record = records.iter().find(|r| {
        names.contains(&r.name)
            && matches!(
                r.status,
                Status::Failed | Status::Cancelled | Status::Paused
            )
    })?;
    let name = &record.name;
    Some(match record.status {
        Status::Paused => {
            format!("{name} is paused: `bgmigrate resume {name}`, then finalize again")
        }
        Status::Cancelled => format!(
            "{name} is cancelled: `bgmigrate retry {name}` (it resumes from its checkpoint), then finalize again"
        ),
        _ => format!(
            "{name} failed: {}; fix the cause, `bgmigrate retry {name}`, then finalize again",
            record
                .failed_reason
                .as_deref()
                .unwrap_or("no reason recorded")
        ),
    })
}

/// Why a pending named migration cannot start: what it waits on.
fn stuck(records: &[MigrationRecord], names: &[String]) -> String {
    let Some(record) = records
        .iter()
        .find(|r| names.contains(&r.name) && r.status == Status::Pending)
    else {
        return "no worker can make progress".into();
    };
    let blockers: Vec<String> = match &record.depends_on {
        Some(depends_on) => records
            .iter()
            .filter(|r| depends_on.contains(&r.name) && r.status != Status::Finished)
            .map(|r| format!("{} ({})", r.name, r.status))
            .collect(),
        None => records
            .iter()
            .filter(|r| r.name < record.name && !r.status.is_terminal())
            .map(|r| format!("{} ({})", r.name, r.status))
            .collect(),
    };
    if blockers.is_empty() {
        return format!(
            "{} cannot start: {}",
            record.name,
            record
                .failed_reason
                .as_deref()
                .unwrap_or("no worker has its script")
        );
    }
    format!(
        "{} cannot start: it runs after {}, which an operator must resume, retry or finalize first",
        record.name,
        blockers.join(", ")
    )
}

/// One progress bar per named migration (drawn only when stderr is a terminal), fed from the control table, so a
/// migration that another worker runs shows its progress too.
struct Bars {
    bars: MultiProgress,
    by_name: HashMap<String, ProgressBar>,
    last_status: HashMap<String, Status>,
}

impl Bars {
    fn new(names: &[String]) -> Self {
        let bars = MultiProgress::new();
        let style = ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let by_name = names
            .iter()
            .map(|name| {
                let bar = bars.add(ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(name.clone());
                (name.clone(), bar)
            })
            .collect();
        Self {
            bars,
            by_name,
            last_status: HashMap::new(),
        }
    }

    fn draw(&mut self, records: &[MigrationRecord], worker_id: &str) {
        for record in records {
            let Some(bar) = self.by_name.get(&record.name) else {
                continue;
            };
            bar.set_length(record.rows_total.unwrap_or(0).max(record.rows_done) as u64);
            bar.set_position(record.rows_done as u64);
            let owner = match (&record.worker_id, record.status) {
                (Some(owner), Status::Running) if owner != worker_id => {
                    format!(" (run by worker {owner}; waiting for it)")
                }
                _ => String::new(),
            };
            bar.set_message(format!("{}{owner}", record.status));
            if self.last_status.insert(record.name.clone(), record.status) != Some(record.status) {
                tracing::info!(migration = %record.name, status = %record.status, rows = record.rows_done, worker = record.worker_id.as_deref().unwrap_or(""), "finalize: status{owner}");
            }
        }
    }

    fn clear(&self) {
        for bar in self.by_name.values() {
            bar.abandon();
        }
        let _ = self.bars.clear();
    }
}
