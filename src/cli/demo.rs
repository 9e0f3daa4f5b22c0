//! `bgmigrate demo`: the first five minutes. Creates `bgmigrate-demo/` in the current directory, fills a SQLite file
//! with sample application data (Langfuse-like traces / observations / scores), registers background migrations
//! over it (backfills, and a copy of the traces into a second SQLite file, `bgmigrate-demo/analytics.db`, the
//! `analytics` store), and runs the worker and the web UI in this process, with progress bars. With `DATABASE_URL`
//! set, the sample data and the control tables go to that database instead (the analytics file stays SQLite).
//!
//! Order of a run: [`prepare`] (folder and URL) → connect → [`sample_data`] → [`with_analytics`] →
//! [`write_definitions`] → register → the web UI ([`serve_web`]) → the runner (and its progress bars) → wait → stop
//! the web UI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use bgmigrate::config::{self, Connected};
use bgmigrate::store::{SqlParam, SqlStore, SqliteStore, sqlite};
use bgmigrate::web::{self, WebState};
use bgmigrate::{Runner, RunnerConfig, builtin_registry};
use clap::Args;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BadInput, Failed, migrate, output, progress, worker};

/// The folder the demo works in, under the current directory.
pub const DEMO_DIR: &str = "bgmigrate-demo";

/// The store name of the demo's analytics database, the target of its copy.
pub const ANALYTICS_STORE: &str = "analytics";

/// The analytics database's file, under [`DEMO_DIR`].
const ANALYTICS_FILE: &str = "analytics.db";

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

/// Runs the demo on `connected` (opened from [`prepare`]'s URL).
pub async fn run(connected: &Connected, url: &str, args: DemoArgs) -> anyhow::Result<ExitCode> {
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
    sample_data(store.as_ref(), args.rows).await?;
    let connected = &with_analytics(connected).await?;
    let migrations = Path::new(DEMO_DIR).join("migrations");
    write_definitions(&migrations, store_name)?;
    let registrations = migrate::load_and_check(connected, &migrations)?;
    migrate::register(connected, &registrations).await?;
    print_where_things_are(url, &migrations);
    let web_stop = CancellationToken::new();
    let web = serve_web(connected, listener, web_stop.clone())?;

    let config = RunnerConfig {
        exit_when_done: args.exit_when_done,
        poll_interval: std::time::Duration::from_secs(1),
        ..RunnerConfig::default()
    };
    let handle = Runner::new(
        connected.control.clone(),
        builtin_registry(),
        connected.stores.clone(),
        config,
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

/// `connected` plus the analytics database (`bgmigrate-demo/analytics.db`) as the [`ANALYTICS_STORE`] store. Its
/// `traces` table, created if missing, is the application's (same columns, primary key on `id`: the copy upserts
/// on it).
async fn with_analytics(connected: &Connected) -> anyhow::Result<Connected> {
    let path = Path::new(DEMO_DIR).join(ANALYTICS_FILE);
    let pool = sqlite::connect_pool(&format!("sqlite://{}", path.display()), 4).await?;
    let analytics = SqliteStore::new(pool, SqliteStore::id_for_path(&path));
    if analytics.columns("traces").await?.is_empty() {
        let create = schema_statements()
            .find(|statement| statement.contains("CREATE TABLE traces"))
            .context("the demo schema defines the traces table")?;
        let mut tx = analytics.begin().await?;
        tx.execute(create, &[]).await?;
        tx.commit().await?;
    }
    Ok(Connected {
        control: connected.control.clone(),
        stores: connected
            .stores
            .clone()
            .with_sql(ANALYTICS_STORE, std::sync::Arc::new(analytics)),
        pool: connected.pool.clone(),
        clickhouse: connected.clickhouse.clone(),
    })
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
        .admin_token(token)
        .background_enabled(true);
    Ok(tokio::spawn(web::serve(
        listener,
        web::router(state),
        stop.cancelled_owned(),
    )))
}

/// The `[args]` header of the demo's definitions, with why they sleep between batches.
const PACED: &str = "# sleepMs paces the demo so there is something to watch; try:\n\
                     #   bgmigrate set-args NAME '{\"sleepMs\": 0, \"batchSize\": 20000}'\n[args]\n";

/// The demo's background migrations: `(file name, definition)` for `store`. Each is a file a newcomer can read and
/// edit in `bgmigrate-demo/migrations/background/`.
fn definitions(store: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "20241024_1216_add_generations_cost_backfill",
            format!(
                "# Total cost of every generation, from its input and output costs.\n\
                 kind  = \"backfill\"\nstore = \"{store}\"\ntable = \"observations\"\nkey   = [\"id\"]\n\
                 set   = {{ total_cost = \"coalesce(input_cost, 0) + coalesce(output_cost, 0)\" }}\n\
                 where = \"type = 'GENERATION'\"\n\n{PACED}batchSize = 2000\nsleepMs = 100\n"
            ),
        ),
        (
            "20241024_1300_traces_created_day_backfill",
            format!(
                "# The day of each trace. About a thousand traces share each created_at: the (created_at, id) key\n\
                 # still advances (a timestamp-only cursor would loop forever here).\n\
                 kind  = \"backfill\"\nstore = \"{store}\"\ntable = \"traces\"\nkey   = [\"created_at\", \"id\"]\n\
                 set   = {{ created_day = \"substr(created_at, 1, 10)\" }}\n\n{PACED}batchSize = 1000\nsleepMs = 50\n"
            ),
        ),
        (
            "20241024_1400_scores_normalized_value_backfill",
            format!(
                "# Scores on a 0..1 scale.\n\
                 kind  = \"backfill\"\nstore = \"{store}\"\ntable = \"scores\"\nkey   = [\"id\"]\n\
                 set   = {{ normalized_value = \"value / 100.0\" }}\n\n{PACED}batchSize = 5000\nsleepMs = 50\n"
            ),
        ),
        (
            "20241024_1730_copy_traces_to_analytics",
            format!(
                "# The traces, copied into the analytics database (bgmigrate-demo/analytics.db), upserted on id.\n\
                 kind = \"copy\"\nfrom = {{ store = \"{store}\", table = \"traces\", key = [\"id\"] }}\n\
                 to   = {{ store = \"{ANALYTICS_STORE}\", table = \"traces\" }}\n\n{PACED}batchSize = 1000\n\
                 maxBatchBytes = 4000000\nsleepMs = 50\n"
            ),
        ),
    ]
}

/// Writes the definitions that are not there yet (a newcomer's edits to them are kept).
fn write_definitions(migrations: &Path, store: &str) -> anyhow::Result<()> {
    let background = migrations.join("background");
    std::fs::create_dir_all(&background)
        .with_context(|| format!("create {}", background.display()))?;
    for (name, toml) in definitions(store) {
        let path: PathBuf = background.join(format!("{name}.toml"));
        if !path.exists() {
            std::fs::write(&path, toml).with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(())
}

/// Creates and fills the sample tables, unless they exist (a second run reuses the data).
/// The statements of the demo's application schema, one by one.
fn schema_statements() -> impl Iterator<Item = &'static str> {
    include_str!("sql/demo_schema.sql")
        .split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
}

async fn sample_data(store: &dyn SqlStore, observations: u64) -> anyhow::Result<()> {
    if !store.columns("traces").await?.is_empty() {
        println!("demo: sample data already present; delete {DEMO_DIR}/ to start over");
        return Ok(());
    }
    let started = Instant::now();
    let traces = (observations / 4).max(1);
    let scores = (observations / 2).max(1);
    let count = |n: u64| SqlParam::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let mut tx = store.begin().await?;
    for statement in schema_statements() {
        tx.execute(statement, &[]).await?;
    }
    tx.execute(include_str!("sql/demo_traces.sql"), &[count(traces)])
        .await?;
    tx.execute(
        include_str!("sql/demo_observations.sql"),
        &[count(observations), count(traces)],
    )
    .await?;
    tx.execute(
        include_str!("sql/demo_scores.sql"),
        &[count(scores), count(traces)],
    )
    .await?;
    // A few large rows (256 KiB of input each): batches must carry them without trouble.
    let large = format!(
        "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}",
        "a long pasted document ".repeat(11_400)
    );
    for n in [1, observations / 3, observations / 2, observations - 1] {
        tx.execute(
            "UPDATE observations SET input = $1 WHERE id = $2",
            &[
                SqlParam::Text(large.clone()),
                SqlParam::Text(format!("obs-{n}")),
            ],
        )
        .await?;
    }
    tx.commit().await?;
    println!(
        "demo: generated {traces} traces, {observations} observations and {scores} scores in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_where_things_are(url: &str, migrations: &Path) {
    let shown_url = bgmigrate::store::postgres::redact(url);
    println!("demo: sample data and control tables: {shown_url}");
    println!(
        "demo: background migration definitions: {}",
        migrations.join("background").display()
    );
    println!(
        "demo: in another terminal: DATABASE_URL={shown_url} bgmigrate status   (or show NAME, pause NAME, set-args NAME '{{\"batchSize\": 1000}}')"
    );
}
