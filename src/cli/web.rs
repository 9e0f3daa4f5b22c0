//! `bgmigrate web`: apply fast migrations, register background migrations, then serve the UI, the JSON API and
//! `/metrics` until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use bgmigrate::config::{self, Connected};
use bgmigrate::web::{self, WebState};
use clap::Args;

use super::{BadInput, migrate};

/// Options of `bgmigrate web`.
#[derive(Debug, Args)]
pub struct WebArgs {
    /// Address to listen on (loopback by default; put a TLS proxy in front to expose it).
    #[arg(long, env = "BGMIGRATE_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// The host application's version, shown in the header.
    #[arg(long, env = "BGMIGRATE_APP_VERSION")]
    app_version: Option<String>,
}

/// Prepares the database like `migrate`, then serves until a signal arrives.
pub async fn run(connected: &Connected, dir: &Path, args: WebArgs) -> anyhow::Result<ExitCode> {
    migrate::run(connected, dir).await?;
    let admin_token = std::env::var("BGMIGRATE_ADMIN_TOKEN").ok();
    if admin_token.as_deref().is_none_or(|t| t.trim().is_empty()) {
        tracing::warn!(
            "BGMIGRATE_ADMIN_TOKEN is not set: the UI and API are read-only until it is"
        );
    }
    let mut state = WebState::new(connected.control.clone())
        .admin_token(admin_token)
        .read_token(std::env::var("BGMIGRATE_READ_TOKEN").ok())
        .background_enabled(config::background_migrations_enabled("")?);
    if let Some(version) = args.app_version {
        state = state.app_version(version);
    }
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|err| {
            BadInput(format!(
                "cannot listen on {}: {err}; choose another address with --bind",
                args.bind
            ))
        })?;
    tracing::info!(address = %format!("http://{}", args.bind), "serving the web UI, the JSON API and /metrics");
    axum::serve(listener, web::router(state))
        .with_graceful_shutdown(super::worker::wait_for_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}
