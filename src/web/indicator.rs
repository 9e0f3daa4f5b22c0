//! The status indicator shown on every page, served at `/api/status` and drawn as `/badge.svg`: failed (which),
//! disabled with pending migrations (the data may be inconsistent), running (how many), pending, or all finished.

use serde::Serialize;

use crate::control::MigrationRecord;
use crate::status::Status;

/// The overall state, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndicatorState {
    /// At least one migration failed.
    Failed,
    /// `ENABLE_BACKGROUND_MIGRATIONS=false` while some are not finished: the data may be inconsistent.
    DisabledWithPending,
    /// At least one is running.
    Running,
    /// Some wait for a worker (or are paused), none runs.
    Pending,
    /// Every migration finished or was cancelled (or none is registered).
    Finished,
}

impl IndicatorState {
    /// The snake_case name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            IndicatorState::Failed => "failed",
            IndicatorState::DisabledWithPending => "disabled_with_pending",
            IndicatorState::Running => "running",
            IndicatorState::Pending => "pending",
            IndicatorState::Finished => "finished",
        }
    }
}

/// The indicator with the names behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Indicator {
    /// The overall state.
    pub state: IndicatorState,
    /// A sentence for people.
    pub message: String,
    /// Whether workers run background migrations.
    pub background_migrations_enabled: bool,
    /// Running migrations.
    pub running: Vec<String>,
    /// Failed migrations.
    pub failed: Vec<String>,
    /// Pending or paused migrations.
    pub pending: Vec<String>,
    /// Finished migrations.
    pub finished: Vec<String>,
}

impl Indicator {
    /// The indicator for these rows.
    pub fn of(records: &[MigrationRecord], background_enabled: bool) -> Self {
        let names = |wanted: &[Status]| -> Vec<String> {
            records
                .iter()
                .filter(|r| wanted.contains(&r.status))
                .map(|r| r.name.clone())
                .collect()
        };
        let running = names(&[Status::Running]);
        let failed = names(&[Status::Failed]);
        let pending = names(&[Status::Pending, Status::Paused]);
        let finished = names(&[Status::Finished]);
        let unfinished = running.len() + pending.len();
        let (state, message) = if !failed.is_empty() {
            (
                IndicatorState::Failed,
                format!("{} failed: {}", failed.len(), failed.join(", ")),
            )
        } else if !background_enabled && unfinished > 0 {
            (
                IndicatorState::DisabledWithPending,
                format!(
                    "background migrations are disabled (ENABLE_BACKGROUND_MIGRATIONS=false) while {unfinished} \
                     {} not finished: the data may be inconsistent",
                    if unfinished == 1 { "is" } else { "are" }
                ),
            )
        } else if !running.is_empty() {
            (
                IndicatorState::Running,
                format!("{} running: {}", running.len(), running.join(", ")),
            )
        } else if !pending.is_empty() {
            (
                IndicatorState::Pending,
                format!("{} waiting for a worker", pending.len()),
            )
        } else {
            (IndicatorState::Finished, "all finished".to_owned())
        };
        Self {
            state,
            message,
            background_migrations_enabled: background_enabled,
            running,
            failed,
            pending,
            finished,
        }
    }
}
