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
    /// Host names the UI answers to besides IP addresses and localhost (comma-separated; `*` for any), e.g. the
    /// name a reverse proxy passes on in `Host`.
    #[arg(long, env = "BGMIGRATE_ALLOWED_HOSTS", default_value = "")]
    allowed_hosts: String,
    /// How long a login session lasts (e.g. 12h, 30m).
    #[arg(long, env = "BGMIGRATE_SESSION_LIFETIME", default_value = "12h", value_parser = super::parse_duration)]
    session_lifetime: std::time::Duration,
}

/// A token from the environment: unset or empty is `None`; a short one is refused (exit 2), since a guessable
/// token is worse than none.
pub(super) fn token(variable: &str) -> anyhow::Result<Option<String>> {
    let token = std::env::var(variable)
        .ok()
        .filter(|t| !t.trim().is_empty());
    if let Some(token) = &token
        && token.trim().chars().count() < web::MIN_TOKEN_LEN
    {
        return Err(BadInput(format!(
            "{variable} has {} characters; use at least {} random ones, e.g. `openssl rand -hex 24`",
            token.trim().chars().count(),
            web::MIN_TOKEN_LEN
        ))
        .into());
    }
    Ok(token)
}

/// Prepares the database like `migrate`, then serves until a signal arrives.
pub async fn run(connected: &Connected, dir: &Path, args: WebArgs) -> anyhow::Result<ExitCode> {
    let admin_token = token("BGMIGRATE_ADMIN_TOKEN")?;
    let read_token = token("BGMIGRATE_READ_TOKEN")?;
    if args.session_lifetime.is_zero() {
        return Err(BadInput("--session-lifetime must be longer than 0 s, e.g. 12h".into()).into());
    }
    migrate::run(connected, dir).await?;
    if admin_token.is_none() {
        tracing::warn!(
            "BGMIGRATE_ADMIN_TOKEN is not set: the UI and API are read-only until it is"
        );
    }
    let mut state = WebState::new(connected.control.clone())
        .admin_token(admin_token)
        .read_token(read_token)
        .allowed_hosts(web::AllowedHosts::parse(&args.allowed_hosts))
        .session_lifetime(args.session_lifetime)
        .background_enabled(config::background_migrations_enabled("")?)
        .migrations_dir(dir)
        .stores(connected.stores.clone());
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
    web::serve(
        listener,
        web::router(state),
        super::worker::wait_for_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
