//! Command-line surface: arguments, dispatch, exit codes. Each command lives in its own file.

mod add;
mod completions;
mod demo;
mod finalize;
mod inspect;
mod logging;
mod migrate;
mod operate;
mod output;
mod progress;
mod wait;
mod web;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bgmigrate::ControlError;
use bgmigrate::config::{self, ConfigError, Connected};
use bgmigrate::definition::DefinitionError;
use bgmigrate::fast::clickhouse::ClickHouseMigrateError;
use bgmigrate::fast::postgres::FastMigrationError;
use bgmigrate::fast::stops::{HeaderError, UnknownRequirement};
use clap::{Parser, Subcommand};

/// bgmigrate: background migrations for Postgres, ClickHouse and SQLite, batched, resumable, leased, observable.
#[derive(Debug, Parser)]
#[command(name = "bgmigrate", version, about)]
pub struct Cli {
    /// Control store: postgres://user@host:port/database or sqlite://path/to/file.db.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// ClickHouse over HTTP: http://user:pass@host:8123/db (CLICKHOUSE_USER/PASSWORD/DB override its parts).
    #[arg(long, env = "CLICKHOUSE_URL", global = true, hide_env_values = true)]
    clickhouse_url: Option<String>,
    /// The migrations directory (postgres/, clickhouse/, background/).
    #[arg(
        long,
        env = "BGMIGRATE_MIGRATIONS_DIR",
        global = true,
        default_value = "migrations"
    )]
    migrations_dir: PathBuf,
    /// A named store that definitions refer to, NAME=URL (postgres://, sqlite://, http(s):// for ClickHouse);
    /// repeatable. BGMIGRATE_STORE_<NAME>=URL does the same from the environment.
    #[arg(long = "store", global = true, value_name = "NAME=URL")]
    stores: Vec<String>,
    /// Log lines on stderr: text, or json (one object per line, fields at the top level) for log pipelines.
    #[arg(
        long,
        env = "BGMIGRATE_LOG_FORMAT",
        global = true,
        default_value = "text",
        value_name = "text|json",
        value_parser = logging::parse_log_format
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run background migrations; keeps polling for new or retried work unless --exit-when-done.
    Worker(worker::WorkerArgs),
    /// Apply fast migrations, register background migrations, then serve the UI, the JSON API and /metrics.
    Web(web::WebArgs),
    /// Apply fast migrations and register background migrations, then exit.
    Migrate,
    /// Every background migration with status and progress.
    Status {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// One migration: args, state, progress, recent batches, events.
    Show {
        /// Migration name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// failed/cancelled -> pending; resumes from its checkpoint unless --from-start.
    Retry {
        /// Migration name.
        name: String,
        /// Clear the checkpoint and progress first.
        #[arg(long)]
        from_start: bool,
    },
    /// Stop after the current batch, keeping the checkpoint.
    Pause {
        /// Migration name.
        name: String,
    },
    /// Make a paused migration pending again.
    Resume {
        /// Migration name.
        name: String,
    },
    /// Stop a migration for good (until retried).
    Cancel {
        /// Migration name.
        name: String,
    },
    /// Merge JSON into the migration's args, validated first, e.g. '{"batchSize":2500}' (null removes a key).
    SetArgs {
        /// Migration name.
        name: String,
        /// A JSON object.
        json: String,
    },
    /// Exit 0 when all named (default: all) are finished; 1 on failure or timeout.
    Wait(wait::WaitArgs),
    /// Finish these background migrations now, in this process (for a deployment stop): runs the remaining
    /// batches under the same leases as workers, waits for a worker that holds one, exits 0 when all are finished
    /// and 1 with the reason when one fails or is paused or cancelled. Migrations run in name order: unfinished
    /// ones before NAME run first.
    Finalize(finalize::FinalizeArgs),
    /// Sample data in SQLite (bgmigrate-demo/ here) and background migrations over it, run with progress bars.
    Demo(demo::DemoArgs),
    /// Write a commented template for a new migration: a timestamped background definition (--kind) or a
    /// fast migration (--fast); prints its path. Never overwrites a file.
    Add(add::AddArgs),
    /// Print a completion script for the shell, e.g. `bgmigrate completions bash > /etc/bash_completion.d/bgmigrate`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// The migration names given on the command line.
    fn names(&self) -> Vec<&str> {
        match self {
            Command::Show { name, .. }
            | Command::Retry { name, .. }
            | Command::Pause { name }
            | Command::Resume { name }
            | Command::Cancel { name }
            | Command::SetArgs { name, .. } => vec![name.as_str()],
            Command::Wait(args) => args.names(),
            Command::Finalize(args) => args.names(),
            _ => Vec::new(),
        }
    }
}

/// Bad input: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Exit code 1: a migration failed or a wait timed out (the message was already printed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failed(pub String);

/// 2 for input a person must fix, 1 otherwise.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    let bad_input = err.chain().any(|cause| {
        cause.is::<BadInput>()
            || cause.is::<DefinitionError>()
            || cause.is::<HeaderError>()
            || cause.is::<UnknownRequirement>()
            || cause
                .downcast_ref::<FastMigrationError>()
                .is_some_and(FastMigrationError::is_bad_input)
            || cause
                .downcast_ref::<ClickHouseMigrateError>()
                .is_some_and(ClickHouseMigrateError::is_bad_input)
            || cause
                .downcast_ref::<ConfigError>()
                .is_some_and(ConfigError::is_bad_input)
            || cause.downcast_ref::<ControlError>().is_some_and(|e| {
                matches!(
                    e,
                    ControlError::NotFound(_)
                        | ControlError::Transition { .. }
                        | ControlError::InvalidArgs { .. }
                )
            })
    });
    if bad_input { 2 } else { 1 }
}

/// Logs to stderr in the format of `--log-format`; `RUST_LOG` overrides the default `info`.
pub fn init_logging(cli: &Cli) {
    logging::init(cli.log_format);
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Commands that touch no database.
    let command = match cli.command {
        Command::Add(args) => return add::run(&cli.migrations_dir, args),
        Command::Completions { shell } => return Ok(completions::run(shell)),
        command => command,
    };
    let url = match (&command, cli.database_url.clone()) {
        (Command::Demo(_), url) => demo::prepare(url.as_deref())?,
        (_, Some(url)) => url,
        (_, None) => return Err(BadInput(
            "no control store: set DATABASE_URL or --database-url (postgres://user@host:port/database or sqlite://path/to/file.db)".into(),
        )
        .into()),
    };
    if let Some(name) = command
        .names()
        .into_iter()
        .find_map(bgmigrate::web::name_problem)
    {
        return Err(BadInput(name).into());
    }
    let mut settings = config::StoreSetting::from_env(std::env::vars())?;
    for flag in &cli.stores {
        let setting = config::StoreSetting::from_flag(flag)?;
        // A flag overrides the variable of the same store.
        settings.retain(|s| s.name != setting.name);
        settings.push(setting);
    }
    if let Command::Demo(_) = &command {
        demo::add_analytics_store(&mut settings);
    }
    let connected = config::connect(&url)
        .await?
        .with_clickhouse(cli.clickhouse_url.as_deref())?
        .with_stores(&settings)
        .await?;
    match command {
        Command::Worker(args) => worker::run(&connected, &cli.migrations_dir, args).await,
        Command::Web(args) => web::run(&connected, &cli.migrations_dir, args).await,
        Command::Migrate => migrate::run(&connected, &cli.migrations_dir).await,
        Command::Status { json } => inspect::status(&connected, json).await,
        Command::Show { name, json } => inspect::show(&connected, &name, json).await,
        Command::Retry { name, from_start } => {
            operate::act(&connected, &name, bgmigrate::Action::Retry, from_start).await
        }
        Command::Pause { name } => {
            operate::act(&connected, &name, bgmigrate::Action::Pause, false).await
        }
        Command::Resume { name } => {
            operate::act(&connected, &name, bgmigrate::Action::Resume, false).await
        }
        Command::Cancel { name } => {
            operate::act(&connected, &name, bgmigrate::Action::Cancel, false).await
        }
        Command::SetArgs { name, json } => operate::set_args(&connected, &name, &json).await,
        Command::Wait(args) => wait::run(&connected, args).await,
        Command::Finalize(args) => finalize::run(&connected, args).await,
        Command::Demo(args) => {
            let config = demo::DemoConfig {
                url: &url,
                settings: &settings,
                clickhouse_url: cli.clickhouse_url.as_deref(),
            };
            demo::run(&connected, &config, args).await
        }
        Command::Add(_) | Command::Completions { .. } => {
            unreachable!("answered without a database")
        }
    }
}

/// Who an operator action is recorded as: `cli:user@host`.
fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("cli:{user}@{host}")
}

/// Parses `30s`, `500ms`, `2m` (humantime), or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.parse::<f64>()
        && secs >= 0.0
        && secs.is_finite()
    {
        return Ok(Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e}: use e.g. 30s, 500ms, 2m"))
}

/// Shared helper: the connected stores.
fn control(connected: &Connected) -> &dyn bgmigrate::ControlStore {
    connected.control.as_ref()
}
