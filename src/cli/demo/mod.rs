//! `bgmigrate demo`: the first five minutes. Creates `bgmigrate-demo/` in the current directory, fills a SQLite file
//! with sample application data (Langfuse-like traces / observations / scores), registers background migrations
//! over it (backfills, and a copy of the traces into the `analytics` store: a second SQLite file,
//! `bgmigrate-demo/analytics.db`, unless `BGMIGRATE_STORE_ANALYTICS` names another), and runs the worker and the web
//! UI in this process, with progress bars. With `DATABASE_URL` set, the sample data and the control tables go to
//! that database instead. With `CLICKHOUSE_URL` set, the traces are copied into a ClickHouse table instead, from
//! either store (the demo's SQLite file or the `DATABASE_URL` Postgres).
//!
//! The analytics store is an ordinary named store ([`add_analytics_store`]), so a plain `bgmigrate worker` given
//! the same variables runs the demo's migrations too; the demo prints that command.
//!
//! Order of a run: [`prepare`] (folder and URL) → [`add_analytics_store`] → connect → [`copy_target`] (its table)
//! → [`sample_data`] → [`write_definitions`] → register → the web UI ([`serve_web`]) → the runner (and its
//! progress bars) → wait → stop the web UI.
//!
//! Layout: this file runs the demo and decides its stores; `definitions.rs` writes its definition files,
//! `sample.rs` generates its sample data.

mod definitions;
mod sample;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use bgmigrate::config::{self, Connected, StoreSetting};
use bgmigrate::store::postgres;
use bgmigrate::web::{self, WebState};
use bgmigrate::{Runner, RunnerConfig, builtin_registry};
use clap::Args;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::definitions::write_definitions;
use self::sample::{sample_data, schema_statements};
use super::{BadInput, Failed, migrate, output, progress, worker};

/// The folder the demo works in, under the current directory.
pub const DEMO_DIR: &str = "bgmigrate-demo";

/// The store name of the demo's analytics database, the target of its copy.
pub const ANALYTICS_STORE: &str = "analytics";

/// The analytics store's URL unless `BGMIGRATE_STORE_ANALYTICS` (or `--store analytics=...`) names another: a
/// SQLite file beside the sample data.
const ANALYTICS_URL: &str = "sqlite://bgmigrate-demo/analytics.db";

/// The beginning of the line that gives the command of a worker of one's own (tests read the command from it).
pub const WORKER_COMMAND: &str = "demo: a worker of your own runs these migrations too: ";

/// Options of `bgmigrate demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit when every demo migration is finished (exit 1 if one failed), instead of waiting for Ctrl-C.
    #[arg(long)]
    exit_when_done: bool,
    /// Observations to generate (plus a quarter as many traces and half as many scores).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(100..=50_000_000))]
    rows: u64,
    /// Address of the web UI (port 0 picks a free one).
    #[arg(long, env = "BGMIGRATE_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
}

/// Creates the demo folder and returns the control store's URL: `DATABASE_URL` when set, else the demo's own file.
pub fn prepare(database_url: Option<&str>) -> anyhow::Result<String> {
    std::fs::create_dir_all(DEMO_DIR).with_context(|| format!("create {DEMO_DIR}/"))?;
    Ok(match database_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{DEMO_DIR}/app.db"),
    })
}

/// The store name the demo's definitions use: the control database's own store.
fn store_name(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        config::SQLITE_STORE
    } else {
        "postgres"
    }
}

/// Adds the demo's analytics store ([`ANALYTICS_URL`]) to `settings`, unless they name an `analytics` store already.
pub fn add_analytics_store(settings: &mut Vec<StoreSetting>) {
    if !settings.iter().any(|s| s.name == ANALYTICS_STORE) {
        settings.push(StoreSetting {
            name: ANALYTICS_STORE.into(),
            url: ANALYTICS_URL.into(),
            origin: "the demo's analytics store".into(),
        });
    }
}

/// Where the demo copies its traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyTarget {
    /// The `analytics` SQL store.
    Analytics,
    /// The `clickhouse` store (`CLICKHOUSE_URL`).
    ClickHouse,
}

/// How the demo's stores were configured: what a worker of one's own needs to be given.
pub struct DemoConfig<'a> {
    /// The control store's URL, from [`prepare`].
    pub url: &'a str,
    /// The named stores, the analytics store among them ([`add_analytics_store`]).
    pub settings: &'a [StoreSetting],
    /// `CLICKHOUSE_URL`, when set.
    pub clickhouse_url: Option<&'a str>,
}

/// Runs the demo on `connected` (opened from `demo`).
pub async fn run(
    connected: &Connected,
    demo: &DemoConfig<'_>,
    args: DemoArgs,
) -> anyhow::Result<ExitCode> {
    let url = demo.url;
    // Bound first: a busy port is refused before any data is generated.
    let listener = tokio::net::TcpListener::bind(args.bind).await.map_err(|err| {
        BadInput(format!(
            "cannot listen on {}: {err}; choose another address with --bind (port 0 picks a free one)",
            args.bind
        ))
    })?;
    let store_name = store_name(url);
    let store = connected
        .stores
        .sql(store_name)
        .context("the demo's store is not configured")?;
    let target = copy_target(connected).await?;
    sample_data(store.as_ref(), args.rows).await?;
    let migrations = Path::new(DEMO_DIR).join("migrations");
    write_definitions(&migrations, store_name, target)?;
    let registrations = migrate::load_and_check(connected, &migrations)?;
    migrate::register(connected, &registrations).await?;
    print_where_things_are(demo, &migrations, target);
    let web_stop = CancellationToken::new();
    let web = serve_web(connected, listener, web_stop.clone())?;

    let runner = RunnerConfig {
        exit_when_done: args.exit_when_done,
        poll_interval: std::time::Duration::from_secs(1),
        ..RunnerConfig::default()
    };
    let handle = Runner::new(
        connected.control.clone(),
        builtin_registry(),
        connected.stores.clone(),
        runner,
    )
    .spawn();
    let bars = std::io::IsTerminal::is_terminal(&std::io::stderr())
        .then(|| tokio::spawn(progress::draw(handle.subscribe())));
    worker::stop_on_signals(handle.shutdown_token());
    let summary = handle.join().await?;
    if let Some(bars) = bars {
        bars.abort();
    }
    web_stop.cancel();
    web.await??;
    if let Some((name, reason)) = summary.failed.first() {
        return Err(Failed(format!("demo migration {name} failed: {reason}")).into());
    }
    println!(
        "demo: {} background migrations finished in this run:\n{}",
        summary.finished.len(),
        output::status_table(&connected.control.list().await?)
    );
    Ok(ExitCode::SUCCESS)
}

/// Where the traces go, its table created if missing (the application's columns, one row per `id`: the copy
/// upserts on it): ClickHouse when `CLICKHOUSE_URL` is set, else the `analytics` SQL store.
async fn copy_target(connected: &Connected) -> anyhow::Result<CopyTarget> {
    if let Some(clickhouse) = &connected.clickhouse {
        clickhouse
            .execute(include_str!("../sql/demo_clickhouse.sql"))
            .await
            .context("create the demo's traces table in ClickHouse")?;
        return Ok(CopyTarget::ClickHouse);
    }
    let analytics = connected.stores.sql(ANALYTICS_STORE).ok_or_else(|| {
        BadInput(
            "the demo's analytics store must be a SQL store (sqlite:// or postgres://): to copy into ClickHouse, \
             set CLICKHOUSE_URL instead of BGMIGRATE_STORE_ANALYTICS"
                .into(),
        )
    })?;
    if analytics.columns("traces").await?.is_empty() {
        let create = schema_statements()
            .find(|statement| statement.contains("CREATE TABLE traces"))
            .context("the demo schema defines the traces table")?;
        let mut tx = analytics.begin().await?;
        tx.execute(create, &[]).await?;
        tx.commit().await?;
    }
    Ok(CopyTarget::Analytics)
}

/// Serves the web UI on `listener` until `stop`; prints its URL and the admin token that enables its actions
/// (`BGMIGRATE_ADMIN_TOKEN`, or a fresh random one).
fn serve_web(
    connected: &Connected,
    listener: TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let token = std::env::var("BGMIGRATE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes)
                .ok()
                .map(|()| hex::encode(bytes))
        });
    let address = listener.local_addr()?;
    println!("demo: web UI at http://{address}/");
    match &token {
        Some(token) => {
            println!("demo: admin token for the UI's actions (retry, pause, args): {token}")
        }
        None => println!("demo: no admin token could be made: the UI is read-only"),
    }
    let state = WebState::new(connected.control.clone())
        .stores(connected.stores.clone())
        .admin_token(token)
        .background_enabled(true);
    Ok(tokio::spawn(web::serve(
        listener,
        web::router(state),
        stop.cancelled_owned(),
    )))
}

/// Where the data and the definitions are, how to look at them, and the command of a worker of one's own: the
/// same variables make `bgmigrate worker` run these migrations (passwords are left out: a ClickHouse URL with one
/// is given as `"$CLICKHOUSE_URL"`).
fn print_where_things_are(demo: &DemoConfig, migrations: &Path, target: CopyTarget) {
    let shown_url = postgres::redact(demo.url);
    println!("demo: sample data and control tables: {shown_url}");
    println!(
        "demo: background migration definitions: {}",
        migrations.join("background").display()
    );
    println!(
        "demo: in another terminal: DATABASE_URL={shown_url} bgmigrate status   (or show NAME, pause NAME, set-args NAME '{{\"batchSize\": 1000}}')"
    );
    let mut variables = vec![
        format!("DATABASE_URL={shown_url}"),
        format!("BGMIGRATE_MIGRATIONS_DIR={}", migrations.display()),
    ];
    variables.extend(demo.settings.iter().map(|setting| {
        format!(
            "{}{}={}",
            config::STORE_ENV_PREFIX,
            setting.name.to_ascii_uppercase(),
            postgres::redact(&setting.url)
        )
    }));
    if let (CopyTarget::ClickHouse, Some(url)) = (target, demo.clickhouse_url) {
        variables.push(if postgres::redact(url) == url {
            format!("CLICKHOUSE_URL={url}")
        } else {
            "CLICKHOUSE_URL=\"$CLICKHOUSE_URL\"".into()
        });
    }
    println!("{WORKER_COMMAND}{} bgmigrate worker", variables.join(" "));
}
