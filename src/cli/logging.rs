//! Where log lines go and how they look: text for people, JSON lines for log pipelines (`--log-format`,
//! `BGMIGRATE_LOG_FORMAT`).

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `2024-10-24T17:30:00Z  INFO claimed migration=... worker=...`, coloured on a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and every field (`migration`, ...) at the top
    /// level, so a pipeline can filter on them without parsing the message.
    Json,
}

/// Parses `--log-format` / `BGMIGRATE_LOG_FORMAT`; clap prints the error beside the flag and exits 2.
pub fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(
            "allowed values are text and json (set with --log-format or BGMIGRATE_LOG_FORMAT)"
                .into(),
        ),
    }
}

/// Logs to stderr in `format`; `RUST_LOG` overrides the default `info`.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
